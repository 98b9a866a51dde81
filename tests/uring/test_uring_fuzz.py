"""Hypothesis fuzzing of the io_uring entry points: what the kernel does must
match os.pread/os.pwrite, and bad arguments must fail before the kernel with
TypeError/ValueError (or come back as -errno), never crash or leak."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xaio import uring
from xaio._ops import OpCode, Operation, OpState
from xaio.uring import Ring, UringEngine

SIZE = 1 << 16
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ring, UringEngine, int]]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "f"
    path.write_bytes(os.urandom(SIZE))
    fd = os.open(path, os.O_RDWR)
    ring = Ring(16)
    eng = UringEngine(16)
    yield ring, eng, fd
    ring.close()
    eng.close()
    os.close(fd)


@FUZZ
@given(
    offset=st.integers(min_value=0, max_value=SIZE + 100),
    length=st.integers(min_value=0, max_value=5000),
    data=st.binary(max_size=3000),
)
def test_ring_read_write_match_os(
    shared: tuple[Ring, UringEngine, int], offset: int, length: int, data: bytes
) -> None:
    ring, _, fd = shared
    ring.prep_write(fd, data, offset, user_data=1)
    ring.submit()
    got = ring.wait_cqe(timeout=5)
    assert got == (1, len(data), 0)
    buf = bytearray(length)
    ring.prep_read(fd, buf, offset, user_data=2)
    ring.submit()
    cqe = ring.wait_cqe(timeout=5)
    assert cqe is not None
    expected = os.pread(fd, length, offset)
    assert cqe[1] == len(expected) and bytes(buf[: cqe[1]]) == expected


@FUZZ
@given(
    fd=st.one_of(st.integers(min_value=-(2**31), max_value=2**31 - 1), st.just(10**6)),
    offset=st.integers(min_value=-(2**63), max_value=2**64 - 1),
)
def test_ring_any_fd_and_offset_is_an_answer_not_a_crash(
    shared: tuple[Ring, UringEngine, int], fd: int, offset: int
) -> None:
    ring, _, _ = shared
    try:
        os.fstat(fd)
        fd = -1  # an open fd: reading it could consume someone's data or block
    except (OSError, OverflowError):
        pass
    ring.prep_read(fd, bytearray(8), offset, user_data=3)
    ring.submit()
    cqe = ring.wait_cqe(timeout=5)
    assert cqe is not None and cqe[0] == 3
    assert cqe[1] < 0 and -cqe[1] in (errno.EBADF, errno.EINVAL, errno.ESPIPE)


@FUZZ
@given(
    buf=st.one_of(
        st.binary(max_size=8),
        st.integers(),
        st.text(max_size=4),
        st.none(),
        st.lists(st.integers(), max_size=3),
    )
)
def test_ring_read_refuses_non_writable_buffers_before_the_kernel(
    shared: tuple[Ring, UringEngine, int], buf: object
) -> None:
    ring, _, fd = shared
    before = ring.sq_ready()
    with pytest.raises(TypeError):
        ring.prep_read(fd, buf, 0)
    assert ring.sq_ready() == before


@FUZZ
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from([OpCode.READ, OpCode.WRITE, OpCode.READV, OpCode.NOP]),
            st.integers(min_value=-1, max_value=SIZE),
            st.integers(min_value=0, max_value=600),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_engine_batches_complete_each_op_once(
    shared: tuple[Ring, UringEngine, int], ops: list[tuple[OpCode, int, int]]
) -> None:
    _, eng, fd = shared
    done: list[Operation] = []
    batch = []
    for code, offset, n in ops:
        if code is OpCode.READV:
            bufs = [bytearray(n // 2), bytearray(n - n // 2)]
        elif code is OpCode.WRITE:
            bufs = [bytes(n)]
        elif code is OpCode.READ:
            bufs = [bytearray(n)]
        else:
            bufs = []
        batch.append(Operation(code, fd, bufs, offset, on_done=done.append))
    eng.submit(batch)
    for _ in range(200):
        if len(done) == len(batch):
            break
        eng.reap(0.05)
    assert sorted(map(id, done)) == sorted(map(id, batch))
    for op in batch:
        assert op.result is not None
        if op.opcode is OpCode.NOP:
            assert op.result == 0
        else:
            assert 0 <= op.result <= op.nbytes or op.result == -errno.EINVAL


_BAD = {
    "str fd": lambda fd: Operation(OpCode.READ, "3", [bytearray(8)], 0),  # type: ignore[arg-type]
    "huge fd": lambda fd: Operation(OpCode.WRITE, 1 << 33, [b"x"], 0),
    "float offset": lambda fd: Operation(OpCode.READV, fd, [bytearray(8)], 0.5),  # type: ignore[arg-type]
    "str flags": lambda fd: Operation(OpCode.READ, fd, [bytearray(8)], 0, "0"),  # type: ignore[arg-type]
    "two buffers": lambda fd: Operation(OpCode.WRITE, fd, [b"a", b"b"], 0),
    "done": lambda fd: _done_op(),
}


def _done_op() -> Operation:
    op = Operation(OpCode.NOP, -1)
    op.complete(0)
    return op


@FUZZ
@given(
    n=st.integers(min_value=1, max_value=40),
    bad_at=st.integers(min_value=0, max_value=40),
    bad=st.sampled_from([*sorted(_BAD), "duplicate"]),
)
def test_engine_bad_batch_takes_nothing_anywhere(
    shared: tuple[Ring, UringEngine, int], n: int, bad_at: int, bad: str
) -> None:
    """A malformed operation at any place in a batch of any size (within the
    16-entry SQ: written and taken back; beyond it: checked first) fails the
    batch before the kernel sees any of it; the same good operations then go."""
    _, eng, fd = shared
    good = [Operation(OpCode.READ, fd, [bytearray(8)], 8 * i) for i in range(n)]
    batch: list[Operation] = list(good)
    at = min(bad_at, n)
    if bad == "duplicate":
        batch.insert(at, good[min(bad_at, n - 1)])
    else:
        batch.insert(at, _BAD[bad](fd))
    submitted = eng.statistics()["submitted"]
    enters = eng.ring.statistics()["enter"]
    with pytest.raises((TypeError, ValueError, RuntimeError)):
        eng.submit(batch)
    assert eng.statistics()["submitted"] == submitted
    assert eng.ring.statistics()["enter"] == enters
    assert eng.ring.sq_ready() == 0 and eng.statistics()["in_flight"] == 0
    assert all(op.state is OpState.QUEUED and op.key == -1 for op in good)
    done: list[Operation] = []
    for op in good:
        op.on_done = done.append
    eng.submit(good)
    for _ in range(200):
        if len(done) == n:
            break
        eng.reap(0.05)
    assert [op.result for op in good] == [8] * n


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["prep", "offset", "offset", "submit", "submit", "reap"]),
            st.integers(min_value=0, max_value=4),  # slot (4 is out of range)
            st.integers(min_value=0, max_value=SIZE + 100),  # offset
            st.integers(min_value=1, max_value=3000),  # length
        ),
        min_size=4,
        max_size=40,
    ),
    fixed=st.booleans(),
)
def test_uring_batch_random_sequences(
    shared: tuple[Ring, UringEngine, int],
    steps: list[tuple[str, int, int, int]],
    fixed: bool,
) -> None:
    """Any sequence of prep / set_offset / submit / reap on a UringBatch
    either is refused up front (slot state) or reads what os.pread reads, and
    every submitted slot comes back exactly once."""
    _, _, fd = shared
    with uring.UringBatch(4, fixed_buffers=fixed) as batch:
        bufs: dict[int, bytearray] = {}
        offsets: dict[int, int] = {}
        busy: set[int] = set()

        def check_done(n: int) -> None:
            for i in range(n):
                s, res = batch.done_slots[i], batch.done_res[i]
                assert s in busy
                busy.discard(s)
                want = os.pread(fd, len(bufs[s]), offsets[s])
                assert res == len(want) and bytes(bufs[s][:res]) == want

        for op, slot, offset, length in steps:
            in_range = slot < 4
            if op == "prep":
                if not in_range:
                    with pytest.raises(IndexError):
                        batch.prep_pread(slot, fd, bytearray(length), offset)
                elif slot in busy:
                    with pytest.raises(uring.SlotInFlightError):
                        batch.prep_pread(slot, fd, bytearray(length), offset)
                else:
                    bufs[slot] = bytearray(length)
                    offsets[slot] = offset
                    batch.prep_pread(slot, fd, bufs[slot], offset)
            elif op == "offset":
                if in_range and slot in bufs and slot not in busy:
                    batch.set_offset(slot, offset)
                    offsets[slot] = offset
                elif in_range and slot in busy:
                    with pytest.raises(uring.SlotInFlightError):
                        batch.set_offset(slot, offset)
            elif op == "submit":
                if not in_range or slot not in bufs:
                    with pytest.raises(ValueError):
                        batch.submit([slot])
                elif slot in busy:
                    with pytest.raises(uring.SlotInFlightError):
                        batch.submit([slot])
                else:
                    assert batch.submit([slot], chunk=offset % 3) == 1
                    busy.add(slot)
            else:
                if len(busy) < 1:
                    with pytest.raises(ValueError):
                        batch.reap(1, timeout=5)
                else:
                    check_done(batch.reap(1, timeout=5))
            assert batch.in_flight == len(busy)
        while busy:
            check_done(batch.reap(1, timeout=5))
