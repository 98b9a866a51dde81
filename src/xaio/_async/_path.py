"""An async :class:`pathlib.Path`: :class:`Path`.

``xaio.Path`` wraps a ``pathlib.Path``, in the shape of ``anyio.Path`` and
``trio.Path``: the pure parts (``name``, ``suffix``, ``parent``, ``/``,
``joinpath``, ``with_suffix``...) are plain attributes and methods, and
everything that touches the file system is a coroutine (``await
p.read_bytes()``, ``await p.stat()``) or an async iterator (``async for child
in p.iterdir()``).

The I/O is :mod:`xaio.os` (``stat``, ``rename``, ``unlink``, ``mkdir``,
``rmdir`` are io_uring requests where the kernel has the opcode, a worker
thread otherwise) and :func:`xaio.open` (whole-file reads and writes);
``resolve``, ``touch``, ``glob`` and the directory listings run the pathlib
method in a worker thread.  Results and exceptions are pathlib's: a missing
path raises ``FileNotFoundError`` with the path as its file name, a
directory read as a file ``IsADirectoryError``, and ``exists()`` /
``is_dir()``... answer False where pathlib does (a missing path, a file
where a directory was expected, a symlink loop) and raise what pathlib
raises otherwise (``PermissionError``).
"""

from __future__ import annotations

import errno
import io
import os
import pathlib
import secrets
import stat as _stat
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, TypeVar, Union

from xaio import os as _xos
from xaio._async._current import current_driver
from xaio._async._io import fsync as _fsync
from xaio._async._open import OpenContext, open
from xaio._async._wholefile import read_bytes as _read_bytes

__all__ = ["Path"]

T = TypeVar("T")
StrPath = Union[str, "os.PathLike[str]"]

#: The errnos for which pathlib's ``exists``/``is_*`` answer False instead of raising.
_IGNORED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})


async def _thread(fn: Callable[..., T], *args: Any) -> T:
    return await current_driver().run_in_thread(fn, *args)


class _Listing:
    """An async iterator over paths a blocking pathlib call lists, made in a
    worker thread on the first step (so errors surface there, as pathlib's
    generators raise on the first ``next``)."""

    __slots__ = ("_make", "_items")

    def __init__(self, make: Callable[[], Iterable[pathlib.Path]]) -> None:
        self._make = make
        self._items: Any = None

    def __aiter__(self) -> _Listing:
        return self

    async def __anext__(self) -> Path:
        if self._items is None:
            make = self._make
            self._items = iter(await _thread(lambda: list(make())))
        try:
            return Path(next(self._items))
        except StopIteration:
            raise StopAsyncIteration from None


class Path:
    """An async ``pathlib.Path`` (as ``anyio.Path`` and ``trio.Path``).

    ``xaio.Path(*parts)`` takes what ``pathlib.Path`` takes (strings, path
    objects).  Pure path operations are synchronous and return
    :class:`Path` objects; file-system operations are coroutines with
    pathlib's arguments, results and exceptions.  ``os.fspath(p)`` and
    ``str(p)`` give the path, so a :class:`Path` goes wherever a path does.
    """

    __slots__ = ("_path",)

    def __init__(self, *args: StrPath) -> None:
        self._path = pathlib.Path(*args)

    # -- the pure part ---------------------------------------------------------------

    def __fspath__(self) -> str:
        return os.fspath(self._path)

    def __str__(self) -> str:
        return str(self._path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._path)!r})"

    def __bytes__(self) -> bytes:
        return bytes(self._path)

    def __hash__(self) -> int:
        return hash(self._path)

    @staticmethod
    def _pure(other: Any) -> Any:
        return other._path if isinstance(other, Path) else other

    def __eq__(self, other: object) -> bool:
        return bool(self._path == self._pure(other))

    def __lt__(self, other: Path | pathlib.PurePath) -> bool:
        return bool(self._path < self._pure(other))

    def __le__(self, other: Path | pathlib.PurePath) -> bool:
        return bool(self._path <= self._pure(other))

    def __gt__(self, other: Path | pathlib.PurePath) -> bool:
        return bool(self._path > self._pure(other))

    def __ge__(self, other: Path | pathlib.PurePath) -> bool:
        return bool(self._path >= self._pure(other))

    def __truediv__(self, other: StrPath) -> Path:
        return Path(self._path / self._pure(other))

    def __rtruediv__(self, other: StrPath) -> Path:
        return Path(self._pure(other) / self._path)

    @property
    def path(self) -> pathlib.Path:
        """The wrapped ``pathlib.Path``."""
        return self._path

    @property
    def parts(self) -> tuple[str, ...]:
        """``pathlib.PurePath.parts``."""
        return self._path.parts

    @property
    def drive(self) -> str:
        """``pathlib.PurePath.drive`` (empty on Linux)."""
        return self._path.drive

    @property
    def root(self) -> str:
        """``pathlib.PurePath.root``."""
        return self._path.root

    @property
    def anchor(self) -> str:
        """``pathlib.PurePath.anchor``."""
        return self._path.anchor

    @property
    def parents(self) -> Sequence[Path]:
        """``pathlib.PurePath.parents``, as :class:`Path` objects."""
        return tuple(Path(p) for p in self._path.parents)

    @property
    def parent(self) -> Path:
        """``pathlib.PurePath.parent``."""
        return Path(self._path.parent)

    @property
    def name(self) -> str:
        """``pathlib.PurePath.name``."""
        return self._path.name

    @property
    def suffix(self) -> str:
        """``pathlib.PurePath.suffix``."""
        return self._path.suffix

    @property
    def suffixes(self) -> list[str]:
        """``pathlib.PurePath.suffixes``."""
        return self._path.suffixes

    @property
    def stem(self) -> str:
        """``pathlib.PurePath.stem``."""
        return self._path.stem

    def as_posix(self) -> str:
        """``pathlib.PurePath.as_posix``."""
        return self._path.as_posix()

    def as_uri(self) -> str:
        """``pathlib.PurePath.as_uri`` (ValueError for a relative path)."""
        return self._path.as_uri()

    def is_absolute(self) -> bool:
        """``pathlib.PurePath.is_absolute``."""
        return self._path.is_absolute()

    def is_relative_to(self, other: StrPath) -> bool:
        """``pathlib.PurePath.is_relative_to``."""
        return self._path.is_relative_to(self._pure(other))

    def joinpath(self, *other: StrPath) -> Path:
        """``pathlib.PurePath.joinpath``."""
        return Path(self._path.joinpath(*(self._pure(o) for o in other)))

    def match(self, pattern: str) -> bool:
        """``pathlib.PurePath.match``."""
        return self._path.match(pattern)

    def relative_to(self, other: StrPath) -> Path:
        """``pathlib.PurePath.relative_to`` (ValueError if not relative)."""
        return Path(self._path.relative_to(self._pure(other)))

    def with_name(self, name: str) -> Path:
        """``pathlib.PurePath.with_name``."""
        return Path(self._path.with_name(name))

    def with_stem(self, stem: str) -> Path:
        """``pathlib.PurePath.with_stem``."""
        return Path(self._path.with_stem(stem))

    def with_suffix(self, suffix: str) -> Path:
        """``pathlib.PurePath.with_suffix``."""
        return Path(self._path.with_suffix(suffix))

    def expanduser(self) -> Path:
        """``pathlib.Path.expanduser`` (reads the environment, no I/O)."""
        return Path(self._path.expanduser())

    # -- status ----------------------------------------------------------------------

    async def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        """``pathlib.Path.stat`` (statx(2) on io_uring).

        Raises:
            FileNotFoundError, PermissionError, NotADirectoryError...: as pathlib.
        """
        return await _xos.stat(self._path, follow_symlinks=follow_symlinks)

    async def lstat(self) -> os.stat_result:
        """``pathlib.Path.lstat``: the status of a final symlink itself."""
        return await _xos.lstat(self._path)

    async def _mode(self, follow_symlinks: bool) -> int | None:
        """The file's mode, or None where pathlib's ``exists``/``is_*``
        answer False (ENOENT, ENOTDIR, EBADF, ELOOP; a path with a NUL)."""
        try:
            return (await _xos.stat(self._path, follow_symlinks=follow_symlinks)).st_mode
        except OSError as e:
            if e.errno in _IGNORED:
                return None
            raise
        except ValueError:
            return None

    async def exists(self, *, follow_symlinks: bool = True) -> bool:
        """``pathlib.Path.exists``: False for a missing path; raises what
        the stat raises otherwise (``PermissionError``)."""
        return await self._mode(follow_symlinks) is not None

    async def is_file(self) -> bool:
        """``pathlib.Path.is_file`` (a regular file, after symlinks)."""
        mode = await self._mode(True)
        return mode is not None and _stat.S_ISREG(mode)

    async def is_dir(self) -> bool:
        """``pathlib.Path.is_dir`` (a directory, after symlinks)."""
        mode = await self._mode(True)
        return mode is not None and _stat.S_ISDIR(mode)

    async def is_symlink(self) -> bool:
        """``pathlib.Path.is_symlink``."""
        mode = await self._mode(False)
        return mode is not None and _stat.S_ISLNK(mode)

    async def samefile(self, other: StrPath) -> bool:
        """``pathlib.Path.samefile``: both paths name the same file."""
        a = await self.stat()
        b = await _xos.stat(self._pure(other))
        return a.st_ino == b.st_ino and a.st_dev == b.st_dev

    # -- directories -------------------------------------------------------------------

    def iterdir(self) -> AsyncIterator[Path]:
        """``pathlib.Path.iterdir``: ``async for child in p.iterdir()``
        (the listing is read in a worker thread on the first step, where a
        missing directory raises ``FileNotFoundError``)."""
        return _Listing(self._path.iterdir)

    def glob(self, pattern: str) -> AsyncIterator[Path]:
        """``pathlib.Path.glob``: ``async for match in p.glob("*.txt")``."""
        return _Listing(lambda: self._path.glob(pattern))

    def rglob(self, pattern: str) -> AsyncIterator[Path]:
        """``pathlib.Path.rglob``: :meth:`glob` in every subdirectory too."""
        return _Listing(lambda: self._path.rglob(pattern))

    async def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        """``pathlib.Path.mkdir`` (mkdirat(2) on io_uring).

        Args:
            mode: the permissions, less the umask.
            parents: create missing parents too (with the default mode).
            exist_ok: no error if the directory already exists.

        Raises:
            FileExistsError: the path exists (and is not a directory, or
                *exist_ok* is false).
            FileNotFoundError: a parent is missing and *parents* is false.
        """
        try:
            await _xos.mkdir(self._path, mode)
        except FileNotFoundError:
            if not parents or self._path.parent == self._path:
                raise
            await self.parent.mkdir(parents=True, exist_ok=True)
            await self.mkdir(mode, parents=False, exist_ok=exist_ok)
        except OSError:
            if not exist_ok or not await self.is_dir():
                raise

    async def rmdir(self) -> None:
        """``pathlib.Path.rmdir``: remove the empty directory."""
        await _xos.rmdir(self._path)

    # -- names ---------------------------------------------------------------------------

    async def unlink(self, missing_ok: bool = False) -> None:
        """``pathlib.Path.unlink``.

        Args:
            missing_ok: no error if the path does not exist.
        """
        try:
            await _xos.unlink(self._path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    async def rename(self, target: StrPath) -> Path:
        """``pathlib.Path.rename`` (renameat(2) on io_uring).

        Returns:
            The new path, as a :class:`Path`.
        """
        await _xos.rename(self._path, self._pure(target))
        return Path(self._pure(target))

    async def replace(self, target: StrPath) -> Path:
        """``pathlib.Path.replace``: rename over an existing *target*.

        Returns:
            The new path, as a :class:`Path`.
        """
        await _xos.replace(self._path, self._pure(target))
        return Path(self._pure(target))

    async def touch(self, mode: int = 0o666, exist_ok: bool = True) -> None:
        """``pathlib.Path.touch`` (in a worker thread)."""
        await _thread(self._path.touch, mode, exist_ok)

    async def resolve(self, strict: bool = False) -> Path:
        """``pathlib.Path.resolve`` (in a worker thread)."""
        return Path(await _thread(self._path.resolve, strict))

    async def absolute(self) -> Path:
        """``pathlib.Path.absolute``."""
        return Path(await _thread(self._path.absolute))

    async def readlink(self) -> Path:
        """``pathlib.Path.readlink``: the target of the symlink."""
        return Path(await _xos.readlink(self._path))

    async def symlink_to(self, target: StrPath, target_is_directory: bool = False) -> None:
        """``pathlib.Path.symlink_to``: make this path a symlink to *target*."""
        await _xos.symlink(self._pure(target), self._path, target_is_directory)

    # -- contents ------------------------------------------------------------------------

    def open(
        self,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> OpenContext:
        """:func:`xaio.open` on this path: ``async with p.open("rb") as f``
        or ``f = await p.open()``."""
        return open(str(self._path), mode, buffering, encoding, errors, newline)

    async def read_bytes(self) -> bytes:
        """``pathlib.Path.read_bytes``: the whole file, in one request where
        the engine can (:mod:`xaio._async._wholefile`)."""
        return await _read_bytes(current_driver(), str(self._path))

    async def read_text(self, encoding: str | None = None, errors: str | None = None) -> str:
        """``pathlib.Path.read_text``: the whole file (as :meth:`read_bytes`),
        decoded as the builtin text file decodes it (universal newlines)."""
        data = await _read_bytes(current_driver(), str(self._path))
        with io.TextIOWrapper(io.BytesIO(data), encoding=encoding, errors=errors) as f:
            return f.read()

    async def write_bytes(self, data: Any, *, atomic: bool = False, fsync: bool = False) -> int:
        """``pathlib.Path.write_bytes``: make the file hold the bytes-like *data*.

        Args:
            atomic: write a temporary file in the same directory, fsync it,
                rename it over this path and fsync the directory: a reader
                (or a crash) sees the old contents or the new, never a part.
                The new file has the mode a new file gets (0o666 less the
                umask), not the replaced file's, and replaces a symlink at
                this path rather than the file it points to.  A file this
                process may not write raises ``PermissionError`` as a plain
                write does.
            fsync: fsync the file before returning (implied by *atomic*).

        Returns:
            The number of bytes written.

        Raises:
            TypeError: *data* is not bytes-like.
            OSError: as pathlib (``IsADirectoryError``, ``PermissionError``...).
        """
        view = memoryview(data)
        return await self._write("wb", view, {}, atomic, fsync)

    async def write_text(
        self,
        data: str,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        *,
        atomic: bool = False,
        fsync: bool = False,
    ) -> int:
        """``pathlib.Path.write_text``: make the file hold the encoded *data*.

        Args:
            encoding, errors, newline: as the builtin ``open``'s.
            atomic, fsync: as :meth:`write_bytes`.

        Returns:
            The number of characters written.

        Raises:
            TypeError: *data* is not a str.
        """
        if not isinstance(data, str):
            raise TypeError(f"data must be str, not {type(data).__name__}")
        kw = {"encoding": encoding, "errors": errors, "newline": newline}
        return await self._write("w", data, kw, atomic, fsync)

    async def _write(
        self, mode: str, data: Any, kw: dict[str, Any], atomic: bool, sync: bool
    ) -> int:
        if not atomic:
            async with open(str(self._path), mode, **kw) as f:
                n: int = await f.write(data)
                if sync:
                    await f.flush()
                    await f.fsync()
            return n
        path = str(self._path)
        if not await _xos.access(path, os.W_OK) and await _xos.path.exists(path):
            # pathlib cannot open it for writing: nor may the rename replace it
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        tmp = str(self._path.with_name(f".{self._path.name}.{secrets.token_hex(6)}.tmp"))
        try:
            async with open(tmp, mode.replace("w", "x"), **kw) as f:
                n = await f.write(data)
                await f.flush()
                await f.fsync()
            await _xos.replace(tmp, self._path)
        except OSError as e:
            self._forget(tmp)
            if e.filename == tmp:
                e.filename = str(self._path)  # the name the caller knows
            raise
        except BaseException:
            self._forget(tmp)
            raise
        dfd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            await _fsync(dfd)
        finally:
            os.close(dfd)
        return n

    @staticmethod
    def _forget(tmp: str) -> None:
        """Remove the temporary file of a failed atomic write, if it was made."""
        try:
            os.unlink(tmp)
        except OSError:
            pass

    # -- the current and home directories ------------------------------------------------

    @classmethod
    async def cwd(cls) -> Path:
        """``pathlib.Path.cwd``: the current directory."""
        return cls(await _xos.getcwd())

    @classmethod
    async def home(cls) -> Path:
        """``pathlib.Path.home``: the user's home directory."""
        return cls(await _thread(pathlib.Path.home))
