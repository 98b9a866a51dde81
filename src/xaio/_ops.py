"""The sans-I/O core: operation records, their states, and the in-flight table.

No system calls, no threads, no event loop: engines (Linux AIO, io_uring, the
thread pool) drive these objects, and tests drive them with fake completions,
including the orderings that are hard to produce for real.

Lifecycle of an :class:`Operation`::

    QUEUED --submit--> SUBMITTED --request_cancel--> CANCEL_REQUESTED
       |                   |                               |
       |                   +--------- complete ------------+--> DONE
       +--cancel_queued (never reached the kernel) -----------> DONE

Rule 1 of the design: only a reaped completion (:meth:`InFlight.complete`)
removes an operation from the in-flight table and releases its buffers.  A
cancel request, a cancel's own completion (io_uring posts two: one for the
cancel, one for the target, in either order) or a dropped future only change
the state; the buffers stay pinned until the target's completion is reaped.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterator, MutableSequence, Sequence
from typing import Any

from xaio._buffers import Pin, pin_many
from xaio._syscall import oserror

__all__ = [
    "OpCode",
    "OpState",
    "Operation",
    "InFlight",
    "decode_result",
    "check_batch",
    "CancelOutcome",
]


class OpCode(enum.IntEnum):
    """Engine-neutral operation codes."""

    READ = 0
    WRITE = 1
    READV = 2
    WRITEV = 3
    FSYNC = 4
    FDATASYNC = 5
    POLL = 6
    NOP = 7


class OpState(enum.IntEnum):
    """Where an operation is: QUEUED (not yet handed to an engine), SUBMITTED,
    CANCEL_REQUESTED (a cancel was asked for; its completion is still to come)
    and DONE (its completion was reaped: the result is set, the buffers
    released)."""

    QUEUED = 0
    SUBMITTED = 1
    CANCEL_REQUESTED = 2
    DONE = 3


class CancelOutcome(enum.IntEnum):
    """What an engine can honestly say about a cancel request."""

    CANCELED = 0  #: it will not run (or was stopped); its completion says -ECANCELED
    #: it is running and completes on its own: normally, except that io_uring
    #: may still stop it (its completion then says -ECANCELED or -EINTR)
    RUNNING = 1
    DONE = 2  #: it had already completed (or was not found)


_READS = frozenset({OpCode.READ, OpCode.READV})
_WRITES = frozenset({OpCode.WRITE, OpCode.WRITEV})
_READ, _READV, _WRITE, _WRITEV = OpCode.READ, OpCode.READV, OpCode.WRITE, OpCode.WRITEV
_FSYNC, _FDATASYNC, _POLL, _NOP = OpCode.FSYNC, OpCode.FDATASYNC, OpCode.POLL, OpCode.NOP
#: The most buffers one READV/WRITEV takes (the kernel's UIO_MAXIOV).
IOV_MAX = 1024
_QUEUED, _SUBMITTED, _DONE = OpState.QUEUED, OpState.SUBMITTED, OpState.DONE
_POLL = OpCode.POLL


class Operation:
    """One I/O request: what to do, on which buffers, and how it ended.

    Buffers are pinned on construction (``pin``): an operation holds its
    memory from the moment it exists until :meth:`complete` releases it.

    A *reusable* operation keeps its pins after completing, so that the hot
    path of a benchmark or a file object can :meth:`rearm` it for the next
    request on the same buffers without pinning again; its buffers are given
    back by :meth:`release` (or when the operation is garbage collected).

    *kind* is what :func:`xaio.engine.fd_kind` says of *fd*, when the caller
    classified the fd already for this request (the async layer does, to
    answer ESPIPE before submitting): an engine that routes by kind uses it
    instead of asking again.  -1 (the default, and after :meth:`rearm`): not
    known.
    """

    __slots__ = (
        "opcode",
        "reusable",
        "fd",
        "buffers",
        "offset",
        "flags",
        "state",
        "result",
        "pins",
        "key",
        "on_done",
        "context",
        "kind",
    )

    def __init__(
        self,
        opcode: OpCode,
        fd: int,
        buffers: Sequence[Any] = (),
        offset: int = -1,
        flags: int = 0,
        *,
        on_done: Callable[[Operation], None] | None = None,
        context: Any = None,
        reusable: bool = False,
    ) -> None:
        self.opcode = opcode
        self.reusable = reusable
        self.fd = fd
        self.buffers = bufs = buffers if type(buffers) is tuple else tuple(buffers)
        self.offset = offset
        self.flags = flags
        self.state = _QUEUED
        self.result: int | None = None
        self.key = -1
        self.on_done = on_done
        self.context = context
        self.kind = -1
        # identity tests: an IntEnum member's hash is a Python-level call
        if opcode is _READ or opcode is _READV:
            self.pins: list[Pin] = (
                [Pin(bufs[0], True)] if len(bufs) == 1 else pin_many(bufs, writable=True)
            )
        elif opcode is _WRITE or opcode is _WRITEV:
            self.pins = [Pin(bufs[0], False)] if len(bufs) == 1 else pin_many(bufs, writable=False)
        else:
            self.pins = []

    @property
    def nbytes(self) -> int:
        """Total bytes this operation may transfer."""
        return sum(p.nbytes for p in self.pins)

    def mark_submitted(self) -> None:
        """QUEUED -> SUBMITTED, as an engine hands the operation over.

        Raises:
            RuntimeError: the operation is not QUEUED (submitted twice).
        """
        if self.state is not OpState.QUEUED:
            raise RuntimeError(f"cannot submit an operation in state {self.state.name}")
        self.state = OpState.SUBMITTED

    def request_cancel(self) -> bool:
        """Note that a cancel was requested.  Returns True if the engine should
        now ask the kernel (the operation is submitted and not done), False if
        nothing is to be done (already done or already being cancelled)."""
        if self.state is OpState.SUBMITTED:
            self.state = OpState.CANCEL_REQUESTED
            return True
        return False

    def complete(self, result: int) -> None:
        """Record the final result (bytes, or -errno), release the buffers and
        run the ``on_done`` callback.  Completing twice is a bug: RuntimeError."""
        if self.state is _DONE:
            raise RuntimeError("operation completed twice")
        self.state = _DONE
        self.result = result
        if not self.reusable:
            for p in self.pins:
                p._holder = None  # Pin.release, inlined: the export goes with it
        cb = self.on_done
        if cb is not None:
            self.on_done = None
            cb(self)

    def rearm(
        self,
        opcode: OpCode | None = None,
        offset: int | None = None,
        on_done: Callable[[Operation], None] | None = None,
    ) -> None:
        """Make a completed operation QUEUED again, on the same fd and buffers,
        optionally with another opcode (read <-> write), offset and callback.

        Raises:
            RuntimeError: it is not DONE (it may still be in flight).
            TypeError: a read on a read-only buffer.
        """
        if self.state is not _DONE:
            raise RuntimeError(f"cannot rearm an operation in state {self.state.name}")
        code = self.opcode if opcode is None else opcode
        if not self.reusable:
            self.pins = pin_many(self.buffers, writable=code in _READS)
        elif code is not self.opcode and code in _READS and any(p.readonly for p in self.pins):
            raise TypeError("a writable buffer is required for a read")
        self.opcode = code
        if offset is not None:
            self.offset = offset
        self.on_done = on_done
        self.state = _QUEUED
        self.result = None
        self.key = -1
        self.kind = -1

    def release(self) -> None:
        """Give the buffers of a reusable, completed operation back (idempotent).

        Raises:
            RuntimeError: the operation is still queued or in flight.
        """
        if self.state is not OpState.DONE:
            raise RuntimeError("cannot release the buffers of an operation in flight")
        for p in self.pins:
            p.release()

    @property
    def done(self) -> bool:
        """True once the completion was reaped (state DONE)."""
        return self.state is OpState.DONE

    def value(self) -> int:
        """The result as Python sees it: bytes transferred, or raise OSError."""
        if self.result is None:
            raise RuntimeError("operation not done")
        return decode_result(self.result)

    def __repr__(self) -> str:
        return (
            f"<Operation {self.opcode.name} fd={self.fd} off={self.offset} "
            f"state={self.state.name} result={self.result}>"
        )


def decode_result(res: int) -> int:
    """A kernel result (``>= 0`` or ``-errno``) as Python sees it."""
    if res < 0:
        raise oserror(-res)
    return res


def check_batch(ops: Sequence[Operation]) -> None:
    """What every engine's ``submit`` checks before it takes anything: each
    operation is QUEUED, none appears twice in the batch, and the fields its
    opcode uses are well formed -- an int ``fd`` in C ``int`` range (all but
    NOP), an int ``flags`` (reads, writes, POLL), an int ``offset`` (reads and
    writes), exactly one buffer for READ/WRITE and at most 1024 for
    READV/WRITEV.

    Raises:
        RuntimeError: an operation is submitted, done, or listed twice.
        TypeError: an fd, offset or flags that is not an int.
        ValueError: an fd out of range, or a wrong number of buffers.
    """
    for op in ops:
        if op.state is not _QUEUED:
            raise RuntimeError(f"cannot submit an operation in state {op.state.name}")
    if len(ops) > 1 and len(set(map(id, ops))) != len(ops):
        raise RuntimeError("the same operation appears twice in one batch")
    for op in ops:
        code = op.opcode
        if code is _NOP:
            continue  # no fd, offset, flags or buffers
        fd = op.fd
        if not isinstance(fd, int):
            raise TypeError(f"fd must be an int, not {type(fd).__name__}")
        if not -0x80000000 <= fd <= 0x7FFFFFFF:
            raise ValueError(f"fd out of range: {fd}")
        if code is _FSYNC or code is _FDATASYNC:
            continue
        if not isinstance(op.flags, int):
            raise TypeError(f"flags must be an int, not {type(op.flags).__name__}")
        if code is _POLL:
            continue
        if not isinstance(op.offset, int):
            raise TypeError(f"offset must be an int, not {type(op.offset).__name__}")
        if code is _READ or code is _WRITE:
            if len(op.pins) != 1:
                raise ValueError(f"{code.name} takes exactly one buffer, not {len(op.pins)}")
        elif len(op.pins) > IOV_MAX:
            raise ValueError(f"{code.name} takes at most {IOV_MAX} buffers, not {len(op.pins)}")


class InFlight:
    """Operations handed to an engine and not yet reaped, keyed by small ints.

    Keys are reused after completion (lowest free first is not promised), so
    they can index preallocated arrays (iocb slots) or serve as io_uring
    ``user_data``.  The table holds a strong reference to each operation, and
    through it to its pinned buffers, until its completion is reaped; it also
    holds what the kernel reads on the operation's behalf (an iovec array,
    :meth:`hold`) until then.

    The methods an engine calls while a signal handler may raise (Ctrl-C)
    make no call between the changes that must go together, so an exception
    comes before or after each of them, never in the middle.
    """

    __slots__ = ("_ops", "_free", "_next", "_held", "completed")

    def __init__(self) -> None:
        self._ops: dict[int, Operation] = {}
        self._free: list[int] = []
        self._next = 0
        self._held: dict[int, Any] = {}
        #: How many operations :meth:`complete_each` completed so far.
        self.completed = 0

    def next_key(self) -> int:
        """The key the next operation entered takes."""
        free = self._free
        return free[-1] if free else self._next

    def enter_all(self, ops: Sequence[Operation]) -> None:
        """Enter every operation of *ops* as SUBMITTED, each under a key of
        its own, the first under :meth:`next_key`: all of them, or none when
        this raises.  If the engine then fails to hand their requests over,
        :meth:`take_back` undoes it.

        Raises:
            RuntimeError: an operation is not QUEUED (or is listed twice).
        """
        table = self._ops
        free = self._free
        n = 0
        try:
            for op in ops:
                if op.state is not _QUEUED:
                    raise RuntimeError(f"cannot submit an operation in state {op.state.name}")
                if free:
                    key = free[-1]
                    del free[-1]
                else:
                    key = self._next
                    self._next = key + 1
                op.key = key
                table[key] = op
                op.state = _SUBMITTED
                n += 1
        except BaseException:
            for op in itertools.islice(ops, n):  # any Sequence (a deque too)
                self.take_back(op)
            raise

    def enter_head(
        self,
        source: MutableSequence[Operation],
        dest: list[Operation],
        prepare: Callable[[int, Operation], object] | None = None,
    ) -> int:
        """Enter ``source[0]`` (QUEUED) as SUBMITTED under :meth:`next_key`,
        and move it from the head of *source* to the end of *dest*: the
        table and both lists change together.  ``prepare(key, operation)``,
        if given, runs first (e.g. fills the request in the engine's slot
        *key*); if it raises, nothing changed.

        The changes make no call (no loop either): a signal handler runs
        only where the interpreter checks for one (a function's entry, a
        loop's jump back, a call), so an exception it raises (Ctrl-C) comes
        before the whole move or after it, never in the middle.  The one
        call, to *prepare*, comes before any change.  The caller does none
        of the move itself.

        Returns:
            The key.

        Raises:
            Whatever *prepare* raises.
        """
        op = source[0]
        free = self._free
        key = free[-1] if free else self._next
        if prepare is not None:
            prepare(key, op)
        if free:
            del free[-1]
        else:
            self._next = key + 1
        del source[0]
        op.key = key
        self._ops[key] = op
        op.state = _SUBMITTED
        dest += (op,)
        return key

    def retire_head(
        self,
        key: int,
        result: int,
        source: MutableSequence[Any],
        ready: list[tuple[Operation, int]],
        poll_result: Callable[[Operation, int], int] | None = None,
    ) -> None:
        """Remove the operation under *key* (its key is free again), drop the
        head of *source* (what named it: an event, or the operation itself),
        and append ``(operation, result)`` to *ready*, for the engine to
        complete the operation at its next reap: the table and both lists
        change together.  What :meth:`hold` kept for it is let go.  The
        operation keeps its state.

        The changes make no call, as in :meth:`enter_head`: an exception
        from a signal handler comes before the whole move or after it.  The
        one call, ``poll_result(operation, result)`` for a POLL operation
        (the result the engine delivers instead), comes before any change.
        The caller does none of the move itself.

        Raises:
            KeyError: nothing is in flight under *key* (nothing changed).
        """
        op = self._ops[key]
        if poll_result is not None and op.opcode is _POLL:
            result = poll_result(op, result)
        held = self._held
        if key in held:
            del held[key]
        del self._ops[key]
        self._free += (key,)
        op.key = -1
        del source[0]
        ready += ((op, result),)

    def add(self, op: Operation) -> int:
        """Enter *op* (QUEUED) and return its key."""
        if op.key >= 0 and op.key in self._ops:
            raise RuntimeError("operation already in flight")
        free = self._free
        key = free.pop() if free else self._next
        if key == self._next:
            self._next += 1
        op.key = key
        self._ops[key] = op
        return key

    def hold(self, key: int, obj: Any) -> None:
        """Keep *obj* (memory the kernel reads for the operation under *key*,
        e.g. its iovec array) alive until that operation leaves the table."""
        self._held[key] = obj

    def take_back(self, op: Operation) -> None:
        """Undo :meth:`enter` for an operation whose request never reached
        the kernel: it is QUEUED again and its key is free."""
        key = op.key
        del self._ops[key]
        self._held.pop(key, None)
        self._free.append(key)
        op.key = -1
        op.state = _QUEUED

    def discard_unsubmitted(self, key: int) -> Operation:
        """Take back an operation the kernel refused (never submitted)."""
        op = self._ops.pop(key)
        self._held.pop(key, None)
        self._free.append(key)
        op.key = -1
        return op

    def get(self, key: int) -> Operation | None:
        return self._ops.get(key)

    def complete(self, key: int, result: int) -> Operation:
        """A completion was reaped for *key*: remove, release, notify."""
        op = self._ops.pop(key, None)
        if op is None:
            raise KeyError(f"completion for unknown key {key}")
        self._held.pop(key, None)
        self._free.append(key)
        op.complete(result)
        return op

    def complete_each(self, completions: list[tuple[int, int, int]], limit: int) -> None:
        """Complete, in order, the operations named by the leading entries
        ``(key, result, flags)`` of *completions*, up to the first whose key
        is *limit* or more (one of the engine's own), removing each entry
        once it is handled -- also when an ``on_done`` callback raises, or a
        signal handler does: the rest stay in *completions* for the caller to
        hand back later, and none is handled twice.

        An entry counts as handled only once its operation is completed and
        its key is free, with no call between the freeing and the count.  An
        entry handled again (an ``on_done`` raised after the operation was
        completed) finds the operation DONE under the same key and only frees
        the key.  A key not in the table (a completion some other process
        posted on a shared ring) is skipped.  :attr:`completed` counts the
        operations completed.
        """
        table = self._ops
        free = self._free
        held = self._held
        i = done = 0
        try:
            for key, result, _flags in completions:
                if key >= limit:
                    break
                op = table.get(key)
                if op is not None:
                    if op.state is not _DONE and op.key == key:  # not completed yet
                        done += 1
                        op.complete(result)
                    if held:
                        held.pop(key, None)
                    del table[key]
                    free += (key,)
                i += 1
        finally:
            del completions[:i]
            self.completed += done

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Operation]:
        return iter(list(self._ops.values()))

    def __contains__(self, key: object) -> bool:
        return key in self._ops
