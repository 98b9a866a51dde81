"""The binary async file: what ``xaio.open(..., "rb"/"wb"/...)`` gives.

What the object is made of
==========================

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


A file object is not meant to be used by several tasks at once (positional
``pread``/``pwrite`` excepted): like a ``BufferedRandom`` it has one position
and one set of buffers.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import io
import os
import stat
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from xaio._async._checks import InvalidArgument, check_count, check_offset
from xaio._async._current import current_library, driver_for
from xaio._async._driver import Driver
from xaio._memory import PAGE_SIZE, aligned_buffer, dio_alignment
from xaio._ops import OpCode, Operation
from xaio._syscall import fstat_cached, oserror

if TYPE_CHECKING:
    from xaio._async._io import AsyncEngine

__all__ = ["AsyncFile", "read_lines", "size_arg"]

_DIRECT_BUFFER = 128 * 1024
_CLOSED = "I/O operation on closed file."
_current_task = asyncio.current_task
T = TypeVar("T")
S = TypeVar("S", bytes, str)


def size_arg(size: Any) -> int:
    """``size`` of read()-like methods: None or negative means "all"."""
    if size is None:
        return -1
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"argument should be integer or None, not {type(size).__name__!r}")
    return size


async def read_lines(readline: Callable[[], Awaitable[S]], hint: int, lines: list[S]) -> None:
    """Append what *readline* returns to *lines* until it returns an empty
    line (end of file) or, when *hint* > 0, until their total length exceeds
    *hint* (as ``io``'s ``readlines``)."""
    total = 0
    while True:
        line = await readline()
        if not line:
            return
        lines.append(line)
        total += len(line)
        if 0 < hint < total:
            return


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
        st: os.stat_result | None = None,
        fresh: bool = False,
        kind: int = -1,
    ) -> None:
        # st: fd's fstat if the caller has it; fresh: fd was just opened by
        # path, so its position is 0 (or the end, for append); kind: the fd's
        # kind for every request (stat_and_kind), when the file opened the fd
        if st is None:
            st = fstat_cached(fd)
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
        if self._seekable and (append or not fresh):
            self._pos = os.lseek(fd, 0, os.SEEK_END if append else os.SEEK_CUR)
        self._rbuf = b""  # read-ahead: bytes at file offset _roff (streams: unread bytes)
        self._roff = 0
        self._wbuf = bytearray()  # bytes to write at file offset _woff
        self._woff = 0
        self._dbuf: memoryview | None = None  # O_DIRECT bounce buffer, when not in use
        self._last: Operation | None = None  # the last engine operation (see _op)
        self._size_hint = st.st_size
        self._kind = kind

    # -- plumbing -------------------------------------------------------------------

    def _drv(self) -> Driver:
        return driver_for(self._engine)

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
        op.kind = self._kind  # (-1: the engine's routing looks at the fd)
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
        n = size_arg(size)
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
        # (nothing buffered: no empty head, so that the join of a file read
        # in one chunk is that chunk, not a copy of it)
        have = self._buffered()
        out = [bytes(have)] if have else []
        pos = self._pos + len(have)
        while True:  # the position moves at the end (a cancellation leaves it)
            size = self._size_hint
            if self._direct:
                want = max(max(size - pos, 0) + 1, self._bufsize, 8192)
                chunk = await self._raw_read_at(want, pos)
                if len(chunk) < want:  # (it read on until the end of the file)
                    out.append(chunk)
                    pos += len(chunk)
                    break
            else:
                # The size from fstat, plus one byte to see the end of the file
                # (as the builtin's readall): a read that ends at that size is
                # the last; other files (/proc's, of size 0) read until nothing
                # comes.
                want = size - pos + 1 if size > pos else max(self._bufsize, 8192)
                chunk = await self._read_once(want, pos, size - pos)
                if chunk and len(chunk) < want and pos + len(chunk) >= size > 0:
                    out.append(chunk)
                    pos += len(chunk)
                    break
            if not chunk:
                break
            out.append(chunk)
            pos += len(chunk)
            self._size_hint = max(size, pos)
        self._pos = pos
        self._size_hint = pos
        return b"".join(out)

    async def _read_once(self, n: int, offset: int, expect: int) -> bytes:
        """One read of up to *n* bytes at *offset*: from the page cache in
        this thread when the *expect* bytes there are cached
        (:meth:`Driver.read_cached`), else one engine request."""
        buf = bytearray(n)
        if expect > 0:
            drv = self._drv()
            await drv._fair()
            if self._closed:
                raise ValueError(_CLOSED)
            if drv.read_cached(self._fd, buf, offset, expect) is not None:
                return bytes(memoryview(buf)[:expect])
        got = await self._op(OpCode.READ, buf, offset)
        return bytes(buf) if got == n else bytes(memoryview(buf)[:got])

    async def read1(self, size: int | None = -1) -> bytes:
        """Read up to *size* bytes with at most one underlying read (``BufferedReader.read1``)."""
        self._check_readable()
        n = size_arg(size)
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
        limit = size_arg(size)
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
        h = size_arg(hint)
        lines: list[bytes] = []
        pos = self._pos
        try:
            await read_lines(self.readline, h, lines)
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
