"""POSIX asynchronous I/O: ``aiocb``, ``aio_*`` and ``lio_listio``, on any engine.

Some facts about POSIX AIO on Linux, what glibc does, and what we do better
---------------------------------------------------------------------------

- The kernel has no POSIX AIO: glibc implements it in user space (librt,
  ``sysdeps/pthread/aio_misc.c``) with a pool of helper threads that run
  ``pread``/``pwrite``/``fsync``.  The pool is created on the first ``aio_*``
  call; here too (importing xaio starts no thread).  Its size, the expected
  number of requests and the idle time of a helper are set by ``aio_init``.
- glibc queues requests *per file descriptor* and runs those of one fd one
  after the other, so 32 reads of one file never overlap.  Here positional I/O
  on regular files runs in parallel; only stream fds (pipes, sockets, FIFOs,
  ttys) and ``O_APPEND`` fds are run one at a time in submission order, which
  is what makes later requests on a blocked socket stay queued, and
  cancellable (see :mod:`xaio.threads`).  ``aio_fsync`` completes after every
  request queued before it on its fd.
- ``aio_cancel`` (the seed): a request a helper has started cannot be
  cancelled (``AIO_NOTCANCELED``; it completes normally later); a queued one
  is removed, gets ``ECANCELED`` / -1, and **its notification still happens**
  (signal, thread, ``aio_suspend`` waiters, the ``lio_listio`` it belongs to).
  With a cb, the fd argument is ignored, as the seed says (glibc fails a
  mismatch with EINVAL); a cb never submitted is EINVAL (glibc says
  AIO_ALLDONE); a closed fd is EBADF, checked first.
- After ``fork()`` glibc's child inherits a pool that does not exist (its
  threads were not copied) and a request list that says they do: the seed's
  caveat, the child cannot use AIO.  Here an ``os.register_at_fork`` hook
  gives the child a fresh, empty state: the parent's requests are not
  inherited (in the child their aiocbs look never submitted), the child's
  first request starts its own pool, and the parent is unaffected.
- Errors: a bad fd in ``aio_read``/``aio_write`` is not an immediate error
  (glibc too): the request is queued and ``aio_error`` says EBADF.  An
  out-of-range ``aio_reqprio`` is an immediate EINVAL; so are a bad
  ``lio_listio`` mode and a bad ``aio_fsync`` op; ``aio_fsync`` on a closed
  fd is an immediate EBADF.  ``aio_return`` a second time, or on a cb never
  submitted, raises EINVAL (POSIX allows it; glibc returns a stale value).
- ``SIGEV_SIGNAL`` is sent as glibc does, with ``rt_sigqueueinfo`` to the
  process: ``si_code == SI_ASYNCIO`` (-4), ``si_pid``/``si_uid`` ours and the
  value in ``si_value`` (Python's ``struct_siginfo`` shows its low 32 bits as
  ``si_status``, which overlays it).  ``SIGEV_THREAD`` runs
  ``sigev_notify_function(sigev_value)`` on a notifier thread; a new one is
  started when all are busy, so a slow callback never delays another
  notification or a completion (glibc starts a thread per notification).
- All library threads block every signal, like glibc's helpers, so the
  block-then-``sigwaitinfo`` pattern works in the application's threads.
- Engines: by default the thread engine in ``complete_in_worker`` mode (the
  worker that ran a request records its result and sends its notification
  itself: one thread hand-off per request, not two).  ``aio_init(engine=
  "uring")`` (or ``"linux"``, or any :class:`~xaio.engine.Engine` instance)
  runs the same API there; a reaper thread blocks in ``engine.reap(None)``
  and records and notifies each completion as the kernel posts it.  An
  engine made by name is ours: closed when another is chosen, at exit (an
  io_uring one), and replaced by a fresh one in a forked child (the parent's
  ring is closed there on first use, which only drops the child's copies).
- io_uring does not order requests on one fd, so for every engine but the
  thread engine (which does it itself) posix keeps *lanes*: per fd, the
  requests the engine has and those held back, with the thread engine's rule
  (a stream or O_APPEND fd one at a time in submission order; an fsync only
  after every request before it; positional I/O on regular files in
  parallel).  A held request never reached the kernel: cancelling it is
  immediate.  A request the engine has can be cancelled where the kernel can
  (a read or write pending on a pipe or socket); ``AIO_CANCELED`` is then
  returned only if its completion really said ``ECANCELED`` -- it is recorded
  and notified before ``aio_cancel`` returns.  A request in transit to the
  engine (taken from a lane, not yet submitted) is waited for, so a cancel
  never misses it.
- A POSIX request is not always one kernel request there: io_uring ends a
  write on a stream socket at the first short transfer, where ``write(2)``
  on a blocking fd writes all; so a short write on a blocking stream fd goes
  on with the rest (the lane keeps later requests behind it), and the
  request completes, notifies and counts for its ``lio_listio`` list only
  when all is written or it fails.  A write partly done is running: not
  cancelled (``AIO_NOTCANCELED``).  And a request ``aio_cancel`` reported
  running that the kernel then stopped anyway (io_uring's cancel of a
  running request may interrupt it) is submitted again: ``AIO_NOTCANCELED``
  means it completes normally.
- Page-cache hits skip the engine: ``aio_read`` first asks the engine's
  ``read_nowait`` (thread, uring and linux engines: ``preadv2(RWF_NOWAIT)``
  in the caller's thread, never on O_DIRECT, O_APPEND or stream fds, see
  :mod:`xaio._inline`).  A hit is complete -- recorded and notified -- when
  ``aio_read`` returns, with no thread hand-off and no ring round trip.
  Every aiocb shape takes it (any writable buffer, explicit ``aio_nbytes``,
  subclasses), for at most ``INLINE_MAX`` bytes (a larger read goes to the
  engine, so ``aio_read`` always returns promptly), and never past requests
  held back on the fd (behind an ``aio_fsync``).
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import fcntl
import math
import mmap
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from xaio import _syscall
from xaio._inline import INLINE_MAX
from xaio._ops import CancelOutcome, OpCode, Operation, OpState
from xaio.engine import Engine, EngineClosedError, create_engine, probe
from xaio.threads import (
    ThreadEngine,
    _is_serial_fd,  # the same rule as the thread engine's
    start_thread_blocking_signals,
)

__all__ = [
    "aiocb",
    "sigevent",
    "aio_read",
    "aio_write",
    "aio_fsync",
    "aio_error",
    "aio_return",
    "aio_cancel",
    "aio_suspend",
    "lio_listio",
    "aio_init",
    "AIO_CANCELED",
    "AIO_NOTCANCELED",
    "AIO_ALLDONE",
    "LIO_READ",
    "LIO_WRITE",
    "LIO_NOP",
    "LIO_WAIT",
    "LIO_NOWAIT",
    "SIGEV_SIGNAL",
    "SIGEV_NONE",
    "SIGEV_THREAD",
    "AIO_PRIO_DELTA_MAX",
    "SI_ASYNCIO",
]

# glibc's values (<aio.h>, <bits/sigevent-consts.h>, <bits/local_lim.h>).
AIO_CANCELED: Final = 0
AIO_NOTCANCELED: Final = 1
AIO_ALLDONE: Final = 2
LIO_READ: Final = 0
LIO_WRITE: Final = 1
LIO_NOP: Final = 2
LIO_WAIT: Final = 0
LIO_NOWAIT: Final = 1
SIGEV_SIGNAL: Final = 0
SIGEV_NONE: Final = 1
SIGEV_THREAD: Final = 2
AIO_PRIO_DELTA_MAX: Final = 20
#: ``si_code`` of a signal sent for an asynchronous I/O completion.
SI_ASYNCIO: Final = -4

_NSIG = 65
_INT64_MAX = 2**63 - 1
_FD_MAX = 2**31 - 1

# aiocb states
_NEW = 0  # never submitted (or submitted in the parent before fork)
_INPROGRESS = 1
_DONE = 2  # result available
_RETRIEVED = 3  # aio_return has taken it


class sigevent:
    """How a request (or a ``lio_listio`` list) announces its completion
    (``sigevent(7)``).

    Args:
        sigev_notify: ``SIGEV_NONE``, ``SIGEV_SIGNAL`` or ``SIGEV_THREAD``.
        sigev_signo: the signal queued for ``SIGEV_SIGNAL``.
        sigev_value: an int sent with the signal (``si_value``); for
            ``SIGEV_THREAD`` any object, passed to the function.
        sigev_notify_function: for ``SIGEV_THREAD``, called as
            ``sigev_notify_function(sigev_value)`` on a notifier thread.

    The fields are checked when the sigevent is used (submission), where a
    value no errno covers is a TypeError and an invalid one ``OSError(EINVAL)``.
    """

    __slots__ = ("sigev_notify", "sigev_signo", "sigev_value", "sigev_notify_function")

    def __init__(
        self,
        sigev_notify: int = SIGEV_NONE,
        sigev_signo: int = 0,
        sigev_value: Any = 0,
        sigev_notify_function: Callable[[Any], object] | None = None,
    ) -> None:
        self.sigev_notify = sigev_notify
        self.sigev_signo = sigev_signo
        self.sigev_value = sigev_value
        self.sigev_notify_function = sigev_notify_function

    def __repr__(self) -> str:
        return (
            f"sigevent(sigev_notify={self.sigev_notify!r}, sigev_signo={self.sigev_signo!r}, "
            f"sigev_value={self.sigev_value!r}, "
            f"sigev_notify_function={self.sigev_notify_function!r})"
        )


# A checked sigevent: (notify, signo, value, function); None for SIGEV_NONE.
_Notice = tuple[int, int, Any, Any]


class aiocb:
    """An asynchronous I/O control block (``aio(7)``): what to do, and, once
    submitted, the request's status (read it with :func:`aio_error` and
    :func:`aio_return`).

    Args:
        aio_fildes: the file descriptor.
        aio_offset: the file offset (ignored on stream fds and for O_APPEND
            writes).
        aio_buf: a bytes-like object (writable for a read); None only with
            ``aio_nbytes`` 0.
        aio_nbytes: bytes to transfer; None means ``len(aio_buf)``.
        aio_reqprio: request priority decrease, ``0..AIO_PRIO_DELTA_MAX``.
        aio_sigevent: a :class:`sigevent`, or None (``SIGEV_NONE``).
        aio_lio_opcode: ``LIO_READ``, ``LIO_WRITE`` or ``LIO_NOP`` (only
            :func:`lio_listio` looks at it).

    The fields may be changed freely; they are read (and checked) at
    submission.  Changing them while the request is in progress does not
    affect it.  The buffer stays referenced until the request completes.
    """

    __slots__ = (
        "aio_fildes",
        "aio_offset",
        "aio_buf",
        "aio_nbytes",
        "aio_reqprio",
        "aio_sigevent",
        "aio_lio_opcode",
        "_state",
        "_error",
        "_return",
        "_op",
        "_fd",
        "_waiters",
        "_notice",
        "_group",
        "_engine",
        "_lane",
        "_held",
        "_transit",
        "_moved",
        "_keep",
        "_cancelling",
        "_parked",
        "__weakref__",
    )

    def __init__(
        self,
        aio_fildes: int = -1,
        aio_offset: int = 0,
        aio_buf: Any = None,
        aio_nbytes: int | None = None,
        aio_reqprio: int = 0,
        aio_sigevent: sigevent | None = None,
        aio_lio_opcode: int = LIO_NOP,
    ) -> None:
        self.aio_fildes = aio_fildes
        self.aio_offset = aio_offset
        self.aio_buf = aio_buf
        self.aio_nbytes = aio_nbytes
        self.aio_reqprio = aio_reqprio
        self.aio_sigevent = aio_sigevent
        self.aio_lio_opcode = aio_lio_opcode
        self._state = _NEW
        self._error = 0
        self._return = -1
        self._op: Operation | None = None
        self._fd = -1
        self._waiters: list[_Waiter] | None = None
        self._notice: _Notice | None = None
        self._group: _Group | None = None
        self._engine: Engine | None = None
        self._lane: _Lane | None = None  # its fd's lane (engines that do not order)
        self._held = False  # held back in its lane, not yet given to the engine
        self._transit: Operation | None = None  # being handed to the engine
        # Laned engines: a request done in parts (see _on_done).
        self._moved = 0  # bytes the parts before the current one transferred
        self._keep = False  # aio_cancel said AIO_NOTCANCELED: it runs to the end
        self._cancelling = False  # an aio_cancel is asking the engine
        self._parked: int | None = None  # a -ECANCELED/-EINTR that cancel decides

    def __repr__(self) -> str:
        state = ("new", "in progress", "done", "retrieved")[self._state]
        return (
            f"<aiocb fd={self.aio_fildes!r} offset={self.aio_offset!r} "
            f"nbytes={self.aio_nbytes!r} {state}>"
        )


class _Waiter:
    """One ``aio_suspend`` (or internal) wait: a lock released once."""

    __slots__ = ("lock", "woken")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.woken = False

    def wake_locked(self) -> None:  # called with _state_lock held
        if not self.woken:
            self.woken = True
            self.lock.release()


class _Group:
    """A ``lio_listio`` list: counts its requests down, then notifies."""

    __slots__ = ("remaining", "failed", "notice", "waiter")

    def __init__(self, remaining: int, notice: _Notice | None, waiter: _Waiter | None) -> None:
        self.remaining = remaining
        self.failed = False
        self.notice = notice
        self.waiter = waiter


class _Lane:
    """The requests of one fd on an engine that does not order them itself
    (io_uring, Linux AIO): how many the engine has (``active``) and those
    held back for ordering (``held``, in submission order).  The same rule as
    the thread engine's: on a stream or O_APPEND fd one request at a time; an
    fsync only once every request before it has completed; nothing overtakes
    a held request."""

    __slots__ = ("serial", "active", "held")

    def __init__(self, serial: bool) -> None:
        self.serial = serial
        self.active = 0
        self.held: deque[aiocb] = deque()


_SYNCS = (OpCode.FSYNC, OpCode.FDATASYNC)


# --- process-wide state --------------------------------------------------------------
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
_lanes: dict[int, _Lane] = {}
_engine: Engine | None = None
_engine_is_ours = False  # we created it (and close it)
#: The engine's page-cache fast path (``Engine.read_nowait``), bound once.
_read_nowait: Callable[[int, Any, int, int], int | None] | None = None
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
    if not (isinstance(eng, ThreadEngine) and eng._direct):
        reaper = _Reaper(eng)
    try:
        if reaper is not None:
            start_thread_blocking_signals(reaper.thread)
    finally:
        # installed if its reaper runs, even when a Ctrl-C comes out of the
        # start after the thread began; an engine nobody would reap is not
        if reaper is None or reaper.thread.ident is not None:
            _engine, _engine_is_ours, _reaper = eng, ours, reaper
            _read_nowait = getattr(eng, "read_nowait", None)
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
    on a full socket) completes with ECANCELED.  A POSIX AIO request must
    outlive the thread that queued it, so on io_uring only the main thread
    (which lives as long as the process) and the reaper thread submit; any
    other thread hands its requests to the reaper."""
    if eng.name != "uring":
        return None
    reaper = _reaper
    if reaper is None or reaper.engine is not eng:  # pragma: no cover - being replaced
        return None
    t = threading.current_thread()
    if t is reaper.thread or t is threading.main_thread():
        return None
    return reaper


class _Reaper:
    """Delivers the completions of an engine that does not complete
    operations itself: blocks in ``engine.reap(None)`` (for io_uring, in
    ``io_uring_enter`` waiting for a CQE), so each completion is recorded and
    notified by this thread as soon as the kernel posts it.  On io_uring it
    also submits the requests of short-lived threads (see :func:`_submitter`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.stopping = False
        self.lock = threading.Lock()
        self.pending: list[aiocb] = []
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

    def defer(self, cbs: list[aiocb]) -> None:
        """Have this thread submit *cbs* (in transit, not yet submitted)."""
        with self.lock:
            wake = not self.pending
            self.pending.extend(cbs)
        if wake:
            # A no-operation request completes at once and wakes the reaper.
            # Whoever reaps it submits what is pending: the reaper, or the
            # main thread (the only other thread that reaps io_uring here).
            nop = Operation(OpCode.NOP, -1, on_done=self._woken)
            try:
                self.engine.submit([nop])
            except EngineClosedError:
                self._submit_pending()

    def _woken(self, op: Operation) -> None:
        self._submit_pending()

    def _submit_pending(self) -> None:
        with self.lock:
            cbs, self.pending = self.pending, []
        if cbs:
            _submit_released(cbs)

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


# --- notification --------------------------------------------------------------------


class _Notifier:
    """Runs ``SIGEV_THREAD`` functions on threads that block all signals.

    A function is handed to an idle notifier thread, or to a new one when
    all are busy: a slow function never delays another.  Idle threads exit
    after the configured idle time."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.jobs: deque[tuple[Callable[[Any], object], Any]] = deque()
        self.idle: list[threading.Lock] = []
        self.threads: set[threading.Thread] = set()
        self.busy = 0
        self.stopping = False

    def call(self, fn: Callable[[Any], object], value: Any) -> None:
        with self.mutex:
            self.jobs.append((fn, value))
            if self.idle:
                self.idle.pop().release()
                return
        t = threading.Thread(target=self._run, name="xaio-posix-notify", daemon=True)
        try:
            start_thread_blocking_signals(t)
        finally:
            if t.ident is not None:  # it runs (a Ctrl-C may come out of the start)
                with self.mutex:
                    if t.is_alive():
                        self.threads.add(t)

    def _run(self) -> None:
        me = threading.Lock()
        me.acquire()
        while True:
            with self.mutex:
                job = self.jobs.popleft() if self.jobs else None
                if job is None:
                    if self.stopping:
                        self.threads.discard(threading.current_thread())
                        return
                    self.idle.append(me)
                    idle_time = float(_config["idle_time"])
            if job is not None:
                fn, value = job
                try:
                    fn(value)
                except Exception as e:  # report it as an unhandled thread exception
                    threading.excepthook(
                        threading.ExceptHookArgs(
                            (type(e), e, e.__traceback__, threading.current_thread())
                        )
                    )
                del job, fn, value
                continue
            if me.acquire(timeout=idle_time):
                continue
            with self.mutex:
                if me in self.idle:
                    self.idle.remove(me)
                    self.threads.discard(threading.current_thread())
                    return
            me.acquire()

    def stop(self) -> None:
        """Let every notifier thread finish its jobs and exit; join them."""
        with self.mutex:
            self.stopping = True
            for w in self.idle:
                w.release()
            self.idle.clear()
            threads = list(self.threads)
        for t in threads:
            t.join()


_notifier: _Notifier | None = None
_notifier_lock = threading.Lock()


class _siginfo(ctypes.Structure):
    """The 128-byte ``siginfo_t`` of x86-64/aarch64 for ``rt_sigqueueinfo``:
    si_signo, si_errno, si_code, then (queued signals) si_pid, si_uid and the
    8-byte si_value at offset 24."""

    _fields_ = [
        ("si_signo", ctypes.c_int),
        ("si_errno", ctypes.c_int),
        ("si_code", ctypes.c_int),
        ("_pad0", ctypes.c_int),
        ("si_pid", ctypes.c_int),
        ("si_uid", ctypes.c_uint),
        ("si_value", ctypes.c_uint64),
        ("_rest", ctypes.c_byte * 96),
    ]


assert ctypes.sizeof(_siginfo) == 128


def _notify(notice: _Notice) -> None:
    """Send one notification (never raises for a failed signal: there is no
    one to report it to; the request's own status is already recorded)."""
    global _notifier
    how, signo, value, fn = notice
    if how == SIGEV_SIGNAL:
        info = _siginfo()
        info.si_signo = signo
        info.si_code = SI_ASYNCIO
        info.si_pid = os.getpid()
        info.si_uid = os.getuid()
        info.si_value = value & 0xFFFFFFFFFFFFFFFF
        _syscall.rt_sigqueueinfo(os.getpid(), signo, ctypes.addressof(info))
    elif how == SIGEV_THREAD:
        n = _notifier
        if n is None:
            with _notifier_lock:
                if _notifier is None:
                    _notifier = _Notifier()
                n = _notifier
        n.call(fn, value)


def _check_sigevent(sev: Any) -> _Notice | None:
    if sev is None:
        return None
    if not isinstance(sev, sigevent):
        raise TypeError(f"aio_sigevent must be a sigevent or None, not {type(sev).__name__!r}")
    how = sev.sigev_notify
    if not isinstance(how, int) or isinstance(how, bool):
        raise TypeError(f"sigev_notify must be an int, not {type(how).__name__!r}")
    if how == SIGEV_NONE:
        return None
    if how == SIGEV_SIGNAL:
        signo, value = sev.sigev_signo, sev.sigev_value
        if not isinstance(signo, int) or isinstance(signo, bool):
            raise TypeError(f"sigev_signo must be an int, not {type(signo).__name__!r}")
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(
                f"sigev_value must be an int for SIGEV_SIGNAL, not {type(value).__name__!r}"
            )
        if not 1 <= signo < _NSIG:
            raise _syscall.oserror(errno.EINVAL, "sigev_signo out of range")
        if not -(2**63) <= value < 2**64:
            raise _syscall.oserror(errno.EINVAL, "sigev_value does not fit in a sigval")
        return (how, signo, value, None)
    if how == SIGEV_THREAD:
        fn = sev.sigev_notify_function
        if not callable(fn):
            raise TypeError("sigev_notify_function must be callable for SIGEV_THREAD")
        return (how, 0, sev.sigev_value, fn)
    raise _syscall.oserror(errno.EINVAL, "unknown sigev_notify")


# --- completion ----------------------------------------------------------------------


def _on_done(op: Operation) -> None:
    """An operation of ours finished (in a worker, the reaper, or a
    cancelling thread): record the status, wake waiters, notify -- or, on an
    engine that does not order requests itself, carry the request on.

    There (io_uring) a kernel request is not all of a POSIX request: a write
    on a blocking stream fd that the kernel completed short goes on with the
    rest, as ``write(2)`` on that fd would (io_uring stops at the first
    short transfer), so the request completes when all is written or with
    an error (the bytes written before the error, if any, as ``write(2)``);
    and a request that :func:`aio_cancel` reported ``AIO_NOTCANCELED`` but
    that the kernel then stopped (``-ECANCELED``/``-EINTR``: io_uring's
    cancel of a running request may still interrupt it) is submitted again,
    so that it completes normally."""
    cb: aiocb = op.context
    res = op.result
    assert res is not None
    if cb._lane is not None:
        if res == -errno.ECANCELED or res == -errno.EINTR:
            with _state_lock:
                if cb._op is op and cb._cancelling:
                    cb._parked = res  # the aio_cancel asking decides
                    return
                keep = cb._keep and cb._op is op
            if keep and _carry_on(cb, op, op.buffers, 0):
                return
        elif res > 0 and op.opcode is OpCode.WRITE:
            with memoryview(op.buffers[0]) as view:
                size = view.nbytes
            if res < size and _blocking_stream(op.fd):
                with memoryview(op.buffers[0]) as view, view.cast("B") as b:
                    rest = b[res:]
                if _carry_on(cb, op, (rest,), res):
                    return
        if cb._moved:
            res = cb._moved + res if res >= 0 else cb._moved
    _finish(cb, res)


def _blocking_stream(fd: int) -> bool:
    """Is *fd* a stream (not a regular file or block device) in blocking
    mode: where ``write(2)`` writes all it is given or fails?"""
    try:
        mode = os.fstat(fd).st_mode
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISBLK(mode) or flags & os.O_NONBLOCK)


def _carry_on(cb: aiocb, op: Operation, buffers: tuple[Any, ...], moved: int) -> bool:
    """Go on with the request of *cb* after its operation *op* ended (having
    transferred *moved* bytes): a new operation on *buffers* takes its place
    in the lane and goes to the engine.  False if it cannot (the engine is
    closed, or *cb* moved on): the caller then finishes the request."""
    eng = cb._engine
    if eng is None or eng.closed:
        return False
    nxt = Operation(op.opcode, op.fd, buffers, op.offset, on_done=_on_done, context=cb)
    with _state_lock:
        if cb._op is not op or cb._state != _INPROGRESS:
            for p in nxt.pins:
                p.release()
            return False
        cb._moved += moved
        cb._op = nxt
        cb._transit = nxt
        waiters = cb._waiters  # an aio_cancel waiting for *op* (see _cancel_submitted)
        cb._waiters = None
        if waiters is not None:
            for w in waiters:
                w.wake_locked()
    _hand_over([cb])
    return True


def _finish(cb: aiocb, res: int) -> None:
    with _state_lock:
        if cb._state != _INPROGRESS:  # pragma: no cover - forked child, stale op
            return
        if res < 0:
            cb._error = -res
            cb._return = -1
        else:
            cb._error = 0
            cb._return = res
        cb._state = _DONE
        cb._op = None
        fdset = _by_fd.get(cb._fd)
        if fdset is not None:
            fdset.pop(cb, None)
            if not fdset:
                del _by_fd[cb._fd]
        lane = cb._lane
        released: list[aiocb] | None = None
        if lane is not None:
            cb._lane = None
            lane.active -= 1
            released = _lane_release_locked(cb._fd, lane)
        waiters = cb._waiters
        if waiters is not None:
            cb._waiters = None
            for w in waiters:
                w.wake_locked()
        if _suspenders:
            for w in _suspenders:
                w.wake_locked()
            _suspenders.clear()
        group = cb._group
        cb._group = None
        notice = cb._notice
        cb._notice = None
    if released:
        _hand_over(released)
    if notice is not None:
        _notify(notice)
    if group is None:
        return
    # The list is counted down only after this request's own notification
    # was sent, so the list notification (sent by whichever request is
    # last) always comes after every request's.
    group_notice = None
    with _state_lock:
        if res < 0:
            group.failed = True
        group.remaining -= 1
        if not group.remaining:
            if group.waiter is not None:
                group.waiter.wake_locked()
            group_notice = group.notice
    if group_notice is not None:
        _notify(group_notice)


# --- argument checks -----------------------------------------------------------------


def _check_cb(cb: Any) -> aiocb:
    if not isinstance(cb, aiocb):
        raise TypeError(f"an aiocb is required, not {type(cb).__name__!r}")
    return cb


def _int_field(name: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{name} must be an int, not {type(v).__name__!r}")
    return v


_EMPTY = bytearray()


def _buffer(cb: aiocb, writable: bool) -> Any:
    buf = cb.aio_buf
    nbytes = cb.aio_nbytes
    if nbytes is not None:
        _int_field("aio_nbytes", nbytes)
        if nbytes < 0:
            raise ValueError("aio_nbytes must be >= 0")
    if buf is None:
        if nbytes:
            raise ValueError("aio_buf is None but aio_nbytes is not 0")
        return _EMPTY
    if nbytes is None:
        return buf
    try:
        view = memoryview(buf)
    except TypeError:
        raise TypeError(
            f"aio_buf must be a bytes-like object, not {type(buf).__name__!r}"
        ) from None
    if view.nbytes == nbytes:
        view.release()
        return buf
    if nbytes > view.nbytes:
        size = view.nbytes
        view.release()
        raise ValueError(f"aio_nbytes ({nbytes}) is larger than the buffer ({size} bytes)")
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view[:nbytes]


def _fd_ok(fd: int) -> bool:
    if not 0 <= fd <= _FD_MAX:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return False
    return True


# --- submission ----------------------------------------------------------------------


def _prepare(cb: aiocb, opcode: OpCode, fd: int, check_prio: bool) -> tuple[Operation, int]:
    """Check *cb* and build its Operation; returns (op, immediate -errno or 0)."""
    rw = opcode is OpCode.READ or opcode is OpCode.WRITE
    if rw:
        offset = _int_field("aio_offset", cb.aio_offset)
        prio = _int_field("aio_reqprio", cb.aio_reqprio)
        if check_prio and not 0 <= prio <= AIO_PRIO_DELTA_MAX:
            raise _syscall.oserror(errno.EINVAL, "aio_reqprio out of range")
    notice = _check_sigevent(cb.aio_sigevent)
    err = 0
    if rw:
        buf = _buffer(cb, writable=opcode is OpCode.READ)
        if not 0 <= offset <= _INT64_MAX:
            err = -errno.EINVAL
        op = Operation(opcode, fd, (buf,), offset, on_done=_on_done, context=cb)
    else:
        op = Operation(opcode, fd, (), -1, on_done=_on_done, context=cb)
    if not 0 <= fd <= _FD_MAX:
        err = -errno.EBADF
    cb._notice = notice
    return op, err


def _enqueue(items: list[tuple[aiocb, Operation, int]], group: _Group | None) -> None:
    """Mark the cbs in progress and hand their operations to the engine (or
    hold them back in their lanes); complete at once those with an
    immediate error."""
    eng = _get_engine()
    laned = not isinstance(eng, ThreadEngine)  # the thread engine orders by itself
    serial: dict[int, bool] = {}
    if laned:
        for _, op, err in items:
            fd = op.fd
            if not err and fd not in _lanes and fd not in serial:
                serial[fd] = _is_serial_fd(fd)
    try:
        with _state_lock:
            for cb, op, _err in items:
                if cb._state == _INPROGRESS:
                    for c, _, _ in items:
                        if c is cb:
                            break
                        _unmark_locked(c)
                    raise _syscall.oserror(errno.EINVAL, "aiocb already in progress")
                _mark_locked(cb, op, group, eng)
            if laned:
                ops = []
                for cb, op, err in items:
                    if not err and _lane_admit_locked(cb, op, serial):
                        cb._transit = op
                        ops.append(op)
            else:
                # In transit until the engine has them: an aio_cancel arriving
                # now waits for the hand-over instead of finding nothing.
                ops = []
                for cb, op, err in items:
                    if not err:
                        cb._transit = op
                        ops.append(op)
        if ops and laned:
            reaper = _submitter(eng)
            if reaper is not None:
                reaper.defer([op.context for op in ops])
                ops = []
        if ops:
            try:
                eng.submit(ops)
            except EngineClosedError:
                with _state_lock:
                    for cb, _, _ in items:
                        _unmark_locked(cb)
                    _wake_transit_locked()
                raise _syscall.oserror(errno.EAGAIN, "the AIO engine is shutting down") from None
            _end_transit(ops)
            if laned:
                # Collect what completed inside the submitting io_uring_enter
                # (page-cached reads): recorded here, with no hand-off to the reaper.
                eng.reap(0)
        for _, op, err in items:
            if err:
                op.complete(err)
    except BaseException:
        _recover_enqueue(eng, items)
        raise


def _recover_enqueue(eng: Engine, items: list[tuple[aiocb, Operation, int]]) -> None:
    """An exception came out of :func:`_enqueue` midway -- one from a signal
    handler (Ctrl-C) can come at any call.  The requests the engine did not
    take are not submitted after all (``aio_error`` says EINVAL, as for a cb
    never submitted: the caller may submit it again); those it took, or that
    wait in their lane, complete as usual, and so do those with an immediate
    error.  A no-op after the errors ``_enqueue`` raises itself (those undo
    their marks)."""
    owns = getattr(eng, "owns", None)
    errs: list[tuple[Operation, int]] = []
    with _state_lock:
        for cb, op, err in items:
            if cb._op is not op or cb._state != _INPROGRESS:
                continue  # not marked by this call
            if cb._transit is op:
                cb._transit = None
            if op.state is not OpState.QUEUED:
                continue  # taken (or done)
            if err:
                errs.append((op, err))
            elif not cb._held and not (owns is not None and owns(op)):
                _unmark_locked(cb)
        _wake_transit_locked()
    for op, err in errs:
        op.complete(err)


def _lane_admit_locked(cb: aiocb, op: Operation, serial: dict[int, bool]) -> bool:
    """Enter *cb* in its fd's lane; True if it may go to the engine now,
    False if it is held back (``_state_lock`` held)."""
    fd = op.fd
    lane = _lanes.get(fd)
    if lane is None:
        s = serial.get(fd)
        lane = _lanes[fd] = _Lane(_is_serial_fd(fd) if s is None else s)
    cb._lane = lane
    if not lane.held and (lane.active == 0 or not (lane.serial or op.opcode in _SYNCS)):
        lane.active += 1
        return True
    lane.held.append(cb)
    cb._held = True
    return False


def _lane_release_locked(fd: int, lane: _Lane) -> list[aiocb] | None:
    """Take the held requests of *lane* that may start now (marked in
    transit; the caller hands them over with :func:`_hand_over`); drop the
    lane once empty (``_state_lock`` held)."""
    held = lane.held
    out: list[aiocb] | None = None
    while held:
        head = held[0]
        op = head._op
        assert op is not None
        if lane.active and (lane.serial or op.opcode in _SYNCS):
            break
        held.popleft()
        head._held = False
        head._transit = op
        lane.active += 1
        if out is None:
            out = [head]
        else:
            out.append(head)
    if not lane.active and not held and _lanes.get(fd) is lane:
        del _lanes[fd]
    return out


def _hand_over(cbs: list[aiocb]) -> None:
    """Give released requests (in transit) to their engine, from this thread
    or through the reaper (no lock held)."""
    eng = cbs[0]._engine
    assert eng is not None
    reaper = _submitter(eng)
    if reaper is not None:
        reaper.defer(cbs)
    else:
        _submit_released(cbs)


def _submit_released(cbs: list[aiocb]) -> None:
    """Submit requests in transit.  If the engine was closed under us, they
    and everything held behind them are cancelled."""
    ops = [cb._op for cb in cbs]
    eng = cbs[0]._engine
    assert eng is not None
    try:
        eng.submit(ops)  # type: ignore[arg-type]
    except EngineClosedError:
        doomed: list[Operation] = []
        with _state_lock:
            for cb in cbs:
                lane = cb._lane
                if lane is not None:
                    for h in lane.held:
                        h._held = False
                        h._lane = None
                        doomed.append(h._op)  # type: ignore[arg-type]
                    lane.held.clear()
            _wake_transit_locked()
        for op in [*ops, *doomed]:
            if op is not None and op.state is not OpState.DONE:
                op.complete(-errno.ECANCELED)
        return
    _end_transit(ops)  # type: ignore[arg-type]


def _end_transit(ops: list[Operation]) -> None:
    """The engine has *ops* now: an aio_cancel may ask it to cancel them."""
    with _state_lock:
        for op in ops:
            cb: aiocb = op.context
            if cb._transit is op:
                cb._transit = None
        if _transit_waiters:
            _wake_transit_locked()


def _wake_transit_locked() -> None:
    for w in _transit_waiters:
        w.wake_locked()
    _transit_waiters.clear()


def _mark_locked(cb: aiocb, op: Operation, group: _Group | None, eng: Engine) -> None:
    cb._state = _INPROGRESS
    cb._moved = 0
    cb._keep = False
    cb._error = errno.EINPROGRESS
    cb._return = -1
    cb._op = op
    cb._fd = op.fd
    cb._group = group
    cb._engine = eng
    fdset = _by_fd.get(op.fd)
    if fdset is None:
        fdset = _by_fd[op.fd] = {}
    fdset[cb] = None


def _unmark_locked(cb: aiocb) -> None:
    op = cb._op
    cb._state = _NEW
    cb._op = None
    cb._group = None
    cb._notice = None
    cb._transit = None
    fdset = _by_fd.get(cb._fd)
    if fdset is not None:
        fdset.pop(cb, None)
        if not fdset:
            del _by_fd[cb._fd]
    lane = cb._lane
    if lane is not None:
        cb._lane = None
        if cb._held:
            cb._held = False
            lane.held.remove(cb)
        else:
            lane.active -= 1
        if not lane.active and not lane.held and _lanes.get(cb._fd) is lane:
            del _lanes[cb._fd]
    if op is not None:
        op.on_done = None
        for p in op.pins:
            p.release()


def _submit_one(cb: Any, opcode: OpCode) -> None:
    cb = _check_cb(cb)
    if cb._state == _INPROGRESS:
        raise _syscall.oserror(errno.EINVAL, "aiocb already in progress")
    fd = _int_field("aio_fildes", cb.aio_fildes)
    op, err = _prepare(cb, opcode, fd, True)
    _enqueue([(cb, op, err)], None)


_MMAP: Final = mmap.mmap


def _lane_open(fd: int) -> bool:
    """May a read on *fd* complete now, overtaking nothing in its lane?"""
    lane = _lanes.get(fd)
    return lane is None or not (lane.serial or lane.held)


def aio_read(cb: aiocb) -> None:
    """Queue an asynchronous read of ``cb.aio_nbytes`` bytes from
    ``cb.aio_fildes`` at ``cb.aio_offset`` into ``cb.aio_buf`` (``aio_read(3)``).

    Returns at once.  A bad fd or a negative offset is reported later by
    :func:`aio_error` (EBADF, EINVAL); ``aio_lio_opcode`` is ignored.

    Raises:
        OSError: EINVAL for ``aio_reqprio`` outside ``0..AIO_PRIO_DELTA_MAX``,
            an invalid sigevent, or a cb already in progress.
        TypeError: wrong field types, or a read-only buffer.
        ValueError: ``aio_nbytes`` larger than the buffer (or negative).
    """
    # The page-cache fast path, inline (it is the hot path): the engine's
    # read_nowait, for any writable contiguous buffer (bytearray, mmap,
    # memoryview, array, ctypes...), with or without aio_nbytes, for at most
    # INLINE_MAX bytes (a larger read goes to the engine, so that aio_read
    # returns promptly and a later small read can finish first), and only
    # where it overtakes nothing: not on an fd whose lane is serial or holds
    # requests back (read_nowait itself refuses O_DIRECT, O_APPEND and
    # stream fds, and the thread engine its own held-back work).  Anything
    # unusual (wrong types, a read-only or too short buffer, a bad sigevent)
    # takes the normal path, which reports it.
    read_nowait = _read_nowait
    if read_nowait is None or not isinstance(cb, aiocb) or cb._state == _INPROGRESS:
        _submit_one(cb, OpCode.READ)
        return
    fd = cb.aio_fildes
    off = cb.aio_offset
    prio = cb.aio_reqprio
    buf = cb.aio_buf
    nbytes = cb.aio_nbytes
    tb = type(buf)
    if tb is bytearray or tb is _MMAP:  # len() is the size in bytes
        size = len(buf)
    else:
        try:
            view = memoryview(buf)
        except (TypeError, ValueError):  # not a buffer, or a released view
            size = 0
        else:
            size = 0 if view.readonly or not view.c_contiguous else view.nbytes
    if nbytes is None:
        n = size
    elif type(nbytes) is int and 0 < nbytes <= size:
        n = nbytes
        if n != size:
            buf = memoryview(buf).cast("B")[:n]
    else:
        n = 0
    if (
        0 < n <= INLINE_MAX
        and type(fd) is int
        and type(off) is int
        and type(prio) is int
        and 0 <= prio <= AIO_PRIO_DELTA_MAX
        and 0 <= off <= _INT64_MAX
        and (not _lanes or _lane_open(fd))
    ):
        sev = cb.aio_sigevent
        notice = None if sev is None else _check_sigevent(sev)
        if read_nowait(fd, buf, off, n) is not None:
            cb._error = 0
            cb._return = n
            cb._op = None
            cb._fd = fd
            cb._group = None
            cb._notice = None
            cb._state = _DONE
            if notice is not None:
                _notify(notice)
            return
    _submit_one(cb, OpCode.READ)


def aio_write(cb: aiocb) -> None:
    """Queue an asynchronous write of ``cb.aio_nbytes`` bytes of ``cb.aio_buf``
    to ``cb.aio_fildes`` at ``cb.aio_offset`` (at the end for an O_APPEND fd)
    (``aio_write(3)``).  Errors as :func:`aio_read` (a read-only fd gives
    EBADF through :func:`aio_error`).

    Raises:
        OSError: EINVAL (``aio_reqprio``, sigevent, cb in progress).
        TypeError: wrong field types.
        ValueError: ``aio_nbytes`` larger than the buffer (or negative).
    """
    _submit_one(cb, OpCode.WRITE)


def aio_fsync(op: int, cb: aiocb) -> None:
    """Queue an asynchronous ``fsync`` (``op == os.O_SYNC``) or
    ``fdatasync`` (``os.O_DSYNC``) of ``cb.aio_fildes`` (``aio_fsync(3)``).

    It completes only after every request queued before it on that fd has
    completed.  ``aio_reqprio``, ``aio_buf``, ``aio_offset`` are ignored.

    Raises:
        OSError: EINVAL for another *op* (or a cb in progress, or an invalid
            sigevent); EBADF if the fd is not open.
        TypeError: wrong argument types.
    """
    if not isinstance(op, int) or isinstance(op, bool):
        raise TypeError(f"op must be an int, not {type(op).__name__!r}")
    cb = _check_cb(cb)
    if op == os.O_SYNC:
        code = OpCode.FSYNC
    elif op == os.O_DSYNC:
        code = OpCode.FDATASYNC
    else:
        raise _syscall.oserror(errno.EINVAL, "op must be O_SYNC or O_DSYNC")
    fd = _int_field("aio_fildes", cb.aio_fildes)
    if not _fd_ok(fd):
        raise _syscall.oserror(errno.EBADF)
    if cb._state == _INPROGRESS:
        raise _syscall.oserror(errno.EINVAL, "aiocb already in progress")
    operation, err = _prepare(cb, code, fd, False)
    _enqueue([(cb, operation, err)], None)


def aio_error(cb: aiocb) -> int:
    """The error status of the request of *cb* (``aio_error(3)``).

    Returns:
        ``EINPROGRESS`` while it runs, 0 if it succeeded, ``ECANCELED`` if
        it was cancelled, otherwise the errno it failed with.

    Raises:
        OSError: EINVAL if *cb* was never submitted.
        TypeError: *cb* is not an aiocb.
    """
    if type(cb) is not aiocb:
        cb = _check_cb(cb)
    state = cb._state
    if state == _INPROGRESS:
        return errno.EINPROGRESS
    if state == _NEW:
        raise _syscall.oserror(errno.EINVAL, "aiocb was never submitted")
    return cb._error


def aio_return(cb: aiocb) -> int:
    """The return status of the finished request of *cb*, once
    (``aio_return(3)``).

    Returns:
        The bytes transferred (0 for ``aio_fsync``), or -1 if it failed
        (see :func:`aio_error` for why).

    Raises:
        OSError: EINVAL if *cb* was never submitted or its status was already
            retrieved; EINPROGRESS if the request has not finished.
        TypeError: *cb* is not an aiocb.
    """
    if type(cb) is not aiocb:
        cb = _check_cb(cb)
    with _state_lock:
        state = cb._state
        if state == _DONE:
            cb._state = _RETRIEVED
            return cb._return
    if state == _INPROGRESS:
        raise _syscall.oserror(errno.EINPROGRESS, "the request is still in progress")
    if state == _NEW:
        raise _syscall.oserror(errno.EINVAL, "aiocb was never submitted")
    raise _syscall.oserror(errno.EINVAL, "the return status was already retrieved")


def aio_cancel(fd: int, cb: aiocb | None = None) -> int:
    """Cancel the queued requests of *fd*, or just the request of *cb*
    (``aio_cancel(3)``; with a cb the fd is otherwise ignored).

    Cancelled requests get ``ECANCELED`` / -1 and their normal notification
    (sent before this returns).  A request the thread engine has started is
    not cancelled: it completes normally later.  On io_uring a started
    request is cancelled too where the kernel can stop it (a read or write
    waiting on a pipe or socket, nothing of it written yet); one it cannot
    stop (regular-file I/O already running, a stream write partly done)
    completes normally later.

    Returns:
        ``AIO_CANCELED`` if every request was cancelled, ``AIO_NOTCANCELED``
        if at least one could not be (use :func:`aio_error` for the others),
        ``AIO_ALLDONE`` if all had completed (or *fd* had none).

    Raises:
        OSError: EBADF if *fd* is not open (checked first); EINVAL if *cb*
            was never submitted.
        TypeError: wrong argument types.
    """
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise TypeError(f"fd must be an int, not {type(fd).__name__!r}")
    if cb is not None:
        _check_cb(cb)
    if not _fd_ok(fd):
        raise _syscall.oserror(errno.EBADF)
    held: list[Operation] = []
    released: list[aiocb] = []
    with _state_lock:
        if cb is not None:
            if cb._state == _NEW:
                raise _syscall.oserror(errno.EINVAL, "aiocb was never submitted")
            targets = [cb] if cb._state == _INPROGRESS else []
        else:
            targets = list(_by_fd.get(fd, ()))
        # Requests held back in their lane never reached the engine: take
        # them out first (all of them before any running one is cancelled,
        # so cancelling a running one releases nothing we are cancelling).
        work: list[tuple[aiocb, Operation, Engine]] = []
        for c in targets:
            op, eng = c._op, c._engine
            if op is None or eng is None:  # pragma: no cover - defensive
                continue
            lane = c._lane
            if c._held and lane is not None:
                lane.held.remove(c)
                c._held = False
                c._lane = None
                held.append(op)
                more = _lane_release_locked(c._fd, lane)
                if more:
                    released.extend(more)
            else:
                work.append((c, op, eng))
    result = AIO_ALLDONE
    for op in held:
        op.complete(-errno.ECANCELED)
        result = AIO_CANCELED
    if released:
        _hand_over(released)
    for c, op, eng in work:
        outcome = _cancel_submitted(c, op, eng)
        if outcome is CancelOutcome.RUNNING:
            result = AIO_NOTCANCELED
        elif outcome is CancelOutcome.CANCELED and result == AIO_ALLDONE:
            result = AIO_CANCELED
    return result


def _cancel_submitted(cb: aiocb, op: Operation, eng: Engine) -> CancelOutcome:
    """Ask the engine to cancel *op* (the request of *cb*) and say honestly
    what became of it; a cancelled one has been recorded and notified when
    this returns."""
    # Wait until the request is really in the engine's hands.
    while True:
        with _state_lock:
            if cb._op is not op:
                if cb._state == _INPROGRESS and (cb._moved or cb._keep):
                    cb._keep = True  # carried on in parts (see _on_done)
                    return CancelOutcome.RUNNING
                return CancelOutcome.DONE
            if cb._transit is not op:
                break
            w = _Waiter()
            _transit_waiters.append(w)
        w.lock.acquire()
    if isinstance(eng, ThreadEngine):
        outcome = eng.cancel(op)
        if outcome is CancelOutcome.CANCELED:
            _wait_done(cb, op)  # a reap-mode engine: let the completion land
        return outcome
    # An engine posix keeps lanes for (see _on_done): a request partly done
    # or already reported running is not cancelled; one the kernel stops
    # while we ask is decided here, from the engine's answer.
    with _state_lock:
        if cb._op is not op:
            return CancelOutcome.DONE
        if cb._moved or cb._keep:
            cb._keep = True
            return CancelOutcome.RUNNING
        cb._cancelling = True
    outcome = CancelOutcome.RUNNING  # what an exception out of cancel leaves
    try:
        outcome = eng.cancel(op)
    finally:
        with _state_lock:
            cb._cancelling = False
            parked, cb._parked = cb._parked, None
            if outcome is CancelOutcome.RUNNING:
                cb._keep = True
        if parked is not None and outcome is CancelOutcome.RUNNING:
            if not _carry_on(cb, op, op.buffers, 0):
                _finish(cb, parked)
            parked = None
    if parked is not None:  # CANCELED or DONE, and its completion is here
        _finish(cb, parked)
        return CancelOutcome.CANCELED if parked == -errno.ECANCELED else CancelOutcome.DONE
    if outcome is CancelOutcome.RUNNING:
        return outcome
    # CANCELED or DONE: its completion is posted; wait until it is recorded,
    # so that aio_error no longer says EINPROGRESS when we return.
    _wait_done(cb, op)
    with _state_lock:
        if cb._op is not op and cb._state == _INPROGRESS and cb._moved:
            cb._keep = True  # stopped part-way: it goes on to the end
            return CancelOutcome.RUNNING
    if outcome is CancelOutcome.CANCELED and op.result != -errno.ECANCELED:
        return CancelOutcome.DONE  # it finished in that very instant
    return outcome


def _wait_done(cb: aiocb, op: Operation) -> None:
    """Wait until the completion of *op* (the request of *cb*) is recorded."""
    with _state_lock:
        if cb._op is not op:
            return
        w = _Waiter()
        _add_waiter_locked(cb, w)
    w.lock.acquire()


def _add_waiter_locked(cb: aiocb, w: _Waiter) -> None:
    if cb._waiters is None:
        cb._waiters = [w]
    else:
        cb._waiters.append(w)


def aio_suspend(cbs: Iterable[aiocb | None], timeout: float | None = None) -> None:
    """Wait until at least one request of *cbs* is no longer in progress
    (``aio_suspend(3)``).  None entries are ignored; a cb never submitted
    counts as not in progress; an empty list returns at once.

    Args:
        cbs: aiocbs (or None).
        timeout: seconds to wait at most; None waits for ever.

    Raises:
        OSError: EAGAIN if the timeout expired first; EINVAL for a negative
            or NaN timeout.
        TypeError: wrong argument types.
    """
    if timeout is not None:
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
            raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__!r}")
        if math.isnan(timeout) or timeout < 0:
            raise _syscall.oserror(errno.EINVAL, "invalid timeout")
    if isinstance(cbs, aiocb):
        raise TypeError("aio_suspend takes a list of aiocbs")
    pending: list[aiocb] = []
    for cb in cbs:
        if cb is None:
            continue
        if type(cb) is not aiocb and not isinstance(cb, aiocb):
            raise TypeError(f"an aiocb or None is required, not {type(cb).__name__!r}")
        if cb._state != _INPROGRESS:
            return
        pending.append(cb)
    if not pending:
        return
    eng = _engine
    if eng is not None and not isinstance(eng, ThreadEngine) and _submitter(eng) is None:
        # Deliver what the kernel has posted ourselves, no hand-off (not in a
        # short-lived thread on io_uring: it could not submit what that releases).
        eng.reap(0)
        for cb in pending:
            if cb._state != _INPROGRESS:
                return
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        # Register, then re-check under the lock that completions take: a
        # completion either happened before (seen here) or will wake us.
        w = _Waiter()
        with _state_lock:
            for cb in pending:
                if cb._state != _INPROGRESS:
                    return
            _suspenders.append(w)
        try:
            if deadline is None:
                got = w.lock.acquire()
            else:
                remaining = deadline - time.monotonic()
                got = remaining > 0 and w.lock.acquire(
                    timeout=min(remaining, threading.TIMEOUT_MAX)
                )
        finally:
            if not w.woken:
                with _state_lock:
                    if not w.woken:
                        _suspenders.remove(w)
        if not got:
            for cb in pending:
                if cb._state != _INPROGRESS:
                    return
            raise _syscall.oserror(errno.EAGAIN)


def lio_listio(mode: int, cbs: Iterable[aiocb | None], sig: sigevent | None = None) -> None:
    """Submit a list of requests, each as its ``aio_lio_opcode`` says
    (``LIO_READ``, ``LIO_WRITE``; ``LIO_NOP`` and None entries are skipped)
    (``lio_listio(3)``).

    Args:
        mode: ``LIO_WAIT`` (return when all are done) or ``LIO_NOWAIT``
            (return at once; *sig* is sent when all are done, after every
            request's own notification).
        cbs: the requests.
        sig: the list's notification (ignored with ``LIO_WAIT``).

    A bad ``aio_lio_opcode`` or a negative offset shows up as EINVAL from
    :func:`aio_error` on that cb; so does an out-of-range ``aio_reqprio``
    (the request is not queued, and the call raises EIO).

    Raises:
        OSError: EINVAL for a bad *mode* (or *sig*, or a cb in progress or
            listed twice); EIO if, with ``LIO_WAIT``, any request failed
            or, with either mode, a request could not be queued.
        TypeError: wrong argument types (nothing is queued).
        ValueError: a buffer shorter than ``aio_nbytes`` (nothing is queued).
    """
    if not isinstance(mode, int) or isinstance(mode, bool):
        raise TypeError(f"mode must be an int, not {type(mode).__name__!r}")
    if isinstance(cbs, aiocb):
        raise TypeError("lio_listio takes a list of aiocbs")
    entries = list(cbs)
    if mode != LIO_WAIT and mode != LIO_NOWAIT:
        raise _syscall.oserror(errno.EINVAL, "mode must be LIO_WAIT or LIO_NOWAIT")
    list_notice = _check_sigevent(sig) if mode == LIO_NOWAIT else None
    items: list[tuple[aiocb, Operation, int]] = []
    seen: set[int] = set()
    not_queued = False
    try:
        for cb in entries:
            if cb is None:
                continue
            _check_cb(cb)
            opc = _int_field("aio_lio_opcode", cb.aio_lio_opcode)
            if opc == LIO_NOP:
                continue
            if id(cb) in seen or cb._state == _INPROGRESS:
                raise _syscall.oserror(errno.EINVAL, "aiocb already in progress")
            seen.add(id(cb))
            fd = _int_field("aio_fildes", cb.aio_fildes)
            if opc in (LIO_READ, LIO_WRITE):
                prio = _int_field("aio_reqprio", cb.aio_reqprio)
                code = OpCode.READ if opc == LIO_READ else OpCode.WRITE
                op, err = _prepare(cb, code, fd, False)
                if not 0 <= prio <= AIO_PRIO_DELTA_MAX:
                    err = -errno.EINVAL
                    not_queued = True
            else:
                _check_sigevent(cb.aio_sigevent)
                op, err = _prepare(cb, OpCode.NOP, fd, False)
                err = -errno.EINVAL
            items.append((cb, op, err))
    except BaseException:
        for _, op, _ in items:
            for p in op.pins:
                p.release()
        raise
    waiter = _Waiter() if mode == LIO_WAIT else None
    if not items:
        if list_notice is not None:
            _notify(list_notice)
        return
    group = _Group(len(items), list_notice, waiter)
    _enqueue(items, group)
    if waiter is not None:
        waiter.lock.acquire()
        if group.failed:
            raise _syscall.oserror(errno.EIO)
    elif not_queued:
        raise _syscall.oserror(errno.EIO)


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
    global _notifier
    held: list[Operation] = []
    with _state_lock:
        eng, ours, reaper = _engine, _engine_is_ours, _reaper
        _uninstall_locked()
        for lane in _lanes.values():
            for c in lane.held:
                c._held = False
                c._lane = None
                held.append(c._op)  # type: ignore[arg-type]
            lane.held.clear()
    for op in held:
        op.complete(-errno.ECANCELED)
    _retire(eng, ours, reaper)
    _close_orphans()
    n = _notifier
    if n is not None:
        n.stop()


def _at_exit() -> None:
    """At interpreter exit, close an io_uring engine we own (cancelling what
    is in flight: this cannot block for ever).  The thread engine is left to
    die with the process, as glibc's helpers do: a worker blocked on an empty
    pipe would never let a close finish."""
    eng = _engine
    if _engine_is_ours and eng is not None and eng.name == "uring":
        _shutdown()


atexit.register(_at_exit)


def _before_fork() -> None:
    _state_lock.acquire()


def _after_fork_parent() -> None:
    _state_lock.release()


def _after_fork_child() -> None:
    global _state_lock, _engine, _engine_is_ours, _reaper, _notifier, _notifier_lock, _choice
    global _read_nowait
    _state_lock = threading.Lock()
    _notifier_lock = threading.Lock()
    for fdset in _by_fd.values():
        for cb in fdset:
            cb._state = _NEW
            cb._op = None
            cb._waiters = None
            cb._group = None
            cb._notice = None
            cb._lane = None
            cb._held = False
            cb._transit = None
            cb._cancelling = False
            cb._parked = None
    _by_fd.clear()
    _lanes.clear()
    _suspenders.clear()
    _transit_waiters.clear()
    eng = _engine
    if eng is not None and _engine_is_ours:
        if isinstance(eng, ThreadEngine):
            eng.forget_after_fork()
        elif eng.name == "uring":
            # Closed on first use here (it then only drops the child's copies
            # of the ring fd and mappings): not now, as xaio.uring's own fork
            # hook, which tells the engine it is in a child, may not have run
            # yet, and the parent's reaper may have held the engine's lock.
            _orphans.append(eng)
        # a "linux" engine is dropped: its threads and AIO context are the parent's
    if isinstance(_choice, Engine):
        _choice = "thread"  # the caller's engine belongs to the parent
    _engine = None
    _engine_is_ours = False
    _reaper = None
    _read_nowait = None
    _notifier = None


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child
)
