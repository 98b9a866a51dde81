"""Fixtures of the POSIX AIO suite: a fresh POSIX AIO state that must leave
no thread and no fd behind, and POSIX AIO on each engine."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import xaio.posix as P
from tests.support import engine_unavailable, open_fds
from xaio.posix import _runtime as R


@pytest.fixture
def clean_posix() -> Iterator[None]:
    """The test starts from a fresh POSIX AIO state and must leave no thread
    and no fd behind."""
    R._shutdown()
    P.aio_init()
    base_threads = set(threading.enumerate())
    base_fds = open_fds()
    yield
    R._shutdown()
    P.aio_init()
    # threads of other libraries may end meanwhile; none may be left over
    left = set(threading.enumerate()) - base_threads
    assert not left, f"threads left behind: {left}"
    leaked = open_fds() - base_fds
    assert not leaked, f"leaked fds {leaked}"


@pytest.fixture(params=["thread", "uring"])
def engine(request: pytest.FixtureRequest, clean_posix: None) -> Iterator[str]:
    """Run the test with POSIX AIO on each engine (``aio_init(engine=name)``);
    ``clean_posix`` restores the default afterwards."""
    name: str = request.param
    reason = engine_unavailable(name)
    if reason is not None:
        pytest.skip(f"engine {name!r} unavailable: {reason}")
    P.aio_init(engine=name)
    yield name
