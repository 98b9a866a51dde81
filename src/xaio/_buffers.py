"""Pinning Python buffers for the kernel.

The kernel reads from and writes into memory it is given by address, possibly
long after the system call that handed it over has returned.  Python objects
move nothing, but they can be *freed* (last reference dropped) or *resized*
(``bytearray``); either would leave the kernel writing into memory that now
belongs to someone else.

A :class:`Pin` holds a buffer export (PEP 3118) of the object for as long as it
lives: while it exists the object cannot be freed or resized (a ``bytearray``
raises ``BufferError`` on resize, an ``mmap`` refuses to close).  The address
handed to the kernel is always derived from such an export: no API of xaio
accepts a raw integer address.

Writable buffers are exported through ``ctypes`` (``from_buffer``); read-only
ones (``bytes``, read-only ``memoryview``) through ``PyObject_GetBuffer``, which
is the only way CPython offers to learn their address without copying.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from xaio._abi.aio import iovec

__all__ = ["Pin", "pin", "pin_many", "buffer_length", "iovec_array"]


class _Py_buffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_PyBUF_SIMPLE = 0
_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_Py_buffer), ctypes.c_int]
_GetBuffer.restype = ctypes.c_int
_ReleaseBuffer = ctypes.pythonapi.PyBuffer_Release
_ReleaseBuffer.argtypes = [ctypes.POINTER(_Py_buffer)]
_ReleaseBuffer.restype = None
_c_char_from_buffer = ctypes.c_char.from_buffer
_addressof = ctypes.addressof


class _ReadOnlyExport:
    """A ``PyObject_GetBuffer`` export of a read-only object, released when
    this holder is dropped (or by :meth:`release`, idempotent)."""

    __slots__ = ("_pybuf", "address")

    def __init__(self, obj: object) -> None:
        pybuf = _Py_buffer()
        _GetBuffer(obj, ctypes.byref(pybuf), _PyBUF_SIMPLE)
        self._pybuf: _Py_buffer | None = pybuf
        self.address: int = pybuf.buf or 0

    def release(self) -> None:
        pybuf = self._pybuf
        if pybuf is not None:
            self._pybuf = None
            _ReleaseBuffer(ctypes.byref(pybuf))

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class Pin:
    """A live export of a contiguous buffer: its address and length stay valid
    until :meth:`release` (or until the Pin is garbage collected).

    The export is held by ``_holder`` alone (a ctypes ``from_buffer`` object
    for writable buffers, a :class:`_ReadOnlyExport` for read-only ones), so
    dropping the Pin drops the export at once and Pin itself needs no
    ``__del__`` -- which would cost ~0.6 us per request on the hot path."""

    __slots__ = ("address", "nbytes", "readonly", "obj", "_holder")

    address: int
    nbytes: int
    readonly: bool
    obj: object
    _holder: Any

    def __init__(self, obj: object, writable: bool) -> None:
        o: Any = obj
        t = type(o)
        if t is memoryview:
            if o.nbytes and not o.readonly and o.format == "B" and o.c_contiguous:
                # Fast path for a writable byte memoryview (aligned_buffer's) and,
                # below, a bytearray: a one-char ctypes export of the object
                # holds it exactly as the general path does (no resize, no free
                # while it lives).
                self.obj = o
                self.nbytes = o.nbytes
                self.readonly = False
                holder = self._holder = _c_char_from_buffer(o)
                self.address = _addressof(holder)
                return
        elif t is bytearray and o:
            self.obj = o
            self.nbytes = len(o)
            self.readonly = False
            holder = self._holder = _c_char_from_buffer(o)
            self.address = _addressof(holder)
            return
        try:
            view = memoryview(obj)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"a bytes-like object is required, not {type(obj).__name__!r}"
            ) from None
        if not view.c_contiguous:
            view.release()
            raise ValueError("buffer must be C-contiguous")
        self.obj = obj
        self.nbytes = view.nbytes
        self.readonly = view.readonly
        if view.readonly:
            view.release()
            if writable:
                raise TypeError(
                    f"a writable buffer is required for a read, not a read-only "
                    f"{type(obj).__name__!r}"
                )
            export = _ReadOnlyExport(obj)
            self._holder = export
            self.address = export.address
        else:
            if view.ndim != 1 or view.format != "B":
                view = view.cast("B")
            array = (ctypes.c_char * self.nbytes).from_buffer(view)
            self._holder = array
            self.address = ctypes.addressof(array)

    def release(self) -> None:
        """Give the buffer back to Python (idempotent): the holder goes, and
        with it the export (nothing else refers to a holder)."""
        self._holder = None

    def __repr__(self) -> str:
        return f"<Pin {type(self.obj).__name__} {self.nbytes} bytes at {self.address:#x}>"


def pin(obj: object, *, writable: bool) -> Pin:
    """Pin *obj* (any C-contiguous bytes-like object).

    Raises:
        TypeError: *obj* is not bytes-like, or *writable* and it is read-only.
        ValueError: *obj* is not C-contiguous.
    """
    return Pin(obj, writable)


def pin_many(buffers: Sequence[object], *, writable: bool) -> list[Pin]:
    """Pin every buffer of *buffers*; on error nothing stays pinned."""
    pins: list[Pin] = []
    try:
        for b in buffers:
            pins.append(Pin(b, writable))
    except BaseException:
        for p in pins:
            p.release()
        raise
    return pins


def buffer_length(obj: object) -> int:
    """Length in bytes of bytes-like *obj* (TypeError if it is not one)."""
    try:
        with memoryview(obj) as view:  # type: ignore[arg-type]
            return view.nbytes
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not {type(obj).__name__!r}") from None


def iovec_array(pins: Sequence[Pin | None]) -> Any:
    """A ctypes ``struct iovec[len(pins)]`` describing *pins* (at least one
    element, so that its address is valid even for an empty list; None leaves
    an entry zero -- an empty slot of a sparse buffer table).  Keep it alive as
    long as the kernel may read it: until the request completes."""
    iovs = (iovec * max(len(pins), 1))()
    for i, p in enumerate(pins):
        if p is not None:
            iovs[i].iov_base = p.address
            iovs[i].iov_len = p.nbytes
    return iovs
