"""4 KiB random reads through every engine and the raw batch paths, against fio.

Usage::

    python benchmarks/bench_engines.py [--size 512M] [--seconds 2] [--rounds 3]
                                       [--depths 1,32,64] [--dir DIR] [--only direct|cached]

Two tables:

* O_DIRECT: ``xaio.linux.IOBatch`` (kernel AIO, lean path),
  ``xaio.uring.UringBatch`` (io_uring, lean path: slot SQE images, registered
  buffers), the ``uring`` engine through the Engine protocol
  (``xaio.engine.create_engine("uring")``: Operation records, pinning, reap)
  driven two ways -- re-arm and resubmit everything after each reap (also
  with the buffers registered through ``Engine.register_buffers``), or
  resubmit from the ``on_done`` callback --, the ``linux`` engine (kernel AIO
  through the Engine protocol: what O_DIRECT uses where io_uring is blocked),
  and fio's ``libaio`` and
  ``io_uring`` engines with batched submission
  (``--iodepth_batch_submit=DEPTH --iodepth_batch_complete_min=1``).
* page-cached: the same xaio paths plus ``xaio.uring.Ring`` (prep helpers,
  one pin per request), the ``linux`` and ``thread`` engines, and fio's
  ``psync`` / ``io_uring``.

Every round runs every contender once per depth, alternating; the tables show
the median over the rounds and each contender's ratio to the best fio engine.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import xaio
from _common import BLOCK, drive_batch, fio_iops, have_fio, make_file, median, table
from bench_linux import parse_size, xaio_iops
from xaio._ops import OpCode, Operation
from xaio.engine import Engine, create_engine, probe
from xaio.linux import IOBatch, io_destroy, io_setup
from xaio.uring import Ring, UringBatch

#: UringBatch.submit chunk: the block layer plugs a submission of more than two
#: requests until io_uring_enter returns, so handing a reaped batch over in
#: groups lets the device start on the first ones sooner (benchmarks/notes.md).
URING_CHUNK = 8
#: Completions taken per UringBatch.reap / IOBatch.reap: resubmitting the first
#: 8 while the rest wait lets the device start on them sooner (measured in
#: alternating A/Bs at depth 64: 0.94x against 0.89x of fio io_uring for
#: UringBatch, 0.95x against 0.92x for IOBatch; see benchmarks/notes.md).
REAP_MAX = 8
#: The same for the engines' reap(max_n=...): 16 measured best for the uring
#: engine (0.94x/1.01x of fio io_uring at depth 32/64 against 0.90x/0.82x
#: taking everything; 8 gave 0.91x/0.98x).
ENGINE_REAP_MAX = 16


def _offsets(fd: int, depth: int) -> list[int]:
    blocks = os.fstat(fd).st_size // BLOCK
    rng = random.Random(99 + depth)
    return [rng.randrange(blocks) * BLOCK for _ in range(1 << 16)]


def _buffers(depth: int, direct: bool) -> list[object]:
    if direct:
        return [xaio.aligned_buffer(BLOCK) for _ in range(depth)]
    return [bytearray(BLOCK) for _ in range(depth)]


def ring_iops(path: Path, depth: int, seconds: float, direct: bool) -> float:
    """io_uring through xaio.uring.Ring: prep_read + submit, peek/wait."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    offsets = _offsets(fd, depth)
    bufs = _buffers(depth, direct)
    ring = Ring(max(depth, 1) * 2)
    try:
        k = 0
        for s in range(depth):
            ring.prep_read(fd, bufs[s], offsets[k & 0xFFFF], user_data=s)
            k += 1
        ring.submit()
        done = 0
        out: list[tuple[int, int, int]] = []
        t0 = time.perf_counter()
        deadline = t0 + seconds
        prep = ring.prep_read
        while True:
            out.clear()
            ring.peek_batch(out)
            if not out:
                ring.submit_and_wait(1)
                ring.peek_batch(out)
            for ud, res, _ in out:
                if res != BLOCK:
                    raise OSError(-res, os.strerror(-res))
                prep(fd, bufs[ud], offsets[k & 0xFFFF], user_data=ud)
                k += 1
            done += len(out)
            if (done & 0x3FF) < len(out) and time.perf_counter() >= deadline:
                break
            ring.submit()
        elapsed = time.perf_counter() - t0
        ring.submit()
        return done / elapsed
    finally:
        ring.close()
        os.close(fd)


def uring_batch_iops(
    path: Path,
    depth: int,
    seconds: float,
    direct: bool,
    chunk: int = URING_CHUNK,
    fixed_buffers: bool = True,
    setup_flags: int = 0,
    reap_max: int = REAP_MAX,
) -> float:
    """io_uring through xaio.uring.UringBatch (see _common.drive_batch)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    batch = UringBatch(depth, fixed_buffers=fixed_buffers, setup_flags=setup_flags)
    try:
        return drive_batch(
            batch, fd, _buffers(depth, direct), _offsets(fd, depth), seconds, chunk, reap_max
        )
    finally:
        batch.close()
        os.close(fd)


def engine_callback_iops(
    name: str | Callable[[], Engine], path: Path, depth: int, seconds: float, direct: bool
) -> float:
    """Through the Engine protocol, each operation re-armed and resubmitted by
    its own ``on_done`` (the uring engine hands such submissions to the kernel
    in small groups while it delivers the rest)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    offsets = _offsets(fd, depth)
    bufs = _buffers(depth, direct)
    eng = create_engine(name) if isinstance(name, str) else name()
    state = {"k": depth, "done": 0, "running": True}

    def on_done(op: Operation) -> None:
        if op.result != BLOCK:
            raise OSError(-(op.result or 0), "read failed")
        state["done"] += 1
        if state["running"]:
            k = state["k"]
            state["k"] = k + 1
            op.rearm(None, offsets[k & 0xFFFF], on_done)
            eng.submit((op,))

    ops = [
        Operation(OpCode.READ, fd, (bufs[s],), offsets[s], on_done=on_done, reusable=True)
        for s in range(depth)
    ]
    try:
        eng.submit(ops)
        t0 = time.perf_counter()
        deadline = t0 + seconds
        reap = eng.reap
        while time.perf_counter() < deadline:
            reap(None)
        elapsed = time.perf_counter() - t0
        state["running"] = False
        return state["done"] / elapsed
    finally:
        eng.close()
        for op in ops:
            if op.done:
                op.release()
        os.close(fd)


def engine_iops(
    name: str | Callable[[], Engine],
    path: Path,
    depth: int,
    seconds: float,
    direct: bool,
    reap_max: int = ENGINE_REAP_MAX,
    register: bool = False,
) -> float:
    """Through the Engine protocol: reusable Operations re-armed per request,
    at most *reap_max* delivered per reap (0: all that are there); with
    *register*, the buffers are offered to ``Engine.register_buffers`` first
    (io_uring's fixed buffers)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    offsets = _offsets(fd, depth)
    bufs = _buffers(depth, direct)
    eng = create_engine(name) if isinstance(name, str) else name()
    if register and not eng.register_buffers(bufs):
        raise SystemExit(f"the {eng.name} engine cannot register buffers")
    finished: list[Operation] = []
    on_done: Callable[[Operation], None] = finished.append
    try:
        ops = [
            Operation(
                OpCode.READ, fd, (bufs[s],), offsets[s], on_done=on_done, context=s, reusable=True
            )
            for s in range(depth)
        ]
        k = depth
        eng.submit(ops)
        done = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            eng.reap(None, max_n=reap_max)
            batch = []
            for op in finished:
                if op.result != BLOCK:
                    raise OSError(-(op.result or 0), "read failed")
                op.rearm(None, offsets[k & 0xFFFF], on_done)
                batch.append(op)
                k += 1
            done += len(finished)
            finished.clear()
            if (done & 0x3FF) < len(batch) and time.perf_counter() >= deadline:
                break
            eng.submit(batch)
        return done / (time.perf_counter() - t0)
    finally:
        eng.close()
        for op in ops:
            if op.done:
                op.release()
        os.close(fd)


def iobatch_cached_iops(path: Path, depth: int, seconds: float) -> float:
    """Kernel AIO on a buffered file (io_submit does the copy synchronously)."""
    fd = os.open(path, os.O_RDONLY)
    offsets = _offsets(fd, depth)
    ctx = io_setup(depth * 2)
    batch = IOBatch(ctx, depth)
    bufs = [bytearray(BLOCK) for _ in range(depth)]
    try:
        for s in range(depth):
            batch.prep_pread(s, fd, bufs[s], offsets[s])
        batch.submit(list(range(depth)))
        k = depth
        done = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            n = batch.reap(1, None)
            slots = batch.done_slots[:n]
            for s in slots:
                batch.set_offset(s, offsets[k & 0xFFFF])
                k += 1
            done += n
            if (done & 0x3FF) < n and time.perf_counter() >= deadline:
                break
            batch.submit(slots)
        elapsed = time.perf_counter() - t0
        while batch.in_flight:
            batch.reap(1, None)
        batch.close()
        return done / elapsed
    finally:
        io_destroy(ctx)
        os.close(fd)


def warm(path: Path) -> None:
    """Read *path* whole so that it is in the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 22):
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--size", default="512M")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--depths", default="1,32,64")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--only", choices=["direct", "cached"], default=None)
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    works = probe()
    fio = have_fio()
    path = make_file(parse_size(args.size), args.dir)
    # The page-cached suite reads a smaller file, re-read into the cache right
    # before every run: this VM reclaims cold page cache within seconds
    # (DAMON), which would otherwise turn "cached" runs into disk runs.
    cpath = make_file(min(parse_size(args.size), 64 << 20), args.dir)
    s = args.seconds

    direct: dict[str, Callable[[int], float]] = {
        "xaio.linux IOBatch": lambda d: xaio_iops(path, d, s, 8, REAP_MAX),
    }
    if works["linux"] is None:  # the O_DIRECT engine where io_uring is blocked
        direct["linux engine"] = lambda d: engine_iops("linux", path, d, s, True)
    cached: dict[str, Callable[[int], float]] = {
        "xaio.linux IOBatch": lambda d: iobatch_cached_iops(cpath, d, s),
    }
    if works["uring"] is None:
        direct["xaio.uring UringBatch"] = lambda d: uring_batch_iops(path, d, s, True)
        direct["uring engine"] = lambda d: engine_iops("uring", path, d, s, True)
        direct["uring engine, registered"] = lambda d: engine_iops(
            "uring", path, d, s, True, register=True
        )
        direct["uring engine, on_done"] = lambda d: engine_callback_iops("uring", path, d, s, True)
        cached["xaio.uring UringBatch"] = lambda d: uring_batch_iops(cpath, d, s, False)
        cached["xaio.uring Ring"] = lambda d: ring_iops(cpath, d, s, False)
        cached["uring engine"] = lambda d: engine_iops("uring", cpath, d, s, False)
        cached["uring engine, on_done"] = lambda d: engine_callback_iops(
            "uring", cpath, d, s, False
        )
    cached["linux engine"] = lambda d: engine_iops("linux", cpath, d, s, False)
    cached["thread engine"] = lambda d: engine_iops("thread", cpath, d, s, False)
    if fio:
        for eng in ("libaio", "io_uring"):
            direct[f"fio {eng}"] = lambda d, e=eng: fio_iops(
                path,
                engine=e,
                iodepth=d,
                seconds=s,
                direct=True,
                extra=[f"--iodepth_batch_submit={d}", "--iodepth_batch_complete_min=1"],
            )
        for eng in ("psync", "io_uring"):
            cached[f"fio {eng}"] = lambda d, e=eng: fio_iops(
                cpath,
                engine=e,
                iodepth=d if e != "psync" else 1,
                seconds=s,
                direct=False,
                # invalidate=0: fio would otherwise drop the file's cache first
                extra=["--invalidate=0"]
                + (
                    [f"--iodepth_batch_submit={d}", "--iodepth_batch_complete_min=1"]
                    if e != "psync"
                    else []
                ),
            )
    suites = {"O_DIRECT": direct, "page-cached": cached}
    if args.only == "direct":
        del suites["page-cached"]
    elif args.only == "cached":
        del suites["O_DIRECT"]
    results: dict[tuple[str, str, int], list[float]] = {}
    try:
        for r in range(args.rounds):
            for suite, contenders in suites.items():
                for d in depths:
                    for label, fn in contenders.items():
                        if label == "fio psync" and d != depths[0]:
                            continue
                        if suite == "page-cached":
                            warm(cpath)
                        results.setdefault((suite, label, d), []).append(fn(d))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        path.unlink()
        cpath.unlink()
    for suite, contenders in suites.items():
        print(
            f"\n{suite}: 4 KiB random reads, {args.size} file, {s}s x {args.rounds} rounds "
            "(median ops/s; ratio to the best fio engine at that depth)"
        )
        rows = []
        for d in depths:
            fio_best = max(
                (
                    median(results[(suite, lb, d)])
                    for lb in contenders
                    if lb.startswith("fio") and (suite, lb, d) in results
                ),
                default=float("nan"),
            )
            # the best fio engine of each round, for paired ratios (the disk's
            # speed drifts between rounds more than between neighbours)
            fio_rounds = [
                results[(suite, lb, d)]
                for lb in contenders
                if lb.startswith("fio") and (suite, lb, d) in results
            ]
            best_per_round = [max(xs) for xs in zip(*fio_rounds, strict=True)] if fio_rounds else []
            for label in contenders:
                if (suite, label, d) not in results:
                    continue
                xs = results[(suite, label, d)]
                v = median(xs)
                ratio = f"{v / fio_best:.2f}x" if fio_best == fio_best else "-"
                paired = (
                    f"{median([x / b for x, b in zip(xs, best_per_round, strict=True)]):.2f}x"
                    if len(best_per_round) == len(xs)
                    else "-"
                )
                rows.append([d, label, f"{v:,.0f}", ratio, paired])
        print(table(["depth", "path", "ops/s", "vs best fio", "paired"], rows))
        print(
            "(vs best fio: ratio of medians; paired: median over rounds of the "
            "ratio to that round's best fio engine)"
        )
        print("\nper round (ops/s):")
        for (st, label, d), xs in results.items():
            if st == suite:
                print(f"  depth {d:>3} {label:<22} " + ", ".join(f"{x:,.0f}" for x in xs))


if __name__ == "__main__":
    main()
