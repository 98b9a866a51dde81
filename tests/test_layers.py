"""The import direction of docs/architecture.md, checked by scanning imports.

Every module of ``src/xaio`` belongs to one layer of :data:`LAYERS`; a module
imports only from its own layer and from layers below it, never from a
sibling of the same rank (the engines do not import each other; posix and the
async layer do not either).  The one way up is a function-level import that
makes an engine, listed in :data:`LAZY_UP`: the factory in ``xaio.engine``
imports the engines it makes, and the engines that hand some requests to
threads import the thread engine.  The package ``xaio`` itself imports its
public names on first use, so importing ``xaio`` or any layer below the async
layer imports no event loop and starts no thread.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "xaio"

#: (layer, rank, module prefixes), lowest first
LAYERS: list[tuple[str, int, tuple[str, ...]]] = [
    ("abi", 0, ("xaio._abi",)),
    ("syscall", 1, ("xaio._syscall",)),
    ("memory", 2, ("xaio._buffers", "xaio._memory", "xaio._pagecache")),
    ("ops", 3, ("xaio._ops",)),
    ("shared", 4, ("xaio._inflight", "xaio._lanes", "xaio._fork")),
    ("protocol", 5, ("xaio.engine._protocol", "xaio.engine._route")),
    ("linux", 6, ("xaio.linux",)),
    ("uring", 6, ("xaio.uring",)),
    ("threads", 6, ("xaio.threads",)),
    ("libaio", 7, ("xaio.libaio",)),
    ("engine", 8, ("xaio.engine",)),
    ("posix", 9, ("xaio.posix",)),
    ("async", 9, ("xaio._async", "xaio.os")),
    ("facade", 10, ("xaio",)),
    ("cli", 11, ("xaio.cli", "xaio.__main__")),
]

#: (importing layer, imported layer): function-level imports allowed upwards
LAZY_UP = {
    ("engine", "linux"),
    ("engine", "uring"),
    ("engine", "threads"),
    ("uring", "threads"),
}


def _layer(module: str) -> tuple[str, int] | None:
    """The layer of a dotted xaio name: that of its longest module prefix."""
    best: tuple[str, int, int] | None = None
    for layer, rank, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[2]):
                best = (layer, rank, len(p))
    return None if best is None else best[:2]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(dotted xaio name, imported at module level) for every import in
    *path*; a name under ``if TYPE_CHECKING:`` counts as not at module level."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found += [(n, id(node) in top) for n in names if n.split(".")[0] == "xaio"]
    return found


FILES = sorted(SRC.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    missing = [_module_name(f) for f in FILES if _layer(_module_name(f)) in (None, ("facade", 10))]
    missing.remove("xaio")
    assert not missing, f"add these modules to LAYERS in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_import_direction(path: Path) -> None:
    module = _module_name(path)
    here = _layer(module)
    assert here is not None
    for name, at_top in _imports(path):
        there = _layer(name)
        assert there is not None, name
        if there[0] == here[0] or there[1] < here[1]:
            continue
        if not at_top and (here[0], there[0]) in LAZY_UP:
            continue
        where = "at module level" if at_top else "in a function"
        pytest.fail(f"{module} ({here[0]}) imports {name} ({there[0]}) {where}")


def test_the_scan_resolves_names() -> None:
    """Imported names resolve to their layer by the longest module prefix."""
    names = {n for n, _ in _imports(SRC / "engine" / "_protocol.py")}
    assert "xaio._ops.Operation" in names
    assert _layer("xaio.engine._protocol.Engine") == ("protocol", 5)
    assert _layer("xaio.engine.Engine") == ("engine", 8)
    assert _layer("xaio.uring._ring.Ring") == ("uring", 6)


@pytest.mark.parametrize(
    "module", ["xaio", "xaio.linux", "xaio.libaio", "xaio.uring", "xaio.engine", "xaio.posix"]
)
def test_import_leaves_asyncio_out(module: str) -> None:
    """No event loop, and no process run to find libc (ctypes.util)."""
    code = (
        f"import sys, {module};"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'subprocess')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_public_names_import_on_first_use() -> None:
    code = (
        "import sys, xaio; assert 'xaio._async' not in sys.modules;"
        "from xaio import pread, open, Batch, aio_read, BufferPool, os;"
        "assert os is sys.modules['xaio.os'] and pread.__module__.startswith('xaio._async');"
        "assert set(xaio.__all__) <= set(dir(xaio));"
        "assert xaio.engine.probe()['thread'] is None and xaio.linux.io_setup;"
        "print(all(getattr(xaio, n) is not None for n in xaio.__all__), xaio.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "True"
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        import xaio

        xaio.nonexistent  # noqa: B018


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


#: engine modules -> the objects whose fields they leave alone (a local name,
#: or an attribute name, minus leading underscores), and the class of each
_DRIVERS = {
    "uring/_batch.py": ("ring", "inflight"),
    "uring/_engine.py": ("ring", "inflight"),
    **{str(p.relative_to(SRC)): ("inflight",) for p in sorted((SRC / "linux").glob("*.py"))},
}


@pytest.mark.parametrize("rel", sorted(_DRIVERS))
def test_engines_reach_no_ring_or_inflight_field(rel: str) -> None:
    """The engines drive an io_uring Ring through its methods (the SQ/CQ
    protocol lives in the ring's queue layer alone) and keep operations
    through InFlight's methods (which hold the Ctrl-C rule of each move):
    none reads or writes a private field of either."""
    from xaio._ops import InFlight
    from xaio.uring import Ring

    def methods(cls: type) -> set[str]:
        return {n for n in dir(cls) if callable(getattr(cls, n, None))}

    classes = {"ring": Ring, "inflight": InFlight}
    allowed = {kind: methods(classes[kind]) for kind in _DRIVERS[rel]}
    bad = []
    for node in ast.walk(ast.parse((SRC / rel).read_text())):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        base = node.value
        owner = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
        kind = owner.lstrip("_")
        if kind in allowed and node.attr not in allowed[kind]:
            bad.append(f"{rel}:{node.lineno} {owner}.{node.attr}")
    assert bad == []
