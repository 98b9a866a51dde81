"""IOBatch: preallocated request slots on one context, the lean path."""

from __future__ import annotations

import ctypes
import errno
import struct
from collections.abc import Sequence
from typing import Any

from xaio import _syscall
from xaio._abi.aio import (
    IO_EVENT_STRUCT,
    IOCB_CMD_FDSYNC,
    IOCB_CMD_FSYNC,
    IOCB_CMD_PREAD,
    IOCB_CMD_PWRITE,
    IOCB_FLAG_RESFD,
    io_event,
    iocb,
)
from xaio._buffers import Pin, pin
from xaio._syscall import Timespec, oserror, timespec_from_seconds
from xaio.linux._context import (
    _FAST_GETEVENTS,
    _FAST_SUBMIT,
    IOContext,
    _as_context,
    _check_nr,
    _take_ring_events,
    _user_ring,
)
from xaio.linux._iocb import _U32, IocbInFlightError

_I64 = struct.Struct("<q")
_KEY_AT = struct.Struct("<8xI")  # aio_key
_IOCB_SIZE = 64
_IOCB_OFFSET_AT = iocb.aio_offset.offset
_IOCB_SHIFT = 6


class IOBatch:
    """A preallocated array of request slots on one context: the fast path.

    Each of the *capacity* slots is a ``struct iocb`` at a fixed address in one
    ctypes array.  Preparing a slot (:meth:`prep_pread`...) pins its buffer
    once; re-preparing it with the same buffer object costs no allocation, and
    :meth:`set_offset` changes only the offset.  :meth:`submit` hands any set of
    slots to the kernel in one ``io_submit``; :meth:`reap` collects completions
    into the preallocated lists :attr:`done_slots` / :attr:`done_res` — reading
    the completion ring from user space when events are already there (x86-64),
    making a system call only to wait.

    Not thread-safe: one thread submits and reaps (destroying the context from
    another thread is safe).  A slot is busy from submit until reaped; the
    batch refuses to re-prepare or re-submit a busy slot.
    """

    __slots__ = (
        "ctx",
        "capacity",
        "done_slots",
        "done_res",
        "_iocbs",
        "_base",
        "_addrs",
        "_ptrs",
        "_ptrs_addr",
        "_events",
        "_events_addr",
        "_bufs",
        "_pins",
        "_busy",
        "_nbusy",
        "_ring",
        "_ring_nr",
        "_ts",
        "_ts_addr",
        "_unpack_from",
        "_mem",
        "_events_mem",
        "_cid",
        "_cptrs",
        "_cevents",
        "_cts",
        "_io_submit",
        "_io_getevents",
    )

    def __init__(self, ctx: IOContext, capacity: int) -> None:
        ctx = _as_context(ctx)
        capacity = _check_nr("capacity", capacity)
        if capacity <= 0:
            raise ValueError("capacity must be > 0")
        ctx._check_usable()
        self.ctx = ctx
        self.capacity = capacity
        self._iocbs = (iocb * capacity)()
        self._base = ctypes.addressof(self._iocbs)
        self._mem = memoryview(self._iocbs).cast("B")
        self._addrs = [self._base + i * _IOCB_SIZE for i in range(capacity)]
        self._ptrs = (ctypes.c_void_p * capacity)()
        self._ptrs_addr = ctypes.addressof(self._ptrs)
        self._events = (io_event * capacity)()
        self._events_addr = ctypes.addressof(self._events)
        self._events_mem = memoryview(self._events).cast("B")
        self._bufs: list[Any] = [None] * capacity
        self._pins: list[Pin | None] = [None] * capacity
        self._busy = [False] * capacity
        self._nbusy = 0
        #: After :meth:`reap`: the slots that completed, and their results
        #: (bytes or -errno), in the first n entries.
        self.done_slots: list[int] = [0] * capacity
        #: The results of the slots in :attr:`done_slots`, in the same order.
        self.done_res: list[int] = [0] * capacity
        self._ts = Timespec()
        self._ts_addr = ctypes.addressof(self._ts)
        self._ring, self._ring_nr = _user_ring(ctx)
        self._unpack_from = IO_EVENT_STRUCT.unpack_from
        # Arguments of the hot syscalls, made once (see _syscall.fast_syscall).
        self._cid = ctypes.c_void_p(ctx.id)
        self._cptrs = ctypes.c_void_p(self._ptrs_addr)
        self._cevents = ctypes.c_void_p(self._events_addr)
        self._cts = ctypes.c_void_p(self._ts_addr)
        self._io_submit = _FAST_SUBMIT
        self._io_getevents = _FAST_GETEVENTS
        with ctx._lock:
            ctx._batches.add(self)

    # -- preparing slots --------------------------------------------------------------
    def _prep(
        self, slot: int, opcode: int, fd: int, buf: Any, offset: int, rw_flags: int, data: int
    ) -> None:
        if self._busy[slot]:
            raise IocbInFlightError(f"slot {slot} is in flight")
        st = self._iocbs[slot]
        if buf is None:
            address = nbytes = 0
            old = self._pins[slot]
            if old is not None:
                old.release()
            self._pins[slot] = None
            self._bufs[slot] = None
        elif buf is self._bufs[slot] and self._pins[slot] is not None:
            p = self._pins[slot]
            assert p is not None
            if opcode == IOCB_CMD_PREAD and p.readonly:
                raise TypeError("a writable buffer is required for a read")
            address, nbytes = p.address, p.nbytes
        else:
            p = pin(buf, writable=opcode == IOCB_CMD_PREAD)
            old = self._pins[slot]
            if old is not None:
                old.release()
            self._pins[slot] = p
            self._bufs[slot] = buf
            address, nbytes = p.address, p.nbytes
        st.aio_data = data
        st.aio_key = 0
        st.aio_rw_flags = rw_flags
        st.aio_lio_opcode = opcode
        st.aio_reqprio = 0
        st.aio_fildes = fd & _U32
        st.aio_buf = address
        st.aio_nbytes = nbytes
        st.aio_offset = offset
        st.aio_flags = 0
        st.aio_resfd = 0

    def prep_pread(
        self, slot: int, fd: int, buf: Any, offset: int, *, rw_flags: int = 0, data: int = 0
    ) -> None:
        """Make *slot* a read of ``len(buf)`` bytes of *fd* at *offset*."""
        self._prep(slot, IOCB_CMD_PREAD, fd, buf, offset, rw_flags, data)

    def prep_pwrite(
        self, slot: int, fd: int, buf: Any, offset: int, *, rw_flags: int = 0, data: int = 0
    ) -> None:
        """Make *slot* a write of *buf* to *fd* at *offset*."""
        self._prep(slot, IOCB_CMD_PWRITE, fd, buf, offset, rw_flags, data)

    def prep_fsync(self, slot: int, fd: int, *, datasync: bool = False, data: int = 0) -> None:
        """Make *slot* an fsync (or fdatasync) of *fd*."""
        op = IOCB_CMD_FDSYNC if datasync else IOCB_CMD_FSYNC
        self._prep(slot, op, fd, None, 0, 0, data)

    def set_offset(self, slot: int, offset: int) -> None:
        """Change only the file offset of a prepared, idle slot."""
        if self._busy[slot]:
            raise IocbInFlightError(f"slot {slot} is in flight")
        _I64.pack_into(self._mem, slot * _IOCB_SIZE + _IOCB_OFFSET_AT, offset)

    def set_eventfd(self, slot: int, fd: int | None) -> None:
        """Signal eventfd *fd* when *slot* completes (None: stop doing so)."""
        st = self._iocbs[slot]
        if fd is None:
            st.aio_flags &= ~IOCB_FLAG_RESFD
            st.aio_resfd = 0
        else:
            st.aio_flags |= IOCB_FLAG_RESFD
            st.aio_resfd = fd

    @property
    def in_flight(self) -> int:
        """Number of slots submitted and not yet reaped."""
        return self._nbusy

    def is_busy(self, slot: int) -> bool:
        """True while *slot* is submitted and its completion not yet reaped."""
        return self._busy[slot]

    # -- submitting and reaping ---------------------------------------------------
    def submit(self, slots: Sequence[int], chunk: int = 0) -> int:
        """Submit prepared *slots*; return the number accepted (partial
        submission as :func:`io_submit`).

        Args:
            slots: slot numbers, each idle and prepared.
            chunk: 0 submits all of them with one ``io_submit``; N > 0 with
                one ``io_submit`` per N slots.  ``io_submit`` plugs the block
                queue for more than 2 requests and lets the device see them
                only when the call ends, so when a whole batch completes at
                once (a virtio disk does that) resubmitting it in one call
                leaves the device idle meanwhile; chunks of 4-8 keep it busy
                for a few more system calls.

        Raises:
            IocbInFlightError: a slot is in flight (or listed twice): nothing
                was submitted.
            OSError: the first slot was refused (nothing was submitted).
        """
        ctx = self.ctx
        if ctx._destroyed or ctx._foreign:
            raise oserror(errno.EINVAL)
        busy = self._busy
        ptrs = self._ptrs
        addrs = self._addrs
        n = len(slots)
        if n > self.capacity:
            raise ValueError("more slots than the batch holds")
        for i, s in enumerate(slots):
            if busy[s]:
                for t in slots[:i]:
                    busy[t] = False
                raise IocbInFlightError(f"slot {s} is in flight")
            busy[s] = True
            ptrs[i] = addrs[s]
        step = chunk if chunk > 0 else n
        done = 0
        ret = 0
        while done < n:
            m = n - done if n - done < step else step
            cptrs = self._cptrs if not done else ctypes.c_void_p(self._ptrs_addr + done * 8)
            ret = self._io_submit(self._cid, m, cptrs)
            if ret <= 0:
                break
            done += ret
            if ret < m:
                break
        if done < n:
            for s in slots[done:]:
                busy[s] = False
        self._nbusy += done
        if not done and ret < 0:
            raise oserror(-ret)
        return done

    def reap(self, min_nr: int = 1, timeout: float | None = None, max_nr: int = 0) -> int:
        """Collect completions: wait for at least *min_nr* (``timeout``
        seconds at most; None waits), take as many as are there -- at most
        *max_nr* if it is > 0 (the rest wait for the next reap; io_getevents'
        *nr*).  Taking a few at a time lets a caller resubmit them while the
        device still has the others.

        Returns n: ``done_slots[:n]`` and ``done_res[:n]`` are the completed
        slots and their results (bytes transferred or ``-errno``).

        Raises:
            ValueError: *max_nr* below *min_nr*.
            OSError: ``EINVAL`` if the context was destroyed.
        """
        ctx = self.ctx
        n = 0
        ring = self._ring
        cap = self.capacity
        if max_nr > 0:
            if max_nr < min_nr:
                raise ValueError("max_nr must be >= min_nr")
            cap = min(cap, max_nr)
        if ring is not None:
            with ctx._unmap_lock:  # io_destroy unmaps the ring: never read a dead one
                if not (ctx._destroyed or ctx._foreign):
                    n = self._reap_ring(ring, cap)
        if n >= min_nr:
            return n
        want = min_nr - n
        while True:
            if timeout is None:
                cts = None
            else:
                timespec_from_seconds(timeout, self._ts)
                cts = self._cts
            if ctx._destroyed or ctx._foreign:
                ret = -errno.EINVAL
            else:
                cev = self._cevents if not n else ctypes.c_void_p(self._events_addr + n * 32)
                ret = self._io_getevents(self._cid, want, cap - n, cev, cts)
            if ret == -errno.EINTR:
                _syscall.run_signal_handlers()
                continue
            break
        if ret < 0:
            if n:
                return n
            raise oserror(-ret)
        mem = self._events_mem
        unpack = self._unpack_from
        base = self._base
        busy = self._busy
        done_slots = self.done_slots
        done_res = self.done_res
        for i in range(n, n + ret):
            _, obj, res, _ = unpack(mem, i * 32)
            s = (obj - base) >> _IOCB_SHIFT
            done_slots[i] = s
            done_res[i] = res
            busy[s] = False
        self._nbusy -= ret
        return n + ret

    def _reap_ring(self, ring: memoryview, limit: int) -> int:
        events: list[tuple[int, int, int, int]] = []
        n = _take_ring_events(ring, self._ring_nr, limit, events)
        if n:
            base = self._base
            busy = self._busy
            done_slots = self.done_slots
            done_res = self.done_res
            for i, (_data, obj, res, _res2) in enumerate(events):
                s = (obj - base) >> _IOCB_SHIFT
                done_slots[i] = s
                done_res[i] = res
                busy[s] = False
            self._nbusy -= n
        return n

    def _context_destroyed(self) -> None:
        # io_destroy returned: the kernel is done with every slot.
        self._busy = [False] * self.capacity
        self._nbusy = 0
        self._ring = None

    def close(self) -> None:
        """Release every pinned buffer.  Refused while slots are in flight
        (reap them, or destroy the context: that completes them)."""
        if self._nbusy and not self.ctx.closed:
            raise IocbInFlightError(f"{self._nbusy} slots are in flight")
        with self.ctx._lock:
            self.ctx._batches.discard(self)
        for i, p in enumerate(self._pins):
            if p is not None:
                p.release()
            self._pins[i] = None
            self._bufs[i] = None
        self._nbusy = 0
        self._busy = [False] * self.capacity
        self._ring = None

    def __repr__(self) -> str:
        return f"<IOBatch capacity={self.capacity} in_flight={self._nbusy} ctx={self.ctx!r}>"
