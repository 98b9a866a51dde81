"""The import direction of docs/architecture.md, checked by scanning imports.

    _abi -> _syscall -> {linux, uring} -> engine -> {posix, _async} -> cli

Engine modules may import ``xaio.engine`` for the protocol (``Engine``,
``EngineClosedError``) only; ``engine`` imports the engines lazily, inside
functions.  Engines never import each other; posix and _async are siblings;
nothing imports the CLI; importing xaio starts no thread.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "xaio"

# module -> xaio modules it must never import at module level
FORBIDDEN: dict[str, set[str]] = {
    "_abi": {
        "_syscall",
        "_ops",
        "linux",
        "libaio",
        "uring",
        "threads",
        "engine",
        "posix",
        "_async",
        "cli",
        "os",
    },
    "_syscall": {"_ops", "linux", "libaio", "uring", "threads", "engine", "posix", "_async", "cli"},
    "_buffers": {"linux", "uring", "threads", "engine", "posix", "_async", "cli"},
    "_ops": {"linux", "libaio", "uring", "threads", "engine", "posix", "_async", "cli"},
    "_lanes": {"linux", "libaio", "uring", "threads", "engine", "posix", "_async", "cli"},
    "linux": {"uring", "threads", "posix", "_async", "cli", "libaio"},
    "libaio": {"uring", "threads", "posix", "_async", "cli"},
    "uring": {"linux", "libaio", "threads", "posix", "_async", "cli"},
    "threads": {"linux", "libaio", "uring", "posix", "_async", "cli"},
    "engine": {"linux", "libaio", "uring", "threads", "posix", "_async", "cli"},
    "posix": {"_async", "cli"},
    "_async": {"posix", "cli"},
}


def _top_level_imports(path: Path) -> set[str]:
    """xaio submodules imported at module level (not inside functions)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                names = [f"xaio.{node.module}"]
            else:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "xaio" and len(parts) > 1:
                found.add(parts[1])
    return found


def _module_files(name: str) -> list[Path]:
    single = SRC / f"{name}.py"
    if single.exists():
        return [single]
    package = SRC / name
    if package.is_dir():
        return sorted(package.rglob("*.py"))
    return []


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_import_direction(module: str) -> None:
    files = _module_files(module)
    if not files:
        pytest.skip(f"xaio.{module} does not exist yet")
    for f in files:
        bad = _top_level_imports(f) & FORBIDDEN[module]
        assert not bad, f"{f.relative_to(SRC)} imports {sorted(bad)}"


def test_nothing_imports_the_cli() -> None:
    for f in SRC.rglob("*.py"):
        if f.stem in ("cli", "__main__") or "cli" in f.parts:
            continue
        assert "cli" not in _top_level_imports(f), f


def test_import_starts_no_thread_and_no_engine() -> None:
    code = (
        "import threading, xaio, xaio.linux, xaio.libaio, xaio.engine, xaio.posix;"
        "assert threading.active_count() == 1, threading.enumerate();"
        "maps = open('/proc/self/maps').read();"
        "assert '[aio]' not in maps and 'io_uring' not in maps, 'a ring was mapped';"
        "import os; fds = os.listdir('/proc/self/fd');"
        "print(len(fds))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) <= 4  # stdin, stdout, stderr and the listdir fd
