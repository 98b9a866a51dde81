"""xaio.posix beside glibc's POSIX AIO (librt, through ctypes): the same
calls on the same kinds of fds give the same results, errnos and bytes on
disk, on every engine (``aio_init(engine=...)``).

Each scenario is written once against a small adapter vocabulary (``A``)
and run twice: with :class:`Xaio` (xaio.posix) and with :class:`Glibc`;
each call's outcome is recorded as ``(return value, errno)`` -- an
``OSError`` from xaio as ``(-1, errno)``, as C reports it -- and the two
records must be equal.  Where SPEC §3 deliberately differs from glibc
(aio_cancel of a cb with another fd or never submitted, aio_error /
aio_return on a cb never submitted or retrieved twice, no per-fd
serialisation of regular files, io_uring cancelling a running request,
fork), the scenarios do not look.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from benchmarks._glibc import glibc_aiocb, glibc_sigevent, load, unavailable_reason

import xaio.posix as P
from tests.support import WRITE_SYSCALLS, engine_unavailable, unused_fd, wait_blocked_in
from xaio.posix import _runtime as R

GLIBC_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(GLIBC_REASON is not None, reason=f"glibc POSIX AIO: {GLIBC_REASON}")

TIMEOUT = 10.0
Outcome = tuple[int, int]


def _outcome(fn: Callable[[], Any]) -> Outcome:
    try:
        r = fn()
    except OSError as e:
        return (-1, e.errno or 0)
    return (0 if r is None else int(r), 0)


class Xaio:
    """The adapter vocabulary over xaio.posix."""

    name = "xaio"

    def cb(
        self,
        fd: int,
        offset: int = 0,
        data: bytes | int = 0,
        *,
        prio: int = 0,
        opcode: int = P.LIO_NOP,
    ) -> Any:
        """A control block: *data* bytes to write, or an int: bytes to read."""
        buf = bytearray(data) if isinstance(data, int) else bytes(data)
        return P.aiocb(fd, offset, buf, len(buf), prio, None, opcode)

    def read(self, cb: Any) -> Outcome:
        return _outcome(lambda: P.aio_read(cb))

    def write(self, cb: Any) -> Outcome:
        return _outcome(lambda: P.aio_write(cb))

    def fsync(self, op: int, cb: Any) -> Outcome:
        return _outcome(lambda: P.aio_fsync(op, cb))

    def error(self, cb: Any) -> int:
        return P.aio_error(cb)

    def ret(self, cb: Any) -> int:
        return P.aio_return(cb)

    def cancel(self, fd: int, cb: Any = None) -> Outcome:
        return _outcome(lambda: P.aio_cancel(fd, cb))

    def suspend(self, cbs: Sequence[Any], timeout: float | None) -> Outcome:
        return _outcome(lambda: P.aio_suspend(cbs, timeout))

    def lio(self, mode: int, cbs: Sequence[Any]) -> Outcome:
        return _outcome(lambda: P.lio_listio(mode, cbs))

    def data(self, cb: Any) -> bytes:
        return bytes(cb.aio_buf)


class _timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _GCb:
    """A glibc aiocb and the buffer it points into."""

    def __init__(self, c: glibc_aiocb, buf: Any) -> None:
        self.c = c
        self.buf = buf
        self.ref = ctypes.pointer(c)


class Glibc:
    """The adapter vocabulary over glibc's aio_* (ctypes)."""

    name = "glibc"

    def __init__(self) -> None:
        self.lib = load()
        self.none = glibc_sigevent()
        self.none.sigev_notify = P.SIGEV_NONE

    def _call(self, fn: Callable[..., int], *args: Any) -> Outcome:
        ctypes.set_errno(0)
        r = fn(*args)
        return (r, ctypes.get_errno() if r == -1 else 0)

    def cb(
        self,
        fd: int,
        offset: int = 0,
        data: bytes | int = 0,
        *,
        prio: int = 0,
        opcode: int = P.LIO_NOP,
    ) -> _GCb:
        n = data if isinstance(data, int) else len(data)
        buf = (ctypes.c_char * max(n, 1))()
        if not isinstance(data, int):
            ctypes.memmove(buf, data, n)
        c = glibc_aiocb()
        c.aio_fildes = fd
        c.aio_offset = offset
        c.aio_buf = ctypes.addressof(buf)
        c.aio_nbytes = n
        c.aio_reqprio = prio
        c.aio_lio_opcode = opcode
        c.aio_sigevent.sigev_notify = P.SIGEV_NONE
        return _GCb(c, buf)

    def read(self, cb: _GCb) -> Outcome:
        return self._call(self.lib.aio_read, cb.ref)

    def write(self, cb: _GCb) -> Outcome:
        return self._call(self.lib.aio_write, cb.ref)

    def fsync(self, op: int, cb: _GCb) -> Outcome:
        return self._call(self.lib.aio_fsync, op, cb.ref)

    def error(self, cb: _GCb) -> int:
        return int(self.lib.aio_error(cb.ref))

    def ret(self, cb: _GCb) -> int:
        return int(self.lib.aio_return(cb.ref))

    def cancel(self, fd: int, cb: _GCb | None = None) -> Outcome:
        return self._call(self.lib.aio_cancel, fd, None if cb is None else cb.ref)

    def _list(self, cbs: Sequence[_GCb | None]) -> Any:
        ptr = ctypes.POINTER(glibc_aiocb)
        return (ptr * max(len(cbs), 1))(*[ptr() if c is None else c.ref for c in cbs])

    def suspend(self, cbs: Sequence[_GCb | None], timeout: float | None) -> Outcome:
        ts = None
        if timeout is not None:
            ts = ctypes.byref(_timespec(int(timeout), int(timeout % 1 * 1e9)))
        return self._call(self.lib.aio_suspend, self._list(cbs), len(cbs), ts)

    def lio(self, mode: int, cbs: Sequence[_GCb | None]) -> Outcome:
        return self._call(self.lib.lio_listio, mode, self._list(cbs), len(cbs), None)

    def data(self, cb: _GCb) -> bytes:
        return bytes(cb.buf)[: cb.c.aio_nbytes]


A = Any  # Xaio | Glibc: one vocabulary


def settle(a: A, *cbs: Any) -> list[tuple[int, int]]:
    """Wait until each cb is done; its (aio_error, aio_return)."""
    deadline = time.monotonic() + TIMEOUT
    out = []
    for cb in cbs:
        while a.error(cb) == errno.EINPROGRESS:
            assert time.monotonic() < deadline, f"{a.name}: request still in progress"
            a.suspend([cb], 0.05)
        out.append((a.error(cb), a.ret(cb)))
    return out


@pytest.fixture(params=["thread", "uring", "linux"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    reason = engine_unavailable(name)
    if reason is not None:
        pytest.skip(f"engine {name!r} unavailable: {reason}")
    R._shutdown()
    P.aio_init(engine=name)
    yield name
    R._shutdown()
    P.aio_init()


DATA = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Callable[[str], int]]:
    """open_file(tag): a fresh file holding DATA, opened O_RDWR (closed after)."""
    fds: list[int] = []

    def open_file(tag: str) -> int:
        p = tmp_path / tag
        p.write_bytes(DATA)
        fd = os.open(p, os.O_RDWR)
        fds.append(fd)
        return fd

    yield open_file
    for fd in fds:
        os.close(fd)


def both(scenario: Callable[[A, str], Any]) -> None:
    """Run *scenario* with xaio and with glibc; their records must be equal."""
    got = scenario(Xaio(), "xaio")
    want = scenario(Glibc(), "glibc")
    assert got == want


# --- the scenarios ---------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_reads_on_a_regular_file(files: Callable[[str], int]) -> None:
    def scenario(a: A, tag: str) -> Any:
        fd = files(tag)
        cases = [(10, 100), (len(DATA) - 50, 100), (len(DATA) + 100, 10), (0, 0), (4096, 8192)]
        cbs = [a.cb(fd, off, n) for off, n in cases]
        subs = [a.read(cb) for cb in cbs]
        return subs, settle(a, *cbs), [a.data(cb) for cb in cbs]

    both(scenario)


@pytest.mark.usefixtures("engine")
def test_writes_on_a_regular_file(files: Callable[[str], int], tmp_path: Path) -> None:
    def scenario(a: A, tag: str) -> Any:
        fd = files(tag)
        cbs = [a.cb(fd, 3, b"hello"), a.cb(fd, len(DATA) + 4096, b"past the end"), a.cb(fd, 0, b"")]
        subs = [a.write(cb) for cb in cbs]
        res = settle(a, *cbs)
        return subs, res, (tmp_path / tag).read_bytes()

    both(scenario)


@pytest.mark.usefixtures("engine")
def test_bad_fds_negative_offsets_and_read_only_fds(tmp_path: Path) -> None:
    p = tmp_path / "ro"
    p.write_bytes(DATA)
    ro = os.open(p, os.O_RDONLY)
    try:

        def scenario(a: A, tag: str) -> Any:
            bad = unused_fd()
            cbs = [
                (a.read, a.cb(bad, 0, 10)),
                (a.write, a.cb(bad, 0, b"x")),
                (a.read, a.cb(-1, 0, 10)),
                (a.write, a.cb(ro, 0, b"x")),  # not open for writing
                (a.read, a.cb(ro, -1, 10)),
                (a.write, a.cb(ro, -4096, b"x")),
            ]
            subs = [submit(cb) for submit, cb in cbs]
            return subs, settle(a, *[cb for _, cb in cbs])

        both(scenario)
    finally:
        os.close(ro)


@pytest.mark.usefixtures("engine")
def test_reqprio_bounds(files: Callable[[str], int]) -> None:
    def scenario(a: A, tag: str) -> Any:
        fd = files(tag)
        out: list[Any] = []
        for prio in (-1, P.AIO_PRIO_DELTA_MAX + 1, 2**20):
            out.append(a.read(a.cb(fd, 0, 10, prio=prio)))
            out.append(a.write(a.cb(fd, 0, b"x", prio=prio)))
        ok = [a.cb(fd, 0, 10, prio=p) for p in (0, P.AIO_PRIO_DELTA_MAX)]
        out += [a.read(cb) for cb in ok]
        out.append(settle(a, *ok))
        return out

    both(scenario)


@pytest.mark.usefixtures("engine")
def test_fsync(files: Callable[[str], int], tmp_path: Path) -> None:
    r, w = os.pipe()
    try:

        def scenario(a: A, tag: str) -> Any:
            fd = files(tag)
            out: list[Any] = []
            cbs = [a.cb(fd), a.cb(fd), a.cb(w)]
            out.append(a.fsync(os.O_SYNC, cbs[0]))
            out.append(a.fsync(os.O_DSYNC, cbs[1]))
            out.append(a.fsync(os.O_SYNC, cbs[2]))  # a pipe: EINVAL from fsync(2)
            out.append(settle(a, *cbs))
            out.append(a.fsync(0, a.cb(fd)))  # neither O_SYNC nor O_DSYNC
            out.append(a.fsync(os.O_SYNC, a.cb(unused_fd())))
            return out

        both(scenario)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.usefixtures("engine")
def test_pipes() -> None:
    def scenario(a: A, tag: str) -> Any:
        r, w = os.pipe()
        try:
            out: list[Any] = []
            wcb = a.cb(w, 0, b"0123456789")
            out.append(a.write(wcb))
            out.append(settle(a, wcb))
            cbs = [a.cb(r, 0, 4), a.cb(r, 0, 100)]  # the second gets what is left
            for cb in cbs:
                out.append(a.read(cb))
                ((err, n),) = settle(a, cb)
                out.append((err, n, a.data(cb)[: max(n, 0)]))
            os.close(w)
            w = -1
            eof = a.cb(r, 0, 10)
            out.append(a.read(eof))
            out.append(settle(a, eof))
            return out
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    both(scenario)


@pytest.mark.parametrize("engine", ["thread", "linux"], indirect=True)
def test_cancel(engine: str, tmp_path: Path, files: Callable[[str], int]) -> None:
    """aio_cancel's three answers and EBADF, with a write blocked on a full
    pipe as the running request.  (A read waiting on an empty pipe is
    cancelled by every xaio engine, which waits for readiness before it
    reads: a deliberate difference, not compared here.)"""

    def scenario(a: A, tag: str) -> Any:
        out: list[Any] = []
        out.append(a.cancel(unused_fd()))
        fd = files(tag)
        out.append(a.cancel(fd))  # nothing queued
        done = a.cb(fd, 0, 10)
        a.read(done)
        while a.error(done) == errno.EINPROGRESS:
            a.suspend([done], 0.05)
        out.append(a.cancel(fd, done))  # completed
        out.append(settle(a, done))
        r, w = os.pipe()
        try:
            os.set_blocking(w, False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(w, b"f" * 4096)
            os.set_blocking(w, True)
            running = a.cb(w, 0, b"z" * 10)
            queued = a.cb(w, 0, b"q")
            a.write(running)
            wait_blocked_in(WRITE_SYSCALLS)  # running: a thread is in write(2)
            a.write(queued)  # queued behind it (glibc too: one fd, one helper)
            out.append(a.cancel(w, queued))
            out.append((a.error(queued), a.ret(queued)))
            out.append(a.cancel(w, running))
            out.append(a.cancel(w))  # the fd form: the running one again
            os.set_blocking(r, False)
            deadline = time.monotonic() + TIMEOUT
            while a.error(running) == errno.EINPROGRESS:
                assert time.monotonic() < deadline
                with contextlib.suppress(BlockingIOError):
                    os.read(r, 1 << 20)
                a.suspend([running], 0.01)
            out.append(settle(a, running))
        finally:
            os.close(r)
            os.close(w)
        return out

    both(scenario)


@pytest.mark.usefixtures("engine")
def test_suspend(files: Callable[[str], int]) -> None:
    def scenario(a: A, tag: str) -> Any:
        out: list[Any] = []
        fd = files(tag)
        out.append(a.suspend([], None))
        out.append(a.suspend([None], None))
        done = a.cb(fd, 0, 10)
        a.read(done)
        settle(a, done)
        out.append(a.suspend([None, done], None))
        r, w = os.pipe()
        try:
            pending = a.cb(r, 0, 1)
            a.read(pending)
            out.append(a.suspend([pending], 0.05))  # EAGAIN: timed out
            out.append(a.suspend([pending, None], 0))
            os.write(w, b"p")
            out.append(settle(a, pending))
            out.append(a.suspend([pending], None))
        finally:
            os.close(r)
            os.close(w)
        return out

    both(scenario)


@pytest.mark.usefixtures("engine")
def test_lio_listio(files: Callable[[str], int], tmp_path: Path) -> None:
    def scenario(a: A, tag: str) -> Any:
        out: list[Any] = []
        fd = files(tag)
        out.append(a.lio(2, [a.cb(fd, 0, 10, opcode=P.LIO_READ)]))  # bad mode
        out.append(a.lio(-1, []))
        out.append(a.lio(P.LIO_WAIT, []))
        out.append(a.lio(P.LIO_NOWAIT, [None]))
        good = [
            a.cb(fd, 10, 20, opcode=P.LIO_READ),
            None,
            a.cb(fd, 100, b"written", opcode=P.LIO_WRITE),
        ]
        out.append(a.lio(P.LIO_WAIT, good))
        out.append(settle(a, good[0], good[2]))
        out.append(a.data(good[0]))
        bad = unused_fd()
        failing = [
            a.cb(fd, 0, 10, opcode=P.LIO_READ),
            a.cb(bad, 0, 10, opcode=P.LIO_READ),
            a.cb(fd, 0, 10, opcode=7),  # no such opcode
            a.cb(fd, -1, 10, opcode=P.LIO_READ),
        ]
        out.append(a.lio(P.LIO_WAIT, failing))  # EIO: some failed
        out.append(settle(a, *failing))
        later = [a.cb(fd, 0, 10, opcode=P.LIO_READ), a.cb(bad, 0, b"x", opcode=P.LIO_WRITE)]
        out.append(a.lio(P.LIO_NOWAIT, later))
        out.append(settle(a, *later))
        out.append((tmp_path / tag).read_bytes())
        return out

    both(scenario)


@pytest.mark.usefixtures("engine")
def test_writes_to_a_slow_stream_peer() -> None:
    """An aio_write on a blocking stream socket writes all of it, as
    write(2) there does, whatever the peer's pace."""
    import socket

    payload = bytes(range(256)) * 1200  # 300 kB, far above the socket buffers

    def scenario(a: A, tag: str) -> Any:
        s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s1.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            cbs = [a.cb(s1.fileno(), 0, payload), a.cb(s1.fileno(), 0, b"end")]
            subs = [a.write(cb) for cb in cbs]
            got = bytearray()
            s2.settimeout(TIMEOUT)
            while len(got) < len(payload) + 3:
                got += s2.recv(65536)
            return subs, settle(a, *cbs), bytes(got) == payload + b"end"
        finally:
            s1.close()
            s2.close()

    both(scenario)
