"""io_uring driven from pure Python: the :class:`Ring` and the :class:`UringEngine`.

Some facts about io_uring
=========================

*The rings.*  ``io_uring_setup(2)`` returns an fd and fills ``struct
io_uring_params`` with the offsets of the submission (SQ) and completion (CQ)
rings inside memory the process maps from that fd (one mapping for both rings
when the kernel reports ``IORING_FEAT_SINGLE_MMAP``, plus one for the SQE
array).  We write 64-byte SQEs with one precompiled ``struct.pack_into`` each,
publish them by storing the SQ tail, and hand them over with
``io_uring_enter(2)``; completions appear as 16-byte CQEs between the CQ head
(ours) and the CQ tail (the kernel's), read with ``unpack_from``.  The SQ index
array is filled once with the identity at setup (liburing does the same), so a
submission writes only the SQE and the tail.

*Buffer lifetime.*  The kernel keeps the addresses it was given and uses them
until it posts the request's CQE -- which can be long after the syscall that
submitted it returned, and after a cancel was "successful".  So a buffer stays
pinned (:class:`xaio._buffers.Pin`) until the CQE carrying *its own*
``user_data`` has been reaped: the Ring keeps what its ``prep_*`` helpers pinned
in a table keyed by ``user_data``; the engine keeps it in the
:class:`~xaio._ops.InFlight` table.  No API here takes an integer address.

*The two-CQE cancel race.*  Cancelling (``IORING_OP_ASYNC_CANCEL`` or the
synchronous ``IORING_REGISTER_SYNC_CANCEL`` of Linux 6.0) produces a result for
the cancel -- 0 (found and cancelled), ``-ENOENT`` (not found: it completed
already, its CQE may still be waiting in the ring), ``-EALREADY`` (it is
running in an io-wq worker, which was signalled and will complete it) -- *and*
a CQE for the target (``-ECANCELED``, ``-EINTR``, or its real result).  The two
arrive in either order; measured on this machine, cancelling a read pending on
an empty pipe posts the cancel's CQE first and the target's ``-ECANCELED``
right after (both inside the same ``io_uring_enter``).  Only the target's CQE
releases its buffers.  A synchronous cancel is given a zero timeout: when the
request is running the kernel reports ``-ETIME`` (after rechecking once), which
the engine reports as :attr:`CancelOutcome.RUNNING`; probed here with a 64 MiB
page-cached read forced into an io-wq worker (``IOSQE_ASYNC``): ``-ETIME``, and
the target then completes with its full byte count.  A read pending on a pipe
or socket (armed on poll, even with ``IOSQE_ASYNC``) is always cancellable: 0,
then ``-ECANCELED``.  Closing an fd cancels nothing: a read pending on a pipe
whose read end was closed still completes when data arrives.

*Memory ordering.*  Without SQPOLL (we never set it by default: it costs a core
on a small machine) the kernel reads the SQ tail and the SQEs only inside
``io_uring_enter``, called by the thread that wrote them (or by another thread
after taking the engine's lock, whose acquire/release orders the writes).
Program order plus the syscall is enough on every architecture, so
:meth:`Ring.submit` needs no fence.  The CQ is different: the kernel (an io-wq
worker or an interrupt on another CPU) writes CQEs and then stores the tail
with ``smp_store_release``; we must load the tail with acquire semantics before
reading the CQEs, and finish reading the CQEs before the store of our head
lets the kernel reuse the slots.  Each Python-level access to the mapping is a
separate C call, which the C compiler cannot reorder, so what remains is the
CPU.  On x86-64 (TSO) loads are not reordered with older loads and stores are
not reordered with older loads: the plain accesses in :meth:`Ring.peek_batch`
*are* acquire/release there.  This is the one place the code relies on x86-64
ordering.  On arm64 they are not, so there :meth:`Ring.peek_batch` puts a full
fence (the acquire and release of a :class:`threading.Lock`, i.e. an atomic
read-modify-write with acquire and a store-release, which together order the
preceding tail load before the following CQE loads, and the CQE loads before
the head store) at exactly those two points.  SQPOLL (only on request) changes
the SQ side: a kernel thread reads the tail concurrently, so
:meth:`Ring._submit_sqpoll` fences before the tail store and again between it
and the load of ``IORING_SQ_NEED_WAKEUP`` -- a store->load order that even
x86-64 keeps only with a locked instruction (liburing's ``io_uring_smp_mb``).

*Two paths.*  :class:`UringEngine` takes :class:`~xaio._ops.Operation` records
(any opcode, any buffer, from any thread) and builds an SQE for each, checking
each operation as it writes its SQE (a bad one makes ``submit`` take back what
it wrote: the tail is published only at the end), and as ``READ_FIXED`` when
the buffer lies in one the caller registered (``register_buffers``);
:class:`UringBatch` is the lean path for a fixed set of requests: every slot
keeps a ready-made SQE image whose offset alone changes, its buffer is
registered with the ring (``READ_FIXED``: the kernel skips pinning the pages
per request, ~0.8 us of system time per 4 KiB O_DIRECT read here), and
completions are read from the CQ straight into two preallocated lists.  The
block layer plugs a submission of more than two requests until the syscall
returns, and this machine's virtio disk completes a batch almost together, so
how a reaped batch is handed back matters: ``UringBatch.submit(slots, chunk)``
enters once per *chunk* SQEs, and the engine hands submissions made by
``on_done`` callbacks over in groups of four while it delivers the rest
(``_DEFER_FLUSH``).  One enter per request costs a virtio kick each (~20 us
of system time per read, measured).  Taking a few completions at a time
(``UringBatch.reap(max_nr=8)``, ``UringEngine.reap(max_n=16)``) and
resubmitting them before taking the rest lets the device start on them while
Python handles the others: in alternating runs against fio at depth 64 that
moved the engine from 0.82x to 1.01x and the batch from 0.89x to 0.94x.

*Unavailable.*  ``io_uring_setup`` fails with ``ENOSYS`` when the kernel lacks
io_uring (or a seccomp filter says so), and with ``EPERM`` when
``kernel.io_uring_disabled`` is 2 (or 1 and the process is not in
``kernel.io_uring_group``) or when a container's seccomp profile forbids it
(Docker's default does).  :class:`Ring` turns these into ``OSError`` with that
errno and a message naming the cause; :func:`unavailable_reason` probes once.
xaio also requires ``IORING_FEAT_NODROP`` and ``IORING_FEAT_EXT_ARG`` (Linux
5.11): without them it reports ``ENOSYS`` and the engine layer falls back.

*Overflow.*  With ``IORING_FEAT_NODROP`` a full CQ does not lose completions:
the kernel queues them internally and sets ``IORING_SQ_CQ_OVERFLOW`` in the SQ
flags; an ``io_uring_enter(IORING_ENTER_GETEVENTS)`` moves them into the CQ as
it drains.  :meth:`Ring.peek_batch` does that flush when it sees the flag.
Measured here: a ring with a 2-entry CQ given 64 NOPs keeps 62 in the kernel's
list and hands all of them over, in order, as the CQ is drained.
``io_uring_enter`` may answer ``EBUSY`` or ``EAGAIN`` (overflow not flushable,
out of memory): :meth:`Ring.submit` lets the kernel flush its overflow list
(``GETEVENTS``) and tries again a few times before reporting it; unconsumed
SQEs stay queued for the next submit.  ``EINTR`` is retried after running the
signal handlers (PEP 475), with what remains of a timeout.

*Fork.*  The child inherits the ring fd (and the mapping dups Python's mmap
holds), and the kernel does *not* stop it from using the parent's ring: probed
on this machine (Linux 6.18), a child can ``io_uring_enter`` on the parent's
fd, its NOP is accepted and its CQE lands in the *shared* CQ, where the parent
-- or the child -- would reap it; reading the CQ in the child steals the
parent's completions.  The mappings are inherited too.  So every Ring and
engine remembers the fork generation it was created in (bumped by
``os.register_at_fork``) and refuses any use in a child with ``OSError(EINVAL)``
naming the cause; closing it there (or garbage collection) only drops the
child's copies of the fd and mappings, which does not disturb the parent
(closing an io_uring fd cancels nothing: the ring lives until its last
reference goes).

*Requests belong to the thread that submitted them.*  A request still waiting
(a read pending on a pipe or socket, a poll) when the thread that submitted it
has exited is cancelled by the kernel as soon as it would run -- e.g. when the
data arrives: it completes with ``-ECANCELED`` although nobody asked, and the
data stays in the pipe (probed here, and tested).  Regular-file I/O already
under way still completes.  So submit from threads that outlive their requests
-- an event loop's thread, the main thread, a reaper -- and never from a
throw-away worker; :mod:`xaio.posix` hands requests from other threads to its
reaper for this reason.

*Slow file systems.*  A read or write on a file system that cannot be asked
not to block (FUSE, NFS, CIFS...) is not punted to io-wq: ``io_uring_enter``
runs it inline, and a batch of them one after the other (measured here on a
FUSE file taking 1 s per read: four reads, buffered or O_DIRECT, kept
``io_uring_enter`` for 4 s; ``IOSQE_ASYNC`` makes that 1 s).  And io_uring
gets a short transfer there wrong: a FUSE daemon serving 300 of 4096 bytes
makes a READ carry on at the wrong file offset (bytes 300.. of the buffer
hold the file's bytes 0..) and report 600 or 4096, and an O_DIRECT WRITE
report more than was written, with or without ``IOSQE_ASYNC``, where
``os.preadv``/``os.pwrite`` say 300 (Linux 6.18).  So
:meth:`UringEngine.submit` sends every request on such an fd to a thread
engine (:func:`xaio.engine.route`, :func:`xaio.engine.fd_kind` asked once
per fd per batch), made on first use; a poll on the ring watches that
engine's eventfd, so ``reap``, ``fileno`` and ``cancel`` serve both.  The
lean :class:`UringBatch` and :class:`Ring` do only what they are told.

*Closing with work in flight.*  Closing the ring fd makes the kernel cancel and
reap in the background, and it may still be writing into our buffers after
``close(2)`` returned.  So :meth:`Ring.close` and :meth:`UringEngine.close`
first cancel everything and wait for every outstanding CQE, then unregister,
unmap and close.

References: io_uring_setup(2), io_uring_enter(2), io_uring_register(2),
io_uring_prep_read(3) and the other liburing prep pages, liburing's
``src/setup.c`` and ``src/queue.c``.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import itertools
import mmap
import operator
import os
import platform
import select
import struct
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from xaio import _syscall
from xaio._abi import uring as abi
from xaio._buffers import Pin, iovec_array, pin, pin_many
from xaio._inline import NowaitReader
from xaio._ops import (
    IOV_MAX,
    CancelOutcome,
    InFlight,
    OpCode,
    Operation,
    OpState,
    check_batch,
)
from xaio._syscall import check, oserror
from xaio.engine._protocol import Engine, EngineClosedError
from xaio.engine._route import KIND_BLOCKING, route

if TYPE_CHECKING:
    from xaio.threads import ThreadEngine

__all__ = [
    "Ring",
    "UringBatch",
    "SlotInFlightError",
    "UringEngine",
    "Completion",
    "unavailable_reason",
    "AT_FDCWD",
    "STATX_SIZE",
]

#: A completion as the Ring reports it: ``(user_data, res, flags)``.
Completion = tuple[int, int, int]

AT_FDCWD = -100
#: ``sizeof(struct statx)``: the least a ``prep_statx`` buffer must hold.
STATX_SIZE = 256

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_SQE_SIZE = 64
_CQE_SIZE = 16
_IOV_MAX = IOV_MAX
_REQUIRED_FEATURES = abi.IORING_FEAT_NODROP | abi.IORING_FEAT_EXT_ARG
_pack_sqe = abi.SQE_STRUCT.pack_into
_unpack_cqe = abi.CQE_STRUCT.unpack_from
_iter_cqes = abi.CQE_STRUCT.iter_unpack

# x86-64 is TSO: plain loads/stores already have acquire/release semantics (see
# the module essay).  Anywhere else, peek_batch fences with a lock round trip.
_NEEDS_FENCE = platform.machine().lower() not in ("x86_64", "amd64")
_fence_lock = threading.Lock()


def _fence() -> None:
    """A full memory barrier (acquire + release of a lock) for weakly ordered CPUs."""
    _fence_lock.acquire()
    _fence_lock.release()


# --- io_uring_enter on the hot path --------------------------------------------------
# _syscall.io_uring_enter_fast skips ctypes' argtype conversion on x86-64 (it
# costs more than the syscall itself); same ret-or--errno convention, and errors
# still become OSError only through _syscall.check/oserror.
_io_uring_enter: Callable[..., int] = _syscall.io_uring_enter_fast

#: SQEs handed to the kernel per io_uring_enter by UringEngine.submit (0: all).
#: Linux AIO gains from small chunks (io_submit plugs the block queue for the
#: whole call, see xaio.linux); on io_uring chunks of 4 measured no better than
#: one enter for the whole batch (O_DIRECT, depth 32/64), and page-cached reads,
#: which complete inside the enter, only pay more syscalls.  So: one enter.
_SUBMIT_CHUNK = 0

#: While UringEngine.reap delivers completions, submissions made by the
#: ``on_done`` callbacks are held in the SQ and handed over every this many
#: SQEs (and whatever is left when the delivery ends).  One enter per request
#: costs a virtio kick per request (~20 us of system time per 4 KiB O_DIRECT
#: read here, against ~6 us batched); one enter for the whole batch leaves the
#: device idle while Python delivers and re-arms the rest (the device completes
#: a batch almost together).  Four keeps the device fed and the kicks few:
#: see benchmarks/notes.md.
_DEFER_FLUSH = 4


# --- fork detection ------------------------------------------------------------------
# os.getpid() is a real syscall (glibc no longer caches it): count forks instead.
_fork_generation = [0]


def _after_fork_in_child() -> None:
    _fork_generation[0] += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def _refused_in_child(pid: int) -> OSError:
    err = oserror(errno.EINVAL)
    err.strerror = (
        f"{err.strerror}: this io_uring ring belongs to process {pid}; a forked child "
        "must not use it (it would steal the parent's completions): create a new one"
    )
    return err


def _closed_error() -> OSError:
    err = oserror(errno.EBADF)
    err.strerror = f"{err.strerror}: the io_uring ring is closed"
    return err


# --- unavailability ------------------------------------------------------------------

SetupFunction = Callable[[int, int], int]
"""``io_uring_setup(entries, params_address) -> fd or -errno`` (the private test hook)."""


def _read_sysctl(name: str) -> str | None:
    return _syscall.read_proc(f"/proc/sys/{name.replace('.', '/')}")


def _explain(err: int) -> str:
    """Why io_uring_setup failed with *err*, as a short message naming the cause."""
    if err == errno.EPERM:
        disabled = _read_sysctl("kernel.io_uring_disabled")
        if disabled == "2":
            return "kernel.io_uring_disabled=2"
        if disabled == "1":
            group = _read_sysctl("kernel.io_uring_group")
            return f"kernel.io_uring_disabled=1 and not in kernel.io_uring_group={group}"
        return "io_uring_setup is not permitted here (seccomp filter of a container?)"
    if err == errno.ENOSYS:
        return "the kernel has no io_uring (Linux < 5.1, CONFIG_IO_URING=n, or seccomp)"
    return os.strerror(err)


def _unavailable(err: int, detail: str | None = None) -> OSError:
    e = oserror(err)
    e.strerror = f"{errno.errorcode.get(err, str(err))}: {detail or _explain(err)}"
    return e


_reason_cache: list[str | None] = []


def unavailable_reason(*, _setup: SetupFunction | None = None) -> str | None:
    """Whether io_uring works here: None if it does, else a short reason.

    Probes once (creating and closing a tiny ring) and caches the answer; the
    reason names the errno and the cause, e.g. ``"EPERM: kernel.io_uring_disabled=2"``.

    Args:
        _setup: private test hook replacing the ``io_uring_setup`` syscall
            (the answer is then not cached).

    Returns:
        None, or the reason io_uring cannot be used.
    """
    if _setup is None and _reason_cache:
        return _reason_cache[0]
    try:
        Ring(2, _setup=_setup).close()
        reason: str | None = None
    except OSError as e:
        reason = e.strerror or os.strerror(e.errno or 0)
    if _setup is None:
        _reason_cache.append(reason)
    return reason


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


# --- the Ring ------------------------------------------------------------------------


class Ring:
    """An io_uring instance: setup, the SQ/CQ rings, prep helpers, submit and reap.

    A low-level object in liburing's vocabulary: ``prep_*`` helpers fill SQEs
    (each funnels into one private ``_prep_rw``), :meth:`submit` hands them to
    the kernel, :meth:`peek_cqe` / :meth:`peek_batch` / :meth:`wait_cqe` take
    completions as ``(user_data, res, flags)`` tuples.  Python buffers given to
    a ``prep_*`` helper are pinned by the Ring until the CQE carrying that
    ``user_data`` has been taken (so ``user_data`` must be unique among
    requests in flight with buffers).  A Ring is not thread-safe: use one from
    one thread at a time (:class:`UringEngine` adds the locking).

    If the SQ is full, a ``prep_*`` helper first submits what is queued.

    Corresponds to io_uring_setup(2), io_uring_queue_init_params(3).
    """

    _closed: bool
    _keep: dict[int, Any]

    def __init__(
        self,
        entries: int = 256,
        flags: int = 0,
        *,
        cq_entries: int | None = None,
        sq_thread_idle: int | None = None,
        _setup: SetupFunction | None = None,
    ) -> None:
        """Create a ring.

        Args:
            entries: SQ size (rounded up to a power of two by the kernel).
            flags: ``IORING_SETUP_*`` flags.  ``IORING_SETUP_SUBMIT_ALL`` is
                added when the kernel knows it (Linux 5.18), so a bad SQE never
                stops the rest of a batch; SQPOLL is never added.
            cq_entries: CQ size (``IORING_SETUP_CQSIZE``); default twice ``entries``.
            sq_thread_idle: with ``IORING_SETUP_SQPOLL``, milliseconds the
                kernel's SQ thread polls before it sleeps (kernel default 1000).
            _setup: private test hook replacing the ``io_uring_setup`` syscall.

        Raises:
            OSError: ``ENOSYS``/``EPERM`` with the cause in the message when
                io_uring is unavailable; ``EINVAL`` for bad sizes or flags;
                ``ENOSYS`` when the kernel lacks NODROP or EXT_ARG.
            ValueError: *entries* or *cq_entries* not positive.
        """
        self._closed = True  # until fully set up (so __del__ does nothing)
        self._keep = {}
        self._mmaps: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self.fd = -1
        if not isinstance(entries, int) or entries <= 0:
            raise ValueError(f"entries must be a positive int, not {entries!r}")
        if cq_entries is not None and (not isinstance(cq_entries, int) or cq_entries <= 0):
            raise ValueError(f"cq_entries must be a positive int, not {cq_entries!r}")
        setup = _setup if _setup is not None else _syscall.io_uring_setup
        params = abi.io_uring_params()
        extra = abi.IORING_SETUP_SUBMIT_ALL
        while True:
            ctypes.memset(ctypes.addressof(params), 0, ctypes.sizeof(params))
            params.flags = flags | extra
            if cq_entries is not None:
                params.flags |= abi.IORING_SETUP_CQSIZE
                params.cq_entries = cq_entries
            if sq_thread_idle is not None:
                params.sq_thread_idle = sq_thread_idle
            fd = setup(entries, ctypes.addressof(params))
            if fd == -errno.EINVAL and extra:
                extra = 0  # a kernel older than SUBMIT_ALL: try without it
                continue
            break
        if fd < 0:
            if -fd in (errno.ENOSYS, errno.EPERM):
                raise _unavailable(-fd)
            raise oserror(-fd)
        self.fd = fd
        try:
            if params.features & _REQUIRED_FEATURES != _REQUIRED_FEATURES:
                raise _unavailable(
                    errno.ENOSYS, "io_uring lacks IORING_FEAT_NODROP/EXT_ARG (Linux < 5.11)"
                )
            self._map(params)
        except BaseException:
            self._unmap()
            os.close(fd)
            self.fd = -1
            raise
        self.params = params
        self.features: int = params.features
        self.flags: int = params.flags
        self.sq_entries: int = params.sq_entries
        self._sqpoll = bool(params.flags & abi.IORING_SETUP_SQPOLL)
        self.cq_entries: int = params.cq_entries
        self._generation = _fork_generation[0]
        self._pid = os.getpid()
        self._probe: frozenset[int] | None = None
        self._fixed_buffers: list[Pin | None] = []
        self._eventfd: int | None = None
        self._files_registered = False
        # the EXT_ARG wait argument, preallocated
        self._ts = abi.kernel_timespec()
        self._arg = abi.io_uring_getevents_arg()
        self._arg.ts = ctypes.addressof(self._ts)
        self._arg_addr = ctypes.addressof(self._arg)
        self._arg_size = ctypes.sizeof(self._arg)
        self._cancel_reg = abi.io_uring_sync_cancel_reg()
        self._stats = {"enter": 0, "submitted": 0, "reaped": 0, "overflow_flush": 0}
        self._closed = False

    def _map(self, p: abi.io_uring_params) -> None:
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        mflags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        sq_size = p.sq_off.array + p.sq_entries * 4
        cq_size = p.cq_off.cqes + p.cq_entries * _CQE_SIZE
        single = bool(p.features & abi.IORING_FEAT_SINGLE_MMAP)
        if single:
            sq_size = cq_size = max(sq_size, cq_size)
        sq_mm = mmap.mmap(self.fd, sq_size, mflags, prot, offset=abi.IORING_OFF_SQ_RING)
        self._mmaps.append(sq_mm)
        if single:
            cq_mm = sq_mm
        else:
            cq_mm = mmap.mmap(self.fd, cq_size, mflags, prot, offset=abi.IORING_OFF_CQ_RING)
            self._mmaps.append(cq_mm)
        sqes = mmap.mmap(
            self.fd, p.sq_entries * _SQE_SIZE, mflags, prot, offset=abi.IORING_OFF_SQES
        )
        self._mmaps.append(sqes)
        self._sqes = sqes
        self._cq_mm = cq_mm
        sq32 = memoryview(sq_mm).cast("I")
        cq32 = sq32 if single else memoryview(cq_mm).cast("I")
        self._views += [sq32] if single else [sq32, cq32]
        self._sq32 = sq32
        self._cq32 = cq32
        so, co = p.sq_off, p.cq_off
        self._sq_khead = so.head // 4
        self._sq_ktail = so.tail // 4
        self._sq_kflags = so.flags // 4
        self._sq_kdropped = so.dropped // 4
        self._sq_mask: int = sq32[so.ring_mask // 4]
        self._sq_n: int = sq32[so.ring_entries // 4]
        array = so.array // 4
        for i in range(self._sq_n):  # identity: SQE i is always array slot i
            sq32[array + i] = i
        self._sqe_tail: int = sq32[self._sq_ktail]
        self._cq_khead = co.head // 4
        self._cq_ktail = co.tail // 4
        self._cq_koverflow = co.overflow // 4
        self._cq_mask: int = cq32[co.ring_mask // 4]
        self._cq_n: int = cq32[co.ring_entries // 4]
        self._cqes = co.cqes
        self._cq_head: int = cq32[self._cq_khead]

    # --- state --------------------------------------------------------------------

    def _check(self) -> None:
        if self._generation != _fork_generation[0]:
            raise _refused_in_child(self._pid)
        if self._closed:
            raise _closed_error()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    def fileno(self) -> int:
        """The ring's file descriptor.

        Raises:
            OSError: EBADF if closed, EINVAL in a forked child.
        """
        self._check()
        return self.fd

    def statistics(self) -> dict[str, Any]:
        """Counters: ``enter`` (io_uring_enter calls), ``submitted``, ``reaped``,
        ``overflow_flush``, plus sizes, features and what is in flight with pinned
        buffers (``held``)."""
        return {
            **self._stats,
            "sq_entries": getattr(self, "sq_entries", 0),
            "cq_entries": getattr(self, "cq_entries", 0),
            "features": getattr(self, "features", 0),
            "held": len(self._keep),
            "closed": self._closed,
        }

    def sq_space_left(self) -> int:
        """Free SQE slots (io_uring_sq_space_left(3))."""
        return self._sq_n - ((self._sqe_tail - int(self._sq32[self._sq_khead])) & _U32)

    def sq_ready(self) -> int:
        """SQEs prepared and not yet submitted (io_uring_sq_ready(3))."""
        return (self._sqe_tail - int(self._sq32[self._sq_khead])) & _U32

    def cq_ready(self) -> int:
        """CQEs waiting in the CQ (io_uring_cq_ready(3); not counting overflow)."""
        return (int(self._cq32[self._cq_ktail]) - self._cq_head) & _U32

    @property
    def cq_overflow(self) -> int:
        """The kernel's count of CQEs it had to drop (0 with NODROP unless out of memory)."""
        return int(self._cq32[self._cq_koverflow])

    # --- io_uring_enter -----------------------------------------------------------

    def _enter(self, to_submit: int, min_complete: int, flags: int) -> int:
        """io_uring_enter without a timeout, retrying EINTR; returns ret or -errno."""
        while True:
            self._stats["enter"] += 1
            ret = _io_uring_enter(self.fd, to_submit, min_complete, flags, 0, 0)
            if ret != -errno.EINTR:
                return ret
            _syscall.run_signal_handlers()

    def _enter_wait(self, to_submit: int, min_complete: int, timeout: float | None) -> int:
        """io_uring_enter(GETEVENTS[|EXT_ARG]) waiting at most *timeout* seconds.

        Returns ret or -errno (``-ETIME`` on timeout); EINTR is retried with
        the remaining time after running the signal handlers."""
        if timeout is None:
            return self._enter(to_submit, min_complete, abi.IORING_ENTER_GETEVENTS)
        deadline = time.monotonic() + max(timeout, 0.0)
        flags = abi.IORING_ENTER_GETEVENTS | abi.IORING_ENTER_EXT_ARG
        ts = self._ts
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            whole = int(left)
            ts.tv_sec = whole
            ts.tv_nsec = min(int((left - whole) * 1e9), 999_999_999)
            self._stats["enter"] += 1
            ret = _io_uring_enter(
                self.fd, to_submit, min_complete, flags, self._arg_addr, self._arg_size
            )
            if ret != -errno.EINTR:
                return ret
            _syscall.run_signal_handlers()
            to_submit = 0 if ret < 0 else to_submit

    # --- SQEs -----------------------------------------------------------------------

    def get_sqe(self) -> int:
        """Take the next free SQE slot; return its index, or -1 if the SQ is full.

        The slot is published by the next :meth:`submit`; a ``prep_*`` helper
        fills it.  Corresponds to io_uring_get_sqe(3).

        Raises:
            OSError: EBADF if closed, EINVAL in a forked child.
        """
        self._check()
        tail = self._sqe_tail
        if (tail - self._sq32[self._sq_khead]) & _U32 >= self._sq_n:
            return -1
        self._sqe_tail = (tail + 1) & _U32
        return tail & self._sq_mask

    def _sqe(self) -> int:
        """A free SQE slot, submitting what is queued first if the SQ is full."""
        idx = self.get_sqe()
        if idx < 0:
            self._make_room()
            idx = self.get_sqe()
        return idx

    def _enter_pending(self, pending: int, chunk: int) -> None:
        """Hand *pending* published SQEs to the kernel, at most *chunk* per
        io_uring_enter (0: all in one); on EINTR or EBUSY/EAGAIN backpressure
        fall back to :meth:`submit`, which retries carefully.  The hot path of
        ``UringEngine.submit`` and ``UringBatch.submit`` (no SQPOLL)."""
        step = chunk or pending
        fd = self.fd
        stats = self._stats
        while pending:
            stats["enter"] += 1
            ret = _io_uring_enter(fd, pending if pending < step else step, 0, 0, 0, 0)
            if ret <= 0:
                self.submit()
                return
            pending -= ret

    def _make_room(self) -> None:
        """Submit what is queued; with SQPOLL, wait until the SQ thread has
        taken at least one SQE (``IORING_ENTER_SQ_WAIT``)."""
        self.submit()
        while self.sq_space_left() == 0:
            if not self._sqpoll:  # pragma: no cover - SUBMIT_ALL consumes everything
                raise oserror(errno.EBUSY)
            ret = self._enter(0, 0, abi.IORING_ENTER_SQ_WAIT)
            if ret < 0:
                raise oserror(-ret)

    def _prep_rw(
        self,
        opcode: int,
        fd: int,
        addr: int,
        length: int,
        offset: int,
        user_data: int,
        op_flags: int = 0,
        sqe_flags: int = 0,
        buf_index: int = 0,
        file_index: int = 0,
        addr3: int = 0,
        ioprio: int = 0,
    ) -> int:
        """Fill one SQE (every prep helper funnels here, as in liburing's
        io_uring_prep_rw).  *addr* must come from a live Pin or a ctypes object
        the caller keeps alive until the CQE is reaped.  Returns the SQE index."""
        idx = self._sqe()
        _pack_sqe(
            self._sqes,
            idx * _SQE_SIZE,
            opcode,
            sqe_flags,
            ioprio,
            fd,
            offset & _U64,
            addr & _U64,
            length & _U32,
            op_flags & _U32,
            user_data & _U64,
            buf_index,
            0,
            file_index,
            addr3 & _U64,
            0,
        )
        return idx

    def _hold(self, user_data: int, obj: Any) -> None:
        if user_data in self._keep:
            raise ValueError(f"user_data {user_data} is already in flight with buffers")
        self._keep[user_data] = obj

    def _prep_held(
        self,
        keep: Any,
        opcode: int,
        fd: int,
        addr: int,
        length: int,
        offset: int,
        user_data: int,
        op_flags: int = 0,
        sqe_flags: int = 0,
        buf_index: int = 0,
        file_index: int = 0,
    ) -> int:
        if user_data in self._keep:
            raise ValueError(f"user_data {user_data} is already in flight with buffers")
        idx = self._prep_rw(
            opcode,
            fd,
            addr,
            length,
            offset,
            user_data,
            op_flags,
            sqe_flags,
            buf_index,
            file_index,
        )
        self._keep[user_data] = keep
        return idx

    @staticmethod
    def _path(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> Pin:
        raw = os.fsencode(path)
        if b"\0" in raw:
            raise ValueError("embedded null byte in path")
        return pin(raw + b"\0", writable=False)

    @staticmethod
    def _iovecs(pins: Sequence[Pin]) -> Any:
        if len(pins) > _IOV_MAX:
            raise ValueError(f"at most {_IOV_MAX} buffers, not {len(pins)}")
        return iovec_array(pins)

    # --- prep helpers (liburing names, os argument order) ---------------------------

    def prep_nop(self, *, user_data: int = 0, sqe_flags: int = 0) -> int:
        """Queue a no-op (io_uring_prep_nop(3)); its CQE has res 0.

        Returns:
            The SQE index.
        """
        return self._prep_rw(abi.IORING_OP_NOP, -1, 0, 0, 0, user_data, 0, sqe_flags)

    def prep_read(
        self,
        fd: int,
        buf: Any,
        offset: int,
        *,
        user_data: int = 0,
        rw_flags: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a read of ``len(buf)`` bytes at *offset* into *buf*
        (io_uring_prep_read(3)); ``offset=-1`` reads at the file position.

        Args:
            fd: file descriptor (or fixed-file index with ``IOSQE_FIXED_FILE``).
            buf: a writable bytes-like object, pinned until the CQE is taken.
            offset: file offset, or -1 for the current position.
            user_data: returned in the CQE.
            rw_flags: ``RWF_*`` flags, as for preadv2(2).
            sqe_flags: ``IOSQE_*`` flags.

        Returns:
            The SQE index.  The CQE's res is the byte count or -errno.

        Raises:
            TypeError: *buf* is not a writable buffer.
            ValueError: *user_data* is already in flight with buffers.
        """
        p = pin(buf, writable=True)
        return self._prep_held(
            p, abi.IORING_OP_READ, fd, p.address, p.nbytes, offset, user_data, rw_flags, sqe_flags
        )

    def prep_write(
        self,
        fd: int,
        data: Any,
        offset: int,
        *,
        user_data: int = 0,
        rw_flags: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a write of *data* at *offset* (io_uring_prep_write(3)); see
        :meth:`prep_read` for the arguments.

        Raises:
            TypeError: *data* is not bytes-like.
            ValueError: *user_data* is already in flight with buffers.
        """
        p = pin(data, writable=False)
        return self._prep_held(
            p, abi.IORING_OP_WRITE, fd, p.address, p.nbytes, offset, user_data, rw_flags, sqe_flags
        )

    def prep_readv(
        self,
        fd: int,
        buffers: Sequence[Any],
        offset: int,
        *,
        user_data: int = 0,
        rw_flags: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a scatter read into *buffers* (io_uring_prep_readv(3), preadv2(2)).

        Raises:
            TypeError: a buffer is not writable.
            ValueError: more than 1024 buffers, or *user_data* already in flight.
        """
        pins = pin_many(buffers, writable=True)
        iovs = self._iovecs(pins)
        return self._prep_held(
            (pins, iovs),
            abi.IORING_OP_READV,
            fd,
            ctypes.addressof(iovs),
            len(pins),
            offset,
            user_data,
            rw_flags,
            sqe_flags,
        )

    def prep_writev(
        self,
        fd: int,
        buffers: Sequence[Any],
        offset: int,
        *,
        user_data: int = 0,
        rw_flags: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a gather write of *buffers* (io_uring_prep_writev(3), pwritev2(2)).

        Raises:
            TypeError: a buffer is not bytes-like.
            ValueError: more than 1024 buffers, or *user_data* already in flight.
        """
        pins = pin_many(buffers, writable=False)
        iovs = self._iovecs(pins)
        return self._prep_held(
            (pins, iovs),
            abi.IORING_OP_WRITEV,
            fd,
            ctypes.addressof(iovs),
            len(pins),
            offset,
            user_data,
            rw_flags,
            sqe_flags,
        )

    def _fixed(self, buf: Any, buf_index: int, writable: bool) -> Pin:
        p = pin(buf, writable=writable)
        if not 0 <= buf_index < len(self._fixed_buffers):
            raise ValueError(f"no registered buffer with index {buf_index}")
        reg = self._fixed_buffers[buf_index]
        if reg is None:
            raise ValueError(f"registered buffer slot {buf_index} is empty")
        if not (reg.address <= p.address and p.address + p.nbytes <= reg.address + reg.nbytes):
            raise ValueError(f"buffer does not lie inside registered buffer {buf_index}")
        return p

    def prep_read_fixed(
        self,
        fd: int,
        buf: Any,
        offset: int,
        buf_index: int,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a read into (part of) registered buffer *buf_index*
        (io_uring_prep_read_fixed(3)).

        Args:
            buf: a writable view lying inside the buffer registered at *buf_index*
                with :meth:`register_buffers` (e.g. a slice of it).

        Raises:
            ValueError: *buf* is not inside that registered buffer.
        """
        p = self._fixed(buf, buf_index, True)
        return self._prep_held(
            p,
            abi.IORING_OP_READ_FIXED,
            fd,
            p.address,
            p.nbytes,
            offset,
            user_data,
            0,
            sqe_flags,
            buf_index,
        )

    def prep_write_fixed(
        self,
        fd: int,
        buf: Any,
        offset: int,
        buf_index: int,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a write from (part of) registered buffer *buf_index*
        (io_uring_prep_write_fixed(3)); see :meth:`prep_read_fixed`."""
        p = self._fixed(buf, buf_index, False)
        return self._prep_held(
            p,
            abi.IORING_OP_WRITE_FIXED,
            fd,
            p.address,
            p.nbytes,
            offset,
            user_data,
            0,
            sqe_flags,
            buf_index,
        )

    def prep_fsync(
        self,
        fd: int,
        *,
        datasync: bool = False,
        offset: int = 0,
        length: int = 0,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue fsync(2), or fdatasync(2) with *datasync* (io_uring_prep_fsync(3));
        *offset*/*length* restrict the range (0 = the whole file)."""
        flags = abi.IORING_FSYNC_DATASYNC if datasync else 0
        return self._prep_rw(
            abi.IORING_OP_FSYNC, fd, 0, length, offset, user_data, flags, sqe_flags
        )

    def prep_poll_add(self, fd: int, events: int, *, user_data: int = 0, sqe_flags: int = 0) -> int:
        """Queue a one-shot poll for *events* (``select.POLLIN`` ...) on *fd*
        (io_uring_prep_poll_add(3)); res is the ready mask or -errno."""
        return self._prep_rw(
            abi.IORING_OP_POLL_ADD, fd, 0, 0, 0, user_data, events & _U32, sqe_flags
        )

    def prep_timeout(
        self,
        seconds: float,
        *,
        count: int = 0,
        flags: int = 0,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue a timeout (io_uring_prep_timeout(3)): it completes with
        ``-ETIME`` after *seconds*, or with 0 once *count* other CQEs were
        posted (0 = pure timer).

        Raises:
            ValueError: negative *seconds* or *count*, or *user_data* in flight.
        """
        if seconds < 0 or count < 0:
            raise ValueError("seconds and count must be >= 0")
        ts = abi.kernel_timespec(int(seconds), int((seconds - int(seconds)) * 1e9))
        return self._prep_held(
            ts,
            abi.IORING_OP_TIMEOUT,
            -1,
            ctypes.addressof(ts),
            1,
            count,
            user_data,
            flags,
            sqe_flags,
        )

    def prep_cancel(
        self, target: int, *, flags: int = 0, user_data: int = 0, sqe_flags: int = 0
    ) -> int:
        """Queue a cancel of the request(s) whose user_data is *target*
        (io_uring_prep_cancel64(3)); add ``IORING_ASYNC_CANCEL_ALL`` to *flags*
        to cancel every match.  res: 0 (cancelled; with ALL, the number
        cancelled), -ENOENT (not found), -EALREADY (running)."""
        return self._prep_rw(
            abi.IORING_OP_ASYNC_CANCEL, -1, target, 0, 0, user_data, flags, sqe_flags
        )

    def prep_cancel_fd(
        self, fd: int, *, flags: int = 0, user_data: int = 0, sqe_flags: int = 0
    ) -> int:
        """Queue a cancel of the request(s) on *fd* (io_uring_prep_cancel_fd(3),
        Linux 5.19); ``IORING_ASYNC_CANCEL_ALL`` in *flags* cancels all of them."""
        flags |= abi.IORING_ASYNC_CANCEL_FD
        return self._prep_rw(abi.IORING_OP_ASYNC_CANCEL, fd, 0, 0, 0, user_data, flags, sqe_flags)

    def prep_cancel_all(self, *, user_data: int = 0, sqe_flags: int = 0) -> int:
        """Queue a cancel of every request in flight (``IORING_ASYNC_CANCEL_ANY |
        IORING_ASYNC_CANCEL_ALL``); res is the number cancelled or -ENOENT."""
        flags = abi.IORING_ASYNC_CANCEL_ANY | abi.IORING_ASYNC_CANCEL_ALL
        return self._prep_rw(abi.IORING_OP_ASYNC_CANCEL, -1, 0, 0, 0, user_data, flags, sqe_flags)

    def prep_openat(
        self,
        dirfd: int,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        flags: int,
        mode: int = 0o777,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue openat(2) (io_uring_prep_openat(3)); res is the new fd or -errno.
        Use :data:`AT_FDCWD` for *dirfd*.

        Raises:
            ValueError: *path* contains a NUL byte, or *user_data* in flight.
        """
        p = self._path(path)
        return self._prep_held(
            p, abi.IORING_OP_OPENAT, dirfd, p.address, mode, 0, user_data, flags, sqe_flags
        )

    def prep_close(self, fd: int, *, user_data: int = 0, sqe_flags: int = 0) -> int:
        """Queue close(2) of *fd* (io_uring_prep_close(3))."""
        return self._prep_rw(abi.IORING_OP_CLOSE, fd, 0, 0, 0, user_data, 0, sqe_flags)

    def prep_statx(
        self,
        dirfd: int,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        flags: int,
        mask: int,
        statxbuf: Any,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue statx(2) (io_uring_prep_statx(3)) filling *statxbuf*.

        Args:
            statxbuf: a writable buffer of at least :data:`STATX_SIZE` bytes,
                which receives ``struct statx``.

        Raises:
            ValueError: *statxbuf* is too small, or *path* contains a NUL byte.
            TypeError: *statxbuf* is not writable.
        """
        out = pin(statxbuf, writable=True)
        if out.nbytes < STATX_SIZE:
            out.release()
            raise ValueError(f"statx buffer must hold {STATX_SIZE} bytes, not {out.nbytes}")
        p = self._path(path)
        return self._prep_held(
            (p, out),
            abi.IORING_OP_STATX,
            dirfd,
            p.address,
            mask,
            out.address,
            user_data,
            flags,
            sqe_flags,
        )

    def prep_fallocate(
        self,
        fd: int,
        mode: int,
        offset: int,
        length: int,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue fallocate(2) (io_uring_prep_fallocate(3))."""
        return self._prep_rw(
            abi.IORING_OP_FALLOCATE, fd, length, mode, offset, user_data, 0, sqe_flags
        )

    def prep_renameat(
        self,
        olddirfd: int,
        oldpath: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        newdirfd: int,
        newpath: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        flags: int = 0,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue renameat2(2) (io_uring_prep_renameat(3))."""
        old, new = self._path(oldpath), self._path(newpath)
        return self._prep_held(
            (old, new),
            abi.IORING_OP_RENAMEAT,
            olddirfd,
            old.address,
            newdirfd,
            new.address,
            user_data,
            flags,
            sqe_flags,
        )

    def prep_unlinkat(
        self,
        dirfd: int,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        flags: int = 0,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue unlinkat(2) (io_uring_prep_unlinkat(3)); ``AT_REMOVEDIR`` in
        *flags* removes a directory."""
        p = self._path(path)
        return self._prep_held(
            p, abi.IORING_OP_UNLINKAT, dirfd, p.address, 0, 0, user_data, flags, sqe_flags
        )

    def prep_mkdirat(
        self,
        dirfd: int,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        mode: int = 0o777,
        *,
        user_data: int = 0,
        sqe_flags: int = 0,
    ) -> int:
        """Queue mkdirat(2) (io_uring_prep_mkdirat(3))."""
        p = self._path(path)
        return self._prep_held(
            p, abi.IORING_OP_MKDIRAT, dirfd, p.address, mode, 0, user_data, 0, sqe_flags
        )

    # --- submit -------------------------------------------------------------------

    def _publish(self) -> int:
        """Store the SQ tail (the kernel reads it inside io_uring_enter: no
        fence needed, see the essay); return how many SQEs are pending."""
        sq32 = self._sq32
        tail = self._sqe_tail
        sq32[self._sq_ktail] = tail
        return (tail - int(sq32[self._sq_khead])) & _U32

    def submit(self) -> int:
        """Hand every prepared SQE to the kernel with one io_uring_enter
        (io_uring_submit(3)).  On ``EBUSY``/``EAGAIN`` it flushes the CQ
        overflow and tries again (a few times), leaving unconsumed SQEs queued.

        Returns:
            The number of SQEs the kernel consumed.

        Raises:
            OSError: the kernel's error (EBUSY/EAGAIN if it persists, EBADF...),
                EINVAL in a forked child.
        """
        self._check()
        if self._sqpoll:
            return self._submit_sqpoll()
        n = self._publish()
        if not n:
            return 0
        for _ in range(8):
            ret = self._enter(n, 0, 0)
            if ret >= 0:
                self._stats["submitted"] += ret
                return ret
            if ret not in (-errno.EBUSY, -errno.EAGAIN):
                break
            # backpressure: let the kernel flush the overflow list, then retry
            self._enter(0, 0, abi.IORING_ENTER_GETEVENTS)
        raise oserror(-ret)

    def _submit_sqpoll(self) -> int:
        """SQPOLL: the kernel thread reads the tail and the SQEs concurrently.
        The fence before publishing orders the SQE writes before the tail store
        (a no-op need on x86-64, needed on arm64); the fence after it orders
        the tail store before the load of the flags -- a store->load order
        that even x86-64 does not keep without a locked instruction (liburing's
        io_uring_smp_mb()).  Then wake the thread if it sleeps."""
        _fence()
        n = self._publish()
        _fence()
        if self._sq32[self._sq_kflags] & abi.IORING_SQ_NEED_WAKEUP:
            ret = self._enter(0, 0, abi.IORING_ENTER_SQ_WAKEUP)
            if ret < 0:
                raise oserror(-ret)
        self._stats["submitted"] += n
        return n

    def submit_and_wait(self, wait_nr: int = 1, timeout: float | None = None) -> int:
        """Submit what is prepared and wait until *wait_nr* CQEs are ready
        (io_uring_submit_and_wait(3), io_uring_submit_and_wait_timeout(3)).

        Args:
            wait_nr: how many completions to wait for.
            timeout: seconds (None: no limit).  On timeout it returns normally;
                use :meth:`cq_ready` to see what arrived.

        Returns:
            The number of SQEs submitted.

        Raises:
            OSError: as :meth:`submit`.
        """
        self._check()
        if self._sqpoll:
            n = self._submit_sqpoll()
            ret = self._enter_wait(0, wait_nr, timeout)
            if ret < 0 and ret not in (-errno.ETIME, -errno.EBUSY, -errno.EAGAIN):
                raise oserror(-ret)
            return n
        n = self._publish()
        ret = self._enter_wait(n, wait_nr, timeout)
        if ret == -errno.ETIME:
            return n - self.sq_ready()
        if ret in (-errno.EBUSY, -errno.EAGAIN):
            return self.submit()
        check(ret)
        self._stats["submitted"] += ret
        return ret

    # --- CQEs -----------------------------------------------------------------------

    def peek_batch(self, out: list[Completion] | None = None, max_n: int = 0) -> list[Completion]:
        """Take every completion waiting (at most *max_n* if > 0) without a
        syscall, unless the kernel flagged a CQ overflow, which is flushed
        first (io_uring_peek_batch_cqe(3) + io_uring_cq_advance(3)).

        Args:
            out: a list to append ``(user_data, res, flags)`` tuples to (reuse
                one to avoid allocating); a new list if None.
            max_n: the most to take (0: all).

        Returns:
            *out*.

        Raises:
            OSError: EBADF if closed, EINVAL in a forked child.
        """
        self._check()
        if out is None:
            out = []
        cq32 = self._cq32
        head = self._cq_head
        tail = cq32[self._cq_ktail]
        if head == tail:
            if not self._sq32[self._sq_kflags] & abi.IORING_SQ_CQ_OVERFLOW:
                return out
            self._stats["overflow_flush"] += 1
            self._enter(0, 0, abi.IORING_ENTER_GETEVENTS)
            tail = cq32[self._cq_ktail]
        if _NEEDS_FENCE:
            _fence()  # acquire: the tail load before the CQE loads
        n = (tail - head) & _U32
        if max_n and n > max_n:
            n = max_n
        if n:
            # one slice of the mapping per contiguous run (two if the run wraps),
            # unpacked by iter_unpack in C: no Python-level step per CQE
            mm = self._cq_mm
            base = self._cqes
            first = head & self._cq_mask
            run = self._cq_n - first
            if run > n:
                run = n
            lo = base + (first << 4)
            items = list(_iter_cqes(mm[lo : lo + (run << 4)]))
            if run < n:
                items += _iter_cqes(mm[base : base + ((n - run) << 4)])
            keep = self._keep
            if keep:  # a request's last CQE: the kernel is done with its objects
                for ud, _res, fl in items:
                    if not fl & abi.IORING_CQE_F_MORE:
                        keep.pop(ud, None)
            head = (head + n) & _U32
            if _NEEDS_FENCE:
                _fence()  # release: the CQE loads before the head store
            # The CQEs join *out* and leave the ring with no call in between
            # (an exception from a signal handler, Ctrl-C's KeyboardInterrupt,
            # is raised only at a call or a loop's jump): it comes before both
            # or after both, and a CQE is never lost nor taken twice.
            out += items
            cq32[self._cq_khead] = head
            self._cq_head = head
            self._stats["reaped"] += n
        return out

    def peek_cqe(self) -> Completion | None:
        """Take one completion if one is waiting (io_uring_peek_cqe(3) followed
        by io_uring_cqe_seen(3)); never blocks.

        Returns:
            ``(user_data, res, flags)`` or None.
        """
        got = self.peek_batch(None, 1)
        return got[0] if got else None

    def wait_cqe(self, timeout: float | None = None) -> Completion | None:
        """Wait for one completion and take it (io_uring_wait_cqe(3),
        io_uring_wait_cqe_timeout(3) via ``IORING_ENTER_EXT_ARG``).

        Args:
            timeout: seconds to wait at most; None waits for ever.

        Returns:
            ``(user_data, res, flags)``, or None if *timeout* expired first.

        Raises:
            OSError: the kernel's error; EINVAL in a forked child.
        """
        got = self.peek_cqe()
        if got is not None:
            return got
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ret = self._enter_wait(0, 1, left)
            got = self.peek_cqe()
            if got is not None:
                return got
            if ret == -errno.ETIME or (left is not None and left <= 0):
                return None
            if ret < 0 and ret not in (-errno.EBUSY, -errno.EAGAIN):
                raise oserror(-ret)

    def wait_cqes(self, n: int, timeout: float | None = None) -> list[Completion]:
        """Wait until *n* completions were taken or *timeout* expired; return them."""
        out: list[Completion] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(out) < n:
            self.peek_batch(out, n - len(out))
            if len(out) >= n:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            ret = self._enter_wait(0, n - len(out), left)
            if ret < 0 and ret not in (-errno.ETIME, -errno.EBUSY, -errno.EAGAIN):
                raise oserror(-ret)
        return out

    # --- register -------------------------------------------------------------------

    def _register(self, opcode: int, arg: int, nr: int) -> int:
        self._check()
        while True:
            ret: int = _syscall.io_uring_register(self.fd, opcode, arg, nr)
            if ret != -errno.EINTR:
                return ret
            _syscall.run_signal_handlers()

    def register_eventfd(self, fd: int, *, async_only: bool = False) -> None:
        """Have the kernel signal eventfd *fd* when CQEs are posted
        (io_uring_register_eventfd(3); ``async_only``: only for completions
        that did not happen inline, io_uring_register_eventfd_async(3)).

        Raises:
            OSError: EBUSY if one is registered already, EBADF...
        """
        arg = ctypes.c_int32(fd)
        op = abi.IORING_REGISTER_EVENTFD_ASYNC if async_only else abi.IORING_REGISTER_EVENTFD
        check(self._register(op, ctypes.addressof(arg), 1))
        self._eventfd = fd

    def unregister_eventfd(self) -> None:
        """io_uring_unregister_eventfd(3).

        Raises:
            OSError: ENXIO if none is registered.
        """
        check(self._register(abi.IORING_UNREGISTER_EVENTFD, 0, 0))
        self._eventfd = None

    def register_files(self, fds: Sequence[int]) -> None:
        """Register *fds* as fixed files (io_uring_register_files(3)); use the
        index as the fd with ``sqe_flags=IOSQE_FIXED_FILE``; -1 leaves a slot empty.

        Raises:
            OSError: EBUSY if files are registered already, EBADF, EMFILE...
            ValueError: an empty sequence.
        """
        if not fds:
            raise ValueError("no files to register")
        arr = (ctypes.c_int32 * len(fds))(*fds)
        check(self._register(abi.IORING_REGISTER_FILES, ctypes.addressof(arr), len(fds)))
        self._files_registered = True

    def unregister_files(self) -> None:
        """io_uring_unregister_files(3).

        Raises:
            OSError: ENXIO if none are registered.
        """
        check(self._register(abi.IORING_UNREGISTER_FILES, 0, 0))
        self._files_registered = False

    def register_buffers(self, buffers: Sequence[Any]) -> None:
        """Register writable *buffers* as fixed buffers for ``*_fixed`` I/O
        (io_uring_register_buffers(3)); they stay pinned until
        :meth:`unregister_buffers` or :meth:`close`.

        Raises:
            TypeError: a buffer is not writable.
            ValueError: an empty sequence.
            OSError: EBUSY if buffers are registered already, ENOMEM (RLIMIT_MEMLOCK)...
        """
        if not buffers:
            raise ValueError("no buffers to register")
        pins = pin_many(buffers, writable=True)
        iovs = self._iovecs(pins)
        ret = self._register(abi.IORING_REGISTER_BUFFERS, ctypes.addressof(iovs), len(pins))
        if ret < 0:
            for p in pins:
                p.release()
            raise oserror(-ret)
        self._fixed_buffers = list(pins)

    def register_buffers_sparse(self, nr: int) -> None:
        """Register a table of *nr* empty fixed-buffer slots, to be filled with
        :meth:`register_buffers_update` (io_uring_register_buffers_sparse(3),
        Linux 5.19).

        Raises:
            ValueError: *nr* is not positive.
            OSError: EBUSY if buffers are registered already, EINVAL on an old kernel...
        """
        if nr <= 0:
            raise ValueError("nr must be > 0")
        reg = abi.io_uring_rsrc_register(nr=nr, flags=abi.IORING_RSRC_REGISTER_SPARSE)
        check(
            self._register(abi.IORING_REGISTER_BUFFERS2, ctypes.addressof(reg), ctypes.sizeof(reg))
        )
        self._fixed_buffers = [None] * nr

    def register_buffers_update(self, offset: int, buffers: Sequence[Any]) -> None:
        """Replace the registered buffers from slot *offset* on with *buffers*
        (writable; None empties a slot) (io_uring_register_buffers_update_tag(3),
        Linux 5.13).  Requests in flight on a replaced buffer keep it.

        Raises:
            ValueError: the slots lie outside the registered table.
            TypeError: a buffer is not writable.
            OSError: ENOMEM (RLIMIT_MEMLOCK), EFAULT (memory that cannot be pinned)...
        """
        if offset < 0 or offset + len(buffers) > len(self._fixed_buffers):
            raise ValueError("slots outside the registered buffer table")
        pins = [None if b is None else pin(b, writable=True) for b in buffers]
        iovs = iovec_array(pins)
        upd = abi.io_uring_rsrc_update2(offset=offset, data=ctypes.addressof(iovs), nr=len(pins))
        ret = self._register(
            abi.IORING_REGISTER_BUFFERS_UPDATE, ctypes.addressof(upd), ctypes.sizeof(upd)
        )
        if ret < 0:
            for p in pins:
                if p is not None:
                    p.release()
            raise oserror(-ret)
        for i, p in enumerate(pins):
            old = self._fixed_buffers[offset + i]
            if old is not None:
                old.release()
            self._fixed_buffers[offset + i] = p

    def unregister_buffers(self) -> None:
        """io_uring_unregister_buffers(3); the buffers are unpinned (requests in
        flight keep their own pins).

        Raises:
            OSError: ENXIO if none are registered.
        """
        check(self._register(abi.IORING_UNREGISTER_BUFFERS, 0, 0))
        pins, self._fixed_buffers = self._fixed_buffers, []
        for p in pins:
            if p is not None:
                p.release()

    def probe(self) -> frozenset[int]:
        """The ``IORING_OP_*`` opcodes this kernel supports
        (io_uring_get_probe_ring(3); cached).

        Raises:
            OSError: as io_uring_register(2) reports.
        """
        if self._probe is None:
            n = 256
            buf = ctypes.create_string_buffer(
                ctypes.sizeof(abi.io_uring_probe) + n * ctypes.sizeof(abi.io_uring_probe_op)
            )
            check(self._register(abi.IORING_REGISTER_PROBE, ctypes.addressof(buf), n))
            head = abi.io_uring_probe.from_buffer(buf)
            ops = (abi.io_uring_probe_op * n).from_buffer(buf, ctypes.sizeof(head))
            self._probe = frozenset(
                ops[i].op for i in range(head.ops_len) if ops[i].flags & abi.IO_URING_OP_SUPPORTED
            )
            del head, ops
        return self._probe

    def opcode_supported(self, opcode: int) -> bool:
        """True if the kernel supports ``IORING_OP_*`` *opcode* (io_uring_opcode_supported(3))."""
        return opcode in self.probe()

    def sync_cancel(
        self, user_data: int = 0, *, fd: int | None = None, flags: int = 0, timeout: float = 0.0
    ) -> int:
        """Cancel synchronously (``IORING_REGISTER_SYNC_CANCEL``, Linux 6.0;
        io_uring_register_sync_cancel(3)).

        Args:
            user_data: the target's user_data (ignored with *fd* or
                ``IORING_ASYNC_CANCEL_ANY``).
            fd: cancel requests on this fd instead.
            flags: ``IORING_ASYNC_CANCEL_*`` (``ALL``, ``ANY`` ...).
            timeout: how long to wait for a running request to finish
                (0: do not wait; negative: wait for ever).

        Returns:
            The kernel's answer, which is an outcome, not an error: ``0``
            (cancelled, or it finished while we waited), ``-ENOENT`` (not
            found: already completed), ``-EALREADY`` or ``-ETIME`` (running).

        Raises:
            OSError: any other error (EINVAL where the kernel lacks it, EBADF...).
        """
        reg = self._cancel_reg
        ctypes.memset(ctypes.addressof(reg), 0, ctypes.sizeof(reg))
        reg.addr = user_data & _U64
        reg.fd = -1 if fd is None else fd
        reg.flags = flags | (abi.IORING_ASYNC_CANCEL_FD if fd is not None else 0)
        if timeout < 0:
            reg.timeout.tv_sec = reg.timeout.tv_nsec = -1
        else:
            reg.timeout.tv_sec = int(timeout)
            reg.timeout.tv_nsec = int((timeout - int(timeout)) * 1e9)
        ret = self._register(abi.IORING_REGISTER_SYNC_CANCEL, ctypes.addressof(reg), 1)
        if ret >= 0 or ret in (-errno.ENOENT, -errno.EALREADY, -errno.ETIME):
            return ret
        raise oserror(-ret)

    # --- close ----------------------------------------------------------------------

    def _drain_held(self, timeout: float = 10.0) -> None:
        """Cancel every request and wait for the CQEs of those holding buffers."""
        deadline = time.monotonic() + timeout
        while self._keep and time.monotonic() < deadline:
            self.prep_cancel_all(user_data=_U64)
            self.submit()
            self.wait_cqes(len(self._keep), timeout=0.1)
        if self._keep:  # pragma: no cover - a request the kernel could not stop
            _graveyard.append(self._keep)
            warnings.warn(
                f"io_uring closed with {len(self._keep)} requests still in flight: "
                "their buffers are kept alive for ever",
                ResourceWarning,
                stacklevel=3,
            )
        self._keep = {}

    def _unmap(self) -> None:
        for v in self._views:
            v.release()
        self._views = []
        for m in self._mmaps:
            m.close()
        self._mmaps = []

    def close(self) -> None:
        """Cancel what is in flight, wait for the CQEs of requests holding
        buffers, unregister, unmap and close the fd (io_uring_queue_exit(3)).
        Idempotent.  In a forked child it only drops the child's copies of the
        fd and mappings (the parent's ring is untouched)."""
        if self._closed:
            return
        if self._generation == _fork_generation[0]:
            try:
                if self._keep:
                    self._drain_held()
            finally:
                self._closed = True
                for p in self._fixed_buffers:
                    if p is not None:
                        p.release()
                self._fixed_buffers = []
        self._closed = True
        self._keep = {}
        self._unmap()
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        try:
            if self._generation == _fork_generation[0]:
                # may raise (warnings as errors): the finally still closes
                warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)
        finally:
            try:
                self.close()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self.fd} sq={self.sq_entries}"
        return f"<xaio.uring.Ring {state}>"


#: Memory of requests that could not be stopped before a close: kept alive for ever.
_graveyard: list[Any] = []


# --- the engine ----------------------------------------------------------------------

# user_data tags: InFlight keys are small ints; anything with the top bit set is ours.
_TAG = 1 << 63
_CANCEL_TAG = _TAG | (1 << 62)
_WAKE = _TAG | 1
_THREADS_READY = _TAG | 2  # the poll on the thread engine's eventfd
_CANCEL_ANY_ALL = abi.IORING_ASYNC_CANCEL_ANY | abi.IORING_ASYNC_CANCEL_ALL

_READ, _WRITE, _READV, _WRITEV = OpCode.READ, OpCode.WRITE, OpCode.READV, OpCode.WRITEV
_FSYNC, _FDATASYNC, _POLL, _NOP = OpCode.FSYNC, OpCode.FDATASYNC, OpCode.POLL, OpCode.NOP
_SUBMITTED, _QUEUED, _DONE = OpState.SUBMITTED, OpState.QUEUED, OpState.DONE
_OP_READ, _OP_WRITE = abi.IORING_OP_READ, abi.IORING_OP_WRITE
_OP_READ_FIXED, _OP_WRITE_FIXED = abi.IORING_OP_READ_FIXED, abi.IORING_OP_WRITE_FIXED
_span_start = operator.itemgetter(0)


class SlotInFlightError(RuntimeError):
    """A :class:`UringBatch` slot was re-prepared or re-submitted while in flight."""


_OFFSET_AT = 8  # byte offset of ``off`` in struct io_uring_sqe
_SET_OFFSET = struct.Struct("<Q").pack_into


class UringBatch:
    """Preallocated request slots on a private ring: the io_uring lean path.

    The io_uring counterpart of :class:`xaio.linux.IOBatch`, with the same
    vocabulary.  Each of the *capacity* slots keeps a ready-made 64-byte SQE
    image; preparing a slot (:meth:`prep_pread`...) pins its buffer once,
    :meth:`set_offset` patches only the offset, and :meth:`submit` copies the
    images of the given slots into the SQ (one C-level copy each, ``user_data``
    = the slot) and enters the kernel.  :meth:`reap` reads CQEs straight from
    the mapped CQ into the preallocated lists :attr:`done_slots` /
    :attr:`done_res`, making a system call only to wait.  Python's cost per
    request is about a third of the :class:`UringEngine` path, which builds an
    SQE from an :class:`~xaio._ops.Operation` each time (benchmarks/notes.md).

    Buffers: a slot's buffer stays pinned from :meth:`prep_pread` until the
    slot is re-prepared with another buffer or the batch is closed; the ring
    also holds it while the slot is in flight, so closing (or garbage
    collecting) the batch with requests in flight cancels them and waits for
    their completions before anything is released.

    Not thread-safe: one thread submits and reaps.  A slot is busy from
    :meth:`submit` until :meth:`reap` returns it; the batch refuses to
    re-prepare or re-submit a busy slot (:class:`SlotInFlightError`).
    Corresponds to io_uring_prep_read(3)/io_uring_prep_write(3),
    io_uring_submit(3) and io_uring_peek_batch_cqe(3) on a ring of its own.
    """

    __slots__ = (
        "capacity",
        "done_slots",
        "done_res",
        "_ring",
        "_images",
        "_pins",
        "_bufs",
        "_busy",
        "_nbusy",
        "_closed",
        "_fixed",
        "_ready",
    )

    def __init__(self, capacity: int, *, fixed_buffers: bool = True, setup_flags: int = 0) -> None:
        """Create the ring (SQ of at least *capacity* entries, CQ twice that).

        Args:
            capacity: number of slots, 1..32768.
            fixed_buffers: register each slot's buffer with the ring (slot =
                buffer index) and use ``READ_FIXED``/``WRITE_FIXED``, which
                spares the kernel pinning the pages on every request (~0.8 us
                of system time per 4 KiB O_DIRECT read here).  A buffer the
                kernel will not register (read-only memory, ``RLIMIT_MEMLOCK``
                exhausted, a kernel before 5.19) is used unregistered.
            setup_flags: extra ``IORING_SETUP_*`` flags for the ring.

        Raises:
            TypeError, ValueError: a bad *capacity*.
            OSError: io_uring is unavailable (ENOSYS/EPERM with the cause).
        """
        self._closed = True
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError("capacity must be an int")
        if not 0 < capacity <= 32768:
            raise ValueError("capacity must be between 1 and 32768")
        self.capacity = capacity
        self._ring = Ring(capacity, setup_flags)
        self._images = [bytearray(_SQE_SIZE) for _ in range(capacity)]
        self._pins: list[Pin | None] = [None] * capacity
        self._bufs: list[Any] = [None] * capacity
        self._busy = [False] * capacity
        self._nbusy = 0
        #: After :meth:`reap`: the slots that completed and their results
        #: (bytes, or -errno), in the first n entries.
        self.done_slots: list[int] = [0] * capacity
        #: The results of the slots in :attr:`done_slots`, in the same order.
        self.done_res: list[int] = [0] * capacity
        self._ready = [False] * capacity
        self._fixed = bool(fixed_buffers)
        if self._fixed:
            try:
                self._ring.register_buffers_sparse(capacity)
            except OSError:  # before Linux 5.19, or no locked memory left
                self._fixed = False
        self._closed = False

    @property
    def fixed_buffers(self) -> bool:
        """True if the batch registers its slots' buffers with the ring."""
        return self._fixed

    def is_registered(self, slot: int) -> bool:
        """True if *slot*'s buffer is registered (its requests use ``*_FIXED``):
        the ring's table (slot = buffer index) holds it."""
        table = self._ring._fixed_buffers
        return slot < len(table) and table[slot] is not None

    @property
    def ring(self) -> Ring:
        """The batch's own :class:`Ring` (statistics, probing)."""
        return self._ring

    @property
    def in_flight(self) -> int:
        """Number of slots submitted and not yet reaped."""
        return self._nbusy

    def is_busy(self, slot: int) -> bool:
        return self._busy[slot]

    # -- preparing slots --------------------------------------------------------------
    def _check_slot(self, slot: int) -> None:
        if self._closed:
            raise ValueError("the batch is closed")
        if isinstance(slot, bool) or not isinstance(slot, int):
            raise TypeError("slot must be an int")
        if not 0 <= slot < self.capacity:
            raise IndexError(f"slot {slot} out of range 0..{self.capacity - 1}")
        if self._busy[slot]:
            raise SlotInFlightError(f"slot {slot} is in flight")

    def _prep(
        self, slot: int, opcode: int, fd: int, buf: Any, offset: int, op_flags: int, ioprio: int
    ) -> None:
        self._check_slot(slot)
        if isinstance(fd, bool) or not isinstance(fd, int) or not isinstance(offset, int):
            raise TypeError("fd and offset must be ints")
        if not 0 <= fd <= 0x7FFFFFFF:
            raise ValueError(f"bad fd: {fd}")
        if not -1 <= offset < 1 << 63:
            raise ValueError(f"bad offset: {offset}")
        if buf is None:
            address = nbytes = 0
            self._unpin(slot)
        elif buf is self._bufs[slot] and self._pins[slot] is not None:
            p = self._pins[slot]
            assert p is not None
            if opcode == abi.IORING_OP_READ and p.readonly:
                raise TypeError("a writable buffer is required for a read")
            address, nbytes = p.address, p.nbytes
        else:
            p = pin(buf, writable=opcode == abi.IORING_OP_READ)
            self._unpin(slot)
            self._pins[slot] = p
            self._bufs[slot] = buf
            address, nbytes = p.address, p.nbytes
            if self._fixed:
                try:
                    self._ring.register_buffers_update(slot, [buf])
                except (OSError, TypeError):  # read-only or unpinnable memory
                    pass
        buf_index = 0
        if self.is_registered(slot):
            if opcode == abi.IORING_OP_READ:
                opcode, buf_index = abi.IORING_OP_READ_FIXED, slot
            elif opcode == abi.IORING_OP_WRITE:
                opcode, buf_index = abi.IORING_OP_WRITE_FIXED, slot
        _pack_sqe(
            self._images[slot], 0, opcode, 0, ioprio, fd, offset & _U64, address, nbytes,
            op_flags & _U32, slot, buf_index, 0, 0, 0, 0,
        )  # fmt: skip
        self._ready[slot] = True

    def _unpin(self, slot: int) -> None:
        old = self._pins[slot]
        if old is not None:
            old.release()
        self._pins[slot] = None
        self._bufs[slot] = None
        if self.is_registered(slot):
            self._ring.register_buffers_update(slot, [None])

    def prep_pread(self, slot: int, fd: int, buf: Any, offset: int, *, rw_flags: int = 0) -> None:
        """Make *slot* a read of ``len(buf)`` bytes of *fd* at *offset*
        (-1: the file position) with ``RWF_*`` *rw_flags*.

        Raises:
            SlotInFlightError: the slot is in flight.
            TypeError: *buf* is read-only or not a buffer.
            IndexError, ValueError: a bad slot, fd or offset; the batch is closed.
        """
        self._prep(slot, abi.IORING_OP_READ, fd, buf, offset, rw_flags, 0)

    def prep_pwrite(self, slot: int, fd: int, buf: Any, offset: int, *, rw_flags: int = 0) -> None:
        """Make *slot* a write of *buf* to *fd* at *offset* (as :meth:`prep_pread`)."""
        self._prep(slot, abi.IORING_OP_WRITE, fd, buf, offset, rw_flags, 0)

    def prep_fsync(self, slot: int, fd: int, *, datasync: bool = False) -> None:
        """Make *slot* an fsync (or fdatasync) of *fd*."""
        flags = abi.IORING_FSYNC_DATASYNC if datasync else 0
        self._prep(slot, abi.IORING_OP_FSYNC, fd, None, 0, flags, 0)

    def set_offset(self, slot: int, offset: int) -> None:
        """Change only the file offset of a prepared, idle slot.

        Raises:
            SlotInFlightError: the slot is in flight.
            IndexError: a bad slot.
        """
        if slot < 0 or self._busy[slot]:
            self._check_slot(slot)
        _SET_OFFSET(self._images[slot], _OFFSET_AT, offset & _U64)

    # -- submitting and reaping ---------------------------------------------------
    def submit(self, slots: Sequence[int], chunk: int = 0) -> int:
        """Hand the prepared *slots* to the kernel.

        Args:
            slots: slot numbers, each idle and prepared (at most *capacity*).
            chunk: 0 enters the kernel once for all of them; N > 0 once per N
                SQEs (the block layer plugs a submission of more than 2
                requests until the call ends: see :data:`_SUBMIT_CHUNK`).

        Returns:
            ``len(slots)``: the kernel takes every SQE (per-request errors
            come back as completions with -errno).

        Raises:
            SlotInFlightError: a slot is in flight or listed twice (nothing
                was submitted).
            ValueError: a slot that is not prepared or out of range; the
                batch is closed; more slots than it holds (nothing was submitted).
            OSError: EINVAL in a forked child; the kernel's error (the slots
                stay busy until reaped: the SQEs are queued).
        """
        if self._closed:
            raise ValueError("the batch is closed")
        ring = self._ring
        ring._check()
        n = len(slots)
        if n > self.capacity:
            raise ValueError("more slots than the batch holds")
        busy = self._busy
        ready = self._ready
        cap = self.capacity
        for i, s in enumerate(slots):
            if not (0 <= s < cap and ready[s]) or busy[s]:
                in_flight = isinstance(s, int) and 0 <= s < cap and busy[s]
                for t in slots[:i]:
                    busy[t] = False
                if in_flight:
                    raise SlotInFlightError(f"slot {s} is in flight (or listed twice)")
                raise ValueError(f"slot {s!r} is not a prepared slot of this batch")
            busy[s] = True
        sqes = ring._sqes
        images = self._images
        keep = ring._keep
        pins = self._pins
        mask = ring._sq_mask
        tail = ring._sqe_tail
        for s in slots:
            o = (tail & mask) << 6
            sqes[o : o + 64] = images[s]
            keep[s] = pins[s]
            tail = (tail + 1) & _U32
        ring._sqe_tail = tail
        self._nbusy += n
        if ring._sqpoll:  # the kernel's thread takes them: fence, publish, wake it
            ring._submit_sqpoll()
            return n
        ring._sq32[ring._sq_ktail] = tail
        ring._enter_pending(n, chunk if chunk > 0 else 0)
        ring._stats["submitted"] += n
        return n

    def reap(self, min_nr: int = 1, timeout: float | None = None, max_nr: int = 0) -> int:
        """Collect completions: wait for at least *min_nr* (*timeout* seconds
        at most; None waits), take as many as are there -- at most *max_nr*
        if it is > 0 (the rest stay in the CQ for the next reap).

        Returns:
            n: ``done_slots[:n]`` and ``done_res[:n]`` are the completed slots
            and their results (bytes transferred or -errno); fewer than
            *min_nr* only on timeout.

        Raises:
            ValueError: *min_nr* larger than what is in flight (it would wait
                for ever) or than *max_nr*; the batch is closed.
            OSError: EINVAL in a forked child; the kernel's error.
        """
        if self._closed:
            raise ValueError("the batch is closed")
        if min_nr > self._nbusy:
            raise ValueError(f"min_nr={min_nr} but only {self._nbusy} slots are in flight")
        limit = self.capacity
        if max_nr > 0:
            if max_nr < min_nr:
                raise ValueError("max_nr must be >= min_nr")
            limit = max_nr
        ring = self._ring
        ring._check()
        n = self._take(0, limit)
        if n >= min_nr:
            return n
        deadline = None if timeout is None else time.monotonic() + timeout
        while n < min_nr:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ret = ring._enter_wait(0, min_nr - n, left)
            if ret < 0 and ret not in (-errno.ETIME, -errno.EBUSY, -errno.EAGAIN):
                raise oserror(-ret)
            n = self._take(n, limit)
            if ret == -errno.ETIME:
                break
        return n

    def _take(self, n: int, limit: int) -> int:
        """Move the CQEs waiting in the CQ into done_slots/done_res from index
        *n*, until *limit* entries are filled.  The same ring protocol as
        ``Ring.peek_batch`` (overflow flush, fences, head store), in one pass
        straight into the lists: going through ``peek_batch`` (a tuple list,
        then its hold-table pass, then ours) gave 1-27% fewer page-cached
        reads per second on this path in three alternating runs."""
        ring = self._ring
        cq32 = ring._cq32
        head = ring._cq_head
        tail = cq32[ring._cq_ktail]
        if head == tail:
            if not ring._sq32[ring._sq_kflags] & abi.IORING_SQ_CQ_OVERFLOW:
                return n
            ring._stats["overflow_flush"] += 1
            ring._enter(0, 0, abi.IORING_ENTER_GETEVENTS)
            tail = cq32[ring._cq_ktail]
        if _NEEDS_FENCE:
            _fence()  # acquire: the tail load before the CQE loads
        mm = ring._cq_mm
        base = ring._cqes
        mask = ring._cq_mask
        busy = self._busy
        keep = ring._keep
        done_slots = self.done_slots
        done_res = self.done_res
        start = n
        while head != tail and n < limit:
            ud, res, _fl = _unpack_cqe(mm, base + ((head & mask) << 4))
            head = (head + 1) & _U32
            if ud >= self.capacity or not busy[ud]:  # pragma: no cover - not ours
                continue
            busy[ud] = False
            del keep[ud]
            done_slots[n] = ud
            done_res[n] = res
            n += 1
        if _NEEDS_FENCE:
            _fence()  # release: the CQE loads before the head store
        cq32[ring._cq_khead] = head
        ring._cq_head = head
        self._nbusy -= n - start
        ring._stats["reaped"] += n - start
        return n

    # -- closing ------------------------------------------------------------------
    def close(self) -> None:
        """Cancel what is in flight, wait for its completions, release every
        buffer and close the ring.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._ring.close()  # cancels and drains what the ring holds (ours)
        finally:
            for s in range(self.capacity):
                self._unpin(s)
            self._busy = [False] * self.capacity
            self._nbusy = 0

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        try:
            if self._ring._generation == _fork_generation[0]:
                # may raise (warnings as errors): the finally still closes
                warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)
        finally:
            try:
                self.close()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    def __enter__(self) -> UringBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"in_flight={self._nbusy}"
        return f"<xaio.uring.UringBatch capacity={self.capacity} {state}>"


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
        self._vecs: dict[int, Any] = {}
        self._cancel_results: dict[int, int] = {}
        self._stash: list[Completion] = []
        self._batch: list[Completion] = []
        self._sync_cancel = True
        self._delivering = False
        self._waiting = 0
        self._generation = _fork_generation[0]
        self._pid = os.getpid()
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
        # registered buffers (register_buffers): (start, end, index), by start
        self._fixed_spans: list[tuple[int, int, int]] = []
        #: runs what xaio.engine.route sends to threads (made on first use)
        self._threads: ThreadEngine | None = None
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

    def _check_process(self) -> None:
        if self._generation != _fork_generation[0]:
            raise _refused_in_child(self._pid)

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
        self._check_process()
        if not buffers:
            raise ValueError("no buffers to register")
        with self._lock:
            if self._closed:
                raise EngineClosedError("engine is closed")
            self._ring.register_buffers(buffers)
            self._fixed_spans = sorted(
                (p.address, p.address + p.nbytes, i)
                for i, p in enumerate(self._ring._fixed_buffers)
                if p is not None
            )
        return True

    def unregister_buffers(self) -> None:
        """Undo :meth:`register_buffers` (io_uring_unregister_buffers(3));
        nothing if none are registered.  Requests in flight keep their memory:
        the kernel holds a registered buffer until its requests complete, and
        each operation holds its own pin.

        Raises:
            OSError: EINVAL in a forked child.
        """
        self._check_process()
        with self._lock:
            if not self._fixed_spans or self._closed:
                return
            self._fixed_spans = []
            self._ring.unregister_buffers()

    def _fixed_index(self, address: int, nbytes: int) -> int:
        """The index of the registered buffer holding ``[address,
        address + nbytes)``, or -1."""
        spans = self._fixed_spans
        i = bisect.bisect_right(spans, address, key=_span_start) - 1
        if i >= 0:
            _start, end, index = spans[i]
            if address + nbytes <= end:
                return index
        return -1

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
        self._check_process()
        with self._lock:
            if self._closed:
                raise EngineClosedError("engine is closed")
            ops, threaded = route(ops, KIND_BLOCKING)
            if threaded:
                return self._submit_routed(ops, threaded)
            ring = self._ring
            sq32 = ring._sq32
            khead = ring._sq_khead
            start = ring._sqe_tail
            if len(ops) > ring._sq_n - ((start - sq32[khead]) & _U32):
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
                    self._take_back(ops, start)
                    check_batch(ops)  # the precise error, if it was ours
                    raise
                except BaseException:  # KeyboardInterrupt midway: same undo
                    self._take_back(ops, start)
                    raise
            self._counts["submitted"] += len(ops)
            # publish the tail and enter once (Ring.submit, inlined)
            if ring._sqpoll:
                ring.submit()
                return len(ops)
            tail = ring._sqe_tail
            sq32[ring._sq_ktail] = tail
            pending = (tail - sq32[khead]) & _U32
            if self._delivering and pending < _DEFER_FLUSH:
                return len(ops)  # on_done submitting: _deliver hands it over
            ring._enter_pending(pending, _SUBMIT_CHUNK)
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
        threads._submit_checked(threaded)
        return len(ops) + len(threaded)

    def _arm_threads(self) -> None:
        """Poll the thread engine's eventfd on the ring (under the lock): its
        CQE, tagged ``_THREADS_READY``, makes :meth:`_deliver` deliver the
        thread engine's completions and arm the poll again."""
        assert self._threads is not None
        self._ring.prep_poll_add(self._threads.fileno(), select.POLLIN, user_data=_THREADS_READY)
        self._ring.submit()

    def _take_back(self, ops: Sequence[Operation], start: int) -> None:
        """Undo a :meth:`_write_sqes` that raised: every operation it entered
        (the first ``tail - start``: the tail moves only once an operation is
        entered) is QUEUED again and out of the in-flight table, and the SQ
        tail goes back to *start* (nothing was published)."""
        ring = self._ring
        entered = (ring._sqe_tail - start) & _U32
        ring._sqe_tail = start
        table = self._inflight._ops
        free = self._inflight._free
        for op in itertools.islice(ops, entered):  # any Sequence (a deque too)
            key = op.key
            del table[key]
            free.append(key)
            self._vecs.pop(key, None)
            op.key = -1
            op.state = _QUEUED

    def _write_sqes(self, ops: Sequence[Operation], make_room: bool) -> None:
        """Write one SQE per operation and enter each in the in-flight table
        (under the lock; the tail is published by :meth:`submit`).

        An operation is entered only once its SQE is written, and
        ``ring._sqe_tail`` counts exactly the operations entered, also when
        this raises: those before the bad one.  A duplicate shows up as an
        operation no longer QUEUED."""
        ring = self._ring
        sqes = ring._sqes
        inflight = self._inflight
        table = inflight._ops
        free = inflight._free
        sq32 = ring._sq32
        khead = ring._sq_khead
        n_sq = ring._sq_n
        mask = ring._sq_mask
        fixed = self._fixed_spans
        rw_mask = self._rw_mask
        nfixed = 0
        tail = ring._sqe_tail
        try:
            for op in ops:
                if op.state is not _QUEUED:
                    raise RuntimeError("operation not QUEUED")  # check_batch says which
                if make_room and (tail - sq32[khead]) & _U32 >= n_sq:
                    ring._sqe_tail = tail
                    ring._make_room()
                # InFlight.add, inlined: the key is taken once the SQE is written
                key = free[-1] if free else inflight._next
                code = op.opcode
                if code is _READ or code is _WRITE:
                    pins = op.pins
                    if len(pins) != 1:
                        raise ValueError("READ/WRITE takes exactly one buffer")
                    p = pins[0]
                    # a registered buffer holding it: READ_FIXED / WRITE_FIXED
                    index = self._fixed_index(p.address, p.nbytes) if fixed else -1
                    if index < 0:
                        opcode = _OP_READ if code is _READ else _OP_WRITE
                        index = 0
                    else:
                        opcode = _OP_READ_FIXED if code is _READ else _OP_WRITE_FIXED
                        nfixed += 1
                    _pack_sqe(
                        sqes,
                        (tail & mask) << 6,
                        opcode,
                        0,
                        0,
                        op.fd,
                        op.offset & _U64,
                        p.address,
                        p.nbytes,
                        op.flags & rw_mask,
                        key,
                        index,
                        0,
                        0,
                        0,
                        0,
                    )
                elif code is _READV or code is _WRITEV:
                    if len(op.pins) > _IOV_MAX:
                        raise ValueError(f"at most {_IOV_MAX} buffers")
                    iovs = Ring._iovecs(op.pins)
                    _pack_sqe(
                        sqes,
                        (tail & mask) << 6,
                        abi.IORING_OP_READV if code is _READV else abi.IORING_OP_WRITEV,
                        0,
                        0,
                        op.fd,
                        op.offset & _U64,
                        ctypes.addressof(iovs),
                        len(op.pins),
                        op.flags & rw_mask,
                        key,
                        0,
                        0,
                        0,
                        0,
                        0,
                    )
                    self._vecs[key] = iovs
                elif code is _FSYNC or code is _FDATASYNC:
                    flags = abi.IORING_FSYNC_DATASYNC if code is _FDATASYNC else 0
                    _pack_sqe(
                        sqes, (tail & mask) << 6, abi.IORING_OP_FSYNC, 0, 0, op.fd,
                        0, 0, 0, flags, key, 0, 0, 0, 0, 0,
                    )  # fmt: skip
                elif code is _POLL:
                    _pack_sqe(
                        sqes, (tail & mask) << 6, abi.IORING_OP_POLL_ADD, 0, 0, op.fd,
                        0, 0, 0, op.flags & _U32, key, 0, 0, 0, 0, 0,
                    )  # fmt: skip
                else:
                    _pack_sqe(
                        sqes, (tail & mask) << 6, abi.IORING_OP_NOP, 0, 0, -1,
                        0, 0, 0, 0, key, 0, 0, 0, 0, 0,
                    )  # fmt: skip
                if free:
                    free.pop()
                else:
                    inflight._next = key + 1
                op.key = key
                table[key] = op
                op.state = _SUBMITTED
                tail = (tail + 1) & _U32
        finally:
            ring._sqe_tail = tail
        if nfixed:
            self._counts["fixed"] += nfixed

    def _flush_deferred(self) -> None:
        """Hand over SQEs an ``on_done`` submitted during delivery (under the lock)."""
        ring = self._ring
        if ring._closed or ring._sqpoll:
            return
        sq32 = ring._sq32
        pending = (sq32[ring._sq_ktail] - sq32[ring._sq_khead]) & _U32
        if pending:
            ring._enter_pending(pending, _SUBMIT_CHUNK)

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
        to ``self._batch``, to be delivered by the next reap -- never twice.

        So does an exception from a signal handler (Ctrl-C), which can come at
        any call or loop jump: a CQE counts as handled (``i``) only after its
        operation is completed and its key is free, and the key is freed
        together with that count, with no call in between.  A CQE taken up
        again finds its operation completed already (DONE, under the same
        key) and only finishes the bookkeeping.

        Submissions made by the callbacks are handed to the kernel in groups
        of ``_DEFER_FLUSH`` and, at the latest, before this returns (see
        ``_DEFER_FLUSH``)."""
        n = 0
        i = 0
        inflight = self._inflight
        table = inflight._ops  # InFlight.complete, inlined
        free = inflight._free
        vecs = self._vecs
        outer = self._delivering
        self._delivering = True
        cqes: list[Completion] = []
        threads_ready = False
        try:
            cqes, self._batch = self._batch, cqes
            for ud, res, _fl in cqes:
                if ud < _TAG:
                    op = table.get(ud)
                    if op is not None:  # else not ours (e.g. posted by a forked child)
                        if op.state is not _DONE and op.key == ud:  # not done yet
                            n += 1
                            op.complete(res)
                        if vecs:
                            vecs.pop(ud, None)
                        del table[ud]
                        free += (ud,)
                elif ud & _CANCEL_TAG == _CANCEL_TAG:
                    self._cancel_results[ud & ~_CANCEL_TAG] = res
                elif ud == _THREADS_READY:
                    threads_ready = True
                i += 1
            if threads_ready and self._threads is not None:
                try:
                    n += self._threads._deliver()
                finally:
                    if not self._closed:
                        self._arm_threads()
        finally:
            del cqes[:i]
            if cqes:  # an on_done raised (or Ctrl-C): the rest go first next time
                self._batch[:0] = cqes
            self._counts["completed"] += n
            self._delivering = outer
            if not outer:
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
            if ring._closed:
                return 0
            pending = self._batch  # not empty only if a delivery was interrupted
            if ring._cq32[ring._cq_ktail] == ring._cq_head and not self._stash and not pending:
                self._drain_eventfd()
                if (
                    ring._cq32[ring._cq_ktail] == ring._cq_head
                    and not ring._sq32[ring._sq_kflags] & abi.IORING_SQ_CQ_OVERFLOW
                ):
                    return 0
            if self._stash:
                pending += self._stash  # no call between the two stores
                self._stash = []
            ring.peek_batch(pending, max_n)
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
        self._check_process()
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
                ret = self._ring._enter_wait(0, 1, left)
                if ret < 0 and ret not in (-errno.ETIME, -errno.EBUSY, -errno.EAGAIN):
                    raise oserror(-ret)
                n = self._reap_nowait(max_n)
                if n:
                    return n
        return 0

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
        self._check_process()
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
        if self._generation != _fork_generation[0]:
            if not self._closed:
                self._closed = True
                self._ring.close()
                os.close(self._efd)
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
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

        while len(inflight):
            with self._lock:
                try:
                    ring.sync_cancel(flags=_CANCEL_ANY_ALL)
                except OSError:
                    ring.prep_cancel_all(user_data=_WAKE)
                    ring.submit()
            reap_now()
            if not len(inflight) or time.monotonic() > deadline:
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
        without the ring (:class:`xaio._inline.NowaitReader`:
        ``preadv2(RWF_NOWAIT)``, the attempt io_uring would make inline, minus
        the ring's round trip and the wake-up of a reaping thread; not on
        O_DIRECT or O_APPEND fds, never on streams).

        Returns:
            *nbytes* when the whole read was done here; None when the caller
            must submit the operation as usual (nothing is reported here:
            errors, short reads and EOF all go the normal way).
        """
        if self._closed:
            return None
        return self._nowait.read(fd, buffer, offset, nbytes)

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
        try:
            if self._generation == _fork_generation[0]:
                # may raise (warnings as errors): the finally still closes
                warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)
        finally:
            if self._threads is not None:
                self._threads._abandon()  # as RoutedEngine's: never wait here
            try:
                self.close()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    def __repr__(self) -> str:
        return f"<xaio.uring.UringEngine {'closed' if self._closed else 'open'}>"


def _outcome(ret: int) -> CancelOutcome:
    if ret >= 0:
        return CancelOutcome.CANCELED
    if ret == -errno.ENOENT:
        return CancelOutcome.DONE
    if ret in (-errno.EALREADY, -errno.ETIME):
        return CancelOutcome.RUNNING
    raise oserror(-ret)
