"""Whole small files through asyncio: xaio against aiofiles and aiofiles-x.

The workload people run with aiofiles: many files, each opened, read whole
and closed by one of 64 tasks.  Two sets of files in one directory on a real
file system (``--dir``, /var/tmp by default; tmpfs is refused): ``--files``
files of 16 KiB, and as many of mixed sizes (1 KiB to 256 KiB, log-uniform,
the same sizes every run).  Each set is read page-cached (every file read
once just before, then ``--passes`` passes over the set) and cold (``echo 3
> /proc/sys/vm/drop_caches`` just before: pages and dentries gone; one pass).

Contenders, each measured in a fresh process by ``_files_driver.py`` with a
1 ms ticker task beside the readers (its lateness is the loop lag):

- ``xaio open [E]``: ``async with xaio.open(p, "rb") as f: await f.read()``
- ``xaio path [E]``: ``await xaio.Path(p).read_bytes()``

  for each engine E that works here (``XAIO_ENGINE=E``);
- ``(ticker alone)``: no reader, the lag of the machine itself;
- ``aiofiles`` and ``aiofiles-x`` (its C++ backend does the system calls
  inside the event loop), each installed from the package index into its own
  virtual environment under ``--venvs`` (both install the module
  ``aiofiles``), made on first use; a peer whose install fails is skipped
  with the reason.

Rounds alternate every contender on every shape (the order rotates each
round); each round's ratio is xaio's files/s over the best peer's in that
round, and the tables give medians over rounds, then the per-round numbers.

Run (as root, for the cold rounds)::

    .venv/bin/python benchmarks/bench_files.py [--rounds 5] [--files 2000]
        [--tasks 64] [--passes 3] [--dir /var/tmp] [--only SUBSTRING]
        [--engines uring,thread] [--shapes cached-16k,cold-mixed]

The machines are shared and noisy: read ratios within one run, not absolute
numbers across runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, table
from xaio.engine import ENGINE_NAMES, probe

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "_files_driver.py"
PEERS = {"aiofiles": "aiofiles", "aiofiles-x": "aiofiles-x"}  # name -> PyPI requirement
SHAPES = ("cached-16k", "cached-mixed", "cold-16k", "cold-mixed")


@dataclass(frozen=True)
class Contender:
    name: str
    python: str
    lib: str
    engine: str | None = None

    @property
    def is_peer(self) -> bool:
        return self.lib == "aiofiles"

    @property
    def is_xaio(self) -> bool:
        return self.lib.startswith("xaio")


# --- the files ---------------------------------------------------------------------------


def fs_type(path: Path) -> str:
    """The file system type of the mount holding *path* (from /proc/self/mounts)."""
    best, kind = "", "?"
    target = str(path.resolve())
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            mnt = fields[1]
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, fields[2]
    return kind


def make_set(directory: Path, sizes: list[int]) -> Path:
    """Write one file per size in *directory*; return a list file for the driver."""
    directory.mkdir()
    lines = []
    for i, size in enumerate(sizes):
        p = directory / f"f{i:05d}.dat"
        with open(p, "wb") as f:
            f.write(os.urandom(size))
        lines.append(f"{size}\t{p}\n")
    listing = directory.with_suffix(".list")
    listing.write_text("".join(lines))
    return listing


def mixed_sizes(n: int) -> list[int]:
    """*n* sizes from 1 KiB to 256 KiB, log-uniform, the same every run."""
    rnd = random.Random(1516)
    lo, hi = math.log(1024), math.log(256 * 1024)
    return [int(math.exp(rnd.uniform(lo, hi))) for _ in range(n)]


def warm(listing: Path) -> None:
    for line in listing.read_text().splitlines():
        with open(line.split("\t", 1)[1], "rb") as f:
            f.read()


_drop_warned = False


def drop_caches(listing: Path) -> None:
    """Forget pages and dentries (``drop_caches``), or at least the files'
    pages (``POSIX_FADV_DONTNEED``) when this process may not."""
    global _drop_warned
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return
    except OSError as e:
        if not _drop_warned:
            print(f"drop_caches: {e}; dropping only the files' pages", file=sys.stderr)
            _drop_warned = True
    for line in listing.read_text().splitlines():
        fd = os.open(line.split("\t", 1)[1], os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# --- the peers' virtual environments ----------------------------------------------------


def peer_python(venvs: Path, name: str, requirement: str) -> tuple[str | None, str]:
    """The interpreter of a virtual environment holding *requirement*, made
    (``python -m venv`` + ``pip install``) on first use; (None, why) if that fails."""
    venv = venvs / name
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import aiofiles, importlib.metadata as m; print(m.version(%r))"]
    check[-1] %= requirement
    if py.exists():
        r = subprocess.run(check, capture_output=True, text=True)
        if r.returncode == 0:
            return str(py), r.stdout.strip()
    venvs.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", requirement], capture_output=True, text=True
        )
        if r.returncode != 0:
            return None, f"pip install {requirement} failed: {r.stderr.strip()[-300:]}"
        r = subprocess.run(check, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        return None, f"{e}"
    return str(py), r.stdout.strip()


# --- one measurement ---------------------------------------------------------------------


def measure(c: Contender, listing: Path, shape: str, tasks: int, passes: int) -> dict[str, float]:
    if shape.startswith("cold"):
        drop_caches(listing)
        passes = 1
    else:
        warm(listing)
    env = dict(os.environ)
    env.pop("XAIO_ENGINE", None)
    if c.engine is not None:
        env["XAIO_ENGINE"] = c.engine
    cmd = [c.python, str(DRIVER), "--lib", c.lib, "--list", str(listing)]
    cmd += ["--tasks", str(tasks), "--passes", str(passes)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{c.name} on {shape}: {r.stderr.strip()[-1000:]}")
    res: dict[str, float] = json.loads(r.stdout.strip().splitlines()[-1])
    return res


# --- main --------------------------------------------------------------------------------


def main() -> None:
    global print
    print = functools.partial(print, flush=True)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=2000, help="files in each set")
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--passes", type=int, default=3, help="passes over a set, page-cached")
    ap.add_argument("--dir", default="/var/tmp", help="where to create the files (not tmpfs)")
    ap.add_argument("--venvs", default="/var/tmp/xaio-bench-venvs", help="the peers' venvs")
    ap.add_argument("--engines", default=None, help="comma-separated xaio engines (default all)")
    ap.add_argument(
        "--shapes", default=",".join(SHAPES), help="comma-separated, of " + ", ".join(SHAPES)
    )
    ap.add_argument("--only", default=None, help="run only contenders whose name contains this")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    if unknown := set(shapes) - set(SHAPES):
        ap.error(f"unknown shapes {sorted(unknown)}")

    root = Path(args.dir)
    if fs_type(root) in ("tmpfs", "ramfs"):
        ap.error(f"{root} is {fs_type(root)}: the cold rounds need a real file system")

    avail = probe()
    wanted = args.engines.split(",") if args.engines else list(ENGINE_NAMES)
    contenders: list[Contender] = []
    for eng in wanted:
        if avail.get(eng, "unknown engine") is not None:
            print(
                f"xaio engine {eng}: skipped ({avail.get(eng, 'unknown engine')})", file=sys.stderr
            )
            continue
        contenders.append(Contender(f"xaio open [{eng}]", sys.executable, "xaio-open", eng))
        contenders.append(Contender(f"xaio path [{eng}]", sys.executable, "xaio-path", eng))
    contenders.append(Contender("(ticker alone)", sys.executable, "idle"))
    versions = {}
    if not args.no_peers:
        for name, req in PEERS.items():
            py, why = peer_python(Path(args.venvs), name, req)
            if py is None:
                print(f"peer {name}: skipped ({why})", file=sys.stderr)
                continue
            versions[name] = why
            contenders.append(Contender(name, py, "aiofiles"))
    if args.only:
        contenders = [c for c in contenders if args.only in c.name]
    peers = [c.name for c in contenders if c.is_peer]

    work = Path(tempfile.mkdtemp(prefix="xaio-bench-files-", dir=root))
    try:
        lists = {
            "16k": make_set(work / "16k", [16384] * args.files),
            "mixed": make_set(work / "mixed", mixed_sizes(args.files)),
        }
        os.sync()
        print(
            f"{args.files} files per set on {root} ({fs_type(root)}), {args.tasks} tasks, "
            f"{args.passes} passes page-cached; peers: "
            + (", ".join(f"{k} {v}" for k, v in versions.items()) or "none"),
            file=sys.stderr,
        )
        # results[(contender, shape)] = one dict per round
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            k = r % max(len(contenders), 1)
            order = contenders[k:] + contenders[:k]
            for shape in shapes:
                listing = lists[shape.split("-", 1)[1]]
                for c in order:
                    res = measure(c, listing, shape, args.tasks, args.passes)
                    results.setdefault((c.name, shape), []).append(res)
                line = ", ".join(
                    f"{c.name} {results[(c.name, shape)][-1]['files_per_s']:,.0f}"
                    for c in contenders
                )
                print(f"round {r + 1} {shape}: {line}", file=sys.stderr)

        report(results, contenders, peers, shapes, args)
    finally:
        shutil.rmtree(work)


def report(
    results: dict[tuple[str, str], list[dict[str, float]]],
    contenders: list[Contender],
    peers: list[str],
    shapes: list[str],
    args: argparse.Namespace,
) -> None:
    def best_peer(shape: str, r: int) -> tuple[str, float]:
        cands = [(p, results[(p, shape)][r]["files_per_s"]) for p in peers]
        return max(cands, key=lambda x: x[1]) if cands else ("", float("nan"))

    rows = []
    for shape in shapes:
        for c in contenders:
            rs = results[(c.name, shape)]
            fps = [x["files_per_s"] for x in rs]
            ratio = ""
            if c.is_xaio and peers:
                ratio = f"{median([f / best_peer(shape, i)[1] for i, f in enumerate(fps)]):.2f}x"
            rows.append(
                [
                    shape,
                    c.name,
                    f"{median(fps):,.0f}" if c.lib != "idle" else "-",
                    f"{median([x['mib_per_s'] for x in rs]):,.0f}" if c.lib != "idle" else "-",
                    f"{median([x['lag_p50'] for x in rs]):.2f}",
                    f"{median([x['lag_p99'] for x in rs]):.2f}",
                    f"{median([x['lag_max'] for x in rs]):.2f}",
                    ratio,
                ]
            )
    print(
        f"\nmedian over {args.rounds} rounds: {args.files} files per set, whole-file reads, "
        f"{args.tasks} tasks; loop lag = lateness of a 1 ms ticker (ms); ratio = median of "
        "the per-round ratios to the best peer of the round"
    )
    print(
        table(
            ["shape", "contender", "files/s", "MiB/s", "lag p50", "lag p99", "lag max", "ratio"],
            rows,
        )
    )
    print("\nper round: files/s (lag p99 ms), and xaio's ratio to the best peer of that round")
    for shape in shapes:
        prow = []
        for r in range(args.rounds):
            _, peer_v = best_peer(shape, r)
            row: list[object] = [r + 1]
            for c in contenders:
                x = results[(c.name, shape)][r]
                cell = f"{x['files_per_s']:,.0f} " if c.lib != "idle" else ""
                cell += f"({x['lag_p99']:.1f})"
                if c.is_xaio and peers:
                    cell += f" {x['files_per_s'] / peer_v:.2f}x"
                row.append(cell)
            prow.append(row)
        print(f"\n{shape}")
        print(table(["round", *[c.name for c in contenders]], prow))


if __name__ == "__main__":
    main()
