"""One measurement of :mod:`bench_files`: read a list of files whole, in a
fresh process, and print what it measured as one JSON line.

It runs under any interpreter that has the library it drives (the peers live
in their own virtual environments, since aiofiles and aiofiles-x both install
the module ``aiofiles``), so it imports nothing but the standard library and
that library.  ``--lib`` picks the reader:

- ``xaio-open``: ``async with xaio.open(p, "rb") as f: data = await f.read()``
  (the engine is the default one, or ``XAIO_ENGINE``);
- ``xaio-path``: ``data = await xaio.Path(p).read_bytes()``;
- ``aiofiles``: ``async with aiofiles.open(p, "rb") as f: data = await f.read()``;
- ``idle``: no reader, the ticker alone for 0.3 s (the machine's own lag).

``--tasks`` workers take the next path from the list until it is used up,
``--passes`` times over; a 1 ms ticker task runs beside them and its lateness
is reported (p50, p99, max, in ms).  Each file's length is checked against
the size in the list.  The printed object: ``files_per_s``, ``mib_per_s``,
``lag_p50``, ``lag_p99``, ``lag_max``, ``files``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

Reader = Callable[[str], Awaitable[bytes]]


def make_reader(lib: str) -> Reader:
    if lib == "xaio-open":
        import xaio

        xopen = xaio.open

        async def read_open(p: str) -> bytes:
            async with xopen(p, "rb") as f:
                data: bytes = await f.read()
            return data

        return read_open
    if lib == "xaio-path":
        import xaio

        XPath = xaio.Path

        async def read_path(p: str) -> bytes:
            return await XPath(p).read_bytes()

        return read_path
    if lib == "aiofiles":
        import aiofiles

        aopen = aiofiles.open

        async def read_aiofiles(p: str) -> bytes:
            async with aopen(p, "rb") as f:
                data: bytes = await f.read()
            return data

        return read_aiofiles
    if lib == "idle":

        async def read_nothing(p: str) -> bytes:
            await asyncio.sleep(0.3)
            return b""

        return read_nothing
    raise SystemExit(f"unknown --lib {lib!r}")


async def run(
    read: Reader, files: list[tuple[str, int]], tasks: int, passes: int
) -> dict[str, Any]:
    work = files * passes
    lags: list[float] = []
    nbytes = 0
    nxt_i = 0
    stop = False

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        nxt = loop.time() + 0.001
        while not stop:
            await asyncio.sleep(max(nxt - loop.time(), 0))
            now = loop.time()
            lags.append((now - nxt) * 1000)
            nxt = now + 0.001

    async def worker() -> None:
        nonlocal nxt_i, nbytes
        while nxt_i < len(work):
            p, size = work[nxt_i]
            nxt_i += 1
            data = await read(p)
            if len(data) != size:
                raise RuntimeError(f"{p}: read {len(data)} bytes, expected {size}")
            nbytes += size

    # One file first: imports, engine and ring set-up are not what is measured.
    await read(files[0][0])
    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.003)
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(tasks)))
    finally:
        elapsed = time.perf_counter() - t0
        stop = True
        await tick
    lags.sort()
    if not lags:
        lags = [float("nan")]
    return {
        "files": len(work),
        "files_per_s": len(work) / elapsed,
        "mib_per_s": nbytes / elapsed / (1 << 20),
        "lag_p50": lags[len(lags) // 2],
        "lag_p99": lags[min(int(len(lags) * 0.99), len(lags) - 1)],
        "lag_max": lags[-1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--list", required=True, help="a file of 'size<TAB>path' lines")
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--passes", type=int, default=1)
    args = ap.parse_args()
    files: list[tuple[str, int]] = []
    with open(args.list) as f:
        for line in f:
            size, path = line.rstrip("\n").split("\t", 1)
            files.append((path, int(size)))
    read = make_reader(args.lib)
    if args.lib == "idle":  # one task sleeping 0.3 s, the sizes not checked
        files, args.tasks, args.passes = [(files[0][0], 0)] * 2, 1, 1
    print(json.dumps(asyncio.run(run(read, files, args.tasks, args.passes))))


if __name__ == "__main__":
    main()
