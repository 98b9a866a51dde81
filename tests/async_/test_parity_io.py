"""The os-style coroutines against the ``os`` module, side by side, on every engine.

Each case runs one call twice -- ``os.X(...)`` on one file and ``await
eng.X(...)`` on an identical twin -- and compares what came back (the value,
or the exception's class and errno), what landed in the caller's buffer and
the bytes on disk afterwards.  Regular files, O_DIRECT files (under the test
tmpdir, which is not tmpfs here: the conftest ``direct_fd`` rule), pipes,
sockets, eventfds, fds that are closed or not open, read-only and write-only
fds; offsets at and past the end, zero lengths, ``RWF_*`` flags.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xaio
from tests.support import ENGINES, skip_unavailable
from xaio import aligned_buffer

pytestmark = pytest.mark.timeout(120)

CONTENT = bytes(range(256)) * 40 + b"tail"  # 10244 bytes: not block-aligned
RWF_FLAGS = {
    "0": 0,
    "APPEND": os.RWF_APPEND,
    "DSYNC": os.RWF_DSYNC,
    "HIPRI": os.RWF_HIPRI,
    "NOWAIT": os.RWF_NOWAIT,
    "unknown": 1 << 30,
}


class Env:
    """One event loop and one explicit engine for a module's cases."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.eng = xaio.open_engine(name)

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.eng.aclose())
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture(scope="module", params=ENGINES)
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    skip_unavailable(str(request.param))
    e = Env(str(request.param))
    yield e
    e.close()


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """``("ok", value)`` or ``("err", class, errno)`` of ``fn(*args)``."""
    try:
        return ("ok", fn(*args))
    except OSError as e:
        # xaio's InvalidArgument is an OSError(EINVAL) and a ValueError: os
        # raises one or the other
        if isinstance(e, ValueError) and e.errno == errno.EBADF:
            return ("err", ValueError, None)
        return ("err", OSError, e.errno)
    except (TypeError, ValueError) as e:
        return ("err", type(e), None)


def aoutcome(env: Env, coro_fn: Callable[..., Awaitable[Any]], *args: Any) -> tuple[Any, ...]:
    """:func:`outcome` of ``await coro_fn(*args)`` on *env*'s loop."""
    return outcome(lambda: env.run(coro_fn(*args)))


class Twins:
    """Two files with the same content and open flags: one for os, one for xaio."""

    def __init__(self, tmp: Path, flags: int, content: bytes = CONTENT) -> None:
        self.paths = [tmp / "os.bin", tmp / "xaio.bin"]
        for p in self.paths:
            p.write_bytes(content)
        self.fds = [os.open(p, flags) for p in self.paths]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)

    def contents(self) -> tuple[bytes, bytes]:
        return self.paths[0].read_bytes(), self.paths[1].read_bytes()


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[Callable[..., Twins]]:
    made: list[Twins] = []

    def make(flags: int = os.O_RDWR, content: bytes = CONTENT) -> Twins:
        d = tmp_path / str(len(made))
        d.mkdir()
        t = Twins(d, flags, content)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def same_write(
    env: Env, t: Twins, os_call: Callable[[int], Any], x_call: Callable[[int], Any]
) -> None:
    """Run a call on each twin; same outcome, same bytes on disk."""
    want = outcome(lambda: os_call(t.fds[0]))
    got = aoutcome(env, lambda: x_call(t.fds[1]))
    assert got == want
    a, b = t.contents()
    assert b == a


# ---------------------------------------------------------------------------------
# RWF flags (pwritev / preadv)
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", list(RWF_FLAGS))
@pytest.mark.parametrize("offset", [0, 5, len(CONTENT), len(CONTENT) + 100])
def test_pwritev_flags(env: Env, twins: Callable[..., Twins], flag: str, offset: int) -> None:
    t = twins()
    f = RWF_FLAGS[flag]
    same_write(
        env,
        t,
        lambda fd: os.pwritev(fd, [b"APP", b"END"], offset, f),
        lambda fd: env.eng.pwritev(fd, [b"APP", b"END"], offset, f),
    )


def test_pwritev_append_appends(env: Env, tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"0123456789")
    fd = os.open(p, os.O_RDWR)
    try:
        assert env.run(env.eng.pwritev(fd, [b"APP"], 0, os.RWF_APPEND)) == 3
    finally:
        os.close(fd)
    assert p.read_bytes() == b"0123456789APP"


@pytest.mark.parametrize("flag", list(RWF_FLAGS))
@pytest.mark.parametrize("offset", [0, 4096, len(CONTENT), len(CONTENT) + 100])
def test_preadv_flags(env: Env, twins: Callable[..., Twins], flag: str, offset: int) -> None:
    t = twins()
    f = RWF_FLAGS[flag]
    # the twins' pages are cached alike (just written), so RWF_NOWAIT agrees too
    bufs = [bytearray(100), bytearray(5000)]
    xbufs = [bytearray(100), bytearray(5000)]
    want = outcome(lambda: os.preadv(t.fds[0], bufs, offset, f))
    got = aoutcome(env, lambda: env.eng.preadv(t.fds[1], xbufs, offset, f))
    assert got == want
    assert xbufs == bufs


# ---------------------------------------------------------------------------------
# positional I/O on fds without a position, and fds that are not open
# ---------------------------------------------------------------------------------


def _pipe() -> tuple[int, int, list[int]]:
    r, w = os.pipe()
    return r, w, [r, w]


def _socket() -> tuple[int, int, list[Any]]:
    a, b = socket.socketpair()
    return a.fileno(), b.fileno(), [a, b]


def _eventfd() -> tuple[int, int, list[int]]:
    fd = os.eventfd(1, os.EFD_NONBLOCK)
    return fd, fd, [fd]


def _closed() -> tuple[int, int, list[int]]:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    return r, w, []


STREAMS = {"pipe": _pipe, "socket": _socket, "eventfd": _eventfd, "closed": _closed}


def _release(objs: list[Any]) -> None:
    for o in objs:
        if isinstance(o, int):
            os.close(o)
        else:
            o.close()


@pytest.mark.parametrize("kind", list(STREAMS))
@pytest.mark.parametrize("n", [0, 8])
def test_positional_on_streams(env: Env, kind: str, n: int) -> None:
    """ESPIPE (EBADF when not open) on every engine, before anything is
    read or written: the data is still there for a read afterwards."""
    os_calls: dict[str, Callable[[int, int, bytearray], Any]] = {
        "pread": lambda r, w, b: os.pread(r, len(b), 0),
        "preadinto": lambda r, w, b: os.preadv(r, [b], 0),
        "preadv": lambda r, w, b: os.preadv(r, [b], 0),
        "pwrite": lambda r, w, b: os.pwrite(w, b, 0),
        "pwritev": lambda r, w, b: os.pwritev(w, [b], 0),
    }
    x_calls: dict[str, Callable[[int, int, bytearray], Awaitable[Any]]] = {
        "pread": lambda r, w, b: env.eng.pread(r, len(b), 0),
        "preadinto": lambda r, w, b: env.eng.preadinto(r, b, 0),
        "preadv": lambda r, w, b: env.eng.preadv(r, [b], 0),
        "pwrite": lambda r, w, b: env.eng.pwrite(w, b, 0),
        "pwritev": lambda r, w, b: env.eng.pwritev(w, [b], 0),
    }
    for call, os_call in os_calls.items():
        rfd, wfd, objs = STREAMS[kind]()
        try:
            if kind in ("pipe", "socket"):
                os.write(wfd, b"keep")
            want = outcome(os_call, rfd, wfd, bytearray(n))
            assert want[0] == "err"
            got = outcome(env.run, asyncio.wait_for(x_calls[call](rfd, wfd, bytearray(n)), 5))
            assert got == want, call
            if kind in ("pipe", "socket"):
                assert os.read(rfd, 100) == b"keep"  # nothing consumed, nothing added
        finally:
            _release(objs)


# ---------------------------------------------------------------------------------
# regular files: offsets, lengths, read-only / write-only fds
# ---------------------------------------------------------------------------------

OFFSETS = [0, 1, 4096, len(CONTENT) - 1, len(CONTENT), len(CONTENT) + 4096]
LENGTHS = [0, 1, 100, 4096, 20000]
OPEN_MODES = {"rdwr": os.O_RDWR, "rdonly": os.O_RDONLY, "wronly": os.O_WRONLY}


def read_calls(env: Env, n: int, offset: int) -> dict[str, tuple[Any, Any]]:
    """name -> (os call on fd, xaio coroutine on fd), each returning comparable data."""

    def os_into(fd: int) -> tuple[int, bytes]:
        b = bytearray(n)
        return os.preadv(fd, [b], offset), bytes(b)

    async def x_into(fd: int) -> tuple[int, bytes]:
        b = bytearray(n)
        return await env.eng.preadinto(fd, b, offset), bytes(b)

    def os_v(fd: int) -> tuple[int, bytes]:
        b1, b2 = bytearray(n // 2), bytearray(n - n // 2)
        return os.preadv(fd, [b1, b2], offset), bytes(b1 + b2)

    async def x_v(fd: int) -> tuple[int, bytes]:
        b1, b2 = bytearray(n // 2), bytearray(n - n // 2)
        return await env.eng.preadv(fd, [b1, b2], offset), bytes(b1 + b2)

    return {
        "pread": (lambda fd: os.pread(fd, n, offset), lambda fd: env.eng.pread(fd, n, offset)),
        "preadinto": (os_into, x_into),
        "preadv": (os_v, x_v),
    }


@pytest.mark.parametrize("mode", list(OPEN_MODES))
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("n", LENGTHS)
def test_reads_regular(
    env: Env, twins: Callable[..., Twins], mode: str, offset: int, n: int
) -> None:
    t = twins(OPEN_MODES[mode])
    for name, (os_call, x_call) in read_calls(env, n, offset).items():
        want = outcome(os_call, t.fds[0])
        got = aoutcome(env, x_call, t.fds[1])
        assert got == want, name


@pytest.mark.parametrize("mode", list(OPEN_MODES))
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("n", LENGTHS)
def test_writes_regular(
    env: Env, twins: Callable[..., Twins], mode: str, offset: int, n: int
) -> None:
    t = twins(OPEN_MODES[mode])
    data = bytes(range(7, 256)) * (n // 249 + 1)
    data = data[:n]
    same_write(
        env, t, lambda fd: os.pwrite(fd, data, offset), lambda fd: env.eng.pwrite(fd, data, offset)
    )
    same_write(
        env,
        t,
        lambda fd: os.pwritev(fd, [data[:3], data[3:]], offset),
        lambda fd: env.eng.pwritev(fd, [data[:3], data[3:]], offset),
    )


@pytest.mark.parametrize("mode", list(OPEN_MODES))
def test_syncs(env: Env, twins: Callable[..., Twins], mode: str) -> None:
    t = twins(OPEN_MODES[mode])
    same_write(env, t, os.fsync, env.eng.fsync)
    same_write(env, t, os.fdatasync, env.eng.fdatasync)


@pytest.mark.parametrize("kind", ["pipe", "closed", "eventfd"])
def test_syncs_not_files(env: Env, kind: str) -> None:
    rfd, _wfd, objs = STREAMS[kind]()
    try:
        for os_call, x_call in ((os.fsync, env.eng.fsync), (os.fdatasync, env.eng.fdatasync)):
            assert aoutcome(env, x_call, rfd) == outcome(os_call, rfd)
    finally:
        _release(objs)


@pytest.mark.parametrize("mode", list(OPEN_MODES))
@pytest.mark.parametrize("n", [0, 5, 20000])
def test_read_write_at_position(env: Env, twins: Callable[..., Twins], mode: str, n: int) -> None:
    """read/readinto/write on a regular file use (and move) its position."""
    t = twins(OPEN_MODES[mode])
    for fd in t.fds:
        os.lseek(fd, 7, os.SEEK_SET)
    want = outcome(lambda: os.read(t.fds[0], n))
    got = aoutcome(env, lambda: env.eng.read(t.fds[1], n))
    assert got == want
    b0, b1 = bytearray(n), bytearray(n)
    assert aoutcome(env, lambda: env.eng.readinto(t.fds[1], b1)) == outcome(
        lambda: os.readv(t.fds[0], [b0])
    )
    assert b1 == b0
    same_write(env, t, lambda fd: os.write(fd, b"W" * n), lambda fd: env.eng.write(fd, b"W" * n))
    assert os.lseek(t.fds[1], 0, os.SEEK_CUR) == os.lseek(t.fds[0], 0, os.SEEK_CUR)


@pytest.mark.parametrize("kind", ["pipe", "socket"])
def test_read_write_streams(env: Env, kind: str) -> None:
    r, w, objs = STREAMS[kind]()
    r2, w2, objs2 = STREAMS[kind]()
    try:
        assert env.run(env.eng.write(w, b"hello")) == os.write(w2, b"hello")
        assert env.run(env.eng.read(r, 3)) == os.read(r2, 3)
        b1, b2 = bytearray(10), bytearray(10)
        assert env.run(env.eng.readinto(r, b1)) == os.readv(r2, [b2])
        assert b1 == b2
        assert env.run(env.eng.read(r, 0)) == os.read(r2, 0)
    finally:
        _release(objs)
        _release(objs2)


def test_closed_fd_everything(env: Env) -> None:
    fd, _, _ = _closed()
    pairs: list[tuple[Callable[[], Any], Callable[[], Awaitable[Any]]]] = [
        (lambda: os.read(fd, 5), lambda: env.eng.read(fd, 5)),
        (lambda: os.write(fd, b"x"), lambda: env.eng.write(fd, b"x")),
        (lambda: os.readv(fd, [bytearray(3)]), lambda: env.eng.readinto(fd, bytearray(3))),
        (lambda: os.fsync(fd), lambda: env.eng.fsync(fd)),
    ]
    for os_call, x_call in pairs:
        assert aoutcome(env, x_call) == outcome(os_call)


@pytest.mark.parametrize("value", [-1, -4096])
def test_negative_values(env: Env, twins: Callable[..., Twins], value: int) -> None:
    t = twins()
    for os_call, x_call in (
        (lambda: os.pread(t.fds[0], 5, value), lambda: env.eng.pread(t.fds[1], 5, value)),
        (lambda: os.pwrite(t.fds[0], b"x", value), lambda: env.eng.pwrite(t.fds[1], b"x", value)),
        (lambda: os.pread(t.fds[0], value, 0), lambda: env.eng.pread(t.fds[1], value, 0)),
        (lambda: os.pread(value, 5, 0), lambda: env.eng.pread(value, 5, 0)),
        (lambda: os.fsync(value), lambda: env.eng.fsync(value)),
    ):
        want, got = outcome(os_call), aoutcome(env, x_call)
        assert got[:2] == want[:2]
    assert t.contents()[1] == t.contents()[0]


# ---------------------------------------------------------------------------------
# a huge n reads what is there
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 100, 8192, 1 << 20])
def test_pread_huge_n_reads_what_is_there(env: Env, tmp_path: Path, offset: int) -> None:
    p = tmp_path / "f"
    p.write_bytes(CONTENT[:8192])
    fd = os.open(p, os.O_RDONLY)
    try:
        before = resource_maxrss()
        got = env.run(asyncio.wait_for(env.eng.pread(fd, 2**36, offset), 10))
        assert got == os.pread(fd, 1 << 20, offset)  # (os.pread(fd, 2**36...) is a MemoryError)
        assert resource_maxrss() - before < 64 << 20  # no 2 GiB buffer was touched
    finally:
        os.close(fd)


def test_pread_huge_n_file_grows(env: Env, tmp_path: Path) -> None:
    """The buffer grows while reads fill it: a file bigger than the first guess."""
    p = tmp_path / "f"
    big = bytes(range(256)) * (3 << 14)  # 12 MiB
    p.write_bytes(big)
    fd = os.open(p, os.O_RDWR)
    try:
        got = env.run(env.eng.pread(fd, 2**36, 5))
        assert got == big[5:]
    finally:
        os.close(fd)


def test_read_huge_n_pipe(env: Env) -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"abc")
        before = resource_maxrss()
        assert env.run(env.eng.read(r, 2**36)) == b"abc"
        assert resource_maxrss() - before < 64 << 20
    finally:
        os.close(r)
        os.close(w)


def resource_maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------
# O_DIRECT
# ---------------------------------------------------------------------------------


@pytest.fixture
def dtwins(twins: Callable[..., Twins]) -> Twins:
    """Twin files opened O_RDWR | O_DIRECT (skipped where unsupported)."""
    try:
        return twins(os.O_RDWR | os.O_DIRECT, CONTENT[:8192] * 2)
    except OSError as e:
        pytest.skip(f"O_DIRECT not supported here: {e}")


@pytest.mark.parametrize("offset", [0, 512, 4096, 16384, 20480, 1])
@pytest.mark.parametrize("n", [4096, 8192, 100, 1 << 21])
def test_direct_pread(env: Env, dtwins: Twins, offset: int, n: int) -> None:
    """xaio.pread reads into an aligned buffer of its own: what os.preadv
    into an aligned buffer gives (os.pread's own buffer is not aligned)."""

    def os_call() -> bytes:
        b = aligned_buffer(n)
        got = os.preadv(dtwins.fds[0], [b], offset)
        return bytes(b[:got])

    want = outcome(os_call)
    got = aoutcome(env, lambda: env.eng.pread(dtwins.fds[1], n, offset))
    assert got == want
    if offset % 4096 == 0 and n % 4096 == 0:
        assert want[0] == "ok"


def test_direct_pread_huge_n(env: Env, dtwins: Twins) -> None:
    assert env.run(env.eng.pread(dtwins.fds[1], 2**36, 4096)) == (CONTENT[:8192] * 2)[4096:]


@pytest.mark.parametrize(
    "offset, n, shift, what",
    [(1, 4096, 0, "offset 1"), (0, 100, 0, "length 100"), (0, 4096, 1, "address")],
)
def test_direct_einval_says_why(
    env: Env, dtwins: Twins, offset: int, n: int, shift: int, what: str
) -> None:
    mem = aligned_buffer(n + 4096)
    buf = mem[shift : shift + n]
    fd = dtwins.fds[1]
    for call in (
        lambda: env.eng.preadinto(fd, buf, offset),
        lambda: env.eng.preadv(fd, [buf], offset),
        lambda: env.eng.pwrite(fd, buf, offset),
        lambda: env.eng.pwritev(fd, [buf], offset),
    ):
        with pytest.raises(OSError) as ei:
            env.run(call())
        assert ei.value.errno == errno.EINVAL
        assert "O_DIRECT" in str(ei.value) and what in str(ei.value)
    assert dtwins.contents()[1] == dtwins.contents()[0]


@pytest.mark.parametrize("flag", list(RWF_FLAGS))
def test_direct_vectored_flags(env: Env, dtwins: Twins, flag: str) -> None:
    f = RWF_FLAGS[flag]
    bufs = [aligned_buffer(4096), aligned_buffer(4096)]
    xbufs = [aligned_buffer(4096), aligned_buffer(4096)]
    want = outcome(lambda: os.preadv(dtwins.fds[0], bufs, 4096, f))
    got = aoutcome(env, lambda: env.eng.preadv(dtwins.fds[1], xbufs, 4096, f))
    assert got == want
    assert [bytes(b) for b in xbufs] == [bytes(b) for b in bufs]
    data = [aligned_buffer(4096), aligned_buffer(4096)]
    data[0][:] = b"D" * 4096
    same_write(
        env,
        dtwins,
        lambda fd: os.pwritev(fd, data, 8192, f),
        lambda fd: env.eng.pwritev(fd, data, 8192, f),
    )


# ---------------------------------------------------------------------------------
# random offsets, lengths and flags (hypothesis)
# ---------------------------------------------------------------------------------

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
offsets = st.integers(min_value=0, max_value=len(CONTENT) + 9000)
lengths = st.integers(min_value=0, max_value=30000)
flag_sets = st.sampled_from([0, os.RWF_APPEND, os.RWF_DSYNC, os.RWF_HIPRI, os.RWF_SYNC, 1 << 30])


@SETTINGS
@given(offset=offsets, n=lengths, flags=flag_sets, cut=st.integers(0, 30000))
def test_random_vectored(
    env: Env, twins: Callable[..., Twins], offset: int, n: int, flags: int, cut: int
) -> None:
    t = twins()
    data = bytes((i * 7) & 0xFF for i in range(n))
    cut = min(cut, n)
    same_write(
        env,
        t,
        lambda fd: os.pwritev(fd, [data[:cut], data[cut:]], offset, flags),
        lambda fd: env.eng.pwritev(fd, [data[:cut], data[cut:]], offset, flags),
    )
    b0 = [bytearray(cut), bytearray(n - cut)]
    b1 = [bytearray(cut), bytearray(n - cut)]
    want = outcome(lambda: os.preadv(t.fds[0], b0, offset, flags))
    assert aoutcome(env, lambda: env.eng.preadv(t.fds[1], b1, offset, flags)) == want
    assert b1 == b0


@SETTINGS
@given(offset=offsets, n=lengths)
def test_random_pread_pwrite(env: Env, twins: Callable[..., Twins], offset: int, n: int) -> None:
    t = twins()
    data = bytes((i * 13) & 0xFF for i in range(n))
    same_write(
        env, t, lambda fd: os.pwrite(fd, data, offset), lambda fd: env.eng.pwrite(fd, data, offset)
    )
    assert aoutcome(env, lambda: env.eng.pread(t.fds[1], n, offset)) == outcome(
        lambda: os.pread(t.fds[0], n, offset)
    )


@pytest.mark.parametrize("flag", list(RWF_FLAGS))
def test_zero_length_vectored(env: Env, twins: Callable[..., Twins], flag: str) -> None:
    """A vectored call of no bytes is the system call's answer (which checks
    no flag then)."""
    t = twins()
    f = RWF_FLAGS[flag]
    same_write(
        env, t, lambda fd: os.pwritev(fd, [b""], 0, f), lambda fd: env.eng.pwritev(fd, [b""], 0, f)
    )
    assert aoutcome(env, env.eng.preadv, t.fds[1], [bytearray()], 0, f) == outcome(
        os.preadv, t.fds[0], [bytearray()], 0, f
    )


# ---------------------------------------------------------------------------------
# the same answers under trio (its driver shares these paths)
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENGINES)
def test_trio_driver_answers_alike(name: str, tmp_path: Path) -> None:
    trio = pytest.importorskip("trio")
    skip_unavailable(name)
    p = tmp_path / "f"
    p.write_bytes(b"0123456789")
    fd = os.open(p, os.O_RDWR)
    r, w = os.pipe()

    async def main() -> list[Any]:
        out: list[Any] = []
        async with xaio.open_engine(name) as eng:
            out.append(await eng.pwritev(fd, [b"APP"], 0, os.RWF_APPEND))
            for call in (eng.pread(r, 10, 0), eng.pwrite(w, b"x", 0), eng.pread(fd, 0, 0)):
                try:
                    out.append(await call)
                except OSError as e:
                    out.append(e.errno)
            out.append(await eng.pread(fd, 2**36, 0))
        return out

    try:
        got = trio.run(main)
    finally:
        for x in (fd, r, w):
            os.close(x)
    assert got == [3, errno.ESPIPE, errno.ESPIPE, b"", b"0123456789APP"]
    assert p.read_bytes() == b"0123456789APP"


def test_directory_fd(env: Env, tmp_path: Path) -> None:
    """A directory: EISDIR for reads (from the engine, as os.pread), EBADF
    for writes (opened read-only), fsync works (the durable-rename recipe)."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for os_call, x_call, args in (
            (os.pread, env.eng.pread, (fd, 10, 0)),
            (os.pwrite, env.eng.pwrite, (fd, b"x", 0)),
            (os.fsync, env.eng.fsync, (fd,)),
            (os.fdatasync, env.eng.fdatasync, (fd,)),
            (os.read, env.eng.read, (fd, 10)),
        ):
            assert aoutcome(env, x_call, *args) == outcome(os_call, *args)
        b0, b1 = bytearray(8), bytearray(8)
        assert aoutcome(env, env.eng.preadinto, fd, b1, 0) == outcome(os.preadv, fd, [b0], 0)
    finally:
        os.close(fd)


@pytest.mark.parametrize("flag", ["0", "DSYNC", "NOWAIT", "unknown"])
def test_o_append_fd(env: Env, twins: Callable[..., Twins], flag: str) -> None:
    """On an O_APPEND fd Linux appends whatever the offset says."""
    t = twins(os.O_RDWR | os.O_APPEND)
    f = RWF_FLAGS[flag]
    same_write(env, t, lambda fd: os.pwrite(fd, b"AP", 3), lambda fd: env.eng.pwrite(fd, b"AP", 3))
    same_write(
        env,
        t,
        lambda fd: os.pwritev(fd, [b"V", b"W"], 0, f),
        lambda fd: env.eng.pwritev(fd, [b"V", b"W"], 0, f),
    )
    same_write(env, t, lambda fd: os.write(fd, b"end"), lambda fd: env.eng.write(fd, b"end"))
    assert aoutcome(env, env.eng.pread, t.fds[1], 20, len(CONTENT) - 2) == outcome(
        os.pread, t.fds[0], 20, len(CONTENT) - 2
    )
