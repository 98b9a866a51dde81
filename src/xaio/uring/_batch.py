"""The :class:`UringBatch`: preallocated request slots on a private ring."""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import Any

from xaio._abi import uring as abi
from xaio._buffers import Pin, pin
from xaio.uring._prep import prep_rw
from xaio.uring._ring import Ring
from xaio.uring._setup import _SQE_SIZE, _U32, _U64, Completion, finalize


class SlotInFlightError(RuntimeError):
    """A :class:`UringBatch` slot was re-prepared or re-submitted while in flight."""


_OFFSET_AT = 8  # byte offset of ``off`` in struct io_uring_sqe
_SET_OFFSET = struct.Struct("<Q").pack_into


class UringBatch:
    """Preallocated request slots on a private ring: the io_uring lean path.

    The io_uring counterpart of :class:`xaio.linux.IOBatch`, with the same
    vocabulary.  Each of the *capacity* slots keeps a ready-made 64-byte SQE
    image; preparing a slot (:meth:`prep_pread`...) pins its buffer once,
    :meth:`set_offset` patches only the offset, and :meth:`submit` copies the
    images of the given slots into the SQ (one C-level copy each, ``user_data``
    = the slot) and enters the kernel.  :meth:`reap` takes CQEs from
    the mapped CQ into the preallocated lists :attr:`done_slots` /
    :attr:`done_res`, making a system call only to wait.  Python's cost per
    request is well below the :class:`UringEngine` path's, which builds an
    SQE from an :class:`~xaio._ops.Operation` each time.

    Buffers: a slot's buffer stays pinned from :meth:`prep_pread` until the
    slot is re-prepared with another buffer or the batch is closed; the ring
    also holds it while the slot is in flight, so closing (or garbage
    collecting) the batch with requests in flight cancels them and waits for
    their completions before anything is released.

    Not thread-safe: one thread submits and reaps.  A slot is busy from
    :meth:`submit` until :meth:`reap` returns it; the batch refuses to
    re-prepare or re-submit a busy slot (:class:`SlotInFlightError`).
    Corresponds to io_uring_prep_read(3)/io_uring_prep_write(3),
    io_uring_submit(3) and io_uring_peek_batch_cqe(3) on a ring of its own.
    """

    __slots__ = (
        "capacity",
        "done_slots",
        "done_res",
        "_ring",
        "_images",
        "_pins",
        "_bufs",
        "_busy",
        "_nbusy",
        "_closed",
        "_fixed",
        "_ready",
        "_cqes",
    )

    def __init__(self, capacity: int, *, fixed_buffers: bool = True, setup_flags: int = 0) -> None:
        """Create the ring (SQ of at least *capacity* entries, CQ twice that).

        Args:
            capacity: number of slots, 1..32768.
            fixed_buffers: register each slot's buffer with the ring (slot =
                buffer index) and use ``READ_FIXED``/``WRITE_FIXED``, which
                spares the kernel pinning the pages on every request (~0.8 us
                of system time per 4 KiB O_DIRECT read here).  A buffer the
                kernel will not register (read-only memory, ``RLIMIT_MEMLOCK``
                exhausted, a kernel before 5.19) is used unregistered.
            setup_flags: extra ``IORING_SETUP_*`` flags for the ring.

        Raises:
            TypeError, ValueError: a bad *capacity*.
            OSError: io_uring is unavailable (ENOSYS/EPERM with the cause).
        """
        self._closed = True
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError("capacity must be an int")
        if not 0 < capacity <= 32768:
            raise ValueError("capacity must be between 1 and 32768")
        self.capacity = capacity
        self._ring = Ring(capacity, setup_flags)
        self._images = [bytearray(_SQE_SIZE) for _ in range(capacity)]
        self._pins: list[Pin | None] = [None] * capacity
        self._bufs: list[Any] = [None] * capacity
        self._busy = [False] * capacity
        self._nbusy = 0
        #: After :meth:`reap`: the slots that completed and their results
        #: (bytes, or -errno), in the first n entries.
        self.done_slots: list[int] = [0] * capacity
        #: The results of the slots in :attr:`done_slots`, in the same order.
        self.done_res: list[int] = [0] * capacity
        self._ready = [False] * capacity
        self._cqes: list[Completion] = []  # scratch for _take
        self._fixed = bool(fixed_buffers)
        if self._fixed:
            try:
                self._ring.register_buffers_sparse(capacity)
            except OSError:  # before Linux 5.19, or no locked memory left
                self._fixed = False
        self._closed = False

    @property
    def fixed_buffers(self) -> bool:
        """True if the batch registers its slots' buffers with the ring."""
        return self._fixed

    def is_registered(self, slot: int) -> bool:
        """True if *slot*'s buffer is registered (its requests use ``*_FIXED``):
        the ring's table (slot = buffer index) holds it."""
        return self._ring.is_buffer_registered(slot)

    @property
    def ring(self) -> Ring:
        """The batch's own :class:`Ring` (statistics, probing)."""
        return self._ring

    @property
    def in_flight(self) -> int:
        """Number of slots submitted and not yet reaped."""
        return self._nbusy

    def is_busy(self, slot: int) -> bool:
        """True while *slot* is submitted and its completion not yet reaped."""
        return self._busy[slot]

    # -- preparing slots --------------------------------------------------------------
    def _check_slot(self, slot: int) -> None:
        if self._closed:
            raise ValueError("the batch is closed")
        if isinstance(slot, bool) or not isinstance(slot, int):
            raise TypeError("slot must be an int")
        if not 0 <= slot < self.capacity:
            raise IndexError(f"slot {slot} out of range 0..{self.capacity - 1}")
        if self._busy[slot]:
            raise SlotInFlightError(f"slot {slot} is in flight")

    def _prep(
        self, slot: int, opcode: int, fd: int, buf: Any, offset: int, op_flags: int, ioprio: int
    ) -> None:
        self._check_slot(slot)
        if isinstance(fd, bool) or not isinstance(fd, int) or not isinstance(offset, int):
            raise TypeError("fd and offset must be ints")
        if not 0 <= fd <= 0x7FFFFFFF:
            raise ValueError(f"bad fd: {fd}")
        if not -1 <= offset < 1 << 63:
            raise ValueError(f"bad offset: {offset}")
        if buf is None:
            address = nbytes = 0
            self._unpin(slot)
        elif buf is self._bufs[slot] and self._pins[slot] is not None:
            p = self._pins[slot]
            assert p is not None
            if opcode == abi.IORING_OP_READ and p.readonly:
                raise TypeError("a writable buffer is required for a read")
            address, nbytes = p.address, p.nbytes
        else:
            p = pin(buf, writable=opcode == abi.IORING_OP_READ)
            self._unpin(slot)
            self._pins[slot] = p
            self._bufs[slot] = buf
            address, nbytes = p.address, p.nbytes
            if self._fixed:
                try:
                    self._ring.register_buffers_update(slot, [buf])
                except (OSError, TypeError):  # read-only or unpinnable memory
                    pass
        buf_index = 0
        if self.is_registered(slot):
            if opcode == abi.IORING_OP_READ:
                opcode, buf_index = abi.IORING_OP_READ_FIXED, slot
            elif opcode == abi.IORING_OP_WRITE:
                opcode, buf_index = abi.IORING_OP_WRITE_FIXED, slot
        prep_rw(
            self._images[slot], 0, opcode, fd, address, nbytes, offset, slot,
            op_flags & _U32, 0, buf_index, 0, 0, ioprio,
        )  # fmt: skip
        self._ready[slot] = True

    def _unpin(self, slot: int) -> None:
        old = self._pins[slot]
        if old is not None:
            old.release()
        self._pins[slot] = None
        self._bufs[slot] = None
        if self.is_registered(slot):
            self._ring.register_buffers_update(slot, [None])

    def prep_pread(self, slot: int, fd: int, buf: Any, offset: int, *, rw_flags: int = 0) -> None:
        """Make *slot* a read of ``len(buf)`` bytes of *fd* at *offset*
        (-1: the file position) with ``RWF_*`` *rw_flags*.

        Raises:
            SlotInFlightError: the slot is in flight.
            TypeError: *buf* is read-only or not a buffer.
            IndexError, ValueError: a bad slot, fd or offset; the batch is closed.
        """
        self._prep(slot, abi.IORING_OP_READ, fd, buf, offset, rw_flags, 0)

    def prep_pwrite(self, slot: int, fd: int, buf: Any, offset: int, *, rw_flags: int = 0) -> None:
        """Make *slot* a write of *buf* to *fd* at *offset* (as :meth:`prep_pread`)."""
        self._prep(slot, abi.IORING_OP_WRITE, fd, buf, offset, rw_flags, 0)

    def prep_fsync(self, slot: int, fd: int, *, datasync: bool = False) -> None:
        """Make *slot* an fsync (or fdatasync) of *fd*."""
        flags = abi.IORING_FSYNC_DATASYNC if datasync else 0
        self._prep(slot, abi.IORING_OP_FSYNC, fd, None, 0, flags, 0)

    def set_offset(self, slot: int, offset: int) -> None:
        """Change only the file offset of a prepared, idle slot.

        Raises:
            SlotInFlightError: the slot is in flight.
            IndexError: a bad slot.
        """
        if slot < 0 or self._busy[slot]:
            self._check_slot(slot)
        _SET_OFFSET(self._images[slot], _OFFSET_AT, offset & _U64)

    # -- submitting and reaping ---------------------------------------------------
    def submit(self, slots: Sequence[int], chunk: int = 0) -> int:
        """Hand the prepared *slots* to the kernel.

        Args:
            slots: slot numbers, each idle and prepared (at most *capacity*).
            chunk: 0 enters the kernel once for all of them; N > 0 once per N
                SQEs (the block layer plugs a submission of more than 2
                requests until the call ends, so smaller groups get the device
                started sooner; see the module essay).

        Returns:
            ``len(slots)``: the kernel takes every SQE (per-request errors
            come back as completions with -errno).

        Raises:
            SlotInFlightError: a slot is in flight or listed twice (nothing
                was submitted).
            ValueError: a slot that is not prepared or out of range; the
                batch is closed; more slots than it holds (nothing was submitted).
            OSError: EINVAL in a forked child; the kernel's error (the slots
                stay busy until reaped: the SQEs are queued).
        """
        if self._closed:
            raise ValueError("the batch is closed")
        ring = self._ring
        ring._check()
        n = len(slots)
        if n > self.capacity:
            raise ValueError("more slots than the batch holds")
        busy = self._busy
        ready = self._ready
        cap = self.capacity
        for i, s in enumerate(slots):
            if not (0 <= s < cap and ready[s]) or busy[s]:
                in_flight = isinstance(s, int) and 0 <= s < cap and busy[s]
                for t in slots[:i]:
                    busy[t] = False
                if in_flight:
                    raise SlotInFlightError(f"slot {s} is in flight (or listed twice)")
                raise ValueError(f"slot {s!r} is not a prepared slot of this batch")
            busy[s] = True
        sqes, tail, mask = ring._sq_begin()
        images = self._images
        for s in slots:
            o = (tail & mask) << 6
            sqes[o : o + 64] = images[s]
            tail += 1
        ring._sq_end(tail)
        ring._hold_each(slots, self._pins)
        self._nbusy += n
        ring._hand_over(chunk if chunk > 0 else 0)
        return n

    def reap(self, min_nr: int = 1, timeout: float | None = None, max_nr: int = 0) -> int:
        """Collect completions: wait for at least *min_nr* (*timeout* seconds
        at most; None waits), take as many as are there -- at most *max_nr*
        if it is > 0 (the rest stay in the CQ for the next reap).

        Returns:
            n: ``done_slots[:n]`` and ``done_res[:n]`` are the completed slots
            and their results (bytes transferred or -errno); fewer than
            *min_nr* only on timeout.

        Raises:
            ValueError: *min_nr* larger than what is in flight (it would wait
                for ever) or than *max_nr*; the batch is closed.
            OSError: EINVAL in a forked child; the kernel's error.
        """
        if self._closed:
            raise ValueError("the batch is closed")
        if min_nr > self._nbusy:
            raise ValueError(f"min_nr={min_nr} but only {self._nbusy} slots are in flight")
        limit = self.capacity
        if max_nr > 0:
            if max_nr < min_nr:
                raise ValueError("max_nr must be >= min_nr")
            limit = max_nr
        ring = self._ring
        ring._check()
        n = self._take(0, limit)
        if n >= min_nr:
            return n
        deadline = None if timeout is None else time.monotonic() + timeout
        while n < min_nr:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready = ring._wait(min_nr - n, left)
            n = self._take(n, limit)
            if not ready:
                break
        return n

    def _take(self, n: int, limit: int) -> int:
        """Move the CQEs waiting in the CQ into done_slots/done_res from index
        *n*, until *limit* entries are filled; returns the new count."""
        cqes = self._cqes
        self._ring._take_cqes(cqes, limit - n)
        busy = self._busy
        capacity = self.capacity
        done_slots = self.done_slots
        done_res = self.done_res
        start = n
        for ud, res, _fl in cqes:
            if ud >= capacity or not busy[ud]:  # pragma: no cover - not ours
                continue
            busy[ud] = False
            done_slots[n] = ud
            done_res[n] = res
            n += 1
        cqes.clear()
        self._nbusy -= n - start
        return n

    # -- closing ------------------------------------------------------------------
    def close(self) -> None:
        """Cancel what is in flight, wait for its completions, release every
        buffer and close the ring.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._ring.close()  # cancels and drains what the ring holds (ours)
        finally:
            for s in range(self.capacity):
                self._unpin(s)
            self._busy = [False] * self.capacity
            self._nbusy = 0

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        finalize(self, self._ring._forked())

    def __enter__(self) -> UringBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"in_flight={self._nbusy}"
        return f"<xaio.uring.UringBatch capacity={self.capacity} {state}>"
