"""glibc's POSIX AIO (librt) through ctypes, for the benchmarks and the
differential tests (tests/posix/test_parity_posix.py) that run it beside xaio.posix.

``struct aiocb`` and ``struct sigevent`` are laid out as glibc has them on
x86-64 (168 and 64 bytes); :func:`load` returns the library with the
prototypes of ``aio_read``, ``aio_write``, ``aio_fsync``, ``aio_error``,
``aio_return``, ``aio_cancel``, ``aio_suspend`` and ``lio_listio`` set.
Every function sets ``errno`` (read it with ``ctypes.get_errno()``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Any

__all__ = ["glibc_aiocb", "glibc_sigevent", "load", "unavailable_reason"]


class _sigval(ctypes.Union):
    _fields_ = [("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p)]


class glibc_sigevent(ctypes.Structure):
    """glibc's ``struct sigevent`` (64 bytes)."""

    _fields_ = [
        ("sigev_value", _sigval),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("_pad", ctypes.c_byte * 48),
    ]


class glibc_aiocb(ctypes.Structure):
    """glibc's ``struct aiocb`` on x86-64 (168 bytes)."""

    _fields_ = [
        ("aio_fildes", ctypes.c_int),
        ("aio_lio_opcode", ctypes.c_int),
        ("aio_reqprio", ctypes.c_int),
        ("aio_buf", ctypes.c_void_p),
        ("aio_nbytes", ctypes.c_size_t),
        ("aio_sigevent", glibc_sigevent),
        ("__next_prio", ctypes.c_void_p),
        ("__abs_prio", ctypes.c_int),
        ("__policy", ctypes.c_int),
        ("__error_code", ctypes.c_int),
        ("__return_value", ctypes.c_ssize_t),
        ("aio_offset", ctypes.c_int64),
        ("__glibc_reserved", ctypes.c_char * 32),
    ]


assert ctypes.sizeof(glibc_sigevent) == 64
assert ctypes.sizeof(glibc_aiocb) == 168, ctypes.sizeof(glibc_aiocb)
assert glibc_aiocb.aio_offset.offset == 128


def unavailable_reason() -> str | None:
    """None if glibc's POSIX AIO can be loaded here, else why not."""
    if platform.machine() != "x86_64":
        return f"the struct layouts are x86-64's, this is {platform.machine()}"
    try:
        load()
    except OSError as e:
        return str(e)
    return None


_lib: Any = None


def load() -> Any:
    """glibc's library holding ``aio_read`` (librt, or libc itself since
    glibc 2.34), prototypes set; loaded once.

    Raises:
        OSError: no such library here.
    """
    global _lib
    if _lib is not None:
        return _lib
    for name in (ctypes.util.find_library("rt"), ctypes.util.find_library("c"), "libc.so.6"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
        if not hasattr(lib, "aio_read"):
            continue
        ptr = ctypes.POINTER(glibc_aiocb)
        for fn in (lib.aio_read, lib.aio_write, lib.aio_error):
            fn.argtypes = [ptr]
            fn.restype = ctypes.c_int
        lib.aio_return.argtypes = [ptr]
        lib.aio_return.restype = ctypes.c_ssize_t
        lib.aio_fsync.argtypes = [ctypes.c_int, ptr]
        lib.aio_fsync.restype = ctypes.c_int
        lib.aio_cancel.argtypes = [ctypes.c_int, ptr]
        lib.aio_cancel.restype = ctypes.c_int
        lib.aio_suspend.argtypes = [ctypes.POINTER(ptr), ctypes.c_int, ctypes.c_void_p]
        lib.aio_suspend.restype = ctypes.c_int
        lib.lio_listio.argtypes = [
            ctypes.c_int,
            ctypes.POINTER(ptr),
            ctypes.c_int,
            ctypes.POINTER(glibc_sigevent),
        ]
        lib.lio_listio.restype = ctypes.c_int
        _lib = lib
        return lib
    raise OSError("glibc POSIX AIO (aio_read) not found in librt or libc")
