"""Iocb and IOEvent: a Linux AIO request as a mutable mirror of ``struct iocb``,
checked before the kernel sees it, and its completion."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

from xaio._abi.aio import (
    IOCB_CMD_FDSYNC,
    IOCB_CMD_FSYNC,
    IOCB_CMD_POLL,
    IOCB_CMD_PREAD,
    IOCB_CMD_PREADV,
    IOCB_CMD_PWRITE,
    IOCB_CMD_PWRITEV,
    IOCB_FLAG_IOPRIO,
    IOCB_FLAG_RESFD,
    iocb,
)
from xaio._buffers import Pin, buffer_length, iovec_array, pin, pin_many

_T = TypeVar("_T")
_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_VECTORED = (IOCB_CMD_PREADV, IOCB_CMD_PWRITEV)


class IocbInFlightError(RuntimeError):
    """An :class:`Iocb` that is in flight was modified or submitted again."""


# ---------------------------------------------------------------------------------
# Iocb
# ---------------------------------------------------------------------------------

#: The fields of ``struct iocb`` an Iocb mirrors.
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
#: Those kept in ``Iocb._values``, in this order (``aio_nbytes`` has a
#: property of its own).
_VALUES = tuple(name for name in _FIELDS if name != "aio_nbytes")
_BUF = _VALUES.index("aio_buf")

#: The integer fields: the range each accepts, and where and how it is stored
#: in ``struct iocb``: log2 of its size (which of ``Iocb._views``), its index
#: there, and the mask to its width (so a negative value lands as the two's
#: complement the kernel reads).  Setting one of them
#: on a prepared :class:`Iocb` (not the opcode, whose change touches the
#: buffer rules) checks it and writes it into the ready image at once.
_INT_FIELDS: dict[str, tuple[int, int, int, int, int]] = {
    name: (lo, hi, width, getattr(iocb, name).offset >> width, (1 << (8 << width)) - 1)
    for name, lo, hi, width in (
        ("aio_data", 0, _U64, 3),
        ("aio_lio_opcode", 0, _U16, 1),
        ("aio_reqprio", -0x8000, 0x7FFF, 1),
        ("aio_fildes", -(1 << 31), _U32, 2),
        ("aio_offset", -(1 << 63), (1 << 63) - 1, 3),
        ("aio_rw_flags", -(1 << 31), _U32, 2),
        ("aio_flags", 0, _U32, 2),
        ("aio_resfd", -(1 << 31), _U32, 2),
    )
}
#: aio_key: set to this in each iocb before io_submit; the kernel writes 0
#: into it when it takes the request, which tells an interrupted submission
#: which requests the kernel took.
_UNSENT_KEY = 1
_KEY = struct.Struct("=I")
_KEY_OFFSET = iocb.aio_key.offset
_KEY_WORD = _KEY_OFFSET >> 2  # in Iocb._views[2]
#: The formats of ``Iocb._views``: unsigned words of 1, 2, 4 and 8 bytes,
#: then signed ones (at ``_SIGNED`` + log2 of the size).
_VIEW_FORMATS = "BHIQbhiq"
_SIGNED = 4
_c_char_from_buffer = ctypes.c_char.from_buffer
_memoryview = memoryview
_addressof = ctypes.addressof
# What the ready image holds in place of the buffer (Iocb._kind).
_NO_BUFFER, _ONE_BUFFER, _VECTOR = 0, 1, 2
# How a single buffer is pinned again (Iocb._export).
_MOVABLE, _FIXED = 1, 2


def _int_field(name: str, value: Any) -> int:
    lo, hi = _INT_FIELDS[name][:2] if name in _INT_FIELDS else (0, _U64)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Iocb.{name} must be an int, not {type(value).__name__!r}")
    if not lo <= value <= hi:
        raise ValueError(f"Iocb.{name}={value} is out of range [{lo}, {hi}]")
    return value


class _Field(Protocol[_T]):
    """What the type checker sees of a field's property."""

    def __get__(self, obj: Any, owner: Any) -> _T: ...

    def __set__(self, obj: Any, value: _T) -> None: ...


def _getter(index: int) -> Any:
    def get_field(self: Any) -> Any:
        return self._values[index]

    return get_field


def _field(name: str, doc: str) -> _Field[Any]:
    """The property of the field *name* that a prepared image cannot take
    as it is set (the buffer; the opcode, whose change touches the buffer
    rules): setting it is refused in flight and makes the next submission
    check every field."""
    index = _VALUES.index(name)

    def set_field(self: Any, value: Any) -> None:
        if self._pins is not None:
            raise IocbInFlightError(f"cannot set {name}: the Iocb is in flight")
        self._values[index] = value
        self._ready = False  # the next submission checks everything

    return property(_getter(index), set_field, doc=doc)


def _image_field(name: str, doc: str) -> _Field[int]:
    """The property of the integer field *name* (see ``_INT_FIELDS``):
    setting it is refused in flight, and on a prepared Iocb a valid value
    goes straight into the image (any other makes the next submission check
    every field, and refuse it)."""
    index = _VALUES.index(name)
    lo, hi, width, word, mask = _INT_FIELDS[name]
    if lo < 0 <= hi < 1 << ((8 << width) - 1):
        width += _SIGNED  # every value fits the signed view as it is
    elif lo < 0:
        # a setter of its own: the others store without the mask, which
        # costs ~18 ns a store (aio_offset, once per request of a loop)

        def set_masked(self: Any, value: Any) -> None:
            if self._pins is not None:
                raise IocbInFlightError(f"cannot set {name}: the Iocb is in flight")
            self._values[index] = value
            if self._ready:
                if type(value) is int and lo <= value <= hi:
                    self._views[width][word] = value & mask
                else:
                    self._ready = False

        return property(_getter(index), set_masked, doc=doc)

    def set_field(self: Any, value: Any) -> None:
        if self._pins is not None:
            raise IocbInFlightError(f"cannot set {name}: the Iocb is in flight")
        self._values[index] = value
        if self._ready:
            if type(value) is int and lo <= value <= hi:
                self._views[width][word] = value
            else:
                self._ready = False

    return property(_getter(index), set_field, doc=doc)


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
        "_values",
        "_nbytes",
        "callback",
        "_struct",
        "_mem",
        "_views",
        "_address",
        "_pins",
        "_ready",
        "_kind",
        "_writable",
        "_export",
        "_pin_address",
        "_pin_nbytes",
        "__weakref__",
    )

    aio_data = _image_field(
        "aio_data", "A 64-bit value of the caller's, returned as the event's ``data``."
    )
    aio_lio_opcode = _field("aio_lio_opcode", "The operation: an ``IOCB_CMD_*`` constant.")
    aio_reqprio = _image_field(
        "aio_reqprio", "The I/O priority (``ioprio``), used with ``IOCB_FLAG_IOPRIO``."
    )
    aio_fildes = _image_field("aio_fildes", "The file descriptor.")
    aio_buf = _field(
        "aio_buf",
        "The buffer (a list of buffers for the vectored opcodes, the event "
        "mask for ``IOCB_CMD_POLL``, or None).",
    )
    aio_offset = _image_field("aio_offset", "The file offset in bytes.")
    aio_rw_flags = _image_field("aio_rw_flags", "``RWF_*`` flags, as for ``preadv2``.")
    aio_flags = _image_field("aio_flags", "``IOCB_FLAG_*`` flags.")
    aio_resfd = _image_field(
        "aio_resfd", "The eventfd to signal on completion, used with ``IOCB_FLAG_RESFD``."
    )
    callback: Any
    #: The value of each field made by _field or _image_field, at its
    #: index in ``_VALUES`` (a list item store is the cheapest store).
    _values: list[Any]
    _nbytes: Any
    _struct: iocb
    _mem: memoryview
    #: ``_struct`` as words of each size, unsigned and signed (``_VIEW_FORMATS``):
    #: a field is stored by an item assignment, cheaper than ``pack_into``.
    _views: tuple[memoryview, ...]
    _address: int
    #: None while the request is not in flight; from submission until its
    #: event is reaped, what the kernel may use meanwhile: a tuple of the
    #: buffer exports (and a vectored request's iovec array), or the one
    #: view that pins a fixed view (``_FIXED``), referred to only from here,
    #: so that dropping it releases them.  Submission and reaping store into
    #: this slot, never through a field's property.
    _pins: Any
    #: True while ``_struct`` holds every field as checked and written by
    #: the last :meth:`_build` plus the integer fields set since.
    _ready: bool
    _kind: int
    _writable: bool
    #: How the single buffer is pinned again: ``_MOVABLE`` (a bytearray,
    #: which may have been resized and moved between two submissions), held
    #: by a one-char ctypes export (as in ``Pin``), or ``_FIXED`` (a
    #: writable 1-D byte memoryview: its memory and length stay as they are
    #: while the view lives), held by a new view of it, which holds the
    #: exporter's buffer as long as it lives even if the user's view is
    #: released; else 0, by a ``Pin`` (and 0 for every other kind of
    #: request).
    _export: int
    #: The single buffer's address and length when ``_struct`` was built.
    _pin_address: int
    _pin_nbytes: int

    def __init__(self) -> None:
        self._pins = None
        self._ready = False
        self._values = [None if name == "aio_buf" else 0 for name in _VALUES]
        self._nbytes = 0
        self.callback = None
        st = iocb()
        self._struct = st
        mem = memoryview(st).cast("B")
        self._mem = mem
        self._views = tuple(
            mem.cast(f)  # type: ignore[call-overload]
            for f in _VIEW_FORMATS
        )
        self._address = ctypes.addressof(st)
        self._kind = _NO_BUFFER
        self._writable = False
        self._export = 0
        self._pin_address = 0
        self._pin_nbytes = 0

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
        if self._pins is not None:
            raise IocbInFlightError("cannot set aio_nbytes: the Iocb is in flight")
        self._nbytes = value
        self._ready = False  # the next submission checks everything

    @property
    def in_flight(self) -> bool:
        """True from a successful submission until its event is reaped (or
        its context destroyed)."""
        return self._pins is not None

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
        if self._pins is not None:
            raise IocbInFlightError("this Iocb is already in flight (or listed twice)")
        if self._ready:
            kind = self._kind
            if kind == _ONE_BUFFER:
                p = self._pin_again()
                if p is not None:
                    self._views[2][_KEY_WORD] = _UNSENT_KEY
                    self._pins = (p,)
                    return
            elif kind == _NO_BUFFER:
                self._views[2][_KEY_WORD] = _UNSENT_KEY
                self._pins = ()
                return
        self._build()

    def _pin_again(self) -> Any:
        """The pin of the single buffer of a ready Iocb, taken again, if the
        buffer is still where ``struct iocb`` says, with the same length;
        else None (released, emptied, moved or resized: :meth:`_build` says
        what is wrong or writes where it is now)."""
        buf = self._values[_BUF]
        export = self._export
        if export:  # (a fixed view _claim could not pin is released)
            try:
                c = _c_char_from_buffer(buf)
            except (TypeError, ValueError):
                return None
            if _addressof(c) == self._pin_address and len(buf) == self._pin_nbytes:
                return c
            return None
        p = Pin(buf, self._writable)
        if p.address == self._pin_address and p.nbytes == self._pin_nbytes:
            return p
        p.release()
        return None

    def _build(self) -> None:
        """Check every field, pin the buffers and fill ``struct iocb``."""
        self._ready = False
        values = self._values
        data, opcode, reqprio, fd, offset, rw_flags, flags, resfd = (
            _int_field(name, values[i]) for i, name in enumerate(_VALUES) if i != _BUF
        )
        buf = self._values[_BUF]
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
        self._pins = pins
        self._kind = kind
        self._writable = writable
        export = 0
        if kind == _ONE_BUFFER:
            t = type(buf)
            if pins[0].nbytes > 0:
                if t is bytearray:
                    export = _MOVABLE
                elif t is memoryview and buf.ndim == 1 and buf.format == "B" and not buf.readonly:
                    export = _FIXED
            self._pin_address = address
            self._pin_nbytes = pins[0].nbytes
        self._export = export
        self._ready = True

    def _release(self) -> None:
        # (IOContext._events does the same for each reaped request.)
        self._pins = None

    def __repr__(self) -> str:
        state = " in flight" if self._pins is not None else ""
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


def _claim(batch: list[Iocb]) -> bool:
    """Check every Iocb of *batch* for a submission and mark it in flight,
    before any of them reaches the kernel (the caller holds its context's
    lock).

    A ready Iocb whose single buffer is a fixed view (``_FIXED``) is pinned
    here by a new view of it, the cheapest pin there is.  One whose buffer
    takes a one-char export (``_MOVABLE``) and still has the length its
    ``struct iocb`` says is checked here and pinned by :func:`_pin_claimed`
    just before its own ``io_submit`` call, so that the kernel gets the
    first requests of a large batch without waiting for the pins of the
    last.  Every other Iocb is prepared (pinned, or checked in full) here.
    Its ``aio_key`` is set here either way (an interrupted submission reads
    it to tell which requests the kernel took).

    Returns:
        True if some Iocb is left for :func:`_pin_claimed` to pin.

    Raises:
        IocbInFlightError: an Iocb is in flight, or listed twice.
        TypeError, ValueError: a field or buffer the kernel must not see.
        Every Iocb marked is released again before the exception leaves.
    """
    marked = 0
    unpinned = False
    try:
        for obj in batch:
            if obj._pins is None and obj._ready:
                export = obj._export
                if export == _FIXED:
                    try:  # (a view's length cannot change)
                        obj._pins = _memoryview(obj._values[_BUF])
                    except ValueError:  # released: _prepare says so
                        pass
                    else:
                        obj._views[2][_KEY_WORD] = _UNSENT_KEY
                        marked += 1
                        continue
                elif export:
                    try:
                        size = len(obj._values[_BUF])
                    except ValueError:  # a released view: _prepare says so
                        size = -1
                    if size == obj._pin_nbytes:
                        obj._views[2][_KEY_WORD] = _UNSENT_KEY
                        obj._pins = ()
                        marked += 1
                        unpinned = True
                        continue
            obj._prepare()
            marked += 1
    except BaseException:
        for obj in batch[:marked]:
            obj._release()
        raise
    return unpinned


def _pin_claimed(batch: list[Iocb], start: int, stop: int) -> None:
    """Pin the buffers that :func:`_claim` left unpinned in
    ``batch[start:stop]``.  A buffer changed since (by another thread) is
    checked in full again (:meth:`Iocb._build`), which may raise TypeError
    or ValueError; the caller then submits nothing from *start* on."""
    for obj in batch[start:stop]:
        if obj._pins or not obj._export:
            continue  # prepared by _claim, or no buffer to pin
        p = obj._pin_again()
        if p is None:
            obj._build()
        else:
            obj._pins = (p,)


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
