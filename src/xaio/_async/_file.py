"""Async file objects: ``await xaio.open(...)`` / ``async with xaio.open(...)``.

What the objects are made of
============================

:class:`AsyncFile` is the binary file, buffered like ``io.BufferedRandom``
but built on positional I/O: it keeps the file position itself and every
transfer on a regular file is a ``pread``/``pwrite`` at an explicit offset
through the engine (so reads of a cold cache wait in the kernel, not in the
loop).  It holds a read-ahead buffer (bytes known to be at a file offset) and
a write buffer (bytes to write at a file offset, flushed when full, on seek,
flush, close, fsync, and before any read).  Positional ``pread``/``pwrite``
first flush the write buffer.  ``seek`` and ``truncate`` move the kernel's
file position too, so ``fileno()`` users see a consistent offset after them.

On a stream (pipe, FIFO, socket, tty) the file reads with :func:`xaio.read`:
``RWF_NOWAIT`` first, else waiting for readiness in the event loop.  A
cancelled read has therefore consumed nothing, and data read by an earlier
call but not returned stays in the object's buffer: a cancellation never loses
bytes.  Writes to a stream go straight out (looping over partial writes).

``direct=True`` opens with ``O_DIRECT``.  The kernel then insists on aligned
memory, lengths and offsets (:func:`xaio.dio_alignment`); the object reads and
writes through aligned internal buffers (:func:`xaio.aligned_buffer`), so any
request works: a read covers the aligned blocks around it and copies out; an
unaligned write reads the partial head and tail blocks, patches them and
writes whole blocks (read-modify-write), then truncates the file back to its
true size when the last block went past the end.  Read-modify-write is not
atomic against other writers of the same blocks.

:class:`AsyncTextFile` decodes and encodes with incremental codecs over an
:class:`AsyncFile`, with ``io.TextIOWrapper``'s newline rules.  ``tell()``
returns a plain byte offset usable with ``seek()`` (computed by replaying the
decoder over the current chunk; exact for stateless encodings, which covers
UTF-8, ASCII and Latin-1).

A file object is not meant to be used by several tasks at once (positional
``pread``/``pwrite`` excepted): like a ``BufferedRandom`` it has one position
and one set of buffers.
"""

from __future__ import annotations

import asyncio
import codecs
import errno
import fcntl
import functools
import io
import locale
import os
import stat
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterable
from types import TracebackType
from typing import Any, TypeVar, Union

from xaio._async._io import AsyncEngine
from xaio._async._loop import (
    Driver,
    InvalidArgument,
    check_count,
    check_offset,
    current_driver,
    current_library,
    named_driver,
)
from xaio._async._meta import OP_OPENAT, run_meta
from xaio._memory import PAGE_SIZE, aligned_buffer, dio_alignment
from xaio._ops import OpCode, Operation
from xaio._syscall import oserror
from xaio.engine import ENGINE_NAMES

__all__ = ["open", "AsyncFile", "AsyncTextFile", "OpenContext"]

StrPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
_DEFAULT_BUFFER = 64 * 1024
_DIRECT_BUFFER = 128 * 1024
_AT_FDCWD = -100
_CLOSED = "I/O operation on closed file."
_current_task = asyncio.current_task
T = TypeVar("T")


def _size_arg(size: Any) -> int:
    """``size`` of read()-like methods: None or negative means "all"."""
    if size is None:
        return -1
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"argument should be integer or None, not {type(size).__name__!r}")
    return size


class AsyncFile:
    """A binary async file (see the module essay).  Made by :func:`xaio.open`.

    *Closing.*  The file owns its fd: :meth:`close` flushes, then ends every
    call of the file still in flight in other tasks -- each raises
    ``ValueError("I/O operation on closed file.")``, as a builtin file does
    once closed; a request an engine is already running is waited for, not
    abandoned -- and closes the fd only after the last of them has returned.
    So no request of this file can run on the fd number after it was reused
    by another ``open``.  A call started after ``close()`` raises the same
    ValueError at once.

    *Dropped without close.*  The finaliser warns (``ResourceWarning``),
    writes the buffered bytes out with plain ``os.pwrite``/``os.write`` (as
    the builtin file does when collected) and closes the fd.
    """

    def __init__(
        self,
        fd: int,
        name: Any,
        mode: str,
        *,
        readable: bool,
        writable: bool,
        append: bool,
        buffer_size: int,
        closefd: bool,
        direct: bool,
        engine: AsyncEngine | str | None,
    ) -> None:
        st = os.fstat(fd)
        self._fd = fd
        self._fd_open = True  # False once the fd was closed (or given up, closefd=False)
        #: requests in flight (see _io): task -> its trio CancelScope (asyncio: None)
        self._calls: dict[Any, Any] = {}
        self._ended: set[Any] = set()  # asyncio tasks close() cancelled
        self._on_release: list[Callable[[], None]] = []
        self._raw: io.FileIO | None = None
        self.name = name
        self.mode = mode
        self._readable = readable
        self._writable = writable
        self._append = append
        self._closefd = closefd
        self._engine = engine
        self._closed = False
        self._regular = stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)
        self._seekable = self._regular or _lseek_works(fd)
        self._direct = direct
        self._align = 1
        if direct:
            got = dio_alignment(fd)
            self._align = max(got[1] if got else 4096, 1)
            self._mem_align = max(got[0] if got else PAGE_SIZE, 1)
            buffer_size = max(_round_up(buffer_size or _DIRECT_BUFFER, self._align), self._align)
        self._bufsize = buffer_size
        self._pos = 0
        if self._seekable:
            self._pos = os.lseek(fd, 0, os.SEEK_END if append else os.SEEK_CUR)
        self._rbuf = b""  # read-ahead: bytes at file offset _roff (streams: unread bytes)
        self._roff = 0
        self._wbuf = bytearray()  # bytes to write at file offset _woff
        self._woff = 0
        self._dbuf: memoryview | None = None  # O_DIRECT bounce buffer, when not in use
        self._last: Operation | None = None  # the last engine operation (see _op)
        self._size_hint = st.st_size

    # -- plumbing -------------------------------------------------------------------

    def _drv(self) -> Driver:
        engine = self._engine
        if engine is None:
            return current_driver()
        if isinstance(engine, str):
            return named_driver(engine)
        return engine.driver()

    # -- calls in flight and closing ----------------------------------------------------

    async def _io(self, aw: Awaitable[T]) -> T:
        """Await *aw*, one request of this file on its fd, as a call in flight:
        counted while it runs (close() releases the fd only after it) and
        ended by close() with the closed-file ValueError, which it also raises
        when the file was closed while it waited."""
        if self._closed:
            if isinstance(aw, Coroutine):
                aw.close()
            raise ValueError(_CLOSED)
        try:
            task = _current_task()
        except RuntimeError:  # no asyncio loop: trio
            task = None
        if task is None:  # trio (in guest mode too)
            return await self._io_trio(aw)
        calls = self._calls
        calls[task] = None
        try:
            res = await aw
        except asyncio.CancelledError:
            if task in self._ended:
                self._ended.discard(task)
                uncancel = getattr(task, "uncancel", None)
                if uncancel is None or uncancel() == 0:  # close() was the only canceller
                    raise ValueError(_CLOSED) from None
            raise
        finally:
            del calls[task]
            if self._ended and task in self._ended:  # ended by close(), yet it returned
                self._ended.discard(task)
                uncancel = getattr(task, "uncancel", None)
                if uncancel is not None:
                    uncancel()
            if self._closed and not calls:
                self._release(quiet=True)
        if self._closed:
            raise ValueError(_CLOSED)
        return res

    async def _io_trio(self, aw: Awaitable[T]) -> T:
        """:meth:`_io` on trio: the request runs in a cancel scope that
        close() cancels."""
        import trio

        task = trio.lowlevel.current_task()
        calls = self._calls
        try:
            with trio.CancelScope() as scope:
                calls[task] = scope
                res = await aw
                if not self._closed:
                    return res
        finally:
            del calls[task]
            if self._closed and not calls:
                self._release(quiet=True)
        raise ValueError(_CLOSED)

    def _end_calls(self) -> None:
        """Cancel every call in flight of other tasks (close())."""
        for task, scope in list(self._calls.items()):
            if scope is not None:
                scope.cancel()
            elif task not in self._ended and task is not asyncio.current_task():
                self._ended.add(task)
                task.cancel()

    def _release(self, *, quiet: bool) -> None:
        """Close the fd (once) and wake the close() calls waiting for it."""
        if not self._fd_open:
            return
        self._fd_open = False
        waiters, self._on_release = self._on_release, []
        try:
            if self._closefd:
                os.close(self._fd)
        except OSError:
            if not quiet:
                raise
        finally:
            for wake in waiters:
                wake()

    async def _wait_released(self) -> None:
        """Wait until the last call in flight has released the fd."""
        if current_library() == "trio":
            import trio

            event = trio.Event()
            self._on_release.append(event.set)
            await event.wait()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._on_release.append(functools.partial(_resolve, fut))
        await fut

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed file.")

    def _check_readable(self) -> None:
        self._check_open()
        if not self._readable:
            raise io.UnsupportedOperation("File not open for reading")

    def _check_writable(self) -> None:
        self._check_open()
        if not self._writable:
            raise io.UnsupportedOperation("File not open for writing")

    def _check_seekable(self) -> None:
        self._check_open()
        if not self._seekable:
            raise io.UnsupportedOperation("File or stream is not seekable.")

    async def _op(self, opcode: OpCode, buf: Any, offset: int) -> int:
        """One engine operation on this file; on cancellation the partial
        result is available as ``self._last`` (the op was waited for)."""
        drv = self._drv()
        op = Operation(opcode, self._fd, (buf,), offset)  # drv._run attaches on_done
        self._last = op
        res = await self._io(drv._run(op))
        self._last = None
        return res

    # -- raw positional transfers (regular files) -----------------------------------

    async def _raw_readinto_at(self, buf: memoryview, offset: int) -> int:
        """Read into *buf* at *offset* (short only at end of file)."""
        if self._direct:
            return await self._dio_readinto(buf, offset)
        done = 0
        total = len(buf)
        while done < total:
            n = await self._op(OpCode.READ, buf[done:], offset + done)
            if n == 0:
                break
            done += n
        return done

    async def _raw_read_at(self, n: int, offset: int) -> bytes:
        buf = bytearray(n)
        mv = memoryview(buf)
        got = await self._raw_readinto_at(mv, offset)
        return bytes(buf) if got == n else bytes(mv[:got])

    # -- O_DIRECT -------------------------------------------------------------------

    def _bounce(self, size: int) -> tuple[memoryview, memoryview]:
        """An aligned buffer of at least *size* bytes: ``(whole, view[:size])``.
        The file keeps one for reuse; a concurrent user gets a fresh one."""
        whole = self._dbuf
        if whole is not None and len(whole) >= size:
            self._dbuf = None
        else:
            whole = aligned_buffer(max(size, self._bufsize), self._mem_align)
        return whole, whole[:size]

    def _give_back(self, whole: memoryview) -> None:
        if len(whole) <= 4 * self._bufsize and (self._dbuf is None or len(self._dbuf) < len(whole)):
            self._dbuf = whole

    async def _dio_readinto(self, buf: memoryview, offset: int) -> int:
        a = self._align
        start = offset - offset % a
        end = _round_up(offset + len(buf), a)
        whole, bounce = self._bounce(end - start)
        got = 0
        while start + got < end:
            n = await self._op(OpCode.READ, bounce[got:], start + got)
            if n == 0:
                break
            got += n
            if n % a:
                break  # end of file
        avail = max(min(got - (offset - start), len(buf)), 0)
        buf[:avail] = bounce[offset - start : offset - start + avail]
        self._give_back(whole)
        return avail

    async def _dio_write(self, data: memoryview, offset: int) -> int:
        a = self._align
        n = len(data)
        if n == 0:
            return 0
        if self._append:
            offset = os.fstat(self._fd).st_size
        start = offset - offset % a
        end = _round_up(offset + n, a)
        size_before = os.fstat(self._fd).st_size
        whole, bounce = self._bounce(end - start)
        if offset != start or offset + n != end:
            # read-modify-write of the partial head and tail blocks
            heads = [start] if offset != start else []
            if (offset + n) % a and end - a not in heads:
                heads.append(end - a)
            for blk in heads:
                piece = bounce[blk - start : blk - start + a]
                try:
                    got = await self._op(OpCode.READ, piece, blk)
                except OSError as e:
                    if e.errno != errno.EBADF:
                        raise
                    raise OSError(
                        errno.EBADF,
                        "O_DIRECT: an unaligned write reads its partial blocks, "
                        "and this fd is not open for reading",
                    ) from None
                piece[got:] = bytes(a - got)
        bounce[offset - start : offset - start + n] = data
        done = 0
        total = end - start
        while done < total:
            w = await self._op(OpCode.WRITE, bounce[done:], start + done)
            if w == 0:
                raise oserror(errno.EIO)
            done += w
        self._give_back(whole)
        if end > size_before and offset + n < end:
            os.ftruncate(self._fd, max(size_before, offset + n))
        return n

    # -- buffers ----------------------------------------------------------------------

    async def _flush_writes(self) -> None:
        wbuf = self._wbuf
        if not wbuf:
            return
        while wbuf:
            data = memoryview(bytes(wbuf))
            self._last = None
            try:
                if not self._regular:
                    n = await self._io(
                        self._drv().write(self._fd, data)
                    )  # a cancelled one wrote nothing
                elif self._direct:
                    n = await self._dio_write(data, self._woff)
                else:
                    n = await self._op(OpCode.WRITE, data, self._woff)
            except BaseException:
                # cancelled after the kernel wrote part: don't write it twice
                last = self._last
                if self._regular and not self._direct and last is not None:
                    done = last.result or 0
                    if done > 0:
                        del wbuf[:done]
                        self._woff += done
                raise
            if n == 0:
                raise oserror(errno.EIO)
            del wbuf[:n]
            self._woff += n
        if self._append and self._regular:
            self._pos = os.fstat(self._fd).st_size

    def _buffered(self) -> memoryview:
        """The read-ahead bytes at the current position."""
        if not self._regular:
            return memoryview(self._rbuf)
        start = self._pos - self._roff
        if 0 <= start < len(self._rbuf):
            return memoryview(self._rbuf)[start:]
        return memoryview(b"")

    def _consume(self, n: int) -> None:
        if self._regular:
            self._pos += n
        else:
            self._rbuf = self._rbuf[n:]

    async def _fill(self, want: int = 0) -> int:
        """Read one more chunk after the buffered bytes; return its length (0: EOF)."""
        size = max(self._bufsize, want, 1)
        if not self._regular:
            chunk = await self._io(self._drv().read(self._fd, size))
            self._rbuf += chunk
            return len(chunk)
        have = self._buffered()
        at = self._pos + len(have)
        if self._direct:
            at_aligned = at - at % self._align
            chunk = await self._raw_read_at(_round_up(size, self._align), at_aligned)
            chunk = chunk[at - at_aligned :]
        else:
            chunk = await self._raw_read_at(size, at)
        self._rbuf = bytes(have) + chunk
        self._roff = self._pos
        return len(chunk)

    # -- reading ------------------------------------------------------------------------

    async def read(self, size: int | None = -1) -> bytes:
        """Read up to *size* bytes (all, to end of file, if negative or None).
        Like ``BufferedReader.read`` it returns fewer only at end of file.

        Raises:
            ValueError: the file is closed.
            io.UnsupportedOperation: not open for reading.
            OSError: what the kernel reports.
        """
        self._check_readable()
        n = _size_arg(size)
        if n < 0:
            return await self.readall()
        await self._flush_writes()
        # Nothing is consumed until the whole answer is there: a cancellation
        # (or an error) leaves every byte read so far in the buffer.
        have = self._buffered()
        if len(have) >= n:
            data = bytes(have[:n])
            self._consume(n)
            return data
        if not self._regular:
            while len(self._rbuf) < n:
                if not await self._fill(n - len(self._rbuf)) or self._bufsize == 0:
                    break
            data = self._rbuf[:n]
            self._rbuf = self._rbuf[n:]
            return data
        head = bytes(have)
        at = self._pos + len(head)
        left = n - len(head)
        if left >= self._bufsize:
            # a big request: straight into the result (short only at end of file)
            chunk = await self._raw_read_at(left, at)
            self._pos = at + len(chunk)
            return head + chunk
        await self._fill(left)
        have = self._buffered()
        data = bytes(have[:n])
        self._consume(len(data))
        return data

    async def readall(self) -> bytes:
        """Read to end of file."""
        self._check_readable()
        await self._flush_writes()
        if not self._regular:
            # the bytes stay in the buffer until the end (a cancellation loses none)
            while True:
                chunk = await self._io(self._drv().read(self._fd, max(self._bufsize, 65536)))
                if not chunk:
                    break
                self._rbuf += chunk
            data, self._rbuf = self._rbuf, b""
            return data
        out = [bytes(self._buffered())]
        pos = self._pos + len(out[0])
        while True:  # the position moves at the end (a cancellation leaves it)
            want = max(self._size_hint - pos, 0) + 1
            want = max(want, self._bufsize, 8192)
            chunk = await self._raw_read_at(want, pos)
            if not chunk:
                break
            out.append(chunk)
            pos += len(chunk)
            if len(chunk) < want:
                self._size_hint = pos
                break
        self._pos = pos
        self._size_hint = max(self._size_hint, pos)
        return b"".join(out)

    async def read1(self, size: int | None = -1) -> bytes:
        """Read up to *size* bytes with at most one underlying read (``BufferedReader.read1``)."""
        self._check_readable()
        n = _size_arg(size)
        await self._flush_writes()
        have = self._buffered()
        if not have:
            await self._fill(n if n > 0 else 0)
            have = self._buffered()
        if n < 0:
            n = len(have)
        data = bytes(have[:n])
        self._consume(len(data))
        return data

    async def readinto(self, b: Any) -> int:
        """Read into the writable buffer *b*; return the number of bytes (0 at EOF)."""
        self._check_readable()
        with memoryview(b) as mv:
            if mv.readonly:
                raise TypeError("readinto() argument must be a writable bytes-like object")
            target = mv.cast("B")
            data = await self.read(len(target))
            target[: len(data)] = data
            return len(data)

    async def readinto1(self, b: Any) -> int:
        """Like :meth:`readinto` with at most one underlying read."""
        self._check_readable()
        with memoryview(b) as mv:
            target = mv.cast("B")
            data = await self.read1(len(target))
            target[: len(data)] = data
            return len(data)

    async def peek(self, size: int = 0) -> bytes:
        """Return buffered bytes without moving the position (at least one
        unless at end of file; reads once if the buffer is empty)."""
        self._check_readable()
        await self._flush_writes()
        have = self._buffered()
        if not have or len(have) < size:
            await self._fill(size)
            have = self._buffered()
        return bytes(have)

    async def readline(self, size: int | None = -1) -> bytes:
        """Read one line (up to and including ``b"\\n"``), at most *size* bytes."""
        self._check_readable()
        limit = _size_arg(size)
        await self._flush_writes()
        scanned = 0  # nothing is consumed until the line is complete (see read)
        while True:
            have = bytes(self._buffered())
            i = have.find(b"\n", scanned)
            if i >= 0 or (0 <= limit <= len(have)):
                take = i + 1 if i >= 0 else len(have)
                if limit >= 0:
                    take = min(take, limit)
                self._consume(take)
                return have[:take]
            scanned = len(have)
            if not await self._fill():
                self._consume(len(have))
                return have

    async def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Read lines until end of file (or until *hint* bytes were read)."""
        h = _size_arg(hint)
        lines: list[bytes] = []
        total = 0
        pos = self._pos
        try:
            while True:
                line = await self.readline()
                if not line:
                    break
                lines.append(line)
                total += len(line)
                if 0 < h < total:  # io: stop once the total exceeds the hint
                    break
        except BaseException:  # a cancellation loses nothing
            if self._regular:
                self._pos = pos
            else:
                self._rbuf = b"".join(lines) + self._rbuf
            raise
        return lines

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    # -- writing ------------------------------------------------------------------------

    async def write(self, b: Any) -> int:
        """Write the bytes-like *b* (buffered; streams: written out at once).

        Returns:
            ``len(b)`` in bytes.

        Raises:
            TypeError: *b* is not bytes-like (``str`` included).
            io.UnsupportedOperation: not open for writing.
        """
        self._check_writable()
        if isinstance(b, str):
            raise TypeError("a bytes-like object is required, not 'str'")
        with memoryview(b) as mv:
            data = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
            n = data.nbytes
            if not self._regular:
                self._wbuf += data
                await self._flush_writes()
                return n
            if self._rbuf:
                self._rbuf = b""  # positions after the write are stale
            if not self._wbuf:
                self._woff = self._pos
            self._wbuf += data
            self._pos += n
            if len(self._wbuf) >= self._bufsize:
                await self._flush_writes()
            return n

    async def writelines(self, lines: Iterable[Any]) -> None:
        """Write each bytes-like object of *lines* (no separators added)."""
        for line in lines:
            await self.write(line)

    async def flush(self) -> None:
        """Write out the write buffer."""
        self._check_open()
        await self._flush_writes()

    # -- positioning ------------------------------------------------------------------

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the position (``io.IOBase.seek``): *whence* ``SEEK_SET`` (0),
        ``SEEK_CUR`` (1), ``SEEK_END`` (2), ``SEEK_DATA``/``SEEK_HOLE``.

        Returns:
            The new absolute position.

        Raises:
            io.UnsupportedOperation: a stream.
            OSError: ``EINVAL`` for a resulting negative position; what lseek reports.
            TypeError/ValueError: bad argument types / whence.
        """
        self._check_seekable()
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise TypeError(f"an integer is required, not {type(offset).__name__!r}")
        if not isinstance(whence, int) or isinstance(whence, bool):
            raise TypeError(f"whence must be an integer, not {type(whence).__name__!r}")
        await self._flush_writes()
        if whence == os.SEEK_SET:
            target = offset
        elif whence == os.SEEK_CUR:
            target = self._pos + offset
        elif whence == os.SEEK_END:
            target = os.fstat(self._fd).st_size + offset
        elif whence in (getattr(os, "SEEK_DATA", 3), getattr(os, "SEEK_HOLE", 4)):
            target = os.lseek(self._fd, offset, whence)
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1, 2, 3 or 4)")
        if target < 0:
            raise InvalidArgument(f"negative seek position {target}")
        os.lseek(self._fd, target, os.SEEK_SET)
        self._pos = target
        return target

    async def tell(self) -> int:
        """The current position (``io.IOBase.tell``).

        Raises:
            OSError: ``ESPIPE`` on a stream (as ``io`` does).
        """
        self._check_open()
        if not self._seekable:
            raise oserror(errno.ESPIPE)
        return self._pos

    def _tell(self) -> int:
        return self._pos

    async def truncate(self, size: int | None = None) -> int:
        """Resize the file to *size* bytes (default: the position); the
        position does not move (``io.IOBase.truncate``).

        Returns:
            The new size.
        """
        self._check_writable()
        self._check_seekable()
        await self._flush_writes()
        n = self._pos if size is None else check_count(size, "size")
        await self._io(self._drv().run_in_thread(os.ftruncate, self._fd, n))
        self._rbuf = b""
        self._size_hint = n
        return n

    # -- positional and sync ----------------------------------------------------------

    async def pread(self, n: int, offset: int) -> bytes:
        """Read at most *n* bytes at *offset* without moving the position
        (``os.pread`` on this file; unaligned requests work with ``direct=True``)."""
        self._check_readable()
        n = check_count(n)
        offset = check_offset(offset)
        await self._flush_writes()
        if not self._direct:
            return await self._io(self._drv().pread(self._fd, n, offset))
        return await self._raw_read_at(n, offset)

    async def pwrite(self, data: Any, offset: int) -> int:
        """Write *data* at *offset* without moving the position (``os.pwrite``).

        Returns:
            Bytes written (all of *data* with ``direct=True``).
        """
        self._check_writable()
        offset = check_offset(offset)
        await self._flush_writes()
        self._rbuf = b""
        if not self._direct:
            return await self._io(self._drv().pwrite(self._fd, data, offset))
        with memoryview(data) as mv:
            return await self._dio_write(mv.cast("B"), offset)

    async def fsync(self) -> None:
        """Flush the write buffer, then fsync(2) the file."""
        self._check_open()
        await self._flush_writes()
        await self._io(self._drv().fsync(self._fd))

    async def fdatasync(self) -> None:
        """Flush the write buffer, then fdatasync(2) the file."""
        self._check_open()
        await self._flush_writes()
        await self._io(self._drv().fdatasync(self._fd))

    # -- state ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    @property
    def raw(self) -> io.FileIO:
        """The raw file under the buffers, as ``BufferedRandom.raw``: here a
        synchronous ``io.FileIO`` over the same fd (it never closes the fd,
        and is marked closed when this file closes).

        This object does positional I/O and keeps its own position and
        buffers: the kernel's file position (which the raw file uses) is set
        by :meth:`seek` and :meth:`truncate` only.  Call :meth:`flush` and
        :meth:`seek` before mixing raw calls with this object's.
        """
        raw = self._raw
        if raw is None:
            raw = self._raw = io.FileIO(self._fd, self.mode.replace("b", ""), closefd=False)
            if self._closed:
                raw.close()
        return raw

    def fileno(self) -> int:
        """The file descriptor."""
        self._check_open()
        return self._fd

    def readable(self) -> bool:
        """True if open for reading."""
        self._check_open()
        return self._readable

    def writable(self) -> bool:
        """True if open for writing."""
        self._check_open()
        return self._writable

    def seekable(self) -> bool:
        """True for files with a position (not pipes, sockets, ttys)."""
        self._check_open()
        return self._seekable

    def isatty(self) -> bool:
        """True for a terminal."""
        self._check_open()
        return os.isatty(self._fd)

    async def close(self) -> None:
        """Flush and close (the fd too unless ``closefd=False``).  Idempotent.

        The calls of this file still in flight in other tasks end with
        ``ValueError("I/O operation on closed file.")``; the fd is closed once
        the last of them has returned (a request an engine already runs is
        waited for), so nothing of this file runs on a reused fd number.  The
        fd is closed even if the flush fails (its error is raised).  If
        ``close()`` itself is cancelled while it waits, the fd is still closed
        when the last call returns.
        """
        try:
            if not self._closed:
                try:
                    await self._flush_writes()
                finally:
                    self._closed = True
                    self._rbuf = b""
                    self._dbuf = None
                    if self._raw is not None:
                        self._raw.close()
                    self._end_calls()
        finally:  # a failed flush still closes the fd (as the builtin file does)
            if self._fd_open:
                if self._calls:
                    await self._wait_released()
                else:
                    self._release(quiet=False)

    async def __aenter__(self) -> AsyncFile:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _flush_sync(self) -> None:
        """Write the write buffer out with plain system calls (the finaliser)."""
        wbuf = self._wbuf
        if not wbuf:
            return
        fd = self._fd
        if self._direct:  # unaligned bytes: leave O_DIRECT for these last writes
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        data = memoryview(bytes(wbuf))
        off = os.fstat(fd).st_size if self._append and self._direct else self._woff
        while data:
            n = os.pwrite(fd, data, off) if self._regular else os.write(fd, data)
            if n <= 0:
                break
            data = data[n:]
            off += n
        wbuf.clear()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        warnings.warn(f"unclosed file {self!r}", ResourceWarning, stacklevel=2)
        self._closed = True
        try:
            self._flush_sync()
        except OSError:
            pass
        finally:
            self._release(quiet=True)

    def __repr__(self) -> str:
        return f"<xaio.AsyncFile name={self.name!r} mode={self.mode!r}>"


class _Detached:
    """What ``AsyncTextFile.buffer`` is after :meth:`AsyncTextFile.detach`."""

    def __getattr__(self, name: str) -> Any:
        raise ValueError("underlying buffer has been detached")


class AsyncTextFile:
    """A text async file over an :class:`AsyncFile` (see the module essay).

    A read cancelled (or failing) part way loses nothing: on a stream the
    text it had taken goes back in front of the decoded text, on a seekable
    file the reader returns to where that read began.
    """

    _CHUNK = 8192

    def __init__(
        self,
        buffer: AsyncFile,
        mode: str,
        encoding: str,
        errors: str,
        newline: str | None,
        line_buffering: bool,
    ) -> None:
        codecs.lookup(encoding)  # LookupError for an unknown encoding
        self.buffer = buffer
        self.mode = mode
        self.encoding = encoding
        self.errors = errors
        self._newline = newline
        self.line_buffering = line_buffering
        self._writenl = os.linesep if newline is None else (newline or "\n")
        self._translate_out = self._writenl != "\n"
        self._decoder: Any = None
        self._encoder: Any = None
        self._decoded = ""
        self._dpos = 0
        self._snap: tuple[int, Any, bytes] = (0, None, b"")
        self._reading = False  # read-ahead (and decoder state) may be past the position

    @property
    def name(self) -> Any:
        """The file name (or fd) given to open()."""
        return self.buffer.name

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self.buffer.closed

    @property
    def newlines(self) -> Any:
        """The newlines met so far (universal newline mode), as ``io`` reports them."""
        dec = self._decoder
        return getattr(dec, "newlines", None) if dec is not None else None

    def fileno(self) -> int:
        """The file descriptor."""
        return self.buffer.fileno()

    async def detach(self) -> AsyncFile:
        """Flush, then separate this text layer from its binary file and
        return that file (``io.TextIOBase.detach``).  Afterwards every use of
        this object raises ``ValueError``; text decoded ahead is dropped, and
        the binary file's position is where its reading got to (as io's).

        Raises:
            ValueError: already detached, or the file is closed.
        """
        buffer = self.buffer
        await buffer.flush()
        self.buffer = _Detached()  # type: ignore[assignment]
        return buffer

    def readable(self) -> bool:
        """True if open for reading."""
        return self.buffer.readable()

    def writable(self) -> bool:
        """True if open for writing."""
        return self.buffer.writable()

    def seekable(self) -> bool:
        """True for files with a position."""
        return self.buffer.seekable()

    def isatty(self) -> bool:
        """True for a terminal."""
        return self.buffer.isatty()

    # -- decoding ---------------------------------------------------------------------

    def _make_decoder(self) -> Any:
        dec: Any = codecs.getincrementaldecoder(self.encoding)(self.errors)
        if self._newline is None or self._newline == "":
            dec = io.IncrementalNewlineDecoder(dec, translate=self._newline is None)
        return dec

    def _get_decoder(self) -> Any:
        if self._decoder is None:
            self._decoder = self._make_decoder()
        return self._decoder

    def _reset_read(self, reset_decoder: bool = True) -> None:
        """Drop the read-ahead (a write or seek); the decoder is reset (which
        forgets ``newlines``) unless *reset_decoder* is False, as io does."""
        dec = self._decoder
        if dec is not None and reset_decoder:
            dec.reset()
        self._decoded = ""
        self._dpos = 0
        self._snap = (0, None, b"")
        self._reading = False

    async def _read_chunk(self) -> bool:
        """Decode one more chunk into ``_decoded`` (which must be consumed);
        False at end of file.  A cancellation in the read changes nothing."""
        dec = self._get_decoder()
        pos0 = self.buffer._tell() if self.buffer._seekable else 0
        state0 = dec.getstate()
        chunk = await self.buffer.read1(self._CHUNK)
        text = dec.decode(chunk, final=not chunk)
        self._snap = (pos0, state0, chunk)
        self._decoded = text
        self._dpos = 0
        self._reading = True
        return bool(chunk) or bool(text)

    def _save(self) -> tuple[Any, ...] | None:
        """What a read of a seekable file that ends in an exception (a
        cancellation) rolls back to; None for a stream (see :meth:`_undo`)."""
        buffer = self.buffer
        if not buffer._seekable:
            return None
        dec = self._decoder
        state = None if dec is None else dec.getstate()
        return (buffer._pos, self._decoded, self._dpos, self._snap, dec, state, self._reading)

    def _undo(self, saved: tuple[Any, ...] | None, taken: list[str]) -> None:
        """A read ended by an exception: it loses nothing.  On a seekable file
        the reader goes back to where the read began (the bytes are read again);
        on a stream the text it took goes back in front of the decoded text."""
        if saved is None:
            if taken:
                self._decoded = "".join(taken) + self._decoded[self._dpos :]
                self._dpos = 0
            return
        pos, self._decoded, self._dpos, self._snap, dec, state, self._reading = saved
        self.buffer._pos = pos
        self._decoder = dec
        if dec is not None:
            dec.setstate(state)

    def _find_eol(self, text: str, start: int, prev: str) -> int:
        """Index just after the first line end in text[start:], or -1."""
        nl = self._newline
        if nl is None or nl == "\n":
            i = text.find("\n", start)
            return i + 1 if i >= 0 else -1
        if nl == "":
            if prev == "\r" and start < len(text) and text[start] == "\n":
                return start + 1
            for i in range(start, len(text)):
                c = text[i]
                if c == "\n":
                    return i + 1
                if c == "\r":
                    if i + 1 < len(text):
                        return i + 2 if text[i + 1] == "\n" else i + 1
                    return -2  # a final "\r": decide with the next chunk
            return -1
        if nl == "\r\n" and prev == "\r" and start < len(text) and text[start] == "\n":
            return start + 1
        i = text.find(nl, start)
        return i + len(nl) if i >= 0 else -1

    async def _prepare_read(self) -> None:
        self.buffer._check_readable()
        if self.buffer._wbuf:
            await self.buffer.flush()

    async def read(self, size: int | None = -1) -> str:
        """Read up to *size* characters (all, to end of file, if negative or None)."""
        n = _size_arg(size)
        await self._prepare_read()
        if n < 0:
            dec = self._get_decoder()
            data = await self.buffer.read()  # nothing is consumed if it is cancelled
            text: str = self._decoded[self._dpos :] + dec.decode(data, final=True)
            self._decoded = ""
            self._dpos = 0
            self._snap = (0, None, b"")
            self._reading = True  # the decoder (and its newlines) stays
            return text
        dpos = self._dpos
        if len(self._decoded) - dpos >= n:  # at hand: no read, nothing to undo
            self._dpos = dpos + n
            return self._decoded[dpos : dpos + n]
        parts: list[str] = []
        total = 0
        saved = self._save()
        try:
            while total < n:
                avail = len(self._decoded) - self._dpos
                if avail == 0:
                    if not await self._read_chunk():
                        break
                    continue
                take = min(avail, n - total)
                parts.append(self._decoded[self._dpos : self._dpos + take])
                self._dpos += take
                total += take
        except BaseException:
            self._undo(saved, parts)
            raise
        return "".join(parts)

    async def readline(self, size: int | None = -1) -> str:
        """Read one line, with the newline rules of ``io.TextIOWrapper``.

        Raises:
            TypeError: *size* is not an int (None included, as io's).
        """
        if not isinstance(size, int):
            raise TypeError(f"{type(size).__name__!r} object cannot be interpreted as an integer")
        limit = size
        await self._prepare_read()
        text, start = self._decoded, self._dpos
        end = self._find_eol(text, start, "")
        if end >= 0 and (limit < 0 or end - start <= limit):  # at hand: no read
            self._dpos = end
            return text[start:end]
        parts: list[str] = []
        saved = self._save()
        try:
            return await self._readline(limit, parts)
        except BaseException:
            self._undo(saved, parts)
            raise

    async def _readline(self, limit: int, parts: list[str]) -> str:
        """readline's work; *parts* holds the text taken so far (for _undo)."""
        total = 0
        while True:
            text, start = self._decoded, self._dpos
            prev = parts[-1][-1:] if parts else ""
            end = self._find_eol(text, start, prev)
            if end == -2 and 0 <= limit <= total + len(text) - start:
                end = -1  # the limit comes first
            if end == -2:  # "\r" at the very end: only EOF or the next char decides
                parts.append(text[start:])
                total += len(text) - start
                self._dpos = len(text)
                if not await self._read_chunk():
                    break
                if self._decoded[:1] == "\n":
                    parts.append("\n")
                    self._dpos = 1
                break
            if end >= 0:
                if limit >= 0 and total + (end - start) > limit:
                    end = start + (limit - total)
                parts.append(text[start:end])
                self._dpos = end
                break
            if limit >= 0 and total + len(text) - start >= limit:
                end = start + (limit - total)
                parts.append(text[start:end])
                self._dpos = end
                break
            parts.append(text[start:])
            total += len(text) - start
            self._dpos = len(text)
            if not await self._read_chunk():
                break
        return "".join(parts)

    async def readlines(self, hint: int | None = -1) -> list[str]:
        """Read lines until end of file (or until *hint* characters)."""
        h = _size_arg(hint)
        lines: list[str] = []
        total = 0
        saved = self._save()
        try:
            while True:
                line = await self.readline()
                if not line:
                    break
                lines.append(line)
                total += len(line)
                if 0 < h < total:  # io: stop once the total exceeds the hint
                    break
        except BaseException:
            self._undo(saved, lines)
            raise
        return lines

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    # -- writing ------------------------------------------------------------------------

    async def write(self, s: str) -> int:
        """Write the string *s* (newlines translated, then encoded).

        Returns:
            ``len(s)``.

        Raises:
            TypeError: *s* is not a str.
        """
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.buffer._check_writable()
        if self._reading:
            # a read-ahead is pending: put the byte position where the text reader is
            if self.buffer._seekable:
                pos = await self.tell()
                await self.buffer.seek(pos)
            self._reset_read()
        text = s.replace("\n", self._writenl) if self._translate_out else s
        if self._encoder is None:
            self._encoder = codecs.getincrementalencoder(self.encoding)(self.errors)
            if self.buffer._seekable and self.buffer._tell() != 0:
                try:
                    self._encoder.setstate(0)  # no BOM in the middle of a file
                except (AttributeError, TypeError):
                    pass
        await self.buffer.write(self._encoder.encode(text))
        if self.line_buffering and ("\n" in s or "\r" in s):
            await self.buffer.flush()
        return len(s)

    async def writelines(self, lines: Iterable[str]) -> None:
        """Write each string of *lines*."""
        for line in lines:
            await self.write(line)

    async def flush(self) -> None:
        """Write out the buffered bytes."""
        await self.buffer.flush()

    # -- positioning ------------------------------------------------------------------

    async def tell(self) -> int:
        """The position as a byte offset, usable with :meth:`seek`.

        Raises:
            OSError: ``ESPIPE`` on a stream.
        """
        self.buffer._check_open()
        if not self.buffer._seekable:
            raise oserror(errno.ESPIPE)
        await self.buffer.flush()
        if not self._reading or self._decoder is None:
            return self.buffer._tell()
        pos0, state0, chunk = self._snap
        if self._dpos >= len(self._decoded):
            # everything decoded was consumed; bytes still held by the decoder count
            held, flag = self._decoder.getstate()
            pending_cr = 1 if self._newline in (None, "") and flag & 1 else 0
            return self.buffer._tell() - len(held) - pending_cr
        if self._dpos == 0:
            return pos0
        dec = self._make_decoder()
        if state0 is not None:
            dec.setstate(state0)
        count = 0
        for i in range(len(chunk)):
            count += len(dec.decode(chunk[i : i + 1]))
            if count >= self._dpos:
                return pos0 + i + 1 - (count - self._dpos)
        return pos0 + len(chunk)  # pragma: no cover

    async def seek(self, cookie: int, whence: int = os.SEEK_SET) -> int:
        """Move to a position from :meth:`tell` (or 0); ``seek(0, SEEK_END)``
        goes to the end; relative seeks must be 0 (as ``io.TextIOWrapper``).

        Returns:
            The new position.
        """
        self.buffer._check_seekable()
        if whence == os.SEEK_CUR:
            if cookie != 0:
                raise io.UnsupportedOperation("can't do nonzero cur-relative seeks")
            return await self.tell()
        if whence == os.SEEK_END:
            if cookie != 0:
                raise io.UnsupportedOperation("can't do nonzero end-relative seeks")
            await self.buffer.flush()
            self._reset_read()
            self._encoder = None
            return await self.buffer.seek(0, os.SEEK_END)
        if whence != os.SEEK_SET:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if not isinstance(cookie, int) or isinstance(cookie, bool):
            raise TypeError(f"an integer is required, not {type(cookie).__name__!r}")
        if cookie < 0:
            raise ValueError(f"negative seek position {cookie}")
        await self.buffer.flush()
        self._reset_read(reset_decoder=cookie == 0)
        self._encoder = None
        pos = await self.buffer.seek(cookie)
        if cookie != 0:
            # mid-file: a BOM-sensing decoder (UTF-16...) must not expect a BOM
            self._get_decoder().setstate((b"", 0))
        return pos

    async def truncate(self, size: int | None = None) -> int:
        """Resize the file (default: to the current position)."""
        if size is None:
            size = await self.tell()
        await self.buffer.flush()
        return await self.buffer.truncate(size)

    # -- pass-throughs ------------------------------------------------------------------

    async def pread(self, n: int, offset: int) -> bytes:
        """Bytes at a byte offset (:meth:`AsyncFile.pread`); the text position is unchanged."""
        return await self.buffer.pread(n, offset)

    async def pwrite(self, data: Any, offset: int) -> int:
        """Bytes at a byte offset (:meth:`AsyncFile.pwrite`)."""
        return await self.buffer.pwrite(data, offset)

    async def fsync(self) -> None:
        """Flush, then fsync(2)."""
        await self.buffer.fsync()

    async def fdatasync(self) -> None:
        """Flush, then fdatasync(2)."""
        await self.buffer.fdatasync()

    async def close(self) -> None:
        """Flush and close.  Idempotent."""
        await self.buffer.close()

    async def __aenter__(self) -> AsyncTextFile:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        try:
            name = f" name={self.name!r}"
        except ValueError:
            name = " detached"
        return f"<xaio.AsyncTextFile{name} mode={self.mode!r} encoding={self.encoding!r}>"


# ---------------------------------------------------------------------------------
# open()
# ---------------------------------------------------------------------------------


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _round_up(n: int, a: int) -> int:
    return -(-n // a) * a


def _lseek_works(fd: int) -> bool:
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return False
    return True


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


def _validate(
    file: Any,
    mode: str,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
    closefd: bool,
) -> tuple[_Mode, str | None, bool]:
    """The builtin open()'s argument checks (before anything is opened)."""
    m = _Mode(mode)
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
        os.fspath(file)  # TypeError for a bad path
        if not closefd:
            raise ValueError("Cannot use closefd=False with file name")
    elif file < 0:
        raise ValueError("negative file descriptor")
    return m, text_encoding, is_fd


async def _open_fd(drv: Driver, file: Any, flags: int) -> int:
    """openat(2) on io_uring when the kernel has it, else os.open in a thread."""
    res = await run_meta(
        drv,
        OP_OPENAT,
        lambda ring, ud: ring.prep_openat(_AT_FDCWD, file, flags, 0o666, user_data=ud),
        lambda: os.open(file, flags, 0o666),
    )
    if res < 0:
        e = -res
        raise OSError(e, os.strerror(e), file)
    return int(res)


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
) -> AsyncFile | AsyncTextFile:
    m, text_encoding, is_fd = _validate(file, mode, buffering, encoding, errors, newline, closefd)
    flags = m.flags
    if direct:
        # The partial blocks of an unaligned write are read, patched and written
        # back: the fd must be readable (write-only modes open O_RDWR), and a
        # write must go where the object puts it (O_APPEND is emulated).
        flags |= os.O_DIRECT
        if m.writable:
            flags = flags & ~(os.O_APPEND | os.O_ACCMODE) | os.O_RDWR
    if engine is None:
        drv = current_driver()
    elif isinstance(engine, str):
        drv = named_driver(engine)
    else:
        drv = engine.driver()
    if is_fd:
        fd = file
        if direct and not fcntl_has_direct(fd):
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
    elif opener is not None:
        fd = opener(file, flags)
        if not isinstance(fd, int) or fd < 0:
            raise ValueError(f"opener returned {fd}")
    else:
        try:
            fd = await _open_fd(drv, file, flags)
        except PermissionError:
            if not direct or flags == m.flags | os.O_DIRECT:
                raise
            # not readable (or appendable) by us: as asked, without read-modify-write
            fd = await _open_fd(drv, file, m.flags | os.O_DIRECT)
    try:
        st = os.fstat(fd)
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


def fcntl_has_direct(fd: int) -> bool:
    import fcntl

    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0))


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
    _validate(file, mode, buffering, encoding, errors, newline, closefd)
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
        (file, mode, buffering, encoding, errors, newline, closefd, opener, direct, engine)
    )
