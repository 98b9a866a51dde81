"""The driver for asyncio event loops (and uvloop, and anyio on asyncio).

How a completion reaches a task, fairness, batching and cancellation are the
same on every loop and described in :mod:`xaio._async._driver`; this module
holds asyncio's side of them: one Future per request that did not complete at
once, ``loop.call_soon`` for the batch flush and the new time slice, the wake
budget (:meth:`AsyncioDriver._release` times the loop iterations), and a FIFO
of tasks parked by an exhausted slice.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from xaio._async._checks import request_error
from xaio._async._driver import _SLICE, _STREAK, WAKE_MIN, Driver, Parked, abandon, wake_budget
from xaio._fork import generation as _generation
from xaio._ops import Operation, OpState
from xaio.engine import Engine

__all__ = ["AsyncioDriver"]

T = TypeVar("T")
_DONE = OpState.DONE
_running_loop = asyncio.get_running_loop
_perf = time.perf_counter
#: Tasks parked by an exhausted slice that are released per loop iteration.
_SLICE_WAKE = 1


_get_ident = threading.get_ident


def runs_here(loop: asyncio.AbstractEventLoop, generation: int) -> bool:
    """Whether *loop* is this thread's running loop, answered without asking
    for the running loop (on Python 3.11 ``asyncio._get_running_loop`` makes
    a ``getpid(2)`` system call, its fork check): a thread runs one loop at a
    time, and asyncio's loops mark the thread they run in while they run
    (``_thread_id``, None once they stop).  *generation* is the fork
    generation (``xaio._fork.generation``) the caller saw *loop* run in: a
    forked child inherits the mark of the loop it forked from, and is
    answered False.  False also for a loop that does not mark its thread:
    the caller then asks for the running loop."""
    return generation == _generation[0] and getattr(loop, "_thread_id", None) == _get_ident()


class AsyncioDriver(Driver):
    """A driver for an asyncio event loop (any implementation with ``add_reader``)."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, **kw: Any) -> None:
        super().__init__(engine, **kw)
        self._loop_ref = weakref.ref(loop)
        #: the fork generation the driver was made in (see runs_here)
        self._generation = _generation[0]
        self._fd = engine.fileno()
        self._waiters: dict[tuple[int, bool], list[asyncio.Future[None]]] = {}
        self._woken = 0  # tasks woken in this loop iteration
        #: most tasks woken per loop iteration: set by _release (wake_budget)
        #: from the pace of the last; the first burst finds the lowest
        self._budget = WAKE_MIN
        self._deferred: list[asyncio.Future[None]] = []
        self._timed = 0  # woken tasks running in the iteration being timed
        self._timed_since = 0.0  # when that iteration began (its _release)
        self._slice_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._release_pending = False
        self._slice_start = 0.0  # when this loop iteration's time slice began
        self._exhausted = False  # the slice is used up: tasks park before transferring
        self._slice_pending = False  # _new_slice is scheduled
        #: the default driver's sentinel async generator and loop finaliser
        #: (see xaio._async._current); None for other drivers
        self._agen: Any = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        loop.add_reader(self._fd, self.on_readable)
        self._reader = True

    def _make_on_done(self) -> Callable[[Operation], None]:
        def on_done(op: Operation) -> None:
            self._inflight -= 1
            fut = op.context
            if fut is None:
                return
            if self._woken < self._budget:
                if not self._woken and not self._release_pending:
                    self._release_pending = True
                    self._running().call_soon(self._release)
                self._woken += 1
                if not fut.done():
                    fut.set_result(None)
                    self._wakeups += 1
            else:
                self._deferred.append(fut)

        return on_done

    def _release(self) -> None:
        """Once per loop iteration while completions are being delivered
        (first among what the last iteration scheduled, so before the steps
        of the tasks it woke): time the last iteration if woken tasks ran in
        it, set the budget from that (:func:`wake_budget`), and wake the
        tasks deferred by the budget."""
        now = _perf()
        if self._timed:
            self._budget = wake_budget(self._timed, now - self._timed_since)
        deferred = self._deferred
        # the tasks woken since the last _release run in this iteration
        self._timed = self._woken
        self._timed_since = now
        self._woken = 0
        if not deferred:
            if self._timed:  # time this iteration: _release once more
                self._running().call_soon(self._release)
            else:
                self._release_pending = False
            return
        budget = self._budget
        take = deferred[:budget]
        del deferred[:budget]
        self._woken = len(take)
        for fut in take:
            if not fut.done():
                fut.set_result(None)
                self._wakeups += 1
        self._running().call_soon(self._release)

    def _wake_all(self) -> None:
        waiters = self._slice_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        deferred, self._deferred = self._deferred, []
        for fut in deferred:
            if not fut.done():
                fut.set_result(None)

    def _running(self) -> asyncio.AbstractEventLoop:
        """The running loop, where the driver's callbacks and requests run:
        its own loop (asked of asyncio only once that is gone), which costs a
        weak reference's call where asking asyncio costs a ``getpid(2)`` on
        Python 3.11 (see :func:`runs_here`)."""
        loop = self._loop_ref()
        return loop if loop is not None else _running_loop()

    def check_loop(self) -> None:
        loop = self._loop_ref()
        if loop is not None and runs_here(loop, self._generation):
            return
        if loop is not asyncio._get_running_loop():
            raise RuntimeError("this xaio engine belongs to another event loop")

    def _schedule_flush(self) -> None:
        self._running().call_soon(self._flush)

    async def _fair(self) -> None:
        """Every :data:`_STREAK` calls, look at the clock; once this driver's
        tasks have run for :data:`_SLICE` in this loop iteration, each task
        parks in a FIFO before its next transfer, and :meth:`_new_slice`
        releases :data:`_SLICE_WAKE` of them per iteration: with 64 tasks
        reading cached data the loop runs a few of them per slice, round
        robin, instead of resuming all 64 just to yield again."""
        self._streak += 1
        if self._streak < _STREAK:
            return
        if not self._exhausted:
            if _perf() - self._slice_start <= _SLICE:
                self._streak = 0
                return
            self._exhausted = True
            if not self._slice_pending:
                self._slice_pending = True
                self._running().call_soon(self._new_slice)
        fut = self._running().create_future()
        self._slice_waiters.append(fut)
        await fut

    def _new_slice(self) -> None:
        """Once per loop iteration after the slice was used up, while tasks
        are parked: start a new slice and release the first parked tasks,
        which (with whatever else runs in the next iteration) may use the
        whole slice before they park again."""
        self._slice_pending = False
        self._exhausted = False
        self._streak = 0
        self._slice_start = _perf()
        waiters = self._slice_waiters
        n = 0
        while waiters and n < _SLICE_WAKE:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n += 1
        if waiters:  # the others, one iteration at a time
            self._slice_pending = True
            self._running().call_soon(self._new_slice)

    async def _wait(self, op: Operation) -> None:
        fut = self._running().create_future()
        op.context = fut
        try:
            await fut
        except asyncio.CancelledError:
            self._resumed(fut)
            await self._cancel_and_wait(op)
            raise
        self._resumed(fut)

    async def _run(self, op: Operation) -> int:
        """Start *op*, wait for it (one Future, made only if it did not
        complete at once), return its decoded result.  (The wait is
        :meth:`_wait`'s, written out here: one coroutine frame less per
        request, on the path every engine-bound request takes.)"""
        try:
            if self._streak >= _STREAK:
                await self._fair()  # a cancellation here: nothing was started
            self._start(op)
        except BaseException:
            abandon(op)
            raise
        if op.state is not _DONE:
            loop = self._loop_ref()  # _running, written out
            fut = op.context = (loop if loop is not None else _running_loop()).create_future()
            try:
                await fut
            except asyncio.CancelledError:
                self._resumed(fut)
                await self._cancel_and_wait(op)
                raise
            if self._wakeups:  # _resumed, written out (fut is done, not cancelled)
                self._wakeups -= 1
        else:
            self._streak += 1
        res = op.result
        if res is None or res < 0:
            raise request_error(op)
        return res

    async def _wait_after_cancel(self, op: Operation) -> None:
        await self._cancel_and_wait(op)

    async def _park(self, parked: Parked, on_cancel: Callable[[], bool]) -> None:
        fut = self._running().create_future()
        parked.waiter = fut
        try:
            await fut
        except asyncio.CancelledError:
            parked.waiter = None
            if not on_cancel():
                loop = self._running()
                while True:  # until _unpark, through further cancellations
                    fut = parked.waiter = loop.create_future()
                    try:
                        await fut
                        break
                    except asyncio.CancelledError:
                        if parked.waiter is None:
                            break  # _unpark came, then a cancellation
                        parked.waiter = None
            raise

    def _unpark(self, parked: Parked) -> None:
        fut = parked.waiter
        if fut is not None:
            parked.waiter = None
            if not fut.done():
                fut.set_result(None)

    async def _checkpoint(self) -> None:
        await asyncio.sleep(0)

    def _call_soon(self, fn: Callable[[], None]) -> None:
        self._running().call_soon(fn)

    def _sibling(self, engine: Engine) -> Driver:
        return AsyncioDriver(engine, self._running())

    async def _cancel_and_wait(self, op: Operation) -> None:
        self._cancel_in_engine(op)
        loop = self._running()
        while op.state is not _DONE:
            fut = loop.create_future()
            op.context = fut
            try:
                await fut
            except asyncio.CancelledError:
                self._resumed(fut)
                continue  # cancelled again: keep waiting for the kernel
            self._resumed(fut)

    def _resumed(self, fut: asyncio.Future[None]) -> None:
        """A task that awaited *fut* runs again: if a completion woke it, it
        no longer counts as about to run (see ``_wakeups``)."""
        if self._wakeups and fut.done() and not fut.cancelled():
            self._wakeups -= 1

    async def _wait_ready(self, fd: int, write: bool) -> None:
        loop = asyncio.get_running_loop()
        key = (fd, write)
        waiters = self._waiters.get(key)
        fut: asyncio.Future[None] = loop.create_future()
        if waiters is None:
            waiters = self._waiters[key] = []
            add = loop.add_writer if write else loop.add_reader
            try:
                add(fd, self._ready, key)
            except OSError:
                del self._waiters[key]
                raise
        waiters.append(fut)
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()
            try:
                waiters.remove(fut)
            except ValueError:
                pass
            if not waiters and self._waiters.get(key) is waiters:
                del self._waiters[key]
                (loop.remove_writer if write else loop.remove_reader)(fd)

    def _ready(self, key: tuple[int, bool]) -> None:
        for fut in self._waiters.get(key, ()):
            if not fut.done():
                fut.set_result(None)

    async def wait_readable(self, fd: int) -> None:
        """Wait until *fd* is readable (``loop.add_reader``); several tasks may wait."""
        await self._wait_ready(fd, False)

    async def wait_writable(self, fd: int) -> None:
        """Wait until *fd* is writable (``loop.add_writer``)."""
        await self._wait_ready(fd, True)

    async def run_in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            while not fut.done():
                try:
                    await asyncio.shield(fut)
                except asyncio.CancelledError:
                    continue
                except BaseException:
                    break
            raise

    def watch(self, fd: int, callback: Callable[[], None]) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, callback)
        ref = self._loop_ref

        def unwatch() -> None:
            lp = ref()
            if lp is not None and not lp.is_closed():
                lp.remove_reader(fd)

        return unwatch

    def detach_reader(self) -> None:
        if not self._reader:
            return
        self._reader = False
        loop = self._loop_ref()
        if loop is not None and not loop.is_closed():
            try:
                loop.remove_reader(self._fd)
            except (RuntimeError, ValueError, OSError):  # pragma: no cover
                pass

    def close(self) -> None:
        if self.closed:
            return
        self.detach_reader()
        try:
            super().close()
        finally:
            self._wake_all()
