"""The async layer: asyncio / trio / anyio coroutines, async files, engines per loop.

- :mod:`._driver` -- a driver: one engine on one running loop (submission,
  batching, fairness, cancellation, the page-cache fast path);
- :mod:`._asyncio`, :mod:`._trio` -- the driver's waits on each library;
- :mod:`._current` -- which driver serves a call: the running library, each
  loop's default driver and its lifetime, fork;
- :mod:`._checks` -- argument checks and the kernel's answers given before
  submission; :mod:`._cachestat` -- ``cachestat(2)``;
- :mod:`._io` -- ``pread``, ``pwrite``... and :func:`open_engine`;
- :mod:`._open` -- :func:`open`: mode parsing, opening, the file object;
- :mod:`._binary`, :mod:`._text` -- the binary and text async files;
- :mod:`._pathops` -- path operations on io_uring for :mod:`xaio.os`;
- :mod:`._batch` -- :class:`Batch`, many requests in one submission;
- :mod:`._path` -- :class:`Path`, an async :class:`pathlib.Path`.
"""

from __future__ import annotations

from xaio._async._batch import Batch
from xaio._async._binary import AsyncFile
from xaio._async._checks import InvalidArgument
from xaio._async._io import (
    AsyncEngine,
    fdatasync,
    fsync,
    open_engine,
    pread,
    preadinto,
    preadv,
    pwrite,
    pwritev,
    read,
    readinto,
    write,
)
from xaio._async._open import OpenContext, open
from xaio._async._path import Path
from xaio._async._text import AsyncTextFile

__all__ = [
    "AsyncEngine",
    "AsyncFile",
    "AsyncTextFile",
    "Batch",
    "InvalidArgument",
    "OpenContext",
    "Path",
    "fdatasync",
    "fsync",
    "open",
    "open_engine",
    "pread",
    "preadinto",
    "preadv",
    "pwrite",
    "pwritev",
    "read",
    "readinto",
    "write",
]
