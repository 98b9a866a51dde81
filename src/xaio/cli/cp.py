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

*Atomic replace.*  A regular destination (new, or an existing regular
file) is written as a temporary file in its directory (``.NAME.xaio-XXXXXXXX``,
created with ``O_EXCL``), verified there when asked, and renamed over
*dst* only once the copy is complete: other processes see the old file or
the whole new one, never a part, and a copy that fails -- a read error, a
full disk, a failed verification, Ctrl-C -- removes its temporary file and
leaves an existing destination exactly as it was.  ``cp`` instead truncates
the destination and writes into it, keeping its inode (owner, hard links,
extended attributes) but leaving a partial file when it fails; a backup tool
wants the old copy kept until the new one is known good.  The price: while
the copy runs, the old and the new file take space together, and the new
file has a new inode (other hard links to the old one keep the old data; the
owner is the user who copies).  A destination that is a symlink is followed
(the temporary file goes in the directory of its target).  Other existing
destinations (block and character devices) are written in place.  The rename
does not make the data durable across a power loss by itself: ``--verify``
flushes the copy to its device (``fdatasync``) before it compares and renames.

*Errors.*  A failed request stops the copy; what is still in flight is
drained (``Engine.close``) before the files are closed.  A read that returns
less than asked is continued at the offset it reached: only a read that
returns 0 means the source ended early ("the file shrank during the copy");
an error, such as EIO from a failing disk, is reported with the kernel's
message and the file's name.  Only regular files and block devices are
copied (their size is known).

*Engine.*  :func:`auto_engine` picks the thread engine for a buffered copy
and the default engine (io_uring where it works) for an O_DIRECT one.  A
file system without asynchronous buffered writes (ext4) makes io_uring hand
every buffered write to an io-wq worker, and io-wq runs the buffered writes
of one file one at a time, where the thread engine runs them side by side.
With O_DIRECT the device is the limit, and io_uring needs no thread.  The
comparison, measured, is in ``benchmarks/cp.md``.

*Mode.*  A regular destination gets the source's permission bits
(``st_mode & 0o7777``), whatever the umask.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xaio._memory import aligned_buffer, dio_alignment
from xaio._ops import OpCode, Operation
from xaio.cli._job import format_size
from xaio.cli._ui import UI, CLIError
from xaio.engine import Engine, create_engine

__all__ = [
    "Copy",
    "CopyError",
    "CopyStats",
    "auto_engine",
    "cmd_cp",
    "copy",
    "source_size",
    "verify",
]

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


def _in_place(dst: str) -> bool:
    """True if *dst* exists and is not a regular file (a device): written in place."""
    try:
        return not stat.S_ISREG(os.stat(dst).st_mode)
    except OSError:
        return False  # missing (or a dangling symlink): created


class Copy:
    """One copy of *src* to *dst* (a file or a directory), in steps:
    :meth:`run`, optionally :meth:`verify`, then :meth:`commit`, inside a
    ``with`` block.  Leaving the block without :meth:`commit` (an error,
    Ctrl-C) removes the temporary file: an existing destination is left as it
    was (see the module documentation, *Atomic replace*).

    Raises:
        CopyError: from the constructor (source or destination unusable) and
            from every step, in one line naming the file.
    """

    def __init__(
        self,
        src: str,
        dst: str,
        *,
        bs: int = 4 << 20,
        iodepth: int = 4,
        direct: bool = False,
        engine: str | None = None,
    ) -> None:
        self.src = src
        self.size = source_size(src)
        self.dst = _resolve_dst(src, dst)
        self.bs, self.iodepth, self.direct, self.engine = bs, iodepth, direct, engine
        self._src_mode = os.stat(src).st_mode & 0o7777
        self._dflag = os.O_DIRECT if direct else 0
        #: the file written: a temporary file beside the destination, or the
        #: destination itself when it is a device
        self.path = self.dst
        self._target = self.dst
        self._tmp = False
        self._sfd = self._dfd = -1
        self._stats: CopyStats | None = None
        self._committed = False

    def __enter__(self) -> Copy:
        try:
            self._sfd = os.open(self.src, os.O_RDONLY | os.O_CLOEXEC | self._dflag)
        except OSError as e:
            self._no_direct(e, self.src)
            raise CopyError(f"cannot open {self.src}: {_why(e)}") from None
        try:
            self._open_dst()
        except BaseException:
            os.close(self._sfd)
            self._sfd = -1
            raise
        return self

    def _no_direct(self, e: OSError, name: str) -> None:
        if self.direct and e.errno == errno.EINVAL:
            raise CopyError(f"{name}: this file system does not support O_DIRECT") from None

    def _open_dst(self) -> None:
        flags = os.O_WRONLY | os.O_CLOEXEC | self._dflag
        if _in_place(self.dst):
            try:
                self._dfd = os.open(self.dst, flags | os.O_TRUNC)
            except OSError as e:
                self._no_direct(e, self.dst)
                raise CopyError(f"cannot open {self.dst}: {_why(e)}") from None
            return
        target = os.path.realpath(self.dst) if os.path.islink(self.dst) else self.dst
        head, tail = os.path.split(target)
        while True:
            path = os.path.join(head, f".{tail}.xaio-{os.urandom(4).hex()}")
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            except OSError as e:
                self._no_direct(e, self.dst)
                raise CopyError(f"cannot create {self.dst}: {_why(e)}") from None
            # ours from here on: close() removes it unless committed
            self._dfd, self.path, self._target, self._tmp = fd, path, target, True
            return

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the files; remove the temporary file unless committed."""
        for fd in (self._sfd, self._dfd):
            if fd >= 0:
                os.close(fd)
        self._sfd = self._dfd = -1
        if self._tmp and not self._committed:
            self._tmp = False
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def run(self, progress: Callable[[int], None] | None = None) -> CopyStats:
        """Copy the data (and the permission bits) into :attr:`path`.

        Returns:
            What the copy did (``dst`` is the destination's name).
        """
        self._stats = _copy_fds(self.src, self.dst, self._sfd, self._dfd, self.size,
                                self._src_mode, self.bs, self.iodepth, self.direct, self.engine,
                                progress)  # fmt: skip
        return self._stats

    def verify(self, progress: Callable[[int], None] | None = None) -> None:
        """Compare the copy with the source (:func:`verify`), before it replaces
        the destination."""
        verify(self.src, self.path, progress, name=self.dst)

    def commit(self) -> CopyStats:
        """Put the copy in place: rename the temporary file over the destination.

        Raises:
            CopyError: :meth:`run` did not finish, or the rename failed.
        """
        if self._stats is None:
            raise CopyError(f"{self.dst}: the copy did not finish")
        if self._tmp:
            try:
                os.rename(self.path, self._target)
            except OSError as e:
                raise CopyError(f"cannot replace {self.dst}: {_why(e)}") from None
        self._committed = True
        return self._stats


def copy(
    src: str,
    dst: str,
    *,
    bs: int = 4 << 20,
    iodepth: int = 4,
    direct: bool = False,
    engine: str | None = None,
    progress: Callable[[int], None] | None = None,
    check: bool = False,
) -> CopyStats:
    """Copy *src* to *dst* (a file or a directory) with *iodepth* requests of
    *bs* bytes in flight, replacing a regular *dst* atomically (see the module
    documentation): on any error an existing *dst* is left as it was and no
    partial file remains.

    Args:
        check: compare the copy with *src* (:func:`verify`) before it replaces
            *dst*.

    Raises:
        CopyError: anything that stops the copy, in one line.
    """
    with Copy(src, dst, bs=bs, iodepth=iodepth, direct=direct, engine=engine) as job:
        job.run(progress)
        if check:
            job.verify()
        return job.commit()


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
                got = wrote + res  # a read's context counts what the chunk has so far
                if got < n:
                    # short: continue where it stopped (an error comes with the
                    # next read); only end of file (0, or an O_DIRECT read cut
                    # off inside a block) means the file shrank
                    if res == 0 or (direct and got % align):
                        raise CopyError(f"reading {src}: the file shrank during the copy")
                    want = -(-n // align) * align if direct else n
                    batch.append(Operation(OpCode.READ, sfd, (bufs[slot][got:want],),
                                           chunk_off[slot] + got, on_done=on_done,
                                           context=(slot, got)))  # fmt: skip
                    continue
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


def _read_full(fd: int, buf: bytearray, offset: int) -> int:
    """Fill *buf* from *offset* (short only at end of file; an error raises)."""
    got = 0
    with memoryview(buf) as mv:
        while got < len(buf):
            n = os.preadv(fd, [mv[got:]], offset + got)
            if n == 0:
                break
            got += n
    return got


def verify(
    src: str,
    dst: str,
    progress: Callable[[int], None] | None = None,
    *,
    name: str | None = None,
) -> None:
    """Compare *dst* with *src* byte for byte, after flushing *dst* to its
    device and dropping its cached pages (so the data read back comes from
    the device where the page cache lets go of it).

    Args:
        name: what to call *dst* in messages (the destination's name when
            *dst* is the temporary file of a :class:`Copy`).

    Raises:
        CopyError: the files differ (with the first differing offset) or
            cannot be read; the message names the file.
    """
    shown = dst if name is None else name
    chunk = 1 << 20
    try:
        a = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CopyError(f"verify: cannot open {src}: {_why(e)}") from None
    try:
        b = os.open(dst, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        os.close(a)
        raise CopyError(f"verify: cannot open {shown}: {_why(e)}") from None
    current = shown  # the file the next system call is about
    try:
        if stat.S_ISREG(os.fstat(b).st_mode):
            os.fdatasync(b)
            os.posix_fadvise(b, 0, 0, os.POSIX_FADV_DONTNEED)
        current = src
        sa = os.lseek(a, 0, os.SEEK_END)
        current = shown
        sb = os.lseek(b, 0, os.SEEK_END)
        if sa != sb:
            raise CopyError(f"verify: {shown} has {sb} bytes, {src} has {sa}")
        off = 0
        ba, bb = bytearray(chunk), bytearray(chunk)
        while off < sa:
            current = src
            na = _read_full(a, ba, off)
            current = shown
            nb = _read_full(b, bb, off)
            if na != nb or ba[:na] != bb[:nb]:
                k = next((i for i in range(min(na, nb)) if ba[i] != bb[i]), min(na, nb))
                raise CopyError(f"verify: {shown} differs from {src} at offset {off + k}")
            if na == 0:
                break
            off += na
            if progress is not None:
                progress(off)
    except OSError as e:
        raise CopyError(f"verify: {current}: {_why(e)}") from None
    finally:
        os.close(a)
        os.close(b)


# ---------------------------------------------------------------------------------
# xaio cp: the command
# ---------------------------------------------------------------------------------


def cmd_cp(args: argparse.Namespace, ui: UI) -> int:
    """``xaio cp SRC DST``."""
    # the defaults benchmarks/cp.md compares: O_DIRECT wants a deeper queue of larger requests
    if args.bs is None:
        args.bs = 8 << 20 if args.direct else 4 << 20
    if args.iodepth is None:
        args.iodepth = 8 if args.direct else 4
    if args.bs <= 0 or args.bs > 1 << 30:
        raise CLIError(f"--bs must be between 1 byte and 1 GiB, not {args.bs}")
    if not 1 <= args.iodepth <= 1024:
        raise CLIError(f"--iodepth must be between 1 and 1024, not {args.iodepth}")
    quiet_ui = UI(ui.out, quiet=args.quiet)
    engine = auto_engine(args.direct) if args.engine == "auto" else args.engine
    with Copy(args.src, args.dst, bs=args.bs, iodepth=args.iodepth, direct=args.direct,
                  engine=engine) as job:  # fmt: skip
        total = max(job.size, 1)
        with quiet_ui.progress("copying", total) as upd:
            job.run(progress=lambda done: upd(done, format_size(done)))
        if args.verify:
            with quiet_ui.progress("verifying", total) as upd:
                job.verify(progress=lambda done: upd(done, format_size(done)))
        stats = job.commit()
    if args.json:
        print(json.dumps({**stats.to_json(), "verified": bool(args.verify)}, indent=2),
              file=ui.out)  # fmt: skip
    elif not args.quiet:
        rate = stats.nbytes / stats.seconds / (1 << 20) if stats.seconds > 0 else 0.0
        ui.print(
            f"copied {stats.src} -> {stats.dst}: {format_size(stats.nbytes)} in "
            f"{stats.seconds:.2f}s ({rate:,.0f} MiB/s, {stats.engine} engine"
            f"{', O_DIRECT' if stats.direct else ''}{', verified' if args.verify else ''})"
        )
    return 0
