"""The documentation covers the public API and describes what is.

- the public surface (in the spirit of trio's test_exports.py): every public
  module has an ``__all__`` whose names all exist, once each; every class and
  function among them, and every public method and property of those
  classes, has a docstring;
- every name a public module exports (``__all__``) is documented on its
  reference page (docs/reference/), and nothing else is;
- no page of the docs, nor a docstring they render, nor README.md or the
  benchmark notes (benchmarks/*.md), mentions an issue number or a date: they
  describe what is; the history is in CHANGELOG.md and git.

The examples on the pages run in tests/test_readme.py; ``sphinx-build -W -n``
(in CI: ``nox -s docs``) fails on a broken reference.
"""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = {
    "xaio": "xaio.rst",
    "xaio.engine": "engine.rst",
    "xaio.linux": "linux.rst",
    "xaio.libaio": "libaio.rst",
    "xaio.uring": "uring.rst",
    "xaio.posix": "posix.rst",
    "xaio.os": "os.rst",
    "xaio.threads": "threads.rst",
    "xaio.cli": "cli.rst",
}
# public-named modules without a reference page of their own: the commands of
# the CLI, documented by ``xaio COMMAND --help`` and the page of xaio.cli
COMMANDS = {"xaio.cli.bench", "xaio.cli.info", "xaio.cli.cp"}
# modules whose docstrings the Design pages render as essays (docs/essays.rst)
ESSAYS = [
    "xaio.threads",
    "xaio._async._driver",
    "xaio._async._current",
    "xaio._async._binary",
    "xaio._async._text",
]

_MODULE = re.compile(r"^\.\. (?:py:)?module:: (\S+)\s*$", re.M)
_DOCUMENTED = re.compile(
    r"^\.\. (?:auto(?:function|class|exception|data)|py:(?:function|class|exception|data))"
    r":: (\S+)\s*$",
    re.M,
)


def documented_names(page: Path) -> tuple[str, list[str]]:
    """The module a reference page documents and the names it documents."""
    text = page.read_text()
    modules = _MODULE.findall(text)
    assert len(modules) == 1, f"{page.name}: expected one '.. module::', found {modules}"
    return modules[0], _DOCUMENTED.findall(text)


def _public_modules() -> set[str]:
    """Every module of src/xaio with no private (underscored) part in its name."""
    src = ROOT / "src"
    found = set()
    for path in (src / "xaio").rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] == "__main__" or any(p.startswith("_") for p in parts):
            continue
        found.add(".".join(parts))
    return found


def test_every_public_module_has_a_reference_page() -> None:
    assert _public_modules() == set(REFERENCE) | COMMANDS


@pytest.mark.parametrize("module", sorted(REFERENCE))
def test_exports_exist_once(module: str) -> None:
    mod = importlib.import_module(module)
    exported = mod.__all__
    assert exported, f"{module}.__all__ is empty"
    duplicates = sorted({n for n in exported if exported.count(n) > 1})
    assert not duplicates, f"{module}.__all__ lists {duplicates} more than once"
    missing = [n for n in exported if not hasattr(mod, n)]
    assert not missing, f"{module}.__all__ lists {missing}, which {module} does not define"


def _undocumented(qualname: str, obj: object) -> list[str]:
    """*obj* (a class or function) and, for a class, its public methods and
    properties, that have no docstring (a method may take its base's)."""
    if typing.get_origin(obj) is not None:
        return []  # a type alias (``Callable[...]``; a class to inspect on 3.10)
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
        return []  # a constant, a module: documented on its page
    own = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    out = [] if own and own.strip() else [qualname]
    if inspect.isclass(obj):
        for name, member in vars(obj).items():
            if name.startswith("_"):
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if not (inspect.isfunction(member) or isinstance(member, property)):
                continue
            if not (inspect.getdoc(getattr(obj, name)) or "").strip():
                out.append(f"{qualname}.{name}")
    return out


@pytest.mark.parametrize("module", sorted(REFERENCE))
def test_exports_have_docstrings(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [u for n in mod.__all__ for u in _undocumented(f"{module}.{n}", getattr(mod, n))]
    assert not missing, f"no docstring: {missing}"


def test_undocumented_is_found() -> None:
    class Bare:
        def method(self) -> None:
            pass

    class Told:
        """A class."""

        @property
        def size(self) -> int:
            """A property."""
            return 0

    assert _undocumented("Bare", Bare) == ["Bare", "Bare.method"]
    assert _undocumented("Told", Told) == []
    assert _undocumented("f", lambda: None) == ["f"]
    assert _undocumented("N", 4096) == []


@pytest.mark.parametrize("module", sorted(REFERENCE))
def test_reference_documents_all(module: str) -> None:
    page = DOCS / "reference" / REFERENCE[module]
    documented_module, names = documented_names(page)
    assert documented_module == module
    exported = importlib.import_module(module).__all__
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"{page}: documented twice: {duplicates}"
    missing = sorted(set(exported) - set(names))
    assert not missing, (
        f"{module} exports {missing} but {page.relative_to(ROOT)} does not document them: "
        f"add an '.. autofunction::' / '.. autoclass::' / '.. autodata::' line for each"
    )
    extra = sorted(set(names) - set(exported))
    assert not extra, f"{page.relative_to(ROOT)} documents {extra}, not in {module}.__all__"


def test_reference_index_lists_every_page() -> None:
    index = (DOCS / "reference" / "index.rst").read_text()
    for page in REFERENCE.values():
        assert re.search(rf"^\s+{re.escape(page[:-4])}$", index, re.M), page


_HISTORY = re.compile(
    r"\b(?:19|20)\d\d-[01]\d-[0-3]\d\b"  # an ISO date
    r"|\b(?:issue|PR|pull request)s?\s*#?\d+"  # issue 4, PR #12
    r"|(?<![\w&])#\d+\b",  # #12
    re.I,
)


def _rendered_docstrings() -> dict[str, str]:
    docs: dict[str, str] = {}
    for name in [*REFERENCE, *ESSAYS]:
        module = importlib.import_module(name)
        docs[name] = inspect.getdoc(module) or ""
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            docs[f"{name}.{attr}"] = inspect.getdoc(obj) or "" if callable(obj) else ""
            for member_name, member in vars(obj).items() if inspect.isclass(obj) else ():
                doc = getattr(member, "__doc__", None)
                if isinstance(doc, str):
                    docs[f"{name}.{attr}.{member_name}"] = doc
    return docs


def _pages_describing_what_is() -> list[Path]:
    """The pages held to describe what is: the docs' sources, README.md and the
    benchmark notes next to the scripts (CHANGELOG.md keeps the history)."""
    pages = [p for p in DOCS.rglob("*") if p.suffix in {".md", ".rst", ".py"}]
    pages = [p for p in pages if "_build" not in p.parts]
    return [*pages, ROOT / "README.md", *sorted((ROOT / "benchmarks").glob("*.md"))]


def test_no_history_in_docs() -> None:
    found = []
    pages = _pages_describing_what_is()
    assert len(pages) >= 15
    assert {"README.md", "notes.md", "async.md", "posix.md", "cp.md"} <= {p.name for p in pages}
    for page in pages:
        for match in _HISTORY.finditer(page.read_text()):
            found.append(f"{page.relative_to(ROOT)}: {match.group()!r}")
    for where, doc in _rendered_docstrings().items():
        for match in _HISTORY.finditer(doc):
            found.append(f"docstring of {where}: {match.group()!r}")
    assert not found, "history belongs in CHANGELOG.md and git:\n" + "\n".join(found)


def test_history_pattern() -> None:
    for text in ("measured on 2026-12-02", "see issue 4", "(issue #12)", "fixed in #7"):
        assert _HISTORY.search(text), text
    for text in ("RWF_DSYNC", "0.95x at depth 64", "O_DIRECT", "C#", "&#8212;"):
        assert not _HISTORY.search(text), text
