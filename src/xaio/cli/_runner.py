"""The job runner behind ``xaio bench``: a small fio written on xaio.

How a run works, and why it is measured the way it is
=====================================================

*The job.*  A :class:`Job` says what fio's options say: the pattern
(``read``, ``write``, ``randread``, ``randwrite``, ``randrw`` with
``rwmixread``), the block size, the file size, how many requests to keep in
flight (``iodepth``), O_DIRECT or not, how long (``runtime`` seconds or a
``number`` of requests) and ``fsync`` every N writes.  The offsets and the
read/write choice of each request come from precomputed arrays (a seeded
``random.Random``), so generating the workload costs one index per request.

*The APIs.*  ``sync`` drives an :class:`~xaio.engine.Engine` directly: *iodepth*
:class:`~xaio._ops.Operation` objects and their aligned buffers are made once
and re-armed after each completion (the loop allocates nothing per request);
``posix`` keeps *iodepth* ``aiocb`` in flight with ``aio_read``/``aio_write``
and waits in ``aio_suspend``; ``asyncio`` runs *iodepth* tasks awaiting
``xaio``'s coroutines, when the async layer is installed.

*Latency.*  ``time.perf_counter_ns()`` when a request is submitted, and once
per reaped batch when completions are delivered (every request of a batch was
complete when the batch was reaped: that is when the program could know it,
which is also where fio takes its completion time).  Samples go into
``array('q')`` buffers that grow by doubling, so a sample costs a store.

*CPU.*  ``resource.getrusage(RUSAGE_SELF)`` before and after the timed loop:
user and system seconds of the whole process, worker threads included, as a
percentage of one core over the wall-clock time (fio's ``usr_cpu``/``sys_cpu``).

*IOPS over time.*  Every tick (100 ms) the loop notes how many requests have
completed; the progress callback is called at the same moment.

*fio.*  :func:`run_fio` runs the same job with fio on the same file and reads
its JSON, so the CLI can show both side by side.  Counterparts: ``uring`` ->
``io_uring``, ``linux`` -> ``libaio``, ``thread`` -> ``psync`` with
``numjobs=iodepth``, and the ``posix`` API -> ``posixaio``.

Nothing here prints: the CLI renders :class:`Result` objects.
"""

from __future__ import annotations

import array
import contextlib
import errno
import json
import os
import random
import resource
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from xaio._memory import aligned_buffer, dio_alignment
from xaio._ops import OpCode, Operation
from xaio.cli._job import BenchError, Job, LatencyStats, Result, format_size, latency_stats
from xaio.engine import ENGINE_NAMES, Engine, create_engine

__all__ = [
    "Progress",
    "asyncio_unavailable_reason",
    "available_engines",
    "engine_note",
    "file_size",
    "fio_available",
    "fio_counterpart",
    "bench_file",
    "run",
    "run_fio",
]

_TICK_NS = 100_000_000  # progress and IOPS-over-time resolution: 100 ms
_PATTERN_LEN = 1 << 16  # precomputed offsets / directions, indexed modulo this

#: ``progress(fraction_done, requests_done, seconds_elapsed)``
Progress = Callable[[float, int, float], None]


# ---------------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------------


#: ``fill_progress()``: a context manager (a progress bar) yielding
#: ``update(bytes_written, total)``, entered while the file is filled
FillProgress = Callable[[], AbstractContextManager[Callable[[int, int], None]]]


@contextlib.contextmanager
def bench_file(
    job: Job,
    path: str | None,
    directory: str | None,
    fill_progress: FillProgress | None = None,
) -> Iterator[tuple[str, bool]]:
    """Find or make the file the job runs on, for the length of a ``with``
    block; yields the path and whether it is temporary.

    With *path* None, a temporary file of ``job.size`` bytes is created in
    *directory* (default: the system temporary directory), filled with
    random data, and removed when the block ends, however it ends: an
    error, Ctrl-C, at any moment from its creation on.  An existing *path*
    must hold at least ``job.size`` bytes; a missing one is created and
    filled like the temporary file, and kept (removed only if the filling
    fails).

    Raises:
        BenchError: the path is unusable (with the reason).
    """
    if path is not None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise BenchError(f"cannot use --file {path}: {e.strerror}") from None
        if st is not None:
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                raise BenchError(f"--file {path} is not a regular file or block device")
            size = file_size(path)
            if size < job.size:
                raise BenchError(
                    f"--file {path} holds {format_size(size)}, less than --size "
                    f"{format_size(job.size)}"
                )
            if not os.access(path, os.W_OK if job.writes else os.R_OK):
                raise BenchError(f"cannot use --file {path}: permission denied")
        elif not _create_filled(path, 0o644, job, fill_progress):
            raise BenchError(f"cannot create --file {path}: File exists")
        yield path, False
        return
    directory = directory or tempfile.gettempdir()
    try:
        vfs = os.statvfs(directory)
    except OSError as e:
        raise BenchError(f"cannot use --directory {directory}: {e.strerror}") from None
    free = vfs.f_bavail * vfs.f_frsize
    if free < job.size:
        raise BenchError(
            f"not enough space in {directory} for a {format_size(job.size)} file "
            f"({format_size(free)} free): use --directory or a smaller --size"
        )
    name = ""
    try:
        for _ in range(100):
            # the name is known before the file exists: whatever interrupts
            # the creation, the finally below removes it
            name = os.path.join(directory, f"xaio-bench-{os.urandom(6).hex()}.dat")
            if _create_filled(name, 0o600, job, fill_progress):
                break
            name = ""  # somebody else's
        else:
            raise BenchError(f"cannot create a file in {directory}: no free name")
        yield name, True
    finally:
        if name:
            _unlink_quietly(name)


def file_size(path: str) -> int:
    """The size of a regular file or block device (``lseek(SEEK_END)``)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)  # also right for block devices
    finally:
        os.close(fd)


def _create_filled(name: str, mode: int, job: Job, fill_progress: FillProgress | None) -> bool:
    """Create *name* (``O_EXCL``) and write *job.size* random bytes to it;
    False if it exists already.  On any other failure -- an I/O error,
    Ctrl-C at any moment once the create is under way -- *name* is removed.

    Raises:
        BenchError: the file could not be created or filled (with the reason).
    """
    mine = True  # from here *name* may be a file this call created
    fd = -1
    try:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except OSError as e:
            mine = False
            if isinstance(e, FileExistsError):
                return False
            raise BenchError(f"cannot create {name}: {e.strerror}") from None
        with fill_progress() if fill_progress is not None else contextlib.nullcontext() as upd:
            chunk = os.urandom(min(job.size, 1 << 20))
            done = 0
            while done < job.size:
                done += os.write(fd, chunk[: min(len(chunk), job.size - done)])
                if upd is not None:
                    upd(done, job.size)
            if job.direct:
                os.fdatasync(fd)  # O_DIRECT reads would flush the dirty pages anyway
    except BaseException as e:
        if mine:
            _unlink_quietly(name)
        if isinstance(e, OSError):
            raise BenchError(f"cannot fill {name}: {e.strerror}") from None
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    return True


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _open_for(job: Job, path: str) -> int:
    flags = (os.O_RDWR if job.writes else os.O_RDONLY) | os.O_CLOEXEC
    if job.direct:
        flags |= os.O_DIRECT
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.EINVAL and job.direct:
            raise BenchError(f"{path}: this file system does not support O_DIRECT") from None
        raise BenchError(f"cannot open {path}: {e.strerror}") from None
    if job.direct:
        align = dio_alignment(fd)
        if align is not None and job.bs % align[1]:
            os.close(fd)
            raise BenchError(
                f"--bs {job.bs} is not a multiple of {align[1]}, the O_DIRECT alignment of {path}"
            )
    return fd


# ---------------------------------------------------------------------------------
# The workload and the recorder shared by the runners
# ---------------------------------------------------------------------------------


class _Pattern:
    """Offsets and directions (1 = write) for request number *k*."""

    def __init__(self, job: Job) -> None:
        rng = random.Random(job.seed)
        blocks = job.blocks
        bs = job.bs
        n = _PATTERN_LEN
        if job.rw.startswith("rand"):
            self.offsets = array.array("q", (rng.randrange(blocks) * bs for _ in range(n)))
        else:
            self.offsets = array.array("q", ((k % blocks) * bs for k in range(n)))
        self.sequential_wrap = not job.rw.startswith("rand") and blocks > n
        self.blocks = blocks
        self.bs = bs
        if job.rw in ("read", "randread"):
            self.writes = bytes(n)
        elif job.rw in ("write", "randwrite"):
            self.writes = b"\x01" * n
        else:
            self.writes = bytes(0 if rng.randrange(100) < job.rwmixread else 1 for _ in range(n))

    def offset(self, k: int) -> int:
        """Offset of request *k*."""
        if self.sequential_wrap:
            return (k % self.blocks) * self.bs
        return self.offsets[k & (_PATTERN_LEN - 1)]

    def is_write(self, k: int) -> bool:
        """Whether request *k* writes."""
        return self.writes[k & (_PATTERN_LEN - 1)] == 1


class _Samples:
    """A growable ``array('q')`` written by index (a store per sample)."""

    __slots__ = ("data", "n")

    def __init__(self, capacity: int) -> None:
        self.data = array.array("q", bytes(8 * max(capacity, 16)))
        self.n = 0

    def add(self, value: int) -> None:
        n = self.n
        data = self.data
        if n == len(data):
            data.extend(array.array("q", bytes(8 * n)))
        data[n] = value
        self.n = n + 1

    def values(self) -> array.array[int]:
        return self.data[: self.n]


class _Clock:
    """Deadline, ticks, progress and the IOPS timeline for one run."""

    def __init__(self, job: Job, progress: Progress | None) -> None:
        self.job = job
        self.progress = progress
        self.t0 = time.perf_counter_ns()
        self.deadline = None if job.runtime is None else self.t0 + int(job.runtime * 1_000_000_000)
        self.next_tick = self.t0 + _TICK_NS
        self.last_tick = self.t0
        self.last_done = 0
        self.timeline: list[tuple[float, float]] = []
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)

    def tick(self, now: int, done: int) -> bool:
        """Called when *now* passed :attr:`next_tick`; True when time is up."""
        span = now - self.last_tick
        if span > 0:
            self.timeline.append(((now - self.t0) / 1e9, (done - self.last_done) * 1e9 / span))
        self.last_tick = now
        self.last_done = done
        self.next_tick = now + _TICK_NS
        if self.progress is not None:
            self.progress(self.fraction(now, done), done, (now - self.t0) / 1e9)
        return self.deadline is not None and now >= self.deadline

    def fraction(self, now: int, done: int) -> float:
        """How much of the job is done (0..1)."""
        if self.job.number is not None:
            return min(1.0, done / self.job.number)
        assert self.deadline is not None
        return min(1.0, (now - self.t0) / (self.deadline - self.t0))

    def finish(self, result: Result, done: int) -> None:
        """Fill the elapsed time, CPU use and timeline of *result*."""
        now = time.perf_counter_ns()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        if now - self.last_tick > _TICK_NS // 10 and done > self.last_done:
            self.timeline.append(
                ((now - self.t0) / 1e9, (done - self.last_done) * 1e9 / (now - self.last_tick))
            )
        result.seconds = (now - self.t0) / 1e9
        result.cpu_user = ru.ru_utime - self.ru0.ru_utime
        result.cpu_sys = ru.ru_stime - self.ru0.ru_stime
        result.timeline = self.timeline
        if self.progress is not None:
            self.progress(1.0, done, result.seconds)


def _fail(engine: str, is_write: bool, offset: int, res: int, bs: int) -> BenchError:
    what = "write" if is_write else "read"
    if res < 0:
        return BenchError(f"{engine}: {what} at offset {offset} failed: {os.strerror(-res)}")
    return BenchError(f"{engine}: short {what} at offset {offset}: {res} of {bs} bytes")


def _collect(result: Result, lat_r: _Samples, lat_w: _Samples, bs: int) -> None:
    result.bytes_read = result.reads * bs
    result.bytes_written = result.writes * bs
    r, w = lat_r.values(), lat_w.values()
    result.lat_read = latency_stats(r)
    result.lat_write = latency_stats(w)
    result.samples = r + w


def _make_buffers(job: Job, fd: int) -> list[memoryview]:
    bufs = [aligned_buffer(job.bs, file=fd if job.direct else None) for _ in range(job.iodepth)]
    if job.writes:
        junk = os.urandom(job.bs)
        for b in bufs:
            b[:] = junk
    return bufs


def _expected_samples(job: Job) -> int:
    if job.number is not None:
        return job.number
    return min(1 << 20, int((job.runtime or 1) * 200_000))


def _latency_samples(job: Job) -> tuple[_Samples, _Samples]:
    """Empty read and write latency samples sized for *job* (a small write
    one when the job writes nothing)."""
    n = _expected_samples(job)
    return _Samples(n), _Samples(n if job.writes else 64)


# ---------------------------------------------------------------------------------
# API sync: an Engine, driven directly
# ---------------------------------------------------------------------------------


def _run_sync(job: Job, path: str, engine: Engine, progress: Progress | None) -> Result:
    fd = _open_for(job, path)
    try:
        return _sync_loop(job, fd, engine, progress)
    finally:
        os.close(fd)


def _sync_loop(job: Job, fd: int, engine: Engine, progress: Progress | None) -> Result:
    depth = job.iodepth
    bs = job.bs
    pat = _Pattern(job)
    bufs = _make_buffers(job, fd)
    done_ops: list[Operation] = []
    on_done = done_ops.append
    # Reusable operations keep their buffers pinned between requests: each
    # finished one is re-armed (Operation.rearm) for the next, no pinning.
    ops = [
        Operation(OpCode.READ, fd, (b,), 0, on_done=on_done, context=i, reusable=True)
        for i, b in enumerate(bufs)
    ]
    try:  # io_uring: fixed buffers, no page pinning per request (until close)
        engine.register_buffers(bufs)
    except OSError:
        pass  # e.g. RLIMIT_MEMLOCK: plain requests work the same
    start = array.array("q", bytes(8 * depth))
    lat_r, lat_w = _latency_samples(job)
    result = Result(engine=engine.name, api="sync")
    fsync_op: list[Operation | None] = [None]
    fsync_pending = [False]
    fsync_error: list[int] = []
    number = job.number
    k = 0  # requests issued
    writes_issued = 0
    try:
        read_code, write_code = OpCode.READ, OpCode.WRITE
        perf = time.perf_counter_ns
        offset_of, writes = pat.offset, pat.writes
        mask = _PATTERN_LEN - 1
        first: list[Operation] = []
        for op in ops:
            if number is not None and k >= number:
                break
            op.opcode = write_code if writes[k & mask] else read_code
            op.offset = offset_of(k)
            writes_issued += writes[k & mask]
            k += 1
            first.append(op)
        clock = _Clock(job, progress)
        now = perf()
        for op in first:
            start[op.context] = now
        in_flight = len(first)
        engine.submit(first)
        stopping = False
        done = 0
        again: list[Operation] = []

        def fsync_done(op: Operation) -> None:  # no raising inside reap: checked below
            result.fsyncs += 1
            fsync_op[0] = None
            if op.result is not None and op.result < 0:
                fsync_error.append(op.result)

        while in_flight or fsync_op[0] is not None:
            engine.reap(None)
            now = perf()
            for op in done_ops:
                slot = op.context
                res = op.result
                if res != bs:
                    raise _fail(engine.name, op.opcode is write_code, op.offset, res or 0, bs)
                if op.opcode is write_code:
                    lat_w.add(now - start[slot])
                    result.writes += 1
                else:
                    lat_r.add(now - start[slot])
                    result.reads += 1
                done += 1
                if stopping or (number is not None and k >= number):
                    in_flight -= 1
                    continue
                w = writes[k & mask]
                op.rearm(write_code if w else read_code, offset_of(k), on_done)
                start[slot] = now
                k += 1
                if w:
                    writes_issued += 1
                    if job.fsync and writes_issued % job.fsync == 0:
                        fsync_pending[0] = True
                again.append(op)
            done_ops.clear()
            if fsync_error:
                raise BenchError(f"{engine.name}: fsync failed: {os.strerror(-fsync_error[0])}")
            if fsync_pending[0] and fsync_op[0] is None:
                fsync_pending[0] = False
                fop = Operation(OpCode.FSYNC, fd, on_done=fsync_done)
                fsync_op[0] = fop
                again.append(fop)
            if again:
                engine.submit(again)
                again.clear()
            if now >= clock.next_tick and clock.tick(now, done):
                stopping = True
        clock.finish(result, done)
        _collect(result, lat_r, lat_w, bs)
        return result
    finally:
        # On an error or Ctrl-C requests may still be in flight: close() drains
        # them before the caller closes the fd and before our buffers go.
        engine.close()
        for op in ops:
            if op.done:
                op.release()


# ---------------------------------------------------------------------------------
# API posix: aio_read / aio_write / aio_suspend
# ---------------------------------------------------------------------------------


def _run_posix(job: Job, path: str, engine: Engine | None, progress: Progress | None) -> Result:
    from xaio import posix

    fd = _open_for(job, path)
    try:
        posix.aio_init(engine=engine if engine is not None else "thread")
        try:
            return _posix_loop(job, fd, engine.name if engine is not None else "thread", progress)
        finally:
            posix.aio_init(engine=None)
    finally:
        os.close(fd)


def _posix_loop(job: Job, fd: int, engine_name: str, progress: Progress | None) -> Result:
    from xaio import posix

    depth = job.iodepth
    bs = job.bs
    pat = _Pattern(job)
    bufs = _make_buffers(job, fd)
    cbs = [posix.aiocb(fd, 0, b) for b in bufs]
    is_write = [False] * depth
    active: list[posix.aiocb | None] = [None] * depth
    start = array.array("q", bytes(8 * depth))
    lat_r, lat_w = _latency_samples(job)
    result = Result(engine=engine_name, api="posix")
    number = job.number
    k = 0
    writes_issued = 0
    perf = time.perf_counter_ns
    clock = _Clock(job, progress)
    in_flight = 0
    fsync_cb: posix.aiocb | None = None
    try:

        def issue(slot: int, now: int) -> None:
            nonlocal k, writes_issued, in_flight, fsync_cb
            cb = cbs[slot]
            cb.aio_offset = pat.offset(k)
            w = pat.is_write(k)
            is_write[slot] = w
            k += 1
            start[slot] = now
            if w:
                posix.aio_write(cb)
                writes_issued += 1
                if job.fsync and writes_issued % job.fsync == 0 and fsync_cb is None:
                    fsync_cb = posix.aiocb(fd)
                    posix.aio_fsync(os.O_SYNC, fsync_cb)
            else:
                posix.aio_read(cb)
            active[slot] = cb
            in_flight += 1

        now = perf()
        for slot in range(depth):
            if number is not None and k >= number:
                break
            issue(slot, now)
        stopping = False
        done = 0
        while in_flight or fsync_cb is not None:
            waiting: list[posix.aiocb | None] = [*active, fsync_cb]
            posix.aio_suspend(waiting)
            now = perf()
            if fsync_cb is not None and posix.aio_error(fsync_cb) != errno.EINPROGRESS:
                err = posix.aio_error(fsync_cb)
                posix.aio_return(fsync_cb)
                fsync_cb = None
                result.fsyncs += 1
                if err:
                    raise BenchError(f"{engine_name}: aio_fsync failed: {os.strerror(err)}")
            for slot in range(depth):
                cb = active[slot]
                if cb is None or posix.aio_error(cb) == errno.EINPROGRESS:
                    continue
                err = posix.aio_error(cb)
                res = posix.aio_return(cb)
                active[slot] = None
                in_flight -= 1
                if err or res != bs:
                    raise _fail(
                        engine_name, is_write[slot], cb.aio_offset, -err if err else res, bs
                    )
                if is_write[slot]:
                    lat_w.add(now - start[slot])
                    result.writes += 1
                else:
                    lat_r.add(now - start[slot])
                    result.reads += 1
                done += 1
                if not stopping and (number is None or k < number):
                    issue(slot, now)
            if now >= clock.next_tick and clock.tick(now, done):
                stopping = True
        clock.finish(result, done)
        _collect(result, lat_r, lat_w, bs)
        return result
    finally:
        pending = [cb for cb in (*active, fsync_cb) if cb is not None]
        if pending:  # an error or Ctrl-C: let the kernel finish with our buffers
            for cb in pending:
                posix.aio_cancel(fd, cb)
            while any(posix.aio_error(cb) == errno.EINPROGRESS for cb in pending):
                posix.aio_suspend(pending, 1.0)


# ---------------------------------------------------------------------------------
# API asyncio: xaio's coroutines
# ---------------------------------------------------------------------------------


def asyncio_unavailable_reason() -> str | None:
    """None if xaio's asyncio layer is installed, else why ``--api asyncio`` cannot run."""
    import xaio

    if not hasattr(xaio, "open_engine"):
        return "the asyncio layer (xaio.open_engine) is not part of this xaio yet"
    return None


def _run_asyncio(job: Job, path: str, engine_name: str | None, progress: Progress | None) -> Result:
    import asyncio

    import xaio

    reason = asyncio_unavailable_reason()
    if reason is not None:
        raise BenchError(f"--api asyncio: {reason}")
    fd = _open_for(job, path)
    try:
        return asyncio.run(_asyncio_main(job, fd, engine_name, progress, xaio))
    finally:
        os.close(fd)


async def _asyncio_main(
    job: Job, fd: int, engine_name: str | None, progress: Progress | None, xaio: Any
) -> Result:
    import asyncio

    bs = job.bs
    pat = _Pattern(job)
    bufs = _make_buffers(job, fd)
    lat_r, lat_w = _latency_samples(job)
    number = job.number
    perf = time.perf_counter_ns
    state = {"k": 0, "done": 0, "stop": False, "writes": 0}
    try:
        aeng = xaio.open_engine(engine_name, **_engine_options(engine_name, job))
    except OSError as e:
        raise BenchError(f"engine {engine_name}: {e.strerror or e}") from None
    async with aeng as eng:
        result = Result(engine=str(getattr(eng, "name", engine_name or "default")), api="asyncio")
        clock = _Clock(job, progress)

        async def worker(buf: memoryview) -> None:
            while not state["stop"] and (number is None or state["k"] < number):
                k = state["k"]
                state["k"] = k + 1
                off = pat.offset(k)
                t = perf()
                if pat.is_write(k):
                    n = await eng.pwrite(fd, buf, off)
                    if n != bs:
                        raise _fail(result.engine, True, off, n, bs)
                    lat_w.add(perf() - t)
                    result.writes += 1
                    state["writes"] += 1
                    if job.fsync and state["writes"] % job.fsync == 0:
                        await eng.fsync(fd)
                        result.fsyncs += 1
                else:
                    n = await eng.preadinto(fd, buf, off)
                    if n != bs:
                        raise _fail(result.engine, False, off, n, bs)
                    lat_r.add(perf() - t)
                    result.reads += 1
                state["done"] += 1

        async def ticker() -> None:
            while True:
                await asyncio.sleep(_TICK_NS / 1e9)
                if clock.tick(perf(), int(state["done"])):
                    state["stop"] = True

        tick_task = asyncio.ensure_future(ticker())
        try:
            await asyncio.gather(*(worker(b) for b in bufs))
        finally:
            tick_task.cancel()
            try:
                await tick_task
            except asyncio.CancelledError:
                pass
        clock.finish(result, int(state["done"]))
    _collect(result, lat_r, lat_w, bs)
    return result


# ---------------------------------------------------------------------------------
# Running one (engine, API) pair
# ---------------------------------------------------------------------------------


def engine_note(name: str, job: Job) -> str:
    """What the ``linux`` engine really does for this job, if not AIO."""
    if name == "linux" and not job.direct:
        return "buffered I/O: the linux engine runs it on threads (AIO needs O_DIRECT)"
    return ""


def run(
    job: Job,
    path: str,
    engine: str | None,
    api: str,
    progress: Progress | None = None,
) -> Result:
    """Run *job* on *path* through *engine* (None: the default) and *api*.

    Raises:
        BenchError: the engine is unavailable, the API is missing, or I/O failed.
    """
    if api == "asyncio":
        res = _run_asyncio(job, path, engine, progress)
        res.note = engine_note(res.engine, job)
        return res
    if api == "posix" and engine in (None, "thread"):
        res = _run_posix(job, path, None, progress)
        return res
    try:
        eng = create_engine(engine, **_engine_options(engine, job))
    except OSError as e:
        raise BenchError(f"engine {engine}: {e.strerror or e}") from None
    with eng:
        if api == "posix":
            res = _run_posix(job, path, eng, progress)
        else:
            res = _run_sync(job, path, eng, progress)
    res.note = engine_note(res.engine, job)
    return res


def _engine_options(engine: str | None, job: Job) -> dict[str, Any]:
    if engine is None:
        return {}
    if engine == "uring":
        return {"entries": max(8, 1 << (job.iodepth + 1).bit_length())}
    if engine == "linux":
        return {"capacity": max(job.iodepth + 1, 8), "threads": min(max(job.iodepth, 1), 64)}
    return {"threads": min(max(job.iodepth, 1), 64)}


def available_engines() -> list[tuple[str, str | None]]:
    """``[(name, None or why it does not work)]`` for every engine, best first."""
    from xaio.engine import probe

    reasons = probe()
    return [(name, reasons.get(name)) for name in ENGINE_NAMES]


# ---------------------------------------------------------------------------------
# fio
# ---------------------------------------------------------------------------------


def fio_available() -> str | None:
    """The path of fio, or None."""
    return shutil.which("fio")


def fio_counterpart(engine: str, api: str) -> tuple[str, int]:
    """fio's ``ioengine`` and ``numjobs`` for an xaio (engine, API) pair."""
    if api == "posix":
        return "posixaio", 1
    return {"uring": ("io_uring", 1), "linux": ("libaio", 1)}.get(engine, ("psync", 0))


def run_fio(job: Job, path: str, engine: str, api: str, timeout: float | None = None) -> Result:
    """Run *job* with fio on *path*, as the counterpart of xaio's (engine, api).

    Raises:
        BenchError: fio is missing, failed, or printed something unreadable.
    """
    fio = fio_available()
    if fio is None:
        raise BenchError("--compare fio: fio is not installed")
    ioengine, numjobs = fio_counterpart(engine, api)
    depth = job.iodepth
    if numjobs == 0:  # a synchronous engine: one job per request in flight
        numjobs, depth = job.iodepth, 1
    cmd = [
        fio,
        "--name=xaio-compare",
        f"--filename={path}",
        f"--ioengine={ioengine}",
        f"--rw={job.rw}",
        f"--bs={job.bs}",
        f"--size={job.size}",
        f"--iodepth={depth}",
        f"--numjobs={numjobs}",
        f"--direct={int(job.direct)}",
        f"--randseed={job.seed}",
        "--norandommap=1",
        "--group_reporting=1",
        "--thread=1",
        "--output-format=json",
    ]
    if job.rw == "randrw":
        cmd.append(f"--rwmixread={job.rwmixread}")
    if job.fsync:
        cmd.append(f"--fsync={job.fsync}")
    if job.number is not None:
        cmd.append(f"--number_ios={-(-job.number // numjobs)}")
        cmd.append(f"--io_size={job.number * job.bs * 2}")
    else:
        cmd += [f"--runtime={max(1, round((job.runtime or 1) * 1000))}ms", "--time_based=1"]
    if timeout is None:
        timeout = (job.runtime or 60) * 3 + 30
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"fio did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BenchError(f"fio failed ({ioengine}): {last}")
    try:
        data = json.loads(proc.stdout[proc.stdout.index("{") :])
        j = data["jobs"][0]
    except (ValueError, KeyError, IndexError):
        raise BenchError("fio printed JSON that could not be read") from None
    return _fio_result(j, ioengine, api, numjobs)


def _fio_result(j: dict[str, Any], ioengine: str, api: str, numjobs: int) -> Result:
    res = Result(engine=ioengine, api=api, tool="fio")
    if numjobs > 1:
        res.note = f"numjobs={numjobs}"
    res.seconds = max(float(j.get("job_runtime", j["elapsed"] * 1000)) / 1000.0, 1e-9)
    for side in ("read", "write"):
        d = j[side]
        ops = int(d.get("total_ios", 0))
        lat = None
        if ops:
            # Completion latency throughout, as xaio's own rows: fio's lat_ns
            # adds the submission time.  fio's percentiles are the bounds of
            # its histogram buckets, so they are kept inside [min, max].
            clat = d.get("clat_ns", {})
            pct = clat.get("percentile", {})
            lo, hi = int(clat.get("min", 0)), int(clat.get("max", 0))

            lat = LatencyStats(
                count=ops,
                min=lo,
                mean=float(clat.get("mean", 0.0)),
                p50=min(max(int(pct.get("50.000000", lo)), lo), hi),
                p99=min(max(int(pct.get("99.000000", lo)), lo), hi),
                p999=min(max(int(pct.get("99.900000", lo)), lo), hi),
                max=hi,
            )
        if side == "read":
            res.reads, res.bytes_read, res.lat_read = ops, int(d.get("io_bytes", 0)), lat
        else:
            res.writes, res.bytes_written, res.lat_write = ops, int(d.get("io_bytes", 0)), lat
    # fio's usr_cpu/sys_cpu are percentages of one CPU over the job's runtime
    # (averaged over the jobs of a group: times numjobs for the whole group)
    res.cpu_user = float(j.get("usr_cpu", 0.0)) / 100.0 * res.seconds * numjobs
    res.cpu_sys = float(j.get("sys_cpu", 0.0)) / 100.0 * res.seconds * numjobs
    res.fsyncs = int(j.get("sync", {}).get("total_ios", 0))
    return res
