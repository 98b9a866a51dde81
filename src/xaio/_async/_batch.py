"""Many requests in one submission: :class:`Batch`.

A batch collects positional reads, writes and syncs, hands them all to the
engine in one ``Engine.submit`` (one ``io_uring_enter``, one ``io_submit``,
one hand-off to the threads), and waits for them with one await.

*Checks before the kernel.*  Each request's arguments are checked when it is
added (the ``TypeError``/``ValueError`` of :func:`xaio.pread` & co, from the
same ``check_*`` helpers), so a bad argument raises there and nothing runs.
What the OS reports is per request: an fd without a position gives that
request ``ESPIPE`` (:func:`xaio._async._checks.check_positional`, asked once
per fd per run), a zero-length transfer gets the system call's own answer,
and an error of one request is that request's result, not the batch's.

*Waiting and cancelling.*  The requests travel through the running loop's
driver like any other (:meth:`xaio._async._driver.Driver.start_all` submits
them; the driver's completion callback wakes the waiter).  The batch waits
for its requests one after the other in the order they were added, skipping
those already done, so it wakes about once per reaped batch of completions.
When the wait is cancelled, every request still in the kernel is cancelled
at once, and the batch then waits -- through further cancellations -- until
each has completed (the driver's own cancel-and-wait, request by request):
when the cancellation reaches the caller, no buffer is used any more.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from xaio._async._checks import (
    check_buffers,
    check_fd,
    check_flags,
    check_offset,
    check_positional,
    check_sync_fd,
    dio_einval,
    is_direct,
)
from xaio._async._current import current_driver
from xaio._async._driver import Driver, abandon
from xaio._ops import OpCode, Operation, OpState, decode_result

if TYPE_CHECKING:
    from xaio._async._io import AsyncEngine

__all__ = ["Batch", "BatchResult"]

#: A request's result: bytes transferred, None for a sync, or its OSError.
BatchResult = int | None | OSError

_DONE = OpState.DONE
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_READ = OpCode.READ
_TRANSFERS = (OpCode.READ, OpCode.WRITE, OpCode.READV, OpCode.WRITEV)
_INT_MAX = 0x7FFFFFFF
_OFF_MAX = (1 << 63) - 1
_READS = (OpCode.READ, OpCode.READV)


def _decode(op: Operation) -> BatchResult:
    """*op*'s result as a batch reports it."""
    res = op.result
    if res is not None and res >= 0:
        return None if op.opcode in (OpCode.FSYNC, OpCode.FDATASYNC) else res
    try:
        decode_result(res if res is not None else -errno.EIO)
    except OSError as e:
        if e.errno == errno.EINVAL and op.opcode in _TRANSFERS:
            better = dio_einval(op.fd, op.offset, op.pins)
            if better is not None:
                return better
        return e
    raise AssertionError("decode_result returned for a failed request")  # pragma: no cover


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
    Keep each fd open and each buffer untouched until the batch's await has
    returned (or its cancellation has reached you).  A request holds its
    buffer (a ``bytearray`` cannot be resized) from the moment it is added
    until it has completed, or until the batch is dropped unrun.

    A batch is single-use: once :meth:`run` or :meth:`as_completed` has
    started, adding to it or running it again raises ``RuntimeError``.  Make
    a new one per round (it is cheap: a list of requests).

    Args:
        engine: an :class:`xaio.AsyncEngine` to run on; None (the default)
            uses the running loop's default engine, as :func:`xaio.pread` does.
    """

    __slots__ = ("_ops", "_engine", "_started")

    def __init__(self, engine: AsyncEngine | None = None) -> None:
        self._ops: list[Operation] = []
        self._engine = engine
        self._started = False

    def __len__(self) -> int:
        return len(self._ops)

    def __repr__(self) -> str:
        state = "started" if self._started else "not started"
        return f"<xaio.Batch of {len(self._ops)} requests, {state}>"

    # -- adding requests ---------------------------------------------------------

    def _add(self, op: Operation) -> int:
        if self._started:
            op.complete(-errno.ECANCELED)  # give its buffers back
            raise RuntimeError("this batch has already run (a Batch is single-use)")
        self._ops.append(op)
        return len(self._ops) - 1

    def preadinto(self, fd: int, buf: Any, offset: int) -> int:
        """Add a read from *fd* at *offset* into the writable buffer *buf*
        (``os.preadv(fd, [buf], offset)``; as :func:`xaio.preadinto`).

        Returns:
            The request's index in the results.

        Raises:
            TypeError: *buf* is not a writable bytes-like object; a non-int
                *fd* or *offset*.
            ValueError: *buf* is not contiguous; a negative *offset*
                (``xaio.InvalidArgument``, also an ``OSError`` EINVAL).
            OSError: ``EBADF`` for a negative fd.
            RuntimeError: the batch has already run.
        """
        if not (
            type(fd) is int
            and type(offset) is int
            and 0 <= fd <= _INT_MAX
            and 0 <= offset <= _OFF_MAX
        ):
            fd = check_fd(fd)
            offset = check_offset(offset)
        op = Operation(_READ, fd, (buf,), offset)
        if self._started:
            return self._add(op)  # (raises)
        ops = self._ops
        ops.append(op)
        return len(ops) - 1

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        """Add a write of the bytes-like *data* to *fd* at *offset*
        (pwrite(2); as :func:`xaio.pwrite`).

        Returns:
            The request's index in the results.

        Raises:
            TypeError, ValueError, OSError, RuntimeError: as :meth:`preadinto`.
        """
        fd = check_fd(fd)
        offset = check_offset(offset)
        return self._add(Operation(OpCode.WRITE, fd, (data,), offset))

    def preadv(self, fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> int:
        """Add a read into each writable buffer of *buffers* in turn
        (preadv2(2); as :func:`xaio.preadv`, ``RWF_*`` *flags* included).

        Returns:
            The request's index in the results.

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
            The request's index in the results.

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
            The request's index in the results.

        Raises:
            TypeError: *fd* is not an int.
            ValueError: a negative *fd* (also an ``OSError`` EBADF).
            RuntimeError: the batch has already run.
        """
        return self._add(Operation(OpCode.FSYNC, check_sync_fd(fd)))

    def fdatasync(self, fd: int) -> int:
        """Add an fdatasync(2) of *fd* (as :func:`xaio.fdatasync`); its result is None.

        Returns:
            The request's index in the results.

        Raises:
            TypeError, ValueError, RuntimeError: as :meth:`fsync`.
        """
        return self._add(Operation(OpCode.FDATASYNC, check_sync_fd(fd)))

    # -- running -----------------------------------------------------------------

    def _begin(self) -> tuple[Driver, list[Operation]]:
        if self._started:
            raise RuntimeError("this batch has already run (a Batch is single-use)")
        drv = current_driver() if self._engine is None else self._engine.driver()
        self._started = True
        return drv, self._ops

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
        flight = _Flight(drv, ops)
        await flight.start()
        try:
            for op in flight.sent:
                if op.state is not _DONE:
                    await drv._wait(op)
        except BaseException:
            await flight.settle()
            raise
        out = flight.early
        for i, op in enumerate(ops):
            if out[i] is _PENDING:
                res = op.result
                out[i] = res if res is not None and res >= 0 and op.opcode is _READ else _decode(op)
        return out

    def as_completed(self) -> AsCompleted:
        """Submit every request in one submission and iterate over
        ``(index, result)`` pairs as the requests complete::

            async with batch.as_completed() as landed:
                async for i, result in landed:
                    ...

        Results are as :meth:`run`'s.  The iterator waits for the oldest
        request still in flight and then yields every request completed by
        then (those in the order they were added): a request that lands
        early is yielded no later than the oldest one before it.  Leaving
        the ``async with`` block (or
        cancelling the iteration) cancels the requests that have not
        completed and waits for them; a bare ``async for`` left early leaves
        them to complete on their own (their buffers stay in use until then).

        Returns:
            An :class:`AsCompleted` iterator (the requests are submitted on
            its first step).
        """
        if self._started:
            raise RuntimeError("this batch has already run (a Batch is single-use)")
        return AsCompleted(self)


class _Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<pending>"


_PENDING: Any = _Pending()


class _Flight:
    """The requests of one batch run on one driver."""

    __slots__ = ("drv", "ops", "sent", "early")

    def __init__(self, drv: Driver, ops: list[Operation]) -> None:
        self.drv = drv
        self.ops = ops
        #: requests handed to the engine
        self.sent: list[Operation] = []
        #: per request: its result if it was answered here, else _PENDING
        self.early: list[Any] = [_PENDING] * len(ops)

    def _prepare(self) -> None:
        """Answer here what the kernel would answer at once (ESPIPE, zero
        length, RWF_NOWAIT on a buffered file); the rest is to be sent."""
        early = self.early
        sent = self.sent
        answers: dict[int, int | OSError] = {}  # per fd: check_positional's answer
        for i, op in enumerate(self.ops):
            if op.opcode not in _TRANSFERS:
                sent.append(op)
                continue
            fd = op.fd
            answer = answers.get(fd)
            if answer is None:
                try:
                    answer = check_positional(fd)
                except OSError as e:
                    answer = e
                answers[fd] = answer
            if isinstance(answer, OSError):
                early[i] = OSError(answer.errno, answer.strerror)
                abandon(op)
                continue
            op.kind = answer  # the engine routes by it without looking again
            if op.flags or len(op.pins) != 1 or not op.pins[0].nbytes:
                if not op.nbytes or (op.flags & _RWF_NOWAIT and not is_direct(fd)):
                    early[i] = self._now(op)
                else:
                    sent.append(op)
            else:
                sent.append(op)

    @staticmethod
    def _now(op: Operation) -> BatchResult:
        """Do *op* in this thread: the system call's own answer for a
        zero-length transfer or a ``RWF_NOWAIT`` one (which never waits)."""
        bufs = op.buffers
        abandon(op)
        try:
            if op.opcode in _READS:
                return os.preadv(op.fd, bufs, op.offset, op.flags)
            return os.pwritev(op.fd, bufs, op.offset, op.flags)
        except OSError as e:
            return e

    async def start(self) -> None:
        drv = self.drv
        await drv._checkpoint_if_cancelled()
        try:
            self._prepare()
            if self.sent:
                drv.start_all(self.sent)
        except BaseException:
            for op in self.ops:
                abandon(op)
            raise
        if all(op.state is _DONE for op in self.sent):
            await drv._cancel_shielded_checkpoint()

    async def settle(self) -> None:
        """Cancel every request still in the kernel, then wait until each
        has completed, through further cancellations."""
        drv = self.drv
        pending = [op for op in self.sent if op.state is not _DONE]
        for op in pending:
            drv._cancel_in_engine(op)
        for op in pending:
            while op.state is not _DONE:
                try:
                    await drv._wait_after_cancel(op)
                except BaseException:
                    continue


class AsCompleted:
    """The iterator :meth:`Batch.as_completed` returns: ``(index, result)``
    pairs as requests complete; an async context manager whose exit cancels
    and waits for the requests that have not completed."""

    __slots__ = ("_batch", "_flight", "_ready", "_next", "_closed")

    def __init__(self, batch: Batch) -> None:
        self._batch = batch
        self._flight: _Flight | None = None
        self._ready: list[tuple[int, BatchResult]] = []
        self._next = 0  # index in _ready
        self._closed = False

    def __aiter__(self) -> AsCompleted:
        return self

    async def __anext__(self) -> tuple[int, BatchResult]:
        flight = self._flight
        if flight is None:
            if self._closed:
                raise StopAsyncIteration
            drv, ops = self._batch._begin()
            flight = self._flight = _Flight(drv, ops)
            await flight.start()
            self._collect()
        while self._next >= len(self._ready):
            if self._closed:
                raise StopAsyncIteration
            waiting = next((op for op in flight.sent if op.state is not _DONE), None)
            if waiting is None:
                self._collect()
                if self._next >= len(self._ready):
                    self._closed = True
                    raise StopAsyncIteration
                break
            try:
                await flight.drv._wait(waiting)
            except BaseException:
                self._closed = True
                await flight.settle()
                raise
            self._collect()
        item = self._ready[self._next]
        self._next += 1
        return item

    def _collect(self) -> None:
        """Move every request answered or completed since the last look to
        the ready list (in the order they were added)."""
        flight = self._flight
        assert flight is not None
        early = flight.early
        ready = self._ready
        for i, op in enumerate(flight.ops):
            r = early[i]
            if r is _PENDING and op.state is _DONE:
                early[i] = r = _Reported(_decode(op))
                ready.append((i, r.value))
            elif r is not _PENDING and type(r) is not _Reported:
                early[i] = _Reported(r)
                ready.append((i, r))

    async def aclose(self) -> None:
        """Stop iterating: cancel the requests that have not completed and
        wait for them (a batch not started yet is not started)."""
        self._closed = True
        if self._flight is not None:
            await self._flight.settle()
        elif not self._batch._started:
            self._batch._started = True  # it will not run: give the buffers back
            for op in self._batch._ops:
                abandon(op)

    async def __aenter__(self) -> AsCompleted:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _Reported:
    __slots__ = ("value",)

    def __init__(self, value: BatchResult) -> None:
        self.value = value
