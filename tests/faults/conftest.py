"""Fixtures of the fault-injection suite: a FUSE file system whose requests
can be delayed, failed or cut short (``faultfs``), and a leak check."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults._fusefs import FaultFS, unavailable_reason
from tests.faults._measure import assert_released, snapshot


@pytest.fixture
def faultfs(tmp_path: Path) -> Iterator[FaultFS]:
    """A mounted :class:`FaultFS` with ``direct_io`` (every read and write
    reaches the daemon); unmounted and stopped even when the test fails."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no FUSE here: {reason}")
    with FaultFS(tmp_path) as fs:
        yield fs


@pytest.fixture
def faultfs_cached(tmp_path: Path) -> Iterator[FaultFS]:
    """Like ``faultfs`` but without ``direct_io``: buffered I/O uses the page cache."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no FUSE here: {reason}")
    with FaultFS(tmp_path, cached=True) as fs:
        yield fs


@pytest.fixture
def faultfs_names(tmp_path: Path) -> Iterator[FaultFS]:
    """Like ``faultfs_cached``, and the kernel keeps names and attributes for
    60 s (as sshfs lets it): a lookup of a cached name asks no daemon."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no FUSE here: {reason}")
    with FaultFS(tmp_path, cached=True, names=True) as fs:
        yield fs


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fails the test if it leaves an fd, thread, AIO context or mapping behind."""
    import trio  # noqa: F401  (its first import maps its extension modules)

    gc.collect()
    before = snapshot()
    yield
    gc.collect()
    assert_released(before)
