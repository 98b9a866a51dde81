"""``xaio bench``: the command, and the report of its runs.

The options become a :class:`~xaio.cli._job.Job`; :mod:`xaio.cli._runner`
prepares the file and runs the job through each engine asked for (and fio's
counterpart with ``--compare fio``); this module shows the results: a live
progress bar per run, then one table (``--json``: one document, ``--plot``:
a latency histogram and IOPS over time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from xaio.cli import _runner
from xaio.cli._job import Job, LatencyStats, Result, format_size
from xaio.cli._ui import UI, CLIError, fmt_count, fmt_ns

__all__ = ["cmd_bench"]


def _job_from(args: argparse.Namespace) -> Job:
    """The job the options describe.  Without ``--size``: the size of an
    existing ``--file``, else 64 MiB.  Without ``--runtime``/``--number``: 3 s."""
    runtime: float | None = args.runtime
    if args.number is None and runtime is None:
        runtime = 3.0
    size: int | None = args.size
    if size is None and args.file is not None:
        try:
            size = _runner.file_size(args.file)
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
    if args.engine == "auto":
        return [None], []
    avail = _runner.available_engines()
    if args.engine == "all":
        return [n for n, r in avail if r is None], [(n, r) for n, r in avail if r is not None]
    reason = dict(avail).get(args.engine)
    if reason is not None:
        raise CLIError(f"engine {args.engine} does not work here: {reason}")
    return [args.engine], []


def cmd_bench(args: argparse.Namespace, ui: UI) -> int:
    """``xaio bench``: run the job, print the table (or JSON)."""
    job = _job_from(args)
    job.check()
    if args.api == "asyncio":
        reason = _runner.asyncio_unavailable_reason()
        if reason is not None:
            raise CLIError(f"--api asyncio: {reason}")
    if args.compare == "fio" and _runner.fio_available() is None:
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

    @contextlib.contextmanager
    def fill_bar() -> Iterator[Callable[[int, int], None]]:
        with ui.progress("preparing file", job.size) as upd:
            yield lambda done, total: upd(done, format_size(done))

    try:
        with _runner.bench_file(job, args.file, args.directory, fill_bar) as (path, temporary):
            results = _bench_runs(job, path, engines, args, ui)
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
    results: list[Result] = []
    for name in engines:
        label = f"{name or 'auto'}/{args.api}"
        results.append(_one_run(job, path, name, args.api, label, ui))
        if args.compare == "fio":
            eng = results[-1].engine
            io, _ = _runner.fio_counterpart(eng, args.api)
            with ui.progress(f"fio {io}", 1.0) as upd:
                upd(0.0, "running fio")
                results.append(_runner.run_fio(job, path, eng, args.api))
    return results


def _one_run(job: Job, path: str, name: str | None, api: str, label: str, ui: UI) -> Result:
    with ui.progress(label, 1.0) as upd:

        def progress(fraction: float, done: int, elapsed: float) -> None:
            upd(fraction, f"{fmt_count(done / elapsed) if elapsed > 0 else 0} IOPS")

        return _runner.run(job, path, name, api, progress)


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
