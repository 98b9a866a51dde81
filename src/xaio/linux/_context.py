"""IOContext and the io_* functions: the raw (-errno) core that xaio.libaio
shares, and the public API in Python's convention.  The facts they rest on are
the essay of :mod:`xaio.linux`."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
import warnings
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from xaio import _syscall
from xaio._abi import ARCH
from xaio._abi.aio import (
    AIO_RING_INCOMPAT_FEATURES,
    AIO_RING_MAGIC,
    IO_EVENT_STRUCT,
    io_event,
)
from xaio._syscall import Timespec, check, oserror, timespec_from_seconds
from xaio.linux._iocb import (
    _KEY,
    _KEY_OFFSET,
    _U32,
    _U64,
    Iocb,
    IOEvent,
    _claim,
    _new_event,
    _pin_claimed,
)

if TYPE_CHECKING:
    from xaio.linux._batch import IOBatch

# User-space reaping of the completion ring relies on x86-64's memory model.
_USER_RING = ARCH == "x86_64"
_FAST_SUBMIT = _syscall.fast_syscall("io_submit")
#: io_submit plugs the block queue for more than 2 requests: the device sees a
#: batch only when the call ends.  Submitting in small chunks keeps it busy.
_SUBMIT_CHUNK = 4
#: The first call of an io_submit of more than _SPLIT_AFTER requests takes one
#: request: the device sees it while the call runs, and starts on it while the
#: rest are registered, pinned and submitted.  A smaller batch has all that done
#: before its first call, which costs less than the split's own bookkeeping.
_FIRST_CHUNK = 1
_SPLIT_AFTER = 16
_FAST_GETEVENTS = _syscall.fast_syscall("io_getevents")
_iter_events = IO_EVENT_STRUCT.iter_unpack


# ---------------------------------------------------------------------------------
# IOContext
# ---------------------------------------------------------------------------------

#: Live contexts of this process by kernel id, so that a raw-id io_destroy
#: marks the IOContext object destroyed too.
_live: weakref.WeakValueDictionary[int, IOContext] = weakref.WeakValueDictionary()
_live_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # Contexts are not inherited: the child must never use, read or destroy them.
    for ctx in list(_live.values()):
        ctx._forked_away()
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class IOContext:
    """A Linux AIO context (``aio_context_t``), made by :func:`io_setup`.

    ``id`` is the kernel's context id (an int).  As a context manager, leaving
    the ``with`` block destroys it (unless already destroyed).  Holds a strong
    reference to every in-flight :class:`Iocb` (and so to its buffers) until
    its event is reaped or the context is destroyed.  Garbage-collecting a live
    context destroys it with a ``ResourceWarning``.
    """

    __slots__ = (
        "id",
        "nr_events",
        "_ring_nr",
        "_inflight",
        "_lock",
        "_unmap_lock",
        "_batches",
        "_destroyed",
        "_foreign",
        "_stats",
        "_cid",
        "_ring",
        "_waiters",
        "_spare_events",
        "_spare_ptrs",
        "__weakref__",
    )

    def __init__(self, ctx_id: int, nr_events: int) -> None:
        self.id = ctx_id
        self.nr_events = nr_events
        # The ring's real size (the kernel rounds nr_events up); fresh from
        # io_setup, so the ring is certainly mapped.
        self._ring_nr = _syscall.aio_ring_at(ctx_id).nr if _USER_RING else 1 << 20
        self._inflight: dict[int, Iocb] = {}
        self._lock = threading.Lock()
        # Held while the ring may be unmapped (io_destroy) and while IOBatch
        # reads it from user space.
        self._unmap_lock = threading.Lock()
        # IOBatch objects on this context: kept alive (with their iocbs and
        # pinned buffers) until the context is destroyed or they are closed.
        self._batches: set[IOBatch] = set()
        self._destroyed = False
        self._foreign = False
        self._stats = {"submitted": 0, "reaped": 0}
        self._cid = ctypes.c_void_p(ctx_id)
        # The completion ring in user memory, read by io_getevents (None where
        # it cannot be, see _user_ring); under _unmap_lock, while alive.
        self._ring: memoryview | None = _user_ring(self)[0]
        # Threads inside the io_getevents system call on this context (counted
        # under _unmap_lock): while there are any, the kernel moves the ring's
        # head, so io_getevents does not read the ring itself.
        self._waiters = 0
        # io_event arrays for that system call, reused (one per waiting thread).
        self._spare_events: list[Any] = []
        # Pointer arrays for io_submit, reused (one per submitting thread).
        self._spare_ptrs: list[_Pointers] = []
        with _live_lock:
            _live[ctx_id] = self

    # -- state ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once destroyed (or, in a forked child, always)."""
        return self._destroyed or self._foreign

    def _forked_away(self) -> None:
        self._foreign = True
        self._ring = None  # never read the parent's ring (SPEC 2.6)
        # The parent's requests are not ours to complete; forget them without
        # touching the kernel.  (The child's copy of the memory is private.)
        self._inflight = {}
        self._batches = set()

    def _check_usable(self) -> None:
        if self._destroyed or self._foreign:
            raise oserror(errno.EINVAL)

    def statistics(self) -> dict[str, Any]:
        """Counters: in flight, submitted, reaped; and whether it is closed."""
        return {
            "id": self.id,
            "nr_events": self.nr_events,
            "in_flight": len(self._inflight),
            "closed": self.closed,
            **self._stats,
        }

    # -- operations ---------------------------------------------------------------
    def submit(self, iocbs: Iterable[Iocb]) -> int:
        """Same as :func:`io_submit` on this context."""
        return io_submit(self, iocbs)

    def getevents(self, min_nr: int, nr: int, timeout: float | None = None) -> list[IOEvent]:
        """Same as :func:`io_getevents` on this context."""
        return io_getevents(self, min_nr, nr, timeout)

    def cancel(self, iocb: Iocb) -> IOEvent | None:
        """Same as :func:`io_cancel` on this context."""
        return io_cancel(self, iocb)

    def destroy(self) -> None:
        """Same as :func:`io_destroy` on this context."""
        self._destroy()

    def _destroy(self) -> int:
        """Destroy; return 0 or -errno (the libaio convention)."""
        if self._destroyed or self._foreign:
            return -errno.EINVAL
        with self._unmap_lock:
            ret: int = _syscall.io_destroy(self.id)
            if ret >= 0 or ret == -errno.EINVAL:
                # The ring is unmapped: mark it before a reader waiting for
                # this lock checks whether it may read it.
                self._destroyed = True
                self._ring = None
        if ret < 0 and ret != -errno.EINVAL:
            return ret
        # On success every request has completed (or was cancelled): the kernel
        # will not touch any buffer of this context again, so release them.  On
        # EINVAL the kernel no longer knows this context either.
        with self._lock:
            self._destroyed = True
            self._ring = None
            inflight, self._inflight = self._inflight, {}
        for iocb_obj in inflight.values():
            iocb_obj._release()
        batches, self._batches = self._batches, set()
        for batch in batches:
            batch._context_destroyed()
        with _live_lock:
            if _live.get(self.id) is self:
                del _live[self.id]
        return ret

    def _events(self, raw: list[tuple[int, int, int, int]]) -> list[IOEvent]:
        """The :class:`IOEvent` of each ``(data, obj, res, res2)`` taken from
        the kernel: its Iocb leaves the in-flight table and its buffers are
        released (as :meth:`Iocb._release` does)."""
        out: list[IOEvent] = []
        append = out.append
        pop = self._inflight.pop
        with self._lock:
            for data, obj, res, res2 in raw:
                owner = pop(obj, None)
                append(_new_event(IOEvent, (data, owner, res, res2)))
                if owner is not None:
                    owner._pins = None
        self._stats["reaped"] += len(raw)
        return out

    def __enter__(self) -> IOContext:
        return self

    def __exit__(self, *exc: object) -> None:
        if not (self._destroyed or self._foreign):
            self._destroy()

    def __del__(self) -> None:
        if getattr(self, "_destroyed", True) or self._foreign:
            return
        n = len(self._inflight)
        warnings.warn(
            f"unclosed {self!r} ({n} requests in flight): destroying it",
            ResourceWarning,
            stacklevel=2,
        )
        self._destroy()

    def __repr__(self) -> str:
        state = "destroyed" if self._destroyed else "forked-away" if self._foreign else "live"
        return f"<IOContext id={self.id:#x} nr_events={self.nr_events} {state}>"


def _as_context(ctx: IOContext) -> IOContext:
    if not isinstance(ctx, IOContext):
        raise TypeError(f"ctx must be an IOContext, not {type(ctx).__name__!r}")
    return ctx


def _check_nr(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__!r}")
    return value


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if timeout != timeout:  # NaN
        raise ValueError("timeout must not be NaN")
    if timeout < 0:
        raise ValueError("timeout must be >= 0 (or None to wait)")
    return float(timeout)


# ---------------------------------------------------------------------------------
# The io_* functions, raw (-errno) core shared with xaio.libaio
# ---------------------------------------------------------------------------------


def _setup(nr_events: Any) -> tuple[int, IOContext | None]:
    nr = _check_nr("nr_events", nr_events)
    if nr <= 0 or nr > _U32:
        return -errno.EINVAL, None
    ret, ctx_id = _syscall.io_setup(nr)
    if ret < 0:
        return ret, None
    return 0, IOContext(ctx_id, nr)


class _Pointers:
    """An array of ``struct iocb *`` for ``io_submit``, with the address of
    each entry made once as a call argument."""

    __slots__ = ("array", "at")

    def __init__(self, n: int) -> None:
        self.array: Any = (ctypes.c_void_p * n)()
        base = ctypes.addressof(self.array)
        self.at = [ctypes.c_void_p(base + i * 8) for i in range(n)]


def _submit(ctx: IOContext, iocbs: Iterable[Iocb]) -> int:
    if type(ctx) is not IOContext:
        ctx = _as_context(ctx)
    batch = list(iocbs)
    for obj in batch:
        if type(obj) is not Iocb and not isinstance(obj, Iocb):
            i = next(i for i, o in enumerate(batch) if not isinstance(o, Iocb))
            raise TypeError(f"iocbs[{i}] must be an Iocb, not {type(batch[i]).__name__!r}")
    if ctx._destroyed or ctx._foreign:
        return -errno.EINVAL
    # The kernel takes at most the ring's size in one call.
    n = min(len(batch), ctx._ring_nr)
    addresses = [obj._address for obj in batch]
    # Every Iocb is checked before the first call.  Each is registered
    # before its own call (a completion may be reaped by another thread
    # before io_submit even returns): in a large batch the first chunk here,
    # the rest while the device starts on it.  An Iocb listed twice is in
    # flight when its second entry is checked: refused like any other.
    first = _FIRST_CHUNK if n > _SPLIT_AFTER else n
    with ctx._lock:
        if ctx._destroyed or ctx._foreign:
            return -errno.EINVAL
        unpinned = _claim(batch)
        ctx._inflight.update(zip(addresses[:first], batch, strict=False))
    ret = 0
    spare = ctx._spare_ptrs
    try:
        ptrs = spare.pop()  # (another thread may take the last one first)
    except IndexError:
        ptrs = _Pointers(ctx._ring_nr)
    array = ptrs.array
    array[:first] = addresses[:first]
    at = ptrs.at
    # One call per _SUBMIT_CHUNK requests (the device starts on the first
    # ones while the kernel prepares the next; see the module's essay): the
    # answer is the same as one call's, since the kernel takes requests in
    # order and stops at the first it refuses.  The buffers _claim left
    # unpinned are pinned before the first call for the first chunk (for the
    # whole batch when it is small), after it for the rest.
    done = 0
    try:
        if unpinned:
            _pin_claimed(batch, 0, first)  # raises before any call: given back below
        while done < n:
            if done == first:
                with ctx._lock:
                    if ctx._destroyed or ctx._foreign:
                        ret = -errno.EINVAL
                        break
                    ctx._inflight.update(zip(addresses[first:n], batch[first:n], strict=False))
                array[first:n] = addresses[first:n]
                try:
                    if unpinned:
                        _pin_claimed(batch, first, n)
                except (TypeError, ValueError):
                    break  # a buffer another thread changed since _claim: the end
            m = n - done if n - done < _SUBMIT_CHUNK else _SUBMIT_CHUNK
            if first < m and not done:
                m = first
            r = _FAST_SUBMIT(ctx._cid, m, at[done])
            if r <= 0:
                ret = r
                break
            done += r
            if r < m:
                break
    except BaseException:
        # Interrupted (Ctrl-C) around a call, or a buffer refused before the
        # first call: the requests the kernel took have aio_key zeroed; give
        # back the others.
        while done < n and not _KEY.unpack_from(batch[done]._mem, _KEY_OFFSET)[0]:
            done += 1
        _unsubmit(ctx, batch[done:])
        ctx._stats["submitted"] += done
        raise
    spare.append(ptrs)
    if done < len(batch):
        _unsubmit(ctx, batch[done:])
    ctx._stats["submitted"] += done
    return done if done else ret


def _unsubmit(ctx: IOContext, iocbs: list[Iocb]) -> None:
    """Forget *iocbs*, which the kernel did not take, and release them."""
    with ctx._lock:
        for obj in iocbs:
            if ctx._inflight.get(obj._address) is obj:
                del ctx._inflight[obj._address]
    for obj in iocbs:
        obj._release()


def _getevents(
    ctx: IOContext,
    min_nr: Any,
    nr: Any,
    timeout: Any,
    sigmask: Iterable[int] | None = None,
    pgetevents: bool = False,
) -> tuple[int, list[IOEvent]]:
    """The raw core of io_getevents / io_pgetevents: ``(n, events)`` or
    ``(-errno, [])``.

    Events already in the context's ring are read from user memory (no
    system call); the system call is made only to wait for more (fewer than
    *min_nr* there and a timeout that is not 0) or where the ring cannot be
    read (see :func:`_user_ring`).  While a thread waits in that call the
    kernel moves the ring's head, so no other thread reads the ring
    meanwhile: they make the system call too."""
    if type(ctx) is not IOContext:
        ctx = _as_context(ctx)
    if type(min_nr) is not int:
        min_nr = _check_nr("min_nr", min_nr)
    if type(nr) is not int:
        nr = _check_nr("nr", nr)
    if timeout is not None:
        timeout = _check_timeout(timeout)
    sigset_addr = 0
    keep: list[Any] = []
    if pgetevents and sigmask is not None:
        bits = 0
        for sig in sigmask:
            signo = int(sig)
            if not 1 <= signo <= 64:
                raise ValueError(f"invalid signal number {signo}")
            bits |= 1 << (signo - 1)
        mask = ctypes.c_uint64(bits)
        aio_sigset = (ctypes.c_uint64 * 2)(ctypes.addressof(mask), 8)
        keep += [mask, aio_sigset]
        sigset_addr = ctypes.addressof(aio_sigset)
    if ctx._destroyed or ctx._foreign:
        return -errno.EINVAL, []
    if nr < 0 or min_nr < 0 or min_nr > nr:
        return -errno.EINVAL, []
    if nr > ctx._ring_nr:
        # The ring never holds more events than this: a larger array would
        # only waste memory (and waiting for more than can ever be waiting
        # would never end, so min_nr is capped too).
        nr = ctx._ring_nr
        min_nr = min(min_nr, nr)
    raw: list[tuple[int, int, int, int]] = []
    ring = ctx._ring
    waiting = False  # counted in ctx._waiters
    events: Any = None
    try:
        if ring is not None:
            with ctx._unmap_lock:  # io_destroy unmaps the ring: never read a dead one
                if ctx._destroyed or ctx._foreign:
                    return -errno.EINVAL, []
                if not ctx._waiters and nr:
                    _take_ring_events(ring, ctx._ring_nr, nr, raw)
                if len(raw) < min_nr and (timeout != 0.0 or ctx._waiters):
                    ctx._waiters += 1
                    waiting = True
            if not waiting:
                return len(raw), ctx._events(raw)
        # what the system call may add to the events taken from the ring
        want_min = max(min_nr - len(raw), 0)
        want_max = nr - len(raw)
        if ring is not None:
            try:
                events = ctx._spare_events.pop()  # (or another thread takes it)
            except IndexError:
                events = (io_event * ctx._ring_nr)()
        else:
            events = (io_event * max(nr, 1))()
        ev_addr = ctypes.addressof(events)
        deadline = None if timeout is None else time.monotonic() + timeout
        ts = Timespec() if timeout is not None else None
        while True:
            if ts is None or deadline is None:
                cts = None
            else:
                timespec_from_seconds(deadline - time.monotonic(), ts)
                cts = ctypes.c_void_p(ctypes.addressof(ts))
            if pgetevents:
                ret = _syscall.io_pgetevents(
                    ctx.id,
                    want_min,
                    want_max,
                    ev_addr,
                    cts.value if cts is not None else 0,
                    sigset_addr,
                )
            else:
                ret = _FAST_GETEVENTS(ctx._cid, want_min, want_max, ctypes.c_void_p(ev_addr), cts)
            if ret == -errno.EINTR and not pgetevents:
                _syscall.run_signal_handlers()  # PEP 475: raise if a handler raised
                continue
            break
        if ret < 0:
            if not raw:  # events already taken from the ring must not be lost
                return ret, []
        elif ret:
            raw += _iter_events(memoryview(events).cast("B")[: ret * 32])
    finally:
        if waiting:
            with ctx._unmap_lock:
                ctx._waiters -= 1
            if events is not None:
                ctx._spare_events.append(events)
    return len(raw), ctx._events(raw)


def _cancel(ctx: IOContext, obj: Iocb) -> tuple[int, IOEvent | None]:
    ctx = _as_context(ctx)
    if not isinstance(obj, Iocb):
        raise TypeError(f"iocb must be an Iocb, not {type(obj).__name__!r}")
    if ctx._destroyed or ctx._foreign:
        return -errno.EINVAL, None
    result = io_event()
    ret: int = _syscall.io_cancel(ctx.id, obj._address, ctypes.addressof(result))
    if ret == 0:
        # Old kernels complete the request by cancelling it and hand the event back.
        return 0, ctx._events([(result.data, result.obj, result.res, result.res2)])[0]
    return ret, None


def _destroy(ctx: IOContext | int) -> int:
    if isinstance(ctx, IOContext):
        return ctx._destroy()
    if isinstance(ctx, bool) or not isinstance(ctx, int):
        raise TypeError(f"ctx must be an IOContext or an int id, not {type(ctx).__name__!r}")
    with _live_lock:
        known = _live.get(ctx)
    if known is not None:
        return known._destroy()
    if not 0 <= ctx <= _U64:
        return -errno.EINVAL
    ret: int = _syscall.io_destroy(ctx)
    return ret


# ---------------------------------------------------------------------------------
# Public API, Python convention
# ---------------------------------------------------------------------------------


def io_setup(nr_events: int) -> IOContext:
    """Create an AIO context able to hold at least *nr_events* requests.

    Corresponds to io_setup(2).

    Raises:
        TypeError: *nr_events* is not an int.
        OSError: ``EINVAL`` (``nr_events <= 0`` or beyond the kernel's limit),
            ``EAGAIN`` (``/proc/sys/fs/aio-max-nr`` would be exceeded),
            ``ENOSYS`` (no AIO in this kernel), ``ENOMEM``.
    """
    ret, ctx = _setup(nr_events)
    check(ret)
    assert ctx is not None
    return ctx


def io_destroy(ctx: IOContext | int) -> None:
    """Cancel what can be cancelled, wait for every other request of *ctx* to
    complete, then destroy it.  After it returns the kernel touches none of its
    buffers any more, and they are released.

    Corresponds to io_destroy(2).

    Args:
        ctx: an :class:`IOContext`, or a raw context id.

    Raises:
        OSError: ``EINVAL`` for an invalid or already destroyed context.
    """
    check(_destroy(ctx))


def io_submit(ctx: IOContext, iocbs: Iterable[Iocb]) -> int:
    """Queue *iocbs* on *ctx*; return how many the kernel accepted.

    The kernel takes requests in order and stops at the first one that fails:
    if some were accepted the count is returned (the failing request's error is
    lost and it is not queued); if the first one fails its error is raised.
    Accepted requests keep their buffers pinned until their event is reaped.

    Corresponds to io_submit(2).

    Raises:
        TypeError, ValueError: a malformed Iocb (checked for all before any
            system call): wrong types, ``aio_nbytes`` beyond the buffer, a
            read into a read-only buffer, a raw address.
        IocbInFlightError: an Iocb is already in flight.
        OSError: ``EINVAL`` (bad or destroyed context, bad opcode or fields),
            ``EBADF`` (bad fd or wrong access mode), ``EAGAIN`` (ring full),
            ``EOPNOTSUPP`` (unknown ``RWF_*`` flag), ...
    """
    return check(_submit(ctx, iocbs))


def io_getevents(
    ctx: IOContext, min_nr: int, nr: int, timeout: float | None = None
) -> list[IOEvent]:
    """Wait for at least *min_nr* and return at most *nr* completion events.

    Args:
        timeout: seconds to wait at most (fewer than *min_nr* events may come
            back), ``0`` to poll, None to wait for *min_nr*.  Interrupted
            waits are retried with what is left (PEP 475).

    *nr* and *min_nr* are capped at the size of the context's ring: no more
    events than that can ever be waiting.

    Corresponds to io_getevents(2).

    Raises:
        OSError: ``EINVAL`` (bad or destroyed context — also when it is
            destroyed while waiting —, ``min_nr < 0`` or ``min_nr > nr``).
    """
    ret, events = _getevents(ctx, min_nr, nr, timeout)
    check(ret)
    return events


def io_pgetevents(
    ctx: IOContext,
    min_nr: int,
    nr: int,
    timeout: float | None = None,
    sigmask: Iterable[int] | None = None,
) -> list[IOEvent]:
    """Like :func:`io_getevents`, with the signal mask set to *sigmask* (an
    iterable of signal numbers to block) for the duration of the wait, as
    ``pselect`` does.  A signal that interrupts the wait raises
    ``InterruptedError`` (after its Python handler ran): being woken by a signal
    is what this call is for.

    Corresponds to io_pgetevents(2).
    """
    ret, events = _getevents(ctx, min_nr, nr, timeout, sigmask, pgetevents=True)
    check(ret)
    return events


def io_cancel(ctx: IOContext, iocb: Iocb) -> IOEvent | None:
    """Try to cancel the in-flight request *iocb* of *ctx*.

    Returns:
        None if the kernel accepted the cancellation and will post the
        completion to the ring (``EINPROGRESS``: modern kernels, for a pending
        ``IOCB_CMD_POLL``); an :class:`IOEvent` if the kernel completed it by
        cancelling it and returned the event (old kernels).

    Corresponds to io_cancel(2).

    Raises:
        OSError: ``EINVAL`` if the request cannot be cancelled (any
            regular-file read or write on modern kernels), was never submitted,
            or was already cancelled; ``EAGAIN`` on old kernels.
    """
    ret, event = _cancel(ctx, iocb)
    if ret == -errno.EINPROGRESS:
        return None
    check(ret)
    return event


def _user_ring(ctx: IOContext) -> tuple[memoryview | None, int]:
    """The completion ring of *ctx* in user memory as 32-bit words (the head
    is word 2, the tail word 3, event *i* starts at word ``8 + 8 * i``), and
    its size in events -- ``(None, 0)`` where it cannot be read safely from user space
    (not x86-64, or a layout this code does not know).  The caller reads it
    only under ``ctx._unmap_lock`` and while the context is not destroyed."""
    if not _USER_RING:
        return None, 0
    hdr = _syscall.aio_ring_at(ctx.id)
    if (
        hdr.magic != AIO_RING_MAGIC
        or hdr.incompat_features != AIO_RING_INCOMPAT_FEATURES
        or hdr.header_length != 32
    ):
        return None, 0
    raw = (ctypes.c_char * (32 + 32 * hdr.nr)).from_address(ctx.id)
    return memoryview(raw).cast("B").cast("I"), int(hdr.nr)


def _take_ring_events(
    ring: memoryview, nr: int, limit: int, out: list[tuple[int, int, int, int]]
) -> int:
    """Move up to *limit* events from a context's ring in user memory (see
    :func:`_user_ring`) to *out* as ``(data, obj, res, res2)``, one slice per
    contiguous run, and publish the new head; return how many.  The caller
    holds ``ctx._unmap_lock`` and has checked the context is alive.

    The events join *out* and the head moves with no call in between: an
    exception from a signal handler (Ctrl-C's KeyboardInterrupt, raised only
    at a call or a loop's jump) comes before both or after both, so an event
    is never lost from *out* nor taken twice."""
    head: int = ring[2]
    tail: int = ring[3]
    if head == tail:
        return 0
    n = (tail - head) % nr
    if n > limit:
        n = limit
    run = nr - head
    if run > n:
        run = n
    items = list(_iter_events(ring[8 + head * 8 : 8 + (head + run) * 8]))
    if run < n:
        items += _iter_events(ring[8 : 8 + (n - run) * 8])
    new_head = (head + n) % nr
    # publish the new head after reading the events (x86-64: stores are not
    # reordered with earlier loads); one aligned 32-bit store
    out += items
    ring[2] = new_head
    return n
