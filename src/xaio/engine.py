"""Engines: one small protocol, three implementations, and how one is chosen.

An *engine* runs :class:`~xaio._ops.Operation` records asynchronously and says
when each has finished.  There are three, best first:

``uring``
    io_uring (:mod:`xaio.uring`): every opcode, every kind of fd, real
    cancellation of running requests.
``linux``
    Linux native AIO (:mod:`xaio.linux`): only truly asynchronous for O_DIRECT
    regular files; anything else would block inside ``io_submit``.
``thread``
    a pool of worker threads running ``os.preadv`` & co (:mod:`xaio.threads`):
    works everywhere, cancels only what has not started.

The protocol (:class:`Engine`) is deliberately small:

- ``submit(ops)`` hands over a batch of QUEUED operations.  Per-operation
  errors never raise: the operation completes with ``-errno``.
- ``cancel(op)`` says honestly what happened: :class:`CancelOutcome`
  ``CANCELED`` (it will complete with ``-ECANCELED``), ``RUNNING`` (it will
  complete normally, later) or ``DONE`` (it had completed already).
- ``reap(timeout)`` delivers finished operations (``op.complete(res)``, which
  runs ``op.on_done``) in the calling thread; ``timeout=0`` never blocks,
  ``None`` waits for at least one.  Returns how many were delivered.
- ``fileno()`` is an eventfd that is readable while completions are waiting
  (``reap`` clears it), for event loops.
- ``close()`` stops accepting, cancels what it can, waits for the rest, then
  releases every kernel object.  Idempotent; also run (with a
  ``ResourceWarning``) when an unclosed engine is garbage collected.

Threads: ``submit`` and ``cancel`` may be called from any thread while one
thread is inside ``reap``.

Rule 1 holds in every engine: an operation's buffers stay pinned until its
completion has been reaped, whatever happened to the cancel.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

from xaio._ops import CancelOutcome, Operation

__all__ = ["Engine", "EngineClosedError", "CancelOutcome", "ENGINE_NAMES"]

#: Engine names, best first: the order :func:`open_engine` tries them.
ENGINE_NAMES: tuple[str, ...] = ("uring", "linux", "thread")


class EngineClosedError(RuntimeError):
    """The engine was closed; it accepts no more operations."""


class Engine(abc.ABC):
    """The engine protocol (see the module documentation)."""

    name: ClassVar[str]

    @abc.abstractmethod
    def submit(self, ops: Sequence[Operation]) -> int:
        """Hand a batch of QUEUED operations to the engine; returns len(ops).

        Raises:
            EngineClosedError: the engine is closed (no operation was taken).
        """

    @abc.abstractmethod
    def cancel(self, op: Operation) -> CancelOutcome:
        """Try to cancel *op*; say honestly what happened."""

    @abc.abstractmethod
    def reap(self, timeout: float | None = 0.0) -> int:
        """Deliver finished operations in this thread; return how many."""

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

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
