"""``cachestat(2)``: how much of a file range is in the page cache."""

from __future__ import annotations

import os
from typing import ClassVar

from xaio._memory import PAGE_SIZE

__all__ = ["CacheStat"]


class CacheStat:
    """``cachestat(2)`` (Linux 6.5, syscall 451 on every architecture): how
    much of a file range is in the page cache, without reading or readahead.
    One per driver (its argument structs are reused: not thread-safe)."""

    _works: ClassVar[bool | None] = None

    def __init__(self) -> None:
        import ctypes

        class _Range(ctypes.Structure):
            _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]

        class _Stat(ctypes.Structure):
            _fields_ = [(name, ctypes.c_uint64) for name in ("cache", "dirty", "wb", "ev", "rev")]

        libc = ctypes.CDLL(None, use_errno=True)
        self._call = libc.syscall
        self._call.restype = ctypes.c_long
        self._range = _Range()
        self._stat = _Stat()
        self._args = (ctypes.c_void_p(ctypes.addressof(self._range)),
                      ctypes.c_void_p(ctypes.addressof(self._stat)))  # fmt: skip

    @property
    def works(self) -> bool:
        """True if this kernel has cachestat (probed once per process, on first use)."""
        works = CacheStat._works
        if works is None:
            works = CacheStat._works = self._probe()
        return works

    def _probe(self) -> bool:
        try:
            fd = os.open("/proc/self/exe", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            self._range.off, self._range.len = 0, 1
            return int(self._call(_NR_CACHESTAT, fd, *self._args, 0)) == 0
        finally:
            os.close(fd)

    def cached(self, fd: int, offset: int, n: int) -> bool:
        """True if every page of ``[offset, offset + n)`` is in the page cache."""
        r = self._range
        first = offset // PAGE_SIZE
        r.off = first * PAGE_SIZE
        r.len = (offset + n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE - r.off
        if self._call(_NR_CACHESTAT, fd, *self._args, 0) != 0:
            return False
        return bool(self._stat.cache >= r.len // PAGE_SIZE)


_NR_CACHESTAT = 451  # the same on every architecture (numbers >= 424 are unified)
