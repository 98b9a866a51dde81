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

Each round runs, for every depth, the loop above, the same loop with nothing
but ctypes system calls (the "ctypes floor": no Iocb, no IOEvent, no check,
one io_submit per request -- the least Python can do in this loop's shape),
fio libaio and fio io_uring on the same file (fio is skipped, with a message,
when it is not installed).  The table shows median IOPS, the median of the
per-round ratios of each to the better fio of that round, and, for the two
Python loops, the process's CPU time per request (user + system: the
system calls' share is the same in both, so the difference is the loop's
Python; it moves far less with the device's pace and the other jobs than
the IOPS do); the per-round numbers follow it.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import mmap
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import xaio
from _common import BLOCK, fio_iops, have_fio, make_file, median, table
from bench_linux import parse_size
from bench_posix import timed
from xaio._abi import SYS
from xaio.linux import Iocb, io_destroy, io_getevents, io_setup, io_submit

LOOP, FLOOR = "xaio.linux loop", "ctypes floor"


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


def floor_iops(path: Path, depth: int, seconds: float) -> float:
    """Reads per second of the loop of :func:`plain_iops` written with raw
    ``syscall(2)`` calls through ctypes on preallocated ``struct iocb`` and
    ``io_event`` arrays: reap with ``io_getevents(ctx, 1, depth)``, write
    each completed request's new offset into its iocb, resubmit them one
    ``io_submit`` each (as fio does)."""
    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.syscall
    call.restype = ctypes.c_long
    sys_setup, sys_destroy = SYS["io_setup"], SYS["io_destroy"]
    sys_getevents, sys_submit = SYS["io_getevents"], SYS["io_submit"]
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    blocks = os.fstat(fd).st_size // BLOCK
    rng = random.Random(4321 + depth)
    offsets = [rng.randrange(blocks) * BLOCK for _ in range(1 << 16)]
    mask = len(offsets) - 1
    ctx_id = ctypes.c_ulong(0)
    if call(sys_setup, depth, ctypes.byref(ctx_id)) < 0:
        raise OSError(ctypes.get_errno(), "io_setup")
    ctx = ctypes.c_void_p(ctx_id.value)
    memory = mmap.mmap(-1, BLOCK * depth)
    base = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    iocbs = (ctypes.c_uint64 * (8 * depth))()  # struct iocb: 8 words of 64 bits
    words = memoryview(iocbs).cast("B").cast("Q")
    first = ctypes.addressof(iocbs)
    for i in range(depth):
        words[8 * i] = i  # aio_data: the slot
        words[8 * i + 2] = fd << 32  # aio_lio_opcode 0 (IOCB_CMD_PREAD), aio_fildes
        words[8 * i + 3] = base + BLOCK * i  # aio_buf
        words[8 * i + 4] = BLOCK  # aio_nbytes
        words[8 * i + 5] = offsets[i]  # aio_offset
    pointers = (ctypes.c_void_p * depth)(*[first + 64 * i for i in range(depth)])
    one = [ctypes.c_void_p(ctypes.addressof(pointers) + 8 * i) for i in range(depth)]
    events = (ctypes.c_int64 * (4 * depth))()
    got = memoryview(events).cast("B").cast("q")
    try:
        if call(sys_submit, ctx, depth, pointers) != depth:
            raise OSError(ctypes.get_errno(), "io_submit")
        k = depth
        done = 0
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            n = call(sys_getevents, ctx, 1, depth, events, None)
            if n <= 0:
                raise OSError(ctypes.get_errno(), "io_getevents")
            slots = []
            for j in range(n):
                if got[4 * j + 2] != BLOCK:
                    raise OSError(-got[4 * j + 2], os.strerror(-got[4 * j + 2]))
                slot = got[4 * j]
                words[8 * slot + 5] = offsets[k & mask]
                k += 1
                slots.append(slot)
            done += n
            if time.perf_counter() >= deadline:
                break
            for slot in slots:
                call(sys_submit, ctx, 1, one[slot])
        elapsed = time.perf_counter() - t0
        left = depth - n
        while left > 0:
            left -= call(sys_getevents, ctx, 1, depth, events, None)
        return done / elapsed
    finally:
        call(sys_destroy, ctx)
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
    contenders = [LOOP, FLOOR] + (["fio libaio", "fio io_uring"] if fio else [])
    results: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}  # CPU us per request
    try:
        for r in range(args.rounds):
            for d in depths:
                for name in contenders:
                    if name in (LOOP, FLOOR):
                        run = plain_iops if name == LOOP else floor_iops
                        iops, used = timed(functools.partial(run, path, d, args.seconds))
                        cpu.setdefault((name, d), []).append(used)
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
            max(results[(n, d)][r] for n in contenders[2:]) if fio else float("nan")
            for r in range(args.rounds)
        ]
        for name in contenders:
            xs = results[(name, d)]
            paired = median([x / b for x, b in zip(xs, best, strict=True)])
            used = f"{median(cpu[(name, d)]):.2f}" if (name, d) in cpu else "-"
            rows.append([d, name, f"{median(xs):,.0f}", f"{paired:.2f}x" if fio else "-", used])
    print(
        f"4 KiB O_DIRECT random reads, {args.size} file in {args.dir}, "
        f"{args.seconds}s x {args.rounds} rounds; load {os.getloadavg()[0]:.1f}"
    )
    print(table(["depth", "path", "median IOPS", "vs better fio (paired)", "CPU us/req"], rows))
    print("(paired: median over rounds of IOPS / the round's better fio)")
    print("\nper round (IOPS):")
    for (name, d), xs in results.items():
        print(f"  depth {d:>3} {name:<16} " + ", ".join(f"{x:,.0f}" for x in xs))
    print("\nper round (CPU us per request):")
    for (name, d), xs in cpu.items():
        print(f"  depth {d:>3} {name:<16} " + ", ".join(f"{x:.2f}" for x in xs))


if __name__ == "__main__":
    main()
