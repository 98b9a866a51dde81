"""xaio.uring.UringBatch (the io_uring lean path) and the UringEngine's
handling of submissions made by on_done callbacks during a reap."""

from __future__ import annotations

import errno
import gc
import os
import threading
import time
import warnings
from collections.abc import Iterator

import pytest

import xaio
from tests.support import pattern, resizable, sq_thread_sleeps, wait_until
from xaio import uring
from xaio._ops import CancelOutcome, OpCode, Operation, OpState
from xaio.uring import SlotInFlightError, UringBatch, UringEngine
from xaio.uring._engine import _DEFER_FLUSH

T = 5.0
EXPECTED = pattern(1 << 20)


def reap_all(batch: UringBatch, n: int) -> dict[int, int]:
    """Reap until *n* slots came back (bounded); slot -> result."""
    got: dict[int, int] = {}
    while len(got) < n:
        k = batch.reap(1, timeout=T)
        assert k >= 1, "timed out"
        for i in range(k):
            assert batch.done_slots[i] not in got
            got[batch.done_slots[i]] = batch.done_res[i]
    return got


def assert_settled(bufs: list[memoryview]) -> None:
    """After a close: each 64 KiB read either completed (the file's data) or
    was cancelled before it started (io_uring cancels what waits in its
    io-wq: untouched), and nothing writes into the buffers any more."""
    snap = [bytes(b) for b in bufs]
    for i, data in enumerate(snap):
        assert data in (EXPECTED[i << 16 : (i + 1) << 16], bytes(1 << 16)), i
    time.sleep(0.05)
    assert [bytes(b) for b in bufs] == snap


@pytest.fixture(params=[True, False], ids=["fixed", "plain"])
def batch(request: pytest.FixtureRequest) -> Iterator[UringBatch]:
    b = UringBatch(16, fixed_buffers=request.param)
    yield b
    b.close()


def test_roundtrip_reuse_subsets_and_chunks(batch: UringBatch, direct_fd: int) -> None:
    bufs = [xaio.aligned_buffer(4096) for _ in range(8)]
    for i in range(8):
        batch.prep_pread(i, direct_fd, bufs[i], i * 4096)
        assert batch.is_registered(i) == batch.fixed_buffers
    assert batch.submit(list(range(8))) == 8
    assert batch.in_flight == 8 and batch.is_busy(3)
    assert reap_all(batch, 8) == dict.fromkeys(range(8), 4096)
    assert batch.in_flight == 0
    for i in range(8):
        assert bytes(bufs[i]) == EXPECTED[i * 4096 : (i + 1) * 4096]
    for i in range(8):
        batch.set_offset(i, (200 + i) * 4096)
    assert batch.submit([6, 2], chunk=1) == 2
    assert reap_all(batch, 2) == {6: 4096, 2: 4096}
    assert bytes(bufs[6]) == EXPECTED[206 * 4096 : 207 * 4096]
    assert bytes(bufs[2]) == EXPECTED[202 * 4096 : 203 * 4096]
    assert bytes(bufs[3]) == EXPECTED[3 * 4096 : 4 * 4096]  # not resubmitted
    assert batch.submit(list(range(8)), chunk=3) == 8
    assert reap_all(batch, 8) == dict.fromkeys(range(8), 4096)
    stats = batch.ring.statistics()
    assert stats["submitted"] == 18 and stats["reaped"] == 18


def test_writes_fsync_readonly_buffers_and_errors(batch: UringBatch, data_fd: int) -> None:
    batch.prep_pwrite(0, data_fd, b"lean path!", 100)  # read-only: used unregistered
    assert not batch.is_registered(0)
    batch.prep_fsync(1, data_fd, datasync=True)
    closed = os.dup(data_fd)
    os.close(closed)
    batch.prep_pread(2, closed, bytearray(8), 0)
    assert reap_all(batch, 0) == {}
    batch.submit([0, 1, 2])
    got = reap_all(batch, 3)
    assert got == {0: 10, 1: 0, 2: -errno.EBADF}
    assert os.pread(data_fd, 10, 100) == b"lean path!"
    with pytest.raises(TypeError):
        batch.prep_pread(3, data_fd, b"read-only", 0)
    with pytest.raises(TypeError):
        batch.prep_pread(3, data_fd, 1234, 0)  # not a buffer
    with pytest.raises(ValueError):
        batch.prep_pread(3, -1, bytearray(1), 0)
    with pytest.raises(ValueError):
        batch.prep_pread(3, data_fd, bytearray(1), -2)
    with pytest.raises(TypeError):
        batch.prep_pread(3, data_fd, bytearray(1), 1.5)  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        batch.prep_pread(16, data_fd, bytearray(1), 0)
    with pytest.raises(IndexError):
        batch.set_offset(-1, 0)
    with pytest.raises(TypeError):
        batch.prep_pread(True, data_fd, bytearray(1), 0)  # type: ignore[arg-type]


def test_slot_states_are_enforced(batch: UringBatch, pipe: tuple[int, int]) -> None:
    r, w = pipe
    buf = bytearray(5)
    batch.prep_pread(0, r, buf, -1)
    batch.prep_pread(1, r, bytearray(5), -1)
    with pytest.raises(ValueError):
        batch.submit([2])  # never prepared
    with pytest.raises(ValueError):
        batch.submit([99])
    with pytest.raises(SlotInFlightError):
        batch.submit([0, 1, 0])  # listed twice: nothing submitted
    assert batch.in_flight == 0 and not batch.is_busy(0) and not batch.is_busy(1)
    batch.submit([0])
    with pytest.raises(SlotInFlightError):
        batch.submit([0])
    with pytest.raises(SlotInFlightError):
        batch.prep_pread(0, r, buf, -1)
    with pytest.raises(SlotInFlightError):
        batch.set_offset(0, 0)
    with pytest.raises(ValueError):
        batch.reap(2)  # only one in flight: it would wait for ever
    assert batch.reap(1, timeout=0.05) == 0  # nothing written yet: times out
    assert not resizable(buf)
    os.write(w, b"hello")
    assert reap_all(batch, 1) == {0: 5}
    assert bytes(buf) == b"hello"


def test_reprepare_with_another_buffer_releases_the_old(batch: UringBatch, data_fd: int) -> None:
    old, new = bytearray(16), bytearray(16)
    batch.prep_pread(0, data_fd, old, 0)
    assert not resizable(old)
    batch.prep_pread(0, data_fd, new, 4096)
    assert resizable(old)  # unpinned, and unregistered from the ring
    assert batch.is_registered(0) == batch.fixed_buffers
    batch.submit([0])
    assert reap_all(batch, 1) == {0: 16}
    assert bytes(new) == EXPECTED[4096 : 4096 + 16] and bytes(old) == bytes(16)
    batch.prep_fsync(0, data_fd)  # no buffer: the slot lets go of it
    assert resizable(new) and not batch.is_registered(0)
    batch.close()
    batch.close()  # idempotent
    with pytest.raises(ValueError):
        batch.submit([0])
    with pytest.raises(ValueError):
        batch.reap(0)
    with pytest.raises(ValueError):
        batch.prep_pread(0, data_fd, new, 0)


def test_close_with_reads_in_flight_waits_for_them(direct_fd: int, pipe: tuple[int, int]) -> None:
    r, _w = pipe
    bufs = [xaio.aligned_buffer(1 << 16) for _ in range(16)]
    b = UringBatch(17)
    for i in range(16):
        b.prep_pread(i, direct_fd, bufs[i], i << 16)
    stuck = bytearray(4)
    b.prep_pread(16, r, stuck, -1)  # never completes: must be cancelled
    b.submit(list(range(17)))
    b.close()
    assert_settled(bufs)
    assert resizable(stuck) and bytes(stuck) == bytes(4)
    assert b.in_flight == 0 and "closed" in repr(b)


def test_garbage_collected_with_work_in_flight(direct_fd: int, pipe: tuple[int, int]) -> None:
    r, w = pipe
    bufs = [xaio.aligned_buffer(1 << 16) for _ in range(16)]
    b = UringBatch(17)
    for i in range(16):
        b.prep_pread(i, direct_fd, bufs[i], i << 16)
    stuck = bytearray(4)
    b.prep_pread(16, r, stuck, -1)
    b.submit(list(range(17)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del b
        gc.collect()
    assert any(issubclass(c.category, ResourceWarning) for c in caught)
    os.write(w, b"late")  # the cancelled read must not take it
    assert os.read(r, 4) == b"late"
    assert_settled(bufs)
    assert resizable(stuck)


def test_refused_in_a_forked_child(data_fd: int) -> None:
    b = UringBatch(2)
    b.prep_pread(0, data_fd, bytearray(8), 0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            b.submit([0])
        except OSError as e:
            code = 0 if e.errno == errno.EINVAL else 2
        else:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    b.submit([0])
    assert reap_all(b, 1) == {0: 8}
    b.close()


def test_bad_capacity() -> None:
    for bad in (0, -1, 1 << 16):
        with pytest.raises(ValueError):
            UringBatch(bad)
    with pytest.raises(TypeError):
        UringBatch(2.0)  # type: ignore[arg-type]


# --- UringEngine: on_done callbacks that submit ---------------------------------------


def test_engine_hands_over_callback_submissions_in_groups(data_fd: int) -> None:
    """Submissions made by on_done during a reap reach the kernel in groups of
    _DEFER_FLUSH, and all of them before reap returns."""
    eng = UringEngine(64)
    try:
        bufs = [bytearray(4096) for _ in range(16)]
        results: dict[int, bytes] = {}
        chained: list[Operation] = []

        def again(op: Operation) -> None:
            results[op.context] = bytes(op.buffers[0])

        def first(op: Operation) -> None:
            assert op.result == 4096
            nxt = Operation(
                OpCode.READ, data_fd, (bufs[op.context],), (100 + op.context) * 4096,
                on_done=again, context=op.context,
            )  # fmt: skip
            chained.append(nxt)
            eng.submit([nxt])

        ops = [
            Operation(OpCode.READ, data_fd, (bufs[i],), i * 4096, on_done=first, context=i)
            for i in range(16)
        ]
        eng.submit(ops)
        wait_until(lambda: eng.ring.cq_ready() == 16, T, "16 completions in the CQ")
        before = eng.ring.statistics()["enter"]
        assert eng.reap(0) == 16
        # 16 one-operation submissions, handed over in groups of _DEFER_FLUSH
        assert eng.ring.statistics()["enter"] - before == 16 // _DEFER_FLUSH
        # every chained read was handed over when the reap that made it returned
        assert all(op.state is not OpState.QUEUED for op in chained)
        assert eng.ring.sq_ready() == 0
        while len(results) < 16:
            assert eng.reap(T) > 0
        for i in range(16):
            assert results[i] == EXPECTED[(100 + i) * 4096 : (101 + i) * 4096]
    finally:
        eng.close()


def test_engine_cancel_of_a_deferred_submission(pipe: tuple[int, int], data_fd: int) -> None:
    """A callback that submits and then cancels within the same delivery: the
    request is handed to the kernel first, so the cancel finds it."""
    r, w = pipe
    eng = UringEngine(16)
    try:
        outcomes = []
        pending: list[Operation] = []
        buf = bytearray(4)

        def on_first(op: Operation) -> None:
            p = Operation(OpCode.READ, r, (buf,), -1, on_done=pending.append)
            eng.submit([p])
            outcomes.append(eng.cancel(p))

        eng.submit([Operation(OpCode.READ, data_fd, (bytearray(8),), 0, on_done=on_first)])
        while not outcomes:
            assert eng.reap(T) > 0
        assert outcomes == [CancelOutcome.CANCELED]
        while not pending:
            assert eng.reap(T) > 0
        assert pending[0].result == -errno.ECANCELED
        os.write(w, b"data")
        assert os.read(r, 4) == b"data"
    finally:
        eng.close()


def test_ring_sparse_buffer_table(data_fd: int) -> None:
    r = uring.Ring(8)
    try:
        r.register_buffers_sparse(4)
        buf = bytearray(4096)
        with pytest.raises(ValueError):
            r.prep_read_fixed(data_fd, buf, 0, 1)  # slot 1 is empty
        r.register_buffers_update(1, [buf])
        assert not resizable(buf)
        r.prep_read_fixed(data_fd, buf, 8192, 1, user_data=7)
        r.submit()
        assert r.wait_cqes(1, timeout=T) == [(7, 4096, 0)]
        assert bytes(buf) == EXPECTED[8192 : 8192 + 4096]
        r.register_buffers_update(1, [None])
        assert resizable(buf)
        with pytest.raises(ValueError):
            r.prep_read_fixed(data_fd, buf, 0, 1)
        with pytest.raises(ValueError):
            r.register_buffers_update(3, [buf, buf])  # past the table
        with pytest.raises(TypeError):
            r.register_buffers_update(0, [b"read-only"])
        with pytest.raises(ValueError):
            r.register_buffers_sparse(0)
    finally:
        r.close()


def test_sqpoll_ring_wakes_its_thread(data_fd: int) -> None:
    """With IORING_SETUP_SQPOLL the kernel's thread takes the SQEs; once it
    has gone to sleep (1 s idle by default) submit must wake it."""
    from xaio._abi import uring as abi

    with UringBatch(2, setup_flags=abi.IORING_SETUP_SQPOLL) as b:
        buf = bytearray(32)
        b.prep_pread(0, data_fd, buf, 4096)
        for i in range(2):
            if i:
                wait_until(lambda: sq_thread_sleeps(b.ring), T, "the SQ thread asleep")
            b.submit([0])
            assert reap_all(b, 1) == {0: 32}
            assert bytes(buf) == EXPECTED[4096 : 4096 + 32]


def test_engine_on_done_may_reap_blocking(data_fd: int, pipe: tuple[int, int]) -> None:
    """An on_done that submits and then waits for its own request with a
    blocking reap, while the outer reap is itself blocking: the deferred
    submission is handed over first and the nested wait neither deadlocks nor
    delivers anything twice."""
    r, w = pipe
    eng = UringEngine(16)
    try:
        seen: list[str] = []
        inner_buf = bytearray(16)

        def inner(op: Operation) -> None:
            seen.append(f"inner {op.result}")

        def outer(op: Operation) -> None:
            seen.append(f"outer {op.result}")
            nxt = Operation(OpCode.READ, data_fd, (inner_buf,), 8192, on_done=inner)
            eng.submit([nxt])
            while nxt.state is not OpState.DONE:
                eng.reap(T)

        eng.submit([Operation(OpCode.READ, r, (bytearray(4),), -1, on_done=outer)])
        t = threading.Timer(0.2, os.write, (w, b"ping"))
        t.start()
        try:
            assert eng.reap(T) >= 1  # blocks in io_uring_enter until the pipe read completes
        finally:
            t.join()
        assert seen == ["outer 4", "inner 16"]
        assert bytes(inner_buf) == EXPECTED[8192 : 8192 + 16]
    finally:
        eng.close()


def test_reap_at_most_max_nr(batch: UringBatch, data_fd: int) -> None:
    bufs = [bytearray(512) for _ in range(8)]
    for i in range(8):
        batch.prep_pread(i, data_fd, bufs[i], i * 512)
    batch.submit(list(range(8)))
    wait_until(lambda: batch.ring.cq_ready() == 8, T, "8 completions in the CQ")
    assert batch.reap(1, timeout=T, max_nr=3) == 3
    assert batch.in_flight == 5
    first = set(batch.done_slots[:3])
    rest = reap_all(batch, 5)
    assert first | set(rest) == set(range(8)) and not first & set(rest)
    batch.submit([0, 1])
    with pytest.raises(ValueError):
        batch.reap(2, timeout=T, max_nr=1)  # max_nr below min_nr
    reap_all(batch, 2)
