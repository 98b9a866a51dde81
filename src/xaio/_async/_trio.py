"""The driver for trio (and anyio on trio).

trio has no ``call_soon`` and no Futures: a system task (the *reader*) waits
in ``trio.lowlevel.wait_readable`` on the engine's fd, another (the
*flusher*) hands each scheduling batch's queued requests to the engine and
runs what the driver asks to run "soon" (``_call_soon``: trio's own
``run_sync_soon`` costs two system calls on its wake-up socket), and a
waiting task is parked with ``wait_task_rescheduled`` and rescheduled by the
operation's ``on_done``.  Every call is a checkpoint (trio's convention).  See
:mod:`xaio._async._driver` for what the driver does on every loop.

*Wake budget on trio.*  trio runs every task made runnable during one
scheduling batch in the next one, and looks at its timers and I/O only
between batches; so ``on_done`` reschedules at most :func:`wake_budget`
tasks per batch and leaves the others to the next ones.  The clock is trio's
own batch boundary: an instrument (``trio.lowlevel.add_instrument``) whose
``after_io_wait`` hook runs after the I/O check, just before the batch is
taken (it reschedules the deferred tasks there, into that batch) and whose
``before_io_wait`` hook runs when the batch has ended (it times the batch in
which woken tasks ran, and sets the budget from that pace).  Timing from a
task would not do: trio reverses each batch's order at random, so a task's
place in its batch says nothing about the batch's length.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from xaio._async._checks import request_error
from xaio._async._driver import WAKE_MIN, Driver, Parked, abandon, wake_budget
from xaio._ops import Operation, OpState
from xaio.engine import Engine

__all__ = ["TrioDriver"]

T = TypeVar("T")
_DONE = OpState.DONE
_perf = time.perf_counter


class _TrioCancel:
    """The waiter of an operation whose task trio asked to cancel."""

    __slots__ = ("task", "raise_cancel")

    def __init__(self, task: Any, raise_cancel: Callable[[], Any]) -> None:
        self.task = task
        self.raise_cancel = raise_cancel


class TrioDriver(Driver):
    """A driver for one ``trio.run``: a system task waits on the engine's fd."""

    def __init__(self, engine: Engine, **kw: Any) -> None:
        import outcome
        import trio

        self._trio = trio
        self._lowlevel = trio.lowlevel
        self._outcome = outcome
        super().__init__(engine, **kw)
        self._inline = False  # trio: every call is a checkpoint (see _fair)
        self._fd = engine.fileno()
        self._token = trio.lowlevel.current_trio_token()
        #: the flusher system task while it is parked (None while it runs)
        self._flusher: Any = None
        #: the flusher was rescheduled and has not run yet
        self._flusher_woken = False
        #: _call_soon's callbacks, run by the flusher before it flushes
        self._soon: list[Callable[[], None]] = []
        #: _call_at_turn's callbacks, run as the next scheduling batch begins
        self._at_turn: list[Callable[[], None]] = []
        #: tasks rescheduled by completions for the next scheduling batch
        self._woken = 0
        #: most tasks woken per batch (wake_budget, set by _batch_ended)
        self._budget = WAKE_MIN
        #: completed operations whose task waits for a later batch
        self._deferred: list[Operation] = []
        self._timed = 0  # woken tasks running in the batch being timed
        self._batch_start = 0.0  # when that batch began
        self._instrument: Any = _batch_instrument(trio, self)
        trio.lowlevel.add_instrument(self._instrument)
        trio.lowlevel.spawn_system_task(self._reader, name="xaio engine reader")
        trio.lowlevel.spawn_system_task(self._flush_task, name="xaio engine flusher")

    def check_loop(self) -> None:
        try:
            token = self._lowlevel.current_trio_token()
        except RuntimeError:
            token = None
        if token is not self._token:
            raise RuntimeError("this xaio engine belongs to another trio run")

    def _make_on_done(self) -> Callable[[Operation], None]:
        def on_done(op: Operation) -> None:
            self._inflight -= 1
            if op.context is None:
                return
            if self._woken >= self._budget:
                if not self._deferred:
                    self._wake_flusher()  # keeps a task runnable: see _flush_task
                self._deferred.append(op)  # (a cancellation still finds it)
                return
            self._woken += 1
            self._wake(op)

        return on_done

    def _batch_begins(self) -> None:
        """Between two scheduling batches, before trio takes the next one:
        run the callbacks of :meth:`_call_at_turn`, reschedule deferred
        tasks into it, up to the budget, and start timing it if woken tasks
        run in it."""
        at_turn = self._at_turn
        if at_turn:
            self._at_turn = []
            for fn in at_turn:
                fn()
        deferred = self._deferred
        if deferred:
            room = self._budget - self._woken
            if room > 0:
                take = deferred[:room]
                del deferred[:room]
                self._woken += len(take)
                for op in take:
                    self._wake(op)
        self._timed = self._woken
        self._woken = 0
        if self._timed:
            self._batch_start = _perf()

    def _batch_ended(self) -> None:
        """A scheduling batch has run: if woken tasks ran in it, set the
        budget from its pace (:func:`wake_budget`)."""
        if self._timed:
            self._budget = wake_budget(self._timed, _perf() - self._batch_start)
            self._timed = 0

    def _wake_deferred(self) -> None:
        """Reschedule every deferred task now (the driver or the run ends)."""
        deferred, self._deferred = self._deferred, []
        for op in deferred:
            try:
                self._wake(op)
            except RuntimeError:  # pragma: no cover - the run is over
                pass

    def _wake(self, op: Operation) -> None:
        """Reschedule the task waiting for the completed *op*."""
        w = op.context
        if w is None:
            return
        op.context = None
        self._wakeups += 1  # the task's _wait takes it back when it resumes
        if type(w) is _TrioCancel:
            self._lowlevel.reschedule(w.task, self._outcome.capture(w.raise_cancel))
        else:
            self._lowlevel.reschedule(w)

    async def _reader(self) -> None:
        wait_readable = self._lowlevel.wait_readable
        try:
            while not self.closed:
                await wait_readable(self._fd)
                self.on_readable()
        except self._trio.ClosedResourceError:
            pass  # close() called notify_closing: stop reading
        finally:
            if self.owns_engine:
                self.close()

    def watch(self, fd: int, callback: Callable[[], None]) -> Callable[[], None]:
        ll = self._lowlevel
        state = {"on": True}

        async def watcher() -> None:
            try:
                while state["on"]:
                    await ll.wait_readable(fd)
                    if state["on"]:
                        callback()
            except (self._trio.ClosedResourceError, self._trio.Cancelled):
                pass

        ll.spawn_system_task(watcher, name="xaio path-operation reader")

        def unwatch() -> None:
            state["on"] = False
            try:
                ll.notify_closing(fd)
            except RuntimeError:
                pass

        return unwatch

    async def _flush_task(self) -> None:
        """trio has no ``call_soon``: this system task plays its part.  Woken
        by the first request queued in a scheduling batch (or the first
        :meth:`_call_soon`), it runs in the next batch -- after every task
        that was runnable with the submitter (e.g. all those woken by one
        reap) has queued its request -- runs the callbacks of
        :meth:`_call_soon` and hands the whole queue to the engine in one
        submit.  While tasks wait for a later batch (the wake budget), it
        stays runnable from batch to batch instead of parking: trio would
        otherwise sleep in its I/O wait with them deferred."""
        ll = self._lowlevel

        def abort(_raise_cancel: Callable[[], Any]) -> Any:
            self._flusher = None
            return ll.Abort.SUCCEEDED

        try:
            while not self.closed:
                if self._deferred:
                    self._flusher_woken = True
                    await ll.checkpoint()
                else:
                    self._flusher = ll.current_task()
                    await ll.wait_task_rescheduled(abort)
                self._flusher_woken = False
                self._run_soon()
                self._flush()
        except self._trio.Cancelled:
            pass  # the run is ending
        finally:
            self._flusher = None
            self._flusher_woken = False
            self._wake_deferred()  # nothing keeps the run going for them now
            self._run_soon()
            if self._queue and not self.closed:
                self._flush()

    def _run_soon(self) -> None:
        """Run the callbacks :meth:`_call_soon` left for the flusher."""
        soon = self._soon
        while soon:
            self._soon = []
            for fn in soon:
                fn()
            soon = self._soon

    def _wake_flusher(self) -> bool:
        """Make the flusher run in trio's next scheduling batch (a
        ``reschedule``, no system call); False if it cannot (not parked:
        not started yet, or gone)."""
        task = self._flusher
        if task is None:
            return self._flusher_woken
        self._flusher = None
        self._flusher_woken = True
        self._lowlevel.reschedule(task)
        return True

    def _schedule_flush(self) -> None:
        if not self._wake_flusher():  # no flusher to run it: flush now
            self._flush()

    async def _run(self, op: Operation) -> int:
        ll = self._lowlevel
        try:
            await ll.checkpoint_if_cancelled()
            self._start(op)
        except BaseException:
            abandon(op)
            raise
        if op.state is not _DONE:
            # _wait, written out: one coroutine frame less per request
            task = op.context = ll.current_task()
            try:
                await ll.wait_task_rescheduled(self._aborter(op, task))
            finally:
                if self._wakeups:
                    self._wakeups -= 1
        else:
            await ll.cancel_shielded_checkpoint()
        res = op.result
        if res is None or res < 0:
            raise request_error(op)
        return res

    def _aborter(self, op: Operation, task: Any) -> Callable[[Callable[[], Any]], Any]:
        """The abort callback of *task* waiting for *op*: a cancellation
        cancels *op* in the engine and never ends the wait itself (only
        on_done reschedules the task, once *op* has completed)."""
        failed = self._lowlevel.Abort.FAILED

        def abort(raise_cancel: Callable[[], Any]) -> Any:
            op.context = _TrioCancel(task, raise_cancel)
            self._cancel_in_engine(op)
            return failed

        return abort

    async def _wait(self, op: Operation) -> None:
        ll = self._lowlevel
        task = ll.current_task()
        op.context = task
        try:
            # only on_done reschedules this task (abort never succeeds), and it
            # counted the wake-up
            await ll.wait_task_rescheduled(self._aborter(op, task))
        finally:
            if self._wakeups:
                self._wakeups -= 1

    async def _wait_after_cancel(self, op: Operation) -> None:
        await self._wait(op)

    async def _checkpoint_if_cancelled(self) -> None:
        await self._lowlevel.checkpoint_if_cancelled()

    async def _cancel_shielded_checkpoint(self) -> None:
        await self._lowlevel.cancel_shielded_checkpoint()

    async def _park(self, parked: Parked, on_cancel: Callable[[], bool]) -> None:
        ll = self._lowlevel
        task = ll.current_task()
        parked.waiter = task

        def abort(raise_cancel: Callable[[], Any]) -> Any:
            parked.waiter = None
            if on_cancel():
                return ll.Abort.SUCCEEDED
            parked.waiter = _TrioCancel(task, raise_cancel)  # _unpark raises it
            return ll.Abort.FAILED

        await ll.wait_task_rescheduled(abort)

    def _unpark(self, parked: Parked) -> None:
        w = parked.waiter
        if w is None:
            return
        parked.waiter = None
        if type(w) is _TrioCancel:
            self._lowlevel.reschedule(w.task, self._outcome.capture(w.raise_cancel))
        else:
            self._lowlevel.reschedule(w)

    async def _checkpoint(self) -> None:
        await self._lowlevel.checkpoint()

    def _call_soon(self, fn: Callable[[], None]) -> None:
        # by the flusher when it can (the entry queue's run_sync_soon costs
        # two system calls on trio's wake-up socket and a task step)
        if self._wake_flusher():
            self._soon.append(fn)
        else:
            self._token.run_sync_soon(fn)

    def _call_at_turn(self, fn: Callable[[], None]) -> None:
        # the batch clock's after_io_wait runs it: waking the flusher task
        # for it would cost a task step per scheduling batch
        self._at_turn.append(fn)

    def _sibling(self, engine: Engine) -> Driver:
        return TrioDriver(engine)

    async def _fair(self) -> None:
        await self._lowlevel.checkpoint()

    async def wait_readable(self, fd: int) -> None:
        """Wait until *fd* is readable (``trio.lowlevel.wait_readable``)."""
        await self._lowlevel.wait_readable(fd)

    async def wait_writable(self, fd: int) -> None:
        """Wait until *fd* is writable (``trio.lowlevel.wait_writable``)."""
        await self._lowlevel.wait_writable(fd)

    async def run_in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._trio.to_thread.run_sync(fn, *args)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._lowlevel.notify_closing(self._fd)
        except (RuntimeError, OSError):
            pass
        try:
            self._lowlevel.remove_instrument(self._instrument)
        except (RuntimeError, KeyError):
            pass
        try:
            super().close()
        finally:
            self._wake_deferred()
            task, self._flusher = self._flusher, None
            if task is not None:  # let it see `closed` and end
                try:
                    self._lowlevel.reschedule(task)
                except RuntimeError:  # pragma: no cover - the run is over
                    pass


def _batch_instrument(trio: Any, drv: TrioDriver) -> Any:
    """The trio instrument that tells *drv* where scheduling batches begin
    and end (see *Wake budget on trio*); made per driver, as trio's
    instruments are objects whose hooks it finds by name."""

    class BatchClock(trio.abc.Instrument):  # type: ignore[misc]
        __slots__ = ()

        def before_io_wait(self, timeout: float) -> None:
            drv._batch_ended()

        def after_io_wait(self, timeout: float) -> None:
            drv._batch_begins()

    return BatchClock()


# ---------------------------------------------------------------------------------
# which library is running, and the default driver of each loop
# ---------------------------------------------------------------------------------
