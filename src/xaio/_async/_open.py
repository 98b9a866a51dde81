"""``xaio.open``: the builtin ``open``'s arguments checked as it checks them,
the file opened (in the loop's thread when the dentry cache serves the open,
else ``openat`` on io_uring when the kernel has it, else ``os.open`` in a
worker thread: :mod:`xaio._async._pathops`), and the binary or text file
object made.
"""

from __future__ import annotations

import codecs
import errno
import fcntl
import io
import locale
import os
import stat
import warnings
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Union

from xaio._abi import uring as abi
from xaio._async._binary import AsyncFile
from xaio._async._checks import is_direct
from xaio._async._current import driver_for
from xaio._async._driver import Driver
from xaio._async._io import AsyncEngine
from xaio._async._pathops import OP_OPENAT, cached_opens_work, open_cached, run_pathop
from xaio._async._text import AsyncTextFile
from xaio._syscall import fstat_cached
from xaio.engine import ENGINE_NAMES
from xaio.engine._route import stat_and_kind

__all__ = ["open", "OpenContext"]

StrPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
_DEFAULT_BUFFER = 64 * 1024
_AT_FDCWD = -100
_ASYNC = abi.IOSQE_ASYNC


class _Mode:
    __slots__ = ("flags", "readable", "writable", "append", "binary", "file_mode")

    def __init__(self, mode: str) -> None:
        if not isinstance(mode, str):
            raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
        modes = set(mode)
        if modes - set("axrwb+t") or len(mode) > len(modes):
            raise ValueError(f"invalid mode: {mode!r}")
        creating, reading, writing, appending = (c in modes for c in "xrwa")
        updating = "+" in modes
        if "t" in modes and "b" in modes:
            raise ValueError("can't have text and binary mode at once")
        if creating + reading + writing + appending > 1:
            raise ValueError("must have exactly one of create/read/write/append mode")
        if not (creating or reading or writing or appending):
            raise ValueError(
                "Must have exactly one of create/read/write/append mode and at most one plus"
            )
        self.binary = "b" in modes
        self.readable = reading or updating
        self.writable = writing or appending or creating or updating
        self.append = appending
        flags = os.O_CLOEXEC
        if self.readable and self.writable:
            flags |= os.O_RDWR
        elif self.readable:
            flags |= os.O_RDONLY
        else:
            flags |= os.O_WRONLY
        if creating:
            flags |= os.O_CREAT | os.O_EXCL
        if writing:
            flags |= os.O_CREAT | os.O_TRUNC
        if appending:
            flags |= os.O_CREAT | os.O_APPEND
        self.flags = flags
        if creating:
            fm = "xb+" if self.readable else "xb"
        elif appending:
            fm = "ab+" if self.readable else "ab"
        elif reading:
            fm = "rb+" if self.writable else "rb"
        else:
            fm = "wb+" if self.readable else "wb"
        self.file_mode = fm


#: Parsed modes, by mode string (a _Mode is never changed once made).
_MODES: dict[str, _Mode] = {}


def _mode(mode: str) -> _Mode:
    """``_Mode(mode)``, parsed once per mode string."""
    m = _MODES.get(mode) if type(mode) is str else None
    if m is None:
        m = _Mode(mode)
        if len(_MODES) < 64:
            _MODES[mode] = m
    return m


def _validate(
    file: Any,
    mode: str,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
    closefd: bool,
) -> tuple[_Mode, str | None, bool, Any]:
    """The builtin open()'s argument checks (before anything is opened).

    Returns:
        The parsed mode, the text encoding (None in binary mode), whether
        *file* is an fd, and *file* (a path: ``os.fspath(file)``).
    """
    m = _mode(mode)
    if not isinstance(buffering, int) or isinstance(buffering, bool):
        raise TypeError(f"buffering must be an int, not {type(buffering).__name__!r}")
    if m.binary:
        if encoding is not None:
            raise ValueError("binary mode doesn't take an encoding argument")
        if errors is not None:
            raise ValueError("binary mode doesn't take an errors argument")
        if newline is not None:
            raise ValueError("binary mode doesn't take a newline argument")
        if buffering == 1:
            warnings.warn(
                "line buffering (buffering=1) isn't supported in binary mode, "
                "the default buffer size will be used",
                RuntimeWarning,
                stacklevel=3,
            )
    elif buffering == 0:
        raise ValueError("can't have unbuffered text I/O")
    if newline not in (None, "", "\n", "\r", "\r\n"):
        raise ValueError(f"illegal newline value: {newline!r}")
    if encoding is not None and not isinstance(encoding, str):
        raise TypeError(f"encoding must be str or None, not {type(encoding).__name__}")
    if errors is not None and not isinstance(errors, str):
        raise TypeError(f"errors must be str or None, not {type(errors).__name__}")
    text_encoding = None
    if not m.binary:
        text_encoding = encoding or locale.getpreferredencoding(False)
        codecs.lookup(text_encoding)  # LookupError before opening anything
    is_fd = isinstance(file, int) and not isinstance(file, bool)
    if not is_fd:
        file = os.fspath(file)  # TypeError for a bad path
        if not closefd:
            raise ValueError("Cannot use closefd=False with file name")
    elif file < 0:
        raise ValueError("negative file descriptor")
    return m, text_encoding, is_fd, file


async def _open_fd(
    drv: Driver, file: Any, flags: int
) -> tuple[int, os.stat_result, int] | tuple[int, None, int]:
    """The open in this thread when the dentry cache serves it
    (:func:`open_cached`, which also gives the fd's fstat and kind), else
    openat(2) on io_uring when the kernel has it, else os.open in a thread.

    Returns:
        The fd, and its fstat and kind if they were taken already (None, -1
        if not).
    """
    await drv._fair()  # (a cancellation here has opened nothing)
    res = open_cached(file, flags)
    if isinstance(res, tuple):
        return res
    if res is None:
        # In a kernel worker at once (IOSQE_ASYNC) where open_cached works:
        # what is left is what an inline attempt cannot do (a path not
        # cached, creating, a FIFO waiting for its other end), so the
        # attempt would only cost the loop.
        sqe_flags = _ASYNC if cached_opens_work() else 0
        res = await run_pathop(
            drv,
            OP_OPENAT,
            lambda ring, ud: ring.prep_openat(
                _AT_FDCWD, file, flags, 0o666, user_data=ud, sqe_flags=sqe_flags
            ),
            lambda: os.open(file, flags, 0o666),
            os.close,  # cancelled, yet opened: close it
            later=bool(sqe_flags),
        )
    if res < 0:
        e = -res
        raise OSError(e, os.strerror(e), file)
    return int(res), None, -1


async def _open(
    file: Any,
    mode: str,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
    closefd: bool,
    opener: Callable[[Any, int], int] | None,
    direct: bool,
    engine: AsyncEngine | str | None,
    checked: tuple[_Mode, str | None, bool, Any],
) -> AsyncFile | AsyncTextFile:
    # what open() found validating the arguments; a path as os.fspath gives
    # it (the builtin's file name, in errors and ``name``, and the opener's)
    m, text_encoding, is_fd, file = checked
    flags = m.flags
    if direct:
        # The partial blocks of an unaligned write are read, patched and written
        # back: the fd must be readable (write-only modes open O_RDWR), and a
        # write must go where the object puts it (O_APPEND is emulated).
        flags |= os.O_DIRECT
        if m.writable:
            flags = flags & ~(os.O_APPEND | os.O_ACCMODE) | os.O_RDWR
    drv = driver_for(engine)
    st: os.stat_result | None = None
    kind = -1  # the fd's kind, for a file that opens (and owns) its fd
    if is_fd:
        fd = file
        if direct and not is_direct(fd):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
    elif opener is not None:
        fd = opener(file, flags)
        if not isinstance(fd, int) or fd < 0:
            raise ValueError(f"opener returned {fd}")
    else:
        try:
            fd, st, kind = await _open_fd(drv, file, flags)
        except PermissionError:
            if not direct or flags == m.flags | os.O_DIRECT:
                raise
            # not readable (or appendable) by us: as asked, without read-modify-write
            fd, st, kind = await _open_fd(drv, file, m.flags | os.O_DIRECT)
    try:
        if st is None:
            if is_fd or opener is not None:
                st = fstat_cached(fd)
            else:
                st, kind = stat_and_kind(fd, direct)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), file)
        size = buffering
        if size < 0 or (size == 1 and not m.binary):
            size = max(st.st_blksize, io.DEFAULT_BUFFER_SIZE, _DEFAULT_BUFFER if direct else 0)
            size = max(size, _DEFAULT_BUFFER)
        raw = AsyncFile(
            fd,
            file,
            m.file_mode,
            readable=m.readable,
            writable=m.writable,
            append=m.append,
            buffer_size=size,
            closefd=closefd,
            direct=direct,
            engine=engine,
            st=st,
            fresh=not is_fd and opener is None,
            kind=kind,
        )
    except BaseException:
        if closefd:
            os.close(fd)
        raise
    if m.binary:
        return raw
    assert text_encoding is not None
    return AsyncTextFile(
        raw,
        mode,
        text_encoding,
        errors or "strict",
        newline,
        line_buffering=buffering == 1,
    )


class OpenContext:
    """What :func:`xaio.open` returns: await it for the file, or use it with
    ``async with`` (which closes the file on exit), as with ``aiofiles.open``."""

    __slots__ = ("_coro_args", "_file")

    def __init__(self, args: tuple[Any, ...]) -> None:
        self._coro_args = args
        self._file: AsyncFile | AsyncTextFile | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        return _open(*self._coro_args).__await__()

    async def __aenter__(self) -> Any:
        self._file = await _open(*self._coro_args)
        return self._file

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        f, self._file = self._file, None
        if f is not None:
            await f.close()


def open(
    file: StrPath | int,
    mode: str = "r",
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    closefd: bool = True,
    opener: Callable[[Any, int], int] | None = None,
    *,
    direct: bool = False,
    engine: AsyncEngine | str | None = None,
) -> OpenContext:
    """Open a file for async I/O: the builtin ``open``'s arguments, plus
    *direct* and *engine*.  ``f = await xaio.open(...)`` or ``async with
    xaio.open(...) as f``.

    Args:
        file: a path, or an open file descriptor.
        mode: as the builtin's (``"r"``, ``"wb"``, ``"a+"``, ``"x"``...).
        buffering: -1 for the default buffer size, 0 for unbuffered (binary
            only), 1 for line buffering (text only), else the buffer size.
        encoding, errors, newline: as the builtin's (text mode only).
        closefd: close the fd when the file is closed (must be True for a path).
        opener: ``opener(file, flags) -> fd``, called synchronously.
        direct: open with ``O_DIRECT``; unaligned requests still work in
            every mode (see :class:`AsyncFile`).  A read-modify-write needs
            read access, so the file is opened ``O_RDWR`` even for ``"wb"``
            (write-only again if that is refused: then an unaligned write
            fails with ``EBADF``), and without ``O_APPEND``: append mode is
            done by the object (every write goes to the end of the file as
            it is then; not atomic against other appenders).
        engine: an :func:`xaio.open_engine` engine, or the name of an engine
            kind (``"uring"``, ``"linux"``, ``"thread"``): the running loop's
            engine of that kind, made on first use and closed with the loop;
            default: the running loop's default engine.

    Returns:
        An :class:`OpenContext` that gives an :class:`AsyncFile` (binary modes)
        or :class:`AsyncTextFile` (text modes).

    Raises:
        ValueError, TypeError: invalid arguments (as the builtin's; an
            unknown engine name or an engine of the wrong type too).
        LookupError: unknown encoding.
        OSError: what opening reports (``FileNotFoundError``, ``IsADirectoryError``,
            ``EINVAL`` for ``O_DIRECT`` on a file system without it...).
    """
    checked = _validate(file, mode, buffering, encoding, errors, newline, closefd)
    if isinstance(engine, str):
        if engine not in ENGINE_NAMES:
            raise ValueError(
                f"unknown engine {engine!r}: expected one of {', '.join(ENGINE_NAMES)}"
            )
    elif engine is not None and not isinstance(engine, AsyncEngine):
        raise TypeError(
            "engine must be an engine name or an xaio.open_engine() engine, "
            f"not {type(engine).__name__!r}"
        )
    return OpenContext(
        (file, mode, buffering, encoding, errors, newline, closefd, opener, direct, engine, checked)
    )
