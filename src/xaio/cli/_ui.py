"""How the ``xaio`` command talks: results, tables, progress bars, and failures.

Results go to stdout, progress bars and messages to stderr.  Output is
decorated with ``rich`` when it is installed (the ``cli`` extra) and the
stream is a terminal, and is plain text otherwise, so that pipes and logs stay
readable; ``rich`` is imported only when it is used.  A failure the user can
cause is a :class:`CLIError`: one line on stderr and its exit status.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO

__all__ = [
    "CLIError",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "UI",
    "fmt_count",
    "fmt_ns",
]

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
