"""Faults reach every API as the kernel reported them, on every engine.

A FUSE file fails reads with EIO, writes with ENOSPC or EIO, serves short
reads and writes, fails fsync and close (flush); each API must report an
``OSError`` with that errno (or the short count), never report written what
was not, and leave no fd, thread, ring, AIO context or mapping behind.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Iterator

import pytest

import xaio
import xaio.posix as P
from tests.faults._fusefs import FaultFS
from tests.support import run
from xaio import linux
from xaio.posix import _runtime as R

#: read and write faults, and the errno each must come back with
FAULTS = [("read", errno.EIO), ("write", errno.ENOSPC), ("write", errno.EIO)]
CONTENT = random.Random(17).randbytes(8192)  # no period: a byte out of place shows


@pytest.fixture
def fpath(faultfs: FaultFS) -> Iterator[str]:
    p = faultfs.path("f.bin")
    p.write_bytes(CONTENT)
    yield str(p)


def on_disk(faultfs: FaultFS) -> bytes:
    return (faultfs.backing / "f.bin").read_bytes()


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
@pytest.mark.parametrize(("op", "err"), FAULTS, ids=["read-EIO", "write-ENOSPC", "write-EIO"])
def test_pread_pwrite(
    engine_name: str, op: str, err: int, direct: bool, faultfs: FaultFS, fpath: str, no_leaks: None
) -> None:
    fd = os.open(fpath, os.O_RDWR | (os.O_DIRECT if direct else 0))
    buf = xaio.aligned_buffer(4096)
    buf[:] = b"W" * 4096

    async def main() -> None:
        faultfs.inject({"path": "f.bin", "ops": [op], "errno": err})
        with pytest.raises(OSError) as ei:
            if op == "read":
                await xaio.preadinto(fd, buf, 0)
            else:
                await xaio.pwrite(fd, buf, 4096)
        assert ei.value.errno == err
        with pytest.raises(OSError) as ei:
            if op == "read":
                await xaio.pread(fd, 4096, 4096)
            else:
                await xaio.pwritev(fd, [buf], 0)
        assert ei.value.errno == err
        faultfs.inject()

    try:
        run("asyncio", main)
    finally:
        os.close(fd)
    assert on_disk(faultfs) == CONTENT  # nothing written


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
@pytest.mark.parametrize("op", ["read", "write"])
def test_short_transfers(
    engine_name: str,
    op: str,
    direct: bool,
    faultfs: FaultFS,
    fpath: str,
    no_leaks: None,
) -> None:
    """A file system serving 300 bytes per request: the count reported is
    what was transferred, and the bytes are the file's (or what is on disk)."""
    fd = os.open(fpath, os.O_RDWR | (os.O_DIRECT if direct else 0))
    buf = xaio.aligned_buffer(4096)
    buf[:] = b"W" * 4096
    faultfs.inject({"path": "f.bin", "ops": [op], "short": 300})

    async def main() -> int:
        if op == "read":
            return await xaio.preadinto(fd, buf, 0)
        return await xaio.pwrite(fd, buf, 0)

    try:
        n = run("asyncio", main)
    finally:
        os.close(fd)
        faultfs.inject()
    assert n == 300  # what os.preadv / os.pwrite report: one request served short
    if op == "read":
        assert bytes(buf[:n]) == CONTENT[:n]
        assert on_disk(faultfs) == CONTENT
    else:
        assert on_disk(faultfs) == b"W" * n + CONTENT[n:]  # nothing reported that was not


@pytest.mark.parametrize("lib", ["asyncio", "trio"])
def test_async_file(
    engine_name: str, lib: str, faultfs: FaultFS, fpath: str, no_leaks: None
) -> None:
    async def main() -> None:
        f = await xaio.open(fpath, "r+b", buffering=0)
        try:
            faultfs.inject({"path": "f.bin", "ops": ["read"], "errno": errno.EIO})
            with pytest.raises(OSError) as ei:
                await f.read(100)
            assert ei.value.errno == errno.EIO
            faultfs.inject({"path": "f.bin", "ops": ["write"], "errno": errno.ENOSPC})
            with pytest.raises(OSError) as ei:
                await f.pwrite(b"x" * 100, 0)
            assert ei.value.errno == errno.ENOSPC
            faultfs.inject({"path": "f.bin", "ops": ["fsync"], "errno": errno.EIO})
            with pytest.raises(OSError) as ei:
                await f.fsync()
            assert ei.value.errno == errno.EIO
            faultfs.inject({"path": "f.bin", "ops": ["flush"], "errno": errno.ENOSPC})
        finally:
            with pytest.raises(OSError) as ei:
                await f.close()  # close(2) reports the flush's error
        assert ei.value.errno == errno.ENOSPC
        assert f.closed
        faultfs.inject()
        # buffered: the write error reaches flush() and close()
        g = await xaio.open(fpath, "r+b")
        await g.write(b"y" * 100)
        faultfs.inject({"path": "f.bin", "ops": ["write"], "errno": errno.ENOSPC})
        with pytest.raises(OSError) as ei:
            await g.flush()
        assert ei.value.errno == errno.ENOSPC
        with pytest.raises(OSError):
            await g.close()
        assert g.closed
        faultfs.inject()

    run(lib, main)
    assert on_disk(faultfs) == CONTENT  # every write failed: nothing changed


@pytest.fixture
def posix_engine(engine_name: str) -> Iterator[str]:
    R._shutdown()
    P.aio_init(engine=engine_name)
    yield engine_name
    R._shutdown()
    P.aio_init()


def _wait(cb: P.aiocb, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while P.aio_error(cb) == errno.EINPROGRESS:
        assert time.monotonic() < deadline, "request never finished"
        P.aio_suspend([cb], 0.1)


@pytest.mark.parametrize(("op", "err"), FAULTS, ids=["read-EIO", "write-ENOSPC", "write-EIO"])
def test_posix_aio(
    posix_engine: str,
    op: str,
    err: int,
    faultfs: FaultFS,
    fpath: str,
) -> None:
    fd = os.open(fpath, os.O_RDWR)
    try:
        buf = bytearray(b"P" * 1000)
        faultfs.inject({"path": "f.bin", "ops": [op], "errno": err})
        cb = P.aiocb(fd, 0, buf)
        (P.aio_read if op == "read" else P.aio_write)(cb)
        _wait(cb)
        assert P.aio_error(cb) == err
        assert P.aio_return(cb) == -1
        faultfs.inject({"path": "f.bin", "ops": [op], "short": 300})
        cb = P.aiocb(fd, 0, buf)
        (P.aio_read if op == "read" else P.aio_write)(cb)
        _wait(cb)
        n = P.aio_return(cb)
        assert 300 <= n <= 1000
        if op == "read":
            assert bytes(buf[:n]) == CONTENT[:n]
    finally:
        os.close(fd)
    n = n if op == "write" else 0
    assert on_disk(faultfs) == b"P" * n + CONTENT[n:]


@pytest.mark.parametrize(("op", "err"), FAULTS, ids=["read-EIO", "write-ENOSPC", "write-EIO"])
def test_linux_io_submit(op: str, err: int, faultfs: FaultFS, fpath: str, no_leaks: None) -> None:
    """The raw Linux AIO API: the error is the event's ``res`` (-errno)."""
    fd = os.open(fpath, os.O_RDWR | os.O_DIRECT)
    buf = xaio.aligned_buffer(4096)
    buf[:] = b"L" * 4096
    ctx = linux.io_setup(4)
    try:
        faultfs.inject({"path": "f.bin", "ops": [op], "errno": err})
        make = linux.Iocb.pread if op == "read" else linux.Iocb.pwrite
        cb = make(fd, buf, 0)
        assert linux.io_submit(ctx, [cb]) == 1
        (event,) = linux.io_getevents(ctx, 1, 1, 10)
        assert event.obj is cb and event.res == -err
        faultfs.inject({"path": "f.bin", "ops": [op], "short": 512})
        cb = make(fd, buf, 0)
        assert linux.io_submit(ctx, [cb]) == 1
        (event,) = linux.io_getevents(ctx, 1, 1, 10)
        n = event.res
        assert 512 <= n <= 4096
    finally:
        linux.io_destroy(ctx)
        os.close(fd)
    n = n if op == "write" else 0
    assert on_disk(faultfs) == b"L" * n + CONTENT[n:]
