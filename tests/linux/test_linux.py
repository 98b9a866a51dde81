"""xaio.linux and xaio.libaio: SPEC §1.1, §1.2, §2 and §5, on the real kernel.

Errors are checked in both conventions through :func:`err`: the Python one must
raise OSError with the errno, the libaio one must return the negated errno.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import mmap
import os
import select
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import xaio
from tests.support import (
    GETEVENTS_SYSCALLS,
    aio_max_nr,
    aio_nr,
    in_child,
    own_aio_rings,
    pattern,
    wait_blocked_in,
)
from xaio import _syscall, libaio, linux
from xaio.linux import (
    IOCB_CMD_FDSYNC,
    IOCB_CMD_FSYNC,
    IOCB_CMD_NOOP,
    IOCB_CMD_POLL,
    IOCB_CMD_PREAD,
    RWF_NOWAIT,
    IOBatch,
    Iocb,
    IocbInFlightError,
    IOContext,
    _context,
    _iocb,
    io_cancel,
    io_destroy,
    io_getevents,
    io_pgetevents,
    io_setup,
    io_submit,
)

CONVENTIONS = ["linux", "libaio"]


def err(conv: str, name: str, *args: Any) -> int:
    """Call io_<name> in convention *conv*; it must fail; return the errno."""
    if conv == "linux":
        with pytest.raises(OSError) as info:
            getattr(linux, name)(*args)
        assert info.value.errno is not None
        assert info.value.strerror == os.strerror(info.value.errno)
        return info.value.errno
    ret = getattr(libaio, name)(*args)
    if isinstance(ret, tuple):
        assert ret[1] in (None, [])
        ret = ret[0]
    assert isinstance(ret, int) and ret < 0, ret
    return -ret


@pytest.fixture
def ctx() -> Iterator[IOContext]:
    c = io_setup(128)
    yield c
    if not c.closed:
        io_destroy(c)


def wait_events(c: IOContext, n: int, timeout: float = 5.0) -> list[linux.IOEvent]:
    events = io_getevents(c, n, n, timeout)
    assert len(events) == n, f"only {len(events)} of {n} events in {timeout}s"
    return events


# ---------------------------------------------------------------------------------
# io_setup (§2.2)
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize("nr", [0, -1, -(1 << 40)])
def test_setup_nonpositive_is_einval(conv: str, nr: int) -> None:
    assert err(conv, "io_setup", nr) == errno.EINVAL


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_setup_beyond_internal_limit_is_einval(conv: str) -> None:
    # checked before aio-max-nr: EINVAL even though it is also over aio-max-nr
    assert err(conv, "io_setup", 1 << 28) == errno.EINVAL


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_setup_beyond_aio_max_nr_is_eagain(conv: str) -> None:
    # aio-nr is system-wide: another process may free events between the
    # read and the call, and then the context fits; retry with a fresh count
    for _attempt in range(5):
        before = aio_nr()
        nr = aio_max_nr() - before + 1
        if nr >= 1 << 22:
            pytest.skip("aio-max-nr is so large that the internal limit comes first")
        if conv == "linux":
            try:
                c: IOContext | None = io_setup(nr)
            except OSError as e:
                assert e.errno == errno.EAGAIN, e
                return
            assert c is not None
            io_destroy(c)
        else:
            ret, c = libaio.io_setup(nr)
            if ret < 0:
                assert ret == -errno.EAGAIN and c is None, ret
                return
            assert c is not None
            assert libaio.io_destroy(c) == 0
        assert aio_nr() != before, f"io_setup({nr}) succeeded beyond aio-max-nr"
    pytest.fail(f"/proc/sys/fs/aio-nr kept changing: {before} -> {aio_nr()}")


def test_setup_type_errors() -> None:
    with pytest.raises(TypeError):
        io_setup("8")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        io_setup(8.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        libaio.io_setup(None)  # type: ignore[arg-type]


def test_libaio_queue_init() -> None:
    assert libaio.io_queue_init(0) == (-errno.EINVAL, None)
    assert libaio.io_queue_init(-5) == (-errno.EINVAL, None)
    ret, c = libaio.io_queue_init(4)
    assert ret == 0 and isinstance(c, IOContext)
    assert libaio.io_queue_release(c) == 0
    assert libaio.io_queue_release(c) == -errno.EINVAL


# ---------------------------------------------------------------------------------
# io_destroy (§2.1, the seed)
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_destroy_twice_is_einval(conv: str) -> None:
    c = io_setup(4)
    io_destroy(c)
    assert err(conv, "io_destroy", c) == errno.EINVAL
    assert err(conv, "io_destroy", c.id) == errno.EINVAL


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_destroy_invalid_raw_id_is_einval(conv: str) -> None:
    assert err(conv, "io_destroy", 12345) == errno.EINVAL
    assert err(conv, "io_destroy", 0) == errno.EINVAL


def test_destroy_by_raw_id_marks_the_object(data_fd: int) -> None:
    c = io_setup(4)
    io_destroy(c.id)
    assert c.closed
    with pytest.raises(OSError) as info:
        io_submit(c, [Iocb.pread(data_fd, bytearray(4), 0)])
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_use_after_destroy_is_einval(conv: str, data_fd: int) -> None:
    c = io_setup(4)
    io_destroy(c)
    assert err(conv, "io_submit", c, [Iocb.pread(data_fd, bytearray(4), 0)]) == errno.EINVAL
    assert err(conv, "io_submit", c, []) == errno.EINVAL
    assert err(conv, "io_getevents", c, 0, 1, 0) == errno.EINVAL
    assert err(conv, "io_cancel", c, Iocb()) == errno.EINVAL


def test_destroyed_context_never_reaches_a_reused_id(data_fd: int) -> None:
    """The kernel hands the same id to the next io_setup: the old object must
    refuse by itself instead of submitting into the new context."""
    old = io_setup(4)
    io_destroy(old)
    new = io_setup(4)
    try:
        with pytest.raises(OSError) as info:
            io_submit(old, [Iocb.pread(data_fd, bytearray(4), 0, data=1)])
        assert info.value.errno == errno.EINVAL
        assert io_getevents(new, 0, 4, 0) == []  # nothing leaked into the new one
        with pytest.raises(OSError):
            io_destroy(old)
        assert not new.closed  # destroying the stale object did not kill the new one
    finally:
        io_destroy(new)


def test_destroy_blocks_until_direct_reads_complete(direct_fd: int) -> None:
    """Destroy with O_DIRECT reads in flight: when it returns every buffer holds
    its data (it waited) and is never modified again."""
    expected = pattern(1 << 20)
    c = io_setup(256)
    bufs = [xaio.aligned_buffer(4096) for _ in range(256)]
    iocbs = [Iocb.pread(direct_fd, bufs[i], (i % 256) * 4096) for i in range(256)]
    submitted = 0
    while submitted < len(iocbs):
        submitted += io_submit(c, iocbs[submitted:])
    io_destroy(c)
    snapshot = [bytes(b) for b in bufs]
    for i, data in enumerate(snapshot):
        assert data == expected[i * 4096 : (i + 1) * 4096], i
    assert not any(x.in_flight for x in iocbs)  # pins released
    time.sleep(0.05)
    assert [bytes(b) for b in bufs] == snapshot


def test_destroy_wakes_a_thread_blocked_in_getevents(pipe: tuple[int, int]) -> None:
    c = io_setup(8)
    r, _ = pipe
    io_submit(c, [Iocb.poll(r, select.POLLIN)])  # something that never completes
    result: list[BaseException | list[Any]] = []
    entered = threading.Event()

    def waiter() -> None:
        entered.set()
        try:
            result.append(io_getevents(c, 1, 1, timeout=30))
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    entered.wait(5)
    wait_blocked_in(GETEVENTS_SYSCALLS)  # it waits in the kernel
    t0 = time.monotonic()
    io_destroy(c)  # cancels the poll, wakes the waiter
    t.join(10)
    assert not t.is_alive()
    assert time.monotonic() - t0 < 10
    (got,) = result
    if isinstance(got, list):
        # the cancelled poll's completion may be reaped before the wake-up
        assert len(got) == 1
    else:
        assert isinstance(got, OSError) and got.errno == errno.EINVAL


def test_aio_nr_returns_to_baseline() -> None:
    """Counted in this process's maps (each context maps its ring as
    ``/[aio]``): /proc/sys/fs/aio-nr is system-wide, and other processes move it."""
    base = own_aio_rings()
    ctxs = [io_setup(64) for _ in range(5)]
    assert own_aio_rings() == base + 5
    for c in ctxs:
        io_destroy(c)
    assert own_aio_rings() == base


@pytest.mark.slow
def test_ten_thousand_setup_destroy_cycles_never_eagain() -> None:
    """Each context reserves 256 events: were they not returned, aio-max-nr
    (65536 by default) would run out after a few hundred cycles.  io_destroy
    waits for an RCU grace period, so the cycles run in 40 threads.  What
    is left behind is counted in this process's maps, not in the system-wide
    aio-nr, which other processes move."""
    base = own_aio_rings()
    failures: list[BaseException] = []
    per_thread, nthreads = 250, 40

    def work() -> None:
        try:
            for _ in range(per_thread):
                c = io_setup(256)
                io_destroy(c)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures[:3]
    assert own_aio_rings() == base


def test_context_manager_destroys(data_fd: int) -> None:
    with io_setup(4) as c:
        buf = bytearray(5)
        io_submit(c, [Iocb.pread(data_fd, buf, 0)])
        wait_events(c, 1)
    assert c.closed
    with pytest.raises(OSError):
        io_destroy(c)


def test_garbage_collected_context_with_work_in_flight_warns_and_destroys(
    pipe: tuple[int, int],
) -> None:
    base = own_aio_rings()
    r, _ = pipe
    c = io_setup(16)
    io_submit(c, [Iocb.poll(r, select.POLLIN) for _ in range(3)])
    assert own_aio_rings() == base + 1
    with pytest.warns(ResourceWarning, match="3 requests in flight"):
        del c
        gc.collect()
    assert own_aio_rings() == base


# ---------------------------------------------------------------------------------
# io_submit (§2.3)
# ---------------------------------------------------------------------------------


def test_read_write_roundtrip(ctx: IOContext, data_fd: int) -> None:
    out = b"X" * 100
    buf = bytearray(100)
    io_submit(ctx, [Iocb.pwrite(data_fd, out, 5000, data=1)])
    (ev,) = wait_events(ctx, 1)
    assert (ev.data, ev.res, ev.res2) == (1, 100, 0)
    io_submit(ctx, [Iocb.pread(data_fd, buf, 5000, data=2)])
    (ev,) = wait_events(ctx, 1)
    assert ev.res == 100 and bytes(buf) == out


def test_vectored_roundtrip(ctx: IOContext, data_fd: int) -> None:
    io_submit(ctx, [Iocb.pwritev(data_fd, [b"ab", bytearray(b"cde"), memoryview(b"f")], 10)])
    assert wait_events(ctx, 1)[0].res == 6
    a, b = bytearray(4), bytearray(2)
    io_submit(ctx, [Iocb.preadv(data_fd, [a, b], 10)])
    assert wait_events(ctx, 1)[0].res == 6
    assert (bytes(a), bytes(b)) == (b"abcd", b"ef")


def test_fsync_and_fdsync(ctx: IOContext, data_fd: int) -> None:
    io_submit(ctx, [Iocb.fsync(data_fd, data=1), Iocb.fdsync(data_fd, data=2)])
    evs = wait_events(ctx, 2)
    assert sorted((e.data, e.res) for e in evs) == [(1, 0), (2, 0)]


def test_direct_io_with_aligned_buffer(ctx: IOContext, direct_fd: int) -> None:
    buf = xaio.aligned_buffer(8192, file=direct_fd)
    io_submit(ctx, [Iocb.pread(direct_fd, buf, 4096)])
    assert wait_events(ctx, 1)[0].res == 8192
    assert bytes(buf) == pattern(1 << 20)[4096 : 4096 + 8192]


def test_direct_io_unaligned_buffer_is_einval_in_event(ctx: IOContext, direct_fd: int) -> None:
    buf = xaio.aligned_buffer(4096 + 1)[1:]  # misaligned address
    io_submit(ctx, [Iocb.pread(direct_fd, buf, 0)])
    assert wait_events(ctx, 1)[0].res == -errno.EINVAL


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_submit_empty_list(conv: str, ctx: IOContext) -> None:
    assert {"linux": linux, "libaio": libaio}[conv].io_submit(ctx, []) == 0


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_submit_bad_fd_is_ebadf(conv: str, ctx: IOContext, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)
    os.close(fd)  # now closed
    assert err(conv, "io_submit", ctx, [Iocb.pread(fd, bytearray(1), 0)]) == errno.EBADF
    assert err(conv, "io_submit", ctx, [Iocb.pread(-1, bytearray(1), 0)]) == errno.EBADF


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_submit_wrong_access_mode_is_ebadf(conv: str, ctx: IOContext, data_path: Path) -> None:
    ro = os.open(data_path, os.O_RDONLY)
    wo = os.open(data_path, os.O_WRONLY)
    try:
        assert err(conv, "io_submit", ctx, [Iocb.pwrite(ro, b"x", 0)]) == errno.EBADF
        assert err(conv, "io_submit", ctx, [Iocb.pread(wo, bytearray(1), 0)]) == errno.EBADF
    finally:
        os.close(ro)
        os.close(wo)


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_submit_negative_offset_is_einval(conv: str, ctx: IOContext, data_fd: int) -> None:
    assert err(conv, "io_submit", ctx, [Iocb.pread(data_fd, bytearray(1), -1)]) == errno.EINVAL


@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize("opcode", [IOCB_CMD_NOOP, 4, 9, 100, 0xFFFF])
def test_submit_unknown_opcode_is_einval(
    conv: str, ctx: IOContext, data_fd: int, opcode: int
) -> None:
    x = Iocb()
    x.aio_lio_opcode = opcode
    x.aio_fildes = data_fd
    assert err(conv, "io_submit", ctx, [x]) == errno.EINVAL


@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize("opcode", [IOCB_CMD_FSYNC, IOCB_CMD_FDSYNC])
@pytest.mark.parametrize("field", ["aio_buf", "aio_nbytes", "aio_offset", "aio_rw_flags"])
def test_fsync_with_nonzero_field_is_einval(
    conv: str, ctx: IOContext, data_fd: int, opcode: int, field: str
) -> None:
    x = Iocb.fsync(data_fd) if opcode == IOCB_CMD_FSYNC else Iocb.fdsync(data_fd)
    value: Any = {"aio_buf": bytearray(8), "aio_nbytes": 8, "aio_offset": 8, "aio_rw_flags": 2}
    setattr(x, field, value[field])
    if field == "aio_buf":
        x.aio_nbytes = 0
    assert err(conv, "io_submit", ctx, [x]) == errno.EINVAL


@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize(
    "field,value",
    [("aio_nbytes", 1), ("aio_offset", 1), ("aio_rw_flags", 2), ("aio_buf", 1 << 16)],
)
def test_poll_with_bad_field_is_einval(
    conv: str, ctx: IOContext, pipe: tuple[int, int], field: str, value: int
) -> None:
    x = Iocb.poll(pipe[0], select.POLLIN)
    setattr(x, field, value)
    assert err(conv, "io_submit", ctx, [x]) == errno.EINVAL


def test_poll_on_regular_file_completes_at_once_readable(ctx: IOContext, data_fd: int) -> None:
    io_submit(ctx, [Iocb.poll(data_fd, select.POLLIN)])
    (ev,) = wait_events(ctx, 1, timeout=1)
    assert ev.res & select.POLLIN


def test_poll_on_pipe_waits_for_data(ctx: IOContext, pipe: tuple[int, int]) -> None:
    r, w = pipe
    io_submit(ctx, [Iocb.poll(r, select.POLLIN, data=5)])
    assert io_getevents(ctx, 1, 1, 0.05) == []
    os.write(w, b"x")
    (ev,) = wait_events(ctx, 1)
    assert ev.data == 5 and ev.res & select.POLLIN


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_unknown_rwf_flag_is_eopnotsupp(conv: str, ctx: IOContext, data_fd: int) -> None:
    x = Iocb.pread(data_fd, bytearray(1), 0, rw_flags=1 << 30)
    assert err(conv, "io_submit", ctx, [x]) == errno.EOPNOTSUPP


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_resfd_not_an_eventfd_is_einval(conv: str, ctx: IOContext, data_fd: int) -> None:
    x = Iocb.pread(data_fd, bytearray(1), 0, eventfd=data_fd)
    assert err(conv, "io_submit", ctx, [x]) == errno.EINVAL


def test_resfd_eventfd_counts_completions(ctx: IOContext, data_fd: int, eventfd: int) -> None:
    io_submit(ctx, [Iocb.pread(data_fd, bytearray(8), i * 8, eventfd=eventfd) for i in range(3)])
    deadline = time.monotonic() + 5
    total = 0
    while total < 3 and time.monotonic() < deadline:
        select.select([eventfd], [], [], 1)
        try:
            total += os.eventfd_read(eventfd)
        except BlockingIOError:
            pass
    assert total == 3
    assert len(wait_events(ctx, 3)) == 3


def test_libaio_set_eventfd(ctx: IOContext, data_fd: int, eventfd: int) -> None:
    x = Iocb()
    libaio.io_prep_pread(x, data_fd, bytearray(4), 4, 0)
    libaio.io_set_eventfd(x, eventfd)
    assert libaio.io_submit(ctx, [x]) == 1
    select.select([eventfd], [], [], 5)
    assert os.eventfd_read(eventfd) == 1
    assert libaio.io_getevents(ctx, 1, 1)[0] == 1


def test_ioprio_flag(ctx: IOContext, data_fd: int) -> None:
    # IOPRIO_CLASS_BE (2) << 13 | level 4
    x = Iocb.pread(data_fd, bytearray(4), 0, ioprio=(2 << 13) | 4)
    assert x.aio_flags & linux.IOCB_FLAG_IOPRIO
    io_submit(ctx, [x])
    assert wait_events(ctx, 1)[0].res == 4


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_ring_full_is_eagain(conv: str, pipe: tuple[int, int]) -> None:
    c = io_setup(1)
    try:
        accepted = 0
        for _ in range(10_000):
            try:
                io_submit(c, [Iocb.poll(pipe[0], select.POLLIN)])
            except OSError as e:
                assert e.errno == errno.EAGAIN
                break
            accepted += 1
        else:
            pytest.fail("the ring never filled")
        assert accepted >= 1
        assert err(conv, "io_submit", c, [Iocb.poll(pipe[0], select.POLLIN)]) == errno.EAGAIN
    finally:
        io_destroy(c)


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_partial_submission(conv: str, ctx: IOContext, data_fd: int) -> None:
    mod = {"linux": linux, "libaio": libaio}[conv]
    good1 = Iocb.pread(data_fd, bytearray(4), 0, data=1)
    bad = Iocb.pread(-1, bytearray(4), 0, data=2)
    good2 = Iocb.pread(data_fd, bytearray(4), 0, data=3)
    assert mod.io_submit(ctx, [good1, bad, good2]) == 1
    assert good1.in_flight and not bad.in_flight and not good2.in_flight
    (ev,) = wait_events(ctx, 1)
    assert ev.obj is good1
    assert io_getevents(ctx, 0, 4, 0.05) == []  # the others were never queued
    # the first one failing: its error
    assert err(conv, "io_submit", ctx, [bad, good2]) == errno.EBADF
    assert not good2.in_flight


def test_rwf_nowait_on_empty_pipe_is_eagain_in_event(ctx: IOContext, pipe: tuple[int, int]) -> None:
    buf = bytearray(16)
    io_submit(ctx, [Iocb.pread(pipe[0], buf, 0, rw_flags=RWF_NOWAIT)])
    (ev,) = wait_events(ctx, 1)
    assert ev.res == -errno.EAGAIN


def test_rwf_nowait_socket(ctx: IOContext) -> None:
    a, b = socket.socketpair()
    with a, b:
        io_submit(ctx, [Iocb.pread(a.fileno(), bytearray(4), 0, rw_flags=RWF_NOWAIT)])
        assert wait_events(ctx, 1)[0].res == -errno.EAGAIN


# ---------------------------------------------------------------------------------
# io_getevents (§2.4)
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_getevents_bad_counts_are_einval(conv: str, ctx: IOContext) -> None:
    assert err(conv, "io_getevents", ctx, -1, 1, 0) == errno.EINVAL
    assert err(conv, "io_getevents", ctx, 2, 1, 0) == errno.EINVAL


def test_getevents_zero_zero_returns_at_once(ctx: IOContext) -> None:
    t0 = time.monotonic()
    assert io_getevents(ctx, 0, 0) == []
    assert libaio.io_getevents(ctx, 0, 0) == (0, [])
    assert time.monotonic() - t0 < 0.5


def test_getevents_timeout_zero_and_short(ctx: IOContext, pipe: tuple[int, int]) -> None:
    assert io_getevents(ctx, 1, 1, 0) == []
    io_submit(ctx, [Iocb.poll(pipe[0], select.POLLIN)])
    t0 = time.monotonic()
    assert io_getevents(ctx, 1, 4, 0.1) == []  # fewer than min_nr on timeout
    assert 0.08 <= time.monotonic() - t0 < 2


def test_getevents_bad_timeout(ctx: IOContext) -> None:
    with pytest.raises(ValueError):
        io_getevents(ctx, 0, 1, -1)
    with pytest.raises(ValueError):
        io_getevents(ctx, 0, 1, float("nan"))
    with pytest.raises(TypeError):
        io_getevents(ctx, 0, 1, "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        io_getevents(ctx, 0.5, 1)  # type: ignore[arg-type]


def test_getevents_in_completion_order_with_identity(ctx: IOContext) -> None:
    pipes = [os.pipe() for _ in range(3)]
    try:
        polls = [Iocb.poll(r, select.POLLIN, data=i) for i, (r, _) in enumerate(pipes)]
        io_submit(ctx, polls)
        for i in (2, 0, 1):
            os.write(pipes[i][1], b"x")
            (ev,) = wait_events(ctx, 1)
            assert ev.data == i and ev.obj is polls[i]
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_getevents_retries_after_signal(ctx: IOContext, pipe: tuple[int, int]) -> None:
    """PEP 475: a signal whose handler returns does not end the wait early."""
    got: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
    try:
        io_submit(ctx, [Iocb.poll(pipe[0], select.POLLIN)])
        main = threading.get_ident()
        threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGUSR1)).start()
        threading.Timer(0.3, os.write, (pipe[1], b"x")).start()
        t0 = time.monotonic()
        assert len(io_getevents(ctx, 1, 1, timeout=5)) == 1
        assert time.monotonic() - t0 >= 0.25
        assert got == [1]
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_pgetevents_sigmask(ctx: IOContext, pipe: tuple[int, int]) -> None:
    got: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        io_submit(ctx, [Iocb.poll(pipe[0], select.POLLIN)])
        main = threading.get_ident()
        # SIGUSR1 kept blocked during the wait: times out normally
        threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGUSR1)).start()
        assert io_pgetevents(ctx, 1, 1, 0.3, sigmask={signal.SIGUSR1}) == []
        assert signal.SIGUSR1 in signal.sigpending()
        # unblocked during the wait: the pending signal interrupts it at once
        t0 = time.monotonic()
        with pytest.raises(InterruptedError):
            io_pgetevents(ctx, 1, 1, 5, sigmask=())
        assert time.monotonic() - t0 < 2
        assert libaio.io_pgetevents(ctx, 0, 1, 0, sigmask=[signal.SIGUSR1]) == (0, [])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGUSR1, old)
    assert got == [1]


def test_pgetevents_bad_signal() -> None:
    with io_setup(1) as c, pytest.raises(ValueError):
        io_pgetevents(c, 0, 1, 0, sigmask=[0])


# ---------------------------------------------------------------------------------
# io_cancel (§2.5)
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_cancel_poll(conv: str, ctx: IOContext, pipe: tuple[int, int]) -> None:
    p = Iocb.poll(pipe[0], select.POLLIN, data=42)
    io_submit(ctx, [p])
    if conv == "linux":
        assert io_cancel(ctx, p) is None  # EINPROGRESS: the event goes to the ring
    else:
        assert libaio.io_cancel(ctx, p) == (-errno.EINPROGRESS, None)
    (ev,) = wait_events(ctx, 1)
    assert (ev.data, ev.obj, ev.res) == (42, p, 0)
    assert err(conv, "io_cancel", ctx, p) == errno.EINVAL  # again


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_cancel_regular_file_read_is_einval(conv: str, ctx: IOContext, direct_fd: int) -> None:
    buf = xaio.aligned_buffer(1 << 20)
    x = Iocb.pread(direct_fd, buf, 0)
    io_submit(ctx, [x])
    assert err(conv, "io_cancel", ctx, x) == errno.EINVAL
    assert wait_events(ctx, 1)[0].res == 1 << 20


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_cancel_never_submitted_is_einval(conv: str, ctx: IOContext, data_fd: int) -> None:
    assert err(conv, "io_cancel", ctx, Iocb.pread(data_fd, bytearray(1), 0)) == errno.EINVAL


# ---------------------------------------------------------------------------------
# fork (§2.6)
# ---------------------------------------------------------------------------------


def test_forked_child_gets_einval(ctx: IOContext, data_fd: int, pipe: tuple[int, int]) -> None:
    r, w = pipe
    p = Iocb.poll(r, select.POLLIN, data=7)
    io_submit(ctx, [p])

    def child() -> int:
        codes = []
        for call in (
            lambda: io_submit(ctx, [Iocb.pread(data_fd, bytearray(4), 0)]),
            lambda: io_getevents(ctx, 0, 1, 0),
            lambda: io_cancel(ctx, p),
            lambda: io_destroy(ctx),
        ):
            try:
                call()
                codes.append(0)
            except OSError as e:
                codes.append(e.errno)
        ok = codes == [errno.EINVAL] * 4
        ok = ok and libaio.io_getevents(ctx, 0, 1, 0) == (-errno.EINVAL, [])
        # a fresh context works in the child
        with io_setup(4) as c2:
            buf = bytearray(4)
            io_submit(c2, [Iocb.pread(data_fd, buf, 0)])
            ok = ok and io_getevents(c2, 1, 1, 5)[0].res == 4
        return 0 if ok else 1

    assert in_child(child) == 0
    # the parent's request is untouched and still completes here
    os.write(w, b"x")
    (ev,) = wait_events(ctx, 1)
    assert ev.obj is p and ev.data == 7


# ---------------------------------------------------------------------------------
# Buffer safety (§5)
# ---------------------------------------------------------------------------------


def test_nbytes_beyond_buffer_is_valueerror(ctx: IOContext, data_fd: int) -> None:
    x = Iocb.pread(data_fd, bytearray(4), 0)
    x.aio_nbytes = 5
    with pytest.raises(ValueError):
        io_submit(ctx, [x])
    with pytest.raises(ValueError):
        libaio.io_submit(ctx, [x])
    v = Iocb.preadv(data_fd, [bytearray(4)], 0)
    v.aio_nbytes = 2
    with pytest.raises(ValueError):
        io_submit(ctx, [v])
    assert not x.in_flight and not v.in_flight


def test_read_into_readonly_buffer_is_typeerror(ctx: IOContext, data_fd: int) -> None:
    for buf in (b"abcd", memoryview(b"abcd"), memoryview(bytearray(4)).toreadonly()):
        with pytest.raises(TypeError):
            io_submit(ctx, [Iocb.pread(data_fd, buf, 0)])
    with pytest.raises(TypeError):
        io_submit(ctx, [Iocb.preadv(data_fd, [bytearray(1), b"x"], 0)])


def test_raw_address_is_refused(ctx: IOContext, data_fd: int) -> None:
    b = ctypes.create_string_buffer(16)
    x = Iocb.pread(data_fd, ctypes.addressof(b), 0)
    with pytest.raises(TypeError, match="raw addresses"):
        io_submit(ctx, [x])
    with pytest.raises(TypeError):
        libaio.io_prep_pread(x, data_fd, ctypes.addressof(b), 16, 0)
        libaio.io_submit(ctx, [x])


def test_bad_types_before_any_syscall(ctx: IOContext, data_fd: int) -> None:
    with pytest.raises(TypeError):
        io_submit(ctx, ["not an iocb"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        io_submit("ctx", [])  # type: ignore[arg-type]
    x = Iocb.pread(data_fd, bytearray(1), 0)
    x.aio_offset = "0"
    with pytest.raises(TypeError):
        io_submit(ctx, [x])
    x.aio_offset = 1 << 64
    with pytest.raises(ValueError):
        io_submit(ctx, [x])
    with pytest.raises(TypeError):
        io_submit(ctx, [Iocb.preadv(data_fd, [bytearray(1)], 0), Iocb.pread(data_fd, 3, 0)])
    assert ctx.statistics()["in_flight"] == 0


def test_in_flight_iocb_refuses_changes_and_resubmission(
    ctx: IOContext, pipe: tuple[int, int]
) -> None:
    p = Iocb.poll(pipe[0], select.POLLIN)
    io_submit(ctx, [p])
    with pytest.raises(IocbInFlightError):
        p.aio_fildes = 0
    with pytest.raises(IocbInFlightError):
        io_submit(ctx, [p])
    p.callback = None  # not a kernel field: allowed
    io_cancel(ctx, p)
    wait_events(ctx, 1)
    p.aio_data = 3  # reaped: mutable again
    with pytest.raises(IocbInFlightError):
        io_submit(ctx, [p, p])


def test_resize_of_pinned_buffer_is_refused(ctx: IOContext, data_fd: int) -> None:
    """A bytearray in flight cannot be resized (its memory would move) until
    its event has been reaped."""
    buf = bytearray(8)
    io_submit(ctx, [Iocb.pread(data_fd, buf, 0)])
    with pytest.raises(BufferError):
        buf.extend(b"no")
    wait_events(ctx, 1)
    buf.extend(b"ok")  # reaped: released
    assert len(buf) == 10


def test_dropped_in_flight_requests_keep_their_buffers(ctx: IOContext, direct_fd: int) -> None:
    expected = pattern(1 << 20)
    n = 64

    def submit_and_forget() -> None:
        iocbs = [Iocb.pread(direct_fd, xaio.aligned_buffer(16384), i * 16384) for i in range(n)]
        assert io_submit(ctx, iocbs) == n

    submit_and_forget()
    # every Python reference the caller had is gone; churn memory and collect
    junk = [bytearray(16384) for _ in range(200)]
    gc.collect()
    events = wait_events(ctx, n)
    del junk
    for ev in events:
        assert ev.obj is not None and ev.res == 16384
        off = ev.obj.aio_offset
        assert bytes(ev.obj.aio_buf) == expected[off : off + 16384]


def test_dropped_pipe_poll_and_gc(ctx: IOContext, pipe: tuple[int, int]) -> None:
    r, w = pipe
    io_submit(ctx, [Iocb.poll(r, select.POLLIN, data=i) for i in range(5)])
    gc.collect()
    os.write(w, b"x")
    assert sorted(e.data for e in wait_events(ctx, 5)) == list(range(5))


# ---------------------------------------------------------------------------------
# Iocb as a mirror of struct iocb; resubmission; io_getevents from the ring
# ---------------------------------------------------------------------------------


def test_aio_nbytes_reads_the_length_submitted(data_fd: int, pipe: tuple[int, int]) -> None:
    x = Iocb.pread(data_fd, bytearray(100), 0)
    assert x.aio_nbytes == 100
    assert Iocb.pwrite(data_fd, b"abc", 0).aio_nbytes == 3
    assert Iocb.pread(data_fd, xaio.aligned_buffer(4096), 0).aio_nbytes == 4096
    assert Iocb.preadv(data_fd, [bytearray(2), bytearray(3), bytearray(4)], 0).aio_nbytes == 3
    assert Iocb.fsync(data_fd).aio_nbytes == 0
    assert Iocb.poll(pipe[0], select.POLLIN).aio_nbytes == 0
    assert Iocb().aio_nbytes == 0
    x.aio_buf = bytearray(50)  # a length set by a constructor follows the buffer
    assert x.aio_nbytes == 50
    x.aio_nbytes = 10
    assert x.aio_nbytes == 10
    x.aio_nbytes = None
    assert x.aio_nbytes == 50
    x.aio_buf = "text"  # a buffer submission would refuse: no length
    assert x.aio_nbytes is None
    x.aio_buf = None
    assert x.aio_nbytes == 0
    y = Iocb()
    libaio.io_prep_pread(y, data_fd, bytearray(10), 6, 0)
    assert y.aio_nbytes == 6


def test_constructor_count_keyword(ctx: IOContext, data_fd: int) -> None:
    """``count`` is libaio's length argument, by name: a port of
    ``io_prep_pread(iocb, fd, buf, count, offset)`` cannot pass it by
    position (the third argument is the offset, as in ``os.pread``)."""
    buf = bytearray(16)
    x = Iocb.pread(data_fd, buf, 4096, count=6)
    assert (x.aio_nbytes, x.aio_offset) == (6, 4096)
    io_submit(ctx, [x])
    (ev,) = wait_events(ctx, 1)
    assert ev.res == 6 and bytes(buf[:6]) == pattern(8192)[4096:4102]
    with pytest.raises(TypeError):
        Iocb.pread(data_fd, buf, 6, 4096)  # type: ignore[misc]
    a, b, c = bytearray(2), bytearray(2), bytearray(2)
    v = Iocb.preadv(data_fd, [a, b, c], 0, count=2)
    assert v.aio_nbytes == 2
    io_submit(ctx, [v])
    assert wait_events(ctx, 1)[0].res == 4 and c == bytearray(2)
    w = Iocb.pwrite(data_fd, b"0123456789", 8192, count=3)
    io_submit(ctx, [w])
    assert wait_events(ctx, 1)[0].res == 3 and os.pread(data_fd, 4, 8192)[:3] == b"012"
    with pytest.raises(ValueError):
        io_submit(ctx, [Iocb.pread(data_fd, bytearray(4), 0, count=5)])


def test_resubmitted_iocb_reads_each_new_offset(ctx: IOContext, direct_fd: int) -> None:
    """The plain loop: set aio_offset on the reaped Iocb and submit it again."""
    buf = xaio.aligned_buffer(4096)
    x = Iocb.pread(direct_fd, buf, 0)
    whole = pattern(1 << 20)
    for block in (3, 0, 255, 7, 7):
        x.aio_offset = block * 4096
        io_submit(ctx, [x])
        (ev,) = wait_events(ctx, 1)
        assert ev.obj is x and ev.res == 4096
        assert bytes(buf) == whole[block * 4096 : (block + 1) * 4096]


def test_kept_events_stay_as_reaped_while_their_iocbs_run_again(
    ctx: IOContext, direct_fd: int
) -> None:
    """The plain loop at depth 4: the events a caller keeps still say what
    was reaped after their Iocbs were changed, resubmitted and reaped again;
    each new offset and data reach the kernel, and each reap releases the
    pins (the mmap under a released view closes)."""
    whole = pattern(1 << 20)
    raws = [mmap.mmap(-1, 4096) for _ in range(4)]
    views = [memoryview(raw) for raw in raws]
    cbs = [Iocb.pread(direct_fd, views[i], i * 4096, data=i) for i in range(4)]
    assert io_submit(ctx, cbs) == 4
    kept: list[tuple[list[linux.IOEvent], list[tuple[Any, ...]]]] = []
    for turn in range(1, 4):
        events = wait_events(ctx, 4)
        kept.append((events, [tuple(ev) for ev in events]))
        for ev in events:
            assert ev.obj is not None and ev.res == 4096
            i = ev.data % 8
            start = ((turn - 1) * 4 + i) * 4096
            assert bytes(views[i]) == whole[start : start + 4096]
            ev.obj.aio_offset = (turn * 4 + i) * 4096
            ev.obj.aio_data = turn * 8 + i
        assert io_submit(ctx, [ev.obj for ev in events if ev.obj is not None]) == 4
    for ev in wait_events(ctx, 4):
        assert (
            ev.data // 8 == 3
            and bytes(views[ev.data % 8])
            == whole[(12 + ev.data % 8) * 4096 : (13 + ev.data % 8) * 4096]
        )
    for events, seen in kept:
        assert [tuple(ev) for ev in events] == seen
    assert sorted(ev.data for ev in kept[1][0]) == [8, 9, 10, 11]
    for view, raw in zip(views, raws, strict=True):
        view.release()
        raw.close()  # reaped: nothing holds the memory any more


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_field_changes_after_submission_are_checked(
    conv: str, ctx: IOContext, data_fd: int, data_path: Path
) -> None:
    """A field set on an Iocb that was submitted before is checked again:
    the same TypeError/ValueError, before the kernel sees it, and the same
    kernel errno as for a fresh Iocb."""
    submit = linux.io_submit if conv == "linux" else libaio.io_submit
    x = Iocb.pread(data_fd, bytearray(8), 0)
    assert submit(ctx, [x]) == 1
    wait_events(ctx, 1)
    bad: list[tuple[str, Any, type[Exception]]] = [
        ("aio_offset", "8", TypeError),
        ("aio_offset", 1 << 63, ValueError),
        ("aio_offset", True, TypeError),
        ("aio_fildes", 1.5, TypeError),
        ("aio_data", -1, ValueError),
        ("aio_reqprio", 1 << 15, ValueError),
        ("aio_nbytes", 9, ValueError),
        ("aio_buf", b"read-only", TypeError),
        ("aio_buf", 4096, TypeError),
        ("aio_lio_opcode", 1 << 16, ValueError),
    ]
    for name, value, exc in bad:
        setattr(x, name, value)
        with pytest.raises(exc):
            submit(ctx, [x])
        assert not x.in_flight and ctx.statistics()["in_flight"] == 0
        y = Iocb.pread(data_fd, bytearray(8), 0)  # a fresh Iocb, same fields
        for field in _iocb._FIELDS:
            setattr(y, field, getattr(x, field))
        with pytest.raises(exc):
            submit(ctx, [y])
        x = Iocb.pread(data_fd, bytearray(8), 0)
        assert submit(ctx, [x]) == 1
        wait_events(ctx, 1)
    # kernel errors after a change: the kernel's errno
    x.aio_offset = -4096
    assert err(conv, "io_submit", ctx, [x]) == errno.EINVAL
    x.aio_offset = 0
    ro = os.open(data_path, os.O_RDONLY)
    try:
        x.aio_lio_opcode = linux.IOCB_CMD_PWRITE
        x.aio_fildes = ro
        assert err(conv, "io_submit", ctx, [x]) == errno.EBADF
    finally:
        os.close(ro)
    x.aio_fildes = data_fd
    x.aio_rw_flags = 1 << 30
    assert err(conv, "io_submit", ctx, [x]) == errno.EOPNOTSUPP
    x.aio_rw_flags = 0
    assert submit(ctx, [x]) == 1
    assert wait_events(ctx, 1)[0].res == 8


def test_resized_buffer_is_pinned_again_at_its_new_place(ctx: IOContext, data_fd: int) -> None:
    buf = bytearray(8)
    x = Iocb.pread(data_fd, buf, 0)
    io_submit(ctx, [x])
    assert wait_events(ctx, 1)[0].res == 8
    buf.extend(bytes(4088))  # released at reap, so it may grow (and move)
    assert x.aio_nbytes == 4096
    io_submit(ctx, [x])
    assert wait_events(ctx, 1)[0].res == 4096 and bytes(buf) == pattern(4096)
    x.aio_nbytes = 4096
    del buf[100:]
    with pytest.raises(ValueError):
        io_submit(ctx, [x])
    buf.clear()  # an empty bytearray with aio_nbytes None: a 0-byte read
    x.aio_nbytes = None
    io_submit(ctx, [x])
    assert wait_events(ctx, 1)[0].res == 0
    view = memoryview(bytearray(16))
    y = Iocb.pread(data_fd, view, 0)
    io_submit(ctx, [y])
    wait_events(ctx, 1)
    view.release()
    with pytest.raises(ValueError):
        io_submit(ctx, [y])
    assert not y.in_flight


def test_getevents_takes_waiting_events_from_the_ring(
    ctx: IOContext, data_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events already in the context's ring are read from user memory: with
    the io_getevents system call made to fail, they still come back.
    Waiting for more than is there makes the call."""
    if ctx._ring is None:
        pytest.skip("the ring is not read from user space on this architecture")
    bufs = [bytearray(16) for _ in range(3)]
    io_submit(ctx, [Iocb.pread(data_fd, b, 16 * i, data=i) for i, b in enumerate(bufs)])
    deadline = time.monotonic() + 5
    while _syscall.aio_ring_at(ctx.id).tail == _syscall.aio_ring_at(ctx.id).head:
        assert time.monotonic() < deadline  # buffered reads complete in io_submit
    calls: list[tuple[Any, ...]] = []

    def refuse(*args: Any) -> int:
        calls.append(args)
        return -errno.ENOSYS

    monkeypatch.setattr(_context, "_FAST_GETEVENTS", refuse)
    events = io_getevents(ctx, 1, 2)
    events += libaio.io_getevents(ctx, 1, 8, None)[1]
    assert [e.data for e in events] == [0, 1, 2] and not calls
    assert [bytes(b) for b in bufs] == [pattern(48)[16 * i : 16 * i + 16] for i in range(3)]
    assert io_getevents(ctx, 0, 8, 0) == [] and not calls  # polling an empty ring
    with pytest.raises(OSError) as info:
        io_getevents(ctx, 1, 8, 0.01)  # must wait: the system call
    assert info.value.errno == errno.ENOSYS and len(calls) == 1
    assert ctx._waiters == 0


def test_forked_child_never_reads_the_parents_ring(ctx: IOContext, data_fd: int) -> None:
    """The child shares the ring's pages: reading them would take the
    parent's completions.  Every call there is EINVAL and the parent still
    gets its event."""
    buf = bytearray(8)
    io_submit(ctx, [Iocb.pread(data_fd, buf, 0, data=5)])

    def child() -> int:
        ok = libaio.io_getevents(ctx, 0, 8, 0) == (-errno.EINVAL, [])
        ok = ok and libaio.io_getevents(ctx, 1, 8, None) == (-errno.EINVAL, [])
        try:
            io_getevents(ctx, 0, 8, 0)
            return 1
        except OSError as e:
            ok = ok and e.errno == errno.EINVAL
        return 0 if ok else 2

    assert in_child(child) == 0
    (ev,) = wait_events(ctx, 1)
    assert ev.data == 5 and ev.res == 8


def test_getevents_from_two_threads_delivers_each_event_once(ctx: IOContext, data_fd: int) -> None:
    """Threads reaping one context, some waiting in the system call (the
    kernel moves the ring's head then), others finding events in the ring:
    every completion is delivered exactly once."""
    total = 20000
    got: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[BaseException] = []

    def reap(min_nr: int, timeout: float) -> None:
        try:
            while not stop.is_set():
                events = io_getevents(ctx, min_nr, 4, timeout)
                with lock:
                    got.extend(e.data for e in events)
        except BaseException as e:
            failures.append(e)

    shapes = [(1, 0.05), (1, 0.05), (1, 0.001), (0, 0), (0, 0)]
    threads = [threading.Thread(target=reap, args=shape) for shape in shapes]
    for t in threads:
        t.start()
    cbs = [Iocb.pread(data_fd, bytearray(8), 0, data=i) for i in range(total)]
    deadline = time.monotonic() + 60
    sent = 0
    while sent < total and time.monotonic() < deadline:
        try:
            sent += io_submit(ctx, cbs[sent : sent + 30])
        except BlockingIOError:  # the ring is full: the readers catch up
            time.sleep(0.001)
    while len(got) < total and time.monotonic() < deadline and not failures:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(30)
    assert not failures, failures[:3]
    assert sorted(got) == list(range(total))
    assert ctx._waiters == 0 and ctx.statistics()["in_flight"] == 0


def test_destroy_while_other_threads_read_the_ring(data_fd: int) -> None:
    """io_destroy unmaps the ring: a thread polling io_getevents meanwhile
    gets EINVAL, never reads the unmapped memory (a crash)."""
    for _ in range(20):
        ctx = io_setup(8)
        io_submit(ctx, [Iocb.pread(data_fd, bytearray(8), 0)])
        answers: list[int] = []

        def poll(c: IOContext = ctx, out: list[int] = answers) -> None:
            while True:
                ret, _ = libaio.io_getevents(c, 0, 8, 0)
                if ret < 0:
                    out.append(ret)
                    return

        threads = [threading.Thread(target=poll) for _ in range(2)]
        for t in threads:
            t.start()
        io_destroy(ctx)
        for t in threads:
            t.join(30)
        assert answers == [-errno.EINVAL] * 2


# ---------------------------------------------------------------------------------
# libaio helpers
# ---------------------------------------------------------------------------------


def test_prep_helpers_argument_order_and_reset(ctx: IOContext, data_fd: int) -> None:
    x = Iocb()
    x.aio_data = 99
    x.aio_rw_flags = RWF_NOWAIT
    buf = bytearray(10)
    libaio.io_prep_pread(x, data_fd, buf, 6, 4096)
    assert (x.aio_fildes, x.aio_buf, x.aio_nbytes, x.aio_offset) == (data_fd, buf, 6, 4096)
    assert (x.aio_data, x.aio_rw_flags, x.aio_lio_opcode) == (0, 0, IOCB_CMD_PREAD)
    assert libaio.io_submit(ctx, [x]) == 1
    ret, (ev,) = libaio.io_getevents(ctx, 1, 1, 5)
    assert ret == 1 and ev.res == 6 and bytes(buf[:6]) == pattern(8192)[4096:4102]

    libaio.io_prep_pwrite(x, data_fd, b"hello", 5, 0)
    libaio.io_submit(ctx, [x])
    assert wait_events(ctx, 1)[0].res == 5
    libaio.io_prep_pwritev(x, data_fd, [b"ab", b"cd", b"ef"], 2, 100)
    libaio.io_submit(ctx, [x])
    assert wait_events(ctx, 1)[0].res == 4
    a, b = bytearray(2), bytearray(2)
    libaio.io_prep_preadv2(x, data_fd, [a, b], 2, 100, 0)
    libaio.io_submit(ctx, [x])
    assert wait_events(ctx, 1)[0].res == 4 and a + b == b"abcd"
    libaio.io_prep_pwritev2(x, data_fd, [b"zz"], 1, 100, linux.RWF_DSYNC)
    libaio.io_submit(ctx, [x])
    assert wait_events(ctx, 1)[0].res == 2
    for prep, op in ((libaio.io_prep_fsync, IOCB_CMD_FSYNC), (libaio.io_prep_fdsync, 3)):
        prep(x, data_fd)
        assert x.aio_lio_opcode == op and x.aio_buf is None
        libaio.io_submit(ctx, [x])
        assert wait_events(ctx, 1)[0].res == 0
    libaio.io_prep_poll(x, data_fd, select.POLLIN)
    assert x.aio_lio_opcode == IOCB_CMD_POLL and x.aio_buf == select.POLLIN
    libaio.io_submit(ctx, [x])
    assert wait_events(ctx, 1)[0].res & select.POLLIN


def test_queue_run_calls_callbacks(ctx: IOContext, data_fd: int) -> None:
    calls: list[tuple[Any, ...]] = []
    iocbs = []
    for i in range(3):
        x = Iocb()
        libaio.io_prep_pread(x, data_fd, bytearray(8), 8, i * 8)
        libaio.io_set_callback(x, lambda c, it, res, res2: calls.append((c, it, res, res2)))
        iocbs.append(x)
    plain = Iocb.pread(data_fd, bytearray(1), 0)  # no callback: consumed silently
    assert libaio.io_submit(ctx, [*iocbs, plain]) == 4
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        assert libaio.io_queue_run(ctx) == 0
        time.sleep(0.001)
    assert sorted(id(c[1]) for c in calls) == sorted(id(x) for x in iocbs)
    assert all(c[0] is ctx and c[2] == 8 and c[3] == 0 for c in calls)
    with pytest.raises(TypeError):
        libaio.io_set_callback(Iocb(), 5)  # type: ignore[arg-type]
    dead = io_setup(1)
    io_destroy(dead)
    assert libaio.io_queue_run(dead) == -errno.EINVAL


# ---------------------------------------------------------------------------------
# IOBatch: the lean path
# ---------------------------------------------------------------------------------


def test_batch_roundtrip_and_reuse(ctx: IOContext, direct_fd: int) -> None:
    expected = pattern(1 << 20)
    batch = IOBatch(ctx, 8)
    bufs = [xaio.aligned_buffer(4096) for _ in range(8)]
    for i in range(8):
        batch.prep_pread(i, direct_fd, bufs[i], i * 4096)
    assert batch.submit(range(8)) == 8  # type: ignore[arg-type]
    assert batch.in_flight == 8
    with pytest.raises(IocbInFlightError):
        batch.prep_pread(0, direct_fd, bufs[0], 0)
    seen: set[int] = set()
    while len(seen) < 8:
        n = batch.reap(1, timeout=5)
        assert n >= 1
        for k in range(n):
            assert batch.done_res[k] == 4096
            seen.add(batch.done_slots[k])
    assert seen == set(range(8)) and batch.in_flight == 0
    for i in range(8):
        assert bytes(bufs[i]) == expected[i * 4096 : (i + 1) * 4096]
    # reuse with new offsets, submitting a subset
    for i in range(8):
        batch.set_offset(i, (100 + i) * 4096)
    assert batch.submit([3, 5]) == 2
    got = 0
    while got < 2:
        got += batch.reap(2 - got, timeout=5)
    assert bytes(bufs[3]) == expected[103 * 4096 : 104 * 4096]
    batch.close()


def test_batch_write_fsync_and_errors(ctx: IOContext, data_fd: int) -> None:
    batch = IOBatch(ctx, 4)
    batch.prep_pwrite(0, data_fd, b"batch!", 0)
    batch.prep_fsync(1, data_fd, datasync=True)
    batch.prep_pread(2, -1, bytearray(4), 0)  # refused by the kernel
    assert batch.submit([0, 1, 2]) == 2  # partial
    n = 0
    while n < 2:
        n += batch.reap(1, 5)
    assert os.pread(data_fd, 6, 0) == b"batch!"
    with pytest.raises(OSError) as info:
        batch.submit([2])
    assert info.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        batch.prep_pread(3, data_fd, b"readonly", 0)
    batch.close()


def test_batch_kept_alive_by_context_and_destroy(direct_fd: int) -> None:
    c = io_setup(64)
    bufs = [xaio.aligned_buffer(65536) for _ in range(16)]
    batch = IOBatch(c, 16)
    for i in range(16):
        batch.prep_pread(i, direct_fd, bufs[i], i * 65536)
    batch.submit(list(range(16)))
    with pytest.raises(IocbInFlightError):
        batch.close()
    del batch
    gc.collect()  # the context keeps the batch (and its iocbs) alive
    io_destroy(c)
    expected = pattern(1 << 20)
    for i in range(16):
        assert bytes(bufs[i]) == expected[i * 65536 : (i + 1) * 65536]


def test_batch_reap_at_most_max_nr(ctx: IOContext, data_fd: int) -> None:
    batch = IOBatch(ctx, 8)
    bufs = [bytearray(512) for _ in range(8)]
    for i in range(8):
        batch.prep_pread(i, data_fd, bufs[i], i * 512)
    assert batch.submit(list(range(8))) == 8  # buffered: done inside io_submit
    assert batch.reap(1, 5, max_nr=3) == 3
    assert batch.in_flight == 5
    first = set(batch.done_slots[:3])
    got: set[int] = set()
    while len(got) < 5:
        n = batch.reap(1, 5, max_nr=2)
        assert 1 <= n <= 2
        got |= set(batch.done_slots[:n])
    assert first | got == set(range(8)) and not first & got
    with pytest.raises(ValueError):
        batch.reap(3, 5, max_nr=2)
    batch.close()


def test_batch_reap_after_destroy_is_einval() -> None:
    c = io_setup(4)
    batch = IOBatch(c, 2)
    io_destroy(c)
    with pytest.raises(OSError) as info:
        batch.reap(1, 0)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        batch.submit([0])
    batch.close()


# ---------------------------------------------------------------------------------
# aligned_buffer
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alignment", [None, 512, 4096, 1 << 16, 1 << 21])
def test_aligned_buffer(alignment: int | None) -> None:
    b = xaio.aligned_buffer(10000, alignment)
    assert len(b) == 10000 and not b.readonly and bytes(b[:4]) == b"\0\0\0\0"
    addr = ctypes.addressof(ctypes.c_char.from_buffer(b))
    assert addr % (alignment or mmap.PAGESIZE) == 0


def test_aligned_buffer_follows_the_file(direct_fd: int, data_path: Path) -> None:
    got = xaio.dio_alignment(direct_fd)
    assert got == xaio.dio_alignment(data_path)
    if got is not None:
        mem, off = got
        assert mem & (mem - 1) == 0 and off & (off - 1) == 0
    b = xaio.aligned_buffer(4096, file=direct_fd)
    assert ctypes.addressof(ctypes.c_char.from_buffer(b)) % (got[0] if got else 4096) == 0


def test_aligned_buffer_bad_arguments() -> None:
    with pytest.raises(ValueError):
        xaio.aligned_buffer(-1)
    with pytest.raises(ValueError):
        xaio.aligned_buffer(10, 3)
    with pytest.raises(ValueError):
        xaio.aligned_buffer(10, 0)
    with pytest.raises(TypeError):
        xaio.aligned_buffer("10")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        xaio.aligned_buffer(10, 4.0)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        xaio.aligned_buffer(10, file="/nonexistent/x")
    assert len(xaio.aligned_buffer(0)) == 0


def test_no_resource_warnings_in_normal_use(data_fd: int) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with io_setup(2) as c:
            buf = bytearray(1)
            assert io_submit(c, [Iocb.pread(data_fd, buf, 0)]) == 1
            (ev,) = wait_events(c, 1)
        gc.collect()
    assert ev.res == 1 and buf == pattern(1)
    assert [str(w.message) for w in caught] == []


def test_batch_chunked_submission_and_duplicate_slots(ctx: IOContext, direct_fd: int) -> None:
    expected = pattern(1 << 20)
    batch = IOBatch(ctx, 10)
    bufs = [xaio.aligned_buffer(4096) for _ in range(10)]
    for i in range(10):
        batch.prep_pread(i, direct_fd, bufs[i], i * 4096)
    with pytest.raises(IocbInFlightError):
        batch.submit([1, 2, 1])  # listed twice: nothing submitted
    assert batch.in_flight == 0 and not any(batch.is_busy(i) for i in range(10))
    assert batch.submit(list(range(10)), chunk=3) == 10  # 4 io_submit calls
    got = 0
    while got < 10:
        got += batch.reap(1, timeout=5)
    assert [bytes(b) for b in bufs] == [expected[i * 4096 : (i + 1) * 4096] for i in range(10)]
    batch.prep_pread(9, -1, bufs[9], 0)  # refused by the kernel: partial, in chunks too
    assert batch.submit([0, 1, 9, 2], chunk=2) == 2
    assert not batch.is_busy(9) and not batch.is_busy(2)
    while batch.in_flight:
        batch.reap(1, timeout=5)
    batch.close()


# --- the resubmission fast path ---------------------------------------------------


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[Iocb]:
    """Record each Iocb whose fields are all checked again (Iocb._build)."""
    built: list[Iocb] = []
    real = Iocb._build

    def build(self: Iocb) -> None:
        built.append(self)
        real(self)

    monkeypatch.setattr(Iocb, "_build", build)
    return built


@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "aligned", "mmap", "bytes"])
def test_resubmission_reuses_the_checked_iocb(
    conv: str, kind: str, ctx: IOContext, data_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Iocb resubmitted with only integer fields changed (each checked as
    it is set) is pinned again, not checked again, for every buffer kind;
    any other change, or a value the fast path cannot vouch for, makes the
    submission check everything."""
    submit = linux.io_submit if conv == "linux" else libaio.io_submit
    buffers: dict[str, Any] = {
        "bytearray": bytearray(16),
        "memoryview": memoryview(bytearray(16)),
        "aligned": xaio.aligned_buffer(16),
        "mmap": mmap.mmap(-1, 16),
        "bytes": pattern(16),
    }
    buf = buffers[kind]
    make = Iocb.pwrite if kind == "bytes" else Iocb.pread
    x = make(data_fd, buf, 0, count=16)
    built = _count_builds(monkeypatch)
    assert submit(ctx, [x]) == 1 and built == [x]
    wait_events(ctx, 1)
    whole = pattern(1 << 20)
    for offset in (4096, 32, 65536):
        x.aio_offset = offset
        x.aio_data = offset
        assert submit(ctx, [x]) == 1
        (ev,) = wait_events(ctx, 1)
        assert ev.obj is x and ev.data == offset and ev.res == 16
        if kind != "bytes":
            assert bytes(buf[:16]) == whole[offset : offset + 16]
    assert built == [x]  # taken: no field was checked again
    for name, value in (("aio_offset", "0"), ("aio_offset", -1 << 64), ("aio_fildes", None)):
        setattr(x, name, value)  # stored, not vouched for: refused at submission
        with pytest.raises((TypeError, ValueError)):
            submit(ctx, [x])
        assert not x.in_flight and built[-1] is x
        setattr(x, name, 0 if name == "aio_offset" else data_fd)
    n = len(built)
    x.aio_buf = buf  # the same buffer set again: every field is checked again
    assert submit(ctx, [x]) == 1 and len(built) == n + 1
    wait_events(ctx, 1)
    if kind == "bytearray":
        buf.extend(bytes(4096))  # moved: checked and pinned at its new place
        assert submit(ctx, [x]) == 1 and len(built) == n + 2
        assert wait_events(ctx, 1)[0].res == 16


def _record_submits(
    monkeypatch: pytest.MonkeyPatch, after_call: Any = None
) -> list[tuple[int, int]]:
    """Record ``(requests handed, requests taken)`` of each io_submit system
    call the public io_submit makes (the real call is made); *after_call*,
    if given, runs after the first one returns, as another thread could."""
    calls: list[tuple[int, int]] = []
    real = _context._FAST_SUBMIT

    def submit(cid: Any, m: int, ptrs: Any) -> int:
        r: int = real(cid, m, ptrs)
        calls.append((m, r))
        if after_call is not None and len(calls) == 1:
            after_call()
        return r

    monkeypatch.setattr(_context, "_FAST_SUBMIT", submit)
    return calls


@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize("change", ["released view", "shrunk bytearray"])
def test_a_buffer_changed_late_in_a_batch_is_refused_before_any_call(
    conv: str, change: str, ctx: IOContext, data_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resubmitted Iocbs are pinned chunk by chunk, but every one is checked
    before the first system call: a buffer released or shrunk since the last
    submission, last in a batch, refuses the whole batch."""
    submit = linux.io_submit if conv == "linux" else libaio.io_submit
    raw = [bytearray(16) for _ in range(9)]
    bufs: list[Any] = [memoryview(b) for b in raw] if change == "released view" else raw
    cbs = [Iocb.pread(data_fd, b, 16 * i, count=16, data=i) for i, b in enumerate(bufs)]
    assert submit(ctx, cbs) == 9
    wait_events(ctx, 9)
    if change == "released view":
        bufs[8].release()
    else:
        del raw[8][8:]
    calls = _record_submits(monkeypatch)
    with pytest.raises(ValueError):
        submit(ctx, cbs)
    assert calls == [] and not any(cb.in_flight for cb in cbs)
    assert ctx.statistics()["in_flight"] == 0 and ctx.statistics()["submitted"] == 9
    assert submit(ctx, cbs[:8]) == 8  # the others are still usable
    assert sorted(ev.data for ev in wait_events(ctx, 8)) == list(range(8))


@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize("n", [_context._SPLIT_AFTER, _context._SPLIT_AFTER + 4])
def test_a_buffer_shrunk_during_the_submission_ends_it(
    conv: str, n: int, ctx: IOContext, data_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large batch pins its bytearrays after its first system call: one
    shrunk (by another thread) in between, before its Iocb was pinned, ends
    the submission there -- io_submit returns what the kernel took, the
    rest are not in flight, and the kernel never sees the shrunk buffer.  A
    small batch is pinned whole before its first call (the bytearray cannot
    shrink then)."""
    submit = linux.io_submit if conv == "linux" else libaio.io_submit
    raw = [bytearray(16) for _ in range(n)]
    cbs = [Iocb.pread(data_fd, b, 16 * i, count=16, data=i) for i, b in enumerate(raw)]
    assert submit(ctx, cbs) == n
    wait_events(ctx, n)

    def shrink() -> None:
        try:
            del raw[-1][8:]
        except BufferError:  # pinned already
            pass

    calls = _record_submits(monkeypatch, after_call=shrink)
    taken = submit(ctx, cbs)
    if n <= _context._SPLIT_AFTER:
        assert taken == n and calls[0][0] > 1 and len(raw[-1]) == 16
    else:
        assert calls and taken == calls[0][1] == calls[0][0] < n and len(raw[-1]) == 8
    assert [cb.in_flight for cb in cbs] == [True] * taken + [False] * (n - taken)
    assert sorted(ev.data for ev in wait_events(ctx, taken)) == list(range(taken))
    assert ctx.statistics()["in_flight"] == 0
    del raw[-1][8:]
    with pytest.raises(ValueError):
        submit(ctx, cbs[-1:])


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_a_view_released_during_the_submission_keeps_its_memory(
    conv: str, ctx: IOContext, data_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resubmitted view is pinned (by a view of its own) before the first
    system call, even in a large batch: released (by another thread) after
    that call, the submission goes on, the memory it showed stays pinned
    (the bytearray under it cannot shrink) until the event is reaped, and
    the read lands there."""
    submit = linux.io_submit if conv == "linux" else libaio.io_submit
    n = _context._SPLIT_AFTER + 4
    raw = [bytearray(16) for _ in range(n)]
    views = [memoryview(b) for b in raw]
    cbs = [Iocb.pread(data_fd, v, 16 * i, count=16, data=i) for i, v in enumerate(views)]
    assert submit(ctx, cbs) == n
    wait_events(ctx, n)
    raw[-1][:] = bytes(16)
    calls = _record_submits(monkeypatch, after_call=views[-1].release)
    assert submit(ctx, cbs) == n and calls[0][0] < n
    with pytest.raises(BufferError):
        del raw[-1][8:]
    assert sorted(ev.data for ev in wait_events(ctx, n)) == list(range(n))
    assert raw[-1] == pattern(16 * n)[-16:]
    del raw[-1][8:]  # reaped: released
    with pytest.raises(ValueError):
        submit(ctx, cbs[-1:])


def test_a_context_destroyed_during_the_submission_takes_no_more(
    data_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """io_destroy (from another thread) between two system calls of one
    io_submit: the rest of the batch is not handed to the destroyed
    context's id (which the kernel may already have given to a new one)."""
    c = io_setup(32)
    cbs = [Iocb.pread(data_fd, bytearray(16), 16 * i, data=i) for i in range(20)]
    calls = _record_submits(monkeypatch, after_call=lambda: io_destroy(c))
    taken = io_submit(c, cbs)
    assert len(calls) == 1 and taken == calls[0][1] > 0
    assert c.closed and not any(cb.in_flight for cb in cbs)


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_an_interrupt_after_the_first_call_gives_back_the_rest(
    conv: str, ctx: IOContext, data_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C as the first system call of a batch returns: the requests the
    kernel took stay in flight and complete; the others (pinned or not yet)
    are given back."""
    submit = linux.io_submit if conv == "linux" else libaio.io_submit
    views = [xaio.aligned_buffer(16) for _ in range(9)]
    cbs = [Iocb.pread(data_fd, v, 16 * i, count=16, data=i) for i, v in enumerate(views)]
    assert submit(ctx, cbs) == 9
    wait_events(ctx, 9)

    def interrupt() -> None:
        raise KeyboardInterrupt

    calls = _record_submits(monkeypatch, after_call=interrupt)
    with pytest.raises(KeyboardInterrupt):
        submit(ctx, cbs)
    taken = calls[0][1]
    assert [cb.in_flight for cb in cbs] == [True] * taken + [False] * (9 - taken)
    assert ctx.statistics()["submitted"] == 9 + taken
    assert sorted(ev.data for ev in wait_events(ctx, taken)) == list(range(taken))
    monkeypatch.undo()
    assert submit(ctx, cbs) == 9
    assert len(wait_events(ctx, 9)) == 9


def test_a_released_view_in_flight_keeps_its_memory(ctx: IOContext, direct_fd: int) -> None:
    """A resubmitted request pins the memory behind its view, not the view:
    the user's view may be released while the read is in flight, the memory
    it showed stays put (a bytearray under it cannot be resized) until the
    event is reaped, and the read lands there."""
    expected = pattern(1 << 20)
    raw = mmap.mmap(-1, 8192)
    view = memoryview(raw)[4096:]
    x = Iocb.pread(direct_fd, view, 0)
    assert io_submit(ctx, [x]) == 1
    wait_events(ctx, 1)
    x.aio_offset = 4096
    assert io_submit(ctx, [x]) == 1  # pinned again, not built again
    view.release()
    with pytest.raises(BufferError):
        raw.close()
    (ev,) = wait_events(ctx, 1)
    assert ev.res == 4096 and raw[4096:] == expected[4096:8192]
    raw.close()  # reaped: released


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_an_iocb_listed_twice_is_refused_before_the_kernel(
    conv: str, ctx: IOContext, data_fd: int
) -> None:
    submit = linux.io_submit if conv == "linux" else libaio.io_submit
    x = Iocb.pread(data_fd, bytearray(8), 0)
    y = Iocb.pread(data_fd, bytearray(8), 8)
    for batch in ([x, x], [y, x, y]):
        with pytest.raises(IocbInFlightError):
            submit(ctx, batch)
        assert not x.in_flight and not y.in_flight
        assert ctx.statistics()["in_flight"] == 0 and ctx.statistics()["submitted"] == 0
    assert submit(ctx, [x, y]) == 2  # both still usable
    assert sorted(ev.res for ev in wait_events(ctx, 2)) == [8, 8]


def test_threads_submitting_on_one_context(ctx: IOContext, data_fd: int) -> None:
    """Concurrent io_submit calls on one context each use their own pointer
    array: every request comes back once, with its own data."""
    errors: list[BaseException] = []
    seen: list[int] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        try:
            cbs = [Iocb.pread(data_fd, bytearray(8), 0, data=t * 100 + i) for i in range(8)]
            for _ in range(50):
                assert io_submit(ctx, cbs) == 8
                deadline = time.monotonic() + 10
                while any(cb.in_flight for cb in cbs):
                    assert time.monotonic() < deadline
                    with lock:
                        seen.extend(ev.data for ev in io_getevents(ctx, 0, 64, 0))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert sorted(seen) == sorted(
        t * 100 + i for t in range(4) for i in range(8) for _ in range(50)
    )
