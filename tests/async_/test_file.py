"""The async file objects (``xaio.open``): closing, cancellation, collection,
O_DIRECT modes, engine selection, and the builtin file's surface in binary,
text, O_DIRECT and FIFO files.

The differential suite against the builtin ``open`` is tests/async_/test_parity_file.py.
"""

from __future__ import annotations

import asyncio
import errno
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
from tests.support import (
    ENGINES,
    drop_cached,
    open_fds,
    pattern,
    record_fds_asked,
    run,
    skip_unavailable,
    wait_until_async,
)
from xaio._ops import OpCode

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------
# close() while other tasks use the file
# ---------------------------------------------------------------------------------


def in_a_call(f: Any) -> bool:
    """Whether a task is inside a call on *f* (binary or text): the calls
    close() must end."""
    return bool(getattr(f, "buffer", f)._calls)


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
                        await wait_until_async(lambda f=f: in_a_call(f), "the reader's call")
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
            await wait_until_async(lambda: in_a_call(f), "the reader's call")
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
            await wait_until_async(lambda: in_a_call(f), "the reader's call")
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


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
def test_a_file_that_opened_its_fd_routes_by_the_kind_it_learned_at_open(
    lib: str, engine_name: str, direct_dir: Path, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file opened by path knows its fd's kind from the open's own statx
    (``stat_and_kind``): its requests reach the engine without the routing
    looking at the fd again, and read what the builtin reads.  A file given
    an fd (which it does not own from its open) is looked at as before."""
    from xaio.engine import _route

    p = direct_dir / "kind.bin"
    data = pattern(3 * 65536 + 100)
    p.write_bytes(data)
    asked = record_fds_asked(monkeypatch, _route, "fd_kind")

    async def main() -> list[int]:
        drop_cached(p)  # so that the reads go to the engine
        async with xaio.open(p, "rb", direct=direct) as f:
            fd = f.fileno()
            assert await f.read() == data
        assert fd not in asked
        drop_cached(p)  # so that the reads go to the engine
        fd = os.open(p, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        async with xaio.open(fd, "rb", direct=direct) as g:
            assert await g.read() == data
        return [fd]

    given = run(lib, main)
    if engine_name != "thread" and (direct or engine_name == "uring"):
        assert given[0] in asked  # (the engine routes; the thread engine needs no kind)


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


# ---------------------------------------------------------------------------------
# the builtin file's surface, binary, text, O_DIRECT and FIFO
# ---------------------------------------------------------------------------------


THREE_LINES = b"hello\nsecond line\nthird"


@pytest.fixture
def three_lines(tmp_path: Path) -> Path:
    """A file holding :data:`THREE_LINES`."""
    p = tmp_path / "f.bin"
    p.write_bytes(THREE_LINES)
    return p


def test_binary_write_mode(lib: str, engine_name: str, tmp_path: Path) -> None:
    """ "wb": the attributes, write and writelines (any bytes-like), tell, no
    reading; the bytes are on disk once the file is closed."""
    p = tmp_path / "f.bin"

    async def main() -> None:
        async with xaio.open(p, "wb") as f:
            assert f.mode == "wb" and f.name == str(p) and not f.closed  # (the builtin's)
            assert await f.write(b"hello\n") == 6
            await f.writelines([b"second line\n", memoryview(b"third")])
            assert await f.tell() == 23
            with pytest.raises(io.UnsupportedOperation):
                await f.read()
        assert f.closed
        assert p.read_bytes() == THREE_LINES

    run(lib, main)


def test_binary_read_methods(lib: str, engine_name: str, three_lines: Path) -> None:
    """peek, readline, read, read1, readinto and readall each return what the
    builtin's do, and move the position by what they return."""

    async def main() -> None:
        async with xaio.open(three_lines, "rb") as f:
            peeked = await f.peek(1)
            assert peeked and THREE_LINES.startswith(peeked)
            assert await f.tell() == 0
            assert await f.readline() == b"hello\n"
            assert await f.read(3) == b"sec"
            assert await f.read1(3) == b"ond"
            b = bytearray(5)
            assert await f.readinto(b) == 5 and b == b" line"
            assert await f.tell() == 17
            assert await f.readall() == b"\nthird"
            assert await f.read() == b""

    run(lib, main)


def test_binary_seek_whence(lib: str, engine_name: str, three_lines: Path) -> None:
    """seek from the start, the position and the end; a seek before the
    start fails with an OSError and leaves the position."""

    async def main() -> None:
        async with xaio.open(three_lines, "rb") as f:
            assert await f.seek(-5, os.SEEK_END) == 18
            assert await f.read() == b"third"
            assert await f.seek(-3, os.SEEK_CUR) == 20
            assert await f.read(1) == b"i"
            assert await f.seek(6) == 6
            with pytest.raises(OSError):
                await f.seek(-100, os.SEEK_CUR)
            assert await f.tell() == 6

    run(lib, main)


def test_binary_overwrite_then_iterate(lib: str, engine_name: str, three_lines: Path) -> None:
    """ "rb+": a write after a read lands at the position; async iteration
    and readlines then see it."""

    async def main() -> None:
        async with xaio.open(three_lines, "rb+") as f:
            await f.seek(20)
            assert await f.write(b"RD!") == 3
            assert await f.seek(0) == 0
            assert [line async for line in f] == [b"hello\n", b"second line\n", b"thRD!"]
            await f.seek(0)
            assert await f.readlines() == [b"hello\n", b"second line\n", b"thRD!"]
        assert three_lines.read_bytes() == b"hello\nsecond line\nthRD!"

    run(lib, main)


def test_binary_positional_calls_keep_the_position(
    lib: str, engine_name: str, three_lines: Path
) -> None:
    """pread and pwrite work at their offset and leave the position alone."""

    async def main() -> None:
        async with xaio.open(three_lines, "rb+") as f:
            assert await f.read(6) == b"hello\n"
            assert await f.pread(5, 0) == b"hello"
            assert await f.pwrite(b"J", 0) == 1
            assert await f.tell() == 6
            assert await f.read(6) == b"second"
        assert three_lines.read_bytes() == b"J" + THREE_LINES[1:]

    run(lib, main)


def test_binary_truncate_and_fsync(lib: str, engine_name: str, three_lines: Path) -> None:
    """truncate returns the new size and the file has it; fsync returns."""

    async def main() -> None:
        async with xaio.open(three_lines, "rb+") as f:
            assert await f.truncate(5) == 5
            await f.fsync()
            assert os.path.getsize(three_lines) == 5
        assert three_lines.read_bytes() == b"hello"

    run(lib, main)


def test_binary_append_mode(lib: str, engine_name: str, three_lines: Path) -> None:
    """ "ab+" starts at the end, and every write goes to the end whatever the
    position."""

    async def main() -> None:
        async with xaio.open(three_lines, "ab+") as f:
            assert await f.tell() == 23
            await f.write(b" world")
            await f.seek(0)
            assert await f.read() == THREE_LINES + b" world"
            await f.seek(0)
            await f.write(b"!")
        assert three_lines.read_bytes() == THREE_LINES + b" world!"

    run(lib, main)


def test_binary_open_errors(lib: str, engine_name: str, tmp_path: Path, three_lines: Path) -> None:
    """Opening raises what the builtin open raises: FileExistsError for "x"
    on an existing file, FileNotFoundError, IsADirectoryError, and ValueError
    for a bad mode (at once, before anything is awaited)."""

    async def main() -> None:
        with pytest.raises(FileExistsError):
            await xaio.open(three_lines, "xb")
        with pytest.raises(FileNotFoundError):
            await xaio.open(tmp_path / "nope", "rb")
        with pytest.raises(IsADirectoryError):
            await xaio.open(tmp_path, "rb")
        with pytest.raises(ValueError):
            xaio.open(three_lines, "rw")

    run(lib, main)


def test_binary_transfers_bigger_than_the_buffer(
    lib: str, engine_name: str, tmp_path: Path
) -> None:
    """Writes through a small buffer, reads larger than the default buffer,
    and unbuffered reads give back every byte in order."""
    p = tmp_path / "big.bin"
    data = pattern(300_000)

    async def main() -> None:
        async with xaio.open(p, "wb", buffering=1000) as f:
            for i in range(0, len(data), 7000):
                await f.write(data[i : i + 7000])
        assert p.read_bytes() == data
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


@pytest.mark.parametrize("call", ["read", "readline", "readlines"])
def test_text_decode_error_consumes_the_chunk_as_io(lib: str, tmp_path: Path, call: str) -> None:
    """A read that meets undecodable bytes raises UnicodeDecodeError and, as
    io.TextIOWrapper's, has consumed the chunk it decoded: the next read (and
    tell(), which io refuses after readlines) give what the builtin file gives."""
    p = tmp_path / "bad.txt"
    # "ab", a lone UTF-16 low surrogate (undecodable with errors="strict"), "cd"
    p.write_bytes("ab".encode("utf-16-le") + b"\x00\xde" + "cd".encode("utf-16-le"))
    args = (1,) if call == "read" else ()

    with open(p, encoding="utf-16-le") as g:
        with pytest.raises(UnicodeDecodeError):
            getattr(g, call)(*args)
        where = None if call == "readlines" else g.tell()
        rest = g.read()

    async def main() -> None:
        async with xaio.open(p, encoding="utf-16-le") as f:
            with pytest.raises(UnicodeDecodeError):
                await getattr(f, call)(*args)
            if where is not None:
                assert await f.tell() == where
            assert await f.read() == rest

    run(lib, main)


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


def test_fifo_file_objects(lib: str, engine_name: str, tmp_path: Path) -> None:
    """Opening a FIFO waits for the other end without blocking the loop; the
    file objects stream through it; a cancelled read loses nothing."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    async def main() -> None:
        got: list[bytes] = []

        timed_out = anyio.Event()

        async def reader() -> None:
            async with xaio.open(fifo, "rb") as f:
                assert not f.seekable()
                with anyio.move_on_after(0.05) as scope:
                    await f.read(100)  # nothing yet: cancelled, consumed nothing
                assert scope.cancelled_caught
                timed_out.set()
                got.append(await f.readline())
                got.append(await f.read())

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            async with xaio.open(fifo, "wb") as w:
                await timed_out.wait()
                await w.write(b"first line\nthe rest")
        assert got == [b"first line\n", b"the rest"]

    run(lib, main)


def test_fifo_read_whole_gets_a_later_writers_bytes(
    lib: str, engine_name: str, tmp_path: Path
) -> None:
    """A FIFO opened for reading is open once a writer comes, as with the
    builtin, reads what the writer writes, to its close, and has the
    builtin's status flags (no O_NONBLOCK)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def open_writer() -> int:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:  # ENXIO: no reader yet
            assert e.errno == errno.ENXIO
            return -1

    async def main() -> tuple[bytes, bool]:
        got: list[Any] = []

        opened = anyio.Event()

        async def reader() -> None:
            async with xaio.open(fifo, "rb") as f:
                opened.set()
                blocking = os.get_blocking(f.fileno())  # (uvloop's wait makes it non-blocking)
                got.append(await f.read())
                got.append(blocking)

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            with anyio.move_on_after(0.2):
                await opened.wait()
            assert not opened.is_set(), "the FIFO was open before any writer came"
            w = -1
            while w < 0:  # until the reader is opening
                await anyio.sleep(0.001)
                w = open_writer()
            os.write(w, b"after the writer came")
            os.close(w)
        return got[0], got[1]

    assert run(lib, main) == (b"after the writer came", True)


@pytest.mark.parametrize("text", ["a\r", "\ra", "\r\na", "a\rb\r\nc"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le", "utf-16", "utf-32"])
def test_text_tell_around_a_carriage_return(encoding: str, text: str, tmp_path: Path) -> None:
    """Universal newlines hold a ``\\r`` back (it may start ``\\r\\n``) and
    turn ``\\r\\n`` into one character; tell() after a character counts the
    bytes up to it in the file's encoding, so seeking there reads on as io
    does."""
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode(encoding))
    with open(path, encoding=encoding, newline=None) as f:
        want = [f.readline(1), f.read()]

    async def main() -> list[Any]:
        async with await xaio.open(path, encoding=encoding, newline=None) as f:
            first = await f.readline(1)
            pos = await f.tell()
            await f.seek(pos)
            return [first, await f.read()]

    assert asyncio.run(main()) == want
