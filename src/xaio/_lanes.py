"""Per-fd ordering of requests: the one rule the thread engine and POSIX AIO
(on engines that do not order requests themselves) share.

Where the order of two requests on one fd is observable, they run one after
the other in submission order; elsewhere they run in parallel:

- On a *stream* fd (pipe, socket, FIFO, tty, any other character device)
  every transfer moves the stream, and on an ``O_APPEND`` fd every write
  moves the end of the file: there requests run one at a time
  (:func:`fd_order` says ``STREAM`` or ``SERIAL``).
- A request that uses the file position (``offset < 0``: ``read(2)``,
  ``write(2)`` on a regular file) moves it for the next one: it starts only
  when nothing else on its fd runs, and what comes after it waits for it.
- An fsync covers every request submitted before it on its fd: it starts
  only once they have all completed (a per-fd barrier).  Requests submitted
  after it may run beside it.
- Positional reads and writes on a regular file or block device run in
  parallel (glibc runs every request of one fd in turn: 32 reads of one
  file never overlap there).
- Nothing overtakes a held request: once one request of a lane waits, every
  later one waits behind it, so the submission order holds.

A :class:`Lane` counts the requests of one fd that run (``active``) and
keeps those held back (``held``, in submission order); its owner holds its
own lock around every call, drops the lane once :attr:`Lane.idle`, and
runs what :meth:`Lane.release` returns.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from xaio._ops import OpCode, Operation
from xaio._syscall import fstat_cached

__all__ = ["PARALLEL", "SERIAL", "STREAM", "Lane", "fd_order", "waits_for_all"]

#: :func:`fd_order` answers: requests may run in parallel; one at a time in
#: submission order (O_APPEND); the same, on a stream (reads wait for readiness)
PARALLEL, SERIAL, STREAM = 0, 1, 2

_SYNCS = (OpCode.FSYNC, OpCode.FDATASYNC)

T = TypeVar("T")


def fd_order(fd: int, file: bool | None = None) -> int:
    """How requests on *fd* are ordered: ``STREAM`` for stream fds (anything
    but a regular file or block device), ``SERIAL`` for O_APPEND fds, else
    ``PARALLEL``.  A bad fd is parallel: its requests fail with EBADF when
    they run.

    Args:
        file: whether *fd* is a regular file or block device, when the
            caller knows it already (an operation's ``kind``); None: look.
    """
    if file is None:
        try:
            mode = fstat_cached(fd).st_mode
        except (OSError, OverflowError, ValueError):
            return PARALLEL
        file = stat.S_ISREG(mode) or stat.S_ISBLK(mode)
    if not file:
        return STREAM
    try:
        return SERIAL if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND else PARALLEL
    except OSError:  # pragma: no cover - closed between the two calls
        return PARALLEL


def waits_for_all(op: Operation) -> bool:
    """Must *op* wait until nothing else on its fd runs, even on a parallel
    fd?  An fsync (it covers what came before it) and a request at the file
    position (``offset < 0``: it moves the position the next one uses)."""
    return op.offset < 0 or op.opcode in _SYNCS


class Lane(Generic[T]):
    """The requests of one fd: how many run (``active``) and those held back
    for ordering (``held``: items of the owner's choice, in submission order).

    Args:
        order: :func:`fd_order`'s answer for the fd.
    """

    __slots__ = ("serial", "stream", "active", "held")

    def __init__(self, order: int) -> None:
        self.serial = order != PARALLEL
        self.stream = order == STREAM
        self.active = 0
        self.held: deque[T] = deque()

    def admit(self, op: Operation) -> bool:
        """A new request, *op*: True if it may start now (it is counted as
        running); False if it must wait (the caller appends it to ``held``)."""
        if not self.held and (self.active == 0 or not (self.serial or waits_for_all(op))):
            self.active += 1
            return True
        return False

    def release(self, op_of: Callable[[T], Operation]) -> list[T]:
        """Take the held requests that may start now (counted as running),
        in order; *op_of* gives a held item's operation."""
        held = self.held
        out: list[T] = []
        while held:
            op = op_of(held[0])
            if self.active and (self.serial or waits_for_all(op)):
                break
            out.append(held.popleft())
            self.active += 1
        return out

    @property
    def passable(self) -> bool:
        """May a positional read on this fd complete at once, overtaking
        nothing?  Not on a serial fd, nor while requests are held back."""
        return not (self.serial or self.held)

    @property
    def idle(self) -> bool:
        """Nothing runs and nothing is held: the owner may drop the lane."""
        return not self.active and not self.held
