"""The Engine contract, run against every engine (like CPython's test_selectors).

Each engine must: run every opcode, deliver each operation exactly once in
``reap``, signal ``fileno()``, say honestly what a cancel did, keep buffers
pinned until the completion is reaped, close with work in flight, refuse work
after close, and survive fork.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import xaio
from xaio._ops import CancelOutcome, OpCode, Operation, OpState
from xaio.engine import ENGINE_NAMES, Engine, EngineClosedError, create_engine, probe

from .support import (
    POLL_SYSCALLS,
    completions_waiting,
    engine_reasons,
    pattern,
    reap_until,
    skip_unavailable,
    wait_blocked_in,
    wait_until,
)


@pytest.fixture(params=ENGINE_NAMES)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    name = request.param
    skip_unavailable(name)
    eng = create_engine(name)
    assert eng.name == name
    yield eng
    eng.close()


def run(eng: Engine, ops: Sequence[Operation], timeout: float = 10.0) -> list[int]:
    """Submit *ops*, reap until all are done, return their results."""
    eng.submit(ops)
    reap_until(eng, ops, timeout)
    return [op.result for op in ops]  # type: ignore[misc]


def test_every_opcode_on_a_regular_file(engine: Engine, data_fd: int) -> None:
    a, b = bytearray(3), bytearray(4)
    ops = [
        Operation(OpCode.WRITE, data_fd, [b"hello"], 0),
        Operation(OpCode.WRITEV, data_fd, [b"ab", b"cd"], 100),
        Operation(OpCode.FSYNC, data_fd),
        Operation(OpCode.FDATASYNC, data_fd),
        Operation(OpCode.NOP, -1),
    ]
    assert run(engine, ops) == [5, 4, 0, 0, 0]
    buf = bytearray(5)
    ops = [
        Operation(OpCode.READ, data_fd, [buf], 0),
        Operation(OpCode.READV, data_fd, [a, b], 99),
    ]
    assert run(engine, ops) == [5, 7]
    assert buf == b"hello" and a + b == pattern(100)[99:100] + b"abcd" + pattern(200)[104:106]


def test_direct_io_batch(engine: Engine, direct_fd: int) -> None:
    expected = pattern(1 << 20)
    bufs = [xaio.aligned_buffer(4096) for _ in range(100)]
    ops = [Operation(OpCode.READ, direct_fd, [bufs[i]], (i * 7 % 256) * 4096) for i in range(100)]
    assert run(engine, ops) == [4096] * 100
    for i, op in enumerate(ops):
        assert bytes(bufs[i]) == expected[op.offset : op.offset + 4096]


def test_errors_come_back_as_negative_errno(engine: Engine, tmp_path: Path) -> None:
    ro = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT)
    try:
        ops = [
            Operation(OpCode.READ, 99999, [bytearray(1)], 0),
            Operation(OpCode.WRITE, ro, [b"x"], 0),
        ]
        assert run(engine, ops) == [-errno.EBADF, -errno.EBADF]
        with pytest.raises(OSError) as info:
            ops[0].value()
        assert info.value.errno == errno.EBADF
    finally:
        os.close(ro)


def test_reap_timeouts(engine: Engine) -> None:
    assert engine.reap(0) == 0
    t0 = time.monotonic()
    assert engine.reap(0.1) == 0
    assert time.monotonic() - t0 < 2


def test_fileno_becomes_readable(engine: Engine, pipe: tuple[int, int]) -> None:
    r, w = pipe
    op = Operation(OpCode.POLL, r, flags=select.POLLIN)
    engine.submit([op])
    engine.reap(0)
    assert select.select([engine.fileno()], [], [], 0.05)[0] == [] or not op.done
    os.write(w, b"x")
    assert select.select([engine.fileno()], [], [], 5)[0] == [engine.fileno()]
    deadline = time.monotonic() + 5
    while not op.done and time.monotonic() < deadline:
        engine.reap(0.5)
    assert op.done and op.result is not None and op.result & select.POLLIN


def test_each_operation_completes_exactly_once(engine: Engine, data_fd: int) -> None:
    calls: dict[int, int] = {}

    def done(op: Operation) -> None:
        calls[id(op)] = calls.get(id(op), 0) + 1

    ops = [
        Operation(OpCode.READ, data_fd, [bytearray(512)], i * 512, on_done=done) for i in range(300)
    ]
    run(engine, ops)
    assert sorted(calls.values()) == [1] * 300


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "O_DIRECT"])
def test_an_on_done_that_raises_loses_nothing(
    engine: Engine, data_path: Path, direct: bool
) -> None:
    """The exception leaves reap; every other completion is still delivered,
    exactly once, by the following reaps (O_DIRECT: the linux engine's own
    kernel-AIO path, not its threads)."""
    try:
        fd = os.open(data_path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    except OSError as e:
        pytest.skip(f"O_DIRECT not supported here: {e}")
    size = 4096 if direct else 64
    try:
        check_raising_callbacks(engine, fd, size)
    finally:
        os.close(fd)


def check_raising_callbacks(engine: Engine, fd: int, size: int) -> None:
    calls: dict[int, int] = {}
    raised = []

    def done(op: Operation) -> None:
        calls[op.context] = calls.get(op.context, 0) + 1
        if op.context % 7 == 3:
            raised.append(op.context)
            raise RuntimeError(f"callback {op.context} failed")

    ops = [
        Operation(OpCode.READ, fd, [xaio.aligned_buffer(size)], i * size, on_done=done, context=i)
        for i in range(40)
    ]
    engine.submit(ops)
    deadline = time.monotonic() + 10
    while not all(op.done for op in ops) or len(calls) < 40:
        assert time.monotonic() < deadline, sorted(calls)
        try:
            engine.reap(timeout=0.5)
        except RuntimeError:
            pass
    assert sorted(calls.values()) == [1] * 40
    assert sorted(raised) == [i for i in range(40) if i % 7 == 3]
    assert [op.result for op in ops] == [size] * 40


def test_an_on_done_may_submit_and_wait(engine: Engine, data_fd: int) -> None:
    """A callback that submits a request and waits for it with a blocking
    reap (nested in the reap that runs it): no deadlock, each completion
    delivered once, to the right operation."""
    seen: list[tuple[str, int]] = []
    bufs = [bytearray(16) for _ in range(4)]

    def inner(op: Operation) -> None:
        seen.append(("inner", op.context))

    def outer(op: Operation) -> None:
        seen.append(("outer", op.context))
        nxt = Operation(
            OpCode.READ, data_fd, [bufs[op.context]], 4096 * (10 + op.context),
            on_done=inner, context=op.context,
        )  # fmt: skip
        engine.submit([nxt])
        deadline = time.monotonic() + 10
        while nxt.state is not OpState.DONE:
            assert time.monotonic() < deadline
            engine.reap(timeout=0.5)
        assert nxt.result == 16

    firsts = [
        Operation(OpCode.READ, data_fd, [bytearray(8)], 0, on_done=outer, context=i)
        for i in range(4)
    ]
    run(engine, firsts)
    assert sorted(seen) == sorted(
        [("outer", i) for i in range(4)] + [("inner", i) for i in range(4)]
    )
    for i in range(4):
        assert bytes(bufs[i]) == pattern(1 << 20)[4096 * (10 + i) : 4096 * (10 + i) + 16]


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "O_DIRECT"])
def test_reap_at_most_max_n(engine: Engine, data_path: Path, direct: bool) -> None:
    """reap(max_n=N) delivers at most N; the rest wait for the next reap and
    the engine's fd stays readable meanwhile."""
    try:
        fd = os.open(data_path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    except OSError as e:
        pytest.skip(f"O_DIRECT not supported here: {e}")
    try:
        ops = [Operation(OpCode.READ, fd, [xaio.aligned_buffer(4096)], i * 4096) for i in range(10)]
        data = pattern(10 * 4096)
        engine.submit(ops)
        # all ten completions are posted (a worker fills the buffer before it
        # posts) and wait: the first reap must stop at 3
        wait_until(lambda: completions_waiting(engine) == 10, what="ten completions posted")
        assert select.select([engine.fileno()], [], [], 0)[0], "completions wait, fd not readable"
        assert all(op.buffers[0] == data[i * 4096 : (i + 1) * 4096] for i, op in enumerate(ops))
        assert not any(op.done for op in ops)
        deadline = time.monotonic() + 10
        delivered = 0
        sizes = []
        while delivered < 10:
            assert time.monotonic() < deadline
            n = engine.reap(timeout=0.5, max_n=3)
            assert n <= 3
            delivered += n
            assert sum(op.done for op in ops) == delivered  # the rest wait for the next reap
            if n and delivered < 10:
                readable, _, _ = select.select([engine.fileno()], [], [], 2.0)
                assert readable, "completions wait but the fd is not readable"
            sizes.append(n)
        assert sizes[0] == 3
        assert all(op.result == 4096 for op in ops)
    finally:
        os.close(fd)


def test_cancel_pending_poll(engine: Engine, pipe: tuple[int, int]) -> None:
    """A POLL waiting for its fd is cancelled on every engine: in the kernel,
    or (threads) taken from the worker waiting in poll(2) for it."""
    r, _ = pipe
    op = Operation(OpCode.POLL, r, flags=select.POLLIN)
    engine.submit([op])
    if engine.name == "thread":
        wait_blocked_in(POLL_SYSCALLS)  # a worker waits for the pipe
    assert engine.cancel(op) is CancelOutcome.CANCELED
    reap_until(engine, [op], 5)
    assert op.result == -errno.ECANCELED
    assert engine.cancel(op) is CancelOutcome.DONE


def test_cancel_done_operation(engine: Engine, data_fd: int) -> None:
    op = Operation(OpCode.READ, data_fd, [bytearray(4)], 0)
    run(engine, [op])
    assert engine.cancel(op) is CancelOutcome.DONE


def test_cancel_outcome_is_honest_for_running_reads(engine: Engine, direct_fd: int) -> None:
    bufs = [xaio.aligned_buffer(65536) for _ in range(16)]
    ops = [Operation(OpCode.READ, direct_fd, [bufs[i]], i * 65536) for i in range(16)]
    engine.submit(ops)
    outcomes = [engine.cancel(op) for op in ops]
    deadline = time.monotonic() + 10
    while not all(op.done for op in ops):
        assert time.monotonic() < deadline
        engine.reap(0.5)
    for op, outcome in zip(ops, outcomes, strict=True):
        if outcome is CancelOutcome.CANCELED:
            assert op.result in (-errno.ECANCELED, -errno.EINTR)
        elif outcome is CancelOutcome.RUNNING:
            assert op.result == 65536
        else:
            assert op.result == 65536


def test_buffers_pinned_until_reaped(engine: Engine, direct_fd: int) -> None:
    expected = pattern(1 << 20)
    results: list[tuple[int, bytes]] = []

    def keep(op: Operation) -> None:
        results.append((op.offset, bytes(op.buffers[0])))

    def submit_and_forget() -> None:
        ops = [
            Operation(OpCode.READ, direct_fd, [xaio.aligned_buffer(16384)], i * 16384, on_done=keep)
            for i in range(32)
        ]
        engine.submit(ops)

    submit_and_forget()
    gc.collect()
    deadline = time.monotonic() + 10
    while len(results) < 32:
        assert time.monotonic() < deadline
        engine.reap(0.5)
    for off, data in results:
        assert data == expected[off : off + 16384]


def test_bytearray_cannot_be_resized_while_in_flight(engine: Engine, pipe: tuple[int, int]) -> None:
    r, w = pipe
    buf = bytearray(4)
    op = Operation(OpCode.READ, r, [buf], -1)
    if engine.name == "linux":
        pytest.skip("the linux engine runs pipe reads on threads; covered there")
    engine.submit([op])
    with pytest.raises(BufferError):
        buf.extend(b"x")
    os.write(w, b"data")
    while not op.done:
        engine.reap(1)
    assert op.result == 4 and buf == b"data"
    buf.extend(b"!")


def test_submit_after_close_is_refused(engine: Engine, data_fd: int) -> None:
    engine.close()
    assert engine.closed
    with pytest.raises(EngineClosedError):
        engine.submit([Operation(OpCode.READ, data_fd, [bytearray(1)], 0)])
    engine.close()  # idempotent


def test_fileno_after_close_raises(engine: Engine) -> None:
    """One behaviour on every engine: a closed engine has no fd to watch, and
    says so as a closed file does (EngineClosedError is a ValueError too),
    never with a number the next fd may reuse."""
    assert engine.fileno() >= 0
    engine.close()
    with pytest.raises(EngineClosedError):
        engine.fileno()
    with pytest.raises(ValueError):
        engine.fileno()


def test_raw_linux_aio_engine_fileno_after_close() -> None:
    skip_unavailable("linux")
    from xaio.linux import LinuxAioEngine

    eng = LinuxAioEngine(8)
    assert eng.fileno() >= 0
    eng.close()
    with pytest.raises(EngineClosedError):
        eng.fileno()


def test_owns_until_delivered(engine: Engine, pipe: tuple[int, int]) -> None:
    r, w = pipe
    op = Operation(OpCode.READ, r, [bytearray(4)], -1)
    other = Operation(OpCode.READ, r, [bytearray(4)], -1)
    assert not engine.owns(op)
    engine.submit([op])
    assert engine.owns(op) and not engine.owns(other)
    os.write(w, b"data")
    reap_until(engine, [op])
    assert op.result == 4 and not engine.owns(op)


def test_capability_flags_are_honest(engine: Engine, pipe: tuple[int, int]) -> None:
    """What the flags promise, on the engine that sets them."""
    r, w = pipe
    assert not engine.delivers_itself  # create_engine's engines are reaped
    if engine.completes_in_submit:
        nop = Operation(OpCode.NOP, -1)
        engine.submit([nop])
        assert engine.reap(0) == 1 and nop.result == 0  # found without waiting
    op = Operation(OpCode.READ, r, [bytearray(4)], -1)
    engine.submit([op])
    outcome = engine.cancel(op)
    if engine.cancels_running:
        assert outcome is CancelOutcome.CANCELED
    else:
        assert outcome in (CancelOutcome.CANCELED, CancelOutcome.RUNNING)
        os.write(w, b"data")
    reap_until(engine, [op])
    expected = -errno.ECANCELED if outcome is CancelOutcome.CANCELED else 4
    assert op.result == expected


def test_a_thread_engine_completing_in_workers_delivers_itself() -> None:
    from xaio.threads import ThreadEngine

    with ThreadEngine(2, complete_in_worker=True) as eng:
        assert eng.delivers_itself


def test_close_with_work_in_flight(engine: Engine, pipe: tuple[int, int]) -> None:
    r, w = pipe
    done: list[int] = []
    op = Operation(OpCode.READ, r, [bytearray(8)], -1, on_done=lambda o: done.append(o.result))
    poll = Operation(OpCode.POLL, r, flags=select.POLLIN)
    engine.submit([op, poll])
    time.sleep(0.05)
    # a blocked pipe read cannot be stopped on every engine: data arrives later
    t = threading.Timer(0.3, os.write, (w, b"late"))
    t.start()
    t0 = time.monotonic()
    engine.close()
    t.join()
    assert time.monotonic() - t0 < 10
    assert op.done and poll.done
    assert op.result in (4, -errno.ECANCELED, -errno.EINTR)
    assert len(done) == 1


def test_states(engine: Engine, data_fd: int) -> None:
    op = Operation(OpCode.READ, data_fd, [bytearray(4)], 0)
    assert op.state is OpState.QUEUED
    run(engine, [op])
    assert op.state is OpState.DONE
    assert all(p._holder is None for p in op.pins)  # released


def test_fork_child_makes_its_own_engine(engine: Engine, data_fd: int) -> None:
    op = Operation(OpCode.READ, data_fd, [bytearray(4)], 0)
    run(engine, [op])
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            try:
                engine.submit([Operation(OpCode.READ, data_fd, [bytearray(4)], 0)])
                engine.reap(0.2)
            except (OSError, EngineClosedError):
                pass
            child = create_engine(engine.name)
            buf = bytearray(4)
            o = Operation(OpCode.READ, data_fd, [buf], 0)
            child.submit([o])
            deadline = time.monotonic() + 5
            while not o.done and time.monotonic() < deadline:
                child.reap(0.5)
            child.close()
            code = 0 if o.result == 4 and bytes(buf) == pattern(4) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent's engine still works
    buf = bytearray(4)
    assert run(engine, [Operation(OpCode.READ, data_fd, [buf], 0)]) == [4]


def test_create_engine_choice_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        create_engine("nope")
    monkeypatch.setenv("XAIO_ENGINE", "thread")
    eng = create_engine()
    try:
        assert eng.name == "thread"
    finally:
        eng.close()
    monkeypatch.delenv("XAIO_ENGINE")
    eng = create_engine()
    try:
        best = next(n for n in ENGINE_NAMES if engine_reasons()[n] is None)
        assert eng.name == best
    finally:
        eng.close()


def test_probe_shape() -> None:
    p = probe()
    assert set(p) == {"uring", "linux", "thread"}
    assert p["thread"] is None
    for v in p.values():
        assert v is None or (isinstance(v, str) and ":" in v)


def test_submit_refuses_a_bad_batch_and_takes_nothing(
    engine: Engine, data_fd: int, direct_fd: int
) -> None:
    """An operation listed twice, or one not QUEUED, fails the whole batch with
    RuntimeError before any operation was taken (then the good ones still go)."""
    buf = xaio.aligned_buffer(4096)
    a = Operation(OpCode.READ, direct_fd, [buf], 0)
    b = Operation(OpCode.READ, data_fd, [bytearray(10)], 0)
    with pytest.raises(RuntimeError, match="twice"):
        engine.submit([a, b, a])
    done = Operation(OpCode.NOP, -1)
    done.complete(0)
    with pytest.raises(RuntimeError, match="DONE"):
        engine.submit([a, b, done])
    assert a.state is OpState.QUEUED and b.state is OpState.QUEUED
    assert run(engine, [a, b]) == [4096, 10]
    with pytest.raises(RuntimeError):
        engine.submit([b])  # done now


_BAD_FIELDS = {
    "fd not an int": (lambda fd: Operation(OpCode.READ, "3", [bytearray(4)], 0), TypeError),  # type: ignore[arg-type]
    "fd out of range": (lambda fd: Operation(OpCode.READ, 1 << 40, [bytearray(4)], 0), ValueError),
    "offset not an int": (lambda fd: Operation(OpCode.READ, fd, [bytearray(4)], 1.5), TypeError),  # type: ignore[arg-type]
    "flags not an int": (lambda fd: Operation(OpCode.READ, fd, [bytearray(4)], 0, "x"), TypeError),  # type: ignore[arg-type]
    "READ with two buffers": (
        lambda fd: Operation(OpCode.READ, fd, [bytearray(4), bytearray(4)], 0),
        ValueError,
    ),
    "WRITE with no buffer": (lambda fd: Operation(OpCode.WRITE, fd, [], 0), ValueError),
    "READV with 1025 buffers": (
        lambda fd: Operation(OpCode.READV, fd, [bytearray(1) for _ in range(1025)], 0),
        ValueError,
    ),
    "fsync on a str fd": (lambda fd: Operation(OpCode.FSYNC, "x"), TypeError),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", sorted(_BAD_FIELDS))
def test_submit_refuses_bad_fields_and_takes_nothing(
    engine: Engine, data_fd: int, case: str
) -> None:
    """A malformed operation anywhere in a batch fails the whole batch with
    TypeError/ValueError before any operation was taken; the engine is then
    as before (the good ones still go, the bad one can be fixed and sent)."""
    make, error = _BAD_FIELDS[case]
    bad = make(data_fd)
    good = [Operation(OpCode.READ, data_fd, [bytearray(8)], 8 * i) for i in range(3)]
    with pytest.raises(error):
        engine.submit([good[0], good[1], bad, good[2]])
    for op in [*good, bad]:
        assert op.state is OpState.QUEUED and op.key == -1
    assert not engine.statistics().get("in_flight", 0)
    expected = pattern(1 << 20)
    assert run(engine, good) == [8, 8, 8]
    assert [bytes(op.buffers[0]) for op in good] == [expected[8 * i : 8 * i + 8] for i in range(3)]
    more = [Operation(OpCode.READ, data_fd, [bytearray(4)], 4 * i) for i in range(50)]
    assert run(engine, more) == [4] * 50  # the engine's queue is intact


def test_register_buffers(engine: Engine, data_fd: int, direct_fd: int) -> None:
    """Engine.register_buffers is a hint every engine takes: io_uring pins
    the buffers as fixed buffers (reads and writes on them use READ_FIXED /
    WRITE_FIXED), the others say False; I/O on any buffer works either way."""
    with pytest.raises(ValueError):
        engine.register_buffers([])
    arena = xaio.aligned_buffer(3 * 4096)
    small = bytearray(256)
    registered = engine.register_buffers([arena, small])
    assert registered is (engine.name == "uring")
    expected = pattern(1 << 20)
    view = memoryview(arena)
    other = xaio.aligned_buffer(4096)
    ops = [
        Operation(OpCode.READ, direct_fd, [view[:4096]], 0),  # starts at a registered buffer
        Operation(OpCode.READ, direct_fd, [view[8192:]], 4096),  # inside one
        Operation(OpCode.READ, data_fd, [memoryview(small)[:100]], 5),
        Operation(OpCode.READ, direct_fd, [other], 8192),  # not registered
    ]
    assert run(engine, ops) == [4096, 4096, 100, 4096]
    assert bytes(view[:4096]) == expected[:4096]
    assert bytes(view[8192:]) == expected[4096:8192]
    assert bytes(small[:100]) == expected[5:105]
    assert bytes(other) == expected[8192:12288]
    if registered:
        assert engine.statistics()["fixed"] == 3
    view[4096:8192] = b"w" * 4096
    assert run(engine, [Operation(OpCode.WRITE, direct_fd, [view[4096:8192]], 4096)]) == [4096]
    assert os.pread(data_fd, 4096, 4096) == b"w" * 4096
    engine.unregister_buffers()
    engine.unregister_buffers()  # nothing left: no error
    if registered:
        assert engine.statistics()["fixed"] == 4
    assert run(engine, [Operation(OpCode.READ, direct_fd, [view[:4096]], 0)]) == [4096]
    if registered:
        assert engine.statistics()["fixed"] == 4  # plain I/O after unregistering
    del view
    ops.clear()


@pytest.mark.parametrize("how", ["read_nowait", "nowait_reader"])
def test_read_nowait(engine: Engine, data_fd: int, tmp_path: Path, how: str) -> None:
    """The page-cache fast path (``Engine.read_nowait``, and the same bound
    once as ``Engine.nowait_reader``, which takes the buffer in a tuple) of
    every engine: a cached read is done at once; end of file, errors,
    streams, O_APPEND and O_DIRECT fds are left to the normal path; a closed
    engine declines."""
    read_nowait = engine.read_nowait
    if how == "nowait_reader":
        reader = engine.nowait_reader

        def read_nowait(fd: int, buffer: Any, offset: int, nbytes: int) -> int | None:
            return reader(fd, (buffer,), offset, nbytes)

    os.pread(data_fd, 4096, 0)  # cached
    expected = pattern(1 << 20)
    buf = bytearray(8)
    before = engine.statistics()["inline"]
    assert read_nowait(data_fd, buf, 16, 8) == 8
    assert bytes(buf) == expected[16:24]
    assert read_nowait(data_fd, buf, 10**9, 8) is None  # EOF: short, left to the engine
    assert read_nowait(987654, buf, 0, 8) is None  # errors too
    r, w = os.pipe()
    afd = os.open(tmp_path / "t.bin", os.O_RDWR | os.O_CREAT | os.O_APPEND)
    os.write(afd, b"y" * 8)
    try:
        os.write(w, b"x" * 8)
        assert read_nowait(r, buf, 0, 8) is None  # a stream
        assert os.read(r, 8) == b"x" * 8  # untouched
        assert read_nowait(afd, buf, 0, 8) is None  # O_APPEND
    finally:
        for fd in (r, w, afd):
            os.close(fd)
    try:
        dfd = os.open(tmp_path / "t.bin", os.O_RDONLY | os.O_DIRECT)
    except OSError:  # pragma: no cover
        pass
    else:
        try:
            assert read_nowait(dfd, xaio.aligned_buffer(4096), 0, 8) is None  # O_DIRECT
        finally:
            os.close(dfd)
    assert engine.statistics()["inline"] == before + 1
    engine.close()
    assert read_nowait(data_fd, buf, 16, 8) is None


def test_two_reaping_threads_deliver_each_operation_once(engine: Engine, direct_fd: int) -> None:
    """Reaps may run in two threads at once (an event loop's thread and a
    blocking waiter): every completion reaches exactly one of them."""
    seen: list[Operation] = []
    lock = threading.Lock()

    def on_done(op: Operation) -> None:
        with lock:
            seen.append(op)

    total = 1200
    stop = threading.Event()

    def reaper() -> None:
        while not stop.is_set():
            engine.reap(0.05)

    threads = [threading.Thread(target=reaper) for _ in range(2)]
    for t in threads:
        t.start()
    ops: list[Operation] = []
    try:
        for start in range(0, total, 60):
            batch = [
                Operation(
                    OpCode.READ,
                    direct_fd,
                    [xaio.aligned_buffer(4096)],
                    (i % 256) * 4096,
                    on_done=on_done,
                )
                for i in range(start, start + 60)
            ]
            ops += batch
            engine.submit(batch)
            while len(ops) - len(seen) > 120:  # keep within the engines' capacity
                time.sleep(0.001)
        deadline = time.monotonic() + 20
        while len(seen) < total and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert len(seen) == total
    assert len({id(op) for op in seen}) == total
    assert all(op.result == 4096 for op in ops)


@pytest.mark.parametrize("user_ring", [True, False], ids=["user-ring", "io_getevents"])
def test_linux_engine_reads_events_either_way(user_ring: bool, direct_fd: int) -> None:
    """The linux engine reads completions from the context's ring in user
    memory (x86-64) or, where it cannot, through io_getevents: the same
    results, and the eventfd never misses a completion."""
    skip_unavailable("linux")
    from xaio.linux import LinuxAioEngine

    with LinuxAioEngine(32) as eng:
        if not user_ring:
            eng._ring = None
        elif eng._ring is None:
            pytest.skip("no user-space AIO ring on this platform")
        expected = pattern(1 << 20)
        for rnd in range(5):
            bufs = [xaio.aligned_buffer(4096) for _ in range(48)]  # more than capacity
            ops = [
                Operation(OpCode.READ, direct_fd, [b], ((i * 5 + rnd) % 256) * 4096)
                for i, b in enumerate(bufs)
            ]
            eng.submit(ops)
            deadline = time.monotonic() + 10
            while not all(op.done for op in ops):
                assert time.monotonic() < deadline
                r, _, _ = select.select([eng.fileno()], [], [], 5)
                assert r, "a completion did not signal the eventfd"
                eng.reap(0, max_n=7)
            for op, b in zip(ops, bufs, strict=True):
                assert op.result == 4096
                assert bytes(b) == expected[op.offset : op.offset + 4096]
        assert eng.reap(0) == 0
        assert eng.statistics()["in_flight"] == 0


def test_linux_engine_backlog_op_spoiled_after_submit_fails_alone(direct_fd: int) -> None:
    """An operation waiting in the linux engine's backlog whose field is
    changed to garbage after submit completes with -EINVAL when its turn
    comes; the ones around it are not stranded."""
    skip_unavailable("linux")
    from xaio.linux import LinuxAioEngine

    with LinuxAioEngine(2) as eng:
        ops = [
            Operation(OpCode.READ, direct_fd, [xaio.aligned_buffer(4096)], 4096 * i)
            for i in range(5)
        ]
        eng.submit(ops)
        assert eng.statistics()["backlog"] == 3
        ops[3].offset = "later"  # type: ignore[assignment]
        reap_until(eng, ops)
        assert [op.result for op in ops] == [4096, 4096, 4096, -errno.EINVAL, 4096]
        assert eng.statistics()["in_flight"] == 0


def test_submit_takes_any_sequence(engine: Engine, data_fd: int) -> None:
    """A deque is a Sequence too: a bad one is refused whole (taking back
    what the one-pass submit wrote), a good one goes."""
    import collections

    good = [Operation(OpCode.READ, data_fd, [bytearray(4)], 4 * i) for i in range(3)]
    bad = Operation(OpCode.READ, data_fd, [bytearray(4)], 0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        engine.submit(collections.deque([*good, bad]))
    assert all(op.state is OpState.QUEUED and op.key == -1 for op in good)
    assert run(engine, collections.deque(good)) == [4, 4, 4]


def test_classify_says_kind_and_positional_io(data_fd: int, direct_fd: int, tmp_path: Path) -> None:
    """One look at an fd answers both questions: what os.pread would refuse
    before any transfer (ESPIPE, EBADF) and how an engine routes it."""
    from xaio.engine import KIND_BUFFERED, KIND_DIRECT, KIND_OTHER, fd_kind
    from xaio.engine._route import classify

    r, w = os.pipe()
    a, b = socket.socketpair()
    efd = os.eventfd(0)
    master, slave = os.openpty()
    null = os.open("/dev/null", os.O_RDWR)
    dfd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert classify(data_fd) == fd_kind(data_fd) == KIND_BUFFERED
        assert classify(direct_fd) == fd_kind(direct_fd) == KIND_DIRECT
        assert classify(null) == classify(dfd) == KIND_OTHER  # positional I/O
        for fd in (r, w, a.fileno(), efd, slave):
            assert classify(fd) == -errno.ESPIPE, fd
            assert fd_kind(fd) == KIND_OTHER
            with pytest.raises(OSError) as e:
                os.pread(fd, 1, 0)
            assert e.value.errno == errno.ESPIPE
        assert classify(987654) == classify(-1) == -errno.EBADF
        assert fd_kind(987654) == KIND_OTHER
    finally:
        a.close()
        b.close()
        for fd in (r, w, efd, master, slave, null, dfd):
            os.close(fd)


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_an_async_request_classifies_its_fd_once(
    name: str, direct_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The async layer's ESPIPE check, the engine's routing and the thread
    engine's ordering share one look at the fd: neither asks again."""
    import asyncio

    import xaio.threads
    from xaio.engine import _route

    skip_unavailable(name)
    asked: list[tuple[str, int]] = []
    real_kind, real_order = _route.fd_kind, xaio.threads.fd_order

    def counting_fd_kind(fd: int) -> int:
        asked.append(("fd_kind", fd))
        return real_kind(fd)

    def counting_fd_order(fd: int, file: bool | None = None) -> int:
        if file is None:
            asked.append(("fd_order", fd))
        return real_order(fd, file)

    monkeypatch.setattr(_route, "fd_kind", counting_fd_kind)
    monkeypatch.setattr(xaio.threads, "fd_order", counting_fd_order)
    buf = xaio.aligned_buffer(4096)

    async def main() -> None:
        async with xaio.open_engine(name) as eng:
            assert await eng.preadinto(direct_fd, buf, 4096) == 4096
            assert await eng.pwrite(direct_fd, buf, 8192) == 4096
            assert await eng.pread(direct_fd, 4096, 0) == pattern(4096)

    asyncio.run(main())
    assert bytes(buf) == pattern(8192)[4096:]
    assert asked == []
