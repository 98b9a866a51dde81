"""Sphinx configuration of xaio's documentation (``sphinx-build -W -n docs docs/_build``)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))

import xaio  # noqa: E402

project = "xaio"
author = "the xaio developers"
copyright = "the xaio developers"
release = xaio.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
    "xaio_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"xaio {release}"

autodoc_member_order = "bysource"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

nitpicky = True
# Names from the standard library and the other async libraries: the docs are
# built offline, so there is no intersphinx inventory to resolve them against.
_EXTERNAL = (
    r"(argparse|collections\.abc|typing|typing_extensions|types|ctypes|_ctypes|asyncio|trio|anyio"
    r"|sniffio|os|io|mmap|socket|signal|threading|concurrent\.futures|enum|array"
    r"|selectors|select|pathlib|weakref|contextlib|dataclasses|posix)(\..*)?"
)
nitpick_ignore_regex = [
    (r"py:(class|obj|exc|func|data|mod|meth|attr)", _EXTERNAL),
    # "Raises:" entries that name several built-in exceptions at once
    (r"py:exc", r".*[/,].*"),
]
# Internal names the docstrings mention (xaio._ops.check_batch, a TypeVar)
# show as code without a link: see _ext/xaio_docs.py.
