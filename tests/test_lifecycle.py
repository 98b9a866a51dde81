"""Engines at the edges of a process's life: after fork, at interpreter
exit, when garbage collected unclosed; and requests that could wait for ever.

Each scenario that could hang runs in a child process (a real ``fork`` or a
fresh interpreter) bounded by a timeout, so a hang fails instead of blocking.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator

import pytest

from xaio._ops import CancelOutcome, OpCode, Operation
from xaio.engine import ENGINE_NAMES, Engine, create_engine
from xaio.threads import ThreadEngine

from .support import open_fds, reap_until, skip_unavailable, wait_until

TIMEOUT = 30.0


@pytest.fixture
def engine(engine_name: str) -> Iterator[Engine]:
    eng = create_engine(engine_name)
    yield eng
    eng.close()


def run_script(body: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run *body* in a fresh interpreter (after a common prelude), bounded by
    TIMEOUT: a hang fails the test."""
    prelude = textwrap.dedent(
        """
        import os, sys, select, time
        import xaio.posix as P
        from xaio._ops import Operation, OpCode
        from xaio.engine import create_engine
        NAME = sys.argv[1]

        def reap_until(eng, ops):
            deadline = time.monotonic() + 20
            while not all(op.done for op in ops):
                assert time.monotonic() < deadline
                eng.reap(0.1)

        def wait_aio(cb):
            deadline = time.monotonic() + 20
            while P.aio_error(cb) == 115:  # EINPROGRESS
                assert time.monotonic() < deadline
                P.aio_suspend([cb], 0.1)
        """
    )
    try:
        return subprocess.run(
            [sys.executable, "-c", prelude + textwrap.dedent(body), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the script hung: {e.stderr!r}") from None


def with_posix(name: str) -> list[str]:
    return [name, name.replace("linux", "thread")]


# --- fork ---------------------------------------------------------------------------------

# A module-level engine (or POSIX AIO state) that has run a pipe write (so a
# thread engine has a worker) and has a read pending on an empty pipe.
_SETUP = """
r, w = os.pipe()
if NAME == "posix":
    P.aio_init(engine=sys.argv[2])
    cb = P.aiocb(w, 0, b"x")
    P.aio_write(cb)
    wait_aio(cb)
    assert os.read(r, 1) == b"x"
    pending = P.aiocb(r, 0, bytearray(8))
    P.aio_read(pending)
else:
    E = create_engine(NAME)
    op = Operation(OpCode.WRITE, w, [b"x"], -1)
    E.submit([op])
    reap_until(E, [op])
    assert os.read(r, 1) == b"x"
    pending = Operation(OpCode.READ, r, [bytearray(8)], -1)
    E.submit([pending])
"""

SCENARIOS = [*ENGINE_NAMES, "posix-thread", "posix-uring"]


def script_args(scenario: str) -> list[str]:
    if scenario.startswith("posix-"):
        skip_unavailable(scenario[6:])
        return ["posix", scenario[6:]]
    skip_unavailable(scenario)
    return [scenario]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("how", ["exit", "close", "use"])
def test_forked_child_exits_closes_or_uses_xaio(scenario: str, how: str) -> None:
    # The child exits normally (interpreter shutdown), or closes the engine it
    # inherited (at once) and makes a new one, or keeps using xaio; the
    # parent's pending read is untouched and completes in the parent.
    body = (
        _SETUP
        + """
how = sys.argv[-1]
pid = os.fork()
if pid == 0:
    if how == "close" and NAME != "posix":
        t0 = time.monotonic()
        E.close()
        assert time.monotonic() - t0 < 5
    if how in ("close", "use"):
        rr, ww = os.pipe()
        if NAME == "posix":
            c = P.aiocb(ww, 0, b"child")
            P.aio_write(c)
            wait_aio(c)
            assert P.aio_return(c) == 5
        else:
            F = create_engine(NAME) if how == "close" else E
            o = Operation(OpCode.WRITE, ww, [b"child"], -1)
            try:
                F.submit([o])
                reap_until(F, [o])
                assert o.result == 5
            except (OSError, RuntimeError):
                assert how == "use"  # an inherited engine refuses: fine
                F = create_engine(NAME)
                o = Operation(OpCode.WRITE, ww, [b"child"], -1)
                F.submit([o])
                reap_until(F, [o])
            F.close()
        assert os.read(rr, 5) == b"child"
    sys.exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
os.write(w, b"parent")
if NAME == "posix":
    wait_aio(pending)
    assert P.aio_return(pending) == 6
else:
    reap_until(E, [pending])
    assert pending.result == 6 and bytes(pending.buffers[0][:6]) == b"parent"
    E.close()
print("ok")
"""
    )
    res = run_script(body, *script_args(scenario), how)
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr


# --- exit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("pending", [True, False])
def test_exit_with_an_unclosed_engine(scenario: str, pending: bool) -> None:
    # sys.exit with an engine never closed: with a read pending on an empty
    # pipe, or after one completed pipe write (a worker idles).
    body = (
        _SETUP
        + """
if sys.argv[-1] == "False":
    os.write(w, b"data")
    if NAME == "posix":
        wait_aio(pending)
    else:
        reap_until(E, [pending])
print("exiting", flush=True)
sys.exit(0)
"""
    )
    res = run_script(body, *script_args(scenario), str(pending))
    assert res.returncode == 0 and res.stdout == "exiting\n", res.stderr


# --- garbage collection -------------------------------------------------------------------


def test_unclosed_engine_with_a_pending_pipe_read_is_collected_at_once(
    engine_name: str,
) -> None:
    # The read never completes; collecting the engine neither waits for it
    # nor lets it take data written later.
    r, w = os.pipe()
    try:
        before = open_fds()
        eng = create_engine(engine_name)
        buf = bytearray(8)
        eng.submit([Operation(OpCode.READ, r, [buf], -1)])
        time.sleep(0.05)  # let a worker start waiting (not a condition: either way)
        t0 = time.monotonic()
        with pytest.warns(ResourceWarning):
            del eng
            gc.collect()
        assert time.monotonic() - t0 < 5
        wait_until(lambda: open_fds() <= before)
        wait_until(lambda: not any(t.name == "xaio-thread-worker" for t in threading.enumerate()))
        os.write(w, b"later")
        assert os.read(r, 10) == b"later"  # nobody read it
        assert buf == bytearray(8)
    finally:
        os.close(r)
        os.close(w)


def test_dropped_thread_engines_release_fds_and_threads(data_fd: int) -> None:
    gc.collect()
    fds = len(open_fds())
    threads = threading.active_count()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(300):
            eng = ThreadEngine(threads=1, idle_time=60)
            op = Operation(OpCode.READ, data_fd, [bytearray(4096)], 1 << 20)  # EOF: not cached
            eng.submit([op])
            reap_until(eng, [op])
            assert eng.statistics()["threads"] == 1 or op.result == 0
            del eng
        gc.collect()
    wait_until(lambda: threading.active_count() <= threads)
    assert len(open_fds()) <= fds


# --- requests that could wait for ever ----------------------------------------------------


def test_positional_read_on_an_eventfd_can_be_cancelled_and_closed(
    engine: Engine, eventfd: int
) -> None:
    # A pread on an eventfd (no position: it reads like read) waits for the
    # counter; it must be cancellable, and close must not wait for it.
    op = Operation(OpCode.READ, eventfd, [bytearray(8)], 0)
    engine.submit([op])
    time.sleep(0.05)
    assert engine.cancel(op) is CancelOutcome.CANCELED
    reap_until(engine, [op])
    assert op.result in (-errno.ECANCELED, -errno.EINTR)
    # the next one reads once the counter is set, and close does not wait
    late = Operation(OpCode.READ, eventfd, [bytearray(8)], 0)
    engine.submit([late])
    os.eventfd_write(eventfd, 5)
    reap_until(engine, [late])
    assert late.result == 8 and int.from_bytes(late.buffers[0], sys.byteorder) == 5
    never = Operation(OpCode.READ, eventfd, [bytearray(8)], 0)
    engine.submit([never])
    t0 = time.monotonic()
    engine.close()
    assert time.monotonic() - t0 < 5
    assert never.done and never.result in (-errno.ECANCELED, -errno.EINTR)


def test_poll_that_never_becomes_ready_is_cancelled_and_closed(
    engine: Engine, pipe: tuple[int, int]
) -> None:
    r, _ = pipe
    ops = [Operation(OpCode.POLL, r, flags=0) for _ in range(2)]  # asks for nothing
    engine.submit(ops)
    time.sleep(0.05)
    assert engine.cancel(ops[0]) is CancelOutcome.CANCELED
    reap_until(engine, ops[:1])
    assert ops[0].result == -errno.ECANCELED
    t0 = time.monotonic()
    engine.close()
    assert time.monotonic() - t0 < 5
    assert ops[1].done and ops[1].result == -errno.ECANCELED


def test_poll_results_are_the_kernels_revents(engine: Engine) -> None:
    # poll(2)'s revents (what io_uring's POLL_ADD gives): the events asked
    # for that are ready, plus POLLERR/POLLHUP; the same whether the fd was
    # ready at submission or became ready later
    r, w = os.pipe()
    r2, w2 = os.pipe()
    try:
        os.write(w, b"x")
        at_once = Operation(OpCode.POLL, r, flags=select.POLLIN)
        later = Operation(OpCode.POLL, r2, flags=select.POLLIN | select.POLLPRI)
        out = Operation(OpCode.POLL, w, flags=select.POLLOUT | select.POLLIN)
        engine.submit([at_once, later, out])
        time.sleep(0.05)
        os.write(w2, b"x")
        reap_until(engine, [at_once, later, out])
        assert at_once.result == later.result == select.POLLIN
        assert out.result == select.POLLOUT
        os.close(w2)
        w2 = -1
        hup = Operation(OpCode.POLL, r2, flags=select.POLLIN)
        engine.submit([hup])
        reap_until(engine, [hup])
        assert hup.result == select.POLLIN | select.POLLHUP
    finally:
        for fd in (r, w, r2, w2):
            if fd >= 0:
                os.close(fd)


# --- Linux AIO contexts reused across engines -----------------------------------------------


def test_closed_linux_engines_leave_their_context_for_the_next(direct_fd: int) -> None:
    # io_destroy waits for an RCU grace period (~30 ms): a program that runs
    # one event loop after another must not pay it per loop.  An idle context
    # (nothing in flight) goes back to a small pool; a forked child starts
    # with an empty pool and its own contexts.
    import xaio
    from xaio import linux
    from xaio.linux import _engine as linux_engine

    skip_unavailable("linux")
    linux_engine._destroy_idle_contexts()  # earlier tests' (other capacities) fill the pool
    seen: list[object] = []  # held: no address is reused
    for _ in range(5):
        eng = linux.LinuxAioEngine(64)
        seen.append(eng._ctx)
        op = Operation(OpCode.READ, direct_fd, [xaio.aligned_buffer(4096)], 0)
        eng.submit([op])
        reap_until(eng, [op])
        assert op.result == 4096
        eng.close()
    assert all(c is seen[0] for c in seen)  # one context served all five
    assert any(c.nr_events == 64 for c in linux_engine._idle_contexts)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            assert not linux_engine._idle_contexts
            eng = linux.LinuxAioEngine(64)
            op = Operation(OpCode.READ, direct_fd, [xaio.aligned_buffer(4096)], 0)
            eng.submit([op])
            reap_until(eng, [op], 10)
            eng.close()
            code = 0 if op.result == 4096 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    eng = linux.LinuxAioEngine(64)  # the parent's pool still serves
    assert eng._ctx is seen[0]
    eng.close()
