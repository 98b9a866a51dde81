"""The thread engine: operations run by a pool of worker threads.

Some facts about running I/O on threads (and what glibc's POSIX AIO does)
-------------------------------------------------------------------------

- A worker thread runs the plain system call (``preadv``, ``pwritev``,
  ``fsync``, ...; ``preadv2``/``pwritev2`` when the operation has ``RWF_*``
  flags, so the kernel applies them or refuses them as it does for
  ``os.preadv``/``os.pwritev``).  ctypes and the :mod:`os` module release the GIL around it,
  so slow I/O (O_DIRECT, a cold page cache, a network file system) overlaps
  across threads; page-cached I/O is bound by the GIL and by thread switches.
- A running system call cannot be cancelled from another thread: the engine
  cancels only what has not started (``CancelOutcome.RUNNING`` otherwise).
  So a worker never parks in a read that may wait for ever: a read on a
  stream fd (pipe, socket, FIFO, tty, eventfd, other character devices) and a
  POLL first wait in ``poll`` for the fd's readiness *and* for the worker's
  own wake-up eventfd, which a cancel (or close) signals; the read then runs
  with ``RWF_NOWAIT`` (back to waiting on ``EAGAIN``; a plain read where the
  fd does not support it, a tty).  A POLL's result is ``poll``'s revents
  mask, as io_uring's ``POLL_ADD`` gives it.  Writes run as they are: one
  blocked on a full pipe or socket stays blocked until the peer reads.
- glibc (``sysdeps/pthread/aio_misc.c``) keeps one queue *per file
  descriptor* and runs the requests of one fd strictly one after the other,
  whatever they are: 32 ``aio_read`` calls on one regular file are 32
  sequential ``pread`` calls in one thread.  That is only needed where the
  *order* is observable: on stream fds (pipes, sockets, FIFOs, ttys, other
  character devices) and for ``O_APPEND`` writes, where each transfer moves
  the file position.  Here positional I/O on regular files and block devices
  runs in parallel, and only what needs an order gets one: the rule of
  ``xaio._lanes`` (stream and ``O_APPEND`` fds one at a time in
  submission order, a request at the file position alone, an fsync after
  everything submitted before it on its fd).
- Thread hand-offs are what costs in Python (a switch is a GIL hand-over,
  tens of microseconds under contention).  A worker that finishes an operation
  takes the next one in the same critical section, without sleeping; idle
  workers sleep on a private lock each, so waking exactly one is one
  ``Lock.release``; and with ``complete_in_worker=True`` (used by
  :mod:`xaio.posix`) the worker delivers the completion itself instead of
  bouncing it through a reaper thread.
- Workers are created on demand (the first ``submit``; constructing an
  engine starts no thread), up to ``threads``; a worker idle for
  ``idle_time`` seconds exits, as glibc's do (``aio_init``'s
  ``aio_idle_time``).
- A worker holds its engine only while it takes work (a weak reference
  otherwise), so an engine nobody holds is collected even while workers wait
  or run.  Its finaliser warns (``ResourceWarning``) and *abandons* it
  (:meth:`ThreadEngine.abandon`): what has not started and what waits for
  readiness is cancelled, idle workers exit, the eventfd is closed, and a
  worker still in a system call exits when that returns, its operation's
  buffers held by the worker until then.  Nothing waits, so the garbage
  collector cannot hang on an engine left open.  At interpreter exit (once
  ``sys.is_finalizing()``) the finaliser leaves an open engine as it is: its
  workers are daemon threads that die with the process (one may have died
  holding the engine's mutex), and each keeps its operation's buffers.
- After ``fork()`` the child has none of the parent's workers: every thread
  engine the child inherited is closed at once there (an
  ``os.register_at_fork`` hook, :meth:`ThreadEngine.forget_after_fork`),
  without completing or touching the parent's requests.
- The workers block every signal (they inherit the mask from the thread that
  creates them, which blocks all signals around ``Thread.start``), like
  glibc's helper threads: a process-directed signal then always reaches one of
  the application's threads, and the block-then-``sigwaitinfo`` pattern works.
- Completions (``reap`` mode) are signalled through an eventfd that is
  readable while completions wait, so an event loop can sit on ``fileno()``.
  The eventfd is written only when the completion queue goes from empty to
  non-empty: one write per batch, not per operation.
- ``os.preadv`` with a non-negative offset on a pipe or socket fails with
  ESPIPE; glibc then falls back to ``read``, and so do we (the offset of a
  POSIX request on a stream is ignored).
- A worker runs a request later, by fd *number*: if the caller closes the
  fd meanwhile and the number is reused, a queued write would land in
  another file.  So :meth:`ThreadEngine.submit` takes a reference to the
  open file of every write and sync (an ``os.dup``: ~0.7 us with its
  ``close``, which comes when the request has run or was cancelled) and the
  worker runs it on that; a write or sync on an fd that is not open at
  submit fails with EBADF, as it would have then.  Reads are not held (the
  hot path stays one system call): a read queued on a number that is closed
  and reused reads the other file into the caller's buffer.  Out of fds
  (EMFILE), the request runs by number.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import signal
import sys
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from xaio._lanes import Lane, fd_order, waits_for_all
from xaio._ops import CancelOutcome, OpCode, Operation, OpState, check_batch
from xaio._pagecache import INLINE_MAX, NowaitReader
from xaio.engine._protocol import Engine, EngineClosedError
from xaio.engine._route import KIND_OTHER

__all__ = ["ThreadEngine", "start_thread_blocking_signals"]

_READS = (OpCode.READ, OpCode.READV)
_READ = OpCode.READ
_WRITES = (OpCode.WRITE, OpCode.WRITEV)
#: Requests that run on a reference to the file taken at submit (see the essay).
_HELD = frozenset({OpCode.WRITE, OpCode.WRITEV, OpCode.FSYNC, OpCode.FDATASYNC})
_DONE = OpState.DONE
_ALL_SIGNALS = signal.valid_signals()


def start_thread_blocking_signals(thread: threading.Thread) -> None:
    """Start *thread* with every signal blocked.

    The new thread inherits the signal mask of its creator, so the mask is
    set around ``Thread.start`` (there is no window in which the new thread
    could take a signal meant for the application), then restored.

    A signal that arrives meanwhile is held until the mask is restored, and
    its Python handler runs right then: an exception it raises (Ctrl-C's
    ``KeyboardInterrupt``) comes out of this function *after* the thread
    has started.  Callers that count their threads tell the two cases apart
    with ``thread.ident is not None`` (started).
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # read only: changes nothing
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _transfer(
    fd: int,
    op: Operation,
    flags: int,
    positional: Callable[[int, Sequence[Any], int, int], int],
    stream: Callable[[int, Sequence[Any]], int],
) -> int:
    """The read or write of *op* on *fd* with *flags*: *positional*
    (``os.preadv``/``os.pwritev``) at ``op.offset``; at the file position
    where the offset is -1 or the fd has none (``ESPIPE``): *positional* at
    -1 when there are flags, else *stream* (``os.readv``/``os.writev``).

    Raises:
        OSError: what the kernel reports.
    """
    if op.offset >= 0:
        try:
            return positional(fd, op.buffers, op.offset, flags)
        except OSError as e:
            if e.errno != errno.ESPIPE:
                raise
    return positional(fd, op.buffers, -1, flags) if flags else stream(fd, op.buffers)


def _run(op: Operation, fd: int) -> int:
    """Run *op* in this thread on *fd* (``op.fd``, or the engine's reference
    to its file); return its result (bytes, or -errno)."""
    code = op.opcode
    try:
        if code in _READS:  # RWF_* flags: preadv2, as os.preadv takes them
            return _transfer(fd, op, op.flags, os.preadv, os.readv)
        if code in _WRITES:
            return _transfer(fd, op, op.flags, os.pwritev, os.writev)
        if code is OpCode.FSYNC:
            os.fsync(fd)
            return 0
        if code is OpCode.FDATASYNC:
            os.fdatasync(fd)
            return 0
        if code is OpCode.NOP:
            return 0
        if code is OpCode.POLL:
            p = select.poll()
            p.register(fd, op.flags)
            for _, revents in p.poll():
                return revents
            return 0  # pragma: no cover - poll without timeout returns an event
        return -errno.EINVAL
    except OSError as e:
        return -(e.errno or errno.EIO)
    except (OverflowError, ValueError, TypeError):
        # fields changed after submit (check_batch vetted them): never kill a worker
        return -errno.EINVAL


class ThreadEngine(Engine):
    """Runs operations on a pool of worker threads (see the module essay).

    Args:
        threads: maximum number of worker threads (>= 1).
        idle_time: seconds an idle worker waits for work before exiting.
        num: expected number of simultaneous requests (a sizing hint, as
            ``aio_init``'s ``aio_num``; reported by :meth:`statistics`).
        complete_in_worker: if True the worker calls ``op.complete(res)``
            itself (``on_done`` runs in the worker) and :meth:`reap` finds
            nothing; if False (the Engine protocol) completions wait for
            :meth:`reap` and the eventfd says when there are some.

    Raises:
        ValueError: ``threads < 1`` or a negative ``idle_time``.
        TypeError: arguments of the wrong type.
    """

    name = "thread"
    orders_requests = True

    def __init__(
        self,
        threads: int = 20,
        idle_time: float = 1.0,
        *,
        num: int = 64,
        complete_in_worker: bool = False,
    ) -> None:
        self._closed = True  # until fully constructed (for __del__)
        self._efd = -1
        self._max_threads, self._idle_time, self._num = _check_config(threads, idle_time, num)
        self._direct = bool(complete_in_worker)
        self._mutex = threading.Lock()
        self._ready: deque[Operation] = deque()
        self._lanes: dict[int, Lane[Operation]] = {}
        self._running: set[Operation] = set()
        self._idle: list[threading.Lock] = []
        self._threads: set[threading.Thread] = set()
        self._exiting: list[threading.Thread] = []  # exited the loop, maybe still running
        self._nthreads = 0
        self._waking = 0  # workers woken (or started) not yet at the ready queue
        self._no_threads = threading.Condition(self._mutex)
        self._done: deque[tuple[Operation, int]] = deque()
        #: taken by a worker that waits for the fd's readiness -> its wake-up eventfd
        self._waiting: dict[Operation, int] = {}
        self._wakers: set[int] = set()  # the workers' wake-up eventfds
        self._signalled = False
        self._submitted = 0
        self._completed = 0
        self._cancelled = 0
        self._spawned = 0
        #: the page-cache fast path, which reads nothing past work held in a lane
        self._nowait = NowaitReader(self._lanes)
        #: op -> a dup of its fd (-1: not open at submit), for writes and syncs
        self._held: dict[Operation, int] = {}
        self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._closed = False
        _engines.add(self)

    # -- configuration ------------------------------------------------------------

    def configure(
        self, threads: int | None = None, idle_time: float | None = None, num: int | None = None
    ) -> None:
        """Change the pool limits (``aio_init``); running workers are kept."""
        t, i, n = _check_config(
            self._max_threads if threads is None else threads,
            self._idle_time if idle_time is None else idle_time,
            self._num if num is None else num,
        )
        with self._mutex:
            self._max_threads, self._idle_time, self._num = t, i, n

    # -- Engine protocol ----------------------------------------------------------

    def submit(self, ops: Sequence[Operation]) -> int:
        """Queue *ops* (QUEUED operations) for the workers; returns ``len(ops)``.

        With the Engine protocol's delivery (not ``complete_in_worker``), a
        positional READ that the page cache holds whole is done here instead
        (``preadv2(RWF_NOWAIT)``) and delivered by the next :meth:`reap`, as
        if a worker had run it at once.

        Raises:
            EngineClosedError: the engine is closed (nothing was taken).
            RuntimeError, TypeError, ValueError: a malformed batch
                (:func:`xaio._ops.check_batch`); nothing was taken.
        """
        check_batch(ops)
        return self.submit_checked(ops)

    def submit_checked(self, ops: Sequence[Operation]) -> int:
        """:meth:`submit` of a batch that already passed
        :func:`xaio._ops.check_batch`: for an engine that checks a batch once
        and hands parts of it to other engines (:class:`xaio.engine.RoutedEngine`)."""
        try:
            self._hold_files(ops)
            return self._take(ops)
        except BaseException:
            if self._held:  # what the engine did not take gives its reference back
                self._unhold([op for op in ops if not self.owns(op)])
            raise

    def _hold_files(self, ops: Sequence[Operation]) -> None:
        """Take a reference to the file of each write and sync of *ops* (see
        the module essay)."""
        held = self._held
        for op in ops:
            if op.opcode in _HELD:
                try:
                    held[op] = os.dup(op.fd)
                except OSError as e:
                    if e.errno == errno.EBADF:
                        held[op] = -1
                    # EMFILE...: it runs by number

    def _unhold(self, ops: Sequence[Operation]) -> None:
        """Give back the file references of *ops* (those that have one)."""
        held = self._held
        for op in ops:
            fd = held.pop(op, -1)
            if fd >= 0:
                os.close(fd)

    def _take(self, ops: Sequence[Operation]) -> int:
        lanes = self._lanes
        serial: dict[int, int] = {}  # fd -> fd_order(fd)
        for op in ops:
            fd = op.fd
            if fd not in lanes and fd not in serial:
                kind = op.kind  # the caller's classify(), if it asked
                serial[fd] = fd_order(fd, None if kind < 0 else kind != KIND_OTHER)
        done_here: dict[int, int] = {}
        if not self._direct and not self._closed:
            done_here = self._read_cached(ops, serial)
        with self._mutex:
            if self._closed:
                # closed meanwhile (another thread): nothing is taken, though a
                # cached read may already have filled its buffer
                raise EngineClosedError("the thread engine is closed")
            ready = self._ready
            nready = 0
            try:
                for op in ops:
                    if done_here:
                        res = done_here.get(id(op))
                        if res is not None:  # read from the page cache in submit
                            # queued for reap before anything else (see _deliver)
                            self._post_locked(op, res)
                            op.state = OpState.SUBMITTED
                            self._completed += 1
                            continue
                    fd = op.fd
                    lane = lanes.get(fd)
                    if lane is None:
                        # *serial* holds only the fds that had no lane before
                        # the lock: one whose lane ended since is asked afresh
                        s = serial.get(fd)
                        lane = lanes[fd] = Lane(fd_order(fd) if s is None else s)
                    if lane.admit(op):
                        ready.append(op)
                        nready += 1
                    else:
                        lane.held.append(op)
                self._submitted += len(ops)
                if nready:
                    self._wake_locked()
            except BaseException:
                # a Ctrl-C midway: what went to the ready queue gets its
                # workers all the same (the caller asks owns() about the rest)
                self._wake_locked()
                raise
        return len(ops)

    def _read_cached(self, ops: Sequence[Operation], serial: dict[int, int]) -> dict[int, int]:
        """Do the READs of *ops* that the page cache holds whole, here and now
        (:class:`xaio._pagecache.NowaitReader`), as a worker would have: the
        thread hand-off costs tens of microseconds, a cached 4 KiB read about
        two.  Only positional reads of at most ``INLINE_MAX`` bytes on fds
        with no ordered work queued (not a stream, nothing held back on the
        lane, no sync or file-position request before it in this batch); a
        miss costs one ``preadv2`` and the read goes to a worker as before.

        Returns:
            ``id(op) -> bytes read`` for the reads done.
        """
        done: dict[int, int] = {}
        lanes = self._lanes
        read = self._nowait.read
        barriers: set[int] = set()  # fds with a sync or file-position op before
        for op in ops:
            if waits_for_all(op):
                barriers.add(op.fd)  # what follows on the fd may be held behind it
                continue
            if op.opcode is not _READ:
                continue
            fd = op.fd
            if fd in barriers:
                continue
            lane = lanes.get(fd)
            if lane is not None:
                if not lane.passable:
                    continue
            elif serial.get(fd, True):
                continue
            nbytes = op.pins[0].nbytes
            if nbytes > INLINE_MAX:
                continue
            n = read(fd, op.buffers[:1], op.offset, nbytes)
            if n is not None:
                done[id(op)] = n
        return done

    def cancel(self, op: Operation) -> CancelOutcome:
        """Cancel *op* if no worker has started it.

        A POLL, or a read on a stream fd, that waits for its fd's readiness
        has not started either: it is taken from its worker, which stops
        waiting.

        Returns:
            ``CANCELED`` (it completes with ``-ECANCELED``: at once in
            ``complete_in_worker`` mode, else at the next :meth:`reap`),
            ``RUNNING`` (a worker is running it; it completes normally) or
            ``DONE`` (it had completed, or is unknown to this engine).
        """
        with self._mutex:
            if op.state is OpState.DONE:
                return CancelOutcome.DONE
            if op in self._waiting:
                self._unwait_locked(op)
            elif op in self._running:
                return CancelOutcome.RUNNING
            elif op.state is OpState.CANCEL_REQUESTED:
                return CancelOutcome.CANCELED  # cancelled already, not yet reaped
            else:
                lane = self._lanes.get(op.fd)
                if lane is None:
                    return CancelOutcome.DONE
                if op in lane.held:
                    lane.held.remove(op)
                else:
                    try:
                        self._ready.remove(op)
                    except ValueError:
                        return CancelOutcome.DONE  # finished, waiting to be reaped
                    lane.active -= 1
                self._release_lane_locked(op.fd, lane)
            op.state = OpState.CANCEL_REQUESTED
            self._cancelled += 1
            self._completed += 1
            if not self._direct:
                self._post_locked(op, -errno.ECANCELED)
        if self._held:
            self._unhold((op,))
        if self._direct:
            op.complete(-errno.ECANCELED)
        return CancelOutcome.CANCELED

    def owns(self, op: Operation) -> bool:
        """True if *op* was given to this engine and has not been delivered:
        what the caller of a :meth:`submit` that an exception from a signal
        handler interrupted (Ctrl-C) asks about each of its operations."""
        with self._mutex:
            if op.state is _DONE:
                return False
            if op in self._running or any(o is op for o, _ in self._done):
                return True
            lane = self._lanes.get(op.fd)
            return lane is not None and (op in lane.held or op in self._ready)

    def read_nowait(self, fd: int, buffer: Any, offset: int, nbytes: int) -> int | None:
        """Try a read that the page cache can satisfy at once, in this thread
        (:class:`xaio._pagecache.NowaitReader`: ``preadv2(RWF_NOWAIT)``, not on
        O_DIRECT or O_APPEND fds), unless ordered (stream) work is queued on
        the fd or requests are held back on it (behind a sync).

        Args:
            fd: the file descriptor.
            buffer: a writable buffer of *nbytes* bytes.
            offset: the file offset (>= 0).
            nbytes: the bytes wanted.

        Returns:
            *nbytes* when the whole read was done here; None when the caller
            must submit the operation as usual (nothing is reported here:
            errors, short reads and EOF all go the normal way).
        """
        return self._nowait.read(fd, (buffer,), offset, nbytes)

    @property
    def nowait_reader(self) -> Callable[[int, Sequence[Any], int, int], int | None]:
        """:meth:`read_nowait` without its frame: the reader itself, which
        the engine's lanes gate and its close closes."""
        return self._nowait.read

    def reap(self, timeout: float | None = 0.0, *, max_n: int = 0) -> int:
        """Deliver waiting completions in this thread (``op.complete(res)``).

        Args:
            timeout: 0 never blocks; None waits for at least one completion;
                a number waits at most that many seconds.
            max_n: deliver at most this many (0: all that are waiting).

        Returns:
            The number of operations delivered (always 0 in
            ``complete_in_worker`` mode, and once closed and drained).
        """
        n = self._deliver(max_n)
        if n or timeout == 0 or self._direct:
            return n
        poller = select.poll()
        poller.register(self._efd, select.POLLIN)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            if self._closed and not self._done:
                return 0
            if deadline is None:
                ms = 100  # re-check ``closed`` now and then
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self._deliver(max_n)
                ms = min(100, max(1, int(remaining * 1000 + 0.999)))
            poller.poll(ms)
            n = self._deliver(max_n)
            if n:
                return n

    def fileno(self) -> int:
        """The eventfd that is readable while completions wait for :meth:`reap`."""
        if self._efd < 0:
            raise EngineClosedError("engine is closed")
        return self._efd

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def delivers_itself(self) -> bool:
        """True if made with ``complete_in_worker``: each worker completes
        its operation itself and :meth:`reap` has nothing to do."""
        return self._direct

    def close(self) -> None:
        """Stop accepting, cancel what has not started and what waits for
        readiness (POLLs, reads on stream fds), wait for the running
        operations, deliver every completion, stop the workers, close the
        eventfd.  Idempotent.  Waits for a write blocked in the kernel (on a
        full pipe or socket) until the peer reads.

        In a forked child it returns at once: the engine was closed there at
        the fork (:meth:`forget_after_fork`)."""
        with self._mutex:
            if self._closed and self._efd < 0:
                return
            cancelled = self._stop_locked()
            while self._nthreads:
                self._no_threads.wait()
            # the exiting ones too: close returns with no worker thread left
            threads = [*self._threads, *self._exiting]
            self._exiting.clear()
        if self._held:
            self._unhold(cancelled)
        if self._direct:
            for op in cancelled:
                op.complete(-errno.ECANCELED)
        for t in threads:
            t.join()
        self._deliver()
        with self._mutex:
            self._lanes.clear()
            efd, self._efd = self._efd, -1
        if efd >= 0:
            os.close(efd)

    def _stop_locked(self) -> list[Operation]:
        """The first part of closing (the mutex held): refuse new work, cancel
        what has not started (returned; posted for reap unless
        ``complete_in_worker``) and what waits for readiness (its worker
        completes it), let idle workers exit."""
        self._closed = True
        self._nowait.close()
        cancelled: list[Operation] = []
        for lane in self._lanes.values():
            cancelled.extend(lane.held)
            lane.held.clear()
        while self._ready:
            op = self._ready.popleft()
            self._lanes[op.fd].active -= 1
            cancelled.append(op)
        for op in list(self._waiting):
            self._unwait_locked(op)
            cancelled.append(op)
        for op in cancelled:
            op.state = OpState.CANCEL_REQUESTED
            self._cancelled += 1
            self._completed += 1
            if not self._direct:
                self._post_locked(op, -errno.ECANCELED)
        for w in self._idle:
            w.release()
            self._waking += 1
        self._idle.clear()
        return cancelled

    def abandon(self) -> None:
        """Close without waiting for anything: the finaliser's close, for an
        engine nobody holds any more (or left open at interpreter exit).
        What has not started and what waits for readiness is cancelled, idle
        workers exit, the eventfd is closed; a worker still in a system call
        (a write on a full pipe, a slow file) exits once it returns, and
        keeps its operation (and so the buffers) alive until then.
        Completions not reaped are dropped (``complete_in_worker`` mode
        still completes each operation)."""
        with self._mutex:
            if self._efd < 0:
                return
            cancelled = self._stop_locked()
            self._done.clear()
            efd, self._efd = self._efd, -1
        if self._held:
            self._unhold(cancelled)
        if self._direct:
            for op in cancelled:
                op.complete(-errno.ECANCELED)
        os.close(efd)

    def statistics(self) -> dict[str, Any]:
        """Counters: ``threads`` (alive), ``idle``, ``max_threads``, ``queued``
        (waiting for a worker or for ordering), ``running``, ``submitted``,
        ``completed``, ``cancelled``, ``spawned`` (threads started in total),
        ``inline`` (reads done at once from the page cache, by
        :meth:`read_nowait` or in :meth:`submit`)."""
        with self._mutex:
            return {
                "name": self.name,
                "threads": self._nthreads,
                "idle": len(self._idle),
                "max_threads": self._max_threads,
                "idle_time": self._idle_time,
                "num": self._num,
                "queued": len(self._ready) + sum(len(x.held) for x in self._lanes.values()),
                "running": len(self._running),
                "submitted": self._submitted,
                "completed": self._completed,
                "cancelled": self._cancelled,
                "spawned": self._spawned,
                "inline": self._nowait.count,
            }

    def forget_after_fork(self) -> None:
        """In a forked child: drop everything (the workers do not exist here)
        and close the eventfds, without touching the parent's requests.  Run
        for every thread engine by an ``os.register_at_fork`` hook: in the
        child the engine is closed (:meth:`close` returns at once)."""
        self._mutex = threading.Lock()
        self._no_threads = threading.Condition(self._mutex)
        self._ready.clear()
        self._lanes.clear()
        self._running.clear()
        self._waiting.clear()
        wakers, self._wakers = self._wakers, set()
        for w in wakers:
            os.close(w)
        self._idle.clear()
        self._threads.clear()
        self._exiting.clear()
        self._done.clear()
        self._nthreads = 0
        self._waking = 0
        self._closed = True
        self._nowait.close()
        held, self._held = self._held, {}
        for fd in held.values():  # this process's copies of the references
            if fd >= 0:
                os.close(fd)
        if self._efd >= 0:
            try:
                os.close(self._efd)
            finally:
                self._efd = -1

    def __del__(self) -> None:
        if self._efd < 0:  # closed (or never fully made)
            return
        if sys.is_finalizing():
            # Interpreter exit: the workers are daemon threads that die with
            # the process, one may have died holding the mutex, and a running
            # operation's buffers stay with its worker: leave everything.
            return
        if not self._closed:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1)
        self.abandon()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ThreadEngine {state} threads={self._nthreads}/{self._max_threads}>"

    # -- internals ----------------------------------------------------------------

    def _wake_locked(self) -> None:
        """Make sure the ready queue has enough workers coming for it: wake
        idle workers, then start new threads, but only for the ready
        operations no worker has been woken for yet (a worker woken for
        nothing is two useless thread switches).

        The counts change together with what they count, with no call in
        between, so an exception from a signal handler (Ctrl-C), which comes
        only at a call or a loop's jump, never leaves them wrong."""
        need = len(self._ready) - self._waking
        if need <= 0:
            return
        idle = self._idle
        while need and idle:
            w = idle[-1]
            del idle[-1]
            self._waking += 1
            w.release()
            need -= 1
        while need > 0 and self._nthreads < self._max_threads:
            try:
                self._start_worker_locked()
            except RuntimeError:  # "can't start new thread"
                if not self._nthreads:
                    raise  # nobody would run the work
                return  # the running workers get to it
            need -= 1

    def _start_worker_locked(self) -> None:
        """Start one worker thread, the mutex held (the worker waits for it
        before it does anything).  It is counted before it starts and
        uncounted if it did not start: a thread that cannot start, or a
        Ctrl-C whose ``KeyboardInterrupt`` comes out of the start (even after
        the thread began) never leaves a count that :meth:`close` would wait
        on for ever."""
        t = threading.Thread(
            target=_worker, args=(weakref.ref(self),), name="xaio-thread-worker", daemon=True
        )
        self._nthreads += 1
        self._waking += 1  # a new thread counts as woken for the ready queue
        try:
            start_thread_blocking_signals(t)
        except BaseException:
            if t.ident is None:  # it never ran
                self._nthreads -= 1
                self._waking -= 1
                if not self._nthreads:
                    self._no_threads.notify_all()
            raise
        self._spawned += 1

    def _unwait_locked(self, op: Operation) -> None:
        """Take *op* from the worker that waits for its fd's readiness and
        wake that worker, which leaves *op* alone from then on: the caller
        completes it as an operation that has not started."""
        wake = self._waiting.pop(op)
        self._running.discard(op)
        lane = self._lanes[op.fd]
        lane.active -= 1
        self._release_lane_locked(op.fd, lane)
        os.eventfd_write(wake, 1)

    def _release_lane_locked(self, fd: int, lane: Lane[Operation]) -> None:
        """Move held operations of *lane* that may now start to the ready
        queue (waking workers for them); drop the lane when empty."""
        started = lane.release(_itself) if lane.held else None
        if lane.idle:
            del self._lanes[fd]
        if started:
            self._ready.extend(started)
            self._wake_locked()

    def _post_locked(self, op: Operation, res: int) -> None:
        self._done.append((op, res))
        if not self._signalled and self._efd >= 0:  # (< 0: abandoned)
            self._signalled = True
            os.eventfd_write(self._efd, 1)

    def _deliver(self, max_n: int = 0) -> int:
        """Complete waiting operations in this thread; returns how many.

        An exception from a signal handler (Ctrl-C) can come out of any call
        here.  What is taken from ``_done`` is taken by two stores with no
        call between them (so the exception comes before both or after
        both), and whatever is taken and not completed goes back, so close
        still completes every operation."""
        items: list[tuple[Operation, int]] = []
        i = 0
        try:
            with self._mutex:
                done = self._done
                if not done:
                    return 0
                if 0 < max_n < len(done):  # the rest stay signalled for the next reap
                    batch = list(itertools.islice(done, max_n))
                    rest: deque[tuple[Operation, int]] = deque(itertools.islice(done, max_n, None))
                else:
                    batch = list(done)
                    rest = deque()
                self._done = rest
                items = batch
                if self._signalled and not rest:
                    self._signalled = False
                    try:
                        os.eventfd_read(self._efd)
                    except BlockingIOError:  # pragma: no cover
                        pass
            for op, res in items:
                i += 1
                op.complete(res)
        except BaseException:
            # an on_done raised, or Ctrl-C (maybe as the last one began): what
            # is not done goes first next time
            back = [item for item in items[max(i - 1, 0) :] if item[0].state is not _DONE]
            if back:
                with self._mutex:
                    self._done.extendleft(reversed(back))
                    if not self._signalled:
                        self._signalled = True
                        os.eventfd_write(self._efd, 1)
            raise
        return len(items)

    def _take_locked(
        self, me: threading.Lock, op: Operation | None, res: int, woken: bool, wake: int
    ) -> tuple[Operation | None, int, int]:
        """A worker's critical section (the mutex held): finish *op* (its
        result *res*) and take the next ready operation.

        Returns:
            ``(next, events, wake)``: the operation to run (None: go idle,
            or exit if the engine is closed), the poll events to wait for
            before running it (-1: run at once), and the worker's wake-up
            eventfd (made here the first time the worker needs one).
        """
        if woken:
            self._waking -= 1
        if op is not None:
            self._completed += 1
            self._running.discard(op)
            lane = self._lanes[op.fd]
            lane.active -= 1
            if lane.held or not lane.active:
                self._release_lane_locked(op.fd, lane)
            if not self._direct:
                self._post_locked(op, res)
        if not self._ready:
            if self._closed:
                self._exit_locked(wake)
            else:
                self._idle.append(me)
            return None, -1, wake
        nxt = self._ready.popleft()
        self._running.add(nxt)
        nxt.state = OpState.SUBMITTED
        code = nxt.opcode
        if code is OpCode.POLL:
            events = nxt.flags
        elif code in _READS and self._lanes[nxt.fd].stream:
            events = select.POLLIN
        else:
            return nxt, -1, wake
        if wake < 0:
            wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._wakers.add(wake)
        self._waiting[nxt] = wake
        return nxt, events, wake

    def _exit_locked(self, wake: int) -> None:
        t = threading.current_thread()
        self._threads.discard(t)
        self._wakers.discard(wake)  # the worker closes it on its way out
        # kept for close to join; the dead ones are dropped here, so their
        # Thread objects die in a worker: a Thread's death runs a weakref
        # callback, and a Ctrl-C that lands in one in the main thread is lost
        # ("Exception ignored")
        self._exiting = [x for x in self._exiting if x.is_alive()]
        self._exiting.append(t)
        self._nthreads -= 1
        if not self._nthreads:
            self._no_threads.notify_all()


def _worker(ref: weakref.ref[ThreadEngine]) -> None:
    """A worker thread's life (see the module essay).  It holds its engine
    only while it takes work (:meth:`ThreadEngine._take_locked`), so that an
    engine nobody else holds can be collected (and abandoned) while its
    workers wait or run."""
    me = threading.Lock()
    me.acquire()
    eng = ref()
    if eng is None:  # pragma: no cover - collected before the thread ran
        return
    mutex = eng._mutex
    waiting = eng._waiting
    direct = eng._direct
    held = eng._held
    with mutex:
        eng._threads.add(threading.current_thread())
    del eng
    op: Operation | None = None
    res = 0
    wake = -1  # this worker's wake-up eventfd (see _run_when_ready)
    woken = True  # a new thread counts as woken for the ready queue
    try:
        while True:
            eng = ref()
            if eng is None:  # collected meanwhile (it was abandoned)
                if op is not None and direct:
                    op.complete(res)
                return
            # One critical section finishes the previous operation and takes
            # the next one.
            with mutex:
                nxt, events, wake = eng._take_locked(me, op, res, woken, wake)
                woken = False
                closed = eng._closed
                idle_time = eng._idle_time
            del eng  # not held while running or idle
            if op is not None and direct:
                op.complete(res)
            op = nxt
            if op is not None:
                if events < 0:
                    hold = held.pop(op, None) if held else None
                    if hold is None:
                        res = _run(op, op.fd)
                    elif hold < 0:
                        res = -errno.EBADF  # not open when it was submitted
                    else:
                        res = _run(op, hold)
                        os.close(hold)
                    continue
                # a POLL or a read on a stream waits for readiness first
                r = _run_when_ready(op, events, wake, mutex, waiting)
                if r is None:  # cancelled: the canceller completes it
                    op = None
                else:
                    res = r
                continue
            if closed:
                return
            if me.acquire(timeout=idle_time):
                woken = True
                continue
            eng = ref()
            if eng is None:
                return
            with mutex:
                if me in eng._idle:  # nobody woke us: exit
                    eng._idle.remove(me)
                    eng._exit_locked(wake)
                    return
            del eng
            me.acquire()  # woken just as the wait timed out: consume it
            woken = True
    finally:
        if wake >= 0:
            os.close(wake)


def _run_when_ready(
    op: Operation, events: int, wake: int, mutex: threading.Lock, waiting: dict[Operation, int]
) -> int | None:
    """Run *op* (a POLL, or a read on a stream fd) once its fd reports one of
    *events* (or an error or hang-up), waiting in ``poll`` on the fd and on
    *wake*, the worker's eventfd.  While *op* is in *waiting* a cancel takes
    it (:meth:`ThreadEngine._unwait_locked`) and signals *wake*; once the
    worker has taken it out (under *mutex*) it runs and a cancel says
    RUNNING.

    Returns:
        A POLL's revents; a read's bytes or -errno (``RWF_NOWAIT``: back to
        waiting on EAGAIN); None if a cancel took it.
    """
    fd = op.fd
    poller = select.poll()
    poller.register(wake, select.POLLIN)
    try:
        poller.register(fd, events)
    except (OverflowError, ValueError, TypeError):  # spoiled since submit
        with mutex:
            if waiting.pop(op, None) is None:
                return None
        return -errno.EINVAL
    while True:
        revents = 0
        for f, rev in poller.poll():
            if f == fd:
                revents = rev
            else:
                try:
                    os.eventfd_read(wake)
                except BlockingIOError:  # pragma: no cover - read by a spurious wake
                    pass
        with mutex:
            if waiting.get(op) != wake:
                return None  # taken by a cancel
            if not revents:
                continue
            del waiting[op]  # running from here on
        if op.opcode is OpCode.POLL:
            return revents
        res = _read_nowait(op)
        if res != -errno.EAGAIN:
            return res
        with mutex:  # taken by somebody else first: wait again
            waiting[op] = wake


def _read_nowait(op: Operation) -> int:
    """The read of *op* on a ready stream fd, with ``RWF_NOWAIT`` added to
    its flags (as :func:`_run` does it: at the offset, or at the file
    position where the fd has none); as :func:`_run` where the fd does not
    support the flag."""
    fd = op.fd
    flags = op.flags | os.RWF_NOWAIT
    try:
        return _transfer(fd, op, flags, os.preadv, os.readv)
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:  # a tty: ready, so the read returns soon
            return _run(op, fd)
        return -(e.errno or errno.EIO)
    except (OverflowError, ValueError, TypeError):
        return -errno.EINVAL


def _itself(op: Operation) -> Operation:
    return op


#: Every thread engine of this process, for the fork hook.
_engines: weakref.WeakSet[ThreadEngine] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for eng in list(_engines):
        eng.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_config(threads: int, idle_time: float, num: int) -> tuple[int, float, int]:
    for name, v in (("threads", threads), ("num", num)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int, not {type(v).__name__!r}")
    if not isinstance(idle_time, (int, float)) or isinstance(idle_time, bool):
        raise TypeError(f"idle_time must be a number, not {type(idle_time).__name__!r}")
    if threads < 1:
        raise ValueError("threads must be >= 1")
    if num < 1:
        raise ValueError("num must be >= 1")
    if not idle_time >= 0:
        raise ValueError("idle_time must be >= 0")
    return threads, float(idle_time), num
