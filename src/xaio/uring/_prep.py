"""Preparing SQEs: :func:`prep_rw`, its bulk form :func:`prep_rw_slots`, and
the ``prep_*`` helpers that funnel into :func:`prep_rw`.

The helpers keep liburing's names and take their arguments in :mod:`os`
order; Python buffers they are given are pinned by the ring until the CQE
carrying that ``user_data`` has been taken.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from typing import Any

from xaio._abi import uring as abi
from xaio._buffers import Pin, iovec_array, pin, pin_many
from xaio._ops import IOV_MAX
from xaio.uring._queue import RingQueue
from xaio.uring._setup import _SQE_SIZE, _U32, _U64, STATX_SIZE

_pack_sqe = abi.SQE_STRUCT.pack_into
_OP_READ, _OP_WRITE = abi.IORING_OP_READ, abi.IORING_OP_WRITE
_OP_READ_FIXED, _OP_WRITE_FIXED = abi.IORING_OP_READ_FIXED, abi.IORING_OP_WRITE_FIXED


def prep_rw(
    sqes: Any,
    at: int,
    opcode: int,
    fd: int,
    addr: int,
    length: int,
    offset: int,
    user_data: int,
    op_flags: int = 0,
    sqe_flags: int = 0,
    buf_index: int = 0,
    file_index: int = 0,
    addr3: int = 0,
    ioprio: int = 0,
) -> None:
    """Write one 64-byte SQE at byte *at* of *sqes* (the ring's SQE array, or
    a :class:`~xaio.uring.UringBatch` slot's image): every SQE xaio makes is
    written here (or, many plain reads and writes at once, by
    :func:`prep_rw_slots`, the same fields), as liburing's io_uring_prep_rw fills every SQE its prep
    helpers make.  *addr* must come from a live Pin or a ctypes object kept
    alive until the request's CQE is taken.  The fields are the kernel's
    unsigned ones, but for *fd* (a C ``int``) and *offset* (-1: the file
    position): a caller holding other values masks them (:meth:`RingPrep._prep_rw`).

    Raises:
        struct.error: a field that is not an int, or out of its C range.
    """
    _pack_sqe(
        sqes, at, opcode, sqe_flags, ioprio, fd, offset & _U64, addr, length, op_flags,
        user_data, buf_index, 0, file_index, addr3, 0,
    )  # fmt: skip


def prep_rw_slots(
    sqes: Any,
    tail: int,
    mask: int,
    slots: Sequence[int],
    fds: Sequence[int],
    addresses: Sequence[int],
    lengths: Sequence[int],
    offsets: Sequence[int],
    writes: Sequence[bool],
    user_data: int,
    fixed_index: Callable[[int, int], int] | None = None,
) -> int:
    """:func:`prep_rw` for many plain reads and writes in one call: for each
    slot *s* of *slots*, a ``READ`` (a ``WRITE`` if ``writes[s]``) of fd
    ``fds[s]``, buffer ``addresses[s]`` of ``lengths[s]`` bytes, at file
    offset ``offsets[s]``, with user_data ``user_data | s``; the ``_FIXED``
    form on the registered buffer ``fixed_index(address, length)`` names
    (-1: none).  The SQEs go to the ring's SQE array *sqes* at SQ indexes
    *tail*, *tail* + 1, ... (byte ``(index & mask) << 6``); moving the SQ
    tail is the caller's.

    Returns:
        The SQ index after the last SQE written.

    Raises:
        struct.error: a field that is not an int, or out of its C range.
    """
    pack = _pack_sqe
    if fixed_index is None:
        for s in slots:
            pack(
                sqes, (tail & mask) << 6, _OP_WRITE if writes[s] else _OP_READ, 0, 0, fds[s],
                offsets[s] & _U64, addresses[s], lengths[s], 0, user_data | s, 0, 0, 0, 0, 0,
            )  # fmt: skip
            tail += 1
        return tail
    for s in slots:
        address = addresses[s]
        length = lengths[s]
        index = fixed_index(address, length)
        if index < 0:
            opcode = _OP_WRITE if writes[s] else _OP_READ
            index = 0
        else:
            opcode = _OP_WRITE_FIXED if writes[s] else _OP_READ_FIXED
        pack(
            sqes, (tail & mask) << 6, opcode, 0, 0, fds[s], offsets[s] & _U64, address,
            length, 0, user_data | s, index, 0, 0, 0, 0,
        )  # fmt: skip
        tail += 1
    return tail


def iovecs(pins: Sequence[Pin]) -> Any:
    """A ``struct iovec`` array over *pins* (at most ``IOV_MAX`` of them).

    Raises:
        ValueError: more than ``IOV_MAX`` buffers.
    """
    if len(pins) > IOV_MAX:
        raise ValueError(f"at most {IOV_MAX} buffers, not {len(pins)}")
    return iovec_array(pins)


class RingPrep(RingQueue):
    """The ``prep_*`` helpers of a :class:`~xaio.uring.Ring`."""

    def _prep_rw(
        self,
        opcode: int,
        fd: int,
        addr: int,
        length: int,
        offset: int,
        user_data: int,
        op_flags: int = 0,
        sqe_flags: int = 0,
        buf_index: int = 0,
        file_index: int = 0,
        addr3: int = 0,
        ioprio: int = 0,
    ) -> int:
        """Fill the next free SQE (every prep helper funnels here) and return
        its index; see :func:`prep_rw`.  The 64- and 32-bit fields take any
        int, reduced to their width as C does."""
        idx = self._sqe()
        prep_rw(
            self._sqes, idx * _SQE_SIZE, opcode, fd, addr & _U64, length & _U32, offset,
            user_data & _U64, op_flags & _U32, sqe_flags, buf_index, file_index, addr3 & _U64,
            ioprio,
        )  # fmt: skip
        return idx

    def _prep_held(
        self,
        keep: Any,
        opcode: int,
        fd: int,
        addr: int,
        length: int,
        offset: int,
        user_data: int,
        op_flags: int = 0,
        sqe_flags: int = 0,
        buf_index: int = 0,
        file_index: int = 0,
    ) -> int:
        """:meth:`_prep_rw`, holding *keep* until the CQE of *user_data* is taken."""
        if user_data in self._keep:
            raise ValueError(f"user_data {user_data} is already in flight with buffers")
        idx = self._prep_rw(
            opcode,
            fd,
            addr,
            length,
            offset,
            user_data,
            op_flags,
            sqe_flags,
            buf_index,
            file_index,
        )
        self._keep[user_data] = keep
        return idx

    @staticmethod
    def _path(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> Pin:
        """*path* NUL-terminated, pinned (a bytearray: its export costs less
        than a read-only bytes object's)."""
        raw = os.fsencode(path)
        if b"\0" in raw:
            raise ValueError("embedded null byte in path")
        return pin(bytearray(raw + b"\0"), writable=False)

    # --- prep helpers (liburing names, os argument order) ---------------------------

    def prep_nop(self, *, user_data: int = 0, sqe_flags: int = 0) -> int:
        """Queue a no-op (io_uring_prep_nop(3)); its CQE has res 0.

        Returns:
            The SQE index.
        """
        return self._prep_rw(abi.IORING_OP_NOP, -1, 0, 0, 0, user_data, 0, sqe_flags)

    def prep_read(
        self,
        fd: int,
        buf: Any,
        offset: int,
        *,
        user_data: int = 0,
        rw_flags: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a read of ``len(buf)`` bytes at *offset* into *buf*
        (io_uring_prep_read(3)); ``offset=-1`` reads at the file position.

        Args:
            fd: file descriptor (or fixed-file index with ``IOSQE_FIXED_FILE``).
            buf: a writable bytes-like object, pinned until the CQE is taken.
            offset: file offset, or -1 for the current position.
            user_data: returned in the CQE.
            rw_flags: ``RWF_*`` flags, as for preadv2(2).
            sqe_flags: ``IOSQE_*`` flags.

        Returns:
            The SQE index.  The CQE's res is the byte count or -errno.

        Raises:
            TypeError: *buf* is not a writable buffer.
            ValueError: *user_data* is already in flight with buffers.
        """
        p = pin(buf, writable=True)
        return self._prep_held(
            p, abi.IORING_OP_READ, fd, p.address, p.nbytes, offset, user_data, rw_flags, sqe_flags
        )

    def prep_write(
        self,
        fd: int,
        data: Any,
        offset: int,
        *,
        user_data: int = 0,
        rw_flags: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a write of *data* at *offset* (io_uring_prep_write(3)); see
        :meth:`prep_read` for the arguments.

        Raises:
            TypeError: *data* is not bytes-like.
            ValueError: *user_data* is already in flight with buffers.
        """
        p = pin(data, writable=False)
        return self._prep_held(
            p, abi.IORING_OP_WRITE, fd, p.address, p.nbytes, offset, user_data, rw_flags, sqe_flags
        )

    def prep_readv(
        self,
        fd: int,
        buffers: Sequence[Any],
        offset: int,
        *,
        user_data: int = 0,
        rw_flags: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a scatter read into *buffers* (io_uring_prep_readv(3), preadv2(2)).

        Raises:
            TypeError: a buffer is not writable.
            ValueError: more than 1024 buffers, or *user_data* already in flight.
        """
        return self._prep_vectored(
            abi.IORING_OP_READV, True, fd, buffers, offset, user_data, rw_flags, sqe_flags
        )

    def prep_writev(
        self,
        fd: int,
        buffers: Sequence[Any],
        offset: int,
        *,
        user_data: int = 0,
        rw_flags: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a gather write of *buffers* (io_uring_prep_writev(3), pwritev2(2)).

        Raises:
            TypeError: a buffer is not bytes-like.
            ValueError: more than 1024 buffers, or *user_data* already in flight.
        """
        return self._prep_vectored(
            abi.IORING_OP_WRITEV, False, fd, buffers, offset, user_data, rw_flags, sqe_flags
        )

    def _prep_vectored(
        self,
        opcode: int,
        writable: bool,
        fd: int,
        buffers: Sequence[Any],
        offset: int,
        user_data: int,
        rw_flags: int,
        sqe_flags: int,
    ) -> int:
        """A READV/WRITEV over *buffers*, holding their pins and iovecs."""
        pins = pin_many(buffers, writable=writable)
        iovs = iovecs(pins)
        addr = ctypes.addressof(iovs)
        return self._prep_held(
            (pins, iovs), opcode, fd, addr, len(pins), offset, user_data, rw_flags, sqe_flags
        )

    def _fixed(self, buf: Any, buf_index: int, writable: bool) -> Pin:
        p = pin(buf, writable=writable)
        if not 0 <= buf_index < len(self._fixed_buffers):
            raise ValueError(f"no registered buffer with index {buf_index}")
        reg = self._fixed_buffers[buf_index]
        if reg is None:
            raise ValueError(f"registered buffer slot {buf_index} is empty")
        if not (reg.address <= p.address and p.address + p.nbytes <= reg.address + reg.nbytes):
            raise ValueError(f"buffer does not lie inside registered buffer {buf_index}")
        return p

    def prep_read_fixed(
        self,
        fd: int,
        buf: Any,
        offset: int,
        buf_index: int,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a read into (part of) registered buffer *buf_index*
        (io_uring_prep_read_fixed(3)).

        Args:
            buf: a writable view lying inside the buffer registered at *buf_index*
                with :meth:`register_buffers` (e.g. a slice of it).

        Raises:
            ValueError: *buf* is not inside that registered buffer.
        """
        p = self._fixed(buf, buf_index, True)
        return self._prep_held(
            p,
            abi.IORING_OP_READ_FIXED,
            fd,
            p.address,
            p.nbytes,
            offset,
            user_data,
            0,
            sqe_flags,
            buf_index,
        )

    def prep_write_fixed(
        self,
        fd: int,
        buf: Any,
        offset: int,
        buf_index: int,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a write from (part of) registered buffer *buf_index*
        (io_uring_prep_write_fixed(3)); see :meth:`prep_read_fixed`."""
        p = self._fixed(buf, buf_index, False)
        return self._prep_held(
            p,
            abi.IORING_OP_WRITE_FIXED,
            fd,
            p.address,
            p.nbytes,
            offset,
            user_data,
            0,
            sqe_flags,
            buf_index,
        )

    def prep_fsync(
        self,
        fd: int,
        *,
        datasync: bool = False,
        offset: int = 0,
        length: int = 0,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue fsync(2), or fdatasync(2) with *datasync* (io_uring_prep_fsync(3));
        *offset*/*length* restrict the range (0 = the whole file)."""
        flags = abi.IORING_FSYNC_DATASYNC if datasync else 0
        return self._prep_rw(
            abi.IORING_OP_FSYNC, fd, 0, length, offset, user_data, flags, sqe_flags
        )

    def prep_poll_add(self, fd: int, events: int, *, user_data: int = 0, sqe_flags: int = 0) -> int:
        """Queue a one-shot poll for *events* (``select.POLLIN`` ...) on *fd*
        (io_uring_prep_poll_add(3)); res is the ready mask or -errno."""
        return self._prep_rw(
            abi.IORING_OP_POLL_ADD, fd, 0, 0, 0, user_data, events & _U32, sqe_flags
        )

    def prep_timeout(
        self,
        seconds: float,
        *,
        count: int = 0,
        flags: int = 0,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a timeout (io_uring_prep_timeout(3)): it completes with
        ``-ETIME`` after *seconds*, or with 0 once *count* other CQEs were
        posted (0 = pure timer).

        Raises:
            ValueError: negative *seconds* or *count*, or *user_data* in flight.
        """
        if seconds < 0 or count < 0:
            raise ValueError("seconds and count must be >= 0")
        ts = abi.kernel_timespec(int(seconds), int((seconds - int(seconds)) * 1e9))
        return self._prep_held(
            ts,
            abi.IORING_OP_TIMEOUT,
            -1,
            ctypes.addressof(ts),
            1,
            count,
            user_data,
            flags,
            sqe_flags,
        )

    def prep_cancel(
        self, target: int, *, flags: int = 0, user_data: int = 0, sqe_flags: int = 0
    ) -> int:
        """Queue a cancel of the request(s) whose user_data is *target*
        (io_uring_prep_cancel64(3)); add ``IORING_ASYNC_CANCEL_ALL`` to *flags*
        to cancel every match.  res: 0 (cancelled; with ALL, the number
        cancelled), -ENOENT (not found), -EALREADY (running)."""
        return self._prep_rw(
            abi.IORING_OP_ASYNC_CANCEL, -1, target, 0, 0, user_data, flags, sqe_flags
        )

    def prep_cancel_fd(
        self, fd: int, *, flags: int = 0, user_data: int = 0, sqe_flags: int = 0
    ) -> int:
        """Queue a cancel of the request(s) on *fd* (io_uring_prep_cancel_fd(3),
        Linux 5.19); ``IORING_ASYNC_CANCEL_ALL`` in *flags* cancels all of them."""
        flags |= abi.IORING_ASYNC_CANCEL_FD
        return self._prep_rw(abi.IORING_OP_ASYNC_CANCEL, fd, 0, 0, 0, user_data, flags, sqe_flags)

    def prep_cancel_all(self, *, user_data: int = 0, sqe_flags: int = 0) -> int:
        """Queue a cancel of every request in flight (``IORING_ASYNC_CANCEL_ANY |
        IORING_ASYNC_CANCEL_ALL``); res is the number cancelled or -ENOENT."""
        flags = abi.IORING_ASYNC_CANCEL_ANY | abi.IORING_ASYNC_CANCEL_ALL
        return self._prep_rw(abi.IORING_OP_ASYNC_CANCEL, -1, 0, 0, 0, user_data, flags, sqe_flags)

    def prep_openat(
        self,
        dirfd: int,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        flags: int,
        mode: int = 0o777,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue openat(2) (io_uring_prep_openat(3)); res is the new fd or -errno.
        Use :data:`AT_FDCWD` for *dirfd*.

        Raises:
            ValueError: *path* contains a NUL byte, or *user_data* in flight.
        """
        p = self._path(path)
        return self._prep_held(
            p, abi.IORING_OP_OPENAT, dirfd, p.address, mode, 0, user_data, flags, sqe_flags
        )

    def prep_openat_direct(
        self,
        dirfd: int,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        flags: int,
        mode: int,
        file_index: int,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue openat(2) into the registered file slot *file_index*
        (io_uring_prep_openat_direct(3)): the file becomes a *direct
        descriptor*, used as the fd of later requests with
        ``IOSQE_FIXED_FILE`` (also requests linked after this one, since the
        slot is known when they are prepared), never in the process's fd table.
        ``IORING_FILE_INDEX_ALLOC`` (``0xFFFFFFFF``) lets the kernel pick
        a free slot and report it as res.  The file table must be registered
        (:meth:`register_files`, ``-1`` for free slots); a slot in use is
        replaced.  ``O_CLOEXEC`` is refused (EINVAL): direct descriptors are
        never inherited.  Linux 5.15.

        Returns:
            The SQE index.  The CQE's res is 0 (the slot with
            ``IORING_FILE_INDEX_ALLOC``) or -errno.

        Raises:
            ValueError: *path* contains a NUL byte, or *user_data* in flight.
        """
        p = self._path(path)
        slot = file_index if file_index == abi.IORING_FILE_INDEX_ALLOC else file_index + 1
        return self._prep_held(
            p, abi.IORING_OP_OPENAT, dirfd, p.address, mode, 0, user_data, flags, sqe_flags, 0, slot
        )

    def prep_close(self, fd: int, *, user_data: int = 0, sqe_flags: int = 0) -> int:
        """Queue close(2) of *fd* (io_uring_prep_close(3))."""
        return self._prep_rw(abi.IORING_OP_CLOSE, fd, 0, 0, 0, user_data, 0, sqe_flags)

    def prep_close_direct(self, file_index: int, *, user_data: int = 0, sqe_flags: int = 0) -> int:
        """Queue the close of the direct descriptor in slot *file_index*
        (io_uring_prep_close_direct(3)); the slot is free once its CQE (res
        0, or -EBADF for an empty slot) has come.  Linux 5.15."""
        return self._prep_rw(
            abi.IORING_OP_CLOSE, 0, 0, 0, 0, user_data, 0, sqe_flags, 0, file_index + 1
        )

    def prep_statx(
        self,
        dirfd: int,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        flags: int,
        mask: int,
        statxbuf: Any,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue statx(2) (io_uring_prep_statx(3)) filling *statxbuf*.

        Args:
            statxbuf: a writable buffer of at least :data:`STATX_SIZE` bytes,
                which receives ``struct statx``.

        Raises:
            ValueError: *statxbuf* is too small, or *path* contains a NUL byte.
            TypeError: *statxbuf* is not writable.
        """
        out = pin(statxbuf, writable=True)
        if out.nbytes < STATX_SIZE:
            out.release()
            raise ValueError(f"statx buffer must hold {STATX_SIZE} bytes, not {out.nbytes}")
        p = self._path(path)
        return self._prep_held(
            (p, out),
            abi.IORING_OP_STATX,
            dirfd,
            p.address,
            mask,
            out.address,
            user_data,
            flags,
            sqe_flags,
        )

    def prep_fallocate(
        self,
        fd: int,
        mode: int,
        offset: int,
        length: int,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue fallocate(2) (io_uring_prep_fallocate(3))."""
        return self._prep_rw(
            abi.IORING_OP_FALLOCATE, fd, length, mode, offset, user_data, 0, sqe_flags
        )

    def prep_renameat(
        self,
        olddirfd: int,
        oldpath: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        newdirfd: int,
        newpath: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        flags: int = 0,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue renameat2(2) (io_uring_prep_renameat(3))."""
        old, new = self._path(oldpath), self._path(newpath)
        return self._prep_held(
            (old, new),
            abi.IORING_OP_RENAMEAT,
            olddirfd,
            old.address,
            newdirfd,
            new.address,
            user_data,
            flags,
            sqe_flags,
        )

    def prep_unlinkat(
        self,
        dirfd: int,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        flags: int = 0,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue unlinkat(2) (io_uring_prep_unlinkat(3)); ``AT_REMOVEDIR`` in
        *flags* removes a directory."""
        p = self._path(path)
        return self._prep_held(
            p, abi.IORING_OP_UNLINKAT, dirfd, p.address, 0, 0, user_data, flags, sqe_flags
        )

    def prep_mkdirat(
        self,
        dirfd: int,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        mode: int = 0o777,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue mkdirat(2) (io_uring_prep_mkdirat(3))."""
        p = self._path(path)
        return self._prep_held(
            p, abi.IORING_OP_MKDIRAT, dirfd, p.address, mode, 0, user_data, 0, sqe_flags
        )
