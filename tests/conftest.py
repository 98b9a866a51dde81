"""Shared fixtures: real files (buffered and O_DIRECT), pipes, eventfds, contexts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ENGINES, LIBS, pattern, record_fds_asked, skip_unavailable


def pytest_configure(config: pytest.Config) -> None:
    """Let the children the tests start be interrupted by SIGINT.

    Tests send SIGINT to child processes (the CLI, ``tests/_sigint_child.py``)
    and expect a ``KeyboardInterrupt`` there.  A shell starts a background job
    with SIGINT ignored, and an ignored signal stays ignored across exec, so
    those children would ignore it too; with a handler here instead, they
    start with the default action and Python installs its own handler.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def data_path(tmp_path: Path) -> Path:
    """A 1 MiB file of known content."""
    p = tmp_path / "data.bin"
    p.write_bytes(pattern(1 << 20))
    return p


@pytest.fixture
def data_fd(data_path: Path) -> Iterator[int]:
    fd = os.open(data_path, os.O_RDWR)
    yield fd
    os.close(fd)


@pytest.fixture
def direct_fd(data_path: Path) -> Iterator[int]:
    """The 1 MiB data file opened O_RDWR | O_DIRECT (skipped where unsupported)."""
    try:
        fd = os.open(data_path, os.O_RDWR | os.O_DIRECT)
    except OSError as e:
        pytest.skip(f"O_DIRECT not supported here: {e}")
    yield fd
    os.close(fd)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe (read end, write end), both ends closed after the test unless
    the test closed them."""
    r, w = os.pipe2(os.O_CLOEXEC)
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


@pytest.fixture
def tfile(tmp_path: Path) -> Iterator[int]:
    """A 16 KiB file of ``bytes(range(256))`` repeated, opened O_RDWR."""
    fd = os.open(tmp_path / "t.bin", os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, bytes(range(256)) * 64)
    yield fd
    os.close(fd)


@pytest.fixture
def dgram() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A datagram socketpair whose sender is full: the next blocking send blocks."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with contextlib.suppress(BlockingIOError):
        while True:
            a.send(b"f" * 512, socket.MSG_DONTWAIT)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def eventfd() -> Iterator[int]:
    fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    yield fd
    os.close(fd)


@pytest.fixture
def kind_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The fds the async layer asks ``check_positional`` about (the ESPIPE
    answer and the routing), in order, while the test runs."""
    from xaio._async import _checks

    return record_fds_asked(monkeypatch, _checks, "check_positional")


@pytest.fixture(params=LIBS)
def lib(request: pytest.FixtureRequest) -> str:
    """Each async library the layer supports (asyncio, uvloop, trio, anyio...)."""
    return str(request.param)


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each engine, made the default through ``XAIO_ENGINE`` for the test
    (skipped, saying why, where it does not work)."""
    name = str(request.param)
    skip_unavailable(name)
    monkeypatch.setenv("XAIO_ENGINE", name)
    yield name
