"""``xaio info``: what this machine allows.

The kernel, which engines work (and why the others do not), whether the
asyncio layer is installed, the io_uring opcodes the kernel knows,
``kernel.io_uring_disabled``, ``aio-nr``/``aio-max-nr``, the O_DIRECT
alignment of a path, and the optional tools found; as ``name: value`` lines,
or one JSON document with ``--json`` (:func:`gather_info`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Any

from xaio._syscall import read_proc as _read_proc
from xaio.cli._runner import asyncio_unavailable_reason, fio_available
from xaio.cli._ui import UI, CLIError

__all__ = ["cmd_info", "gather_info"]


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
