"""``xaio cp`` against ``cp`` and ``dd`` on one large file, in one run.

Usage::

    python benchmarks/bench_cp.py [--size 1G] [--rounds 3] [--dir /var/tmp]
                                  [--xaio-args "--bs 1M --iodepth 8"]

Every round copies the same source file with each contender, in turn
(alternating, because the machine is shared and noisy).  Before each copy the
source's cached pages are dropped (``posix_fadvise(POSIX_FADV_DONTNEED)``), so
every contender reads from the device; after it, the destination is
``fsync``-ed, timed separately, so that "copy" (what the user waits for at the
prompt) and "copy + fsync" (until the data is on the device) are both shown.
The table gives the median over the rounds and the ratio to ``cp``.

Contenders: ``xaio cp`` (buffered and ``--direct``), ``cp`` (coreutils; 9.x
uses ``copy_file_range``, an in-kernel copy), ``dd bs=1M``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import drop_cache, make_file, median, table


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def contenders(xaio_args: list[str]) -> dict[str, list[str]]:
    """name -> command template ({src} and {dst} filled in)."""
    py = [sys.executable, "-m", "xaio", "cp", "-q", *xaio_args]
    return {
        "xaio cp": [*py, "{src}", "{dst}"],
        "xaio cp --direct": [*py, "--direct", "{src}", "{dst}"],
        "cp": ["cp", "{src}", "{dst}"],
        "dd bs=1M": ["dd", "if={src}", "of={dst}", "bs=1M", "status=none"],
    }


def fsync_path(path: Path) -> float:
    """fsync *path*; return the seconds it took."""
    t = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t


def one_copy(cmd: list[str], src: Path, dst: Path) -> tuple[float, float]:
    """(seconds of the command, seconds of the fsync after it)."""
    drop_cache(src)
    argv = [a.format(src=src, dst=dst) for a in cmd]
    t = time.perf_counter()
    subprocess.run(argv, check=True)
    copy = time.perf_counter() - t
    sync = fsync_path(dst)
    if dst.stat().st_size != src.stat().st_size:
        raise SystemExit(f"{argv[0]}: wrong size for {dst}")
    drop_cache(dst)
    dst.unlink()
    return copy, sync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="source file size (default 1G)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--dir", default=None, help="directory for the files (default: $TMPDIR)")
    ap.add_argument("--xaio-args", default="", help="extra options for xaio cp")
    args = ap.parse_args()
    size = parse_size(args.size)
    cmds = contenders(shlex.split(args.xaio_args))
    src = make_file(size, args.dir)
    dst = src.with_suffix(".copy")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    try:
        # check once that xaio's copy is exact (not timed)
        subprocess.run(
            [sys.executable, "-m", "xaio", "cp", "-q", "--verify", str(src), str(dst)], check=True
        )
        dst.unlink()
        for r in range(args.rounds):
            for name, cmd in cmds.items():
                times[name].append(one_copy(cmd, src, dst))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for p in (src, dst):
            if p.exists():
                p.unlink()
    base_copy = median([c for c, _ in times["cp"]])
    base_total = median([c + s for c, s in times["cp"]])
    rows = []
    mib = size / (1 << 20)
    for name, ts in times.items():
        c = median([c for c, _ in ts])
        t = median([c + s for c, s in ts])
        rows.append([
            name,
            f"{c:.2f}",
            f"{mib / c:,.0f}",
            f"{t:.2f}",
            f"{mib / t:,.0f}",
            f"{base_copy / c:.2f}x",
            f"{base_total / t:.2f}x",
        ])  # fmt: skip
    print(
        f"copy of a {args.size} file, cold source cache, {args.rounds} rounds alternating "
        "(median seconds; speed-up = cp's time / this time)"
    )
    headers = ["tool", "copy s", "MiB/s", "copy+fsync s", "MiB/s", "speed-up copy",
               "speed-up copy+fsync"]  # fmt: skip
    print(table(headers, rows))


if __name__ == "__main__":
    main()
