"""The documentation covers the public API and describes what is.

- every name a public module exports (``__all__``) is documented on its
  reference page (docs/reference/), and nothing else is;
- no page of the docs, nor a docstring they render, mentions an issue number
  or a date (the history is in CHANGELOG.md and git).

The examples on the pages run in tests/test_readme.py; ``sphinx-build -W -n``
(in CI: ``nox -s docs``) fails on a broken reference.
"""

from __future__ import annotations

import importlib
import inspect
import re
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
}
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


def test_no_history_in_docs() -> None:
    found = []
    pages = [p for p in DOCS.rglob("*") if p.suffix in {".md", ".rst", ".py"}]
    pages = [p for p in pages if "_build" not in p.parts]
    assert len(pages) >= 10
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
