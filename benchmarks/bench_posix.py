"""xaio.posix against glibc's own POSIX AIO, in the same run.

Three contenders run the same loop -- xaio.posix on the thread engine (the
default), xaio.posix on io_uring (``aio_init(engine="uring")``) and glibc:
keep ``--depth`` (32) 4 KiB ``aio_read`` requests outstanding at random
aligned offsets, ``aio_suspend`` on the list, then ``aio_error`` /
``aio_return`` each finished request and resubmit it.  The aiocbs are the
ones a user writes after reading ``aio(7)``:
``aiocb(aio_fildes=fd, aio_buf=mmap.mmap(-1, 4096), aio_nbytes=4096,
aio_offset=...)``; glibc reads into the same mappings, its functions called
through ctypes (``_glibc.py``).  Rounds alternate (thread, uring, glibc,
thread, ...) on the same file; printed per round, then the median ops/s and
the median of the per-round paired ratios.  Two files: one in the page
cache, one opened with O_DIRECT (anonymous mappings are page-aligned).

Run::

    .venv/bin/python benchmarks/bench_posix.py [--rounds 5] [--seconds 1.0] [--dir DIR]

``--no-inline`` turns off the RWF_NOWAIT page-cache fast path of the thread
and uring engines, to measure the worker-thread and ring paths alone;
``--no-uring`` drops the io_uring column; ``--cpus 0`` runs the whole process
(every contender's threads: glibc's helpers, xaio's workers and reaper) on
the listed CPUs only.  Each round also measures the process's CPU time
(user + system, all threads) per request: glibc's helper thread runs beside
the caller on a second CPU when it has one, so ops/s alone hides what a
request costs.  Where ``fio`` is installed, the
O_DIRECT file ends with one fio libaio run at the same depth (its IOPS in
the last column), to show whether the device or the CPU bounds the run.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import mmap
import os
import platform
import random
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _glibc
import xaio.posix as P
from _common import fio_iops, have_fio, locked_in_cache, make_file
from _glibc import glibc_aiocb
from xaio.engine import probe

BLOCK = 4096


# --- glibc's POSIX AIO through ctypes (shared with tests/posix/test_parity_posix.py) --------


def _load_glibc() -> Any:
    try:
        return _glibc.load()
    except OSError as e:
        raise SystemExit(str(e)) from None


# --- the two loops -------------------------------------------------------------------


def run_xaio(fd: int, bufs: list[Any], offsets: list[int], seconds: float) -> float:
    cbs = [
        P.aiocb(aio_fildes=fd, aio_buf=bufs[i], aio_nbytes=BLOCK, aio_offset=offsets[i])
        for i in range(len(bufs))
    ]
    aio_read, aio_error, aio_return, aio_suspend = (
        P.aio_read,
        P.aio_error,
        P.aio_return,
        P.aio_suspend,
    )
    EINPROGRESS = errno.EINPROGRESS
    noff = len(offsets)
    k = len(cbs)
    for cb in cbs:
        aio_read(cb)
    done = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    stop = False
    while True:
        aio_suspend(cbs)
        for cb in cbs:
            if aio_error(cb) != EINPROGRESS:
                if aio_return(cb) != BLOCK:
                    raise RuntimeError(f"xaio read failed: {os.strerror(aio_error(cb))}")
                done += 1
                cb.aio_offset = offsets[(done + k) % noff]
                aio_read(cb)
        if done & 0xFF < k and time.perf_counter() > deadline:
            stop = True
        if stop:
            break
    elapsed = time.perf_counter() - t0
    for cb in cbs:  # drain (not counted)
        while aio_error(cb) == EINPROGRESS:
            aio_suspend([cb])
        aio_return(cb)
    return done / elapsed


def run_glibc(lib: Any, fd: int, addrs: list[int], offsets: list[int], seconds: float) -> float:
    k = len(addrs)
    cbs = [glibc_aiocb() for _ in range(k)]
    ptrs = [ctypes.pointer(cb) for cb in cbs]
    arr = (ctypes.POINTER(glibc_aiocb) * k)(*ptrs)
    for i, cb in enumerate(cbs):
        cb.aio_fildes = fd
        cb.aio_buf = addrs[i]
        cb.aio_nbytes = BLOCK
        cb.aio_offset = offsets[i]
        cb.aio_sigevent.sigev_notify = 1  # SIGEV_NONE
    aio_read, aio_error, aio_return, aio_suspend = (
        lib.aio_read,
        lib.aio_error,
        lib.aio_return,
        lib.aio_suspend,
    )
    EINPROGRESS = errno.EINPROGRESS
    noff = len(offsets)
    for p in ptrs:
        if aio_read(p) != 0:
            raise OSError(ctypes.get_errno(), "glibc aio_read")
    done = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        aio_suspend(arr, k, None)
        for i in range(k):
            p = ptrs[i]
            if aio_error(p) != EINPROGRESS:
                if aio_return(p) != BLOCK:
                    raise RuntimeError("glibc read failed")
                done += 1
                cbs[i].aio_offset = offsets[(done + k) % noff]
                aio_read(p)
        if done & 0xFF < k and time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - t0
    for i in range(k):
        while aio_error(ptrs[i]) == EINPROGRESS:
            aio_suspend(ctypes.byref(ptrs[i]), 1, None)
        aio_return(ptrs[i])
    return done / elapsed


# --- driver --------------------------------------------------------------------------


Row = tuple[str, list[float], list[float], list[float], list[list[float]]]


def timed(run: Callable[[], float]) -> tuple[float, float]:
    """Run one round: its ops/s and its CPU time per request (us, the whole
    process: user + system, every thread)."""
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    rate = run()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    used = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    return rate, used / (rate * wall) * 1e6


def _timed(run: Callable[[], float], cpu: list[float]) -> float:
    """:func:`timed`, appending the CPU time per request to *cpu*."""
    rate, used = timed(run)
    cpu.append(used)
    return rate


def bench(
    label: str,
    fd: int,
    depth: int,
    file_size: int,
    rounds: int,
    seconds: float,
    lib: Any,
    before_round: Callable[[], None],
    uring: bool,
) -> Row:
    rng = random.Random(42)
    offsets = [rng.randrange(file_size // BLOCK) * BLOCK for _ in range(1 << 16)]
    # What a user writes: one anonymous mapping per request (page-aligned, so
    # good for O_DIRECT too), glibc reading into the very same pages.
    bufs = [mmap.mmap(-1, BLOCK) for _ in range(depth)]
    addrs = [ctypes.addressof(ctypes.c_char.from_buffer(b)) for b in bufs]
    xs: list[float] = []
    us: list[float] = []
    gs: list[float] = []
    cpu: list[list[float]] = [[], [], []]  # CPU us per request: thread, uring, glibc

    def on(engine: str) -> None:
        if engine != current[0]:
            P.aio_init(engine=engine)
            current[0] = engine

    current = ["thread"]
    P.aio_init()
    run_xaio(fd, bufs, offsets, 0.2)  # warm-up: start threads, fill caches
    if uring:
        on("uring")
        run_xaio(fd, bufs, offsets, 0.2)
    run_glibc(lib, fd, addrs, offsets, 0.2)
    for _ in range(rounds):
        before_round()
        on("thread")
        xs.append(_timed(lambda: run_xaio(fd, bufs, offsets, seconds), cpu[0]))
        if uring:
            before_round()
            on("uring")
            us.append(_timed(lambda: run_xaio(fd, bufs, offsets, seconds), cpu[1]))
        before_round()
        gs.append(_timed(lambda: run_glibc(lib, fd, addrs, offsets, seconds), cpu[2]))
    on("thread")
    print(
        f"  {label}: xaio/thread {[round(v) for v in xs]}  "
        f"xaio/uring {[round(v) for v in us]}  glibc {[round(v) for v in gs]}",
        flush=True,
    )
    print(
        f"  {label} per-round ratios: thread/glibc {_ratios(xs, gs)}  "
        f"uring/glibc {_ratios(us, gs)}",
        flush=True,
    )
    print(
        f"  {label} CPU us per request: thread {[round(v, 2) for v in cpu[0]]}  "
        f"uring {[round(v, 2) for v in cpu[1]]}  glibc {[round(v, 2) for v in cpu[2]]}",
        flush=True,
    )
    return label, xs, us, gs, cpu


def _ratios(a: list[float], b: list[float]) -> list[float]:
    """Round-by-round ratios a/b (the rounds of one pair ran back to back)."""
    return [round(x / y, 2) for x, y in zip(a, b, strict=False)]


def _median_ratio(a: list[float], b: list[float]) -> str:
    return f"{statistics.median(_ratios(a, b)):.2f}" if a and b else "n/a"


def _fio(path: Path, args: argparse.Namespace, direct: bool) -> str:
    """fio's IOPS on the same file and depth (libaio), or "n/a": shows whether
    the device or the CPU bounds the run."""
    if not have_fio():
        return "n/a"
    iops = fio_iops(path, engine="libaio", iodepth=args.depth, seconds=args.seconds, direct=direct)
    return f"{iops:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--cached-mib", type=int, default=64)
    ap.add_argument("--direct-mib", type=int, default=256)
    ap.add_argument("--dir", default=None, help="directory for the test files (not tmpfs)")
    ap.add_argument("--only", choices=["cached", "direct"], default=None)
    ap.add_argument(
        "--no-inline",
        action="store_true",
        help="disable the RWF_NOWAIT page-cache fast path (reads go to workers or the ring)",
    )
    ap.add_argument("--no-uring", action="store_true", help="skip the xaio-on-io_uring column")
    ap.add_argument(
        "--cpus",
        default=None,
        help="comma-separated CPU numbers: run every contender's threads on these only",
    )
    args = ap.parse_args()
    if args.cpus is not None:
        # before any thread exists: every thread made later inherits it
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    if args.no_inline:
        import xaio._pagecache

        xaio._pagecache._RWF_NOWAIT = None
    lib = _load_glibc()
    reason = None if args.no_uring else probe()["uring"]
    uring = not args.no_uring and reason is None
    if reason is not None:
        print(f"  io_uring unavailable, no uring column: {reason}")
    rows = []
    fio: list[str] = ["n/a", "n/a"]  # cached (not run: libaio is synchronous there), O_DIRECT
    print(f"load average at the start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cpus, "
        f"depth {args.depth}, 4 KiB random reads, {args.rounds} rounds of {args.seconds}s"
        + (", no inline fast path" if args.no_inline else "")
        + (f", on CPUs {sorted(os.sched_getaffinity(0))}" if args.cpus is not None else "")
    )
    if args.only in (None, "cached"):
        path = make_file(args.cached_mib << 20, args.dir)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                with locked_in_cache(path):  # into the page cache, and kept there
                    rows.append(
                        bench(
                            "cached",
                            fd,
                            args.depth,
                            args.cached_mib << 20,
                            args.rounds,
                            args.seconds,
                            lib,
                            lambda: None,
                            uring,
                        )
                    )
            finally:
                os.close(fd)
        finally:
            path.unlink()
    if args.only in (None, "direct"):
        path = make_file(args.direct_mib << 20, args.dir)
        try:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            except OSError as e:
                print(f"  O_DIRECT not supported in {path.parent}: {e}")
            else:
                try:
                    rows.append(
                        bench(
                            "O_DIRECT",
                            fd,
                            args.depth,
                            args.direct_mib << 20,
                            args.rounds,
                            args.seconds,
                            lib,
                            lambda: None,
                            uring,
                        )
                    )
                finally:
                    os.close(fd)
                fio[1] = _fio(path, args, direct=True)
        finally:
            path.unlink()
    print()
    print(
        "| file | xaio.posix thread ops/s | xaio.posix uring ops/s | glibc POSIX AIO ops/s "
        "| thread / glibc | uring / glibc | CPU us/request thread, uring, glibc "
        "| fio libaio IOPS (same depth) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, xs, us, gs, cpu in rows:
        u = "n/a" if not us else f"{statistics.median(us):,.0f}"
        per = ", ".join("n/a" if not c else f"{statistics.median(c):.2f}" for c in cpu)
        print(
            f"| {label} | {statistics.median(xs):,.0f} | {u} | {statistics.median(gs):,.0f} "
            f"| {_median_ratio(xs, gs)} | {_median_ratio(us, gs)} | {per} "
            f"| {fio[label == 'O_DIRECT']} |"
        )
    print(
        "(ops/s and CPU: medians of the rounds; ratios: medians of the per-round paired ratios;"
        " CPU: user + system time of the whole process, every thread, per request)"
    )
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
