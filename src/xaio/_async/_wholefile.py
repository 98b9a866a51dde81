"""Whole-file reads in one request: what ``xaio.Path.read_bytes`` runs.

``pathlib.Path.read_bytes`` is three system calls and more (open, fstat, read
until a read returns nothing, close).  Done one by one through an engine that
is three or four round trips; here it is none or one:

*From the caches, in the loop's thread*, when the dentry cache serves the
open (:func:`~xaio._async._pathops.open_cached`) and the page cache holds the
whole file (:meth:`~xaio._async._driver.Driver.read_cached`: ``preadv2`` with
``RWF_NOWAIT`` of its size and one byte more, after ``cachestat(2)`` once
files have been missing from the cache): open, fstat, read, close, four
system calls that never wait for the device.  Anything else -- a path not in
the dentry cache, a file not all in the page cache or larger than
``INLINE_MAX``, one that changed size between the fstat and the read, a file
that is not regular or says it is empty (``/proc``) -- closes the fd and goes
on as below; an error of the open is raised as it is.

*On io_uring* otherwise (the driver's :class:`~xaio._async._pathops.PathRing`)
one submission of four linked SQEs: ``OPENAT`` into a registered file slot (a
*direct descriptor*: never in the fd table, so nothing to close from Python
and nothing a fork could inherit), ``READ`` of up to the buffer's size from
the file position, ``READ`` of one more byte, which must find the end of the
file (the builtin's "read until a read returns nothing"), and ``CLOSE`` of the
slot.  The slot is named in the SQEs themselves, not allocated by the kernel
(``IORING_FILE_INDEX_ALLOC``), because the linked reads must name it when they
are prepared.  The two reads are *hard* links, so the close runs whatever they
return; a failed open fails the rest of the chain (every later SQE completes
with ECANCELED), leaving nothing open.  The chain runs in the kernel's workers
(``IOSQE_ASYNC`` on its open: what the caches could not serve, an inline
attempt would fail at, or it would start the readahead from the loop's thread;
on a kernel without cached opens, inline when the kernel can look the path up
without blocking): the event loop never waits for it.  The buffer comes from a
small pool and is sized from the largest file read so far (the result is a
copy of what was read); when the second read finds more bytes (a file larger
than the buffer, or one that grew), the file is read again in a worker thread,
as the builtin does it -- the result of that one read stands alone, so it is
never a mix of two versions of the file.  Buffers grow to 1 MiB at most; after
a file larger than that, the next few go to the thread straight away.

*Elsewhere* otherwise (the thread and Linux AIO engines, a kernel without direct
descriptors, every slot taken) one hand-off to a worker thread runs the
builtin ``open(path, "rb").read()``: open, fstat, read, close, and one wake-up.

Either way the result and the exceptions are the builtin's:
``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError``... with the
path as ``filename``.  A cancelled read is cancelled in the kernel SQE by SQE
(the close excepted) and waited for: when CancelledError reaches the caller,
no slot or fd of it is open.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from xaio._abi import uring as abi
from xaio._async._driver import Driver
from xaio._async._pathops import PathRing, cached_opens_work, open_cached, path_ring

__all__ = ["read_bytes"]

_AT_FDCWD = -100
_LINK = abi.IOSQE_IO_LINK
_ASYNC = abi.IOSQE_ASYNC
_FIXED_HARD = abi.IOSQE_FIXED_FILE | abi.IOSQE_IO_HARDLINK
#: Opcodes a chain needs.
_CHAIN_OPS = (abi.IORING_OP_OPENAT, abi.IORING_OP_READ, abi.IORING_OP_CLOSE)
#: The smallest and the largest buffer of a chain; larger files go to a thread.
_MIN_BUF = 16 * 1024
_MAX_BUF = 1 << 20
#: Buffers kept for reuse per PathRing.
_POOL = 16
#: The chain's SQEs: open, read, read one more byte, close (never cancelled).
_OPEN, _READ, _PROBE, _CLOSE = 0, 1, 2, 3
_KEEP_CLOSE = frozenset({_CLOSE})
#: How the whole-file reads open a file (the builtin's ``open(path, "rb")``).
_FLAGS = os.O_RDONLY | os.O_CLOEXEC


def _read_blocking(path: Any) -> bytes:
    """``pathlib.Path.read_bytes``: the builtin's open, read and close (in a worker)."""
    with open(path, "rb") as f:
        return f.read()


class _Buffers:
    """The read buffers of one PathRing's chains, sized from the largest file
    read so far (a power of two in [_MIN_BUF, _MAX_BUF])."""

    __slots__ = ("size", "free", "skip")

    def __init__(self) -> None:
        self.size = _MIN_BUF
        self.free: list[bytearray] = []
        #: files still to read in a thread straight away, after one larger
        #: than _MAX_BUF (whose chain read was wasted)
        self.skip = 0

    def take(self) -> bytearray:
        free = self.free
        while free:
            buf = free.pop()
            if len(buf) == self.size:
                return buf
        return bytearray(self.size)

    def give(self, buf: bytearray) -> None:
        if len(buf) == self.size and len(self.free) < _POOL:
            self.free.append(buf)

    def saw(self, size: int) -> None:
        """A file of *size* bytes was read: later buffers hold such a file whole."""
        if size >= self.size:
            if self.size < _MAX_BUF:
                self.size = min(1 << size.bit_length(), _MAX_BUF)
                self.free.clear()
            else:
                self.skip = 8


def _chains(pring: PathRing) -> _Buffers | None:
    """The ring's buffer pool, or None if this kernel cannot run a chain."""
    bufs: _Buffers | None = pring.wholefile
    if bufs is None:
        if pring.wholefile_failed or not all(map(pring.has, _CHAIN_OPS)):
            return None
        bufs = pring.wholefile = _Buffers()
    return bufs


async def read_bytes(drv: Driver, path: Any) -> bytes:
    """Read the file at *path* whole (see the module essay).

    Args:
        drv: the running loop's driver.
        path: a path (str, bytes or os.PathLike), as the builtin ``open`` takes.

    Returns:
        The file's bytes.

    Raises:
        OSError: as ``open(path, "rb").read()`` (``FileNotFoundError``,
            ``IsADirectoryError``, ``PermissionError``...), with *path* as
            the exception's ``filename``.
        ValueError: a NUL byte in *path*.
    """
    await drv._fair()  # (a cancellation here has opened nothing)
    data = _read_from_caches(drv, path)
    if data is not None:
        return data
    pring = path_ring(drv)
    if pring is not None:
        bufs = _chains(pring)
        if bufs is not None and bufs.skip:
            bufs.skip -= 1
        elif bufs is not None:
            slot = pring.take_slot()
            if slot >= 0:
                data = await _read_chain(pring, bufs, slot, path)
                if data is not None:
                    return data
                data = await drv.run_in_thread(_read_blocking, path)
                bufs.saw(len(data))
                return data
    return await drv.run_in_thread(_read_blocking, path)


def _read_from_caches(drv: Driver, path: Any) -> bytes | None:
    """The whole file read in this thread if the dentry and page caches
    hold it (see the module essay); None if it must be read otherwise.

    Raises:
        OSError: what the open reports; ``IsADirectoryError`` for a directory.
    """
    got = open_cached(path, _FLAGS)
    if got is None:
        return None
    if not isinstance(got, tuple):
        raise OSError(-got, os.strerror(-got), path)
    fd, st, _kind = got
    try:
        size = st.st_size
        if not stat.S_ISREG(st.st_mode) or size <= 0:
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            return None
        buf = bytearray(size + 1)  # one byte more: the read must find the end
        if drv.read_cached(fd, buf, 0, size) is None:
            return None
        del buf[size:]
        return bytes(buf)
    finally:
        os.close(fd)


async def _read_chain(pring: PathRing, bufs: _Buffers, slot: int, path: Any) -> bytes | None:
    """One chain on *slot* (taken by the caller, given back here).

    Returns:
        The file's bytes, or None when the file is larger than the buffer
        (or the kernel cannot open into a slot): the caller reads it otherwise.
    """
    ring = pring.ring
    buf = bufs.take()
    probe = bytearray(1)

    # (the chain runs when the caches did not serve the file: an inline
    # attempt would fail, or start the readahead from the loop's thread)
    later = cached_opens_work()
    head = _LINK | _ASYNC if later else _LINK

    def prep(uds: list[int]) -> None:
        ring.prep_openat_direct(
            _AT_FDCWD, path, os.O_RDONLY, 0, slot, user_data=uds[_OPEN], sqe_flags=head
        )
        ring.prep_read(slot, buf, -1, user_data=uds[_READ], sqe_flags=_FIXED_HARD)
        ring.prep_read(slot, probe, -1, user_data=uds[_PROBE], sqe_flags=_FIXED_HARD)
        ring.prep_close_direct(slot, user_data=uds[_CLOSE])

    try:
        opened, got, more, shut = await pring.run_chain(prep, 4, _KEEP_CLOSE, later)
    except BaseException:
        # Cancelled: the chain has finished all the same (run_chain waited for
        # every CQE), but whether its close ran is not known here: close the
        # slot again (an empty slot's close fails harmlessly).  The buffer is
        # not reused: it stays with the ring's pins if the submit failed.
        pring.close_slot(slot)
        raise
    if opened >= 0 and shut < 0:
        pring.close_slot(slot)
    else:
        pring.give_slot(slot)
    if opened > 0:  # a kernel that ignores the slot gave a plain fd
        os.close(opened)
        pring.wholefile_failed = True
        pring.wholefile = None
        return None
    try:
        if opened < 0:
            raise OSError(-opened, os.strerror(-opened), path)
        if got < 0:
            raise OSError(-got, os.strerror(-got), path)
        if more < 0:
            raise OSError(-more, os.strerror(-more))
        if more:
            return None
        bufs.saw(got)
        return bytes(memoryview(buf)[:got])
    finally:
        bufs.give(buf)
