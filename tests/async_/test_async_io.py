"""The os-like coroutines (``await xaio.pread(fd, n, offset)``...) on every
engine and event-loop library: results, errors, streams, cancellation and
timeouts.

asyncio, uvloop, trio and anyio (on both backends) run the same coroutines;
anyio's primitives (task groups, move_on_after, Event) work under all of them,
so the cross-library tests are written with anyio.  The engine is chosen with
``XAIO_ENGINE`` (the default engine of each loop) or ``xaio.open_engine``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from pathlib import Path

import anyio
import pytest

import xaio
from tests.support import drop_cached, pattern, run, skip_unavailable, wait_until_async
from xaio._async._current import current_driver
from xaio._ops import OpCode, Operation

pytestmark = pytest.mark.timeout(60)


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


def test_outside_a_loop() -> None:
    with pytest.raises(RuntimeError):
        xaio.pread(0, 1, 0).send(None)


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


# ---------------------------------------------------------------------------------
# cancellation and timeouts
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
    drop_cached(fd)
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
            await wait_until_async(
                lambda: eng.statistics()["in_flight"] == 1, "the read in the kernel"
            )
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
