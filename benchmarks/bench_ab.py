"""Alternating A/B of O_DIRECT 4 KiB random-read variants against fio, for tuning.

Usage::

    python benchmarks/bench_ab.py [--depth 64] [--rounds 12] [--seconds 0.5]
                                  [--size 512M] [--dir DIR] CONTENDER [CONTENDER ...]

Contenders (the first one is the reference of the paired ratios):

    fio-libaio, fio-io_uring       fio with batched submission
    fio-libaio-plain               fio libaio with its default submission (one
                                   io_submit per request), as bench_linux.py
    iobatch[:CHUNK[:MAXREAP]]      xaio.linux.IOBatch, io_submit per CHUNK (8),
                                   reaping at most MAXREAP at a time (0: all,
                                   the default here)
    uringbatch[:CHUNK[:MODE[:MAXREAP]]]
                                   xaio.uring.UringBatch, enter per CHUNK (8);
                                   MODE "fixed" (default), "plain": without
                                   registered buffers, "sqpoll": with SQPOLL;
                                   MAXREAP as for iobatch (default 0: all)
    engine[:FLAG+FLAG...[:MAXREAP]]
                                   the uring engine, resubmitting after reap;
                                   FLAGs: coop, taskrun, defer, sqpoll (setup
                                   flags), fixed (Engine.register_buffers);
                                   MAXREAP: reap(max_n=...) (default 0 here:
                                   all)
    engine-on_done[:DEFER]         the uring engine, resubmitting from on_done;
                                   DEFER overrides xaio.uring._engine._DEFER_FLUSH

Each round runs every contender once, in order, on one file, for a fraction of
a second: this VM's disk drifts by 2x within seconds, so only short
alternating rounds compare anything.  Prints, per contender, the median ops/s,
the median of the per-round ratios to the first contender, the user and
system time per request of the xaio contenders (``getrusage``), and every
round.  The variant comparisons quoted in benchmarks/notes.md come from runs
like::

    python benchmarks/bench_ab.py --depth 64 fio-io_uring engine engine:coop uringbatch:8
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import xaio.uring as uring
import xaio.uring._engine as uring_engine
from _common import fio_iops, make_file
from bench_engines import engine_callback_iops, engine_iops, uring_batch_iops
from bench_linux import parse_size, xaio_iops
from xaio._abi import uring as abi
from xaio.engine import Engine

_FLAGS = {
    "coop": abi.IORING_SETUP_COOP_TASKRUN,
    "taskrun": abi.IORING_SETUP_COOP_TASKRUN | abi.IORING_SETUP_TASKRUN_FLAG,
    "defer": abi.IORING_SETUP_SINGLE_ISSUER | abi.IORING_SETUP_DEFER_TASKRUN,
    "sqpoll": abi.IORING_SETUP_SQPOLL,
}


def contender(spec: str, path: Path, depth: int, seconds: float) -> Callable[[], float]:
    """The benchmark function *spec* names (see the module docstring)."""
    name, _, arg = spec.partition(":")
    if name == "fio-libaio-plain":
        return lambda: fio_iops(path, engine="libaio", iodepth=depth, seconds=seconds, direct=True)
    if name in ("fio-libaio", "fio-io_uring"):
        engine = name[4:]
        batch = [f"--iodepth_batch_submit={depth}", "--iodepth_batch_complete_min=1"]
        return lambda: fio_iops(
            path, engine=engine, iodepth=depth, seconds=seconds, direct=True, extra=batch
        )
    if name == "iobatch":
        chunk_s, _, most = arg.partition(":")
        chunk = int(chunk_s or 8)
        reap_max = int(most or 0)
        return lambda: xaio_iops(path, depth, seconds, chunk, reap_max)
    if name == "uringbatch":
        chunk_s, _, rest = arg.partition(":")
        mode, _, most = rest.partition(":")
        chunk = int(chunk_s or 8)
        fixed = mode != "plain"
        flags = abi.IORING_SETUP_SQPOLL if mode == "sqpoll" else 0
        reap_max = int(most or 0)
        return lambda: uring_batch_iops(path, depth, seconds, True, chunk, fixed, flags, reap_max)
    if name == "engine":
        flag_s, _, most = arg.partition(":")
        flags = 0
        register = False
        for f in filter(None, flag_s.split("+")):
            if f == "fixed":
                register = True
            else:
                flags |= _FLAGS[f]
        reap_max = int(most or 0)

        def make() -> Engine:
            return uring.UringEngine(max(2 * depth, 8), setup_flags=flags)

        return lambda: engine_iops(make, path, depth, seconds, True, reap_max, register)
    if name == "engine-on_done":
        defer = int(arg) if arg else uring_engine._DEFER_FLUSH

        def run() -> float:
            saved = uring_engine._DEFER_FLUSH
            uring_engine._DEFER_FLUSH = defer
            try:
                return engine_callback_iops("uring", path, depth, seconds, True)
            finally:
                uring_engine._DEFER_FLUSH = saved

        return run
    raise SystemExit(f"unknown contender {spec!r} (see --help)")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog=(__doc__ or "").split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("contenders", nargs="+")
    ap.add_argument("--depth", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--size", default="512M")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    path = make_file(parse_size(args.size), args.dir)
    try:
        runs = {c: contender(c, path, args.depth, args.seconds) for c in args.contenders}
        rates: dict[str, list[float]] = {c: [] for c in runs}
        cpu: dict[str, list[tuple[float, float]]] = {c: [] for c in runs}
        for r in range(args.rounds):
            for c, fn in runs.items():
                before = resource.getrusage(resource.RUSAGE_SELF)
                v = fn()
                after = resource.getrusage(resource.RUSAGE_SELF)
                rates[c].append(v)
                ops = v * args.seconds
                cpu[c].append(
                    (
                        (after.ru_utime - before.ru_utime) / ops * 1e6,
                        (after.ru_stime - before.ru_stime) / ops * 1e6,
                    )
                )
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        path.unlink()
    ref = rates[args.contenders[0]]
    print(f"depth {args.depth}, {args.rounds} rounds of {args.seconds}s")
    for c, xs in rates.items():
        paired = statistics.median(x / y for x, y in zip(xs, ref, strict=True))
        line = f"{c:<24} median {statistics.median(xs):>9,.0f}  paired {paired:.3f}"
        if not c.startswith("fio"):
            user = statistics.median(u for u, _ in cpu[c])
            system = statistics.median(s for _, s in cpu[c])
            line += f"  user {user:.1f} us  sys {system:.1f} us per request"
        print(line)
        print("    " + " ".join(f"{x / 1000:.1f}k" for x in xs))


if __name__ == "__main__":
    main()
