"""Aligned memory for O_DIRECT (one buffer, or a pool of them), and the
alignment a file asks for.

O_DIRECT transfers go straight between the device and user memory, so the
kernel insists on alignment: of the buffer address, of the length and of the
file offset.  Since Linux 6.1 ``statx(STATX_DIOALIGN)`` reports the two numbers
(``stx_dio_mem_align``, ``stx_dio_offset_align``); before that, or on a file
system that does not say, the logical block size is the rule and the page size
is always enough for memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
from collections.abc import Iterator

from xaio import _syscall

__all__ = ["aligned_buffer", "dio_alignment", "BufferPool", "PAGE_SIZE"]

PAGE_SIZE: int = mmap.PAGESIZE
_AT_EMPTY_PATH = 0x1000
_AT_FDCWD = -100
_STATX_DIOALIGN = 0x2000
_STATX_SIZE = 256
_OFF_MASK = 0
_OFF_MEM_ALIGN = 0x98
_OFF_OFFSET_ALIGN = 0x9C


def dio_alignment(file: int | str | os.PathLike[str]) -> tuple[int, int] | None:
    """The O_DIRECT alignment of *file* (an fd or a path) as the kernel reports
    it: ``(memory_alignment, offset_alignment)``, or None when the kernel or
    file system does not report it (then O_DIRECT may be unsupported there).

    Corresponds to ``statx(2)`` with ``STATX_DIOALIGN``.

    Raises:
        OSError: the file cannot be looked up (e.g. ``FileNotFoundError``).
        TypeError: *file* is neither an int nor a path.
    """
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if isinstance(file, bool):
        raise TypeError("file must be a file descriptor or a path")
    if isinstance(file, int):
        ret = _syscall.statx(
            file, _EMPTY_ADDR, _AT_EMPTY_PATH, _STATX_DIOALIGN, ctypes.addressof(buf)
        )
    else:
        path = os.fsencode(file)
        cpath = ctypes.create_string_buffer(path)
        ret = _syscall.statx(
            _AT_FDCWD, ctypes.addressof(cpath), 0, _STATX_DIOALIGN, ctypes.addressof(buf)
        )
    _syscall.check(ret)
    raw = buf.raw
    mask = int.from_bytes(raw[_OFF_MASK : _OFF_MASK + 4], "little")
    if not mask & _STATX_DIOALIGN:
        return None
    mem = int.from_bytes(raw[_OFF_MEM_ALIGN : _OFF_MEM_ALIGN + 4], "little")
    off = int.from_bytes(raw[_OFF_OFFSET_ALIGN : _OFF_OFFSET_ALIGN + 4], "little")
    if mem == 0 or off == 0:
        return None  # the file system does not support O_DIRECT on this file
    return mem, off


_EMPTY = ctypes.create_string_buffer(b"")
_EMPTY_ADDR = ctypes.addressof(_EMPTY)


def _memory_alignment(alignment: int | None, file: int | str | os.PathLike[str] | None) -> int:
    """*alignment* checked, or by default the memory alignment *file* reports
    (``STATX_DIOALIGN``) when given and known, else the page size."""
    if alignment is None:
        alignment = PAGE_SIZE
        if file is not None:
            got = dio_alignment(file)
            if got is not None:
                alignment = max(got[0], 1)
    if not isinstance(alignment, int) or isinstance(alignment, bool):
        raise TypeError(f"alignment must be an int, not {type(alignment).__name__!r}")
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a positive power of two, not {alignment}")
    return alignment


def aligned_buffer(
    size: int, alignment: int | None = None, *, file: int | str | os.PathLike[str] | None = None
) -> memoryview:
    """A zero-filled, writable buffer of *size* bytes whose address is aligned
    for O_DIRECT.

    Args:
        size: length in bytes (>= 0).
        alignment: a power of two; by default the memory alignment *file*
            reports (``statx`` ``STATX_DIOALIGN``) when given and known, else
            the page size (always sufficient for memory).
        file: an fd or path whose O_DIRECT alignment to honour.

    Returns:
        A ``memoryview`` (format ``'B'``) over anonymous ``mmap`` memory; the
        memory lives as long as the view or any slice of it.

    Raises:
        ValueError: negative size, or alignment not a positive power of two.
        TypeError: non-integer size or alignment.
    """
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"size must be an int, not {type(size).__name__!r}")
    if size < 0:
        raise ValueError("size must be >= 0")
    alignment = _memory_alignment(alignment, file)
    if alignment <= PAGE_SIZE:
        m = mmap.mmap(-1, max(size, 1))
        return memoryview(m)[:size]
    m = mmap.mmap(-1, size + alignment)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    start = (-base) % alignment
    return memoryview(m)[start : start + size]


class BufferPool:
    """*count* buffers of *size* bytes, each aligned for O_DIRECT, carved
    from one mapping and handed out and taken back without allocating::

        pool = xaio.BufferPool(4096, 64, file=fd)
        bufs = [pool.acquire() for _ in range(64)]
        ...  # a batch of O_DIRECT reads into them
        for buf in bufs:
            pool.release(buf)

    or ``with pool.buffer() as buf:`` for one.  Each buffer is a writable
    ``memoryview``; the pool's memory lives as long as the pool or any of
    its buffers.

    Args:
        size: bytes per buffer (> 0).
        count: how many buffers (> 0).
        alignment: a power of two each buffer's address is a multiple of;
            by default as :func:`aligned_buffer` picks it (the memory
            alignment *file* reports, else the page size).
        file: an fd or path whose O_DIRECT alignment to honour.

    Raises:
        TypeError: non-integer *size*, *count* or *alignment*.
        ValueError: *size* or *count* < 1; *alignment* not a power of two.
    """

    def __init__(
        self,
        size: int,
        count: int,
        alignment: int | None = None,
        *,
        file: int | str | os.PathLike[str] | None = None,
    ) -> None:
        for name, value in (("size", size), ("count", count)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {type(value).__name__!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, not {value}")
        alignment = _memory_alignment(alignment, file)
        stride = -(-size // alignment) * alignment
        whole = aligned_buffer(stride * count, alignment)
        self.size = size
        self.count = count
        self.alignment = alignment
        self._buffers = [whole[i * stride : i * stride + size] for i in range(count)]
        self._index = {id(b): i for i, b in enumerate(self._buffers)}
        self._free = list(range(count - 1, -1, -1))
        self._out = [False] * count

    def __len__(self) -> int:
        """The number of free buffers."""
        return len(self._free)

    def acquire(self) -> memoryview:
        """A free buffer (its contents are what it last held).

        Raises:
            RuntimeError: every buffer is in use.
        """
        if not self._free:
            raise RuntimeError(f"all {self.count} buffers of the pool are in use")
        i = self._free.pop()
        self._out[i] = True
        return self._buffers[i]

    def release(self, buf: memoryview) -> None:
        """Give back a buffer :meth:`acquire` returned.

        Raises:
            ValueError: *buf* is not one of this pool's buffers, or is free already.
        """
        i = self._index.get(id(buf))
        if i is None or self._buffers[i] is not buf:
            raise ValueError("not a buffer of this pool")
        if not self._out[i]:
            raise ValueError("this buffer is free already")
        self._out[i] = False
        self._free.append(i)

    @contextlib.contextmanager
    def buffer(self) -> Iterator[memoryview]:
        """``with pool.buffer() as buf:``: :meth:`acquire`, then :meth:`release` on exit."""
        buf = self.acquire()
        try:
            yield buf
        finally:
            self.release(buf)

    def __repr__(self) -> str:
        return (
            f"<xaio.BufferPool {self.count} x {self.size} bytes aligned to {self.alignment},"
            f" {len(self._free)} free>"
        )
