"""Per-event-loop engine drivers: how completions reach asyncio and trio.

Some facts this module rests on
===============================

*One reader per engine.*  Every engine has an fd (``Engine.fileno()``) that is
readable while completions wait.  A :class:`Driver` ties one engine to one
running event loop: on asyncio it is registered with ``loop.add_reader``; on
trio a system task sits in ``trio.lowlevel.wait_readable``.  The callback runs
``engine.reap(0)``, which calls each finished operation's ``on_done`` in the
loop's thread; ``on_done`` wakes the one waiting task.  There is one Future (or
one trio ``reschedule``) per request, created only when the request did not
complete at once, and no per-request closure: ``on_done`` is a bound method
made once per driver, and the waiter travels in ``Operation.context``.

*Page-cache hits never reach an engine.*  A read whose data is in the page
cache is done in the loop's thread with ``preadv2(RWF_NOWAIT)``, which copies
from the cache or fails with EAGAIN instead of waiting for the device --
exactly the attempt io_uring makes inline before punting a read to a worker,
without the ring's per-request cost in Python (one system call, where the
engine path builds an Operation, writes an SQE, submits and reaps: an order
of magnitude more work per request).  Such a request resolves without a
Future and without touching the event loop (the coroutine does not even
yield).  A miss is not free:
``RWF_NOWAIT`` still starts the readahead from this thread, tens of
microseconds and sometimes milliseconds when the device queue is full; so an
fd that misses turns *cold* and asks ``cachestat(2)`` (Linux 6.5: page-cache
residency, no I/O) before trying inline again.  O_DIRECT and O_APPEND fds
always use the engine.

*Fairness.*  A coroutine whose awaits never suspend would starve every other
task and timer of the loop.  The driver looks at the clock every
:data:`_STREAK` immediate results; once its tasks have run for :data:`_SLICE`
in this loop iteration (a slice shared by all of them), the slice is
exhausted: each task that comes for another transfer parks in a FIFO, and one
parked task per iteration is released (round robin) with a fresh slice,
which it may use whole.  So 64 tasks reading cached data hold the loop for
about half a millisecond per iteration, and the loop does not pay for
resuming 64 tasks just to suspend them again (nor for an iteration per
streak).  The parking comes before the transfer, so a cancellation
delivered there has consumed nothing.  On trio every call is a checkpoint
instead (trio's own convention).

*Reap right after submit.*  io_uring also completes some requests inside the
``io_uring_enter`` that submits them, so the driver calls ``reap(0)`` right
after each submit: such a completion is found in the completion queue without
a system call and resolves without an event-loop round trip.

*Batching under load.*  While requests of this driver are in the kernel, or
tasks woken by its completions have yet to run, new requests are queued and
handed over together by one ``engine.submit`` scheduled with
``loop.call_soon`` (on trio, which has none, by a system task of the driver,
the *flusher*, woken by the first queued request: it runs in trio's next
scheduling batch): the tasks woken by one batch of completions run in one
loop iteration, so their next requests reach the kernel in one system call
-- or in a few: every :data:`EARLY` requests queued are handed over at once,
so that the device starts on the first of them while the loop still runs
the other woken tasks (one ``io_uring_enter`` per 16 requests costs little;
a device idle for the whole iteration costs a third of the throughput at 64
tasks, ``benchmarks/async.md``).
Only a request made with nothing in flight and nobody about to run is
submitted at once (lowest latency, e.g. at concurrency 1).  The second
condition matters: a fast device can finish everything before the loop gets
round to the woken tasks, and if the first of them submitted alone (nothing in
flight), the device would then complete it alone, and so on -- a convoy of
one-request system calls, each paying the whole cost of an ``io_uring_enter``
for one request (``benchmarks/async.md`` shows the effect on CPU per read).  A
request that may be served from the page cache passes a checkpoint before its
attempt (see *Fairness*); an engine-bound one does not, as its wait is one --
on trio a second would let the other woken tasks run in between.

*Wake budget.*  A burst of completions wakes at most :func:`wake_budget`
tasks per loop iteration (the others in the next ones), so it cannot hold the
loop -- and every timer and other task of it -- for long.  The budget bounds
time, not only a count: the driver times each loop iteration in which woken
tasks ran and wakes, in the next one, as many as fit in :data:`_WAKE_SLICE` at
that pace, between :data:`WAKE_MIN` and :data:`WAKE_MAX`.  Cheap steps (an
O_DIRECT or cached read and the next request) let 64 tasks go round in one
iteration and share one ``io_uring_enter``; expensive ones (a cold open, a
file's whole first read) are spread over several iterations, with the
timers between.  On trio the loop iteration is the scheduling batch, timed
at trio's own batch boundary (:mod:`xaio._async._trio`).

*Cancellation really cancels.*  When the task awaiting a request is cancelled,
the driver calls ``engine.cancel(op)`` and then keeps waiting -- through
further cancellations -- until the operation's completion has been reaped
(io_uring may still be copying into the buffer after a "successful" cancel;
the thread engine cannot stop a running ``pread``).  Only then does
``CancelledError`` (or ``trio.Cancelled``) leave the coroutine, so when the
caller sees it the buffer is free and no late write can land in it.

*Which driver.*  The running loop's default driver, its lifetime and what a
forked child does with it are :mod:`xaio._async._current`'s; the asyncio and
trio sides of the waits are in :mod:`xaio._async._asyncio` and
:mod:`xaio._async._trio`; argument checks in :mod:`xaio._async._checks`.

*Never block the loop.*  Stream fds (pipes, sockets, ttys) never go to an
engine: :meth:`Driver.read` / :meth:`Driver.write` try the transfer with
``RWF_NOWAIT`` (which fails with EAGAIN instead of sleeping) and otherwise wait
for readiness in the event loop.  A cancelled wait has consumed nothing, so a
cancelled read never loses data.  Regular files go to the engine, which never
blocks the submitting thread (io_uring punts cold reads to its workers; the
``linux`` engine sends buffered files to threads), also on a file system that
cannot be asked not to block -- FUSE, NFS, CIFS...: both engines learn it per
fd from :func:`xaio.engine.fd_kind` and send those requests to a kernel
worker (``IOSQE_ASYNC``) or to threads.

*The kernel's answer, on every engine.*  A positional call on an fd without
a position (a pipe, socket, tty, eventfd) fails with ESPIPE before anything
is submitted (:func:`~xaio._async._checks.check_positional`: io_uring would read the stream, the
thread engine would fall back to ``read``), asked once per fd per loop
iteration (:class:`~xaio._async._checks.FdKinds`, which looks at the fd's
flags for each request: 64 tasks reading one file ask once).  ``RWF_*`` flags reach the kernel
(``RWF_NOWAIT`` on a file not open with O_DIRECT is tried right here: it never
waits, and io_uring would turn the kernel's EOPNOTSUPP into EAGAIN).  A zero
length is the system call's own answer (EBADF on a write-only fd; a vectored
call checks no flag then, io_uring does).
``pread`` of a huge *n* sizes its buffer from the file and grows it on demand,
and on an O_DIRECT fd reads into an aligned buffer; an O_DIRECT request that
breaks the file's alignment fails with EINVAL saying what was needed
(:func:`~xaio._async._checks.dio_einval`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import termios
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from xaio._async._cachestat import CacheStat
from xaio._async._checks import (
    INT_MAX,
    OFF_MAX,
    FdKinds,
    check_buffers,
    check_count,
    check_fd,
    check_flags,
    check_offset,
    check_sync_fd,
    is_direct,
    is_stream,
)
from xaio._memory import PAGE_SIZE, aligned_buffer, dio_alignment
from xaio._ops import OpCode, Operation, OpState
from xaio._pagecache import INLINE_MAX, NowaitReader, nowait_preadv
from xaio._syscall import fstat_cached, oserror
from xaio.engine import KIND_BUFFERED, KIND_DIRECT, Engine, EngineClosedError

__all__ = ["Driver", "abandon", "wake_budget"]

T = TypeVar("T")


def abandon(op: Operation) -> None:
    """*op* never reached the engine (cancelled before, the engine closed or
    refusing it): give its buffers back now.  It is not counted in the
    driver's ``_inflight`` yet, so no ``on_done`` runs."""
    if op.state is OpState.QUEUED:
        op.on_done = None
        op.complete(-errno.ECANCELED)


_DONE = OpState.DONE
_READ, _WRITE, _READV, _WRITEV = OpCode.READ, OpCode.WRITE, OpCode.READV, OpCode.WRITEV
#: the kinds whose O_DIRECT flag the kind itself says
_FILE_KINDS = (KIND_BUFFERED, KIND_DIRECT)
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_nowait_preadv = nowait_preadv
_MISS, _NOT_POSITIONAL = -errno.EAGAIN, -errno.ESPIPE  # nowait_preadv's answers
#: Queued requests handed to the engine at once, before the flush
#: (see "Batching under load"); a Batch iteration's new requests too.
EARLY = 16
#: Immediate completions between two looks at the clock (see _fair).
_STREAK = 16
#: Seconds the loop's thread may run on immediate completions (a driver's
#: tasks, or one batch iteration) before it yields to the loop.
_SLICE = 0.0005
#: Seconds of woken tasks' steps the wake budget aims each loop iteration at
#: (see "Wake budget"): with the loop's own work around them, an iteration
#: stays short of a 1 ms timer's period while a burst is spread.
_WAKE_SLICE = 0.0004
#: Fewest and most tasks woken by completions per loop iteration (see
#: "Wake budget"): 64 is the concurrency the async layer is tuned for; 8
#: keeps a loop whose other work fills the slice delivering completions.
WAKE_MIN = 8
WAKE_MAX = 64
#: Most bytes one read(2)/write(2) moves on Linux (MAX_RW_COUNT).
MAX_RW_COUNT = 0x7FFFF000

#: Most bytes a stream read (``xaio.read``) takes at once beyond what is
#: there already: the default ``pipe-max-size``; a single read(2) from a
#: pipe never returns more than the pipe holds.
_STREAM_CAP = 1 << 20


def wake_budget(steps: int, elapsed: float) -> int:
    """The most tasks to wake by completions in the next loop iteration.

    Args:
        steps: tasks woken by completions that ran in the last iteration.
        elapsed: seconds that iteration took (all of it: the woken tasks'
            steps and whatever else the loop ran).

    Returns:
        As many steps as fit in :data:`_WAKE_SLICE` at the last iteration's pace,
        between :data:`WAKE_MIN` and :data:`WAKE_MAX`.
    """
    if steps * _WAKE_SLICE >= WAKE_MAX * elapsed:
        return WAKE_MAX
    return max(WAKE_MIN, int(steps * _WAKE_SLICE / elapsed))


def _readable_now(fd: int) -> int:
    """Bytes *fd* has to read now (``FIONREAD``: what a pipe or socket holds,
    what a regular file holds past its position); 0 if it cannot say."""
    try:
        got = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return max(int.from_bytes(got, sys.byteorder, signed=True), 0)


def _first_read_size(fd: int, n: int, offset: int, direct: bool) -> int:
    """The buffer for a ``pread`` of *n* (> ``INLINE_MAX``) bytes at
    *offset*: what a regular file holds from there (``fstat``) plus one byte,
    so a read that comes back short has found the end; ``INLINE_MAX`` for
    other files (devices), the reader grows it while reads fill it.  On an
    O_DIRECT fd it is rounded up to the file's offset alignment, keeping
    *n*'s remainder (the kernel then judges the length as it would *n*)."""
    try:
        st = fstat_cached(fd)
    except OSError:
        return min(n, INLINE_MAX)
    want = max(st.st_size - offset, 0) + 1 if stat.S_ISREG(st.st_mode) else INLINE_MAX
    if direct:
        try:
            got = dio_alignment(fd)
        except OSError:
            got = None
        align = got[1] if got else PAGE_SIZE
        want = -(-want // align) * align + n % align
    return min(n, want)


# ---------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------


class Parked:
    """A task parked by :meth:`Driver._park`: ``waiter`` holds what wakes it
    (an asyncio Future, a trio task) while it is parked, else None."""

    __slots__ = ("waiter",)

    def __init__(self) -> None:
        self.waiter: Any = None


class Driver:
    """One engine bound to one running event loop (see the module essay).

    The coroutine methods mirror the :mod:`os` functions; the public
    ``xaio.pread`` & co call them on the running loop's default driver, an
    ``xaio.open_engine()`` object on its own.  Subclasses implement the waits
    for one event-loop library.
    """

    def __init__(self, engine: Engine, *, owns_engine: bool = True) -> None:
        self.engine = engine
        self.owns_engine = owns_engine
        self.closed = False
        self._inflight = 0  # submitted (or queued here) and not yet completed
        #: tasks woken by a completion that have not resumed yet (counted by
        #: each library's on_done and waits): while there are any, a new request
        #: waits for this iteration's batch (see "Batching under load")
        self._wakeups = 0
        self._queue: list[Operation] = []
        self._flush_pending = False
        self._streak = 0  # immediate completions since the last look at the clock
        #: reap right after each submit (see "Reap right after submit")
        self._reap_after_submit = engine.completes_in_submit
        #: asyncio: inline completions need no checkpoint (see _fair); trio: False
        self._inline = True
        self._nowait = NowaitReader()  # its flag cache: may an fd be read inline?
        #: cold fds (recent misses): hits still needed to be warm (< 0: skips left)
        self._cold: dict[int, int] = {}
        self._cachestat: CacheStat | None = None
        #: read_cached: > 0 after a miss, the calls left that ask cachestat first
        self._fresh_cold = 0
        self._on_done = self._make_on_done()
        #: check_positional's answers for this loop iteration's requests
        self._kinds = FdKinds(self._call_at_turn)
        self._pathring: Any = None  # xaio.os's io_uring Ring (_pathops.PathRing), made on demand
        self._pathring_failed = False
        #: drivers of other engine kinds on this loop (``named_driver``), closed with this one
        self._named: dict[str, Driver] = {}

    @property
    def in_flight(self) -> int:
        """How many requests of this driver are submitted (or queued here)
        and not yet completed."""
        return self._inflight

    # -- backend hooks -------------------------------------------------------------

    def _make_on_done(self) -> Callable[[Operation], None]:
        raise NotImplementedError

    def _schedule_flush(self) -> None:
        raise NotImplementedError

    async def _wait(self, op: Operation) -> None:
        """Wait until *op* completed; on cancellation cancel it in the kernel and
        wait for its completion before re-raising."""
        raise NotImplementedError

    async def _wait_after_cancel(self, op: Operation) -> None:
        """Wait until *op*, already asked to cancel, has completed (asyncio:
        never raises; trio: raises ``Cancelled`` once it has completed, when
        the task was cancelled)."""
        raise NotImplementedError

    async def _checkpoint_if_cancelled(self) -> None:
        """Before a request starts: raise the task's pending cancellation
        (trio's ``checkpoint_if_cancelled``; asyncio: nothing)."""

    async def _cancel_shielded_checkpoint(self) -> None:
        """After a request that completed without waiting: let the other
        tasks run (trio's ``cancel_shielded_checkpoint``, the second half of
        the checkpoint every trio call is; asyncio: nothing)."""

    def _sibling(self, engine: Engine) -> Driver:
        """A new driver for *engine* on this driver's loop (owning it)."""
        raise NotImplementedError

    async def _park(self, parked: Parked, on_cancel: Callable[[], bool]) -> None:
        """Suspend the running task until :meth:`_unpark` is called with
        *parked* (which holds what wakes it meanwhile).

        If the task is cancelled while parked, ``on_cancel()`` is called
        (in the loop's thread, possibly inside trio's abort): True means
        nothing is left to wait for, and the cancellation is raised at once;
        False means the task stays parked -- through further cancellations
        -- until :meth:`_unpark`, and the cancellation is raised then.  This
        is how a batch waits for many requests with one wake-up."""
        raise NotImplementedError

    def _unpark(self, parked: Parked) -> None:
        """Wake the task parked on *parked* (nothing if none is)."""
        raise NotImplementedError

    async def _checkpoint(self) -> None:
        """Let the loop's other tasks run once (a cancellation may come here)."""
        raise NotImplementedError

    def _call_soon(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` in the loop's thread soon, after the running task
        yields to the loop."""
        raise NotImplementedError

    def _call_at_turn(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` in the loop's thread once the loop has run what is
        runnable now: ``fn`` must not need to run before the loop waits for
        I/O (it forgets, it wakes no task).  :meth:`_call_soon` here; trio
        calls it as its next scheduling batch begins, without a task."""
        self._call_soon(fn)

    async def wait_readable(self, fd: int) -> None:
        raise NotImplementedError

    async def wait_writable(self, fd: int) -> None:
        raise NotImplementedError

    async def run_in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a worker thread; if cancelled, wait for it to
        finish before re-raising (the call cannot be stopped)."""
        raise NotImplementedError

    def check_loop(self) -> None:
        """Raise RuntimeError if called outside the loop this driver belongs to."""

    def watch(self, fd: int, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` in the loop whenever *fd* is readable; returns
        the function that stops it."""
        raise NotImplementedError

    # -- submission ------------------------------------------------------------------

    def _start(self, op: Operation) -> None:
        """Hand *op* to the engine now (nothing in flight: lowest latency, and a
        reap right after so an inline completion resolves at once), or queue it
        for this iteration's batch (requests in flight: one syscall per batch)."""
        if self.closed:
            raise EngineClosedError("the engine is closed")
        # From here the request counts in _inflight, and its completion (by the
        # engine, or by _unqueue) takes it out again through on_done.  Before
        # this point the driver may complete it itself (served inline, zero
        # length, abandoned) without touching the count.
        op.on_done = self._on_done
        self._inflight += 1
        if self._inflight > 1 or self._wakeups:
            queue = self._queue
            queue.append(op)
            if not self._flush_pending:
                self._flush_pending = True
                self._schedule_flush()
            elif len(queue) >= EARLY:
                self._submit_queue()
            return
        engine = self.engine
        try:
            engine.submit((op,))
        except BaseException:
            self._inflight -= 1
            op.on_done = None
            raise
        if self._reap_after_submit:
            engine.reap(0)

    def start_all(
        self, ops: Sequence[Operation], on_done: Callable[[Operation], None] | None = None
    ) -> None:
        """Hand every operation of *ops* to the engine in one ``submit``
        (:class:`xaio.Batch`), whatever is in flight, and reap right after.
        Each completes through *on_done* (default: this driver's, as
        :meth:`_start`'s do); a caller's own *on_done* takes each out of
        ``_inflight`` itself.  When it raises, no operation was taken."""
        if self.closed:
            raise EngineClosedError("the engine is closed")
        if on_done is None:
            on_done = self._on_done
        for op in ops:
            op.on_done = on_done
        self._inflight += len(ops)
        try:
            self.engine.submit(ops)
        except BaseException:
            self._inflight -= len(ops)
            for op in ops:
                op.on_done = None
            raise
        if self._reap_after_submit:
            self.engine.reap(0)

    def _flush(self) -> None:
        """Submit the queued batch (one engine.submit) and reap right after."""
        self._flush_pending = False
        self._submit_queue()

    def _submit_queue(self) -> None:
        """Submit what is queued now (one engine.submit) and reap right after."""
        queue = self._queue
        if not queue or self.closed:
            return
        self._queue = []
        try:
            self.engine.submit(queue)
        except Exception as e:  # the engine refused the batch: fail each request
            err = e.errno if isinstance(e, OSError) and e.errno else errno.EIO
            for op in queue:
                if op.state is OpState.QUEUED:
                    op.complete(-err)
            return
        if self._reap_after_submit:
            self.engine.reap(0)

    def _unqueue(self, op: Operation) -> bool:
        """Take *op* back if it is still in this driver's queue (then it is
        completed here with -ECANCELED); True if it was."""
        try:
            self._queue.remove(op)
        except ValueError:
            return False
        op.complete(-errno.ECANCELED)
        return True

    def _cancel_in_engine(self, op: Operation) -> None:
        if op.state is _DONE or self._unqueue(op):
            return
        if op.opcode is OpCode.NOP and self._pathring is not None and self._pathring.cancel(op):
            return
        try:
            self.engine.cancel(op)
        except (OSError, RuntimeError):
            pass  # not cancellable: it completes normally and we wait for it

    def on_readable(self) -> None:
        """The engine's fd is readable: deliver its completions."""
        if not self.closed:
            self.engine.reap(0)

    async def _fair(self) -> None:
        """The checkpoint before a transfer that may complete at once (see
        *Fairness*): asyncio yields only once this driver's tasks have used
        up the loop iteration's time slice, trio every time."""
        raise NotImplementedError

    async def _at_once(
        self,
        op: Operation,
        call: Callable[[int, Sequence[Any], int, int], int],
        fd: int,
        bufs: Sequence[Any],
        offset: int,
        flags: int,
    ) -> int:
        """Finish *op* and make its vectored *call* (``os.preadv`` or
        ``os.pwritev``) in this thread, as the system call answers it: an
        empty transfer (the kernel checks no flag then), or a ``RWF_NOWAIT``
        one on a file not open with O_DIRECT (it never waits; made after the
        checkpoint of :meth:`_fair`).

        Raises:
            OSError: what the kernel reports.
        """
        n = op.nbytes
        op.complete(0)
        if n:
            await self._fair()
        return call(fd, bufs, offset, flags)

    async def _run(self, op: Operation) -> int:
        """Start *op* (:meth:`_start`; if that or the checkpoint before it
        fails, :func:`abandon` it), wait for it, return its result (bytes
        transferred), or raise its :func:`~xaio._async._checks.request_error`."""
        raise NotImplementedError

    def _inline_ok(self, fd: int) -> bool:
        """May a read on *fd* be tried with ``RWF_NOWAIT`` straight away?

        Not on O_DIRECT fds (a NOWAIT direct read still waits for the device)
        nor O_APPEND ones (:meth:`xaio._pagecache.NowaitReader.flags_ok`, whose
        cache is looked at again every 64 reads), nor on fds whose last
        attempts missed the page cache (*cold* fds: see :meth:`_missed`)."""
        return self._nowait.flags_ok(fd) and fd not in self._cold

    def _missed(self, fd: int) -> None:
        """A ``RWF_NOWAIT`` attempt on *fd* missed the page cache.

        A miss is not free: it starts the readahead from this thread, which
        costs tens of microseconds and can sleep for milliseconds when the
        device queue is full.  So the fd turns *cold*: its reads first ask
        ``cachestat(2)`` (Linux 6.5: a look at the page cache, no I/O, ~1.5 us)
        and try inline only when the whole range is cached; after 8 such hits
        in a row it is warm again.  Without cachestat a cold fd skips the next
        64 inline attempts instead."""
        cold = self._cold
        if len(cold) > 1024:
            cold.clear()
        if self._cachestat is None:
            self._cachestat = CacheStat()
        cold[fd] = 8 if self._cachestat.works else -64

    def read_cached(self, fd: int, buf: Any, offset: int, n: int) -> int | None:
        """Read *n* bytes at *offset* into the writable *buf* (at least *n*
        long: a larger one also reads what lies after them, e.g. one byte to
        find the end of the file) from the page cache, in this thread, if the
        fd allows it (:meth:`_try_inline_read`, which marks the fd cold when
        it misses).  The caller has passed a checkpoint (:meth:`_fair`).

        The fds read here are mostly fresh ones (files just opened to be read
        whole), which the per-fd *cold* marks do not cover: after a miss, the
        next calls ask ``cachestat(2)`` first, so that a workload of files
        not in the page cache does not start every file's readahead from the
        loop's thread (see :meth:`_missed`).

        Returns:
            *n* when exactly *n* bytes came, else None: the caller reads
            through the engine (also for more than ``INLINE_MAX`` bytes,
            whose copy would hold the loop).
        """
        if n > INLINE_MAX or not (fd in self._cold or self._inline_ok(fd)):
            return None
        if self._fresh_cold and fd not in self._cold:
            cs = self._cachestat
            if cs is not None and cs.works and not cs.cached(fd, offset, n):
                self._fresh_cold = 8
                return None
            self._fresh_cold -= 1
        got = self._try_inline_read(fd, (buf,), offset, n)
        if got is None:
            self._fresh_cold = 8
        return got

    def _try_inline_read(self, fd: int, bufs: tuple[Any, ...], offset: int, n: int) -> int | None:
        """Try the read from the page cache in this thread (``preadv2`` with
        ``RWF_NOWAIT``, which fails with EAGAIN instead of waiting for the
        device): exactly the attempt io_uring makes inline before punting a
        read to a worker, without the ring's per-request cost.  For a cold fd
        or one :meth:`_inline_ok` accepted (the callers ask first).

        Returns:
            *n* when the whole read was done here; None when the caller must
            go through the engine (EAGAIN, a short read, any error: the engine
            path reports errors and end of file).
        """
        cold = self._cold.get(fd)
        if cold is not None:
            if cold < 0:  # no cachestat: skip a few attempts
                if cold == -1:
                    del self._cold[fd]
                else:
                    self._cold[fd] = cold + 1
                return None
            cs = self._cachestat
            if cs is None or not self._nowait.flags_ok(fd) or not cs.cached(fd, offset, n):
                self._cold[fd] = 8
                return None
        got = _nowait_preadv(fd, bufs, offset)
        if got != n:
            if got >= 0 or got == _MISS:
                self._missed(fd)
            else:
                self._nowait.decline(fd)
            return None
        if cold is not None:
            if cold <= 1:
                del self._cold[fd]
            else:
                self._cold[fd] = cold - 1
        return got

    # -- the os-like coroutines ---------------------------------------------------------

    async def pread(self, fd: int, n: int, offset: int) -> bytes:
        """Read at most *n* bytes at *offset* (pread(2), ``os.pread``).

        The buffer is sized from the file (``fstat``) when *n* is large, and
        grows while the file has more, so a huge *n* costs what the file
        holds; on an O_DIRECT fd it is aligned for the device.

        Returns:
            The bytes read (shorter at end of file; empty at or past it).

        Raises:
            TypeError, ValueError, InvalidArgument: bad arguments (before any syscall).
            OSError: what the kernel reports (``EBADF``, ``EISDIR``, ``ESPIPE``...).
        """
        # The hot path: a page-cache hit, done here without a Future (asyncio).
        if (
            self._inline
            and type(fd) is int
            and type(n) is int
            and type(offset) is int
            and 0 < n <= INLINE_MAX
            and 0 <= fd <= INT_MAX
            and 0 <= offset <= OFF_MAX
            and self._streak < _STREAK
            and self._inline_ok(fd)
        ):
            buf = bytearray(n)
            got = _nowait_preadv(fd, (buf,), offset)
            if got == n:
                self._streak += 1
                return bytes(buf)
            if got == _NOT_POSITIONAL:
                raise oserror(errno.ESPIPE)
            self._missed(fd)
            # (the attempt passed the kernel's ESPIPE check unless it failed;
            # any other error the engine reports, or the fs lacks RWF_NOWAIT)
            return await self._pread(fd, n, offset, buf, got >= 0 or got == _MISS)
        return await self._pread(fd, check_count(n), offset, None, False)

    async def _pread(
        self, fd: int, n: int, offset: int, buf: bytearray | None, positional: bool
    ) -> bytes:
        fd = check_fd(fd)
        offset = check_offset(offset)
        if n == 0:
            return os.pread(fd, 0, offset)  # the kernel's answer; nothing to wait for
        kind = -1 if positional else self._kinds.kind(fd)
        if buf is not None:
            if fd in self._cold and self._try_inline_read(fd, (buf,), offset, n) is not None:
                return bytes(buf)
            return await self._pread_engine(fd, n, offset, buf, False, kind)
        n = min(n, MAX_RW_COUNT)
        direct = kind == KIND_DIRECT if kind in _FILE_KINDS else is_direct(fd)
        size = n if n <= INLINE_MAX else _first_read_size(fd, n, offset, direct)
        if direct:
            return await self._pread_engine(fd, n, offset, aligned_buffer(size), True, kind)
        buf = bytearray(size)
        # (only reads that may be served inline pass a checkpoint here: an
        # engine-bound one has its own in _run, and a second one would let
        # trio run the other woken tasks in between, see Driver._wakeups)
        if size == n and (fd in self._cold or self._inline_ok(fd)):
            await self._fair()
            if self._try_inline_read(fd, (buf,), offset, n) is not None:
                return bytes(buf)
        return await self._pread_engine(fd, n, offset, buf, False, kind)

    async def _pread_engine(
        self, fd: int, n: int, offset: int, buf: bytearray | memoryview, direct: bool, kind: int
    ) -> bytes:
        """Read into *buf* through the engine; while a read fills it and fewer
        than *n* bytes were asked for, read on into a fresh buffer of twice
        the bytes read so far (aligned if *direct*).  *kind*: the fd's
        :func:`check_positional` answer (-1: not asked)."""
        op = Operation(_READ, fd, (buf,), offset)
        op.kind = kind
        res = await self._run(op)
        size = len(buf)
        if res < size or size >= n:
            return bytes(buf) if res == size else bytes(memoryview(buf)[:res])
        parts = [bytes(buf)]
        total = res
        while total < n:
            size = min(n - total, max(total, INLINE_MAX))
            more: bytearray | memoryview = aligned_buffer(size) if direct else bytearray(size)
            op = Operation(_READ, fd, (more,), offset + total)
            op.kind = kind
            res = await self._run(op)
            parts.append(bytes(more) if res == size else bytes(memoryview(more)[:res]))
            total += res
            if res < size:
                break
        return b"".join(parts)

    async def preadinto(self, fd: int, buf: Any, offset: int) -> int:
        """Read into the writable buffer *buf* at *offset* (``os.preadv`` with one buffer).

        Returns:
            Bytes read.

        Raises:
            TypeError: *buf* is not a writable bytes-like object.
            ValueError: *buf* is not contiguous; bad offset.
            OSError: what the kernel reports.
        """
        if not (
            type(fd) is int
            and type(offset) is int
            and 0 <= fd <= INT_MAX
            and 0 <= offset <= OFF_MAX
        ):
            fd = check_fd(fd)
            offset = check_offset(offset)
        # May the read be tried from the page cache here?  None: not asked yet
        # (asked once per call: O_DIRECT fds skip it cheaply, with no syscall
        # before the buffer has been checked).
        inline_ok: bool | None = None
        positional = False  # the kernel's ESPIPE check passed (an attempt was made)
        if (
            self._inline
            and self._streak < _STREAK
            and (type(buf) is bytearray or type(buf) is memoryview)
        ):
            inline_ok = self._inline_ok(fd)
            if inline_ok:
                n = buf.nbytes if isinstance(buf, memoryview) else len(buf)
                if n:
                    got = _nowait_preadv(fd, (buf,), offset)
                    if got == _NOT_POSITIONAL:
                        raise oserror(errno.ESPIPE)
                    positional = got >= 0 or got == _MISS
                    if got == n:
                        self._streak += 1
                        return got
                    self._missed(fd)
        op = Operation(_READ, fd, (buf,), offset)
        n = op.pins[0].nbytes
        if n == 0:
            op.complete(0)
            return os.preadv(fd, (buf,), offset)  # the kernel's answer (ESPIPE, EBADF...)
        try:
            if not positional:
                op.kind = self._kinds.kind(fd)
            # (O_DIRECT fds go straight to the engine, see _pread: the kind
            # says O_DIRECT without another look at the fd)
            if op.kind != KIND_DIRECT and (
                fd in self._cold or (self._inline_ok(fd) if inline_ok is None else inline_ok)
            ):
                await self._fair()
                inline = self._try_inline_read(fd, (buf,), offset, n)
                if inline is not None:
                    op.complete(inline)
                    return inline
        except BaseException:
            abandon(op)
            raise
        return await self._run(op)

    async def pwrite(self, fd: int, data: Any, offset: int) -> int:
        """Write the bytes-like *data* at *offset* (pwrite(2), ``os.pwrite``).

        Returns:
            Bytes written (may be short, as the system call's).

        Raises:
            TypeError: *data* is not bytes-like.
            OSError: what the kernel reports (``EBADF`` on a read-only fd...).
        """
        fd = check_fd(fd)
        offset = check_offset(offset)
        op = Operation(_WRITE, fd, (data,), offset)
        try:
            op.kind = self._kinds.kind(fd)
        except BaseException:
            abandon(op)
            raise
        return await self._run(op)

    async def preadv(self, fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> int:
        """Read into a sequence of writable buffers at *offset* (preadv2(2), ``os.preadv``).

        Args:
            flags: ``os.RWF_*`` flags (``RWF_HIPRI``, ``RWF_NOWAIT``); the
                kernel applies or refuses them as for ``os.preadv``.  A
                ``RWF_NOWAIT`` read of a file not open with O_DIRECT is done
                in the calling thread (it never waits).

        Returns:
            Total bytes read.
        """
        fd = check_fd(fd)
        offset = check_offset(offset)
        flags = check_flags(flags)
        bufs = check_buffers(buffers)
        op = Operation(_READV, fd, bufs, offset, flags)
        n = op.nbytes
        if not n or (flags & _RWF_NOWAIT and not is_direct(fd)):
            return await self._at_once(op, os.preadv, fd, bufs, offset, flags)
        inline = bool(not flags and n and (fd in self._cold or self._inline_ok(fd)))
        try:
            op.kind = self._kinds.kind(fd)
            if inline:  # (see _pread)
                await self._fair()
        except BaseException:
            abandon(op)
            raise
        if inline and self._try_inline_read(fd, bufs, offset, n) is not None:
            op.complete(n)
            return n
        return await self._run(op)

    async def pwritev(self, fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> int:
        """Write a sequence of buffers at *offset* (pwritev2(2), ``os.pwritev``).

        Args:
            flags: ``os.RWF_*`` flags (``RWF_DSYNC``, ``RWF_SYNC``,
                ``RWF_APPEND``...); the kernel applies or refuses them as for
                ``os.pwritev``.  A ``RWF_NOWAIT`` write to a file not open
                with O_DIRECT is done in the calling thread (it never waits).

        Returns:
            Total bytes written.
        """
        fd = check_fd(fd)
        offset = check_offset(offset)
        flags = check_flags(flags)
        bufs = check_buffers(buffers)
        op = Operation(_WRITEV, fd, bufs, offset, flags)
        if not op.nbytes or (flags & _RWF_NOWAIT and not is_direct(fd)):
            return await self._at_once(op, os.pwritev, fd, bufs, offset, flags)
        try:
            op.kind = self._kinds.kind(fd)
        except BaseException:
            abandon(op)
            raise
        return await self._run(op)

    async def fsync(self, fd: int) -> None:
        """Flush *fd*'s data and metadata to storage (fsync(2), ``os.fsync``)."""
        fd = check_sync_fd(fd)
        await self._run(Operation(OpCode.FSYNC, fd))

    async def fdatasync(self, fd: int) -> None:
        """Flush *fd*'s data to storage (fdatasync(2), ``os.fdatasync``)."""
        fd = check_sync_fd(fd)
        await self._run(Operation(OpCode.FDATASYNC, fd))

    async def _file_rw(self, opcode: OpCode, fd: int, buf: Any) -> int:
        """A read/write at the file position, through the engine (regular files)."""
        return await self._run(Operation(opcode, fd, (buf,), -1))

    async def readinto(self, fd: int, buf: Any) -> int:
        """Read from a stream fd (or at a regular file's position) into *buf*.

        Never blocks the loop and never parks a thread: the transfer is tried
        with ``RWF_NOWAIT`` and otherwise waits for readiness in the event
        loop.  A cancelled call has consumed nothing from the fd.

        Returns:
            Bytes read (0 at end of file).
        """
        fd = check_fd(fd)
        with memoryview(buf) as mv:
            if mv.readonly:
                raise TypeError(
                    f"a writable buffer is required, not a read-only {type(buf).__name__!r}"
                )
            if not mv.c_contiguous:
                raise ValueError("buffer must be C-contiguous")
            n = mv.nbytes
        if n == 0:
            return os.readv(fd, (buf,))  # the kernel's answer (EBADF...); it never waits
        return await self._stream(_READ, fd, buf, n)

    async def read(self, fd: int, n: int) -> bytes:
        """Read at most *n* bytes from a stream fd (read(2), ``os.read``).

        See :meth:`readinto`.  Returns b"" at end of file.  The buffer holds
        what the fd has to read now (``FIONREAD``), at least 1 MiB, at most
        *n*: like any read(2), it may return less than *n*.
        """
        fd = check_fd(fd)
        n = check_count(n)
        if n == 0:
            return os.read(fd, 0)  # the kernel's answer (EBADF...); it never waits
        size = min(n, MAX_RW_COUNT)
        if size > _STREAM_CAP:
            size = min(size, max(_readable_now(fd), _STREAM_CAP))
        buf = bytearray(size)
        got = await self.readinto(fd, buf)
        del buf[got:]
        return bytes(buf)

    async def write(self, fd: int, data: Any) -> int:
        """Write *data* to a stream fd (write(2), ``os.write``).

        Tried with ``RWF_NOWAIT``; waits for writability in the event loop
        otherwise.  Like ``os.write`` it may write less than all of *data*.
        A cancelled call has written nothing.

        Returns:
            Bytes written.
        """
        fd = check_fd(fd)
        with memoryview(data) as mv:
            if not mv.c_contiguous:
                raise ValueError("buffer must be C-contiguous")
            n = mv.nbytes
        return await self._stream(_WRITE, fd, data, n)

    async def _stream(self, opcode: OpCode, fd: int, buf: Any, n: int) -> int:
        """One read(2) or write(2) of the *n*-byte *buf* on *fd* that never
        blocks the loop: tried with ``RWF_NOWAIT``; on EAGAIN the task waits
        for readiness in the event loop and tries again.  Where the fd takes
        no ``RWF_NOWAIT`` (a tty...), a non-blocking fd is used as it is and
        a blocking one after readiness; a regular file goes to the engine."""
        bufs = (buf,)
        write = opcode is _WRITE
        nowait = _RWF_NOWAIT
        await self._fair()  # a cancellation here has moved nothing
        while True:
            try:
                if write:
                    done: int = os.pwritev(fd, bufs, -1, nowait) if nowait else os.writev(fd, bufs)
                    if done or n == 0:
                        return done
                else:
                    return os.preadv(fd, bufs, -1, nowait) if nowait else os.readv(fd, bufs)
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL) or not nowait:
                    raise
                if not is_stream(fd):
                    return await self._file_rw(opcode, fd, buf)
                if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
                    nowait = 0
                    continue
                await self._wait_stream(fd, write)
                return int(os.writev(fd, bufs) if write else os.readv(fd, bufs))
            if not is_stream(fd):  # a regular file not in the page cache
                return await self._file_rw(opcode, fd, buf)
            await self._wait_stream(fd, write)

    async def _wait_stream(self, fd: int, write: bool) -> None:
        """Wait until *fd* is writable (*write*) or readable; at once for an
        fd epoll refuses (``/dev/null``...: it never blocks)."""
        try:
            await (self.wait_writable(fd) if write else self.wait_readable(fd))
        except PermissionError:
            return

    # -- closing --------------------------------------------------------------------

    def _close_pathring(self) -> None:
        ring, self._pathring = self._pathring, None
        if ring is not None:
            ring.close()

    def close(self) -> None:
        """Close the engine (if this driver owns it); idempotent."""
        if self.closed:
            return
        self.closed = True
        queue, self._queue = self._queue, []
        for op in queue:
            if op.state is OpState.QUEUED:
                op.complete(-errno.ECANCELED)
        try:
            self._close_pathring()
            named, self._named = self._named, {}
            for drv in named.values():
                drv.close()
        finally:
            if self.owns_engine:
                self.engine.close()
