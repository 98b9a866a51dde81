"""A POSIX AIO request: the ``aiocb`` and the state machine of its request.

An aiocb *is* the request: besides the fields the caller fills in, it holds
the request's state, the engine operation that runs it, its result, who
waits for it and the ``lio_listio`` list it belongs to.  The state is one
field, ``_state``, and changes only through the transition methods below,
which check that the change is legal (a bug otherwise: ``StateError``) and
do no I/O, so that they are tested without files or threads
(``tests/posix/test_posix_request.py``).  Their callers hold
``_runtime._state_lock``; the readers that take no lock (``aio_error``,
``aio_return``, ``aio_suspend``, below and in :mod:`xaio.posix`) see the
result before the state, because every transition stores the state last.

::

    NEW/DONE/RETRIEVED --begin--> TRANSIT --enter--> HELD --release--> TRANSIT
    TRANSIT --handed--> ACTIVE --ask_cancel--> CANCELLING --answered--> ACTIVE
    ACTIVE/CANCELLING --carry--> TRANSIT        (the next part of a request)
    HELD --unlane--> TRANSIT                    (cancelled before it started)
    HELD/TRANSIT/ACTIVE/CANCELLING --finish--> DONE --retrieve--> RETRIEVED
    NEW/DONE/RETRIEVED --complete_now--> DONE   (the page-cache fast path)
    TRANSIT/HELD --give_back--> NEW             (not submitted after all)
    any --forget--> NEW                         (a forked child)

- ``HELD``: waiting in its fd's lane (``xaio._lanes``); the engine has not
  seen it, so a cancel takes it out at once.
- ``TRANSIT``: on its way to the engine (or to its immediate error); an
  ``aio_cancel`` waits until the engine has it before asking the engine.
  Once ``submit`` returned, the submitter marks the request ``_sent``
  without the lock (one lock take per hand-off, see
  ``xaio.posix._dispatch._end_transit``); it stays ``TRANSIT`` until an
  ``aio_cancel`` that finds the mark moves it on (``handed``), or it ends.
- ``ACTIVE``: the engine has it.  ``CANCELLING``: an ``aio_cancel`` is
  asking the engine about it; a completion that says ECANCELED or EINTR
  meanwhile is *parked* for that cancel to decide (see :meth:`aiocb._on_result`).
- A request done in parts (a stream write the kernel completed short)
  counts the bytes of its earlier parts in ``_moved``; ``_keep`` says an
  ``aio_cancel`` answered ``AIO_NOTCANCELED``, so it must run to the end.
"""

from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING, Any, Final

from xaio import _syscall
from xaio._ops import Operation
from xaio.posix._notify import Notice, sigevent

if TYPE_CHECKING:
    from xaio._lanes import Lane
    from xaio.engine import Engine

#: glibc's value (<aio.h>), the default ``aio_lio_opcode``; exported by xaio.posix.
LIO_NOP: Final = 2

# aiocb._state: not in progress (the first three), then in progress (>= HELD)
NEW: Final = 0  # never submitted, given back, or submitted in the parent before fork
DONE: Final = 1  # finished: _error and _return hold the result
RETRIEVED: Final = 2  # aio_return has taken the result
HELD: Final = 3
TRANSIT: Final = 4
ACTIVE: Final = 5
CANCELLING: Final = 6
_NAMES: Final = ("new", "done", "retrieved", "held", "in transit", "active", "cancelling")

# what a completion of the current operation means (aiocb._on_result)
FINISH: Final = 0  # the request is complete
PARK: Final = 1  # the aio_cancel asking decides
RESUBMIT: Final = 2  # stopped though it must run to the end: submit it again

_STOPPED = (-errno.ECANCELED, -errno.EINTR)


class StateError(RuntimeError):
    """A transition the state machine does not allow (a bug in xaio)."""


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
        "_fildes",
        "aio_offset",
        "_buf",
        "_nbytes",
        "_reqprio",
        "_sigevent",
        "aio_lio_opcode",
        "_shape",
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
        "_moved",
        "_keep",
        "_parked",
        "_sent",
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
        #: what the page-cache fast path of aio_read found of the fields
        #: below but aio_offset (see xaio.posix._fast_shape); None: not looked
        #: at since one of them was set
        self._shape: tuple[Any, ...] | None = None
        if type(self) is aiocb:
            self._fildes = aio_fildes
            self._buf = aio_buf
            self._nbytes = aio_nbytes
            self._reqprio = aio_reqprio
            self._sigevent = aio_sigevent
        else:  # a subclass may define these fields its own way
            self.aio_fildes = aio_fildes
            self.aio_buf = aio_buf
            self.aio_nbytes = aio_nbytes
            self.aio_reqprio = aio_reqprio
            self.aio_sigevent = aio_sigevent
        self.aio_offset = aio_offset
        self.aio_lio_opcode = aio_lio_opcode
        self._state = NEW
        self._error = 0
        self._return = -1
        self._op: Operation | None = None
        self._fd = -1
        self._waiters: list[_Waiter] | None = None
        self._notice: Notice | None = None
        self._group: _Group | None = None
        self._engine: Engine | None = None
        self._lane: Lane[aiocb] | None = None  # its fd's lane (engines that do not order)
        self._moved = 0  # bytes the parts before the current one transferred
        self._keep = False  # aio_cancel said AIO_NOTCANCELED: it runs to the end
        self._parked: int | None = None  # a -ECANCELED/-EINTR that a cancel decides
        #: the operation its submitter saw the engine take, marked without the
        #: lock (see xaio.posix._dispatch._end_transit): a hint, not a state
        self._sent: Operation | None = None

    # The fields the fast path of aio_read checks once, not at every call:
    # setting one drops what it found (aio_offset, which a loop sets per
    # request, is a plain field, checked at each call).

    @property
    def aio_fildes(self) -> int:
        """The file descriptor."""
        return self._fildes

    @aio_fildes.setter
    def aio_fildes(self, value: int) -> None:
        self._fildes = value
        self._shape = None

    @property
    def aio_buf(self) -> Any:
        """The buffer."""
        return self._buf

    @aio_buf.setter
    def aio_buf(self, value: Any) -> None:
        self._buf = value
        self._shape = None

    @property
    def aio_nbytes(self) -> int | None:
        """The bytes to transfer (None: ``len(aio_buf)``)."""
        return self._nbytes

    @aio_nbytes.setter
    def aio_nbytes(self, value: int | None) -> None:
        self._nbytes = value
        self._shape = None

    @property
    def aio_reqprio(self) -> int:
        """The request priority decrease."""
        return self._reqprio

    @aio_reqprio.setter
    def aio_reqprio(self, value: int) -> None:
        self._reqprio = value
        self._shape = None

    @property
    def aio_sigevent(self) -> sigevent | None:
        """The notification (None: ``SIGEV_NONE``)."""
        return self._sigevent

    @aio_sigevent.setter
    def aio_sigevent(self, value: sigevent | None) -> None:
        self._sigevent = value
        self._shape = None

    def __repr__(self) -> str:
        return (
            f"<aiocb fd={self.aio_fildes!r} offset={self.aio_offset!r} "
            f"nbytes={self.aio_nbytes!r} {_NAMES[self._state]}>"
        )

    # -- the state machine (callers hold _runtime._state_lock) ----------------------

    def _expect(self, *states: int) -> None:
        if self._state not in states:
            raise StateError(
                f"{_NAMES[self._state]} request: expected {[_NAMES[s] for s in states]}"
            )

    @property
    def _in_progress(self) -> bool:
        return self._state >= HELD

    def _begin(self, op: Operation, group: _Group | None, engine: Engine) -> None:
        """Submitted: in progress from now on, in transit to *engine* (or to
        its immediate error).

        Raises:
            OSError: EINVAL if the request is already in progress (the
                caller's error, not a bug).
        """
        if self._state >= HELD:
            raise _syscall.oserror(errno.EINVAL, "aiocb already in progress")
        self._error = errno.EINPROGRESS
        self._return = -1
        self._op = op
        self._fd = op.fd
        self._group = group
        self._engine = engine
        self._lane = None
        self._moved = 0
        self._keep = False
        self._parked = None
        self._sent = None
        self._state = TRANSIT

    def _enter(self, lane: Lane[aiocb], admitted: bool) -> None:
        """Entered in its fd's lane, which *admitted* it (it goes on to the
        engine) or holds it back (the caller appended it to ``lane.held``)."""
        self._expect(TRANSIT)
        self._lane = lane
        if not admitted:
            self._state = HELD

    def _release(self) -> None:
        """Its lane lets it start: in transit to the engine."""
        self._expect(HELD)
        self._state = TRANSIT

    def _unlane(self) -> Operation:
        """Taken out of its lane before it started (to be cancelled); returns
        its operation, which the caller completes."""
        self._expect(HELD)
        self._lane = None
        self._state = TRANSIT
        assert self._op is not None
        return self._op

    def _handed(self, op: Operation) -> bool:
        """The engine has taken *op*: True if that moved the request on
        (False: it completed meanwhile, or *op* is no longer its own)."""
        if self._state == TRANSIT and self._op is op:
            self._state = ACTIVE
            return True
        return False

    def _ask_cancel(self, op: Operation) -> bool:
        """An ``aio_cancel`` is about to ask the engine to cancel *op*: True
        if it may (the request is active on *op* and not bound to run to
        the end); False otherwise."""
        if self._state < ACTIVE or self._op is not op or self._moved or self._keep:
            return False
        self._state = CANCELLING
        return True

    def _answered(self, running: bool) -> int | None:
        """The engine answered the cancel (*running*: it could not stop the
        request, which then runs to the end).  Returns the completion parked
        meanwhile (-ECANCELED or -EINTR), or None."""
        parked, self._parked = self._parked, None
        if running:
            self._keep = True
        if self._state == CANCELLING:
            self._state = ACTIVE
        return parked

    def _on_result(self, op: Operation, res: int) -> int:
        """What the completion *res* of *op* means: ``FINISH``, ``PARK``
        (recorded here: the asking ``aio_cancel`` decides) or ``RESUBMIT``
        (the kernel stopped a request an ``aio_cancel`` reported running)."""
        if res in _STOPPED and self._op is op:
            if self._state == CANCELLING:
                self._parked = res
                return PARK
            if self._keep and self._state >= HELD:
                return RESUBMIT
        return FINISH

    def _carry(self, op: Operation, nxt: Operation, moved: int) -> bool:
        """Its operation *op* ended having moved *moved* bytes; *nxt* goes on
        with the rest, in transit to the engine.  False if *op* is no longer
        its current operation (the caller finishes nothing then)."""
        if self._op is not op or self._state < TRANSIT:
            return False
        self._moved += moved
        self._op = nxt
        self._state = TRANSIT
        return True

    def _total(self, res: int) -> int:
        """The request's result from its last part's *res*: the bytes of the
        earlier parts added (they were transferred even if the last failed)."""
        if self._moved:
            return self._moved + res if res >= 0 else self._moved
        return res

    def _finish(self, res: int) -> bool:
        """Complete the request with *res* (bytes or -errno).  False if it was
        not in progress (a stale operation in a forked child)."""
        if self._state < HELD:
            return False
        if res < 0:
            self._error = -res
            self._return = -1
        else:
            self._error = 0
            self._return = res
        self._op = None
        self._sent = None
        self._lane = None
        self._state = DONE
        return True

    def _complete_now(self, n: int) -> None:
        """The page-cache fast path did the whole read (*n* bytes) at once.
        Not in progress before, so it has no operation, lane, list or
        notice to clear."""
        self._error = 0
        self._return = n
        self._state = DONE

    def _give_back(self) -> Operation | None:
        """Not submitted after all: back to NEW (``aio_error`` says EINVAL).
        Returns the operation, whose buffers the caller releases."""
        self._expect(TRANSIT, HELD)
        op = self._op
        self._op = None
        self._group = None
        self._notice = None
        self._lane = None
        self._state = NEW
        return op

    def _forget(self) -> None:
        """In a forked child: the parent's request does not exist here."""
        self._op = None
        self._waiters = None
        self._group = None
        self._notice = None
        self._lane = None
        self._parked = None
        self._sent = None
        self._state = NEW


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


# -- the queries of the state machine (no lock: see the module docstring) ----------

_EINPROGRESS: Final = errno.EINPROGRESS


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
    if state >= HELD:
        return _EINPROGRESS
    if state == NEW:
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
    # DONE -> RETRIEVED without the lock: the result is stored before the
    # state that says DONE, and only a concurrent aio_return of the same
    # aiocb (which C leaves undefined) could see DONE twice.
    if cb._state == DONE:
        cb._state = RETRIEVED
        return cb._return
    if cb._state >= HELD:
        raise _syscall.oserror(errno.EINPROGRESS, "the request is still in progress")
    if cb._state == NEW:
        raise _syscall.oserror(errno.EINVAL, "aiocb was never submitted")
    raise _syscall.oserror(errno.EINVAL, "the return status was already retrieved")


aio_error.__module__ = aio_return.__module__ = "xaio.posix"


def _check_cb(cb: Any) -> aiocb:
    if not isinstance(cb, aiocb):
        raise TypeError(f"an aiocb is required, not {type(cb).__name__!r}")
    return cb


def _int_field(name: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{name} must be an int, not {type(v).__name__!r}")
    return v
