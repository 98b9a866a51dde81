"""The async layer: asyncio / trio / anyio coroutines, async files, engines per loop.

- :mod:`._loop` -- the per-loop engine drivers (how completions wake a loop,
  batching, cancellation, the default engine's lifetime);
- :mod:`._io` -- ``pread``, ``pwrite``... and :func:`open_engine`;
- :mod:`._file` -- :func:`open` and the async file objects;
- :mod:`._meta` -- path operations on io_uring for :mod:`xaio.os`;
- :mod:`._batch` -- :class:`Batch`, many requests in one submission;
- :mod:`._path` -- :class:`Path`, an async :class:`pathlib.Path`.
"""

from __future__ import annotations

from xaio._async._batch import Batch
from xaio._async._file import AsyncFile, AsyncTextFile, OpenContext, open
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
from xaio._async._loop import InvalidArgument
from xaio._async._path import Path

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
