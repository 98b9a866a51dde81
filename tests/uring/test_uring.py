"""io_uring from pure Python: the Ring (setup, prep, submit, reap, cancel,
register, probe, overflow, fork) and the UringEngine against the Engine
protocol, with real files, O_DIRECT files, pipes and sockets."""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import xaio
from tests.support import (
    URING_ENTER_SYSCALLS,
    in_child,
    pattern,
    reap_until,
    resizable,
    sq_thread_sleeps,
    wait_blocked_in,
    wait_until,
)
from xaio import uring
from xaio._abi import uring as abi
from xaio._ops import CancelOutcome, OpCode, Operation, OpState
from xaio.engine import EngineClosedError
from xaio.uring import AT_FDCWD, STATX_SIZE, Ring, UringEngine

T = 5.0  # every wait is bounded: a bug fails, it does not hang


@pytest.fixture
def ring() -> Iterator[Ring]:
    r = Ring(32)
    yield r
    r.close()


@pytest.fixture
def engine() -> Iterator[UringEngine]:
    e = UringEngine(64)
    yield e
    e.close()


def take(r: Ring, n: int) -> dict[int, tuple[int, int]]:
    """Wait (bounded) for *n* CQEs; return user_data -> (res, flags)."""
    got = r.wait_cqes(n, timeout=T)
    assert len(got) == n, got
    return {ud: (res, fl) for ud, res, fl in got}


# --- unavailability ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "needle"),
    [(errno.ENOSYS, "ENOSYS: "), (errno.EPERM, "EPERM: ")],
)
def test_setup_failure_names_the_cause(err: int, needle: str) -> None:
    def failing(entries: int, params: int) -> int:
        return -err

    with pytest.raises(OSError) as info:
        Ring(4, _setup=failing)
    assert info.value.errno == err
    assert needle in str(info.value)
    reason = uring.unavailable_reason(_setup=failing)
    assert reason is not None and reason.startswith(needle)
    if err == errno.EPERM:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            disabled = f.read().strip()
        if disabled == "2":
            assert reason == "EPERM: kernel.io_uring_disabled=2"
        elif disabled == "0":
            assert "seccomp" in reason
    assert uring.unavailable_reason() is None  # the real probe is unaffected


def test_setup_reports_features_and_sizes(ring: Ring) -> None:
    assert ring.sq_entries == 32 and ring.cq_entries == 64
    for feat in (abi.IORING_FEAT_NODROP, abi.IORING_FEAT_EXT_ARG, abi.IORING_FEAT_SINGLE_MMAP):
        assert ring.features & feat
    assert not ring.flags & abi.IORING_SETUP_SQPOLL
    assert ring.sq_space_left() == 32 and ring.sq_ready() == 0 and ring.cq_ready() == 0
    assert stat.S_ISREG(os.fstat(ring.fileno()).st_mode) is False


def test_sqpoll_on_request(data_fd: int) -> None:
    try:
        r = Ring(4, abi.IORING_SETUP_SQPOLL, sq_thread_idle=1)
    except PermissionError as e:  # pragma: no cover - old kernels: CAP_SYS_ADMIN
        pytest.skip(f"SQPOLL not permitted: {e}")
    with r:
        assert r.flags & abi.IORING_SETUP_SQPOLL
        bufs = [bytearray(8) for _ in range(10)]
        for i, b in enumerate(bufs):  # more than the SQ holds: waits for room
            r.prep_read(data_fd, b, i * 4096, user_data=i)
        r.submit()
        got = take(r, 10)
        assert all(got[i] == (8, 0) for i in range(10))
        assert all(b == pattern(10 * 4096)[i * 4096 : i * 4096 + 8] for i, b in enumerate(bufs))
        wait_until(lambda: sq_thread_sleeps(r), T, "the SQ thread asleep")  # idle after 1 ms
        r.prep_nop(user_data=99)  # the thread sleeps: submit must wake it
        r.submit_and_wait(1, timeout=T)
        assert take(r, 1) == {99: (0, 0)}
    eng = UringEngine(4, setup_flags=abi.IORING_SETUP_SQPOLL)
    with eng:
        ops = [Operation(OpCode.NOP, -1) for _ in range(20)]
        eng.submit(ops)
        reap_until(eng, ops)
        assert all(op.result == 0 for op in ops)


def test_setup_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Ring(0)
    with pytest.raises(ValueError):
        Ring(4, cq_entries=0)
    with pytest.raises(OSError) as info:
        Ring(1 << 20)  # beyond IORING_MAX_ENTRIES without CLAMP
    assert info.value.errno == errno.EINVAL


def test_no_fd_or_mapping_leak() -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def maps() -> int:
        with open("/proc/self/maps") as f:
            return sum("io_uring" in line or "anon_inode" in line for line in f)

    before = fds(), maps()
    for _ in range(20):
        with Ring(8) as r:
            r.prep_nop()
            r.submit()
        UringEngine(8).close()
    assert (fds(), maps()) == before


def test_probe(ring: Ring) -> None:
    ops = ring.probe()
    for op in (abi.IORING_OP_NOP, abi.IORING_OP_READ, abi.IORING_OP_ASYNC_CANCEL):
        assert op in ops
        assert ring.opcode_supported(op)
    assert not ring.opcode_supported(255)


# --- prep helpers --------------------------------------------------------------------


def test_nop_and_peek(ring: Ring) -> None:
    assert ring.peek_cqe() is None
    ring.prep_nop(user_data=7)
    assert ring.sq_ready() == 1
    assert ring.submit() == 1
    assert ring.peek_cqe() == (7, 0, 0)
    assert ring.peek_cqe() is None


def test_read_write_file(ring: Ring, data_fd: int) -> None:
    ring.prep_write(data_fd, b"hello io_uring", 4096, user_data=1)
    ring.submit()
    assert take(ring, 1) == {1: (14, 0)}
    buf = bytearray(14)
    ring.prep_read(data_fd, buf, 4096, user_data=2)
    ring.submit()
    assert take(ring, 1) == {2: (14, 0)}
    assert buf == b"hello io_uring"
    # at the file position (-1)
    os.lseek(data_fd, 0, os.SEEK_SET)
    head = bytearray(10)
    ring.prep_read(data_fd, head, -1, user_data=3)
    ring.submit()
    assert take(ring, 1) == {3: (10, 0)}
    assert head == pattern(10)
    assert os.lseek(data_fd, 0, os.SEEK_CUR) == 10


def test_errors_arrive_as_negative_res(ring: Ring, data_fd: int) -> None:
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    ring.prep_read(r, bytearray(4), 0, user_data=1)  # closed fd
    ring.prep_read(data_fd, bytearray(4), -5, user_data=2)  # bad offset
    ring.prep_nop(user_data=3)  # SUBMIT_ALL: the batch goes on after errors
    assert ring.submit() == 3
    got = take(ring, 3)
    assert got[1][0] == -errno.EBADF
    assert got[2][0] == -errno.EINVAL
    assert got[3][0] == 0


def test_readv_writev(ring: Ring, data_fd: int) -> None:
    ring.prep_writev(data_fd, [b"abc", bytearray(b"defg"), memoryview(b"hi")], 100, user_data=1)
    ring.submit()
    assert take(ring, 1) == {1: (9, 0)}
    a, b = bytearray(4), bytearray(5)
    ring.prep_readv(data_fd, [a, b], 100, user_data=2)
    ring.submit()
    assert take(ring, 1) == {2: (9, 0)}
    assert bytes(a + b) == b"abcdefghi"


def test_fsync_and_datasync(ring: Ring, data_fd: int) -> None:
    ring.prep_fsync(data_fd, user_data=1)
    ring.prep_fsync(data_fd, datasync=True, user_data=2)
    ring.prep_fsync(-1, user_data=3)
    ring.submit()
    assert take(ring, 3) == {1: (0, 0), 2: (0, 0), 3: (-errno.EBADF, 0)}


def test_poll_add_on_pipe(ring: Ring, pipe: tuple[int, int]) -> None:
    r, w = pipe
    ring.prep_poll_add(r, select.POLLIN, user_data=5)
    ring.submit()
    assert ring.wait_cqe(timeout=0.05) is None  # nothing to read yet
    os.write(w, b"x")
    ud, res, _ = ring.wait_cqe(timeout=T) or (0, 0, 0)
    assert ud == 5 and res & select.POLLIN


def test_timeout(ring: Ring) -> None:
    t0 = time.monotonic()
    ring.prep_timeout(0.02, user_data=1)
    ring.submit()
    assert take(ring, 1) == {1: (-errno.ETIME, 0)}
    assert time.monotonic() - t0 >= 0.015
    # with a count: completes (res 0) as soon as one other CQE was posted
    ring.prep_timeout(60, count=1, user_data=2)
    ring.prep_nop(user_data=3)
    ring.submit()
    assert take(ring, 2) == {2: (0, 0), 3: (0, 0)}
    with pytest.raises(ValueError):
        ring.prep_timeout(-1)


def test_path_operations(ring: Ring, tmp_path: Path) -> None:
    d = tmp_path / "dir"
    ring.prep_mkdirat(AT_FDCWD, d, 0o755, user_data=1)
    ring.submit()
    assert take(ring, 1) == {1: (0, 0)}
    assert d.is_dir()

    ring.prep_openat(AT_FDCWD, d / "f", os.O_CREAT | os.O_RDWR, 0o644, user_data=2)
    ring.submit()
    ((res, _),) = take(ring, 1).values()
    assert res >= 0
    fd = res
    try:
        ring.prep_fallocate(fd, 0, 0, 65536, user_data=3)
        ring.submit()
        assert take(ring, 1) == {3: (0, 0)}
        assert os.fstat(fd).st_size == 65536
        sx = bytearray(STATX_SIZE)
        ring.prep_statx(AT_FDCWD, d / "f", 0, 0xFFF, sx, user_data=4)
        ring.submit()
        assert take(ring, 1) == {4: (0, 0)}
        assert int.from_bytes(sx[40:48], "little") == 65536  # stx_size
    finally:
        ring.prep_close(fd, user_data=5)
        ring.submit()
        assert take(ring, 1) == {5: (0, 0)}
    with pytest.raises(OSError):
        os.fstat(fd)

    ring.prep_renameat(AT_FDCWD, d / "f", AT_FDCWD, d / "g", user_data=6)
    ring.submit()
    assert take(ring, 1) == {6: (0, 0)}
    assert (d / "g").exists() and not (d / "f").exists()
    ring.prep_unlinkat(AT_FDCWD, d / "g", user_data=7)
    ring.prep_openat(AT_FDCWD, d / "missing", os.O_RDONLY, user_data=8)
    ring.submit()
    assert take(ring, 2) == {7: (0, 0), 8: (-errno.ENOENT, 0)}
    ring.prep_unlinkat(AT_FDCWD, d, 0x200, user_data=9)  # AT_REMOVEDIR
    ring.submit()
    assert take(ring, 1) == {9: (0, 0)}
    assert not d.exists()


def _slots_open(ring: Ring) -> list[str]:
    """The ring's registered file slots in use, as /proc/self/fdinfo lists them."""
    with open(f"/proc/self/fdinfo/{ring.fd}") as f:
        return [ln.split()[0] for ln in f if ln.startswith(" ") and ln.split()[0][:-1].isdigit()]


def test_direct_descriptors(ring: Ring, data_path: Path) -> None:
    """openat into a file slot, a linked read on it, a close of the slot: one
    submission, no fd in the process; a failed open cancels what is linked
    after it; closing an empty slot is EBADF."""
    ring.register_files([-1] * 4)
    fds = set(os.listdir("/proc/self/fd"))
    buf = bytearray(4096)
    ring.prep_openat_direct(
        AT_FDCWD, data_path, os.O_RDONLY, 0, 2, user_data=1, sqe_flags=abi.IOSQE_IO_LINK
    )
    ring.prep_read(2, buf, 0, user_data=2, sqe_flags=abi.IOSQE_FIXED_FILE)
    ring.submit()
    assert take(ring, 2) == {1: (0, 0), 2: (4096, 0)}
    assert bytes(buf) == pattern(4096)
    assert _slots_open(ring) == ["2:"]
    assert set(os.listdir("/proc/self/fd")) == fds
    ring.prep_close_direct(2, user_data=3)
    ring.submit()
    assert take(ring, 1) == {3: (0, 0)}
    assert _slots_open(ring) == []
    ring.prep_close_direct(2, user_data=4)
    ring.submit()
    assert take(ring, 1) == {4: (-errno.EBADF, 0)}

    ring.prep_openat_direct(
        AT_FDCWD, data_path.parent / "missing", os.O_RDONLY, 0, 1, user_data=5,
        sqe_flags=abi.IOSQE_IO_LINK,
    )  # fmt: skip
    ring.prep_read(1, buf, 0, user_data=6, sqe_flags=abi.IOSQE_FIXED_FILE)
    ring.submit()
    assert take(ring, 2) == {5: (-errno.ENOENT, 0), 6: (-errno.ECANCELED, 0)}
    ring.prep_openat_direct(AT_FDCWD, data_path, os.O_RDONLY | os.O_CLOEXEC, 0, 1, user_data=7)
    ring.submit()
    assert take(ring, 1) == {7: (-errno.EINVAL, 0)}  # O_CLOEXEC: refused
    assert _slots_open(ring) == []


def test_socket_read_write(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        buf = bytearray(5)
        ring.prep_read(a.fileno(), buf, -1, user_data=1)
        ring.prep_write(b.fileno(), b"hello", -1, user_data=2)
        ring.submit()
        assert take(ring, 2) == {1: (5, 0), 2: (5, 0)}
        assert buf == b"hello"


def test_bad_input_before_the_kernel(ring: Ring, data_fd: int) -> None:
    with pytest.raises(TypeError):
        ring.prep_read(data_fd, b"read-only", 0)
    with pytest.raises(TypeError):
        ring.prep_write(data_fd, 12345, 0)
    with pytest.raises(ValueError):
        ring.prep_openat(AT_FDCWD, "a\0b", os.O_RDONLY)
    with pytest.raises(ValueError):
        ring.prep_statx(AT_FDCWD, "/", 0, 0xFFF, bytearray(10))
    with pytest.raises(ValueError):
        ring.prep_readv(data_fd, [bytearray(1)] * 1025, 0)
    assert ring.sq_ready() == 0  # nothing was queued
    buf = bytearray(4)
    r, w = os.pipe()
    try:
        ring.prep_read(r, buf, -1, user_data=9)
        with pytest.raises(ValueError):  # same user_data while its buffer is held
            ring.prep_read(r, bytearray(4), -1, user_data=9)
        ring.submit()
        os.write(w, b"abcd")
        assert take(ring, 1) == {9: (4, 0)}
    finally:
        os.close(r)
        os.close(w)


def test_closed_ring_refuses() -> None:
    r = Ring(4)
    r.close()
    r.close()  # idempotent
    assert r.closed
    with pytest.raises(OSError) as info:
        r.prep_nop()
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError):
        r.peek_cqe()


# --- batches, waits, overflow --------------------------------------------------------


def test_batch_submit_and_peek_into_preallocated_list(ring: Ring) -> None:
    for i in range(30):
        ring.prep_nop(user_data=i)
    enters = ring.statistics()["enter"]
    assert ring.submit() == 30
    assert ring.statistics()["enter"] == enters + 1  # one syscall for the batch
    out: list[tuple[int, int, int]] = []
    assert ring.peek_batch(out, 10) is out and len(out) == 10
    ring.peek_batch(out)
    assert sorted(ud for ud, _, _ in out) == list(range(30))
    assert ring.peek_batch([]) == []


def test_submit_and_wait(ring: Ring, pipe: tuple[int, int]) -> None:
    r, w = pipe
    buf = bytearray(3)
    ring.prep_read(r, buf, -1, user_data=1)
    t0 = time.monotonic()
    assert ring.submit_and_wait(1, timeout=0.05) == 1
    assert time.monotonic() - t0 >= 0.04 and ring.cq_ready() == 0
    os.write(w, b"xyz")
    ring.prep_nop(user_data=2)
    ring.submit_and_wait(2, timeout=T)
    assert take(ring, 2) == {1: (3, 0), 2: (0, 0)}


def test_wait_cqe_timeout(ring: Ring) -> None:
    t0 = time.monotonic()
    assert ring.wait_cqe(timeout=0.05) is None
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 2
    assert ring.wait_cqe(timeout=0) is None


def test_wait_cqe_survives_signals(ring: Ring) -> None:
    import signal

    hits: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda s, f: hits.append(s))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        t0 = time.monotonic()
        assert ring.wait_cqe(timeout=0.15) is None  # EINTR retried, timeout kept
        assert time.monotonic() - t0 >= 0.14
        assert hits == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_cq_overflow_loses_nothing_with_nodrop() -> None:
    with Ring(2, cq_entries=2) as r:
        assert r.cq_entries == 2
        for i in range(64):
            r.prep_nop(user_data=i)  # a full SQ is submitted automatically
        r.submit()
        assert r.cq_ready() == 2  # the rest waits in the kernel's overflow list
        assert r.cq_has_overflow()
        got: list[tuple[int, int, int]] = []
        for _ in range(200):
            if len(got) >= 64:
                break
            r.peek_batch(got)
        assert [ud for ud, _, _ in got] == list(range(64))  # none lost, in order
        assert r.statistics()["overflow_flush"] > 0
        assert r.cq_overflow == 0


# --- cancel --------------------------------------------------------------------------


def test_cancel_pending_pipe_read_two_cqes(ring: Ring, pipe: tuple[int, int]) -> None:
    r, w = pipe
    buf = bytearray(8)
    ring.prep_read(r, buf, -1, user_data=1)
    ring.submit()
    assert not resizable(buf)  # pinned
    ring.prep_cancel(1, user_data=2)
    ring.submit()
    order: list[int] = []
    while len(order) < 2:
        cqe = ring.wait_cqe(timeout=T)
        assert cqe is not None
        ud, res, _ = cqe
        order.append(ud)
        if ud == 2:
            assert res == 0  # found and cancelled
            if 1 not in order:
                assert not resizable(buf)  # the cancel's CQE releases nothing
        else:
            assert res in (-errno.ECANCELED, -errno.EINTR)
    assert sorted(order) == [1, 2]
    assert resizable(buf)  # released with the target's own CQE
    # the data written later is not swallowed
    os.write(w, b"data")
    assert os.read(r, 4) == b"data"


def test_cancel_completed_request_is_enoent(ring: Ring) -> None:
    ring.prep_nop(user_data=1)
    ring.submit()
    assert take(ring, 1) == {1: (0, 0)}
    ring.prep_cancel(1, user_data=2)
    ring.submit()
    assert take(ring, 1) == {2: (-errno.ENOENT, 0)}
    assert ring.sync_cancel(1) == -errno.ENOENT


def test_cancel_by_fd_and_all(ring: Ring, pipe: tuple[int, int]) -> None:
    r, _w = pipe
    r2, w2 = os.pipe()
    try:
        bufs = [bytearray(1) for _ in range(4)]
        for i, b in enumerate(bufs[:3]):
            ring.prep_read(r, b, -1, user_data=10 + i)
        ring.prep_read(r2, bufs[3], -1, user_data=20)
        ring.submit()
        ring.prep_cancel_fd(r, flags=abi.IORING_ASYNC_CANCEL_ALL, user_data=1)
        ring.submit()
        got = take(ring, 4)
        assert got[1] == (3, 0)  # three cancelled
        assert all(got[10 + i][0] == -errno.ECANCELED for i in range(3))
        ring.prep_cancel_all(user_data=2)
        ring.submit()
        got = take(ring, 2)
        assert got == {2: (1, 0), 20: (-errno.ECANCELED, 0)}
        assert all(resizable(b) for b in bufs)
    finally:
        os.close(r2)
        os.close(w2)


def test_sync_cancel(ring: Ring, pipe: tuple[int, int]) -> None:
    r, _ = pipe
    buf = bytearray(4)
    ring.prep_read(r, buf, -1, user_data=5)
    ring.submit()
    assert ring.sync_cancel(5) == 0
    assert take(ring, 1) == {5: (-errno.ECANCELED, 0)}
    assert ring.sync_cancel(5) == -errno.ENOENT
    ring.prep_read(r, buf, -1, user_data=6)
    ring.submit()
    assert ring.sync_cancel(fd=r) == 0
    assert take(ring, 1) == {6: (-errno.ECANCELED, 0)}


def test_sync_cancel_of_a_running_read_says_so(ring: Ring, tmp_path: Path) -> None:
    size = 64 << 20
    path = tmp_path / "big"
    path.write_bytes(os.urandom(1 << 20) * 64)
    fd = os.open(path, os.O_RDONLY)
    try:
        big = bytearray(size)
        os.preadv(fd, [big], 0)  # page-cached: the copy itself takes a few ms
        ring.prep_read(fd, big, 0, user_data=1, sqe_flags=abi.IOSQE_ASYNC)
        ring.submit()
        ret = ring.sync_cancel(1)
        ((res, _),) = take(ring, 1).values()
        if ret in (-errno.ETIME, -errno.EALREADY):  # taken by an io-wq worker
            # It runs to the end, unless the worker saw the cancel mark just
            # before it began the read: then it completes with ECANCELED.
            assert res in (size, -errno.ECANCELED)
        elif ret == 0:  # still queued for a worker: really cancelled
            assert res == -errno.ECANCELED
        else:  # already finished
            assert ret == -errno.ENOENT and res == size
    finally:
        os.close(fd)


def test_closing_the_fd_does_not_cancel(ring: Ring) -> None:
    r, w = os.pipe()
    try:
        buf = bytearray(3)
        ring.prep_read(r, buf, -1, user_data=1)
        ring.submit()
        os.close(r)
        assert ring.wait_cqe(timeout=0.05) is None  # still pending
        os.write(w, b"abc")
        assert take(ring, 1) == {1: (3, 0)} and buf == b"abc"
    finally:
        os.close(w)


# --- register ------------------------------------------------------------------------


def test_registered_buffers_o_direct(ring: Ring, direct_fd: int) -> None:
    mem = xaio.aligned_buffer(8192)
    ring.register_buffers([mem])
    try:
        mem[:4096] = pattern(4096, seed=7)
        ring.prep_write_fixed(direct_fd, mem[:4096], 8192, 0, user_data=1)
        ring.submit()
        assert take(ring, 1) == {1: (4096, 0)}
        ring.prep_read_fixed(direct_fd, mem[4096:], 8192, 0, user_data=2)
        ring.submit()
        assert take(ring, 1) == {2: (4096, 0)}
        assert bytes(mem[4096:]) == pattern(4096, seed=7)
        ring.prep_read_fixed(direct_fd, mem[4096:], 0, 0, user_data=3)  # original data
        ring.submit()
        assert take(ring, 1) == {3: (4096, 0)}
        assert bytes(mem[4096:]) == pattern(4096)
        with pytest.raises(ValueError):
            ring.prep_read_fixed(direct_fd, bytearray(4096), 0, 0)  # not inside
        with pytest.raises(ValueError):
            ring.prep_read_fixed(direct_fd, mem[:4096], 0, 1)  # no such index
    finally:
        ring.unregister_buffers()
    with pytest.raises(OSError) as info:
        ring.unregister_buffers()
    assert info.value.errno == errno.ENXIO


def test_o_direct_plain_read(ring: Ring, direct_fd: int) -> None:
    mem = xaio.aligned_buffer(4096)
    ring.prep_read(direct_fd, mem, 4096 * 3, user_data=1)
    ring.submit()
    assert take(ring, 1) == {1: (4096, 0)}
    assert bytes(mem) == pattern(4 * 4096)[3 * 4096 :]


def test_registered_files(ring: Ring, data_fd: int) -> None:
    ring.register_files([-1, data_fd])
    try:
        buf = bytearray(16)
        ring.prep_read(1, buf, 0, user_data=1, sqe_flags=abi.IOSQE_FIXED_FILE)
        ring.submit()
        assert take(ring, 1) == {1: (16, 0)}
        assert buf == pattern(16)
    finally:
        ring.unregister_files()


def test_registered_eventfd(ring: Ring, eventfd: int) -> None:
    ring.register_eventfd(eventfd)
    with pytest.raises(OSError) as info:
        ring.register_eventfd(eventfd)
    assert info.value.errno == errno.EBUSY
    assert select.select([eventfd], [], [], 0)[0] == []
    ring.prep_nop(user_data=1)
    ring.submit()
    assert select.select([eventfd], [], [], T)[0] == [eventfd]
    assert os.eventfd_read(eventfd) >= 1
    ring.unregister_eventfd()
    take(ring, 1)


# --- fork and close ------------------------------------------------------------------


def test_fork_child_refuses_parent_ring(pipe: tuple[int, int]) -> None:
    r, w = pipe
    ring = Ring(8)
    eng = UringEngine(8)
    buf = bytearray(5)
    ring.prep_read(r, buf, -1, user_data=1)
    ring.submit()
    r2, w2 = os.pipe()
    op = Operation(OpCode.READ, r2, [bytearray(1)])
    eng.submit([op])

    def child() -> int:
        codes = []
        for call in (
            ring.peek_cqe,
            ring.prep_nop,
            ring.submit,
            lambda: ring.wait_cqe(0),
            lambda: eng.reap(0),
            lambda: eng.submit([Operation(OpCode.NOP, -1)]),
            lambda: eng.cancel(op),
        ):
            try:
                call()
                codes.append(0)
            except OSError as e:
                codes.append(e.errno or 0)
        ring.close()  # drops the child's copies only
        eng.close()
        return 0 if codes == [errno.EINVAL] * 7 else 2

    try:
        assert in_child(child) == 0
        # the parent's ring and engine still work, nothing was stolen
        os.write(w, b"hello")
        assert take(ring, 1) == {1: (5, 0)} and buf == b"hello"
        os.write(w2, b"!")
        deadline = time.monotonic() + T
        while not op.done and time.monotonic() < deadline:
            eng.reap(0.1)
        assert op.result == 1
    finally:
        ring.close()
        eng.close()
        os.close(r2)
        os.close(w2)


def test_close_with_pending_read_returns_and_releases(pipe: tuple[int, int]) -> None:
    r, _w = pipe
    ring = Ring(8)
    buf = bytearray(8)
    ring.prep_read(r, buf, -1, user_data=1)
    ring.submit()
    assert not resizable(buf)
    t0 = time.monotonic()
    ring.close()
    assert time.monotonic() - t0 < T
    assert resizable(buf)


def test_unclosed_ring_closes_even_when_the_warning_is_an_error() -> None:
    import warnings

    r = Ring(4)
    fd = r.fd
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with pytest.raises(ResourceWarning):
            r.__del__()  # what the garbage collector calls; the warning raises
    assert r.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_unclosed_ring_warns() -> None:
    r = Ring(4)
    with pytest.warns(ResourceWarning):
        del r
        gc.collect()


# --- the engine ----------------------------------------------------------------------


def test_engine_every_opcode(engine: UringEngine, data_fd: int, pipe: tuple[int, int]) -> None:
    _r, w = pipe
    out = bytearray(100)
    a, b = bytearray(3), bytearray(4)
    done: list[Operation] = []
    ops = [
        Operation(OpCode.WRITE, data_fd, [b"0123456789"], 500_000, on_done=done.append),
        Operation(OpCode.WRITEV, data_fd, [b"abc", b"defg"], 600_000, on_done=done.append),
        Operation(OpCode.FSYNC, data_fd, on_done=done.append),
        Operation(OpCode.FDATASYNC, data_fd, on_done=done.append),
        Operation(OpCode.NOP, -1, on_done=done.append),
        Operation(OpCode.POLL, w, flags=select.POLLOUT, on_done=done.append),
    ]
    assert engine.submit(ops) == 6
    reap_until(engine, ops)
    assert [op.result for op in ops][:5] == [10, 7, 0, 0, 0]
    assert ops[5].result is not None and ops[5].result & select.POLLOUT
    assert len(done) == 6 and all(op.state is OpState.DONE for op in ops)
    reads = [
        Operation(OpCode.READ, data_fd, [out], 500_000),
        Operation(OpCode.READV, data_fd, [a, b], 600_000),
    ]
    engine.submit(reads)
    reap_until(engine, reads)
    assert reads[0].result == 100 and out[:10] == b"0123456789"
    assert reads[1].result == 7 and a + b == b"abcdefg"
    assert reads[0].value() == 100


def test_engine_is_an_engine(engine: UringEngine) -> None:
    from xaio.engine import Engine

    assert isinstance(engine, Engine) and engine.name == "uring"
    assert not engine.closed and engine.fileno() >= 0
    assert engine.ring.opcode_supported(abi.IORING_OP_READ)


def test_engine_bad_arguments_take_nothing(engine: UringEngine) -> None:
    good = Operation(OpCode.NOP, -1)
    for bad in (
        Operation(OpCode.READ, "3", [bytearray(1)], 0),  # type: ignore[arg-type]
        Operation(OpCode.READ, 3, [bytearray(1)], 0.5),  # type: ignore[arg-type]
        Operation(OpCode.READ, 1 << 40, [bytearray(1)], 0),
        Operation(OpCode.WRITE, 3, [], 0),
    ):
        with pytest.raises((TypeError, ValueError)):
            engine.submit([good, bad])
        assert good.state is OpState.QUEUED
    assert engine.statistics()["in_flight"] == 0


def test_engine_bad_batch_larger_than_the_sq_takes_nothing(data_fd: int) -> None:
    """A batch with no room in the SQ is checked before any SQE is written
    (its SQEs reach the kernel midway, so nothing could be taken back)."""
    with UringEngine(4) as eng:
        good = [Operation(OpCode.READ, data_fd, [bytearray(4)], 4 * i) for i in range(9)]
        bad = Operation(OpCode.READ, data_fd, [bytearray(4)], "0")  # type: ignore[arg-type]
        enters = eng.statistics()["ring"]["enter"]
        with pytest.raises(TypeError, match="offset"):
            eng.submit([*good, bad])
        assert eng.statistics()["ring"]["enter"] == enters
        assert all(op.state is OpState.QUEUED for op in good)
        assert eng.submit(good) == 9
        reap_until(eng, good)
        assert [op.result for op in good] == [4] * 9


def test_engine_bad_operation_midway_is_taken_back(engine: UringEngine, data_fd: int) -> None:
    """The one-pass submit writes SQEs as it checks: a bad operation after
    good ones takes those back (keys freed, SQ tail restored), so the next
    batch's SQEs are the only ones the kernel sees."""
    good = [Operation(OpCode.READV, data_fd, [bytearray(3), bytearray(5)], 0) for _ in range(5)]
    dup = [*good[:3], good[1]]
    with pytest.raises(RuntimeError, match="twice"):
        engine.submit(dup)
    assert engine.ring.sq_ready() == 0 and engine.statistics()["in_flight"] == 0
    assert all(op.key == -1 and op.state is OpState.QUEUED for op in good)
    assert engine.submit(good) == 5
    reap_until(engine, good)
    assert [op.result for op in good] == [8] * 5
    assert engine.statistics()["submitted"] == 5


def test_engine_register_buffers_edges(engine: UringEngine, pipe: tuple[int, int]) -> None:
    """Registered buffers: a read-only one is refused, a second registration is
    EBUSY, a buffer that starts at a registered one but is longer is sent as a
    plain read, a read in flight survives unregistering, and close gives the
    memory back."""
    with pytest.raises(TypeError):
        engine.register_buffers([b"read-only"])
    mem = bytearray(8192)
    view = memoryview(mem)
    assert engine.register_buffers([view[:4096]])
    with pytest.raises(OSError) as e:
        engine.register_buffers([bytearray(10)])
    assert e.value.errno == errno.EBUSY
    r, w = pipe
    os.write(w, b"x" * 8192)
    longer = Operation(OpCode.READ, r, [view], -1)  # 8 KiB from the 4 KiB buffer's start
    engine.submit([longer])
    reap_until(engine, [longer])
    assert longer.result == 8192 and engine.statistics()["fixed"] == 0
    inner = Operation(OpCode.READ, r, [view[100:200]], -1)  # blocks: the pipe is empty
    engine.submit([inner])
    assert engine.statistics()["fixed"] == 1
    engine.unregister_buffers()
    os.write(w, b"hello")
    reap_until(engine, [inner])
    assert inner.result == 5 and mem[100:105] == b"hello"
    assert engine.register_buffers([mem])  # registering again after unregistering
    del view, longer, inner
    engine.close()
    with pytest.raises(EngineClosedError):
        engine.register_buffers([bytearray(1)])
    engine.unregister_buffers()  # closed: nothing to undo
    assert resizable(mem)


def test_engine_port_slots_fixed_and_plain(
    engine: UringEngine, data_fd: int, data_path: Path
) -> None:
    """A BatchPort's reads and writes on an engine with a registered buffer:
    slots inside it (the _FIXED opcodes) and outside it each move the bytes
    os.pread/os.pwrite move, at their own offsets."""
    mem = bytearray(8192)
    assert engine.register_buffers([mem])
    other = bytearray(4096)
    data = bytearray(b"p" * 4096)
    mem[4096:] = b"f" * 4096
    views = [
        (ctypes.c_char * 4096).from_buffer(mem),  # fixed read
        (ctypes.c_char * 4096).from_buffer(other),  # plain read
        (ctypes.c_char * 4096).from_buffer(mem, 4096),  # fixed write
        (ctypes.c_char * 4096).from_buffer(data),  # plain write
    ]
    landed: dict[int, int] = {}
    port = engine.batch_port(lambda slots, results: landed.update(zip(slots, results, strict=True)))
    for s, (offset, write) in enumerate(
        [(8192, False), (20480, False), (40960, True), (45056, True)]
    ):
        assert port.grow() == s
        port.fds[s] = data_fd
        port.holders[s] = views[s]
        port.addresses[s] = ctypes.addressof(views[s])
        port.lengths[s] = 4096
        port.offsets[s] = offset
        port.writes[s] = write
    port.submit(range(4))
    wait_until(lambda: engine.reap(0.1) >= 0 and len(landed) == 4, what="the port's CQEs")
    assert landed == {0: 4096, 1: 4096, 2: 4096, 3: 4096}
    expected = pattern(1 << 20)
    assert mem[:4096] == expected[8192:12288] and other == expected[20480:24576]
    assert os.pread(data_fd, 8192, 40960) == b"f" * 4096 + b"p" * 4096
    del views
    port.close()


def test_engine_port_hands_a_batch_over_in_groups(engine: UringEngine, data_fd: int) -> None:
    """A port's submission of 20 reads enters the kernel once per group of
    eight, each group handed over as soon as it is written (the block layer
    holds one enter's requests until it returns: the device starts on the
    first group while the next is written and taken), and each read lands
    with the bytes os.pread reads."""
    bufs = [bytearray(512) for _ in range(20)]
    views = [(ctypes.c_char * 512).from_buffer(b) for b in bufs]
    landed: dict[int, int] = {}
    port = engine.batch_port(lambda slots, results: landed.update(zip(slots, results, strict=True)))
    for s, view in enumerate(views):
        assert port.grow() == s
        port.fds[s] = data_fd
        port.holders[s] = view
        port.addresses[s] = ctypes.addressof(view)
        port.lengths[s] = 512
        port.offsets[s] = s * 1024
        port.writes[s] = False
    enters = engine.statistics()["ring"]["enter"]
    port.submit(range(20))
    assert engine.statistics()["ring"]["enter"] - enters == 3  # 8 + 8 + 4
    wait_until(lambda: engine.reap(0.1) >= 0 and len(landed) == 20, what="the port's CQEs")
    assert landed == dict.fromkeys(range(20), 512)
    for s, b in enumerate(bufs):
        assert b == os.pread(data_fd, 512, s * 1024)
    del views
    port.close()


def test_engine_batch_larger_than_both_rings() -> None:
    with UringEngine(4) as eng:  # SQ 4, CQ 8: refills the SQ and overflows the CQ
        ops = [Operation(OpCode.NOP, -1) for _ in range(300)]
        enters = eng.statistics()["ring"]["enter"]
        assert eng.submit(ops) == 300
        assert eng.statistics()["ring"]["enter"] - enters <= 300 // 4 + 1
        reap_until(eng, ops)
        assert all(op.result == 0 for op in ops)
        assert eng.statistics()["in_flight"] == 0


def test_engine_callback_error_loses_and_repeats_nothing(engine: UringEngine) -> None:
    seen: list[Operation] = []

    def boom(op: Operation) -> None:
        seen.append(op)
        raise ZeroDivisionError

    ops = [Operation(OpCode.NOP, -1, on_done=boom if i == 1 else seen.append) for i in range(4)]
    engine.submit(ops)
    with pytest.raises(ZeroDivisionError):
        engine.reap(T)
    reap_until(engine, ops)
    assert sorted(map(id, seen)) == sorted(map(id, ops))  # each exactly once
    assert engine.statistics()["in_flight"] == 0


def test_engine_blocked_reaper_woken_by_other_threads_submit(
    engine: UringEngine, pipe: tuple[int, int]
) -> None:
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(engine.reap(T)))
    t.start()
    op = Operation(OpCode.NOP, -1)
    engine.submit([op])
    t.join(T)
    assert not t.is_alive() and got == [1] and op.result == 0


def test_engine_reap_survives_signals(engine: UringEngine) -> None:
    import signal

    hits: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda s, f: hits.append(s))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        t0 = time.monotonic()
        assert engine.reap(0.15) == 0
        assert time.monotonic() - t0 >= 0.14 and hits == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_engine_errors_never_raise(engine: UringEngine) -> None:
    op = Operation(OpCode.READ, 12345, [bytearray(4)], 0)
    engine.submit([op])
    reap_until(engine, [op])
    assert op.result == -errno.EBADF
    with pytest.raises(OSError) as info:
        op.value()
    assert info.value.errno == errno.EBADF
    with pytest.raises(RuntimeError):
        engine.submit([op])  # not QUEUED any more
    with pytest.raises(ValueError):
        engine.submit([Operation(OpCode.READ, 0, [bytearray(1), bytearray(1)], 0)])
    assert engine.statistics()["in_flight"] == 0


def test_engine_fileno_is_readable_when_completions_wait(
    engine: UringEngine, pipe: tuple[int, int]
) -> None:
    r, w = pipe
    fd = engine.fileno()
    op = Operation(OpCode.READ, r, [bytearray(3)])
    engine.submit([op])
    assert engine.reap(0) == 0
    assert select.select([fd], [], [], 0)[0] == []
    os.write(w, b"abc")
    assert select.select([fd], [], [], T)[0] == [fd]
    assert engine.reap(0) == 1 and op.result == 3
    # a reap that delivered leaves at most one spurious wake-up; the reap that
    # finds nothing clears the eventfd
    assert engine.reap(0) == 0
    assert select.select([fd], [], [], 0)[0] == []
    # and a completion arriving after that signals again: no lost wake-up
    op2 = Operation(OpCode.READ, r, [bytearray(3)])
    engine.submit([op2])
    os.write(w, b"def")
    assert select.select([fd], [], [], T)[0] == [fd]
    assert engine.reap(0) == 1 and op2.result == 3


def test_engine_reap_timeout(engine: UringEngine) -> None:
    t0 = time.monotonic()
    assert engine.reap(0.05) == 0
    assert 0.04 <= time.monotonic() - t0 < 2


@pytest.mark.parametrize("sync", [True, False], ids=["sync_cancel", "async_cancel_sqe"])
def test_engine_cancel_pending_read(engine: UringEngine, pipe: tuple[int, int], sync: bool) -> None:
    engine._sync_cancel = sync
    r, w = pipe
    buf = bytearray(4)
    op = Operation(OpCode.READ, r, [buf])
    engine.submit([op])
    assert engine.cancel(op) is CancelOutcome.CANCELED
    assert not op.done and not resizable(buf)  # pinned until reaped
    reap_until(engine, [op])
    assert op.result == -errno.ECANCELED and resizable(buf)
    assert engine.cancel(op) is CancelOutcome.DONE
    os.write(w, b"keep")
    assert os.read(r, 4) == b"keep"  # nothing swallowed


def test_engine_cancel_completed(engine: UringEngine, data_fd: int) -> None:
    op = Operation(OpCode.READ, data_fd, [bytearray(10)], 0)
    engine.submit([op])  # page-cached: completes inside the submit syscall
    assert engine.cancel(op) is CancelOutcome.DONE
    reap_until(engine, [op])
    assert op.result == 10
    stranger = Operation(OpCode.NOP, -1)
    assert engine.cancel(stranger) is CancelOutcome.DONE


def test_engine_threads_submit_while_one_reaps(engine: UringEngine, data_fd: int) -> None:
    n_threads, per = 4, 200
    done = threading.Semaphore(0)
    ops: list[Operation] = []
    lock = threading.Lock()

    def submitter() -> None:
        for i in range(per):
            op = Operation(OpCode.READ, data_fd, [bytearray(64)], (i % 256) * 4096)
            with lock:
                ops.append(op)
            engine.submit([op])
        done.release()

    threads = [threading.Thread(target=submitter) for _ in range(n_threads)]
    for t in threads:
        t.start()
    finished = 0
    delivered = 0
    deadline = time.monotonic() + T * 2
    while delivered < n_threads * per:
        assert time.monotonic() < deadline
        delivered += engine.reap(0.05)
        while done.acquire(blocking=False):
            finished += 1
    for t in threads:
        t.join(T)
    assert all(op.result == 64 for op in ops) and len(ops) == n_threads * per


def test_engine_close_cancels_and_releases(pipe: tuple[int, int]) -> None:
    r, _w = pipe
    eng = UringEngine(8)
    buf = bytearray(4)
    done: list[Operation] = []
    op = Operation(OpCode.READ, r, [buf], on_done=done.append)
    eng.submit([op])
    t0 = time.monotonic()
    eng.close()
    assert time.monotonic() - t0 < T
    assert eng.closed and done == [op] and op.result == -errno.ECANCELED
    assert resizable(buf)
    eng.close()  # idempotent
    with pytest.raises(EngineClosedError):
        eng.submit([Operation(OpCode.NOP, -1)])
    with pytest.raises(EngineClosedError):
        eng.fileno()
    assert eng.reap(0) == 0


def test_engine_close_drains_everything_even_if_a_callback_raises() -> None:
    eng = UringEngine(8)
    pipes = [os.pipe() for _ in range(3)]
    try:
        bufs = [bytearray(1) for _ in pipes]

        def boom(op: Operation) -> None:
            raise ZeroDivisionError

        ops = [
            Operation(OpCode.READ, r, [b], on_done=boom)
            for (r, _), b in zip(pipes, bufs, strict=True)
        ]
        eng.submit(ops)
        with pytest.raises(ZeroDivisionError):
            eng.close()
        assert eng.closed and all(op.result == -errno.ECANCELED for op in ops)
        assert all(resizable(b) for b in bufs)
        eng.close()  # idempotent, nothing left
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_engine_close_wakes_a_blocked_reaper() -> None:
    eng = UringEngine(8)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(eng.reap(None)))
    t.start()
    wait_blocked_in(URING_ENTER_SYSCALLS, eng.ring.fileno())  # it waits in the kernel
    eng.close()
    t.join(T)
    assert not t.is_alive() and result == [0]


def test_unclosed_engine_warns_and_closes(pipe: tuple[int, int]) -> None:
    r, _ = pipe
    eng = UringEngine(4)
    buf = bytearray(2)
    eng.submit([Operation(OpCode.READ, r, [buf])])
    with pytest.warns(ResourceWarning):
        del eng
        gc.collect()
    assert resizable(buf)


def test_engine_statistics(engine: UringEngine) -> None:
    engine.submit([Operation(OpCode.NOP, -1) for _ in range(5)])
    assert engine.reap(T) == 5
    s = engine.statistics()
    assert s["name"] == "uring" and s["submitted"] == 5 and s["completed"] == 5
    assert s["in_flight"] == 0 and s["sync_cancel"] is True


def test_kernel_cancels_waiting_requests_of_an_exited_submitter() -> None:
    """A documented io_uring fact (see the module essay): a request still
    waiting when the thread that submitted it exits is cancelled by the kernel,
    and its buffer stays pinned until that completion is reaped."""
    from xaio._ops import OpCode, Operation
    from xaio.uring import UringEngine

    eng = UringEngine(8)
    r, w = os.pipe()
    try:
        buf = bytearray(4)
        op = Operation(OpCode.READ, r, [buf], -1)
        tids: list[int] = []

        def submit_and_exit() -> None:
            tids.append(threading.get_native_id())
            eng.submit([op])

        t = threading.Thread(target=submit_and_exit)
        t.start()
        t.join(5)
        # join() returns before the kernel has finished the thread's exit: wait
        # until its task is gone from /proc
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/self/task/{tids[0]}"):
            assert time.monotonic() < deadline, "the thread never exited"
            time.sleep(0.001)
        # the request still waits; when data arrives, the kernel finds its
        # submitter gone and cancels it instead of consuming the data
        os.write(w, b"data")
        while not op.done and time.monotonic() < deadline + 5:
            eng.reap(0.5)
        assert op.result == -errno.ECANCELED
        assert os.read(r, 4) == b"data"  # nothing was consumed
        buf.append(0)  # released once reaped
    finally:
        eng.close()
        os.close(r)
        os.close(w)
