"""The POSIX AIO runtime: the engine requests run on, the reaper thread that
delivers an engine's completions, ``aio_init``, exit and fork (see the
essay of :mod:`xaio.posix`)."""

from __future__ import annotations

import atexit
import errno
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from xaio import _syscall
from xaio._lanes import Lane
from xaio._ops import OpCode, Operation
from xaio.engine import Engine, EngineClosedError, create_engine, probe
from xaio.posix import _notify
from xaio.posix._request import _int_field, _Waiter, aiocb
from xaio.threads import ThreadEngine, start_thread_blocking_signals

# _state_lock guards every aiocb's status fields, _by_fd, _lanes and the engine
# choice.  Lock order: an engine's own lock (held while it runs on_done) may be
# held when _state_lock is taken, never the other way round: nothing calls into
# an engine with _state_lock held.

_state_lock = threading.Lock()
#: Threads in aio_suspend: every completion wakes them all (they re-check
#: their own lists).  Registering once per wait instead of once per listed
#: aiocb keeps aio_suspend O(1) in bookkeeping for long lists.
_suspenders: list[_Waiter] = []
#: aio_cancel calls waiting for a request to be handed to its engine.
_transit_waiters: list[_Waiter] = []
_by_fd: dict[int, dict[aiocb, None]] = {}
_lanes: dict[int, Lane[aiocb]] = {}
_engine: Engine | None = None
_engine_is_ours = False  # we created it (and close it)
#: The engine's page-cache fast path (``Engine.nowait_reader``), bound once.
_read_nowait: Callable[[int, Sequence[Any], int, int], int | None] | None = None
#: What aio_init asked for: an engine name, or the caller's Engine.
_choice: str | Engine = "thread"
_config: dict[str, Any] = {"threads": 20, "num": 64, "idle_time": 1.0}
_reaper: _Reaper | None = None
#: Engines inherited from the parent in a forked child, to be closed there.
_orphans: list[Engine] = []

#: Engine names aio_init accepts.
_ENGINE_NAMES: Final = ("thread", "uring", "linux")


def _make_engine(name: str) -> Engine:
    """A new engine of that name, configured from ``_config``.

    Raises:
        OSError: the engine does not work here; the message gives the reason
            :func:`xaio.engine.probe` finds (ENOSYS, EPERM and its cause...).
    """
    if name == "thread":
        return ThreadEngine(
            _config["threads"],
            _config["idle_time"],
            num=_config["num"],
            complete_in_worker=True,
        )
    options: dict[str, Any] = {"threads": _config["threads"]} if name == "linux" else {}
    try:
        return create_engine(name, **options)
    except OSError as e:
        reason = probe().get(name) or e.strerror or str(e)
        raise _syscall.oserror(
            e.errno or errno.ENOSYS, f"the {name!r} engine is unavailable: {reason}"
        ) from e


def _install_locked(eng: Engine, ours: bool) -> None:
    """Make *eng* the engine (``_state_lock`` held); start a reaper thread
    unless the engine completes operations itself."""
    global _engine, _engine_is_ours, _reaper, _read_nowait
    reaper = None
    if not eng.delivers_itself:
        reaper = _Reaper(eng)
    try:
        if reaper is not None:
            start_thread_blocking_signals(reaper.thread)
    finally:
        # installed if its reaper runs, even when a Ctrl-C comes out of the
        # start after the thread began; an engine nobody would reap is not
        if reaper is None or reaper.thread.ident is not None:
            _engine, _engine_is_ours, _reaper = eng, ours, reaper
            _read_nowait = eng.nowait_reader
        elif ours:
            eng.close()


def _get_engine() -> Engine:
    eng = _engine
    if eng is not None:
        return eng
    _close_orphans()
    with _state_lock:
        if _engine is None:
            choice = _choice
            if isinstance(choice, Engine):  # pragma: no cover - installed by aio_init
                _install_locked(choice, False)
            else:
                _install_locked(_make_engine(choice), True)
        assert _engine is not None
        return _engine


def _close_orphans() -> None:
    """Close the engines a forked child inherited (fds and mappings only)."""
    while _orphans:
        _orphans.pop().close()


def _submitter(eng: Engine) -> _Reaper | None:
    """The reaper that must submit for this thread, or None to submit here.

    io_uring ties a request to the thread that submitted it: when that
    thread exits, a request still waiting (a read on an empty pipe, a write
    on a full socket) completes with ECANCELED; and the kernel finishes a
    request's completion (the task work that posts its CQE) in that thread,
    interrupting it if it runs.  A POSIX AIO request must outlive the thread
    that queued it, and its completion belongs to the reaper, which waits
    for it: so on io_uring (``Engine.thread_bound``) only the reaper thread
    submits, and every other thread, the main one too, hands its requests
    to it.  Requests queued in a burst then reach the kernel together, in
    one ``io_uring_enter`` per few requests (see :meth:`_Reaper.defer`)."""
    if not eng.thread_bound:
        return None
    reaper = _reaper
    if reaper is None or reaper.engine is not eng:  # pragma: no cover - being replaced
        return None
    if threading.current_thread() is reaper.thread:
        return None
    return reaper


class _Reaper:
    """Delivers the completions of an engine that does not complete
    operations itself: blocks in ``engine.reap(None)`` (for io_uring, in
    ``io_uring_enter`` waiting for a CQE), so each completion is recorded and
    notified by this thread as soon as the kernel posts it.  On io_uring it
    also submits the requests of every other thread (see :func:`_submitter`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.stopping = False
        self.lock = threading.RLock()  # a signal handler may queue a request
        #: what to submit from this thread: (submit function, its requests)
        self.pending: list[tuple[Callable[[list[aiocb]], None], list[aiocb]]] = []
        # started by _install_locked
        self.thread = threading.Thread(target=self._run, name="xaio-posix-reaper", daemon=True)

    def _run(self) -> None:
        eng = self.engine
        while not self.stopping and not eng.closed:
            try:
                eng.reap(None)
            except (EngineClosedError, OSError, ValueError):
                if eng.closed:  # closed under us: nothing more will come
                    break
                raise
            self._submit_pending()
        self._submit_pending()

    def defer(self, submit: Callable[[list[aiocb]], None], cbs: list[aiocb]) -> None:
        """Have this thread call ``submit(cbs)`` (requests in transit, not
        yet submitted).

        The first request of a burst wakes the reaper with a no-operation
        request; those queued until it runs are submitted with it, from the
        delivery of that no-operation (``UringEngine`` hands SQEs submitted
        there to the kernel a few at a time)."""
        with self.lock:
            wake = not self.pending
            self.pending.append((submit, cbs))
        if wake:
            # A no-operation request completes at once and wakes the reaper.
            # Whoever reaps it submits what is pending: the reaper (or
            # _Reaper.stop, which reaps what is left once it has stopped).
            nop = Operation(OpCode.NOP, -1, on_done=self._woken)
            try:
                self.engine.submit([nop])
            except EngineClosedError:
                self._submit_pending()

    def _woken(self, op: Operation) -> None:
        self._submit_pending()

    def _submit_pending(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, []
        for submit, cbs in pending:
            submit(cbs)

    def stop(self) -> None:
        """Make the thread return and join it (a no-operation request wakes
        it up), then deliver what is left."""
        self.stopping = True
        eng = self.engine
        try:
            eng.submit([Operation(OpCode.NOP, -1)])
        except EngineClosedError:
            pass  # closed: the reaper returns by itself
        self.thread.join()
        self._submit_pending()
        if not eng.closed:
            eng.reap(0)


def aio_init(
    threads: int = 20, num: int = 64, idle_time: float = 1.0, engine: Engine | str | None = None
) -> None:
    """Tune POSIX AIO (``aio_init(3)``, a GNU extension) and choose its engine.

    Args:
        threads: maximum number of worker threads.
        num: expected number of simultaneous requests (a sizing hint).
        idle_time: seconds before an idle worker thread exits.
        engine: None or ``"thread"`` for the thread engine (the default),
            ``"uring"`` for io_uring (which also cancels requests blocked on
            pipes and sockets), ``"linux"`` for Linux AIO on O_DIRECT files
            and threads for the rest; an engine made by name is created now,
            owned by this module and closed when another engine is chosen,
            at exit, or (in a forked child) replaced by a fresh one.  Or an
            :class:`~xaio.engine.Engine` instance, which stays the caller's to
            close, after its requests are done.

    Raises:
        OSError: EBUSY when switching engines while requests are in progress;
            the errno (ENOSYS, EPERM...) and the reason from
            :func:`xaio.engine.probe` when the named engine does not work here.
        TypeError, ValueError: bad argument types or values (an unknown
            engine name is a ValueError).
    """
    global _choice
    _int_field("threads", threads)
    _int_field("num", num)
    if not isinstance(idle_time, (int, float)) or isinstance(idle_time, bool):
        raise TypeError(f"idle_time must be a number, not {type(idle_time).__name__!r}")
    if threads < 1 or num < 1 or not idle_time >= 0 or math.isinf(idle_time):
        raise ValueError("threads and num must be >= 1, idle_time a finite number >= 0")
    want: str | Engine
    if engine is None:
        want = "thread"
    elif isinstance(engine, str):
        if engine not in _ENGINE_NAMES:
            raise ValueError(
                f"unknown engine {engine!r}: expected one of {', '.join(_ENGINE_NAMES)}"
            )
        want = engine
    elif isinstance(engine, Engine):
        want = engine
    else:
        raise TypeError(f"engine must be None, a name or an Engine, not {type(engine).__name__!r}")
    with _state_lock:
        _config.update(threads=threads, num=num, idle_time=float(idle_time))
        _notify.idle_time = float(idle_time)
        cur = _engine
        same = _choice is want if isinstance(want, Engine) else _choice == want
        if not same and cur is not None and _by_fd:
            raise _syscall.oserror(errno.EBUSY, "requests are in progress")
    if same:
        if isinstance(cur, ThreadEngine) and _engine_is_ours:
            cur.configure(threads, float(idle_time), num)
        return
    new = _make_engine(want) if isinstance(want, str) and want != "thread" else None
    target = want if isinstance(want, Engine) else new  # None: the thread engine
    swapped = False
    try:
        with _state_lock:
            if _engine is not cur or (cur is not None and _by_fd):  # raced with another call
                busy = True
            else:
                busy = False
                old, old_ours, old_reaper = _engine, _engine_is_ours, _reaper
                try:
                    if target is not None:
                        _install_locked(target, target is new)
                    else:
                        _uninstall_locked()  # the thread engine starts on first use
                finally:
                    swapped = _engine is target  # even if a Ctrl-C came out of it
                    if swapped:
                        _choice = want
    finally:
        if swapped:
            _retire(old, old_ours, old_reaper)
    if busy:
        if new is not None:
            new.close()
        raise _syscall.oserror(errno.EBUSY, "requests are in progress")


aio_init.__module__ = "xaio.posix"


def _uninstall_locked() -> None:
    global _engine, _engine_is_ours, _reaper, _read_nowait
    _engine = None
    _engine_is_ours = False
    _reaper = None
    _read_nowait = None


def _retire(eng: Engine | None, ours: bool, reaper: _Reaper | None) -> None:
    """Stop an engine that is no longer the current one: its reaper thread,
    and, if we made it, the engine itself."""
    if reaper is not None:
        reaper.stop()
    if eng is not None and ours:
        eng.close()


def _shutdown() -> None:
    """Stop every POSIX AIO thread and close our engine (for tests and
    interpreter exit).  Requests still queued are cancelled (with their
    notifications); running ones are waited for (io_uring cancels those it
    can).  The engine choice is kept: the next request starts afresh."""
    held: list[Operation] = []
    with _state_lock:
        eng, ours, reaper = _engine, _engine_is_ours, _reaper
        _uninstall_locked()
        for lane in _lanes.values():
            held.extend(c._unlane() for c in lane.held)
            lane.held.clear()
    for op in held:
        op.complete(-errno.ECANCELED)
    _retire(eng, ours, reaper)
    _close_orphans()
    _notify.stop()


def _at_exit() -> None:
    """At interpreter exit, close an engine we own that cancels running
    requests (io_uring: ``Engine.cancels_running``; this cannot block for
    ever).  Any other is left to die with the process, as glibc's helpers
    are: a worker blocked on an empty pipe would never let a close finish."""
    eng = _engine
    if _engine_is_ours and eng is not None and eng.cancels_running:
        _shutdown()


atexit.register(_at_exit)


def _before_fork() -> None:
    # held across the fork, so the child's copy of every aiocb is consistent
    _state_lock.acquire()


def _after_fork_parent() -> None:
    _state_lock.release()


def _after_fork_child() -> None:
    global _engine, _engine_is_ours, _reaper, _choice, _read_nowait
    _state_lock.release()  # taken by _before_fork in this very thread
    _notify.after_fork_child()
    for fdset in _by_fd.values():
        for cb in fdset:
            cb._forget()
    _by_fd.clear()
    _lanes.clear()
    _suspenders.clear()
    _transit_waiters.clear()
    eng = _engine
    if eng is not None and _engine_is_ours:
        # Closed on first use here, where close() only drops the child's
        # copies of the engine's fds and mappings (each engine's own fork hook
        # marks it as inherited): not now, as that hook may not have run yet,
        # and the parent's reaper may have held the engine's lock.
        _orphans.append(eng)
    if isinstance(_choice, Engine):
        _choice = "thread"  # the caller's engine belongs to the parent
    _engine = None
    _engine_is_ours = False
    _reaper = None
    _read_nowait = None


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child
)
