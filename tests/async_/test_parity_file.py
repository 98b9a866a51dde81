"""``xaio.open`` side by side with the builtin ``open``, on every engine.

A hypothesis state machine drives an xaio file and a builtin file, each on
its own copy of the same content, with the same random sequence of calls
(write, read, read1, readinto, readline, readlines, seek, tell, truncate,
flush), in binary modes (buffered and ``direct=True``) and text modes
(every newline setting, encodings with multi-byte characters), and compares
every answer, every exception (type and errno) and, at the end, the bytes on
disk.

Then cancellation at random points: a timeout around every read of a pipe
that a writer feeds in random pieces (binary and text, asyncio and trio);
every byte arrives once.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import xaio
from tests.support import ENGINES, run, skip_unavailable

pytestmark = pytest.mark.timeout(300)

_ids = itertools.count()

TEXT_CHARS = st.sampled_from(list("ab\n\r\r\n é€😀x"))
TEXT = st.lists(TEXT_CHARS, max_size=30).map("".join)
SIZES = st.integers(-1, 40)


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    """("ok", result) or ("err", exception) of ``fn(*args)``."""
    try:
        return "ok", fn(*args)
    except (OSError, ValueError, TypeError) as e:
        return "err", e


def same_error(mine: BaseException, ref: BaseException) -> None:
    assert isinstance(mine, type(ref)), (mine, ref)
    if isinstance(ref, OSError) and not isinstance(ref, io.UnsupportedOperation):
        assert mine.errno == ref.errno, (mine, ref)


class FileParity(RuleBasedStateMachine):
    """One xaio file and one builtin file, driven alike (see the module doc)."""

    engine = "thread"
    kind = "binary"  # "binary", "direct" or "text"
    directory = Path(".")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.mine: Any = None
        self.ref: Any = None
        self.text = self.kind == "text"
        self.cookies: list[int] = [0]  # text: positions xaio's tell() gave
        self.reading = False  # text: read since the last write or seek
        #: text: readlines ran since the last seek.  io's readlines iterates
        #: (next()), which turns its tell() off, and a flush() turns it back on
        #: without the decoder snapshot: its tell() then gives a number unrelated
        #: to the position (4 in a 2-byte file), until a seek.
        self.iterated = False

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def both(self, name: str, *args: Any) -> Any:
        """Call *name* on both files; the results (or errors) must agree."""
        if self.text and name.startswith("read"):
            # io's TextIOWrapper reads past its own unflushed writes (which
            # then land after what was read): flush first
            self.ref.flush()
            self.reading = True
        ref = outcome(getattr(self.ref, name), *args)

        def mine_call(*a: Any) -> Any:
            return self.run(getattr(self.mine, name)(*a))

        got = outcome(mine_call, *args)
        assert got[0] == ref[0], (name, args, got, ref)
        if ref[0] == "err":
            same_error(got[1], ref[1])
            return None
        assert got[1] == ref[1], (name, args, got[1], ref[1])
        return ref[1]

    @initialize(
        mode=st.sampled_from(["r+", "w+", "a+"]),
        content=st.binary(max_size=200),
        text=TEXT,
        newline=st.sampled_from([None, "", "\n", "\r", "\r\n"]),
        encoding=st.sampled_from(["utf-8", "utf-16-le", "latin-1"]),
        buffering=st.sampled_from([-1, 16, 1]),
    )
    def open_files(
        self,
        mode: str,
        content: bytes,
        text: str,
        newline: str | None,
        encoding: str,
        buffering: int,
    ) -> None:
        n = next(_ids)
        pm, pr = self.directory / f"mine{n}", self.directory / f"ref{n}"
        self.paths = (pm, pr)
        kw: dict[str, Any] = {}
        if self.text:
            if encoding == "latin-1":
                text = text.replace("€", "e").replace("😀", "s")
            content = text.encode(encoding)
            # undecodable bytes (a write over part of a character) decode
            # alike instead of raising
            kw = {"encoding": encoding, "newline": newline, "errors": "surrogateescape"}
        else:
            mode += "b"
            if buffering == 1:
                buffering = -1  # line buffering is text only
        pm.write_bytes(content)
        pr.write_bytes(content)
        self.ref = open(pr, mode, buffering, **kw)  # noqa: SIM115
        extra: dict[str, Any] = {"engine": self.engine}
        if self.kind == "direct":
            extra["direct"] = True
        self.mine = self.run(xaio.open(pm, mode, buffering, **kw, **extra))

    def teardown(self) -> None:
        try:
            if self.mine is not None:
                self.run(self.mine.close())
                self.ref.close()
                pm, pr = self.paths
                assert pm.read_bytes() == pr.read_bytes()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    # -- binary and text ---------------------------------------------------------------

    @rule(size=st.one_of(st.none(), SIZES))
    def read(self, size: int | None) -> None:
        self.both("read", size)

    @rule(size=SIZES)
    def readline(self, size: int | None) -> None:
        self.both("readline", size)

    @rule(hint=st.sampled_from([-1, 0, 1, 5, 20]))
    def readlines(self, hint: int) -> None:
        self.both("readlines", hint)
        self.iterated = self.text

    @rule()
    def flush(self) -> None:
        self.both("flush")

    @rule()
    def tell(self) -> None:
        if not self.text:
            self.both("tell")
            return
        try:
            ref = self.ref.tell()
        except OSError:  # io: "telling position disabled by next() call" (readlines)
            return
        mine = self.run(self.mine.tell())
        if ref < 1 << 64 and not self.iterated:  # io's cookie is a plain byte offset here
            assert mine == ref
        self.cookies.append(mine)

    # -- binary only -------------------------------------------------------------------

    @precondition(lambda self: not self.text)
    @rule(data=st.binary(max_size=40))
    def write_bytes(self, data: bytes) -> None:
        self.both("write", data)
        self.after_write()

    def after_write(self) -> None:
        """In append mode, where io's BufferedRandom puts its position after a
        write is not the file's end (it counts from where the position was,
        and tell() may even exceed the size): both go to the end, where
        the data went."""
        if "a" in self.ref.mode:
            self.ref.seek(0, os.SEEK_END)
            self.run(self.mine.seek(0, os.SEEK_END))

    @precondition(lambda self: not self.text)
    @rule(size=st.integers(0, 40))
    def read1(self, size: int) -> None:
        """read1 returns what one transfer gives: both must return a prefix of
        what is there; the shorter one then reads on to the same place."""
        self.ref.flush()  # CPython 3.11's read1 reads past unflushed writes
        ref = self.ref.read1(size)
        mine = self.run(self.mine.read1(size))
        assert bool(ref) == bool(mine) or size == 0, (ref, mine)
        if len(mine) < len(ref):
            mine += self.run(self.mine.read(len(ref) - len(mine)))
        elif len(ref) < len(mine):
            ref += self.ref.read(len(mine) - len(ref))
        assert mine == ref

    @precondition(lambda self: not self.text)
    @rule(size=st.integers(0, 40))
    def readinto(self, size: int) -> None:
        a, b = bytearray(size), bytearray(size)
        assert self.run(self.mine.readinto(a)) == self.ref.readinto(b)
        assert a == b

    @precondition(lambda self: not self.text)
    @rule(offset=st.integers(-30, 300), whence=st.sampled_from([0, 1, 2]))
    def seek_bytes(self, offset: int, whence: int) -> None:
        self.both("seek", offset, whence)

    @precondition(lambda self: not self.text)
    @rule(size=st.one_of(st.none(), st.integers(0, 300)))
    def truncate_bytes(self, size: int | None) -> None:
        self.both("truncate", size)

    # -- text only -----------------------------------------------------------------------

    @precondition(lambda self: self.text)
    @rule(s=TEXT)
    def write_text(self, s: str) -> None:
        if self.ref.encoding == "latin-1":
            s = s.replace("€", "e").replace("😀", "s")
        if self.to_text_position():
            self.both("write", s)

    def to_text_position(self) -> bool:
        """After a read, io's TextIOWrapper writes and truncates where its
        read-ahead ended, not at the text position (xaio: at the text
        position), and after a "\r" held for a possible "\n" its write drops
        that newline: both go to xaio's position (a plain byte offset, which
        io's seek takes) first."""
        if self.reading:
            self.reading = False
            self.iterated = False
            pos = self.run(self.mine.tell())
            self.ref.seek(pos)
            self.run(self.mine.seek(pos))
        return True
        self.after_write()

    @precondition(lambda self: self.text)
    @rule(data=st.data())
    def seek_text(self, data: st.DataObject) -> None:
        """Seek both to a position xaio's tell() gave (a byte offset; io's
        own cookies differ where its decoder holds state)."""
        cookie = data.draw(st.sampled_from(self.cookies))
        self.reading = False
        self.iterated = False
        self.both("seek", cookie)

    @precondition(lambda self: self.text)
    @rule()
    def seek_end(self) -> None:
        self.reading = False
        self.iterated = False
        self.ref.seek(0, os.SEEK_END)
        self.run(self.mine.seek(0, os.SEEK_END))

    @precondition(lambda self: self.text)
    @rule()
    def truncate_text(self) -> None:
        if self.to_text_position():
            self.both("truncate")

    @invariant()
    def same_closed_state(self) -> None:
        if self.mine is not None:
            assert self.mine.closed == self.ref.closed


def make_machine(engine: str, kind: str, directory: Path) -> type[FileParity]:
    return type(
        f"FileParity_{engine}_{kind}",
        (FileParity,),
        {"engine": engine, "kind": kind, "directory": directory},
    )


def _direct_ok(directory: Path) -> bool:
    try:
        fd = os.open(directory / "probe", os.O_RDWR | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    return True


@pytest.mark.parametrize("kind", ["binary", "direct", "text"])
@pytest.mark.parametrize("engine", ENGINES)
def test_file_parity(engine: str, kind: str, tmp_path: Path) -> None:
    skip_unavailable(engine)
    if kind == "direct" and not _direct_ok(tmp_path):
        pytest.skip("O_DIRECT unsupported in the test directory")
    run_state_machine_as_test(
        make_machine(engine, kind, tmp_path),
        settings=settings(
            max_examples=50,
            stateful_step_count=30,
            deadline=None,
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no explain
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )


# ---------------------------------------------------------------------------------
# cancellation at random points
# ---------------------------------------------------------------------------------

READS = ["read", "read_n", "readline", "readline_n", "read1", "readlines", "iter"]


@pytest.mark.parametrize("library", ["asyncio", "trio"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.lists(TEXT_CHARS, min_size=1, max_size=300).map("".join),
    pieces=st.lists(st.integers(1, 40), min_size=1, max_size=20),
    ops=st.lists(st.tuples(st.sampled_from(READS), st.integers(1, 30)), min_size=1, max_size=20),
    timeouts=st.lists(st.sampled_from([0.0, 0.0001, 0.0003, 0.001]), min_size=1, max_size=8),
)
def test_cancelled_reads_lose_nothing(
    library: str,
    binary: bool,
    text: str,
    pieces: list[int],
    ops: list[tuple[str, int]],
    timeouts: list[float],
) -> None:
    """A timeout around every read of a pipe fed in random pieces: the
    reads together return the payload exactly (no byte lost or repeated)."""
    payload = text.encode("utf-8")

    async def main() -> Any:
        r, w = os.pipe()
        os.set_blocking(w, False)
        f: Any = await xaio.open(r, "rb" if binary else "r", encoding=None if binary else "utf-8")
        got: list[Any] = []

        async def feed() -> None:
            i = 0
            for n in itertools.cycle(pieces):
                if i >= len(payload):
                    break
                os.write(w, payload[i : i + n])
                i += n
                await anyio.sleep(0.0002)
            os.close(w)

        async def one(op: str, n: int) -> bool:
            if op == "read":
                item = await f.read()
            elif op == "read_n":
                item = await f.read(n)
            elif op == "readline":
                item = await f.readline()
            elif op == "readline_n":
                item = await f.readline(n)
            elif op == "read1" and binary:
                item = await f.read1(n)
            elif op == "readlines":
                items = await f.readlines(n)
                got.extend(items)
                return bool(items)
            else:
                try:
                    item = await f.__anext__()
                except StopAsyncIteration:
                    return False
            got.append(item)
            return bool(item)

        async def drain() -> None:
            for k in itertools.count():
                op, n = ops[k % len(ops)]
                # every 8th read has no timeout: progress, whatever the timeouts
                timeout = timeouts[k % len(timeouts)] if k % 8 else None
                with anyio.move_on_after(timeout):
                    if not await one(op, n):
                        return

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            tg.start_soon(drain)
        await f.close()
        return (b"" if binary else "").join(got)

    expect = (
        payload if binary else payload.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    )
    assert run(library, main) == expect
