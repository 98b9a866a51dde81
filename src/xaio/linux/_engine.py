"""LinuxAioEngine: the Engine protocol over one Linux AIO context, and the
pool of idle contexts that closed engines leave for the next one."""

from __future__ import annotations

import atexit
import collections
import ctypes
import errno
import os
import select
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

from xaio import _syscall
from xaio._abi.aio import (
    IOCB_CMD_FDSYNC,
    IOCB_CMD_FSYNC,
    IOCB_CMD_POLL,
    IOCB_CMD_PREAD,
    IOCB_CMD_PREADV,
    IOCB_CMD_PWRITE,
    IOCB_CMD_PWRITEV,
    IOCB_FLAG_RESFD,
    IOCB_STRUCT,
    io_event,
    iocb,
)
from xaio._buffers import iovec_array
from xaio._fork import Owner
from xaio._ops import CancelOutcome, InFlight, OpCode, Operation, OpState, check_batch
from xaio._syscall import oserror
from xaio.engine._protocol import Engine, EngineClosedError
from xaio.linux._batch import _IOCB_SHIFT, _IOCB_SIZE, _KEY_AT
from xaio.linux._context import (
    _FAST_GETEVENTS,
    _FAST_SUBMIT,
    _SUBMIT_CHUNK,
    IOContext,
    _check_timeout,
    _iter_events,
    _take_ring_events,
    _user_ring,
    io_destroy,
    io_setup,
)
from xaio.linux._iocb import _U32, _UNSENT_KEY

# ---------------------------------------------------------------------------------
# LinuxAioEngine: the Engine protocol over one context
# ---------------------------------------------------------------------------------

#: Idle contexts a closed LinuxAioEngine left for the next one (nothing in
#: flight, every event reaped), at most _IDLE_MAX: ``io_destroy`` waits for an
#: RCU grace period (~30 ms), which a program that runs one event loop after
#: another (each closing its engine) would otherwise pay per loop.  Emptied in
#: a forked child (the contexts are the parent's) and destroyed at exit.
_IDLE_MAX = 2
_idle_contexts: list[IOContext] = []
_idle_lock = threading.Lock()


def _take_idle_context(nr_events: int) -> IOContext | None:
    """An idle context of *nr_events* from the pool, or None."""
    with _idle_lock:
        for i, ctx in enumerate(_idle_contexts):
            if ctx.nr_events == nr_events and not ctx.closed:
                del _idle_contexts[i]
                return ctx
    return None


def _keep_idle_context(ctx: IOContext) -> bool:
    """Put *ctx* (nothing in flight, its ring empty) in the pool; False if
    the pool is full (the caller destroys it)."""
    with _idle_lock:
        if len(_idle_contexts) >= _IDLE_MAX or ctx.closed:
            return False
        _idle_contexts.append(ctx)
        return True


def _destroy_idle_contexts() -> None:
    with _idle_lock:
        idle = list(_idle_contexts)
        _idle_contexts.clear()
    for ctx in idle:
        if not ctx.closed:
            ctx.destroy()


def _after_fork_in_child() -> None:
    global _idle_lock
    _idle_lock = threading.Lock()  # a parent's thread may have held it
    _idle_contexts.clear()  # the parent's (marked forked away by _context)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_destroy_idle_contexts)

_ENGINE_OPCODES = {
    OpCode.READ: IOCB_CMD_PREAD,
    OpCode.WRITE: IOCB_CMD_PWRITE,
    OpCode.READV: IOCB_CMD_PREADV,
    OpCode.WRITEV: IOCB_CMD_PWRITEV,
    OpCode.FSYNC: IOCB_CMD_FSYNC,
    OpCode.FDATASYNC: IOCB_CMD_FDSYNC,
    OpCode.POLL: IOCB_CMD_POLL,
}
#: The same, indexed by the opcode's value (an IntEnum member indexes a list
#: through ``__index__`` in C; hashing one for a dict is a Python-level call).
_IOCB_CMD: list[int | None] = [_ENGINE_OPCODES.get(code) for code in OpCode]
_E_READ, _E_WRITE, _E_READV, _E_WRITEV = OpCode.READ, OpCode.WRITE, OpCode.READV, OpCode.WRITEV
_E_POLL, _E_NOP = OpCode.POLL, OpCode.NOP
_POLL_ALWAYS = select.POLLERR | select.POLLHUP  # reported whatever the events asked
_E_SUBMITTED = OpState.SUBMITTED
_E_CANCEL_REQUESTED = OpState.CANCEL_REQUESTED
_E_DONE = OpState.DONE
#: Requests that wait in the backlog on a reference to their file (a dup).
_E_HELD = frozenset({OpCode.WRITE, OpCode.WRITEV, OpCode.FSYNC, OpCode.FDATASYNC})


def _poll_result(op: Operation, res: int) -> int:
    """What a poll delivers for the event result *res*: poll(2)'s revents."""
    if op.state is _E_CANCEL_REQUESTED:
        return -errno.ECANCELED  # a cancelled poll reports 0
    if res > 0:
        # a poll completed by a wake-up reports the waker's whole mask (a
        # pipe: POLLIN|POLLRDNORM); poll(2) and io_uring keep what was asked,
        # and errors/hang-ups
        res &= op.flags | _POLL_ALWAYS
    return res


class LinuxAioEngine(Engine):
    """The :class:`~xaio.engine.Engine` protocol on one Linux AIO context.

    Every request signals one eventfd (``IOCB_FLAG_RESFD``): :meth:`fileno`.
    Requests beyond *capacity* wait in a backlog and are submitted as slots
    free up.  Only polls can be cancelled once submitted (the kernel cannot
    cancel a read or write); a cancelled poll completes with ``-ECANCELED``.
    A poll's result is poll(2)'s revents (the events asked for, plus
    POLLERR/POLLHUP), as on the other engines.

    In a forked child :meth:`close` only closes the child's eventfd.

    Only give it what Linux AIO does asynchronously: O_DIRECT regular files
    and polls.  Anything else makes ``io_submit`` do the I/O itself and block;
    :func:`xaio.engine.create_engine` routes such requests to threads.

    ``io_submit`` takes a reference to each request's file, so a submitted
    request is safe from its fd being closed and the number reused.  A write
    or sync that ``submit`` leaves in the backlog (beyond *capacity*) holds
    one of its own until it completes (an ``os.dup``; EBADF if the fd was not
    open), and is submitted on that.
    """

    name = "linux"
    slow_close = True

    def __init__(self, capacity: int = 256) -> None:
        if not isinstance(capacity, int) or capacity <= 0:
            raise ValueError("capacity must be a positive int")
        self.capacity = capacity
        self._ctx = _take_idle_context(capacity) or io_setup(capacity)
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._iocbs = (iocb * capacity)()
        self._base = ctypes.addressof(self._iocbs)
        self._mem = memoryview(self._iocbs).cast("B")
        self._ptrs = (ctypes.c_void_p * capacity)()
        self._events = (io_event * capacity)()
        self._events_mem = memoryview(self._events).cast("B")
        self._cid = ctypes.c_void_p(self._ctx.id)
        self._cptrs = ctypes.c_void_p(ctypes.addressof(self._ptrs))
        self._cevents = ctypes.c_void_p(ctypes.addressof(self._events))
        self._iovecs: list[Any] = [None] * capacity
        self._ring, self._ring_nr = _user_ring(self._ctx)
        self._inflight = InFlight()
        self._backlog: collections.deque[Operation] = collections.deque()
        self._ready: list[tuple[Operation, int]] = []
        #: events taken from the kernel, not yet matched to their operations
        #: (not empty only after an interrupted reap)
        self._events_taken: list[tuple[int, int, int, int]] = []
        #: filled and in the table, not (yet) handed to the kernel (see _flush)
        self._unsent: list[Operation] = []
        #: taken by the kernel, or refused: unknowable after a Ctrl-C (_settle)
        self._maybe: set[Operation] = set()
        self._lock = threading.RLock()
        #: backlog op -> a dup of its fd (-1: not open at submit): writes, syncs
        self._held: dict[Operation, int] = {}
        self._closed = False
        self._owner = Owner("Linux AIO engine")
        self._stats = {"submitted": 0, "completed": 0, "syscalls_submit": 0, "cancelled": 0}

    # -- protocol -------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        """The eventfd that is readable while completions wait for :meth:`reap`.

        Raises:
            EngineClosedError: the engine is closed.
        """
        if self._closed:
            raise EngineClosedError("engine is closed")
        return self._efd

    def submit(self, ops: Sequence[Operation]) -> int:
        """Submit *ops*: one iocb each, ``io_submit`` in chunks; beyond
        *capacity* they wait in a backlog.  Returns ``len(ops)``.

        When it raises, nothing was taken.

        Raises:
            EngineClosedError: the engine is closed.
            RuntimeError, TypeError, ValueError: a malformed batch
                (:func:`xaio._ops.check_batch`).
            OSError: EINVAL in a forked child.
        """
        check_batch(ops)
        return self.submit_checked(ops)

    def submit_checked(self, ops: Sequence[Operation]) -> int:
        """:meth:`submit` of a batch that already passed
        :func:`xaio._ops.check_batch`: for an engine that checks a batch once
        and hands parts of it to other engines (:class:`xaio.engine.RoutedEngine`)."""
        with self._lock:
            if self._closed:
                raise EngineClosedError("engine is closed")
            self._owner.check()
            backlog = self._backlog
            for op in ops:
                if op.opcode is _E_NOP:
                    op.state = _E_SUBMITTED
                    self._post(op, 0)
                else:
                    backlog.append(op)
            self._flush()
            if backlog:
                self._hold_backlog(ops)
        return len(ops)

    def _hold_backlog(self, ops: Sequence[Operation]) -> None:
        """Take a reference to the file of each write and sync of *ops* left
        in the backlog (lock held): it is filled in later, by number."""
        held = self._held
        backlog = self._backlog
        for op in ops:
            if op.opcode in _E_HELD and op.state is OpState.QUEUED and op in backlog:
                try:
                    held[op] = os.dup(op.fd)
                except OSError as e:
                    if e.errno == errno.EBADF:
                        held[op] = -1
                    # EMFILE...: it is filled in by number

    def _unhold(self, op: Operation) -> None:
        fd = self._held.pop(op, -1)
        if fd >= 0:
            os.close(fd)

    def owns(self, op: Operation) -> bool:
        """True if *op* was given to this engine and has not been delivered."""
        with self._lock:
            if op.state is OpState.QUEUED:
                return op in self._backlog
            return self._inflight.get(op.key) is op or any(o is op for o, _ in self._ready)

    def _post(self, op: Operation, res: int) -> None:
        """Complete *op* with *res* at the next reap (lock held)."""
        self._ready.append((op, res))
        os.eventfd_write(self._efd, 1)

    def _flush(self) -> None:
        """Move backlog operations into free slots and submit them (lock held).

        An operation moves from the backlog to ``self._unsent`` (filled into
        its iocb, then entered in the in-flight table) in one
        :meth:`InFlight.enter_head <xaio._ops.InFlight.enter_head>`, and
        leaves ``self._unsent`` when ``io_submit`` says the kernel took it.
        An exception from a signal handler (Ctrl-C) that comes as
        ``io_submit`` returns, before that bookkeeping, leaves taken iocbs in
        ``self._unsent``: :meth:`_settle` then tells them apart by their
        ``aio_key``, which the kernel sets to 0 in every iocb it reads
        (``_UNSENT_KEY`` before)."""
        unsent = self._unsent
        if unsent:
            self._settle()
        backlog = self._backlog
        if not backlog and not unsent:
            return
        inflight = self._inflight
        room = self.capacity - len(inflight)
        enter = inflight.enter_head
        fill = self._fill
        while backlog and room > 0:
            try:
                # filled into its iocb, then the whole move, under one key
                # (check_batch ruled out a second entry)
                enter(backlog, unsent, fill)
            except Exception as e:
                op = backlog[0]
                # taken by submit, so it ends as a completion: a field changed
                # to garbage since submit (check_batch vetted it), no memory,
                # or an fd that was not open at submit
                del backlog[0]
                op.state = _E_SUBMITTED
                self._post(
                    op, -errno.EBADF if getattr(e, "errno", 0) == errno.EBADF else -errno.EINVAL
                )
                continue
            room -= 1
        ptrs = self._ptrs
        base = self._base
        while unsent:
            # at most _SUBMIT_CHUNK per call: see IOBatch.submit's chunk
            m = min(len(unsent), _SUBMIT_CHUNK)
            for j in range(m):
                ptrs[j] = base + (unsent[j].key << _IOCB_SHIFT)
            ret = _FAST_SUBMIT(self._cid, m, self._cptrs)
            self._stats["syscalls_submit"] += 1
            if ret > 0:
                del unsent[:ret]
                self._stats["submitted"] += ret
                continue
            if ret == -errno.EAGAIN:
                break  # ring full (events not reaped yet): the rest go next time
            # the request first in line was refused: it completes with the
            # error (its move to _ready in one call, as above)
            key = unsent[0].key
            self._iovecs[key] = None
            inflight.retire_head(key, ret, unsent, self._ready)
            os.eventfd_write(self._efd, 1)

    def _maybe_left(self) -> int:
        """How many of ``self._maybe`` have not completed."""
        maybe = self._maybe
        if maybe:
            maybe.difference_update([op for op in maybe if op.state is _E_DONE])
        return len(maybe)

    def _settle(self) -> None:
        """After an interrupted :meth:`_flush`: drop from ``self._unsent`` the
        operations the kernel took (``aio_key`` 0), which then complete as
        usual.  It reads a batch in order and stops at the first it refuses,
        so those form a prefix; the last of them may be one refused after its
        key was written (a read on a write-only fd): it goes to
        ``self._maybe``, which :meth:`close` does not wait on for ever."""
        unsent = self._unsent
        mem = self._mem
        n = 0
        while n < len(unsent) and not _KEY_AT.unpack_from(mem, unsent[n].key * _IOCB_SIZE)[0]:
            n += 1
        if n:
            self._maybe.add(unsent[n - 1])
            del unsent[:n]

    def _fill(self, key: int, op: Operation) -> None:
        code = op.opcode
        fd = op.fd
        if self._held:
            fd = self._held.get(op, fd)
            if fd < 0:
                raise OSError(errno.EBADF, "not open when it was submitted")
        opcode = _IOCB_CMD[code]
        if opcode is None:
            raise ValueError(f"the linux engine cannot run {code.name}")
        pins = op.pins
        offset = op.offset
        rw_flags = op.flags
        if code is _E_READ or code is _E_WRITE:
            p = pins[0]
            address, nbytes = p.address, p.nbytes
        elif code is _E_READV or code is _E_WRITEV:
            vec = iovec_array(pins)
            self._iovecs[key] = vec
            address, nbytes = ctypes.addressof(vec), len(pins)
        elif code is _E_POLL:
            address, nbytes, offset, rw_flags = op.flags, 0, 0, 0
        else:  # FSYNC, FDATASYNC
            address = nbytes = offset = 0
        IOCB_STRUCT.pack_into(
            self._mem,
            key * _IOCB_SIZE,
            key,  # aio_data
            _UNSENT_KEY,  # aio_key: the kernel sets it to 0 when it reads the iocb
            rw_flags,
            opcode,
            0,
            fd & _U32,
            address,
            nbytes,
            offset,
            0,
            IOCB_FLAG_RESFD,
            self._efd,
        )

    def cancel(self, op: Operation) -> CancelOutcome:
        with self._lock:
            if op.state is OpState.DONE or any(o is op for o, _ in self._ready):
                return CancelOutcome.DONE
            if op.state is OpState.QUEUED:
                try:
                    self._backlog.remove(op)
                except ValueError:
                    return CancelOutcome.DONE
                op.mark_submitted()
                self._post(op, -errno.ECANCELED)
                self._stats["cancelled"] += 1
                return CancelOutcome.CANCELED
            if op.state is OpState.CANCEL_REQUESTED:
                return CancelOutcome.CANCELED
            if self._inflight.get(op.key) is not op:
                return CancelOutcome.DONE
            result = io_event()
            ret = _syscall.io_cancel(
                self._ctx.id, self._base + op.key * _IOCB_SIZE, ctypes.addressof(result)
            )
            if ret in (0, -errno.EINPROGRESS):
                op.request_cancel()
                self._stats["cancelled"] += 1
                if ret == 0:  # old kernels hand the event back at once
                    self._iovecs[op.key] = None
                    self._inflight.discard_unsubmitted(op.key)
                    self._post(op, -errno.ECANCELED)
                return CancelOutcome.CANCELED
            return CancelOutcome.RUNNING

    def reap(self, timeout: float | None = 0.0, *, max_n: int = 0) -> int:
        timeout = _check_timeout(timeout)
        count = self._reap_now(max_n)
        if count or timeout == 0:
            return count
        deadline = None if timeout is None else time.monotonic() + timeout
        while not count:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            # every completion adds to the eventfd, and so do local completions
            select.select([self._efd], [], [], left)
            count = self._reap_now(max_n)
            if deadline is not None and time.monotonic() >= deadline:
                break
        return count

    def _reap_now(self, max_n: int = 0) -> int:
        """Deliver what is ready without blocking (at most *max_n* if > 0).

        Completions are read from the context's ring in user memory where
        that is possible (x86-64, as :class:`IOBatch` does): no system call
        when events are there.  The eventfd is then cleared only when nothing
        was found, and the ring looked at again right after, so a completion
        that lands later signals it afresh (no lost wake-up; at most one
        spurious one per batch).

        An exception from a signal handler (Ctrl-C) can come at any call or
        loop jump.  Nothing taken from the kernel lives only in a local
        variable: events go to ``self._events_taken`` with the head move
        (:func:`_take_ring_events`), each becomes an ``(op, res)`` entry of
        ``self._ready`` with no call in between, and what is taken from
        ``self._ready`` and not completed goes back.  So :meth:`close` still
        completes every operation.  (Not on the ``io_getevents`` path, used
        where the ring cannot be read: there the events are lost if the
        exception comes right as the call returns.)"""
        items: list[tuple[Operation, int]] = []
        i = 0
        try:
            with self._lock:
                self._owner.check()
                events = self._events_taken
                want = self.capacity if max_n <= 0 else min(self.capacity, max_n - len(self._ready))
                if self._ring is None:
                    # Clear the eventfd *before* reading: a completion that lands
                    # after the read will make it readable again.
                    _syscall.drain_eventfd(self._efd)
                    if want > 0 and len(self._inflight):
                        self._getevents(events, want)
                elif want > 0 and len(self._inflight):
                    self._read_ring(events, want)
                    if not events and not self._ready:
                        _syscall.drain_eventfd(self._efd)
                        self._read_ring(events, want)
                elif not self._ready:
                    _syscall.drain_eventfd(self._efd)
                nevents = len(events)
                if events:
                    self._match_events()
                    self._flush()  # slots are free again: the backlog moves up
                ready = self._ready
                if 0 < max_n < len(ready):
                    batch, rest = ready[:max_n], ready[max_n:]
                else:
                    batch, rest = ready, []
                self._ready = rest
                items = batch  # no call between the two stores: taken together
                if rest or (max_n > 0 and nevents == want):  # some may wait still
                    os.eventfd_write(self._efd, 1)
            held = self._held
            for op, res in items:
                i += 1
                if held and op in held:
                    with self._lock:
                        self._unhold(op)
                op.complete(res)
        except BaseException:
            # an on_done raised, or Ctrl-C (maybe as the last one began): what
            # is not done goes first next time
            back = [item for item in items[max(i - 1, 0) :] if item[0].state is not _E_DONE]
            if back:
                with self._lock:
                    self._ready[:0] = back
                    os.eventfd_write(self._efd, 1)
            raise
        total = len(items)
        self._stats["completed"] += total
        return total

    def _match_events(self) -> None:
        """Turn the events in ``self._events_taken`` into ``(op, res)``
        entries of ``self._ready`` and free their slots (lock held).  Each
        event leaves ``self._events_taken`` in the same
        :meth:`InFlight.retire_head <xaio._ops.InFlight.retire_head>` that
        frees its slot and enters it in ``self._ready`` (see
        :meth:`_reap_now`)."""
        events = self._events_taken
        base = self._base
        iovecs = self._iovecs
        ready = self._ready
        retire = self._inflight.retire_head
        while events:
            _data, obj, res, _res2 = events[0]
            key = (obj - base) >> _IOCB_SHIFT
            iovecs[key] = None  # the kernel is done with it
            retire(key, res, events, ready, _poll_result)

    def _getevents(self, out: list[tuple[int, int, int, int]], want: int) -> None:
        """Up to *want* events through ``io_getevents`` (no wait), into *out*."""
        while True:
            n = _FAST_GETEVENTS(self._cid, 0, want, self._cevents, None)
            if n != -errno.EINTR:
                break
        if n < 0:
            raise oserror(-n)
        if n:
            out += _iter_events(self._events_mem[: n * 32])

    def _read_ring(self, out: list[tuple[int, int, int, int]], want: int) -> None:
        """Up to *want* events from the ring in user memory, into *out*."""
        ring = self._ring
        assert ring is not None
        ctx = self._ctx
        with ctx._unmap_lock:  # never read a ring io_destroy unmapped
            if not (ctx._destroyed or ctx._foreign):
                _take_ring_events(ring, self._ring_nr, want, out)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._owner.foreign:  # a forked child: not ours
            os.close(self._efd)
            self._drop_held()  # this process's copies of the references
            return
        for op in list(self._inflight):
            if op.opcode == OpCode.POLL and op.state is OpState.SUBMITTED:
                self.cancel(op)
        with self._lock:
            backlog, self._backlog = list(self._backlog), collections.deque()
            for op in backlog:
                op.mark_submitted()
                self._post(op, -errno.ECANCELED)
            self._flush()  # what an interrupted flush left unsent goes now
        # Reads and writes cannot be cancelled: wait for them (rule 1).
        while len(self._inflight) > self._maybe_left() or self._ready:
            self.reap(timeout=None)
        # Left: operations the kernel may have refused (see _settle).  Give
        # them a few seconds; io_destroy then waits for any it does hold, and
        # what never completed says ECANCELED.
        deadline = time.monotonic() + 5.0
        while len(self._inflight) and time.monotonic() < deadline:
            self.reap(timeout=0.1)
        left = list(self._inflight)
        # Nothing in flight: the context goes back to the idle pool (for the
        # next engine) instead of paying io_destroy's grace period here.
        if left or self._maybe or not _keep_idle_context(self._ctx):
            io_destroy(self._ctx)
        os.close(self._efd)
        for op in left:
            op.key = -1
            op.complete(-errno.ECANCELED)
        self._inflight = InFlight()
        self._maybe.clear()
        self._drop_held()

    def _drop_held(self) -> None:
        held, self._held = self._held, {}
        for fd in held.values():
            if fd >= 0:
                os.close(fd)

    def statistics(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in_flight": len(self._inflight),
            "backlog": len(self._backlog),
            **self._stats,
        }

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
        self.close()

    def __repr__(self) -> str:
        return f"<LinuxAioEngine capacity={self.capacity} {'closed' if self._closed else 'open'}>"
