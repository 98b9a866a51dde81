"""The page-cache fast path (xaio._pagecache): the one RWF_NOWAIT read and
the rule of when it is tried."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from xaio._pagecache import NOT_TRIED, NowaitReader, nowait_preadv

from .support import drop_cached, pattern


def test_a_cached_range_is_read_at_once(data_fd: int) -> None:
    os.pread(data_fd, 8192, 0)  # cached
    buf = bytearray(100)
    assert nowait_preadv(data_fd, (buf,), 4000) == 100
    assert buf == pattern(4100)[4000:]
    size = os.fstat(data_fd).st_size
    assert nowait_preadv(data_fd, (buf,), size - 10) == 10  # end of file: short
    assert nowait_preadv(data_fd, (buf,), size) == 0


def test_the_kernel_answer_comes_back_as_a_negative_errno(
    data_fd: int, pipe: tuple[int, int]
) -> None:
    assert nowait_preadv(pipe[0], (bytearray(4),), 0) == -errno.ESPIPE
    assert nowait_preadv(987654, (bytearray(4),), 0) == -errno.EBADF
    assert nowait_preadv(data_fd, (bytearray(4),), -5) == -errno.EINVAL


def test_what_the_call_refuses_is_not_tried(data_fd: int) -> None:
    assert nowait_preadv(data_fd, (b"read-only",), 0) == NOT_TRIED
    assert nowait_preadv(data_fd, (bytearray(4),), 1 << 64) == NOT_TRIED
    view = memoryview(bytearray(4))
    view.release()
    assert nowait_preadv(data_fd, (view,), 0) == NOT_TRIED


def test_an_uncached_range_says_eagain() -> None:
    path = Path("/var/tmp") / f"xaio-pagecache-{os.getpid()}.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, pattern(1 << 20))
        drop_cached(fd)  # out of the page cache
        got = nowait_preadv(fd, (bytearray(4096),), 512 * 1024)
        if got == -errno.EOPNOTSUPP:
            pytest.skip("this file system has no RWF_NOWAIT")
        assert got == -errno.EAGAIN
    finally:
        os.close(fd)
        path.unlink()


def test_the_reader_skips_o_append_and_o_direct(data_path: Path, data_fd: int) -> None:
    reader = NowaitReader()
    os.pread(data_fd, 4096, 0)
    buf = bytearray(16)
    assert reader.read(data_fd, (buf,), 0, 16) == 16 and reader.count == 1
    afd = os.open(data_path, os.O_RDWR | os.O_APPEND)
    try:
        assert not reader.flags_ok(afd)
        assert reader.read(afd, (buf,), 0, 16) is None
    finally:
        os.close(afd)
    assert reader.read(data_fd, (buf,), 1 << 30, 16) is None  # short: the caller submits
    assert reader.count == 1


def test_the_reader_reads_into_several_buffers(data_fd: int) -> None:
    """The buffers are read as ``os.preadv`` fills them, all or nothing."""
    reader = NowaitReader()
    os.pread(data_fd, 4096, 0)
    a, b = bytearray(10), bytearray(6)
    assert reader.read(data_fd, (a, b), 100, 16) == 16
    assert a + b == pattern(116)[100:]
    assert reader.read(data_fd, [a, b], 200, 16) == 16 and a + b == pattern(216)[200:]


class _Gate:
    def __init__(self, passable: bool) -> None:
        self.passable = passable


def test_the_reader_reads_nothing_past_a_closed_gate_nor_once_closed(data_fd: int) -> None:
    """An fd whose gate (its owner's lane) is not passable is not read, nor
    is anything once the reader is closed."""
    gates: dict[int, _Gate] = {}
    reader = NowaitReader(gates)
    os.pread(data_fd, 4096, 0)
    buf = bytearray(16)
    gates[data_fd] = _Gate(False)  # work held back on the fd
    assert reader.read(data_fd, (buf,), 0, 16) is None and buf == bytearray(16)
    gates[data_fd].passable = True
    assert reader.read(data_fd, (buf,), 0, 16) == 16 and buf == pattern(16)
    del gates[data_fd]
    assert reader.read(data_fd, (buf,), 16, 16) == 16 and reader.count == 2
    reader.close()
    assert reader.read(data_fd, (buf,), 0, 16) is None and reader.count == 2


def test_the_reader_looks_at_the_flags_again_after_a_while(data_path: Path, data_fd: int) -> None:
    """The flag cache is a bounded hint: an fd number that now names an
    O_APPEND file (closed and reused) is declined within _RECHECK reads, and
    a declined fd is looked at again after as many."""
    from xaio._pagecache import _RECHECK

    reader = NowaitReader()
    os.pread(data_fd, 4096, 0)
    buf = bytearray(16)
    fd = os.dup(data_fd)
    try:
        assert reader.read(fd, (buf,), 0, 16) == 16
        afd = os.open(data_path, os.O_RDWR | os.O_APPEND)
        os.dup2(afd, fd)  # the same number, an O_APPEND file now
        os.close(afd)
        got = [reader.read(fd, (buf,), 0, 16) for _ in range(_RECHECK)]
        assert got[-1] is None and got.count(None) >= 1
        assert not reader.flags_ok(fd)
        os.dup2(data_fd, fd)  # a plain file again
        got = [reader.read(fd, (buf,), 0, 16) for _ in range(_RECHECK + 1)]
        assert got[-1] == 16 and got[0] is None
        reader.decline(fd)
        assert reader.read(fd, (buf,), 0, 16) is None
    finally:
        os.close(fd)


def test_the_flag_cache_grows_for_large_fds_and_stops_at_its_bound(
    data_path: Path, data_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fd above the cache's first size is cached like any other; one at or
    above its bound is not cached at all: its flags are looked at on every
    read, so an fd number reused for an O_APPEND file is declined at once."""
    from xaio import _pagecache

    os.pread(data_fd, 4096, 0)
    buf = bytearray(16)
    reader = NowaitReader()
    big = os.dup2(data_fd, _pagecache._FIRST_FDS + 40)
    try:
        assert reader.read(big, (buf,), 0, 16) == 16 and buf == pattern(16)
        assert reader.flags_ok(big)  # cached: no fcntl needed
        monkeypatch.setattr(_pagecache, "_CACHED_FDS", big)
        top = NowaitReader()
        assert top.read(big, (buf,), 0, 16) == 16 and top.count == 1
        afd = os.open(data_path, os.O_RDWR | os.O_APPEND)
        os.dup2(afd, big)  # the same number, an O_APPEND file now
        os.close(afd)
        assert top.read(big, (buf,), 0, 16) is None and top.count == 1
        assert reader.read(big, (buf,), 0, 16) == 16  # the cached one is a bounded hint
        assert not top.flags_ok(-1) and top.read(-1, (buf,), 0, 16) is None
    finally:
        os.close(big)
