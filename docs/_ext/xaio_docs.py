"""Sphinx helpers for xaio's documentation.

- ``.. xaio-docstring:: MODULE`` renders a module's docstring (its essay),
  section titles included; with ``:summary:`` only its first paragraph.
- References the docstrings make to a private home of a public object
  (``xaio._ops.Operation`` for ``xaio.engine.Operation``), or to a neighbour
  by its short name on a page where its module is not the current one, resolve
  to the documented public name.
- A reference to an internal name that exists (a private module's function,
  a method of an undocumented class) is shown as code, unlinked; one to a
  name that does not exist still fails the build.
- Napoleon reads attribute docstrings as prose (they do not start with a type).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.ext.napoleon.docstring import GoogleDocstring
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_refnode, nested_parse_with_titles


class ModuleDocstring(SphinxDirective):
    required_arguments = 1
    option_spec: ClassVar[dict[str, Any]] = {"summary": directives.flag}

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        doc = inspect.getdoc(importlib.import_module(name)) or ""
        if "summary" in self.options:
            doc = doc.split("\n\n", 1)[0]
        source = f"docstring of {name}"
        content = StringList(doc.splitlines(), source=source)
        node = nodes.section() if "summary" not in self.options else nodes.container()
        node.document = self.state.document
        nested_parse_with_titles(self.state, content, node)
        return list(node.children)


PUBLIC = (
    "xaio",
    "xaio.engine",
    "xaio.linux",
    "xaio.libaio",
    "xaio.uring",
    "xaio.posix",
    "xaio.os",
)


def _candidates(node: Any) -> list[str]:
    """Public full names a reference left unresolved may stand for.

    A docstring shown where its module is not the current one (a re-export on
    another page) names its neighbours without their module; a docstring
    pointing at a private home (``xaio._ops.Operation``) means the public
    re-export.
    """
    target: str = node["reftarget"].lstrip("~.")
    parts = target.split(".")
    private = [i for i, p in enumerate(parts[:-1]) if p.startswith("_")]
    if private:
        parts = parts[private[-1] + 1 :]  # xaio._ops.Operation -> Operation
    elif parts[0] == "xaio":
        return []  # a public dotted name: Sphinx's own answer stands
    tail = ".".join(parts)
    here = node.get("py:module")
    modules = ([here] if here in PUBLIC else []) + [m for m in PUBLIC if m != here]
    names: list[str] = []
    cls = node.get("py:class")
    for mod in modules:
        if cls and len(parts) == 1:
            names.append(f"{mod}.{cls}.{tail}")
        names.append(f"{mod}.{tail}")
    return names


@functools.cache
def _internal_names() -> frozenset[str]:
    """Every name xaio's modules define, bare and qualified, with class members:
    what the essays may mention without a reference page to link to."""
    import xaio

    names: set[str] = set()
    for info in pkgutil.walk_packages(xaio.__path__, "xaio."):
        module = importlib.import_module(info.name)
        names.add(info.name)
        for name, obj in vars(module).items():
            names.update((name, f"{info.name}.{name}"))
            if inspect.isclass(obj):
                for member in vars(obj):
                    names.update((f"{name}.{member}", f"{info.name}.{name}.{member}"))
    return frozenset(names)


def _resolve_public(app: Sphinx, env: Any, node: Any, contnode: nodes.Node) -> Any:
    if node.get("refdomain") != "py":
        return None
    objects = env.get_domain("py").objects
    for full in _candidates(node):
        entry = objects.get(full)
        if entry is not None and not entry.aliased:
            return make_refnode(
                app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, full
            )
    target = node["reftarget"].lstrip("~.")
    if target in _internal_names():
        return contnode  # an internal name that exists: shown as code, not linked
    return None


def _prose_attribute(self: Any) -> list[str]:
    """xaio's attribute docstrings are prose: no ``type: text`` first line."""
    return list(self._consume_to_end())


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("xaio-docstring", ModuleDocstring)
    app.connect("missing-reference", _resolve_public)
    GoogleDocstring._parse_attribute_docstring = _prose_attribute  # type: ignore[method-assign]
    return {"parallel_read_safe": True, "parallel_write_safe": True}
