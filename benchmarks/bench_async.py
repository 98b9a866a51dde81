"""4 KiB random reads through asyncio: xaio against its peers, in one run.

Contenders (each one a fresh ``asyncio.run`` per measurement, rounds
alternating contender by contender on the same file):

- xaio: the default engine (``await xaio.pread``), and each engine through
  ``xaio.open_engine(name)`` (``await eng.pread``);
- caio: io_uring with SQPOLL off and on, Linux AIO, its thread pool;
- aiofile (``AIOFile.read`` on caio's default context);
- aiofiles (a file object per worker: ``seek`` + ``read``, two thread hops);
- ``os.pread`` in the loop's default executor.

Workloads: page-cached reads at concurrency 1 and 64 (every contender reads
``bytes``), and O_DIRECT reads at concurrency 64 (only xaio can: the peers
give the kernel unaligned memory) next to fio's io_uring and libaio engines
at iodepth 64.  Then the lag of a 1 ms ticker task while 64 cold-cache reads
are in flight (the file is dropped from the page cache first).

Run::

    .venv/bin/python benchmarks/bench_async.py [--rounds 3] [--seconds 1.0]
        [--size-mb 256] [--dir DIR] [--only SUBSTRING]

The machines are shared and noisy: read ratios within one run, not absolute
numbers across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xaio
from _common import drop_cache, fio_iops, have_fio, make_file, median, table
from xaio.engine import probe

BLOCK = 4096
Reader = Callable[[int, int], Awaitable[Any]]  # (worker index, offset) -> awaitable
Factory = Callable[[int, int], Awaitable[tuple[Reader, Callable[[], Awaitable[None]]]]]


def offsets(size: int, n: int, seed: int) -> list[int]:
    rnd = random.Random(seed)
    blocks = size // BLOCK
    return [rnd.randrange(blocks) * BLOCK for _ in range(n)]


async def drive(reader: Reader, conc: int, seconds: float, size: int) -> float:
    """Run *conc* workers reading random blocks for *seconds*; return ops/s."""
    offs = offsets(size, 1 << 16, conc)
    mask = len(offs) - 1
    counts = [0] * conc
    stop = False

    perf = time.perf_counter
    deadline = perf() + seconds

    async def worker(w: int) -> None:
        # A contender whose awaits complete without yielding would starve a
        # sleeping "stop" task, so each worker also watches the clock itself.
        k = w * 7919
        n = 0
        while not stop:
            await reader(w, offs[k & mask])
            k += 1
            n += 1
            if not n & 63 and perf() > deadline:
                break
        counts[w] = n

    tasks = [asyncio.ensure_future(worker(w)) for w in range(conc)]
    t0 = perf()
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*tasks)
    return sum(counts) / (perf() - t0)


# --- contenders --------------------------------------------------------------------------


def xaio_default(path: Path, direct: bool) -> Factory:
    async def make(conc: int, fd: int) -> Any:
        if not direct:
            pread = xaio.pread

            async def read(w: int, off: int) -> Any:
                return await pread(fd, BLOCK, off)

            return read, _noop

        bufs = [xaio.aligned_buffer(BLOCK) for _ in range(conc)]
        preadinto = xaio.preadinto

        async def read_direct(w: int, off: int) -> Any:
            return await preadinto(fd, bufs[w], off)

        return read_direct, _noop

    return make


def xaio_engine(name: str, direct: bool) -> Factory:
    async def make(conc: int, fd: int) -> Any:
        eng = xaio.open_engine(name)
        if not direct:
            pread = eng.pread

            async def read(w: int, off: int) -> Any:
                return await pread(fd, BLOCK, off)

            return read, eng.aclose
        bufs = [xaio.aligned_buffer(BLOCK) for _ in range(conc)]
        preadinto = eng.preadinto

        async def read_direct(w: int, off: int) -> Any:
            return await preadinto(fd, bufs[w], off)

        return read_direct, eng.aclose

    return make


async def _noop() -> None:
    return None


def caio_ctx(kind: str, **kw: Any) -> Factory:
    async def make(conc: int, fd: int) -> Any:
        if kind == "uring":
            from caio.linux_uring_asyncio import AsyncioContext
        elif kind == "linux":
            from caio.linux_aio_asyncio import AsyncioContext  # type: ignore[assignment]
        else:
            from caio.thread_aio_asyncio import AsyncioContext  # type: ignore[assignment]
        ctx = AsyncioContext(max_requests=128, **kw)
        cread = ctx.read

        async def read(w: int, off: int) -> Any:
            return await cread(BLOCK, fd, off)

        async def close() -> None:
            ctx.close()

        return read, close

    return make


def aiofile_peer(path: Path) -> Factory:
    async def make(conc: int, fd: int) -> Any:
        from aiofile import AIOFile

        f = AIOFile(str(path), "rb")
        await f.open()

        async def read(w: int, off: int) -> Any:
            return await f.read(BLOCK, off)

        return read, f.close

    return make


def aiofiles_peer(path: Path) -> Factory:
    async def make(conc: int, fd: int) -> Any:
        import aiofiles

        files = [await aiofiles.open(path, "rb", buffering=0) for _ in range(conc)]

        async def read(w: int, off: int) -> Any:
            f = files[w]
            await f.seek(off)
            return await f.read(BLOCK)

        async def close() -> None:
            for f in files:
                await f.close()

        return read, close

    return make


def idle_peer() -> Factory:
    """Workers that only sleep: the ticker's own lateness on this machine."""

    async def make(conc: int, fd: int) -> Any:
        async def read(w: int, off: int) -> Any:
            await asyncio.sleep(0.01)

        return read, _noop

    return make


def executor_peer() -> Factory:
    async def make(conc: int, fd: int) -> Any:
        loop = asyncio.get_running_loop()
        pread = os.pread

        async def read(w: int, off: int) -> Any:
            return await loop.run_in_executor(None, pread, fd, BLOCK, off)

        return read, _noop

    return make


def warm(path: Path) -> None:
    """Read the whole file (back) into the page cache: the machine is shared
    and other people's memory pressure evicts it between measurements."""
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while chunk := os.pread(fd, 1 << 20, off):
            off += len(chunk)
    finally:
        os.close(fd)


def measure(factory: Factory, path: Path, conc: int, seconds: float, direct: bool) -> float:
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    if not direct:
        warm(path)
    fd = os.open(path, flags)
    size = os.fstat(fd).st_size

    async def main() -> float:
        read, close = await factory(conc, fd)
        try:
            await drive(read, min(conc, 1), 0.05, size)  # warm up
            return await drive(read, conc, seconds, size)
        finally:
            await close()

    try:
        return asyncio.run(main())
    finally:
        os.close(fd)


# --- ticker lag during cold reads -----------------------------------------------------------


def ticker_lag(
    factory: Factory, path: Path, seconds: float, conc: int = 64
) -> tuple[float, float, float, float]:
    """p50/p99/max lateness (ms) of a 1 ms ticker while *conc* workers read
    cold blocks; also the read rate (ops/s)."""
    drop_cache(path)
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    async def main() -> tuple[float, float, float, float]:
        read, close = await factory(conc, fd)
        lags: list[float] = []
        stop = False

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            nxt = loop.time() + 0.001
            while not stop:
                await asyncio.sleep(max(nxt - loop.time(), 0))
                now = loop.time()
                lags.append((now - nxt) * 1000)
                nxt = now + 0.001

        t = asyncio.ensure_future(ticker())
        try:
            rate = await drive(read, conc, seconds, size)
        finally:
            stop = True
            await t
            await close()
        lags.sort()
        p99 = lags[int(len(lags) * 0.99)] if lags else float("nan")
        return statistics.median(lags), p99, max(lags), rate

    try:
        return asyncio.run(main())
    finally:
        os.close(fd)


# --- main --------------------------------------------------------------------------------


def main() -> None:
    global print
    print = functools.partial(print, flush=True)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--size-mb", type=int, default=64)
    ap.add_argument("--dir", default=None, help="where to create the test file (not tmpfs)")
    ap.add_argument("--only", default=None, help="run only contenders whose name contains this")
    ap.add_argument("--no-fio", action="store_true")
    ap.add_argument("--no-lag", action="store_true")
    ap.add_argument(
        "--lag-size-mb", type=int, default=1024, help="file for the cold-read ticker test"
    )
    args = ap.parse_args()

    avail = probe()
    path = make_file(args.size_mb << 20, args.dir)
    try:
        with open(path, "rb") as f:  # into the page cache
            while f.read(1 << 20):
                pass
        cached: dict[str, Factory] = {"xaio default": xaio_default(path, False)}
        direct: dict[str, Factory] = {"xaio default": xaio_default(path, True)}
        for name in ("uring", "linux", "thread"):
            if avail[name] is None:
                cached[f"xaio {name}"] = xaio_engine(name, False)
                direct[f"xaio {name}"] = xaio_engine(name, True)
        try:
            import caio  # noqa: F401

            cached["caio uring"] = caio_ctx("uring", sqpoll=False)
            cached["caio uring sqpoll"] = caio_ctx("uring", sqpoll=True)
            cached["caio linux"] = caio_ctx("linux")
            cached["caio thread"] = caio_ctx("thread")
        except ImportError:
            print("caio not installed: skipped", file=sys.stderr)
        try:
            import aiofile  # noqa: F401

            cached["aiofile"] = aiofile_peer(path)
        except ImportError:
            print("aiofile not installed: skipped", file=sys.stderr)
        try:
            import aiofiles  # noqa: F401

            cached["aiofiles"] = aiofiles_peer(path)
        except ImportError:
            print("aiofiles not installed: skipped", file=sys.stderr)
        cached["os.pread+executor"] = executor_peer()
        if args.only:
            cached = {k: v for k, v in cached.items() if args.only in k}
            direct = {k: v for k, v in direct.items() if args.only in k}

        results: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for conc in (1, 64):
                for name, fac in cached.items():
                    v = measure(fac, path, conc, args.seconds, False)
                    results.setdefault((name, f"cached c={conc}"), []).append(v)
            for name, fac in direct.items():
                v = measure(fac, path, 64, args.seconds, True)
                results.setdefault((name, "O_DIRECT c=64"), []).append(v)
            if have_fio() and not args.no_fio:
                for eng in ("io_uring", "libaio"):
                    v = fio_iops(path, engine=eng, iodepth=64, seconds=args.seconds, direct=True)
                    results.setdefault((f"fio {eng} depth 64", "O_DIRECT c=64"), []).append(v)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

        cols = ["cached c=1", "cached c=64", "O_DIRECT c=64"]
        names: list[str] = []
        for name, _col in results:
            if name not in names:
                names.append(name)
        med = {k: median(v) for k, v in results.items()}
        rows = []
        for name in names:
            row: list[object] = [name]
            for col in cols:
                v = med.get((name, col))
                row.append("" if v is None else f"{v:,.0f}")
            rows.append(row)
        print("\nmedian ops/s, 4 KiB random reads through asyncio")
        print(table(["contender", *cols], rows))

        def best(col: str, prefix: str) -> tuple[str, float]:
            cands = [(n, v) for (n, c), v in med.items() if c == col and n.startswith(prefix)]
            return max(cands, key=lambda x: x[1]) if cands else ("", float("nan"))

        ratios = []
        for col in ("cached c=1", "cached c=64"):
            peer_n, peer_v = max(
                ((n, v) for (n, c), v in med.items() if c == col and not n.startswith("xaio")),
                key=lambda x: x[1],
                default=("", float("nan")),
            )
            xv = med.get(("xaio default", col), float("nan"))
            ratios.append([col, f"{xv:,.0f}", f"{peer_n} {peer_v:,.0f}", f"{xv / peer_v:.2f}x"])
        fio_n, fio_v = best("O_DIRECT c=64", "fio")
        xv = med.get(("xaio default", "O_DIRECT c=64"), float("nan"))
        ratios.append(
            ["O_DIRECT c=64", f"{xv:,.0f}", f"{fio_n} {fio_v:,.0f}", f"{xv / fio_v:.2f}x"]
        )
        print("\nxaio default against the best peer (target: 1.25x cached, 0.8x of fio O_DIRECT)")
        print(table(["workload", "xaio default", "best peer", "ratio"], ratios))
        print("\npaired, page-cached: xaio default over the best peer of each round")
        for col in ("cached c=1", "cached c=64"):
            per = []
            for r, xv in enumerate(results.get(("xaio default", col), [])):
                round_peers = [
                    (n, v[r])
                    for (n, c), v in results.items()
                    if c == col and not n.startswith("xaio") and len(v) > r
                ]
                if round_peers:
                    peer_n, peer_v = max(round_peers, key=lambda x: x[1])
                    per.append(xv / peer_v)
                    print(f"  {col} round {r + 1}: {xv:,.0f} / {peer_n} {peer_v:,.0f}")
            if per:
                rounds = ", ".join(f"{x:.2f}x" for x in per)
                print(f"{col}: {rounds}; median {median(per):.2f}x")

        if not args.no_lag:
            lag_path = make_file(args.lag_size_mb << 20, args.dir)
            lag_rows = []
            lag_cands: dict[str, Factory] = {
                "(no reads: the ticker alone)": idle_peer(),
                "xaio default": xaio_default(path, False),
            }
            for name in ("uring", "linux", "thread"):
                if avail[name] is None:
                    lag_cands[f"xaio {name}"] = xaio_engine(name, False)
            if "caio uring" in cached:
                lag_cands["caio uring"] = cached["caio uring"]
            if "aiofiles" in cached:
                lag_cands["aiofiles"] = cached["aiofiles"]
            lag_cands["os.pread+executor"] = executor_peer()
            if args.only:
                lag_cands = {k: v for k, v in lag_cands.items() if args.only in k}
            try:
                for name, fac in lag_cands.items():
                    p50, p99, mx, rate = ticker_lag(fac, lag_path, args.seconds * 2)
                    lag_rows.append([name, f"{p50:.3f}", f"{p99:.3f}", f"{mx:.3f}", f"{rate:,.0f}"])
            finally:
                lag_path.unlink()
            print(
                "\n1 ms ticker lateness (ms) during 64 concurrent cold-cache reads (target p99 < 2)"
            )
            print(table(["contender", "p50", "p99", "max", "reads/s"], lag_rows))
    finally:
        path.unlink()


if __name__ == "__main__":
    main()
