"""Helpers for the async-layer tests: run a coroutine function under each
event-loop library, and which engines work here."""

from __future__ import annotations

import asyncio
import functools
import os
import resource
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from xaio.engine import probe

LIBS = ["asyncio", "uvloop", "trio", "anyio-asyncio", "anyio-trio"]
ENGINES = ["uring", "linux", "thread"]


@functools.lru_cache(maxsize=1)
def engine_reasons() -> dict[str, str | None]:
    return probe()


def skip_unavailable(engine: str) -> None:
    reason = engine_reasons().get(engine)
    if reason is not None:
        pytest.skip(f"engine {engine} unavailable here: {reason}")


def run(lib: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run ``fn(*args)`` to completion under *lib* (a fresh loop / trio run)."""
    if lib == "asyncio":
        return asyncio.run(fn(*args))  # type: ignore[arg-type]
    if lib == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(fn(*args))
    if lib == "trio":
        trio = pytest.importorskip("trio")
        return trio.run(fn, *args)
    anyio = pytest.importorskip("anyio")
    backend = lib.split("-", 1)[1]
    return anyio.run(fn, *args, backend=backend)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def _nothing() -> None:
    pass


def fds_after_a_first_run(lib: str) -> set[str]:
    """The open fds once *lib* has run a loop (uvloop keeps a pipe for the
    process from its first loop on)."""
    run(lib, _nothing)
    return open_fds()


def unused_fd() -> int:
    """An fd number that is not open, far above the highest open one: an fd
    made meanwhile (a worker's wake-up eventfd, an engine's) takes the
    lowest free number, never this one (a closed fd's number it may)."""
    fd = max(map(int, os.listdir("/proc/self/fd"))) + 256
    assert fd < resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return fd


def aio_nr() -> int:
    """System-wide count of AIO events reserved (other processes change it too)."""
    with open("/proc/sys/fs/aio-nr") as f:
        return int(f.read())


def own_aio_rings() -> int:
    """Linux AIO contexts of this process: each maps its ring as ``/[aio]``."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "/[aio]" in line)
