"""``linux/aio_abi.h`` in ctypes: struct iocb, struct io_event, the AIO ring header.

The layouts are little-endian (x86-64 and arm64 are); ``aio_key`` and
``aio_rw_flags`` swap places on big-endian machines, which xaio does not support.
"""

from __future__ import annotations

import ctypes
import struct

__all__ = [
    "AIO_RING_MAGIC",
    "AIO_RING_INCOMPAT_FEATURES",
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
    "RWF_ALL",
    "iocb",
    "io_event",
    "aio_ring",
    "iovec",
    "IOCB_STRUCT",
    "IO_EVENT_STRUCT",
]

# enum { IOCB_CMD_* }
IOCB_CMD_PREAD = 0
IOCB_CMD_PWRITE = 1
IOCB_CMD_FSYNC = 2
IOCB_CMD_FDSYNC = 3
# 4 was the experimental IOCB_CMD_PREADX
IOCB_CMD_POLL = 5
IOCB_CMD_NOOP = 6  # defined by the header, rejected by the kernel (EINVAL)
IOCB_CMD_PREADV = 7
IOCB_CMD_PWRITEV = 8

IOCB_FLAG_RESFD = 1 << 0
IOCB_FLAG_IOPRIO = 1 << 1

# RWF_* (linux/fs.h).  The last three are newer than some installed headers;
# their values are the kernel's (include/uapi/linux/fs.h, Linux 6.0 / 6.11 / 6.14).
RWF_HIPRI = 0x01
RWF_DSYNC = 0x02
RWF_SYNC = 0x04
RWF_NOWAIT = 0x08
RWF_APPEND = 0x10
RWF_NOAPPEND = 0x20
RWF_ATOMIC = 0x40
RWF_DONTCACHE = 0x80
RWF_ALL = 0xFF

AIO_RING_MAGIC = 0xA10A10A1
AIO_RING_INCOMPAT_FEATURES = 0


class iocb(ctypes.Structure):
    """``struct iocb`` (64 bytes)."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),  # __kernel_rwf_t is int
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class io_event(ctypes.Structure):
    """``struct io_event`` (32 bytes)."""

    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class aio_ring(ctypes.Structure):
    """The header of the completion ring the kernel maps at the context's id
    (``struct aio_ring`` in fs/aio.c; not in the UAPI headers but stable ABI,
    read by libaio's user-space ``io_getevents`` fast path)."""

    _fields_ = [
        ("id", ctypes.c_uint),
        ("nr", ctypes.c_uint),
        ("head", ctypes.c_uint),
        ("tail", ctypes.c_uint),
        ("magic", ctypes.c_uint),
        ("compat_features", ctypes.c_uint),
        ("incompat_features", ctypes.c_uint),
        ("header_length", ctypes.c_uint),
    ]


class iovec(ctypes.Structure):
    """``struct iovec`` (sys/uio.h)."""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


#: struct iocb as a :mod:`struct` format, for pack_into on the hot path.
IOCB_STRUCT = struct.Struct("<QIiHhIQQqQII")
#: struct io_event as a :mod:`struct` format.
IO_EVENT_STRUCT = struct.Struct("<QQqq")

assert ctypes.sizeof(iocb) == IOCB_STRUCT.size == 64
assert ctypes.sizeof(io_event) == IO_EVENT_STRUCT.size == 32
assert ctypes.sizeof(aio_ring) == 32

# What the ABI test (tests/test_abi.py) checks against the installed headers:
# the headers to include, struct name -> ctypes class, constant name -> value.
ABI_HEADERS = ["linux/aio_abi.h", "linux/fs.h"]
ABI_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "struct iocb": iocb,
    "struct io_event": io_event,
    "struct iovec": iovec,
}
ABI_CONSTANTS: dict[str, int] = {
    name: globals()[name]
    for name in __all__
    if name.startswith(("IOCB_", "RWF_")) and name != "RWF_ALL"
}
