"""Per-event-loop engine drivers: how completions reach asyncio and trio.

Some facts this module rests on
===============================

*One reader per engine.*  Every engine has an fd (``Engine.fileno()``) that is
readable while completions wait.  A :class:`Driver` ties one engine to one
running event loop: on asyncio it is registered with ``loop.add_reader``; on
trio a system task sits in ``trio.lowlevel.wait_readable``.  The callback runs
``engine.reap(0)``, which calls each finished operation's ``on_done`` in the
loop's thread; ``on_done`` wakes the one waiting task.  There is one Future (or
one trio ``reschedule``) per request, created only when the request did not
complete at once, and no per-request closure: ``on_done`` is a bound method
made once per driver, and the waiter travels in ``Operation.context``.

*Page-cache hits never reach an engine.*  A read whose data is in the page
cache is done in the loop's thread with ``preadv2(RWF_NOWAIT)``, which copies
from the cache or fails with EAGAIN instead of waiting for the device --
exactly the attempt io_uring makes inline before punting a read to a worker,
minus the ring's per-request cost in Python (measured here: ~1.5 us for the
system call against ~25 us for an Operation through ``UringEngine.submit`` and
``reap``).  Such a request resolves without a Future and without touching the
event loop (the coroutine does not even yield).  A miss is not free:
``RWF_NOWAIT`` still starts the readahead from this thread, tens of
microseconds and sometimes milliseconds when the device queue is full; so an
fd that misses turns *cold* and asks ``cachestat(2)`` (Linux 6.5: page-cache
residency, no I/O) before trying inline again.  O_DIRECT and O_APPEND fds
always use the engine.

*Fairness.*  A coroutine whose awaits never suspend would starve every other
task and timer of the loop.  The driver looks at the clock every
:data:`_STREAK` immediate results; once its tasks have run for :data:`_SLICE`
in this loop iteration (a slice shared by all of them), the slice is
exhausted: each task that comes for another transfer parks in a FIFO, and one
parked task per iteration is released (round robin) with a fresh slice.  So
64 tasks reading cached data hold the loop for about half a millisecond per
iteration, and the loop does not pay for resuming 64 tasks just to suspend
them again.  The parking comes before the transfer, so a cancellation
delivered there has consumed nothing.  On trio every call is a checkpoint
instead (trio's own convention).

*Reap right after submit.*  io_uring also completes some requests inside the
``io_uring_enter`` that submits them, so the driver calls ``reap(0)`` right
after each submit: such a completion is found in the completion queue without
a system call and resolves without an event-loop round trip.

*Batching under load.*  While requests of this driver are in the kernel, or
tasks woken by its completions have yet to run, new requests are queued and
handed over together by one ``engine.submit`` scheduled with
``loop.call_soon`` (on trio, which has none, by a system task of the driver,
the *flusher*, woken by the first queued request: it runs in trio's next
scheduling batch): the tasks woken by one batch of completions run in one
loop iteration, so their next requests reach the kernel in one system call.
Only a request made with nothing in flight and nobody about to run is
submitted at once (lowest latency, e.g. at concurrency 1).  The second
condition matters: a fast device can finish everything before the loop gets
round to the woken tasks, and if the first of them submitted alone (nothing in
flight), the device would then complete it alone, and so on -- a convoy of
one-request system calls (measured: 4 requests per ``io_uring_enter`` and ~45 us
of CPU per O_DIRECT read at 64 tasks, against 32-64 and ~24 us with it; on
trio, flushing every request at once costs ~100 us against ~35 us).  A
request that may be served from the page cache passes a checkpoint before its
attempt (see *Fairness*); an engine-bound one does not, as its wait is one --
on trio a second would let the other woken tasks run in between.  At
most :data:`_WAKE_BUDGET` tasks are woken per loop iteration (the others in the
next ones), so a burst of completions cannot hold the loop -- and every timer
and other task of it -- for long.

*Cancellation really cancels.*  When the task awaiting a request is cancelled,
the driver calls ``engine.cancel(op)`` and then keeps waiting -- through
further cancellations -- until the operation's completion has been reaped
(io_uring may still be copying into the buffer after a "successful" cancel;
the thread engine cannot stop a running ``pread``).  Only then does
``CancelledError`` (or ``trio.Cancelled``) leave the coroutine, so when the
caller sees it the buffer is free and no late write can land in it.

*Lifetime of the default engine.*  ``xaio.pread(...)`` with no explicit engine
uses the running loop's default driver, made on first use.  asyncio has no
"loop closed" hook, so the driver registers a tiny sentinel async generator
with the loop (``sys.set_asyncgen_hooks`` is the loop's while it runs):
``loop.shutdown_asyncgens()`` -- which ``asyncio.run``, ``uvloop.run`` and
``anyio.run`` all call before closing the loop -- closes it, and its
``finally`` closes the driver and its engine.  The table of drivers is a
``WeakKeyDictionary`` keyed by loop, and a ``weakref.finalize`` on the loop
closes the engine if the loop is dropped without that shutdown.  Nothing in
the driver refers back to the loop, so nothing keeps a dead loop (or its
engine, its ring, its Linux AIO context) alive.  On trio the driver lives in a
``trio.lowlevel.RunVar`` and its system task closes it when ``trio.run`` ends.

*Fork.*  A forked child must not touch its parent's engines (an io_uring CQ is
shared with the parent; an AIO context is not inherited).  After a fork the
child forgets every driver -- the objects are parked, never used or closed --
and makes fresh ones on first use.

*Never block the loop.*  Stream fds (pipes, sockets, ttys) never go to an
engine: :meth:`Driver.read` / :meth:`Driver.write` try the transfer with
``RWF_NOWAIT`` (which fails with EAGAIN instead of sleeping) and otherwise wait
for readiness in the event loop.  A cancelled wait has consumed nothing, so a
cancelled read never loses data.  Regular files go to the engine, which never
blocks the submitting thread (io_uring punts cold reads to its workers; the
``linux`` engine sends buffered files to threads), also on a file system that
cannot be asked not to block -- FUSE, NFS, CIFS...: both engines learn it per
fd from :func:`xaio.engine.fd_kind` and send those requests to a kernel
worker (``IOSQE_ASYNC``) or to threads.

*The kernel's answer, on every engine.*  A positional call on an fd without
a position (a pipe, socket, tty, eventfd) fails with ESPIPE before anything
is submitted (:func:`check_positional`: io_uring would read the stream, the
thread engine would fall back to ``read``).  ``RWF_*`` flags reach the kernel
(``RWF_NOWAIT`` on a file not open with O_DIRECT is tried right here: it never
waits, and io_uring would turn the kernel's EOPNOTSUPP into EAGAIN).  A zero
length is the system call's own answer (EBADF on a write-only fd; a vectored
call checks no flag then, io_uring does).
``pread`` of a huge *n* sizes its buffer from the file and grows it on demand,
and on an O_DIRECT fd reads into an aligned buffer; an O_DIRECT request that
breaks the file's alignment fails with EINVAL saying what was needed
(:func:`dio_einval`).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import fcntl
import os
import stat
import sys
import termios
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, ClassVar, TypeVar

from xaio._inline import INLINE_MAX, NowaitReader
from xaio._memory import PAGE_SIZE, aligned_buffer, dio_alignment
from xaio._ops import OpCode, Operation, OpState, decode_result
from xaio._syscall import oserror
from xaio.engine import Engine, EngineClosedError, create_engine

__all__ = [
    "Driver",
    "AsyncioDriver",
    "TrioDriver",
    "current_driver",
    "current_library",
    "InvalidArgument",
    "check_fd",
    "check_count",
    "check_offset",
]

T = TypeVar("T")


def _abandon(op: Operation) -> None:
    """*op* never reached the engine (cancelled before, the engine closed or
    refusing it): give its buffers back now.  It is not counted in the
    driver's ``_inflight`` yet, so no ``on_done`` runs."""
    if op.state is OpState.QUEUED:
        op.on_done = None
        op.complete(-errno.ECANCELED)


_DONE = OpState.DONE
_get_running_loop = asyncio._get_running_loop
_running_loop = asyncio.get_running_loop
_READ, _WRITE, _READV, _WRITEV = OpCode.READ, OpCode.WRITE, OpCode.READV, OpCode.WRITEV
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_preadv = os.preadv
_INT_MAX = 0x7FFFFFFF
_OFF_MAX = (1 << 63) - 1
#: Immediate completions between two looks at the clock (see _fair).
_STREAK = 16
#: Seconds of immediate completions after which the driver yields to the loop.
_SLICE = 0.0005
#: Tasks parked by an exhausted slice that are released per loop iteration.
_SLICE_WAKE = 1
_perf = time.perf_counter
#: Most tasks woken by completions per loop iteration (asyncio): the rest wait
#: for the next iteration, so one burst of completions cannot hold the loop
#: for longer than this many task steps (timers and other tasks run between;
#: ~1 ms at 64 O_DIRECT readers here).  64 rather than 16: 64 readers then go
#: round in one iteration and one io_uring_enter, ~3 us less CPU per read (of
#: ~26, on a loop device), and the 1 ms ticker's p99 during 64 cold reads did
#: not move (4.9-5.4 ms against 4.3-6.9 ms at 16, 4 alternating runs: this
#: machine's noise; see benchmarks/async.md).
_WAKE_BUDGET = 64
#: Most bytes one read(2)/write(2) moves on Linux (MAX_RW_COUNT).
MAX_RW_COUNT = 0x7FFFF000
#: Largest pread tried inline on the hot path (bigger ones too, after the checks).
_INLINE_MAX = INLINE_MAX


class InvalidArgument(OSError, ValueError):
    """A value the kernel would refuse with ``EINVAL`` (a negative offset...),
    refused before any system call.  Both an ``OSError`` with ``errno ==
    EINVAL`` (what ``os.pread`` raises) and a ``ValueError``."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)


# ---------------------------------------------------------------------------------
# argument checking (before anything reaches the kernel)
# ---------------------------------------------------------------------------------


def check_fd(fd: Any) -> int:
    """Return *fd* as an int.

    Raises:
        TypeError: *fd* is not an integer.
        OSError: ``EBADF`` for a negative fd or one beyond ``INT_MAX``.
    """
    if type(fd) is not int:
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, not {type(fd).__name__!r}")
        fd = int(fd)
    if fd < 0 or fd > _INT_MAX:
        raise oserror(errno.EBADF)
    return int(fd)


class NegativeFd(OSError, ValueError):
    """A negative fd given to ``fsync``/``fdatasync``: a ValueError, as
    ``os.fsync`` raises, and an ``OSError`` with ``EBADF``, as the other
    coroutines (and ``os.pread``) raise for it."""

    def __init__(self, fd: int) -> None:
        super().__init__(errno.EBADF, f"file descriptor cannot be a negative integer ({fd})")


def check_sync_fd(fd: Any) -> int:
    """:func:`check_fd` for ``fsync``/``fdatasync`` (:class:`NegativeFd`
    for a negative fd)."""
    if type(fd) is int and fd < 0:
        raise NegativeFd(fd)
    return check_fd(fd)


def check_count(n: Any, name: str = "n") -> int:
    """Return the byte count *n* as an int.

    Raises:
        TypeError: not an integer.
        InvalidArgument: negative (EINVAL, as ``os.pread``/``os.read`` raise;
            also a ValueError).
    """
    if type(n) is not int:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"{name} must be an int, not {type(n).__name__!r}")
        n = int(n)
    if n < 0:
        raise InvalidArgument(f"{name} must be >= 0, not {n}")
    return int(n)


def check_offset(offset: Any) -> int:
    """Return the file offset *offset* as an int.

    Raises:
        TypeError: not an integer.
        InvalidArgument: negative or beyond 2**63-1 (EINVAL, also a ValueError).
    """
    if type(offset) is not int:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__!r}")
        offset = int(offset)
    if offset < 0 or offset > _OFF_MAX:
        raise InvalidArgument(f"offset must be in [0, 2**63-1], not {offset}")
    return int(offset)


def check_flags(flags: Any) -> int:
    """Return the ``RWF_*`` flags as an int (TypeError/ValueError if not a u32)."""
    if type(flags) is not int:
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise TypeError(f"flags must be an int, not {type(flags).__name__!r}")
        flags = int(flags)
    if flags < 0 or flags > 0xFFFFFFFF:
        raise ValueError(f"flags must be a 32-bit unsigned int, not {flags}")
    return int(flags)


def check_buffers(buffers: Any) -> tuple[Any, ...]:
    """Return the buffers of a vectored call as a tuple (TypeError if not a sequence)."""
    if isinstance(buffers, (bytes, bytearray, memoryview, str)) or not hasattr(buffers, "__iter__"):
        raise TypeError(f"buffers must be a sequence of buffers, not {type(buffers).__name__!r}")
    return tuple(buffers)


class _CacheStat:
    """``cachestat(2)`` (Linux 6.5, syscall 451 on every architecture): how
    much of a file range is in the page cache, without reading or readahead.
    One per driver (its argument structs are reused: not thread-safe)."""

    _works: ClassVar[bool | None] = None

    def __init__(self) -> None:
        import ctypes

        class _Range(ctypes.Structure):
            _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]

        class _Stat(ctypes.Structure):
            _fields_ = [(name, ctypes.c_uint64) for name in ("cache", "dirty", "wb", "ev", "rev")]

        libc = ctypes.CDLL(None, use_errno=True)
        self._call = libc.syscall
        self._call.restype = ctypes.c_long
        self._range = _Range()
        self._stat = _Stat()
        self._args = (ctypes.c_void_p(ctypes.addressof(self._range)),
                      ctypes.c_void_p(ctypes.addressof(self._stat)))  # fmt: skip

    @property
    def works(self) -> bool:
        """True if this kernel has cachestat (probed once per process, on first use)."""
        works = _CacheStat._works
        if works is None:
            works = _CacheStat._works = self._probe()
        return works

    def _probe(self) -> bool:
        try:
            fd = os.open("/proc/self/exe", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            self._range.off, self._range.len = 0, 1
            return int(self._call(_NR_CACHESTAT, fd, *self._args, 0)) == 0
        finally:
            os.close(fd)

    def cached(self, fd: int, offset: int, n: int) -> bool:
        """True if every page of ``[offset, offset + n)`` is in the page cache."""
        r = self._range
        first = offset // PAGE_SIZE
        r.off = first * PAGE_SIZE
        r.len = (offset + n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE - r.off
        if self._call(_NR_CACHESTAT, fd, *self._args, 0) != 0:
            return False
        return bool(self._stat.cache >= r.len // PAGE_SIZE)


_NR_CACHESTAT = 451  # the same on every architecture (numbers >= 424 are unified)


def _is_stream(fd: int) -> bool:
    """True for fds without a file position (pipes, sockets, FIFOs, ttys)."""
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError as e:
        if e.errno == errno.ESPIPE:
            return True
        raise
    return False


_POSITIONAL_TYPES = (stat.S_IFREG, stat.S_IFBLK, stat.S_IFDIR)
_fstat = os.fstat


def check_positional(fd: int) -> None:
    """Raise what ``os.pread``/``os.pwrite`` raise on *fd* before any
    transfer: ESPIPE for an fd without positional I/O, EBADF for one that is
    not open.

    The kernel decides it per open file (``FMODE_PREAD``/``FMODE_PWRITE``):
    ``os.pread`` on a pipe, socket, FIFO, tty or eventfd fails with ESPIPE.
    io_uring does not ask -- it reads a stream at its "current position" --
    and the thread engine's workers fall back to ``read`` on ESPIPE (the POSIX
    AIO rule), so the driver answers before anything is submitted, from the
    fd's type: one ``fstat`` per request that goes to an engine (~1.4 us;
    requests served from the page cache learn it from their own attempt).
    Regular files, block devices and directories (whose reads then fail with
    EISDIR, as ``os.pread``'s do) take positional I/O; character devices when
    they can seek (``/dev/zero`` can, a tty cannot); FIFOs, sockets and
    anonymous inodes (eventfd, timerfd, signalfd...) do not.  Nothing is
    cached: fd numbers are reused as soon as they are closed.
    """
    try:
        kind = stat.S_IFMT(_fstat(fd).st_mode)
    except OSError as e:
        raise oserror(e.errno or errno.EBADF) from None
    if kind in _POSITIONAL_TYPES:
        return
    if kind == stat.S_IFCHR:
        try:
            _lseek(fd, 0, _SEEK_CUR)
        except OSError as e:
            if e.errno == errno.ESPIPE:
                raise oserror(errno.ESPIPE) from None
        return
    raise oserror(errno.ESPIPE)


_SEEK_CUR = os.SEEK_CUR
_lseek = os.lseek


def _is_direct(fd: int) -> bool:
    """True if *fd* is open with O_DIRECT (False if the flags cannot be read)."""
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & _O_DIRECT)
    except OSError:
        return False


_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: Most bytes a stream read (``xaio.read``) takes at once beyond what is
#: there already: the default ``pipe-max-size``; a single read(2) from a
#: pipe never returns more than the pipe holds.
_STREAM_CAP = 1 << 20


def dio_einval(fd: int, offset: int, pins: Sequence[Any]) -> OSError | None:
    """The EINVAL of an O_DIRECT transfer that breaks the alignment the
    kernel reports for *fd* (``statx`` ``STATX_DIOALIGN``), as an ``OSError``
    whose message says what was needed; None if *fd* is not O_DIRECT, the
    alignment is unknown, or the request honours it (the EINVAL has another
    cause).

    Args:
        fd: the file descriptor.
        offset: the file offset of the transfer (< 0: the file position).
        pins: the transfer's buffers (:class:`xaio._buffers.Pin`).
    """
    if not _is_direct(fd):
        return None
    try:
        got = dio_alignment(fd)
    except OSError:
        return None
    if got is None:
        return None
    mem, off = got
    total = sum(p.nbytes for p in pins)
    wrong: list[str] = []
    if offset >= 0 and offset % off:
        wrong.append(f"offset {offset} is not a multiple of {off}")
    if total % off:
        wrong.append(f"length {total} is not a multiple of {off}")
    for p in pins:
        if p.address % mem or p.nbytes % mem:
            wrong.append(
                f"a buffer at an address {p.address % mem} bytes past a multiple of {mem}"
                f" (length {p.nbytes}; xaio.aligned_buffer makes aligned ones)"
                if p.address % mem
                else f"a buffer length {p.nbytes} is not a multiple of {mem}"
            )
            break
    if not wrong:
        return None
    return OSError(
        errno.EINVAL,
        f"{os.strerror(errno.EINVAL)}: O_DIRECT on fd {fd} needs file offsets and lengths"
        f" that are multiples of {off} and buffer addresses aligned to {mem} bytes: "
        + "; ".join(wrong),
    )


def _readable_now(fd: int) -> int:
    """Bytes *fd* has to read now (``FIONREAD``: what a pipe or socket holds,
    what a regular file holds past its position); 0 if it cannot say."""
    try:
        got = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return max(int.from_bytes(got, sys.byteorder, signed=True), 0)


def _first_read_size(fd: int, n: int, offset: int, direct: bool) -> int:
    """The buffer for a ``pread`` of *n* (> ``INLINE_MAX``) bytes at
    *offset*: what a regular file holds from there (``fstat``) plus one byte,
    so a read that comes back short has found the end; ``INLINE_MAX`` for
    other files (devices), the reader grows it while reads fill it.  On an
    O_DIRECT fd it is rounded up to the file's offset alignment, keeping
    *n*'s remainder (the kernel then judges the length as it would *n*)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return min(n, _INLINE_MAX)
    want = max(st.st_size - offset, 0) + 1 if stat.S_ISREG(st.st_mode) else _INLINE_MAX
    if direct:
        try:
            got = dio_alignment(fd)
        except OSError:
            got = None
        align = got[1] if got else PAGE_SIZE
        want = -(-want // align) * align + n % align
    return min(n, want)


# ---------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------


class Driver:
    """One engine bound to one running event loop (see the module essay).

    The coroutine methods mirror the :mod:`os` functions; the public
    ``xaio.pread`` & co call them on the running loop's default driver, an
    ``xaio.open_engine()`` object on its own.  Subclasses implement the waits
    for one event-loop library.
    """

    library: str = ""

    def __init__(self, engine: Engine, *, owns_engine: bool = True) -> None:
        self.engine = engine
        self.owns_engine = owns_engine
        self.closed = False
        self._inflight = 0  # submitted (or queued here) and not yet completed
        #: tasks woken by a completion that have not resumed yet (counted by
        #: each library's on_done and waits): while there are any, a new request
        #: waits for this iteration's batch (see "Batching under load")
        self._wakeups = 0
        self._queue: list[Operation] = []
        self._flush_pending = False
        self._streak = 0
        self._slice_start = 0.0
        self._exhausted = False
        self._uring = engine.name == "uring"
        #: asyncio: inline completions need no checkpoint (see _fair); trio: False
        self._inline = True
        self._nowait = NowaitReader()  # its flag cache: may an fd be read inline?
        #: cold fds (recent misses): hits still needed to be warm (< 0: skips left)
        self._cold: dict[int, int] = {}
        self._cachestat: _CacheStat | None = None
        self._on_done = self._make_on_done()
        self._meta: Any = None  # xaio.os's io_uring Ring (_meta.MetaRing), made on demand
        self._meta_failed = False
        #: drivers of other engine kinds on this loop (``named_driver``), closed with this one
        self._named: dict[str, Driver] = {}

    # -- backend hooks -------------------------------------------------------------

    def _make_on_done(self) -> Callable[[Operation], None]:
        raise NotImplementedError

    def _schedule_flush(self) -> None:
        raise NotImplementedError

    async def _wait(self, op: Operation) -> None:
        """Wait until *op* completed; on cancellation cancel it in the kernel and
        wait for its completion before re-raising."""
        raise NotImplementedError

    async def _yield(self) -> None:
        raise NotImplementedError

    async def wait_readable(self, fd: int) -> None:
        raise NotImplementedError

    async def wait_writable(self, fd: int) -> None:
        raise NotImplementedError

    async def run_in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a worker thread; if cancelled, wait for it to
        finish before re-raising (the call cannot be stopped)."""
        raise NotImplementedError

    def check_loop(self) -> None:
        """Raise RuntimeError if called outside the loop this driver belongs to."""

    def watch(self, fd: int, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` in the loop whenever *fd* is readable; returns
        the function that stops it."""
        raise NotImplementedError

    # -- submission ------------------------------------------------------------------

    def _start(self, op: Operation) -> None:
        """Hand *op* to the engine now (nothing in flight: lowest latency, and a
        reap right after so an inline completion resolves at once), or queue it
        for this iteration's batch (requests in flight: one syscall per batch)."""
        if self.closed:
            raise EngineClosedError("the engine is closed")
        # From here the request counts in _inflight, and its completion (by the
        # engine, or by _unqueue) takes it out again through on_done.  Before
        # this point the driver may complete it itself (served inline, zero
        # length, abandoned) without touching the count.
        op.on_done = self._on_done
        self._inflight += 1
        if self._inflight > 1 or self._wakeups:
            self._queue.append(op)
            if not self._flush_pending:
                self._flush_pending = True
                self._schedule_flush()
            return
        engine = self.engine
        try:
            engine.submit((op,))
        except BaseException:
            self._inflight -= 1
            op.on_done = None
            raise
        if self._uring:
            engine.reap(0)

    def start_all(self, ops: Sequence[Operation]) -> None:
        """Hand every operation of *ops* to the engine in one ``submit``
        (:class:`xaio.Batch`), whatever is in flight, and reap right after.
        Each completes through this driver's ``on_done`` as :meth:`_start`'s
        do.  When it raises, no operation was taken."""
        if self.closed:
            raise EngineClosedError("the engine is closed")
        on_done = self._on_done
        for op in ops:
            op.on_done = on_done
        self._inflight += len(ops)
        try:
            self.engine.submit(ops)
        except BaseException:
            self._inflight -= len(ops)
            for op in ops:
                op.on_done = None
            raise
        if self._uring:
            self.engine.reap(0)

    def _flush(self) -> None:
        """Submit the queued batch (one engine.submit) and reap right after."""
        self._flush_pending = False
        queue = self._queue
        if not queue or self.closed:
            return
        self._queue = []
        try:
            self.engine.submit(queue)
        except Exception as e:  # the engine refused the batch: fail each request
            err = e.errno if isinstance(e, OSError) and e.errno else errno.EIO
            for op in queue:
                if op.state is OpState.QUEUED:
                    op.complete(-err)
            return
        if self._uring:
            self.engine.reap(0)

    def _unqueue(self, op: Operation) -> bool:
        """Take *op* back if it is still in this driver's queue (then it is
        completed here with -ECANCELED); True if it was."""
        try:
            self._queue.remove(op)
        except ValueError:
            return False
        op.complete(-errno.ECANCELED)
        return True

    def _cancel_in_engine(self, op: Operation) -> None:
        if op.state is _DONE or self._unqueue(op):
            return
        if op.opcode is OpCode.NOP and self._meta is not None and self._meta.cancel(op):
            return
        try:
            self.engine.cancel(op)
        except (OSError, RuntimeError):
            pass  # not cancellable: it completes normally and we wait for it

    def on_readable(self) -> None:
        """The engine's fd is readable: deliver its completions."""
        if not self.closed:
            self.engine.reap(0)

    async def _fair(self) -> None:
        """Before a transfer that may complete at once: every :data:`_STREAK`
        calls, look at the clock; once this driver's tasks have run for
        :data:`_SLICE` in this loop iteration, every task yields before its
        next transfer until the next iteration starts a new slice (trio: a
        checkpoint every time)."""
        self._streak += 1
        if self._streak < _STREAK:
            return
        if not self._exhausted:
            if _perf() - self._slice_start <= _SLICE:
                self._streak = 0
                return
            self._exhausted = True
            self._new_slice_soon()
        await self._yield()

    def _new_slice_soon(self) -> None:
        """Arrange for :meth:`_new_slice` to run first thing in the next iteration."""
        self._new_slice()

    def _new_slice(self) -> None:
        self._exhausted = False
        self._streak = 0
        self._slice_start = _perf()

    async def _run(self, op: Operation) -> int:
        """Start *op* (:meth:`_start`; if that or the checkpoint before it
        fails, :func:`_abandon` it), wait for it, return its decoded result."""
        raise NotImplementedError

    def _inline_ok(self, fd: int) -> bool:
        """May a read on *fd* be tried with ``RWF_NOWAIT`` straight away?

        Not on O_DIRECT fds (a NOWAIT direct read still waits for the device)
        nor O_APPEND ones (:meth:`xaio._inline.NowaitReader.flags_ok`, whose
        cache is looked at again every 64 reads), nor on fds whose last
        attempts missed the page cache (*cold* fds: see :meth:`_missed`)."""
        return self._nowait.flags_ok(fd) and fd not in self._cold

    def _missed(self, fd: int) -> None:
        """A ``RWF_NOWAIT`` attempt on *fd* missed the page cache.

        A miss is not free: it starts the readahead from this thread, which
        costs tens of microseconds and can sleep for milliseconds when the
        device queue is full.  So the fd turns *cold*: its reads first ask
        ``cachestat(2)`` (Linux 6.5: a look at the page cache, no I/O, ~1.5 us)
        and try inline only when the whole range is cached; after 8 such hits
        in a row it is warm again.  Without cachestat a cold fd skips the next
        64 inline attempts instead."""
        cold = self._cold
        if len(cold) > 1024:
            cold.clear()
        if self._cachestat is None:
            self._cachestat = _CacheStat()
        cold[fd] = 8 if self._cachestat.works else -64

    def _try_inline_read(self, fd: int, bufs: tuple[Any, ...], offset: int, n: int) -> int | None:
        """Try the read from the page cache in this thread (``preadv2`` with
        ``RWF_NOWAIT``, which fails with EAGAIN instead of waiting for the
        device): exactly the attempt io_uring makes inline before punting a
        read to a worker, without the ring's per-request cost.  For a cold fd
        or one :meth:`_inline_ok` accepted (the callers ask first).

        Returns:
            *n* when the whole read was done here; None when the caller must
            go through the engine (EAGAIN, a short read, any error: the engine
            path reports errors and end of file).
        """
        cold = self._cold.get(fd)
        if cold is not None:
            if cold < 0:  # no cachestat: skip a few attempts
                if cold == -1:
                    del self._cold[fd]
                else:
                    self._cold[fd] = cold + 1
                return None
            cs = self._cachestat
            if cs is None or not self._nowait.flags_ok(fd) or not cs.cached(fd, offset, n):
                self._cold[fd] = 8
                return None
        try:
            got: int = _preadv(fd, bufs, offset, _RWF_NOWAIT)
        except BlockingIOError:
            self._missed(fd)
            return None
        except (OSError, OverflowError, ValueError, TypeError, BufferError):
            self._nowait.decline(fd)
            return None
        if got != n:
            self._missed(fd)
            return None
        if cold is not None:
            if cold <= 1:
                del self._cold[fd]
            else:
                self._cold[fd] = cold - 1
        return got

    async def _transfer(self, op: Operation) -> int:
        """:meth:`_run` for a read or write, whose EINVAL says what alignment
        was needed when the fd is O_DIRECT and the request breaks it
        (:func:`dio_einval`)."""
        try:
            return await self._run(op)
        except OSError as e:
            if e.errno == errno.EINVAL:
                better = dio_einval(op.fd, op.offset, op.pins)
                if better is not None:
                    raise better from None
            raise

    # -- the os-like coroutines ---------------------------------------------------------

    async def pread(self, fd: int, n: int, offset: int) -> bytes:
        """Read at most *n* bytes at *offset* (pread(2), ``os.pread``).

        The buffer is sized from the file (``fstat``) when *n* is large, and
        grows while the file has more, so a huge *n* costs what the file
        holds; on an O_DIRECT fd it is aligned for the device.

        Returns:
            The bytes read (shorter at end of file; empty at or past it).

        Raises:
            TypeError, ValueError, InvalidArgument: bad arguments (before any syscall).
            OSError: what the kernel reports (``EBADF``, ``EISDIR``, ``ESPIPE``...).
        """
        # The hot path: a page-cache hit, done here without a Future (asyncio).
        if (
            self._inline
            and type(fd) is int
            and type(n) is int
            and type(offset) is int
            and 0 < n <= _INLINE_MAX
            and 0 <= fd <= _INT_MAX
            and 0 <= offset <= _OFF_MAX
            and self._streak < _STREAK
            and self._inline_ok(fd)
        ):
            buf = bytearray(n)
            try:
                got = _preadv(fd, (buf,), offset, _RWF_NOWAIT)
            except BlockingIOError:
                got = -1
            except OSError as e:
                if e.errno == errno.ESPIPE:
                    raise
                got = -2  # the engine reports it (or the fs lacks RWF_NOWAIT)
            if got == n:
                self._streak += 1
                return bytes(buf)
            self._missed(fd)
            # (the attempt passed the kernel's ESPIPE check unless it failed)
            return await self._pread(fd, n, offset, buf, got != -2)
        return await self._pread(fd, check_count(n), offset, None, False)

    async def _pread(
        self, fd: int, n: int, offset: int, buf: bytearray | None, positional: bool
    ) -> bytes:
        fd = check_fd(fd)
        offset = check_offset(offset)
        if n == 0:
            return os.pread(fd, 0, offset)  # the kernel's answer; nothing to wait for
        if not positional:
            check_positional(fd)
        if buf is not None:
            if fd in self._cold and self._try_inline_read(fd, (buf,), offset, n) is not None:
                return bytes(buf)
            return await self._pread_engine(fd, n, offset, buf, False)
        n = min(n, MAX_RW_COUNT)
        direct = _is_direct(fd)
        size = n if n <= _INLINE_MAX else _first_read_size(fd, n, offset, direct)
        if direct:
            return await self._pread_engine(fd, n, offset, aligned_buffer(size), True)
        buf = bytearray(size)
        # (only reads that may be served inline pass a checkpoint here: an
        # engine-bound one has its own in _run, and a second one would let
        # trio run the other woken tasks in between, see Driver._wakeups)
        if size == n and (fd in self._cold or self._inline_ok(fd)):
            await self._fair()
            if self._try_inline_read(fd, (buf,), offset, n) is not None:
                return bytes(buf)
        return await self._pread_engine(fd, n, offset, buf, False)

    async def _pread_engine(
        self, fd: int, n: int, offset: int, buf: bytearray | memoryview, direct: bool
    ) -> bytes:
        """Read into *buf* through the engine; while a read fills it and fewer
        than *n* bytes were asked for, read on into a fresh buffer of twice
        the bytes read so far (aligned if *direct*)."""
        res = await self._transfer(Operation(_READ, fd, (buf,), offset))
        size = len(buf)
        if res < size or size >= n:
            return bytes(buf) if res == size else bytes(memoryview(buf)[:res])
        parts = [bytes(buf)]
        total = res
        while total < n:
            size = min(n - total, max(total, _INLINE_MAX))
            more: bytearray | memoryview = aligned_buffer(size) if direct else bytearray(size)
            res = await self._transfer(Operation(_READ, fd, (more,), offset + total))
            parts.append(bytes(more) if res == size else bytes(memoryview(more)[:res]))
            total += res
            if res < size:
                break
        return b"".join(parts)

    async def preadinto(self, fd: int, buf: Any, offset: int) -> int:
        """Read into the writable buffer *buf* at *offset* (``os.preadv`` with one buffer).

        Returns:
            Bytes read.

        Raises:
            TypeError: *buf* is not a writable bytes-like object.
            ValueError: *buf* is not contiguous; bad offset.
            OSError: what the kernel reports.
        """
        if not (
            type(fd) is int
            and type(offset) is int
            and 0 <= fd <= _INT_MAX
            and 0 <= offset <= _OFF_MAX
        ):
            fd = check_fd(fd)
            offset = check_offset(offset)
        # May the read be tried from the page cache here?  None: not asked yet
        # (asked once per call: O_DIRECT fds skip it cheaply, with no syscall
        # before the buffer has been checked).
        inline_ok: bool | None = None
        positional = False  # the kernel's ESPIPE check passed (an attempt was made)
        if (
            self._inline
            and self._streak < _STREAK
            and (type(buf) is bytearray or type(buf) is memoryview)
        ):
            inline_ok = self._inline_ok(fd)
            if inline_ok:
                n = buf.nbytes if isinstance(buf, memoryview) else len(buf)
                if n:
                    try:
                        got = _preadv(fd, (buf,), offset, _RWF_NOWAIT)
                        positional = True
                    except BlockingIOError:
                        got = -1
                        positional = True
                    except OSError as e:
                        if e.errno == errno.ESPIPE:
                            raise
                        got = -1
                    except (TypeError, ValueError, BufferError):
                        got = -1
                    if got == n:
                        self._streak += 1
                        return got
                    self._missed(fd)
        op = Operation(_READ, fd, (buf,), offset)
        n = op.pins[0].nbytes
        if n == 0:
            op.complete(0)
            return os.preadv(fd, (buf,), offset)  # the kernel's answer (ESPIPE, EBADF...)
        try:
            if not positional:
                check_positional(fd)
            # (O_DIRECT fds go straight to the engine, see _pread)
            if fd in self._cold or (self._inline_ok(fd) if inline_ok is None else inline_ok):
                await self._fair()
                inline = self._try_inline_read(fd, (buf,), offset, n)
                if inline is not None:
                    op.complete(inline)
                    return inline
        except BaseException:
            _abandon(op)
            raise
        return await self._transfer(op)

    async def pwrite(self, fd: int, data: Any, offset: int) -> int:
        """Write the bytes-like *data* at *offset* (pwrite(2), ``os.pwrite``).

        Returns:
            Bytes written (may be short, as the system call's).

        Raises:
            TypeError: *data* is not bytes-like.
            OSError: what the kernel reports (``EBADF`` on a read-only fd...).
        """
        fd = check_fd(fd)
        offset = check_offset(offset)
        op = Operation(_WRITE, fd, (data,), offset)
        try:
            check_positional(fd)
        except BaseException:
            _abandon(op)
            raise
        return await self._transfer(op)

    async def preadv(self, fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> int:
        """Read into a sequence of writable buffers at *offset* (preadv2(2), ``os.preadv``).

        Args:
            flags: ``os.RWF_*`` flags (``RWF_HIPRI``, ``RWF_NOWAIT``); the
                kernel applies or refuses them as for ``os.preadv``.  A
                ``RWF_NOWAIT`` read of a file not open with O_DIRECT is done
                in the calling thread (it never waits).

        Returns:
            Total bytes read.
        """
        fd = check_fd(fd)
        offset = check_offset(offset)
        flags = check_flags(flags)
        bufs = check_buffers(buffers)
        op = Operation(_READV, fd, bufs, offset, flags)
        n = op.nbytes
        if n == 0:  # the system call's answer: preadv2 checks no flag then
            op.complete(0)
            return os.preadv(fd, bufs, offset, flags)
        if flags & _RWF_NOWAIT and not _is_direct(fd):
            op.complete(0)
            await self._fair()
            return os.preadv(fd, bufs, offset, flags)
        inline = bool(not flags and n and (fd in self._cold or self._inline_ok(fd)))
        try:
            check_positional(fd)
            if inline:  # (see _pread)
                await self._fair()
        except BaseException:
            _abandon(op)
            raise
        if inline and self._try_inline_read(fd, bufs, offset, n) is not None:
            op.complete(n)
            return n
        return await self._transfer(op)

    async def pwritev(self, fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> int:
        """Write a sequence of buffers at *offset* (pwritev2(2), ``os.pwritev``).

        Args:
            flags: ``os.RWF_*`` flags (``RWF_DSYNC``, ``RWF_SYNC``,
                ``RWF_APPEND``...); the kernel applies or refuses them as for
                ``os.pwritev``.  A ``RWF_NOWAIT`` write to a file not open
                with O_DIRECT is done in the calling thread (it never waits).

        Returns:
            Total bytes written.
        """
        fd = check_fd(fd)
        offset = check_offset(offset)
        flags = check_flags(flags)
        bufs = check_buffers(buffers)
        op = Operation(_WRITEV, fd, bufs, offset, flags)
        if not op.nbytes:  # the system call's answer: pwritev2 checks no flag then
            op.complete(0)
            return os.pwritev(fd, bufs, offset, flags)
        if flags & _RWF_NOWAIT and not _is_direct(fd):
            op.complete(0)
            await self._fair()
            return os.pwritev(fd, bufs, offset, flags)
        try:
            check_positional(fd)
        except BaseException:
            _abandon(op)
            raise
        return await self._transfer(op)

    async def fsync(self, fd: int) -> None:
        """Flush *fd*'s data and metadata to storage (fsync(2), ``os.fsync``)."""
        fd = check_sync_fd(fd)
        await self._run(Operation(OpCode.FSYNC, fd))

    async def fdatasync(self, fd: int) -> None:
        """Flush *fd*'s data to storage (fdatasync(2), ``os.fdatasync``)."""
        fd = check_sync_fd(fd)
        await self._run(Operation(OpCode.FDATASYNC, fd))

    async def _file_rw(self, opcode: OpCode, fd: int, buf: Any) -> int:
        """A read/write at the file position, through the engine (regular files)."""
        return await self._run(Operation(opcode, fd, (buf,), -1))

    async def readinto(self, fd: int, buf: Any) -> int:
        """Read from a stream fd (or at a regular file's position) into *buf*.

        Never blocks the loop and never parks a thread: the transfer is tried
        with ``RWF_NOWAIT`` and otherwise waits for readiness in the event
        loop.  A cancelled call has consumed nothing from the fd.

        Returns:
            Bytes read (0 at end of file).
        """
        fd = check_fd(fd)
        with memoryview(buf) as mv:
            if mv.readonly:
                raise TypeError(
                    f"a writable buffer is required, not a read-only {type(buf).__name__!r}"
                )
            if not mv.c_contiguous:
                raise ValueError("buffer must be C-contiguous")
            n = mv.nbytes
        if n == 0:
            return os.readv(fd, (buf,))  # the kernel's answer (EBADF...); it never waits
        bufs = (buf,)
        nowait = _RWF_NOWAIT
        await self._fair()  # a cancellation here consumes nothing
        while True:
            try:
                if nowait:
                    got: int = os.preadv(fd, bufs, -1, nowait)
                else:
                    got = os.readv(fd, bufs)
                return got
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL) or not nowait:
                    raise
                # RWF_NOWAIT unsupported here (a tty...): non-blocking fds and
                # regular files read directly; others after readiness.
                if not _is_stream(fd):
                    return await self._file_rw(_READ, fd, buf)
                if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
                    nowait = 0
                    continue
                await self._wait_readable_or_direct(fd)
                return int(os.readv(fd, bufs))
            if not _is_stream(fd):  # a regular file not in the page cache
                return await self._file_rw(_READ, fd, buf)
            await self._wait_readable_or_direct(fd)

    async def read(self, fd: int, n: int) -> bytes:
        """Read at most *n* bytes from a stream fd (read(2), ``os.read``).

        See :meth:`readinto`.  Returns b"" at end of file.  The buffer holds
        what the fd has to read now (``FIONREAD``), at least 1 MiB, at most
        *n*: like any read(2), it may return less than *n*.
        """
        fd = check_fd(fd)
        n = check_count(n)
        if n == 0:
            return os.read(fd, 0)  # the kernel's answer (EBADF...); it never waits
        size = min(n, MAX_RW_COUNT)
        if size > _STREAM_CAP:
            size = min(size, max(_readable_now(fd), _STREAM_CAP))
        buf = bytearray(size)
        got = await self.readinto(fd, buf)
        del buf[got:]
        return bytes(buf)

    async def write(self, fd: int, data: Any) -> int:
        """Write *data* to a stream fd (write(2), ``os.write``).

        Tried with ``RWF_NOWAIT``; waits for writability in the event loop
        otherwise.  Like ``os.write`` it may write less than all of *data*.
        A cancelled call has written nothing.

        Returns:
            Bytes written.
        """
        fd = check_fd(fd)
        with memoryview(data) as mv:
            if not mv.c_contiguous:
                raise ValueError("buffer must be C-contiguous")
            n = mv.nbytes
        bufs = (data,)
        nowait = _RWF_NOWAIT
        await self._fair()  # a cancellation here writes nothing
        while True:
            try:
                if nowait:
                    done: int = os.pwritev(fd, bufs, -1, nowait)
                else:
                    done = os.writev(fd, bufs)
                if done or n == 0:
                    return done
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL) or not nowait:
                    raise
                if not _is_stream(fd):
                    return await self._file_rw(_WRITE, fd, data)
                if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
                    nowait = 0
                    continue
                await self._wait_writable_or_direct(fd)
                return int(os.writev(fd, bufs))
            if not _is_stream(fd):
                return await self._file_rw(_WRITE, fd, data)
            await self._wait_writable_or_direct(fd)

    async def _wait_readable_or_direct(self, fd: int) -> None:
        try:
            await self.wait_readable(fd)
        except PermissionError:  # epoll refuses it (/dev/null...): it never blocks
            return

    async def _wait_writable_or_direct(self, fd: int) -> None:
        try:
            await self.wait_writable(fd)
        except PermissionError:
            return

    # -- closing --------------------------------------------------------------------

    def _close_meta(self) -> None:
        meta, self._meta = self._meta, None
        if meta is not None:
            meta.close()

    def close(self) -> None:
        """Close the engine (if this driver owns it); idempotent."""
        if self.closed:
            return
        self.closed = True
        queue, self._queue = self._queue, []
        for op in queue:
            if op.state is OpState.QUEUED:
                op.complete(-errno.ECANCELED)
        try:
            self._close_meta()
            named, self._named = self._named, {}
            for drv in named.values():
                drv.close()
        finally:
            if self.owns_engine:
                self.engine.close()


# ---------------------------------------------------------------------------------
# asyncio (and uvloop, and anyio on asyncio)
# ---------------------------------------------------------------------------------


class AsyncioDriver(Driver):
    """A driver for an asyncio event loop (any implementation with ``add_reader``)."""

    library = "asyncio"

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, **kw: Any) -> None:
        super().__init__(engine, **kw)
        self._loop_ref = weakref.ref(loop)
        self._fd = engine.fileno()
        self._waiters: dict[tuple[int, bool], list[asyncio.Future[None]]] = {}
        self._woken = 0  # tasks woken in this loop iteration
        self._deferred: list[asyncio.Future[None]] = []
        self._slice_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._release_pending = False
        loop.add_reader(self._fd, self.on_readable)
        self._reader = True

    def _make_on_done(self) -> Callable[[Operation], None]:
        budget = _WAKE_BUDGET

        def on_done(op: Operation) -> None:
            self._inflight -= 1
            fut = op.context
            if fut is None:
                return
            if self._woken < budget:
                if not self._woken and not self._release_pending:
                    self._release_pending = True
                    asyncio.get_running_loop().call_soon(self._release)
                self._woken += 1
                if not fut.done():
                    fut.set_result(None)
                    self._wakeups += 1
            else:
                self._deferred.append(fut)

        return on_done

    def _release(self) -> None:
        """Once per loop iteration while completions are being delivered: wake
        the tasks deferred by the budget (at most :data:`_WAKE_BUDGET`)."""
        deferred = self._deferred
        self._woken = 0
        if not deferred:
            self._release_pending = False
            return
        take = deferred[:_WAKE_BUDGET]
        del deferred[:_WAKE_BUDGET]
        self._woken = len(take)
        for fut in take:
            if not fut.done():
                fut.set_result(None)
                self._wakeups += 1
        asyncio.get_running_loop().call_soon(self._release)

    def _wake_all(self) -> None:
        waiters = self._slice_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        deferred, self._deferred = self._deferred, []
        for fut in deferred:
            if not fut.done():
                fut.set_result(None)

    def check_loop(self) -> None:
        if self._loop_ref() is not asyncio._get_running_loop():
            raise RuntimeError("this xaio engine belongs to another event loop")

    def _schedule_flush(self) -> None:
        asyncio.get_running_loop().call_soon(self._flush)

    def _new_slice_soon(self) -> None:
        asyncio.get_running_loop().call_soon(self._new_slice)

    async def _fair(self) -> None:
        # As Driver._fair, but an exhausted slice parks the task in a FIFO of
        # waiters, _SLICE_WAKE of which are released per loop iteration: with
        # 64 tasks reading cached data the loop runs a few of them per slice,
        # round robin, instead of resuming all 64 just to yield again.
        self._streak += 1
        if self._streak < _STREAK:
            return
        if not self._exhausted:
            if _perf() - self._slice_start <= _SLICE:
                self._streak = 0
                return
            self._exhausted = True
            self._new_slice_soon()
        fut = _running_loop().create_future()
        self._slice_waiters.append(fut)
        await fut

    def _new_slice(self) -> None:
        super()._new_slice()
        waiters = self._slice_waiters
        n = 0
        while waiters and n < _SLICE_WAKE:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n += 1
        if waiters:
            self._exhausted = True  # the others wait for a later slice
            asyncio.get_running_loop().call_soon(self._new_slice)

    async def _wait(self, op: Operation) -> None:
        fut = asyncio.get_running_loop().create_future()
        op.context = fut
        try:
            await fut
        except asyncio.CancelledError:
            self._resumed(fut)
            await self._cancel_and_wait(op)
            raise
        self._resumed(fut)

    async def _run(self, op: Operation) -> int:
        """Start *op*, wait for it (one Future, made only if it did not
        complete at once), return its decoded result."""
        try:
            if self._streak >= _STREAK:
                await self._fair()  # a cancellation here: nothing was started
            self._start(op)
        except BaseException:
            _abandon(op)
            raise
        if op.state is not _DONE:
            fut = _running_loop().create_future()
            op.context = fut
            try:
                await fut
            except asyncio.CancelledError:
                self._resumed(fut)
                await self._cancel_and_wait(op)
                raise
            if self._wakeups:
                self._wakeups -= 1
        else:
            self._streak += 1
        res = op.result
        if res is None or res < 0:
            return decode_result(res if res is not None else -errno.EIO)
        return res

    async def _cancel_and_wait(self, op: Operation) -> None:
        self._cancel_in_engine(op)
        loop = asyncio.get_running_loop()
        while op.state is not _DONE:
            fut = loop.create_future()
            op.context = fut
            try:
                await fut
            except asyncio.CancelledError:
                self._resumed(fut)
                continue  # cancelled again: keep waiting for the kernel
            self._resumed(fut)

    def _resumed(self, fut: asyncio.Future[None]) -> None:
        """A task that awaited *fut* runs again: if a completion woke it, it
        no longer counts as about to run (see ``_wakeups``)."""
        if self._wakeups and fut.done() and not fut.cancelled():
            self._wakeups -= 1

    async def _yield(self) -> None:
        await asyncio.sleep(0)

    async def _wait_ready(self, fd: int, write: bool) -> None:
        loop = asyncio.get_running_loop()
        key = (fd, write)
        waiters = self._waiters.get(key)
        fut: asyncio.Future[None] = loop.create_future()
        if waiters is None:
            waiters = self._waiters[key] = []
            add = loop.add_writer if write else loop.add_reader
            try:
                add(fd, self._ready, key)
            except OSError:
                del self._waiters[key]
                raise
        waiters.append(fut)
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()
            try:
                waiters.remove(fut)
            except ValueError:
                pass
            if not waiters and self._waiters.get(key) is waiters:
                del self._waiters[key]
                (loop.remove_writer if write else loop.remove_reader)(fd)

    def _ready(self, key: tuple[int, bool]) -> None:
        for fut in self._waiters.get(key, ()):
            if not fut.done():
                fut.set_result(None)

    async def wait_readable(self, fd: int) -> None:
        """Wait until *fd* is readable (``loop.add_reader``); several tasks may wait."""
        await self._wait_ready(fd, False)

    async def wait_writable(self, fd: int) -> None:
        """Wait until *fd* is writable (``loop.add_writer``)."""
        await self._wait_ready(fd, True)

    async def run_in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            while not fut.done():
                try:
                    await asyncio.shield(fut)
                except asyncio.CancelledError:
                    continue
                except BaseException:
                    break
            raise

    def watch(self, fd: int, callback: Callable[[], None]) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, callback)
        ref = self._loop_ref

        def unwatch() -> None:
            lp = ref()
            if lp is not None and not lp.is_closed():
                lp.remove_reader(fd)

        return unwatch

    def detach_reader(self) -> None:
        if not self._reader:
            return
        self._reader = False
        loop = self._loop_ref()
        if loop is not None and not loop.is_closed():
            try:
                loop.remove_reader(self._fd)
            except (RuntimeError, ValueError, OSError):  # pragma: no cover
                pass

    def close(self) -> None:
        if self.closed:
            return
        self.detach_reader()
        try:
            super().close()
        finally:
            self._wake_all()


# ---------------------------------------------------------------------------------
# trio (and anyio on trio)
# ---------------------------------------------------------------------------------


class _TrioCancel:
    """The waiter of an operation whose task trio asked to cancel."""

    __slots__ = ("task", "raise_cancel")

    def __init__(self, task: Any, raise_cancel: Callable[[], Any]) -> None:
        self.task = task
        self.raise_cancel = raise_cancel


class TrioDriver(Driver):
    """A driver for one ``trio.run``: a system task waits on the engine's fd."""

    library = "trio"

    def __init__(self, engine: Engine, **kw: Any) -> None:
        import outcome
        import trio

        self._trio = trio
        self._lowlevel = trio.lowlevel
        self._outcome = outcome
        super().__init__(engine, **kw)
        self._inline = False  # trio: every call is a checkpoint (see _fair)
        self._fd = engine.fileno()
        self._token = trio.lowlevel.current_trio_token()
        self._stopped = trio.Event()
        #: the flusher system task while it is parked (None while it runs)
        self._flusher: Any = None
        trio.lowlevel.spawn_system_task(self._reader, name="xaio engine reader")
        trio.lowlevel.spawn_system_task(self._flush_task, name="xaio engine flusher")

    def check_loop(self) -> None:
        try:
            token = self._lowlevel.current_trio_token()
        except RuntimeError:
            token = None
        if token is not self._token:
            raise RuntimeError("this xaio engine belongs to another trio run")

    def _make_on_done(self) -> Callable[[Operation], None]:
        reschedule = self._lowlevel.reschedule
        capture = self._outcome.capture

        def on_done(op: Operation) -> None:
            self._inflight -= 1
            w = op.context
            if w is None:
                return
            op.context = None
            self._wakeups += 1  # the task's _wait takes it back when it resumes
            if type(w) is _TrioCancel:
                reschedule(w.task, capture(w.raise_cancel))
            else:
                reschedule(w)

        return on_done

    async def _reader(self) -> None:
        wait_readable = self._lowlevel.wait_readable
        try:
            while not self.closed:
                await wait_readable(self._fd)
                self.on_readable()
        except self._trio.ClosedResourceError:
            pass  # close() called notify_closing: stop reading
        finally:
            self._stopped.set()
            if self.owns_engine:
                self.close()

    def watch(self, fd: int, callback: Callable[[], None]) -> Callable[[], None]:
        ll = self._lowlevel
        state = {"on": True}

        async def watcher() -> None:
            try:
                while state["on"]:
                    await ll.wait_readable(fd)
                    if state["on"]:
                        callback()
            except (self._trio.ClosedResourceError, self._trio.Cancelled):
                pass

        ll.spawn_system_task(watcher, name="xaio path-operation reader")

        def unwatch() -> None:
            state["on"] = False
            try:
                ll.notify_closing(fd)
            except RuntimeError:
                pass

        return unwatch

    async def _flush_task(self) -> None:
        """trio has no ``call_soon``: this system task plays its part.  Woken
        by the first request queued in a scheduling batch, it runs in the next
        batch -- after every task that was runnable with the submitter (e.g.
        all those woken by one reap) has queued its request -- and hands the
        whole queue to the engine in one submit."""
        ll = self._lowlevel

        def abort(_raise_cancel: Callable[[], Any]) -> Any:
            self._flusher = None
            return ll.Abort.SUCCEEDED

        try:
            while not self.closed:
                self._flusher = ll.current_task()
                await ll.wait_task_rescheduled(abort)
                self._flush()
        except self._trio.Cancelled:
            pass  # the run is ending
        finally:
            self._flusher = None
            if self._queue and not self.closed:
                self._flush()

    def _schedule_flush(self) -> None:
        task = self._flusher
        if task is None:  # not parked (not started yet, or gone): flush now
            self._flush()
            return
        self._flusher = None
        self._lowlevel.reschedule(task)

    async def _run(self, op: Operation) -> int:
        ll = self._lowlevel
        try:
            await ll.checkpoint_if_cancelled()
            self._start(op)
        except BaseException:
            _abandon(op)
            raise
        if op.state is not _DONE:
            await self._wait(op)
        else:
            await ll.cancel_shielded_checkpoint()
        res = op.result
        if res is None or res < 0:
            return decode_result(res if res is not None else -errno.EIO)
        return res

    async def _wait(self, op: Operation) -> None:
        ll = self._lowlevel
        task = ll.current_task()
        op.context = task

        def abort(raise_cancel: Callable[[], Any]) -> Any:
            op.context = _TrioCancel(task, raise_cancel)
            self._cancel_in_engine(op)
            return ll.Abort.FAILED

        try:
            # only on_done reschedules this task (abort never succeeds), and it
            # counted the wake-up
            await ll.wait_task_rescheduled(abort)
        finally:
            if self._wakeups:
                self._wakeups -= 1

    async def _yield(self) -> None:
        await self._lowlevel.checkpoint()

    async def _fair(self) -> None:
        await self._lowlevel.checkpoint()

    async def wait_readable(self, fd: int) -> None:
        """Wait until *fd* is readable (``trio.lowlevel.wait_readable``)."""
        await self._lowlevel.wait_readable(fd)

    async def wait_writable(self, fd: int) -> None:
        """Wait until *fd* is writable (``trio.lowlevel.wait_writable``)."""
        await self._lowlevel.wait_writable(fd)

    async def run_in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._trio.to_thread.run_sync(fn, *args)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._lowlevel.notify_closing(self._fd)
        except (RuntimeError, OSError):
            pass
        try:
            super().close()
        finally:
            task, self._flusher = self._flusher, None
            if task is not None:  # let it see `closed` and end
                try:
                    self._lowlevel.reschedule(task)
                except RuntimeError:  # pragma: no cover - the run is over
                    pass


# ---------------------------------------------------------------------------------
# which library is running, and the default driver of each loop
# ---------------------------------------------------------------------------------

_asyncio_drivers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncioDriver] = (
    weakref.WeakKeyDictionary()
)
_trio_runvar: Any = None
_lock = threading.Lock()
#: Drivers inherited through fork(): never used or closed in the child.
_forked_away: list[Any] = []


def _after_fork_in_child() -> None:
    global _trio_runvar, _last
    parked = list(_asyncio_drivers.values())
    for drv in parked:
        fin = getattr(drv, "_finalizer", None)
        if fin is not None:
            fin.detach()
    _forked_away.append(parked)
    _asyncio_drivers.clear()
    _last = (None, None)
    _trio_runvar = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def current_library() -> str:
    """The async library running in this thread: ``"asyncio"`` or ``"trio"``.

    Uses sniffio when it is installed (it also knows trio's guest mode and
    anyio), else looks for a running asyncio loop, then a running trio run.

    Raises:
        RuntimeError: no supported async library is running here.
    """
    sniffio = sys.modules.get("sniffio")
    if sniffio is not None:
        name = sniffio.thread_local.name or sniffio.current_async_library_cvar.get()
        if name:
            if name not in ("asyncio", "trio"):
                raise RuntimeError(f"xaio does not support the async library {name!r}")
            return str(name)
    if asyncio._get_running_loop() is not None:
        return "asyncio"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    raise RuntimeError("xaio's coroutines must run inside asyncio or trio")


async def _sentinel(driver: AsyncioDriver) -> AsyncGenerator[None, None]:
    """Registered with the loop's async generator hooks; closed by
    ``loop.shutdown_asyncgens()``, it closes the default driver."""
    try:
        yield
    finally:
        _forget(driver)


def _forget(driver: AsyncioDriver) -> None:
    loop = driver._loop_ref()
    if loop is not None and _asyncio_drivers.get(loop) is driver:
        del _asyncio_drivers[loop]
    fin = getattr(driver, "_finalizer", None)
    if fin is not None:
        fin.detach()
    driver.close()


def _close_unreached(driver: AsyncioDriver) -> None:
    """The loop was garbage collected without shutting down its async
    generators: close the sentinel (synchronously) and the driver."""
    agen = getattr(driver, "_agen", None)
    driver._agen = None  # type: ignore[attr-defined]
    driver._reader = False  # the loop, and its selector, are gone
    if agen is not None:
        try:
            agen.aclose().send(None)
        except StopIteration:
            pass
        except Exception:  # pragma: no cover
            pass
    driver.close()


def _new_asyncio_driver(loop: asyncio.AbstractEventLoop) -> AsyncioDriver:
    driver = AsyncioDriver(create_engine(), loop)
    agen = _sentinel(driver)
    # Start the sentinel with no hooks installed (so it keeps no reference to
    # the loop's finalizer hook, i.e. to the loop), then register it with the
    # loop through the loop's own firstiter hook.
    firstiter, finalizer = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(None, None)
    try:
        agen.asend(None).send(None)
    except StopIteration:
        pass
    finally:
        sys.set_asyncgen_hooks(firstiter, finalizer)
    if firstiter is not None:
        firstiter(agen)
    driver._agen = agen  # type: ignore[attr-defined]
    driver._finalizer = weakref.finalize(loop, _close_unreached, driver)  # type: ignore[attr-defined]
    return driver


#: The last default driver handed out, for a quick check (the loop weakly).
_last: tuple[Any, Any] = (None, None)  # replaced whole: readers see a consistent pair
_modules = sys.modules


def current_driver() -> Driver:
    """The running loop's default driver (made, with a default engine, on first use).

    Raises:
        RuntimeError: not inside asyncio or trio.
        OSError: no engine could be made (e.g. out of file descriptors).
    """
    global _last
    lib = None
    if "trio" in _modules:
        # trio (guest mode) can run inside an asyncio loop: ask sniffio which
        # library runs this task.  Without trio, a running asyncio loop is the
        # answer (and this look costs ~0.5 us per request).
        sniffio = _modules.get("sniffio")
        if sniffio is not None:
            lib = sniffio.thread_local.name or sniffio.current_async_library_cvar.get()
    if lib is None or lib == "asyncio":
        loop = _get_running_loop()
        if loop is not None:
            ref, drv = _last
            if ref is not None and ref() is loop and not drv.closed:
                return drv  # type: ignore[no-any-return]
            adrv = _asyncio_drivers.get(loop)
            if adrv is None or adrv.closed:
                adrv = _asyncio_drivers[loop] = _new_asyncio_driver(loop)
            _last = (adrv._loop_ref, adrv)
            return adrv
    if current_library() == "trio":
        return _current_trio_driver()
    raise RuntimeError("xaio's coroutines must run inside asyncio or trio")  # pragma: no cover


def _current_trio_driver() -> TrioDriver:
    global _trio_runvar
    import trio

    if _trio_runvar is None:
        with _lock:
            if _trio_runvar is None:
                _trio_runvar = trio.lowlevel.RunVar("xaio_driver")
    try:
        drv: TrioDriver = _trio_runvar.get()
    except LookupError:
        drv = TrioDriver(create_engine())
        _trio_runvar.set(drv)
        return drv
    if drv.closed:
        raise EngineClosedError("the trio run's xaio engine is closed (the run is ending)")
    return drv


def named_driver(name: str) -> Driver:
    """The running loop's driver for an engine of kind *name* (``"uring"``,
    ``"linux"``, ``"thread"``): the default driver when its engine is of that
    kind, else one made on first use and closed with the default driver.

    Raises:
        ValueError: unknown engine name.
        OSError: that engine does not work here.
    """
    base = current_driver()
    if base.engine.name == name:
        return base
    drv = base._named.get(name)
    if drv is None or drv.closed:
        engine = create_engine(name)
        if base.library == "trio":
            drv = TrioDriver(engine)
        else:
            drv = AsyncioDriver(engine, asyncio.get_running_loop())
        base._named[name] = drv
    return drv


def make_driver(engine: Engine) -> Driver:
    """A driver for *engine* on the running loop (the engine stays the caller's)."""
    if current_library() == "trio":
        return TrioDriver(engine, owns_engine=False)
    return AsyncioDriver(engine, asyncio.get_running_loop(), owns_engine=False)
