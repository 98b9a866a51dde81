"""Hypothesis fuzzing of every public entry point of xaio.linux / xaio.libaio.

Whatever the arguments, a call either works, or raises TypeError/ValueError/
IocbInFlightError before any system call, or reports the kernel's errno
(OSError in the Python convention, the negated errno in libaio's).  Never a
crash, never another exception, and every accepted request completes.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xaio import libaio, linux
from xaio.linux import Iocb, IocbInFlightError, IOContext, _iocb

EXPECTED = (TypeError, ValueError, IocbInFlightError, OSError)


class Files:
    def __init__(self, tmp: Path) -> None:
        path = tmp / "fuzz.bin"
        path.write_bytes(b"z" * 65536)
        self.rw = os.open(path, os.O_RDWR)
        self.ro = os.open(path, os.O_RDONLY)
        self.efd = os.eventfd(0, os.EFD_NONBLOCK)
        closed = os.open(path, os.O_RDONLY)
        os.close(closed)
        self.closed = closed
        self.ctx = linux.io_setup(64)

    def close(self) -> None:
        linux.io_destroy(self.ctx)
        for fd in (self.rw, self.ro, self.efd):
            os.close(fd)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    f = Files(tmp_path_factory.mktemp("fuzz"))
    yield f
    f.close()


def fd_strategy(f: Files) -> st.SearchStrategy[int]:
    return st.sampled_from([f.rw, f.ro, f.closed, -1, 2**31 - 1])


buffers = st.one_of(
    st.none(),
    st.binary(max_size=64),
    st.binary(max_size=64).map(bytearray),
    st.binary(max_size=64).map(lambda b: memoryview(bytearray(b))),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.lists(st.binary(max_size=16).map(bytearray), max_size=4),
    st.lists(st.binary(max_size=16), max_size=4),
    st.just("text"),
    st.floats(allow_nan=True),
)
ints = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.integers(min_value=-2, max_value=70000),
    st.sampled_from([0, 1, 4096, -1]),
)
maybe_int = st.one_of(ints, st.none(), st.just("1"), st.floats(allow_nan=False))


def drain(ctx: IOContext) -> None:
    while ctx.statistics()["in_flight"]:
        linux.io_getevents(ctx, 1, 64, timeout=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_submit_never_crashes(files: Files, data: st.DataObject) -> None:
    x = Iocb()
    x.aio_lio_opcode = data.draw(st.one_of(st.integers(0, 9), ints), label="opcode")
    x.aio_fildes = data.draw(st.one_of(fd_strategy(files), ints), label="fd")
    x.aio_buf = data.draw(buffers, label="buf")
    x.aio_nbytes = data.draw(maybe_int, label="nbytes")
    x.aio_offset = data.draw(st.one_of(st.integers(-5, 70000), ints), label="offset")
    x.aio_rw_flags = data.draw(st.one_of(st.sampled_from([0, 1, 2, 4, 8, 16, 32]), ints))
    x.aio_flags = data.draw(st.sampled_from([0, 1, 2, 3, 4, -1]), label="flags")
    x.aio_resfd = data.draw(st.sampled_from([files.efd, files.rw, -1, 0]), label="resfd")
    x.aio_reqprio = data.draw(st.one_of(st.integers(-40000, 40000), st.just(2 << 13)))
    x.aio_data = data.draw(ints, label="data")
    convention = data.draw(st.sampled_from(["linux", "libaio"]))
    try:
        if convention == "linux":
            n = linux.io_submit(files.ctx, [x])
            assert n == 1
        else:
            n = libaio.io_submit(files.ctx, [x])
            assert n == 1 or n < 0
    except EXPECTED:
        pass
    assert x.in_flight == (files.ctx.statistics()["in_flight"] == 1)
    drain(files.ctx)
    assert not x.in_flight


@settings(max_examples=200, deadline=None)
@given(
    min_nr=st.one_of(ints, st.none(), st.just(1.5)),
    nr=st.one_of(ints, st.none()),
    timeout=st.one_of(
        st.none(), st.floats(max_value=0.001), st.just(float("nan")), st.just(-1), st.just("0")
    ),
)
def test_getevents_never_crashes(files: Files, min_nr: Any, nr: Any, timeout: Any) -> None:
    if isinstance(min_nr, int) and min_nr > 0 and (timeout is None or timeout != timeout):
        timeout = 0  # would wait for ever
    if isinstance(timeout, float) and timeout == float("inf"):
        timeout = 0
    try:
        linux.io_getevents(files.ctx, min_nr, nr, timeout)
    except EXPECTED:
        pass
    try:
        ret, events = libaio.io_getevents(files.ctx, min_nr, nr, timeout)
        assert ret == len(events) or (ret < 0 and events == [])
    except (TypeError, ValueError):
        pass


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(ints, st.none(), st.text(max_size=3), st.floats()))
def test_setup_and_destroy_never_crash(value: Any) -> None:
    try:
        ctx = linux.io_setup(value)
    except EXPECTED:
        ctx = None
    if ctx is not None:
        linux.io_destroy(ctx)
    ret: Any
    try:
        ret = libaio.io_destroy(value)
        assert isinstance(ret, int) and ret <= 0
    except TypeError:
        pass
    try:
        ret, c = libaio.io_queue_init(value)
        if c is not None:
            assert libaio.io_queue_release(c) == 0
    except TypeError:
        pass


def outcome(ctx: IOContext, x: Iocb) -> tuple[str, Any]:
    """What io_submit of *x* gives: the exception type, or the count (and
    then the struct iocb the kernel was handed), the request drained."""
    try:
        n = linux.io_submit(ctx, [x])
    except EXPECTED as e:
        return type(e).__name__, getattr(e, "errno", None)
    image = bytes(memoryview(x._struct).cast("B"))
    opcode, nbytes = x._struct.aio_lio_opcode, x._struct.aio_nbytes
    if opcode in (linux.IOCB_CMD_PREADV, linux.IOCB_CMD_PWRITEV):
        # aio_buf points at the Iocb's own iovec array: compare what it holds
        iovecs = (ctypes.c_uint64 * (2 * nbytes)).from_address(x._struct.aio_buf)
        image = image[:24] + bytes(iovecs) + image[32:]
    drain(ctx)
    return "accepted", (n, image)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_field_changes_after_submission_match_a_fresh_iocb(
    files: Files, data: st.DataObject
) -> None:
    """An Iocb submitted before keeps its checked struct iocb and checks only
    the fields set since: whatever is set, submitting it gives exactly what a
    fresh Iocb with the same fields gives -- the same exception before the
    kernel, the same errno from it, the same struct iocb handed to it."""
    buf = bytearray(64)
    x = Iocb.pread(files.rw, buf, 0)
    assert linux.io_submit(files.ctx, [x]) == 1
    drain(files.ctx)
    changes = st.one_of(
        st.tuples(st.just("aio_offset"), st.one_of(st.integers(-5, 70000), ints, maybe_int)),
        st.tuples(st.just("aio_fildes"), st.one_of(fd_strategy(files), ints)),
        st.tuples(st.just("aio_data"), maybe_int),
        st.tuples(st.just("aio_rw_flags"), st.one_of(st.sampled_from([0, 1, 2, 8, 16]), ints)),
        st.tuples(st.just("aio_flags"), st.sampled_from([0, 1, 2, -1, 1 << 32])),
        st.tuples(st.just("aio_resfd"), st.sampled_from([files.efd, files.rw, -1, 1 << 33])),
        st.tuples(st.just("aio_reqprio"), st.one_of(st.integers(-40000, 40000), maybe_int)),
        st.tuples(st.just("aio_nbytes"), maybe_int),
        st.tuples(st.just("aio_lio_opcode"), st.one_of(st.integers(0, 9), ints)),
        st.tuples(st.just("aio_buf"), st.one_of(buffers, st.just(buf))),
        st.tuples(st.just("resize"), st.integers(0, 128)),
        st.tuples(st.just("submit"), st.none()),
    )
    for name, value in data.draw(st.lists(changes, max_size=8), label="changes"):
        if name == "resize":
            if isinstance(x.aio_buf, bytearray):
                x.aio_buf[:] = bytes(value)
        elif name == "submit":
            outcome(files.ctx, x)
        else:
            setattr(x, name, value)
    y = Iocb()
    for field in _iocb._FIELDS:
        setattr(y, field, getattr(x, field))
    got = outcome(files.ctx, x)
    assert got == outcome(files.ctx, y)
    assert not x.in_flight and not y.in_flight
