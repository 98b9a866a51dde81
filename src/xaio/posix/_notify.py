"""POSIX AIO notification: ``sigevent``, ``SIGEV_SIGNAL`` (queued with
``rt_sigqueueinfo``, ``si_code == SI_ASYNCIO``) and ``SIGEV_THREAD`` (on
notifier threads that block every signal); see the essay of
:mod:`xaio.posix`."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from xaio import _syscall
from xaio.threads import start_thread_blocking_signals

SIGEV_SIGNAL: Final = 0
SIGEV_NONE: Final = 1
SIGEV_THREAD: Final = 2
#: ``si_code`` of a signal sent for an asynchronous I/O completion.
SI_ASYNCIO: Final = -4

_NSIG = 65

#: Seconds an idle notifier thread waits for work before it exits
#: (``aio_init``'s ``idle_time``).
idle_time = 1.0


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


sigevent.__module__ = "xaio.posix"

#: A checked sigevent: (notify, signo, value, function); None for SIGEV_NONE.
Notice = tuple[int, int, Any, Any]


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
                    wait = idle_time
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
            if me.acquire(timeout=wait):
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


def notify(notice: Notice) -> None:
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


def check_sigevent(sev: Any) -> Notice | None:
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


def stop() -> None:
    """Let every notifier thread finish its jobs and exit."""
    n = _notifier
    if n is not None:
        n.stop()


def after_fork_child() -> None:
    """In a forked child: the parent's notifier threads do not exist here."""
    global _notifier, _notifier_lock
    _notifier_lock = threading.Lock()
    _notifier = None
