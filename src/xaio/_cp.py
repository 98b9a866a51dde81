"""The copy behind ``xaio cp``: a queue of large requests on an engine.

How it works
============

*iodepth* slots, each with one aligned buffer of *bs* bytes, cycle through
``read chunk i -> write chunk i -> read the next free chunk``, all on one
:class:`~xaio.engine.Engine`.  With several chunks in flight the device always
has a read and a write queued, which is what makes a copy faster than a
``read(); write()`` loop: ``cp`` waits for each read before writing it and
relies on read-ahead and write-back to overlap the rest.

*Preallocation.*  A regular destination is first given its final size with
``fallocate(2)`` (where the file system supports it): fewer extents, and a
full disk is reported before anything is written (``ENOSPC``).

*O_DIRECT* (``direct=True``) bypasses the page cache on both files, so a copy
of a large file neither evicts the cache nor leaves gigabytes of dirty pages
behind.  The kernel then wants aligned offsets, lengths and buffers: buffers
come from :func:`xaio.aligned_buffer`, chunks are multiples of the files'
alignment, the last chunk is written rounded up to it and the file is cut
back to its real size with ``ftruncate``.

*Errors.*  A failed request stops the copy; what is still in flight is
drained (``Engine.close``) before the files are closed; a destination the copy
created is removed.  A destination that existed is left as ``cp`` leaves it.
Only regular files and block devices are copied (their size is known).

*Engine.*  :func:`auto_engine` picks the thread engine for a buffered copy
and the default engine (io_uring where it works) for an O_DIRECT one.
Measured here (Linux 6.18, ext4 on virtio, 512 MiB, cold source cache, four
alternating rounds): buffered, 16 threads copied in 0.36-0.64 s where
io_uring took 0.51-1.30 s (4 MiB requests) or 1.09-2.03 s (1 MiB requests):
ext4 has no asynchronous buffered writes, so io_uring hands every write to an
io-wq worker, and io-wq runs the buffered writes of one file one at a time.
With O_DIRECT the device is the limit and the engines are within noise of
each other.

*Mode.*  A regular destination gets the source's permission bits
(``st_mode & 0o7777``), whatever the umask.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xaio._memory import aligned_buffer, dio_alignment
from xaio._ops import OpCode, Operation
from xaio.engine import Engine, create_engine

__all__ = ["CopyError", "CopyStats", "auto_engine", "copy", "source_size", "verify"]

_PROGRESS_NS = 100_000_000


class CopyError(Exception):
    """A failure to report in one line."""


@dataclass
class CopyStats:
    """What a copy did."""

    src: str
    dst: str
    nbytes: int
    seconds: float
    engine: str
    direct: bool
    bs: int
    iodepth: int

    def to_json(self) -> dict[str, Any]:
        """As a JSON-able dict."""
        return {
            "src": self.src,
            "dst": self.dst,
            "bytes": self.nbytes,
            "seconds": round(self.seconds, 4),
            "mib_s": round(self.nbytes / self.seconds / (1 << 20), 1) if self.seconds else None,
            "engine": self.engine,
            "direct": self.direct,
            "bs": self.bs,
            "iodepth": self.iodepth,
        }


def auto_engine(direct: bool) -> str | None:
    """The engine ``xaio cp`` uses by default: ``"thread"`` for a buffered
    copy, None (the best engine here) for an O_DIRECT one (see the module
    documentation for the measurements)."""
    return None if direct else "thread"


def _why(e: OSError) -> str:
    return e.strerror or errno.errorcode.get(e.errno or 0, str(e))


def source_size(src: str) -> int:
    """The size of *src*, a regular file or a block device.

    Raises:
        CopyError: missing, unreadable, a directory or of unknown size.
    """
    try:
        st = os.stat(src)
    except OSError as e:
        raise CopyError(f"cannot stat {src}: {_why(e)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CopyError(f"{src} is a directory (xaio cp copies one file)")
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        try:
            fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise CopyError(f"cannot open {src}: {_why(e)}") from None
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    raise CopyError(f"{src} is not a regular file or block device")


_libc: Any = None


def _fallocate(fd: int, size: int) -> None:
    """Reserve *size* bytes (fallocate(2) mode 0); silently skipped where the
    file system or file type does not support it.

    Raises:
        OSError: ENOSPC, EFBIG, EDQUOT...
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        _libc.fallocate.restype = ctypes.c_int
    if _libc.fallocate(fd, 0, 0, size) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENODEV, errno.ENOSYS, errno.EINVAL, errno.ESPIPE):
        return
    raise OSError(err, os.strerror(err))


def _resolve_dst(src: str, dst: str) -> str:
    if os.path.isdir(dst):
        dst = os.path.join(dst, os.path.basename(os.path.normpath(src)))
    try:
        if os.path.samefile(src, dst):
            raise CopyError(f"{src} and {dst} are the same file")
    except FileNotFoundError:
        pass
    except OSError as e:
        raise CopyError(f"cannot stat {dst}: {_why(e)}") from None
    return dst


def copy(
    src: str,
    dst: str,
    *,
    bs: int = 4 << 20,
    iodepth: int = 4,
    direct: bool = False,
    engine: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> CopyStats:
    """Copy *src* to *dst* (a file or a directory) with *iodepth* requests of
    *bs* bytes in flight.

    Raises:
        CopyError: anything that stops the copy, in one line.
    """
    size = source_size(src)
    dst = _resolve_dst(src, dst)
    src_mode = os.stat(src).st_mode & 0o7777
    dflag = os.O_DIRECT if direct else 0
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | dflag)
    except OSError as e:
        if direct and e.errno == errno.EINVAL:
            raise CopyError(f"{src}: this file system does not support O_DIRECT") from None
        raise CopyError(f"cannot open {src}: {_why(e)}") from None
    dfd = -1
    existed = os.path.lexists(dst)
    try:
        try:
            dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | dflag, 0o600)
        except OSError as e:
            if direct and e.errno == errno.EINVAL:
                raise CopyError(f"{dst}: this file system does not support O_DIRECT") from None
            raise CopyError(f"cannot create {dst}: {_why(e)}") from None
        return _copy_fds(src, dst, sfd, dfd, size, src_mode, bs, iodepth, direct, engine,
                         progress)  # fmt: skip
    except BaseException:
        # an error or Ctrl-C: a destination this copy created does not stay half-written
        if dfd >= 0 and not existed:
            os.close(dfd)
            dfd = -1
            try:
                os.unlink(dst)
            except OSError:
                pass
        raise
    finally:
        os.close(sfd)
        if dfd >= 0:
            os.close(dfd)


def _copy_fds(
    src: str,
    dst: str,
    sfd: int,
    dfd: int,
    size: int,
    src_mode: int,
    bs: int,
    iodepth: int,
    direct: bool,
    engine_name: str | None,
    progress: Callable[[int], None] | None,
) -> CopyStats:
    dst_regular = stat.S_ISREG(os.fstat(dfd).st_mode)
    if dst_regular:
        os.fchmod(dfd, src_mode)
    align = 1
    if direct:
        for fd in (sfd, dfd):
            got = dio_alignment(fd)
            if got is not None:
                align = max(align, got[0], got[1])
        if bs % align:
            raise CopyError(f"--bs {bs} is not a multiple of the O_DIRECT alignment {align}")
    t0 = time.perf_counter()
    try:
        if dst_regular and size:
            _fallocate(dfd, size)
        try:
            os.posix_fadvise(sfd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass
    except OSError as e:
        raise CopyError(f"writing {dst}: {_why(e)}") from None
    try:
        eng = create_engine(engine_name, **_options(engine_name, iodepth))
    except OSError as e:
        raise CopyError(f"engine {engine_name}: {e.strerror or e}") from None
    with eng:
        _pump(eng, src, dst, sfd, dfd, size, bs, min(iodepth, max(1, -(-size // bs))), direct,
              align, progress)  # fmt: skip
    if direct and size % align and dst_regular:
        try:
            os.ftruncate(dfd, size)
        except OSError as e:
            raise CopyError(f"truncating {dst}: {_why(e)}") from None
    return CopyStats(src, dst, size, time.perf_counter() - t0, eng.name, direct, bs, iodepth)


def _options(engine: str | None, iodepth: int) -> dict[str, Any]:
    if engine == "uring":
        return {"entries": max(8, 1 << (2 * iodepth).bit_length())}
    if engine == "linux":
        return {"capacity": max(2 * iodepth, 8), "threads": min(2 * iodepth, 64)}
    if engine == "thread":
        return {"threads": min(2 * iodepth, 64)}
    return {}


def _pump(
    eng: Engine,
    src: str,
    dst: str,
    sfd: int,
    dfd: int,
    size: int,
    bs: int,
    depth: int,
    direct: bool,
    align: int,
    progress: Callable[[int], None] | None,
) -> None:
    """The copy loop: read into a free slot, write what was read, repeat."""
    bufs = [aligned_buffer(bs, align if direct and align > 1 else None) for _ in range(depth)]
    try:  # io_uring: fixed buffers, no page pinning per request (until close)
        eng.register_buffers(bufs)
    except OSError:
        pass  # e.g. RLIMIT_MEMLOCK: plain requests work the same
    done: list[Operation] = []
    on_done = done.append
    next_off = 0
    written = 0
    in_flight = 0
    perf = time.perf_counter_ns
    next_report = perf() + _PROGRESS_NS
    # slot state: offset of its chunk, bytes of it read, bytes of it written
    chunk_off = [0] * depth
    chunk_len = [0] * depth

    def read_op(slot: int) -> Operation | None:
        nonlocal next_off
        if next_off >= size:
            return None
        n = min(bs, size - next_off)
        chunk_off[slot] = next_off
        chunk_len[slot] = n
        next_off += n
        want = -(-n // align) * align if direct else n
        return Operation(OpCode.READ, sfd, (bufs[slot][:want],), chunk_off[slot],
                         on_done=on_done, context=(slot, 0))  # fmt: skip

    batch = [op for op in (read_op(s) for s in range(depth)) if op is not None]
    if batch:
        in_flight = len(batch)
        eng.submit(batch)
    while in_flight:
        eng.reap(None)
        batch = []
        for op in done:
            in_flight -= 1
            slot, wrote = op.context
            res = op.result if op.result is not None else -errno.EIO
            n = chunk_len[slot]
            if op.opcode is OpCode.READ:
                if res < 0:
                    raise CopyError(f"reading {src}: {os.strerror(-res)}")
                if res < n:
                    raise CopyError(f"reading {src}: the file shrank during the copy")
                wlen = -(-n // align) * align if direct else n
                batch.append(Operation(OpCode.WRITE, dfd, (bufs[slot][:wlen],), chunk_off[slot],
                                       on_done=on_done, context=(slot, 0)))  # fmt: skip
                continue
            if res <= 0:
                err = -res if res < 0 else errno.ENOSPC
                raise CopyError(f"writing {dst}: {os.strerror(err)}")
            wrote += res
            wlen = -(-n // align) * align if direct else n
            if wrote < wlen:  # a short write: the rest of the chunk again
                batch.append(
                    Operation(OpCode.WRITE, dfd, (bufs[slot][wrote:wlen],),
                              chunk_off[slot] + wrote, on_done=on_done, context=(slot, wrote))
                )  # fmt: skip
                continue
            written += n
            nxt = read_op(slot)
            if nxt is not None:
                batch.append(nxt)
        done.clear()
        if batch:
            in_flight += len(batch)
            eng.submit(batch)
        if progress is not None:
            now = perf()
            if now >= next_report:
                next_report = now + _PROGRESS_NS
                progress(written)
    if progress is not None:
        progress(written)


def verify(src: str, dst: str, progress: Callable[[int], None] | None = None) -> None:
    """Compare *dst* with *src* byte for byte, after flushing *dst* to its
    device and dropping its cached pages (so the data read back comes from
    the device where the page cache lets go of it).

    Raises:
        CopyError: the files differ (with the first differing offset) or
            cannot be read.
    """
    chunk = 1 << 20
    try:
        a = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CopyError(f"verify: cannot open {src}: {_why(e)}") from None
    try:
        b = os.open(dst, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        os.close(a)
        raise CopyError(f"verify: cannot open {dst}: {_why(e)}") from None
    try:
        if stat.S_ISREG(os.fstat(b).st_mode):
            os.fdatasync(b)
            os.posix_fadvise(b, 0, 0, os.POSIX_FADV_DONTNEED)
        sa, sb = os.lseek(a, 0, os.SEEK_END), os.lseek(b, 0, os.SEEK_END)
        if sa != sb:
            raise CopyError(f"verify: {dst} has {sb} bytes, {src} has {sa}")
        off = 0
        ba, bb = bytearray(chunk), bytearray(chunk)
        while off < sa:
            na = os.preadv(a, [ba], off)
            nb = os.preadv(b, [bb], off)
            if na != nb or ba[:na] != bb[:nb]:
                k = next((i for i in range(min(na, nb)) if ba[i] != bb[i]), min(na, nb))
                raise CopyError(f"verify: {dst} differs from {src} at offset {off + k}")
            if na == 0:
                break
            off += na
            if progress is not None:
                progress(off)
    except OSError as e:
        raise CopyError(f"verify: {_why(e)}") from None
    finally:
        os.close(a)
        os.close(b)
