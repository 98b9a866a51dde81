"""The sans-I/O core (xaio._ops, xaio._buffers) driven by fake completions.

Includes the orderings that are hard to produce for real: the cancel's own
completion before the target's, a completion racing a cancel request.
"""

from __future__ import annotations

import collections
import ctypes
import dis
import errno
import gc
import mmap
import tempfile

import pytest

from xaio._buffers import buffer_length, pin, pin_many
from xaio._ops import InFlight, OpCode, Operation, OpState, decode_result


def test_lifecycle_submit_complete_releases_buffers() -> None:
    buf = bytearray(8)
    seen: list[Operation] = []
    op = Operation(OpCode.READ, 3, [buf], 0, on_done=seen.append)
    assert op.state is OpState.QUEUED and op.nbytes == 8
    with pytest.raises(BufferError):
        buf.append(1)  # pinned from construction
    table = InFlight()
    key = table.add(op)
    op.mark_submitted()
    assert key in table and table.get(key) is op
    table.complete(key, 8)
    assert op.state is OpState.DONE and op.result == 8 and op.value() == 8
    assert seen == [op] and key not in table and len(table) == 0
    buf.append(1)  # released


def test_cancel_cqe_before_target_cqe_keeps_buffer_until_target() -> None:
    """io_uring posts two completions for a cancelled request; whichever comes
    first, only the target's releases the buffer."""
    buf = bytearray(4)
    table = InFlight()
    op = Operation(OpCode.READ, 3, [buf], 0)
    key = table.add(op)
    op.mark_submitted()
    assert op.request_cancel() is True
    assert op.state is OpState.CANCEL_REQUESTED
    assert op.request_cancel() is False  # asking twice sends nothing more
    # the cancel's own completion (0 = found) arrives first: nothing changes
    assert table.get(key) is op
    with pytest.raises(BufferError):
        buf.append(0)
    table.complete(key, -errno.ECANCELED)
    with pytest.raises(OSError) as info:
        op.value()
    assert info.value.errno == errno.ECANCELED
    buf.append(0)


def test_completion_racing_cancel() -> None:
    """The target completes normally just before the cancel is requested."""
    table = InFlight()
    op = Operation(OpCode.READ, 3, [bytearray(4)], 0)
    key = table.add(op)
    op.mark_submitted()
    table.complete(key, 4)
    assert op.request_cancel() is False  # already done: nothing to ask the kernel
    assert op.result == 4


def test_completing_twice_is_a_bug() -> None:
    table = InFlight()
    op = Operation(OpCode.NOP, -1)
    key = table.add(op)
    table.complete(key, 0)
    with pytest.raises(KeyError):
        table.complete(key, 0)
    with pytest.raises(RuntimeError):
        op.complete(0)


def test_keys_are_small_and_reused() -> None:
    table = InFlight()
    ops = [Operation(OpCode.NOP, -1) for _ in range(10)]
    keys = [table.add(o) for o in ops]
    assert sorted(keys) == list(range(10))
    table.complete(keys[3], 0)
    again = Operation(OpCode.NOP, -1)
    assert table.add(again) == keys[3]
    with pytest.raises(RuntimeError):
        table.add(again)


def test_discard_unsubmitted_frees_the_key() -> None:
    table = InFlight()
    a, b = Operation(OpCode.NOP, -1), Operation(OpCode.NOP, -1)
    ka, kb = table.add(a), table.add(b)
    assert table.discard_unsubmitted(ka) is a and a.key == -1 and len(table) == 1
    assert table.complete(kb, -errno.ECANCELED) is b and b.result == -errno.ECANCELED
    assert len(table) == 0


def test_enter_all_is_all_or_nothing_and_take_back() -> None:
    table = InFlight()
    a, b = Operation(OpCode.NOP, -1), Operation(OpCode.NOP, -1)
    first = table.next_key()
    table.enter_all([a, b])
    assert a.key == first and table.get(first) is a and b.state is OpState.SUBMITTED
    table.hold(b.key, "iovecs")
    table.take_back(b)
    assert b.key == -1 and b.state is OpState.QUEUED and len(table) == 1
    c = Operation(OpCode.NOP, -1)
    with pytest.raises(RuntimeError):
        table.enter_all([c, c])  # listed twice: none is entered
    with pytest.raises(RuntimeError):
        table.enter_all([c, a])  # a is in flight already
    assert c.state is OpState.QUEUED and c.key == -1 and len(table) == 1


def test_complete_each_stops_at_the_limit_and_survives_on_done() -> None:
    table = InFlight()
    seen: list[int] = []

    def on_done(op: Operation) -> None:
        seen.append(op.key)
        if op.context == "raise":
            raise ZeroDivisionError

    ops = [Operation(OpCode.NOP, -1, on_done=on_done, context=c) for c in ("", "raise", "")]
    keys = [table.add(o) for o in ops]
    for o in ops:
        o.mark_submitted()
    cqes = [(keys[0], 0, 0), (keys[1], 0, 0), (keys[2], 0, 0), (1 << 63, 0, 0)]
    with pytest.raises(ZeroDivisionError):
        table.complete_each(cqes, 1 << 63)
    # the raising one stays, DONE: handled again it only frees its key
    assert cqes[0] == (keys[1], 0, 0) and ops[1].done and table.get(keys[1]) is ops[1]
    table.complete_each(cqes, 1 << 63)
    assert cqes == [(1 << 63, 0, 0)] and len(table) == 0
    assert seen == keys and table.completed == 3
    table.complete_each([(99, 0, 0)], 1 << 63)  # not in the table: skipped
    assert table.completed == 3


def test_enter_head_and_retire_head_move_whole() -> None:
    table = InFlight()
    a, b = Operation(OpCode.READ, 3, [bytearray(4)], 0), Operation(OpCode.POLL, 3, flags=1)
    backlog, unsent = collections.deque([a, b]), []
    filled: list[tuple[int, Operation]] = []

    def refuse(key: int, op: Operation) -> None:
        filled.append((key, op))
        raise ValueError

    first = table.next_key()
    with pytest.raises(ValueError):
        table.enter_head(backlog, unsent, refuse)  # nothing moves
    assert filled == [(first, a)] and list(backlog) == [a, b] and not unsent
    assert len(table) == 0 and a.key == -1 and table.next_key() == first
    assert table.enter_head(backlog, unsent, lambda k, o: filled.append((k, o))) == first
    assert filled[-1] == (first, a) and list(backlog) == [b] and unsent == [a]
    assert table.get(first) is a and a.key == first and a.state is OpState.SUBMITTED
    kb = table.enter_head(backlog, unsent)
    table.hold(kb, "iovecs")

    ready: list[tuple[Operation, int]] = []
    events = [("event of a",), ("event of b",)]
    with pytest.raises(KeyError):
        table.retire_head(99, 0, events, ready)  # nothing moves
    assert len(events) == 2 and not ready and len(table) == 2
    table.retire_head(first, 4, events, ready, lambda op, res: 0)  # not a poll
    assert events == [("event of b",)] and ready == [(a, 4)] and a.key == -1
    assert first not in table and a.state is OpState.SUBMITTED
    table.retire_head(kb, 0x19, events, ready, lambda op, res: res & op.flags)
    assert not events and ready[1] == (b, 1) and len(table) == 0
    assert table.next_key() in (first, kb)  # keys are free again


@pytest.mark.parametrize("name", ["enter_head", "retire_head"])
def test_moves_make_no_call_between_their_changes(name: str) -> None:
    """The Ctrl-C rule of the moves: a signal handler runs only at a call (or
    a function's entry, or a loop's jump back), so no call, and no loop, may
    come after the first change of the table or a list."""
    changes = ("STORE_SUBSCR", "DELETE_SUBSCR", "STORE_ATTR")
    seen_change = False
    for ins in dis.get_instructions(getattr(InFlight, name)):
        if ins.opname in changes or ins.argrepr == "+=":  # list += in place
            seen_change = True
        if seen_change:
            assert "CALL" not in ins.opname and "BACKWARD" not in ins.opname, ins
    assert seen_change


def test_submit_twice_refused() -> None:
    op = Operation(OpCode.NOP, -1)
    op.mark_submitted()
    with pytest.raises(RuntimeError):
        op.mark_submitted()


def test_value_before_done() -> None:
    with pytest.raises(RuntimeError):
        Operation(OpCode.NOP, -1).value()


def test_decode_result() -> None:
    assert decode_result(5) == 5
    with pytest.raises(FileNotFoundError):
        decode_result(-errno.ENOENT)


def test_read_needs_writable_buffers() -> None:
    with pytest.raises(TypeError):
        Operation(OpCode.READ, 3, [b"ro"], 0)
    keep = bytearray(2)
    with pytest.raises(TypeError):
        Operation(OpCode.READV, 3, [keep, b"ro"], 0)
    keep.append(0)  # the first pin was released when the second failed
    Operation(OpCode.WRITE, 3, [b"ro is fine"], 0).complete(0)


def test_pins() -> None:
    p = pin(memoryview(b"hello world")[6:], writable=False)
    assert p.nbytes == 5 and p.readonly
    p.release()
    p.release()
    with pytest.raises(TypeError):
        pin(42, writable=False)
    with pytest.raises(ValueError):
        pin(memoryview(bytearray(10))[::2], writable=True)
    pins = pin_many([bytearray(1), bytearray(2)], writable=True)
    assert [x.nbytes for x in pins] == [1, 2]
    assert buffer_length(bytearray(7)) == 7
    with pytest.raises(TypeError):
        buffer_length("str")
    # a dropped Pin releases its export
    b = bytearray(3)
    pin(b, writable=True)
    gc.collect()
    b.append(1)


def test_read_only_pin_holds_and_gives_back_its_export() -> None:
    """A read-only export (PyObject_GetBuffer) keeps a read-only mmap from
    closing while the Pin lives, and is given back by release() and by
    dropping the Pin; a writable export blocks a bytearray's resize alike."""
    with tempfile.TemporaryFile() as f:
        f.write(b"abcdef")
        f.flush()
        m = mmap.mmap(f.fileno(), 6, access=mmap.ACCESS_READ)
        p = pin(m, writable=False)
        assert p.readonly and p.nbytes == 6
        assert ctypes.string_at(p.address, 6) == b"abcdef"
        with pytest.raises(BufferError):
            m.close()
        p.release()
        p.release()
        m.close()  # released
        m = mmap.mmap(f.fileno(), 6, access=mmap.ACCESS_READ)
        p = pin(m, writable=False)
        with pytest.raises(BufferError):
            m.close()
        del p  # no reference cycle: the export goes with the Pin
        m.close()
    b = bytearray(3)
    w = pin(b, writable=True)
    with pytest.raises(BufferError):
        b.append(0)
    del w
    b.append(0)


def test_reusable_operation_keeps_pins_and_rearms() -> None:
    buf = bytearray(8)
    seen: list[Operation] = []
    op = Operation(OpCode.READ, 3, [buf], 0, reusable=True, on_done=seen.append)
    with pytest.raises(RuntimeError):
        op.rearm()  # not done yet
    table = InFlight()
    table.complete(table.add(op), 8)
    with pytest.raises(BufferError):
        buf.append(0)  # still pinned: reusable
    address = op.pins[0].address
    op.rearm(OpCode.WRITE, 4096, seen.append)
    assert (op.state, op.opcode, op.offset, op.result) == (OpState.QUEUED, OpCode.WRITE, 4096, None)
    assert op.pins[0].address == address
    with pytest.raises(RuntimeError):
        op.release()  # queued again
    table.complete(table.add(op), 8)
    assert seen == [op, op]
    op.release()
    op.release()
    buf.append(0)


def test_rearm_plain_operation_repins_and_checks_writability() -> None:
    op = Operation(OpCode.WRITE, 3, [b"readonly"], 0)
    op.complete(8)
    with pytest.raises(TypeError):
        op.rearm(OpCode.READ)
    op.rearm(OpCode.WRITE, 8)
    assert op.state is OpState.QUEUED and op.pins[0].nbytes == 8
    ro = Operation(OpCode.WRITE, 3, [b"ro"], 0, reusable=True)
    ro.complete(2)
    with pytest.raises(TypeError):
        ro.rearm(OpCode.READ)
