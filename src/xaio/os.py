"""Async versions of :mod:`os` file-system functions (the ``aiofiles.os`` surface).

``await xaio.os.stat(path)`` and friends never block the event loop.  When
the running loop's engine is io_uring and the kernel has the opcode, the call
is one io_uring request (``IORING_OP_STATX``, ``RENAMEAT``, ``UNLINKAT``,
``MKDIRAT``); otherwise the :mod:`os` function runs in a worker thread.  Names,
arguments, results and exceptions are those of :mod:`os` and
:mod:`os.path` (``FileNotFoundError`` with the file name, ...), so code written
for ``aiofiles.os`` switches by changing the import; ``xaio.os.path`` holds
the ``aiofiles.os.path`` functions.

*Arguments and errors.*  On io_uring the arguments are checked as the
:mod:`os` function checks them (the same ``TypeError``/``ValueError``, before
any system call), and a kernel error comes back as the ``OSError`` :mod:`os`
raises, with the same file name (a path as ``os.fspath`` gives it, an fd as
the int).  What only :mod:`os` itself can judge -- a bool or an ``__index__``
object used as an fd, a buffer used as a path, an fd or ``dir_fd`` outside
the C ``int`` range, an fd with ``dir_fd`` or ``follow_symlinks=False`` -- runs
the :mod:`os` function in a worker thread instead, so its answer is the
:mod:`os` one by construction.  ``tests/async_/test_parity_os.py`` runs every
function side by side with :mod:`os` on every engine.

Beyond :mod:`os`: :func:`scandir` reads the whole directory in a thread and
returns an iterator that is also a context manager (``with await
xaio.os.scandir(p) as it``); :func:`sendfile` waits in the event loop for a
non-blocking socket to become writable instead of raising
``BlockingIOError``; :func:`wrap` (as ``aiofiles.os.wrap``) makes any blocking
function a coroutine function run in a worker thread.

A cancelled call is cancelled in the kernel (io_uring) or waited for (a
thread cannot be stopped) before ``CancelledError`` reaches the caller, so
when it does, the operation has either happened or not -- it is not still
running.
"""

from __future__ import annotations

import ctypes
import fcntl as _fcntl
import functools
import operator as _operator
import os as _os
import select as _select
import stat as _stat
from collections.abc import Callable, Coroutine, Iterator
from types import SimpleNamespace
from typing import Any, TypeVar, Union

from xaio import _syscall
from xaio._async._current import current_driver
from xaio._async._pathops import OP_MKDIRAT, OP_RENAMEAT, OP_STATX, OP_UNLINKAT, run_pathop

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
    "sendfile",
    "wrap",
    "ScandirIterator",
    "exists",
    "lexists",
    "isfile",
    "isdir",
    "islink",
    "getsize",
    "getmtime",
    "getatime",
    "getctime",
    "samefile",
    "sameopenfile",
    "ismount",
    "abspath",
    "path",
]

T = TypeVar("T")
StrPath = Union[str, bytes, "_os.PathLike[str]", "_os.PathLike[bytes]"]

_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_REMOVEDIR = 0x200
_AT_EMPTY_PATH = _syscall.AT_EMPTY_PATH
_STATX_BASIC_STATS = _syscall.STATX_BASIC_STATS
_STATX_SIZE = _syscall.STATX_SIZE
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


class _AskOs:
    """The marker of an argument only the :mod:`os` function itself can judge
    (a bool or ``__index__`` object as an fd, a buffer as a path, an fd out of
    range...): the call then runs the :mod:`os` function in a worker thread, so
    its warnings, exceptions and results are the :mod:`os` ones exactly."""


_ASK_OS = _AskOs()


def _path_arg(func: str, arg: str, path: Any, *, allow_fd: bool = False) -> Any:
    """*path* as :mod:`os` would pass it to the kernel: a str or bytes
    (``os.fspath`` applied, no NUL), an fd in ``0..INT_MAX`` (if *allow_fd*),
    or :data:`_ASK_OS`.

    Raises:
        TypeError: not a path (nor an fd where one is allowed), as :mod:`os` says it.
        ValueError: an embedded NUL.
    """
    tp = type(path)
    if tp is int:
        if not allow_fd:
            raise TypeError(f"{func}: {arg} should be string, bytes or os.PathLike, not int")
        return path if 0 <= path <= _INT_MAX else _ASK_OS  # os: EBADF, EFAULT, OverflowError
    if tp is not str and tp is not bytes:
        if isinstance(path, (str, bytes)):
            pass
        elif hasattr(tp, "__fspath__"):
            path = _os.fspath(path)  # TypeError for a bad __fspath__ result
        elif (allow_fd and hasattr(tp, "__index__")) or _is_buffer(path):
            return _ASK_OS
        else:
            also = ", os.PathLike or integer" if allow_fd else " or os.PathLike"
            raise TypeError(f"{func}: {arg} should be string, bytes{also}, not {tp.__name__}")
    if ("\0" if isinstance(path, str) else b"\0") in path:
        raise ValueError(f"{func}: embedded null character in {arg}")
    return path


def _is_buffer(obj: Any) -> bool:
    try:
        memoryview(obj).release()
    except TypeError:
        return False
    return True


def _dir_fd_arg(dir_fd: Any) -> Any:
    """A ``dir_fd`` argument as the kernel takes it (None is ``AT_FDCWD``), or
    :data:`_ASK_OS`.

    Raises:
        TypeError: neither an integer nor None.
    """
    if dir_fd is None:
        return _AT_FDCWD
    if type(dir_fd) is int:
        return dir_fd if _INT_MIN <= dir_fd <= _INT_MAX else _ASK_OS
    if hasattr(type(dir_fd), "__index__"):
        return _ASK_OS
    raise TypeError(f"argument should be integer or None, not {type(dir_fd).__name__}")


def _error(res: int, *names: Any) -> OSError:
    """The OSError the os module would raise (file names as it reports them)."""
    e = -res
    return OSError(e, _os.strerror(e), *names)


async def _statx(path: Any, dirfd: int, flags: int, fallback: Callable[[], Any]) -> Any:
    """statx(2) on the path-operation ring (*fallback* in a thread elsewhere)."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    res = await run_pathop(
        current_driver(),
        OP_STATX,
        lambda ring, ud: ring.prep_statx(dirfd, path, flags, _STATX_BASIC_STATS, buf, user_data=ud),
        fallback,
    )
    if isinstance(res, _os.stat_result):
        return res
    if res < 0:
        raise _error(res, path)
    return _syscall.stat_result(buf)


async def stat(
    path: StrPath | int, *, dir_fd: int | None = None, follow_symlinks: bool = True
) -> _os.stat_result:
    """``os.stat`` (statx(2) on io_uring): the status of *path*, or of the
    open file descriptor *path*.

    Args:
        dir_fd: a directory fd that a relative *path* is taken from.
        follow_symlinks: false: the status of a final symlink itself.

    Returns:
        An ``os.stat_result``.

    Raises:
        TypeError/ValueError: as ``os.stat`` (not a path or fd, embedded NUL,
            *dir_fd* or ``follow_symlinks=False`` with an fd).
        OSError: ``FileNotFoundError``, ``PermissionError``, EBADF... with the
            file name (or the fd) as ``os.stat`` gives it.
    """
    p = _path_arg("stat", "path", path, allow_fd=True)
    d = _dir_fd_arg(dir_fd)

    def fallback() -> Any:
        return _os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

    if (
        p is _ASK_OS
        or d is _ASK_OS
        or (type(p) is int and (dir_fd is not None or not follow_symlinks))
    ):
        return await current_driver().run_in_thread(fallback)  # os's own checks and errors
    if type(p) is int:
        return await _fd_statx(p, fallback, p)
    return await _statx(p, d, 0 if follow_symlinks else _AT_SYMLINK_NOFOLLOW, fallback)  # type: ignore[no-any-return]


async def _fd_statx(fd: int, fallback: Callable[[], Any], name: Any = None) -> _os.stat_result:
    """The status of the open fd *fd* (``0 <= fd <= INT_MAX``); an error names
    *name* (``os.stat(fd)`` names the fd, ``os.fstat`` nothing)."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    res = await run_pathop(
        current_driver(),
        OP_STATX,
        lambda ring, ud: ring.prep_statx(
            fd, b"", _AT_EMPTY_PATH, _STATX_BASIC_STATS, buf, user_data=ud
        ),
        fallback,
    )
    if isinstance(res, _os.stat_result):
        return res
    if res < 0:
        raise _error(res, *(() if name is None else (name,)))
    return _syscall.stat_result(buf)


async def lstat(path: StrPath, *, dir_fd: int | None = None) -> _os.stat_result:
    """``os.lstat``: like :func:`stat` without following a final symlink (and,
    as ``os.lstat``, for a path only: an fd is a TypeError)."""
    p = _path_arg("lstat", "path", path)
    d = _dir_fd_arg(dir_fd)

    def fallback() -> Any:
        return _os.lstat(path, dir_fd=dir_fd)

    if p is _ASK_OS or d is _ASK_OS:
        return await current_driver().run_in_thread(fallback)
    return await _statx(p, d, _AT_SYMLINK_NOFOLLOW, fallback)  # type: ignore[no-any-return]


async def _renameat(func: str, src: Any, dst: Any, src_dir_fd: Any, dst_dir_fd: Any) -> None:
    s = _path_arg(func, "src", src)
    t = _path_arg(func, "dst", dst)
    sd, td = _dir_fd_arg(src_dir_fd), _dir_fd_arg(dst_dir_fd)
    call = _os.rename if func == "rename" else _os.replace

    def fallback() -> Any:
        call(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return 0

    if _ASK_OS in (s, t, sd, td):
        await current_driver().run_in_thread(fallback)
        return
    res = await run_pathop(
        current_driver(),
        OP_RENAMEAT,
        lambda ring, ud: ring.prep_renameat(sd, s, td, t, 0, user_data=ud),
        fallback,
    )
    if res < 0:
        raise _error(res, s, None, t)


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
        TypeError/ValueError: as ``os.rename``.
        OSError: what the kernel reports, with both names.
    """
    await _renameat("rename", src, dst, src_dir_fd, dst_dir_fd)


async def replace(
    src: StrPath,
    dst: StrPath,
    *,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
) -> None:
    """``os.replace``: rename *src* to *dst*, replacing *dst* (see :func:`rename`)."""
    await _renameat("replace", src, dst, src_dir_fd, dst_dir_fd)


async def _unlinkat(func: str, path: Any, dir_fd: Any, flags: int) -> None:
    p = _path_arg(func, "path", path)
    d = _dir_fd_arg(dir_fd)
    call = _os.rmdir if flags & _AT_REMOVEDIR else _os.remove if func == "remove" else _os.unlink

    def fallback() -> Any:
        call(path, dir_fd=dir_fd)
        return 0

    if p is _ASK_OS or d is _ASK_OS:
        await current_driver().run_in_thread(fallback)
        return
    res = await run_pathop(
        current_driver(),
        OP_UNLINKAT,
        lambda ring, ud: ring.prep_unlinkat(d, p, flags, user_data=ud),
        fallback,
    )
    if res < 0:
        raise _error(res, p)


async def remove(path: StrPath, *, dir_fd: int | None = None) -> None:
    """``os.remove`` (unlinkat(2) on io_uring): delete the file *path*.

    Raises:
        OSError: ``FileNotFoundError``, ``IsADirectoryError``... with the name.
    """
    await _unlinkat("remove", path, dir_fd, 0)


async def unlink(path: StrPath, *, dir_fd: int | None = None) -> None:
    """``os.unlink``: the same as :func:`remove`."""
    await _unlinkat("unlink", path, dir_fd, 0)


async def rmdir(path: StrPath, *, dir_fd: int | None = None) -> None:
    """``os.rmdir`` (unlinkat(2) with ``AT_REMOVEDIR``): remove the empty directory *path*.

    Raises:
        OSError: ``FileNotFoundError``, ``OSError(ENOTEMPTY)``, ``NotADirectoryError``...
    """
    await _unlinkat("rmdir", path, dir_fd, _AT_REMOVEDIR)


async def mkdir(path: StrPath, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
    """``os.mkdir`` (mkdirat(2) on io_uring): create the directory *path*
    with *mode* (less the umask).

    Raises:
        TypeError/ValueError/OverflowError: as ``os.mkdir``.
        OSError: ``FileExistsError``, ``FileNotFoundError``... with the name.
    """
    p = _path_arg("mkdir", "path", path)
    m = _operator.index(mode)  # TypeError as os.mkdir's
    d = _dir_fd_arg(dir_fd)

    def fallback() -> Any:
        _os.mkdir(path, mode, dir_fd=dir_fd)
        return 0

    if p is _ASK_OS or d is _ASK_OS or not _INT_MIN <= m <= _INT_MAX:
        await current_driver().run_in_thread(fallback)
        return
    res = await run_pathop(
        current_driver(),
        OP_MKDIRAT,
        lambda ring, ud: ring.prep_mkdirat(d, p, m & 0xFFFFFFFF, user_data=ud),
        fallback,
    )
    if res < 0:
        raise _error(res, p)


async def makedirs(name: StrPath, mode: int = 0o777, exist_ok: bool = False) -> None:
    """``os.makedirs``: create *name* and any missing parents (each one a
    :func:`mkdir`).

    Raises:
        FileExistsError: *name* exists and *exist_ok* is false (or it is not a
            directory).
        OSError: what creating a component reports.
    """
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


_NOT_GIVEN: Any = object()


async def listdir(path: StrPath | int | None = None) -> list[Any]:
    """``os.listdir`` (in a worker thread: io_uring has no getdents)."""
    return await current_driver().run_in_thread(_os.listdir, path)


class ScandirIterator:
    """What :func:`scandir` returns: the ``os.DirEntry`` objects of a
    directory, read in full by a worker thread.  Like ``os.scandir``'s
    iterator it is an iterator and a context manager with ``close()``
    (nothing stays open: closing just ends the iteration)."""

    def __init__(self, entries: list[_os.DirEntry[Any]]) -> None:
        self._it: Iterator[_os.DirEntry[Any]] = iter(entries)

    def __iter__(self) -> ScandirIterator:
        return self

    def __next__(self) -> _os.DirEntry[Any]:
        return next(self._it)

    def close(self) -> None:
        """End the iteration (``os.scandir().close()``)."""
        self._it = iter(())

    def __enter__(self) -> ScandirIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def scandir(path: StrPath | int | None = _NOT_GIVEN) -> ScandirIterator:
    """``os.scandir``, the directory read in full in a worker thread:
    ``with await xaio.os.scandir(p) as it: for entry in it: ...``.

    Returns:
        A :class:`ScandirIterator` over ``os.DirEntry`` objects; their
        ``is_dir()`` answer is already cached (looked up in the thread).

    Raises:
        TypeError/OSError: as ``os.scandir``.
    """

    def scan() -> list[_os.DirEntry[Any]]:
        with _os.scandir() if path is _NOT_GIVEN else _os.scandir(path) as it:
            entries: list[_os.DirEntry[Any]] = list(it)
        for e in entries:  # fill the caches while we are in the thread
            try:
                e.is_dir()
            except OSError:
                pass
        return entries

    return ScandirIterator(await current_driver().run_in_thread(scan))


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


async def sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
    """``os.sendfile`` (sendfile(2)): copy up to *count* bytes from *in_fd*
    (at *offset*, or at its file position, which then advances, if *offset*
    is None) to *out_fd*, in the kernel.

    The system call runs in a worker thread: reading *in_fd* may wait for a
    disk.  When *out_fd* is non-blocking (an asyncio socket...) and cannot
    take data yet, the call does not fail with ``BlockingIOError`` as
    ``os.sendfile`` would: it waits for *out_fd* to become writable in the
    event loop (for *in_fd* to become readable, if *in_fd* is the one that
    would block), then sends -- the thread never waits for a peer.  A
    blocking *out_fd* (a blocking socket or pipe) is written as ``os.sendfile``
    writes it, so the thread (and a cancelled call, which waits for it) waits
    for the peer.  A cancelled call may have sent data.

    Returns:
        The number of bytes sent (0 at the end of *in_fd*); like
        ``os.sendfile`` it may be less than *count*.

    Raises:
        TypeError: an argument that is not an integer (*offset* may be None).
        OSError: what ``os.sendfile`` raises (EBADF, ESPIPE, EINVAL...).
    """
    out = _operator.index(out_fd)
    src = _operator.index(in_fd)
    if offset is not None:
        _operator.index(offset)
    _operator.index(count)
    drv = current_driver()
    try:
        nonblocking = bool(_fcntl.fcntl(out, _fcntl.F_GETFL) & _os.O_NONBLOCK)
    except (OSError, OverflowError):
        nonblocking = False  # os.sendfile reports it
    while True:
        try:
            return await drv.run_in_thread(_os.sendfile, out_fd, in_fd, offset, count)
        except BlockingIOError:
            if not nonblocking:
                raise  # a non-blocking in_fd with a blocking out_fd: os's answer
        # which side would block?  wait for that one in the event loop
        p = _select.poll()
        p.register(out, _select.POLLOUT)
        if p.poll(0):
            await drv.wait_readable(src)
        else:
            await drv.wait_writable(out)


# --- os.path -------------------------------------------------------------------------


async def _stat_or_none(path: Any) -> _os.stat_result | None:
    try:
        return await stat(path)
    except (OSError, ValueError):
        return None


async def _lstat_or_none(path: Any) -> _os.stat_result | None:
    try:
        return await lstat(path)
    except (OSError, ValueError):
        return None


async def exists(path: StrPath | int) -> bool:
    """``os.path.exists``: True if *path* names an existing file (following
    symlinks) or is an open fd; False for what ``os.stat`` fails on with
    ``OSError`` or ``ValueError``.

    Raises:
        TypeError: *path* is neither a path nor an integer.
    """
    return await _stat_or_none(path) is not None


async def lexists(path: StrPath) -> bool:
    """``os.path.lexists``: True for an existing path, broken symlinks included."""
    return await _lstat_or_none(path) is not None


async def isfile(path: StrPath | int) -> bool:
    """``os.path.isfile``: True for an existing regular file (following symlinks)."""
    st = await _stat_or_none(path)
    return st is not None and _stat.S_ISREG(st.st_mode)


async def isdir(path: StrPath | int) -> bool:
    """``os.path.isdir``: True for an existing directory (following symlinks)."""
    st = await _stat_or_none(path)
    return st is not None and _stat.S_ISDIR(st.st_mode)


async def islink(path: StrPath) -> bool:
    """``os.path.islink``: True for a symbolic link (a path: an fd is a TypeError)."""
    st = await _lstat_or_none(path)
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


async def samefile(f1: StrPath | int, f2: StrPath | int) -> bool:
    """``os.path.samefile``: True if both name the same file."""
    s1 = await stat(f1)
    s2 = await stat(f2)
    return _os.path.samestat(s1, s2)


async def sameopenfile(fp1: int, fp2: int) -> bool:
    """``os.path.sameopenfile``: True if the fds *fp1* and *fp2* are open on
    the same file.

    Raises:
        TypeError: not integers.
        OSError: EBADF for an fd that is not open.
    """
    s1 = await _fstat(fp1)
    s2 = await _fstat(fp2)
    return _os.path.samestat(s1, s2)


async def _fstat(fd: int) -> _os.stat_result:
    """``os.fstat``."""
    n = _operator.index(fd)  # TypeError as os.fstat's

    def fallback() -> Any:
        return _os.fstat(fd)

    if type(fd) is not int or not 0 <= n <= _INT_MAX:
        return await current_driver().run_in_thread(fallback)
    return await _fd_statx(n, fallback)


async def ismount(path: StrPath) -> bool:
    """``os.path.ismount`` (in a worker thread)."""
    return await current_driver().run_in_thread(_os.path.ismount, path)


async def abspath(path: StrPath) -> Any:
    """``os.path.abspath`` (in a worker thread: it may call getcwd)."""
    return await current_driver().run_in_thread(_os.path.abspath, path)


def wrap(func: Callable[..., T]) -> Callable[..., Coroutine[Any, Any, T]]:
    """``aiofiles.os.wrap``: an async version of the blocking function *func*
    that runs it in a worker thread of the running event loop (asyncio or
    trio); a cancelled call waits for the thread to finish.

    Returns:
        A coroutine function taking *func*'s arguments.
    """

    @functools.wraps(func)
    async def run(*args: Any, **kwargs: Any) -> T:
        return await current_driver().run_in_thread(functools.partial(func, *args, **kwargs))

    return run


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
    sameopenfile=sameopenfile,
    abspath=abspath,
)
