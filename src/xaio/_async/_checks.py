"""Argument checks and the kernel's answers given before a request is submitted.

Every coroutine of the async layer checks its arguments here before anything
reaches an engine: wrong types raise ``TypeError``, values the kernel would
refuse with ``EINVAL``/``EBADF`` raise what ``os.pread`` & co raise for them.

*The kernel's answer, on every engine.*  A positional call on an fd without
a position (a pipe, socket, tty, eventfd) fails with ESPIPE before anything
is submitted (:func:`check_positional`: io_uring would read the stream, the
thread engine would fall back to ``read``).  An O_DIRECT request that breaks
the file's alignment fails with EINVAL saying what was needed
(:func:`dio_einval`).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Sequence
from typing import Any

from xaio._memory import dio_alignment
from xaio._ops import OpCode, Operation, decode_result
from xaio._syscall import oserror
from xaio.engine._route import classify

__all__ = [
    "INT_MAX",
    "OFF_MAX",
    "InvalidArgument",
    "NegativeFd",
    "check_fd",
    "check_sync_fd",
    "check_count",
    "check_offset",
    "check_flags",
    "check_buffers",
    "check_positional",
    "FdKinds",
    "dio_einval",
    "request_error",
    "is_direct",
    "is_stream",
]

#: Largest fd number (an fd is a C int).
INT_MAX = 0x7FFFFFFF
#: Largest file offset (an off_t).
OFF_MAX = (1 << 63) - 1


class InvalidArgument(OSError, ValueError):
    """A value the kernel would refuse with ``EINVAL`` (a negative offset...),
    refused before any system call.  Both an ``OSError`` with ``errno ==
    EINVAL`` (what ``os.pread`` raises) and a ``ValueError``."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)


# ---------------------------------------------------------------------------------
# argument checking (before anything reaches the kernel)
# ---------------------------------------------------------------------------------


def check_fd(fd: Any) -> int:
    """Return *fd* as an int.

    Raises:
        TypeError: *fd* is not an integer.
        OSError: ``EBADF`` for a negative fd or one beyond ``INT_MAX``.
    """
    if type(fd) is not int:
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, not {type(fd).__name__!r}")
        fd = int(fd)
    if fd < 0 or fd > INT_MAX:
        raise oserror(errno.EBADF)
    return int(fd)


class NegativeFd(OSError, ValueError):
    """A negative fd given to ``fsync``/``fdatasync``: a ValueError, as
    ``os.fsync`` raises, and an ``OSError`` with ``EBADF``, as the other
    coroutines (and ``os.pread``) raise for it."""

    def __init__(self, fd: int) -> None:
        super().__init__(errno.EBADF, f"file descriptor cannot be a negative integer ({fd})")


def check_sync_fd(fd: Any) -> int:
    """:func:`check_fd` for ``fsync``/``fdatasync`` (:class:`NegativeFd`
    for a negative fd)."""
    if type(fd) is int and fd < 0:
        raise NegativeFd(fd)
    return check_fd(fd)


def check_count(n: Any, name: str = "n") -> int:
    """Return the byte count *n* as an int.

    Raises:
        TypeError: not an integer.
        InvalidArgument: negative (EINVAL, as ``os.pread``/``os.read`` raise;
            also a ValueError).
    """
    if type(n) is not int:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"{name} must be an int, not {type(n).__name__!r}")
        n = int(n)
    if n < 0:
        raise InvalidArgument(f"{name} must be >= 0, not {n}")
    return int(n)


def check_offset(offset: Any) -> int:
    """Return the file offset *offset* as an int.

    Raises:
        TypeError: not an integer.
        InvalidArgument: negative or beyond 2**63-1 (EINVAL, also a ValueError).
    """
    if type(offset) is not int:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__!r}")
        offset = int(offset)
    if offset < 0 or offset > OFF_MAX:
        raise InvalidArgument(f"offset must be in [0, 2**63-1], not {offset}")
    return int(offset)


def check_flags(flags: Any) -> int:
    """Return the ``RWF_*`` flags as an int (TypeError/ValueError if not a u32)."""
    if type(flags) is not int:
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise TypeError(f"flags must be an int, not {type(flags).__name__!r}")
        flags = int(flags)
    if flags < 0 or flags > 0xFFFFFFFF:
        raise ValueError(f"flags must be a 32-bit unsigned int, not {flags}")
    return int(flags)


def check_buffers(buffers: Any) -> tuple[Any, ...]:
    """Return the buffers of a vectored call as a tuple (TypeError if not a sequence)."""
    if isinstance(buffers, (bytes, bytearray, memoryview, str)) or not hasattr(buffers, "__iter__"):
        raise TypeError(f"buffers must be a sequence of buffers, not {type(buffers).__name__!r}")
    return tuple(buffers)


def is_stream(fd: int) -> bool:
    """True for fds without a file position (pipes, sockets, FIFOs, ttys)."""
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError as e:
        if e.errno == errno.ESPIPE:
            return True
        raise
    return False


def check_positional(fd: int) -> int:
    """Raise what ``os.pread``/``os.pwrite`` raise on *fd* before any
    transfer: ESPIPE for an fd without positional I/O, EBADF for one that is
    not open; else return the fd's kind, for the request's
    :attr:`Operation.kind <xaio._ops.Operation>`.

    io_uring does not ask -- it reads a stream at its "current position" --
    and the thread engine's workers fall back to ``read`` on ESPIPE (the POSIX
    AIO rule), so the driver answers before anything is submitted, with
    :func:`xaio.engine._route.classify`: one look at the fd per request that
    goes to an engine (requests served from the page cache learn it from
    their own attempt), whose kind the engine's routing then uses instead of
    looking again.  Nothing is cached here: fd numbers are reused as soon as
    they are closed (:class:`FdKinds` keeps an answer for one loop iteration).
    """
    kind = classify(fd)
    if kind < 0:
        raise oserror(-kind)
    return kind


_F_GETFL = fcntl.F_GETFL
_fcntl = fcntl.fcntl


class FdKinds:
    """:func:`check_positional`'s answers for the rest of a loop iteration.

    A driver's tasks woken together make their next requests in one loop
    iteration, and a batch adds many requests at once; most of them are on
    the same fd.  :func:`check_positional` costs two system calls and ~2.5
    us; this asks it once per fd per loop iteration, and answers the other
    requests of the iteration from what it learned as long as the fd's
    ``F_GETFL`` flags (one ``fcntl``, ~0.3 us) are those the fd had then: an
    fd number closed and reused meanwhile by a pipe or a socket shows other
    flags (neither has ``O_LARGEFILE``, which every ``open`` sets on 64-bit
    Linux), and an fd whose flags changed (``O_DIRECT`` set or cleared) is
    asked again.  What it cannot see is a number closed and reopened, in the
    same iteration, on another file opened with the same flags: a regular
    file for a regular file gets the same answer, a tty would not.  Failures
    are not kept: they raise each time.

    Args:
        call_soon: schedules a call at the end of the loop iteration (the
            driver's ``_call_at_turn``); the answers are forgotten then.
    """

    __slots__ = ("_known", "_call_soon")

    def __init__(self, call_soon: Callable[[Callable[[], None]], None]) -> None:
        #: fd -> (its F_GETFL flags, its kind) when it was asked
        self._known: dict[int, tuple[int, int]] = {}
        self._call_soon = call_soon

    def kind(self, fd: int) -> int:
        """:func:`check_positional` of *fd*, from this iteration's answer if
        the fd's flags are unchanged.

        Raises:
            OSError: ESPIPE for an fd without positional I/O, EBADF for one
                that is not open.
        """
        try:
            flags = _fcntl(fd, _F_GETFL)
        except OSError:
            return check_positional(fd)  # raises what the fd is (EBADF)
        known = self._known
        got = known.get(fd)
        if got is not None and got[0] == flags:
            return got[1]
        kind = check_positional(fd)
        if not known:
            self._call_soon(known.clear)
        known[fd] = (flags, kind)
        return kind


def is_direct(fd: int) -> bool:
    """True if *fd* is open with O_DIRECT (False if the flags cannot be read)."""
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & _O_DIRECT)
    except OSError:
        return False


_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: Most bytes a stream read (``xaio.read``) takes at once beyond what is
#: there already: the default ``pipe-max-size``; a single read(2) from a
#: pipe never returns more than the pipe holds.


def dio_einval(fd: int, offset: int, pins: Sequence[Any]) -> OSError | None:
    """The EINVAL of an O_DIRECT transfer that breaks the alignment the
    kernel reports for *fd* (``statx`` ``STATX_DIOALIGN``), as an ``OSError``
    whose message says what was needed; None if *fd* is not O_DIRECT, the
    alignment is unknown, or the request honours it (the EINVAL has another
    cause).

    Args:
        fd: the file descriptor.
        offset: the file offset of the transfer (< 0: the file position).
        pins: the transfer's buffers (:class:`xaio._buffers.Pin`).
    """
    if not is_direct(fd):
        return None
    try:
        got = dio_alignment(fd)
    except OSError:
        return None
    if got is None:
        return None
    mem, off = got
    total = sum(p.nbytes for p in pins)
    wrong: list[str] = []
    if offset >= 0 and offset % off:
        wrong.append(f"offset {offset} is not a multiple of {off}")
    if total % off:
        wrong.append(f"length {total} is not a multiple of {off}")
    for p in pins:
        if p.address % mem or p.nbytes % mem:
            wrong.append(
                f"a buffer at an address {p.address % mem} bytes past a multiple of {mem}"
                f" (length {p.nbytes}; xaio.aligned_buffer makes aligned ones)"
                if p.address % mem
                else f"a buffer length {p.nbytes} is not a multiple of {mem}"
            )
            break
    if not wrong:
        return None
    return OSError(
        errno.EINVAL,
        f"{os.strerror(errno.EINVAL)}: O_DIRECT on fd {fd} needs file offsets and lengths"
        f" that are multiples of {off} and buffer addresses aligned to {mem} bytes: "
        + "; ".join(wrong),
    )


_TRANSFERS = (OpCode.READ, OpCode.WRITE, OpCode.READV, OpCode.WRITEV)


def request_error(op: Operation) -> OSError:
    """The ``OSError`` of the failed request *op* (its result is -errno;
    EIO if it has none): what ``os`` raises for that errno, and for the
    EINVAL of an O_DIRECT transfer that breaks the file's alignment, one
    that says what was needed (:func:`dio_einval`)."""
    res = op.result
    try:
        decode_result(res if res is not None and res < 0 else -errno.EIO)
    except OSError as e:
        if e.errno == errno.EINVAL and op.opcode in _TRANSFERS:
            better = dio_einval(op.fd, op.offset, op.pins)
            if better is not None:
                return better
        # returned, not raised: no traceback that would keep the frames
        # of its caller (and the requests they hold) alive
        return e.with_traceback(None)
    raise AssertionError("decode_result returned for a failed request")  # pragma: no cover
