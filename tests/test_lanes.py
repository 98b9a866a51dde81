"""The per-fd ordering rule (xaio._lanes), without I/O: which request may
start, which waits, what a completion releases.  Its two users (the thread
engine, POSIX AIO on io_uring) are tested with real fds in test_threads.py,
tests/posix/test_posix.py and tests/posix/test_posix_uring.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from xaio._lanes import PARALLEL, SERIAL, STREAM, Lane, fd_order, waits_for_all
from xaio._ops import OpCode, Operation


def rd(offset: int) -> Operation:
    return Operation(OpCode.READ, 7, [bytearray(1)], offset)


def sync() -> Operation:
    return Operation(OpCode.FSYNC, 7)


def submit(lane: Lane[Operation], op: Operation) -> bool:
    """What an owner does with a new request: True if it starts now."""
    if lane.admit(op):
        return True
    lane.held.append(op)
    return False


def complete(lane: Lane[Operation]) -> list[Operation]:
    """What an owner does when a running request completes."""
    lane.active -= 1
    return lane.release(lambda op: op)


def test_positional_requests_run_in_parallel() -> None:
    lane: Lane[Operation] = Lane(PARALLEL)
    assert all(submit(lane, rd(i * 4096)) for i in range(8))
    assert lane.active == 8 and not lane.held and lane.passable


def test_serial_and_stream_lanes_run_one_at_a_time_in_order() -> None:
    for order in (SERIAL, STREAM):
        lane: Lane[Operation] = Lane(order)
        ops = [rd(0) for _ in range(3)]
        assert [submit(lane, op) for op in ops] == [True, False, False]
        assert not lane.passable
        assert complete(lane) == [ops[1]]
        assert complete(lane) == [ops[2]]
        assert complete(lane) == [] and lane.idle
    assert Lane(STREAM).stream and not Lane(SERIAL).stream


def test_fsync_waits_for_what_came_before_and_lets_later_ones_run() -> None:
    lane: Lane[Operation] = Lane(PARALLEL)
    a, b, f, c = rd(0), rd(4096), sync(), rd(8192)
    assert [submit(lane, op) for op in (a, b, f, c)] == [True, True, False, False]
    assert not lane.passable  # c must not overtake the held fsync
    assert complete(lane) == []  # b still runs
    assert complete(lane) == [f, c]  # the fsync, and the read after it beside it
    assert lane.active == 2


def test_file_position_requests_wait_for_everything() -> None:
    # offset < 0: the request moves the file position the next one uses
    lane: Lane[Operation] = Lane(PARALLEL)
    a, p1, p2 = rd(0), rd(-1), rd(-1)
    assert waits_for_all(p1) and waits_for_all(sync()) and not waits_for_all(a)
    assert [submit(lane, op) for op in (a, p1, p2)] == [True, False, False]
    assert complete(lane) == [p1]
    assert complete(lane) == [p2]
    assert complete(lane) == [] and lane.idle


def test_fd_order(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    ap = os.open(tmp_path / "f", os.O_WRONLY | os.O_APPEND)
    r, w = os.pipe()
    a, b = socket.socketpair()
    try:
        assert fd_order(fd) == PARALLEL
        assert fd_order(ap) == SERIAL
        assert fd_order(r) == fd_order(w) == fd_order(a.fileno()) == STREAM
        os.close(r)
        assert fd_order(r) == PARALLEL  # not open: its requests fail with EBADF
        assert fd_order(-1) == fd_order(2**40) == PARALLEL
    finally:
        for x in (fd, ap, w):
            os.close(x)
        a.close()
        b.close()
