"""How fast can *any* Python asyncio layer read O_DIRECT blocks here?

A floor for ``bench_async.py``'s O_DIRECT column: 64 tasks read random 4 KiB
blocks through the least an asyncio layer over io_uring can do in Python --
one :class:`xaio.uring.UringBatch` (a prepared 64-byte SQE image per task,
of which only the offset changes; no registered buffers, as the engine's
requests), its eventfd in ``loop.add_reader``, one Future per read, one
``io_uring_enter`` per loop iteration, every completion delivered in the
reader callback.  No argument checks, no page-cache attempt, no fairness, no
cancellation, no engine protocol: not a usable library, a measuring stick.

It alternates, round after round, with ``await xaio.preadinto`` (the default
engine, 64 tasks, same file; under asyncio, and under trio when it is
installed), with ``xaio.Batch`` (one task: 64 reads submitted and awaited as
one batch, round after round; asyncio and trio), with one iteration of
``xaio.Batch.as_completed`` that adds a read for each result (the README's
data-loader shape: 64 reads in flight all the time; asyncio and trio), and
with fio's io_uring engine at iodepth 64, run between every two contenders:
each contender's ratio is to the mean of the fio runs just before and just
after it.  Once per round fio also runs at iodepth 64 in batches
(``--iodepth_batch_submit=64 --iodepth_batch_complete_min=64``, the access
pattern of a batch awaited as one).  Three more floors measure the bare
mechanism under each shape, all on prepared SQE images (``UringBatch``):
slots driven with no event loop at all (each group of completions given new
offsets and resubmitted at once), slots whose ring's eventfd wakes one task
that resubmits every completion it finds (the floor of a refilled
``as_completed``), and 64 slots submitted together and waited for together
(the floor of ``Batch.run``); the last two on asyncio and trio.  It prints
ops/s, the CPU time of the loop thread per read, the median of the
per-round ratios and every round's numbers::

    python benchmarks/floor_async.py [--rounds 5] [--seconds 2] [--size-mb 512] [--dir DIR]
                                     [--only TEXT]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import xaio
from _common import fio_iops, have_fio, make_file
from xaio.uring import UringBatch

BLOCK = 4096
TASKS = 64
#: fio submitting 64 reads at once and waiting for all 64 before the next
#: submission: the access pattern of a batch awaited as one
FIO_BATCH = "fio io_uring, batches of 64"

Reader = Callable[[memoryview, int], Awaitable[int]]


class _Readers:
    """``TASKS`` workers reading random blocks through *read* and counting;
    the async library in use starts them and sleeps through :meth:`measure`."""

    def __init__(self, read: Reader, nblocks: int) -> None:
        self.read = read
        self.nblocks = nblocks
        self.done = 0
        self.stop = False

    async def worker(self, w: int) -> None:
        buf = xaio.aligned_buffer(BLOCK)
        rnd = random.Random(w)
        while not self.stop:
            if await self.read(buf, rnd.randrange(self.nblocks) * BLOCK) != BLOCK:
                raise OSError("short read")
            self.done += 1

    async def measure(
        self, sleep: Callable[[float], Awaitable[None]], seconds: float
    ) -> tuple[float, float]:
        """Warm up, measure for *seconds*, stop the workers; returns (reads/s,
        CPU us per read of this thread)."""
        await sleep(0.2)
        d0, t0, c0 = self.done, time.perf_counter(), time.thread_time()
        await sleep(seconds)
        d1, t1, c1 = self.done, time.perf_counter(), time.thread_time()
        self.stop = True
        n = d1 - d0
        return n / (t1 - t0), (c1 - c0) / n * 1e6


async def _drive(read: Reader, nblocks: int, seconds: float) -> tuple[float, float]:
    """``TASKS`` asyncio tasks reading random blocks; returns (reads/s, CPU us per read)."""
    readers = _Readers(read, nblocks)
    tasks = [asyncio.ensure_future(readers.worker(w)) for w in range(TASKS)]
    result = await readers.measure(asyncio.sleep, seconds)
    await asyncio.gather(*tasks)
    return result


def floor_run(path: Path, seconds: float) -> tuple[float, float]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    nblocks = os.fstat(fd).st_size // BLOCK

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        batch = UringBatch(TASKS, fixed_buffers=False)
        ring = batch.ring
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ring.register_eventfd(efd)
        waiters: list[asyncio.Future[int] | None] = [None] * TASKS
        slots: dict[int, int] = {}  # id(buffer) -> its slot, prepared on first use
        pending: list[int] = []
        flush_pending = False

        def flush() -> None:
            nonlocal flush_pending
            flush_pending = False
            batch.submit(pending)
            pending.clear()

        def on_readable() -> None:
            try:
                os.read(efd, 8)
            except BlockingIOError:
                pass
            n = batch.reap(0)
            done_slots, done_res = batch.done_slots, batch.done_res
            for i in range(n):
                fut = waiters[done_slots[i]]
                assert fut is not None
                fut.set_result(done_res[i])

        async def read(buf: memoryview, offset: int) -> int:
            nonlocal flush_pending
            slot = slots.get(id(buf))
            if slot is None:
                slot = slots[id(buf)] = len(slots)
                batch.prep_pread(slot, fd, buf, offset)
            else:
                batch.set_offset(slot, offset)
            pending.append(slot)
            fut = waiters[slot] = loop.create_future()
            if not flush_pending:
                flush_pending = True
                loop.call_soon(flush)
            return await fut

        loop.add_reader(efd, on_readable)
        try:
            return await _drive(read, nblocks, seconds)
        finally:
            loop.remove_reader(efd)
            batch.close()
            os.close(efd)

    try:
        return asyncio.run(main())
    finally:
        os.close(fd)


def _new_offsets(batch: UringBatch, got: int, rnd: random.Random, nblocks: int) -> list[int]:
    """The slots of the *got* reads *batch* just reaped, each checked for a
    whole block and given a new random offset, ready to resubmit."""
    slots = batch.done_slots[:got]
    for i in range(got):
        if batch.done_res[i] != BLOCK:
            raise OSError(f"short or failed read: {batch.done_res[i]}")
        batch.set_offset(slots[i], rnd.randrange(nblocks) * BLOCK)
    return slots


def ring_loop_run(path: Path, seconds: float) -> tuple[float, float]:
    """The least Python can do with io_uring at all, without an event loop:
    a :class:`xaio.uring.UringBatch` (prepared SQE images) with ``TASKS``
    reads in flight, each completed read given a new offset and resubmitted
    with the others reaped together (one ``io_uring_enter`` to submit, one
    to wait when nothing has completed)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    nblocks = os.fstat(fd).st_size // BLOCK
    batch = UringBatch(TASKS, fixed_buffers=False)
    rnd = random.Random(0)
    bufs = [xaio.aligned_buffer(BLOCK) for _ in range(TASKS)]
    try:
        for i, buf in enumerate(bufs):
            batch.prep_pread(i, fd, buf, rnd.randrange(nblocks) * BLOCK)
        batch.submit(range(TASKS))
        n, t0, c0 = 0, 0.0, 0.0
        start = time.perf_counter() + 0.2
        while True:
            got = batch.reap(1)
            now = time.perf_counter()
            if not t0 and now >= start:
                n, t0, c0 = 0, now, time.thread_time()
            elif t0 and now >= t0 + seconds:
                break
            slots = _new_offsets(batch, got, rnd, nblocks)
            n += got
            batch.submit(slots)
        return n / (now - t0), (time.thread_time() - c0) / n * 1e6
    finally:
        batch.close()
        os.close(fd)


class _RingWaiter:
    """A :class:`xaio.uring.UringBatch` of ``TASKS`` slots (prepared SQE
    images, no registered buffers: as the engine's requests) with an eventfd
    on its ring, and a wait until that eventfd is readable in asyncio (a
    persistent ``add_reader``) or trio (``wait_readable``): the bare
    wake-up path of an async layer."""

    def __init__(self, trio_mode: bool) -> None:
        self.batch = UringBatch(TASKS, fixed_buffers=False)
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.batch.ring.register_eventfd(self.efd)
        self.trio = trio_mode
        self.fut: asyncio.Future[None] | None = None
        if not trio_mode:
            asyncio.get_running_loop().add_reader(self.efd, self._ready)

    def _ready(self) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self) -> None:
        """Wait until the eventfd is readable, then reset it."""
        if self.trio:
            import trio

            await trio.lowlevel.wait_readable(self.efd)
        else:
            self.fut = asyncio.get_running_loop().create_future()
            await self.fut
        try:
            os.read(self.efd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if not self.trio:
            asyncio.get_running_loop().remove_reader(self.efd)
        self.batch.close()  # cancels the reads in flight and waits for them
        os.close(self.efd)


async def _ring_stream(
    fd: int, nblocks: int, seconds: float, trio_mode: bool
) -> tuple[float, float]:
    """One task keeping ``TASKS`` reads in flight on prepared SQE images: it
    waits for the eventfd, takes every completion there, gives each slot a
    new offset (``set_offset``) and resubmits them together (one submission
    per wake-up): the floor of a refilled ``as_completed``."""
    w = _RingWaiter(trio_mode)
    batch = w.batch
    rnd = random.Random(0)
    bufs = [xaio.aligned_buffer(BLOCK) for _ in range(TASKS)]
    try:
        for i, buf in enumerate(bufs):
            batch.prep_pread(i, fd, buf, rnd.randrange(nblocks) * BLOCK)
        batch.submit(range(TASKS))
        n, t0, c0 = 0, 0.0, 0.0
        start = time.perf_counter() + 0.2
        while True:
            await w.wait()
            got = batch.reap(0)
            now = time.perf_counter()
            if not t0 and now >= start:
                n, t0, c0 = 0, now, time.thread_time()
            elif t0 and now >= t0 + seconds:
                break
            slots = _new_offsets(batch, got, rnd, nblocks)
            n += got
            if got:
                batch.submit(slots)
        return n / (now - t0), (time.thread_time() - c0) / n * 1e6
    finally:
        w.close()


async def _ring_batches(
    fd: int, nblocks: int, seconds: float, trio_mode: bool
) -> tuple[float, float]:
    """One task reading ``TASKS`` blocks per round on prepared SQE images:
    give each slot a new offset, one submission, wait until all 64
    completed, repeat: the floor of ``Batch.run``."""
    w = _RingWaiter(trio_mode)
    batch = w.batch
    rnd = random.Random(0)
    bufs = [xaio.aligned_buffer(BLOCK) for _ in range(TASKS)]
    slots = range(TASKS)
    for i, buf in enumerate(bufs):
        batch.prep_pread(i, fd, buf, 0)

    async def one() -> None:
        for i in slots:
            batch.set_offset(i, rnd.randrange(nblocks) * BLOCK)
        batch.submit(slots)
        got = 0
        while True:
            n = batch.reap(0)
            res = batch.done_res
            for i in range(n):
                if res[i] != BLOCK:
                    raise OSError(f"short or failed read: {res[i]}")
            got += n
            if got == TASKS:
                return
            await w.wait()

    try:
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            await one()
        n, t0, c0 = 0, time.perf_counter(), time.thread_time()
        end = t0 + seconds
        while time.perf_counter() < end:
            await one()
            n += TASKS
        return n / (time.perf_counter() - t0), (time.thread_time() - c0) / n * 1e6
    finally:
        w.close()


def _ring_floor(
    body: Callable[..., Awaitable[tuple[float, float]]], trio_mode: bool
) -> Callable[[Path, float], tuple[float, float]]:
    """A contender running *body* on an O_DIRECT fd of the file, under
    asyncio or trio."""

    def contender(path: Path, seconds: float) -> tuple[float, float]:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        nblocks = os.fstat(fd).st_size // BLOCK
        try:
            if trio_mode:
                import trio

                return trio.run(body, fd, nblocks, seconds, True)
            return asyncio.run(body(fd, nblocks, seconds, False))
        finally:
            os.close(fd)

    return contender


def _xaio_reader(path: Path) -> tuple[int, int, Reader]:
    """The O_DIRECT fd of *path* (the caller closes it), its block count, and
    the read both xaio contenders run: ``xaio.preadinto``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)

    async def read(buf: memoryview, offset: int) -> int:
        return await xaio.preadinto(fd, buf, offset)

    return fd, os.fstat(fd).st_size // BLOCK, read


def xaio_run(path: Path, seconds: float) -> tuple[float, float]:
    fd, nblocks, read = _xaio_reader(path)
    try:
        return asyncio.run(_drive(read, nblocks, seconds))
    finally:
        os.close(fd)


def xaio_trio_run(path: Path, seconds: float) -> tuple[float, float]:
    """``xaio.preadinto`` under trio, 64 tasks (skipped without trio)."""
    import trio

    fd, nblocks, read = _xaio_reader(path)

    async def main() -> tuple[float, float]:
        readers = _Readers(read, nblocks)
        async with trio.open_nursery() as nursery:
            for w in range(TASKS):
                nursery.start_soon(readers.worker, w)
            return await readers.measure(trio.sleep, seconds)

    try:
        return trio.run(main)
    finally:
        os.close(fd)


async def _batches(fd: int, nblocks: int, seconds: float) -> tuple[float, float]:
    """One task reading ``TASKS`` random blocks per :class:`xaio.Batch`,
    batch after batch: warm up, then measure for *seconds*; returns
    (reads/s, CPU us per read of this thread)."""
    bufs = [xaio.aligned_buffer(BLOCK) for _ in range(TASKS)]
    rnd = random.Random(0)

    async def one() -> None:
        batch = xaio.Batch()
        for buf in bufs:
            batch.preadinto(fd, buf, rnd.randrange(nblocks) * BLOCK)
        if any(res != BLOCK for res in await batch.run()):
            raise OSError("short or failed read")

    end = time.perf_counter() + 0.2
    while time.perf_counter() < end:
        await one()
    n, t0, c0 = 0, time.perf_counter(), time.thread_time()
    end = t0 + seconds
    while time.perf_counter() < end:
        await one()
        n += TASKS
    t1, c1 = time.perf_counter(), time.thread_time()
    return n / (t1 - t0), (c1 - c0) / n * 1e6


def batch_run(path: Path, seconds: float) -> tuple[float, float]:
    """``xaio.Batch`` of 64 reads, awaited as one, under asyncio."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return asyncio.run(_batches(fd, os.fstat(fd).st_size // BLOCK, seconds))
    finally:
        os.close(fd)


def batch_trio_run(path: Path, seconds: float) -> tuple[float, float]:
    """``xaio.Batch`` of 64 reads, awaited as one, under trio."""
    import trio

    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return trio.run(_batches, fd, os.fstat(fd).st_size // BLOCK, seconds)
    finally:
        os.close(fd)


async def _stream(fd: int, nblocks: int, seconds: float) -> tuple[float, float]:
    """One task keeping ``TASKS`` random reads in flight through one
    iteration of :meth:`xaio.Batch.as_completed`, a new read added for each
    result (the README's shape); returns (reads/s, CPU us per read of this
    thread) over *seconds* after a warm-up."""
    rnd = random.Random(0)
    pool = xaio.BufferPool(BLOCK, TASKS, file=fd)
    batch = xaio.Batch()
    slot = {}
    for _ in range(TASKS):
        buf = pool.acquire()
        slot[batch.preadinto(fd, buf, rnd.randrange(nblocks) * BLOCK)] = buf
    start = time.perf_counter() + 0.2
    end = start + seconds
    n = 0
    c0 = t0 = 0.0
    async with batch.as_completed() as landed:
        async for i, result in landed:
            if result != BLOCK:
                raise OSError(f"short or failed read: {result!r}")
            buf = slot.pop(i)
            now = time.perf_counter()
            if now >= end:
                continue  # let the iteration drain
            if now >= start:
                if not n:
                    c0, t0 = time.thread_time(), now
                n += 1
            slot[batch.preadinto(fd, buf, rnd.randrange(nblocks) * BLOCK)] = buf
    t1, c1 = time.perf_counter(), time.thread_time()
    return n / (min(t1, end) - t0), (c1 - c0) / n * 1e6


def stream_run(path: Path, seconds: float) -> tuple[float, float]:
    """``xaio.Batch.as_completed`` refilled per result, under asyncio."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return asyncio.run(_stream(fd, os.fstat(fd).st_size // BLOCK, seconds))
    finally:
        os.close(fd)


def stream_trio_run(path: Path, seconds: float) -> tuple[float, float]:
    """``xaio.Batch.as_completed`` refilled per result, under trio."""
    import trio

    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return trio.run(_stream, fd, os.fstat(fd).st_size // BLOCK, seconds)
    finally:
        os.close(fd)


def _fio(path: Path, seconds: float, batches: bool = False) -> float:
    extra = (
        [f"--iodepth_batch_submit={TASKS}", f"--iodepth_batch_complete_min={TASKS}"]
        if batches
        else []
    )
    return fio_iops(
        path, engine="io_uring", iodepth=TASKS, seconds=seconds, direct=True, extra=extra
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--dir", default=None, help="where to create the test file (not tmpfs)")
    ap.add_argument(
        "--only",
        default="",
        help="run only the contenders whose name contains this text (or one of"
        " several, comma-separated)",
    )
    args = ap.parse_args()
    contenders: list[tuple[str, Callable[[Path, float], tuple[float, float]]]] = [
        ("floor: SQE images, no event loop", ring_loop_run),
        ("floor: SQE images + Futures", floor_run),
        ("xaio.preadinto", xaio_run),
        ("floor: SQE images, batches of 64", _ring_floor(_ring_batches, False)),
        ("xaio.Batch of 64, one await", batch_run),
        ("floor: SQE images, refilled per wake-up", _ring_floor(_ring_stream, False)),
        ("xaio.Batch.as_completed, refilled", stream_run),
    ]
    try:
        import trio  # noqa: F401
    except ImportError:
        pass
    else:
        contenders.append(("xaio.preadinto, trio", xaio_trio_run))
        contenders.append(
            ("floor: SQE images, batches of 64, trio", _ring_floor(_ring_batches, True))
        )
        contenders.append(("xaio.Batch of 64, one await, trio", batch_trio_run))
        contenders.append(
            ("floor: SQE images, refilled per wake-up, trio", _ring_floor(_ring_stream, True))
        )
        contenders.append(("xaio.Batch.as_completed, refilled, trio", stream_trio_run))
    wanted = args.only.split(",")
    contenders = [(name, fn) for name, fn in contenders if any(w in name for w in wanted)]
    fio = have_fio()
    path = make_file(args.size_mb << 20, args.dir)
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    #: per contender and round: its rate over the mean of the fio qd64 runs
    #: just before and just after it (fio, c1, fio, c2, fio...)
    ratios: dict[str, list[float]] = {}
    try:
        for r in range(args.rounds):
            before = _fio(path, args.seconds) if fio else 0.0
            if fio:
                rates.setdefault("fio io_uring", []).append(before)
            for name, fn in contenders:
                rate, us = fn(path, args.seconds)
                rates.setdefault(name, []).append(rate)
                cpu.setdefault(name, []).append(us)
                if fio:
                    after = _fio(path, args.seconds)
                    rates["fio io_uring"].append(after)
                    ratios.setdefault(name, []).append(rate / ((before + after) / 2))
                    before = after
            if fio:
                batches = _fio(path, args.seconds, batches=True)
                rates.setdefault(FIO_BATCH, []).append(batches)
                ratios.setdefault(FIO_BATCH, []).append(batches / before)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        path.unlink()

    print(f"O_DIRECT 4 KiB random reads, {TASKS} tasks / iodepth {TASKS}, {args.rounds} rounds")
    print("(ratio: to the mean of the fio qd64 runs just before and after, per round)")
    print("| path | median ops/s | CPU us per read | median paired ratio to fio qd64 |")
    print("|------|--------------|-----------------|---------------------------------|")
    for name, xs in rates.items():
        cpu_us = f"{statistics.median(cpu[name]):.1f}" if name in cpu else ""
        ratio = f"{statistics.median(ratios[name]):.2f}x" if name in ratios else ""
        print(f"| {name} | {statistics.median(xs):,.0f} | {cpu_us} | {ratio} |")
    for name, xs in ratios.items():
        print(f"per round, {name}: " + ", ".join(f"{x:.2f}x" for x in xs))
    for name, xs in rates.items():
        print(f"per round ops/s, {name}: " + ", ".join(f"{x:,.0f}" for x in xs))


if __name__ == "__main__":
    main()
