"""Linux native AIO: ``io_setup`` ... ``io_destroy``, in Python's convention.

Some facts about Linux AIO
==========================

These are what the kernel does (checked on Linux 6.x); the code below rests
on them.

* A context (``aio_context_t``) is the *address* of a ring the kernel maps into
  the process: ``struct aio_ring`` (32-byte header: id, nr, head, tail, magic,
  features, header length) followed by ``nr`` ``struct io_event``.  The kernel
  writes an event, then (after a write barrier) advances ``tail``; whoever
  reaps advances ``head``.  libaio reads this ring from user space to avoid a
  system call; so do :class:`IOBatch` and :func:`io_getevents` (on x86-64
  only, where loads are not reordered with loads nor stores with earlier
  loads, so no fence is needed).  The ``io_getevents`` system call moves
  ``head`` too (under a lock of its own): while a thread waits in it, nobody
  else may read the ring from user space, or both would take the same events.
* ``io_destroy`` cancels what it can, then *blocks* until every other request
  has completed, then unmaps the ring and returns the context's share of
  ``/proc/sys/fs/aio-nr``.  It waits for an RCU grace period even on an idle
  context: tens of milliseconds.  Never create a context per request.
* The next ``io_setup`` may return the *same* id (the ring lands at the same
  address), so a destroyed :class:`IOContext` refuses further use itself with
  ``EINVAL`` instead of handing a stale id to the kernel, which might now
  belong to somebody else's context.
* A thread blocked in ``io_getevents`` when the context is destroyed wakes up
  with ``EINVAL``.
* ``io_submit`` copies each ``struct iocb`` at submission, but the *buffers*
  are used until the request completes, and ``io_cancel`` finds a request by
  the address of its iocb.  So each :class:`Iocb` keeps its own ``struct
  iocb`` at a fixed address and its buffers pinned (see ``xaio._buffers``)
  from submission until its event is reaped or the context is destroyed.
* ``io_submit`` takes requests in order and stops at the first that fails: it
  returns how many it accepted if that is > 0 (the failing one's error is lost,
  and it is not queued), else the error.
* Only O_DIRECT reads and writes on regular files are truly asynchronous.  On
  buffered files, pipes and sockets ``io_submit`` performs the I/O itself and
  can block for ever (a read on an empty FIFO).  ``RWF_NOWAIT`` makes such a
  request fail with ``-EAGAIN`` in its event instead.
* ``io_cancel`` can cancel only a pending ``IOCB_CMD_POLL`` on modern kernels:
  it returns ``EINPROGRESS`` and posts the completion (res 0) to the ring.
  Everything else (any regular-file read or write) gives ``EINVAL``.
* Contexts are not inherited by ``fork``: in the child the kernel knows no such
  context (``EINVAL``), but the ring is still mapped.  Reading it would steal
  the parent's completions, so the child never touches it.
* ``IOCB_FLAG_RESFD`` makes each completion add 1 to an eventfd: that is how an
  event loop learns that events are waiting.
* ``io_submit`` of more than 2 requests *plugs* the block queue: the device
  sees them only when the call returns.  A virtio disk tends to complete a
  batch all at once, so resubmitting a whole reaped batch in one call keeps the
  device idle while the kernel prepares every request of it (microseconds
  each).  So :func:`io_submit` and the engine make one call per 4 requests,
  and ``IOBatch.submit`` takes a *chunk*: the device starts on the first
  requests while the kernel prepares the next.  A larger chunk makes fewer
  system calls, which pays when the CPU, not the device, is the bottleneck.
  :func:`io_submit` checks every request before its first call; in a batch
  of more than 16, that call takes one request (not plugged: the device
  starts on it during the call), and the buffers of the rest are pinned
  after it.

Man pages: io_setup(2), io_submit(2), io_getevents(2), io_pgetevents(2),
io_cancel(2), io_destroy(2), aio(7).
"""

from __future__ import annotations

from xaio._abi.aio import (
    IOCB_CMD_FDSYNC,
    IOCB_CMD_FSYNC,
    IOCB_CMD_NOOP,
    IOCB_CMD_POLL,
    IOCB_CMD_PREAD,
    IOCB_CMD_PREADV,
    IOCB_CMD_PWRITE,
    IOCB_CMD_PWRITEV,
    IOCB_FLAG_IOPRIO,
    IOCB_FLAG_RESFD,
    RWF_APPEND,
    RWF_ATOMIC,
    RWF_DONTCACHE,
    RWF_DSYNC,
    RWF_HIPRI,
    RWF_NOAPPEND,
    RWF_NOWAIT,
    RWF_SYNC,
)
from xaio.linux._batch import IOBatch
from xaio.linux._context import (
    IOContext,
    io_cancel,
    io_destroy,
    io_getevents,
    io_pgetevents,
    io_setup,
    io_submit,
)
from xaio.linux._engine import LinuxAioEngine
from xaio.linux._iocb import Iocb, IocbInFlightError, IOEvent

__all__ = [
    "IOContext",
    "Iocb",
    "IOEvent",
    "IOBatch",
    "IocbInFlightError",
    "LinuxAioEngine",
    "io_setup",
    "io_destroy",
    "io_submit",
    "io_getevents",
    "io_pgetevents",
    "io_cancel",
    "IOCB_CMD_PREAD",
    "IOCB_CMD_PWRITE",
    "IOCB_CMD_FSYNC",
    "IOCB_CMD_FDSYNC",
    "IOCB_CMD_POLL",
    "IOCB_CMD_NOOP",
    "IOCB_CMD_PREADV",
    "IOCB_CMD_PWRITEV",
    "IOCB_FLAG_RESFD",
    "IOCB_FLAG_IOPRIO",
    "RWF_HIPRI",
    "RWF_DSYNC",
    "RWF_SYNC",
    "RWF_NOWAIT",
    "RWF_APPEND",
    "RWF_NOAPPEND",
    "RWF_ATOMIC",
    "RWF_DONTCACHE",
]
