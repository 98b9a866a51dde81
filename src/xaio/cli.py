"""The ``xaio`` command: ``xaio bench``, ``xaio info``, ``xaio cp``.

Three jobs a storage programmer does first on a new machine, done with the
library itself:

``xaio bench``
    a small fio: a job (``--rw``, ``--bs``, ``--size``, ``--iodepth``,
    ``--direct``...) run through an engine (``--engine auto|uring|linux|thread|all``)
    and an API (``--api sync|asyncio|posix``), with a live progress bar and a
    closing table of IOPS, MiB/s, completion latency (min, p50, p99, p99.9,
    max) and CPU use; ``--compare fio`` runs fio's counterpart of each run on
    the same file, alternating, and shows the ratio; ``--json`` and ``--plot``
    for the record.  Without arguments: 3 seconds of 4 KiB random reads, 32 in
    flight, on a 64 MiB temporary file, with the default engine.
``xaio info``
    what this machine allows: kernel, which engines work (and why the others
    do not), the io_uring opcodes, ``aio-nr``/``aio-max-nr``,
    ``kernel.io_uring_disabled``, the O_DIRECT alignment of a path.
``xaio cp SRC DST``
    a copy with a queue of large requests in flight (:mod:`xaio._cp`), replacing
    a regular destination atomically (temporary file, rename once complete).

Conventions.  Results go to stdout, progress bars and messages to stderr.
Output is decorated with ``rich`` when it is installed (the ``cli`` extra) and
stdout is a terminal; otherwise it is plain text, so pipes and logs stay
readable.  The library core never imports rich: this module imports it lazily.
Every failure a user can cause -- an unknown option, an impossible size, an
unreadable path, a full disk, Ctrl-C -- ends with one line on stderr
(``xaio cp: error: ...``) and a non-zero status (1 for errors, 2 for bad
usage, 130 for Ctrl-C, 143 for SIGTERM), never a traceback; temporary files
are removed on the way out.  ``XAIO_DEBUG=1`` shows the traceback of an
unexpected internal error.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, NoReturn

from xaio._bench import (
    API_NAMES,
    RW_MODES,
    BenchError,
    Job,
    LatencyStats,
    Result,
    format_size,
    parse_size,
)
from xaio._cp import CopyError
from xaio._syscall import read_proc as _read_proc

__all__ = ["main", "build_parser", "CLIError"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_INTERNAL = 70


class CLIError(Exception):
    """A failure to report in one line; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that cleanups run."""


# ---------------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with a one-line error instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')", EXIT_USAGE)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    return v


def _seconds(text: str) -> float:
    t = text.strip().lower()
    scale = 1.0
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if t.endswith(suffix):
            t, scale = t[: -len(suffix)], mult
            break
    try:
        return float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 3, 500ms, 2m)") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``xaio`` command."""
    from xaio import __version__

    p = _Parser(
        prog="xaio",
        description="Asynchronous I/O for Python: benchmark, inspect, copy.",
        epilog="Run 'xaio COMMAND --help' for the options of a command.",
    )
    p.add_argument("--version", action="version", version=f"xaio {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    b = sub.add_parser(
        "bench",
        help="run a fio-like job on xaio's engines",
        description=(
            "Run a fio-like I/O job through xaio. Without options: 3 s of 4 KiB random "
            "reads, 32 in flight, on a 64 MiB temporary file, default engine, sync API."
        ),
    )
    b.add_argument("--rw", choices=RW_MODES, default="randread", help="access pattern")
    b.add_argument(
        "--rwmixread", type=_positive_int, default=50, metavar="PCT",
        help="percentage of reads for randrw (default 50)",
    )  # fmt: skip
    b.add_argument("--bs", type=_size, default=4096, help="block size (default 4k)")
    b.add_argument("--size", type=_size, default=None, help="file size (default 64M)")
    b.add_argument("--iodepth", type=_positive_int, default=32, help="requests in flight (32)")
    b.add_argument("--direct", action="store_true", help="O_DIRECT (bypass the page cache)")
    b.add_argument(
        "--engine", default="auto", choices=("auto", "uring", "linux", "thread", "all"),
        help="engine: auto (the best that works), one by name, or all of them",
    )  # fmt: skip
    b.add_argument("--api", default="sync", choices=API_NAMES, help="API to drive it through")
    when = b.add_mutually_exclusive_group()
    when.add_argument("--runtime", type=_seconds, default=None, help="seconds to run (3)")
    when.add_argument("--number", type=_positive_int, default=None, help="requests to run")
    b.add_argument("--file", default=None, help="file to use (default: a temporary file)")
    b.add_argument(
        "--directory", "--dir", default=None,  # --dir: the benchmarks' spelling
        help="where the temporary file goes (default: the system temporary directory)",
    )  # fmt: skip
    b.add_argument(
        "--fsync", type=_positive_int, default=0, metavar="N", help="fsync every N writes"
    )
    b.add_argument("--compare", choices=("fio",), default=None, help="also run fio's counterpart")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    b.add_argument("--output", default=None, metavar="FILE", help="write the report to FILE")
    b.add_argument("--plot", default=None, metavar="PNG", help="latency histogram + IOPS plot")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser(
        "info",
        help="what this machine allows: engines, io_uring, AIO limits",
        description="Kernel, engines (and why some do not work), io_uring opcodes, "
        "AIO limits and the O_DIRECT alignment of PATH.",
    )
    i.add_argument("path", nargs="?", default=".", help="path whose O_DIRECT alignment to show")
    i.add_argument("--json", action="store_true", help="print as JSON")
    i.set_defaults(func=cmd_info)

    c = sub.add_parser(
        "cp",
        help="copy a file with a queue of large requests",
        description="Copy SRC to DST with several large requests in flight "
        "(mode preserved; DST may be a directory).  A regular DST is replaced "
        "atomically: the copy is written to a temporary file beside it, verified "
        "there with --verify, and renamed over DST once complete; on any error "
        "(read error, full disk, failed verification, Ctrl-C) the temporary file is "
        "removed and an existing DST is left as it was.  Devices are written in place.",
    )
    c.add_argument("src", metavar="SRC")
    c.add_argument("dst", metavar="DST")
    c.add_argument(
        "--bs", type=_size, default=None, help="request size (default 4M, 8M with --direct)"
    )
    c.add_argument(
        "--iodepth", type=_positive_int, default=None,
        help="requests in flight (default 4, 8 with --direct)",
    )  # fmt: skip
    c.add_argument("--direct", action="store_true", help="O_DIRECT on both files")
    c.add_argument(
        "--engine",
        default="auto",
        choices=("auto", "uring", "linux", "thread"),
        help="engine (auto: threads for buffered copies, the best engine with --direct)",
    )
    c.add_argument(
        "--verify",
        action="store_true",
        help="flush the copy and compare it byte for byte before it replaces DST",
    )
    c.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(func=cmd_cp)
    return p


# ---------------------------------------------------------------------------------
# Output: rich when available and on a terminal, plain text otherwise
# ---------------------------------------------------------------------------------


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class UI:
    """Where and how to print: results on *out*, progress and notes on stderr."""

    def __init__(self, out: IO[str] | None = None, *, quiet: bool = False) -> None:
        self.out = out if out is not None else sys.stdout
        self.quiet = quiet
        no_color = bool(os.environ.get("NO_COLOR"))
        self.fancy = self.out.isatty() and _rich_available() and not no_color
        self.live = sys.stderr.isatty() and _rich_available() and not quiet

    def print(self, text: str = "") -> None:
        """A line of results."""
        if self.quiet:
            return
        if self.fancy:
            from rich.console import Console

            Console(file=self.out, highlight=False).print(text)
        else:
            print(_strip_markup(text), file=self.out)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """A table; numeric columns right-aligned (all but the first)."""
        if self.quiet:
            return
        if self.fancy:
            from rich.console import Console
            from rich.table import Table

            t = Table(title=title, title_justify="left", header_style="bold")
            for k, h in enumerate(headers):
                t.add_column(h, justify="left" if k == 0 else "right", no_wrap=True)
            for r in rows:
                t.add_row(*r)
            Console(file=self.out).print(t)
        else:
            print(_plain_table(title, headers, rows), file=self.out)

    def pairs(self, title: str, items: Sequence[tuple[str, str]]) -> None:
        """A list of ``name: value`` lines (long values wrap on a terminal)."""
        if self.quiet:
            return
        if self.fancy:
            from rich.console import Console
            from rich.table import Table

            t = Table(title=title, title_justify="left", show_header=False, box=None)
            t.add_column(style="bold", no_wrap=True)
            t.add_column(overflow="fold")
            for k, v in items:
                t.add_row(k, v)
            Console(file=self.out, highlight=False).print(t)
            return
        width = max((len(k) for k, _ in items), default=0)
        lines = [title] if title else []
        lines += [f"{k.ljust(width)}  {v}" for k, v in items]
        print("\n".join(lines), file=self.out)

    @contextlib.contextmanager
    def progress(self, description: str, total: float) -> Iterator[Callable[[float, str], None]]:
        """A progress bar (only on a terminal); yields ``update(completed, info)``."""
        if not self.live:
            yield lambda completed, info: None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=True,
            refresh_per_second=8,
        ) as prog:
            task = prog.add_task(description, total=total, info="")

            def update(completed: float, info: str) -> None:
                prog.update(task, completed=completed, info=info)

            yield update


def _strip_markup(text: str) -> str:
    import re

    return re.sub(r"\[/?(?:bold|dim|red|green|yellow|cyan|italic)[^\]]*\]", "", text)


def _plain_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if k == 0 else c.rjust(w)
            for k, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()

    out = [title] if title else []
    out.append(line(headers))
    out.append("  ".join("-" * w for w in widths))
    out += [line(r) for r in rows]
    return "\n".join(out)


def fmt_ns(ns: float) -> str:
    """A latency for humans: ``850ns``, ``12.3us``, ``1.20ms``, ``2.5s``."""
    if ns < 1_000:
        return f"{ns:.0f}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f}us" if ns < 100_000 else f"{ns / 1e3:.0f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f}ms"
    return f"{ns / 1e9:.2f}s"


def fmt_count(x: float) -> str:
    """``123456.7`` -> ``"123.5k"``."""
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    return f"{x:,.0f}"


# ---------------------------------------------------------------------------------
# xaio bench
# ---------------------------------------------------------------------------------


def _job_from(args: argparse.Namespace) -> Job:
    """The job the options describe.  Without ``--size``: the size of an
    existing ``--file``, else 64 MiB.  Without ``--runtime``/``--number``: 3 s."""
    from xaio._bench import file_size

    runtime: float | None = args.runtime
    if args.number is None and runtime is None:
        runtime = 3.0
    size: int | None = args.size
    if size is None and args.file is not None:
        try:
            size = file_size(args.file)
        except FileNotFoundError:
            size = None
        except OSError as e:
            raise CLIError(f"cannot use --file {args.file}: {e.strerror}") from None
    return Job(
        rw=args.rw,
        bs=args.bs,
        size=64 << 20 if size is None else size,
        iodepth=args.iodepth,
        direct=args.direct,
        runtime=runtime,
        number=args.number,
        fsync=args.fsync,
        rwmixread=args.rwmixread,
    )


def _runs_for(args: argparse.Namespace) -> tuple[list[str | None], list[tuple[str, str]]]:
    """The engines to run, and ``(engine, reason)`` for those skipped."""
    from xaio._bench import available_engines

    if args.engine == "auto":
        return [None], []
    avail = available_engines()
    if args.engine == "all":
        return [n for n, r in avail if r is None], [(n, r) for n, r in avail if r is not None]
    reason = dict(avail).get(args.engine)
    if reason is not None:
        raise CLIError(f"engine {args.engine} does not work here: {reason}")
    return [args.engine], []


def cmd_bench(args: argparse.Namespace, ui: UI) -> int:
    """``xaio bench``: run the job, print the table (or JSON)."""
    from xaio import _bench

    job = _job_from(args)
    job.check()
    if args.api == "asyncio":
        reason = _bench.asyncio_unavailable_reason()
        if reason is not None:
            raise CLIError(f"--api asyncio: {reason}")
    if args.compare == "fio" and _bench.fio_available() is None:
        raise CLIError("--compare fio: fio is not installed (no 'fio' on PATH)")
    if args.plot is not None and not _matplotlib_available():
        raise CLIError("--plot needs matplotlib (pip install matplotlib)")
    engines, skipped = _runs_for(args)
    if not engines:
        raise CLIError("no engine works here: " + "; ".join(f"{n}: {r}" for n, r in skipped))
    human = not args.json
    report_ui = ui
    if args.output is not None:
        try:
            out_file: IO[str] | None = open(args.output, "w")  # noqa: SIM115
        except OSError as e:
            raise CLIError(f"cannot write --output {args.output}: {e.strerror}") from None
        report_ui = UI(out_file)
    else:
        out_file = None
    try:
        with ui.progress("preparing file", job.size) as upd:
            path, temporary = _bench.prepare_file(
                job, args.file, args.directory, lambda done, total: upd(done, format_size(done))
            )
        try:
            results = _bench_runs(job, path, engines, args, ui)
        finally:
            if temporary:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if human:
            report_ui.print(f"[bold]xaio bench[/bold]: {job.describe()}")
            report_ui.print(f"file: {path}" + (" (temporary, removed)" if temporary else ""))
            _print_results(report_ui, results, args.compare == "fio")
            for name, reason in skipped:
                report_ui.print(f"[dim]skipped {name}: {reason}[/dim]")
            for note in sorted({r.note for r in results if r.note and r.tool == "xaio"}):
                report_ui.print(f"[dim]note: {note}[/dim]")
        else:
            doc = _bench_json(job, path, temporary, results, skipped, args)
            text = json.dumps(doc, indent=2)
            print(text, file=report_ui.out)
        if args.plot is not None:
            _plot(results, job, args.plot)
            if human:
                report_ui.print(f"plot: {args.plot}")
    finally:
        if out_file is not None:
            out_file.close()
    return 0


def _bench_runs(
    job: Job, path: str, engines: list[str | None], args: argparse.Namespace, ui: UI
) -> list[Result]:
    from xaio import _bench

    results: list[Result] = []
    for name in engines:
        label = f"{name or 'auto'}/{args.api}"
        results.append(_one_run(job, path, name, args.api, label, ui))
        if args.compare == "fio":
            eng = results[-1].engine
            io, _ = _bench.fio_counterpart(eng, args.api)
            with ui.progress(f"fio {io}", 1.0) as upd:
                upd(0.0, "running fio")
                results.append(_bench.run_fio(job, path, eng, args.api))
    return results


def _one_run(job: Job, path: str, name: str | None, api: str, label: str, ui: UI) -> Result:
    from xaio import _bench

    with ui.progress(label, 1.0) as upd:

        def progress(fraction: float, done: int, elapsed: float) -> None:
            upd(fraction, f"{fmt_count(done / elapsed) if elapsed > 0 else 0} IOPS")

        return _bench.run(job, path, name, api, progress)


def _ratio_column(results: Sequence[Result], compare_fio: bool) -> tuple[str, list[str]]:
    if compare_fio:
        col = []
        for k, r in enumerate(results):
            if r.tool == "xaio" and k + 1 < len(results) and results[k + 1].iops > 0:
                col.append(f"{r.iops / results[k + 1].iops:.2f}x")
            else:
                col.append("")
        return "xaio/fio", col
    best = max((r.iops for r in results), default=0.0)
    return "vs best", [f"{r.iops / best:.2f}x" if best else "" for r in results]


def _latency_cells(lat: LatencyStats | None) -> list[str]:
    if lat is None:
        return ["-"] * 5
    return [fmt_ns(lat.min), fmt_ns(lat.p50), fmt_ns(lat.p99), fmt_ns(lat.p999), fmt_ns(lat.max)]


def _print_results(ui: UI, results: Sequence[Result], compare_fio: bool) -> None:
    """The closing table: one row per run (two for a mix: reads, then writes)."""
    headers = ["run", "IOPS", "MiB/s", "min", "p50", "p99", "p99.9", "max", "CPU"]
    ratio_name, ratios = _ratio_column(results, compare_fio)
    show_ratio = len(results) > 1
    if show_ratio:
        headers.append(ratio_name)
    rows = []
    for r, ratio in zip(results, ratios, strict=True):
        mixed = r.reads > 0 and r.writes > 0
        label = r.label + (f" ({r.note})" if r.tool == "fio" and r.note else "")
        lat = r.lat_read if mixed else r.latency
        cells = [label + (" reads" if mixed else ""), fmt_count(r.iops), f"{r.mib_s:,.1f}"]
        cells += _latency_cells(lat)
        cells.append(f"{r.cpu_percent:.0f}%")
        if show_ratio:
            cells.append(ratio)
        rows.append(cells)
        if mixed:
            secs = r.seconds or float("inf")
            w = [
                label + " writes",
                fmt_count(r.writes / secs),
                f"{r.bytes_written / secs / (1 << 20):,.1f}",
                *_latency_cells(r.lat_write),
                "",
            ]
            rows.append([*w, ""] if show_ratio else w)
    if all(not r.reads for r in results):
        title = "completion latency of writes"
    elif any(r.writes for r in results):
        title = "completion latency (IOPS and MiB/s of a mix: all requests, then writes alone)"
    else:
        title = "completion latency of reads"
    ui.table(title, headers, rows)


def _bench_json(
    job: Job,
    path: str,
    temporary: bool,
    results: Sequence[Result],
    skipped: Sequence[tuple[str, str]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from xaio import __version__

    ratio_name, ratios = _ratio_column(results, args.compare == "fio")
    runs = []
    for r, ratio in zip(results, ratios, strict=True):
        d = r.to_json()
        d["ratio"] = {"kind": ratio_name, "value": float(ratio[:-1]) if ratio else None}
        runs.append(d)
    return {
        "xaio_version": __version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "job": {**job.to_json(), "file": path, "temporary": temporary},
        "results": runs,
        "skipped": [{"engine": n, "reason": r} for n, r in skipped],
    }


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plot(results: Sequence[Result], job: Job, path: str) -> None:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        s = r.samples
        if not len(s):
            continue
        lo, hi = max(min(s), 100), max(max(s), 200)
        nbins = 60
        edges = [
            math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * k / nbins)
            for k in range(nbins + 1)
        ]
        ax1.hist([x / 1e3 for x in s], bins=[e / 1e3 for e in edges], histtype="step",
                 label=r.label)  # fmt: skip
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("completion latency (us)")
    ax1.set_ylabel("requests")
    ax1.set_title("latency histogram")
    for r in results:
        if r.timeline:
            ax2.plot([t for t, _ in r.timeline], [v for _, v in r.timeline], label=r.label)
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("IOPS")
    ax2.set_title("IOPS over time (100 ms)")
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(f"xaio bench: {job.describe()}")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise CLIError(f"cannot write --plot {path}: {e.strerror}") from None
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------
# xaio info
# ---------------------------------------------------------------------------------


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


#: opcodes newer than xaio._abi.uring's table (linux/io_uring.h, Linux 6.7-6.16)
_LATE_OPCODES = {
    49: "read_multishot",
    50: "waitid",
    51: "futex_wait",
    52: "futex_wake",
    53: "futex_waitv",
    54: "fixed_fd_install",
    55: "ftruncate",
    56: "bind",
    57: "listen",
    58: "recv_zc",
    59: "epoll_wait",
    60: "readv_fixed",
    61: "writev_fixed",
    62: "pipe",
}


def _uring_opcodes() -> list[str] | None:
    from xaio import uring
    from xaio._abi import uring as abi

    names = dict(_LATE_OPCODES)
    names |= {
        v: k[len("IORING_OP_") :].lower()
        for k, v in vars(abi).items()
        if k.startswith("IORING_OP_") and isinstance(v, int) and k != "IORING_OP_LAST"
    }
    try:
        with uring.Ring(2) as ring:
            codes = sorted(ring.probe())
    except OSError:
        return None
    return [names.get(c, f"op{c}") for c in codes]


def _dio_info(path: str) -> dict[str, Any]:
    from xaio import dio_alignment

    out: dict[str, Any] = {"path": os.path.abspath(path), "memory": None, "offset": None}
    try:
        probe_path = path
        tmp = None
        if os.path.isdir(path):
            try:
                fd, tmp = tempfile.mkstemp(prefix=".xaio-info-", dir=path)
                os.close(fd)
                probe_path = tmp
            except OSError:
                out["note"] = "directory not writable: alignment of the directory itself"
        try:
            got = dio_alignment(probe_path)
        finally:
            if tmp is not None:
                os.unlink(tmp)
    except OSError as e:
        raise CLIError(f"cannot look up {path}: {e.strerror}") from None
    if got is None:
        out["note"] = "the file system does not report an O_DIRECT alignment (no O_DIRECT?)"
    else:
        out["memory"], out["offset"] = got
    return out


def _fio_version() -> str | None:
    from xaio._bench import fio_available

    fio = fio_available()
    if fio is None:
        return None
    try:
        return (
            subprocess.run(
                [fio, "--version"], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _module_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def gather_info(path: str) -> dict[str, Any]:
    """Everything ``xaio info`` shows, as a JSON-able dict."""
    import xaio
    from xaio._bench import asyncio_unavailable_reason
    from xaio.engine import ENGINE_NAMES, probe

    reasons = probe()
    asyncio_reason = asyncio_unavailable_reason()
    env = os.environ.get("XAIO_ENGINE", "").strip() or None
    default = env or next((n for n in ENGINE_NAMES if reasons.get(n) is None), "thread")
    uname = platform.uname()
    return {
        "xaio": {"version": xaio.__version__, "path": os.path.dirname(xaio.__file__)},
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "kernel": {"release": uname.release, "version": uname.version, "machine": uname.machine},
        "engines": {
            name: {"works": reasons.get(name) is None, "reason": reasons.get(name)}
            for name in ENGINE_NAMES
        },
        "default_engine": default,
        "asyncio": {"works": asyncio_reason is None, "reason": asyncio_reason},
        "io_uring": {
            "disabled": _int_or_none(_read_proc("/proc/sys/kernel/io_uring_disabled")),
            "group": _int_or_none(_read_proc("/proc/sys/kernel/io_uring_group")),
            "opcodes": _uring_opcodes() if reasons.get("uring") is None else None,
        },
        "aio": {
            "aio_nr": _int_or_none(_read_proc("/proc/sys/fs/aio-nr")),
            "aio_max_nr": _int_or_none(_read_proc("/proc/sys/fs/aio-max-nr")),
        },
        "o_direct": _dio_info(path),
        "optional": {
            "rich": _module_version("rich"),
            "matplotlib": _module_version("matplotlib"),
            "fio": _fio_version(),
        },
    }


def cmd_info(args: argparse.Namespace, ui: UI) -> int:
    """``xaio info``."""
    if not os.path.exists(args.path):
        raise CLIError(f"{args.path}: No such file or directory")
    info = gather_info(args.path)
    if args.json:
        print(json.dumps(info, indent=2), file=ui.out)
        return 0
    k = info["kernel"]
    rows = [
        ["xaio", f"{info['xaio']['version']} ({info['xaio']['path']})"],
        ["python", f"{info['python']['implementation']} {info['python']['version']}"],
        ["kernel", f"Linux {k['release']} {k['machine']}"],
    ]
    for name, e in info["engines"].items():
        mark = "works" if e["works"] else f"no: {e['reason']}"
        if name == info["default_engine"]:
            mark += " (default)"
        rows.append([f"engine {name}", mark])
    a = info["asyncio"]
    rows.append(["asyncio layer", "works" if a["works"] else f"no: {a['reason']}"])
    u = info["io_uring"]
    rows.append(["io_uring_disabled", str(u["disabled"])])
    ops = u["opcodes"]
    rows.append(["io_uring opcodes", f"{len(ops)}: {' '.join(ops)}" if ops else "-"])
    aio = info["aio"]
    rows.append(["aio-nr / aio-max-nr", f"{aio['aio_nr']} / {aio['aio_max_nr']}"])
    d = info["o_direct"]
    if d["offset"] is not None:
        text = f"memory {d['memory']} B, offset/length {d['offset']} B"
    else:
        text = d.get("note", "unknown")
    rows.append(["O_DIRECT alignment", f"{text} ({d['path']})"])
    opt = info["optional"]
    rows.append(["optional", ", ".join(f"{n} {v or 'missing'}" for n, v in opt.items())])
    ui.pairs("xaio info", [(k, v) for k, v in rows])
    return 0


# ---------------------------------------------------------------------------------
# xaio cp
# ---------------------------------------------------------------------------------


def cmd_cp(args: argparse.Namespace, ui: UI) -> int:
    """``xaio cp SRC DST``."""
    from xaio import _cp

    # defaults measured in benchmarks/cp.md: O_DIRECT wants a deeper queue of larger requests
    if args.bs is None:
        args.bs = 8 << 20 if args.direct else 4 << 20
    if args.iodepth is None:
        args.iodepth = 8 if args.direct else 4
    if args.bs <= 0 or args.bs > 1 << 30:
        raise CLIError(f"--bs must be between 1 byte and 1 GiB, not {args.bs}")
    if not 1 <= args.iodepth <= 1024:
        raise CLIError(f"--iodepth must be between 1 and 1024, not {args.iodepth}")
    quiet_ui = UI(ui.out, quiet=args.quiet)
    engine = _cp.auto_engine(args.direct) if args.engine == "auto" else args.engine
    with _cp.Copy(args.src, args.dst, bs=args.bs, iodepth=args.iodepth, direct=args.direct,
                  engine=engine) as job:  # fmt: skip
        total = max(job.size, 1)
        with quiet_ui.progress("copying", total) as upd:
            job.run(progress=lambda done: upd(done, format_size(done)))
        if args.verify:
            with quiet_ui.progress("verifying", total) as upd:
                job.verify(progress=lambda done: upd(done, format_size(done)))
        stats = job.commit()
    if args.json:
        print(json.dumps({**stats.to_json(), "verified": bool(args.verify)}, indent=2),
              file=ui.out)  # fmt: skip
    elif not args.quiet:
        rate = stats.nbytes / stats.seconds / (1 << 20) if stats.seconds > 0 else 0.0
        ui.print(
            f"copied {stats.src} -> {stats.dst}: {format_size(stats.nbytes)} in "
            f"{stats.seconds:.2f}s ({rate:,.0f} MiB/s, {stats.engine} engine"
            f"{', O_DIRECT' if stats.direct else ''}{', verified' if args.verify else ''})"
        )
    return 0


# ---------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xaio`` command; returns the exit status."""
    prog = "xaio"
    old_term = signal.getsignal(signal.SIGTERM)
    restore = False
    try:
        if old_term in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)
            restore = True
    except ValueError:  # not the main thread
        pass
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        prog = f"xaio {args.command}"
        ui = UI()
        status: int = args.func(args, ui)
        sys.stdout.flush()
        return status
    except CLIError as e:
        _error(prog, str(e))
        return e.status
    except (BenchError, CopyError) as e:
        _error(prog, str(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error(prog, "interrupted")
        return EXIT_INTERRUPTED
    except _Terminated:
        _error(prog, "terminated")
        return EXIT_TERMINATED
    except BrokenPipeError:
        # the reader went away (xaio info | head): not an error worth a line
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        _error(prog, f"{where}{e.strerror or errno.errorcode.get(e.errno or 0, str(e))}")
        return EXIT_ERROR
    except Exception as e:  # a bug: say so in one line, traceback on request
        if os.environ.get("XAIO_DEBUG"):
            raise
        _error(prog, f"internal error: {type(e).__name__}: {e} (XAIO_DEBUG=1 shows the traceback)")
        return EXIT_INTERNAL
    finally:
        if restore:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, old_term)


def _error(prog: str, message: str) -> None:
    with contextlib.suppress(OSError):
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
