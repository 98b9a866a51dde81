"""The ``linux`` engine: Linux AIO where it is truly asynchronous, threads
for the rest, behind one :class:`~xaio.engine.Engine`.

The engines it combines are imported when one is made, so importing
:mod:`xaio.engine` imports no engine.
"""

from __future__ import annotations

import select
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from xaio._ops import CancelOutcome, Operation, check_batch
from xaio.engine._protocol import Engine, EngineClosedError
from xaio.engine._route import KIND_DIRECT, route

__all__ = ["RoutedEngine"]


class RoutedEngine(Engine):
    """The ``linux`` engine: Linux AIO where it is truly asynchronous
    (O_DIRECT regular files on file systems that do not block, polls: see
    :func:`fd_kind`), the thread engine for the rest.

    ``fileno()`` is an epoll fd watching both engines' eventfds.
    """

    name = "linux"
    slow_close = True

    def __init__(self, capacity: int = 256, threads: int = 8) -> None:
        from xaio.linux import LinuxAioEngine
        from xaio.threads import ThreadEngine

        self._closed = True
        self._aio = LinuxAioEngine(capacity)
        try:
            self._threads: ThreadEngine = ThreadEngine(threads)
        except BaseException:
            self._aio.close()
            raise
        self._epoll = select.epoll()
        self._epoll.register(self._aio.fileno(), select.EPOLLIN)
        self._epoll.register(self._threads.fileno(), select.EPOLLIN)
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def owns(self, op: Operation) -> bool:
        """True if *op* was given to this engine and has not been delivered."""
        return self._aio.owns(op) or self._threads.owns(op)

    def fileno(self) -> int:
        """An epoll fd, readable while either engine has completions.

        Raises:
            EngineClosedError: the engine is closed.
        """
        if self._closed:
            raise EngineClosedError("engine is closed")
        return self._epoll.fileno()

    def submit(self, ops: Sequence[Operation]) -> int:
        if self._closed:
            raise EngineClosedError("engine is closed")
        check_batch(ops)  # before either engine takes anything
        aio, threaded = route(ops, KIND_DIRECT)
        if aio:
            self._aio.submit_checked(aio)
        if threaded:
            self._threads.submit_checked(threaded)
        return len(ops)

    def cancel(self, op: Operation) -> CancelOutcome:
        if self._aio.owns(op):
            return self._aio.cancel(op)
        return self._threads.cancel(op)

    def _reap_both(self, max_n: int) -> int:
        n = self._aio.reap(0, max_n=max_n)
        if max_n > 0 and n >= max_n:
            return n
        return n + self._threads.reap(0, max_n=max_n - n if max_n > 0 else 0)

    def reap(self, timeout: float | None = 0.0, *, max_n: int = 0) -> int:
        n = self._reap_both(max_n)
        if n or timeout == 0:
            return n
        deadline = None if timeout is None else time.monotonic() + timeout
        while not n:
            left = -1.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
            self._epoll.poll(left)
            n = self._reap_both(max_n)
            if deadline is not None and time.monotonic() >= deadline:
                break
        return n

    def close(self) -> None:
        """Close both engines (see :meth:`xaio.threads.ThreadEngine.close`
        and :meth:`xaio.linux.LinuxAioEngine.close`) and the epoll fd."""
        if self._closed:
            return
        self._closed = True
        try:
            self._aio.close()
        finally:
            self._threads.close()
            self._epoll.close()

    def read_nowait(self, fd: int, buffer: Any, offset: int, nbytes: int) -> int | None:
        """The thread engine's page-cache fast path (buffered files are its
        part; O_DIRECT fds are never read inline): *nbytes*, or None."""
        if self._closed:
            return None
        return self._threads.read_nowait(fd, buffer, offset, nbytes)

    @property
    def nowait_reader(self) -> Callable[[int, Sequence[Any], int, int], int | None]:
        """The thread engine's (closed with this engine)."""
        return self._threads.nowait_reader

    def statistics(self) -> dict[str, Any]:
        threads = self._threads.statistics()
        return {
            "name": self.name,
            "inline": threads["inline"],
            "aio": self._aio.statistics(),
            "threads": threads,
        }

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        if sys.is_finalizing():
            return  # interpreter exit: each engine's own finaliser decides
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
        # Nothing here may wait for a request that can wait for ever: the
        # thread engine is abandoned (what runs ends on its own); kernel AIO
        # holds only O_DIRECT file requests, which end, and polls, cancelled.
        self._closed = True
        try:
            self._aio.close()
        finally:
            self._threads.abandon()
            self._epoll.close()


RoutedEngine.__module__ = "xaio.engine"
