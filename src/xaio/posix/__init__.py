"""POSIX asynchronous I/O: ``aiocb``, ``aio_*`` and ``lio_listio``, on any engine.

Some facts about POSIX AIO on Linux, what glibc does, and what we do better
---------------------------------------------------------------------------

- The kernel has no POSIX AIO: glibc implements it in user space (librt,
  ``sysdeps/pthread/aio_misc.c``) with a pool of helper threads that run
  ``pread``/``pwrite``/``fsync``.  The pool is created on the first ``aio_*``
  call; here too (importing xaio starts no thread).  Its size, the expected
  number of requests and the idle time of a helper are set by ``aio_init``.
- glibc queues requests *per file descriptor* and runs those of one fd one
  after the other, so 32 reads of one file never overlap.  Here positional I/O
  on regular files runs in parallel; only stream fds (pipes, sockets, FIFOs,
  ttys) and ``O_APPEND`` fds are run one at a time in submission order, which
  is what makes later requests on a blocked socket stay queued, and
  cancellable (see :mod:`xaio.threads`).  ``aio_fsync`` completes after every
  request queued before it on its fd.
- ``aio_cancel`` (the seed): a request a helper has started cannot be
  cancelled (``AIO_NOTCANCELED``; it completes normally later); a queued one
  is removed, gets ``ECANCELED`` / -1, and **its notification still happens**
  (signal, thread, ``aio_suspend`` waiters, the ``lio_listio`` it belongs to).
  With a cb, the fd argument is ignored, as the seed says (glibc fails a
  mismatch with EINVAL); a cb never submitted is EINVAL (glibc says
  AIO_ALLDONE); a closed fd is EBADF, checked first.
- After ``fork()`` glibc's child inherits a pool that does not exist (its
  threads were not copied) and a request list that says they do: the seed's
  caveat, the child cannot use AIO.  Here an ``os.register_at_fork`` hook
  gives the child a fresh, empty state: the parent's requests are not
  inherited (in the child their aiocbs look never submitted), the child's
  first request starts its own pool, and the parent is unaffected.
- Errors: a bad fd in ``aio_read``/``aio_write`` is not an immediate error
  (glibc too): the request is queued and ``aio_error`` says EBADF.  An
  out-of-range ``aio_reqprio`` is an immediate EINVAL; so are a bad
  ``lio_listio`` mode and a bad ``aio_fsync`` op; ``aio_fsync`` on a closed
  fd is an immediate EBADF.  ``aio_return`` a second time, or on a cb never
  submitted, raises EINVAL (POSIX allows it; glibc returns a stale value).
- ``SIGEV_SIGNAL`` is sent as glibc does, with ``rt_sigqueueinfo`` to the
  process: ``si_code == SI_ASYNCIO`` (-4), ``si_pid``/``si_uid`` ours and the
  value in ``si_value`` (Python's ``struct_siginfo`` shows its low 32 bits as
  ``si_status``, which overlays it).  ``SIGEV_THREAD`` runs
  ``sigev_notify_function(sigev_value)`` on a notifier thread; a new one is
  started when all are busy, so a slow callback never delays another
  notification or a completion (glibc starts a thread per notification).
- All library threads block every signal, like glibc's helpers, so the
  block-then-``sigwaitinfo`` pattern works in the application's threads.
- Engines: by default the thread engine in ``complete_in_worker`` mode (the
  worker that ran a request records its result and sends its notification
  itself: one thread hand-off per request, not two).  ``aio_init(engine=
  "uring")`` (or ``"linux"``, or any :class:`~xaio.engine.Engine` instance)
  runs the same API there; a reaper thread blocks in ``engine.reap(None)``
  and records and notifies each completion as the kernel posts it (on
  io_uring it also submits every request: the kernel finishes a
  completion in the thread that submitted the request).  An
  engine made by name is ours: closed when another is chosen, at exit (an
  io_uring one), and replaced by a fresh one in a forked child (the parent's
  ring is closed there on first use, which only drops the child's copies).
- io_uring does not order requests on one fd, so for every engine but the
  thread engine (which does it itself) posix keeps *lanes*: per fd, the
  requests the engine has and those held back, with the thread engine's rule
  (``xaio._lanes``: a stream or O_APPEND fd one at a time in submission
  order; an fsync only after every request before it; positional I/O on
  regular files in parallel).  A held request never reached the kernel: cancelling it is
  immediate.  A request the engine has can be cancelled where the kernel can
  (a read or write pending on a pipe or socket); ``AIO_CANCELED`` is then
  returned only if its completion really said ``ECANCELED`` -- it is recorded
  and notified before ``aio_cancel`` returns.  A request in transit to the
  engine (taken from a lane, not yet submitted) is waited for, so a cancel
  never misses it.
- A POSIX request is not always one kernel request there: io_uring ends a
  write on a stream socket at the first short transfer, where ``write(2)``
  on a blocking fd writes all; so a short write on a blocking stream fd goes
  on with the rest (the lane keeps later requests behind it), and the
  request completes, notifies and counts for its ``lio_listio`` list only
  when all is written or it fails.  A write partly done is running: not
  cancelled (``AIO_NOTCANCELED``).  And a request ``aio_cancel`` reported
  running that the kernel then stopped anyway (io_uring's cancel of a
  running request may interrupt it) is submitted again: ``AIO_NOTCANCELED``
  means it completes normally.
- Page-cache hits skip the engine: ``aio_read`` first asks the engine's
  reader (``Engine.nowait_reader``; thread, uring and linux engines:
  ``preadv2(RWF_NOWAIT)`` in the caller's thread, never on O_DIRECT,
  O_APPEND or stream fds, see :mod:`xaio._pagecache`).  A hit is complete
  -- recorded and notified -- when ``aio_read`` returns, with no thread
  hand-off, no ring round trip and no lock.
  Every aiocb shape takes it (any writable buffer, explicit ``aio_nbytes``,
  subclasses), for at most ``INLINE_MAX`` bytes (a larger read goes to the
  engine, so ``aio_read`` always returns promptly), and never past requests
  held back on the fd (behind an ``aio_fsync``).
"""

from __future__ import annotations

import errno
import fcntl
import math
import mmap
import os
import threading
import time
from collections.abc import Iterable
from typing import Any, Final

from xaio import _syscall
from xaio._ops import CancelOutcome, OpCode, Operation
from xaio._pagecache import INLINE_MAX
from xaio.engine import Engine
from xaio.posix import _runtime
from xaio.posix._dispatch import (
    _cancel_submitted,
    _enqueue,
    _hand_over,
    _lane_open,
    _lane_release_locked,
    _on_done,
)
from xaio.posix._notify import (
    SI_ASYNCIO,
    SIGEV_NONE,
    SIGEV_SIGNAL,
    SIGEV_THREAD,
    Notice,
    check_sigevent,
    notify,
    sigevent,
)
from xaio.posix._request import (
    HELD,
    LIO_NOP,
    NEW,
    _check_cb,
    _Group,
    _int_field,
    _Waiter,
    aio_error,
    aio_return,
    aiocb,
)
from xaio.posix._runtime import _by_fd, _lanes, _state_lock, _suspenders, aio_init

__all__ = [
    "aiocb",
    "sigevent",
    "aio_read",
    "aio_write",
    "aio_fsync",
    "aio_error",
    "aio_return",
    "aio_cancel",
    "aio_suspend",
    "lio_listio",
    "aio_init",
    "AIO_CANCELED",
    "AIO_NOTCANCELED",
    "AIO_ALLDONE",
    "LIO_READ",
    "LIO_WRITE",
    "LIO_NOP",
    "LIO_WAIT",
    "LIO_NOWAIT",
    "SIGEV_SIGNAL",
    "SIGEV_NONE",
    "SIGEV_THREAD",
    "AIO_PRIO_DELTA_MAX",
    "SI_ASYNCIO",
]

# glibc's values (<aio.h>, <bits/sigevent-consts.h>, <bits/local_lim.h>).
AIO_CANCELED: Final = 0
AIO_NOTCANCELED: Final = 1
AIO_ALLDONE: Final = 2
LIO_READ: Final = 0
LIO_WRITE: Final = 1
LIO_WAIT: Final = 0
LIO_NOWAIT: Final = 1
AIO_PRIO_DELTA_MAX: Final = 20
_INT64_MAX = 2**63 - 1
_FD_MAX = 2**31 - 1
_EMPTY = bytearray()


def _buffer(cb: aiocb, writable: bool) -> Any:
    buf = cb.aio_buf
    nbytes = cb.aio_nbytes
    if nbytes is not None:
        _int_field("aio_nbytes", nbytes)
        if nbytes < 0:
            raise ValueError("aio_nbytes must be >= 0")
    if buf is None:
        if nbytes:
            raise ValueError("aio_buf is None but aio_nbytes is not 0")
        return _EMPTY
    if nbytes is None:
        return buf
    try:
        view = memoryview(buf)
    except TypeError:
        raise TypeError(
            f"aio_buf must be a bytes-like object, not {type(buf).__name__!r}"
        ) from None
    if view.nbytes == nbytes:
        view.release()
        return buf
    if nbytes > view.nbytes:
        size = view.nbytes
        view.release()
        raise ValueError(f"aio_nbytes ({nbytes}) is larger than the buffer ({size} bytes)")
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view[:nbytes]


def _fd_ok(fd: int) -> bool:
    if not 0 <= fd <= _FD_MAX:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return False
    return True


def _prepare(cb: aiocb, opcode: OpCode, fd: int, check_prio: bool) -> tuple[Operation, int]:
    """Check *cb* and build its Operation; returns (op, immediate -errno or 0)."""
    rw = opcode is OpCode.READ or opcode is OpCode.WRITE
    if rw:
        offset = _int_field("aio_offset", cb.aio_offset)
        prio = _int_field("aio_reqprio", cb.aio_reqprio)
        if check_prio and not 0 <= prio <= AIO_PRIO_DELTA_MAX:
            raise _syscall.oserror(errno.EINVAL, "aio_reqprio out of range")
    notice = check_sigevent(cb.aio_sigevent)
    err = 0
    if rw:
        buf = _buffer(cb, writable=opcode is OpCode.READ)
        if not 0 <= offset <= _INT64_MAX:
            err = -errno.EINVAL
        op = Operation(opcode, fd, (buf,), offset, on_done=_on_done, context=cb)
    else:
        op = Operation(opcode, fd, (), -1, on_done=_on_done, context=cb)
    if not 0 <= fd <= _FD_MAX:
        err = -errno.EBADF
    cb._notice = notice
    return op, err


def _submit_one(cb: Any, opcode: OpCode) -> None:
    cb = _check_cb(cb)
    if cb._state >= HELD:
        raise _syscall.oserror(errno.EINVAL, "aiocb already in progress")
    fd = _int_field("aio_fildes", cb.aio_fildes)
    op, err = _prepare(cb, opcode, fd, True)
    _enqueue([(cb, op, err)], None)


_MMAP: Final = mmap.mmap


def aio_read(cb: aiocb) -> None:
    """Queue an asynchronous read of ``cb.aio_nbytes`` bytes from
    ``cb.aio_fildes`` at ``cb.aio_offset`` into ``cb.aio_buf`` (``aio_read(3)``).

    Returns at once.  A bad fd or a negative offset is reported later by
    :func:`aio_error` (EBADF, EINVAL); ``aio_lio_opcode`` is ignored.

    Raises:
        OSError: EINVAL for ``aio_reqprio`` outside ``0..AIO_PRIO_DELTA_MAX``,
            an invalid sigevent, or a cb already in progress.
        TypeError: wrong field types, or a read-only buffer.
        ValueError: ``aio_nbytes`` larger than the buffer (or negative).
    """
    # The page-cache fast path, inline (it is the hot path): the engine's
    # reader (Engine.nowait_reader), for any writable contiguous buffer
    # (bytearray, mmap, memoryview, array, ctypes...), with or without
    # aio_nbytes, for at most INLINE_MAX bytes (a larger read goes to the
    # engine, so that aio_read returns promptly and a later small read can
    # finish first), and only where it overtakes nothing: not on an fd whose
    # lane is serial or holds requests back (the reader itself refuses
    # O_DIRECT, O_APPEND and stream fds, and the thread engine's reader its
    # own held-back work).  Anything unusual (wrong types, a read-only or too
    # short buffer, a bad sigevent) takes the normal path, which reports it.
    # The aiocb a C program fills in (a bytearray or an mmap of aio_nbytes,
    # a valid priority, no sigevent) is checked once, when its fields were
    # set (cb._shape, see _fast_shape); only aio_offset and the length of the
    # buffer (a bytearray can be resized) are looked at each time.  Other
    # shapes, and subclasses (whose fields may be their own properties), are
    # checked at each call (_inline_shape).  An offset beyond
    # 2**63 - 1 is the reader's to refuse.
    read_nowait = _runtime._read_nowait
    if (
        read_nowait is not None
        and (type(cb) is aiocb or isinstance(cb, aiocb))
        and cb._state < HELD  # else refused by the normal path
    ):
        shape = cb._shape
        if shape is None:
            shape = cb._shape = _fast_shape(cb)
        if shape:
            fd, buf, n, bufs = shape
            off = cb.aio_offset
            if len(buf) != n:  # resized: look again next time
                cb._shape = None
            elif (
                type(off) is int
                and off >= 0
                and (not _lanes or _lane_open(fd))
                and read_nowait(fd, bufs, off, n) is not None
            ):
                cb._complete_now(n)
                return
        else:
            fd, buf, n, notice = _inline_shape(cb)
            off = cb.aio_offset
            if (
                0 < n <= INLINE_MAX
                and type(fd) is int
                and type(off) is int
                and off >= 0
                and (not _lanes or _lane_open(fd))
                and read_nowait(fd, (buf,), off, n) is not None
            ):
                cb._complete_now(n)
                if notice is not None:
                    notify(notice)
                return
    _submit_one(cb, OpCode.READ)


def _fast_shape(cb: aiocb) -> tuple[Any, ...]:
    """For :func:`aio_read`'s fast path, what the fields of *cb* but
    ``aio_offset`` say, found once (the aiocb keeps it until one of them is
    set): ``(fd, buffer, nbytes, (buffer,))`` (the tuple the reader reads
    into, made once) for the shape a C program fills in -- an
    int fd, a bytearray or an mmap of exactly ``aio_nbytes`` (or None)
    bytes, at most ``INLINE_MAX``, a valid priority, no sigevent -- that
    needs no check at each call; ``()`` for any other shape, and for a
    subclass (which may define the fields its own way)."""
    if type(cb) is not aiocb:
        return ()
    fd = cb._fildes
    buf = cb._buf
    tb = type(buf)
    prio = cb._reqprio
    if (
        type(fd) is not int
        or (tb is not bytearray and tb is not _MMAP)
        or type(prio) is not int
        or not 0 <= prio <= AIO_PRIO_DELTA_MAX
        or cb._sigevent is not None
    ):
        return ()
    try:
        n = len(buf)  # the size in bytes
    except ValueError:  # a closed mmap
        return ()
    nbytes = cb._nbytes
    if (nbytes is not None and (type(nbytes) is not int or nbytes != n)) or not 0 < n <= INLINE_MAX:
        return ()
    return (fd, buf, n, (buf,))


def _inline_shape(cb: aiocb) -> tuple[Any, Any, int, Notice | None]:
    """For :func:`aio_read`'s fast path, an aiocb of a shape
    :func:`_fast_shape` does not keep: the fd, the buffer to read into, the
    bytes to read (0: not here) and the checked sigevent."""
    if type(cb) is aiocb:
        fd, buf, nbytes, prio, sev = cb._fildes, cb._buf, cb._nbytes, cb._reqprio, cb._sigevent
    else:  # a subclass may define the fields its own way: read them as the normal path does
        fd, buf, nbytes = cb.aio_fildes, cb.aio_buf, cb.aio_nbytes
        prio, sev = cb.aio_reqprio, cb.aio_sigevent
    if type(prio) is not int or not 0 <= prio <= AIO_PRIO_DELTA_MAX:
        return fd, buf, 0, None
    tb = type(buf)
    if tb is bytearray or tb is _MMAP:  # len() is the size in bytes
        try:
            size = len(buf)
        except ValueError:  # a closed mmap
            return fd, buf, 0, None
    else:
        try:
            view = memoryview(buf)
        except (TypeError, ValueError):  # not a buffer, or a released view
            return fd, buf, 0, None
        size = 0 if view.readonly or not view.c_contiguous else view.nbytes
    if nbytes is None:
        n = size
    elif type(nbytes) is int and 0 < nbytes <= size:
        n = nbytes
        if n != size:
            buf = memoryview(buf).cast("B")[:n]
    else:
        return fd, buf, 0, None
    return fd, buf, n, None if sev is None else check_sigevent(sev)


def aio_write(cb: aiocb) -> None:
    """Queue an asynchronous write of ``cb.aio_nbytes`` bytes of ``cb.aio_buf``
    to ``cb.aio_fildes`` at ``cb.aio_offset`` (at the end for an O_APPEND fd)
    (``aio_write(3)``).  Errors as :func:`aio_read` (a read-only fd gives
    EBADF through :func:`aio_error`).

    Raises:
        OSError: EINVAL (``aio_reqprio``, sigevent, cb in progress).
        TypeError: wrong field types.
        ValueError: ``aio_nbytes`` larger than the buffer (or negative).
    """
    _submit_one(cb, OpCode.WRITE)


def aio_fsync(op: int, cb: aiocb) -> None:
    """Queue an asynchronous ``fsync`` (``op == os.O_SYNC``) or
    ``fdatasync`` (``os.O_DSYNC``) of ``cb.aio_fildes`` (``aio_fsync(3)``).

    It completes only after every request queued before it on that fd has
    completed.  ``aio_reqprio``, ``aio_buf``, ``aio_offset`` are ignored.

    Raises:
        OSError: EINVAL for another *op* (or a cb in progress, or an invalid
            sigevent); EBADF if the fd is not open.
        TypeError: wrong argument types.
    """
    if not isinstance(op, int) or isinstance(op, bool):
        raise TypeError(f"op must be an int, not {type(op).__name__!r}")
    cb = _check_cb(cb)
    if op == os.O_SYNC:
        code = OpCode.FSYNC
    elif op == os.O_DSYNC:
        code = OpCode.FDATASYNC
    else:
        raise _syscall.oserror(errno.EINVAL, "op must be O_SYNC or O_DSYNC")
    fd = _int_field("aio_fildes", cb.aio_fildes)
    if not _fd_ok(fd):
        raise _syscall.oserror(errno.EBADF)
    if cb._state >= HELD:
        raise _syscall.oserror(errno.EINVAL, "aiocb already in progress")
    operation, err = _prepare(cb, code, fd, False)
    _enqueue([(cb, operation, err)], None)


def aio_cancel(fd: int, cb: aiocb | None = None) -> int:
    """Cancel the queued requests of *fd*, or just the request of *cb*
    (``aio_cancel(3)``; with a cb the fd is otherwise ignored).

    Cancelled requests get ``ECANCELED`` / -1 and their normal notification
    (sent before this returns).  A request the thread engine has started is
    not cancelled: it completes normally later.  On io_uring a started
    request is cancelled too where the kernel can stop it (a read or write
    waiting on a pipe or socket, nothing of it written yet); one it cannot
    stop (regular-file I/O already running, a stream write partly done)
    completes normally later.

    Returns:
        ``AIO_CANCELED`` if every request was cancelled, ``AIO_NOTCANCELED``
        if at least one could not be (use :func:`aio_error` for the others),
        ``AIO_ALLDONE`` if all had completed (or *fd* had none).

    Raises:
        OSError: EBADF if *fd* is not open (checked first); EINVAL if *cb*
            was never submitted.
        TypeError: wrong argument types.
    """
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise TypeError(f"fd must be an int, not {type(fd).__name__!r}")
    if cb is not None:
        _check_cb(cb)
    if not _fd_ok(fd):
        raise _syscall.oserror(errno.EBADF)
    held: list[Operation] = []
    released: list[aiocb] = []
    with _state_lock:
        if cb is not None:
            if cb._state == NEW:
                raise _syscall.oserror(errno.EINVAL, "aiocb was never submitted")
            targets = [cb] if cb._state >= HELD else []
        else:
            targets = list(_by_fd.get(fd, ()))
        # Requests held back in their lane never reached the engine: take
        # them out first (all of them before any running one is cancelled,
        # so cancelling a running one releases nothing we are cancelling).
        work: list[tuple[aiocb, Operation, Engine]] = []
        for c in targets:
            op, eng, lane = c._op, c._engine, c._lane
            assert op is not None and eng is not None  # set while in progress
            if c._state == HELD:
                assert lane is not None
                lane.held.remove(c)
                held.append(c._unlane())
                more = _lane_release_locked(c._fd, lane)
                if more:
                    released.extend(more)
            else:
                work.append((c, op, eng))
    result = AIO_ALLDONE
    for op in held:
        op.complete(-errno.ECANCELED)
        result = AIO_CANCELED
    if released:
        _hand_over(released)
    for c, op, eng in work:
        outcome = _cancel_submitted(c, op, eng)
        if outcome is CancelOutcome.RUNNING:
            result = AIO_NOTCANCELED
        elif outcome is CancelOutcome.CANCELED and result == AIO_ALLDONE:
            result = AIO_CANCELED
    return result


def aio_suspend(cbs: Iterable[aiocb | None], timeout: float | None = None) -> None:
    """Wait until at least one request of *cbs* is no longer in progress
    (``aio_suspend(3)``).  None entries are ignored; a cb never submitted
    counts as not in progress; an empty list returns at once.

    Args:
        cbs: aiocbs (or None).
        timeout: seconds to wait at most; None waits for ever.

    Raises:
        OSError: EAGAIN if the timeout expired first; EINVAL for a negative
            or NaN timeout.
        TypeError: wrong argument types.
    """
    if timeout is not None:
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
            raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__!r}")
        if math.isnan(timeout) or timeout < 0:
            raise _syscall.oserror(errno.EINVAL, "invalid timeout")
    if isinstance(cbs, aiocb):
        raise TypeError("aio_suspend takes a list of aiocbs")
    pending: list[aiocb] = []
    for cb in cbs:
        if cb is None:
            continue
        if type(cb) is not aiocb and not isinstance(cb, aiocb):
            raise TypeError(f"an aiocb or None is required, not {type(cb).__name__!r}")
        if cb._state < HELD:
            return
        pending.append(cb)
    if not pending:
        return
    eng = _runtime._engine
    if eng is not None and not eng.delivers_itself and _runtime._submitter(eng) is None:
        # Deliver what the kernel has posted ourselves, no hand-off (not where
        # the reaper submits for this thread: on io_uring, see _submitter).
        eng.reap(0)
        for cb in pending:
            if cb._state < HELD:
                return
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        # Register, then re-check under the lock that completions take: a
        # completion either happened before (seen here) or will wake us.
        w = _Waiter()
        with _state_lock:
            for cb in pending:
                if cb._state < HELD:
                    return
            _suspenders.append(w)
        try:
            if deadline is None:
                got = w.lock.acquire()
            else:
                remaining = deadline - time.monotonic()
                got = remaining > 0 and w.lock.acquire(
                    timeout=min(remaining, threading.TIMEOUT_MAX)
                )
        finally:
            if not w.woken:
                with _state_lock:
                    if not w.woken:
                        _suspenders.remove(w)
        if not got:
            for cb in pending:
                if cb._state < HELD:
                    return
            raise _syscall.oserror(errno.EAGAIN)


def lio_listio(mode: int, cbs: Iterable[aiocb | None], sig: sigevent | None = None) -> None:
    """Submit a list of requests, each as its ``aio_lio_opcode`` says
    (``LIO_READ``, ``LIO_WRITE``; ``LIO_NOP`` and None entries are skipped)
    (``lio_listio(3)``).

    Args:
        mode: ``LIO_WAIT`` (return when all are done) or ``LIO_NOWAIT``
            (return at once; *sig* is sent when all are done, after every
            request's own notification).
        cbs: the requests.
        sig: the list's notification (ignored with ``LIO_WAIT``).

    A bad ``aio_lio_opcode`` or a negative offset shows up as EINVAL from
    :func:`aio_error` on that cb; so does an out-of-range ``aio_reqprio``
    (the request is not queued, and the call raises EIO).

    Raises:
        OSError: EINVAL for a bad *mode* (or *sig*, or a cb in progress or
            listed twice); EIO if, with ``LIO_WAIT``, any request failed
            or, with either mode, a request could not be queued.
        TypeError: wrong argument types (nothing is queued).
        ValueError: a buffer shorter than ``aio_nbytes`` (nothing is queued).
    """
    if not isinstance(mode, int) or isinstance(mode, bool):
        raise TypeError(f"mode must be an int, not {type(mode).__name__!r}")
    if isinstance(cbs, aiocb):
        raise TypeError("lio_listio takes a list of aiocbs")
    entries = list(cbs)
    if mode != LIO_WAIT and mode != LIO_NOWAIT:
        raise _syscall.oserror(errno.EINVAL, "mode must be LIO_WAIT or LIO_NOWAIT")
    list_notice = check_sigevent(sig) if mode == LIO_NOWAIT else None
    items: list[tuple[aiocb, Operation, int]] = []
    seen: set[int] = set()
    not_queued = False
    try:
        for cb in entries:
            if cb is None:
                continue
            _check_cb(cb)
            opc = _int_field("aio_lio_opcode", cb.aio_lio_opcode)
            if opc == LIO_NOP:
                continue
            if id(cb) in seen or cb._state >= HELD:
                raise _syscall.oserror(errno.EINVAL, "aiocb already in progress")
            seen.add(id(cb))
            fd = _int_field("aio_fildes", cb.aio_fildes)
            if opc in (LIO_READ, LIO_WRITE):
                prio = _int_field("aio_reqprio", cb.aio_reqprio)
                code = OpCode.READ if opc == LIO_READ else OpCode.WRITE
                op, err = _prepare(cb, code, fd, False)
                if not 0 <= prio <= AIO_PRIO_DELTA_MAX:
                    err = -errno.EINVAL
                    not_queued = True
            else:
                check_sigevent(cb.aio_sigevent)
                op, err = _prepare(cb, OpCode.NOP, fd, False)
                err = -errno.EINVAL
            items.append((cb, op, err))
    except BaseException:
        for _, op, _ in items:
            for p in op.pins:
                p.release()
        raise
    waiter = _Waiter() if mode == LIO_WAIT else None
    if not items:
        if list_notice is not None:
            notify(list_notice)
        return
    group = _Group(len(items), list_notice, waiter)
    _enqueue(items, group)
    if waiter is not None:
        waiter.lock.acquire()
        if group.failed:
            raise _syscall.oserror(errno.EIO)
    elif not_queued:
        raise _syscall.oserror(errno.EIO)
