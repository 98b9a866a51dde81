"""The engine protocol: what every engine does and every caller may rely on.

This module imports no engine, so each engine imports it (and
:mod:`xaio.engine._route`) without importing the others; the public home of
its names is :mod:`xaio.engine`, whose documentation describes the protocol.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

from xaio._ops import CancelOutcome, Operation

__all__ = ["Engine", "EngineClosedError"]


class EngineClosedError(RuntimeError):
    """The engine was closed; it accepts no more operations."""


class Engine(abc.ABC):
    """The engine protocol (see the module documentation)."""

    name: ClassVar[str]

    @abc.abstractmethod
    def submit(self, ops: Sequence[Operation]) -> int:
        """Hand a batch of QUEUED operations to the engine; returns len(ops).

        When it raises, no operation was taken.

        Raises:
            EngineClosedError: the engine is closed.
            RuntimeError: an operation is not QUEUED or is listed twice.
            TypeError: an fd, offset or flags that is not an int.
            ValueError: an fd out of range; READ/WRITE without exactly one
                buffer, READV/WRITEV with more than 1024
                (:func:`xaio._ops.check_batch` has the rules).
        """

    @abc.abstractmethod
    def cancel(self, op: Operation) -> CancelOutcome:
        """Try to cancel *op*; say honestly what happened."""

    @abc.abstractmethod
    def reap(self, timeout: float | None = 0.0, *, max_n: int = 0) -> int:
        """Deliver finished operations in this thread (at most *max_n* if >
        0); return how many."""

    @abc.abstractmethod
    def fileno(self) -> int:
        """An fd readable while completions are waiting to be reaped."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop, cancel, drain, release (idempotent)."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` has started."""

    def statistics(self) -> dict[str, Any]:
        """Counters for debugging and benchmarks (engine-specific keys)."""
        return {"name": self.name}

    def register_buffers(self, buffers: Sequence[Any]) -> bool:
        """Offer *buffers* as the memory most requests will use, so that an
        engine that can pin them once does so (io_uring's fixed buffers); a
        request on (part of) one of them then skips the kernel's per-request
        page pinning.  Any buffer still works for any request either way.

        Returns:
            True if this engine registered them; False if it has no such
            thing (the Linux AIO and thread engines, which ignore them).

        Raises:
            ValueError: an empty sequence.
            TypeError, OSError: from an engine that registers (see
                :meth:`xaio.uring.UringEngine.register_buffers`): a read-only
                buffer, or the kernel's refusal (``RLIMIT_MEMLOCK``...).
        """
        if not buffers:
            raise ValueError("no buffers to register")
        return False

    def unregister_buffers(self) -> None:
        """Undo :meth:`register_buffers` (nothing if none are registered);
        requests in flight keep their memory."""
        return None  # engines without registered buffers have nothing to undo

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EngineClosedError.__module__ = "xaio.engine"
Engine.__module__ = "xaio.engine"
