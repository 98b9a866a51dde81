"""xaio.Batch: many requests in one submission, one await, results in order.

Every test runs on each event-loop library (asyncio, uvloop, trio, anyio on
both backends) and each engine (``XAIO_ENGINE``)."""

from __future__ import annotations

import array
import errno
import mmap
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

import xaio
from tests.support import (
    drop_cached,
    fds_after_a_first_run,
    open_fds,
    pattern,
    resizable,
    run,
    wait_until_async,
)
from xaio._async._current import current_driver

pytestmark = pytest.mark.timeout(120)


def os_error(fn: Any, *args: Any) -> int:
    """The errno the os function raises for these arguments."""
    with pytest.raises(OSError) as info:
        fn(*args)
    return int(info.value.errno)


def count_submissions(drv: Any) -> tuple[list[tuple[int, bool, bool]], Any]:
    """Record what *drv*'s engine is handed: ``(requests, handed to the
    kernel, through a port)`` per ``Engine.submit`` call (True, False) and
    per ``BatchPort.submit`` (True unless it left them for the next
    submission, True); returns the list and the function that stops
    recording."""
    calls: list[tuple[int, bool, bool]] = []
    engine = drv.engine
    submit = engine.submit
    make_port = engine.batch_port

    def counting_submit(ops: Any) -> int:
        calls.append((len(ops), True, False))
        return submit(ops)  # type: ignore[no-any-return]

    def counting_port(on_landed: Any) -> Any:
        port = make_port(on_landed)
        if port is not None:
            submit_slots = port.submit

            def counting_slots(slots: Any, hand_over: bool = True) -> None:
                calls.append((len(slots), hand_over, True))
                submit_slots(slots, hand_over)

            port.submit = counting_slots
        return port

    def restore() -> None:
        engine.submit = submit
        engine.batch_port = make_port

    engine.submit = counting_submit
    engine.batch_port = counting_port
    return calls, restore


def test_results_in_order_one_submission(lib: str, engine_name: str, data_path: Path) -> None:
    """Reads, writes and syncs come back in the order they were added, with
    the bytes of os.preadv / os.pwrite, all handed to the kernel by one
    submission: one Engine.submit call, before which the engine's batch
    port (if it has one) may have queued its requests without handing
    them over."""
    expected = pattern(1 << 20)
    out_path = data_path.with_name("out.bin")

    async def main() -> None:
        fd = os.open(data_path, os.O_RDONLY)
        out = os.open(out_path, os.O_RDWR | os.O_CREAT, 0o644)
        drv = current_driver()
        assert drv.engine.name == engine_name
        calls, restore = count_submissions(drv)
        try:
            offsets = [(i * 7919) % 250 * 4096 + i for i in range(40)]
            bufs = [bytearray(4096) for _ in offsets]
            batch = xaio.Batch()
            for buf, off in zip(bufs, offsets, strict=True):
                batch.preadinto(fd, buf, off)
            past = bytearray(10)
            assert batch.preadinto(fd, past, (1 << 20) - 3) == 40
            batch.pwrite(out, b"hello", 100)
            v1, v2 = bytearray(3), bytearray(5)
            batch.preadv(fd, [v1, v2], 8)
            batch.pwritev(out, [b"ab", b"cd"], 0)
            batch.fsync(out)
            batch.fdatasync(out)
            assert len(batch) == 46
            results = await batch.run()
        finally:
            restore()
            os.close(fd)
            os.close(out)
        assert sum(n for n, _, _ in calls) == 46
        assert [over for _, over, _ in calls] == [False] * (len(calls) - 1) + [True]
        assert results == [4096] * 40 + [3, 5, 8, 4, None, None]
        for buf, off in zip(bufs, offsets, strict=True):
            assert bytes(buf) == expected[off : off + 4096]
        assert bytes(past[:3]) == expected[-3:]
        assert bytes(v1 + v2) == expected[8:16]
        assert all(resizable(b) for b in [*bufs, past, v1, v2])
        assert drv._inflight == 0

    run(lib, main)
    assert out_path.read_bytes() == b"abcd" + b"\0" * 96 + b"hello"


def test_a_failed_request_fails_only_itself(
    lib: str, engine_name: str, data_path: Path, tmp_path: Path
) -> None:
    """Each request's error is its own result (the errno os gives), the
    others complete; positional requests on a pipe give ESPIPE."""
    ro = os.open(data_path, os.O_RDONLY)
    wo = os.open(data_path, os.O_WRONLY)
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    r, w = os.pipe()
    expect = [
        os_error(os.preadv, r, [bytearray(4)], 0),
        os_error(os.pwrite, w, b"x", 0),
        os_error(os.pwrite, ro, b"x", 0),
        os_error(os.preadv, wo, [bytearray(4)], 0),
        os_error(os.preadv, dfd, [bytearray(4)], 0),
    ]
    assert expect == [errno.ESPIPE, errno.ESPIPE, errno.EBADF, errno.EBADF, errno.EISDIR]

    async def main() -> list[Any]:
        batch = xaio.Batch()
        good = bytearray(4)
        batch.preadinto(r, bytearray(4), 0)
        batch.preadinto(ro, good, 4096)
        batch.pwrite(w, b"x", 0)
        batch.pwrite(ro, b"x", 0)
        batch.preadinto(wo, bytearray(4), 0)
        batch.preadinto(dfd, bytearray(4), 0)
        batch.pwrite(wo, b"zz", 1 << 20)
        results = await batch.run()
        assert bytes(good) == pattern(8192)[4096:4100]
        return results

    try:
        results = run(lib, main)
    finally:
        for fd in (ro, wo, dfd, r, w):
            os.close(fd)
    assert results[1] == 4 and results[6] == 2
    errors = [results[i] for i in (0, 2, 3, 4, 5)]
    assert all(isinstance(e, OSError) for e in errors), errors
    assert [e.errno for e in errors] == expect


def test_direct_misaligned_request_says_what_was_needed(
    lib: str, engine_name: str, direct_fd: int
) -> None:
    async def main() -> list[Any]:
        batch = xaio.Batch()
        batch.preadinto(direct_fd, xaio.aligned_buffer(4096), 0)
        batch.preadinto(direct_fd, xaio.aligned_buffer(4096), 1)
        return await batch.run()

    results = run(lib, main)
    assert results[0] == 4096
    err = results[1]
    assert isinstance(err, OSError) and err.errno == errno.EINVAL
    assert "offset 1 is not a multiple" in str(err)


def test_bad_arguments_raise_before_any_syscall(data_fd: int) -> None:
    """The os-style coroutines' TypeError/ValueError, when the request is added."""
    batch = xaio.Batch()
    with pytest.raises(TypeError):
        batch.preadinto("3", bytearray(4), 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        batch.preadinto(data_fd, b"read-only", 0)
    with pytest.raises(TypeError):
        batch.pwrite(data_fd, "text", 0)
    with pytest.raises(TypeError):
        batch.pwrite(data_fd, b"x", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as info:
        batch.pwrite(data_fd, b"x", -1)
    assert isinstance(info.value, OSError) and info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as bad_fd:
        batch.preadinto(-1, bytearray(4), 0)
    assert bad_fd.value.errno == errno.EBADF
    with pytest.raises(ValueError):
        batch.fsync(-1)
    with pytest.raises(TypeError):
        batch.preadv(data_fd, b"abc", 0)
    with pytest.raises(ValueError):
        batch.preadv(data_fd, [bytearray(1)], 0, -1)
    assert len(batch) == 0


def test_single_use(lib: str, data_fd: int) -> None:
    async def main() -> None:
        batch = xaio.Batch()
        assert await batch.run() == []
        with pytest.raises(RuntimeError):
            await batch.run()
        buf = bytearray(8)
        with pytest.raises(RuntimeError):
            batch.preadinto(data_fd, buf, 0)
        assert resizable(buf)  # the refused request gave its buffer back
        with pytest.raises(RuntimeError):
            batch.as_completed()
        unrun = xaio.Batch()
        unrun.preadinto(data_fd, buf, 0)
        assert not resizable(buf)  # held from the moment it is added
        async with unrun.as_completed():
            pass  # left before the first step: nothing runs, the buffer is free
        assert resizable(buf)
        with pytest.raises(RuntimeError, match="single-use"):
            await unrun.run()

    run(lib, main)


def _cold_file(tmp_path: Path) -> tuple[Path, int]:
    path = tmp_path / "cold.bin"
    path.write_bytes(pattern(16 << 20))
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    return path, fd


async def _cancel_batch_in_flight(fd: int, n: int) -> tuple[list[bytearray], bool, bool]:
    """Run a batch of *n* cold 64 KiB reads and cancel its await while
    requests are in the kernel; return the buffers, whether requests were in
    flight when the cancellation was sent, and whether the await was cancelled."""
    drop_cached(fd)
    bufs = [bytearray(65536) for _ in range(n)]
    batch = xaio.Batch()
    for i, buf in enumerate(bufs):
        batch.preadinto(fd, buf, (i * 37 % 256) * 65536)
    drv = current_driver()
    seen = False
    cancelled = True
    async with anyio.create_task_group() as tg:

        async def runner() -> None:
            nonlocal cancelled
            with anyio.CancelScope() as scope:
                tg.start_soon(watch, scope)
                await batch.run()
                cancelled = False

        async def watch(scope: anyio.CancelScope) -> None:
            nonlocal seen
            seen = drv._inflight > 0
            scope.cancel()

        tg.start_soon(runner)
    return bufs, seen, cancelled


def test_cancel_releases_every_buffer(lib: str, engine_name: str, tmp_path: Path) -> None:
    """A cancelled batch cancels what is still in the kernel and returns only
    once every request has completed: each bytearray can be resized right
    after, and the driver has nothing in flight."""
    _, fd = _cold_file(tmp_path)

    async def main() -> None:
        for _ in range(20):
            bufs, seen, cancelled = await _cancel_batch_in_flight(fd, 128)
            assert current_driver()._inflight == 0
            assert all(resizable(b) for b in bufs)
            if seen and cancelled:
                return
        pytest.fail("never caught the batch with requests in flight")

    try:
        run(lib, main)
    finally:
        os.close(fd)


def test_as_completed_yields_each_once(lib: str, engine_name: str, data_path: Path) -> None:
    expected = pattern(1 << 20)
    r, w = os.pipe()

    async def main() -> None:
        fd = os.open(data_path, os.O_RDONLY)
        try:
            batch = xaio.Batch()
            bufs = [bytearray(1000) for _ in range(20)]
            for i, buf in enumerate(bufs):
                batch.preadinto(fd, buf, i * 5000)
            batch.preadinto(r, bytearray(1), 0)
            got = {}
            async with batch.as_completed() as landed:
                async for i, result in landed:
                    assert i not in got
                    got[i] = result
            assert sorted(got) == list(range(21))
            assert all(got[i] == 1000 for i in range(20))
            assert isinstance(got[20], OSError) and got[20].errno == errno.ESPIPE
            for i, buf in enumerate(bufs):
                assert bytes(buf) == expected[i * 5000 : i * 5000 + 1000]
        finally:
            os.close(fd)

    try:
        run(lib, main)
    finally:
        os.close(r)
        os.close(w)


def test_as_completed_left_early_cancels_the_rest(
    lib: str, engine_name: str, tmp_path: Path
) -> None:
    _, fd = _cold_file(tmp_path)

    async def main() -> None:
        drop_cached(fd)
        bufs = [bytearray(65536) for _ in range(128)]
        batch = xaio.Batch()
        for i, buf in enumerate(bufs):
            batch.preadinto(fd, buf, (i * 37 % 256) * 65536)
        async with batch.as_completed() as landed:
            async for _i, result in landed:
                assert result == 65536
                break
        assert current_driver()._inflight == 0
        assert all(resizable(b) for b in bufs)

    try:
        run(lib, main)
    finally:
        os.close(fd)


def test_nothing_left_open(lib: str, engine_name: str, data_path: Path, tmp_path: Path) -> None:
    """After runs that succeed, fail and are cancelled, the process has the
    fds it had before its loop started (the loop's engine included)."""
    before = fds_after_a_first_run(lib)
    _, cold = _cold_file(tmp_path)

    async def main() -> None:
        fd = os.open(data_path, os.O_RDWR)
        try:
            batch = xaio.Batch()
            batch.preadinto(fd, bytearray(4096), 0)
            batch.preadinto(fd, bytearray(4096), 1 << 30)
            batch.pwrite(fd, b"x", 0)
            batch.fsync(fd)
            assert await batch.run() == [4096, 0, 1, None]
            await _cancel_batch_in_flight(cold, 64)
        finally:
            os.close(fd)

    run(lib, main)
    os.close(cold)
    assert open_fds() == before


def test_explicit_engine(lib: str, engine_name: str, data_fd: int) -> None:
    async def main() -> list[Any]:
        async with xaio.open_engine(engine_name) as eng:
            batch = xaio.Batch(eng)
            batch.preadinto(data_fd, bytearray(7), 3)
            return await batch.run()

    assert run(lib, main) == [7]


def test_buffer_pool_aligned_buffers() -> None:
    import ctypes

    for size, alignment in ((4096, None), (1000, 512), (5000, 8192)):
        pool = xaio.BufferPool(size, 8, alignment)
        align = alignment or 4096
        bufs = [pool.acquire() for _ in range(8)]
        assert len(pool) == 0 and len({id(b) for b in bufs}) == 8
        for buf in bufs:
            assert buf.nbytes == size and not buf.readonly
            address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
            assert address % align == 0
        bufs[0][:] = b"\x01" * size  # the buffers do not overlap
        assert all(bytes(b) == bytes(size) for b in bufs[1:])
        with pytest.raises(RuntimeError):
            pool.acquire()
        pool.release(bufs[3])
        with pytest.raises(ValueError):
            pool.release(bufs[3])
        with pytest.raises(ValueError):
            pool.release(xaio.aligned_buffer(size))
        assert pool.acquire() is bufs[3]
    pool = xaio.BufferPool(4096, 1)
    with pool.buffer() as buf:
        assert len(pool) == 0
    assert len(pool) == 1 and pool.acquire() is buf
    for bad in ((0, 1), (1, 0), (-1, 1)):
        with pytest.raises(ValueError):
            xaio.BufferPool(*bad)
    with pytest.raises(ValueError):
        xaio.BufferPool(4096, 1, 3000)
    with pytest.raises(TypeError):
        xaio.BufferPool(4096.0, 1)  # type: ignore[arg-type]


def test_buffer_pool_in_a_direct_batch(lib: str, engine_name: str, direct_fd: int) -> None:
    expected = pattern(1 << 20)

    async def main() -> None:
        pool = xaio.BufferPool(4096, 16, file=direct_fd)
        bufs = [pool.acquire() for _ in range(16)]
        batch = xaio.Batch()
        for i, buf in enumerate(bufs):
            batch.preadinto(direct_fd, buf, i * 8192)
        assert await batch.run() == [4096] * 16
        for i, buf in enumerate(bufs):
            assert bytes(buf) == expected[i * 8192 : i * 8192 + 4096]
            pool.release(buf)
        assert len(pool) == 16

    run(lib, main)


def test_as_completed_takes_requests_while_iterating(
    lib: str, engine_name: str, data_path: Path
) -> None:
    """A loop body that adds a read per result keeps the batch going: every
    request is yielded once, with the bytes at its offset, the adds reach
    the engine in groups (not one submission each), and when the iteration
    ends nothing is in flight and every buffer is free."""
    expected = pattern(1 << 20)
    total = 600

    async def main() -> None:
        fd = os.open(data_path, os.O_RDONLY)
        drv = current_driver()
        calls, restore = count_submissions(drv)
        try:
            batch = xaio.Batch()
            where: dict[int, tuple[bytearray, int]] = {}
            pool = [bytearray(4096) for _ in range(64)]

            def add(buf: bytearray) -> None:
                off = (len(batch) * 7919) % 255 * 4096 + len(batch) % 7
                where[batch.preadinto(fd, buf, off)] = (buf, off)

            for buf in pool:
                add(buf)
            seen = []
            async with batch.as_completed() as landed:
                async for i, result in landed:
                    buf, off = where.pop(i)
                    assert result == 4096
                    assert bytes(buf) == expected[off : off + 4096]
                    seen.append(i)
                    if len(batch) < total:
                        add(buf)
            assert sorted(seen) == list(range(total)) and len(batch) == total
            assert not where
            assert drv._inflight == 0
            assert all(resizable(b) for b in pool)
            assert sum(n for n, _, _ in calls) == total, calls
            assert sum(over for _, over, _ in calls) <= total // 4, calls
            with pytest.raises(RuntimeError, match="single-use"):
                batch.preadinto(fd, pool[0], 0)
            assert resizable(pool[0])
        finally:
            restore()
            os.close(fd)

    run(lib, main)


def test_as_completed_wakes_once_per_reaped_group(
    lib: str, engine_name: str, data_path: Path
) -> None:
    """The iterating task is woken at most once per engine reap that
    delivered something (never once per request)."""
    from xaio._async import _batch

    async def main() -> None:
        fd = os.open(data_path, os.O_RDONLY | os.O_DIRECT)
        drv = current_driver()
        reaps = 0
        reap = drv.engine.reap

        def counting_reap(*args: Any, **kw: Any) -> int:
            nonlocal reaps
            n = reap(*args, **kw)
            reaps += n > 0
            return n

        parks = 0
        wait = _batch._Flight.wait

        async def counting_wait(self: Any, wait_all: bool) -> None:
            nonlocal parks
            parks += 1
            await wait(self, wait_all)

        drv.engine.reap = counting_reap  # type: ignore[method-assign]
        _batch._Flight.wait = counting_wait  # type: ignore[method-assign]
        try:
            batch = xaio.Batch()
            bufs = [xaio.aligned_buffer(4096) for _ in range(128)]
            for i, buf in enumerate(bufs):
                batch.preadinto(fd, buf, i * 8192)
            got = [i async for i, _ in batch.as_completed()]
        finally:
            drv.engine.reap = reap  # type: ignore[method-assign]
            _batch._Flight.wait = wait  # type: ignore[method-assign]
            os.close(fd)
        assert sorted(got) == list(range(128))
        assert parks <= reaps + 1, (parks, reaps)

    try:
        run(lib, main)
    except OSError as e:  # pragma: no cover - a file system without O_DIRECT
        pytest.skip(f"O_DIRECT not supported here: {e}")


def test_as_completed_streamed_failures_fail_only_themselves(
    lib: str, engine_name: str, data_path: Path
) -> None:
    """Requests added while iterating get their own errno, as os gives it,
    and the others their bytes."""
    ro = os.open(data_path, os.O_RDONLY)
    wo = os.open(data_path, os.O_WRONLY)
    r, w = os.pipe()

    async def main() -> dict[int, Any]:
        batch = xaio.Batch()
        batch.preadinto(ro, bytearray(8), 0)
        got: dict[int, Any] = {}
        async with batch.as_completed() as landed:
            async for i, result in landed:
                got[i] = result
                if i == 0:
                    batch.preadinto(r, bytearray(4), 0)  # 1: ESPIPE
                    batch.pwrite(ro, b"x", 0)  # 2: EBADF
                    batch.preadinto(wo, bytearray(4), 0)  # 3: EBADF
                    batch.preadinto(ro, bytearray(5), 4096)  # 4: 5 bytes
                    batch.preadinto(ro, bytearray(0), 0)  # 5: zero length
        return got

    try:
        got = run(lib, main)
    finally:
        for fd in (ro, wo, r, w):
            os.close(fd)
    assert sorted(got) == list(range(6))
    assert got[0] == 8 and got[4] == 5 and got[5] == 0
    errors = [got[i] for i in (1, 2, 3)]
    assert all(isinstance(e, OSError) for e in errors), errors
    assert [e.errno for e in errors] == [errno.ESPIPE, errno.EBADF, errno.EBADF]


async def _cancel_stream_in_flight(fd: int, limit: int) -> tuple[list[bytearray], bool, int]:
    """Stream cold 64 KiB reads (a new one per result) and cancel the
    iteration from outside after *limit* results; return the buffers,
    whether the iteration was cancelled, and how many results it saw."""
    drop_cached(fd)
    bufs = [bytearray(65536) for _ in range(32)]
    batch = xaio.Batch()
    slot: dict[int, bytearray] = {}
    for i, buf in enumerate(bufs):
        slot[batch.preadinto(fd, buf, (i * 37 % 256) * 65536)] = buf
    seen = 0
    cancelled = True
    with anyio.CancelScope() as scope:
        async with batch.as_completed() as landed:
            async for i, _result in landed:
                seen += 1
                if seen == limit:
                    scope.cancel()  # delivered at the iteration's next wait
                buf = slot.pop(i)
                slot[batch.preadinto(fd, buf, (len(batch) * 37 % 256) * 65536)] = buf
        cancelled = False
    return bufs, cancelled, seen


def test_as_completed_cancelled_while_streaming(lib: str, engine_name: str, tmp_path: Path) -> None:
    """Cancelling an iteration that keeps adding requests cancels every
    request not yet landed (those queued for the next submission too) and
    lets the cancellation through only once each has completed."""
    _, fd = _cold_file(tmp_path)

    async def main() -> None:
        for limit in (1, 5, 40):
            bufs, cancelled, seen = await _cancel_stream_in_flight(fd, limit)
            assert cancelled and seen >= limit
            assert current_driver()._inflight == 0
            assert all(resizable(b) for b in bufs)

    try:
        run(lib, main)
    finally:
        os.close(fd)


def test_as_completed_cancelled_while_results_keep_landing(
    lib: str, engine_name: str, tmp_path: Path
) -> None:
    """An iteration over page-cached reads, adding a read per result, so that
    results are there at every wait: its scope's cancellation still ends it
    (anyio on asyncio cancels only a task that is not about to resume, so the
    iteration must also yield at plain checkpoints)."""
    path = tmp_path / "cached.bin"
    path.write_bytes(pattern(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    bound = 1_000_000  # far beyond one time slice of results

    async def main() -> None:
        bufs = [bytearray(4096) for _ in range(32)]
        batch = xaio.Batch()
        slot = {batch.preadinto(fd, buf, i * 4096): buf for i, buf in enumerate(bufs)}
        seen = 0
        with anyio.CancelScope() as scope:
            async with batch.as_completed() as landed:
                async for i, result in landed:
                    assert result == 4096
                    seen += 1
                    if seen == 1:
                        scope.cancel()
                    if seen > bound:
                        break
                    buf = slot.pop(i)
                    slot[batch.preadinto(fd, buf, seen % 256 * 4096)] = buf
        assert scope.cancelled_caught
        assert seen <= bound, "the cancellation never reached the iteration"
        assert current_driver()._inflight == 0
        assert all(resizable(b) for b in bufs)

    try:
        run(lib, main)
    finally:
        os.close(fd)


def test_a_batch_asks_each_fds_kind_once(
    lib: str, direct_fd: int, data_fd: int, kind_checks: list[int]
) -> None:
    asked = kind_checks
    want = pattern(64 * 4096)

    async def main() -> None:
        bufs = [xaio.aligned_buffer(4096) for _ in range(64)]
        batch = xaio.Batch()
        for i, buf in enumerate(bufs):
            batch.preadinto(direct_fd if i % 2 else data_fd, buf, i * 4096)
        assert await batch.run() == [4096] * 64
        assert b"".join(bytes(b) for b in bufs) == want
        assert sorted(asked) == sorted([direct_fd, data_fd])  # once per fd, not per request

    run(lib, main)


def test_each_buffer_kind_goes_through_the_port(
    lib: str, engine_name: str, data_path: Path
) -> None:
    """A read into a writable buffer of any kind (bytearray, mmap, a
    memoryview slice, aligned_buffer, array) goes through the engine's
    batch port when it has one -- in run() and in a refilled
    as_completed() -- and through Engine.submit otherwise; an empty
    buffer and a pipe never reach either (answered here: 0, ESPIPE); a
    read-only or non-contiguous buffer is refused when it is added.  Every
    buffer is free afterwards."""
    expected = pattern(1 << 20)

    def buffers() -> list[Any]:
        return [
            bytearray(4096),
            mmap.mmap(-1, 4096),
            memoryview(bytearray(3 * 4096))[4096 : 2 * 4096],
            xaio.aligned_buffer(4096),
            array.array("i", bytes(4096)),
        ]

    def content(buf: Any) -> bytes:
        with memoryview(buf) as view:
            return view.tobytes()

    def free(buf: Any) -> bool:
        if isinstance(buf, mmap.mmap):
            buf.close()  # BufferError while an export is held
            return True
        if isinstance(buf, array.array):
            try:
                buf.append(0)
            except BufferError:
                return False
            return True
        if isinstance(buf, bytearray):
            return resizable(buf)
        return True

    async def main() -> None:
        fd = os.open(data_path, os.O_RDONLY)
        r, w = os.pipe()
        drv = current_driver()
        probe = drv.engine.batch_port(lambda slots, results: None)
        if probe is not None:
            probe.close()
        calls, restore = count_submissions(drv)
        try:
            batch = xaio.Batch()
            with pytest.raises(TypeError):
                batch.preadinto(fd, b"read-only", 0)
            with pytest.raises(ValueError):
                batch.preadinto(fd, memoryview(bytearray(8))[::2], 0)
            bufs = buffers()
            for k, buf in enumerate(bufs):
                batch.preadinto(fd, buf, k * 4096)
            batch.preadinto(fd, bytearray(0), 0)
            batch.preadinto(r, bytearray(4), 0)
            results = await batch.run()
            assert results[:6] == [4096] * 5 + [0]
            assert isinstance(results[6], OSError) and results[6].errno == errno.ESPIPE
            assert calls == [(5, True, probe is not None)]
            for k, buf in enumerate(bufs):
                assert content(buf) == expected[k * 4096 : (k + 1) * 4096]
            assert [free(b) for b in bufs] == [True] * 5

            calls.clear()
            bufs = buffers()
            batch = xaio.Batch()
            batch.preadinto(fd, bufs[0], 0)
            got = []
            async with batch.as_completed() as landed:
                async for i, result in landed:
                    assert result == 4096
                    got.append(i)
                    if i + 1 < len(bufs):
                        batch.preadinto(fd, bufs[i + 1], (i + 1) * 4096)
            assert got == list(range(5))
            assert [(n, port) for n, _, port in calls] == [(1, probe is not None)] * 5
            for k, buf in enumerate(bufs):
                assert content(buf) == expected[k * 4096 : (k + 1) * 4096]
            assert [free(b) for b in bufs] == [True] * 5
            assert drv._inflight == 0
            # a bare async for left early: its requests land on their own,
            # and the engine keeps no port once none is in flight
            batch = xaio.Batch()
            for k in range(8):
                batch.preadinto(fd, bytearray(4096), k * 4096)
            async for _i, _result in batch.as_completed():
                break
            await wait_until_async(lambda: drv._inflight == 0, "the requests left to land")
            assert not getattr(drv.engine, "_ports", {})
        finally:
            restore()
            for f in (fd, r, w):
                os.close(f)

    run(lib, main)


def test_a_batch_larger_than_the_queue(lib: str, engine_name: str, data_path: Path) -> None:
    """A batch of more requests than an engine's submission queue holds
    (1,500: io_uring's default SQ has 256 entries) reads every block."""
    expected = pattern(1 << 20)

    async def main() -> None:
        fd = os.open(data_path, os.O_RDONLY)
        try:
            bufs = [bytearray(512) for _ in range(1500)]
            offsets = [(i * 7919) % 2040 * 512 for i in range(1500)]
            batch = xaio.Batch()
            for buf, off in zip(bufs, offsets, strict=True):
                batch.preadinto(fd, buf, off)
            assert await batch.run() == [512] * 1500
            for buf, off in zip(bufs, offsets, strict=True):
                assert buf == expected[off : off + 512]
            assert all(resizable(b) for b in bufs)
        finally:
            os.close(fd)

    run(lib, main)
