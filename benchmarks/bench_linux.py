"""4 KiB O_DIRECT random reads through xaio.linux's batch path vs fio's libaio engine.

Usage::

    python benchmarks/bench_linux.py [--size 512M] [--seconds 3] [--rounds 3]
                                     [--depths 1,32,64] [--dir /tmp]

Each round runs, for every queue depth, xaio then fio on the same file;
the table shows median IOPS over the rounds and the ratio xaio / fio.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import xaio
from _common import BLOCK, drive_batch, fio_iops, have_fio, make_file, median, table
from xaio.linux import IOBatch, io_destroy, io_setup


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def xaio_iops(path: Path, depth: int, seconds: float, chunk: int = 8, reap_max: int = 8) -> float:
    """Keep *depth* random 4 KiB O_DIRECT reads in flight for *seconds* through
    ``IOBatch``, resubmitting with one io_submit per *chunk* requests and
    reaping at most *reap_max* completions at a time (0: all that are there;
    8 measured best: the device starts on the first ones sooner).  Chunks of
    8 measure better than 4 when this machine is CPU-bound at 90-100k IOPS
    (fewer system calls; benchmarks/notes.md)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    blocks = os.fstat(fd).st_size // BLOCK
    rng = random.Random(1234 + depth)
    offsets = [rng.randrange(blocks) * BLOCK for _ in range(1 << 16)]
    ctx = io_setup(max(depth, 1) * 2)
    batch = IOBatch(ctx, depth)
    bufs = [xaio.aligned_buffer(BLOCK) for _ in range(depth)]
    try:
        return drive_batch(batch, fd, bufs, offsets, seconds, chunk, reap_max)
    finally:
        io_destroy(ctx)  # completes anything an error left in flight
        batch.close()
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="512M", help="test file size (default 512M)")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--depths", default="1,32,64", help="queue depths")
    ap.add_argument("--dir", default=None, help="directory for the test file")
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    path = make_file(parse_size(args.size), args.dir)
    fio = have_fio()
    results: dict[tuple[str, int], list[float]] = {}
    try:
        for r in range(args.rounds):
            for d in depths:
                results.setdefault(("xaio", d), []).append(xaio_iops(path, d, args.seconds))
                if fio:
                    results.setdefault(("fio", d), []).append(
                        fio_iops(
                            path, engine="libaio", iodepth=d, seconds=args.seconds, direct=True
                        )
                    )
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        path.unlink()
    rows = []
    for d in depths:
        x = median(results[("xaio", d)])
        f = median(results.get(("fio", d), []))
        ratio = f"{x / f:.2f}x" if fio else "n/a (no fio)"
        pairs = zip(results[("xaio", d)], results.get(("fio", d), []), strict=False)
        paired = f"{median([a / b for a, b in pairs]):.2f}x" if fio else "-"
        rows.append([d, f"{x:,.0f}", f"{f:,.0f}" if fio else "-", ratio, paired])
    print(
        f"4 KiB O_DIRECT random reads, {args.size} file, {args.seconds}s x {args.rounds} "
        "rounds (median IOPS)"
    )
    print(table(["depth", "xaio.linux IOBatch", "fio libaio", "xaio / fio", "paired"], rows))
    print("(xaio / fio: ratio of medians; paired: median of the per-round ratios)")
    print("\nper round (IOPS):")
    for (tool, d), xs in results.items():
        print(f"  depth {d:>3} {tool:<5} " + ", ".join(f"{x:,.0f}" for x in xs))


if __name__ == "__main__":
    main()
