"""The text async file: what ``xaio.open(..., "r"/"w"/...)`` gives.

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

import codecs
import errno
import functools
import io
import os
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any

from xaio._async._binary import AsyncFile, read_lines, size_arg
from xaio._syscall import oserror

__all__ = ["AsyncTextFile"]


class _Detached:
    """What ``AsyncTextFile.buffer`` is after :meth:`AsyncTextFile.detach`."""

    def __getattr__(self, name: str) -> Any:
        raise ValueError("underlying buffer has been detached")


@functools.lru_cache(maxsize=16)
def _cr_size(encoding: str) -> int:
    """How many bytes a carriage return takes in *encoding* (2 in UTF-16),
    not counting a byte order mark."""
    enc = codecs.getincrementalencoder(encoding)("strict")
    enc.encode("")  # a BOM-writing encoder (UTF-16, UTF-32) writes it here
    return len(enc.encode("\r")) or len(enc.encode("\r", final=True))


class AsyncTextFile:
    """A text async file over an :class:`AsyncFile` (see the module essay).

    A read cancelled (or failing with an ``OSError``) part way loses
    nothing: on a stream the text it had taken goes back in front of the
    decoded text, on a seekable file the reader returns to where that read
    began.  A ``UnicodeDecodeError`` consumes what the read took and the
    chunk it was found in, as ``io.TextIOWrapper``'s does: reading on goes
    past the bad bytes.
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
        try:
            text = dec.decode(chunk, final=not chunk)
        except UnicodeDecodeError:
            self._reset_read(reset_decoder=False)  # the chunk is consumed
            raise
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
        n = size_arg(size)
        await self._prepare_read()
        if n < 0:
            dec = self._get_decoder()
            data = await self.buffer.read()  # nothing is consumed if it is cancelled
            held = self._decoded[self._dpos :]
            self._decoded = ""
            self._dpos = 0
            self._snap = (0, None, b"")
            self._reading = True  # the decoder (and its newlines) stays
            text: str = held + dec.decode(data, final=True)
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
        except UnicodeDecodeError:
            raise  # consumed (see the class doc)
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
        except UnicodeDecodeError:
            raise  # consumed (see the class doc)
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
        h = size_arg(hint)
        lines: list[str] = []
        saved = self._save()
        try:
            await read_lines(self.readline, h, lines)
        except UnicodeDecodeError:
            raise
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
            pending_cr = _cr_size(self.encoding) if self._newline in (None, "") and flag & 1 else 0
            return self.buffer._tell() - len(held) - pending_cr
        if self._dpos == 0:
            return pos0
        return pos0 + self._replay(state0, chunk, self._dpos)

    def _replay(self, state0: Any, chunk: bytes, n: int) -> int:
        """The byte offset in *chunk* just after the first *n* characters
        decoded from it (decoder state *state0* before it).

        The codec decodes the chunk a byte at a time without the newline
        layer, so every character gets the offset where its last byte is;
        then the newline rule is applied to that sequence: under universal
        newlines a ``\\r`` held back from the previous chunk comes first (its
        bytes are before the chunk), and with translation ``\\r\\n`` is one
        character, ending where its ``\\n`` does."""
        universal = self._newline is None or self._newline == ""
        raw: Any = codecs.getincrementaldecoder(self.encoding)(self.errors)
        ends: list[tuple[str, int]] = []
        if state0 is not None:
            if universal:
                buf, flag = state0
                raw.setstate((buf, flag >> 1))
                if flag & 1:
                    ends.append(("\r", 0))
            else:
                raw.setstate(state0)
        for i in range(len(chunk)):
            for ch in raw.decode(chunk[i : i + 1]):
                ends.append((ch, i + 1))
        count = 0
        translate = self._newline is None
        k = 0
        while k < len(ends):
            ch, end = ends[k]
            if translate and ch == "\r" and k + 1 < len(ends) and ends[k + 1][0] == "\n":
                k += 1
                end = ends[k][1]
            count += 1
            if count >= n:
                return end
            k += 1
        return len(chunk)  # pragma: no cover

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
