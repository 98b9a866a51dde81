"""What the fault tests measure: an event loop's lag, and the process's
resources before and after a scenario."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from xaio.linux import _engine as linux_engine

#: A tick of the lag meter: it asks to sleep this long.
TICK = 0.001


def _run_delay() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU
    (``/proc/thread-self/schedstat``; 0 where the kernel keeps no such count)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class LagMeter:
    """A task that sleeps :data:`TICK` again and again and records how much
    later than asked it woke.

    ``max_lag`` is the longest such delay less the time the loop's thread
    waited for a CPU meanwhile (what another process on a busy machine takes,
    not what the loop was blocked by); ``max_wall`` is the raw delay.
    """

    def __init__(self) -> None:
        self.max_lag = 0.0
        self.max_wall = 0.0
        self.ticks = 0
        self._stop = False

    async def run(self, sleep: Callable[[float], Awaitable[Any]]) -> None:
        last, last_wait = time.monotonic(), _run_delay()
        while not self._stop:
            await sleep(TICK)
            now, wait = time.monotonic(), _run_delay()
            late = now - last - TICK
            self.max_wall = max(self.max_wall, late)
            self.max_lag = max(self.max_lag, late - (wait - last_wait))
            self.ticks += 1
            last, last_wait = now, wait

    def stop(self) -> None:
        self._stop = True


def snapshot() -> dict[str, Any]:
    """The resources a scenario must give back: fds, threads, AIO contexts
    (``/proc/sys/fs/aio-nr`` counts other processes' too: the process's own
    rings are counted in its maps), io_uring mappings and mapped files (not
    shared libraries, which imports add, nor the tests' own aligned buffers,
    which are /dev/zero mappings).  The idle AIO contexts that closed Linux
    AIO engines leave for the next one (``xaio.linux``'s pool) are not
    counted: they are kept on purpose."""
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    named = sorted(
        " ".join(m.split()[5:])
        for m in maps
        if len(m.split()) > 5
        and ".so" not in m
        and "/dev/zero" not in m
        and not m.split()[5].startswith("[")
        and "/[aio]" not in m  # counted below
    )
    return {
        "fds": sorted(os.listdir("/proc/self/fd")),
        "threads": sorted(t.ident or 0 for t in threading.enumerate()),
        "aio_rings": sum(1 for m in maps if "/[aio]" in m) - len(linux_engine._idle_contexts),
        "uring_maps": sum(1 for m in maps if "io_uring" in m),
        "file_maps": named,
    }


def assert_released(before: dict[str, Any], timeout: float = 10.0) -> None:
    """Wait (up to *timeout*) until the resources are back to *before*: no fd
    and no thread that was not there before (those of other libraries that
    were may end meanwhile: trio and anyio keep idle worker threads a while),
    the same AIO rings, io_uring mappings and mapped files.  Anonymous
    mappings are not compared: the C allocator keeps a finished thread's
    arena and stack for the next one."""

    def released(now: dict[str, Any]) -> bool:
        return all(
            set(now[k]) <= set(before[k]) if k in ("fds", "threads") else now[k] == before[k]
            for k in before
        )

    deadline = time.monotonic() + timeout
    while True:
        now = snapshot()
        if released(now):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"resources not released: before {before}, after {now}")
        time.sleep(0.01)
