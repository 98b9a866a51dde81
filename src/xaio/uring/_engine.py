"""The :class:`UringEngine`: the Engine protocol over a :class:`~xaio.uring.Ring`."""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import select
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from xaio import _syscall
from xaio._abi import uring as abi
from xaio._fork import Owner
from xaio._ops import (
    CancelOutcome,
    InFlight,
    OpCode,
    Operation,
    OpState,
    check_batch,
)
from xaio._pagecache import NowaitReader
from xaio._syscall import oserror
from xaio.engine._protocol import BatchPort, Engine, EngineClosedError
from xaio.engine._route import KIND_BLOCKING, route
from xaio.uring._prep import iovecs, prep_rw, prep_rw_slots
from xaio.uring._ring import Ring
from xaio.uring._setup import (
    _U32,
    Completion,
    _graveyard,
    finalize,
)

if TYPE_CHECKING:
    from xaio.threads import ThreadEngine


#: While UringEngine.reap delivers completions, submissions made by the
#: ``on_done`` callbacks are held in the SQ and handed over every this many
#: SQEs (and whatever is left when the delivery ends).  One enter per request
#: costs a virtio kick per request (~20 us of system time per 4 KiB O_DIRECT
#: read, against ~6 us batched); one enter for the whole batch leaves the
#: device idle while Python delivers and re-arms the rest (the device completes
#: a batch almost together).  Four keeps the device fed and the kicks few.
_DEFER_FLUSH = 4
#: A batch port's submission (outside a delivery) writes this many SQEs and
#: enters the kernel, then the next ones: the block layer plugs the requests
#: of one io_uring_enter until it returns, so a batch of 64 in one enter
#: leaves the device idle for the whole of that call (~200 us of system time
#: here) and for the Python that wrote the SQEs before it; groups of 8 start
#: it on the first ones while the rest are written and taken, for a few more
#: enters.
_PORT_CHUNK = 8


_hipri_cache: list[bool] = []
_RWF_HIPRI = 0x01  # include/uapi/linux/fs.h


def hipri_accepted() -> bool:
    """Whether ``preadv2(RWF_HIPRI)`` on a buffered regular file succeeds on
    this kernel (probed once, on ``/proc/self/exe``, and cached).

    ``RWF_HIPRI`` asks the kernel to poll for the completion instead of
    sleeping on an interrupt; ``preadv2`` takes it on any file (a buffered
    one just ignores it), but an io_uring that was not set up with
    ``IORING_SETUP_IOPOLL`` refuses it with EINVAL.  Where the system call
    accepts it, :class:`UringEngine` drops the flag from its reads and writes
    on such rings, so a request gets the answer ``os.preadv`` gives.
    """
    if _hipri_cache:
        return _hipri_cache[0]
    ok = False
    try:
        fd = os.open("/proc/self/exe", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        pass
    else:
        try:
            os.preadv(fd, [bytearray(1)], 0, _RWF_HIPRI)
            ok = True
        except OSError:
            pass
        finally:
            os.close(fd)
    _hipri_cache.append(ok)
    return ok


# user_data tags: InFlight keys are small ints; anything with the top bit set is ours.
_TAG = 1 << 63
_CANCEL_TAG = _TAG | (1 << 62)
_WAKE = _TAG | 1
_THREADS_READY = _TAG | 2  # the poll on the thread engine's eventfd
_CANCEL_ANY_ALL = abi.IORING_ASYNC_CANCEL_ANY | abi.IORING_ASYNC_CANCEL_ALL
# a BatchPort's request: _PORT_TAG | port id << 32 | slot
_PORT_TAG = _TAG | (1 << 61)
_PORT_BITS = _CANCEL_TAG | (1 << 61)  # ud & _PORT_BITS == _PORT_TAG: a port's
_SLOT_MASK = 0xFFFFFFFF
_PORT_ID_MASK = (1 << 29) - 1

_READ, _WRITE, _READV, _WRITEV = OpCode.READ, OpCode.WRITE, OpCode.READV, OpCode.WRITEV
_FSYNC, _FDATASYNC, _POLL, _NOP = OpCode.FSYNC, OpCode.FDATASYNC, OpCode.POLL, OpCode.NOP
_QUEUED, _DONE = OpState.QUEUED, OpState.DONE
_OP_READ, _OP_WRITE = abi.IORING_OP_READ, abi.IORING_OP_WRITE
_OP_READ_FIXED, _OP_WRITE_FIXED = abi.IORING_OP_READ_FIXED, abi.IORING_OP_WRITE_FIXED
_OP_READV, _OP_WRITEV = abi.IORING_OP_READV, abi.IORING_OP_WRITEV


class UringEngine(Engine):
    """The :class:`~xaio.engine.Engine` protocol over a :class:`Ring`.

    ``submit`` writes one SQE per operation (``user_data`` = its
    :class:`~xaio._ops.InFlight` key) and enters the kernel once per batch;
    ``reap`` peeks the CQ without a syscall when completions are there (so
    calling ``reap(0)`` right after ``submit`` collects what completed inline,
    e.g. page-cached reads), and blocks in ``io_uring_enter`` otherwise.
    ``cancel`` uses ``IORING_REGISTER_SYNC_CANCEL`` where the kernel has it
    (Linux 6.0), else an ``IORING_OP_ASYNC_CANCEL`` SQE whose CQE it waits for.

    Operation mapping: READ/WRITE take exactly one buffer, READV/WRITEV up to
    1024; ``offset=-1`` means the file position (stream fds ignore it);
    ``op.flags`` are the ``RWF_*`` flags of a read/write and the event mask of
    a POLL; FSYNC/FDATASYNC/NOP use neither.  ``RWF_HIPRI`` is dropped on a
    ring without ``IORING_SETUP_IOPOLL`` where ``preadv2`` accepts it
    (:func:`hipri_accepted`), so the request gets the system call's answer.

    Threads: ``submit`` and ``cancel`` may be called from any thread while one
    thread reaps; ``on_done`` callbacks run in the reaping thread, under the
    engine's (re-entrant) locks, so they may submit, cancel and reap again
    (also blocking), but must not wait for another thread that uses this
    engine.
    """

    name: ClassVar[str] = "uring"
    completes_in_submit: ClassVar[bool] = True
    cancels_running: ClassVar[bool] = True
    thread_bound: ClassVar[bool] = True
    kernel_path_ops: ClassVar[bool] = True

    def __init__(self, entries: int = 256, *, setup_flags: int = 0) -> None:
        """Create the ring, its eventfd, and register the eventfd.

        Args:
            entries: SQ size; the CQ is twice as large (and never drops).
            setup_flags: extra ``IORING_SETUP_*`` flags.

        Raises:
            OSError: io_uring is unavailable (ENOSYS/EPERM with the cause), or
                the kernel's error.
        """
        self._closed = True
        self._ring = Ring(entries, setup_flags)
        try:
            self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except BaseException:
            self._ring.close()
            raise
        try:
            self._ring.register_eventfd(self._efd)
        except BaseException:
            self._ring.close()
            os.close(self._efd)
            raise
        self._lock = threading.RLock()
        self._reap_lock = threading.RLock()  # an on_done may reap (blocking) again
        self._inflight = InFlight()
        self._cancel_results: dict[int, int] = {}
        self._stash: list[Completion] = []
        self._batch: list[Completion] = []
        self._sync_cancel = True
        self._delivering = False
        self._owner = Owner("io_uring engine")
        self._deferred = False  # SQEs an on_done submitted may wait in the SQ
        self._counts = {
            "submitted": 0,
            "fixed": 0,
            "completed": 0,
            "cancel": 0,
            "eventfd_reads": 0,
        }
        self._nowait = NowaitReader()
        #: what of op.flags a read/write SQE takes (see hipri_accepted)
        self._rw_mask = _U32
        if not setup_flags & abi.IORING_SETUP_IOPOLL and hipri_accepted():
            self._rw_mask = _U32 & ~_RWF_HIPRI
        self._fixed = False  # buffers registered (register_buffers)
        #: runs what xaio.engine.route sends to threads (made on first use)
        self._threads: ThreadEngine | None = None
        #: the batch ports with requests in flight, by id (a port joins
        #: with its first request and leaves once none is live)
        self._ports: dict[int, _Port] = {}
        self._next_port = 0
        self._closed = False

    # --- protocol ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has started."""
        return self._closed

    @property
    def ring(self) -> Ring:
        """The underlying :class:`Ring` (for probing and statistics)."""
        return self._ring

    def fileno(self) -> int:
        """The eventfd registered with the ring: readable while completions wait.

        The kernel signals it for every CQE posted.  :meth:`reap` clears it
        only when it finds the CQ empty (then looks again), so a reap that
        delivered may leave one spurious wake-up behind; the next reap returns
        0 and clears it.  No wake-up is ever lost.

        Raises:
            EngineClosedError: the engine is closed.
        """
        if self._closed:
            raise EngineClosedError("engine is closed")
        return self._efd

    def batch_port(self, on_landed: Callable[[list[int], list[int]], None]) -> BatchPort:
        """A :class:`~xaio.engine.BatchPort` on this ring: each slot's SQE is
        written from the port's tables (``READ``/``WRITE``, or the ``_FIXED``
        form on a registered buffer), ``user_data`` naming the port and the
        slot, and its CQE is handed to *on_landed* by :meth:`reap`.

        Raises:
            EngineClosedError: the engine is closed.
        """
        with self._lock:
            if self._closed:
                raise EngineClosedError("engine is closed")
            pid = self._next_port
            self._next_port = (pid + 1) & _PORT_ID_MASK
            while pid in self._ports:  # pragma: no cover - 2**29 ports open at once
                pid = (pid + 1) & _PORT_ID_MASK
            port = _Port(self, pid, on_landed)
        return port

    def _port_live(self) -> int:
        """Requests of batch ports not landed yet."""
        return sum(p.live for p in self._ports.values())

    def register_buffers(self, buffers: Sequence[Any]) -> bool:
        """Register *buffers* with the ring as fixed buffers
        (io_uring_register_buffers(3)): from now on a READ or WRITE whose
        buffer lies inside one of them is sent as ``IORING_OP_READ_FIXED`` /
        ``WRITE_FIXED``, which saves the kernel pinning its pages on every
        request (about 1 us per 4 KiB O_DIRECT read here).  Other buffers work
        as before.  The buffers stay pinned until :meth:`unregister_buffers`
        or :meth:`close`.

        Returns:
            True.

        Raises:
            TypeError: a buffer is not writable.
            ValueError: an empty sequence.
            EngineClosedError: the engine is closed.
            OSError: EBUSY if buffers are registered already; ENOMEM
                (``RLIMIT_MEMLOCK``); EFAULT/EOPNOTSUPP for memory the kernel
                will not pin (e.g. a file mapping); EINVAL in a forked child.
        """
        self._owner.check()
        if not buffers:
            raise ValueError("no buffers to register")
        with self._lock:
            if self._closed:
                raise EngineClosedError("engine is closed")
            self._ring.register_buffers(buffers)
            self._fixed = True
        return True

    def unregister_buffers(self) -> None:
        """Undo :meth:`register_buffers` (io_uring_unregister_buffers(3));
        nothing if none are registered.  Requests in flight keep their memory:
        the kernel holds a registered buffer until its requests complete, and
        each operation holds its own pin.

        Raises:
            OSError: EINVAL in a forked child.
        """
        self._owner.check()
        with self._lock:
            if not self._fixed or self._closed:
                return
            self._fixed = False
            self._ring.unregister_buffers()

    def submit(self, ops: Sequence[Operation]) -> int:
        """Write one SQE per operation and enter the kernel once.

        Per-operation errors (bad fd, bad offset...) arrive as completions
        with ``-errno``; they never raise.

        Returns:
            ``len(ops)``.

        Raises:
            EngineClosedError: the engine is closed (nothing was taken).
            RuntimeError: an operation is not QUEUED, or is listed twice.
            TypeError: an fd, offset or flags that is not an int.
            ValueError: an fd out of range, READ/WRITE without exactly one
                buffer, READV/WRITEV with more than 1024 (nothing was taken:
                :func:`xaio._ops.check_batch` has the rules).
            OSError: EINVAL in a forked child; the kernel refused the whole batch.
        """
        self._owner.check()
        with self._lock:
            if self._closed:
                raise EngineClosedError("engine is closed")
            ops, threaded = route(ops, KIND_BLOCKING)
            if threaded:
                return self._submit_routed(ops, threaded)
            ring = self._ring
            if len(ops) > ring.sq_space_left():
                # no room for the whole batch: _make_room hands SQEs to the
                # kernel midway, so nothing can be taken back -- check first
                check_batch(ops)
                self._write_sqes(ops, True)
            else:
                # the common case checks as it writes (one pass), and takes
                # back what it wrote if an operation turns out to be bad
                try:
                    self._write_sqes(ops, False)
                except Exception:
                    check_batch(ops)  # the precise error, if it was ours
                    raise
            self._counts["submitted"] += len(ops)
            if self._delivering:  # an on_done submitting: hand over in groups
                self._deferred = True
                ring._hand_over(0, _DEFER_FLUSH)
            else:
                ring._hand_over()
        return len(ops)

    def _submit_routed(self, ops: Sequence[Operation], threaded: Sequence[Operation]) -> int:
        """Submit a batch that :func:`xaio.engine.route` split (under the
        lock): *ops* to the ring, *threaded* to the thread engine, whose
        eventfd a poll on the ring watches, so that :meth:`reap` and
        :meth:`fileno` serve both.  Nothing is taken if the batch is bad."""
        check_batch(ops)
        check_batch(threaded)
        threads = self._threads
        if threads is None:
            from xaio.threads import ThreadEngine

            threads = self._threads = ThreadEngine(8)
            self._arm_threads()
        if ops:
            self.submit(ops)
        threads.submit_checked(threaded)
        return len(ops) + len(threaded)

    def _arm_threads(self) -> None:
        """Poll the thread engine's eventfd on the ring (under the lock): its
        CQE, tagged ``_THREADS_READY``, makes :meth:`_deliver` deliver the
        thread engine's completions and arm the poll again."""
        assert self._threads is not None
        self._ring.prep_poll_add(self._threads.fileno(), select.POLLIN, user_data=_THREADS_READY)
        self._ring.submit()

    def _write_sqes(self, ops: Sequence[Operation], make_room: bool) -> None:
        """Enter the operations in the in-flight table and write one SQE each
        (under the lock; :meth:`submit` publishes the tail).

        Each operation is checked as its SQE is written (a bad field raises
        as its SQE is packed).  Then (or when a signal handler raises midway)
        every operation is taken back and the SQ tail goes back to where it
        was: nothing was published, so the kernel never sees them.  With
        *make_room* (a batch larger than the SQ's free room, which the caller
        checked first) SQEs reach the kernel midway: only the operations whose
        SQEs were not written are taken back."""
        ring = self._ring
        inflight = self._inflight
        hold = inflight.hold
        fixed_index = ring._fixed_index if self._fixed else None
        rw_mask = self._rw_mask
        nfixed = 0
        sqes, tail, mask = ring._sq_begin()
        start = tail
        first = inflight.next_key()
        try:
            inflight.enter_all(ops)  # all or none
            for op in ops:
                if make_room:
                    ring._sq_end(tail)
                    if not ring.sq_space_left():
                        ring._make_room()
                key = op.key
                at = (tail & mask) << 6
                code = op.opcode
                if code is _READ or code is _WRITE:
                    pins = op.pins
                    if len(pins) != 1:
                        raise ValueError("READ/WRITE takes exactly one buffer")
                    p = pins[0]
                    # a registered buffer holding it: READ_FIXED / WRITE_FIXED
                    index = fixed_index(p.address, p.nbytes) if fixed_index else -1
                    if index < 0:
                        opcode = _OP_READ if code is _READ else _OP_WRITE
                        index = 0
                    else:
                        opcode = _OP_READ_FIXED if code is _READ else _OP_WRITE_FIXED
                        nfixed += 1
                    prep_rw(
                        sqes, at, opcode, op.fd, p.address, p.nbytes, op.offset, key,
                        op.flags & rw_mask, 0, index,
                    )  # fmt: skip
                elif code is _READV or code is _WRITEV:
                    vecs = iovecs(op.pins)
                    opcode = _OP_READV if code is _READV else _OP_WRITEV
                    prep_rw(
                        sqes, at, opcode, op.fd, ctypes.addressof(vecs), len(op.pins),
                        op.offset, key, op.flags & rw_mask,
                    )  # fmt: skip
                    hold(key, vecs)
                elif code is _FSYNC or code is _FDATASYNC:
                    flags = abi.IORING_FSYNC_DATASYNC if code is _FDATASYNC else 0
                    prep_rw(sqes, at, abi.IORING_OP_FSYNC, op.fd, 0, 0, 0, key, flags)
                elif code is _POLL:
                    events = op.flags & _U32
                    prep_rw(sqes, at, abi.IORING_OP_POLL_ADD, op.fd, 0, 0, 0, key, events)
                else:
                    prep_rw(sqes, at, abi.IORING_OP_NOP, -1, 0, 0, 0, key)
                tail += 1
            ring._sq_end(tail)  # in the try: a signal at this call undoes it all
        except BaseException:
            if ops and inflight.get(first) is ops[0]:  # entered: take back the unsent
                for op in itertools.islice(ops, tail - start if make_room else 0, None):
                    inflight.take_back(op)
            ring._sq_end(tail if make_room else start)
            raise
        if nfixed:
            self._counts["fixed"] += nfixed

    def _flush_deferred(self) -> None:
        """Hand over SQEs an ``on_done`` submitted during delivery (under the lock)."""
        if self._deferred and not self._ring.closed:
            self._ring._hand_over()
            self._deferred = False  # after: a signal in between leaves it to the next

    def _drain_eventfd(self) -> None:
        if _syscall.drain_eventfd(self._efd):
            self._counts["eventfd_reads"] += 1

    def _deliver(self) -> int:
        """Complete the operations whose CQEs wait in ``self._batch`` (under
        the lock).

        The batch is taken as a whole: a callback that reaps again
        (re-entrantly) starts from a fresh list and never sees these CQEs, whose
        keys may by then name new operations.  If an ``on_done`` callback
        raises, the exception propagates and the CQEs not yet handled go back
        to ``self._batch``, to be delivered by the next reap -- never twice
        (:meth:`xaio._ops.InFlight.complete_each` says how, also for an
        exception from a signal handler).

        Submissions made by the callbacks are handed to the kernel in groups
        of ``_DEFER_FLUSH`` and, at the latest, before this returns (see
        ``_DEFER_FLUSH``)."""
        inflight = self._inflight
        before = inflight.completed
        n = 0
        outer = self._delivering
        self._delivering = True
        cqes: list[Completion] = []
        threads_ready = False
        try:
            cqes, self._batch = self._batch, cqes
            while cqes:
                inflight.complete_each(cqes, _TAG)
                if cqes:  # one of the engine's own CQEs
                    ud, res, _fl = cqes[0]
                    if ud & _PORT_BITS == _PORT_TAG:
                        port = self._ports.get((ud >> 32) & _PORT_ID_MASK)
                        if port is not None:
                            n += port._land(cqes)
                            continue
                    elif ud & _CANCEL_TAG == _CANCEL_TAG:
                        self._cancel_results[ud & ~_CANCEL_TAG] = res
                    elif ud == _THREADS_READY:
                        threads_ready = True
                    del cqes[0]
            if threads_ready and self._threads is not None:
                try:
                    n += self._threads.reap(0)
                finally:
                    if not self._closed:
                        self._arm_threads()
        finally:
            if cqes:  # an on_done raised (or Ctrl-C): the rest go first next time
                self._batch[:0] = cqes
            n += inflight.completed - before
            self._counts["completed"] += n
            self._delivering = outer
            if not outer and self._deferred:
                self._flush_deferred()
        return n

    def _reap_nowait(self, max_n: int = 0) -> int:
        """Deliver what is in the CQ (and the stash), at most *max_n* CQEs
        from the CQ if > 0.

        The eventfd is cleared only when the CQ is found empty, and the CQ is
        looked at again right after: a CQE posted after that look signals the
        eventfd afresh, so no wake-up is lost, and a reap right after a submit
        that finds completions costs no syscall at all.  The price is at most
        one spurious wake-up of an event loop per batch, whose reap then
        clears the eventfd.

        CQEs taken from the ring go straight into ``self._batch``, which
        :meth:`_deliver` empties: one taken and not yet delivered (an
        ``on_done`` raised, or Ctrl-C came) waits there for the next reap or
        for :meth:`close`."""
        with self._lock:
            ring = self._ring
            if ring.closed:
                return 0
            pending = self._batch  # not empty only if a delivery was interrupted
            if not ring.cq_ready() and not self._stash and not pending:
                self._drain_eventfd()
                if not ring.cq_ready() and not ring.cq_has_overflow():
                    return 0
            if self._stash:
                pending += self._stash  # no call between the two stores
                self._stash = []
            ring._take_cqes(pending, max_n)  # reap checked the owner, here: not closed
            return self._deliver()

    def reap(self, timeout: float | None = 0.0, *, max_n: int = 0) -> int:
        """Deliver finished operations (``InFlight.complete``, which runs their
        ``on_done``) in this thread.

        Args:
            timeout: 0 never blocks (a peek of the CQ, no syscall when
                completions are there); None waits for at least one; else seconds.
            max_n: deliver at most this many CQEs' worth (0: all that are
                there); the rest stay in the CQ for the next reap, so a caller
                can resubmit the first ones while the device has the others.

        Returns:
            How many operations were delivered.

        Raises:
            OSError: EINVAL in a forked child; the kernel's error.
        """
        self._owner.check()
        n = self._reap_nowait(max_n)
        if n or (timeout is not None and timeout <= 0) or self._closed:
            return n
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._delivering:  # an on_done waiting: hand over what it submitted
            with self._lock:
                self._flush_deferred()
        with self._reap_lock:
            while not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return 0
                self._ring._wait(1, left)
                n = self._reap_nowait(max_n)
                if n:
                    return n
        return 0

    def owns(self, op: Operation) -> bool:
        """True if *op* was given to this engine and has not been delivered."""
        threads = self._threads
        if threads is not None and threads.owns(op):
            return True
        with self._lock:
            return op.state is not _DONE and op.key >= 0 and self._inflight.get(op.key) is op

    def cancel(self, op: Operation) -> CancelOutcome:
        """Try to cancel *op* in the kernel and say what happened.

        Returns:
            ``CANCELED`` (found and stopped: its completion, still to be
            reaped, says ``-ECANCELED`` -- or, if it finished in that very
            instant, its real result), ``RUNNING`` (an io-wq worker is running
            it; it will complete), ``DONE`` (it had completed: its completion
            may still be waiting to be reaped) -- also for an operation this
            engine does not hold.

        Raises:
            OSError: EINVAL in a forked child; an unexpected kernel error.
        """
        self._owner.check()
        threads = self._threads
        if threads is not None and threads.owns(op):
            return threads.cancel(op)
        with self._lock:
            key = op.key
            if op.state is _DONE or self._inflight.get(key) is not op or self._ring.closed:
                return CancelOutcome.DONE
            if op.state is _QUEUED:  # pragma: no cover - never: submit marks them
                return CancelOutcome.DONE
            op.request_cancel()
            self._counts["cancel"] += 1
            if self._delivering:  # the kernel must hold the request to cancel it
                self._flush_deferred()
            if self._sync_cancel:
                try:
                    ret = self._ring.sync_cancel(key)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    self._sync_cancel = False  # a kernel older than 6.0
                else:
                    return _outcome(ret)
            ring = self._ring
            self._cancel_results.pop(key, None)  # a stale answer from a timed-out wait
            ring.prep_cancel(key, user_data=_CANCEL_TAG | key)
            ring.submit()
        return self._wait_cancel_result(key)

    def _wait_cancel_result(self, key: int) -> CancelOutcome:
        """Wait for the CQE of an async cancel of *key*, stashing the others for reap."""
        deadline = time.monotonic() + 10.0
        while True:
            with self._lock:
                got = self._cancel_results.pop(key, None)
                if got is None and not self._ring.closed:
                    before = len(self._stash)
                    self._ring.peek_batch(self._stash)
                    for i in range(len(self._stash) - 1, before - 1, -1):
                        ud, res, _fl = self._stash[i]
                        if ud & _CANCEL_TAG == _CANCEL_TAG and ud != _WAKE:
                            self._cancel_results[ud & ~_CANCEL_TAG] = res
                            del self._stash[i]
                    if len(self._stash) > before:
                        os.eventfd_write(self._efd, 1)  # the reaper has work
                    got = self._cancel_results.pop(key, None)
                if got is not None:
                    return _outcome(got)
                if self._ring.closed or time.monotonic() > deadline:
                    return CancelOutcome.RUNNING
            self._ring._enter_wait(0, 1, 0.01)

    # --- close ------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting, cancel everything, wait for every completion
        (delivering it), unregister the eventfd, unmap and close the ring, close
        the eventfd.  Idempotent.  In a forked child it only drops the child's
        copies of the fds and mappings."""
        if self._owner.foreign:
            if not self._closed:
                self._closed = True
                self._nowait.close()
                self._ring.close()
                os.close(self._efd)
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._nowait.close()
            # wake a reaper blocked in io_uring_enter so it lets go of the ring
            self._ring.prep_nop(user_data=_WAKE)
            self._ring.submit()
        with self._reap_lock:
            try:
                try:
                    if self._threads is not None:
                        self._threads.close()
                finally:
                    self._drain()
            finally:
                with self._lock:
                    ring = self._ring
                    try:
                        ring.unregister_eventfd()
                    finally:
                        ring.close()
                        os.close(self._efd)

    def _drain(self, timeout: float = 10.0) -> None:
        """Cancel everything and deliver every completion.  An ``on_done`` that
        raises does not stop the drain: the first such exception is re-raised
        once every operation has been reaped."""
        ring = self._ring
        deadline = time.monotonic() + timeout
        inflight = self._inflight
        error: BaseException | None = None

        def reap_now() -> None:
            nonlocal error
            while True:
                try:
                    self._reap_nowait()
                    return
                except Exception as e:  # an on_done raised: keep draining
                    error = error or e

        while len(inflight) or self._port_live():
            with self._lock:
                try:
                    ring.sync_cancel(flags=_CANCEL_ANY_ALL)
                except OSError:
                    ring.prep_cancel_all(user_data=_WAKE)
                    ring.submit()
            reap_now()
            if not (len(inflight) or self._port_live()) or time.monotonic() > deadline:
                break
            ring._enter_wait(0, 1, 0.1)
            reap_now()
        if len(inflight):  # pragma: no cover - a request the kernel could not stop
            _graveyard.append(list(inflight))
            warnings.warn(
                f"io_uring engine closed with {len(inflight)} operations still in "
                "flight: their buffers are kept alive for ever",
                ResourceWarning,
                stacklevel=3,
            )
        if error is not None:
            raise error

    def read_nowait(self, fd: int, buffer: Any, offset: int, nbytes: int) -> int | None:
        """Try a read that the page cache can satisfy at once, in this thread,
        without the ring (:class:`xaio._pagecache.NowaitReader`:
        ``preadv2(RWF_NOWAIT)``, the attempt io_uring would make inline, minus
        the ring's round trip and the wake-up of a reaping thread; not on
        O_DIRECT or O_APPEND fds, never on streams).

        Returns:
            *nbytes* when the whole read was done here; None when the caller
            must submit the operation as usual (nothing is reported here:
            errors, short reads and EOF all go the normal way).
        """
        return self._nowait.read(fd, (buffer,), offset, nbytes)

    @property
    def nowait_reader(self) -> Callable[[int, Sequence[Any], int, int], int | None]:
        """:meth:`read_nowait` without its frame: the reader itself, which
        the engine's close closes."""
        return self._nowait.read

    def statistics(self) -> dict[str, Any]:
        """Counters: submitted, completed, cancel, eventfd_reads, in_flight,
        inline (reads done by :meth:`read_nowait`), and the ring's (``ring``)."""
        return {
            "name": self.name,
            **self._counts,
            "inline": self._nowait.count,
            "in_flight": len(self._inflight),
            "sync_cancel": self._sync_cancel,
            "ring": self._ring.statistics(),
            "threads": None if self._threads is None else self._threads.statistics(),
        }

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        if self._threads is not None:
            self._threads.abandon()  # as RoutedEngine's: never wait here
        finalize(self, self._owner.foreign)

    def __repr__(self) -> str:
        return f"<xaio.uring.UringEngine {'closed' if self._closed else 'open'}>"


class _Port(BatchPort):
    """A :class:`~xaio.engine.BatchPort` of a :class:`UringEngine` (see
    :meth:`UringEngine.batch_port`)."""

    def __init__(
        self, engine: UringEngine, pid: int, on_landed: Callable[[list[int], list[int]], None]
    ) -> None:
        super().__init__()
        self._engine = engine
        self._id = pid
        self._base = _PORT_TAG | (pid << 32)
        self._on_landed = on_landed

    def submit(self, slots: Sequence[int], hand_over: bool = True) -> None:
        eng = self._engine
        eng._owner.check()
        with eng._lock:
            if eng._closed:
                raise EngineClosedError("engine is closed")
            ring = eng._ring
            base = self._base
            fds, addresses, lengths = self.fds, self.addresses, self.lengths
            offsets, writes = self.offsets, self.writes
            fixed_index = ring._fixed_index if eng._fixed else None
            n = len(slots)
            done = 0
            # outside a delivery: written and handed over a group at a time
            group = _PORT_CHUNK if hand_over and not eng._delivering else 0
            while done < n:
                room = ring.sq_space_left()
                if not room:
                    ring._make_room()  # hands over what is queued (held, counted live)
                    room = ring.sq_space_left()
                if group and room > group:
                    room = group
                part = slots[done : done + room]
                # held before the SQEs exist: the kernel never sees an
                # address whose memory is not held
                ring._hold_each(part, self.holders, base)
                sqes, tail, mask = ring._sq_begin()
                start = tail
                try:
                    tail = prep_rw_slots(
                        sqes, tail, mask, part, fds, addresses, lengths, offsets, writes, base,
                        fixed_index,
                    )  # fmt: skip
                    ring._sq_end(tail)  # in the try: a signal at this call undoes it all
                except BaseException:
                    ring._sq_end(start)
                    ring._unhold_each(part, base)
                    raise
                self.live += len(part)
                eng._ports[self._id] = self
                done += len(part)
                if group:
                    ring._hand_over()
            eng._counts["submitted"] += n
            if hand_over and not group:  # submitted from a landing: hand over in groups
                eng._deferred = True
                ring._hand_over(0, _DEFER_FLUSH)

    def flush(self) -> None:
        eng = self._engine
        with eng._lock:
            if not eng._ring.closed:
                eng._ring._hand_over()

    def cancel(self, slots: Sequence[int]) -> None:
        eng = self._engine
        eng._owner.check()
        base = self._base
        with eng._lock:
            ring = eng._ring
            if ring.closed or not slots:
                return
            ring._hand_over()  # the kernel must hold a request to cancel it
            eng._counts["cancel"] += len(slots)
            queued = False
            for s in slots:
                if eng._sync_cancel:
                    try:
                        ring.sync_cancel(base | s)
                        continue
                    except OSError as e:
                        if e.errno != errno.EINVAL:
                            raise
                        eng._sync_cancel = False  # a kernel older than 6.0
                ring.prep_cancel(base | s, user_data=_WAKE)  # its own CQE is ignored
                queued = True
            if queued:
                ring.submit()

    def close(self) -> None:
        """Nothing to release here: the port leaves the engine's table when
        its last request lands (:meth:`_land`), whether or not it was closed."""

    def _land(self, cqes: list[Completion]) -> int:
        """Take the leading CQEs of *cqes* that are this port's (removing
        them) and hand them to ``on_landed``; returns how many."""
        hi = self._base >> 32
        slots: list[int] = []
        results: list[int] = []
        i = 0
        for ud, res, _fl in cqes:
            if ud >> 32 != hi:
                break
            slots.append(ud & _SLOT_MASK)
            results.append(res)
            i += 1
        del cqes[:i]
        self.live -= i
        if not self.live:
            self._engine._ports.pop(self._id, None)
        self._on_landed(slots, results)
        return i


def _outcome(ret: int) -> CancelOutcome:
    if ret >= 0:
        return CancelOutcome.CANCELED
    if ret == -errno.ENOENT:
        return CancelOutcome.DONE
    if ret in (-errno.EALREADY, -errno.ETIME):
        return CancelOutcome.RUNNING
    raise oserror(-ret)
