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
  device idle for as long as the kernel takes to prepare it (~5 us a request
  here); submitting in chunks of 4 (``IOBatch.submit(chunk=4)``, and the
  engine) measured 20% more IOPS at depth 32 while the device was the
  bottleneck, chunks of 8 a few percent more than 4 once the CPU was (fewer
  system calls; benchmarks/notes.md).

Man pages: io_setup(2), io_submit(2), io_getevents(2), io_pgetevents(2),
io_cancel(2), io_destroy(2), aio(7).
"""

from __future__ import annotations

import array
import atexit
import collections
import ctypes
import errno
import os
import select
import struct
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from xaio import _syscall
from xaio._abi import ARCH
from xaio._abi.aio import (
    AIO_RING_INCOMPAT_FEATURES,
    AIO_RING_MAGIC,
    IO_EVENT_STRUCT,
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
    IOCB_STRUCT,
    RWF_APPEND,
    RWF_ATOMIC,
    RWF_DONTCACHE,
    RWF_DSYNC,
    RWF_HIPRI,
    RWF_NOAPPEND,
    RWF_NOWAIT,
    RWF_SYNC,
    io_event,
    iocb,
)
from xaio._buffers import Pin, buffer_length, iovec_array, pin, pin_many
from xaio._ops import CancelOutcome, InFlight, OpCode, Operation, OpState, check_batch
from xaio._syscall import Timespec, check, oserror, timespec_from_seconds
from xaio.engine._protocol import Engine, EngineClosedError

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

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_VECTORED = (IOCB_CMD_PREADV, IOCB_CMD_PWRITEV)
_READS = (IOCB_CMD_PREAD, IOCB_CMD_PREADV)
# User-space reaping of the completion ring relies on x86-64's memory model.
_USER_RING = ARCH == "x86_64"


class IocbInFlightError(RuntimeError):
    """An :class:`Iocb` that is in flight was modified or submitted again."""


# ---------------------------------------------------------------------------------
# Iocb
# ---------------------------------------------------------------------------------

_FIELDS = (
    "aio_data",
    "aio_lio_opcode",
    "aio_reqprio",
    "aio_fildes",
    "aio_buf",
    "aio_nbytes",
    "aio_offset",
    "aio_rw_flags",
    "aio_flags",
    "aio_resfd",
)
_FIELD_SET = frozenset(_FIELDS)

#: The integer fields: the range each accepts, and where and how it is stored
#: in ``struct iocb`` (the value masked to the field's width, so a negative
#: value lands as the two's complement the kernel reads).  Setting one of them
#: on a prepared :class:`Iocb` (not the opcode, whose change touches the
#: buffer rules) checks it and writes it into the ready image at once.
_INT_FIELDS: dict[str, tuple[int, int, int, Any, int]] = {
    name: (lo, hi, getattr(iocb, name).offset, struct.Struct(fmt).pack_into, mask)
    for name, lo, hi, fmt, mask in (
        ("aio_data", 0, _U64, "<Q", _U64),
        ("aio_lio_opcode", 0, _U16, "<H", _U16),
        ("aio_reqprio", -0x8000, 0x7FFF, "<H", _U16),
        ("aio_fildes", -(1 << 31), _U32, "<I", _U32),
        ("aio_offset", -(1 << 63), (1 << 63) - 1, "<Q", _U64),
        ("aio_rw_flags", -(1 << 31), _U32, "<I", _U32),
        ("aio_flags", 0, _U32, "<I", _U32),
        ("aio_resfd", -(1 << 31), _U32, "<I", _U32),
    )
}
_IMAGE_FIELDS = {name: spec for name, spec in _INT_FIELDS.items() if name != "aio_lio_opcode"}
#: aio_key: set to this in each iocb before io_submit; the kernel writes 0
#: into it when it takes the request, which tells an interrupted submission
#: which requests the kernel took.
_UNSENT_KEY = 1
_KEY = struct.Struct("<I")
_KEY_OFFSET = iocb.aio_key.offset
_c_char_from_buffer = ctypes.c_char.from_buffer
_addressof = ctypes.addressof
# What the ready image holds in place of the buffer (Iocb._kind).
_NO_BUFFER, _ONE_BUFFER, _VECTOR = 0, 1, 2


def _int_field(name: str, value: Any) -> int:
    lo, hi = _INT_FIELDS[name][:2] if name in _INT_FIELDS else (0, _U64)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Iocb.{name} must be an int, not {type(value).__name__!r}")
    if not lo <= value <= hi:
        raise ValueError(f"Iocb.{name}={value} is out of range [{lo}, {hi}]")
    return value


class Iocb:
    """A Linux AIO request: a mutable mirror of ``struct iocb``.

    Attributes mirror the kernel's fields.  ``aio_buf`` is a Python buffer (or
    a sequence of buffers for the vectored opcodes, the event mask for
    ``IOCB_CMD_POLL``, or None).  ``aio_nbytes`` reads the length that will be
    submitted: the value set, or, when it was set to None (what the
    constructors do), the buffer's length -- the number of buffers for the
    vectored opcodes, 0 without a buffer -- and None when the buffer is one
    that submission would refuse.

    Fields are checked before anything reaches the kernel: wrong types raise
    ``TypeError`` and impossible values ``ValueError`` from :func:`io_submit`.
    The first submission checks every field and builds the ``struct iocb``;
    from then on setting an integer field (``aio_offset``...) checks that
    value and writes it into that struct at once, so resubmitting costs only
    pinning the buffer again.  While the request is in flight the object
    refuses changes (:class:`IocbInFlightError`); its buffers are pinned from
    submission until its event is reaped.

    Build one with a constructor (:meth:`pread`, :meth:`pwrite`, :meth:`preadv`,
    :meth:`pwritev`, :meth:`fsync`, :meth:`fdsync`, :meth:`poll`) or ``Iocb()``
    (all zero) and set the fields.
    """

    __slots__ = (
        "aio_data",
        "aio_lio_opcode",
        "aio_reqprio",
        "aio_fildes",
        "aio_buf",
        "_nbytes",
        "aio_offset",
        "aio_rw_flags",
        "aio_flags",
        "aio_resfd",
        "callback",
        "_struct",
        "_mem",
        "_address",
        "_pins",
        "_ctx",
        "_ready",
        "_kind",
        "_writable",
        "_export",
        "_pin_address",
        "_pin_nbytes",
        "__weakref__",
    )

    aio_data: int
    aio_lio_opcode: int
    aio_reqprio: int
    aio_fildes: int
    aio_buf: Any
    aio_offset: int
    aio_rw_flags: int
    aio_flags: int
    aio_resfd: int
    callback: Any
    _nbytes: Any
    _struct: iocb
    _mem: memoryview
    _address: int
    #: What the kernel may use while the request is in flight: the buffer
    #: exports (and a vectored request's iovec array), referred to only from
    #: here, so that dropping the tuple releases them.
    _pins: tuple[Any, ...]
    _ctx: IOContext | None
    #: True while ``_struct`` holds every field as checked and written by the
    #: last full :meth:`_prepare` plus the integer fields set since.
    _ready: bool
    _kind: int
    _writable: bool
    #: The single buffer is a bytearray or a writable 1-D byte memoryview,
    #: which a one-char ctypes export holds (as in ``Pin``).
    _export: bool
    #: The single buffer's address and length when ``_struct`` was built.
    _pin_address: int
    _pin_nbytes: int

    def __init__(self) -> None:
        s = object.__setattr__
        s(self, "_ctx", None)
        s(self, "_ready", False)
        for name in _FIELDS:
            s(self, name, 0)
        s(self, "aio_buf", None)
        s(self, "callback", None)
        st = iocb()
        s(self, "_struct", st)
        s(self, "_mem", memoryview(st).cast("B"))
        s(self, "_address", ctypes.addressof(st))
        s(self, "_pins", ())
        s(self, "_kind", _NO_BUFFER)
        s(self, "_writable", False)
        s(self, "_export", False)
        s(self, "_pin_address", 0)
        s(self, "_pin_nbytes", 0)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIELD_SET:
            if self._ctx is not None:
                raise IocbInFlightError(f"cannot set {name}: the Iocb is in flight")
            object.__setattr__(self, name, value)
            if self._ready:
                spec = _IMAGE_FIELDS.get(name)
                if spec is not None and type(value) is int and spec[0] <= value <= spec[1]:
                    spec[3](self._mem, spec[2], value & spec[4])
                else:
                    # the next submission checks everything again
                    object.__setattr__(self, "_ready", False)
        else:
            object.__setattr__(self, name, value)

    @property
    def aio_nbytes(self) -> int | None:
        """The number of bytes (of buffers, for the vectored opcodes) that a
        submission hands to the kernel: the value set, else derived from
        ``aio_buf`` (None if the submission would refuse that buffer)."""
        n = self._nbytes
        if n is not None:
            return n  # type: ignore[no-any-return]
        buf = self.aio_buf
        if buf is None:
            return 0
        if isinstance(buf, int) and not isinstance(buf, bool):
            return 0 if self.aio_lio_opcode == IOCB_CMD_POLL else None
        if self.aio_lio_opcode in _VECTORED:
            return len(buf) if isinstance(buf, (list, tuple)) else None
        try:
            return buffer_length(buf)
        except (TypeError, ValueError):
            return None

    @aio_nbytes.setter
    def aio_nbytes(self, value: int | None) -> None:
        # Reached through __setattr__, which refuses it in flight.
        object.__setattr__(self, "_nbytes", value)

    @property
    def in_flight(self) -> bool:
        """True from a successful submission until its event is reaped (or
        its context destroyed)."""
        return self._ctx is not None

    # --- constructors ------------------------------------------------------------
    @classmethod
    def _make(
        cls,
        opcode: int,
        fd: int,
        buf: Any,
        nbytes: int | None,
        offset: int,
        data: int,
        rw_flags: int,
        eventfd: int | None,
        ioprio: int | None,
    ) -> Iocb:
        self = cls()
        self.aio_lio_opcode = opcode
        self.aio_fildes = fd
        self.aio_buf = buf
        self.aio_nbytes = nbytes
        self.aio_offset = offset
        self.aio_data = data
        self.aio_rw_flags = rw_flags
        if eventfd is not None:
            self.aio_flags |= IOCB_FLAG_RESFD
            self.aio_resfd = eventfd
        if ioprio is not None:
            self.aio_flags |= IOCB_FLAG_IOPRIO
            self.aio_reqprio = ioprio
        return self

    @classmethod
    def pread(
        cls,
        fd: int,
        buf: Any,
        offset: int,
        *,
        count: int | None = None,
        data: int = 0,
        rw_flags: int = 0,
        eventfd: int | None = None,
        ioprio: int | None = None,
    ) -> Iocb:
        """Read ``len(buf)`` bytes (*count* if given) of *fd* at *offset*
        into writable *buf*.

        The arguments follow ``os.pread``'s order: the third is the offset.
        libaio's ``io_prep_pread(iocb, fd, buf, count, offset)`` is
        ``Iocb.pread(fd, buf, offset, count=count)`` (or
        :func:`xaio.libaio.io_prep_pread`)."""
        return cls._make(IOCB_CMD_PREAD, fd, buf, count, offset, data, rw_flags, eventfd, ioprio)

    @classmethod
    def pwrite(
        cls,
        fd: int,
        buf: Any,
        offset: int,
        *,
        count: int | None = None,
        data: int = 0,
        rw_flags: int = 0,
        eventfd: int | None = None,
        ioprio: int | None = None,
    ) -> Iocb:
        """Write the bytes of *buf* (its first *count* if given) to *fd* at
        *offset* (``os.pwrite``'s order; libaio's ``io_prep_pwrite(iocb, fd,
        buf, count, offset)`` is ``Iocb.pwrite(fd, buf, offset, count=count)``)."""
        return cls._make(IOCB_CMD_PWRITE, fd, buf, count, offset, data, rw_flags, eventfd, ioprio)

    @classmethod
    def preadv(
        cls,
        fd: int,
        buffers: Sequence[Any],
        offset: int,
        *,
        count: int | None = None,
        data: int = 0,
        rw_flags: int = 0,
        eventfd: int | None = None,
        ioprio: int | None = None,
    ) -> Iocb:
        """Scatter-read from *fd* at *offset* into the writable *buffers*
        (the first *count* of them if given: libaio's ``iovcnt``)."""
        return cls._make(
            IOCB_CMD_PREADV, fd, list(buffers), count, offset, data, rw_flags, eventfd, ioprio
        )

    @classmethod
    def pwritev(
        cls,
        fd: int,
        buffers: Sequence[Any],
        offset: int,
        *,
        count: int | None = None,
        data: int = 0,
        rw_flags: int = 0,
        eventfd: int | None = None,
        ioprio: int | None = None,
    ) -> Iocb:
        """Gather-write *buffers* (the first *count* of them if given) to
        *fd* at *offset*."""
        return cls._make(
            IOCB_CMD_PWRITEV, fd, list(buffers), count, offset, data, rw_flags, eventfd, ioprio
        )

    @classmethod
    def fsync(
        cls,
        fd: int,
        *,
        data: int = 0,
        rw_flags: int = 0,
        eventfd: int | None = None,
        ioprio: int | None = None,
    ) -> Iocb:
        """Flush *fd*'s data and metadata (``fsync(2)``)."""
        return cls._make(IOCB_CMD_FSYNC, fd, None, 0, 0, data, rw_flags, eventfd, ioprio)

    @classmethod
    def fdsync(
        cls,
        fd: int,
        *,
        data: int = 0,
        rw_flags: int = 0,
        eventfd: int | None = None,
        ioprio: int | None = None,
    ) -> Iocb:
        """Flush *fd*'s data (``fdatasync(2)``)."""
        return cls._make(IOCB_CMD_FDSYNC, fd, None, 0, 0, data, rw_flags, eventfd, ioprio)

    @classmethod
    def poll(
        cls,
        fd: int,
        events: int,
        *,
        data: int = 0,
        rw_flags: int = 0,
        eventfd: int | None = None,
        ioprio: int | None = None,
    ) -> Iocb:
        """Wait until *fd* has one of *events* (``select.POLLIN``...); the
        event's ``res`` is the mask of ready events.  Cancellable."""
        return cls._make(IOCB_CMD_POLL, fd, events, 0, 0, data, rw_flags, eventfd, ioprio)

    # --- submission ----------------------------------------------------------------
    def _prepare(self) -> None:
        """Pin the buffers and make ``struct iocb`` ready for the kernel.

        When nothing but integer fields (each checked as it was set) changed
        since the last submission and the single buffer is still where it was,
        with the same length, only the pin is taken again; otherwise
        :meth:`_build` checks every field.  Raises TypeError/ValueError before
        anything reaches the kernel."""
        if self._ctx is not None:
            raise IocbInFlightError("this Iocb is already in flight")
        if self._ready:
            kind = self._kind
            if kind == _ONE_BUFFER:
                buf = self.aio_buf
                try:
                    p: Any = _c_char_from_buffer(buf) if self._export else None
                except (TypeError, ValueError):  # released or emptied: _build says why
                    p = None
                else:
                    if p is not None:
                        if _addressof(p) == self._pin_address and len(buf) == self._pin_nbytes:
                            _KEY.pack_into(self._mem, _KEY_OFFSET, _UNSENT_KEY)
                            object.__setattr__(self, "_pins", (p,))
                            return
                    else:
                        p = Pin(buf, self._writable)
                        if p.address == self._pin_address and p.nbytes == self._pin_nbytes:
                            _KEY.pack_into(self._mem, _KEY_OFFSET, _UNSENT_KEY)
                            object.__setattr__(self, "_pins", (p,))
                            return
                del p  # the buffer moved or was resized: drop that export
            elif kind == _NO_BUFFER:
                _KEY.pack_into(self._mem, _KEY_OFFSET, _UNSENT_KEY)
                return
        self._build()

    def _build(self) -> None:
        """Check every field, pin the buffers and fill ``struct iocb``."""
        object.__setattr__(self, "_ready", False)
        opcode = _int_field("aio_lio_opcode", self.aio_lio_opcode)
        reqprio = _int_field("aio_reqprio", self.aio_reqprio)
        fd = _int_field("aio_fildes", self.aio_fildes)
        offset = _int_field("aio_offset", self.aio_offset)
        rw_flags = _int_field("aio_rw_flags", self.aio_rw_flags)
        flags = _int_field("aio_flags", self.aio_flags)
        resfd = _int_field("aio_resfd", self.aio_resfd)
        data = _int_field("aio_data", self.aio_data)
        buf = self.aio_buf
        nbytes = self._nbytes
        pins: tuple[Any, ...] = ()
        address = 0
        kind = _NO_BUFFER
        writable = False
        if opcode in _VECTORED:
            if buf is None:
                buffers: list[Any] = []
            elif isinstance(buf, (list, tuple)):
                buffers = list(buf)
            else:
                raise TypeError(
                    "aio_buf of a vectored request must be a list of buffers, "
                    f"not {type(buf).__name__!r}"
                )
            count = len(buffers) if nbytes is None else nbytes
            _int_field("aio_nbytes", count)
            if count > len(buffers):
                raise ValueError(
                    f"aio_nbytes={count} is more than the {len(buffers)} buffers given"
                )
            pinned = pin_many(buffers[:count], writable=opcode == IOCB_CMD_PREADV)
            iovecs = iovec_array(pinned)
            pins = (*pinned, iovecs)
            address = ctypes.addressof(iovecs)
            nbytes = count
            kind = _VECTOR
        elif buf is None:
            nbytes = 0 if nbytes is None else _int_field("aio_nbytes", nbytes)
            if nbytes and opcode in (IOCB_CMD_PREAD, IOCB_CMD_PWRITE):
                raise ValueError(f"aio_nbytes={nbytes} but no aio_buf to transfer into/from")
        elif isinstance(buf, int) and not isinstance(buf, bool):
            if opcode != IOCB_CMD_POLL:
                raise TypeError(
                    "aio_buf must be a buffer (raw addresses are not accepted); an int is "
                    "only meaningful as the event mask of IOCB_CMD_POLL"
                )
            address = _int_field("aio_buf", buf)
            nbytes = 0 if nbytes is None else _int_field("aio_nbytes", nbytes)
        else:
            writable = opcode == IOCB_CMD_PREAD
            p = pin(buf, writable=writable)
            n = p.nbytes if nbytes is None else nbytes
            try:
                _int_field("aio_nbytes", n)
                if n > p.nbytes:
                    raise ValueError(f"aio_nbytes={n} is larger than the buffer ({p.nbytes})")
            except BaseException:
                p.release()
                raise
            pins = (p,)
            address = p.address
            nbytes = n
            kind = _ONE_BUFFER
        st = self._struct
        st.aio_data = data
        st.aio_key = _UNSENT_KEY
        st.aio_rw_flags = rw_flags if rw_flags < (1 << 31) else rw_flags - (1 << 32)
        st.aio_lio_opcode = opcode
        st.aio_reqprio = reqprio
        st.aio_fildes = fd & _U32
        st.aio_buf = address
        st.aio_nbytes = nbytes
        st.aio_offset = offset
        st.aio_reserved2 = 0
        st.aio_flags = flags
        st.aio_resfd = resfd & _U32
        s = object.__setattr__
        s(self, "_pins", pins)
        s(self, "_kind", kind)
        s(self, "_writable", writable)
        if kind == _ONE_BUFFER:
            t = type(buf)
            s(
                self,
                "_export",
                pins[0].nbytes > 0
                and (
                    t is bytearray
                    or (
                        t is memoryview and buf.ndim == 1 and buf.format == "B" and not buf.readonly
                    )
                ),
            )
            s(self, "_pin_address", address)
            s(self, "_pin_nbytes", pins[0].nbytes)
        s(self, "_ready", True)

    def _release(self) -> None:
        # (IOContext._events does the same for each reaped request.)
        object.__setattr__(self, "_pins", ())
        object.__setattr__(self, "_ctx", None)

    def __repr__(self) -> str:
        state = " in flight" if self._ctx is not None else ""
        buf = self.aio_buf
        desc = (
            f"{type(buf).__name__}[{len(buf)}]"
            if isinstance(buf, (bytes, bytearray, memoryview, list, tuple))
            else repr(buf)
        )
        return (
            f"<Iocb op={self.aio_lio_opcode} fd={self.aio_fildes} buf={desc} "
            f"nbytes={self.aio_nbytes} offset={self.aio_offset} data={self.aio_data}{state}>"
        )


class IOEvent(NamedTuple):
    """A completion, as ``struct io_event``: ``obj`` is the :class:`Iocb` that
    was submitted (None if the context no longer knew it), ``res`` the bytes
    transferred or ``-errno`` exactly as the kernel reported it."""

    data: int
    obj: Iocb | None
    res: int
    res2: int


#: Makes an IOEvent from a 4-tuple without NamedTuple's Python-level __new__.
_new_event = tuple.__new__


# ---------------------------------------------------------------------------------
# IOContext
# ---------------------------------------------------------------------------------

#: Live contexts of this process by kernel id, so that a raw-id io_destroy
#: marks the IOContext object destroyed too.
_live: weakref.WeakValueDictionary[int, IOContext] = weakref.WeakValueDictionary()
_live_lock = threading.Lock()


#: Incremented in every forked child (os.getpid() is a system call; this is not).
_fork_generation = [0]


def _after_fork_in_child() -> None:
    global _idle_lock
    _fork_generation[0] += 1
    # Contexts are not inherited: the child must never use, read or destroy them.
    for ctx in list(_live.values()):
        ctx._forked_away()
    _live.clear()
    _idle_lock = threading.Lock()  # a parent's thread may have held it
    _idle_contexts.clear()  # the parent's (forked away above)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class IOContext:
    """A Linux AIO context (``aio_context_t``), made by :func:`io_setup`.

    ``id`` is the kernel's context id (an int).  As a context manager, leaving
    the ``with`` block destroys it (unless already destroyed).  Holds a strong
    reference to every in-flight :class:`Iocb` (and so to its buffers) until
    its event is reaped or the context is destroyed.  Garbage-collecting a live
    context destroys it with a ``ResourceWarning``.
    """

    __slots__ = (
        "id",
        "nr_events",
        "_ring_nr",
        "_inflight",
        "_lock",
        "_unmap_lock",
        "_batches",
        "_destroyed",
        "_foreign",
        "_pid",
        "_stats",
        "_cid",
        "_ring",
        "_waiters",
        "_spare_events",
        "__weakref__",
    )

    def __init__(self, ctx_id: int, nr_events: int) -> None:
        self.id = ctx_id
        self.nr_events = nr_events
        # The ring's real size (the kernel rounds nr_events up); fresh from
        # io_setup, so the ring is certainly mapped.
        self._ring_nr = _syscall.aio_ring_at(ctx_id).nr if _USER_RING else 1 << 20
        self._inflight: dict[int, Iocb] = {}
        self._lock = threading.Lock()
        # Held while the ring may be unmapped (io_destroy) and while IOBatch
        # reads it from user space.
        self._unmap_lock = threading.Lock()
        # IOBatch objects on this context: kept alive (with their iocbs and
        # pinned buffers) until the context is destroyed or they are closed.
        self._batches: set[IOBatch] = set()
        self._destroyed = False
        self._foreign = False
        self._pid = os.getpid()
        self._stats = {"submitted": 0, "reaped": 0}
        self._cid = ctypes.c_void_p(ctx_id)
        # The completion ring in user memory, read by io_getevents (None where
        # it cannot be, see _user_ring); under _unmap_lock, while alive.
        self._ring: memoryview | None = _user_ring(self)[0]
        # Threads inside the io_getevents system call on this context (counted
        # under _unmap_lock): while there are any, the kernel moves the ring's
        # head, so io_getevents does not read the ring itself.
        self._waiters = 0
        # io_event arrays for that system call, reused (one per waiting thread).
        self._spare_events: list[Any] = []
        with _live_lock:
            _live[ctx_id] = self

    # -- state ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once destroyed (or, in a forked child, always)."""
        return self._destroyed or self._foreign

    def _forked_away(self) -> None:
        self._foreign = True
        self._ring = None  # never read the parent's ring (SPEC 2.6)
        # The parent's requests are not ours to complete; forget them without
        # touching the kernel.  (The child's copy of the memory is private.)
        self._inflight = {}
        self._batches = set()

    def _check_usable(self) -> None:
        if self._destroyed or self._foreign:
            raise oserror(errno.EINVAL)

    def statistics(self) -> dict[str, Any]:
        """Counters: in flight, submitted, reaped; and whether it is closed."""
        return {
            "id": self.id,
            "nr_events": self.nr_events,
            "in_flight": len(self._inflight),
            "closed": self.closed,
            **self._stats,
        }

    # -- operations ---------------------------------------------------------------
    def submit(self, iocbs: Iterable[Iocb]) -> int:
        """Same as :func:`io_submit` on this context."""
        return io_submit(self, iocbs)

    def getevents(self, min_nr: int, nr: int, timeout: float | None = None) -> list[IOEvent]:
        """Same as :func:`io_getevents` on this context."""
        return io_getevents(self, min_nr, nr, timeout)

    def cancel(self, iocb: Iocb) -> IOEvent | None:
        """Same as :func:`io_cancel` on this context."""
        return io_cancel(self, iocb)

    def destroy(self) -> None:
        """Same as :func:`io_destroy` on this context."""
        self._destroy()

    def _destroy(self) -> int:
        """Destroy; return 0 or -errno (the libaio convention)."""
        if self._destroyed or self._foreign:
            return -errno.EINVAL
        with self._unmap_lock:
            ret: int = _syscall.io_destroy(self.id)
            if ret >= 0 or ret == -errno.EINVAL:
                # The ring is unmapped: mark it before a reader waiting for
                # this lock checks whether it may read it.
                self._destroyed = True
                self._ring = None
        if ret < 0 and ret != -errno.EINVAL:
            return ret
        # On success every request has completed (or was cancelled): the kernel
        # will not touch any buffer of this context again, so release them.  On
        # EINVAL the kernel no longer knows this context either.
        with self._lock:
            self._destroyed = True
            self._ring = None
            inflight, self._inflight = self._inflight, {}
        for iocb_obj in inflight.values():
            iocb_obj._release()
        batches, self._batches = self._batches, set()
        for batch in batches:
            batch._context_destroyed()
        with _live_lock:
            if _live.get(self.id) is self:
                del _live[self.id]
        return ret

    def _events(self, raw: list[tuple[int, int, int, int]]) -> list[IOEvent]:
        """The :class:`IOEvent` of each ``(data, obj, res, res2)`` taken from
        the kernel: its Iocb leaves the in-flight table and its buffers are
        released (as :meth:`Iocb._release` does)."""
        pop = self._inflight.pop
        setattr_ = object.__setattr__
        out: list[IOEvent] = []
        append = out.append
        with self._lock:
            for data, obj, res, res2 in raw:
                owner = pop(obj, None)
                if owner is not None:
                    setattr_(owner, "_pins", ())
                    setattr_(owner, "_ctx", None)
                append(_new_event(IOEvent, (data, owner, res, res2)))
        self._stats["reaped"] += len(raw)
        return out

    def __enter__(self) -> IOContext:
        return self

    def __exit__(self, *exc: object) -> None:
        if not (self._destroyed or self._foreign):
            self._destroy()

    def __del__(self) -> None:
        if getattr(self, "_destroyed", True) or self._foreign:
            return
        n = len(self._inflight)
        warnings.warn(
            f"unclosed {self!r} ({n} requests in flight): destroying it",
            ResourceWarning,
            stacklevel=2,
        )
        self._destroy()

    def __repr__(self) -> str:
        state = "destroyed" if self._destroyed else "forked-away" if self._foreign else "live"
        return f"<IOContext id={self.id:#x} nr_events={self.nr_events} {state}>"


def _as_context(ctx: IOContext) -> IOContext:
    if not isinstance(ctx, IOContext):
        raise TypeError(f"ctx must be an IOContext, not {type(ctx).__name__!r}")
    return ctx


def _check_nr(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__!r}")
    return value


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if timeout != timeout:  # NaN
        raise ValueError("timeout must not be NaN")
    if timeout < 0:
        raise ValueError("timeout must be >= 0 (or None to wait)")
    return float(timeout)


# ---------------------------------------------------------------------------------
# The io_* functions, raw (-errno) core shared with xaio.libaio
# ---------------------------------------------------------------------------------


def _setup(nr_events: Any) -> tuple[int, IOContext | None]:
    nr = _check_nr("nr_events", nr_events)
    if nr <= 0 or nr > _U32:
        return -errno.EINVAL, None
    ret, ctx_id = _syscall.io_setup(nr)
    if ret < 0:
        return ret, None
    return 0, IOContext(ctx_id, nr)


def _submit(ctx: IOContext, iocbs: Iterable[Iocb]) -> int:
    ctx = _as_context(ctx)
    batch = list(iocbs)
    for obj in batch:
        if type(obj) is not Iocb and not isinstance(obj, Iocb):
            i = next(i for i, o in enumerate(batch) if not isinstance(o, Iocb))
            raise TypeError(f"iocbs[{i}] must be an Iocb, not {type(batch[i]).__name__!r}")
    if len(set(map(id, batch))) != len(batch):
        raise IocbInFlightError("the same Iocb appears twice in one submission")
    if ctx._destroyed or ctx._foreign:
        return -errno.EINVAL
    # The kernel takes at most the ring's size in one call.
    n = min(len(batch), ctx._ring_nr)
    addresses = [obj._address for obj in batch]
    prepared = 0
    setattr_ = object.__setattr__
    try:
        # Register before the syscall: a completion may be reaped by another
        # thread before io_submit even returns.
        with ctx._lock:
            if ctx._destroyed or ctx._foreign:
                return -errno.EINVAL
            for obj in batch:
                obj._prepare()
                setattr_(obj, "_ctx", ctx)
                prepared += 1
            ctx._inflight.update(zip(addresses[:n], batch, strict=False))
    except BaseException:
        for obj in batch[:prepared]:
            obj._release()
        raise
    ret = 0
    ptrs = array.array("Q", addresses[:n])
    # One call per _SUBMIT_CHUNK requests (the device starts on the first
    # ones while the kernel prepares the next; see the module's essay): the
    # answer is the same as one call's, since the kernel takes requests in
    # order and stops at the first it refuses.
    done = 0
    try:
        base = ptrs.buffer_info()[0]
        while done < n:
            m = n - done if n - done < _SUBMIT_CHUNK else _SUBMIT_CHUNK
            r = _FAST_SUBMIT(ctx._cid, m, ctypes.c_void_p(base + done * 8))
            if r <= 0:
                ret = r
                break
            done += r
            if r < m:
                break
    except BaseException:
        # Interrupted (Ctrl-C) around a call: the requests the kernel took
        # have aio_key zeroed; give back the others.
        while done < n and not _KEY.unpack_from(batch[done]._mem, _KEY_OFFSET)[0]:
            done += 1
        _unsubmit(ctx, batch[done:])
        ctx._stats["submitted"] += done
        raise
    if done < len(batch):
        _unsubmit(ctx, batch[done:])
    ctx._stats["submitted"] += done
    return done if done else ret


def _unsubmit(ctx: IOContext, iocbs: list[Iocb]) -> None:
    """Forget *iocbs*, which the kernel did not take, and release them."""
    with ctx._lock:
        for obj in iocbs:
            if ctx._inflight.get(obj._address) is obj:
                del ctx._inflight[obj._address]
    for obj in iocbs:
        obj._release()


def _getevents(
    ctx: IOContext,
    min_nr: Any,
    nr: Any,
    timeout: Any,
    sigmask: Iterable[int] | None = None,
    pgetevents: bool = False,
) -> tuple[int, list[IOEvent]]:
    """The raw core of io_getevents / io_pgetevents: ``(n, events)`` or
    ``(-errno, [])``.

    Events already in the context's ring are read from user memory (no
    system call); the system call is made only to wait for more (fewer than
    *min_nr* there and a timeout that is not 0) or where the ring cannot be
    read (see :func:`_user_ring`).  While a thread waits in that call the
    kernel moves the ring's head, so no other thread reads the ring
    meanwhile: they make the system call too."""
    if type(ctx) is not IOContext:
        ctx = _as_context(ctx)
    if type(min_nr) is not int:
        min_nr = _check_nr("min_nr", min_nr)
    if type(nr) is not int:
        nr = _check_nr("nr", nr)
    if timeout is not None:
        timeout = _check_timeout(timeout)
    sigset_addr = 0
    keep: list[Any] = []
    if pgetevents and sigmask is not None:
        bits = 0
        for sig in sigmask:
            signo = int(sig)
            if not 1 <= signo <= 64:
                raise ValueError(f"invalid signal number {signo}")
            bits |= 1 << (signo - 1)
        mask = ctypes.c_uint64(bits)
        aio_sigset = (ctypes.c_uint64 * 2)(ctypes.addressof(mask), 8)
        keep += [mask, aio_sigset]
        sigset_addr = ctypes.addressof(aio_sigset)
    if ctx._destroyed or ctx._foreign:
        return -errno.EINVAL, []
    if nr < 0 or min_nr < 0 or min_nr > nr:
        return -errno.EINVAL, []
    if nr > ctx._ring_nr:
        # The ring never holds more events than this: a larger array would
        # only waste memory (and waiting for more than can ever be waiting
        # would never end, so min_nr is capped too).
        nr = ctx._ring_nr
        min_nr = min(min_nr, nr)
    raw: list[tuple[int, int, int, int]] = []
    ring = ctx._ring
    waiting = False  # counted in ctx._waiters
    events: Any = None
    try:
        if ring is not None:
            with ctx._unmap_lock:  # io_destroy unmaps the ring: never read a dead one
                if ctx._destroyed or ctx._foreign:
                    return -errno.EINVAL, []
                if not ctx._waiters and nr:
                    _take_ring_events(ring, ctx._ring_nr, nr, raw)
                if len(raw) < min_nr and (timeout != 0.0 or ctx._waiters):
                    ctx._waiters += 1
                    waiting = True
            if not waiting:
                return len(raw), ctx._events(raw)
        got = len(raw)
        if ring is not None:
            spare = ctx._spare_events
            events = spare.pop() if spare else (io_event * ctx._ring_nr)()
        else:
            events = (io_event * max(nr, 1))()
        ev_addr = ctypes.addressof(events)
        deadline = None if timeout is None else time.monotonic() + timeout
        ts = Timespec() if timeout is not None else None
        while True:
            if ts is None or deadline is None:
                cts = None
            else:
                timespec_from_seconds(deadline - time.monotonic(), ts)
                cts = ctypes.c_void_p(ctypes.addressof(ts))
            want_min = max(min_nr - got, 0)
            if pgetevents:
                ret = _syscall.io_pgetevents(
                    ctx.id,
                    want_min,
                    nr - got,
                    ev_addr,
                    cts.value if cts is not None else 0,
                    sigset_addr,
                )
            else:
                ret = _FAST_GETEVENTS(ctx._cid, want_min, nr - got, ctypes.c_void_p(ev_addr), cts)
            if ret == -errno.EINTR and not pgetevents:
                _syscall.run_signal_handlers()  # PEP 475: raise if a handler raised
                continue
            break
        if ret < 0:
            if not got:  # events already taken from the ring must not be lost
                return ret, []
        elif ret:
            raw += _iter_events(memoryview(events).cast("B")[: ret * 32])
    finally:
        if waiting:
            with ctx._unmap_lock:
                ctx._waiters -= 1
            if events is not None:
                ctx._spare_events.append(events)
    return len(raw), ctx._events(raw)


def _cancel(ctx: IOContext, obj: Iocb) -> tuple[int, IOEvent | None]:
    ctx = _as_context(ctx)
    if not isinstance(obj, Iocb):
        raise TypeError(f"iocb must be an Iocb, not {type(obj).__name__!r}")
    if ctx._destroyed or ctx._foreign:
        return -errno.EINVAL, None
    result = io_event()
    ret: int = _syscall.io_cancel(ctx.id, obj._address, ctypes.addressof(result))
    if ret == 0:
        # Old kernels complete the request by cancelling it and hand the event back.
        return 0, ctx._events([(result.data, result.obj, result.res, result.res2)])[0]
    return ret, None


def _destroy(ctx: IOContext | int) -> int:
    if isinstance(ctx, IOContext):
        return ctx._destroy()
    if isinstance(ctx, bool) or not isinstance(ctx, int):
        raise TypeError(f"ctx must be an IOContext or an int id, not {type(ctx).__name__!r}")
    with _live_lock:
        known = _live.get(ctx)
    if known is not None:
        return known._destroy()
    if not 0 <= ctx <= _U64:
        return -errno.EINVAL
    ret: int = _syscall.io_destroy(ctx)
    return ret


# ---------------------------------------------------------------------------------
# Public API, Python convention
# ---------------------------------------------------------------------------------


def io_setup(nr_events: int) -> IOContext:
    """Create an AIO context able to hold at least *nr_events* requests.

    Corresponds to io_setup(2).

    Raises:
        TypeError: *nr_events* is not an int.
        OSError: ``EINVAL`` (``nr_events <= 0`` or beyond the kernel's limit),
            ``EAGAIN`` (``/proc/sys/fs/aio-max-nr`` would be exceeded),
            ``ENOSYS`` (no AIO in this kernel), ``ENOMEM``.
    """
    ret, ctx = _setup(nr_events)
    check(ret)
    assert ctx is not None
    return ctx


def io_destroy(ctx: IOContext | int) -> None:
    """Cancel what can be cancelled, wait for every other request of *ctx* to
    complete, then destroy it.  After it returns the kernel touches none of its
    buffers any more, and they are released.

    Corresponds to io_destroy(2).

    Args:
        ctx: an :class:`IOContext`, or a raw context id.

    Raises:
        OSError: ``EINVAL`` for an invalid or already destroyed context.
    """
    check(_destroy(ctx))


def io_submit(ctx: IOContext, iocbs: Iterable[Iocb]) -> int:
    """Queue *iocbs* on *ctx*; return how many the kernel accepted.

    The kernel takes requests in order and stops at the first one that fails:
    if some were accepted the count is returned (the failing request's error is
    lost and it is not queued); if the first one fails its error is raised.
    Accepted requests keep their buffers pinned until their event is reaped.

    Corresponds to io_submit(2).

    Raises:
        TypeError, ValueError: a malformed Iocb (checked for all before any
            system call): wrong types, ``aio_nbytes`` beyond the buffer, a
            read into a read-only buffer, a raw address.
        IocbInFlightError: an Iocb is already in flight.
        OSError: ``EINVAL`` (bad or destroyed context, bad opcode or fields),
            ``EBADF`` (bad fd or wrong access mode), ``EAGAIN`` (ring full),
            ``EOPNOTSUPP`` (unknown ``RWF_*`` flag), ...
    """
    return check(_submit(ctx, iocbs))


def io_getevents(
    ctx: IOContext, min_nr: int, nr: int, timeout: float | None = None
) -> list[IOEvent]:
    """Wait for at least *min_nr* and return at most *nr* completion events.

    Args:
        timeout: seconds to wait at most (fewer than *min_nr* events may come
            back), ``0`` to poll, None to wait for *min_nr*.  Interrupted
            waits are retried with what is left (PEP 475).

    *nr* and *min_nr* are capped at the size of the context's ring: no more
    events than that can ever be waiting.

    Corresponds to io_getevents(2).

    Raises:
        OSError: ``EINVAL`` (bad or destroyed context — also when it is
            destroyed while waiting —, ``min_nr < 0`` or ``min_nr > nr``).
    """
    ret, events = _getevents(ctx, min_nr, nr, timeout)
    check(ret)
    return events


def io_pgetevents(
    ctx: IOContext,
    min_nr: int,
    nr: int,
    timeout: float | None = None,
    sigmask: Iterable[int] | None = None,
) -> list[IOEvent]:
    """Like :func:`io_getevents`, with the signal mask set to *sigmask* (an
    iterable of signal numbers to block) for the duration of the wait, as
    ``pselect`` does.  A signal that interrupts the wait raises
    ``InterruptedError`` (after its Python handler ran): being woken by a signal
    is what this call is for.

    Corresponds to io_pgetevents(2).
    """
    ret, events = _getevents(ctx, min_nr, nr, timeout, sigmask, pgetevents=True)
    check(ret)
    return events


def io_cancel(ctx: IOContext, iocb: Iocb) -> IOEvent | None:
    """Try to cancel the in-flight request *iocb* of *ctx*.

    Returns:
        None if the kernel accepted the cancellation and will post the
        completion to the ring (``EINPROGRESS``: modern kernels, for a pending
        ``IOCB_CMD_POLL``); an :class:`IOEvent` if the kernel completed it by
        cancelling it and returned the event (old kernels).

    Corresponds to io_cancel(2).

    Raises:
        OSError: ``EINVAL`` if the request cannot be cancelled (any
            regular-file read or write on modern kernels), was never submitted,
            or was already cancelled; ``EAGAIN`` on old kernels.
    """
    ret, event = _cancel(ctx, iocb)
    if ret == -errno.EINPROGRESS:
        return None
    check(ret)
    return event


# ---------------------------------------------------------------------------------
# IOBatch: the lean path
# ---------------------------------------------------------------------------------


def _user_ring(ctx: IOContext) -> tuple[memoryview | None, int]:
    """The completion ring of *ctx* in user memory as 32-bit words (the head
    is word 2, the tail word 3, event *i* starts at word ``8 + 8 * i``), and
    its size in events -- ``(None, 0)`` where it cannot be read safely from user space
    (not x86-64, or a layout this code does not know).  The caller reads it
    only under ``ctx._unmap_lock`` and while the context is not destroyed."""
    if not _USER_RING:
        return None, 0
    hdr = _syscall.aio_ring_at(ctx.id)
    if (
        hdr.magic != AIO_RING_MAGIC
        or hdr.incompat_features != AIO_RING_INCOMPAT_FEATURES
        or hdr.header_length != 32
    ):
        return None, 0
    raw = (ctypes.c_char * (32 + 32 * hdr.nr)).from_address(ctx.id)
    return memoryview(raw).cast("B").cast("I"), int(hdr.nr)


def _take_ring_events(
    ring: memoryview, nr: int, limit: int, out: list[tuple[int, int, int, int]]
) -> int:
    """Move up to *limit* events from a context's ring in user memory (see
    :func:`_user_ring`) to *out* as ``(data, obj, res, res2)``, one slice per
    contiguous run, and publish the new head; return how many.  The caller
    holds ``ctx._unmap_lock`` and has checked the context is alive.

    The events join *out* and the head moves with no call in between: an
    exception from a signal handler (Ctrl-C's KeyboardInterrupt, raised only
    at a call or a loop's jump) comes before both or after both, so an event
    is never lost from *out* nor taken twice."""
    head: int = ring[2]
    tail: int = ring[3]
    if head == tail:
        return 0
    n = (tail - head) % nr
    if n > limit:
        n = limit
    run = nr - head
    if run > n:
        run = n
    items = list(_iter_events(ring[8 + head * 8 : 8 + (head + run) * 8]))
    if run < n:
        items += _iter_events(ring[8 : 8 + (n - run) * 8])
    new_head = (head + n) % nr
    # publish the new head after reading the events (x86-64: stores are not
    # reordered with earlier loads); one aligned 32-bit store
    out += items
    ring[2] = new_head
    return n


_FAST_SUBMIT = _syscall.fast_syscall("io_submit")
#: io_submit plugs the block queue for more than 2 requests: the device sees a
#: batch only when the call ends.  Submitting in small chunks keeps it busy.
_SUBMIT_CHUNK = 4
_FAST_GETEVENTS = _syscall.fast_syscall("io_getevents")
_I64 = struct.Struct("<q")
_IOCB_OFFSET_AT = iocb.aio_offset.offset
_iter_events = IO_EVENT_STRUCT.iter_unpack
_IOCB_SIZE = 64
_KEY_AT = struct.Struct("<8xI")  # aio_key
_IOCB_SHIFT = 6


class IOBatch:
    """A preallocated array of request slots on one context: the fast path.

    Each of the *capacity* slots is a ``struct iocb`` at a fixed address in one
    ctypes array.  Preparing a slot (:meth:`prep_pread`...) pins its buffer
    once; re-preparing it with the same buffer object costs no allocation, and
    :meth:`set_offset` changes only the offset.  :meth:`submit` hands any set of
    slots to the kernel in one ``io_submit``; :meth:`reap` collects completions
    into the preallocated lists :attr:`done_slots` / :attr:`done_res` — reading
    the completion ring from user space when events are already there (x86-64),
    making a system call only to wait.

    Not thread-safe: one thread submits and reaps (destroying the context from
    another thread is safe).  A slot is busy from submit until reaped; the
    batch refuses to re-prepare or re-submit a busy slot.
    """

    __slots__ = (
        "ctx",
        "capacity",
        "done_slots",
        "done_res",
        "_iocbs",
        "_base",
        "_addrs",
        "_ptrs",
        "_ptrs_addr",
        "_events",
        "_events_addr",
        "_bufs",
        "_pins",
        "_busy",
        "_nbusy",
        "_ring",
        "_ring_nr",
        "_ts",
        "_ts_addr",
        "_unpack_from",
        "_mem",
        "_events_mem",
        "_cid",
        "_cptrs",
        "_cevents",
        "_cts",
        "_io_submit",
        "_io_getevents",
    )

    def __init__(self, ctx: IOContext, capacity: int) -> None:
        ctx = _as_context(ctx)
        capacity = _check_nr("capacity", capacity)
        if capacity <= 0:
            raise ValueError("capacity must be > 0")
        ctx._check_usable()
        self.ctx = ctx
        self.capacity = capacity
        self._iocbs = (iocb * capacity)()
        self._base = ctypes.addressof(self._iocbs)
        self._mem = memoryview(self._iocbs).cast("B")
        self._addrs = [self._base + i * _IOCB_SIZE for i in range(capacity)]
        self._ptrs = (ctypes.c_void_p * capacity)()
        self._ptrs_addr = ctypes.addressof(self._ptrs)
        self._events = (io_event * capacity)()
        self._events_addr = ctypes.addressof(self._events)
        self._events_mem = memoryview(self._events).cast("B")
        self._bufs: list[Any] = [None] * capacity
        self._pins: list[Pin | None] = [None] * capacity
        self._busy = [False] * capacity
        self._nbusy = 0
        #: After :meth:`reap`: the slots that completed, and their results
        #: (bytes or -errno), in the first n entries.
        self.done_slots: list[int] = [0] * capacity
        #: The results of the slots in :attr:`done_slots`, in the same order.
        self.done_res: list[int] = [0] * capacity
        self._ts = Timespec()
        self._ts_addr = ctypes.addressof(self._ts)
        self._ring, self._ring_nr = _user_ring(ctx)
        self._unpack_from = IO_EVENT_STRUCT.unpack_from
        # Arguments of the hot syscalls, made once (see _syscall.fast_syscall).
        self._cid = ctypes.c_void_p(ctx.id)
        self._cptrs = ctypes.c_void_p(self._ptrs_addr)
        self._cevents = ctypes.c_void_p(self._events_addr)
        self._cts = ctypes.c_void_p(self._ts_addr)
        self._io_submit = _FAST_SUBMIT
        self._io_getevents = _FAST_GETEVENTS
        with ctx._lock:
            ctx._batches.add(self)

    # -- preparing slots --------------------------------------------------------------
    def _prep(
        self, slot: int, opcode: int, fd: int, buf: Any, offset: int, rw_flags: int, data: int
    ) -> None:
        if self._busy[slot]:
            raise IocbInFlightError(f"slot {slot} is in flight")
        st = self._iocbs[slot]
        if buf is None:
            address = nbytes = 0
            old = self._pins[slot]
            if old is not None:
                old.release()
            self._pins[slot] = None
            self._bufs[slot] = None
        elif buf is self._bufs[slot] and self._pins[slot] is not None:
            p = self._pins[slot]
            assert p is not None
            if opcode == IOCB_CMD_PREAD and p.readonly:
                raise TypeError("a writable buffer is required for a read")
            address, nbytes = p.address, p.nbytes
        else:
            p = pin(buf, writable=opcode == IOCB_CMD_PREAD)
            old = self._pins[slot]
            if old is not None:
                old.release()
            self._pins[slot] = p
            self._bufs[slot] = buf
            address, nbytes = p.address, p.nbytes
        st.aio_data = data
        st.aio_key = 0
        st.aio_rw_flags = rw_flags
        st.aio_lio_opcode = opcode
        st.aio_reqprio = 0
        st.aio_fildes = fd & _U32
        st.aio_buf = address
        st.aio_nbytes = nbytes
        st.aio_offset = offset
        st.aio_flags = 0
        st.aio_resfd = 0

    def prep_pread(
        self, slot: int, fd: int, buf: Any, offset: int, *, rw_flags: int = 0, data: int = 0
    ) -> None:
        """Make *slot* a read of ``len(buf)`` bytes of *fd* at *offset*."""
        self._prep(slot, IOCB_CMD_PREAD, fd, buf, offset, rw_flags, data)

    def prep_pwrite(
        self, slot: int, fd: int, buf: Any, offset: int, *, rw_flags: int = 0, data: int = 0
    ) -> None:
        """Make *slot* a write of *buf* to *fd* at *offset*."""
        self._prep(slot, IOCB_CMD_PWRITE, fd, buf, offset, rw_flags, data)

    def prep_fsync(self, slot: int, fd: int, *, datasync: bool = False, data: int = 0) -> None:
        """Make *slot* an fsync (or fdatasync) of *fd*."""
        op = IOCB_CMD_FDSYNC if datasync else IOCB_CMD_FSYNC
        self._prep(slot, op, fd, None, 0, 0, data)

    def set_offset(self, slot: int, offset: int) -> None:
        """Change only the file offset of a prepared, idle slot."""
        if self._busy[slot]:
            raise IocbInFlightError(f"slot {slot} is in flight")
        _I64.pack_into(self._mem, slot * _IOCB_SIZE + _IOCB_OFFSET_AT, offset)

    def set_eventfd(self, slot: int, fd: int | None) -> None:
        """Signal eventfd *fd* when *slot* completes (None: stop doing so)."""
        st = self._iocbs[slot]
        if fd is None:
            st.aio_flags &= ~IOCB_FLAG_RESFD
            st.aio_resfd = 0
        else:
            st.aio_flags |= IOCB_FLAG_RESFD
            st.aio_resfd = fd

    @property
    def in_flight(self) -> int:
        """Number of slots submitted and not yet reaped."""
        return self._nbusy

    def is_busy(self, slot: int) -> bool:
        return self._busy[slot]

    # -- submitting and reaping ---------------------------------------------------
    def submit(self, slots: Sequence[int], chunk: int = 0) -> int:
        """Submit prepared *slots*; return the number accepted (partial
        submission as :func:`io_submit`).

        Args:
            slots: slot numbers, each idle and prepared.
            chunk: 0 submits all of them with one ``io_submit``; N > 0 with
                one ``io_submit`` per N slots.  ``io_submit`` plugs the block
                queue for more than 2 requests and lets the device see them
                only when the call ends, so when a whole batch completes at
                once (a virtio disk does that) resubmitting it in one call
                leaves the device idle meanwhile; chunks of 4-8 measured best
                here (benchmarks/notes.md).

        Raises:
            IocbInFlightError: a slot is in flight (or listed twice): nothing
                was submitted.
            OSError: the first slot was refused (nothing was submitted).
        """
        ctx = self.ctx
        if ctx._destroyed or ctx._foreign:
            raise oserror(errno.EINVAL)
        busy = self._busy
        ptrs = self._ptrs
        addrs = self._addrs
        n = len(slots)
        if n > self.capacity:
            raise ValueError("more slots than the batch holds")
        for i, s in enumerate(slots):
            if busy[s]:
                for t in slots[:i]:
                    busy[t] = False
                raise IocbInFlightError(f"slot {s} is in flight")
            busy[s] = True
            ptrs[i] = addrs[s]
        step = chunk if chunk > 0 else n
        done = 0
        ret = 0
        while done < n:
            m = n - done if n - done < step else step
            cptrs = self._cptrs if not done else ctypes.c_void_p(self._ptrs_addr + done * 8)
            ret = self._io_submit(self._cid, m, cptrs)
            if ret <= 0:
                break
            done += ret
            if ret < m:
                break
        if done < n:
            for s in slots[done:]:
                busy[s] = False
        self._nbusy += done
        if not done and ret < 0:
            raise oserror(-ret)
        return done

    def reap(self, min_nr: int = 1, timeout: float | None = None, max_nr: int = 0) -> int:
        """Collect completions: wait for at least *min_nr* (``timeout``
        seconds at most; None waits), take as many as are there -- at most
        *max_nr* if it is > 0 (the rest wait for the next reap; io_getevents'
        *nr*).  Taking a few at a time lets a caller resubmit them while the
        device still has the others.

        Returns n: ``done_slots[:n]`` and ``done_res[:n]`` are the completed
        slots and their results (bytes transferred or ``-errno``).

        Raises:
            ValueError: *max_nr* below *min_nr*.
            OSError: ``EINVAL`` if the context was destroyed.
        """
        ctx = self.ctx
        n = 0
        ring = self._ring
        cap = self.capacity
        if max_nr > 0:
            if max_nr < min_nr:
                raise ValueError("max_nr must be >= min_nr")
            cap = min(cap, max_nr)
        if ring is not None:
            with ctx._unmap_lock:  # io_destroy unmaps the ring: never read a dead one
                if not (ctx._destroyed or ctx._foreign):
                    n = self._reap_ring(ring, cap)
        if n >= min_nr:
            return n
        want = min_nr - n
        while True:
            if timeout is None:
                cts = None
            else:
                timespec_from_seconds(timeout, self._ts)
                cts = self._cts
            if ctx._destroyed or ctx._foreign:
                ret = -errno.EINVAL
            else:
                cev = self._cevents if not n else ctypes.c_void_p(self._events_addr + n * 32)
                ret = self._io_getevents(self._cid, want, cap - n, cev, cts)
            if ret == -errno.EINTR:
                _syscall.run_signal_handlers()
                continue
            break
        if ret < 0:
            if n:
                return n
            raise oserror(-ret)
        mem = self._events_mem
        unpack = self._unpack_from
        base = self._base
        busy = self._busy
        done_slots = self.done_slots
        done_res = self.done_res
        for i in range(n, n + ret):
            _, obj, res, _ = unpack(mem, i * 32)
            s = (obj - base) >> _IOCB_SHIFT
            done_slots[i] = s
            done_res[i] = res
            busy[s] = False
        self._nbusy -= ret
        return n + ret

    def _reap_ring(self, ring: memoryview, limit: int) -> int:
        events: list[tuple[int, int, int, int]] = []
        n = _take_ring_events(ring, self._ring_nr, limit, events)
        if n:
            base = self._base
            busy = self._busy
            done_slots = self.done_slots
            done_res = self.done_res
            for i, (_data, obj, res, _res2) in enumerate(events):
                s = (obj - base) >> _IOCB_SHIFT
                done_slots[i] = s
                done_res[i] = res
                busy[s] = False
            self._nbusy -= n
        return n

    def _context_destroyed(self) -> None:
        # io_destroy returned: the kernel is done with every slot.
        self._busy = [False] * self.capacity
        self._nbusy = 0
        self._ring = None

    def close(self) -> None:
        """Release every pinned buffer.  Refused while slots are in flight
        (reap them, or destroy the context: that completes them)."""
        if self._nbusy and not self.ctx.closed:
            raise IocbInFlightError(f"{self._nbusy} slots are in flight")
        with self.ctx._lock:
            self.ctx._batches.discard(self)
        for i, p in enumerate(self._pins):
            if p is not None:
                p.release()
            self._pins[i] = None
            self._bufs[i] = None
        self._nbusy = 0
        self._busy = [False] * self.capacity
        self._ring = None

    def __repr__(self) -> str:
        return f"<IOBatch capacity={self.capacity} in_flight={self._nbusy} ctx={self.ctx!r}>"


# ---------------------------------------------------------------------------------
# LinuxAioEngine: the Engine protocol over one context
# ---------------------------------------------------------------------------------

#: Idle contexts a closed LinuxAioEngine left for the next one (nothing in
#: flight, every event reaped), at most _IDLE_MAX: ``io_destroy`` waits for an
#: RCU grace period (~30 ms), which a program that runs one event loop after
#: another (each closing its engine) would otherwise pay per loop.  Emptied in
#: a forked child (the contexts are the parent's) and destroyed at exit.
_IDLE_MAX = 2
_idle_contexts: list[IOContext] = []
_idle_lock = threading.Lock()


def _take_idle_context(nr_events: int) -> IOContext | None:
    """An idle context of *nr_events* from the pool, or None."""
    with _idle_lock:
        for i, ctx in enumerate(_idle_contexts):
            if ctx.nr_events == nr_events and not ctx.closed:
                del _idle_contexts[i]
                return ctx
    return None


def _keep_idle_context(ctx: IOContext) -> bool:
    """Put *ctx* (nothing in flight, its ring empty) in the pool; False if
    the pool is full (the caller destroys it)."""
    with _idle_lock:
        if len(_idle_contexts) >= _IDLE_MAX or ctx.closed:
            return False
        _idle_contexts.append(ctx)
        return True


def _destroy_idle_contexts() -> None:
    with _idle_lock:
        idle = list(_idle_contexts)
        _idle_contexts.clear()
    for ctx in idle:
        if not ctx.closed:
            ctx.destroy()


atexit.register(_destroy_idle_contexts)

_ENGINE_OPCODES = {
    OpCode.READ: IOCB_CMD_PREAD,
    OpCode.WRITE: IOCB_CMD_PWRITE,
    OpCode.READV: IOCB_CMD_PREADV,
    OpCode.WRITEV: IOCB_CMD_PWRITEV,
    OpCode.FSYNC: IOCB_CMD_FSYNC,
    OpCode.FDATASYNC: IOCB_CMD_FDSYNC,
    OpCode.POLL: IOCB_CMD_POLL,
}
#: The same, indexed by the opcode's value (an IntEnum member indexes a list
#: through ``__index__`` in C; hashing one for a dict is a Python-level call).
_IOCB_CMD: list[int | None] = [_ENGINE_OPCODES.get(code) for code in OpCode]
_E_READ, _E_WRITE, _E_READV, _E_WRITEV = OpCode.READ, OpCode.WRITE, OpCode.READV, OpCode.WRITEV
_E_POLL, _E_NOP = OpCode.POLL, OpCode.NOP
_POLL_ALWAYS = select.POLLERR | select.POLLHUP  # reported whatever the events asked
_E_SUBMITTED = OpState.SUBMITTED
_E_CANCEL_REQUESTED = OpState.CANCEL_REQUESTED
_E_DONE = OpState.DONE
#: Requests that wait in the backlog on a reference to their file (a dup).
_E_HELD = frozenset({OpCode.WRITE, OpCode.WRITEV, OpCode.FSYNC, OpCode.FDATASYNC})


class LinuxAioEngine(Engine):
    """The :class:`~xaio.engine.Engine` protocol on one Linux AIO context.

    Every request signals one eventfd (``IOCB_FLAG_RESFD``): :meth:`fileno`.
    Requests beyond *capacity* wait in a backlog and are submitted as slots
    free up.  Only polls can be cancelled once submitted (the kernel cannot
    cancel a read or write); a cancelled poll completes with ``-ECANCELED``.
    A poll's result is poll(2)'s revents (the events asked for, plus
    POLLERR/POLLHUP), as on the other engines.

    In a forked child :meth:`close` only closes the child's eventfd.

    Only give it what Linux AIO does asynchronously: O_DIRECT regular files
    and polls.  Anything else makes ``io_submit`` do the I/O itself and block;
    :func:`xaio.engine.create_engine` routes such requests to threads.

    ``io_submit`` takes a reference to each request's file, so a submitted
    request is safe from its fd being closed and the number reused.  A write
    or sync that ``submit`` leaves in the backlog (beyond *capacity*) holds
    one of its own until it completes (an ``os.dup``; EBADF if the fd was not
    open), and is submitted on that.
    """

    name = "linux"

    def __init__(self, capacity: int = 256) -> None:
        if not isinstance(capacity, int) or capacity <= 0:
            raise ValueError("capacity must be a positive int")
        self.capacity = capacity
        self._ctx = _take_idle_context(capacity) or io_setup(capacity)
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._iocbs = (iocb * capacity)()
        self._base = ctypes.addressof(self._iocbs)
        self._mem = memoryview(self._iocbs).cast("B")
        self._ptrs = (ctypes.c_void_p * capacity)()
        self._events = (io_event * capacity)()
        self._events_mem = memoryview(self._events).cast("B")
        self._cid = ctypes.c_void_p(self._ctx.id)
        self._cptrs = ctypes.c_void_p(ctypes.addressof(self._ptrs))
        self._cevents = ctypes.c_void_p(ctypes.addressof(self._events))
        self._iovecs: list[Any] = [None] * capacity
        self._ring, self._ring_nr = _user_ring(self._ctx)
        self._inflight = InFlight()
        self._backlog: collections.deque[Operation] = collections.deque()
        self._ready: list[tuple[Operation, int]] = []
        #: events taken from the kernel, not yet matched to their operations
        #: (not empty only after an interrupted reap)
        self._events_taken: list[tuple[int, int, int, int]] = []
        #: filled and in the table, not (yet) handed to the kernel (see _flush)
        self._unsent: list[Operation] = []
        #: taken by the kernel, or refused: unknowable after a Ctrl-C (_settle)
        self._maybe: set[Operation] = set()
        self._lock = threading.RLock()
        #: backlog op -> a dup of its fd (-1: not open at submit): writes, syncs
        self._held: dict[Operation, int] = {}
        self._closed = False
        self._generation = _fork_generation[0]
        self._stats = {"submitted": 0, "completed": 0, "syscalls_submit": 0, "cancelled": 0}

    # -- protocol -------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        return self._efd

    def submit(self, ops: Sequence[Operation]) -> int:
        """Submit *ops*: one iocb each, ``io_submit`` in chunks; beyond
        *capacity* they wait in a backlog.  Returns ``len(ops)``.

        When it raises, nothing was taken.

        Raises:
            EngineClosedError: the engine is closed.
            RuntimeError, TypeError, ValueError: a malformed batch
                (:func:`xaio._ops.check_batch`).
            OSError: EINVAL in a forked child.
        """
        check_batch(ops)
        return self._submit_checked(ops)

    def _submit_checked(self, ops: Sequence[Operation]) -> int:
        """:meth:`submit` of a batch that passed ``check_batch`` (RoutedEngine)."""
        with self._lock:
            if self._closed:
                raise EngineClosedError("engine is closed")
            self._check_pid()
            backlog = self._backlog
            for op in ops:
                if op.opcode is _E_NOP:
                    op.state = _E_SUBMITTED
                    self._post(op, 0)
                else:
                    backlog.append(op)
            self._flush()
            if backlog:
                self._hold_backlog(ops)
        return len(ops)

    def _hold_backlog(self, ops: Sequence[Operation]) -> None:
        """Take a reference to the file of each write and sync of *ops* left
        in the backlog (lock held): it is filled in later, by number."""
        held = self._held
        backlog = self._backlog
        for op in ops:
            if op.opcode in _E_HELD and op.state is OpState.QUEUED and op in backlog:
                try:
                    held[op] = os.dup(op.fd)
                except OSError as e:
                    if e.errno == errno.EBADF:
                        held[op] = -1
                    # EMFILE...: it is filled in by number

    def _unhold(self, op: Operation) -> None:
        fd = self._held.pop(op, -1)
        if fd >= 0:
            os.close(fd)

    def owns(self, op: Operation) -> bool:
        """True if *op* was given to this engine and has not been delivered."""
        with self._lock:
            if op.state is OpState.QUEUED:
                return op in self._backlog
            return self._inflight.get(op.key) is op or any(o is op for o, _ in self._ready)

    def _post(self, op: Operation, res: int) -> None:
        """Complete *op* with *res* at the next reap (lock held)."""
        self._ready.append((op, res))
        os.eventfd_write(self._efd, 1)

    def _check_pid(self) -> None:
        if _fork_generation[0] != self._generation:
            raise oserror(errno.EINVAL)

    def _flush(self) -> None:
        """Move backlog operations into free slots and submit them (lock held).

        An operation moves from the backlog to ``self._unsent`` (filled into
        its iocb and entered in the in-flight table) by statements without a
        call, and leaves ``self._unsent`` when ``io_submit`` says the kernel
        took it.  An exception from a signal handler (Ctrl-C) that comes as
        ``io_submit`` returns, before that bookkeeping, leaves taken iocbs in
        ``self._unsent``: :meth:`_settle` then tells them apart by their
        ``aio_key``, which the kernel sets to 0 in every iocb it reads
        (``_UNSENT_KEY`` before)."""
        unsent = self._unsent
        if unsent:
            self._settle()
        backlog = self._backlog
        if not backlog and not unsent:
            return
        inflight = self._inflight
        table = inflight._ops
        free = inflight._free
        room = self.capacity - len(table)
        while backlog and room > 0:
            op = backlog[0]
            # InFlight.add, inlined (check_batch ruled out a second entry)
            key = free[-1] if free else inflight._next
            try:
                self._fill(key, op)
            except Exception as e:
                # taken by submit, so it ends as a completion: a field changed
                # to garbage since submit (check_batch vetted it), no memory,
                # or an fd that was not open at submit
                del backlog[0]
                op.state = _E_SUBMITTED
                self._post(
                    op, -errno.EBADF if getattr(e, "errno", 0) == errno.EBADF else -errno.EINVAL
                )
                continue
            # taken, with no call in between (see above)
            del backlog[0]
            if free:
                del free[-1]
            else:
                inflight._next = key + 1
            op.key = key
            table[key] = op
            op.state = _E_SUBMITTED
            unsent += (op,)
            room -= 1
        ptrs = self._ptrs
        base = self._base
        while unsent:
            # at most _SUBMIT_CHUNK per call: see IOBatch.submit's chunk
            m = min(len(unsent), _SUBMIT_CHUNK)
            for j in range(m):
                ptrs[j] = base + (unsent[j].key << _IOCB_SHIFT)
            ret = _FAST_SUBMIT(self._cid, m, self._cptrs)
            self._stats["syscalls_submit"] += 1
            if ret > 0:
                del unsent[:ret]
                self._stats["submitted"] += ret
                continue
            if ret == -errno.EAGAIN:
                break  # ring full (events not reaped yet): the rest go next time
            # the request first in line was refused: it completes with the
            # error (its move to _ready without a call, as above)
            bad = unsent[0]
            key = bad.key
            self._iovecs[key] = None
            del table[key]
            free += (key,)
            bad.key = -1
            del unsent[0]
            self._ready += ((bad, ret),)
            os.eventfd_write(self._efd, 1)

    def _maybe_left(self) -> int:
        """How many of ``self._maybe`` have not completed."""
        maybe = self._maybe
        if maybe:
            maybe.difference_update([op for op in maybe if op.state is _E_DONE])
        return len(maybe)

    def _settle(self) -> None:
        """After an interrupted :meth:`_flush`: drop from ``self._unsent`` the
        operations the kernel took (``aio_key`` 0), which then complete as
        usual.  It reads a batch in order and stops at the first it refuses,
        so those form a prefix; the last of them may be one refused after its
        key was written (a read on a write-only fd): it goes to
        ``self._maybe``, which :meth:`close` does not wait on for ever."""
        unsent = self._unsent
        mem = self._mem
        n = 0
        while n < len(unsent) and not _KEY_AT.unpack_from(mem, unsent[n].key * _IOCB_SIZE)[0]:
            n += 1
        if n:
            self._maybe.add(unsent[n - 1])
            del unsent[:n]

    def _fill(self, key: int, op: Operation) -> None:
        code = op.opcode
        fd = op.fd
        if self._held:
            fd = self._held.get(op, fd)
            if fd < 0:
                raise OSError(errno.EBADF, "not open when it was submitted")
        opcode = _IOCB_CMD[code]
        if opcode is None:
            raise ValueError(f"the linux engine cannot run {code.name}")
        pins = op.pins
        offset = op.offset
        rw_flags = op.flags
        if code is _E_READ or code is _E_WRITE:
            p = pins[0]
            address, nbytes = p.address, p.nbytes
        elif code is _E_READV or code is _E_WRITEV:
            vec = iovec_array(pins)
            self._iovecs[key] = vec
            address, nbytes = ctypes.addressof(vec), len(pins)
        elif code is _E_POLL:
            address, nbytes, offset, rw_flags = op.flags, 0, 0, 0
        else:  # FSYNC, FDATASYNC
            address = nbytes = offset = 0
        IOCB_STRUCT.pack_into(
            self._mem,
            key * _IOCB_SIZE,
            key,  # aio_data
            _UNSENT_KEY,  # aio_key: the kernel sets it to 0 when it reads the iocb
            rw_flags,
            opcode,
            0,
            fd & _U32,
            address,
            nbytes,
            offset,
            0,
            IOCB_FLAG_RESFD,
            self._efd,
        )

    def cancel(self, op: Operation) -> CancelOutcome:
        with self._lock:
            if op.state is OpState.DONE or any(o is op for o, _ in self._ready):
                return CancelOutcome.DONE
            if op.state is OpState.QUEUED:
                try:
                    self._backlog.remove(op)
                except ValueError:
                    return CancelOutcome.DONE
                op.mark_submitted()
                self._post(op, -errno.ECANCELED)
                self._stats["cancelled"] += 1
                return CancelOutcome.CANCELED
            if op.state is OpState.CANCEL_REQUESTED:
                return CancelOutcome.CANCELED
            if self._inflight.get(op.key) is not op:
                return CancelOutcome.DONE
            result = io_event()
            ret = _syscall.io_cancel(
                self._ctx.id, self._base + op.key * _IOCB_SIZE, ctypes.addressof(result)
            )
            if ret in (0, -errno.EINPROGRESS):
                op.request_cancel()
                self._stats["cancelled"] += 1
                if ret == 0:  # old kernels hand the event back at once
                    self._iovecs[op.key] = None
                    self._inflight.discard_unsubmitted(op.key)
                    self._post(op, -errno.ECANCELED)
                return CancelOutcome.CANCELED
            return CancelOutcome.RUNNING

    def reap(self, timeout: float | None = 0.0, *, max_n: int = 0) -> int:
        timeout = _check_timeout(timeout)
        count = self._reap_now(max_n)
        if count or timeout == 0:
            return count
        deadline = None if timeout is None else time.monotonic() + timeout
        while not count:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            # every completion adds to the eventfd, and so do local completions
            select.select([self._efd], [], [], left)
            count = self._reap_now(max_n)
            if deadline is not None and time.monotonic() >= deadline:
                break
        return count

    def _reap_now(self, max_n: int = 0) -> int:
        """Deliver what is ready without blocking (at most *max_n* if > 0).

        Completions are read from the context's ring in user memory where
        that is possible (x86-64, as :class:`IOBatch` does): no system call
        when events are there.  The eventfd is then cleared only when nothing
        was found, and the ring looked at again right after, so a completion
        that lands later signals it afresh (no lost wake-up; at most one
        spurious one per batch).

        An exception from a signal handler (Ctrl-C) can come at any call or
        loop jump.  Nothing taken from the kernel lives only in a local
        variable: events go to ``self._events_taken`` with the head move
        (:func:`_take_ring_events`), each becomes an ``(op, res)`` entry of
        ``self._ready`` with no call in between, and what is taken from
        ``self._ready`` and not completed goes back.  So :meth:`close` still
        completes every operation.  (Not on the ``io_getevents`` path, used
        where the ring cannot be read: there the events are lost if the
        exception comes right as the call returns.)"""
        items: list[tuple[Operation, int]] = []
        i = 0
        try:
            with self._lock:
                self._check_pid()
                events = self._events_taken
                want = self.capacity if max_n <= 0 else min(self.capacity, max_n - len(self._ready))
                if self._ring is None:
                    # Clear the eventfd *before* reading: a completion that lands
                    # after the read will make it readable again.
                    _syscall.drain_eventfd(self._efd)
                    if want > 0 and len(self._inflight):
                        self._getevents(events, want)
                elif want > 0 and len(self._inflight):
                    self._read_ring(events, want)
                    if not events and not self._ready:
                        _syscall.drain_eventfd(self._efd)
                        self._read_ring(events, want)
                elif not self._ready:
                    _syscall.drain_eventfd(self._efd)
                nevents = len(events)
                if events:
                    self._match_events()
                    self._flush()  # slots are free again: the backlog moves up
                ready = self._ready
                if 0 < max_n < len(ready):
                    batch, rest = ready[:max_n], ready[max_n:]
                else:
                    batch, rest = ready, []
                self._ready = rest
                items = batch  # no call between the two stores: taken together
                if rest or (max_n > 0 and nevents == want):  # some may wait still
                    os.eventfd_write(self._efd, 1)
            held = self._held
            for op, res in items:
                i += 1
                if held and op in held:
                    with self._lock:
                        self._unhold(op)
                op.complete(res)
        except BaseException:
            # an on_done raised, or Ctrl-C (maybe as the last one began): what
            # is not done goes first next time
            back = [item for item in items[max(i - 1, 0) :] if item[0].state is not _E_DONE]
            if back:
                with self._lock:
                    self._ready[:0] = back
                    os.eventfd_write(self._efd, 1)
            raise
        total = len(items)
        self._stats["completed"] += total
        return total

    def _match_events(self) -> None:
        """Turn the events in ``self._events_taken`` into ``(op, res)``
        entries of ``self._ready`` and free their slots (lock held).  Each
        event is handled by statements without a call (see :meth:`_reap_now`)."""
        events = self._events_taken
        base = self._base
        iovecs = self._iovecs
        ready = self._ready
        inflight = self._inflight
        table = inflight._ops  # InFlight.discard_unsubmitted, inlined
        free = inflight._free
        j = 0
        try:
            for _data, obj, res, _res2 in events:
                key = (obj - base) >> _IOCB_SHIFT
                op = table[key]
                if op.opcode is _E_POLL:
                    if op.state is _E_CANCEL_REQUESTED:
                        res = -errno.ECANCELED  # a cancelled poll reports 0
                    elif res > 0:
                        # a poll completed by a wake-up reports the waker's
                        # whole mask (a pipe: POLLIN|POLLRDNORM); poll(2) and
                        # io_uring keep what was asked, and errors/hang-ups
                        res &= op.flags | _POLL_ALWAYS
                iovecs[key] = None
                del table[key]
                op.key = -1
                ready += ((op, res),)
                free += (key,)
                j += 1
        finally:
            del events[:j]

    def _getevents(self, out: list[tuple[int, int, int, int]], want: int) -> None:
        """Up to *want* events through ``io_getevents`` (no wait), into *out*."""
        while True:
            n = _FAST_GETEVENTS(self._cid, 0, want, self._cevents, None)
            if n != -errno.EINTR:
                break
        if n < 0:
            raise oserror(-n)
        if n:
            out += _iter_events(self._events_mem[: n * 32])

    def _read_ring(self, out: list[tuple[int, int, int, int]], want: int) -> None:
        """Up to *want* events from the ring in user memory, into *out*."""
        ring = self._ring
        assert ring is not None
        ctx = self._ctx
        with ctx._unmap_lock:  # never read a ring io_destroy unmapped
            if not (ctx._destroyed or ctx._foreign):
                _take_ring_events(ring, self._ring_nr, want, out)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if _fork_generation[0] != self._generation:  # a forked child: not ours
            os.close(self._efd)
            self._drop_held()  # this process's copies of the references
            return
        for op in list(self._inflight):
            if op.opcode == OpCode.POLL and op.state is OpState.SUBMITTED:
                self.cancel(op)
        with self._lock:
            backlog, self._backlog = list(self._backlog), collections.deque()
            for op in backlog:
                op.mark_submitted()
                self._post(op, -errno.ECANCELED)
            self._flush()  # what an interrupted flush left unsent goes now
        # Reads and writes cannot be cancelled: wait for them (rule 1).
        while len(self._inflight) > self._maybe_left() or self._ready:
            self.reap(timeout=None)
        # Left: operations the kernel may have refused (see _settle).  Give
        # them a few seconds; io_destroy then waits for any it does hold, and
        # what never completed says ECANCELED.
        deadline = time.monotonic() + 5.0
        while len(self._inflight) and time.monotonic() < deadline:
            self.reap(timeout=0.1)
        left = list(self._inflight)
        # Nothing in flight: the context goes back to the idle pool (for the
        # next engine) instead of paying io_destroy's grace period here.
        if left or self._maybe or not _keep_idle_context(self._ctx):
            io_destroy(self._ctx)
        os.close(self._efd)
        for op in left:
            op.key = -1
            op.complete(-errno.ECANCELED)
        self._inflight = InFlight()
        self._maybe.clear()
        self._drop_held()

    def _drop_held(self) -> None:
        held, self._held = self._held, {}
        for fd in held.values():
            if fd >= 0:
                os.close(fd)

    def statistics(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in_flight": len(self._inflight),
            "backlog": len(self._backlog),
            **self._stats,
        }

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
        self.close()

    def __repr__(self) -> str:
        return f"<LinuxAioEngine capacity={self.capacity} {'closed' if self._closed else 'open'}>"
