"""Many requests in one submission: :class:`Batch`.

A batch collects positional reads, writes and syncs, hands them all to the
engine in one submission (io_uring: every SQE written in one call, which
enters the kernel once per eight of them so the device starts on the first
ones; one ``io_submit``; one hand-off to the threads), and waits for them
with one await (:meth:`Batch.run`), or yields each result as it lands
(:meth:`Batch.as_completed`), taking new requests while it iterates.

*Checks before the kernel.*  Each request's arguments are checked when it is
added (the ``TypeError``/``ValueError`` of :func:`xaio.pread` & co, from the
same ``check_*`` helpers), so a bad argument raises there and nothing runs.
What the OS reports is per request: an fd without a position gives that
request ``ESPIPE`` (:func:`xaio._async._checks.check_positional`, asked once
per fd per submission, through the driver's
:class:`~xaio._async._checks.FdKinds`), a zero-length transfer gets the
system call's own answer, and an error of one request is that request's
result, not the batch's.

*One callback, one waiter.*  The requests of a batch travel through the
running loop's driver, but they complete through one callback of their own
(:class:`_Flight`), not the driver's per-request one: it counts the request
out, puts it on the batch's list of landed requests and wakes the batch's
one waiting task -- for :meth:`Batch.run` once the last request has landed,
for :meth:`Batch.as_completed` once per reaped group of completions.  No
Future per request, no task switch per request: a group of 64 completions
reaped together costs one wake-up.

*No Operation per request where the engine has a port.*  An engine with
a :class:`~xaio.engine.BatchPort` (io_uring) takes a batch's reads and
writes of one buffer as *slots*: the request is a plain tuple from the
moment it is added (its fd, offset and buffer, checked, and the buffer's
export, which holds it as an :class:`~xaio._ops.Operation` would), and at
submission its fields go into the port's tables, from which the engine
writes the request straight into its queue; the completion comes back as
``(slot, result)`` through the batch's one callback.  A slot whose request
has landed is free for the next request the iteration adds (its fields
are overwritten, nothing is built).  What a port does not take -- vectored
requests, syncs, a read-only buffer, an empty one, an fd the engine
routes to threads, an engine without a port -- is an
:class:`~xaio._ops.Operation` through ``Engine.submit``, as before, in
the same submission.

*Keeping the queue full.*  A batch awaited as a whole leaves the device idle
between rounds: the last read of a round must land before the next round is
submitted, and the first of the next round reaches the device only after
Python has looked at every result of the previous one.  An iteration over
:meth:`Batch.as_completed` that adds a new request for each result it takes
keeps as many requests in the kernel as it started with.  The requests added
while iterating are handed to the engine together: every
:data:`~xaio._async._driver.EARLY` of them while the iterator works through a group of
results (so the device starts on the first ones while Python handles the
rest), and the remainder before the iterator waits -- or, if the loop body
awaits something else in between, in the driver's next flush (the loop's
``call_soon``; trio's flusher task).  Before it waits, the iterator looks at
the completion queue once more (``engine.reap(0)``: for io_uring a look at
the ring in user memory, no system call), so completions that landed during
that submission are taken without a round trip through the event loop.  It
yields to the loop once it has run for :data:`_SLICE` seconds without
waiting, so a device that always has the next completion ready cannot starve
the loop's other tasks.

*Waiting and cancelling.*  When the wait (or the iteration) is cancelled,
every request still queued or in the kernel is cancelled at once, and the
batch then waits -- through further cancellations -- until each has
completed: when the cancellation reaches the caller, no buffer is used any
more.  Leaving an ``async with batch.as_completed()`` block does the same.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from xaio._async._checks import (
    check_buffers,
    check_fd,
    check_flags,
    check_offset,
    check_sync_fd,
    is_direct,
    request_error,
)
from xaio._async._current import current_driver
from xaio._async._driver import _SLICE, EARLY, Driver, Parked, abandon
from xaio._ops import OpCode, Operation, OpState
from xaio._syscall import oserror
from xaio.engine import KIND_BLOCKING, BatchPort, EngineClosedError

if TYPE_CHECKING:
    from xaio._async._io import AsyncEngine

__all__ = ["Batch", "BatchResult", "AsCompleted"]

#: A request's result: bytes transferred, None for a sync, or its OSError.
BatchResult = int | None | OSError

_DONE = OpState.DONE
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_READ = OpCode.READ
_TRANSFERS = (OpCode.READ, OpCode.WRITE, OpCode.READV, OpCode.WRITEV)
_INT_MAX = 0x7FFFFFFF
_OFF_MAX = (1 << 63) - 1
_READS = (OpCode.READ, OpCode.READV)
_SINGLE_USE = "this batch has already run (a Batch is single-use)"
# An iteration yields to the loop with a plain checkpoint every _SLICE (the
# driver's time slice).  A wait does not count: on asyncio, anyio delivers a
# cancellation only to a task whose future is not done yet, and a wait whose
# future the loop's I/O phase completes before anyio looks (results that
# keep landing) would let an iteration that keeps adding requests run on
# past its scope's cancellation for ever.
_perf = time.perf_counter
_export = ctypes.c_char.from_buffer
_addressof = ctypes.addressof

#: A request a port may take: (fd, buffer export, address, length, offset,
#: is a write, the buffer).  The export holds the buffer as a Pin does.
_Slotted = tuple[int, Any, int, int, int, bool, Any]
_Request = Operation | _Slotted
#: A landed request: (its index, its result).
_Landed = tuple[int, BatchResult]


def _slotted(fd: int, buf: Any, offset: int, write: bool) -> _Slotted | None:
    """The request as a port takes it, holding *buf* (an export of its
    memory, as :class:`~xaio._buffers.Pin` makes one): for a writable,
    C-contiguous, non-empty buffer of any kind; None for any other buffer
    (the caller makes an Operation, whose Pin raises what is wrong)."""
    try:
        holder = _export(buf)
    except (TypeError, ValueError, BufferError):
        return None
    t = type(buf)
    if t is bytearray:
        n = len(buf)
    elif t is memoryview:
        n = buf.nbytes
    else:
        with memoryview(buf) as view:
            n = view.nbytes
    return (fd, holder, _addressof(holder), n, offset, write, buf)


def _operation(req: _Slotted) -> Operation:
    """*req* as an :class:`Operation` (for what no port takes)."""
    return Operation(OpCode.WRITE if req[5] else _READ, req[0], (req[6],), req[4])


def _decode(op: Operation) -> BatchResult:
    """*op*'s result as a batch reports it."""
    res = op.result
    if res is not None and res >= 0:
        return None if op.opcode in (OpCode.FSYNC, OpCode.FDATASYNC) else res
    return request_error(op)


def _result(op: Operation) -> BatchResult:
    """:func:`_decode`, with the common case (a read that worked) inline."""
    res = op.result
    if res is not None and res >= 0 and op.opcode is _READ:
        return res
    return _decode(op)


class Batch:
    """Positional reads, writes and syncs submitted together and awaited together.

    ::

        batch = xaio.Batch()
        batch.preadinto(fd, buf, 0)
        batch.pwrite(fd2, b"data", 4096)
        batch.fsync(fd2)
        results = await batch.run()   # [4096, 4, None]

    All the requests go to the engine in one submission and run concurrently,
    so they are in no particular order relative to each other: a sync in the
    same batch as a write does not wait for it (put it in the next batch).
    Keep each fd open and each buffer untouched until the request's result
    is in your hands (or the cancellation of the await has reached you).  A
    request holds its buffer (a ``bytearray`` cannot be resized) from the
    moment it is added until it has completed, or until the batch is dropped
    unrun.

    A batch runs once: after :meth:`run`, or once the iteration of
    :meth:`as_completed` has ended, adding to it or running it again raises
    ``RuntimeError``.  Make a new one per round (it is cheap: a list of
    requests) -- or keep one iteration of :meth:`as_completed` going and
    add a request for each result it yields.

    Args:
        engine: an :class:`xaio.AsyncEngine` to run on; None (the default)
            uses the running loop's default engine, as :func:`xaio.pread` does.
    """

    __slots__ = ("_ops", "_engine", "_started", "_count", "_flight", "_mixed")

    def __init__(self, engine: AsyncEngine | None = None) -> None:
        self._ops: list[_Request] = []
        self._engine = engine
        self._started = False
        self._count = 0  # requests added so far (the next one's index)
        #: the iteration of as_completed that takes new requests (else None)
        self._flight: _Flight | None = None
        #: an Operation was added (not every request is a port's tuple)
        self._mixed = False

    def __len__(self) -> int:
        """How many requests were added (also those added while iterating)."""
        return self._count

    def __repr__(self) -> str:
        if self._flight is not None:
            state = "iterating"
        else:
            state = "started" if self._started else "not started"
        return f"<xaio.Batch of {self._count} requests, {state}>"

    # -- adding requests ---------------------------------------------------------

    def _add(self, op: _Request) -> int:
        """Take *op*: into the list to run, or -- while :meth:`as_completed`
        iterates -- to the engine with the iteration's next submission."""
        i = self._count
        if not self._started:
            self._ops.append(op)
            if type(op) is Operation:
                self._mixed = True
        elif self._flight is not None:
            self._flight.add(op, i)
        else:
            if type(op) is Operation:
                op.complete(-errno.ECANCELED)  # give its buffers back
            raise RuntimeError(_SINGLE_USE)
        self._count = i + 1
        return i

    def preadinto(self, fd: int, buf: Any, offset: int) -> int:
        """Add a read from *fd* at *offset* into the writable buffer *buf*
        (``os.preadv(fd, [buf], offset)``; as :func:`xaio.preadinto`).

        Returns:
            The request's index: its place in :meth:`run`'s results, and
            what :meth:`as_completed` yields with its result.

        Raises:
            TypeError: *buf* is not a writable bytes-like object; a non-int
                *fd* or *offset*.
            ValueError: *buf* is not contiguous; a negative *offset*
                (``xaio.InvalidArgument``, also an ``OSError`` EINVAL).
            OSError: ``EBADF`` for a negative fd.
            RuntimeError: the batch has already run.
            xaio.engine.EngineClosedError: added while iterating, and the
                engine is closed.
        """
        if not (
            type(fd) is int
            and type(offset) is int
            and 0 <= fd <= _INT_MAX
            and 0 <= offset <= _OFF_MAX
        ):
            fd = check_fd(fd)
            offset = check_offset(offset)
        op: _Request | None
        if type(buf) is memoryview and buf.nbytes and not buf.readonly and buf.c_contiguous:
            holder = _export(buf)  # _slotted, written out for aligned_buffer's kind
            address = _addressof(holder)
            fl = self._flight
            i = self._count
            if fl is not None and fl.put(fd, holder, address, buf.nbytes, offset, False, buf, i):
                self._count = i + 1  # in a slot of the running iteration
                return i
            op = (fd, holder, address, buf.nbytes, offset, False, buf)
        else:
            op = _slotted(fd, buf, offset, False)
            if op is None:
                op = Operation(_READ, fd, (buf,), offset)
                self._mixed = True
        i = self._count
        if self._started:
            fl = self._flight
            if fl is None:
                return self._add(op)
            fl.add(op, i)
        else:
            self._ops.append(op)
        self._count = i + 1
        return i

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        """Add a write of the bytes-like *data* to *fd* at *offset*
        (pwrite(2); as :func:`xaio.pwrite`).

        Returns:
            The request's index.

        Raises:
            TypeError, ValueError, OSError, RuntimeError: as :meth:`preadinto`.
        """
        fd = check_fd(fd)
        offset = check_offset(offset)
        op: _Request | None = _slotted(fd, data, offset, True)
        if op is None:
            op = Operation(OpCode.WRITE, fd, (data,), offset)
        return self._add(op)

    def preadv(self, fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> int:
        """Add a read into each writable buffer of *buffers* in turn
        (preadv2(2); as :func:`xaio.preadv`, ``RWF_*`` *flags* included).

        Returns:
            The request's index.

        Raises:
            TypeError, ValueError, OSError, RuntimeError: as :meth:`preadinto`,
                and ValueError for *flags* that are not a 32-bit unsigned int.
        """
        fd = check_fd(fd)
        offset = check_offset(offset)
        flags = check_flags(flags)
        return self._add(Operation(OpCode.READV, fd, check_buffers(buffers), offset, flags))

    def pwritev(self, fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> int:
        """Add a write of the buffers of *buffers* in turn (pwritev2(2); as
        :func:`xaio.pwritev`, ``RWF_*`` *flags* included).

        Returns:
            The request's index.

        Raises:
            TypeError, ValueError, OSError, RuntimeError: as :meth:`preadv`.
        """
        fd = check_fd(fd)
        offset = check_offset(offset)
        flags = check_flags(flags)
        return self._add(Operation(OpCode.WRITEV, fd, check_buffers(buffers), offset, flags))

    def fsync(self, fd: int) -> int:
        """Add an fsync(2) of *fd* (as :func:`xaio.fsync`); its result is None.

        Returns:
            The request's index.

        Raises:
            TypeError: *fd* is not an int.
            ValueError: a negative *fd* (also an ``OSError`` EBADF).
            RuntimeError: the batch has already run.
        """
        return self._add(Operation(OpCode.FSYNC, check_sync_fd(fd)))

    def fdatasync(self, fd: int) -> int:
        """Add an fdatasync(2) of *fd* (as :func:`xaio.fdatasync`); its result is None.

        Returns:
            The request's index.

        Raises:
            TypeError, ValueError, RuntimeError: as :meth:`fsync`.
        """
        return self._add(Operation(OpCode.FDATASYNC, check_sync_fd(fd)))

    # -- running -----------------------------------------------------------------

    def _begin(self) -> tuple[Driver, list[_Request]]:
        if self._started:
            raise RuntimeError(_SINGLE_USE)
        drv = current_driver() if self._engine is None else self._engine.driver()
        self._started = True
        ops, self._ops = self._ops, []
        return drv, ops

    async def run(self) -> list[BatchResult]:
        """Submit every request in one submission and wait for all of them.

        Returns:
            One result per request, in the order they were added: the bytes
            transferred, None for a sync, or the ``OSError`` of a request that
            failed (as ``asyncio.gather(..., return_exceptions=True)``).

        When the await is cancelled, every request still in the kernel is
        cancelled, and the cancellation (``asyncio.CancelledError``,
        ``trio.Cancelled``) reaches the caller once all of them have
        completed: no buffer is in use any more.

        Raises:
            RuntimeError: the batch has already run, or runs on another
                event loop than its engine's.
            xaio.engine.EngineClosedError: the engine is closed.
        """
        drv, ops = self._begin()
        n = len(ops)
        flight = _Flight(drv)
        try:
            await flight.start(ops, not self._mixed)
            ops.clear()  # each buffer's export now lives in the port alone
            if flight.nlive():
                await flight.wait(True)
        finally:
            flight.close()
        results: list[BatchResult] = [None] * n
        for i, res in flight.landed:
            results[i] = res
        return results

    def as_completed(self) -> AsCompleted:
        """Submit every request in one submission and iterate over
        ``(index, result)`` pairs as the requests complete, taking new
        requests while iterating::

            async with batch.as_completed() as landed:
                async for i, result in landed:
                    ...                           # use request i's buffer
                    batch.preadinto(fd, buf, off) # joins this iteration

        Results are as :meth:`run`'s; each is yielded as soon as it has
        landed (a group of completions reaped together is yielded in the
        order the engine reported them, after answers the batch gave
        without the kernel, such as ``ESPIPE``).  A request added to the
        batch while the iteration runs (from the loop body, or from another
        task) is submitted with the iteration's next submission and yielded
        like the others; the iteration ends once every request added so far
        has been yielded.  A loop body that adds one request per result
        keeps as many requests in the kernel as it started with: this is
        the form to use for a stream of reads (a data loader, a checksummer)
        at the device's full speed.

        Leaving the ``async with`` block, or cancelling the iteration,
        cancels every request that has not completed and returns (or lets
        the cancellation through) once each has: no buffer is in use any
        more.  A bare ``async for`` left early leaves them to complete on
        their own (their buffers stay in use until then).

        Returns:
            An :class:`AsCompleted` iterator (the requests are submitted on
            its first step).

        Raises:
            RuntimeError: the batch has already run.
        """
        if self._started:
            raise RuntimeError(_SINGLE_USE)
        return AsCompleted(self)


class _Flight(Parked):
    """The requests of one batch on one driver, from submission until each
    has landed: their ``on_done`` callback (and the port's ``on_landed``),
    the list of those that landed, and the one task waiting for them
    (``waiter``, see :class:`Parked`)."""

    __slots__ = (
        "drv",
        "live",
        "landed",
        "wait_all",
        "seen",
        "pending",
        "pending_slots",
        "flush_scheduled",
        "on_done",
        "port",
        "slot_index",
        "slot_buf",
        "free",
        "slots_taken",
    )

    def __init__(self, drv: Driver) -> None:
        super().__init__()
        self.drv = drv
        #: Operations handed to the driver that have not landed
        self.live: set[Operation] = set()
        #: (index, result) of the requests that landed and were not taken yet
        self.landed: list[_Landed] = []
        #: wake the waiter only once nothing is live (else at every landing)
        self.wait_all = False
        #: per fd, its kind (the driver's FdKinds) for the requests being submitted
        self.seen: dict[int, int] = {}
        #: Operations added while iterating, for the next submission
        self.pending: list[Operation] = []
        #: port slots filled while iterating, for the next submission
        self.pending_slots: list[int] = []
        self.flush_scheduled = False
        self.on_done = self._on_done
        #: the engine's BatchPort (made with the first request it takes);
        #: None before, or for an engine without one (then _NO_PORT)
        self.port: BatchPort | None = None
        #: per slot: the index of its request (-1: the slot is free)
        self.slot_index: list[int] = []
        #: per slot: its request's buffer (for the message of an error)
        self.slot_buf: list[Any] = []
        #: free slots
        self.free: list[int] = []
        #: the last _submit's port took its slots (also if it then raised)
        self.slots_taken = False

    def nlive(self) -> int:
        """Requests submitted (or pending) that have not landed."""
        port = self.port
        n = len(self.live) + len(self.pending) + len(self.pending_slots)
        return n + port.live if port is not None and port is not _NO_PORT else n

    # -- completion ----------------------------------------------------------------

    def _on_done(self, op: Operation) -> None:
        """A request of this batch completed (in the loop's thread)."""
        self.drv._inflight -= 1
        live = self.live
        live.discard(op)
        self.landed.append((op.context, _result(op)))
        if self.waiter is not None and (not self.wait_all or not self.nlive()):
            self.drv._unpark(self)

    def _on_landed(self, slots: list[int], results: list[int]) -> None:
        """Requests of this batch's port completed (in the loop's thread)."""
        self.drv._inflight -= len(slots)
        port = self.port
        assert port is not None
        holders = port.holders
        index = self.slot_index
        bufs = self.slot_buf
        landed = self.landed
        for s, res in zip(slots, results, strict=True):
            landed.append((index[s], res if res >= 0 else self._error(s, res)))
            holders[s] = None  # the buffer is the caller's again
            index[s] = -1
            bufs[s] = None
        self.free += slots
        if self.waiter is not None and (not self.wait_all or not self.nlive()):
            self.drv._unpark(self)

    def _error(self, slot: int, res: int) -> OSError:
        """The OSError of the failed request of *slot* (as an Operation's)."""
        port = self.port
        assert port is not None
        op = Operation(
            OpCode.WRITE if port.writes[slot] else _READ,
            port.fds[slot],
            (self.slot_buf[slot],),
            port.offsets[slot],
        )
        op.complete(res)
        return request_error(op)

    # -- submission ----------------------------------------------------------------

    def _kind(self, fd: int) -> int:
        """*fd*'s kind, asked once per fd per submission (OSError: ESPIPE...)."""
        seen = self.seen
        kind = seen.get(fd)
        if kind is None:
            kind = seen[fd] = self.drv._kinds.kind(fd)
        return kind

    def _place(
        self,
        fd: int,
        holder: Any,
        address: int,
        length: int,
        offset: int,
        write: bool,
        buf: Any,
        index: int,
    ) -> int:
        """Put request *index* (the fields of a :data:`_Slotted`) in a slot
        of the engine's port; returns the slot, or -1 if no port takes it
        (make an Operation)."""
        port = self.port
        if port is None:
            port = self.port = self.drv.engine.batch_port(self._on_landed) or _NO_PORT
        if port is _NO_PORT:
            return -1
        kind = self.seen.get(fd)
        if kind is None:
            try:
                kind = self._kind(fd)
            except OSError:
                return -1  # the Operation's path answers it
        if kind == KIND_BLOCKING:
            return -1
        free = self.free
        if free:
            s = free.pop()
        else:
            s = port.grow()
            self.slot_index.append(-1)
            self.slot_buf.append(None)
        port.fds[s] = fd
        port.holders[s] = holder
        port.addresses[s] = address
        port.lengths[s] = length
        port.offsets[s] = offset
        port.writes[s] = write
        self.slot_index[s] = index
        self.slot_buf[s] = buf
        return s

    def _place_all(self, reqs: list[_Request], slotted: bool) -> bool:
        """:meth:`_place` for every request of a first submission, all at
        once, if the port takes each (request *i* in slot *i*; *slotted*:
        every request is a tuple); False if not (nothing was placed)."""
        if not reqs or self.slot_index or not slotted:
            return False
        port = self.port
        if port is None:
            port = self.port = self.drv.engine.batch_port(self._on_landed) or _NO_PORT
        if port is _NO_PORT:
            return False
        fds, holders, addresses, lengths, offsets, writes, bufs = map(list, zip(*reqs, strict=True))
        try:
            if any(self._kind(fd) == KIND_BLOCKING for fd in set(fds)):
                return False
        except OSError:
            return False
        port.fds = fds
        port.holders = holders
        port.addresses = addresses
        port.lengths = lengths
        port.offsets = offsets
        port.writes = writes
        self.slot_buf = bufs
        self.slot_index = list(range(len(reqs)))
        return True

    def _release(self, slots: list[int]) -> None:
        """Give back the slots of requests that never reached the engine."""
        port = self.port
        if port is None or port is _NO_PORT:
            return
        for s in slots:
            port.holders[s] = None
            self.slot_index[s] = -1
            self.slot_buf[s] = None
            self.free.append(s)

    def _answer(self, op: Operation) -> bool:
        """Answer *op* here if the kernel would answer it at once (ESPIPE,
        a zero length, RWF_NOWAIT on a buffered file): True if it was."""
        if op.opcode not in _TRANSFERS:
            return False
        fd = op.fd
        try:
            op.kind = self._kind(fd)  # the engine routes by it without looking again
        except OSError as e:
            res = -(e.errno or errno.EBADF)
        else:
            if not (op.flags or len(op.pins) != 1 or not op.pins[0].nbytes):
                return False
            if op.nbytes and not (op.flags & _RWF_NOWAIT and not is_direct(fd)):
                return False
            res = self._now(op)
        op.on_done = None
        op.complete(res)
        self.landed.append((op.context, _result(op)))
        if self.waiter is not None and not self.wait_all:  # added by another task
            self.drv._unpark(self)
        return True

    @staticmethod
    def _now(op: Operation) -> int:
        """Do *op* in this thread: the system call's own answer for a
        zero-length transfer or a ``RWF_NOWAIT`` one (which never waits);
        bytes transferred or -errno."""
        try:
            if op.opcode in _READS:
                return os.preadv(op.fd, op.buffers, op.offset, op.flags)
            return os.pwritev(op.fd, op.buffers, op.offset, op.flags)
        except OSError as e:
            return -(e.errno or errno.EIO)

    def _sort(self, req: _Request, index: int, ops: list[Operation], slots: list[int]) -> None:
        """Sort request *index* into the port's *slots*, the *ops* to
        submit, or the landed (answered here)."""
        if type(req) is tuple:
            s = self._place(*req, index)
            if s >= 0:
                slots.append(s)
                return
            req = _operation(req)
        op: Operation = req  # type: ignore[assignment]
        op.context = index
        if not self._answer(op):
            ops.append(op)

    async def start(self, reqs: list[_Request], slotted: bool = False) -> None:
        """Answer what can be answered here and hand the rest of *reqs* to
        the engine in one submission (trio: a checkpoint before, and after
        if nothing needs waiting for)."""
        drv = self.drv
        await drv._checkpoint_if_cancelled()
        ops: list[Operation] = []
        slots: list[int] = []
        try:
            if self._place_all(reqs, slotted):
                slots = list(range(len(reqs)))
            else:
                for i, req in enumerate(reqs):
                    self._sort(req, i, ops, slots)
            self.seen.clear()
            self._submit(ops, slots)
        except BaseException:
            for req in reqs:
                if type(req) is Operation:
                    abandon(req)
            if not self.slots_taken:
                self._release(slots)
            elif self.nlive():  # the port took its requests, the engine not the rest
                await self.settle()
            raise
        if not self.nlive():
            await drv._cancel_shielded_checkpoint()

    def _submit(self, ops: list[Operation], slots: list[int]) -> None:
        """Hand the port's *slots* and *ops* to the engine in one
        submission and reap right after (what completed inside the
        submission lands without a round trip).  When it raises, nothing
        was taken -- but for the slots if ``slots_taken`` (the port took
        them, the engine refused *ops*: they are in the kernel)."""
        drv = self.drv
        self.slots_taken = False
        if drv.closed:
            raise EngineClosedError("the engine is closed")
        if slots:
            port = self.port
            assert port is not None
            drv._inflight += len(slots)
            try:
                port.submit(slots, not ops)  # with ops: handed over with theirs
            except BaseException:
                drv._inflight -= len(slots)
                raise
            self.slots_taken = True
            if not ops:
                if drv._reap_after_submit:
                    drv.engine.reap(0)
                return
        if not ops:
            return
        live = self.live
        live.update(ops)
        try:
            drv.start_all(ops, self.on_done)
        except BaseException:
            live.difference_update(ops)
            raise
        finally:
            if slots:
                self.port.flush()  # type: ignore[union-attr]

    def add(self, req: _Request, index: int) -> None:
        """Take *req* (request *index*) into the running iteration: answered
        here, or pending for the iteration's next submission."""
        if type(req) is tuple and self.put(*req, index):
            return
        if self.drv.closed:
            if type(req) is Operation:
                req.complete(-errno.ECANCELED)  # give its buffers back
            raise EngineClosedError("the engine is closed")
        n = len(self.landed)
        self._sort(req, index, self.pending, self.pending_slots)
        if len(self.landed) == n:  # else answered here
            self._schedule_flush()

    def put(
        self,
        fd: int,
        holder: Any,
        address: int,
        length: int,
        offset: int,
        write: bool,
        buf: Any,
        index: int,
    ) -> bool:
        """:meth:`add` for a request a port may take, given by the fields
        of a :data:`_Slotted`: put in a slot of the port, pending for the
        iteration's next submission.

        Returns:
            True if it was; False if no port takes it (nothing was taken:
            add it as a tuple, which makes it an Operation).

        Raises:
            EngineClosedError: the engine is closed.
        """
        if self.drv.closed:
            raise EngineClosedError("the engine is closed")
        s = self._place(fd, holder, address, length, offset, write, buf, index)
        if s < 0:
            return False
        self.pending_slots.append(s)
        if not self.flush_scheduled:
            self._schedule_flush()
        return True

    def _schedule_flush(self) -> None:
        """Submit the pending requests in the driver's next flush at the
        latest: the iterator submits them as it goes, this is for a loop
        body that awaits something else before asking for the next result."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.drv._call_soon(self._flush_soon)

    def npending(self) -> int:
        return len(self.pending) + len(self.pending_slots)

    def _flush_soon(self) -> None:
        self.flush_scheduled = False
        if self.pending or self.pending_slots:
            self.flush()

    def flush(self) -> None:
        """Submit the pending requests (one submission); if the engine
        refuses them, each fails with its errno (it lands)."""
        ops, self.pending = self.pending, []
        slots, self.pending_slots = self.pending_slots, []
        self.seen.clear()
        try:
            self._submit(ops, slots)
        except Exception as e:
            err = e.errno if isinstance(e, OSError) and e.errno else errno.EIO
            if isinstance(e, EngineClosedError):
                err = errno.ECANCELED
            for op in ops:
                if op.state is OpState.QUEUED:
                    op.on_done = None
                    op.complete(-err)
                    self.landed.append((op.context, _result(op)))
            if not self.slots_taken:
                index = self.slot_index
                failed = [(index[s], oserror(err)) for s in slots]
                self._release(slots)
                self.landed += failed
        except BaseException:
            for op in ops:
                abandon(op)
            if not self.slots_taken:
                self._release(slots)
            raise

    # -- waiting -------------------------------------------------------------------

    def cancel_all(self) -> None:
        """Cancel every request of this batch that has not landed: the
        pending ones here, the others in the kernel."""
        for op in self.pending:
            abandon(op)
        self.pending.clear()
        self._release(self.pending_slots)
        self.pending_slots.clear()
        drv = self.drv
        for op in list(self.live):
            drv._cancel_in_engine(op)
        port = self.port
        if port is not None and port is not _NO_PORT and port.live:
            index = self.slot_index
            try:
                port.cancel([s for s in range(len(index)) if index[s] >= 0])
            except (OSError, RuntimeError):
                pass  # not cancellable: they complete normally and we wait for them

    def _on_cancel(self) -> bool:
        """The waiting task is cancelled: cancel what has not landed; True
        if nothing is left to wait for (else wake only once all landed)."""
        self.cancel_all()
        if not self.nlive():
            return True
        self.wait_all = True
        return False

    async def wait(self, wait_all: bool) -> None:
        """Wait until a request lands (*wait_all*: until none is live).

        On cancellation every request not landed is cancelled, and the
        cancellation is let through once each has landed (through further
        cancellations): no buffer is in use any more."""
        self.wait_all = wait_all
        await self.drv._park(self, self._on_cancel)

    async def pause(self) -> None:
        """Let the loop run its other tasks once (with :meth:`wait`'s
        cancellation rule)."""
        try:
            await self.drv._checkpoint()
        except BaseException:
            await self.settle()
            raise

    async def settle(self) -> None:
        """Cancel every request that has not landed and wait until each
        has; a cancellation that comes meanwhile is let through afterwards."""
        self.cancel_all()
        while self.nlive():
            await self.wait(True)
        self.close()

    def close(self) -> None:
        """No more requests: the port goes once its requests have landed."""
        port = self.port
        if port is not None and port is not _NO_PORT:
            port.close()


class _NoPort(BatchPort):
    """The port of an engine without one: takes nothing."""

    def submit(self, slots: Sequence[int], hand_over: bool = True) -> None:
        raise AssertionError("no port")  # pragma: no cover

    def flush(self) -> None:
        pass  # pragma: no cover

    def cancel(self, slots: Sequence[int]) -> None:
        pass  # pragma: no cover

    def close(self) -> None:
        pass  # pragma: no cover


_NO_PORT = _NoPort()


class AsCompleted:
    """The iterator :meth:`Batch.as_completed` returns: ``(index, result)``
    pairs as requests complete; an async context manager whose exit cancels
    and waits for the requests that have not completed."""

    __slots__ = ("_batch", "_flight", "_ready", "_next", "_closed", "_since")

    def __init__(self, batch: Batch) -> None:
        self._batch = batch
        self._flight: _Flight | None = None
        self._ready: list[_Landed] = []
        self._next = 0  # index in _ready
        self._closed = False
        self._since = 0.0  # when the iteration last yielded at a checkpoint

    def __aiter__(self) -> AsCompleted:
        return self

    async def __anext__(self) -> tuple[int, BatchResult]:
        ready = self._ready
        i = self._next
        if i < len(ready):
            fl = self._flight
            if fl is not None and len(fl.pending) + len(fl.pending_slots) >= EARLY:
                fl.flush()
            self._next = i + 1
            return ready[i]
        return await self._refill()

    async def _refill(self) -> tuple[int, BatchResult]:
        """Take the next group of landed requests, submitting what was added
        and waiting if nothing has landed; the first of the group."""
        fl = self._flight
        if fl is None:
            if self._closed:
                raise StopAsyncIteration
            batch = self._batch
            drv, ops = batch._begin()
            fl = self._flight = _Flight(drv)
            batch._flight = fl
            self._since = _perf()
            try:
                await fl.start(ops, not batch._mixed)
            except BaseException:
                self._end()
                raise
            ops.clear()  # each buffer's export now lives in the port alone
        while True:
            if self._closed:
                raise StopAsyncIteration
            if fl.pending or fl.pending_slots:
                fl.flush()
            elif not fl.landed and fl.drv._reap_after_submit and fl.nlive():
                fl.drv.engine.reap(0)  # a look at the ring: no system call
            if fl.landed:
                if _perf() - self._since > _SLICE:
                    try:
                        await fl.pause()
                    except BaseException:
                        self._end()
                        raise
                    self._since = _perf()
                    continue
                break
            if not fl.nlive():
                self._end()
                fl.close()
                raise StopAsyncIteration
            try:
                await fl.wait(False)
            except BaseException:
                self._end()
                raise
        ready, fl.landed = fl.landed, []
        self._ready = ready
        self._next = 1
        return ready[0]

    def _end(self) -> None:
        """The iteration is over: requests added from now on are refused."""
        self._closed = True
        self._ready = []
        self._next = 0
        self._batch._flight = None

    async def aclose(self) -> None:
        """Stop iterating: cancel the requests that have not completed and
        wait for them (a batch not started yet is not started)."""
        fl = self._flight
        if not self._closed:
            self._end()
        if fl is not None:
            await fl.settle()
        elif not self._batch._started:
            self._batch._started = True  # it will not run: give the buffers back
            for op in self._batch._ops:
                if type(op) is Operation:
                    abandon(op)
            self._batch._ops = []

    async def __aenter__(self) -> AsCompleted:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
