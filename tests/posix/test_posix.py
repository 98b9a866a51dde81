"""POSIX AIO (xaio.posix): every statement of SPEC §3, with real files, pipes,
sockets, signals and forks.

Signals: each test that expects a signal blocks it in the main thread first
(the library's threads block every signal), waits with ``sigtimedwait`` and
drains what is left before restoring the mask.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xaio.posix as P
from tests.support import (
    SIG,
    TIMEOUT,
    blocked,
    drain,
    engine_running,
    engine_unavailable,
    next_signal,
    no_signal,
    sigev,
    threads_started_since,
    unused_fd,
    wait_done,
    wait_until,
)
from xaio._ops import CancelOutcome, Operation
from xaio.engine import Engine
from xaio.posix import _runtime as R
from xaio.threads import ThreadEngine

pytestmark = pytest.mark.usefixtures("clean_posix")

# --- basics ----------------------------------------------------------------------------


def test_constants_have_glibc_values() -> None:
    assert (P.AIO_CANCELED, P.AIO_NOTCANCELED, P.AIO_ALLDONE) == (0, 1, 2)
    assert (P.LIO_READ, P.LIO_WRITE, P.LIO_NOP) == (0, 1, 2)
    assert (P.LIO_WAIT, P.LIO_NOWAIT) == (0, 1)
    assert (P.SIGEV_SIGNAL, P.SIGEV_NONE, P.SIGEV_THREAD) == (0, 1, 2)
    assert P.AIO_PRIO_DELTA_MAX == 20
    assert P.SI_ASYNCIO == -4


def test_defaults() -> None:
    cb = P.aiocb()
    assert (cb.aio_fildes, cb.aio_offset, cb.aio_buf, cb.aio_nbytes) == (-1, 0, None, None)
    assert (cb.aio_reqprio, cb.aio_sigevent, cb.aio_lio_opcode) == (0, None, P.LIO_NOP)
    sev = P.sigevent()
    assert (sev.sigev_notify, sev.sigev_signo, sev.sigev_value) == (P.SIGEV_NONE, 0, 0)
    assert sev.sigev_notify_function is None


def test_import_starts_no_thread() -> None:
    code = (
        "import threading, xaio, xaio.posix, xaio.threads; "
        "n = threading.active_count(); "
        "cb = xaio.posix.aiocb(0, 0, bytearray(1)); "
        "print(n, xaio.posix._runtime._engine is None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.split() == ["1", "True"]


@pytest.mark.usefixtures("engine")
def test_read_write_roundtrip(tfile: int) -> None:
    w = P.aiocb(tfile, 100, b"hello, world")
    P.aio_write(w)
    wait_done(w)
    assert P.aio_error(w) == 0
    assert P.aio_return(w) == 12
    buf = bytearray(20)
    r = P.aiocb(tfile, 100, buf, 12)
    P.aio_read(r)
    wait_done(r)
    assert P.aio_return(r) == 12
    assert bytes(buf[:12]) == b"hello, world"
    assert bytes(buf[12:]) == bytes(8)  # nbytes < len(buf): only nbytes touched


@pytest.mark.usefixtures("engine")
def test_read_at_eof_returns_zero(tfile: int) -> None:
    cb = P.aiocb(tfile, 10**9, bytearray(10))
    P.aio_read(cb)
    wait_done(cb)
    assert (P.aio_error(cb), P.aio_return(cb)) == (0, 0)


@pytest.mark.usefixtures("engine")
def test_zero_length_and_none_buffer(tfile: int) -> None:
    cb = P.aiocb(tfile, 0, None, 0)
    P.aio_read(cb)
    wait_done(cb)
    assert P.aio_return(cb) == 0


# --- §3.2 aio_read / aio_write --------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_aio_read_returns_at_once_on_empty_pipe(pipe: tuple[int, int]) -> None:
    r, w = pipe
    cb = P.aiocb(r, 0, bytearray(5))
    P.aio_read(cb)
    assert P.aio_error(cb) == errno.EINPROGRESS
    with pytest.raises(OSError) as ei:
        P.aio_return(cb)
    assert ei.value.errno == errno.EINPROGRESS
    os.write(w, b"abcde")
    wait_done(cb)
    assert P.aio_return(cb) == 5
    assert bytes(cb.aio_buf) == b"abcde"


@pytest.mark.usefixtures("engine")
def test_bad_fd_is_reported_by_aio_error_not_raised(tmp_path: Path) -> None:
    fd = unused_fd()
    for cb in (P.aiocb(fd, 0, bytearray(4)), P.aiocb(-1, 0, bytearray(4))):
        P.aio_read(cb)
        wait_done(cb)
        assert P.aio_error(cb) == errno.EBADF
        assert P.aio_return(cb) == -1
    cb = P.aiocb(fd, 0, b"data")
    P.aio_write(cb)
    wait_done(cb)
    assert P.aio_error(cb) == errno.EBADF


@pytest.mark.usefixtures("engine")
def test_write_on_read_only_fd_is_ebadf_later(tmp_path: Path) -> None:
    p = tmp_path / "ro"
    p.write_bytes(b"x" * 10)
    fd = os.open(p, os.O_RDONLY)
    try:
        cb = P.aiocb(fd, 0, b"data")
        P.aio_write(cb)
        wait_done(cb)
        assert (P.aio_error(cb), P.aio_return(cb)) == (errno.EBADF, -1)
    finally:
        os.close(fd)


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("offset", [-1, -4096, 2**63, 2**64])
@pytest.mark.parametrize("shape", ["bytearray", "mmap-nbytes"])
def test_offset_out_of_range_is_einval_later(tfile: int, offset: int, shape: str) -> None:
    """A negative offset, or one past 2**63 - 1, is EINVAL through aio_error,
    also for the aiocb shapes the page-cache fast path takes (a cached file):
    that path reads nothing, not even at the file position (-1 to preadv2)."""
    import mmap

    os.pread(tfile, 8192, 0)  # cached
    R._get_engine()
    pos = os.lseek(tfile, 100, os.SEEK_SET)
    before = inline_count()
    buf: Any = bytearray(4) if shape == "bytearray" else mmap.mmap(-1, 4096)
    cb = P.aiocb(tfile, offset, buf, None if shape == "bytearray" else len(buf))
    P.aio_read(cb)
    wait_done(cb)
    assert (P.aio_error(cb), P.aio_return(cb)) == (errno.EINVAL, -1)
    assert inline_count() == before
    assert os.lseek(tfile, 0, os.SEEK_CUR) == pos
    assert _bytes_of(buf) == bytes(len(buf))


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("prio", [-1, P.AIO_PRIO_DELTA_MAX + 1, 1000])
def test_reqprio_out_of_range_is_immediate_einval(tfile: int, prio: int) -> None:
    for fn, buf in ((P.aio_read, bytearray(4)), (P.aio_write, b"abcd")):
        cb = P.aiocb(tfile, 0, buf, aio_reqprio=prio)
        with pytest.raises(OSError) as ei:
            fn(cb)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(OSError):  # not submitted
            P.aio_error(cb)


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("prio", [0, P.AIO_PRIO_DELTA_MAX])
def test_reqprio_in_range_is_accepted(tfile: int, prio: int) -> None:
    cb = P.aiocb(tfile, 0, bytearray(4), aio_reqprio=prio)
    P.aio_read(cb)
    wait_done(cb)
    assert P.aio_return(cb) == 4


@pytest.mark.usefixtures("engine")
def test_lio_opcode_ignored_by_aio_read_write(tfile: int) -> None:
    cb = P.aiocb(tfile, 0, bytearray(4), aio_lio_opcode=P.LIO_WRITE)
    P.aio_read(cb)
    wait_done(cb)
    assert P.aio_return(cb) == 4
    cb = P.aiocb(tfile, 0, b"zz", aio_lio_opcode=99)
    P.aio_write(cb)
    wait_done(cb)
    assert P.aio_return(cb) == 2


@pytest.mark.usefixtures("engine")
def test_type_and_buffer_errors(tfile: int) -> None:
    with pytest.raises(TypeError):
        P.aio_read("not an aiocb")  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # read into a read-only buffer
        P.aio_read(P.aiocb(tfile, 0, b"read-only"))
    with pytest.raises(ValueError):  # nbytes larger than the buffer
        P.aio_read(P.aiocb(tfile, 0, bytearray(4), 5))
    with pytest.raises(ValueError):
        P.aio_write(P.aiocb(tfile, 0, None, 3))
    with pytest.raises(TypeError):
        P.aio_write(P.aiocb(tfile, 0, "text"))
    with pytest.raises(TypeError):
        P.aio_write(P.aiocb("3", 0, b"x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        P.aio_write(P.aiocb(tfile, 1.5, b"x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        P.aio_write(P.aiocb(tfile, 0, b"x", aio_sigevent=5))  # type: ignore[arg-type]
    with pytest.raises(OSError) as ei:
        P.aio_write(P.aiocb(tfile, 0, b"x", aio_sigevent=P.sigevent(7)))
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ei:
        P.aio_write(P.aiocb(tfile, 0, b"x", aio_sigevent=P.sigevent(P.SIGEV_SIGNAL, 0)))
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        P.aio_write(P.aiocb(tfile, 0, b"x", aio_sigevent=P.sigevent(P.SIGEV_THREAD)))


@pytest.mark.usefixtures("engine")
def test_resubmitting_in_progress_cb_is_einval(pipe: tuple[int, int]) -> None:
    r, w = pipe
    cb = P.aiocb(r, 0, bytearray(1))
    P.aio_read(cb)
    with pytest.raises(OSError) as ei:
        P.aio_read(cb)
    assert ei.value.errno == errno.EINVAL
    os.write(w, b"x")
    wait_done(cb)
    assert P.aio_return(cb) == 1


# --- aio_error / aio_return -----------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_error_and_return_on_never_submitted_cb() -> None:
    cb = P.aiocb(0, 0, bytearray(1))
    for fn in (P.aio_error, P.aio_return):
        with pytest.raises(OSError) as ei:
            fn(cb)
        assert ei.value.errno == errno.EINVAL


@pytest.mark.usefixtures("engine")
def test_return_only_once_then_resubmit(tfile: int) -> None:
    cb = P.aiocb(tfile, 0, bytearray(8))
    P.aio_read(cb)
    wait_done(cb)
    assert P.aio_return(cb) == 8
    with pytest.raises(OSError) as ei:
        P.aio_return(cb)
    assert ei.value.errno == errno.EINVAL
    assert P.aio_error(cb) == 0  # the error status stays readable
    cb.aio_offset = 16
    P.aio_read(cb)  # re-submission after retrieval
    wait_done(cb)
    assert P.aio_return(cb) == 8
    assert bytes(cb.aio_buf) == bytes(range(16, 24))


# --- aio_fsync -------------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_fsync_and_fdatasync(tfile: int) -> None:
    for op in (os.O_SYNC, os.O_DSYNC):
        cb = P.aiocb(tfile, aio_reqprio=99)  # reqprio ignored
        P.aio_fsync(op, cb)
        wait_done(cb)
        assert (P.aio_error(cb), P.aio_return(cb)) == (0, 0)


@pytest.mark.usefixtures("engine")
def test_fsync_bad_fd_and_bad_op(tfile: int, tmp_path: Path) -> None:
    fd = unused_fd()
    for bad in (fd, -1, 2**40):
        with pytest.raises(OSError) as ei:
            P.aio_fsync(os.O_SYNC, P.aiocb(bad))
        assert ei.value.errno == errno.EBADF
    for op in (0, os.O_RDWR, os.O_SYNC | os.O_APPEND, -1):
        with pytest.raises(OSError) as ei:
            P.aio_fsync(op, P.aiocb(tfile))
        assert ei.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        P.aio_fsync("sync", P.aiocb(tfile))  # type: ignore[arg-type]


@pytest.mark.usefixtures("engine")
def test_fsync_waits_for_requests_queued_before_it(
    dgram: tuple[socket.socket, socket.socket],
) -> None:
    a, b = dgram
    w = P.aiocb(a.fileno(), 0, b"w" * 512)
    P.aio_write(w)
    wait_until(lambda: engine_running() == 1)
    f = P.aiocb(a.fileno())
    P.aio_fsync(os.O_SYNC, f)
    # The fsync would finish at once (EINVAL: sockets cannot be synced), but
    # the write queued before it is blocked, so the fsync must wait.
    assert P.aio_error(f) == errno.EINPROGRESS
    with pytest.raises(OSError) as ei:
        P.aio_suspend([f], 0.05)
    assert ei.value.errno == errno.EAGAIN
    assert P.aio_error(f) == errno.EINPROGRESS
    drain(b, w, f)
    assert P.aio_return(w) == 512
    assert P.aio_error(f) == errno.EINVAL


# --- aio_suspend -----------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_suspend_timeout_is_eagain(pipe: tuple[int, int]) -> None:
    r, w = pipe
    cb = P.aiocb(r, 0, bytearray(1))
    P.aio_read(cb)
    t0 = time.monotonic()
    with pytest.raises(OSError) as ei:
        P.aio_suspend([cb], 0.05)
    assert ei.value.errno == errno.EAGAIN
    assert time.monotonic() - t0 >= 0.04
    with pytest.raises(OSError) as ei:
        P.aio_suspend([None, cb, None], 0)
    assert ei.value.errno == errno.EAGAIN
    os.write(w, b"x")
    wait_done(cb)


@pytest.mark.usefixtures("engine")
def test_suspend_returns_at_once(tfile: int, pipe: tuple[int, int]) -> None:
    """aio_suspend returns at once -- with a zero timeout it does not time out
    (EAGAIN) -- for an empty list, a list of None, and a list holding a cb that
    is not in progress (never submitted, done, done and retrieved) beside one
    that is; the one in progress alone times out."""
    r, w = pipe
    assert P.aio_suspend([], 0) is None
    assert P.aio_suspend([None, None], 0) is None
    pending = P.aiocb(r, 0, bytearray(1))
    P.aio_read(pending)
    with pytest.raises(OSError) as e:
        P.aio_suspend([pending], 0)
    assert e.value.errno == errno.EAGAIN
    assert P.aio_suspend([pending, P.aiocb(tfile)], 0) is None  # never submitted
    done = P.aiocb(tfile, 0, bytearray(1))
    P.aio_read(done)
    wait_done(done)
    assert P.aio_suspend([pending, None, done], 0) is None
    assert P.aio_return(done) == 1
    assert P.aio_suspend([pending, done], 0) is None  # retrieved: still not in progress
    assert P.aio_error(pending) == errno.EINPROGRESS
    os.write(w, b"x")
    wait_done(pending)
    assert P.aio_return(pending) == 1


@pytest.mark.usefixtures("engine")
def test_suspend_wakes_on_completion(pipe: tuple[int, int]) -> None:
    r, w = pipe
    cbs = [P.aiocb(r, 0, bytearray(1)) for _ in range(3)]
    for cb in cbs:
        P.aio_read(cb)
    result: list[BaseException | None] = []

    def waiter() -> None:
        try:
            P.aio_suspend([None, *cbs[1:], cbs[0]], TIMEOUT)
            result.append(None)
        except BaseException as e:  # pragma: no cover
            result.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    os.write(w, b"1")
    t.join(TIMEOUT)
    assert result == [None]
    os.write(w, b"23")
    wait_done(*cbs)
    # pipe reads are serialised: they complete in submission order
    assert [bytes(cb.aio_buf) for cb in cbs] == [b"1", b"2", b"3"]


@pytest.mark.usefixtures("engine")
def test_suspend_bad_arguments(pipe: tuple[int, int]) -> None:
    with pytest.raises(TypeError):
        P.aio_suspend([1])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        P.aio_suspend(P.aiocb())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        P.aio_suspend([], "1")  # type: ignore[arg-type]
    for bad in (-1.0, float("nan")):
        with pytest.raises(OSError) as ei:
            P.aio_suspend([], bad)
        assert ei.value.errno == errno.EINVAL


# --- §3.1 aio_cancel -------------------------------------------------------------------


def test_cancel_all_on_blocked_socket(dgram: tuple[socket.socket, socket.socket]) -> None:
    a, b = dgram
    fd = a.fileno()
    cbs = [P.aiocb(fd, 0, bytes([65 + i]) * 512, aio_sigevent=sigev(i)) for i in range(4)]
    with blocked(SIG):
        for cb in cbs:
            P.aio_write(cb)
        wait_until(lambda: engine_running() == 1)
        assert P.aio_cancel(fd, None) == P.AIO_NOTCANCELED
        assert P.aio_error(cbs[0]) == errno.EINPROGRESS  # the blocked one runs on
        for cb in cbs[1:]:
            assert P.aio_error(cb) == errno.ECANCELED
            assert P.aio_return(cb) == -1
        # the cancelled requests' notifications happened, in order
        got = [next_signal().si_status for _ in range(3)]
        assert got == [1, 2, 3]
        assert no_signal()
        drain(b, cbs[0])
        info = next_signal()
        assert (info.si_code, info.si_status) == (P.SI_ASYNCIO, 0)
    assert P.aio_return(cbs[0]) == 512
    assert P.aio_cancel(fd, None) == P.AIO_ALLDONE
    assert P.aio_cancel(fd, cbs[0]) == P.AIO_ALLDONE


@pytest.mark.usefixtures("engine")
def test_cancel_one_queued_request(dgram: tuple[socket.socket, socket.socket]) -> None:
    a, b = dgram
    fd = a.fileno()
    cbs = [P.aiocb(fd, 0, bytes([65 + i]) * 512) for i in range(3)]
    for cb in cbs:
        P.aio_write(cb)
    wait_until(lambda: engine_running() == 1)
    assert P.aio_cancel(fd, cbs[1]) == P.AIO_CANCELED
    assert P.aio_error(cbs[1]) == errno.ECANCELED
    assert P.aio_error(cbs[0]) == errno.EINPROGRESS
    assert P.aio_error(cbs[2]) == errno.EINPROGRESS
    assert P.aio_cancel(fd, cbs[1]) == P.AIO_ALLDONE  # already cancelled
    received = []
    deadline = time.monotonic() + TIMEOUT
    b.settimeout(0.01)
    while P.aio_error(cbs[0]) == errno.EINPROGRESS or P.aio_error(cbs[2]) == errno.EINPROGRESS:
        assert time.monotonic() < deadline
        with contextlib.suppress(TimeoutError):
            received.append(b.recv(65536)[:1])
    assert P.aio_return(cbs[0]) == P.aio_return(cbs[2]) == 512
    with contextlib.suppress(TimeoutError):
        while True:
            received.append(b.recv(65536)[:1])
    assert b"B" not in received
    assert received[-2:] == [b"A", b"C"]


@pytest.mark.usefixtures("engine")
def test_cancel_with_cb_ignores_fd(dgram: tuple[socket.socket, socket.socket], tfile: int) -> None:
    a, b = dgram
    cbs = [P.aiocb(a.fileno(), 0, b"x" * 512) for _ in range(2)]
    for cb in cbs:
        P.aio_write(cb)
    wait_until(lambda: engine_running() == 1)
    assert P.aio_cancel(tfile, cbs[1]) == P.AIO_CANCELED  # another (open) fd
    assert P.aio_error(cbs[1]) == errno.ECANCELED
    drain(b, cbs[0])


@pytest.mark.usefixtures("engine")
def test_cancel_errors(tfile: int, tmp_path: Path) -> None:
    fd = unused_fd()
    never = P.aiocb(tfile, 0, bytearray(1))
    for bad in (fd, -1, 2**40):
        for cb in (None, never):  # EBADF is checked first, with or without a cb
            with pytest.raises(OSError) as ei:
                P.aio_cancel(bad, cb)
            assert ei.value.errno == errno.EBADF
    with pytest.raises(OSError) as ei:
        P.aio_cancel(tfile, never)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        P.aio_cancel("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        P.aio_cancel(tfile, 5)  # type: ignore[arg-type]


@pytest.mark.usefixtures("engine")
def test_cancel_alldone(tfile: int) -> None:
    assert P.aio_cancel(tfile) == P.AIO_ALLDONE  # nothing queued
    cb = P.aiocb(tfile, 0, bytearray(4))
    P.aio_read(cb)
    wait_done(cb)
    assert P.aio_cancel(tfile, cb) == P.AIO_ALLDONE
    assert P.aio_cancel(tfile) == P.AIO_ALLDONE
    assert P.aio_return(cb) == 4  # not modified by the cancel


@pytest.mark.usefixtures("engine")
def test_cancel_wakes_suspend_and_thread_notification(
    dgram: tuple[socket.socket, socket.socket],
) -> None:
    a, b = dgram
    got: list[Any] = []
    called = threading.Event()

    def notify(value: Any) -> None:
        got.append((value, threading.current_thread() is threading.main_thread()))
        called.set()

    w0 = P.aiocb(a.fileno(), 0, b"x" * 512)
    w1 = P.aiocb(
        a.fileno(), 0, b"y" * 512, aio_sigevent=P.sigevent(P.SIGEV_THREAD, 0, "v1", notify)
    )
    P.aio_write(w0)
    P.aio_write(w1)
    wait_until(lambda: engine_running() == 1)
    woke: list[bool] = []

    def suspend() -> None:
        P.aio_suspend([w1], TIMEOUT)
        woke.append(True)

    t = threading.Thread(target=suspend)
    t.start()
    assert P.aio_cancel(a.fileno(), w1) == P.AIO_CANCELED
    t.join(TIMEOUT)
    assert woke == [True]
    assert called.wait(TIMEOUT)
    assert got == [("v1", False)]
    drain(b, w0)


@pytest.mark.usefixtures("engine")
def test_cancelled_request_makes_lio_wait_fail(
    dgram: tuple[socket.socket, socket.socket],
) -> None:
    a, b = dgram
    cbs = [P.aiocb(a.fileno(), 0, b"z" * 512, aio_lio_opcode=P.LIO_WRITE) for _ in range(2)]
    err: list[OSError] = []

    def run() -> None:
        try:
            P.lio_listio(P.LIO_WAIT, cbs)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: cbs[1]._in_progress and engine_running() == 1)
    assert P.aio_cancel(a.fileno(), cbs[1]) == P.AIO_CANCELED
    drain(b, cbs[0])
    t.join(TIMEOUT)
    assert not t.is_alive()
    assert len(err) == 1 and err[0].errno == errno.EIO
    assert P.aio_return(cbs[0]) == 512
    assert P.aio_error(cbs[1]) == errno.ECANCELED


# --- lio_listio ------------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_lio_wait_reads_and_writes(tfile: int) -> None:
    bufs = [bytearray(16) for _ in range(8)]
    reads = [P.aiocb(tfile, 16 * i, bufs[i], aio_lio_opcode=P.LIO_READ) for i in range(8)]
    P.lio_listio(P.LIO_WAIT, [None, *reads, P.aiocb(aio_lio_opcode=P.LIO_NOP)])
    for i, cb in enumerate(reads):
        assert P.aio_return(cb) == 16
        assert bytes(bufs[i]) == bytes(range(16 * i, 16 * i + 16))
    w = P.aiocb(tfile, 5000, b"abc", aio_lio_opcode=P.LIO_WRITE)
    P.lio_listio(P.LIO_WAIT, [w], sig=sigev(1))  # sig ignored with LIO_WAIT
    assert P.aio_return(w) == 3
    assert os.pread(tfile, 3, 5000) == b"abc"
    P.lio_listio(P.LIO_WAIT, [])


@pytest.mark.usefixtures("engine")
def test_lio_wait_dev_full_is_eio() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        ok = P.aiocb(fd, 0, bytearray(4), aio_lio_opcode=P.LIO_READ)  # /dev/full reads zeros
        bad = P.aiocb(fd, 0, b"data", aio_lio_opcode=P.LIO_WRITE)
        fdr = os.open("/dev/full", os.O_RDONLY)
        try:
            ok.aio_fildes = fdr
            with pytest.raises(OSError) as ei:
                P.lio_listio(P.LIO_WAIT, [ok, bad])
            assert ei.value.errno == errno.EIO
            assert (P.aio_error(bad), P.aio_return(bad)) == (errno.ENOSPC, -1)
            assert (P.aio_error(ok), P.aio_return(ok)) == (0, 4)
        finally:
            os.close(fdr)
    finally:
        os.close(fd)


@pytest.mark.usefixtures("engine")
def test_lio_nowait_notifications_in_order(tfile: int) -> None:
    cbs = [
        P.aiocb(tfile, i, bytearray(1), aio_lio_opcode=P.LIO_READ, aio_sigevent=sigev(i + 1))
        for i in range(5)
    ]
    with blocked(SIG):
        P.lio_listio(P.LIO_NOWAIT, cbs, sig=sigev(100))
        values = [next_signal().si_status for _ in range(6)]
        assert no_signal()
    assert sorted(values[:5]) == [1, 2, 3, 4, 5]
    assert values[5] == 100  # the list notification comes last
    assert [P.aio_return(cb) for cb in cbs] == [1] * 5


@pytest.mark.usefixtures("engine")
def test_lio_nowait_empty_list_notifies_at_once() -> None:
    with blocked(SIG):
        P.lio_listio(P.LIO_NOWAIT, [None, P.aiocb()], sig=sigev(7))
        assert next_signal(timeout=1).si_status == 7
        P.lio_listio(P.LIO_NOWAIT, [])  # no sig: nothing
        assert no_signal()


@pytest.mark.usefixtures("engine")
def test_lio_nowait_returns_at_once(pipe: tuple[int, int]) -> None:
    r, w = pipe
    cb = P.aiocb(r, 0, bytearray(2), aio_lio_opcode=P.LIO_READ)
    P.lio_listio(P.LIO_NOWAIT, [cb])
    assert P.aio_error(cb) == errno.EINPROGRESS
    os.write(w, b"ok")
    wait_done(cb)
    assert P.aio_return(cb) == 2


@pytest.mark.usefixtures("engine")
def test_lio_bad_opcode_and_mode(tfile: int) -> None:
    bad = P.aiocb(tfile, 0, bytearray(1), aio_lio_opcode=42)
    good = P.aiocb(tfile, 0, bytearray(1), aio_lio_opcode=P.LIO_READ)
    P.lio_listio(P.LIO_NOWAIT, [bad, good])
    wait_done(bad, good)
    assert (P.aio_error(bad), P.aio_return(bad)) == (errno.EINVAL, -1)
    assert P.aio_return(good) == 1
    with pytest.raises(OSError) as ei:
        P.lio_listio(P.LIO_WAIT, [P.aiocb(tfile, 0, bytearray(1), aio_lio_opcode=7)])
    assert ei.value.errno == errno.EIO
    for mode in (2, -1, 99):
        with pytest.raises(OSError) as ei:
            P.lio_listio(mode, [good])
        assert ei.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        P.lio_listio(P.LIO_WAIT, [1])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        P.lio_listio(P.LIO_WAIT, good)  # type: ignore[arg-type]


@pytest.mark.usefixtures("engine")
def test_lio_reqprio_out_of_range(tfile: int) -> None:
    bad = P.aiocb(tfile, 0, bytearray(1), aio_lio_opcode=P.LIO_READ, aio_reqprio=50)
    good = P.aiocb(tfile, 0, bytearray(1), aio_lio_opcode=P.LIO_READ)
    with pytest.raises(OSError) as ei:
        P.lio_listio(P.LIO_NOWAIT, [good, bad])
    assert ei.value.errno == errno.EIO
    wait_done(good, bad)
    assert P.aio_error(bad) == errno.EINVAL
    assert P.aio_return(good) == 1


@pytest.mark.usefixtures("engine")
def test_lio_type_error_queues_nothing(tfile: int) -> None:
    good = P.aiocb(tfile, 0, bytearray(1), aio_lio_opcode=P.LIO_READ)
    bad = P.aiocb(tfile, 0, b"ro", aio_lio_opcode=P.LIO_READ)
    with pytest.raises(TypeError):
        P.lio_listio(P.LIO_WAIT, [good, bad])
    with pytest.raises(OSError):
        P.aio_error(good)  # never submitted


# --- notification ---------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_sigev_signal_siginfo(tfile: int) -> None:
    cb = P.aiocb(tfile, 0, bytearray(1), aio_sigevent=sigev(0x1234567))
    with blocked(SIG):
        P.aio_read(cb)
        info = next_signal()
        assert info.si_signo == SIG
        assert info.si_code == P.SI_ASYNCIO
        assert info.si_pid == os.getpid()
        assert info.si_uid == os.getuid()
        assert info.si_status == 0x1234567  # si_value's low 32 bits
    assert P.aio_return(cb) == 1


@pytest.mark.usefixtures("engine")
def test_sigev_thread_slow_callback_does_not_delay_others(tfile: int) -> None:
    release = threading.Event()
    fast_done = threading.Event()
    seen: list[Any] = []

    def slow(value: Any) -> None:
        seen.append(value)
        assert release.wait(TIMEOUT)

    def fast(value: Any) -> None:
        seen.append(value)
        fast_done.set()

    c1 = P.aiocb(tfile, 0, bytearray(1), aio_sigevent=P.sigevent(P.SIGEV_THREAD, 0, "s", slow))
    P.aio_read(c1)
    wait_until(lambda: "s" in seen)
    c2 = P.aiocb(tfile, 0, bytearray(1), aio_sigevent=P.sigevent(P.SIGEV_THREAD, 0, "f", fast))
    P.aio_read(c2)
    assert fast_done.wait(TIMEOUT), "a slow SIGEV_THREAD callback delayed another"
    # and completions are not delayed either
    c3 = P.aiocb(tfile, 0, bytearray(1))
    P.aio_read(c3)
    wait_done(c3)
    release.set()
    assert seen == ["s", "f"]


@pytest.mark.usefixtures("engine")
def test_library_threads_block_all_signals(tfile: int) -> None:
    masks: list[set[int]] = []

    def notify(_: Any) -> None:
        masks.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))

    cb = P.aiocb(tfile, 0, bytearray(1), aio_sigevent=P.sigevent(P.SIGEV_THREAD, 0, 0, notify))
    P.aio_read(cb)
    wait_until(lambda: bool(masks))
    assert {signal.SIGUSR1, signal.SIGINT, signal.SIGTERM, SIG} <= masks[0]
    for t in threading.enumerate():
        if t.name.startswith("xaio-") and t.native_id is not None:
            with contextlib.suppress(FileNotFoundError):
                status = Path(f"/proc/self/task/{t.native_id}/status").read_text()
                line = next(x for x in status.splitlines() if x.startswith("SigBlk"))
                blk = int(line.split()[1], 16)
                for s in (signal.SIGUSR1, signal.SIGINT, signal.SIGTERM, SIG):
                    assert blk & (1 << (s - 1)), (t.name, s)


# --- ordering --------------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_append_writes_land_in_submission_order(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        recs = [f"record {i:04d}\n".encode() for i in range(200)]
        cbs = [P.aiocb(fd, 0, r) for r in recs]
        for cb in cbs:
            P.aio_write(cb)
        wait_done(*cbs)
        assert all(P.aio_return(cb) == 12 for cb in cbs)
    finally:
        os.close(fd)
    assert (tmp_path / "log").read_bytes() == b"".join(recs)


@pytest.mark.usefixtures("engine")
def test_pipe_writes_in_submission_order() -> None:
    # 300 trials with the GIL handed over every 10 us: a pipe's requests are
    # serial even when its lane ends and is made anew during a submit
    chunks = [bytes([i % 256]) * 1000 for i in range(100)]  # 100 kB > pipe buffer
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for _ in range(300):
            r, w = os.pipe()
            try:
                cbs = [P.aiocb(w, 0, c) for c in chunks]
                for cb in cbs:
                    P.aio_write(cb)
                out = bytearray()
                while len(out) < 100_000:
                    out += os.read(r, 65536)
                wait_done(*cbs)
            finally:
                os.close(r)
                os.close(w)
            assert bytes(out) == b"".join(chunks)
    finally:
        sys.setswitchinterval(old)


def test_positional_io_on_regular_file_is_not_serialised(
    tfile: int, pipe: tuple[int, int], dgram: tuple[socket.socket, socket.socket]
) -> None:
    # One worker is stuck on a socket; with threads=3 the other two take the
    # file reads, which are all ready at once (not held behind each other).
    P.aio_init(threads=3)
    a, b = dgram
    blocker = P.aiocb(a.fileno(), 0, b"q" * 512)
    P.aio_write(blocker)
    r, _w = pipe
    reads = [P.aiocb(r, 0, bytearray(1)) for _ in range(2)]
    for cb in reads:
        P.aio_read(cb)
    eng = R._engine
    assert eng is not None
    lanes = eng._lanes  # type: ignore[attr-defined]
    assert lanes[a.fileno()].serial and lanes[r].serial
    assert len(lanes[r].held) == 1  # stream: the second read waits for the first
    cbs = [P.aiocb(tfile, i * 10, bytearray(10)) for i in range(20)]
    for cb in cbs:
        P.aio_read(cb)
    wait_done(*cbs)
    assert all(P.aio_return(cb) == 10 for cb in cbs)
    os.write(_w, b"12")
    drain(b, blocker, *reads)


# --- threads, idle time, fork, concurrency ---------------------------------------------


def test_aio_init_threads_and_idle_time(tfile: int) -> None:
    before = set(threading.enumerate())
    P.aio_init(threads=2, num=8, idle_time=0.05)
    cbs = [P.aiocb(tfile, i, bytearray(1)) for i in range(50)]
    for cb in cbs:
        P.aio_read(cb)
    wait_done(*cbs)
    eng = R._engine
    assert eng is not None
    st_ = eng.statistics()
    assert st_["max_threads"] == 2 and st_["num"] == 8 and st_["spawned"] <= 2
    assert len(threads_started_since(before)) <= 2
    wait_until(lambda: not threads_started_since(before), timeout=5)  # idle threads exit


def test_aio_init_bad_arguments() -> None:
    with pytest.raises(ValueError):
        P.aio_init(threads=0)
    with pytest.raises(ValueError):
        P.aio_init(idle_time=-1)
    with pytest.raises(TypeError):
        P.aio_init(threads="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        P.aio_init(engine=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        P.aio_init(engine="nonsense")


def test_other_engine_through_reaper(tfile: int) -> None:
    from xaio.threads import ThreadEngine

    eng = ThreadEngine(threads=2)  # reap mode: posix needs its reaper thread
    try:
        P.aio_init(engine=eng)
        cb = P.aiocb(tfile, 0, bytearray(3))
        P.aio_read(cb)
        wait_done(cb)
        assert P.aio_return(cb) == 3
        P.aio_init()  # back to the default engine
    finally:
        R._shutdown()
        eng.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads (3.12+)
def test_forked_child_can_use_aio(tfile: int, pipe: tuple[int, int], engine: str) -> None:
    r, w = pipe
    parent_engine = R._get_engine()
    parent_cb = P.aiocb(r, 0, bytearray(4))
    P.aio_read(parent_cb)  # stays in progress across the fork
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            try:
                P.aio_error(parent_cb)
                code = 2  # the parent's request must not be inherited
            except OSError as e:
                if e.errno == errno.EINVAL:
                    cb = P.aiocb(tfile, 0, bytearray(4))
                    P.aio_read(cb)
                    P.aio_suspend([cb], 5)
                    eng = R._engine
                    fresh = eng is not parent_engine and eng is not None and eng.name == engine
                    if P.aio_error(cb) == 0 and bytes(cb.aio_buf) == bytes(range(4)):
                        code = 0 if fresh else 3
                    R._shutdown()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert P.aio_error(parent_cb) == errno.EINPROGRESS
    os.write(w, b"data")
    wait_done(parent_cb)
    assert P.aio_return(parent_cb) == 4
    assert bytes(parent_cb.aio_buf) == b"data"


@pytest.mark.usefixtures("engine")
def test_random_submit_and_cancel_from_20_threads(
    tfile: int, dgram: tuple[socket.socket, socket.socket]
) -> None:
    a, b = dgram
    ends: dict[int, int] = {}
    lock = threading.Lock()

    def notify(i: Any) -> None:
        with lock:
            ends[i] = ends.get(i, 0) + 1

    all_cbs: list[P.aiocb] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for k in range(40):
                i = seed * 1000 + k
                sev = P.sigevent(P.SIGEV_THREAD, 0, i, notify)
                if rng.random() < 0.3:
                    cb = P.aiocb(a.fileno(), 0, b"s" * 256, aio_sigevent=sev)
                    P.aio_write(cb)
                else:
                    cb = P.aiocb(tfile, rng.randrange(16000), bytearray(64), aio_sigevent=sev)
                    P.aio_read(cb)
                with lock:
                    all_cbs.append(cb)
                r = rng.random()
                if r < 0.3:
                    P.aio_cancel(cb.aio_fildes, cb)
                elif r < 0.4:
                    P.aio_cancel(rng.choice([a.fileno(), tfile]))
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors
    assert P.aio_cancel(a.fileno()) in (P.AIO_CANCELED, P.AIO_NOTCANCELED, P.AIO_ALLDONE)
    drain(b, *all_cbs)
    assert len(all_cbs) == 800
    wait_until(lambda: len(ends) == 800)
    assert set(ends.values()) == {1}
    for cb in all_cbs:
        e = P.aio_error(cb)
        ret = P.aio_return(cb)
        if e == 0:
            assert ret in (64, 256)
        else:
            assert e == errno.ECANCELED and ret == -1


# --- hypothesis: argument checking of the public entry points ------------------------

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.binary(max_size=8),
    st.builds(bytearray, st.binary(max_size=8)),
    st.builds(lambda b: memoryview(b), st.binary(max_size=8)),
    st.lists(st.integers(0, 3), max_size=2),
)
_ALLOWED = (TypeError, ValueError, OSError)


def _settle(cbs: list[Any]) -> None:
    for cb in cbs:
        if isinstance(cb, P.aiocb) and cb._in_progress:
            P.aio_suspend([cb], TIMEOUT)
            assert P.aio_error(cb) != errno.EINPROGRESS


@pytest.fixture(scope="module")
def fuzz_fd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    p = tmp_path_factory.mktemp("fuzz") / "f"
    p.write_bytes(b"x" * 100)
    fd = os.open(p, os.O_RDWR)
    yield fd
    os.close(fd)


@pytest.mark.usefixtures("engine")
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    fd_choice=st.sampled_from(["file", "bad", "neg", "huge", "str"]),
    offset=_values,
    buf=_values,
    nbytes=_values,
    prio=_values,
    opcode=_values,
    sev_kind=st.sampled_from(["none", "obj", "signal-bad", "thread-bad", "garbage"]),
    which=st.sampled_from(["read", "write", "fsync", "cancel", "lio", "suspend", "init"]),
    extra=_values,
)
def test_fuzz_argument_checking(
    fuzz_fd: int,
    fd_choice: str,
    offset: Any,
    buf: Any,
    nbytes: Any,
    prio: Any,
    opcode: Any,
    sev_kind: str,
    which: str,
    extra: Any,
) -> None:
    fd: Any = {"file": fuzz_fd, "bad": 987654, "neg": -5, "huge": 2**40, "str": "3"}[fd_choice]
    sev = {
        "none": None,
        "obj": P.sigevent(),
        "signal-bad": P.sigevent(P.SIGEV_SIGNAL, 0, extra),
        "thread-bad": P.sigevent(P.SIGEV_THREAD, 0, 0, extra),
        "garbage": extra,
    }[sev_kind]
    cb = P.aiocb(fd, offset, buf, nbytes, prio, sev, opcode)
    try:
        if which == "read":
            P.aio_read(cb)
        elif which == "write":
            P.aio_write(cb)
        elif which == "fsync":
            P.aio_fsync(extra, cb)
        elif which == "cancel":
            P.aio_cancel(fd, cb if extra is None else extra)
        elif which == "lio":
            P.lio_listio(extra if isinstance(extra, int) else P.LIO_NOWAIT, [cb, None])
        elif which == "suspend":
            P.aio_suspend([cb], extra)
        else:
            P.aio_init(extra, 64, 1.0)
    except OSError as e:
        assert e.errno in (errno.EINVAL, errno.EBADF, errno.EAGAIN, errno.EIO)
    except _ALLOWED:
        pass
    _settle([cb])


# --- the page-cache fast path ---------------------------------------------------------


def inline_count() -> int:
    eng = R._engine
    assert eng is not None
    return int(eng.statistics()["inline"])


def test_cached_read_completes_at_once(tfile: int) -> None:
    os.pread(tfile, 4096, 0)  # in the page cache
    warm = P.aiocb(tfile, 0, bytearray(1))
    P.aio_read(warm)
    wait_done(warm)
    before = inline_count()
    buf = bytearray(100)
    cb = P.aiocb(tfile, 10, buf)
    with blocked(SIG):
        cb.aio_sigevent = sigev(5)
        P.aio_read(cb)
        assert P.aio_error(cb) == 0  # RWF_NOWAIT read done inline
        assert next_signal().si_status == 5  # and notified all the same
    assert inline_count() == before + 1
    assert P.aio_return(cb) == 100
    assert bytes(buf) == bytes(range(10, 110))
    with pytest.raises(OSError):
        P.aio_return(cb)


def test_no_inline_read_for_direct_or_append(tmp_path: Path) -> None:
    p = tmp_path / "d"
    p.write_bytes(bytes(range(256)) * 64)
    R._get_engine()
    try:
        dfd = os.open(p, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:  # pragma: no cover
        pytest.skip(f"O_DIRECT not supported here: {e}")
    afd = os.open(p, os.O_RDWR | os.O_APPEND)
    try:
        import xaio

        buf = xaio.aligned_buffer(4096)
        before = inline_count()
        cbs = [P.aiocb(dfd, 4096, buf), P.aiocb(afd, 0, bytearray(16))]
        for cb in cbs:
            P.aio_read(cb)
        wait_done(*cbs)
        assert inline_count() == before
        assert P.aio_return(cbs[0]) == 4096 and bytes(buf[:4]) == bytes(range(4))
        assert P.aio_return(cbs[1]) == 16
    finally:
        os.close(dfd)
        os.close(afd)


def test_aio_init_engine_switch_busy(pipe: tuple[int, int]) -> None:
    from xaio.threads import ThreadEngine

    r, w = pipe
    cb = P.aiocb(r, 0, bytearray(1))
    P.aio_read(cb)
    eng = ThreadEngine(threads=1)
    try:
        with pytest.raises(OSError) as ei:
            P.aio_init(engine=eng)  # requests in progress on the current engine
        assert ei.value.errno == errno.EBUSY
        P.aio_init(threads=4, engine="thread")  # same engine: just tuning
        os.write(w, b"x")
        wait_done(cb)
        assert P.aio_return(cb) == 1
    finally:
        eng.close()


# --- the page-cache fast path: every aiocb shape a user writes -------------------------


class _SubAiocb(P.aiocb):
    """An aiocb subclass, as an application may define one."""

    __slots__ = ("tag",)


def _buffer_kinds() -> dict[str, Callable[[], tuple[Any, int | None, int]]]:
    """name -> make() giving (aio_buf, aio_nbytes, bytes read)."""
    import array
    import ctypes
    import mmap

    return {
        "bytearray": lambda: (bytearray(100), None, 100),
        "mmap": lambda: (mmap.mmap(-1, 4096), None, 4096),
        "mmap-nbytes": lambda: (mmap.mmap(-1, 4096), 4096, 4096),
        "mmap-short-nbytes": lambda: (mmap.mmap(-1, 4096), 100, 100),
        "memoryview": lambda: (memoryview(bytearray(100)), None, 100),
        "memoryview-of-mmap": lambda: (memoryview(mmap.mmap(-1, 4096))[:100], None, 100),
        "array": lambda: (array.array("i", bytes(100)), None, 100),
        "array-nbytes": lambda: (array.array("i", bytes(100)), 40, 40),
        "ctypes-char": lambda: ((ctypes.c_char * 100)(), None, 100),
        "ctypes-uint32-nbytes": lambda: ((ctypes.c_uint32 * 25)(), 100, 100),
        "bytearray-nbytes": lambda: (bytearray(200), 100, 100),
    }


def _bytes_of(buf: Any) -> bytes:
    with memoryview(buf) as v, v.cast("B") as b:
        return bytes(b)


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("kind", [*sorted(_buffer_kinds()), "subclass"])
def test_cached_read_inline_for_every_buffer_kind(tfile: int, kind: str) -> None:
    """aio_read of page-cached data is done in the caller's thread for every
    writable buffer and with an explicit aio_nbytes, on an aiocb subclass
    too: complete when aio_read returns, counted as inline by the engine."""
    os.pread(tfile, 8192, 0)  # in the page cache
    R._get_engine()
    if kind == "subclass":
        buf, nbytes, n = bytearray(100), None, 100
        cb: P.aiocb = _SubAiocb(tfile, 10, buf, nbytes)
    else:
        buf, nbytes, n = _buffer_kinds()[kind]()
        cb = P.aiocb(aio_fildes=tfile, aio_buf=buf, aio_nbytes=nbytes, aio_offset=10)
    before = inline_count()
    P.aio_read(cb)
    assert P.aio_error(cb) == 0  # done before aio_read returned
    assert inline_count() == before + 1
    assert P.aio_return(cb) == n
    got = _bytes_of(buf)
    assert got[:n] == (bytes(range(256)) * 64)[10 : 10 + n]
    assert got[n:] == bytes(len(got) - n)  # nothing past aio_nbytes touched


@pytest.mark.usefixtures("engine")
def test_inline_read_refuses_bad_buffers_like_the_normal_path(tfile: int) -> None:
    """The fast path raises nothing of its own: a read-only buffer, a wrong
    aio_nbytes type or size give the errors the normal path gives."""
    import mmap

    os.pread(tfile, 8192, 0)
    R._get_engine()
    ro = mmap.mmap(-1, 4096, prot=mmap.PROT_READ)
    cases: list[tuple[Any, Any, type[Exception]]] = [
        (ro, None, TypeError),
        (ro, 4096, TypeError),
        (bytes(100), None, TypeError),
        (bytearray(100), 100.0, TypeError),
        (bytearray(100), True, TypeError),
        (bytearray(100), 101, ValueError),
        (mmap.mmap(-1, 4096), 4097, ValueError),
        (bytearray(100), -1, ValueError),
    ]
    before = inline_count()
    for buf, nbytes, exc in cases:
        cb = P.aiocb(tfile, 0, buf, nbytes)
        with pytest.raises(exc):
            P.aio_read(cb)
        with pytest.raises(OSError) as ei:
            P.aio_error(cb)  # not submitted
        assert ei.value.errno == errno.EINVAL
    assert inline_count() == before


@pytest.mark.usefixtures("engine")
def test_inline_read_checks_the_other_fields_like_the_normal_path(tfile: int) -> None:
    """The fast path takes a valid priority and a sigevent (the request is
    notified), and refuses what the normal path refuses, with its error: a
    bool or out-of-range priority, a bool fd or offset, a bad sigevent."""
    import mmap

    os.pread(tfile, 8192, 0)
    R._get_engine()
    before = inline_count()
    cb = P.aiocb(tfile, 0, mmap.mmap(-1, 4096), 4096, aio_reqprio=P.AIO_PRIO_DELTA_MAX)
    P.aio_read(cb)
    assert P.aio_error(cb) == 0 and P.aio_return(cb) == 4096
    got: list[Any] = []
    done = threading.Event()
    sev = P.sigevent(
        P.SIGEV_THREAD, sigev_value=7, sigev_notify_function=lambda v: (got.append(v), done.set())
    )
    cb = P.aiocb(tfile, 0, mmap.mmap(-1, 4096), 4096, aio_sigevent=sev)
    P.aio_read(cb)
    assert P.aio_error(cb) == 0 and P.aio_return(cb) == 4096
    assert done.wait(TIMEOUT) and got == [7]
    assert inline_count() == before + 2
    cases: list[tuple[dict[str, Any], type[Exception], int | None]] = [
        ({"aio_reqprio": False}, TypeError, None),
        ({"aio_reqprio": 0.0}, TypeError, None),
        ({"aio_reqprio": P.AIO_PRIO_DELTA_MAX + 1}, OSError, errno.EINVAL),
        ({"aio_reqprio": -1}, OSError, errno.EINVAL),
        ({"aio_fildes": True}, TypeError, None),
        ({"aio_offset": True}, TypeError, None),
        ({"aio_sigevent": P.sigevent(P.SIGEV_SIGNAL, 0)}, OSError, errno.EINVAL),
    ]
    for fields, exc, err in cases:
        cb = P.aiocb(
            **{"aio_fildes": tfile, "aio_buf": mmap.mmap(-1, 4096), "aio_nbytes": 4096, **fields}
        )
        with pytest.raises(exc) as ei:
            P.aio_read(cb)
        if err is not None:
            assert isinstance(ei.value, OSError) and ei.value.errno == err
        with pytest.raises(OSError) as en:
            P.aio_error(cb)  # not submitted
        assert en.value.errno == errno.EINVAL
    assert inline_count() == before + 2


@pytest.mark.usefixtures("engine")
def test_inline_read_refused_for_direct_append_and_streams(tmp_path: Path) -> None:
    """The user's aiocb shape (an mmap buffer, explicit aio_nbytes) on an
    O_DIRECT fd, an O_APPEND fd and a pipe goes to the engine: not inline,
    and correct."""
    import mmap

    p = tmp_path / "d"
    p.write_bytes(bytes(range(256)) * 64)
    R._get_engine()
    fds = []
    try:
        with contextlib.suppress(OSError):  # no O_DIRECT on this file system
            fds.append(os.open(p, os.O_RDONLY | os.O_DIRECT))
        fds.append(os.open(p, os.O_RDWR | os.O_APPEND))
        r, w = os.pipe()
        fds += [r, w]
        os.write(w, bytes(range(256)) * 16)
        before = inline_count()
        cbs = []
        for fd in fds[:-1]:
            cb = P.aiocb(aio_fildes=fd, aio_buf=mmap.mmap(-1, 4096), aio_nbytes=4096)
            P.aio_read(cb)
            cbs.append(cb)
        wait_done(*cbs)
        assert inline_count() == before
        for cb in cbs:
            assert P.aio_return(cb) == 4096
            assert _bytes_of(cb.aio_buf) == bytes(range(256)) * 16
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.usefixtures("engine")
def test_inline_read_is_bounded(tmp_path: Path) -> None:
    """A cached read larger than INLINE_MAX is handed to the engine (aio_read
    copies no more than the bound in the caller's thread); a small read
    queued after it on the same file is done inline, before it."""
    from xaio._pagecache import INLINE_MAX

    size = INLINE_MAX + 8192
    data = random.Random(7).randbytes(size)
    p = tmp_path / "big"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.pread(fd, size, 0)  # all in the page cache
        R._get_engine()
        before = inline_count()
        big = P.aiocb(fd, 0, bytearray(INLINE_MAX + 4096))
        small = P.aiocb(fd, size - 4096, bytearray(4096), 4096)
        P.aio_read(big)
        P.aio_read(small)
        assert P.aio_error(small) == 0  # done inline
        assert inline_count() == before + 1  # the small one only
        wait_done(big)
        assert P.aio_return(big) == INLINE_MAX + 4096 and big.aio_buf == data[: INLINE_MAX + 4096]
        assert P.aio_return(small) == 4096 and small.aio_buf == data[-4096:]
        exact = P.aiocb(fd, 0, bytearray(INLINE_MAX), INLINE_MAX)  # the bound itself: inline
        P.aio_read(exact)
        assert P.aio_error(exact) == 0 and inline_count() == before + 2
        assert P.aio_return(exact) == INLINE_MAX
    finally:
        os.close(fd)


@pytest.mark.parametrize("engine_name", ["thread", "linux"])
def test_inline_read_refused_behind_held_back_work(
    tfile: int, pipe: tuple[int, int], engine_name: str
) -> None:
    """A read must not overtake requests held back on its fd (here: behind
    an aio_fsync that waits for a read the one worker has not started): it
    is not done inline, and completes after them.  The thread engine holds
    them itself; the linux engine's requests are held in posix's lanes."""
    from xaio._pagecache import INLINE_MAX

    reason = engine_unavailable(engine_name)
    if reason is not None:
        pytest.skip(f"engine {engine_name!r} unavailable: {reason}")
    P.aio_init(threads=1, engine=engine_name)
    r, w = pipe
    os.write(tfile, bytes(INLINE_MAX + 4096))  # room for a read above the bound
    os.pread(tfile, 8192, 0)
    blocker = P.aiocb(r, 0, bytearray(1))
    P.aio_read(blocker)  # the one worker waits on the empty pipe
    wait_until(lambda: engine_running() == 1)
    before = inline_count()
    big = P.aiocb(tfile, 0, bytearray(INLINE_MAX + 1))  # above the bound: queued
    P.aio_read(big)
    sync = P.aiocb(tfile)
    P.aio_fsync(os.O_SYNC, sync)  # held back behind the queued read
    small = P.aiocb(tfile, 10, bytearray(100), 100)
    P.aio_read(small)
    assert P.aio_error(small) == errno.EINPROGRESS
    assert inline_count() == before
    os.write(w, b"x")
    wait_done(blocker, big, sync, small)
    assert [P.aio_return(c) for c in (blocker, big, sync, small)] == [1, INLINE_MAX + 1, 0, 100]
    assert bytes(small.aio_buf) == bytes(range(10, 110))


@pytest.mark.usefixtures("engine")
def test_inline_read_sees_every_field_change(tmp_path: Path, tfile: int) -> None:
    """The fast path checks the fields of a C-shaped aiocb once, not at each
    call: setting any of them (or resizing the bytearray it reads into)
    between two reads of the same aiocb is honoured all the same -- the new
    buffer, length, priority, sigevent and fd, with the normal path's errors."""
    import mmap

    data = bytes(range(256)) * 64
    os.pread(tfile, 8192, 0)  # in the page cache
    R._get_engine()
    before = inline_count()
    cb = P.aiocb(aio_fildes=tfile, aio_buf=mmap.mmap(-1, 4096), aio_nbytes=4096)
    P.aio_read(cb)
    assert P.aio_error(cb) == 0 and P.aio_return(cb) == 4096
    assert inline_count() == before + 1

    def read(offset: int) -> int:
        cb.aio_offset = offset
        P.aio_read(cb)
        wait_done(cb)
        return P.aio_return(cb)

    buf = bytearray(100)
    cb.aio_buf, cb.aio_nbytes = buf, 50  # another buffer, part of it
    assert read(10) == 50 and buf == data[10:60] + bytes(50)
    cb.aio_nbytes = None  # all of it
    assert read(20) == 100 and buf == data[20:120]
    assert inline_count() == before + 3
    cb.aio_nbytes = 101
    with pytest.raises(ValueError):
        P.aio_read(cb)
    cb.aio_nbytes = 100
    cb.aio_reqprio = P.AIO_PRIO_DELTA_MAX + 1
    with pytest.raises(OSError) as ei:
        P.aio_read(cb)
    assert ei.value.errno == errno.EINVAL
    cb.aio_reqprio = 0
    got: list[Any] = []
    done = threading.Event()
    cb.aio_sigevent = P.sigevent(
        P.SIGEV_THREAD, sigev_value=3, sigev_notify_function=lambda v: (got.append(v), done.set())
    )
    assert read(0) == 100 and done.wait(TIMEOUT) and got == [3]
    cb.aio_sigevent = None
    assert read(25) == 100 and buf == data[25:125]
    buf.extend(bytes(50))  # resized under the aiocb: aio_nbytes (100) still rules
    assert read(30) == 100 and buf == data[30:130] + bytes(50)
    cb.aio_nbytes = None
    assert read(40) == 150 and buf == data[40:190]
    del buf[60:]
    cb.aio_nbytes = 100
    with pytest.raises(ValueError):  # shorter than aio_nbytes now
        P.aio_read(cb)
    cb.aio_nbytes = None
    assert read(50) == 60 and buf == data[50:110]
    n = inline_count()
    afd = os.open(tmp_path / "a", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(afd, data[:100])
        cb.aio_fildes = afd  # an O_APPEND fd: never inline
        assert read(0) == 60 and buf == data[:60]
        assert inline_count() == n
    finally:
        os.close(afd)


class _OwnBufAiocb(P.aiocb):
    """An aiocb subclass that keeps aio_buf its own way."""

    __slots__ = ("mine",)

    @property  # type: ignore[override]
    def aio_buf(self) -> Any:
        return self.mine

    @aio_buf.setter
    def aio_buf(self, value: Any) -> None:
        self.mine = value


@pytest.mark.usefixtures("engine")
def test_inline_read_reads_a_subclass_field_as_the_subclass_defines_it(tfile: int) -> None:
    """A subclass may define a field as its own property: the fast path
    reads what the subclass's property gives, as the normal path does, and
    sees it change between reads."""
    data = bytes(range(256)) * 64
    os.pread(tfile, 8192, 0)  # in the page cache
    R._get_engine()
    first, second = bytearray(100), bytearray(50)
    cb = _OwnBufAiocb(tfile, 10, first)
    before = inline_count()
    P.aio_read(cb)
    assert P.aio_error(cb) == 0 and P.aio_return(cb) == 100 and first == data[10:110]
    cb.aio_buf = second
    cb.aio_offset = 20
    P.aio_read(cb)
    assert P.aio_error(cb) == 0 and P.aio_return(cb) == 50 and second == data[20:70]
    assert first == data[10:110] and inline_count() == before + 2


# --- stream writes: all of it, as write(2) on that fd ------------------------------------


@pytest.fixture(params=["thread", "uring", "linux"])
def any_engine(request: pytest.FixtureRequest, clean_posix: None) -> str:
    """POSIX AIO on each engine, the linux one too."""
    name: str = request.param
    reason = engine_unavailable(name)
    if reason is not None:
        pytest.skip(f"engine {name!r} unavailable: {reason}")
    P.aio_init(engine=name)
    return name


@pytest.fixture
def slow_peer() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A stream socketpair (blocking) with a small send buffer: a large write
    waits for the peer to read."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    yield a, b
    a.close()
    b.close()


def _read_all(b: socket.socket, n: int) -> bytes:
    out = bytearray()
    b.settimeout(TIMEOUT)
    while len(out) < n:
        out += b.recv(n - len(out))
    return bytes(out)


@pytest.mark.usefixtures("any_engine")
def test_stream_write_is_whole_and_list_signal_waits_for_the_peer(
    slow_peer: tuple[socket.socket, socket.socket],
) -> None:
    """aio_writes on a blocking stream socket complete only when all of each
    is written (what write(2) on that fd does), in submission order, and a
    LIO_NOWAIT list signal comes only then: not while the peer reads
    nothing."""
    a, b = slow_peer
    data = [bytes([65 + i]) * 200_000 for i in range(3)]
    cbs = [P.aiocb(a.fileno(), 0, d, aio_lio_opcode=P.LIO_WRITE) for d in data]
    with blocked(SIG):
        P.lio_listio(P.LIO_NOWAIT, cbs, sigev(77))
        got = None
        try:
            # the peer has read nothing: at most the socket buffers are full
            with pytest.raises(OSError) as ei:
                P.aio_suspend(cbs, 0.2)
            assert ei.value.errno == errno.EAGAIN
            assert [P.aio_error(cb) for cb in cbs] == [errno.EINPROGRESS] * 3
            assert no_signal()
            assert _read_all(b, 600_000) == b"".join(data)
            got = next_signal()
            assert got.si_status == 77
        finally:
            if got is None:  # failed: let the list signal come while blocked
                drain(b, *cbs)
                signal.sigtimedwait([SIG], TIMEOUT)
    assert [(P.aio_error(cb), P.aio_return(cb)) for cb in cbs] == [(0, 200_000)] * 3


@pytest.mark.usefixtures("any_engine")
def test_stream_write_partly_done_is_not_canceled_and_completes(
    slow_peer: tuple[socket.socket, socket.socket],
) -> None:
    """A write the peer has started to receive is running: aio_cancel says
    AIO_NOTCANCELED, and the request then completes normally, whole."""
    a, b = slow_peer
    data = random.Random(3).randbytes(300_000)
    cb = P.aiocb(a.fileno(), 0, data)
    P.aio_write(cb)
    b.settimeout(TIMEOUT)
    head = b.recv(1000)  # some of it has been written: it is running
    assert head
    assert P.aio_cancel(a.fileno(), cb) == P.AIO_NOTCANCELED
    assert P.aio_cancel(a.fileno()) == P.AIO_NOTCANCELED  # the fd form too
    rest = _read_all(b, len(data) - len(head))
    wait_done(cb)
    assert (P.aio_error(cb), P.aio_return(cb)) == (0, len(data))
    assert head + rest == data


@pytest.mark.usefixtures("any_engine")
def test_stream_write_nonblocking_is_short_like_write(
    slow_peer: tuple[socket.socket, socket.socket],
) -> None:
    """On an O_NONBLOCK stream fd, write(2) writes what fits: so does
    aio_write (no continuation), with the same count the socket took."""
    a, b = slow_peer
    a.setblocking(False)
    cb = P.aiocb(a.fileno(), 0, bytes(300_000))
    P.aio_write(cb)
    wait_done(cb)
    n = P.aio_return(cb)
    assert 0 < n < 300_000
    assert len(_read_all(b, n)) == n
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(1)  # nothing more was written


# --- posix asks the engine's capability flags, never its class ----------------------


class _Forwarding(Engine):
    """An engine that is no ThreadEngine but runs everything on one: what
    posix does with it may follow only from its flags."""

    name = "thread"
    orders_requests = True

    def __init__(self) -> None:
        self.inner = ThreadEngine(threads=2)

    def owns(self, op: Operation) -> bool:
        return self.inner.owns(op)

    def submit(self, ops: Sequence[Operation]) -> int:
        return self.inner.submit(ops)

    def cancel(self, op: Operation) -> CancelOutcome:
        return self.inner.cancel(op)

    def reap(self, timeout: float | None = 0.0, *, max_n: int = 0) -> int:
        return self.inner.reap(timeout, max_n=max_n)

    def fileno(self) -> int:
        return self.inner.fileno()

    def close(self) -> None:
        self.inner.close()

    @property
    def closed(self) -> bool:
        return self.inner.closed


@pytest.mark.usefixtures("clean_posix")
def test_an_engine_that_orders_requests_gets_no_lanes(pipe: tuple[int, int]) -> None:
    """On an engine whose flags say it orders the requests of an fd itself,
    posix keeps no lanes: two reads on a pipe go to it at once, and it runs
    them in order; aio_cancel gets its honest answers."""
    r, w = pipe
    eng = _Forwarding()
    try:
        P.aio_init(engine=eng)
        first, second = P.aiocb(r, 0, bytearray(3)), P.aiocb(r, 0, bytearray(3))
        P.aio_read(first)
        P.aio_read(second)
        assert R._lanes == {}  # the engine holds the second one back itself
        assert P.aio_cancel(r, second) == P.AIO_CANCELED
        assert (P.aio_error(second), P.aio_return(second)) == (errno.ECANCELED, -1)
        os.write(w, b"abcdef")
        wait_done(first)
        assert (P.aio_return(first), bytes(first.aio_buf)) == (3, b"abc")
        assert os.read(r, 8) == b"def"
        P.aio_init()
    finally:
        eng.close()


# --- the hand-off to an engine that posix keeps lanes for ---------------------------


class _CountingLock:
    """The real lock, counting its takes per thread."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.takes: dict[int, int] = {}

    def acquire(self, *args: Any) -> bool:
        got: bool = self.lock.acquire(*args)
        if got:
            me = threading.get_ident()
            self.takes[me] = self.takes.get(me, 0) + 1
        return got

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@pytest.mark.parametrize("engine_name", ["uring", "linux"])
def test_handing_a_request_over_takes_the_state_lock_once(
    clean_posix: None, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch, engine_name: str
) -> None:
    """aio_read of a request that goes to the engine (a read on an empty
    pipe) takes posix's lock once in the caller's thread: to mark it in
    progress; marking it as the engine's takes none.  An aio_cancel of it
    afterwards still finds it in the engine's hands and cancels it."""
    from xaio.posix import _dispatch

    reason = engine_unavailable(engine_name)
    if reason is not None:
        pytest.skip(f"engine {engine_name!r} unavailable: {reason}")
    P.aio_init(engine=engine_name)
    r, w = pipe
    warm = P.aiocb(r, 0, bytearray(1))
    P.aio_read(warm)  # starts the engine and its threads
    os.write(w, b"x")
    wait_done(warm)
    counting = _CountingLock(R._state_lock)
    for module in (R, _dispatch, P):
        monkeypatch.setattr(module, "_state_lock", counting)
    cb = P.aiocb(r, 0, bytearray(4))
    P.aio_read(cb)
    assert counting.takes.get(threading.get_ident()) == 1
    assert P.aio_error(cb) == errno.EINPROGRESS
    wait_until(lambda: engine_running() == 1)
    assert P.aio_cancel(r, cb) == P.AIO_CANCELED  # waiting for the pipe: not started
    assert (P.aio_error(cb), P.aio_return(cb)) == (errno.ECANCELED, -1)
