"""The async file objects (``xaio.open``): closing, cancellation, collection,
O_DIRECT modes, engine selection and the builtin file's surface.

The differential suite against the builtin ``open`` is tests/test_parity_file.py.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import xaio
from xaio._ops import OpCode

from .support import ENGINES, open_fds, run, skip_unavailable, wait_until_async

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------
# close() while other tasks use the file
# ---------------------------------------------------------------------------------


def test_close_ends_a_pending_pipe_read(lib: str, engine_name: str) -> None:
    """A task inside ``f.read()`` on an empty pipe ends promptly with the
    closed-file ValueError when another task closes the file."""

    async def main() -> None:
        r, w = os.pipe()
        try:
            for mode in ("rb", "r"):
                f: Any = await xaio.open(r, mode, closefd=False)
                outcome: list[BaseException | None] = []

                async def reader(f: Any = f, outcome: list[BaseException | None] = outcome) -> None:
                    try:
                        await f.read(10)
                    except BaseException as e:
                        outcome.append(e)
                        if not isinstance(e, ValueError):
                            raise
                    else:
                        outcome.append(None)

                with anyio.fail_after(10):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(reader)
                        await anyio.sleep(0.02)  # let the reader wait on the pipe
                        await f.close()
                (err,) = outcome
                assert isinstance(err, ValueError)
                assert str(err) == "I/O operation on closed file."
                with pytest.raises(ValueError, match="closed file"):
                    await f.read(1)
            # the pipe is intact: nothing was consumed
            os.write(w, b"still here")
            assert os.read(r, 100) == b"still here"
        finally:
            os.close(r)
            os.close(w)

    run(lib, main)


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_close_waits_for_the_files_requests_before_releasing_the_fd(
    library: str, tmp_path: Path
) -> None:
    """16 tasks ``pwrite`` on a file while the engine's only worker is busy;
    another task closes the file, and a new file gets the same fd number.  The
    queued writes must not land in the new file: close() ends them (or waits
    for them) before it releases the fd."""
    skip_unavailable("thread")
    slow = tmp_path / "slow"
    other = tmp_path / "other"
    slow.write_bytes(b"s" * 1024)
    other.write_bytes(b"o" * 1024)

    async def main() -> None:
        r, w = os.pipe()
        async with xaio.open_engine("thread", threads=1) as eng:
            drv = eng.driver()
            async with anyio.create_task_group() as tg:
                # occupy the engine's one worker: a read of an empty pipe
                tg.start_soon(drv._file_rw, OpCode.READ, r, bytearray(1))
                await wait_until_async(
                    lambda: eng.engine.statistics()["running"] == 1, "the blocker"
                )
                f = await xaio.open(slow, "r+b", engine=eng)
                fd = f.fileno()
                outcomes: list[Any] = []

                async def writer(i: int) -> None:
                    try:
                        outcomes.append(await f.pwrite(b"W" * 64, i * 64))
                    except ValueError as e:
                        outcomes.append(e)

                for i in range(16):
                    tg.start_soon(writer, i)
                await wait_until_async(lambda: drv._inflight == 17, "16 queued writes")
                await f.close()
                g = os.open(other, os.O_RDWR)
                try:
                    assert g == fd  # the number was reused
                    os.write(w, b"x")  # free the worker
                    await wait_until_async(lambda: len(outcomes) == 16, "the writers")
                    assert os.pread(g, 2048, 0) == b"o" * 1024
                finally:
                    os.close(g)
        os.close(r)
        os.close(w)
        for res in outcomes:
            assert res == 64 or (isinstance(res, ValueError) and "closed file" in str(res))
        assert set(slow.read_bytes()) <= {ord("s"), ord("W")}

    run(library, main)


def test_close_cancelled_still_releases_the_fd(tmp_path: Path) -> None:
    """A close() cancelled while it waits for another task's call: the fd is
    closed when that call returns."""

    async def main() -> None:
        r, w = os.pipe()
        f = await xaio.open(r, "rb")
        try:
            reader = asyncio.ensure_future(f.read(1))
            await asyncio.sleep(0.01)
            closer = asyncio.ensure_future(f.close())
            await asyncio.sleep(0)
            closer.cancel()
            with pytest.raises(ValueError):
                await reader
            with pytest.raises(asyncio.CancelledError):
                await closer
            with pytest.raises(OSError):
                os.fstat(r)  # closed
        finally:
            os.close(w)

    asyncio.run(main())


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="without Task.uncancel (3.11) close() cannot tell whether the owner cancelled too",
)
def test_asyncio_cancel_of_the_reader_and_close_together() -> None:
    """A reader cancelled by its owner and by close() at once sees
    CancelledError (its owner's cancellation wins), and the task is not left
    with a pending cancellation."""

    async def main() -> None:
        r, w = os.pipe()
        f = await xaio.open(r, "rb", closefd=False)
        try:
            reader = asyncio.ensure_future(f.read(1))
            await asyncio.sleep(0.01)
            reader.cancel()
            await f.close()
            with pytest.raises(asyncio.CancelledError):
                await reader
        finally:
            os.close(r)
            os.close(w)

    asyncio.run(main())


# ---------------------------------------------------------------------------------
# a file dropped without close()
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["wb", "w", "ab", "r+b"])
def test_dropped_file_flushes_its_writes(engine_name: str, tmp_path: Path, mode: str) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"0123456789")

    async def main() -> None:
        f: Any = await xaio.open(p, mode)
        await f.write(b"xyz" if "b" in mode else "xyz")
        with pytest.warns(ResourceWarning, match="unclosed file"):
            del f
            gc.collect()

    before = open_fds()
    asyncio.run(main())
    assert open_fds() == before
    expect = {"wb": b"xyz", "w": b"xyz", "ab": b"0123456789xyz", "r+b": b"xyz3456789"}[mode]
    assert p.read_bytes() == expect


def test_dropped_direct_file_flushes_its_writes(engine_name: str, direct_dir: Path) -> None:
    p = direct_dir / "f"

    async def main() -> None:
        f = await xaio.open(p, "wb+", direct=True)
        await f.write(b"a" * 5000)
        with pytest.warns(ResourceWarning):
            del f
            gc.collect()

    asyncio.run(main())
    assert p.read_bytes() == b"a" * 5000


# ---------------------------------------------------------------------------------
# O_DIRECT in every mode
# ---------------------------------------------------------------------------------


@pytest.fixture
def direct_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory whose file system takes O_DIRECT (tmpfs does not)."""
    for d in (tmp_path, Path("/var/tmp")):
        probe = d / f"xaio-probe-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT)
        except OSError:
            continue
        os.close(fd)
        os.unlink(probe)
        if d == tmp_path:
            yield d
            return
        sub = Path(tempfile.mkdtemp(prefix="xaio-test-", dir=d))
        try:
            yield sub
        finally:
            shutil.rmtree(sub, ignore_errors=True)
        return
    pytest.skip("no file system with O_DIRECT here")


@pytest.mark.parametrize("mode", ["wb", "ab", "a+b", "xb", "r+b", "wb+"])
def test_direct_every_writing_mode(engine_name: str, direct_dir: Path, mode: str) -> None:
    """Unaligned writes in every writing mode with direct=True give what the
    builtin open gives without it."""
    chunks = [b"abc", b"d" * 5000, b"e" * 100, b"\n"]
    start = b"" if mode[0] in "wx" else b"0123456789" * 500

    def ref_path(name: str) -> Path:
        return direct_dir / f"{name}-{mode.replace('+', 'p')}"

    mine, ref = ref_path("mine"), ref_path("ref")
    if mode[0] != "x":
        mine.write_bytes(start)
        ref.write_bytes(start)

    async def main() -> None:
        async with xaio.open(mine, mode, direct=True) as f:
            for c in chunks:
                assert await f.write(c) == len(c)
            await f.flush()
            assert await f.tell() == len(start if mode[0] == "a" else b"") + sum(map(len, chunks))
            await f.write(b"tail")

    asyncio.run(main())
    with open(ref, mode) as g:
        for c in chunks:
            g.write(c)
        g.write(b"tail")
    assert mine.read_bytes() == ref.read_bytes()


# ---------------------------------------------------------------------------------
# engine= by name
# ---------------------------------------------------------------------------------


def test_engine_by_name(lib: str, data_path: Path) -> None:
    names = [n for n in ENGINES if xaio.engine.probe()[n] is None]

    async def main() -> None:
        for name in names:
            async with xaio.open(data_path, "rb", engine=name) as f:
                assert await f.read(5) == data_path.read_bytes()[:5]
                assert f._drv().engine.name == name
                assert f._drv() is (await xaio.open(data_path, "rb", engine=name))._drv()

    before = open_fds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the second open() of each name
        run(lib, main)
        gc.collect()
    assert open_fds() == before  # the per-loop engines closed with the loop


def test_engine_argument_checked_at_open() -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        xaio.open("/dev/null", "rb", engine="fast")
    with pytest.raises(TypeError, match="open_engine"):
        xaio.open("/dev/null", "rb", engine=3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------
# the builtin file's surface
# ---------------------------------------------------------------------------------


def test_text_newlines_after_read_to_eof(lib: str, tmp_path: Path) -> None:
    p = tmp_path / "t"
    p.write_bytes(b"a\r\nb\nc\rd")

    async def main() -> None:
        for newline in (None, ""):
            with open(p, newline=newline) as ref:
                ref.read()
                expect = ref.newlines
            async with xaio.open(p, newline=newline) as f:
                await f.read()
                assert f.newlines == expect
            async with xaio.open(p, newline=newline) as f:
                await f.readlines()
                assert f.newlines == expect

    run(lib, main)


def test_detach_and_raw(lib: str, tmp_path: Path) -> None:
    p = tmp_path / "t"

    async def main() -> None:
        f = await xaio.open(p, "w+", encoding="utf-8")
        await f.write("héllo")
        buf = await f.detach()
        assert isinstance(buf, xaio.AsyncFile)
        assert p.read_bytes() == "héllo".encode()  # detach flushed
        for use in (f.read, f.flush, f.close):
            with pytest.raises(ValueError, match="detached"):
                await use()
        with pytest.raises(ValueError, match="detached"):
            f.closed  # noqa: B018
        raw = buf.raw
        assert isinstance(raw, io.FileIO)
        assert raw.fileno() == buf.fileno() and not raw.closed
        assert raw.readable() and raw.writable()
        await buf.seek(1)
        assert raw.read() == "éllo".encode()
        await buf.close()
        assert raw.closed

    run(lib, main)


# ---------------------------------------------------------------------------------
# cancellation in text mode
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["readline", "read7", "iter", "read"])
def test_text_cancellation_loses_nothing(lib: str, how: str) -> None:
    """A timeout around every read of a pipe opened in text mode while a
    writer trickles lines in: every character arrives once."""
    lines = [f"line {i} é€ {'x' * (i % 37)}\n" for i in range(80)]
    payload = "".join(lines).encode()

    readers: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "readline": lambda f: f.readline(),
        "read7": lambda f: f.read(7),
        "iter": lambda f: f.__anext__(),
        "read": lambda f: f.read(),
    }

    async def main() -> None:
        r, w = os.pipe()
        os.set_blocking(w, False)
        f: Any = await xaio.open(r, "r", encoding="utf-8")
        got: list[str] = []

        async def feed() -> None:
            for i in range(0, len(payload), 7):
                os.write(w, payload[i : i + 7])
                await anyio.sleep(0.0002)
            os.close(w)

        async def drain() -> None:
            while True:
                with anyio.move_on_after(0.0003):
                    try:
                        item = await readers[how](f)
                    except StopAsyncIteration:
                        return
                    if not item:
                        return
                    got.append(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            tg.start_soon(drain)
        await f.close()
        assert "".join(got) == payload.decode()

    run(lib, main)
