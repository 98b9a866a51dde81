"""Raw Linux system calls through ctypes, and the one place errors become OSError.

Every wrapper here is named after its system call and returns what the kernel
returns, in the kernel's own convention: a non-negative result, or the
*negated* errno (``-errno.EINVAL``).  That is exactly the libaio convention, so
:mod:`xaio.libaio` passes results through untouched, while the Python-convention
modules call :func:`check`, the single place that turns a negative result into
``OSError(errno, os.strerror(errno))`` — and hence into the right subclass
(``FileNotFoundError``, ``BlockingIOError``, ...), as the :mod:`os` module does.

EINTR policy: a wrapper never retries by itself.  Callers that wait
(``io_getevents``) retry as PEP 475 asks: run the signal handlers
(:func:`run_signal_handlers`, which raises if a handler raised) and wait again
for what is left of the timeout.  ``io_pgetevents`` is the exception: its whole
point is to be woken by a signal, so EINTR is reported.

All calls go through ``syscall(2)`` of the C library loaded with
``use_errno=True``; ctypes releases the GIL around each call, so a blocking
system call never blocks other Python threads.  Pointers are passed as plain
integers derived by the caller from live Python buffers (see
:mod:`xaio._buffers`); nothing here accepts a user-supplied address.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import struct
from collections.abc import Callable
from typing import Any, NoReturn

from xaio._abi import ARCH, SYS
from xaio._abi.aio import aio_ring

__all__ = [
    "check",
    "oserror",
    "raise_errno",
    "run_signal_handlers",
    "Timespec",
    "timespec_from_seconds",
    "io_setup",
    "io_destroy",
    "io_submit",
    "io_getevents",
    "io_pgetevents",
    "io_cancel",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_enter_fast",
    "fast_syscall",
    "statx",
    "stat_result",
    "fstat_cached",
    "openat2",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "available",
    "read_proc",
    "drain_eventfd",
]

# glibc by its soname: no search (ctypes.util.find_library runs ldconfig and
# imports a dozen modules) unless that fails (musl)
_libc_name = "libc.so.6"
_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(_libc_name, use_errno=True)
except OSError:  # pragma: no cover - not glibc
    import ctypes.util

    _libc_name = ctypes.util.find_library("c") or _libc_name
    try:
        _libc = ctypes.CDLL(_libc_name, use_errno=True)
    except OSError:
        _libc = None


def oserror(err: int, *args: Any) -> OSError:
    """Return ``OSError(err, os.strerror(err), *args)``: the right subclass for *err*.

    *err* may be given negated (the kernel and libaio convention)."""
    err = abs(err)
    return OSError(err, os.strerror(err), *args)


def raise_errno(err: int, *args: Any) -> NoReturn:
    """Raise :func:`oserror` for *err* (positive or negated)."""
    raise oserror(err, *args)


def check(ret: int) -> int:
    """Return *ret* if it is >= 0; raise ``OSError(-ret)`` if it is negative.

    This is the one decode point from the kernel convention to Python's."""
    if ret < 0:
        raise oserror(-ret)
    return ret


def run_signal_handlers() -> None:
    """Run pending Python signal handlers now (PyErr_CheckSignals), raising
    whatever a handler raises.  Used before retrying a call that failed with
    EINTR, as PEP 475 does for the os module."""
    ctypes.pythonapi.PyErr_CheckSignals()


class Timespec(ctypes.Structure):
    """``struct timespec`` (and ``__kernel_timespec`` on 64-bit)."""

    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def timespec_from_seconds(seconds: float, ts: Timespec | None = None) -> Timespec:
    """Fill (or make) a Timespec for a non-negative number of seconds."""
    if ts is None:
        ts = Timespec()
    if seconds <= 0:
        ts.tv_sec = 0
        ts.tv_nsec = 0
    else:
        whole = int(seconds)
        ts.tv_sec = whole
        ts.tv_nsec = min(int((seconds - whole) * 1_000_000_000), 999_999_999)
    return ts


#: The number of arguments of each syscall wrapped by _make.
_NARGS: dict[str, int] = {}


def _make(name: str, nargs: int) -> Callable[..., int]:
    """Build a wrapper for syscall *name* that returns ret or -errno."""
    _NARGS[name] = nargs
    number = SYS.get(name)
    if _libc is None or number is None:

        def unavailable(*args: int) -> int:
            return -_errno.ENOSYS

        unavailable.__name__ = name
        return unavailable
    proto = ctypes.CFUNCTYPE(ctypes.c_long, *([ctypes.c_long] * (nargs + 1)), use_errno=True)
    fn = proto(("syscall", _libc))
    get_errno = ctypes.get_errno

    def call(*args: int) -> int:
        ret: int = fn(number, *args)
        if ret == -1:
            return -get_errno()
        return ret

    call.__name__ = name
    call.__qualname__ = name
    call.__doc__ = f"syscall({name}, ...) -> ret, or -errno"
    return call


def available(name: str) -> bool:
    """True if this machine's syscall table knows *name* (it may still fail)."""
    return _libc is not None and name in SYS


# --- Linux AIO -------------------------------------------------------------------
# long io_setup(unsigned nr_events, aio_context_t *ctxp)
_io_setup = _make("io_setup", 2)
# long io_destroy(aio_context_t ctx)
io_destroy = _make("io_destroy", 1)
# long io_submit(aio_context_t ctx, long nr, struct iocb **iocbpp)
io_submit = _make("io_submit", 3)
# long io_getevents(aio_context_t ctx, long min_nr, long nr, struct io_event *events,
#                   struct timespec *timeout)
io_getevents = _make("io_getevents", 5)
# long io_pgetevents(ctx, min_nr, nr, events, timeout, const struct __aio_sigset *usig)
io_pgetevents = _make("io_pgetevents", 6)
# long io_cancel(aio_context_t ctx, struct iocb *iocb, struct io_event *result)
io_cancel = _make("io_cancel", 3)

# --- io_uring --------------------------------------------------------------------
# int io_uring_setup(u32 entries, struct io_uring_params *p)
io_uring_setup = _make("io_uring_setup", 2)
# int io_uring_enter(unsigned fd, u32 to_submit, u32 min_complete, u32 flags,
#                    const void *argp, size_t argsz)
io_uring_enter = _make("io_uring_enter", 6)
# int io_uring_register(unsigned fd, unsigned opcode, void *arg, unsigned nr_args)
io_uring_register = _make("io_uring_register", 4)


def _make_fast_enter() -> Callable[..., int]:
    """io_uring_enter without argtypes on x86-64: argtype conversion of seven
    c_long costs ~1.5 us, more than the syscall.  The small int arguments
    travel as C ints, which libffi sign-extends into their 64-bit registers
    (the kernel reads them as u32 anyway); argp and argsz (the 7th argument of
    syscall(2), on the stack) as c_void_p / c_size_t objects."""
    number = SYS.get("io_uring_enter")
    if _libc is None or number is None or ARCH != "x86_64":
        return io_uring_enter
    raw = ctypes.CDLL(_libc_name, use_errno=True).syscall
    raw.restype = ctypes.c_long
    get_errno, void_p, size_t = ctypes.get_errno, ctypes.c_void_p, ctypes.c_size_t
    zero = size_t(0)

    def io_uring_enter_fast(
        fd: int, to_submit: int, min_complete: int, flags: int, argp: int = 0, argsz: int = 0
    ) -> int:
        if argp:
            ret: int = raw(number, fd, to_submit, min_complete, flags, void_p(argp), size_t(argsz))
        else:
            ret = raw(number, fd, to_submit, min_complete, flags, 0, zero)
        return -get_errno() if ret == -1 else ret

    return io_uring_enter_fast


#: Same contract as io_uring_enter (ret or -errno), about twice as cheap on x86-64.
io_uring_enter_fast = _make_fast_enter()


def fast_syscall(name: str) -> Callable[..., int]:
    """A hot-path wrapper for syscall *name*, returning ret or -errno.

    On x86-64 it calls syscall(2) without ctypes argtypes (their conversion
    costs ~2 us a call, more than a cheap syscall): every argument must then
    be a small int (< 2**31, passed as a C int that libffi sign-extends into
    its 64-bit register) or a ctypes object -- pass addresses and context ids
    as ``ctypes.c_void_p`` (precomputed once by the caller), NULL as None.
    Elsewhere it converts those objects and calls the argtypes wrapper.
    """
    number = SYS.get(name)
    slow: Callable[..., int] = globals()[name]
    if _libc is None or number is None or ARCH != "x86_64":

        def portable(*args: Any) -> int:
            return slow(
                *[(a.value or 0) if isinstance(a, ctypes.c_void_p) else (a or 0) for a in args]
            )

        return portable
    raw = ctypes.CDLL(_libc_name, use_errno=True).syscall
    raw.restype = ctypes.c_long
    get_errno = ctypes.get_errno
    nargs = _NARGS[name]
    # A wrapper of the syscall's own arity: packing and unpacking ``*args``
    # would cost a third of a cheap syscall.
    call: Callable[..., int]
    if nargs == 3:

        def call(a: Any, b: Any, c: Any) -> int:
            ret: int = raw(number, a, b, c)
            return -get_errno() if ret == -1 else ret

    elif nargs == 5:

        def call(a: Any, b: Any, c: Any, d: Any, e: Any) -> int:
            ret: int = raw(number, a, b, c, d, e)
            return -get_errno() if ret == -1 else ret

    else:

        def call(*args: Any) -> int:
            ret: int = raw(number, *args)
            return -get_errno() if ret == -1 else ret

    call.__name__ = f"{name}_fast"
    return call


# --- misc ------------------------------------------------------------------------
# int statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *buf)
statx = _make("statx", 5)

AT_EMPTY_PATH = 0x1000
#: statx: answer from the kernel's cached attributes (no GETATTR round trip
#: to a FUSE daemon or an NFS server)
AT_STATX_DONT_SYNC = 0x4000
STATX_BASIC_STATS = 0x7FF
#: sizeof(struct statx) (linux/stat.h)
STATX_SIZE = 256
#: struct statx from stx_mask to the device numbers (offsets 0..143): the
#: head, four struct statx_timestamp (atime, btime, ctime, mtime), rdev, dev
_STATX = struct.Struct("<IIQIIIHxxQQQQ" + "qI4x" * 4 + "IIII")
_fstat_fast = fast_syscall("statx")
_EMPTY = ctypes.c_char_p(b"")
#: os.stat_result takes its fields as one tuple where they are the 10 of
#: the sequence, then st_atime, st_mtime, st_ctime (floats), their _ns,
#: st_blksize, st_blocks and st_rdev (CPython on Linux)
_STAT_ONE_TUPLE = os.stat_result.n_fields == 19
_makedev = os.makedev


def stat_result(buf: Any) -> os.stat_result:
    """The ``os.stat_result`` of a ``struct statx`` that statx(2) filled with
    ``STATX_BASIC_STATS`` (*buf*: its 256 bytes, any buffer object)."""
    f = _STATX.unpack_from(buf)
    # (mask, blksize, attributes, nlink, uid, gid, mode, ino, size, blocks,
    # attributes_mask, then sec/nsec of atime, btime, ctime, mtime, then
    # rdev and dev major/minor)
    a_s, a_ns, c_s, c_ns, m_s, m_ns = f[11], f[12], f[15], f[16], f[17], f[18]
    head = (f[6], f[7], _makedev(f[21], f[22]), f[3], f[4], f[5], f[8], a_s, m_s, c_s)
    at_ns = a_s * 1_000_000_000 + a_ns
    mt_ns = m_s * 1_000_000_000 + m_ns
    ct_ns = c_s * 1_000_000_000 + c_ns
    blksize, blocks, rdev = f[1], f[9], _makedev(f[19], f[20])
    a_f, m_f, c_f = a_s + a_ns * 1e-9, m_s + m_ns * 1e-9, c_s + c_ns * 1e-9
    if _STAT_ONE_TUPLE:  # (no keyword dict to build)
        return os.stat_result((*head, a_f, m_f, c_f, at_ns, mt_ns, ct_ns, blksize, blocks, rdev))
    return os.stat_result(
        head,
        {
            "st_atime": a_f,
            "st_mtime": m_f,
            "st_ctime": c_f,
            "st_atime_ns": at_ns,
            "st_mtime_ns": mt_ns,
            "st_ctime_ns": ct_ns,
            "st_blksize": blksize,
            "st_blocks": blocks,
            "st_rdev": rdev,
        },
    )


def fstat_cached(fd: int) -> os.stat_result:
    """``os.fstat(fd)`` as the kernel has it cached: statx(2) with
    ``AT_STATX_DONT_SYNC``, which never waits for a FUSE daemon or an NFS
    server to answer a GETATTR -- what an event loop's thread may call.

    The type, block size and device are the file's; the size and times may
    be as old as the file system's attribute cache when another machine (or
    a FUSE daemon's backing store) changed the file.  Local file systems
    have no such cache: there it is ``os.fstat``.  Where statx is refused
    (seccomp, an old kernel) it is ``os.fstat``.

    Raises:
        OSError: as ``os.fstat`` (EBADF...).
    """
    if type(fd) is not int or not 0 <= fd <= 0x7FFFFFFF:
        return os.fstat(fd)  # os's own TypeError, OverflowError or EBADF
    buf = ctypes.create_string_buffer(STATX_SIZE)
    err = _fstat_fast(fd, _EMPTY, AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_BASIC_STATS, buf)
    if err == 0:
        return stat_result(buf)
    if err in (-_errno.ENOSYS, -_errno.EPERM):
        return os.fstat(fd)
    raise oserror(err)


def _make_openat2() -> Callable[[int, bytes, bytes], int]:
    number = SYS.get("openat2")
    if _libc is None or number is None:

        def unavailable(dirfd: int, path: bytes, how: bytes) -> int:
            return -_errno.ENOSYS

        return unavailable
    # No argtypes: a bytes object travels as a pointer to its (NUL-terminated)
    # data; the other arguments as ctypes objects of their C types.
    raw = ctypes.CDLL(_libc_name, use_errno=True).syscall
    raw.restype = ctypes.c_long
    get_errno, c_int, c_size_t = ctypes.get_errno, ctypes.c_int, ctypes.c_size_t
    nr = ctypes.c_long(number)
    fdcwd = c_int(-100)
    sizes: dict[int, ctypes.c_size_t] = {}

    def openat2(dirfd: int, path: bytes, how: bytes) -> int:
        """``openat2(dirfd, path, how, len(how))`` -> fd, or -errno.

        *path* must hold no NUL byte; *how* is a packed ``struct open_how``."""
        size = sizes.get(len(how))
        if size is None:
            size = sizes[len(how)] = c_size_t(len(how))
        ret: int = raw(nr, fdcwd if dirfd == -100 else c_int(dirfd), path, how, size)
        return -get_errno() if ret == -1 else ret

    return openat2


# int openat2(int dirfd, const char *path, struct open_how *how, size_t size)
openat2 = _make_openat2()
# int rt_sigqueueinfo(pid_t tgid, int sig, siginfo_t *info)
rt_sigqueueinfo = _make("rt_sigqueueinfo", 3)
# int rt_tgsigqueueinfo(pid_t tgid, pid_t tid, int sig, siginfo_t *info)
rt_tgsigqueueinfo = _make("rt_tgsigqueueinfo", 4)


def io_setup(nr_events: int) -> tuple[int, int]:
    """``io_setup(2)``: return ``(ret, ctx_id)``; ret is 0 or -errno."""
    ctx = ctypes.c_ulong(0)
    ret: int = _io_setup(nr_events, ctypes.addressof(ctx))
    return ret, ctx.value


def aio_ring_at(ctx_id: int) -> aio_ring:
    """The AIO completion ring header the kernel mapped at *ctx_id*.

    Only valid while the context is alive and in the process that created it."""
    return aio_ring.from_address(ctx_id)


def read_proc(path: str) -> str | None:
    """The stripped text of a /proc or /sys file, or None if it cannot be read
    (a setting this kernel does not have, a sandbox that hides it)."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


if _libc is not None:
    _c_read = _libc.read
    _c_read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    _c_read.restype = ctypes.c_ssize_t
# The counter read is discarded: one scratch buffer serves every caller.
_drain_buf = ctypes.create_string_buffer(8)
_drain_addr = ctypes.addressof(_drain_buf)


def drain_eventfd(fd: int) -> bool:
    """Reset a non-blocking eventfd's counter; True if it was non-zero.

    ``read(2)`` through ctypes: no exception for the common empty case, where
    ``os.eventfd_read`` raises BlockingIOError (a cost on every reap)."""
    if _libc is None:  # pragma: no cover
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return False
        return True
    return bool(_c_read(fd, _drain_addr, 8) == 8)
