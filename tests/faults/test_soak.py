"""Soak: thousands of tasks doing verified reads, writes and fsyncs on one
file, with random cancellation, under asyncio and trio, on every engine.

Every 4 KiB block holds 256 copies of one 16-byte record ``(offset,
generation)``, so a read tells at once whether the block is whole (all 256
records equal: not torn), in its place (the offset) and current (the
generation).  Tasks take a block's lock for each request, so a read never
races a write of its own block (a buffered read may see a page half copied
by a concurrent write: Linux promises nothing there).

What a cancelled write may leave: an aligned 4 KiB write is one page copied
whole (buffered) or one block transfer (O_DIRECT), and the async layer
returns a cancellation only once the request is over (run, or never
started).  So the block holds either the old generation or the new one,
never a mix, and the next read decides which; that read must find one of
the two.  A completed write must be read back exactly.

Half the requests go through an O_DIRECT fd, half through a buffered one,
on the same file (the kernel keeps the two coherent).  Afterwards every
block is checked once more from a plain ``os.pread``, and nothing (fd,
thread, ring, AIO context, mapping) may be left behind.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
from pathlib import Path
from typing import Any

import pytest

import xaio
from tests.faults._measure import assert_released, snapshot
from tests.support import ENGINES, run, skip_unavailable

BLOCK = 4096
NBLOCKS = 256
TASKS = 2000
OPS_PER_TASK = 50
RECORD = struct.Struct("<QQ")


def block_of(offset: int, generation: int) -> bytes:
    return RECORD.pack(offset, generation) * (BLOCK // RECORD.size)


class Model:
    """What each block may hold: the generations a read may find there."""

    def __init__(self) -> None:
        self.allowed: list[set[int]] = [{0} for _ in range(NBLOCKS)]
        self.next_gen = [1] * NBLOCKS
        self.mismatches: list[str] = []
        self.counts = {"read": 0, "write": 0, "fsync": 0, "cancelled": 0, "torn_allowed": 0}

    def check(self, block: int, data: bytes, where: str) -> None:
        first = data[: RECORD.size]
        if first * (BLOCK // RECORD.size) != data:
            self.mismatches.append(f"{where}: block {block} torn")
            return
        offset, gen = RECORD.unpack(first)
        if offset != block * BLOCK:
            self.mismatches.append(f"{where}: block {block} holds block {offset // BLOCK}")
        elif gen not in self.allowed[block]:
            self.mismatches.append(
                f"{where}: block {block} generation {gen}, expected {self.allowed[block]}"
            )
        else:
            self.allowed[block] = {gen}

    def prepare(self, op: str, block: int, buf: Any) -> int:
        """The generation a write of *block* puts into *buf* (0 for the others)."""
        if op != "write":
            return 0
        gen = self.next_gen[block]
        self.next_gen[block] += 1
        buf[:] = block_of(block * BLOCK, gen)
        return gen

    def cancelled(self, op: str, block: int, gen: int) -> None:
        """A request timed out: a write may have landed (old or new, never a mix)."""
        self.counts["cancelled"] += 1
        if op == "write":
            self.allowed[block] = self.allowed[block] | {gen}
            self.counts["torn_allowed"] += 1

    def finished(self, op: str, block: int, gen: int, res: int, buf: Any) -> None:
        """A request completed with *res*."""
        self.counts[op] += 1
        if op == "read":
            assert res == BLOCK
            self.check(block, bytes(buf), "read")
        elif op == "write":
            assert res == BLOCK
            self.allowed[block] = {gen}


def _choose(rng: random.Random) -> tuple[str, int, bool, float | None]:
    op = rng.choices(["read", "write", "fsync"], [5, 4, 1])[0]
    timeout = rng.uniform(0, 0.002) if rng.random() < 0.2 else None
    return op, rng.randrange(NBLOCKS), rng.random() < 0.5, timeout


async def _asyncio_main(path: Path, seed: int, model: Model) -> None:
    fds = (os.open(path, os.O_RDWR), os.open(path, os.O_RDWR | os.O_DIRECT))
    locks = [asyncio.Lock() for _ in range(NBLOCKS)]

    async def worker(n: int) -> None:
        rng = random.Random(seed * 100_003 + n)
        buf = xaio.aligned_buffer(BLOCK)
        for _ in range(OPS_PER_TASK):
            op, block, direct, timeout = _choose(rng)
            fd = fds[direct]
            async with locks[block]:
                gen = model.prepare(op, block, buf)
                if op == "fsync":
                    coro: Any = xaio.fsync(fd)
                elif op == "read":
                    coro = xaio.preadinto(fd, buf, block * BLOCK)
                else:
                    coro = xaio.pwrite(fd, buf, block * BLOCK)
                try:
                    res = await (coro if timeout is None else asyncio.wait_for(coro, timeout))
                except (asyncio.TimeoutError, TimeoutError):
                    model.cancelled(op, block, gen)
                    continue
                model.finished(op, block, gen, res, buf)

    try:
        await asyncio.gather(*(worker(n) for n in range(TASKS)))
    finally:
        for fd in fds:
            os.close(fd)


async def _trio_main(path: Path, seed: int, model: Model) -> None:
    import trio

    fds = (os.open(path, os.O_RDWR), os.open(path, os.O_RDWR | os.O_DIRECT))
    locks = [trio.Lock() for _ in range(NBLOCKS)]

    async def worker(n: int) -> None:
        rng = random.Random(seed * 100_003 + n)
        buf = xaio.aligned_buffer(BLOCK)
        for _ in range(OPS_PER_TASK):
            op, block, direct, timeout = _choose(rng)
            fd = fds[direct]
            async with locks[block]:
                gen = model.prepare(op, block, buf)
                res = -1
                with trio.move_on_after(1e9 if timeout is None else timeout) as scope:
                    if op == "fsync":
                        await xaio.fsync(fd)
                        res = 0
                    elif op == "read":
                        res = await xaio.preadinto(fd, buf, block * BLOCK)
                    else:
                        res = await xaio.pwrite(fd, buf, block * BLOCK)
                if scope.cancelled_caught:
                    model.cancelled(op, block, gen)
                    continue
                model.finished(op, block, gen, res, buf)

    try:
        async with trio.open_nursery() as nursery:
            for n in range(TASKS):
                nursery.start_soon(worker, n)
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.slow
@pytest.mark.parametrize("lib", ["asyncio", "trio"])
@pytest.mark.parametrize("engine_name", ENGINES)
def test_soak(engine_name: str, lib: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skip_unavailable(engine_name)
    monkeypatch.setenv("XAIO_ENGINE", engine_name)
    path = tmp_path / "soak.bin"
    path.write_bytes(b"".join(block_of(b * BLOCK, 0) for b in range(NBLOCKS)))
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError as e:
        pytest.skip(f"O_DIRECT not supported here: {e}")
    import trio  # noqa: F401  (imported before the snapshot: its modules map files)

    before = snapshot()
    model = Model()
    seed = random.randrange(1 << 30)
    run(lib, _asyncio_main if lib == "asyncio" else _trio_main, path, seed, model)
    assert not model.mismatches, f"seed {seed}: {model.mismatches[:5]}"
    fd = os.open(path, os.O_RDONLY)
    try:
        for b in range(NBLOCKS):
            model.check(b, os.pread(fd, BLOCK, b * BLOCK), "final")
    finally:
        os.close(fd)
    assert not model.mismatches, f"seed {seed}: {model.mismatches[:5]}"
    c = model.counts
    assert c["read"] > TASKS and c["write"] > TASKS and c["fsync"] > 0, c
    assert c["cancelled"] > 0, c  # the cancellation paths really ran
    assert_released(before)
