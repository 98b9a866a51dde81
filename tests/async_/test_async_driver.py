"""The drivers that tie an engine to an event loop (``xaio._async._driver``):
explicit engines and the default one's lifetime (loop close, garbage
collection, fork, threads), page-cache hits, fairness, batching of
submissions, and the driver's own bookkeeping."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import xaio
from tests.support import (
    count_reaped,
    count_submits,
    drop_cached,
    open_fds,
    own_aio_ring_sizes,
    pattern,
    release_when_posted,
    run,
    wait_until_async,
)
from xaio._async._current import current_driver
from xaio.engine import KIND_BUFFERED, KIND_DIRECT
from xaio.linux import _engine as linux_engine

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------
# engines: explicit ones, and the default one's lifetime
# ---------------------------------------------------------------------------------


def test_open_engine(lib: str, engine_name: str, data_path: Path) -> None:
    async def main() -> None:
        fd = os.open(data_path, os.O_RDWR)
        try:
            async with xaio.open_engine(engine_name) as eng:
                assert eng.name == engine_name
                assert await eng.pread(fd, 5, 0) == pattern(5)
                assert await eng.pwrite(fd, b"xy", 0) == 2
                assert await eng.pread(fd, 3, 0) == b"xy" + pattern(3)[2:]
                await eng.fsync(fd)
                async with xaio.open(data_path, "rb", engine=eng) as f:
                    assert await f.read(2) == b"xy"
            assert eng.closed
            with pytest.raises(RuntimeError):
                await eng.pread(fd, 5, 0)
        finally:
            os.close(fd)

    run(lib, main)


def test_loop_close_releases_the_engine(lib: str, engine_name: str, data_path: Path) -> None:
    async def main() -> None:
        fd = os.open(data_path, os.O_RDONLY)
        try:
            assert await xaio.pread(fd, 3, 0) == pattern(3)
            await xaio.os.stat(data_path)
        finally:
            os.close(fd)

    run(lib, main)  # warm up: lazy imports, thread-pool fds...
    gc.collect()
    fds, rings = open_fds(), own_aio_ring_sizes()
    for _ in range(3):
        run(lib, main)
    gc.collect()
    extra = {fd: _fd_target(fd) for fd in open_fds() - fds}
    assert not extra
    # no context left behind but the idle ones kept for the next loop, each
    # reserving as many events as before (this process's share of aio-nr)
    assert own_aio_ring_sizes() == rings
    assert len(rings) <= linux_engine._IDLE_MAX


def _fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def test_manual_loop_without_shutdown_is_released_on_gc(data_path: Path) -> None:
    fds = open_fds()
    loop = asyncio.new_event_loop()

    async def main() -> bytes:
        fd = os.open(data_path, os.O_RDONLY)
        try:
            return await xaio.pread(fd, 3, 0)
        finally:
            os.close(fd)

    assert loop.run_until_complete(main()) == pattern(3)
    loop.close()
    del loop
    gc.collect()
    assert open_fds() <= fds


def test_fork(engine_name: str, data_path: Path) -> None:
    async def use() -> bytes:
        fd = os.open(data_path, os.O_RDONLY)
        try:
            return await xaio.pread(fd, 4, 4096)
        finally:
            os.close(fd)

    async def main() -> None:
        assert await use() == pattern(8192)[4096:4100]
        pid = os.fork()
        if pid == 0:  # child: a fresh loop gets a fresh engine
            code = 1
            try:
                code = 0 if asyncio.run(use()) == pattern(8192)[4096:4100] else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert await use() == pattern(8192)[4096:4100]  # the parent's engine still works

    asyncio.run(main())


def test_each_loop_run_in_a_thread_gets_its_own_driver(data_path: Path) -> None:
    """Two loops run one after the other in one thread, neither closed: each
    call gets the driver of the loop running it, never the one handed out
    last for the other (which stays open, its loop idle)."""
    from xaio._async._current import current_driver

    fd = os.open(data_path, os.O_RDONLY)
    a, b = asyncio.new_event_loop(), asyncio.new_event_loop()

    async def which() -> Any:
        assert await xaio.pread(fd, 3, 0) == pattern(3)
        return current_driver()

    try:
        da = a.run_until_complete(which())
        db = b.run_until_complete(which())
        assert db is not da and not da.closed and not db.closed
        assert a.run_until_complete(which()) is da
        assert b.run_until_complete(which()) is db
        with pytest.raises(RuntimeError):  # and none while no loop runs
            current_driver()
    finally:
        for loop in (a, b):
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        os.close(fd)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads (3.12+)
def test_an_engine_refuses_other_loops_and_forked_children(data_path: Path) -> None:
    """An ``open_engine`` engine serves the loop it was first used on: from
    another loop run in the same thread afterwards it raises RuntimeError,
    and so it does in a forked child that goes on inside the loop it forked
    from (the child inherits that loop's mark of the thread it runs in)."""
    fd = os.open(data_path, os.O_RDONLY)
    eng = xaio.open_engine("thread")
    a, b = asyncio.new_event_loop(), asyncio.new_event_loop()

    async def use() -> bytes:
        return await eng.pread(fd, 3, 0)

    async def fork_and_use() -> int:
        assert await use() == pattern(3)
        pid = os.fork()
        if pid == 0:  # the child, still inside loop a's run
            code = 1
            try:
                await use()
            except RuntimeError:
                code = 0
            except BaseException:
                code = 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert await use() == pattern(3)  # still the parent's
        return os.waitstatus_to_exitcode(status)

    try:
        assert a.run_until_complete(use()) == pattern(3)
        with pytest.raises(RuntimeError, match="another event loop"):
            b.run_until_complete(use())
        assert a.run_until_complete(fork_and_use()) == 0
        a.run_until_complete(eng.aclose())
    finally:
        for loop in (a, b):
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        os.close(fd)


def test_loops_in_several_threads(data_path: Path) -> None:
    """Each thread's loop gets its own default engine; all close with their loop."""

    expected = pattern(1 << 20)
    fds_before = open_fds()
    errors: list[BaseException] = []

    async def work(seed: int) -> None:
        fd = os.open(data_path, os.O_RDONLY)
        try:
            for i in range(300):
                off = ((seed * 7919 + i * 104729) % 250) * 4096
                assert await xaio.pread(fd, 4096, off) == expected[off : off + 4096]
                if i % 50 == 0:
                    await asyncio.sleep(0)
        finally:
            os.close(fd)

    def thread_main(seed: int) -> None:
        try:
            asyncio.run(work(seed))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=thread_main, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    gc.collect()
    extra = {fd: _fd_target(fd) for fd in open_fds() - fds_before}
    assert not extra


# ---------------------------------------------------------------------------------
# page-cache hits and fairness
# ---------------------------------------------------------------------------------


def _submitted(stats: dict[str, Any]) -> int:
    total = int(stats.get("submitted", 0))
    for k in ("aio", "threads"):
        sub = stats.get(k)
        if isinstance(sub, dict):
            total += int(sub.get("submitted", 0))
    return total


def test_page_cache_hits_skip_the_engine_and_cold_reads_use_it(
    engine_name: str, tmp_path: Path
) -> None:
    """Cached reads are served inline (no engine request); a cold read goes to
    the engine with the right data, and once cached is inline again."""
    p = tmp_path / "cold"
    data = pattern(1 << 20)
    p.write_bytes(data)

    async def main() -> None:
        fd = os.open(p, os.O_RDONLY)
        try:
            eng = current_driver().engine
            os.pread(fd, 4096, 0)  # cached
            before = _submitted(eng.statistics())
            for _ in range(10):
                assert await xaio.pread(fd, 4096, 0) == data[:4096]
            assert _submitted(eng.statistics()) == before
            drop_cached(fd)
            got = await xaio.pread(fd, 4096, 512 * 1024)
            assert got == data[512 * 1024 : 516 * 1024]
            cold_submitted = _submitted(eng.statistics())
            for _ in range(20):  # now cached: inline again (cachestat says so)
                assert await xaio.pread(fd, 4096, 512 * 1024) == got
            assert _submitted(eng.statistics()) - cold_submitted <= 1
        finally:
            os.close(fd)

    asyncio.run(main())


def test_cached_reads_do_not_starve_other_tasks(lib: str, data_path: Path) -> None:
    """Page-cache hits complete without yielding, but the driver's time slice
    makes the readers yield: a ticker keeps running while 16 tasks read."""

    async def main() -> None:
        fd = os.open(data_path, os.O_RDONLY)
        os.pread(fd, 1 << 20, 0)
        stop = False
        gaps: list[float] = []

        expected = pattern(1 << 20)

        async def reader(k: int) -> None:
            off = k * 4096
            want = expected[off : off + 4096]
            while not stop:
                assert await xaio.pread(fd, 4096, off) == want

        async def ticker() -> None:
            nonlocal stop
            last = time.perf_counter()
            for _ in range(50):
                await anyio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
            stop = True

        try:
            async with anyio.create_task_group() as tg:
                for k in range(16):
                    tg.start_soon(reader, k)
                tg.start_soon(ticker)
        finally:
            os.close(fd)
        assert len(gaps) == 50
        assert max(gaps) < 0.1, max(gaps)  # starvation would be seconds

    run(lib, main)


def test_a_released_reader_uses_the_whole_slice(
    data_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio: a task the slice released reads on until the slice is used
    up, not for one streak: with a slice longer than the whole run the
    readers take a few loop iterations, not one per streak of reads."""
    from xaio._async import _asyncio

    monkeypatch.setattr(_asyncio, "_SLICE", 60.0)
    tasks, reads = 8, 400
    expected = pattern(1 << 20)

    async def main() -> int:
        fd = os.open(data_path, os.O_RDONLY)
        os.pread(fd, 1 << 20, 0)  # cached
        done = 0
        iterations = 0

        async def reader(k: int) -> None:
            nonlocal done
            off = k * 4096
            want = expected[off : off + 4096]
            for _ in range(reads):
                assert await xaio.pread(fd, 4096, off) == want
            done += 1

        async def counter() -> None:
            nonlocal iterations
            while done < tasks:
                iterations += 1
                await asyncio.sleep(0)

        try:
            await asyncio.gather(counter(), *(reader(k) for k in range(tasks)))
        finally:
            os.close(fd)
        return iterations

    # one streak at a time would be tasks * reads / _STREAK = 200 iterations
    assert asyncio.run(main()) < 50


# ---------------------------------------------------------------------------------
# batching and the driver's bookkeeping
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["uring", "linux", "thread"])
def test_tasks_woken_together_submit_together(
    lib: str, name: str, direct_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight tasks whose reads completed while the loop was busy are woken by
    one reap; their next reads reach the engine in one submit -- not the first
    alone because nothing was in flight at that moment (which, on a fast device,
    locks the driver into one request per system call).  The test holds every
    completion back (``count_reaped``) until all eight first reads are posted,
    so the one reap has them all, whatever the scheduler's order."""
    if xaio.engine.probe()[name] is not None:
        pytest.skip(f"{name} engine unavailable here")
    monkeypatch.setenv("XAIO_ENGINE", name)
    fd = direct_fd
    expected = pattern(1 << 20)
    sizes: list[int] = []

    async def main() -> int:
        drv = current_driver()
        assert drv.engine.name == name
        count_submits(drv.engine, sizes)
        held = [True]  # nothing is delivered until every first read is posted
        delivered = count_reaped(drv.engine, held)
        bufs = [xaio.aligned_buffer(4096) for _ in range(8)]
        issued = [0] * 8  # reads each task has asked for

        async def worker(i: int) -> None:
            for k, off in enumerate((i, i + 8, i + 16)):
                issued[i] = k + 1
                assert await xaio.preadinto(fd, bufs[i], off * 4096) == 4096
                assert bytes(bufs[i]) == expected[off * 4096 : (off + 1) * 4096]

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(worker, i)
            while sum(sizes) < 8:  # until every first read is in the engine
                await anyio.lowlevel.checkpoint()
            # From here the loop is held: nothing is delivered, no task runs.
            assert issued == [1] * 8, issued
            release_when_posted(drv.engine, 8, held, delivered)
            mark = len(sizes)  # submits before the one reap
        return mark

    mark = run(lib, main)
    assert sum(sizes) == 24
    # the tasks woken together ask for their next reads in one submit
    assert sizes[mark] == 8, (mark, sizes)


async def _read_then_burn(fd: int, buf: Any, i: int, expected: bytes, steps: list[int]) -> None:
    """A task step of the burst tests: read block *i* into *buf*, then run
    0.25 ms without yielding, count the step and check the block."""
    assert await xaio.preadinto(fd, buf, i * 4096) == 4096
    end = time.perf_counter() + 0.00025
    while time.perf_counter() < end:
        pass
    steps[0] += 1
    assert bytes(buf) == expected[i * 4096 : (i + 1) * 4096]


def test_a_burst_of_slow_steps_is_spread_over_loop_iterations(direct_fd: int) -> None:
    """64 reads complete together and each woken task then runs for 0.25 ms
    (the Python of a cold file, say): the driver wakes them a few per loop
    iteration -- the budget bounds the iteration's time, not only the count
    of tasks -- so a callback that runs once per iteration sees at most
    WAKE_MIN of those steps between two of its runs, not all 64."""
    from xaio._async._driver import WAKE_MIN

    fd = direct_fd
    expected = pattern(1 << 20)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        drv = current_driver()
        sizes: list[int] = []
        count_submits(drv.engine, sizes)
        held = [True]  # no completion is delivered until all 64 are posted
        delivered = count_reaped(drv.engine, held)
        bufs = [xaio.aligned_buffer(4096) for _ in range(64)]
        steps = [0]  # woken steps run so far
        per_iteration: list[int] = []  # woken steps run in each loop iteration
        ticking = [True]

        def tick(seen: int) -> None:  # once per loop iteration
            per_iteration.append(steps[0] - seen)
            if ticking[0]:
                loop.call_soon(tick, steps[0])

        async def worker(i: int) -> None:
            await _read_then_burn(fd, bufs[i], i, expected, steps)

        tasks = [asyncio.create_task(worker(i)) for i in range(64)]
        while sum(sizes) < 64:  # until every read is in the engine
            await asyncio.sleep(0)
        release_when_posted(drv.engine, 64, held, delivered)
        loop.call_soon(tick, steps[0])
        await asyncio.gather(*tasks)
        ticking[0] = False
        return per_iteration, steps[0] - sum(per_iteration)

    per_iteration, before = asyncio.run(main())
    assert sum(per_iteration) + before == 64
    assert max(per_iteration) <= WAKE_MIN, per_iteration


def test_a_burst_of_slow_steps_is_spread_over_trio_batches(direct_fd: int) -> None:
    """The same burst on trio: 64 reads complete in one reap and each woken
    task then runs for 0.25 ms; the driver reschedules a few per scheduling
    batch (trio looks at its timers between batches), so at most WAKE_MIN
    of those steps run in one batch, not all 64 (counted at trio's own batch
    boundary, an instrument's ``before_io_wait``: a task's place in a batch
    is random)."""
    import trio

    from xaio._async._driver import WAKE_MIN

    fd = direct_fd
    expected = pattern(1 << 20)

    async def main() -> tuple[list[int], int]:
        drv = current_driver()
        sizes: list[int] = []
        count_submits(drv.engine, sizes)
        held = [True]  # no completion is delivered until all 64 are posted
        delivered = count_reaped(drv.engine, held)
        bufs = [xaio.aligned_buffer(4096) for _ in range(64)]
        steps = [0]  # woken steps run so far
        per_batch: list[int] = []  # woken steps run in each scheduling batch

        class Count(trio.abc.Instrument):  # type: ignore[misc]
            def __init__(self) -> None:
                self.seen = steps[0]

            def before_io_wait(self, timeout: float) -> None:  # a batch has run
                per_batch.append(steps[0] - self.seen)
                self.seen = steps[0]

        async def worker(i: int) -> None:
            await _read_then_burn(fd, bufs[i], i, expected, steps)

        async with trio.open_nursery() as workers:
            for i in range(64):
                workers.start_soon(worker, i)
            while sum(sizes) < 64:  # until every read is in the engine
                await trio.lowlevel.checkpoint()
            release_when_posted(drv.engine, 64, held, delivered)
            before = steps[0]
            count = Count()
            trio.lowlevel.add_instrument(count)
        trio.lowlevel.remove_instrument(count)
        per_batch.append(steps[0] - count.seen)
        return per_batch, before

    per_batch, before = trio.run(main)
    assert sum(per_batch) + before == 64, (per_batch, before)
    assert max(per_batch) <= WAKE_MIN, per_batch


def test_trio_tasks_cancelled_while_deferred_by_the_budget_end(direct_fd: int) -> None:
    """trio: tasks whose reads completed but whose wake-up the budget left
    to a later batch are cancelled there: each ends (its read done, the
    cancellation raised at its next checkpoint or at once), none waits
    forever, and the driver's counts return to zero."""
    import trio

    from xaio._async._driver import WAKE_MIN

    fd = direct_fd

    async def main() -> int:
        drv = current_driver()
        sizes: list[int] = []
        count_submits(drv.engine, sizes)
        held = [True]  # no completion is delivered until all 64 are posted
        delivered = count_reaped(drv.engine, held)
        bufs = [xaio.aligned_buffer(4096) for _ in range(64)]
        ended = [0]

        async def worker(i: int) -> None:
            try:
                await xaio.preadinto(fd, bufs[i], i * 4096)
                await trio.sleep_forever()
            finally:
                ended[0] += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as workers:
                for i in range(64):
                    workers.start_soon(worker, i)
                while sum(sizes) < 64:  # until every read is in the engine
                    await trio.lowlevel.checkpoint()
                release_when_posted(drv.engine, 64, held, delivered)
                drv.on_readable()  # one reap: the budget defers all but WAKE_MIN
                deferred = len(drv._deferred)  # type: ignore[attr-defined]
                workers.cancel_scope.cancel()
        assert ended[0] == 64
        assert drv.in_flight == 0 and drv._wakeups == 0
        assert not drv._deferred  # type: ignore[attr-defined]
        return deferred

    deferred = trio.run(main)
    assert deferred == 64 - WAKE_MIN, deferred


def test_the_wake_budget_is_what_fits_in_the_slice() -> None:
    """The budget is as many steps as fit in the wake slice at the last
    iteration's pace, between WAKE_MIN and WAKE_MAX."""
    from xaio._async._driver import _WAKE_SLICE, WAKE_MAX, WAKE_MIN, wake_budget

    assert wake_budget(64, _WAKE_SLICE / 4) == WAKE_MAX  # cheap: all go round
    assert wake_budget(64, _WAKE_SLICE * 2) == 32
    assert wake_budget(10, _WAKE_SLICE) == 10
    assert wake_budget(20, _WAKE_SLICE * 40) == WAKE_MIN  # slow: the floor
    assert wake_budget(1, 0.0) == WAKE_MAX


def _trio_task_names() -> list[str]:
    import trio

    names: list[str] = []

    def walk(task: Any) -> None:
        names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return names


def test_trio_flusher_reads_and_ends_with_the_driver(direct_fd: int) -> None:
    """On trio a system task hands queued requests over (trio has no
    call_soon): 32 concurrent O_DIRECT reads through it return the right data,
    and it ends when the driver closes (no task left behind)."""
    import trio

    expected = pattern(1 << 20)
    fd = direct_fd

    async def main() -> None:
        drv = current_driver()
        bufs = [xaio.aligned_buffer(4096) for _ in range(32)]

        async def one(i: int) -> None:
            assert await xaio.preadinto(fd, bufs[i], i * 4096) == 4096

        async with trio.open_nursery() as nursery:
            for i in range(32):
                nursery.start_soon(one, i)
        for i in range(32):
            assert bytes(bufs[i]) == expected[i * 4096 : (i + 1) * 4096]
        assert "xaio engine flusher" in _trio_task_names()
        drv.close()
        await wait_until_async(
            lambda: not {"xaio engine flusher", "xaio engine reader"} & set(_trio_task_names()),
            "the driver's system tasks to end",
        )

    trio.run(main)


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_wakeup_count_returns_to_zero(library: str, data_path: Path, direct_fd: int) -> None:
    """The driver's count of woken-but-not-resumed tasks (which makes new
    requests wait for the batch) is back to 0 once everything has run: after
    engine reads, path operations (xaio.os, the meta ring) and a cancelled
    read -- a leak would delay every later request by a loop iteration."""
    fd = direct_fd
    r, w = os.pipe()

    async def body(cancel_after: Any) -> int:
        drv = current_driver()
        bufs = [xaio.aligned_buffer(4096) for _ in range(16)]
        for _ in range(3):
            for i in range(16):
                assert await xaio.preadinto(fd, bufs[i], i * 4096) == 4096
        for _ in range(5):
            assert (await xaio.os.stat(data_path)).st_size == 1 << 20
        await cancel_after(0.05, xaio.read(r, 10))  # a pipe read, cancelled
        # every task has run: the count goes back to 0 (a leak keeps it above)
        await wait_until_async(lambda: drv._wakeups == 0, "no woken task left to run")
        return int(drv._wakeups)

    async def asyncio_main() -> int:
        async def cancel_after(t: float, coro: Any) -> None:
            with pytest.raises(asyncio.TimeoutError):  # TimeoutError from 3.11 on
                await asyncio.wait_for(coro, t)

        return await body(cancel_after)

    async def trio_main() -> int:
        import trio

        async def cancel_after(t: float, coro: Any) -> None:
            with trio.move_on_after(t):
                await coro

        return await body(cancel_after)

    try:
        if library == "asyncio":
            assert asyncio.run(asyncio_main()) == 0
        else:
            import trio

            assert trio.run(trio_main) == 0
    finally:
        os.close(r)
        os.close(w)


def test_requests_the_driver_completes_itself_leave_no_trace(data_fd: int, direct_fd: int) -> None:
    """Requests completed by the driver without the engine (served from the
    page cache on a cold fd, zero-length, cancelled while parked before the
    engine) neither count in its in-flight total nor keep their buffer pinned
    -- not even while the cancelled task, and its traceback, are still alive."""
    from xaio._async import _driver

    fd, dfd = data_fd, direct_fd
    expected = pattern(1 << 20)

    async def main() -> None:
        drv = current_driver()
        os.pread(fd, 8192, 0)  # cached
        drv._missed(fd)  # cold: inline reads go through an Operation
        buf = bytearray(4096)
        for _ in range(3):
            assert await xaio.preadinto(fd, buf, 0) == 4096
        assert bytes(buf) == expected[:4096]
        assert await xaio.preadinto(fd, bytearray(0), 0) == 0
        assert await xaio.pread(fd, 0, 0) == b""
        assert await xaio.preadv(fd, [bytearray(4), bytearray(4)], 0) == 8
        assert drv._inflight == 0
        # parked by the fairness slice before reaching the engine, then cancelled
        drv._streak = _driver._STREAK
        drv._exhausted = True
        pinned = bytearray(4096)
        task = asyncio.ensure_future(xaio.preadinto(dfd, pinned, 0))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pinned.extend(b"x")  # not pinned by the abandoned request (BufferError if it were)
        assert drv._inflight == 0
        del task

    asyncio.run(main())


def test_trio_request_cancelled_before_the_engine_is_not_pinned(direct_fd: int) -> None:
    """trio: a request whose task was already cancelled never reaches the
    engine and gives its buffer back at once, even while the Cancelled
    exception (and the frames of its traceback) are kept."""
    import trio

    dfd = direct_fd

    async def main() -> None:
        drv = current_driver()
        pinned = bytearray(4096)
        kept: list[BaseException] = []
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await xaio.preadinto(dfd, pinned, 0)
            except trio.Cancelled as e:
                kept.append(e)
                raise
        assert kept and scope.cancelled_caught
        pinned.extend(b"x")  # BufferError if the request still held it
        assert drv._inflight == 0

    trio.run(main)


# ---------------------------------------------------------------------------------
# the fd's kind (the ESPIPE answer and the routing), asked once per loop iteration
# ---------------------------------------------------------------------------------


def test_requests_of_one_iteration_ask_the_fds_kind_once(
    lib: str, direct_fd: int, kind_checks: list[int]
) -> None:
    asked = kind_checks
    want = pattern(16 * 4096)

    async def main() -> None:
        bufs = [xaio.aligned_buffer(4096) for _ in range(16)]
        got: list[int] = []

        async def one(i: int) -> None:
            got.append(await xaio.preadinto(direct_fd, bufs[i], i * 4096))

        async with anyio.create_task_group() as tg:  # all start in one iteration
            for i in range(16):
                tg.start_soon(one, i)
        assert got == [4096] * 16
        assert b"".join(bytes(b) for b in bufs) == want
        assert 1 <= len(asked) <= 2, asked  # (not once per request)

    run(lib, main)


def test_an_fd_reused_in_the_same_iteration_is_asked_again(
    lib: str, data_fd: int, pipe: tuple[int, int]
) -> None:
    r, w = pipe

    async def main() -> None:
        drv = current_driver()
        fd = os.dup(data_fd)
        try:
            assert drv._kinds.kind(fd) == KIND_BUFFERED  # a regular file, learned
            os.dup2(w, fd)  # the number now names the pipe's write end
            with pytest.raises(OSError) as e:
                await xaio.pwrite(fd, b"x", 0)
            assert e.value.errno == errno.ESPIPE
        finally:
            os.close(fd)
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            os.read(r, 1)  # nothing reached the pipe

    run(lib, main)


def test_an_fd_whose_flags_changed_is_asked_again(lib: str, direct_fd: int) -> None:
    async def main() -> None:
        drv = current_driver()
        assert drv._kinds.kind(direct_fd) == KIND_DIRECT
        flags = fcntl.fcntl(direct_fd, fcntl.F_GETFL)
        fcntl.fcntl(direct_fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        assert drv._kinds.kind(direct_fd) == KIND_BUFFERED
        fcntl.fcntl(direct_fd, fcntl.F_SETFL, flags)
        assert drv._kinds.kind(direct_fd) == KIND_DIRECT

    run(lib, main)


def test_the_fds_kind_is_forgotten_after_the_iteration(lib: str, data_fd: int) -> None:
    async def main() -> None:
        drv = current_driver()
        drv._kinds.kind(data_fd)
        assert drv._kinds._known
        await wait_until_async(lambda: not drv._kinds._known, "the answers forgotten")

    run(lib, main)


def test_trio_runs_call_soon_in_the_flusher(direct_fd: int) -> None:
    """On trio the driver's ``_call_soon`` is run by the flusher, woken with a
    ``reschedule``, not by trio's entry queue (two system calls on its
    wake-up socket and a task step per batch); a request queued in the same
    batch still waits for the batch (one submit for both)."""
    import trio

    async def main() -> None:
        drv = current_driver()
        await wait_until_async(lambda: drv._flusher is not None, "the flusher parked")
        ran: list[str] = []
        drv._call_soon(lambda: ran.append(trio.lowlevel.current_task().name))
        buf = xaio.aligned_buffer(4096)
        assert await xaio.preadinto(direct_fd, buf, 0) == 4096
        await wait_until_async(lambda: bool(ran), "the callback run")
        assert ran == ["xaio engine flusher"]

    trio.run(main)


def test_trio_forgets_the_fds_kinds_without_a_task_step(direct_fd: int) -> None:
    """On trio the fds' kinds are forgotten as the next scheduling batch
    begins (the batch clock), not by a task: a batch of reads awaited as
    one wakes no task but the engine's reader and its own, once each."""
    import trio

    steps: list[str] = []

    class Steps(trio.abc.Instrument):  # type: ignore[misc]
        def before_task_step(self, task: Any) -> None:
            steps.append(task.name)

    async def main() -> None:
        drv = current_driver()
        await wait_until_async(lambda: drv._flusher is not None, "the flusher parked")
        drv._kinds.kind(direct_fd)
        assert drv._kinds._known
        await wait_until_async(lambda: not drv._kinds._known, "the answers forgotten")
        bufs = [xaio.aligned_buffer(4096) for _ in range(8)]
        trio.lowlevel.add_instrument(Steps())
        for _ in range(3):
            batch = xaio.Batch()
            for i, buf in enumerate(bufs):
                batch.preadinto(direct_fd, buf, i * 4096)
            assert await batch.run() == [4096] * 8
        assert "xaio engine flusher" not in steps, steps

    trio.run(main)


def test_trio_requests_of_one_batch_submit_together(direct_fd: int) -> None:
    """Three trio tasks reading in one scheduling batch: the first request,
    with nothing in flight, goes to the engine at once; the other two wait
    for the flusher -- woken by the second request -- and reach the engine
    in one submit."""
    import trio

    sizes: list[int] = []

    async def main() -> None:
        drv = current_driver()
        await wait_until_async(lambda: drv._flusher is not None, "the flusher parked")
        count_submits(drv.engine, sizes)
        # the first read must not be delivered before the next task runs (as
        # the reap right after its submit may, if the thread is preempted
        # there): completions come only through the reader, between batches
        drv._reap_after_submit = False
        bufs = [xaio.aligned_buffer(4096) for _ in range(3)]

        async def one(i: int) -> None:
            assert await xaio.preadinto(direct_fd, bufs[i], i * 4096) == 4096

        async with trio.open_nursery() as nursery:  # all three run in one batch
            for i in range(3):
                nursery.start_soon(one, i)
        assert sizes == [1, 2]

    trio.run(main)


@pytest.mark.parametrize("name", ["uring", "linux"])
def test_a_long_queue_reaches_the_engine_before_the_flush(
    lib: str, name: str, direct_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty requests made in one loop iteration: the first goes to the
    engine at once (nothing in flight), the others queue for the flush, but
    every 16 queued are handed over as they come -- the device starts on them
    while the loop is still running the other tasks -- and the flush takes the
    last 7.  (Not on the thread engine: its workers may finish each read
    before the next task runs, and then nothing is in flight.)"""
    if xaio.engine.probe()[name] is not None:
        pytest.skip(f"{name} engine unavailable here")
    monkeypatch.setenv("XAIO_ENGINE", name)
    want = pattern(40 * 4096)
    sizes: list[int] = []

    async def main() -> None:
        drv = current_driver()
        assert drv.engine.name == name
        count_submits(drv.engine, sizes)
        # a read io_uring completes inside the submit (a fast device) must not
        # be delivered before the next task runs: completions come only
        # through the loop's I/O phase, between iterations
        drv._reap_after_submit = False
        # (on trio, until its flusher task has started, each request is flushed at once)
        await wait_until_async(lambda: getattr(drv, "_flusher", drv) is not None, "a flusher")
        bufs = [xaio.aligned_buffer(4096) for _ in range(40)]

        async def one(i: int) -> None:
            assert await xaio.preadinto(direct_fd, bufs[i], i * 4096) == 4096

        async with anyio.create_task_group() as tg:  # all start in one iteration
            for i in range(40):
                tg.start_soon(one, i)
        assert b"".join(bytes(b) for b in bufs) == want
        assert sizes == [1, 16, 16, 7]

    run(lib, main)
