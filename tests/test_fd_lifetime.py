"""Engines that run requests later, by fd number, hold the file of their writes.

The caller closes the fd while a write or sync is still queued and the
number is reused for another file: the write must land in the file it was
submitted for, never in the other one.  io_uring and a submitted Linux AIO
iocb hold the file in the kernel; the thread engine and the Linux AIO
engine's backlog hold an ``os.dup`` until the request has run.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from xaio import aligned_buffer
from xaio._ops import CancelOutcome, OpCode, Operation
from xaio.linux import LinuxAioEngine
from xaio.threads import ThreadEngine

from .support import open_fds, skip_unavailable

pytestmark = pytest.mark.timeout(60)


def references(fd: int) -> int:
    """How many other fds of this process open the file *fd* has open (an
    engine's ``os.dup``); the worker's own eventfds and the listing's
    directory fd do not count, whenever they come and go."""
    st = os.fstat(fd)
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            other = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if int(name) != fd and (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            n += 1
    return n


def _reap_all(engine: ThreadEngine | LinuxAioEngine, ops: list[Operation]) -> None:
    while not all(op.done for op in ops):
        engine.reap(timeout=5)


@pytest.mark.parametrize("code", [OpCode.WRITE, OpCode.WRITEV])
def test_thread_engine_queued_write_keeps_its_file(tmp_path: Path, code: OpCode) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"." * 8)
    b.write_bytes(b"-" * 8)
    eng = ThreadEngine(threads=1)
    r, w = os.pipe()
    try:
        blocker = Operation(OpCode.READ, r, (bytearray(1),), -1)  # holds the one worker
        eng.submit([blocker])
        fd = os.open(a, os.O_RDWR)
        op = Operation(code, fd, [b"W" * 4], 0)
        eng.submit([op])
        os.close(fd)
        fd2 = os.open(b, os.O_RDWR)  # the same number, another file
        try:
            assert fd2 == fd
            os.write(w, b"x")  # the worker runs on
            _reap_all(eng, [blocker, op])
            assert op.result == 4
        finally:
            os.close(fd2)
        assert b.read_bytes() == b"-" * 8
        assert a.read_bytes() == b"WWWW...."
    finally:
        eng.close()
        os.close(r)
        os.close(w)


def test_thread_engine_write_to_fd_not_open_is_ebadf(tmp_path: Path) -> None:
    """Not open at submit: EBADF, even if the number is open by the time it runs."""
    eng = ThreadEngine(threads=1)
    r, w = os.pipe()
    # a number far above the lowest free one, which the worker's wake-up
    # eventfd (made when it starts waiting on the pipe) may take at any time
    fd = max(r, w) + 256
    try:
        blocker = Operation(OpCode.READ, r, (bytearray(1),), -1)
        eng.submit([blocker])
        op = Operation(OpCode.WRITE, fd, (b"W",), 0)
        eng.submit([op])
        y = os.open(tmp_path / "y", os.O_RDWR | os.O_CREAT)
        fd2 = os.dup2(y, fd)  # the number is open by the time the write runs
        os.close(y)
        try:
            os.write(w, b"x")
            _reap_all(eng, [blocker, op])
        finally:
            os.close(fd2)
        assert op.result == -errno.EBADF
        assert (tmp_path / "y").read_bytes() == b""
    finally:
        eng.close()
        os.close(r)
        os.close(w)


def test_thread_engine_cancelled_write_releases_its_reference(tmp_path: Path) -> None:
    eng = ThreadEngine(threads=1)
    r, w = os.pipe()
    fd = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)
    try:
        blocker = Operation(OpCode.READ, r, (bytearray(1),), -1)
        eng.submit([blocker])
        ops = [Operation(OpCode.WRITE, fd, (b"W",), i) for i in range(6)]
        ops += [Operation(OpCode.FSYNC, fd), Operation(OpCode.FDATASYNC, fd)]
        reads = [Operation(OpCode.READ, fd, (bytearray(1),), 0) for i in range(3)]
        eng.submit(ops + reads)
        assert references(fd) == 8  # one reference each write and sync
        for op in ops[:4]:
            assert eng.cancel(op) is CancelOutcome.CANCELED  # the worker waits on the pipe
        assert references(fd) == 4
        os.write(w, b"x")
        _reap_all(eng, [blocker, *ops, *reads])
        assert [op.result for op in ops[4:]] == [1, 1, 0, 0]
        assert references(fd) == 0
    finally:
        eng.close()
        os.close(r)
        os.close(w)
    os.close(fd)


def test_linux_backlog_write_keeps_its_file(tmp_path: Path) -> None:
    skip_unavailable("linux")
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"." * 16384)
    b.write_bytes(b"-" * 16384)
    try:
        fd = os.open(a, os.O_RDWR | os.O_DIRECT)
    except OSError as e:
        pytest.skip(f"O_DIRECT not supported here: {e}")
    eng = LinuxAioEngine(capacity=1)
    before = open_fds()
    try:
        bufs = [aligned_buffer(4096) for _ in range(4)]
        for i, buf in enumerate(bufs):
            buf[:] = bytes([65 + i]) * 4096
        ops = [Operation(OpCode.WRITE, fd, (buf,), i * 4096) for i, buf in enumerate(bufs)]
        eng.submit(ops)  # one in the kernel, three in the backlog
        assert eng.statistics()["backlog"] == 3
        os.close(fd)
        fd2 = os.open(b, os.O_RDWR | os.O_DIRECT)
        try:
            assert fd2 == fd
            _reap_all(eng, ops)
        finally:
            os.close(fd2)
        assert [op.result for op in ops] == [4096] * 4
    finally:
        eng.close()
    assert b.read_bytes() == b"-" * 16384
    assert a.read_bytes() == b"A" * 4096 + b"B" * 4096 + b"C" * 4096 + b"D" * 4096
    assert open_fds() <= before
