"""``linux/io_uring.h`` in ctypes: the setup parameters, ring offsets, SQE, CQE,
probe and getevents structures, and the ``IORING_*`` / ``IOSQE_*`` constants.

The unions of ``struct io_uring_sqe`` are modelled by their first member (the
name :func:`offsetof` in C accepts for the anonymous union), which is all xaio
writes: every SQE is packed in one go with :data:`SQE_STRUCT`, so the other
members of a union are simply other meanings of the same bytes (``off`` is also
``addr2``, ``rw_flags`` is also ``fsync_flags``, ``poll32_events``,
``timeout_flags``, ``cancel_flags``, ``open_flags`` ...).

Constants newer than some installed headers (``IORING_SETUP_NO_SQARRAY``,
``IORING_OP_*`` past ``SENDMSG_ZC``, ...) carry the kernel's values from
``include/uapi/linux/io_uring.h``; the ABI test checks only those the installed
header knows.  Layouts are little-endian (x86-64 and arm64).
"""

from __future__ import annotations

import ctypes
import struct

# --- struct io_uring_sqe -----------------------------------------------------------


class io_uring_sqe(ctypes.Structure):
    """``struct io_uring_sqe`` (64 bytes; unions modelled by their first member)."""

    _fields_ = [
        ("opcode", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("ioprio", ctypes.c_uint16),
        ("fd", ctypes.c_int32),
        ("off", ctypes.c_uint64),  # also addr2, cmd_op
        ("addr", ctypes.c_uint64),  # also splice_off_in
        ("len", ctypes.c_uint32),
        ("rw_flags", ctypes.c_uint32),  # also fsync_flags, poll32_events, timeout_flags, ...
        ("user_data", ctypes.c_uint64),
        ("buf_index", ctypes.c_uint16),  # also buf_group
        ("personality", ctypes.c_uint16),
        ("splice_fd_in", ctypes.c_int32),  # also file_index, addr_len
        ("addr3", ctypes.c_uint64),
        ("_pad2", ctypes.c_uint64),
    ]


class io_uring_cqe(ctypes.Structure):
    """``struct io_uring_cqe`` (16 bytes; 32 with ``IORING_SETUP_CQE32``)."""

    _fields_ = [
        ("user_data", ctypes.c_uint64),
        ("res", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


class io_sqring_offsets(ctypes.Structure):
    """``struct io_sqring_offsets``: where the SQ ring's fields live in its mmap."""

    _fields_ = [
        ("head", ctypes.c_uint32),
        ("tail", ctypes.c_uint32),
        ("ring_mask", ctypes.c_uint32),
        ("ring_entries", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("dropped", ctypes.c_uint32),
        ("array", ctypes.c_uint32),
        ("resv1", ctypes.c_uint32),
        ("resv2", ctypes.c_uint64),  # user_addr in Linux >= 6.5 headers
    ]


class io_cqring_offsets(ctypes.Structure):
    """``struct io_cqring_offsets``: where the CQ ring's fields live in its mmap."""

    _fields_ = [
        ("head", ctypes.c_uint32),
        ("tail", ctypes.c_uint32),
        ("ring_mask", ctypes.c_uint32),
        ("ring_entries", ctypes.c_uint32),
        ("overflow", ctypes.c_uint32),
        ("cqes", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("resv1", ctypes.c_uint32),
        ("resv2", ctypes.c_uint64),  # user_addr in Linux >= 6.5 headers
    ]


class io_uring_params(ctypes.Structure):
    """``struct io_uring_params``: passed to ``io_uring_setup(2)``, filled in by it."""

    _fields_ = [
        ("sq_entries", ctypes.c_uint32),
        ("cq_entries", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("sq_thread_cpu", ctypes.c_uint32),
        ("sq_thread_idle", ctypes.c_uint32),
        ("features", ctypes.c_uint32),
        ("wq_fd", ctypes.c_uint32),
        ("resv", ctypes.c_uint32 * 3),
        ("sq_off", io_sqring_offsets),
        ("cq_off", io_cqring_offsets),
    ]


class io_uring_probe_op(ctypes.Structure):
    """``struct io_uring_probe_op``."""

    _fields_ = [
        ("op", ctypes.c_uint8),
        ("resv", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("resv2", ctypes.c_uint32),
    ]


class io_uring_probe(ctypes.Structure):
    """``struct io_uring_probe`` (header only; ``ops[]`` follows it in memory)."""

    _fields_ = [
        ("last_op", ctypes.c_uint8),
        ("ops_len", ctypes.c_uint8),
        ("resv", ctypes.c_uint16),
        ("resv2", ctypes.c_uint32 * 3),
    ]


class kernel_timespec(ctypes.Structure):
    """``struct __kernel_timespec`` (64-bit seconds on every architecture)."""

    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


class io_uring_getevents_arg(ctypes.Structure):
    """``struct io_uring_getevents_arg``: the ``IORING_ENTER_EXT_ARG`` argument."""

    _fields_ = [
        ("sigmask", ctypes.c_uint64),
        ("sigmask_sz", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("ts", ctypes.c_uint64),
    ]


class io_uring_sync_cancel_reg(ctypes.Structure):
    """``struct io_uring_sync_cancel_reg``: the ``IORING_REGISTER_SYNC_CANCEL``
    argument (Linux 6.0).  Newer headers split ``pad`` into an opcode byte and
    padding; the layout is the same."""

    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("fd", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("timeout", kernel_timespec),
        ("pad", ctypes.c_uint64 * 4),
    ]


class io_uring_rsrc_update(ctypes.Structure):
    """``struct io_uring_rsrc_update`` (``IORING_REGISTER_FILES_UPDATE``)."""

    _fields_ = [
        ("offset", ctypes.c_uint32),
        ("resv", ctypes.c_uint32),
        ("data", ctypes.c_uint64),
    ]


class io_uring_rsrc_register(ctypes.Structure):
    """``struct io_uring_rsrc_register`` (``IORING_REGISTER_BUFFERS2``/``FILES2``)."""

    _fields_ = [
        ("nr", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("resv2", ctypes.c_uint64),
        ("data", ctypes.c_uint64),
        ("tags", ctypes.c_uint64),
    ]


class io_uring_rsrc_update2(ctypes.Structure):
    """``struct io_uring_rsrc_update2`` (``IORING_REGISTER_BUFFERS_UPDATE``)."""

    _fields_ = [
        ("offset", ctypes.c_uint32),
        ("resv", ctypes.c_uint32),
        ("data", ctypes.c_uint64),
        ("tags", ctypes.c_uint64),
        ("nr", ctypes.c_uint32),
        ("resv2", ctypes.c_uint32),
    ]


#: struct io_uring_sqe as a :mod:`struct` format, written whole with pack_into:
#: opcode, flags, ioprio, fd, off, addr, len, op_flags, user_data, buf_index,
#: personality, splice_fd_in/file_index, addr3, pad.
SQE_STRUCT = struct.Struct("<BBHiQQIIQHHiQQ")
#: struct io_uring_cqe as a :mod:`struct` format: user_data, res, flags.
CQE_STRUCT = struct.Struct("<QiI")

assert ctypes.sizeof(io_uring_sqe) == SQE_STRUCT.size == 64
assert ctypes.sizeof(io_uring_cqe) == CQE_STRUCT.size == 16
assert ctypes.sizeof(io_uring_params) == 120
assert ctypes.sizeof(io_uring_getevents_arg) == 24
assert ctypes.sizeof(io_uring_sync_cancel_reg) == 64

# --- constants ----------------------------------------------------------------------

IORING_FILE_INDEX_ALLOC = 0xFFFFFFFF

# sqe->flags
IOSQE_FIXED_FILE = 1 << 0
IOSQE_IO_DRAIN = 1 << 1
IOSQE_IO_LINK = 1 << 2
IOSQE_IO_HARDLINK = 1 << 3
IOSQE_ASYNC = 1 << 4
IOSQE_BUFFER_SELECT = 1 << 5
IOSQE_CQE_SKIP_SUCCESS = 1 << 6

# io_uring_setup() flags
IORING_SETUP_IOPOLL = 1 << 0
IORING_SETUP_SQPOLL = 1 << 1
IORING_SETUP_SQ_AFF = 1 << 2
IORING_SETUP_CQSIZE = 1 << 3
IORING_SETUP_CLAMP = 1 << 4
IORING_SETUP_ATTACH_WQ = 1 << 5
IORING_SETUP_R_DISABLED = 1 << 6
IORING_SETUP_SUBMIT_ALL = 1 << 7
IORING_SETUP_COOP_TASKRUN = 1 << 8
IORING_SETUP_TASKRUN_FLAG = 1 << 9
IORING_SETUP_SQE128 = 1 << 10
IORING_SETUP_CQE32 = 1 << 11
IORING_SETUP_SINGLE_ISSUER = 1 << 12
IORING_SETUP_DEFER_TASKRUN = 1 << 13
IORING_SETUP_NO_MMAP = 1 << 14  # Linux 6.5
IORING_SETUP_REGISTERED_FD_ONLY = 1 << 15  # Linux 6.5
IORING_SETUP_NO_SQARRAY = 1 << 16  # Linux 6.6

# enum io_uring_op
IORING_OP_NOP = 0
IORING_OP_READV = 1
IORING_OP_WRITEV = 2
IORING_OP_FSYNC = 3
IORING_OP_READ_FIXED = 4
IORING_OP_WRITE_FIXED = 5
IORING_OP_POLL_ADD = 6
IORING_OP_POLL_REMOVE = 7
IORING_OP_SYNC_FILE_RANGE = 8
IORING_OP_SENDMSG = 9
IORING_OP_RECVMSG = 10
IORING_OP_TIMEOUT = 11
IORING_OP_TIMEOUT_REMOVE = 12
IORING_OP_ACCEPT = 13
IORING_OP_ASYNC_CANCEL = 14
IORING_OP_LINK_TIMEOUT = 15
IORING_OP_CONNECT = 16
IORING_OP_FALLOCATE = 17
IORING_OP_OPENAT = 18
IORING_OP_CLOSE = 19
IORING_OP_FILES_UPDATE = 20
IORING_OP_STATX = 21
IORING_OP_READ = 22
IORING_OP_WRITE = 23
IORING_OP_FADVISE = 24
IORING_OP_MADVISE = 25
IORING_OP_SEND = 26
IORING_OP_RECV = 27
IORING_OP_OPENAT2 = 28
IORING_OP_EPOLL_CTL = 29
IORING_OP_SPLICE = 30
IORING_OP_PROVIDE_BUFFERS = 31
IORING_OP_REMOVE_BUFFERS = 32
IORING_OP_TEE = 33
IORING_OP_SHUTDOWN = 34
IORING_OP_RENAMEAT = 35
IORING_OP_UNLINKAT = 36
IORING_OP_MKDIRAT = 37
IORING_OP_SYMLINKAT = 38
IORING_OP_LINKAT = 39
IORING_OP_MSG_RING = 40
IORING_OP_FSETXATTR = 41
IORING_OP_SETXATTR = 42
IORING_OP_FGETXATTR = 43
IORING_OP_GETXATTR = 44
IORING_OP_SOCKET = 45
IORING_OP_URING_CMD = 46
IORING_OP_SEND_ZC = 47
IORING_OP_SENDMSG_ZC = 48

# sqe->fsync_flags
IORING_FSYNC_DATASYNC = 1 << 0

# sqe->timeout_flags
IORING_TIMEOUT_ABS = 1 << 0
IORING_TIMEOUT_UPDATE = 1 << 1
IORING_TIMEOUT_BOOTTIME = 1 << 2
IORING_TIMEOUT_REALTIME = 1 << 3
IORING_LINK_TIMEOUT_UPDATE = 1 << 4
IORING_TIMEOUT_ETIME_SUCCESS = 1 << 5

# POLL_ADD command flags (in sqe->len)
IORING_POLL_ADD_MULTI = 1 << 0
IORING_POLL_UPDATE_EVENTS = 1 << 1
IORING_POLL_UPDATE_USER_DATA = 1 << 2
IORING_POLL_ADD_LEVEL = 1 << 3

# ASYNC_CANCEL flags (sqe->cancel_flags, and io_uring_sync_cancel_reg.flags)
IORING_ASYNC_CANCEL_ALL = 1 << 0
IORING_ASYNC_CANCEL_FD = 1 << 1
IORING_ASYNC_CANCEL_ANY = 1 << 2
IORING_ASYNC_CANCEL_FD_FIXED = 1 << 3
IORING_ASYNC_CANCEL_USERDATA = 1 << 4
IORING_ASYNC_CANCEL_OP = 1 << 5

# cqe->flags
IORING_CQE_F_BUFFER = 1 << 0
IORING_CQE_F_MORE = 1 << 1
IORING_CQE_F_SOCK_NONEMPTY = 1 << 2
IORING_CQE_F_NOTIF = 1 << 3
IORING_CQE_BUFFER_SHIFT = 16

# mmap offsets
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000

# sq_ring->flags
IORING_SQ_NEED_WAKEUP = 1 << 0
IORING_SQ_CQ_OVERFLOW = 1 << 1
IORING_SQ_TASKRUN = 1 << 2

# cq_ring->flags
IORING_CQ_EVENTFD_DISABLED = 1 << 0

# io_uring_enter(2) flags
IORING_ENTER_GETEVENTS = 1 << 0
IORING_ENTER_SQ_WAKEUP = 1 << 1
IORING_ENTER_SQ_WAIT = 1 << 2
IORING_ENTER_EXT_ARG = 1 << 3
IORING_ENTER_REGISTERED_RING = 1 << 4

# io_uring_params->features
IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_FEAT_NODROP = 1 << 1
IORING_FEAT_SUBMIT_STABLE = 1 << 2
IORING_FEAT_RW_CUR_POS = 1 << 3
IORING_FEAT_CUR_PERSONALITY = 1 << 4
IORING_FEAT_FAST_POLL = 1 << 5
IORING_FEAT_POLL_32BITS = 1 << 6
IORING_FEAT_SQPOLL_NONFIXED = 1 << 7
IORING_FEAT_EXT_ARG = 1 << 8
IORING_FEAT_NATIVE_WORKERS = 1 << 9
IORING_FEAT_RSRC_TAGS = 1 << 10
IORING_FEAT_CQE_SKIP = 1 << 11
IORING_FEAT_LINKED_FILE = 1 << 12
IORING_FEAT_REG_REG_RING = 1 << 13  # Linux 6.3

# io_uring_register(2) opcodes
IORING_REGISTER_BUFFERS = 0
IORING_UNREGISTER_BUFFERS = 1
IORING_REGISTER_FILES = 2
IORING_UNREGISTER_FILES = 3
IORING_REGISTER_EVENTFD = 4
IORING_UNREGISTER_EVENTFD = 5
IORING_REGISTER_FILES_UPDATE = 6
IORING_REGISTER_EVENTFD_ASYNC = 7
IORING_REGISTER_PROBE = 8
IORING_REGISTER_PERSONALITY = 9
IORING_UNREGISTER_PERSONALITY = 10
IORING_REGISTER_RESTRICTIONS = 11
IORING_REGISTER_ENABLE_RINGS = 12
IORING_REGISTER_FILES2 = 13
IORING_REGISTER_FILES_UPDATE2 = 14
IORING_REGISTER_BUFFERS2 = 15
IORING_REGISTER_BUFFERS_UPDATE = 16
IORING_REGISTER_IOWQ_AFF = 17
IORING_UNREGISTER_IOWQ_AFF = 18
IORING_REGISTER_IOWQ_MAX_WORKERS = 19
IORING_REGISTER_RING_FDS = 20
IORING_UNREGISTER_RING_FDS = 21
IORING_REGISTER_PBUF_RING = 22
IORING_UNREGISTER_PBUF_RING = 23
IORING_REGISTER_SYNC_CANCEL = 24
IORING_REGISTER_FILE_ALLOC_RANGE = 25

IORING_REGISTER_FILES_SKIP = -2
IORING_RSRC_REGISTER_SPARSE = 1 << 0
IO_URING_OP_SUPPORTED = 1 << 0

__all__ = [
    "io_uring_sqe",
    "io_uring_cqe",
    "io_sqring_offsets",
    "io_cqring_offsets",
    "io_uring_params",
    "io_uring_probe",
    "io_uring_probe_op",
    "kernel_timespec",
    "io_uring_getevents_arg",
    "io_uring_sync_cancel_reg",
    "io_uring_rsrc_update",
    "io_uring_rsrc_register",
    "io_uring_rsrc_update2",
    "SQE_STRUCT",
    "CQE_STRUCT",
    "ABI_HEADERS",
    "ABI_STRUCTS",
    "ABI_CONSTANTS",
    *sorted(
        name
        for name, value in list(globals().items())
        if name.startswith(("IORING_", "IOSQE_", "IO_URING_")) and isinstance(value, int)
    ),
]

# What the ABI test (tests/test_abi.py) checks against the installed headers.
ABI_HEADERS = ["linux/io_uring.h"]
ABI_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "struct io_uring_sqe": io_uring_sqe,
    "struct io_uring_cqe": io_uring_cqe,
    "struct io_sqring_offsets": io_sqring_offsets,
    "struct io_cqring_offsets": io_cqring_offsets,
    "struct io_uring_params": io_uring_params,
    "struct io_uring_probe": io_uring_probe,
    "struct io_uring_probe_op": io_uring_probe_op,
    "struct __kernel_timespec": kernel_timespec,
    "struct io_uring_getevents_arg": io_uring_getevents_arg,
    "struct io_uring_sync_cancel_reg": io_uring_sync_cancel_reg,
    "struct io_uring_rsrc_update": io_uring_rsrc_update,
    "struct io_uring_rsrc_register": io_uring_rsrc_register,
    "struct io_uring_rsrc_update2": io_uring_rsrc_update2,
}
ABI_CONSTANTS: dict[str, int] = {
    name: globals()[name] for name in __all__ if name.startswith(("IORING_", "IOSQE_", "IO_URING_"))
}
