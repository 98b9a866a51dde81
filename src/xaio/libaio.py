"""Linux native AIO in libaio's convention: kernel errors are *returned*.

libaio (``<libaio.h>``) wraps the AIO system calls without following the C
library convention: on failure its functions return the negated errno
(``-EINVAL``) instead of -1 with ``errno`` set.  This module does the same for
Python: the ``io_*`` functions never raise for an error the kernel reports.
They do raise ``TypeError``/``ValueError`` for arguments that are not what
they must be (those never reach the kernel).

Output values come back in a tuple with the return code first::

    ret, ctx = io_setup(128)          # ctx is None when ret < 0
    ret, events = io_getevents(ctx, 1, 16)

The objects are those of :mod:`xaio.linux` (:class:`~xaio.linux.Iocb`,
:class:`~xaio.linux.IOContext`, :class:`~xaio.linux.IOEvent`), so both
conventions can be mixed in one program.  The ``io_prep_*`` helpers take
libaio's argument order and, like libaio, reset the whole Iocb first.

Man pages: io_setup(2), io_submit(2), io_getevents(2), io_cancel(2),
io_destroy(2), io_queue_init(3), io_queue_run(3), io_prep_pread(3).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from xaio._abi.aio import (
    IOCB_CMD_FDSYNC,
    IOCB_CMD_FSYNC,
    IOCB_CMD_POLL,
    IOCB_CMD_PREAD,
    IOCB_CMD_PREADV,
    IOCB_CMD_PWRITE,
    IOCB_CMD_PWRITEV,
    IOCB_FLAG_RESFD,
)
from xaio.linux import Iocb, IOContext, IOEvent
from xaio.linux import _context as _linux

__all__ = [
    "Iocb",
    "IOContext",
    "IOEvent",
    "Callback",
    "io_setup",
    "io_destroy",
    "io_submit",
    "io_getevents",
    "io_pgetevents",
    "io_cancel",
    "io_queue_init",
    "io_queue_release",
    "io_queue_run",
    "io_set_callback",
    "io_set_eventfd",
    "io_prep_pread",
    "io_prep_pwrite",
    "io_prep_preadv",
    "io_prep_pwritev",
    "io_prep_preadv2",
    "io_prep_pwritev2",
    "io_prep_fsync",
    "io_prep_fdsync",
    "io_prep_poll",
]

#: ``cb(ctx, iocb, res, res2)``, as libaio's ``io_callback_t``.
Callback = Callable[[IOContext, Iocb, int, int], object]


def io_setup(maxevents: int) -> tuple[int, IOContext | None]:
    """Create a context: ``(0, ctx)`` or ``(-errno, None)``.  io_setup(2)."""
    return _linux._setup(maxevents)


def io_destroy(ctx: IOContext | int) -> int:
    """Cancel, wait for the rest, destroy: 0 or ``-EINVAL`` (bad or already
    destroyed context, raw id too).  io_destroy(2)."""
    return _linux._destroy(ctx)


def io_submit(ctx: IOContext, iocbs: Iterable[Iocb]) -> int:
    """Submit; the number accepted, or ``-errno`` if the first one was
    refused.  io_submit(2)."""
    return _linux._submit(ctx, iocbs)


def io_getevents(
    ctx: IOContext, min_nr: int, nr: int, timeout: float | None = None
) -> tuple[int, list[IOEvent]]:
    """``(n, events)`` or ``(-errno, [])``.  Timeout in seconds; None waits.
    Interrupted waits are retried (PEP 475).  io_getevents(2)."""
    return _linux._getevents(ctx, min_nr, nr, timeout)


def io_pgetevents(
    ctx: IOContext,
    min_nr: int,
    nr: int,
    timeout: float | None = None,
    sigmask: Iterable[int] | None = None,
) -> tuple[int, list[IOEvent]]:
    """Like :func:`io_getevents` with the signal mask set to *sigmask* during
    the wait; ``(-EINTR, [])`` when a signal interrupts it.  io_pgetevents(2)."""
    return _linux._getevents(ctx, min_nr, nr, timeout, sigmask, pgetevents=True)


def io_cancel(ctx: IOContext, iocb: Iocb) -> tuple[int, IOEvent | None]:
    """``(0, event)`` if the kernel cancelled it and returned its event (old
    kernels), ``(-EINPROGRESS, None)`` if the completion will be posted to the
    ring, ``(-EINVAL, None)`` if it cannot be cancelled.  io_cancel(2)."""
    return _linux._cancel(ctx, iocb)


def io_queue_init(maxevents: int) -> tuple[int, IOContext | None]:
    """``io_setup`` with libaio's check: ``(-EINVAL, None)`` without a system
    call when *maxevents* <= 0.  io_queue_init(3)."""
    if not isinstance(maxevents, int) or isinstance(maxevents, bool):
        raise TypeError(f"maxevents must be an int, not {type(maxevents).__name__!r}")
    if maxevents <= 0:
        return -errno.EINVAL, None
    return _linux._setup(maxevents)


def io_queue_release(ctx: IOContext) -> int:
    """Destroy the context: 0 or ``-errno``.  io_queue_release(3)."""
    return _linux._destroy(ctx)


def io_queue_run(ctx: IOContext) -> int:
    """Reap every waiting event without blocking and call each request's
    callback (:func:`io_set_callback`) as ``cb(ctx, iocb, res, res2)``.

    Returns 0 once no event is left, or ``-errno``.  Events of requests
    without a callback are consumed silently.  io_queue_run(3).
    """
    while True:
        ret, events = _linux._getevents(ctx, 0, 1, 0)
        if ret != 1:
            return ret
        ev = events[0]
        iocb = ev.obj
        if iocb is not None and iocb.callback is not None:
            iocb.callback(ctx, iocb, ev.res, ev.res2)


def io_set_callback(iocb: Iocb, cb: Callback | None) -> None:
    """Attach *cb* to *iocb*, for :func:`io_queue_run`.  Unlike C libaio the
    callback is kept beside the request, so ``aio_data`` stays yours."""
    if cb is not None and not callable(cb):
        raise TypeError("cb must be callable or None")
    iocb.callback = cb


def io_set_eventfd(iocb: Iocb, eventfd: int) -> None:
    """Make the completion of *iocb* add 1 to *eventfd* (``IOCB_FLAG_RESFD``)."""
    iocb.aio_flags |= IOCB_FLAG_RESFD
    iocb.aio_resfd = eventfd


def _reset(iocb: Iocb, opcode: int, fd: int) -> None:
    if not isinstance(iocb, Iocb):
        raise TypeError(f"iocb must be an Iocb, not {type(iocb).__name__!r}")
    # libaio's io_prep_* start with memset(iocb, 0, sizeof(*iocb)).
    iocb.aio_data = 0
    iocb.aio_reqprio = 0
    iocb.aio_rw_flags = 0
    iocb.aio_flags = 0
    iocb.aio_resfd = 0
    iocb.aio_buf = None
    iocb.aio_nbytes = 0
    iocb.aio_offset = 0
    iocb.aio_lio_opcode = opcode
    iocb.aio_fildes = fd


def io_prep_pread(iocb: Iocb, fd: int, buf: Any, count: int, offset: int) -> None:
    """Make *iocb* a read of *count* bytes of *fd* at *offset* into *buf*."""
    _reset(iocb, IOCB_CMD_PREAD, fd)
    iocb.aio_buf = buf
    iocb.aio_nbytes = count
    iocb.aio_offset = offset


def io_prep_pwrite(iocb: Iocb, fd: int, buf: Any, count: int, offset: int) -> None:
    """Make *iocb* a write of *count* bytes of *buf* to *fd* at *offset*."""
    _reset(iocb, IOCB_CMD_PWRITE, fd)
    iocb.aio_buf = buf
    iocb.aio_nbytes = count
    iocb.aio_offset = offset


def io_prep_preadv(iocb: Iocb, fd: int, iov: Sequence[Any], iovcnt: int, offset: int) -> None:
    """Make *iocb* a read into the first *iovcnt* buffers of *iov*."""
    _reset(iocb, IOCB_CMD_PREADV, fd)
    iocb.aio_buf = list(iov)
    iocb.aio_nbytes = iovcnt
    iocb.aio_offset = offset


def io_prep_pwritev(iocb: Iocb, fd: int, iov: Sequence[Any], iovcnt: int, offset: int) -> None:
    """Make *iocb* a write of the first *iovcnt* buffers of *iov*."""
    _reset(iocb, IOCB_CMD_PWRITEV, fd)
    iocb.aio_buf = list(iov)
    iocb.aio_nbytes = iovcnt
    iocb.aio_offset = offset


def io_prep_preadv2(
    iocb: Iocb, fd: int, iov: Sequence[Any], iovcnt: int, offset: int, flags: int
) -> None:
    """:func:`io_prep_preadv` with ``RWF_*`` *flags*."""
    io_prep_preadv(iocb, fd, iov, iovcnt, offset)
    iocb.aio_rw_flags = flags


def io_prep_pwritev2(
    iocb: Iocb, fd: int, iov: Sequence[Any], iovcnt: int, offset: int, flags: int
) -> None:
    """:func:`io_prep_pwritev` with ``RWF_*`` *flags*."""
    io_prep_pwritev(iocb, fd, iov, iovcnt, offset)
    iocb.aio_rw_flags = flags


def io_prep_fsync(iocb: Iocb, fd: int) -> None:
    """Make *iocb* an fsync of *fd*."""
    _reset(iocb, IOCB_CMD_FSYNC, fd)


def io_prep_fdsync(iocb: Iocb, fd: int) -> None:
    """Make *iocb* an fdatasync of *fd*."""
    _reset(iocb, IOCB_CMD_FDSYNC, fd)


def io_prep_poll(iocb: Iocb, fd: int, events: int) -> None:
    """Make *iocb* a poll of *fd* for *events* (``select.POLLIN``...)."""
    _reset(iocb, IOCB_CMD_POLL, fd)
    iocb.aio_buf = events
