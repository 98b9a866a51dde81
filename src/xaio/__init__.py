"""xaio: asynchronous I/O for Python, done properly.

The layers, lowest first (see docs/architecture.md):

- :mod:`xaio.linux` — Linux native AIO (``io_setup`` ... ``io_destroy``), raising OSError;
- :mod:`xaio.libaio` — the same in libaio's convention (negated errno returned);
- :mod:`xaio.uring` — io_uring driven from pure Python;
- :mod:`xaio.engine` — the engines (uring, linux, thread), ``probe()``, ``create_engine()``;
- :mod:`xaio.posix` — POSIX AIO (``aio_read`` ...), re-exported here;
- :func:`aligned_buffer`, :class:`BufferPool` — memory aligned for O_DIRECT;
- the async layer (:mod:`xaio._async`): ``await xaio.pread(fd, n, offset)`` and the other
  os-like coroutines, :func:`open` (async file objects), :func:`open_engine`, and
  :mod:`xaio.os` (async ``stat``, ``rename``, ``mkdir``...), :class:`Batch` (many
  requests in one submission) and :class:`Path` (an async ``pathlib.Path``), for
  asyncio, trio and anyio.

Importing xaio starts no thread, makes no system call and imports no event
loop: each public name is imported when it is first used (:pep:`562`), so
``import xaio.linux`` costs only the layers below it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xaio import os
    from xaio._async import (
        AsyncEngine,
        AsyncFile,
        AsyncTextFile,
        Batch,
        Path,
        fdatasync,
        fsync,
        open,
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
    from xaio._memory import BufferPool, aligned_buffer, dio_alignment
    from xaio.posix import (
        AIO_ALLDONE,
        AIO_CANCELED,
        AIO_NOTCANCELED,
        AIO_PRIO_DELTA_MAX,
        LIO_NOP,
        LIO_NOWAIT,
        LIO_READ,
        LIO_WAIT,
        LIO_WRITE,
        SIGEV_NONE,
        SIGEV_SIGNAL,
        SIGEV_THREAD,
        aio_cancel,
        aio_error,
        aio_fsync,
        aio_init,
        aio_read,
        aio_return,
        aio_suspend,
        aio_write,
        aiocb,
        lio_listio,
        sigevent,
    )

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "aligned_buffer",
    "dio_alignment",
    "BufferPool",
    # POSIX AIO
    "aiocb",
    "sigevent",
    "aio_read",
    "aio_write",
    "aio_fsync",
    "aio_error",
    "aio_return",
    "aio_cancel",
    "aio_suspend",
    "lio_listio",
    "aio_init",
    "AIO_CANCELED",
    "AIO_NOTCANCELED",
    "AIO_ALLDONE",
    "LIO_READ",
    "LIO_WRITE",
    "LIO_NOP",
    "LIO_WAIT",
    "LIO_NOWAIT",
    "SIGEV_SIGNAL",
    "SIGEV_NONE",
    "SIGEV_THREAD",
    "AIO_PRIO_DELTA_MAX",
    # the async layer
    "pread",
    "preadinto",
    "pwrite",
    "preadv",
    "pwritev",
    "fsync",
    "fdatasync",
    "read",
    "readinto",
    "write",
    "open",
    "open_engine",
    "os",
    "AsyncEngine",
    "AsyncFile",
    "AsyncTextFile",
    "Batch",
    "Path",
]

#: each public name's home, imported when the name is first used
_HOMES: dict[str, str] = {
    **dict.fromkeys(("aligned_buffer", "dio_alignment", "BufferPool"), "xaio._memory"),
    **dict.fromkeys(
        (
            "aiocb", "sigevent", "aio_read", "aio_write", "aio_fsync", "aio_error",
            "aio_return", "aio_cancel", "aio_suspend", "lio_listio", "aio_init",
            "AIO_CANCELED", "AIO_NOTCANCELED", "AIO_ALLDONE", "LIO_READ", "LIO_WRITE",
            "LIO_NOP", "LIO_WAIT", "LIO_NOWAIT", "SIGEV_SIGNAL", "SIGEV_NONE",
            "SIGEV_THREAD", "AIO_PRIO_DELTA_MAX",
        ),
        "xaio.posix",
    ),
    **dict.fromkeys(
        (
            "pread", "preadinto", "pwrite", "preadv", "pwritev", "fsync", "fdatasync",
            "read", "readinto", "write", "open", "open_engine", "AsyncEngine",
            "AsyncFile", "AsyncTextFile", "Batch", "Path",
        ),
        "xaio._async",
    ),
}  # fmt: skip


#: public submodules, also reachable as attributes after ``import xaio``
_SUBMODULES = frozenset({"engine", "libaio", "linux", "os", "posix", "threads", "uring"})


def __getattr__(name: str) -> Any:
    """Import a public name's home the first time the name is used."""
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f"xaio.{name}")
    else:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module 'xaio' has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
