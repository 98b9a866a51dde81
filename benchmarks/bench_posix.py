"""xaio.posix against glibc's own POSIX AIO, in the same run.

Three contenders run the same loop -- xaio.posix on the thread engine (the
default), xaio.posix on io_uring (``aio_init(engine="uring")``) and glibc:
keep ``--depth`` (32) 4 KiB ``aio_read`` requests outstanding at random
aligned offsets, ``aio_suspend`` on the list, then ``aio_error`` /
``aio_return`` each finished request and resubmit it.  glibc's functions are
called through ctypes with a ``struct aiocb`` matching its x86-64 layout.
Rounds alternate (thread, uring, glibc, thread, ...) on the same file; the
table shows median ops/s and the ratios.  Two files: one in the page cache,
one opened with O_DIRECT (buffers from ``xaio.aligned_buffer``).

Run::

    .venv/bin/python benchmarks/bench_posix.py [--rounds 5] [--seconds 1.0] [--dir DIR]

``--no-inline`` turns off the RWF_NOWAIT page-cache fast path of the thread
and uring engines, to measure the worker-thread and ring paths alone;
``--no-uring`` drops the io_uring column.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xaio
import xaio.posix as P
from xaio.engine import probe

BLOCK = 4096


# --- glibc's POSIX AIO through ctypes ----------------------------------------------


class _sigval(ctypes.Union):
    _fields_ = [("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p)]


class _sigevent(ctypes.Structure):
    _fields_ = [
        ("sigev_value", _sigval),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("_pad", ctypes.c_byte * 48),
    ]


class glibc_aiocb(ctypes.Structure):
    """glibc's ``struct aiocb`` on x86-64 (168 bytes)."""

    _fields_ = [
        ("aio_fildes", ctypes.c_int),
        ("aio_lio_opcode", ctypes.c_int),
        ("aio_reqprio", ctypes.c_int),
        ("aio_buf", ctypes.c_void_p),
        ("aio_nbytes", ctypes.c_size_t),
        ("aio_sigevent", _sigevent),
        ("__next_prio", ctypes.c_void_p),
        ("__abs_prio", ctypes.c_int),
        ("__policy", ctypes.c_int),
        ("__error_code", ctypes.c_int),
        ("__return_value", ctypes.c_ssize_t),
        ("aio_offset", ctypes.c_int64),
        ("__glibc_reserved", ctypes.c_char * 32),
    ]


assert ctypes.sizeof(glibc_aiocb) == 168, ctypes.sizeof(glibc_aiocb)
assert glibc_aiocb.aio_offset.offset == 128


def _load_glibc() -> Any:
    for name in (ctypes.util.find_library("rt"), ctypes.util.find_library("c"), "libc.so.6"):
        if not name:
            continue
        lib = ctypes.CDLL(name, use_errno=True)
        if hasattr(lib, "aio_read"):
            ptr = ctypes.POINTER(glibc_aiocb)
            lib.aio_read.argtypes = [ptr]
            lib.aio_error.argtypes = [ptr]
            lib.aio_return.argtypes = [ptr]
            lib.aio_return.restype = ctypes.c_ssize_t
            lib.aio_suspend.argtypes = [ctypes.POINTER(ptr), ctypes.c_int, ctypes.c_void_p]
            return lib
    raise SystemExit("glibc POSIX AIO not found")


# --- the two loops -------------------------------------------------------------------


def run_xaio(fd: int, bufs: list[Any], offsets: list[int], seconds: float) -> float:
    cbs = [P.aiocb(fd, offsets[i], bufs[i]) for i in range(len(bufs))]
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


def make_file(size: int, directory: str | None) -> Path:
    fd, name = tempfile.mkstemp(prefix="xaio-bench-posix-", suffix=".dat", dir=directory)
    chunk = os.urandom(1 << 20)
    try:
        for _ in range(size >> 20):
            os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return Path(name)


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
) -> tuple[str, float, float | None, float]:
    rng = random.Random(42)
    offsets = [rng.randrange(file_size // BLOCK) * BLOCK for _ in range(1 << 16)]
    bufs = [xaio.aligned_buffer(BLOCK) for _ in range(depth)]
    addrs = [ctypes.addressof(ctypes.c_char.from_buffer(b)) for b in bufs]
    xs: list[float] = []
    us: list[float] = []
    gs: list[float] = []

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
        xs.append(run_xaio(fd, bufs, offsets, seconds))
        if uring:
            before_round()
            on("uring")
            us.append(run_xaio(fd, bufs, offsets, seconds))
        before_round()
        gs.append(run_glibc(lib, fd, addrs, offsets, seconds))
    on("thread")
    x, g = statistics.median(xs), statistics.median(gs)
    u = statistics.median(us) if us else None
    print(
        f"  {label}: xaio/thread {[round(v) for v in xs]}  "
        f"xaio/uring {[round(v) for v in us]}  glibc {[round(v) for v in gs]}",
        flush=True,
    )
    return label, x, u, g


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
    args = ap.parse_args()
    if args.no_inline:
        import xaio._inline

        xaio._inline._RWF_NOWAIT = None
    lib = _load_glibc()
    reason = None if args.no_uring else probe()["uring"]
    uring = not args.no_uring and reason is None
    if reason is not None:
        print(f"  io_uring unavailable, no uring column: {reason}")
    rows = []
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cpus, "
        f"depth {args.depth}, 4 KiB random reads, {args.rounds} rounds of {args.seconds}s"
        + (", no inline fast path" if args.no_inline else "")
    )
    if args.only in (None, "cached"):
        path = make_file(args.cached_mib << 20, args.dir)
        try:
            fd = os.open(path, os.O_RDONLY)
            with open(path, "rb") as f:  # into the page cache
                while f.read(1 << 20):
                    pass
            try:
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
        finally:
            path.unlink()
    print()
    print(
        "| file | xaio.posix thread ops/s | xaio.posix uring ops/s | glibc POSIX AIO ops/s "
        "| thread / glibc | uring / glibc | uring / thread |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, x, u, g in rows:
        us_ = "n/a" if u is None else f"{u:,.0f}"
        ug = "n/a" if u is None else f"{u / g:.2f}"
        ux = "n/a" if u is None else f"{u / x:.2f}"
        print(f"| {label} | {x:,.0f} | {us_} | {g:,.0f} | {x / g:.2f} | {ug} | {ux} |")


if __name__ == "__main__":
    main()
