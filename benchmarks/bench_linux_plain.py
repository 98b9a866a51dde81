"""The plain xaio.linux loop a user writes vs fio libaio and fio io_uring.

4 KiB O_DIRECT random reads kept *depth* deep with the public API only::

    cbs = [Iocb.pread(fd, buf, offset) for buf in bufs]
    io_submit(ctx, cbs)
    while running:
        events = io_getevents(ctx, 1, depth)
        for ev in events:
            ev.obj.aio_offset = next_offset()
        io_submit(ctx, [ev.obj for ev in events])

Usage::

    python benchmarks/bench_linux_plain.py [--size 512M] [--seconds 1]
                                           [--rounds 5] [--depths 32,64]
                                           [--dir /var/tmp]

Each round runs, for every depth, the loop above, fio libaio and fio io_uring
on the same file (fio is skipped, with a message, when it is not installed).
The table shows median IOPS and the median of the per-round ratios of the loop
to the better fio of that round; the per-round numbers follow it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import xaio
from _common import BLOCK, fio_iops, have_fio, make_file, median, table
from bench_linux import parse_size
from xaio.linux import Iocb, io_destroy, io_getevents, io_setup, io_submit


def plain_iops(path: Path, depth: int, seconds: float) -> float:
    """Reads per second of the plain ``Iocb``/``io_submit``/``io_getevents``
    loop keeping *depth* random 4 KiB O_DIRECT reads of *path* in flight."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    blocks = os.fstat(fd).st_size // BLOCK
    rng = random.Random(4321 + depth)
    offsets = [rng.randrange(blocks) * BLOCK for _ in range(1 << 16)]
    mask = len(offsets) - 1
    ctx = io_setup(depth)
    try:
        cbs = [Iocb.pread(fd, xaio.aligned_buffer(BLOCK), offsets[i], data=i) for i in range(depth)]
        io_submit(ctx, cbs)
        k = depth
        done = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            events = io_getevents(ctx, 1, depth)
            again = []
            for ev in events:
                if ev.res != BLOCK:
                    raise OSError(-ev.res, os.strerror(-ev.res))
                cb = ev.obj
                assert cb is not None
                cb.aio_offset = offsets[k & mask]
                k += 1
                again.append(cb)
            done += len(again)
            if time.perf_counter() >= deadline:
                break
            io_submit(ctx, again)
        elapsed = time.perf_counter() - t0
        left = depth - len(again)
        while left:
            left -= len(io_getevents(ctx, 1, depth))
        return done / elapsed
    finally:
        io_destroy(ctx)
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="512M", help="test file size (default 512M)")
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    ap.add_argument("--depths", default="32,64", help="queue depths")
    ap.add_argument("--dir", default="/var/tmp", help="directory for the test file (not tmpfs)")
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    fio = have_fio()
    if not fio:
        print("fio not found: running the xaio loop alone (apt-get install fio)", file=sys.stderr)
    path = make_file(parse_size(args.size), args.dir)
    contenders = ["xaio.linux loop"] + (["fio libaio", "fio io_uring"] if fio else [])
    results: dict[tuple[str, int], list[float]] = {}
    try:
        for r in range(args.rounds):
            for d in depths:
                for name in contenders:
                    if name == "xaio.linux loop":
                        iops = plain_iops(path, d, args.seconds)
                    else:
                        engine = name.split()[1]
                        iops = fio_iops(
                            path, engine=engine, iodepth=d, seconds=args.seconds, direct=True
                        )
                    results.setdefault((name, d), []).append(iops)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        path.unlink()
    rows = []
    for d in depths:
        best = [
            max(results[(n, d)][r] for n in contenders[1:]) if fio else float("nan")
            for r in range(args.rounds)
        ]
        for name in contenders:
            xs = results[(name, d)]
            paired = median([x / b for x, b in zip(xs, best, strict=True)])
            rows.append([d, name, f"{median(xs):,.0f}", f"{paired:.2f}x" if fio else "-"])
    print(
        f"4 KiB O_DIRECT random reads, {args.size} file in {args.dir}, "
        f"{args.seconds}s x {args.rounds} rounds; load {os.getloadavg()[0]:.1f}"
    )
    print(table(["depth", "path", "median IOPS", "vs better fio (paired)"], rows))
    print("(paired: median over rounds of IOPS / the round's better fio)")
    print("\nper round (IOPS):")
    for (name, d), xs in results.items():
        print(f"  depth {d:>3} {name:<16} " + ", ".join(f"{x:,.0f}" for x in xs))


if __name__ == "__main__":
    main()
