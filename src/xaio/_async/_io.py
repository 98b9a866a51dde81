"""The os-like coroutines (``await xaio.pread(fd, n, offset)`` ...) and ``open_engine``.

Each function runs on the running loop's default engine (see
:mod:`xaio._async._current`); :func:`open_engine` gives an explicit one with the
same coroutine methods.

*The fd is a number.*  Keep it open until the call has returned (or its
cancellation has reached you): the request may still be queued or running
until then.  Closing it earlier cannot send a write or a sync to another
file on any engine -- io_uring and Linux AIO hold the file in the kernel
from submission, and the thread engine (and Linux AIO's backlog) hold a
``dup`` of it until the request has run -- but a read queued on the thread
engine is not held: if the number is closed and reused meanwhile, it reads
the other file.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from xaio._async._current import current_driver, make_driver
from xaio._async._driver import Driver
from xaio.engine import Engine, EngineClosedError, create_engine

__all__ = [
    "pread",
    "preadinto",
    "pwrite",
    "preadv",
    "pwritev",
    "fsync",
    "fdatasync",
    "read",
    "readinto",
    "write",
    "open_engine",
    "AsyncEngine",
]


async def pread(fd: int, n: int, offset: int) -> bytes:
    """Read at most *n* bytes from *fd* at *offset*, without moving the file
    position (pread(2); mirrors ``os.pread``).  Keep *fd* open until it
    returns (see the module notes on fd lifetime).

    The buffer costs what the file holds, not *n*: for a large *n* it is
    sized from the file (``fstat``) and grows while the file has more.  On an
    O_DIRECT fd it is aligned for the device, so an aligned *offset* and *n*
    read as they would into ``xaio.aligned_buffer``.

    Args:
        fd: an open file descriptor (a regular file or block device).
        n: the most bytes to read (>= 0).
        offset: the file offset (>= 0).

    Returns:
        The bytes read: fewer than *n* at end of file, ``b""`` at or past it.

    Raises:
        TypeError: a non-integer argument.
        ValueError: negative *n* or *offset* (an ``OSError`` with ``EINVAL``
            too, as ``os.pread`` raises).
        OSError: what the kernel reports: ``ESPIPE`` on a pipe, socket, tty
            or eventfd (before anything is read), ``EBADF``, ``EISDIR``;
            ``EINVAL`` on an O_DIRECT fd when *offset* or *n* break the
            file's alignment (the message says which).
    """
    return await current_driver().pread(fd, n, offset)


async def preadinto(fd: int, buf: Any, offset: int) -> int:
    """Read from *fd* at *offset* into the writable buffer *buf* (as
    ``os.preadv(fd, [buf], offset)``).  If the task is cancelled, the kernel
    request is cancelled and *buf* is no longer used when ``CancelledError``
    reaches the caller.

    Returns:
        Bytes read.

    Raises:
        TypeError: *buf* is read-only or not bytes-like; bad argument types.
        ValueError: *buf* is not contiguous; negative *offset*.
        OSError: what the kernel reports (``ESPIPE`` on an fd without a
            position; ``EINVAL`` on an O_DIRECT fd when *offset*, the length
            or the address of *buf* break the file's alignment, with a
            message saying what was needed).
    """
    return await current_driver().preadinto(fd, buf, offset)


async def pwrite(fd: int, data: Any, offset: int) -> int:
    """Write the bytes-like *data* to *fd* at *offset* (pwrite(2); ``os.pwrite``).

    The write holds *fd*'s file from submission: if *fd* is closed before
    the call returns, the data still goes to that file, never to one that
    reuses the number (see the module notes on fd lifetime).

    Returns:
        Bytes written.

    Raises:
        TypeError: *data* is not bytes-like; bad argument types.
        ValueError: negative *offset*.
        OSError: what the kernel reports (``EBADF`` for a read-only fd,
            ``ESPIPE`` for one without a position, ``EINVAL`` with the
            alignment needed on an O_DIRECT fd...).
    """
    return await current_driver().pwrite(fd, data, offset)


async def preadv(fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> int:
    """Read into each writable buffer of *buffers* in turn, from *offset*
    (preadv2(2); ``os.preadv``).

    Args:
        flags: ``os.RWF_*`` flags (``RWF_HIPRI``, ``RWF_NOWAIT``): the kernel
            applies them, or refuses them (``EOPNOTSUPP`` for an unknown
            bit), as it does for ``os.preadv``, on every engine.

    Returns:
        Total bytes read.

    Raises:
        TypeError, ValueError, OSError: as :func:`preadinto`.
    """
    return await current_driver().preadv(fd, buffers, offset, flags)


async def pwritev(fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> int:
    """Write the buffers of *buffers* in turn, from *offset* (pwritev2(2); ``os.pwritev``).
    Holds *fd*'s file from submission, as :func:`pwrite`.

    Args:
        flags: ``os.RWF_*`` flags (``RWF_DSYNC``: durable when it returns,
            ``RWF_SYNC``, ``RWF_APPEND``: at the end of the file whatever
            *offset* says, ``RWF_NOWAIT``): the kernel applies them, or
            refuses them (``EOPNOTSUPP`` for an unknown bit), as it does for
            ``os.pwritev``, on every engine.

    Returns:
        Total bytes written.

    Raises:
        TypeError, ValueError, OSError: as :func:`pwrite`.
    """
    return await current_driver().pwritev(fd, buffers, offset, flags)


async def fsync(fd: int) -> None:
    """Flush *fd*'s data and metadata to storage (fsync(2); ``os.fsync``).
    Holds *fd*'s file from submission, as :func:`pwrite`.

    Raises:
        TypeError: *fd* is not an int.
        OSError: what the kernel reports (``EBADF``, ``EINVAL``, ``EIO``).
    """
    await current_driver().fsync(fd)


async def fdatasync(fd: int) -> None:
    """Flush *fd*'s data to storage (fdatasync(2); ``os.fdatasync``).
    Holds *fd*'s file from submission, as :func:`pwrite`.

    Raises:
        TypeError: *fd* is not an int.
        OSError: what the kernel reports.
    """
    await current_driver().fdatasync(fd)


async def read(fd: int, n: int) -> bytes:
    """Read at most *n* bytes from a stream fd -- a pipe, socket, FIFO or tty
    -- or at a regular file's position (read(2); ``os.read``).

    The read never blocks the event loop and never parks a thread: it is tried
    with ``RWF_NOWAIT`` and otherwise waits for readiness in the event loop.
    A cancelled ``read`` has consumed nothing from the fd: the data that
    arrives afterwards is there for the next read.  (On trio, as with
    ``trio.lowlevel.wait_readable``, only one task at a time may wait for the
    same fd; on asyncio several may.)

    Returns:
        The bytes read; ``b""`` at end of file.

    Raises:
        TypeError: bad argument types.
        ValueError: negative *n*.
        OSError: what the kernel reports.
    """
    return await current_driver().read(fd, n)


async def readinto(fd: int, buf: Any) -> int:
    """Like :func:`read`, into the writable buffer *buf* (``os.readv(fd, [buf])``).

    Returns:
        Bytes read (0 at end of file).
    """
    return await current_driver().readinto(fd, buf)


async def write(fd: int, data: Any) -> int:
    """Write *data* to a stream fd (write(2); ``os.write``), waiting for
    writability in the event loop when the fd is full.  Like ``os.write`` it
    may write only part of *data*; a cancelled ``write`` wrote nothing.

    Returns:
        Bytes written.

    Raises:
        TypeError: *data* is not bytes-like.
        OSError: what the kernel reports (``EPIPE``...).
    """
    return await current_driver().write(fd, data)


class AsyncEngine:
    """An explicit engine for the async layer (made by :func:`open_engine`).

    It has the same coroutines as the :mod:`xaio` module (``await
    eng.pread(fd, n, offset)`` ...), is bound to the event loop (or trio run)
    that first uses it, and is closed by ``await eng.aclose()`` or by leaving
    ``async with``.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._driver: Driver | None = None
        self._closed = False

    @property
    def name(self) -> str:
        """The engine's name: ``"uring"``, ``"linux"`` or ``"thread"``."""
        return self.engine.name

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has started."""
        return self._closed

    def driver(self) -> Driver:
        """The driver tying this engine to the running loop (made on first use).

        Raises:
            EngineClosedError: the engine is closed.
            RuntimeError: used from another event loop than the first one.
        """
        drv = self._driver
        if drv is None:
            if self._closed:
                raise EngineClosedError("the engine is closed")
            drv = self._driver = make_driver(self.engine)
            return drv
        if drv.closed:
            raise EngineClosedError("the engine is closed")
        drv.check_loop()
        return drv

    async def pread(self, fd: int, n: int, offset: int) -> bytes:
        """As :func:`xaio.pread`, on this engine."""
        return await self.driver().pread(fd, n, offset)

    async def preadinto(self, fd: int, buf: Any, offset: int) -> int:
        """As :func:`xaio.preadinto`, on this engine."""
        return await self.driver().preadinto(fd, buf, offset)

    async def pwrite(self, fd: int, data: Any, offset: int) -> int:
        """As :func:`xaio.pwrite`, on this engine."""
        return await self.driver().pwrite(fd, data, offset)

    async def preadv(self, fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> int:
        """As :func:`xaio.preadv`, on this engine."""
        return await self.driver().preadv(fd, buffers, offset, flags)

    async def pwritev(self, fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> int:
        """As :func:`xaio.pwritev`, on this engine."""
        return await self.driver().pwritev(fd, buffers, offset, flags)

    async def fsync(self, fd: int) -> None:
        """As :func:`xaio.fsync`, on this engine."""
        await self.driver().fsync(fd)

    async def fdatasync(self, fd: int) -> None:
        """As :func:`xaio.fdatasync`, on this engine."""
        await self.driver().fdatasync(fd)

    async def read(self, fd: int, n: int) -> bytes:
        """As :func:`xaio.read` (stream fds never reach the engine)."""
        return await self.driver().read(fd, n)

    async def readinto(self, fd: int, buf: Any) -> int:
        """As :func:`xaio.readinto`."""
        return await self.driver().readinto(fd, buf)

    async def write(self, fd: int, data: Any) -> int:
        """As :func:`xaio.write`."""
        return await self.driver().write(fd, data)

    def statistics(self) -> dict[str, Any]:
        """The engine's counters (``Engine.statistics()``)."""
        return self.engine.statistics()

    async def aclose(self) -> None:
        """Close the engine: cancel what is in flight, wait for it, release
        every kernel object.  Idempotent.  The Linux AIO engine's
        ``io_destroy`` waits for an RCU grace period (tens of milliseconds),
        so that close runs in a worker thread."""
        if self._closed:
            return
        self._closed = True
        drv = self._driver
        if drv is not None:
            drv.close()  # detach from the loop; it does not own the engine
        if self.engine.slow_close and drv is not None and not drv.in_flight:
            # nothing in flight: no completion can be delivered in that thread
            await drv.run_in_thread(self.engine.close)
        else:
            self.engine.close()

    def close(self) -> None:
        """Close synchronously (blocks for the time the engine needs)."""
        self._closed = True
        if self._driver is not None:
            self._driver.close()
        self.engine.close()

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<xaio.AsyncEngine {self.name} {'closed' if self._closed else 'open'}>"


def open_engine(name: str | None = None, **options: Any) -> AsyncEngine:
    """An explicit engine for the async layer.

    Args:
        name: ``"uring"``, ``"linux"`` or ``"thread"``; None picks as
            :func:`xaio.engine.create_engine` does (``XAIO_ENGINE``, else the
            best that works here).
        options: passed to the engine (``entries``, ``threads``...).

    Returns:
        An :class:`AsyncEngine`: ``async with xaio.open_engine("uring") as eng:
        await eng.pread(fd, 4096, 0)``.

    Raises:
        ValueError: unknown engine name.
        OSError: the named engine does not work here (the message says why).
    """
    return AsyncEngine(create_engine(name, **options))
