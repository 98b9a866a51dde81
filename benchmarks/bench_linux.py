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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import xaio
from _common import BLOCK, fio_iops, have_fio, make_file, median, table
from xaio.linux import IOBatch, io_destroy, io_setup


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def xaio_iops(path: Path, depth: int, seconds: float, chunk: int = 4, reap_max: int = 0) -> float:
    """Keep *depth* random 4 KiB O_DIRECT reads in flight for *seconds*,
    resubmitting each reaped batch with one io_submit per *chunk* requests,
    reaping at most *reap_max* completions at a time (0: all that are there;
    8 measured best: the device starts on the first ones sooner)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    blocks = os.fstat(fd).st_size // BLOCK
    rng = random.Random(1234 + depth)
    offsets = [rng.randrange(blocks) * BLOCK for _ in range(1 << 16)]
    mask = len(offsets) - 1
    ctx = io_setup(max(depth, 1) * 2)
    batch = IOBatch(ctx, depth)
    bufs = [xaio.aligned_buffer(BLOCK) for _ in range(depth)]
    try:
        k = 0
        for s in range(depth):
            batch.prep_pread(s, fd, bufs[s], offsets[k & mask])
            k += 1
        batch.submit(list(range(depth)))
        done = 0
        set_offset = batch.set_offset
        reap = batch.reap
        submit = batch.submit
        done_slots = batch.done_slots
        done_res = batch.done_res
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            n = reap(1, None, reap_max)
            slots = done_slots[:n]
            for i in range(n):
                if done_res[i] != BLOCK:
                    raise OSError(-done_res[i], os.strerror(-done_res[i]))
                set_offset(slots[i], offsets[k & mask])
                k += 1
            done += n
            if (done & 0x3FF) < n and time.perf_counter() >= deadline:
                break
            submit(slots, chunk)  # chunks of 4 by default: see IOBatch.submit
        elapsed = time.perf_counter() - t0
        while batch.in_flight:
            batch.reap(1, None)
        batch.close()
        return done / elapsed
    finally:
        io_destroy(ctx)
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
