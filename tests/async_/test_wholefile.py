"""Whole-file reads: ``xaio.Path.read_bytes`` / ``read_text`` and ``read()``
of a file just opened give the builtin's bytes, in one request per file where
the engine can, and leave no fd and no registered file slot open after errors,
a file that changes while it is read, and cancellations -- on every event-loop
library and every engine."""

from __future__ import annotations

import asyncio
import os
import pathlib
import random
import re
import threading
import time
from typing import Any

import anyio
import pytest

import xaio
from tests.support import (
    drop_cached,
    open_fds,
    pattern,
    run,
    skip_unavailable,
    threads_started_since,
    wait_until_async,
)
from xaio._async._current import current_driver

pytestmark = pytest.mark.timeout(240)

#: Around the chain's buffer sizes (16 KiB growing by powers of two to 1 MiB),
#: up and down again, so that files outgrow the buffer and fit it again.
SIZES = [0, 1, 4095, 16383, 16384, 16385, 70_000, 300_000, 1_500_000, 16_384, 5, 0]


def ring_slots_open() -> list[str]:
    """The registered file slots in use of the running driver's path ring
    (its ``/proc/self/fdinfo`` lists them); empty without one."""
    pring = current_driver()._pathring
    if pring is None:
        return []
    with open(f"/proc/self/fdinfo/{pring.ring.fd}") as f:
        return [ln.strip() for ln in f if re.match(r"\s+\d+: ", ln)]


async def wait_nothing_open(fds: set[str]) -> None:
    """Wait until the process has exactly *fds* open and the driver's path
    ring no slot (a close of a slot completes after the read returned)."""
    try:
        await wait_until_async(
            lambda: open_fds() == fds and not ring_slots_open(),
            "every fd and registered file slot of the reads to be closed",
        )
    except AssertionError as e:
        now = open_fds()
        raise AssertionError(
            f"{e}: fds opened {sorted(now - fds)}, closed {sorted(fds - now)}, "
            f"slots in use {ring_slots_open()}"
        ) from None


def engine_requests(stats: dict[str, Any]) -> int:
    """The requests an engine was given, from its ``statistics()`` (a routed
    engine's are its parts' ``submitted``)."""
    return int(stats.get("submitted", 0)) + sum(
        engine_requests(v) for v in stats.values() if isinstance(v, dict)
    )


async def baseline() -> set[str]:
    """The fds open once the driver, its engine and its path ring exist."""
    await xaio.Path("/proc/self/cmdline").read_bytes()
    async with xaio.open("/proc/self/cmdline", "rb") as f:
        await f.read()
    return open_fds()


def test_whole_files_as_builtin(lib: str, engine_name: str, tmp_path: pathlib.Path) -> None:
    paths = []
    for i, size in enumerate(SIZES):
        p = tmp_path / f"f{i}"
        p.write_bytes(pattern(size, seed=i))
        paths.append(p)
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes("a\r\nb\rc\n\u00e9".encode())
    # /proc files: regular, of size 0, read in short pieces
    paths += [pathlib.Path("/proc/self/cmdline"), pathlib.Path("/proc/self/environ")]
    expected = [p.read_bytes() for p in paths]

    async def main() -> list[Any]:
        fds = await baseline()
        got: list[Any] = []
        for p in paths:
            got.append(await xaio.Path(p).read_bytes())
            async with xaio.open(p, "rb") as f:
                got.append(await f.read())
        got.append(await xaio.Path(crlf).read_text(encoding="utf-8"))
        got.append(await xaio.Path(crlf).read_text(encoding="ascii", errors="replace"))
        await wait_nothing_open(fds)
        return got

    got = run(lib, main)
    want = [x for e in expected for x in (e, e)]
    want += [crlf.read_text(encoding="utf-8"), crlf.read_text(encoding="ascii", errors="replace")]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"read {i}: {len(g)} bytes, expected {len(w)}"


def test_errors_leave_nothing_open(lib: str, engine_name: str, tmp_path: pathlib.Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "loop").symlink_to("loop")
    cases = ["missing", "d", "f/under", "loop", "d/../missing"]

    def outcome(e: BaseException) -> Any:
        return (type(e), getattr(e, "errno", None), getattr(e, "filename", None))

    expected = []
    for name in cases:
        with pytest.raises(OSError) as ei:
            (tmp_path / name).read_bytes()
        expected.append(outcome(ei.value))
        with pytest.raises(OSError) as ei, open(tmp_path / name, "rb") as f:
            f.read()
        expected.append(outcome(ei.value))

    async def main() -> list[Any]:
        fds = await baseline()
        got = []
        for _ in range(3):  # (the later rounds find the paths in the dentry cache)
            for name in cases:
                try:
                    await xaio.Path(tmp_path / name).read_bytes()
                except OSError as e:
                    got.append(outcome(e))
                try:
                    async with xaio.open(tmp_path / name, "rb") as f:
                        await f.read()
                except OSError as e:
                    got.append(outcome(e))
        await wait_nothing_open(fds)
        return got

    assert run(lib, main) == expected * 3


def test_file_changing_while_read(lib: str, engine_name: str, tmp_path: pathlib.Path) -> None:
    """A writer grows and shrinks the file while it is read whole: as with
    pathlib, each result is a prefix of the one pattern the file always
    holds, except for zeros where the read raced a truncation or an
    extension (the kernel lets a read see those; the builtin's does too)."""
    data = pattern(1 << 20, seed=7)
    p = tmp_path / "f"
    p.write_bytes(data[:100_000])
    stop = threading.Event()
    # (the writer's fd is open before the reads' baseline of open fds is taken)
    fd = os.open(p, os.O_WRONLY)

    def churn() -> None:
        rnd = random.Random(1)
        size = 100_000
        while not stop.is_set():
            new = rnd.choice([0, 1, 4096, 16_385, 70_000, 300_000, 1 << 20])
            if new > size:
                os.pwrite(fd, data[size:new], size)
            else:
                os.ftruncate(fd, new)
            size = new

    async def main() -> list[bytes]:
        fds = await baseline()
        out: list[bytes] = []
        deadline = time.monotonic() + 20
        # (a pause between reads lets the writer thread have the GIL)
        while len(out) < 100 or (len({len(r) for r in out}) < 4 and time.monotonic() < deadline):
            out.append(await xaio.Path(p).read_bytes())
            async with xaio.open(p, "rb") as f:
                out.append(await f.read())
            await anyio.sleep(0.001)
        await wait_nothing_open(fds)
        return out

    t = threading.Thread(target=churn)
    t.start()
    try:
        results = run(lib, main)
    finally:
        stop.set()
        t.join()
        os.close(fd)
    for r in results:
        if r != data[: len(r)]:
            wrong = [j for j in range(len(r)) if r[j] != data[j] and r[j] != 0]
            assert not wrong, f"{len(r)} bytes, wrong from {wrong[0]}"
    assert len({len(r) for r in results}) > 1, "the file never changed under the reads"


def test_cancelled_reads_leave_nothing_open(
    lib: str, engine_name: str, tmp_path: pathlib.Path
) -> None:
    """Tasks reading whole files (and missing ones) cancelled at every
    moment: afterwards no fd and no registered file slot is open, and the
    reads that finished returned the right bytes."""
    files = []
    for i, size in enumerate([1, 16_384, 70_000, 300_000] * 4):
        p = tmp_path / f"f{i}"
        p.write_bytes(pattern(size, seed=i))
        files.append((p, pattern(size, seed=i)))
    files.append((tmp_path / "missing", None))

    async def reader(k: int) -> None:
        for j in range(len(files)):
            p, want = files[(k + j) % len(files)]
            try:
                if j % 2:
                    got = await xaio.Path(p).read_bytes()
                else:
                    async with xaio.open(p, "rb") as f:
                        got = await f.read()
            except FileNotFoundError:
                assert want is None
                continue
            assert got == want

    async def main() -> int:
        fds = await baseline()
        rnd = random.Random(3)
        cancelled = 0
        for _ in range(40):
            with anyio.move_on_after(rnd.choice([0, 0.0001, 0.0005, 0.002, 0.01])) as scope:
                async with anyio.create_task_group() as tg:
                    for k in range(8):
                        tg.start_soon(reader, k)
            cancelled += scope.cancelled_caught
        await wait_nothing_open(fds)
        return cancelled

    assert run(lib, main) > 0


def test_one_submission_per_file_on_uring(lib: str, tmp_path: pathlib.Path) -> None:
    """On io_uring a whole file not in the page cache is one submission of
    the path ring and no request of the engine; a file in the page cache,
    read whole or opened and read, needs neither."""
    skip_unavailable("uring")
    p = tmp_path / "f"
    p.write_bytes(pattern(50_000))
    p.read_bytes()  # in the page cache

    async def main() -> tuple[int, int, int, int]:
        await baseline()
        drv = current_driver()
        pring = drv._pathring
        if pring is None or pring.wholefile is None:
            pytest.skip("no direct descriptors here")
        submitted = drv.engine.statistics()["submitted"]
        enters = pring.ring.statistics()["enter"]
        for _ in range(10):
            assert await xaio.Path(p).read_bytes() == p.read_bytes()
        for _ in range(10):
            async with xaio.open(p, "rb") as f:
                assert await f.read() == p.read_bytes()
        cached_enters = pring.ring.statistics()["enter"] - enters
        enters = pring.ring.statistics()["enter"]
        for _ in range(10):
            drop_cached(p)
            assert await xaio.Path(p).read_bytes() == pattern(50_000)
        cold_enters = pring.ring.statistics()["enter"] - enters
        engine = drv.engine.statistics()["submitted"] - submitted
        return cached_enters, cold_enters, engine, pring.slots_in_use()

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XAIO_ENGINE", "uring")
        assert run(lib, main) == (0, 10, 0, 0)


def test_opens_and_chains_of_one_iteration_share_an_enter(tmp_path: pathlib.Path) -> None:
    """asyncio, io_uring: the opens and whole-file chains that go to the
    kernel's workers (a creating open, a file whose pages are not cached)
    and are made in one loop iteration reach the kernel in one
    io_uring_enter, not one each (a task the fairness slice parks may make
    it two)."""
    skip_unavailable("uring")
    files = []
    for i in range(8):
        p = tmp_path / f"f{i}"
        p.write_bytes(pattern(20_000, seed=i))
        files.append(p)

    async def create(p: pathlib.Path) -> None:
        async with xaio.open(p, "wb") as f:
            await f.write(b"x")

    async def main() -> tuple[int, int]:
        await baseline()
        pring = current_driver()._pathring
        if pring is None or pring.wholefile is None:
            pytest.skip("no direct descriptors here")
        submits = 0  # submit calls that handed SQEs over (counted around the real one)
        real = pring.ring.submit

        def counting() -> int:
            nonlocal submits
            n = real()
            submits += n > 0
            return n

        pring.ring.submit = counting  # type: ignore[method-assign]
        drv = current_driver()
        # (a fresh streak: the slice parks no task before 16 checkpoints,
        # two per task here)
        drv._streak = 0
        await asyncio.gather(*(create(tmp_path / f"new{i}") for i in range(8)))
        creating, submits = submits, 0
        for p in files:
            drop_cached(p)
        drv._streak = 0
        got = await asyncio.gather(*(xaio.Path(p).read_bytes() for p in files))
        assert got == [pattern(20_000, seed=i) for i in range(8)]
        return creating, submits

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XAIO_ENGINE", "uring")
        creating, reading = asyncio.run(main())
    # one each would be 8; the fairness slice may leave a task for the next
    # iteration's submit
    assert creating <= 2 and reading <= 2, (creating, reading)


def test_cached_files_are_read_in_the_loop_thread(
    lib: str, engine_name: str, tmp_path: pathlib.Path
) -> None:
    """Files whose path and pages are cached are opened and read whole in
    the loop's thread on every engine: nothing is handed to a worker thread
    (counted around the driver's real hand-off) and no thread starts, no
    engine request is made and no path ring either."""
    files = []
    for i, size in enumerate([1, 4096, 16_384, 70_000]):
        p = tmp_path / f"f{i}"
        p.write_bytes(pattern(size, seed=i))
        p.read_bytes()
        files.append(p)

    async def main() -> tuple[int, list[threading.Thread], int, bool]:
        drv = current_driver()
        handed = 0
        real = drv.run_in_thread

        async def counting(fn: Any, *args: Any) -> Any:
            nonlocal handed
            handed += 1
            return await real(fn, *args)

        drv.run_in_thread = counting  # type: ignore[method-assign]
        before = set(threading.enumerate())
        submitted = engine_requests(drv.engine.statistics())
        try:
            for _ in range(3):
                for i, p in enumerate(files):
                    assert await xaio.Path(p).read_bytes() == p.read_bytes(), i
                    async with xaio.open(p, "rb") as f:
                        assert await f.read() == p.read_bytes(), i
        finally:
            del drv.run_in_thread
        return (
            handed,
            threads_started_since(before),
            engine_requests(drv.engine.statistics()) - submitted,
            drv._pathring is None,
        )

    assert run(lib, main) == (0, [], 0, True)


def test_reads_share_the_loop(lib: str, engine_name: str, tmp_path: pathlib.Path) -> None:
    """Whole-file reads that complete at once (page-cached) still let the
    loop's other tasks run while many of them go on."""
    p = tmp_path / "f"
    p.write_bytes(pattern(16_384))
    p.read_bytes()
    todo = [p] * 3000

    async def main() -> int:
        await baseline()
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await anyio.sleep(0)

        async def reader() -> None:
            while todo:
                todo.pop()
                await xaio.Path(p).read_bytes()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            async with anyio.create_task_group() as readers:
                for _ in range(16):
                    readers.start_soon(reader)
            done = True
        return ticks

    assert run(lib, main) >= 5


def test_cold_files_are_not_read_from_the_loop(
    lib: str, engine_name: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files read whole after their pages were dropped: after the first
    miss, the loop's thread asks the page cache (cachestat) before trying a
    file, instead of starting every file's readahead itself with a
    RWF_NOWAIT read (counted here around the real call)."""
    from xaio._async import _driver

    if not _driver.CacheStat().works:
        pytest.skip("no cachestat(2) here")
    files = []
    for i in range(30):
        p = tmp_path / f"f{i}"
        p.write_bytes(pattern(20_000, seed=i))
        files.append(p)
    os.sync()
    attempts = 0
    real = _driver._nowait_preadv

    def counting(*args: Any) -> int:
        nonlocal attempts
        attempts += 1
        return real(*args)

    monkeypatch.setattr(_driver, "_nowait_preadv", counting)

    async def main() -> None:
        await baseline()
        opened = [await xaio.open(p, "rb") for p in files]  # fds all different
        for f in opened:
            drop_cached(f.fileno())
        for i, f in enumerate(opened):
            assert await f.read() == pattern(20_000, seed=i)
            await f.close()

    run(lib, main)
    assert attempts <= 3


def test_files_beyond_the_largest_buffer_go_to_a_thread(lib: str, tmp_path: pathlib.Path) -> None:
    """A file larger than a chain's largest buffer is read twice (the chain
    finds it larger, a worker reads it whole); the next ones skip the chain."""
    skip_unavailable("uring")
    p = tmp_path / "big"
    p.write_bytes(pattern(3 << 20))

    async def main() -> int:
        await baseline()
        pring = current_driver()._pathring
        if pring is None or pring.wholefile is None:
            pytest.skip("no direct descriptors here")
        for _ in range(3):  # the buffers grow to their largest
            assert await xaio.Path(p).read_bytes() == pattern(3 << 20)
        enters = pring.ring.statistics()["enter"]
        assert await xaio.Path(p).read_bytes() == pattern(3 << 20)
        return int(pring.ring.statistics()["enter"] - enters)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XAIO_ENGINE", "uring")
        assert run(lib, main) == 0


def test_an_open_not_in_the_dentry_cache_looks_up_once(
    lib: str, engine_name: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path the dentry cache cannot serve (a name never looked up) costs
    the loop's thread one cached lookup (the O_PATH probe), not a second
    one for the open, which would fail as the probe did (counted around
    the real openat2); the open then goes the other way and fails as the
    builtin's."""
    from xaio import _syscall

    names = [f"never-looked-up-{i}-{random.getrandbits(64):x}" for i in range(5)]
    calls = 0
    real = _syscall.openat2

    def counting(*args: Any) -> int:
        nonlocal calls
        calls += 1
        return real(*args)

    async def main() -> None:
        nonlocal calls
        await baseline()
        monkeypatch.setattr(_syscall, "openat2", counting)
        for i, name in enumerate(names):
            calls = 0
            with pytest.raises(FileNotFoundError):
                async with xaio.open(tmp_path / name, "rb"):
                    pass
            assert calls <= 1, (i, calls)
            (tmp_path / name).write_bytes(b"x")  # (from here on in the dentry cache)

    run(lib, main)


def test_requests_for_the_kernels_workers_pass_one_checkpoint(
    lib: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """io_uring: an open whose path is not in the dentry cache and a
    whole-file chain go to the kernel's workers after the one checkpoint
    that precedes the attempt in the loop's thread (counted around the
    driver's real one): a second, before the request, would only let the
    fairness slice park a task whose request the workers could be running."""
    skip_unavailable("uring")
    names = [f"uncached-{i}-{random.getrandbits(64):x}" for i in range(4)]
    monkeypatch.setenv("XAIO_ENGINE", "uring")

    async def main() -> list[int]:
        await baseline()
        drv = current_driver()
        if drv._pathring is None:
            pytest.skip("no path ring here")
        checkpoints = 0
        real = drv._fair

        async def counting() -> None:
            nonlocal checkpoints
            checkpoints += 1
            await real()

        drv._fair = counting  # type: ignore[method-assign]
        counts = []
        try:
            for name in names:  # (never looked up: the opens go to the workers)
                checkpoints = 0
                with pytest.raises(FileNotFoundError):
                    await xaio.open(tmp_path / name, "rb")
                counts.append(checkpoints)
                checkpoints = 0
                with pytest.raises(FileNotFoundError):
                    await xaio.Path(tmp_path / (name + "-p")).read_bytes()
                counts.append(checkpoints)
        finally:
            del drv._fair
        return counts

    assert run(lib, main) == [1] * 8
