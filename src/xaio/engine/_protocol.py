"""The engine protocol: what every engine does and every caller may rely on.

This module imports no engine, so each engine imports it (and
:mod:`xaio.engine._route`) without importing the others; the public home of
its names is :mod:`xaio.engine`, whose documentation describes the protocol.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from xaio._ops import CancelOutcome, Operation

__all__ = ["BatchPort", "Engine", "EngineClosedError"]


class EngineClosedError(RuntimeError, ValueError):
    """The engine was closed; it accepts no more operations.

    A :class:`RuntimeError` (a call on an engine in the wrong state) and a
    :class:`ValueError`, as a closed file's ``fileno()`` raises.
    """


class BatchPort(abc.ABC):
    """A batch's own way into an engine's submission queue
    (:meth:`Engine.batch_port`): reads and writes of one buffer each, kept
    in *slots* -- small ints, each naming one request at a time -- whose
    fields the caller writes into the port's tables before :meth:`submit`.
    Each slot's request is written straight into the engine's queue from
    these fields: no :class:`~xaio._ops.Operation` per request, and a
    completion comes back as ``(slot, result)`` through the port's own
    ``on_landed`` callback, not through an ``on_done`` per request.

    Tables (lists indexed by slot, grown by the caller with :meth:`grow`):
    ``fds``, ``addresses`` and ``lengths`` (of the buffer, taken from a
    buffer export the caller keeps alive in ``holders``), ``offsets``,
    ``writes`` (True: a write).  ``live`` counts the requests submitted
    that have not landed.

    The port holds each request's holder from :meth:`submit` until its
    completion is reaped (also when the engine closes: it cancels and
    waits for them), so the caller may drop its own reference as soon as
    the slot lands.  Not thread-safe: the thread that runs the event loop
    submits, cancels and reaps.
    """

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.addresses: list[int] = []
        self.lengths: list[int] = []
        self.offsets: list[int] = []
        self.writes: list[bool] = []
        self.holders: list[Any] = []
        self.live = 0

    def grow(self) -> int:
        """Add a slot to every table; returns its number."""
        self.fds.append(-1)
        self.addresses.append(0)
        self.lengths.append(0)
        self.offsets.append(0)
        self.writes.append(False)
        self.holders.append(None)
        return len(self.fds) - 1

    @abc.abstractmethod
    def submit(self, slots: Sequence[int], hand_over: bool = True) -> None:
        """Queue the request of each slot of *slots* (its fields are in the
        tables); with *hand_over*, hand them to the kernel now, else at the
        engine's next submission or :meth:`flush`.  Each lands once, through
        ``on_landed``.

        Raises:
            EngineClosedError: the engine is closed (nothing was taken).
            OSError: EINVAL in a forked child; the kernel refused the batch.
        """

    @abc.abstractmethod
    def flush(self) -> None:
        """Hand the kernel what :meth:`submit` queued without handing over."""

    @abc.abstractmethod
    def cancel(self, slots: Sequence[int]) -> None:
        """Ask the engine to cancel the requests of *slots* that have not
        landed; each still lands (``-ECANCELED``, or its result if it
        finished first)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Nothing more will be submitted; the port goes once nothing is live."""


class Engine(abc.ABC):
    """The engine protocol (see the module documentation).

    The capability flags say what callers may count on; no caller asks an
    engine's ``name`` for behaviour.

    Attributes:
        name: The engine's kind, ``"uring"``, ``"linux"`` or ``"thread"``:
            the name :func:`~xaio.engine.create_engine` takes, for choosing
            and showing an engine (the flags below say how it behaves).
        completes_in_submit: ``submit`` may complete requests before it
            returns (io_uring runs a page-cache hit or a ready pipe inside
            ``io_uring_enter``): a ``reap(0)`` right after a submit delivers
            them without a wake-up.
        cancels_running: Running requests can be cancelled (io_uring), so
            :meth:`close` never waits for a request that waits for ever (a
            read on an empty pipe).  Without it, :meth:`cancel` of a running
            request says ``RUNNING`` and :meth:`close` waits for it to end.
        thread_bound: A request still waiting (a pipe, a socket, a poll)
            when the thread that submitted it exits is cancelled by the
            kernel (io_uring): submit requests that must outlive their thread
            from one that lives on.
        slow_close: :meth:`close` may take tens of milliseconds even when
            nothing is in flight (``io_destroy`` waits for an RCU grace
            period): an event loop runs it in a worker thread.
        kernel_path_ops: Path operations (``openat``, ``statx``,
            ``renameat``, ``unlinkat``, ``mkdirat``) run asynchronously in the
            kernel beside this engine's requests (io_uring): the async layer
            runs them there, else on threads.
        orders_requests: The engine itself runs the requests of one fd in
            the order :mod:`xaio._lanes` describes (a stream or O_APPEND fd
            one at a time in submission order, an fsync after every request
            submitted before it, a request at the file position alone), so a
            caller that needs that order (POSIX AIO) keeps no lanes of its
            own; and its ``submit`` never runs an ``on_done`` (completions
            come from its workers or a reap), so it may be called with a lock
            held that ``on_done`` takes (the thread engine).
    """

    name: ClassVar[str]
    completes_in_submit: ClassVar[bool] = False
    cancels_running: ClassVar[bool] = False
    thread_bound: ClassVar[bool] = False
    slow_close: ClassVar[bool] = False
    kernel_path_ops: ClassVar[bool] = False
    orders_requests: ClassVar[bool] = False

    @property
    def delivers_itself(self) -> bool:
        """True if finished operations are completed (``on_done`` run) by
        the engine's own threads as they finish, so nobody needs to call
        :meth:`reap` (a thread engine made with ``complete_in_worker``)."""
        return False

    @abc.abstractmethod
    def owns(self, op: Operation) -> bool:
        """True if *op* was given to this engine (a :meth:`submit` took it)
        and its completion has not been delivered: what the caller of a
        ``submit`` interrupted by an exception from a signal handler
        (Ctrl-C) asks about each operation it handed over."""

    def read_nowait(self, fd: int, buffer: Any, offset: int, nbytes: int) -> int | None:
        """Read *nbytes* at *offset* of *fd* into *buffer* in this thread if
        the page cache holds them all (``preadv2(RWF_NOWAIT)``), the fast
        path of a cached read (:class:`xaio._pagecache.NowaitReader`).

        Returns:
            *nbytes* when the whole read was done; None when the request
            must be submitted instead (not cached, a short read, an error, an
            O_DIRECT or O_APPEND fd, ordered work queued on *fd*, a closed
            engine, or an engine without the fast path).
        """
        return None

    @property
    def nowait_reader(self) -> Callable[[int, Sequence[Any], int, int], int | None]:
        """:meth:`read_nowait` as one callable to bind once, for a caller
        whose every request may be a page-cache hit (POSIX ``aio_read``),
        called as ``reader(fd, (buffer,), offset, nbytes)``: the buffer in a
        tuple the caller keeps from one read to the next (or several
        buffers, as ``os.preadv`` takes them).  An engine with the fast path
        gives its reader itself, one Python frame less per read.  It stays
        valid for the engine's life and declines every read once the engine
        is closed."""
        read_nowait = self.read_nowait

        def reader(fd: int, buffers: Sequence[Any], offset: int, nbytes: int) -> int | None:
            if len(buffers) != 1:
                return None
            return read_nowait(fd, buffers[0], offset, nbytes)

        return reader

    @abc.abstractmethod
    def submit(self, ops: Sequence[Operation]) -> int:
        """Hand a batch of QUEUED operations to the engine; returns len(ops).

        When it raises, no operation was taken.

        Raises:
            EngineClosedError: the engine is closed.
            RuntimeError: an operation is not QUEUED or is listed twice.
            TypeError: an fd, offset or flags that is not an int.
            ValueError: an fd out of range; READ/WRITE without exactly one
                buffer, READV/WRITEV with more than 1024
                (:func:`xaio._ops.check_batch` has the rules).
        """

    @abc.abstractmethod
    def cancel(self, op: Operation) -> CancelOutcome:
        """Try to cancel *op*; say honestly what happened."""

    @abc.abstractmethod
    def reap(self, timeout: float | None = 0.0, *, max_n: int = 0) -> int:
        """Deliver finished operations in this thread (at most *max_n* if >
        0); return how many."""

    @abc.abstractmethod
    def fileno(self) -> int:
        """An fd readable while completions are waiting to be reaped.

        Raises:
            EngineClosedError: the engine is closed (also a
                :class:`ValueError`, as a closed file's ``fileno()``); the
                number it returned before may already belong to another fd.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop, cancel, drain, release (idempotent)."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` has started."""

    def statistics(self) -> dict[str, Any]:
        """Counters for debugging and benchmarks (engine-specific keys)."""
        return {"name": self.name}

    def batch_port(self, on_landed: Callable[[list[int], list[int]], None]) -> BatchPort | None:
        """A :class:`BatchPort` for a batch of requests (:class:`xaio.Batch`)
        whose completions this engine reports as ``on_landed(slots,
        results)`` (in the reaping thread, once per group reaped together;
        a result is bytes transferred or -errno); None if the engine has no
        such path (the batch then submits :class:`~xaio._ops.Operation`
        objects).

        Raises:
            EngineClosedError: the engine is closed.
        """
        return None

    def register_buffers(self, buffers: Sequence[Any]) -> bool:
        """Offer *buffers* as the memory most requests will use, so that an
        engine that can pin them once does so (io_uring's fixed buffers); a
        request on (part of) one of them then skips the kernel's per-request
        page pinning.  Any buffer still works for any request either way.

        Returns:
            True if this engine registered them; False if it has no such
            thing (the Linux AIO and thread engines, which ignore them).

        Raises:
            ValueError: an empty sequence.
            TypeError, OSError: from an engine that registers (see
                :meth:`xaio.uring.UringEngine.register_buffers`): a read-only
                buffer, or the kernel's refusal (``RLIMIT_MEMLOCK``...).
        """
        if not buffers:
            raise ValueError("no buffers to register")
        return False

    def unregister_buffers(self) -> None:
        """Undo :meth:`register_buffers` (nothing if none are registered);
        requests in flight keep their memory."""
        return None  # engines without registered buffers have nothing to undo

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EngineClosedError.__module__ = "xaio.engine"
Engine.__module__ = "xaio.engine"
