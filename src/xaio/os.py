"""Async versions of :mod:`os` file-system functions (the ``aiofiles.os`` surface).

``await xaio.os.stat(path)`` and friends never block the event loop.  When
the running loop's engine is io_uring and the kernel has the opcode, the call
is one io_uring request (``IORING_OP_STATX``, ``RENAMEAT``, ``UNLINKAT``,
``MKDIRAT``); otherwise the :mod:`os` function runs in a worker thread.  Names,
arguments, results and exceptions are those of :mod:`os` and
:mod:`os.path` (``FileNotFoundError`` with the file name, ...), so code written
for ``aiofiles.os`` switches by changing the import; ``xaio.os.path`` holds
the ``aiofiles.os.path`` functions.

A cancelled call is cancelled in the kernel (io_uring) or waited for (a
thread cannot be stopped) before ``CancelledError`` reaches the caller, so
when it does, the operation has either happened or not -- it is not still
running.
"""

from __future__ import annotations

import ctypes
import os as _os
import stat as _stat
import struct
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Union

from xaio._async._loop import current_driver
from xaio._async._meta import OP_MKDIRAT, OP_RENAMEAT, OP_STATX, OP_UNLINKAT, run_meta

__all__ = [
    "stat",
    "lstat",
    "rename",
    "renames",
    "replace",
    "remove",
    "unlink",
    "mkdir",
    "makedirs",
    "rmdir",
    "removedirs",
    "listdir",
    "scandir",
    "link",
    "symlink",
    "readlink",
    "access",
    "statvfs",
    "getcwd",
    "exists",
    "isfile",
    "isdir",
    "islink",
    "getsize",
    "getmtime",
    "getatime",
    "getctime",
    "path",
]

StrPath = Union[str, bytes, "_os.PathLike[str]", "_os.PathLike[bytes]"]

_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_REMOVEDIR = 0x200
_AT_EMPTY_PATH = 0x1000
_STATX_BASIC_STATS = 0x7FF
_STATX = struct.Struct("<IIQIIIHxxQQQQ")  # mask .. attributes_mask (offsets 0..63)
_TS = struct.Struct("<qI")
_DEVS = struct.Struct("<IIII")  # rdev major/minor, dev major/minor at 128
_STATX_SIZE = 256


def _dirfd(dir_fd: int | None) -> int:
    return _AT_FDCWD if dir_fd is None else dir_fd


def _error(res: int, *names: Any) -> OSError:
    """The OSError the os module would raise (file names as it reports them)."""
    e = -res
    return OSError(e, _os.strerror(e), *(None if n is None else _os.fspath(n) for n in names))


def _stat_result(buf: Any) -> _os.stat_result:
    raw = bytes(buf)
    (_mask, blksize, _attrs, nlink, uid, gid, mode, ino, size, blocks, _am) = _STATX.unpack_from(
        raw, 0
    )
    a_s, a_ns = _TS.unpack_from(raw, 64)
    c_s, c_ns = _TS.unpack_from(raw, 96)
    m_s, m_ns = _TS.unpack_from(raw, 112)
    rmaj, rmin, dmaj, dmin = _DEVS.unpack_from(raw, 128)
    return _os.stat_result(
        (mode, ino, _os.makedev(dmaj, dmin), nlink, uid, gid, size, a_s, m_s, c_s),
        {
            "st_atime": a_s + a_ns * 1e-9,
            "st_mtime": m_s + m_ns * 1e-9,
            "st_ctime": c_s + c_ns * 1e-9,
            "st_atime_ns": a_s * 1_000_000_000 + a_ns,
            "st_mtime_ns": m_s * 1_000_000_000 + m_ns,
            "st_ctime_ns": c_s * 1_000_000_000 + c_ns,
            "st_blksize": blksize,
            "st_blocks": blocks,
            "st_rdev": _os.makedev(rmaj, rmin),
        },
    )


def _check_path(path: Any, *, allow_fd: bool = False) -> Any:
    """Validate a path argument as :mod:`os` does (TypeError/ValueError)."""
    if allow_fd and isinstance(path, int) and not isinstance(path, bool):
        return path
    raw = _os.fsencode(path)  # TypeError for anything but str/bytes/PathLike
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    return path


async def stat(
    path: StrPath | int, *, dir_fd: int | None = None, follow_symlinks: bool = True
) -> _os.stat_result:
    """``os.stat`` (statx(2) on io_uring): the status of *path* (or of an open fd).

    Returns:
        An ``os.stat_result``.

    Raises:
        TypeError/ValueError: bad path (not a path, embedded NUL).
        OSError: ``FileNotFoundError``, ``PermissionError``... with the file name.
    """
    path = _check_path(path, allow_fd=True)
    drv = current_driver()
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    p: Any
    if isinstance(path, int):
        dirfd, p, flags = path, b"", _AT_EMPTY_PATH
    else:
        dirfd, p = _dirfd(dir_fd), path
        flags = 0 if follow_symlinks else _AT_SYMLINK_NOFOLLOW

    def fallback() -> Any:
        return _os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

    res = await run_meta(
        drv,
        OP_STATX,
        lambda ring, ud: ring.prep_statx(dirfd, p, flags, _STATX_BASIC_STATS, buf, user_data=ud),
        fallback,
    )
    if isinstance(res, _os.stat_result):
        return res
    if res < 0:
        raise _error(res, path)
    return _stat_result(buf)


async def lstat(path: StrPath, *, dir_fd: int | None = None) -> _os.stat_result:
    """``os.lstat``: like :func:`stat` without following a final symlink."""
    return await stat(path, dir_fd=dir_fd, follow_symlinks=False)


async def rename(
    src: StrPath,
    dst: StrPath,
    *,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
) -> None:
    """``os.rename`` (renameat(2) on io_uring): rename *src* to *dst*,
    replacing *dst* if it is a file (Linux semantics, as ``os.rename``).

    Raises:
        OSError: what the kernel reports, with both names.
    """
    _check_path(src)
    _check_path(dst)
    drv = current_driver()

    def fallback() -> Any:
        _os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return 0

    res = await run_meta(
        drv,
        OP_RENAMEAT,
        lambda ring, ud: ring.prep_renameat(
            _dirfd(src_dir_fd), src, _dirfd(dst_dir_fd), dst, 0, user_data=ud
        ),
        fallback,
    )
    if res < 0:
        raise _error(res, src, None, dst)


async def replace(
    src: StrPath,
    dst: StrPath,
    *,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
) -> None:
    """``os.replace``: rename *src* to *dst*, replacing *dst* (see :func:`rename`)."""
    await rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)


async def _unlinkat(path: StrPath, dir_fd: int | None, flags: int) -> None:
    _check_path(path)
    drv = current_driver()

    def fallback() -> Any:
        if flags & _AT_REMOVEDIR:
            _os.rmdir(path, dir_fd=dir_fd)
        else:
            _os.unlink(path, dir_fd=dir_fd)
        return 0

    res = await run_meta(
        drv,
        OP_UNLINKAT,
        lambda ring, ud: ring.prep_unlinkat(_dirfd(dir_fd), path, flags, user_data=ud),
        fallback,
    )
    if res < 0:
        raise _error(res, path)


async def remove(path: StrPath, *, dir_fd: int | None = None) -> None:
    """``os.remove`` (unlinkat(2) on io_uring): delete the file *path*.

    Raises:
        OSError: ``FileNotFoundError``, ``IsADirectoryError``... with the name.
    """
    await _unlinkat(path, dir_fd, 0)


async def unlink(path: StrPath, *, dir_fd: int | None = None) -> None:
    """``os.unlink``: the same as :func:`remove`."""
    await _unlinkat(path, dir_fd, 0)


async def rmdir(path: StrPath, *, dir_fd: int | None = None) -> None:
    """``os.rmdir`` (unlinkat(2) with ``AT_REMOVEDIR``): remove the empty directory *path*.

    Raises:
        OSError: ``FileNotFoundError``, ``OSError(ENOTEMPTY)``, ``NotADirectoryError``...
    """
    await _unlinkat(path, dir_fd, _AT_REMOVEDIR)


async def mkdir(path: StrPath, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
    """``os.mkdir`` (mkdirat(2) on io_uring): create the directory *path*.

    Raises:
        OSError: ``FileExistsError``, ``FileNotFoundError``... with the name.
    """
    _check_path(path)
    if not isinstance(mode, int) or isinstance(mode, bool):
        raise TypeError(f"mode must be an int, not {type(mode).__name__!r}")
    drv = current_driver()

    def fallback() -> Any:
        _os.mkdir(path, mode, dir_fd=dir_fd)
        return 0

    res = await run_meta(
        drv,
        OP_MKDIRAT,
        lambda ring, ud: ring.prep_mkdirat(_dirfd(dir_fd), path, mode, user_data=ud),
        fallback,
    )
    if res < 0:
        raise _error(res, path)


async def makedirs(name: StrPath, mode: int = 0o777, exist_ok: bool = False) -> None:
    """``os.makedirs``: create *name* and any missing parents (each one a
    :func:`mkdir`).

    Raises:
        FileExistsError: *name* exists and *exist_ok* is false (or it is not a
            directory).
        OSError: what creating a component reports.
    """
    name = _os.fspath(name)
    head, tail = _os.path.split(name)
    if not tail:
        head, tail = _os.path.split(head)
    if head and tail and not await exists(head):
        try:
            await makedirs(head, exist_ok=exist_ok)
        except FileExistsError:
            pass  # another task made it
        cdir: Any = _os.curdir
        if isinstance(tail, bytes):
            cdir = bytes(_os.curdir, "ASCII")
        if tail == cdir:
            return
    try:
        await mkdir(name, mode)
    except OSError:
        if not exist_ok or not await isdir(name):
            raise


async def renames(old: StrPath, new: StrPath) -> None:
    """``os.renames``: rename, creating the new parents and pruning the old ones."""
    await current_driver().run_in_thread(_os.renames, old, new)


async def removedirs(name: StrPath) -> None:
    """``os.removedirs``: remove *name* and then its empty parents."""
    await current_driver().run_in_thread(_os.removedirs, name)


async def listdir(path: StrPath | int = ".") -> list[Any]:
    """``os.listdir`` (in a worker thread: io_uring has no getdents)."""
    return await current_driver().run_in_thread(_os.listdir, path)


async def scandir(path: StrPath | int = ".") -> Iterator[_os.DirEntry[Any]]:
    """``os.scandir``, fully read in a worker thread.

    Returns:
        An iterator over ``os.DirEntry`` objects (their ``stat()`` results
        are cached where the directory listing provided them).
    """

    def scan() -> list[_os.DirEntry[Any]]:
        with _os.scandir(path) as it:
            entries: list[_os.DirEntry[Any]] = list(it)
        for e in entries:  # fill the caches while we are in the thread
            try:
                e.is_dir()
            except OSError:
                pass
        return entries

    return iter(await current_driver().run_in_thread(scan))


async def link(
    src: StrPath,
    dst: StrPath,
    *,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
    follow_symlinks: bool = True,
) -> None:
    """``os.link`` (in a worker thread)."""

    def go() -> None:
        _os.link(
            src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=follow_symlinks
        )

    await current_driver().run_in_thread(go)


async def symlink(
    src: StrPath, dst: StrPath, target_is_directory: bool = False, *, dir_fd: int | None = None
) -> None:
    """``os.symlink`` (in a worker thread)."""

    def go() -> None:
        _os.symlink(src, dst, target_is_directory, dir_fd=dir_fd)

    await current_driver().run_in_thread(go)


async def readlink(path: StrPath, *, dir_fd: int | None = None) -> Any:
    """``os.readlink`` (in a worker thread)."""
    return await current_driver().run_in_thread(
        lambda: _os.readlink(path, dir_fd=dir_fd)  # type: ignore[type-var]
    )


async def access(
    path: StrPath,
    mode: int,
    *,
    dir_fd: int | None = None,
    effective_ids: bool = False,
    follow_symlinks: bool = True,
) -> bool:
    """``os.access`` (in a worker thread)."""

    def go() -> bool:
        return _os.access(
            path,
            mode,
            dir_fd=dir_fd,
            effective_ids=effective_ids,
            follow_symlinks=follow_symlinks,
        )

    return await current_driver().run_in_thread(go)


async def statvfs(path: StrPath | int) -> _os.statvfs_result:
    """``os.statvfs`` (in a worker thread)."""
    return await current_driver().run_in_thread(_os.statvfs, path)


async def getcwd() -> str:
    """``os.getcwd`` (in a worker thread)."""
    return await current_driver().run_in_thread(_os.getcwd)


# --- os.path -------------------------------------------------------------------------


async def _stat_or_none(path: Any, follow_symlinks: bool = True) -> _os.stat_result | None:
    try:
        return await stat(path, follow_symlinks=follow_symlinks)
    except (OSError, ValueError):
        return None


async def exists(path: StrPath | int) -> bool:
    """``os.path.exists``: True if *path* names an existing file (following symlinks)."""
    return await _stat_or_none(path) is not None


async def lexists(path: StrPath) -> bool:
    """``os.path.lexists``: True for an existing path, broken symlinks included."""
    return await _stat_or_none(path, False) is not None


async def isfile(path: StrPath) -> bool:
    """``os.path.isfile``: True for an existing regular file (following symlinks)."""
    st = await _stat_or_none(path)
    return st is not None and _stat.S_ISREG(st.st_mode)


async def isdir(path: StrPath) -> bool:
    """``os.path.isdir``: True for an existing directory (following symlinks)."""
    st = await _stat_or_none(path)
    return st is not None and _stat.S_ISDIR(st.st_mode)


async def islink(path: StrPath) -> bool:
    """``os.path.islink``: True for a symbolic link."""
    st = await _stat_or_none(path, False)
    return st is not None and _stat.S_ISLNK(st.st_mode)


async def getsize(path: StrPath | int) -> int:
    """``os.path.getsize``: the size in bytes (raises ``OSError`` as :func:`stat`)."""
    return (await stat(path)).st_size


async def getmtime(path: StrPath | int) -> float:
    """``os.path.getmtime``: last modification time (seconds since the epoch)."""
    return (await stat(path)).st_mtime


async def getatime(path: StrPath | int) -> float:
    """``os.path.getatime``: last access time."""
    return (await stat(path)).st_atime


async def getctime(path: StrPath | int) -> float:
    """``os.path.getctime``: last metadata change time."""
    return (await stat(path)).st_ctime


async def samefile(f1: StrPath, f2: StrPath) -> bool:
    """``os.path.samefile``: True if both name the same file."""
    s1, s2 = await stat(f1), await stat(f2)
    return _os.path.samestat(s1, s2)


async def ismount(path: StrPath) -> bool:
    """``os.path.ismount`` (in a worker thread)."""
    return await current_driver().run_in_thread(_os.path.ismount, path)


async def abspath(path: StrPath) -> Any:
    """``os.path.abspath`` (in a worker thread: it may call getcwd)."""
    return await current_driver().run_in_thread(_os.path.abspath, path)


#: The ``aiofiles.os.path`` functions: ``await xaio.os.path.exists(p)``.
path = SimpleNamespace(
    exists=exists,
    lexists=lexists,
    isfile=isfile,
    isdir=isdir,
    islink=islink,
    ismount=ismount,
    getsize=getsize,
    getmtime=getmtime,
    getatime=getatime,
    getctime=getctime,
    samefile=samefile,
    abspath=abspath,
)
