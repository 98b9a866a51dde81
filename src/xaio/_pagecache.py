"""The page-cache fast path: a read done at once, in the caller's thread.

The one place xaio reads with ``RWF_NOWAIT`` to find out whether the page
cache holds a range (:func:`nowait_preadv`), and the rule of when that is
tried (:class:`NowaitReader`), for the engines' ``read_nowait`` and
``nowait_reader`` (and so POSIX ``aio_read``) and the async drivers alike.

``preadv2(RWF_NOWAIT)`` copies from the page cache and fails with EAGAIN
instead of waiting for the device -- the attempt io_uring itself makes inline
before it punts a read to a worker.  Done in the caller's thread it costs one
system call (~1.5 us here) instead of a request's round trip through a queue,
a worker or a ring and a reaper thread (tens of microseconds in Python).

It is only tried where it cannot block or reorder anything:

* not on O_DIRECT fds (a NOWAIT direct read still waits for the device) nor
  O_APPEND ones;
* only positionally: a pipe, socket or tty fails with ESPIPE, so a stream's
  queued reads are never overtaken (an engine that holds other ordered work
  back on an fd gives its reader its per-fd lanes, which it looks at first);
* all or nothing: a short read (end of file, part of the range cached) or any
  error returns None and the caller submits the request the normal way, which
  reports errors and end of file as usual.

The fd's flags are cached and looked at again every 64 reads: a stale entry
(the fd closed and its number reused for an O_DIRECT file) can only make a few
reads wait for the device in the caller's thread; the data is right either
way.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["NowaitReader", "INLINE_MAX", "NOT_TRIED", "nowait_preadv"]

#: Largest read tried inline: beyond it the copy itself dwarfs the hand-off it
#: saves, and a partly cached range copies that much for nothing.
INLINE_MAX = 1 << 20

_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
_NO_INLINE_FLAGS = os.O_APPEND | getattr(os, "O_DIRECT", 0)
_RECHECK = 64
_FIRST_FDS = 256  # the flag cache's first size (see NowaitReader)
_CACHED_FDS = 1 << 16  # ... and its largest
_preadv = os.preadv

#: :func:`nowait_preadv`: the call was refused before the kernel saw it (a
#: buffer it cannot use, a number out of range): the normal path says why.
NOT_TRIED = -(1 << 20)


def nowait_preadv(fd: int, buffers: Sequence[Any], offset: int) -> int:
    """One ``preadv2(fd, buffers, offset, RWF_NOWAIT)``: never waits for the
    device, never raises.

    Returns:
        The bytes read (fewer than asked: the rest is not cached, or end of
        file); ``-errno.EAGAIN`` when the range is not all in the page cache;
        another ``-errno`` the kernel answered (``-ESPIPE`` on a stream,
        ``-EOPNOTSUPP`` on a file system without ``RWF_NOWAIT``...); or
        :data:`NOT_TRIED`.
    """
    try:
        return os.preadv(fd, buffers, offset, _RWF_NOWAIT)  # type: ignore[arg-type]
    except OSError as e:
        return -(e.errno or errno.EIO)
    except (TypeError, BufferError, OverflowError, ValueError):
        return NOT_TRIED


class _Gate(Protocol):
    """What a reader's owner keeps per fd with ordered work (a ``Lane``)."""

    @property
    def passable(self) -> bool:
        """May a read on the fd complete now, overtaking nothing?"""


class NowaitReader:
    """``preadv2(RWF_NOWAIT)`` with the per-fd flag cache described above.

    Args:
        gates: the owner's per-fd ordering state (an engine's lanes), looked
            up by fd at each read: no read is done while the fd's gate is not
            ``passable`` (requests are held back there).  The owner changes
            the mapping in place.

    ``count`` is how many reads it completed; once :meth:`close` was called,
    :meth:`read` declines every read.

    The cache holds one int per fd, so that a hit costs one lookup and one
    store: ``n > 0`` -- reads may be tried inline, *n* more before the flags
    are looked at again; ``n < 0`` -- they may not, for ``-n`` more reads;
    0 -- look now.  It is a list indexed by fd (an index and a store cost
    less than a dict's lookup and store), grown to the largest fd looked at,
    up to ``_CACHED_FDS`` entries; the flags of a larger fd are looked at
    on every read.
    """

    __slots__ = ("_flags", "_gates", "closed", "count")

    def __init__(self, gates: Mapping[int, _Gate] | None = None) -> None:
        self._flags: list[int] = [0] * _FIRST_FDS  # [fd] -> reads left (see above)
        self._gates: Mapping[int, _Gate] = {} if gates is None else gates
        self.closed = False
        self.count = 0

    def close(self) -> None:
        """Decline every read from now on (the owner is closed)."""
        self.closed = True

    def flags_ok(self, fd: int) -> bool:
        """May reads on *fd* be tried inline at all (not O_DIRECT, not
        O_APPEND, a valid fd, RWF_NOWAIT known)?  Cached, as described above."""
        cache = self._flags
        left = cache[fd] if 0 <= fd < len(cache) else 0
        if left > 0:
            cache[fd] = left - 1
            return True
        if left < 0:
            cache[fd] = left + 1
            return False
        return self._look(fd)

    def _look(self, fd: int) -> bool:
        """Look at the flags of *fd* (one ``fcntl``), cache and return the answer
        of :meth:`flags_ok`; one read of the budget is used."""
        try:
            ok = _RWF_NOWAIT is not None and not (fcntl.fcntl(fd, fcntl.F_GETFL) & _NO_INLINE_FLAGS)
        except (OSError, OverflowError, ValueError):
            ok = False
        self._store(fd, _RECHECK - 1 if ok else 1 - _RECHECK)
        return ok

    def _store(self, fd: int, left: int) -> None:
        """Cache *left* for *fd*, growing the list as far as ``_CACHED_FDS``."""
        cache = self._flags
        if 0 <= fd < len(cache):
            cache[fd] = left
        elif len(cache) <= fd < _CACHED_FDS:
            cache.extend([0] * (fd + 1 - len(cache)))
            cache[fd] = left

    def decline(self, fd: int) -> None:
        """An inline read on *fd* failed (not with EAGAIN): do not try again
        before the flags are looked at anew."""
        self._store(fd, -_RECHECK)

    def read(self, fd: int, buffers: Sequence[Any], offset: int, nbytes: int) -> int | None:
        """Read *nbytes* at *offset* into *buffers* (writable buffers of
        *nbytes* bytes in all, as ``os.preadv`` takes them: a caller that
        reads into the same buffer again keeps its one-element tuple) if the
        page cache has them all.

        The hot path of every page-cache hit (POSIX ``aio_read`` calls it
        through :attr:`xaio.engine.Engine.nowait_reader`): the flag cache and
        :func:`nowait_preadv` are inlined.

        Returns:
            *nbytes* when the whole read was done here; None when the caller
            must submit the request as usual (nothing is reported here: a
            buffer the read cannot use -- read-only, closed -- is refused by
            the normal path too, with its error).
        """
        if self.closed:
            return None
        gates = self._gates
        if gates:
            gate = gates.get(fd)
            if gate is not None and not gate.passable:
                return None
        flags = self._flags
        try:
            left = flags[fd] if fd >= 0 else 0
        except IndexError:  # an fd above the cached ones
            left = 0
        if left > 0:
            flags[fd] = left - 1
        elif not self.flags_ok(fd):
            return None
        try:
            n = _preadv(fd, buffers, offset, _RWF_NOWAIT)  # type: ignore[arg-type]
        except OSError:  # the kernel's answer: look at the fd again next time
            self._store(fd, 0)
            return None
        except (TypeError, BufferError, OverflowError, ValueError):  # NOT_TRIED
            return None
        if n != nbytes:  # short: end of file, or only part of it cached
            return None
        self.count += 1
        return n
