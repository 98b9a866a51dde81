"""Quick UringEngine throughput: 4 KiB page-cached random preads at several depths.

Usage: .venv/bin/python benchmarks/bench_uring_quick.py [seconds-per-depth]

Keeps *depth* reads in flight through the Engine protocol (submit a batch,
``reap(0)`` right after submitting, block in ``reap(None)`` only when nothing
is there), with one reused buffer per slot, and reports operations per second,
next to plain ``os.preadv`` in a loop on the same file for scale.  Numbers from
shared, noisy machines: compare ratios within one run, not across runs.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time

from xaio._ops import OpCode, Operation
from xaio.uring import UringEngine

FILE_SIZE = 64 << 20
BLOCK = 4096


def bench_engine(fd: int, depth: int, seconds: float) -> float:
    rng = random.Random(depth)
    nblocks = FILE_SIZE // BLOCK
    bufs = [bytearray(BLOCK) for _ in range(depth)]
    done: list[Operation] = []
    on_done = done.append
    count = 0
    with UringEngine(max(depth * 2, 8)) as eng:
        batch = [
            Operation(OpCode.READ, fd, [bufs[i]], rng.randrange(nblocks) * BLOCK,
                      on_done=on_done, context=i)
            for i in range(depth)
        ]  # fmt: skip
        submit, reap = eng.submit, eng.reap
        submit(batch)
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while True:
            if not reap(0):
                reap(None)
            count += len(done)
            if time.perf_counter() > deadline:
                break
            batch = [
                Operation(OpCode.READ, fd, [bufs[op.context]], rng.randrange(nblocks) * BLOCK,
                          on_done=on_done, context=op.context)
                for op in done
            ]  # fmt: skip
            for op in done:
                assert op.result == BLOCK, op
            done.clear()
            submit(batch)
        elapsed = time.perf_counter() - t0
        done.clear()
    return count / elapsed


def bench_preadv(fd: int, seconds: float) -> float:
    rng = random.Random(0)
    nblocks = FILE_SIZE // BLOCK
    buf = bytearray(BLOCK)
    count = 0
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            os.preadv(fd, [buf], rng.randrange(nblocks) * BLOCK)
        count += 100
    return count / (time.perf_counter() - t0)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    with tempfile.NamedTemporaryFile(dir="/tmp") as f:
        block = os.urandom(1 << 20)
        for _ in range(FILE_SIZE >> 20):
            f.write(block)
        f.flush()
        fd = os.open(f.name, os.O_RDONLY)
        try:
            os.preadv(fd, [bytearray(FILE_SIZE)], 0)  # warm the page cache
            print(f"os.preadv loop        : {bench_preadv(fd, seconds):>9,.0f} ops/s")
            for depth in (1, 32, 64):
                rate = bench_engine(fd, depth, seconds)
                print(f"UringEngine depth {depth:>3} : {rate:>9,.0f} ops/s")
        finally:
            os.close(fd)


if __name__ == "__main__":
    main()
