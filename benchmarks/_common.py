"""Shared helpers for the benchmark scripts: test files, fio runs, tables.

The machines are shared and noisy: every script runs the contenders in the
same process run, alternating round by round, and reports medians and ratios,
never absolute numbers compared across runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BLOCK = 4096


def make_file(size: int, directory: str | None = None) -> Path:
    """A file of *size* bytes of non-zero data (written once, then fsynced)."""
    fd, name = tempfile.mkstemp(prefix="xaio-bench-", suffix=".dat", dir=directory)
    chunk = os.urandom(1 << 20)
    try:
        left = size
        while left > 0:
            n = os.write(fd, chunk[: min(left, len(chunk))])
            left -= n
        os.fsync(fd)
    finally:
        os.close(fd)
    return Path(name)


@contextlib.contextmanager
def locked_in_cache(path: Path) -> Iterator[None]:
    """Keep every page of *path* in the page cache while the block runs: a
    shared read-only mapping of the file, ``mlock``-ed (page-cache pages that
    a mapping locks are not reclaimed, so a "cached" benchmark stays cached
    when the machine's memory reclaim or another program's cache dropping
    runs meanwhile).  Best effort: without the privilege, the block runs
    unlocked."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    finally:
        os.close(fd)
    if addr in (None, ctypes.c_void_p(-1).value):
        yield
        return
    try:
        libc.mlock(addr, size)  # faults every page in; a failure leaves it unlocked
        yield
    finally:
        libc.munmap(addr, size)


def drive_batch(
    batch: Any,
    fd: int,
    bufs: Sequence[Any],
    offsets: Sequence[int],
    seconds: float,
    chunk: int,
    reap_max: int,
) -> float:
    """Keep every slot of *batch* (an ``xaio.linux.IOBatch`` or an
    ``xaio.uring.UringBatch``: the same vocabulary) reading ``BLOCK`` bytes of
    *fd* into its buffer at the next of *offsets* (a power-of-two count) for
    *seconds*: reap at most *reap_max* completions (0: all there are), give
    those slots new offsets, resubmit them with one kernel call per *chunk*.
    Waits for what is still in flight at the end; returns reads per second."""
    depth = len(bufs)
    mask = len(offsets) - 1
    for s in range(depth):
        batch.prep_pread(s, fd, bufs[s], offsets[s])
    batch.submit(list(range(depth)), chunk)
    k = depth
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
        submit(slots, chunk)
    elapsed = time.perf_counter() - t0
    while batch.in_flight:
        batch.reap(1, None)
    return done / elapsed


def drop_cache(path: Path) -> None:
    """Ask the kernel to forget *path*'s cached pages (best effort)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def have_fio() -> bool:
    return shutil.which("fio") is not None


def fio_iops(
    path: Path,
    *,
    engine: str,
    iodepth: int,
    seconds: float,
    direct: bool,
    rw: str = "randread",
    bs: int = BLOCK,
    extra: Sequence[str] = (),
) -> float:
    """Run one fio job on *path* and return its read IOPS."""
    cmd = [
        "fio",
        "--name=xaio-peer",
        f"--filename={path}",
        f"--ioengine={engine}",
        f"--iodepth={iodepth}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--direct={int(direct)}",
        f"--runtime={seconds}",
        "--time_based=1",
        "--ramp_time=0",
        "--norandommap=1",
        "--randrepeat=0",
        "--group_reporting=1",
        "--output-format=json",
        *extra,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    data = json.loads(out[out.index("{") :])
    return float(data["jobs"][0]["read"]["iops"])


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for k, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if k == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
