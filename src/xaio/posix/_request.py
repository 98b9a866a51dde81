"""A POSIX AIO request: the ``aiocb`` and what it records of its request.

An aiocb is the request: besides the fields the caller fills in, it holds
the request's status (never submitted, in progress, done, its result
retrieved), the engine operation that runs it, who waits for it and the
``lio_listio`` list it belongs to.  ``_runtime._state_lock`` guards these.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from xaio._ops import Operation
from xaio.posix._notify import Notice, sigevent

if TYPE_CHECKING:
    from xaio._lanes import Lane
    from xaio.engine import Engine

LIO_NOP = 2

# aiocb states
_NEW = 0  # never submitted (or submitted in the parent before fork)
_INPROGRESS = 1
_DONE = 2  # result available
_RETRIEVED = 3  # aio_return has taken it


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
        self._notice: Notice | None = None
        self._group: _Group | None = None
        self._engine: Engine | None = None
        self._lane: Lane[aiocb] | None = None  # its fd's lane (engines that do not order)
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


aiocb.__module__ = "xaio.posix"


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

    def __init__(self, remaining: int, notice: Notice | None, waiter: _Waiter | None) -> None:
        self.remaining = remaining
        self.failed = False
        self.notice = notice
        self.waiter = waiter


def _check_cb(cb: Any) -> aiocb:
    if not isinstance(cb, aiocb):
        raise TypeError(f"an aiocb is required, not {type(cb).__name__!r}")
    return cb


def _int_field(name: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{name} must be an int, not {type(v).__name__!r}")
    return v
