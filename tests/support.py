"""What the tests share besides fixtures (those live in conftest.py).

Known file content (:func:`pattern`), whether a buffer is pinned
(:func:`resizable`), waits on state (:func:`wait_until`, :func:`reap_until`,
:func:`wait_until_async`, :func:`wait_blocked_in`: a deadline loop polling a
condition, never a bare sleep), the engines and event-loop libraries the
suites run on, running a coroutine function under each library, this
process's fds and AIO contexts, and the POSIX AIO suite's signals and
waits.  Test files import from here, never from each other or from
conftest.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import mmap
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from xaio._ops import Operation
from xaio.engine import Engine, probe

if TYPE_CHECKING:
    import xaio.posix as P

LIBS = ["asyncio", "uvloop", "trio", "anyio-asyncio", "anyio-trio"]
ENGINES = ["uring", "linux", "thread"]

#: How long a wait on state may take before the test fails (a bug fails, it does not hang).
TIMEOUT = 10.0
PATTERN_BLOCK = 4096


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic content where every 4 KiB block differs."""
    out = bytearray()
    block = 0
    while len(out) < size:
        out += (f"{seed:04d}:{block:08d}:".encode() * 512)[:PATTERN_BLOCK]
        block += 1
    return bytes(out[:size])


def resizable(b: bytearray) -> bool:
    """False while *b* is pinned (an export exists), True once released."""
    try:
        b.append(0)
    except BufferError:
        return False
    b.pop()
    return True


# ---------------------------------------------------------------------------------
# Waiting on state
# ---------------------------------------------------------------------------------


def wait_until(pred: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll *pred* (a condition with no event to wait on) until it holds.

    Raises:
        AssertionError: *pred* still false after *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s")
        time.sleep(0.001)


async def wait_until_async(
    pred: Callable[[], bool], what: str = "condition", timeout: float = TIMEOUT
) -> None:
    """:func:`wait_until` inside a task: polls *pred*, yielding to the event loop
    (any library anyio supports) between polls."""
    import anyio

    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} ({timeout:g}s)")
        await anyio.sleep(0.001)


# ---------------------------------------------------------------------------------
# The page cache
# ---------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def cached_pages(fd: int) -> int:
    """How many pages of *fd*'s file are in the page cache (``mincore(2)`` on
    a private mapping of it that is never touched, so it faults nothing in)."""
    size = os.fstat(fd).st_size
    if not size:
        return 0
    vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
    with mmap.mmap(fd, size, access=mmap.ACCESS_COPY) as m:
        start = ctypes.c_char.from_buffer(m)  # (writable: only for its address)
        try:
            failed = _libc.mincore(ctypes.addressof(start), size, vec) != 0
        finally:
            del start  # the mapping's export, before it is closed
    if failed:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return sum(b & 1 for b in vec.raw)


def drop_cached(file: int | str | os.PathLike[str], timeout: float = TIMEOUT) -> None:
    """Write back and drop every cached page of *file* (an fd, or a path
    opened for the while), and make sure they are gone:
    ``posix_fadvise(POSIX_FADV_DONTNEED)`` skips pages that are still busy
    (held in another CPU's LRU batch, or under I/O), so it is asked again
    until ``mincore(2)`` finds none.

    Raises:
        AssertionError: pages stayed cached for *timeout* seconds.
    """
    if not isinstance(file, int):
        fd = os.open(file, os.O_RDONLY)
        try:
            drop_cached(fd, timeout)
        finally:
            os.close(fd)
        return
    fd = file
    os.fsync(fd)

    def dropped() -> bool:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return cached_pages(fd) == 0

    wait_until(dropped, timeout, "the file's pages leaving the page cache")


def reap_until(eng: Engine, ops: Sequence[Operation], timeout: float = TIMEOUT) -> None:
    """Reap *eng* until every one of *ops* is done.

    Raises:
        AssertionError: some are still not done after *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    while not all(op.done for op in ops):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"not done within {timeout:g}s: {[o for o in ops if not o.done]}"
        eng.reap(remaining)


def count_submits(
    eng: Engine,
    sizes: list[int],
    batches: list[tuple[threading.Thread, list[Operation]]] | None = None,
) -> None:
    """Make *eng* append to *sizes* the size of every batch its ``submit``
    is given, and to *batches* (if given) the submitting thread and the
    batch (the submit itself is unchanged)."""
    real_submit = eng.submit

    def submit(ops: Sequence[Operation]) -> int:
        sizes.append(len(ops))
        if batches is not None:
            batches.append((threading.current_thread(), list(ops)))
        return real_submit(ops)

    eng.submit = submit  # type: ignore[method-assign]


def record_fds_asked(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Replace ``module.name``, a function of one fd, by one that appends
    each fd it is asked about to the returned list, in order, and answers
    as the real one (for the test's duration, through *monkeypatch*)."""
    asked: list[int] = []
    real = getattr(module, name)

    def recording(fd: int) -> Any:
        asked.append(fd)
        return real(fd)

    monkeypatch.setattr(module, name, recording)
    return asked


def count_reaped(eng: Engine, held: list[bool] | None = None) -> list[int]:
    """Make *eng* count the completions its ``reap`` delivers; returns the
    one-item list holding that count (the reap itself is unchanged).  While
    ``held[0]`` is true (*held* given), ``reap`` delivers nothing and
    returns 0: the completions stay posted, for a test that needs them all
    delivered by one reap once it clears the flag."""
    real_reap = eng.reap
    delivered = [0]

    def reap(*args: Any, **kwargs: Any) -> int:
        if held is not None and held[0]:
            return 0
        n = real_reap(*args, **kwargs)
        delivered[0] += n
        return n

    eng.reap = reap  # type: ignore[method-assign]
    return delivered


def release_when_posted(eng: Engine, n: int, held: list[bool], delivered: list[int]) -> None:
    """End the hold of ``count_reaped(eng, held)`` (which returned
    *delivered*) once *n* completions are posted (a state, not a time), none
    of them delivered: the next reap delivers all *n* at once."""
    wait_until(lambda: completions_waiting(eng) >= n, timeout=30, what=f"{n} completions posted")
    assert delivered[0] == 0, delivered
    held[0] = False


def threads_started_since(before: set[threading.Thread]) -> list[threading.Thread]:
    """The live threads that were not running when *before* was taken
    (``set(threading.enumerate())``).  A thread of an earlier test that
    ends meanwhile does not count, as it would in a comparison of
    ``threading.active_count()``."""
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def completions_waiting(eng: Engine) -> int:
    """Completions *eng* holds for :meth:`~xaio.engine.Engine.reap`: posted
    (by the kernel or a worker) and not yet delivered.  A peek at each
    engine's private state, for a test that needs a whole batch posted
    before its first reap (finished data in the buffers comes before the
    completion is posted)."""
    from xaio.engine._routed import RoutedEngine
    from xaio.linux._engine import LinuxAioEngine
    from xaio.threads import ThreadEngine
    from xaio.uring._engine import UringEngine

    if isinstance(eng, RoutedEngine):
        return completions_waiting(eng._aio) + completions_waiting(eng._threads)
    if isinstance(eng, ThreadEngine):
        with eng._mutex:
            return len(eng._done)
    if isinstance(eng, UringEngine):
        with eng._lock:
            return eng._ring.cq_ready() + len(eng._stash) + len(eng._batch)
    if isinstance(eng, LinuxAioEngine):
        ring, nr = eng._ring, eng._ring_nr
        assert ring is not None, "the AIO ring is not readable from user space here"
        return (ring[3] - ring[2]) % nr + len(eng._ready)
    raise TypeError(f"no peek for {type(eng).__name__}")


#: x86-64 system call numbers, as /proc/self/task/*/syscall shows them
READ_SYSCALLS = frozenset({0, 17, 19, 295, 327})  # read, pread64, readv, preadv, preadv2
WRITE_SYSCALLS = frozenset({1, 18, 20, 296, 328})  # write, pwrite64, writev, pwritev, pwritev2
POLL_SYSCALLS = frozenset({7, 271})  # poll, ppoll
GETEVENTS_SYSCALLS = frozenset({208, 333})  # io_getevents, io_pgetevents
URING_ENTER_SYSCALLS = frozenset({426})  # io_uring_enter


def wait_blocked_in(
    syscalls: frozenset[int], fd: int | None = None, timeout: float = TIMEOUT
) -> None:
    """Wait until a thread of this process is inside one of *syscalls* (on
    *fd*, the first argument, unless None), as ``/proc/self/task/*/syscall``
    shows it: the number, then the arguments.

    Raises:
        AssertionError: no thread got there within *timeout* seconds.
    """

    def blocked() -> bool:
        for task in Path("/proc/self/task").iterdir():
            try:
                fields = (task / "syscall").read_text().split()
            except OSError:
                continue
            if (
                len(fields) > 1
                and fields[0].isdigit()
                and int(fields[0]) in syscalls
                and (fd is None or int(fields[1], 16) == fd)
            ):
                return True
        return False

    wait_until(blocked, timeout, f"a thread blocked in {sorted(syscalls)} on fd {fd}")


def sq_thread_sleeps(ring: Any) -> bool:
    """Whether the SQPOLL thread of *ring* (an :class:`xaio.uring.Ring`) has gone
    to sleep: the kernel sets ``IORING_SQ_NEED_WAKEUP`` in the SQ flags."""
    from xaio._abi import uring as abi

    return bool(ring.sq_flags & abi.IORING_SQ_NEED_WAKEUP)


def in_child(fn: Callable[[], int], timeout: float = 30.0) -> int:
    """Run *fn* in a forked child: its exit status (what *fn* returns, 1 if
    it raises, -N if signal N killed it).

    Raises:
        AssertionError: the child did not exit within *timeout* seconds
            (it is killed).
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            code = fn()
        finally:
            os._exit(code)
    status: list[int] = []

    def exited() -> bool:
        done, st = os.waitpid(pid, os.WNOHANG)
        status.append(st)
        return done != 0

    try:
        wait_until(exited, timeout, "the child's exit")
    except AssertionError:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise
    return os.waitstatus_to_exitcode(status[-1])


# ---------------------------------------------------------------------------------
# Engines and event-loop libraries
# ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def engine_reasons() -> dict[str, str | None]:
    return probe()


def skip_unavailable(engine: str) -> None:
    reason = engine_reasons().get(engine)
    if reason is not None:
        pytest.skip(f"engine {engine} unavailable here: {reason}")


def run(lib: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run ``fn(*args)`` to completion under *lib* (a fresh loop / trio run)."""
    if lib == "asyncio":
        return asyncio.run(fn(*args))  # type: ignore[arg-type]
    if lib == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(fn(*args))
    if lib == "trio":
        trio = pytest.importorskip("trio")
        return trio.run(fn, *args)
    anyio = pytest.importorskip("anyio")
    backend = lib.split("-", 1)[1]
    return anyio.run(fn, *args, backend=backend)


# ---------------------------------------------------------------------------------
# This process's fds and AIO contexts
# ---------------------------------------------------------------------------------


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def _nothing() -> None:
    pass


def fds_after_a_first_run(lib: str) -> set[str]:
    """The open fds once *lib* has run a loop (uvloop keeps a pipe for the
    process from its first loop on)."""
    run(lib, _nothing)
    return open_fds()


def unused_fd() -> int:
    """An fd number that is not open, far above the highest open one: an fd
    made meanwhile (a worker's wake-up eventfd, an engine's) takes the
    lowest free number, never this one (a closed fd's number it may)."""
    fd = max(map(int, os.listdir("/proc/self/fd"))) + 256
    assert fd < resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return fd


def aio_nr() -> int:
    """System-wide count of AIO events reserved (other processes change it too)."""
    with open("/proc/sys/fs/aio-nr") as f:
        return int(f.read())


def aio_max_nr() -> int:
    """The system-wide limit on reserved AIO events (``fs.aio-max-nr``)."""
    with open("/proc/sys/fs/aio-max-nr") as f:
        return int(f.read())


def own_aio_ring_sizes() -> list[int]:
    """The ring sizes in bytes (sorted) of this process's Linux AIO contexts:
    each maps its ring as ``/[aio]``, sized by the events it reserves (what
    ``/proc/sys/fs/aio-nr`` counts, system-wide)."""
    sizes = []
    with open("/proc/self/maps") as f:
        for line in f:
            if "/[aio]" in line:
                start, end = line.split(None, 1)[0].split("-")
                sizes.append(int(end, 16) - int(start, 16))
    return sorted(sizes)


def own_aio_rings() -> int:
    """Linux AIO contexts of this process (see :func:`own_aio_ring_sizes`)."""
    return len(own_aio_ring_sizes())


# ---------------------------------------------------------------------------------
# POSIX AIO: engines, waits and signals
# ---------------------------------------------------------------------------------

#: The real-time signal the POSIX tests ask notifications on.
SIG = signal.SIGRTMIN + 3


def engine_unavailable(name: str) -> str | None:
    """Why POSIX AIO cannot run on engine *name* here (None if it can)."""
    if name == "thread":
        return None
    if name == "uring":
        from xaio.uring import unavailable_reason

        return unavailable_reason()
    return probe()[name]


def wait_done(*cbs: P.aiocb, timeout: float = TIMEOUT) -> None:
    """Wait until none of *cbs* is in progress."""
    import xaio.posix as P

    deadline = time.monotonic() + timeout
    for cb in cbs:
        while P.aio_error(cb) == errno.EINPROGRESS:
            P.aio_suspend([cb], max(0.0, deadline - time.monotonic()))


def engine_running() -> int:
    """Requests the POSIX AIO engine has started: running on a worker (thread
    engine, the linux engine's threads) or handed to the kernel (io_uring)."""
    from xaio.posix import _runtime as R

    eng = R._engine
    if eng is None:
        return 0
    st_ = eng.statistics()
    if isinstance(st_.get("threads"), dict):  # the linux engine: its threads
        st_ = st_["threads"]
    return int(st_["running"] if "running" in st_ else st_["in_flight"])


def drain(b: socket.socket, *cbs: P.aiocb) -> None:
    """Receive on *b* until every cb is done."""
    import xaio.posix as P

    deadline = time.monotonic() + TIMEOUT
    b.settimeout(0.01)
    while any(P.aio_error(cb) == errno.EINPROGRESS for cb in cbs):
        assert time.monotonic() < deadline
        with contextlib.suppress(TimeoutError, BlockingIOError):
            b.recv(65536)
    b.settimeout(None)


def threads_accepting(sigs: tuple[int, ...]) -> list[str]:
    """Other threads of this process that do not block all of *sigs* (read
    from /proc): a process-directed signal could be delivered to them."""
    me = threading.get_native_id()
    found = []
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) == me:
            continue
        # a thread that exits meanwhile: ENOENT or ESRCH
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, StopIteration):
            status = (task / "status").read_text()
            blk = int(next(x for x in status.splitlines() if x.startswith("SigBlk")).split()[1], 16)
            if any(not blk & (1 << (s - 1)) for s in sigs):
                found.append(next(x for x in status.splitlines() if x.startswith("Name")))
    return found


@contextlib.contextmanager
def blocked(*sigs: int) -> Iterator[None]:
    """Block *sigs* here, so that the tests collect them with sigtimedwait.

    The signals xaio queues are process-directed: a thread of another
    library that does not block them (trio keeps idle worker threads for 10 s
    after the async tests) would take one and be killed by it.  So first wait
    until no such thread is left, as an application blocks signals before it
    starts its threads."""
    wait_until(lambda: not threads_accepting(sigs), 30, f"no other thread accepting {sigs}")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        for s in sigs:  # never leave a pending signal to kill the process
            while signal.sigtimedwait([s], 0) is not None:
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def next_signal(sig: int = SIG, timeout: float = TIMEOUT) -> Any:
    """The next *sig* queued to this process (blocked here: see :func:`blocked`)."""
    info = signal.sigtimedwait([sig], timeout)
    assert info is not None, "no signal arrived"
    return info


def no_signal(sig: int = SIG) -> bool:
    """True if no *sig* is pending."""
    return signal.sigtimedwait([sig], 0) is None


def sigev(value: int) -> P.sigevent:
    """A SIGEV_SIGNAL notification of :data:`SIG` carrying *value*."""
    import xaio.posix as P

    return P.sigevent(P.SIGEV_SIGNAL, SIG, value)
