"""POSIX AIO on io_uring (``aio_init(engine="uring")``): what it does beyond the
thread engine -- a request blocked in progress on a pipe or socket *can* be
cancelled (``AIO_CANCELED`` only when it really was) -- and the engine choice
itself (by name, owned and closed by xaio.posix, fresh after fork).

The engine-independent statements of SPEC §3 run on both engines in
tests/posix/test_posix.py; this file holds the engine-specific ones.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import xaio.posix as P
from tests.support import (
    SIG,
    TIMEOUT,
    blocked,
    count_submits,
    drain,
    engine_running,
    engine_unavailable,
    next_signal,
    no_signal,
    pattern,
    sigev,
    threads_started_since,
    wait_done,
    wait_until,
)
from xaio.posix import _runtime as R

pytestmark = pytest.mark.usefixtures("clean_posix")

URING_REASON = engine_unavailable("uring")
needs_uring = pytest.mark.skipif(
    URING_REASON is not None, reason=f"io_uring unavailable: {URING_REASON}"
)


@pytest.fixture
def uring(clean_posix: None) -> Iterator[None]:
    if URING_REASON is not None:
        pytest.skip(f"io_uring unavailable: {URING_REASON}")
    P.aio_init(engine="uring")
    yield


# --- a request in progress on a pipe -------------------------------------------------


@pytest.mark.parametrize("name", ["thread", "uring"])
def test_blocked_pipe_read_cancel(name: str, pipe: tuple[int, int]) -> None:
    """A read waiting on an empty pipe is cancelled (AIO_CANCELED, ECANCELED,
    -1, its signal fires, an aio_suspend waiter wakes, and no data is
    swallowed): io_uring stops it in the kernel, the thread engine's worker
    waits for readiness, not in the read."""
    reason = engine_unavailable(name)
    if reason is not None:
        pytest.skip(f"{name} unavailable: {reason}")
    P.aio_init(engine=name)
    r, w = pipe
    cb = P.aiocb(r, 0, bytearray(4), aio_sigevent=sigev(42))
    with blocked(SIG):
        P.aio_read(cb)
        wait_until(lambda: engine_running() == 1)  # in progress, not queued
        woke: list[bool] = []

        def suspend() -> None:
            P.aio_suspend([cb], TIMEOUT)
            woke.append(True)

        t = threading.Thread(target=suspend)
        t.start()
        assert P.aio_cancel(r, cb) == P.AIO_CANCELED
        # recorded and notified by the time aio_cancel returns
        assert P.aio_error(cb) == errno.ECANCELED
        info = next_signal()
        assert (info.si_code, info.si_status) == (P.SI_ASYNCIO, 42)
        assert P.aio_return(cb) == -1
        assert P.aio_cancel(r, cb) == P.AIO_ALLDONE
        os.write(w, b"data")  # the cancelled read took nothing
        assert os.read(r, 10) == b"data"
        t.join(TIMEOUT)
        assert woke == [True]
        assert no_signal()


@pytest.mark.usefixtures("uring")
def test_cancelled_pipe_read_fails_lio_wait(pipe: tuple[int, int]) -> None:
    r, _w = pipe
    cbs = [P.aiocb(r, 0, bytearray(2), aio_lio_opcode=P.LIO_READ) for _ in range(2)]
    err: list[OSError] = []

    def run() -> None:
        try:
            P.lio_listio(P.LIO_WAIT, cbs)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: all(cb._in_progress for cb in cbs))
    assert P.aio_cancel(r) == P.AIO_CANCELED  # the running one and the held one
    t.join(TIMEOUT)
    assert not t.is_alive()
    assert len(err) == 1 and err[0].errno == errno.EIO
    assert [P.aio_error(cb) for cb in cbs] == [errno.ECANCELED] * 2


@pytest.mark.usefixtures("uring")
def test_held_pipe_reads_stay_queued_behind_the_running_one(pipe: tuple[int, int]) -> None:
    """io_uring does not order requests on a stream: xaio.posix holds the
    later ones back, so each read takes the next bytes in submission order
    and the held ones are cancellable without touching the kernel."""
    r, w = pipe
    cbs = [P.aiocb(r, 0, bytearray(1)) for _ in range(4)]
    for cb in cbs:
        P.aio_read(cb)
    lane = R._lanes[r]
    assert lane.serial and lane.active == 1 and len(lane.held) == 3
    assert engine_running() == 1
    assert P.aio_cancel(r, cbs[2]) == P.AIO_CANCELED
    assert P.aio_error(cbs[2]) == errno.ECANCELED
    os.write(w, b"abc")
    wait_done(cbs[0], cbs[1], cbs[3])
    assert [bytes(cbs[i].aio_buf) for i in (0, 1, 3)] == [b"a", b"b", b"c"]
    assert r not in R._lanes


@pytest.mark.usefixtures("uring")
def test_request_outlives_the_thread_that_queued_it(pipe: tuple[int, int]) -> None:
    """io_uring cancels a waiting request when the thread that submitted it
    exits: xaio.posix must not let that happen to a POSIX request (queued
    by a short-lived thread, or released from a lane by one)."""
    r, w = pipe
    cbs = [P.aiocb(r, 0, bytearray(1)) for _ in range(3)]

    def submit_and_exit() -> None:
        for cb in cbs:
            P.aio_read(cb)

    t = threading.Thread(target=submit_and_exit)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive()
    wait_until(lambda: engine_running() == 1)

    def release_and_exit() -> None:  # reaps cbs[0], so releases cbs[1] here
        with contextlib.suppress(OSError):
            P.aio_suspend(cbs, TIMEOUT)

    os.write(w, b"a")
    t = threading.Thread(target=release_and_exit)
    t.start()
    t.join(TIMEOUT)
    wait_done(cbs[0])
    os.write(w, b"bc")
    wait_done(*cbs)
    assert [P.aio_error(cb) for cb in cbs] == [0, 0, 0]
    assert [bytes(cb.aio_buf) for cb in cbs] == [b"a", b"b", b"c"]


# --- the datagram socket: one write blocked in progress, later ones queued ------------


@pytest.mark.usefixtures("uring")
def test_cancel_all_on_blocked_socket_cancels_everything(
    dgram: tuple[socket.socket, socket.socket],
) -> None:
    a, b = dgram
    fd = a.fileno()
    cbs = [P.aiocb(fd, 0, bytes([65 + i]) * 512, aio_sigevent=sigev(i)) for i in range(4)]
    with blocked(SIG):
        for cb in cbs:
            P.aio_write(cb)
        assert engine_running() == 1  # the first is in the kernel, three are held
        assert len(R._lanes[fd].held) == 3
        assert P.aio_cancel(fd, None) == P.AIO_CANCELED
        for cb in cbs:
            assert P.aio_error(cb) == errno.ECANCELED
            assert P.aio_return(cb) == -1
        got = sorted(next_signal().si_status for _ in range(4))
        assert got == [0, 1, 2, 3]
        assert no_signal()
    assert P.aio_cancel(fd, None) == P.AIO_ALLDONE
    b.setblocking(False)
    received = []
    with contextlib.suppress(BlockingIOError):
        while True:
            received.append(b.recv(65536)[:1])
    assert received and set(received) == {b"f"}  # only the filler, none of ours


@pytest.mark.usefixtures("uring")
def test_cancel_running_socket_write_releases_the_next(
    dgram: tuple[socket.socket, socket.socket],
) -> None:
    a, b = dgram
    fd = a.fileno()
    cbs = [P.aiocb(fd, 0, bytes([65 + i]) * 512) for i in range(2)]
    for cb in cbs:
        P.aio_write(cb)
    assert P.aio_cancel(fd, cbs[0]) == P.AIO_CANCELED
    assert P.aio_error(cbs[0]) == errno.ECANCELED
    assert P.aio_error(cbs[1]) == errno.EINPROGRESS  # now in the kernel
    assert engine_running() == 1
    drain(b, cbs[1])
    assert P.aio_return(cbs[1]) == 512


# --- concurrency ----------------------------------------------------------------------


@pytest.mark.usefixtures("uring")
def test_random_submit_and_cancel_from_20_threads_on_uring(
    tfile: int, dgram: tuple[socket.socket, socket.socket], pipe: tuple[int, int]
) -> None:
    """Pipe reads (cancellable while running), socket writes and file reads,
    submitted and cancelled at random from 20 threads: every request ends
    exactly once, with its result or ECANCELED, and a final aio_cancel of
    the pipe never says AIO_NOTCANCELED (io_uring can stop them all)."""
    a, b = dgram
    r, w = pipe
    ends: dict[int, int] = {}
    lock = threading.Lock()

    def notify(i: Any) -> None:
        with lock:
            ends[i] = ends.get(i, 0) + 1

    all_cbs: list[P.aiocb] = []
    errors: list[BaseException] = []
    answers: set[int] = set()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for k in range(30):
                i = seed * 1000 + k
                sev = P.sigevent(P.SIGEV_THREAD, 0, i, notify)
                x = rng.random()
                if x < 0.3:
                    cb = P.aiocb(a.fileno(), 0, b"s" * 256, aio_sigevent=sev)
                    P.aio_write(cb)
                elif x < 0.6:
                    cb = P.aiocb(r, 0, bytearray(8), aio_sigevent=sev)
                    P.aio_read(cb)
                else:
                    cb = P.aiocb(tfile, rng.randrange(16000), bytearray(64), aio_sigevent=sev)
                    P.aio_read(cb)
                with lock:
                    all_cbs.append(cb)
                y = rng.random()
                if y < 0.3:
                    answers.add(P.aio_cancel(cb.aio_fildes, cb))
                elif y < 0.4:
                    answers.add(P.aio_cancel(rng.choice([a.fileno(), tfile, r])))
                if rng.random() < 0.1:
                    os.write(w, b"p" * 8)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    assert not errors
    assert answers <= {P.AIO_CANCELED, P.AIO_NOTCANCELED, P.AIO_ALLDONE}
    assert P.aio_cancel(r) in (P.AIO_CANCELED, P.AIO_ALLDONE)
    assert P.aio_cancel(a.fileno()) in (P.AIO_CANCELED, P.AIO_ALLDONE)
    drain(b, *all_cbs)
    assert len(all_cbs) == 600
    wait_until(lambda: len(ends) == 600)
    assert set(ends.values()) == {1}
    for cb in all_cbs:
        e = P.aio_error(cb)
        ret = P.aio_return(cb)
        if e == 0:
            assert ret in (8, 64, 256)
        else:
            assert e == errno.ECANCELED and ret == -1
    assert not R._lanes and not R._by_fd


# --- fork -----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads (3.12+)
@pytest.mark.usefixtures("uring")
def test_forked_child_uses_a_fresh_ring(pipe: tuple[int, int]) -> None:
    """The child of a parent with a pipe read in progress on io_uring gets
    its own ring: it reads and cancels there, and the parent's read (and
    ring) are untouched."""
    r, w = pipe
    parent_eng = R._get_engine()
    parent_cb = P.aiocb(r, 0, bytearray(4))
    P.aio_read(parent_cb)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            r2, w2 = os.pipe()
            cb = P.aiocb(r2, 0, bytearray(3))
            P.aio_read(cb)
            eng = R._engine
            fresh = eng is not None and eng is not parent_eng and eng.name == "uring"
            ok_cancel = P.aio_cancel(r2, cb) == P.AIO_CANCELED
            cb2 = P.aiocb(r2, 0, bytearray(3))
            P.aio_read(cb2)
            os.write(w2, b"kid")
            P.aio_suspend([cb2], 5)
            ok_read = P.aio_return(cb2) == 3 and bytes(cb2.aio_buf) == b"kid"
            code = 0 if (fresh and ok_cancel and ok_read) else 2
            R._shutdown()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert R._engine is parent_eng
    assert P.aio_error(parent_cb) == errno.EINPROGRESS
    os.write(w, b"data")
    wait_done(parent_cb)
    assert P.aio_return(parent_cb) == 4 and bytes(parent_cb.aio_buf) == b"data"


# --- the engine choice ----------------------------------------------------------------


@needs_uring
def test_engine_by_name_is_owned_and_closed_on_switch(tfile: int) -> None:
    before = set(threading.enumerate())
    P.aio_init(engine="uring")
    eng = R._engine
    assert eng is not None and eng.name == "uring" and not eng.closed
    assert len(threads_started_since(before)) == 1  # the reaper
    P.aio_init(engine="uring")  # same choice: nothing changes
    assert R._engine is eng
    cb = P.aiocb(tfile, 0, bytearray(4))
    P.aio_read(cb)
    wait_done(cb)
    assert P.aio_return(cb) == 4
    P.aio_init()  # back to the thread engine: ours, so closed
    assert eng.closed
    assert not threads_started_since(before)


@needs_uring
def test_engine_instance_stays_the_callers() -> None:
    from xaio.uring import UringEngine

    eng = UringEngine(8)
    try:
        P.aio_init(engine=eng)
        assert R._engine is eng
        P.aio_init(engine="uring")  # another choice: a new, owned engine
        assert R._engine is not eng and not eng.closed
    finally:
        R._shutdown()
        eng.close()


@needs_uring
def test_switch_to_uring_while_busy_is_ebusy(pipe: tuple[int, int]) -> None:
    r, w = pipe
    cb = P.aiocb(r, 0, bytearray(1))
    P.aio_read(cb)  # on the thread engine
    with pytest.raises(OSError) as ei:
        P.aio_init(engine="uring")
    assert ei.value.errno == errno.EBUSY
    os.write(w, b"x")
    wait_done(cb)
    P.aio_init(engine="uring")
    assert R._get_engine().name == "uring"


def test_linux_engine_by_name(tfile: int) -> None:
    reason = engine_unavailable("linux")
    if reason is not None:
        pytest.skip(f"linux AIO unavailable: {reason}")
    P.aio_init(engine="linux")
    assert R._get_engine().name == "linux"
    cbs = [P.aiocb(tfile, i * 4, bytearray(4)) for i in range(4)]
    for cb in cbs:
        P.aio_read(cb)
    wait_done(*cbs)
    assert [P.aio_return(cb) for cb in cbs] == [4] * 4


def test_unavailable_engine_names_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(name: str, **_: Any) -> Any:
        raise OSError(errno.EPERM, "io_uring_setup: Operation not permitted")

    monkeypatch.setattr(R, "create_engine", refuse)
    monkeypatch.setattr(R, "probe", lambda: {"uring": "EPERM: kernel.io_uring_disabled=2"})
    with pytest.raises(OSError) as ei:
        P.aio_init(engine="uring")
    assert ei.value.errno == errno.EPERM
    assert "kernel.io_uring_disabled=2" in str(ei.value)
    assert R._choice == "thread"  # nothing changed


@needs_uring
def test_exit_with_a_request_in_flight_closes_the_ring() -> None:
    """At interpreter exit xaio.posix closes the ring it owns (cancelling a
    read blocked on a pipe): no ResourceWarning, no hang."""
    code = (  # atexit runs last-registered first: ours is registered before xaio's
        "import atexit, os\n"
        "s = {}\n"
        "atexit.register(lambda: print('closed', s['e'].closed, s['P'].aio_error(s['cb'])))\n"
        "import xaio.posix as P\n"
        "P.aio_init(engine='uring')\n"
        "r, w = os.pipe()\n"
        "cb = P.aiocb(r, 0, bytearray(1))\n"
        "P.aio_read(cb)\n"
        "s.update(P=P, cb=cb, e=P._runtime._engine)\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.split() == ["closed", "True", str(errno.ECANCELED)]


def test_reaper_submits_the_main_threads_requests(uring: None, direct_fd: int) -> None:
    """io_uring finishes a completion in the thread that submitted the
    request, interrupting it: the requests the main thread queues reach the
    kernel from the reaper thread, which waits for their completions."""
    import xaio
    from xaio._ops import OpCode

    eng = R._get_engine()
    reaper = R._reaper
    assert eng.name == "uring" and reaper is not None
    sizes: list[int] = []
    batches: list[tuple[threading.Thread, list[Any]]] = []
    count_submits(eng, sizes, batches)
    bufs = [xaio.aligned_buffer(4096) for _ in range(8)]
    cbs = [P.aiocb(direct_fd, i * 4096, b) for i, b in enumerate(bufs)]
    for cb in cbs:
        P.aio_read(cb)
    wait_done(*cbs)
    assert [P.aio_return(cb) for cb in cbs] == [4096] * 8
    want = pattern(1 << 20)
    assert [bytes(b) for b in bufs] == [want[i * 4096 : (i + 1) * 4096] for i in range(8)]
    readers = [t for t, ops in batches for op in ops if op.opcode is OpCode.READ]
    assert len(readers) == 8
    assert all(t is reaper.thread for t in readers)


def test_cached_read_completes_at_once_on_uring(uring: None, tfile: int, tmp_path: Any) -> None:
    """On the uring engine too, aio_read of page-cached data is done in the
    caller's thread (preadv2(RWF_NOWAIT)): complete and notified when aio_read
    returns, counted by the engine, no ring round trip; an O_DIRECT read and a
    pipe read still go through the ring."""
    os.pread(tfile, 4096, 0)  # in the page cache
    eng = R._get_engine()
    assert eng.name == "uring"
    before = eng.statistics()["inline"]
    submitted = eng.statistics()["submitted"]
    buf = bytearray(100)
    cb = P.aiocb(tfile, 10, buf)
    with blocked(SIG):
        cb.aio_sigevent = sigev(6)
        P.aio_read(cb)
        assert P.aio_error(cb) == 0  # done inline
        assert next_signal().si_status == 6  # and notified all the same
    assert P.aio_return(cb) == 100 and bytes(buf) == bytes(range(10, 110))
    assert P.aio_cancel(tfile, cb) == P.AIO_ALLDONE
    stats = eng.statistics()
    assert stats["inline"] == before + 1 and stats["submitted"] == submitted

    import xaio

    p = tmp_path / "direct"
    p.write_bytes(bytes(range(256)) * 16)
    try:
        dfd = os.open(p, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:  # pragma: no cover
        pytest.skip(f"O_DIRECT not supported here: {e}")
    r, w = os.pipe()
    try:
        dbuf = xaio.aligned_buffer(4096)
        dcb = P.aiocb(dfd, 0, dbuf)
        pcb = P.aiocb(r, 0, bytearray(4))
        P.aio_read(dcb)
        P.aio_read(pcb)
        os.write(w, b"pipe")
        wait_done(dcb, pcb)
        assert P.aio_return(dcb) == 4096 and bytes(dbuf[:4]) == bytes(range(4))
        assert P.aio_return(pcb) == 4
        assert eng.statistics()["inline"] == before + 1  # neither was inline
    finally:
        for fd in (dfd, r, w):
            os.close(fd)
