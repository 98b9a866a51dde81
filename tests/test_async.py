"""The async layer over every engine and every event-loop library.

asyncio, uvloop, trio and anyio (on both backends) run the same coroutines;
anyio's primitives (task groups, move_on_after, Event) work under all of them,
so the cross-library tests are written with anyio.  The engine is chosen with
``XAIO_ENGINE`` (the default engine of each loop) or ``xaio.open_engine``.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import io
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import xaio
from xaio._async._current import current_driver
from xaio._ops import OpCode, Operation
from xaio.linux import _engine as linux_engine

from .support import (
    aio_nr,
    open_fds,
    own_aio_rings,
    pattern,
    run,
    skip_unavailable,
)

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------
# os-like coroutines
# ---------------------------------------------------------------------------------


def test_pread_pwrite_and_friends(lib: str, engine_name: str, data_path: Path) -> None:
    expected = bytearray(pattern(1 << 20))

    async def main() -> None:
        assert current_driver().engine.name == engine_name
        fd = os.open(data_path, os.O_RDWR)
        try:
            assert await xaio.pread(fd, 10, 4090) == expected[4090:4100]
            assert await xaio.pread(fd, 100, (1 << 20) - 10) == expected[-10:]
            assert await xaio.pread(fd, 100, 1 << 21) == b""
            assert await xaio.pread(fd, 0, 0) == b""
            assert await xaio.pwrite(fd, b"hello", 3) == 5
            expected[3:8] = b"hello"
            buf = bytearray(7)
            assert await xaio.preadinto(fd, buf, 1) == 7
            assert buf == expected[1:8]
            a, b = bytearray(3), bytearray(5)
            assert await xaio.pwritev(fd, [b"abc", memoryview(b"defgh")], 500) == 8
            expected[500:508] = b"abcdefgh"
            assert await xaio.preadv(fd, [a, b], 499) == 8
            assert a + b == expected[499:507]
            await xaio.fsync(fd)
            await xaio.fdatasync(fd)
            # many at once: every result right
            offs = [(i * 7919) % ((1 << 20) - 4096) for i in range(200)]
            results: list[bytes] = [b""] * len(offs)

            async def one(i: int) -> None:
                results[i] = await xaio.pread(fd, 4096, offs[i])

            async with anyio.create_task_group() as tg:
                for i in range(len(offs)):
                    tg.start_soon(one, i)
            for i, off in enumerate(offs):
                assert results[i] == expected[off : off + 4096], i
        finally:
            os.close(fd)

    run(lib, main)


def test_errors_are_oserrors_with_errno(engine_name: str, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.write_bytes(b"x" * 10)

    async def main() -> None:
        fd = os.open(ro, os.O_RDONLY)
        r, w = os.pipe()
        d = os.open(tmp_path, os.O_RDONLY)
        try:
            with pytest.raises(OSError) as ei:
                await xaio.pwrite(fd, b"x", 0)
            assert ei.value.errno == errno.EBADF
            with pytest.raises(IsADirectoryError):
                await xaio.pread(d, 10, 0)
            if engine_name != "uring":  # io_uring reads a pipe as read(2) does
                with pytest.raises(OSError) as ei:
                    await xaio.pread(r, 10, 0)
                assert ei.value.errno == errno.ESPIPE
            with pytest.raises(OSError) as ei:
                await xaio.pread(12345, 1, 0)
            assert ei.value.errno == errno.EBADF
            with pytest.raises(OSError) as ei:
                await xaio.pread(-1, 1, 0)
            assert ei.value.errno == errno.EBADF
            with pytest.raises(ValueError) as ei2:
                await xaio.pread(fd, 1, -1)
            assert isinstance(ei2.value, OSError) and ei2.value.errno == errno.EINVAL
            with pytest.raises(TypeError):
                await xaio.preadinto(fd, b"read-only", 0)
        finally:
            for x in (fd, r, w, d):
                os.close(x)

    asyncio.run(main())


# ---------------------------------------------------------------------------------
# streams: pipes and sockets, cancellation never loses data
# ---------------------------------------------------------------------------------


def test_stream_read_write(lib: str, engine_name: str) -> None:
    async def main() -> None:
        r, w = os.pipe()
        a, b = socket.socketpair()
        try:
            got: list[bytes] = []

            async def reader() -> None:
                got.append(await xaio.read(r, 100))

            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await anyio.sleep(0.01)
                assert await xaio.write(w, b"ping") == 4
            assert got == [b"ping"]
            # a big write to a pipe waits for room, never blocks the loop
            payload = pattern(1 << 20)
            chunks: list[bytes] = []

            async def drain() -> None:
                while sum(map(len, chunks)) < len(payload):
                    chunks.append(await xaio.read(r, 65536))

            async def fill() -> None:
                view = memoryview(payload)
                while view:
                    view = view[await xaio.write(w, view) :]

            async with anyio.create_task_group() as tg:
                tg.start_soon(drain)
                tg.start_soon(fill)
            assert b"".join(chunks) == payload
            await xaio.write(a.fileno(), b"sock")
            assert await xaio.read(b.fileno(), 10) == b"sock"
            os.close(w)
            w = -1
            assert await xaio.read(r, 10) == b""  # EOF
        finally:
            for x in (r, w):
                if x >= 0:
                    os.close(x)
            a.close()
            b.close()
        # no engine work: stream fds never reach a worker thread or the kernel AIO
        stats = current_driver().engine.statistics()
        if engine_name == "thread":
            assert stats["submitted"] == 0

    run(lib, main)


def test_cancelled_pipe_read_loses_nothing(lib: str, engine_name: str) -> None:
    async def main() -> None:
        r, w = os.pipe()
        try:
            with anyio.move_on_after(0.05) as scope:
                await xaio.read(r, 100)
            assert scope.cancelled_caught
            os.write(w, b"payload")
            assert await xaio.read(r, 100) == b"payload"
            # the file object too
            f = await xaio.open(r, "rb", closefd=False)
            with anyio.move_on_after(0.05):
                await f.read(4)
            os.write(w, b"abcdef")
            assert await f.read(4) == b"abcd"
            with anyio.move_on_after(0.05):
                await f.read(10)  # has "ef" buffered, waits for more, cancelled
            os.write(w, b"gh\n")
            assert await f.readline() == b"efgh\n"
            await f.close()
        finally:
            os.close(r)
            os.close(w)

    run(lib, main)


def test_cancel_while_data_arrives_never_loses_bytes() -> None:
    """Race a cancellation against the data arriving, many times: every byte
    written is read exactly once."""

    async def main() -> None:
        r, w = os.pipe()
        got = bytearray()
        try:
            for i in range(300):
                task = asyncio.ensure_future(xaio.read(r, 1 << 16))
                await asyncio.sleep(0)
                os.write(w, bytes([i % 251]) * 3)
                if i % 3:
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    got += await task
                except asyncio.CancelledError:
                    pass
            os.close(w)
            w = -1
            while chunk := await xaio.read(r, 1 << 16):
                got += chunk
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        assert got == b"".join(bytes([i % 251]) * 3 for i in range(300))

    asyncio.run(main())


# ---------------------------------------------------------------------------------
# cancellation and timeouts on regular files
# ---------------------------------------------------------------------------------


def test_cancel_1000_inflight_reads(engine_name: str, tmp_path: Path) -> None:
    """Cancel 1,000 reads in flight (O_DIRECT, cold): each either completed with
    the right data or raised CancelledError after its buffer was released
    (a pinned bytearray cannot be resized), and nothing is left in flight."""
    path = tmp_path / "big"
    size = 8 << 20
    path.write_bytes(pattern(size))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        pytest.skip(f"O_DIRECT unsupported here: {e}")
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    expected = pattern(size)

    async def main() -> None:
        bufs = [bytearray(4096 * 2) for _ in range(1000)]
        # O_DIRECT wants aligned memory: read into aligned views, then check
        views = [xaio.aligned_buffer(4096) for _ in range(1000)]
        offs = [((i * 613) % (size // 4096)) * 4096 for i in range(1000)]

        async def one(i: int) -> int:
            return await xaio.preadinto(fd, views[i], offs[i])

        tasks = [asyncio.ensure_future(one(i)) for i in range(1000)]
        await asyncio.sleep(0)  # all submitted
        await asyncio.sleep(0)
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        n_cancelled = 0
        for i, res in enumerate(results):
            if isinstance(res, asyncio.CancelledError):
                n_cancelled += 1
                # released: a later write into the buffer is never overwritten
                views[i][:] = b"\xaa" * 4096
            else:
                assert res == 4096
                assert bytes(views[i]) == expected[offs[i] : offs[i] + 4096]
        assert n_cancelled > 0
        drv = current_driver()
        assert drv._inflight == 0
        stats = drv.engine.statistics()
        assert stats.get("in_flight", 0) == 0
        # more I/O; then the cancelled buffers must still hold our marker
        for i in range(0, 1000, 50):
            await xaio.preadinto(fd, views[(i + 1) % 1000], 0)
        for i, res in enumerate(results):
            if isinstance(res, asyncio.CancelledError) and i % 50 != 1:
                assert bytes(views[i]) == b"\xaa" * 4096
        # bytearrays given to a cancelled preadinto are resizable (not pinned)
        t = asyncio.ensure_future(xaio.preadinto(fd, bufs[0], 0))
        await asyncio.sleep(0)
        t.cancel()
        try:
            await t
        except (asyncio.CancelledError, OSError):
            pass
        bufs[0].extend(b"x")  # BufferError if still pinned

    try:
        asyncio.run(main())
    finally:
        os.close(fd)


def test_asyncio_timeout_on_a_pipe(engine_name: str) -> None:
    async def main() -> None:
        r, w = os.pipe()
        try:
            if sys.version_info >= (3, 11):  # asyncio.timeout is new in 3.11
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await xaio.read(r, 10)
            with pytest.raises(asyncio.TimeoutError):  # TimeoutError from 3.11 on
                await asyncio.wait_for(xaio.read(r, 10), 0.05)
            os.write(w, b"x")
            assert await asyncio.wait_for(xaio.read(r, 10), 1) == b"x"
        finally:
            os.close(r)
            os.close(w)

    asyncio.run(main())


def test_trio_move_on_after(engine_name: str, data_path: Path) -> None:
    trio = pytest.importorskip("trio")

    async def main() -> None:
        r, w = os.pipe()
        fd = os.open(data_path, os.O_RDONLY)
        try:
            with trio.move_on_after(0.05) as scope:
                await xaio.read(r, 10)
            assert scope.cancelled_caught
            with trio.CancelScope() as cs:
                cs.cancel()
                await xaio.pread(fd, 10, 0)  # a checkpoint: cancelled before the I/O
            assert cs.cancelled_caught
            assert await xaio.pread(fd, 4, 0) == pattern(4)
        finally:
            for x in (r, w, fd):
                os.close(x)

    trio.run(main)


# ---------------------------------------------------------------------------------
# file objects
# ---------------------------------------------------------------------------------


def test_binary_file(lib: str, engine_name: str, tmp_path: Path) -> None:
    p = tmp_path / "f.bin"

    async def main() -> None:
        async with xaio.open(p, "wb") as f:
            assert f.mode == "wb" and f.name == p and not f.closed
            assert await f.write(b"hello\n") == 6
            await f.writelines([b"second line\n", memoryview(b"third")])
            assert await f.tell() == 23
            with pytest.raises(io.UnsupportedOperation):
                await f.read()
        assert f.closed
        assert p.read_bytes() == b"hello\nsecond line\nthird"
        f = await xaio.open(p, "rb+")
        try:
            assert await f.peek(1) != b""
            assert await f.readline() == b"hello\n"
            assert await f.read(3) == b"sec"
            assert await f.read1(3) == b"ond"
            b = bytearray(5)
            assert await f.readinto(b) == 5 and b == b" line"
            assert await f.tell() == 17
            assert await f.seek(-5, os.SEEK_END) == 18
            assert await f.read() == b"third"
            assert await f.read() == b""
            assert await f.seek(-3, os.SEEK_CUR) == 20
            assert await f.write(b"RD!") == 3
            assert await f.seek(0) == 0
            assert [line async for line in f] == [b"hello\n", b"second line\n", b"thRD!"]
            assert await f.pread(5, 0) == b"hello"
            assert await f.pwrite(b"J", 0) == 1
            assert await f.tell() == 23
            await f.seek(0)
            assert await f.readlines() == [b"Jello\n", b"second line\n", b"thRD!"]
            assert await f.truncate(5) == 5
            await f.fsync()
            with pytest.raises(OSError):
                await f.seek(-100, os.SEEK_CUR)
        finally:
            await f.close()
        assert p.read_bytes() == b"Jello"
        # append mode writes at the end, whatever the position
        async with xaio.open(p, "ab+") as f:
            assert await f.tell() == 5
            await f.write(b" world")
            await f.seek(0)
            assert await f.read() == b"Jello world"
            await f.write(b"!")
        assert p.read_bytes() == b"Jello world!"
        with pytest.raises(FileExistsError):
            await xaio.open(p, "xb")
        with pytest.raises(FileNotFoundError):
            await xaio.open(tmp_path / "nope", "rb")
        with pytest.raises(IsADirectoryError):
            await xaio.open(tmp_path, "rb")
        with pytest.raises(ValueError):
            xaio.open(p, "rw")
        # big reads and writes through the buffers
        data = pattern(300_000)
        async with xaio.open(p, "wb", buffering=1000) as f:
            for i in range(0, len(data), 7000):
                await f.write(data[i : i + 7000])
        async with xaio.open(p, "rb") as f:
            assert await f.read(10) == data[:10]
            assert await f.read(200_000) == data[10:200_010]
            assert await f.read() == data[200_010:]
        async with xaio.open(p, "rb", buffering=0) as f:
            assert await f.read(5) == data[:5]
            assert await f.readall() == data[5:]

    run(lib, main)


@pytest.mark.parametrize(
    "encoding,newline",
    [
        ("utf-8", None),
        ("latin-1", ""),
        ("utf-16", None),
        ("utf-8", "\r\n"),
        ("cp1252", "\r"),
        ("utf-8", "\n"),
    ],
)
def test_text_file(lib: str, tmp_path: Path, encoding: str, newline: str | None) -> None:
    p = tmp_path / "t.txt"
    lines = ["héllo wörld\n", "ça va?\r\n", "x" * 9000 + "\n", "\n", "last"]
    if encoding == "cp1252":
        lines = [s.replace("ö", "o") for s in lines]

    async def main() -> None:
        async with xaio.open(p, "w", encoding=encoding, newline=newline) as f:
            for s in lines:
                assert await f.write(s) == len(s)
        with open(p, "w", encoding=encoding, newline=newline) as g:
            g.writelines(lines)
        reference = p.read_bytes()
        async with xaio.open(p, "w", encoding=encoding, newline=newline) as f:
            await f.writelines(lines)
        assert p.read_bytes() == reference
        with open(p, encoding=encoding, newline=newline) as g:
            want_lines = g.readlines()
            g.seek(0)
            want_all = g.read()
        async with xaio.open(p, encoding=encoding, newline=newline) as f:
            assert f.encoding == encoding and f.mode == "r"
            assert [line async for line in f] == want_lines
        async with xaio.open(p, "r", encoding=encoding, newline=newline) as f:
            assert await f.read() == want_all
            assert await f.read() == ""
            await f.seek(0)
            got = await f.read(7)
            assert got == want_all[:7]
            # tell/seek round trip at every line boundary
            await f.seek(0)
            marks = []
            while True:
                pos = await f.tell()
                line = await f.readline()
                if not line:
                    break
                marks.append((pos, line))
            for pos, line in reversed(marks):
                await f.seek(pos)
                assert await f.readline() == line
        async with xaio.open(p, "r+", encoding=encoding, newline=newline) as f:
            await f.readline()
            pos = await f.tell()
            await f.seek(0, os.SEEK_END)
            await f.write("!")
            await f.seek(pos)
            assert await f.readline() == want_lines[1]
        assert p.read_bytes().endswith("!".encode(encoding)[-1:])

    run(lib, main)


def test_text_errors_and_modes(tmp_path: Path) -> None:
    p = tmp_path / "e.txt"
    p.write_bytes(b"ok\xffbad\n")

    async def main() -> None:
        async with xaio.open(p, encoding="utf-8") as f:
            with pytest.raises(UnicodeDecodeError):
                await f.read()
        async with xaio.open(p, encoding="utf-8", errors="replace") as f:
            assert await f.read() == "ok\ufffdbad\n"
        with pytest.raises(LookupError):
            await xaio.open(p, encoding="no-such-codec")
        with pytest.raises(ValueError):
            await xaio.open(p, "rb", encoding="utf-8")
        with pytest.raises(ValueError):
            await xaio.open(p, "r", buffering=0)
        with pytest.raises(ValueError):
            await xaio.open(p, newline="x")
        async with xaio.open(p, "w", buffering=1) as f:  # line buffered
            await f.write("a\n")
            assert p.read_bytes() == b"a\n"
            with pytest.raises(TypeError):
                await f.write(b"bytes")  # type: ignore[arg-type]

    asyncio.run(main())


def test_direct_file(lib: str, engine_name: str, tmp_path: Path) -> None:
    p = tmp_path / "d.bin"
    try:
        fd = os.open(tmp_path / "probe", os.O_RDWR | os.O_CREAT | os.O_DIRECT)
        os.close(fd)
    except OSError as e:
        pytest.skip(f"O_DIRECT unsupported here: {e}")

    async def main() -> None:
        model = bytearray()

        def put(off: int, data: bytes) -> None:
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off : off + len(data)] = data

        async with xaio.open(p, "wb+", direct=True) as f:
            for off, data in [
                (0, pattern(10_000)),
                (3, b"unaligned"),
                (4095, b"across-a-block-boundary"),
                (20_000, b"past the end, leaves a hole"),
                (8192, pattern(8192, seed=3)),
            ]:
                assert await f.pwrite(data, off) == len(data)
                put(off, data)
                assert os.path.getsize(p) == len(model)
            assert await f.pread(len(model) + 100, 0) == bytes(model)
            assert await f.pread(7, 4093) == bytes(model[4093:4100])
            await f.seek(0)
            assert await f.read(5) == bytes(model[:5])
            assert await f.read() == bytes(model[5:])
            await f.seek(5)
            await f.write(b"buffered write")
            put(5, b"buffered write")
            await f.seek(0, os.SEEK_END)
            await f.write(b"tail")
            put(len(model), b"tail")
        assert p.read_bytes() == bytes(model)
        async with xaio.open(p, "rb", direct=True) as f:
            assert [line async for line in f] == [bytes(x) for x in io.BytesIO(model)]

    run(lib, main)


# ---------------------------------------------------------------------------------
# xaio.os
# ---------------------------------------------------------------------------------


def test_xaio_os(lib: str, engine_name: str, tmp_path: Path) -> None:
    async def main() -> None:
        a = tmp_path / "a"
        a.write_bytes(b"12345")
        st = await xaio.os.stat(a)
        ref = os.stat(a)
        assert st == ref and st.st_mtime_ns == ref.st_mtime_ns and st.st_dev == ref.st_dev
        assert (await xaio.os.stat(str(a).encode())).st_size == 5
        fd = os.open(a, os.O_RDONLY)
        try:
            assert (await xaio.os.stat(fd)).st_ino == ref.st_ino
        finally:
            os.close(fd)
        os.symlink(a, tmp_path / "ln")
        assert await xaio.os.path.islink(tmp_path / "ln")
        assert (await xaio.os.lstat(tmp_path / "ln")).st_size != 5 or True
        assert await xaio.os.getsize(a) == 5
        assert await xaio.os.exists(a) and await xaio.os.isfile(a)
        assert not await xaio.os.isdir(a) and await xaio.os.isdir(tmp_path)
        assert not await xaio.os.exists(tmp_path / "nope")
        with pytest.raises(FileNotFoundError) as ei:
            await xaio.os.stat(tmp_path / "nope")
        assert ei.value.filename == str(tmp_path / "nope")
        await xaio.os.rename(a, tmp_path / "b")
        assert not a.exists() and (tmp_path / "b").read_bytes() == b"12345"
        (tmp_path / "c").write_bytes(b"c")
        await xaio.os.replace(tmp_path / "c", tmp_path / "b")
        assert (tmp_path / "b").read_bytes() == b"c"
        with pytest.raises(FileNotFoundError) as ei:
            await xaio.os.rename(tmp_path / "nope", tmp_path / "b")
        assert ei.value.filename2 == str(tmp_path / "b")
        await xaio.os.mkdir(tmp_path / "d")
        with pytest.raises(FileExistsError):
            await xaio.os.mkdir(tmp_path / "d")
        await xaio.os.makedirs(tmp_path / "d" / "e" / "f")
        await xaio.os.makedirs(tmp_path / "d" / "e" / "f", exist_ok=True)
        with pytest.raises(FileExistsError):
            await xaio.os.makedirs(tmp_path / "d" / "e")
        assert sorted(await xaio.os.listdir(tmp_path)) == ["b", "d", "ln"]
        assert sorted(e.name for e in await xaio.os.scandir(tmp_path)) == ["b", "d", "ln"]
        with pytest.raises(OSError) as ei:
            await xaio.os.rmdir(tmp_path / "d")
        assert ei.value.errno == errno.ENOTEMPTY
        await xaio.os.rmdir(tmp_path / "d" / "e" / "f")
        await xaio.os.remove(tmp_path / "b")
        await xaio.os.unlink(tmp_path / "ln")
        with pytest.raises(FileNotFoundError):
            await xaio.os.unlink(tmp_path / "b")
        with pytest.raises(ValueError):
            await xaio.os.stat("a\0b")
        with pytest.raises(TypeError):
            await xaio.os.stat(1.5)  # type: ignore[arg-type]
        assert await xaio.os.path.exists(tmp_path / "d")

    run(lib, main)


# ---------------------------------------------------------------------------------
# engines: explicit ones, and the default one's lifetime
# ---------------------------------------------------------------------------------


def test_open_engine(lib: str, engine_name: str, data_path: Path) -> None:
    async def main() -> None:
        fd = os.open(data_path, os.O_RDWR)
        try:
            async with xaio.open_engine(engine_name) as eng:
                assert eng.name == engine_name
                assert await eng.pread(fd, 5, 0) == pattern(5)
                assert await eng.pwrite(fd, b"xy", 0) == 2
                assert await eng.pread(fd, 3, 0) == b"xy" + pattern(3)[2:]
                await eng.fsync(fd)
                async with xaio.open(data_path, "rb", engine=eng) as f:
                    assert await f.read(2) == b"xy"
            assert eng.closed
            with pytest.raises(RuntimeError):
                await eng.pread(fd, 5, 0)
        finally:
            os.close(fd)

    run(lib, main)


def test_loop_close_releases_the_engine(lib: str, engine_name: str, data_path: Path) -> None:
    async def main() -> None:
        fd = os.open(data_path, os.O_RDONLY)
        try:
            assert await xaio.pread(fd, 3, 0) == pattern(3)
            await xaio.os.stat(data_path)
        finally:
            os.close(fd)

    run(lib, main)  # warm up: lazy imports, thread-pool fds...
    gc.collect()
    fds, rings = open_fds(), own_aio_rings()
    for _attempt in range(5):  # aio-nr is system-wide: other processes move it
        nr = aio_nr()
        for _ in range(3):
            run(lib, main)
        gc.collect()
        extra = {fd: _fd_target(fd) for fd in open_fds() - fds}
        assert not extra
        # no ring left behind but the idle contexts kept for the next loop
        assert own_aio_rings() == rings <= linux_engine._IDLE_MAX
        if aio_nr() == nr:
            break
    else:
        pytest.fail(f"/proc/sys/fs/aio-nr kept changing: {nr} -> {aio_nr()}")


def _fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def test_manual_loop_without_shutdown_is_released_on_gc(data_path: Path) -> None:
    fds = open_fds()
    loop = asyncio.new_event_loop()

    async def main() -> bytes:
        fd = os.open(data_path, os.O_RDONLY)
        try:
            return await xaio.pread(fd, 3, 0)
        finally:
            os.close(fd)

    assert loop.run_until_complete(main()) == pattern(3)
    loop.close()
    del loop
    gc.collect()
    assert open_fds() <= fds


def test_fork(engine_name: str, data_path: Path) -> None:
    async def use() -> bytes:
        fd = os.open(data_path, os.O_RDONLY)
        try:
            return await xaio.pread(fd, 4, 4096)
        finally:
            os.close(fd)

    async def main() -> None:
        assert await use() == pattern(8192)[4096:4100]
        pid = os.fork()
        if pid == 0:  # child: a fresh loop gets a fresh engine
            code = 1
            try:
                code = 0 if asyncio.run(use()) == pattern(8192)[4096:4100] else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert await use() == pattern(8192)[4096:4100]  # the parent's engine still works

    asyncio.run(main())


def test_outside_a_loop() -> None:
    with pytest.raises(RuntimeError):
        xaio.pread(0, 1, 0).send(None)


def test_pipe_read_does_not_block_other_tasks(lib: str) -> None:
    async def main() -> None:
        r, w = os.pipe()
        ticks = 0
        try:
            async with anyio.create_task_group() as tg:

                async def blocked() -> None:
                    assert await xaio.read(r, 10) == b"done"

                tg.start_soon(blocked)
                for _ in range(20):
                    await anyio.sleep(0.001)
                    ticks += 1
                os.write(w, b"done")
        finally:
            os.close(r)
            os.close(w)
        assert ticks == 20

    run(lib, main)


def _unused(x: Any) -> None:  # pragma: no cover - keeps imports honest for linters
    del x


def _submitted(stats: dict[str, Any]) -> int:
    total = int(stats.get("submitted", 0))
    for k in ("aio", "threads"):
        sub = stats.get(k)
        if isinstance(sub, dict):
            total += int(sub.get("submitted", 0))
    return total


def test_page_cache_hits_skip_the_engine_and_cold_reads_use_it(
    engine_name: str, tmp_path: Path
) -> None:
    """Cached reads are served inline (no engine request); a cold read goes to
    the engine with the right data, and once cached is inline again."""
    p = tmp_path / "cold"
    data = pattern(1 << 20)
    p.write_bytes(data)

    async def main() -> None:
        fd = os.open(p, os.O_RDONLY)
        try:
            eng = current_driver().engine
            os.pread(fd, 4096, 0)  # cached
            before = _submitted(eng.statistics())
            for _ in range(10):
                assert await xaio.pread(fd, 4096, 0) == data[:4096]
            assert _submitted(eng.statistics()) == before
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            got = await xaio.pread(fd, 4096, 512 * 1024)
            assert got == data[512 * 1024 : 516 * 1024]
            cold_submitted = _submitted(eng.statistics())
            for _ in range(20):  # now cached: inline again (cachestat says so)
                assert await xaio.pread(fd, 4096, 512 * 1024) == got
            assert _submitted(eng.statistics()) - cold_submitted <= 1
        finally:
            os.close(fd)

    asyncio.run(main())


def test_cancel_waits_for_the_kernel_uring_pipe() -> None:
    """On io_uring a read of a pipe (at the file position: a positional one
    is ESPIPE before submission) is a real in-kernel request: cancelling the
    task cancels it in the kernel, and the buffer is released when
    CancelledError arrives."""
    skip_unavailable("uring")

    async def main() -> None:
        eng = xaio.open_engine("uring")
        r, w = os.pipe()
        try:
            buf = bytearray(16)
            op = Operation(OpCode.READ, r, (buf,), -1)
            task = asyncio.ensure_future(eng.driver()._run(op))
            await asyncio.sleep(0.01)
            assert eng.statistics()["in_flight"] == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert eng.statistics()["in_flight"] == 0
            buf.extend(b"x")  # not pinned any more
            os.write(w, b"next")
            assert await xaio.read(r, 10) == b"next"  # nothing was swallowed
        finally:
            await eng.aclose()
            os.close(r)
            os.close(w)

    asyncio.run(main())


def test_xaio_os_cancelled_call_completes_first(lib: str, tmp_path: Path) -> None:
    """A cancelled xaio.os call has either happened or not when the
    cancellation arrives: never still running."""

    async def main() -> None:
        for i in range(20):
            d = tmp_path / f"d{i}"
            with anyio.CancelScope() as scope:
                scope.cancel()
                await xaio.os.mkdir(d)
            # whatever happened, it is finished: the directory exists or not, stably
            existed = d.exists()
            await anyio.sleep(0.001)
            assert d.exists() == existed
        assert await xaio.os.listdir(tmp_path) is not None

    run(lib, main)


def test_cached_reads_do_not_starve_other_tasks(lib: str, data_path: Path) -> None:
    """Page-cache hits complete without yielding, but the driver's time slice
    makes the readers yield: a ticker keeps running while 16 tasks read."""

    async def main() -> None:
        fd = os.open(data_path, os.O_RDONLY)
        os.pread(fd, 1 << 20, 0)
        stop = False
        gaps: list[float] = []

        expected = pattern(1 << 20)

        async def reader(k: int) -> None:
            off = k * 4096
            want = expected[off : off + 4096]
            while not stop:
                assert await xaio.pread(fd, 4096, off) == want

        async def ticker() -> None:
            nonlocal stop
            last = time.perf_counter()
            for _ in range(50):
                await anyio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
            stop = True

        try:
            async with anyio.create_task_group() as tg:
                for k in range(16):
                    tg.start_soon(reader, k)
                tg.start_soon(ticker)
        finally:
            os.close(fd)
        assert len(gaps) == 50
        assert max(gaps) < 0.1, max(gaps)  # starvation would be seconds

    run(lib, main)


def test_fifo_file_objects(lib: str, engine_name: str, tmp_path: Path) -> None:
    """Opening a FIFO waits for the other end without blocking the loop; the
    file objects stream through it; a cancelled read loses nothing."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    async def main() -> None:
        got: list[bytes] = []

        async def reader() -> None:
            async with xaio.open(fifo, "rb") as f:
                assert not f.seekable()
                with anyio.move_on_after(0.05):
                    await f.read(100)  # nothing yet: cancelled, consumed nothing
                got.append(await f.readline())
                got.append(await f.read())

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            async with xaio.open(fifo, "wb") as w:
                await anyio.sleep(0.1)
                await w.write(b"first line\nthe rest")
        assert got == [b"first line\n", b"the rest"]

    run(lib, main)


def test_loops_in_several_threads(data_path: Path) -> None:
    """Each thread's loop gets its own default engine; all close with their loop."""
    import threading

    expected = pattern(1 << 20)
    fds_before = open_fds()
    errors: list[BaseException] = []

    async def work(seed: int) -> None:
        fd = os.open(data_path, os.O_RDONLY)
        try:
            for i in range(300):
                off = ((seed * 7919 + i * 104729) % 250) * 4096
                assert await xaio.pread(fd, 4096, off) == expected[off : off + 4096]
                if i % 50 == 0:
                    await asyncio.sleep(0)
        finally:
            os.close(fd)

    def thread_main(seed: int) -> None:
        try:
            asyncio.run(work(seed))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=thread_main, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    gc.collect()
    extra = {fd: _fd_target(fd) for fd in open_fds() - fds_before}
    assert not extra


def completions_waiting(eng: Any) -> int:
    """How many completions *eng* holds for its next reap (a look inside
    each engine, for a test that must know the kernel is done)."""
    if eng.name == "uring":
        with eng._lock:
            return int(eng._ring.cq_ready()) + len(eng._stash) + len(eng._batch)
    if eng.name == "thread":
        with eng._mutex:
            return len(eng._done)
    # the linux engine (O_DIRECT reads on kernel AIO): each completion adds 1
    # to its eventfd, whose counter /proc shows without reading it
    fdinfo = Path(f"/proc/self/fdinfo/{eng._aio.fileno()}").read_text()
    line = next(x for x in fdinfo.splitlines() if x.startswith("eventfd-count:"))
    return int(line.split()[1], 16)


@pytest.mark.parametrize("name", ["uring", "linux", "thread"])
def test_tasks_woken_together_submit_together(
    name: str, direct_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight tasks whose reads completed while the loop was busy are woken by
    one reap; their next reads reach the engine in one submit -- not the first
    alone because nothing was in flight at that moment (which, on a fast device,
    locks the driver into one request per system call).  asyncio only: trio's
    scheduler (randomised batch order, I/O polled between batches) does not let
    a test hold all eight completions back for one reap; its flusher task was
    measured instead (benchmarks/async.md)."""
    if xaio.engine.probe()[name] is not None:
        pytest.skip(f"{name} engine unavailable here")
    monkeypatch.setenv("XAIO_ENGINE", name)
    fd = direct_fd
    expected = pattern(1 << 20)
    sizes: list[int] = []

    async def main() -> None:
        drv = current_driver()
        assert drv.engine.name == name
        real_submit = drv.engine.submit

        def submit(ops: Any) -> int:
            sizes.append(len(ops))
            return real_submit(ops)

        real_reap = drv.engine.reap
        delivered = [0]

        def reap(*args: Any, **kwargs: Any) -> int:
            n = real_reap(*args, **kwargs)
            delivered[0] += n
            return n

        drv.engine.submit = submit  # type: ignore[method-assign]
        drv.engine.reap = reap  # type: ignore[method-assign]
        bufs = [xaio.aligned_buffer(4096) for _ in range(8)]
        issued = [0] * 8  # reads each task has asked for
        finished = [0] * 8  # reads each task has got back

        async def worker(i: int) -> None:
            for k, off in enumerate((i, i + 8, i + 16)):
                issued[i] = k + 1
                assert await xaio.preadinto(fd, bufs[i], off * 4096) == 4096
                assert bytes(bufs[i]) == expected[off * 4096 : (off + 1) * 4096]
                finished[i] = k + 1

        tasks = [asyncio.create_task(worker(i)) for i in range(8)]
        await asyncio.sleep(0)  # each task asks for its first read
        while sum(sizes) < sum(issued):  # until they are all in the engine
            await asyncio.sleep(0)
        # From here the loop is held: nothing is delivered, no task runs.  A
        # loaded machine may already have split the first round (one task's
        # read done before the others were submitted): what is asserted is
        # about the reads in flight now, whichever they are.
        in_flight = [i for i in range(8) if issued[i] > finished[i]]
        deadline = time.monotonic() + 30
        # (a state, not a time) every read not yet delivered has completed
        while completions_waiting(drv.engine) < sum(sizes) - delivered[0]:
            assert time.monotonic() < deadline, (completions_waiting(drv.engine), delivered)
            time.sleep(0.001)
        again.append(sum(1 for i in in_flight if issued[i] < 3))
        mark.append(len(sizes))
        await asyncio.gather(*tasks)

    again: list[int] = []  # tasks woken by the one reap that read again
    mark: list[int] = []  # submits before that reap
    asyncio.run(main())
    assert sum(sizes) == 24
    assert again[0] >= 4, (again, sizes)
    # the tasks woken together ask for their next reads in one submit
    assert sizes[mark[0]] == again[0], (mark, again, sizes)


def _trio_task_names() -> list[str]:
    import trio

    names: list[str] = []

    def walk(task: Any) -> None:
        names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return names


def test_trio_flusher_reads_and_ends_with_the_driver(direct_fd: int) -> None:
    """On trio a system task hands queued requests over (trio has no
    call_soon): 32 concurrent O_DIRECT reads through it return the right data,
    and it ends when the driver closes (no task left behind)."""
    import trio

    expected = pattern(1 << 20)
    fd = direct_fd

    async def main() -> None:
        drv = current_driver()
        bufs = [xaio.aligned_buffer(4096) for _ in range(32)]

        async def one(i: int) -> None:
            assert await xaio.preadinto(fd, bufs[i], i * 4096) == 4096

        async with trio.open_nursery() as nursery:
            for i in range(32):
                nursery.start_soon(one, i)
        for i in range(32):
            assert bytes(bufs[i]) == expected[i * 4096 : (i + 1) * 4096]
        assert "xaio engine flusher" in _trio_task_names()
        drv.close()
        await trio.sleep(0.05)
        assert "xaio engine flusher" not in _trio_task_names()
        assert "xaio engine reader" not in _trio_task_names()

    trio.run(main)


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_wakeup_count_returns_to_zero(library: str, data_path: Path, direct_fd: int) -> None:
    """The driver's count of woken-but-not-resumed tasks (which makes new
    requests wait for the batch) is back to 0 once everything has run: after
    engine reads, path operations (xaio.os, the meta ring) and a cancelled
    read -- a leak would delay every later request by a loop iteration."""
    fd = direct_fd
    r, w = os.pipe()

    async def body(sleep: Any, cancel_after: Any) -> int:
        drv = current_driver()
        bufs = [xaio.aligned_buffer(4096) for _ in range(16)]
        for _ in range(3):
            for i in range(16):
                assert await xaio.preadinto(fd, bufs[i], i * 4096) == 4096
        for _ in range(5):
            assert (await xaio.os.stat(data_path)).st_size == 1 << 20
        await cancel_after(0.05, xaio.read(r, 10))  # a pipe read, cancelled
        await sleep(0.05)
        return int(drv._wakeups)

    async def asyncio_main() -> int:
        async def cancel_after(t: float, coro: Any) -> None:
            with pytest.raises(asyncio.TimeoutError):  # TimeoutError from 3.11 on
                await asyncio.wait_for(coro, t)

        return await body(asyncio.sleep, cancel_after)

    async def trio_main() -> int:
        import trio

        async def cancel_after(t: float, coro: Any) -> None:
            with trio.move_on_after(t):
                await coro

        return await body(trio.sleep, cancel_after)

    try:
        if library == "asyncio":
            assert asyncio.run(asyncio_main()) == 0
        else:
            import trio

            assert trio.run(trio_main) == 0
    finally:
        os.close(r)
        os.close(w)


def test_requests_the_driver_completes_itself_leave_no_trace(data_fd: int, direct_fd: int) -> None:
    """Requests completed by the driver without the engine (served from the
    page cache on a cold fd, zero-length, cancelled while parked before the
    engine) neither count in its in-flight total nor keep their buffer pinned
    -- not even while the cancelled task, and its traceback, are still alive."""
    from xaio._async import _driver

    fd, dfd = data_fd, direct_fd
    expected = pattern(1 << 20)

    async def main() -> None:
        drv = current_driver()
        os.pread(fd, 8192, 0)  # cached
        drv._missed(fd)  # cold: inline reads go through an Operation
        buf = bytearray(4096)
        for _ in range(3):
            assert await xaio.preadinto(fd, buf, 0) == 4096
        assert bytes(buf) == expected[:4096]
        assert await xaio.preadinto(fd, bytearray(0), 0) == 0
        assert await xaio.pread(fd, 0, 0) == b""
        assert await xaio.preadv(fd, [bytearray(4), bytearray(4)], 0) == 8
        assert drv._inflight == 0
        # parked by the fairness slice before reaching the engine, then cancelled
        drv._streak = _driver._STREAK
        drv._exhausted = True
        pinned = bytearray(4096)
        task = asyncio.ensure_future(xaio.preadinto(dfd, pinned, 0))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pinned.extend(b"x")  # not pinned by the abandoned request (BufferError if it were)
        assert drv._inflight == 0
        del task

    asyncio.run(main())


def test_trio_request_cancelled_before_the_engine_is_not_pinned(direct_fd: int) -> None:
    """trio: a request whose task was already cancelled never reaches the
    engine and gives its buffer back at once, even while the Cancelled
    exception (and the frames of its traceback) are kept."""
    import trio

    dfd = direct_fd

    async def main() -> None:
        drv = current_driver()
        pinned = bytearray(4096)
        kept: list[BaseException] = []
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await xaio.preadinto(dfd, pinned, 0)
            except trio.Cancelled as e:
                kept.append(e)
                raise
        assert kept and scope.cancelled_caught
        pinned.extend(b"x")  # BufferError if the request still held it
        assert drv._inflight == 0

    trio.run(main)
