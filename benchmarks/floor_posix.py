"""Where the time of a page-cached POSIX AIO request goes, for ``bench_posix.py``.

``bench_posix.py`` runs the loop a user writes (32 outstanding 4 KiB
``aio_read`` at random offsets of a cached file, ``aio_suspend``,
``aio_error`` / ``aio_return``, resubmit).  This script measures its parts:

- the cost of each call in xaio, in ns (the least of many short timed loops,
  all interleaved, the loop's own cost included): a bare ``os.preadv(...,
  RWF_NOWAIT)`` loop at the same offsets (what no Python AIO layer can go
  below), ``aio_read`` of the C-shaped aiocb (an mmap, ``aio_nbytes`` given)
  on its page-cache fast path, ``aio_error`` and ``aio_return`` of a finished
  request, ``aio_suspend`` on 32 finished requests, and glibc's
  ``aio_error`` / ``aio_return`` through ctypes;
- the whole loop of ``bench_posix.py``, xaio (thread engine) and glibc,
  with every thread of the process on one CPU and then on all of them,
  alternating: ops/s and the process's CPU time (user + system, every
  thread) per request.  glibc runs each request on a helper thread, so its
  rate depends on whether that thread gets a CPU of its own; xaio's cached
  reads run in the caller's thread;
- how far a leaner ``aio_read`` could take that loop, with all CPUs: the
  loop run with two stand-ins for ``aio_read``'s page-cache fast path on
  the C-shaped aiocb (they use the aiocb's private cached shape and state,
  as the fast path does; anything else goes to the real ``aio_read``):
  "reader call" keeps the engine's reader (``Engine.nowait_reader``, the one
  home of the page-cache rule) and drops every other check and the state
  method's frame; "reader inlined" does the ``preadv2(RWF_NOWAIT)`` itself,
  without the reader's rule (flag cache, held-back work, close): the
  ceiling of any ``aio_read`` that makes one system call per request;
- whether a second Python thread could use the second CPU as glibc's
  helper does: the bare ``os.preadv`` loop in one thread, then in two
  threads at once (each its own buffer; the GIL is released only inside
  the system call), alternating: the summed ops/s of both.

Run::

    .venv/bin/python benchmarks/floor_posix.py [--rounds 3] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import _glibc
import bench_posix
import xaio.posix as P
from _common import locked_in_cache, make_file
from _glibc import glibc_aiocb
from bench_posix import timed
from xaio.posix import _request, _runtime

BLOCK = 4096
N = 20_000


def per_call(fd: int, offsets: list[int], lib: Any) -> dict[str, float]:
    """ns per call of each loop below: the least over interleaved trials."""
    buf = mmap.mmap(-1, BLOCK)
    cb = P.aiocb(aio_fildes=fd, aio_buf=buf, aio_nbytes=BLOCK, aio_offset=0)
    P.aio_read(cb)  # the first one starts the engine: not on the fast path
    P.aio_suspend([cb])
    done = [P.aiocb(fd, 0, mmap.mmap(-1, BLOCK), BLOCK) for _ in range(32)]
    for c in done:
        P.aio_read(c)
    P.aio_suspend([done[-1]])
    preadv, nowait = os.preadv, os.RWF_NOWAIT
    aio_read, aio_error, aio_return, aio_suspend = (
        P.aio_read,
        P.aio_error,
        P.aio_return,
        P.aio_suspend,
    )
    gcb = glibc_aiocb()
    gcb.aio_fildes, gcb.aio_nbytes = fd, BLOCK
    gcb.aio_buf = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    gcb.aio_sigevent.sigev_notify = 1  # SIGEV_NONE
    gp = ctypes.pointer(gcb)
    lib.aio_read(gp)
    while lib.aio_error(gp) == 115:  # EINPROGRESS
        lib.aio_suspend(ctypes.byref(gp), 1, None)
    g_error, g_return = lib.aio_error, lib.aio_return

    def empty() -> None:
        for _ in range(N):
            pass

    def bare() -> None:
        o, b = offsets, (buf,)
        for i in range(N):
            preadv(fd, b, o[i & 0xFFFF], nowait)

    def read() -> None:
        o, c = offsets, cb
        for i in range(N):
            c.aio_offset = o[i & 0xFFFF]
            aio_read(c)

    def read_return() -> None:
        o, c = offsets, cb
        for i in range(N):
            c.aio_offset = o[i & 0xFFFF]
            aio_read(c)
            aio_return(c)

    def error() -> None:
        c = cb
        for _ in range(N):
            aio_error(c)

    def suspend() -> None:
        d = done
        for _ in range(N):
            aio_suspend(d)

    def glibc_error() -> None:
        for _ in range(N):
            g_error(gp)

    def glibc_return() -> None:
        for _ in range(N):
            g_return(gp)

    loops: dict[str, Callable[[], None]] = {
        "empty loop": empty,
        "os.preadv RWF_NOWAIT": bare,
        "aio_read (fast path)": read,
        "aio_read + aio_return": read_return,
        "aio_error": error,
        "aio_suspend (32 done)": suspend,
        "glibc aio_error (ctypes)": glibc_error,
        "glibc aio_return (ctypes)": glibc_return,
    }
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(30):
        for name, loop in loops.items():
            t0 = time.perf_counter()
            loop()
            best[name] = min(best[name], (time.perf_counter() - t0) / N * 1e9)
    best["aio_return"] = best.pop("aio_read + aio_return") - best["aio_read (fast path)"]
    return best


def lean_reads() -> dict[str, Callable[[Any], None]]:
    """The stand-ins for ``aio_read`` described in the module's docstring."""
    real = P.aio_read
    preadv, nowait = os.preadv, os.RWF_NOWAIT
    held, done = _request.HELD, _request.DONE

    def reader_call(cb: Any) -> None:
        shape = cb._shape
        if shape and cb._state < held:
            fd, _, n, bufs = shape
            read_nowait = _runtime._read_nowait
            if read_nowait is not None and read_nowait(fd, bufs, cb.aio_offset, n) is not None:
                cb._error, cb._return, cb._state = 0, n, done
                return
        real(cb)

    def reader_inlined(cb: Any) -> None:
        shape = cb._shape
        if shape and cb._state < held:
            fd, _, n, bufs = shape
            try:
                got = preadv(fd, bufs, cb.aio_offset, nowait)
            except OSError:
                got = -1
            if got == n:
                cb._error, cb._return, cb._state = 0, n, done
                return
        real(cb)

    return {"reader call": reader_call, "reader inlined": reader_inlined}


def run_with(
    read: Callable[[Any], None], fd: int, bufs: list[Any], offsets: list[int], seconds: float
) -> float:
    """``bench_posix.run_xaio`` with *read* standing in for ``xaio.posix.aio_read``."""
    real = P.aio_read
    P.aio_read = read  # type: ignore[assignment]
    try:
        return bench_posix.run_xaio(fd, bufs, offsets, seconds)
    finally:
        P.aio_read = real


def preadv_threads(fd: int, offsets: list[int], seconds: float, threads: int) -> float:
    """The bare ``os.preadv(RWF_NOWAIT)`` loop run by *threads* threads at
    once for *seconds*: their summed ops/s."""
    counts: list[int] = []

    def loop() -> None:
        buf, preadv, nowait, n = mmap.mmap(-1, BLOCK), os.preadv, os.RWF_NOWAIT, 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for off in offsets[:4096]:
                preadv(fd, (buf,), off, nowait)
            n += 4096
        counts.append(n)

    others = [threading.Thread(target=loop) for _ in range(threads - 1)]
    t0 = time.perf_counter()
    for t in others:
        t.start()
    loop()
    for t in others:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def pin(cpus: set[int]) -> None:
    """Every thread of this process (and those made later) on *cpus*."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # pragma: no cover - the thread ended meanwhile
            pass


def cached_offsets(path: Any, size: int) -> list[int]:
    """Read the file at *path* into the page cache; the random block
    offsets every contender reads, the same for each."""
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    rng = random.Random(42)
    return [rng.randrange(size // BLOCK) * BLOCK for _ in range(1 << 16)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--dir", default=None, help="directory for the test file (not tmpfs)")
    args = ap.parse_args()
    lib = _glibc.load()
    size = 64 << 20
    path = make_file(size, args.dir)
    print(f"load average at the start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            with locked_in_cache(path):  # in the page cache, kept there
                offsets = cached_offsets(path, size)
                P.aio_init()
                print("ns per call (least of 30 interleaved loops of 20,000 calls):")
                for name, ns in per_call(fd, offsets, lib).items():
                    print(f"  {name:28s} {ns:7.0f}")
                bufs = [mmap.mmap(-1, BLOCK) for _ in range(32)]
                addrs = [ctypes.addressof(ctypes.c_char.from_buffer(b)) for b in bufs]
                every = os.sched_getaffinity(0)
                one = {min(every)}
                results: dict[str, list[tuple[float, float]]] = {}
                lean = lean_reads()
                for _ in range(args.rounds):
                    for name, read in lean.items():
                        pin(every)
                        results.setdefault(f"xaio, {name}, {len(every)} CPU", []).append(
                            timed(partial(run_with, read, fd, bufs, offsets, args.seconds))
                        )
                    for cpus in (one, every):
                        pin(cpus)
                        where = f"{len(cpus)} CPU"
                        results.setdefault(f"xaio, {where}", []).append(
                            timed(lambda: bench_posix.run_xaio(fd, bufs, offsets, args.seconds))
                        )
                        pin(cpus)  # glibc's helpers of an earlier round too
                        results.setdefault(f"glibc, {where}", []).append(
                            timed(
                                lambda: bench_posix.run_glibc(lib, fd, addrs, offsets, args.seconds)
                            )
                        )
                pin(every)
                one_two = [
                    (
                        preadv_threads(fd, offsets, args.seconds, 1),
                        preadv_threads(fd, offsets, args.seconds, 2),
                    )
                    for _ in range(args.rounds)
                ]
                print(
                    "the loop of bench_posix.py, cached (ops/s; CPU us per request), every round:"
                )
                for name, got in results.items():
                    rates = ", ".join(f"{r:,.0f}" for r, _ in got)
                    cpu = ", ".join(f"{c:.2f}" for _, c in got)
                    med = statistics.median(r for r, _ in got)
                    print(f"  {name:30s} median {med:9,.0f} ops/s  [{rates}]  CPU us [{cpu}]")
                print("bare os.preadv RWF_NOWAIT loop, ops/s summed over the threads, every round:")
                for i, label in enumerate(("1 thread", "2 threads")):
                    got2 = [r[i] for r in one_two]
                    rates = ", ".join(f"{r:,.0f}" for r in got2)
                    print(f"  {label:14s} median {statistics.median(got2):9,.0f} ops/s  [{rates}]")
        finally:
            os.close(fd)
    finally:
        path.unlink()
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
