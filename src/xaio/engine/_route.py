"""What kind of file an fd is, and which engine runs a request on it.

:func:`fd_kind` is the one place the engines learn whether a request would
block in the kernel's submission call; :func:`route` is the one rule that
splits a batch between a kernel engine and the thread engine.  Imports no
engine; the public home of these names is :mod:`xaio.engine`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Sequence
from typing import Any

from xaio._ops import OpCode, Operation
from xaio._syscall import (
    AT_EMPTY_PATH,
    AT_STATX_DONT_SYNC,
    STATX_BASIC_STATS,
    fast_syscall,
    fstat_cached,
    stat_result,
)

__all__ = [
    "fd_kind",
    "classify",
    "route",
    "is_direct_regular",
    "KIND_OTHER",
    "KIND_BUFFERED",
    "KIND_DIRECT",
    "KIND_BLOCKING",
    "BLOCKING_FS_TYPES",
]

_POLL, _NOP = OpCode.POLL, OpCode.NOP
_NO_OPS: tuple[Operation, ...] = ()

# ---------------------------------------------------------------------------------

#: :func:`fd_kind`: a pipe, socket, eventfd, directory... (or an fd not open).
KIND_OTHER = 0
#: :func:`fd_kind`: a regular file or block device without O_DIRECT.
KIND_BUFFERED = 1
#: :func:`fd_kind`: a regular file or block device opened with O_DIRECT.
KIND_DIRECT = 2
#: :func:`fd_kind`: a regular file on a file system that cannot be asked not
#: to block (:data:`BLOCKING_FS_TYPES`), O_DIRECT or not.
KIND_BLOCKING = 3

#: File system types (``/proc/self/mountinfo``, the part before any ``.``: a
#: ``fuse.sshfs`` mount is ``fuse``) whose reads and writes wait for a daemon
#: or a server however they are asked: io_uring runs them inline in
#: ``io_uring_enter``, one after the other, and Linux AIO inside ``io_submit``.
BLOCKING_FS_TYPES = frozenset(
    {
        "fuse", "fuseblk", "virtiofs", "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph",
        "9p", "afs", "coda", "orangefs", "gfs2", "ocfs2", "lustre", "gpfs", "glusterfs",
        "beegfs", "pvfs2", "ncpfs",
    }
)  # fmt: skip

_STATX_TYPE = 0x1
_STATX_MNT_ID_UNIQUE = 0x4000  # Linux 6.8; before it the device number is the key
_STATX_MODE_DEV = struct.Struct("<I24xH106xII")  # stx_mask, stx_mode, stx_dev_major/minor
_STATX_MNT_ID = struct.Struct("<144xQ")
_S_IFMT, _S_IFREG, _S_IFBLK = 0o170000, 0o100000, 0o060000
_S_IFDIR, _S_IFCHR = 0o040000, 0o020000
_statx = fast_syscall("statx")
_EMPTY_PATH = ctypes.c_char_p(b"")
_tls = threading.local()  # each thread's statx buffer
#: (-1, unique mount id) or (major, minor) -> whether that file system blocks
_blocking_mounts: dict[tuple[int, int], bool] = {}


def _fs_type_blocks(major: int, minor: int) -> bool:
    """Whether the file system on device *major:minor* is one of
    :data:`BLOCKING_FS_TYPES`, from ``/proc/self/mountinfo`` (no request
    reaches the file system itself).  False if no mount has that device."""
    dev = f"{major}:{minor}"
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return False
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if sep and len(fields) > 2 and fields[2] == dev:
            return tail.split(" ", 1)[0].split(".", 1)[0] in BLOCKING_FS_TYPES
    return False


def fd_kind(fd: int) -> int:
    """What kind of file *fd* is, for choosing how an engine runs its requests.

    The one place the engines learn it (through :func:`route`).  The
    ``linux`` engine sends only :data:`KIND_DIRECT` fds to kernel AIO
    (anything else would block inside ``io_submit``); the ``uring`` engine
    sends :data:`KIND_BLOCKING` fds to threads (``io_uring_enter`` would run
    them inline, and gets a short transfer wrong).  So no engine's
    ``submit`` waits for a slow file system, and an event loop that submits
    never stalls on one.

    Costs one ``statx(AT_STATX_DONT_SYNC)`` (~1 us, and no round trip to a
    FUSE daemon or an NFS server) and, for regular files and block devices,
    one ``fcntl``; whether a mount's file system blocks is looked up once per
    mount (its unique id; its device number before Linux 6.8) in
    ``/proc/self/mountinfo``.  The engines ask once per fd per batch, never
    from a cache that an fd closed and reused could make stale.

    Returns:
        :data:`KIND_OTHER`, :data:`KIND_BUFFERED`, :data:`KIND_DIRECT` or
        :data:`KIND_BLOCKING`.  Never raises: an fd that is not open is
        ``KIND_OTHER``, and its request fails in the engine as usual.
    """
    return _classify(fd, False)


def classify(fd: int) -> int:
    """:func:`fd_kind` and whether *fd* takes positional I/O, in one look.

    The async layer asks it once per request that goes to an engine and
    hands the kind on in :attr:`Operation.kind <xaio._ops.Operation>`, so the
    fd is classified once: to answer what ``os.pread``/``os.pwrite`` would
    answer before any transfer, and to route.  The kernel decides positional
    I/O per open file (``FMODE_PREAD``/``FMODE_PWRITE``): regular files,
    block devices and directories (whose reads then fail with EISDIR) take
    it; character devices when they can seek (``/dev/zero`` can, a tty
    cannot); FIFOs, sockets and anonymous inodes (eventfd, timerfd...) do
    not.  Costs what :func:`fd_kind` costs, plus an ``lseek`` for character
    devices.

    Returns:
        A ``KIND_*`` value, or ``-errno.EBADF`` (*fd* is not open) or
        ``-errno.ESPIPE`` (no positional I/O on it).
    """
    return _classify(fd, True)


def _statx_buffer() -> Any:
    """This thread's ``struct statx`` buffer (its address in ``_tls.address``),
    made on first use."""
    buf = getattr(_tls, "statx", None)
    if buf is None:
        buf = _tls.statx = ctypes.create_string_buffer(256)
        _tls.address = ctypes.c_void_p(ctypes.addressof(buf))
    return buf


def _classify(fd: int, positional: bool) -> int:
    """:func:`fd_kind`; with *positional*, :func:`classify`."""
    if type(fd) is not int or fd < 0 or fd > 0x7FFFFFFF:
        return -errno.EBADF if positional else KIND_OTHER
    buf = _statx_buffer()
    flags = AT_EMPTY_PATH | AT_STATX_DONT_SYNC
    err = _statx(fd, _EMPTY_PATH, flags, _STATX_TYPE | _STATX_MNT_ID_UNIQUE, _tls.address)
    if err < 0:
        if not positional:
            return KIND_OTHER
        if err == -errno.EBADF:
            return err
        try:  # no statx here (seccomp, an old kernel): the type from fstat
            fmt = os.fstat(fd).st_mode & _S_IFMT
        except OSError as e:
            return -(e.errno or errno.EBADF)
        return KIND_OTHER if _takes_positional(fd, fmt) else -errno.ESPIPE
    mask, mode, major, minor = _STATX_MODE_DEV.unpack_from(buf)
    fmt = mode & _S_IFMT
    if fmt != _S_IFREG and fmt != _S_IFBLK:
        if not positional or _takes_positional(fd, fmt):
            return KIND_OTHER
        return -errno.ESPIPE
    if _blocks(buf, mask, fmt, major, minor):
        return KIND_BLOCKING
    try:
        direct = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    except OSError:
        return KIND_OTHER
    return KIND_DIRECT if direct else KIND_BUFFERED


def _blocks(buf: Any, mask: int, fmt: int, major: int, minor: int) -> bool:
    """Whether the regular file or block device whose statx is in *buf*
    (with its mask, type and device) is on a file system that blocks
    (:data:`BLOCKING_FS_TYPES`), looked up once per mount."""
    key = (-1, _STATX_MNT_ID.unpack_from(buf)[0]) if mask & _STATX_MNT_ID_UNIQUE else (major, minor)
    blocks = _blocking_mounts.get(key)
    if blocks is None:
        if len(_blocking_mounts) > 4096:
            _blocking_mounts.clear()
        blocks = _blocking_mounts[key] = fmt == _S_IFREG and _fs_type_blocks(major, minor)
    return blocks


def stat_and_kind(fd: int, direct: bool) -> tuple[os.stat_result, int]:
    """``fstat_cached(fd)`` and :func:`fd_kind` in one ``statx``, for an fd
    that its caller has just opened (*direct*: with ``O_DIRECT``) and owns
    until it closes it.

    Such a caller may keep the kind for every request on the fd (as
    :attr:`Operation.kind <xaio._ops.Operation>`) instead of :func:`route`
    looking at the fd again for each batch: the number cannot be reused
    before the owner closes it, an open file stays on its file system, and
    its ``O_DIRECT`` flag is the one the owner opened it with.

    Returns:
        The fd's ``os.stat_result``, and :data:`KIND_BLOCKING`,
        :data:`KIND_DIRECT` or :data:`KIND_BUFFERED` for a regular file or
        block device; -1 (not known: the routing asks as usual) for other
        fds, or where statx is refused.

    Raises:
        OSError: as ``os.fstat`` (EBADF...).
    """
    buf = _statx_buffer()
    flags = AT_EMPTY_PATH | AT_STATX_DONT_SYNC
    err = _statx(fd, _EMPTY_PATH, flags, STATX_BASIC_STATS | _STATX_MNT_ID_UNIQUE, _tls.address)
    if err < 0:
        return fstat_cached(fd), -1
    st = stat_result(buf)
    mask, mode, major, minor = _STATX_MODE_DEV.unpack_from(buf)
    fmt = mode & _S_IFMT
    if fmt != _S_IFREG and fmt != _S_IFBLK:
        return st, -1
    if _blocks(buf, mask, fmt, major, minor):
        return st, KIND_BLOCKING
    return st, KIND_DIRECT if direct else KIND_BUFFERED


def _takes_positional(fd: int, fmt: int) -> bool:
    """Whether an fd of file type *fmt* takes ``pread``/``pwrite``."""
    if fmt in (_S_IFREG, _S_IFBLK, _S_IFDIR):
        return True
    if fmt != _S_IFCHR:
        return False
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError as e:
        return e.errno != errno.ESPIPE
    return True


def is_direct_regular(fd: int) -> bool:
    """True if *fd* is a regular file or block device opened with O_DIRECT on
    a file system that does not block (:func:`fd_kind` is
    :data:`KIND_DIRECT`): the only kind Linux AIO runs without blocking in
    ``io_submit``."""
    return fd_kind(fd) == KIND_DIRECT


def route(
    ops: Sequence[Operation], kernel_kind: int
) -> tuple[Sequence[Operation], Sequence[Operation]]:
    """Split a batch between a kernel engine and the thread engine: the one
    routing rule of the engines that run some requests on threads.

    A poll always goes to the kernel.  A request on an fd (read, write,
    fsync...) goes to the kernel only if its fd's kind allows it: the
    operation's ``kind`` when its caller classified the fd (:func:`classify`),
    else :func:`fd_kind` asked once per fd per batch, so all of one fd's
    requests in a batch take the same way:

    - *kernel_kind* :data:`KIND_DIRECT` (the ``linux`` engine): only
      :data:`KIND_DIRECT` fds at an explicit offset (Linux AIO blocks in
      ``io_submit`` on anything else and has no file position); NOPs go to
      threads.
    - *kernel_kind* :data:`KIND_BLOCKING` (the ``uring`` engine): everything
      but fds on a file system that blocks: io_uring gives wrong answers on
      a FUSE file served short (a READ carries on at the wrong file offset
      and counts bytes twice, an O_DIRECT WRITE counts bytes not written),
      where ``os.preadv``/``os.pwrite`` report the short count.

    Returns:
        ``(kernel, threaded)``: *ops* itself and ``()`` when nothing goes to
        threads.
    """
    kinds: dict[int, int] = {}  # one fd_kind per fd per batch, not per op
    if kernel_kind == KIND_BLOCKING:
        some: list[Operation] | None = None  # no list for the common batch
        for op in ops:
            code = op.opcode
            if code is _POLL or code is _NOP:
                continue
            kind = op.kind  # the caller's classify(), if it asked
            if kind < 0:
                fd = op.fd
                known = kinds.get(fd)
                if known is None:
                    known = kinds[fd] = fd_kind(fd)
                kind = known
            if kind == KIND_BLOCKING:
                if some is None:
                    some = []
                some.append(op)
        if some is None:
            return ops, _NO_OPS
        to_threads = set(map(id, some))
        return [op for op in ops if id(op) not in to_threads], some
    kernel: list[Operation] = []
    threaded: list[Operation] = []
    for op in ops:
        code = op.opcode
        if code is _POLL:
            kernel.append(op)
            continue
        if code is not _NOP and op.offset >= 0:
            kind = op.kind
            if kind < 0:
                fd = op.fd
                known = kinds.get(fd)
                if known is None:
                    known = kinds[fd] = fd_kind(fd)
                kind = known
            if kind == KIND_DIRECT:
                kernel.append(op)
                continue
        threaded.append(op)
    return kernel, threaded


for _f in (fd_kind, route, is_direct_regular):
    _f.__module__ = "xaio.engine"
