"""xaio.linux and xaio.libaio against the kernel itself, call by call.

Each case runs three ways: ``xaio.linux`` (raises ``OSError``), ``xaio.libaio``
(returns the negated errno) and a reference made here with nothing of xaio --
the raw system call through libc's ``syscall(2)``, on a ``struct iocb`` and
a buffer built with ctypes.  All three must give the same answer: the same
errno, the same count, the same ``res`` and the same bytes (SPEC §2).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import select
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import pattern
from xaio import libaio, linux
from xaio.linux import Iocb, IOContext

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the reference uses x86-64 system call numbers"
)

_NR = {"io_setup": 206, "io_destroy": 207, "io_getevents": 208, "io_submit": 209, "io_cancel": 210}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def sys_call(name: str, *args: int) -> int:
    """The raw system call: its result, or -errno."""
    ctypes.set_errno(0)
    ret: int = _libc.syscall(ctypes.c_long(_NR[name]), *(ctypes.c_long(a) for a in args))
    return -ctypes.get_errno() if ret == -1 else ret


class CIocb(ctypes.Structure):
    """struct iocb, as <linux/aio_abi.h> has it on a little-endian machine."""

    _fields_ = [
        ("data", ctypes.c_uint64),
        ("key", ctypes.c_uint32),
        ("rw_flags", ctypes.c_int32),
        ("opcode", ctypes.c_uint16),
        ("reqprio", ctypes.c_int16),
        ("fildes", ctypes.c_uint32),
        ("buf", ctypes.c_uint64),
        ("nbytes", ctypes.c_uint64),
        ("offset", ctypes.c_int64),
        ("reserved2", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("resfd", ctypes.c_uint32),
    ]


class CEvent(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class RawContext:
    """An AIO context driven by raw system calls only."""

    def __init__(self, nr: int = 64) -> None:
        cid = ctypes.c_ulong(0)
        assert sys_call("io_setup", nr, ctypes.addressof(cid)) == 0
        self.id = cid.value
        self.keep: list[Any] = []

    def submit(self, cbs: list[CIocb]) -> int:
        ptrs = (ctypes.c_void_p * max(len(cbs), 1))(*[ctypes.addressof(c) for c in cbs])
        self.keep.append(ptrs)
        return sys_call("io_submit", self.id, len(cbs), ctypes.addressof(ptrs))

    def getevents(self, min_nr: int, nr: int, timeout: float | None) -> tuple[int, list[int]]:
        events = (CEvent * max(nr, 1))()
        ts = (ctypes.c_long * 2)(int(timeout or 0), int((timeout or 0) % 1 * 1e9))
        ts_addr = 0 if timeout is None else ctypes.addressof(ts)
        ret = sys_call("io_getevents", self.id, min_nr, nr, ctypes.addressof(events), ts_addr)
        return ret, [events[i].res for i in range(max(ret, 0))]

    def cancel(self, cb: CIocb) -> int:
        result = CEvent()
        return sys_call("io_cancel", self.id, ctypes.addressof(cb), ctypes.addressof(result))

    def destroy(self) -> int:
        return sys_call("io_destroy", self.id)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[dict[str, int]]:
    path = tmp_path / "parity.bin"
    path.write_bytes(pattern(1 << 16))
    fds = {
        "rw": os.open(path, os.O_RDWR),
        "ro": os.open(path, os.O_RDONLY),
        "wo": os.open(path, os.O_WRONLY),
        "efd": os.eventfd(0, os.EFD_NONBLOCK),
    }
    r, w = os.pipe()
    closed = os.open(path, os.O_RDONLY)  # the last fd opened: its number stays free
    os.close(closed)
    fds.update(closed=closed, pipe_r=r, pipe_w=w)
    yield fds
    for name, fd in fds.items():
        if name != "closed":
            os.close(fd)


def request(
    files: dict[str, int],
    opcode: int,
    fd: str = "rw",
    size: int | None = 16,
    nbytes: int | None = None,
    offset: int = 0,
    rw_flags: int = 0,
    flags: int = 0,
    resfd: str | None = None,
    mask: int | None = None,
) -> tuple[Iocb, CIocb, bytearray | None, Any]:
    """The same request as an xaio Iocb and as a raw struct iocb (each with
    its own buffer of *size* bytes, or *mask* as POLL's event mask)."""
    x = Iocb()
    c = CIocb()
    pybuf = cbuf = None
    x.aio_lio_opcode = c.opcode = opcode
    x.aio_fildes = c.fildes = files[fd]
    if mask is not None:
        x.aio_buf = c.buf = mask
    elif size is not None:
        pybuf = bytearray(size)
        cbuf = ctypes.create_string_buffer(size)
        x.aio_buf = pybuf
        c.buf = ctypes.addressof(cbuf)
    n = (size or 0) if nbytes is None else nbytes
    x.aio_nbytes = nbytes if nbytes is not None else None if size else 0
    c.nbytes = n
    x.aio_offset = c.offset = offset
    x.aio_rw_flags = c.rw_flags = rw_flags
    x.aio_flags = c.flags = flags
    if resfd is not None:
        x.aio_resfd = c.resfd = files[resfd]
    return x, c, pybuf, cbuf


R, W, FS, FDS, POLL = (
    linux.IOCB_CMD_PREAD,
    linux.IOCB_CMD_PWRITE,
    linux.IOCB_CMD_FSYNC,
    linux.IOCB_CMD_FDSYNC,
    linux.IOCB_CMD_POLL,
)
SUBMIT_CASES: dict[str, dict[str, Any]] = {
    "read": {"opcode": R},
    "read at 1000": {"opcode": R, "offset": 1000},
    "read past the end": {"opcode": R, "offset": 1 << 20},
    "read of 0 bytes": {"opcode": R, "nbytes": 0},
    "write": {"opcode": W, "offset": 1 << 17},
    "fsync": {"opcode": FS, "size": None},
    "fdsync": {"opcode": FDS, "size": None},
    "poll on a regular file": {"opcode": POLL, "size": None, "mask": select.POLLIN},
    "closed fd": {"opcode": R, "fd": "closed"},
    "read on a write-only fd": {"opcode": R, "fd": "wo"},
    "write on a read-only fd": {"opcode": W, "fd": "ro"},
    "negative offset": {"opcode": R, "offset": -4096},
    "unknown opcode": {"opcode": 9},
    "IOCB_CMD_NOOP": {"opcode": linux.IOCB_CMD_NOOP},
    "fsync with nbytes": {"opcode": FS, "size": None, "nbytes": 0, "offset": 8},
    "fsync with rw_flags": {"opcode": FS, "size": None, "rw_flags": linux.RWF_DSYNC},
    "fsync with a buffer": {"opcode": FS, "size": 8},
    "poll mask over 16 bits": {"opcode": POLL, "size": None, "mask": 1 << 16},
    "poll with an offset": {"opcode": POLL, "size": None, "mask": 1, "offset": 8},
    "unknown RWF bit": {"opcode": R, "rw_flags": 1 << 30},
    "RWF_NOWAIT read": {"opcode": R, "rw_flags": linux.RWF_NOWAIT},
    "resfd not an eventfd": {"opcode": R, "flags": linux.IOCB_FLAG_RESFD, "resfd": "rw"},
    "resfd an eventfd": {"opcode": R, "flags": linux.IOCB_FLAG_RESFD, "resfd": "efd"},
    "unknown aio_flags bit": {"opcode": R, "flags": 1 << 8},
}


def reap_one(ctx: IOContext) -> int:
    (ev,) = linux.io_getevents(ctx, 1, 1, 5)
    return ev.res


@pytest.mark.parametrize("case", list(SUBMIT_CASES))
def test_submit_like_the_kernel(files: dict[str, int], case: str) -> None:
    spec = SUBMIT_CASES[case]
    raw = RawContext()
    try:
        x, c, pybuf, cbuf = request(files, **spec)
        ref = raw.submit([c])
        ref_res = raw.getevents(1, 1, 5)[1][0] if ref == 1 else None
        ref_bytes = bytes(cbuf.raw) if cbuf is not None else None
    finally:
        assert raw.destroy() == 0
    with linux.io_setup(64) as ctx:
        try:
            got: int = linux.io_submit(ctx, [x])
        except OSError as e:
            assert e.errno is not None
            got = -e.errno
        res = reap_one(ctx) if got == 1 else None
        assert (got, res) == (ref, ref_res), case
        if pybuf is not None:
            assert bytes(pybuf) == ref_bytes
        y, *_ = request(files, **spec)
        assert libaio.io_submit(ctx, [y]) == ref
        if ref == 1:
            assert reap_one(ctx) == ref_res


def test_partial_submission_like_the_kernel(files: dict[str, int]) -> None:
    """Requests are taken in order up to the first refused one: [good, bad,
    good] gives 1; [bad, good] gives the error."""
    for order, want in (("gbg", 1), ("bg", -errno.EBADF), ("ggb", 2)):
        specs = [{"opcode": R} if k == "g" else {"opcode": R, "fd": "closed"} for k in order]
        raw = RawContext()
        try:
            made = [request(files, **s) for s in specs]
            assert raw.submit([m[1] for m in made]) == want
            raw.getevents(max(want, 0), max(want, 0), 5)
        finally:
            raw.destroy()
        with linux.io_setup(64) as ctx:
            made = [request(files, **s) for s in specs]
            assert libaio.io_submit(ctx, [m[0] for m in made]) == want
            assert len(linux.io_getevents(ctx, max(want, 0), max(want, 0), 5)) == max(want, 0)
            made = [request(files, **s) for s in specs]
            if want < 0:
                with pytest.raises(OSError) as info:
                    linux.io_submit(ctx, [m[0] for m in made])
                assert info.value.errno == -want
            else:
                assert linux.io_submit(ctx, [m[0] for m in made]) == want
                assert [m[0].in_flight for m in made] == [True] * want + [False] * (
                    len(made) - want
                )


@pytest.mark.parametrize(
    "min_nr,nr,timeout", [(-1, 1, 0), (2, 1, 0), (0, -1, 0), (0, 0, None), (0, 4, 0), (1, 4, 0)]
)
def test_getevents_like_the_kernel(min_nr: int, nr: int, timeout: float | None) -> None:
    raw = RawContext()
    try:
        ref = raw.getevents(min_nr, nr, timeout)
    finally:
        raw.destroy()
    with linux.io_setup(64) as ctx:
        assert libaio.io_getevents(ctx, min_nr, nr, timeout) == (ref[0], [])
        if ref[0] < 0:
            with pytest.raises(OSError) as info:
                linux.io_getevents(ctx, min_nr, nr, timeout)
            assert info.value.errno == -ref[0]
        else:
            assert linux.io_getevents(ctx, min_nr, nr, timeout) == []


def test_cancel_like_the_kernel(files: dict[str, int]) -> None:
    """A pending POLL: EINPROGRESS, then EINVAL; a regular-file read (done)
    and a request never submitted: EINVAL."""
    raw = RawContext()
    try:
        p = request(files, POLL, fd="pipe_r", size=None, mask=select.POLLIN)[1]
        assert raw.submit([p]) == 1
        rd = request(files, R)[1]
        assert raw.submit([rd]) == 1
        never = request(files, R)[1]
        ref = [raw.cancel(p), raw.cancel(p), raw.cancel(rd), raw.cancel(never)]
        assert raw.getevents(2, 2, 5)[0] == 2
    finally:
        raw.destroy()
    assert ref == [-errno.EINPROGRESS, -errno.EINVAL, -errno.EINVAL, -errno.EINVAL]
    for conv in ("linux", "libaio"):
        with linux.io_setup(64) as ctx:
            p_x = request(files, POLL, fd="pipe_r", size=None, mask=select.POLLIN)[0]
            rd_x = request(files, R)[0]
            never_x = request(files, R)[0]
            linux.io_submit(ctx, [p_x, rd_x])
            got = []
            for cb in (p_x, p_x, rd_x, never_x):
                if conv == "libaio":
                    ret, ev = libaio.io_cancel(ctx, cb)
                    assert ev is None
                    got.append(ret)
                else:
                    try:
                        assert linux.io_cancel(ctx, cb) is None
                        got.append(-errno.EINPROGRESS)
                    except OSError as e:
                        assert e.errno is not None
                        got.append(-e.errno)
            assert got == ref
            events = linux.io_getevents(ctx, 2, 2, 5)
            assert sorted(e.res for e in events) == [0, 16]


def test_setup_and_destroy_like_the_kernel() -> None:
    for nr in (0, -1, 1 << 28):
        cid = ctypes.c_ulong(0)
        ref = sys_call("io_setup", nr, ctypes.addressof(cid))
        assert ref == -errno.EINVAL
        assert libaio.io_setup(nr) == (ref, None)
        with pytest.raises(OSError) as info:
            linux.io_setup(nr)
        assert info.value.errno == -ref
    raw = RawContext()
    assert raw.destroy() == 0
    ref_again = raw.destroy()
    assert ref_again == -errno.EINVAL
    ret, ctx = libaio.io_setup(4)
    assert ret == 0 and ctx is not None
    assert libaio.io_destroy(ctx) == 0
    assert libaio.io_destroy(ctx) == ref_again
    with pytest.raises(OSError) as info:
        linux.io_destroy(ctx)
    assert info.value.errno == -ref_again
    for bad in (0, 12345):
        assert libaio.io_destroy(bad) == sys_call("io_destroy", bad)
    # after destroy: submit and getevents on it are EINVAL, as on a raw id
    assert raw.submit([]) == -errno.EINVAL
    assert libaio.io_submit(ctx, []) == -errno.EINVAL
    assert raw.getevents(0, 1, 0)[0] == libaio.io_getevents(ctx, 0, 1, 0)[0] == -errno.EINVAL
