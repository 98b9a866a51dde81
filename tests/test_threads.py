"""The thread engine (xaio.threads.ThreadEngine) against the Engine protocol:
reap in the caller's thread, eventfd readiness, honest cancel, per-fd
ordering, lazy and idle-exiting workers, close."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import select
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import xaio
from xaio._ops import CancelOutcome, OpCode, Operation, OpState
from xaio.engine import EngineClosedError
from xaio.threads import ThreadEngine

from .support import pattern, reap_until, threads_started_since, wait_until

TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert not threads_started_since(before)


@pytest.fixture
def eng() -> Iterator[ThreadEngine]:
    e = ThreadEngine(threads=4, idle_time=1.0)
    yield e
    e.close()


def test_constructing_starts_no_thread() -> None:
    before = set(threading.enumerate())
    e = ThreadEngine()
    assert not threads_started_since(before)
    assert e.name == "thread" and not e.closed
    e.close()
    assert e.closed


def test_reap_in_callers_thread_and_eventfd(eng: ThreadEngine, tfile: int) -> None:
    where: list[threading.Thread] = []
    buf = bytearray(16)
    op = Operation(
        OpCode.READ, tfile, [buf], 32, on_done=lambda o: where.append(threading.current_thread())
    )
    assert eng.submit([op]) == 1
    r, _, _ = select.select([eng.fileno()], [], [], TIMEOUT)
    assert r == [eng.fileno()]  # readable while a completion waits
    assert not op.done  # nothing is delivered before reap
    assert eng.reap(0) == 1
    assert op.done and op.result == 16 and op.value() == 16
    assert bytes(buf) == bytes(range(32, 48))
    assert where == [threading.current_thread()]
    r, _, _ = select.select([eng.fileno()], [], [], 0)
    assert r == []  # reap cleared it
    assert eng.reap(0) == 0
    assert eng.reap(0.01) == 0  # times out


def test_all_opcodes(eng: ThreadEngine, tfile: int, tmp_path: Path) -> None:
    a, b = bytearray(3), bytearray(5)
    ops = [
        Operation(OpCode.WRITE, tfile, [b"hello"], 1000),
        Operation(OpCode.WRITEV, tfile, [b"ab", b"cd"], 2000),
        Operation(OpCode.FSYNC, tfile),
        Operation(OpCode.FDATASYNC, tfile),
        Operation(OpCode.NOP, tfile),
        Operation(OpCode.POLL, tfile, flags=select.POLLIN),
    ]
    eng.submit(ops)
    reap_until(eng, ops)
    assert [op.result for op in ops] == [5, 4, 0, 0, 0, select.POLLIN]
    rv = Operation(OpCode.READV, tfile, [a, b], 2000)
    eng.submit([rv])
    reap_until(eng, [rv])
    assert rv.result == 8 and bytes(a) == b"abc" and bytes(b)[:1] == b"d"


def test_errors_become_negative_errno(eng: ThreadEngine, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT)
    try:
        ops = [
            Operation(OpCode.READ, 987654, [bytearray(1)], 0),
            Operation(OpCode.WRITE, fd, [b"x"], 0),
            Operation(OpCode.READ, fd, [bytearray(1)], 2**62),
        ]
        eng.submit(ops)
        reap_until(eng, ops)
        assert [op.result for op in ops] == [-errno.EBADF, -errno.EBADF, 0]
        with pytest.raises(OSError) as ei:
            ops[0].value()
        assert ei.value.errno == errno.EBADF
    finally:
        os.close(fd)


def test_stream_read_with_offset_falls_back_to_read(eng: ThreadEngine) -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"abc")
        op = Operation(OpCode.READ, r, [bytearray(3)], 12345)  # offset ignored on a pipe
        eng.submit([op])
        reap_until(eng, [op])
        assert op.result == 3
    finally:
        os.close(r)
        os.close(w)


def test_cancel_outcomes(eng: ThreadEngine, dgram: tuple[socket.socket, socket.socket]) -> None:
    a, b = dgram
    ops = [Operation(OpCode.WRITE, a.fileno(), [bytes([65 + i]) * 512]) for i in range(3)]
    eng.submit(ops)
    wait_until(lambda: eng.statistics()["running"] == 1)
    assert ops[0].state is OpState.SUBMITTED
    assert eng.cancel(ops[0]) is CancelOutcome.RUNNING
    assert eng.cancel(ops[1]) is CancelOutcome.CANCELED
    assert eng.cancel(ops[1]) is CancelOutcome.CANCELED  # not yet reaped
    assert not ops[1].done
    assert eng.reap(0) == 1
    assert ops[1].result == -errno.ECANCELED
    assert eng.cancel(ops[1]) is CancelOutcome.DONE
    assert eng.cancel(Operation(OpCode.NOP, 0)) is CancelOutcome.DONE  # unknown
    b.settimeout(0.01)
    deadline = time.monotonic() + TIMEOUT
    while not (ops[0].done and ops[2].done):
        assert time.monotonic() < deadline
        with contextlib.suppress(TimeoutError):
            b.recv(4096)
        eng.reap(0)
    assert ops[0].result == ops[2].result == 512
    st = eng.statistics()
    assert st["cancelled"] == 1 and st["completed"] == 3 and st["submitted"] == 3


def test_fsync_is_a_barrier(eng: ThreadEngine, dgram: tuple[socket.socket, socket.socket]) -> None:
    a, b = dgram
    w = Operation(OpCode.WRITE, a.fileno(), [b"w" * 512])
    f = Operation(OpCode.FSYNC, a.fileno())
    eng.submit([w, f])
    wait_until(lambda: eng.statistics()["running"] == 1)
    assert eng.reap(0.05) == 0
    assert not f.done
    b.settimeout(0.01)
    deadline = time.monotonic() + TIMEOUT
    while not f.done:
        assert time.monotonic() < deadline
        with contextlib.suppress(TimeoutError):
            b.recv(4096)
        eng.reap(0)
    assert w.result == 512 and f.result == -errno.EINVAL


def test_append_fd_is_serialised(eng: ThreadEngine, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        recs = [f"{i:05d}\n".encode() for i in range(300)]
        ops = [Operation(OpCode.WRITE, fd, [r], 0) for r in recs]
        eng.submit(ops)
        reap_until(eng, ops)
    finally:
        os.close(fd)
    assert (tmp_path / "log").read_bytes() == b"".join(recs)


def test_file_position_writes_run_in_submission_order(tmp_path: Path) -> None:
    # offset -1: each write moves the file position the next one uses, so
    # they run one at a time even on a regular file with many workers
    e = ThreadEngine(threads=8)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        recs = [f"{i:05d}\n".encode() for i in range(300)]
        ops = [Operation(OpCode.WRITE, fd, [r], -1) for r in recs]
        e.submit(ops)
        reap_until(e, ops)
    finally:
        os.close(fd)
        e.close()
    assert (tmp_path / "f").read_bytes() == b"".join(recs)


def test_idle_workers_exit_and_max_threads(tfile: int) -> None:
    before = set(threading.enumerate())
    e = ThreadEngine(threads=2, idle_time=0.02)
    try:
        ops = [Operation(OpCode.READ, tfile, [bytearray(8)], i) for i in range(100)]
        e.submit(ops)
        assert len(threads_started_since(before)) <= 2
        reap_until(e, ops)
        assert e.statistics()["spawned"] <= 100
        wait_until(lambda: e.statistics()["threads"] == 0, timeout=5)
        wait_until(lambda: not threads_started_since(before), timeout=5)
        more = [Operation(OpCode.READ, tfile, [bytearray(8)], 0)]
        e.submit(more)  # a new worker is started for new work
        reap_until(e, more)
    finally:
        e.close()


def test_close_cancels_queued_and_refuses_more(
    dgram: tuple[socket.socket, socket.socket],
) -> None:
    a, b = dgram
    e = ThreadEngine(threads=1)
    ops = [Operation(OpCode.WRITE, a.fileno(), [b"x" * 512]) for _ in range(3)]
    e.submit(ops)
    wait_until(lambda: e.statistics()["running"] == 1)
    closer = threading.Thread(target=e.close)
    closer.start()
    wait_until(lambda: e.closed)
    with pytest.raises(EngineClosedError):
        e.submit([Operation(OpCode.NOP, 0)])
    b.settimeout(0.01)
    deadline = time.monotonic() + TIMEOUT
    while closer.is_alive():  # close waits for the running write
        assert time.monotonic() < deadline
        with contextlib.suppress(TimeoutError):
            b.recv(4096)
        closer.join(0.01)
    assert [op.result for op in ops] == [512, -errno.ECANCELED, -errno.ECANCELED]
    with pytest.raises(ValueError):
        e.fileno()
    e.close()  # idempotent


def test_complete_in_worker(tfile: int) -> None:
    e = ThreadEngine(threads=2, complete_in_worker=True)
    try:
        done = threading.Event()
        where: list[threading.Thread] = []

        def on_done(op: Operation) -> None:
            where.append(threading.current_thread())
            done.set()

        op = Operation(OpCode.READ, tfile, [bytearray(4)], 0, on_done=on_done)
        e.submit([op])
        assert done.wait(TIMEOUT)
        assert op.result == 4
        assert where[0] is not threading.current_thread()
        assert e.reap(0) == 0
    finally:
        e.close()


def test_configure_and_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ThreadEngine(threads=0)
    with pytest.raises(ValueError):
        ThreadEngine(idle_time=-1)
    with pytest.raises(TypeError):
        ThreadEngine(threads=1.5)  # type: ignore[arg-type]
    e = ThreadEngine()
    e.configure(threads=3, idle_time=0.5, num=10)
    st = e.statistics()
    assert (st["max_threads"], st["idle_time"], st["num"]) == (3, 0.5, 10)
    e.close()


def test_unclosed_engine_warns() -> None:
    e = ThreadEngine()
    fd = e.fileno()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        del e
        gc.collect()
    assert any(issubclass(x.category, ResourceWarning) for x in w)
    with pytest.raises(OSError):
        os.fstat(fd)  # the eventfd was closed (the number may be reused later)


def test_many_threads_submit_and_cancel(tfile: int) -> None:
    e = ThreadEngine(threads=8)
    ends: list[int] = []
    lock = threading.Lock()
    all_ops: list[Operation] = []

    def on_done(op: Operation) -> None:
        with lock:
            ends.append(id(op))

    def worker() -> None:
        for i in range(100):
            op = Operation(OpCode.READ, tfile, [bytearray(16)], i, on_done=on_done)
            with lock:
                all_ops.append(op)
            e.submit([op])
            if i % 3 == 0:
                e.cancel(op)

    reaper_stop = threading.Event()

    def reaper() -> None:
        while not reaper_stop.is_set():
            e.reap(0.01)

    rt = threading.Thread(target=reaper)
    rt.start()
    ts = [threading.Thread(target=worker) for _ in range(10)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(TIMEOUT)
    wait_until(lambda: len(ends) == 1000)
    reaper_stop.set()
    rt.join(TIMEOUT)
    e.close()
    assert len(set(ends)) == 1000
    assert all(op.result in (16, -errno.ECANCELED) for op in all_ops)


def test_read_nowait(eng: ThreadEngine, tfile: int, tmp_path: Path) -> None:
    os.pread(tfile, 4096, 0)  # cached
    buf = bytearray(8)
    assert eng.read_nowait(tfile, buf, 16, 8) == 8
    assert bytes(buf) == bytes(range(16, 24))
    assert eng.read_nowait(tfile, buf, 10**9, 8) is None  # EOF: short, left to a worker
    assert eng.read_nowait(987654, buf, 0, 8) is None  # errors too
    r, w = os.pipe()
    afd = os.open(tmp_path / "t.bin", os.O_RDWR | os.O_APPEND)
    try:
        os.write(w, b"x" * 8)
        assert eng.read_nowait(r, buf, 0, 8) is None  # a stream
        assert eng.read_nowait(afd, buf, 0, 8) is None  # O_APPEND
    finally:
        for fd in (r, w, afd):
            os.close(fd)
    assert eng.statistics()["inline"] == 1
    assert threading.active_count() >= 1  # and no worker was needed
    assert eng.statistics()["spawned"] == 0


def test_a_field_spoiled_after_submit_fails_the_operation_not_the_worker(
    data_fd: int,
) -> None:
    """submit vets the fields (check_batch), but they are plain attributes: one
    changed to garbage before a worker runs the operation completes it with
    -EINVAL; the worker lives on and runs the next one."""
    with ThreadEngine(1) as eng:
        r, w = os.pipe()
        try:
            blocker = Operation(OpCode.READ, r, [bytearray(1)], -1)  # holds the one worker
            # a READV: never served from the page cache in submit, so it waits
            spoiled = Operation(OpCode.READV, data_fd, [bytearray(4)], 0)
            eng.submit([blocker, spoiled])
            spoiled.offset = "later"  # type: ignore[assignment]
            os.write(w, b"!")
            after = Operation(OpCode.READ, data_fd, [bytearray(4)], 0)
            eng.submit([after])
            reap_until(eng, [blocker, spoiled, after])
        finally:
            os.close(r)
            os.close(w)
    assert blocker.result == 1
    assert spoiled.result == -errno.EINVAL
    assert after.result == 4


def test_cached_reads_are_done_in_submit_and_delivered_by_reap(
    data_fd: int, direct_fd: int
) -> None:
    """Through the Engine protocol, a positional READ the page cache holds
    whole is done in submit (no worker), and its on_done still runs in the
    next reap; O_DIRECT, past-the-end, file-position and READV reads, and
    streams, go to the workers as before."""
    expected = pattern(1 << 20)
    os.pread(data_fd, 1 << 20, 0)  # into the page cache
    seen: list[Operation] = []
    r, w = os.pipe()
    try:
        with ThreadEngine(4) as eng:
            cached = [
                Operation(OpCode.READ, data_fd, [bytearray(512)], 512 * i, on_done=seen.append)
                for i in range(8)
            ]
            eng.submit(cached)
            st = eng.statistics()
            assert st["spawned"] == 0 and st["inline"] == 8
            assert seen == [] and all(op.state is OpState.SUBMITTED for op in cached)
            assert eng.cancel(cached[0]) is CancelOutcome.DONE  # done, not yet reaped
            assert select.select([eng.fileno()], [], [], 0)[0]
            assert eng.reap(0) == 8 and seen == cached
            assert [bytes(op.buffers[0]) for op in cached] == [
                expected[512 * i : 512 * i + 512] for i in range(8)
            ]
            behind = [  # after a sync or a file-position request: may be held
                Operation(OpCode.FSYNC, data_fd),
                Operation(OpCode.READ, data_fd, [bytearray(8)], 0),
                Operation(OpCode.READ, data_fd, [bytearray(8)], -1),
                Operation(OpCode.READ, data_fd, [bytearray(8)], 16),
            ]
            eng.submit(behind)
            assert eng.statistics()["inline"] == 8
            reap_until(eng, behind)
            assert [op.result for op in behind] == [0, 8, 8, 8]
            os.write(w, b"ab")
            others = [
                Operation(OpCode.READ, direct_fd, [xaio.aligned_buffer(4096)], 4096),
                Operation(OpCode.READ, data_fd, [bytearray(100)], (1 << 20) - 10),  # short
                Operation(OpCode.READV, data_fd, [bytearray(4)], 8),
                Operation(OpCode.READ, r, [bytearray(2)], 0),  # a stream
            ]
            eng.submit(others)
            assert eng.statistics()["inline"] == 8
            reap_until(eng, others)
            assert [op.result for op in others] == [4096, 10, 4, 2]
            assert eng.statistics()["spawned"] >= 1
    finally:
        os.close(r)
        os.close(w)


def test_complete_in_worker_mode_reads_nothing_in_submit(data_fd: int) -> None:
    """With complete_in_worker (POSIX AIO's mode) on_done runs in a worker:
    submit never completes a read itself (POSIX has its own fast path)."""
    os.pread(data_fd, 4096, 0)
    done = threading.Event()
    threads: list[str] = []

    def on_done(op: Operation) -> None:
        threads.append(threading.current_thread().name)
        done.set()

    with ThreadEngine(2, complete_in_worker=True) as eng:
        eng.submit([Operation(OpCode.READ, data_fd, [bytearray(16)], 0, on_done=on_done)])
        assert done.wait(10)
        assert eng.statistics()["inline"] == 0
    assert threads == ["xaio-thread-worker"]


def test_reads_above_inline_max_go_to_workers(tmp_path: Path) -> None:
    """A cached read bigger than INLINE_MAX is left to a worker (the copy
    outweighs the hand-off); one of exactly INLINE_MAX bytes is done in submit."""
    from xaio._pagecache import INLINE_MAX

    path = tmp_path / "big.bin"
    data = os.urandom(INLINE_MAX + 4096)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, len(data), 0)  # cached
        with ThreadEngine(2) as eng:
            small = Operation(OpCode.READ, fd, [bytearray(INLINE_MAX)], 0)
            big = Operation(OpCode.READ, fd, [bytearray(INLINE_MAX + 1)], 0)
            eng.submit([small, big])
            assert eng.statistics()["inline"] == 1
            reap_until(eng, [small, big])
            assert (small.result, big.result) == (INLINE_MAX, INLINE_MAX + 1)
            assert bytes(big.buffers[0]) == data[: INLINE_MAX + 1]
    finally:
        os.close(fd)


@contextlib.contextmanager
def frequent_thread_switches() -> Iterator[None]:
    """Make the interpreter hand the GIL over every 10 us (5 ms by default),
    so that a race between two threads' Python code shows up in a few
    hundred trials instead of a few per hour."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_stream_fd_stays_serial_when_its_lane_ends_during_submit() -> None:
    # Each write completes in a worker that then runs on_done (the POSIX AIO
    # mode): the fd's lane ends and is made anew by the next submit, at any
    # moment of it.  A lane made anew must still be serial.
    def busy(op: Operation) -> None:
        end = time.perf_counter() + 2e-5
        while time.perf_counter() < end:
            pass

    e = ThreadEngine(threads=4, complete_in_worker=True)
    reordered = 0
    try:
        with frequent_thread_switches():
            for _ in range(300):
                r, w = os.pipe()
                chunks = [bytes([i]) * 1000 for i in range(100)]  # 100 kB > pipe buffer
                out = bytearray()

                def read_all(r: int = r, out: bytearray = out) -> None:
                    while len(out) < 100_000:
                        out.extend(os.read(r, 65536))

                reader = threading.Thread(target=read_all)
                reader.start()
                ops = [Operation(OpCode.WRITE, w, [c], 0, on_done=busy) for c in chunks]
                for op in ops:
                    e.submit([op])
                reader.join(TIMEOUT)
                wait_until(lambda ops=ops: all(op.done for op in ops))
                os.close(r)
                os.close(w)
                assert not reader.is_alive()
                reordered += bytes(out) != b"".join(chunks)
    finally:
        e.close()
    assert reordered == 0
