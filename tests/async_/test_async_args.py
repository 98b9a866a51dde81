"""Hypothesis fuzzing of the async layer's argument checking.

Wrong types and values no errno covers -> TypeError/ValueError before any
syscall (checked by asserting the engine saw no request); what the OS reports
-> OSError with the OS's errno (compared with the ``os`` module's own answer).
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xaio
from xaio._async._current import current_driver

pytestmark = pytest.mark.timeout(120)

bad_ints = st.one_of(
    st.none(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.just(object()),
    st.booleans(),
)


class Loop:
    """One event loop for many hypothesis examples (closed at the end)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def submitted(self) -> int:
        async def get() -> int:
            stats = current_driver().engine.statistics()
            return int(stats.get("submitted", 0)) + int(stats.get("aio", {}).get("submitted", 0))

        return int(self.run(get()))

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def fd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    p = tmp_path_factory.mktemp("args") / "f"
    p.write_bytes(b"0123456789" * 100)
    fd = os.open(p, os.O_RDWR)
    yield fd
    os.close(fd)


SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(bad=bad_ints, which=st.sampled_from(["fd", "n", "offset"]))
def test_bad_types_raise_typeerror_before_any_syscall(
    loop: Loop, fd: int, bad: Any, which: str
) -> None:
    args = {"fd": fd, "n": 10, "offset": 0}
    args[which] = bad
    before = loop.submitted()
    with pytest.raises(TypeError):
        loop.run(xaio.pread(args["fd"], args["n"], args["offset"]))
    with pytest.raises(TypeError):
        if which == "n":
            loop.run(xaio.preadinto(args["fd"], bad, args["offset"]))
        else:
            loop.run(xaio.pwrite(args["fd"], b"x", args["offset"]))
    assert loop.submitted() == before


@SETTINGS
@given(n=st.integers(max_value=-1), offset=st.integers(min_value=0, max_value=10**6))
def test_negative_sizes_raise_valueerror(loop: Loop, fd: int, n: int, offset: int) -> None:
    before = loop.submitted()
    with pytest.raises(ValueError):
        loop.run(xaio.pread(fd, n, offset))
    with pytest.raises(ValueError):
        loop.run(xaio.read(fd, n))
    assert loop.submitted() == before


@SETTINGS
@given(offset=st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63)))
def test_bad_offsets_are_einval_valueerrors(loop: Loop, fd: int, offset: int) -> None:
    before = loop.submitted()
    for coro in (
        xaio.pread(fd, 1, offset),
        xaio.pwrite(fd, b"x", offset),
        xaio.preadinto(fd, bytearray(1), offset),
        xaio.preadv(fd, [bytearray(1)], offset),
        xaio.pwritev(fd, [b"x"], offset),
    ):
        with pytest.raises(ValueError) as ei:
            loop.run(coro)
        assert isinstance(ei.value, OSError) and ei.value.errno == errno.EINVAL
    assert loop.submitted() == before


@SETTINGS
@given(buf=st.one_of(st.binary(max_size=4), st.text(max_size=4), st.integers(), st.none()))
def test_read_into_readonly_or_non_buffer_is_typeerror(loop: Loop, fd: int, buf: Any) -> None:
    before = loop.submitted()
    with pytest.raises(TypeError):
        loop.run(xaio.preadinto(fd, buf, 0))
    with pytest.raises(TypeError):
        loop.run(xaio.preadv(fd, [buf], 0))
    assert loop.submitted() == before


def _os_errno(fn: Any, *args: Any) -> int | None:
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return None


@SETTINGS
@given(bad_fd=st.one_of(st.integers(min_value=-(2**31), max_value=-1), st.integers(1000, 5000)))
def test_bad_fds_are_ebadf_like_os(loop: Loop, bad_fd: int) -> None:
    assert _os_errno(os.pread, bad_fd, 1, 0) == errno.EBADF
    for coro in (xaio.pread(bad_fd, 1, 0), xaio.pwrite(bad_fd, b"x", 0), xaio.fsync(bad_fd)):
        with pytest.raises(OSError) as ei:
            loop.run(coro)
        assert ei.value.errno == errno.EBADF


@SETTINGS
@given(
    n=st.integers(0, 3000),
    offset=st.integers(0, 3000),
)
def test_valid_reads_match_os_pread(loop: Loop, fd: int, n: int, offset: int) -> None:
    assert loop.run(xaio.pread(fd, n, offset)) == os.pread(fd, n, offset)


def test_os_errors_match_the_os_module(loop: Loop, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.write_bytes(b"abc")
    rfd = os.open(ro, os.O_RDONLY)
    dfd = os.open(tmp_path, os.O_RDONLY)
    try:
        for fn, afn, args in [
            (os.pwrite, xaio.pwrite, (rfd, b"x", 0)),
            (os.pread, xaio.pread, (dfd, 1, 0)),
            (os.fsync, xaio.fsync, (123456,)),
        ]:
            want = _os_errno(fn, *args)
            with pytest.raises(OSError) as ei:
                loop.run(afn(*args))  # type: ignore[operator]
            assert ei.value.errno == want
    finally:
        os.close(rfd)
        os.close(dfd)
