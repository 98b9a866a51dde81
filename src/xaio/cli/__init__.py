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
    a copy with a queue of large requests in flight (``xaio.cli.cp``), replacing
    a regular destination atomically (temporary file, rename once complete).

The package: this module holds the parser and :func:`main`; each command has
its module (``xaio.cli.bench``, ``xaio.cli.info``, ``xaio.cli.cp``);
``_ui`` prints (rich or plain), ``_job`` says what a bench job is and what it
measured, and ``_runner`` runs it through an engine and an API, or through fio.

Conventions.  Results go to stdout, progress bars and messages to stderr.
Output is decorated with ``rich`` when it is installed (the ``cli`` extra) and
stdout is a terminal; otherwise it is plain text, so pipes and logs stay
readable.  The library core never imports rich, and ``_ui`` imports it only
when it prints.  Every failure a user can cause -- an unknown option, an impossible size, an
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
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from xaio.cli._job import API_NAMES, RW_MODES, BenchError, parse_size
from xaio.cli._ui import (
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    UI,
    CLIError,
)
from xaio.cli.bench import cmd_bench
from xaio.cli.cp import CopyError, cmd_cp
from xaio.cli.info import cmd_info

__all__ = ["main", "build_parser", "CLIError"]


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
