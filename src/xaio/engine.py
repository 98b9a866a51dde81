"""Engines: one small protocol, three implementations, and how one is chosen.

An *engine* runs :class:`~xaio._ops.Operation` records asynchronously and says
when each has finished.  There are three, best first:

``uring``
    io_uring (:mod:`xaio.uring`): every opcode, every kind of fd, real
    cancellation of running requests.
``linux``
    Linux native AIO (:mod:`xaio.linux`): only truly asynchronous for O_DIRECT
    regular files; anything else would block inside ``io_submit``.
``thread``
    a pool of worker threads running ``os.preadv`` & co (:mod:`xaio.threads`):
    works everywhere, cancels only what has not started.

The protocol (:class:`Engine`) is deliberately small:

- ``submit(ops)`` hands over a batch of QUEUED operations and returns at
  once: it never waits for a request, also on a file system that cannot be
  asked not to block (FUSE, NFS...: :func:`fd_kind` is how every engine
  tells).  Per-operation errors never raise: the operation completes with
  ``-errno``.
- ``cancel(op)`` says honestly what happened: :class:`CancelOutcome`
  ``CANCELED`` (it will complete with ``-ECANCELED``), ``RUNNING`` (it will
  complete normally, later) or ``DONE`` (it had completed already).
- ``reap(timeout, *, max_n=0)`` delivers finished operations
  (``op.complete(res)``, which runs ``op.on_done``) in the calling thread --
  at most *max_n* if > 0, the rest at the next reap; ``timeout=0`` never
  blocks, ``None`` waits for at least one.  Returns how many were delivered.  An
  ``on_done`` may submit, cancel and reap again (also blocking); one that
  raises makes ``reap`` raise, and the completions not yet delivered come
  with the next ``reap`` -- none is lost or delivered twice (contract tests).
- ``fileno()`` is an eventfd that is readable while completions are waiting
  (``reap`` clears it), for event loops.
- ``close()`` stops accepting, cancels what it can, waits for the rest, then
  releases every kernel object.  Idempotent.  An unclosed engine that is
  garbage collected warns (``ResourceWarning``) and closes without waiting
  for what may wait for ever (the thread engine abandons what runs; its
  workers do not keep it alive).  At interpreter exit an open engine is
  abandoned, never waited for.  In a forked child every inherited engine is
  closed at once and its ``close()`` does not wait; the parent's requests
  are not touched.

Threads: ``submit`` and ``cancel`` may be called from any thread while one
thread is inside ``reap``.  One kernel fact limits this on io_uring: a request
still waiting (on a pipe, a socket, a poll) after the thread that submitted it
has exited is cancelled by the kernel when it would run (it completes with
``-ECANCELED``), so submit from threads that outlive their requests.

Rule 1 holds in every engine: an operation's buffers stay pinned until its
completion has been reaped, whatever happened to the cancel.
"""

from __future__ import annotations

import abc
import ctypes
import errno
import fcntl
import os
import select
import struct
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from xaio._ops import CancelOutcome, OpCode, Operation, OpState, check_batch
from xaio._syscall import fast_syscall
from xaio._syscall import read_proc as _read_proc

if TYPE_CHECKING:
    from xaio.threads import ThreadEngine

__all__ = [
    "Engine",
    "EngineClosedError",
    "CancelOutcome",
    "Operation",
    "OpCode",
    "OpState",
    "ENGINE_NAMES",
    "RoutedEngine",
    "create_engine",
    "fallback_reasons",
    "is_direct_regular",
    "fd_kind",
    "KIND_OTHER",
    "KIND_BUFFERED",
    "KIND_DIRECT",
    "KIND_BLOCKING",
    "BLOCKING_FS_TYPES",
    "probe",
]

_POLL, _NOP = OpCode.POLL, OpCode.NOP
_NO_OPS: tuple[Operation, ...] = ()

#: Engine names, best first: the order :func:`open_engine` tries them.
ENGINE_NAMES: tuple[str, ...] = ("uring", "linux", "thread")


class EngineClosedError(RuntimeError):
    """The engine was closed; it accepts no more operations."""


class Engine(abc.ABC):
    """The engine protocol (see the module documentation)."""

    name: ClassVar[str]

    @abc.abstractmethod
    def submit(self, ops: Sequence[Operation]) -> int:
        """Hand a batch of QUEUED operations to the engine; returns len(ops).

        When it raises, no operation was taken.

        Raises:
            EngineClosedError: the engine is closed.
            RuntimeError: an operation is not QUEUED or is listed twice.
            TypeError: an fd, offset or flags that is not an int.
            ValueError: an fd out of range; READ/WRITE without exactly one
                buffer, READV/WRITEV with more than 1024
                (:func:`xaio._ops.check_batch` has the rules).
        """

    @abc.abstractmethod
    def cancel(self, op: Operation) -> CancelOutcome:
        """Try to cancel *op*; say honestly what happened."""

    @abc.abstractmethod
    def reap(self, timeout: float | None = 0.0, *, max_n: int = 0) -> int:
        """Deliver finished operations in this thread (at most *max_n* if >
        0); return how many."""

    @abc.abstractmethod
    def fileno(self) -> int:
        """An fd readable while completions are waiting to be reaped."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop, cancel, drain, release (idempotent)."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` has started."""

    def statistics(self) -> dict[str, Any]:
        """Counters for debugging and benchmarks (engine-specific keys)."""
        return {"name": self.name}

    def register_buffers(self, buffers: Sequence[Any]) -> bool:
        """Offer *buffers* as the memory most requests will use, so that an
        engine that can pin them once does so (io_uring's fixed buffers); a
        request on (part of) one of them then skips the kernel's per-request
        page pinning.  Any buffer still works for any request either way.

        Returns:
            True if this engine registered them; False if it has no such
            thing (the Linux AIO and thread engines, which ignore them).

        Raises:
            ValueError: an empty sequence.
            TypeError, OSError: from an engine that registers (see
                :meth:`xaio.uring.UringEngine.register_buffers`): a read-only
                buffer, or the kernel's refusal (``RLIMIT_MEMLOCK``...).
        """
        if not buffers:
            raise ValueError("no buffers to register")
        return False

    def unregister_buffers(self) -> None:
        """Undo :meth:`register_buffers` (nothing if none are registered);
        requests in flight keep their memory."""
        return None  # engines without registered buffers have nothing to undo

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------
# Which engines work here, and making one
# ---------------------------------------------------------------------------------


def _explain_linux(err: int) -> str:
    name = errno.errorcode.get(err, str(err))
    if err == errno.ENOSYS:
        return "ENOSYS: this kernel has no Linux AIO (CONFIG_AIO=n)"
    if err == errno.EAGAIN:
        return (
            f"EAGAIN: fs.aio-max-nr exhausted (aio-nr={_read_proc('/proc/sys/fs/aio-nr')}, "
            f"aio-max-nr={_read_proc('/proc/sys/fs/aio-max-nr')})"
        )
    if err == errno.EPERM:
        return "EPERM: io_setup refused (seccomp or a container policy)"
    return f"{name}: {os.strerror(err)}"


def _linux_reason() -> str | None:
    from xaio import linux

    try:
        ctx = linux.io_setup(1)
    except OSError as e:
        return _explain_linux(e.errno or 0)
    linux.io_destroy(ctx)
    return None


def _uring_reason() -> str | None:
    from xaio import uring

    return uring.unavailable_reason()


def probe() -> dict[str, str | None]:
    """Which engines work on this machine.

    Returns:
        ``{"uring": ..., "linux": ..., "thread": ...}``: None for an engine
        that works here, else a short reason naming the errno or the setting
        (``"EPERM: kernel.io_uring_disabled=2"``).  Each call probes afresh
        (the Linux AIO probe costs an ``io_destroy``: tens of milliseconds).
    """
    return {"uring": _uring_reason(), "linux": _linux_reason(), "thread": None}


#: Why the last :func:`create_engine` fell back, engine name -> reason.
fallback_reasons: dict[str, str] = {}


def create_engine(name: str | None = None, **options: Any) -> Engine:
    """Make an engine.

    Args:
        name: ``"uring"``, ``"linux"`` or ``"thread"``; None means the
            ``XAIO_ENGINE`` environment variable if set, else the best that
            works here (uring, then linux, then thread).  ``"linux"`` runs
            O_DIRECT regular files (on file systems that do not block:
            :func:`fd_kind`) and polls on Linux AIO and everything else on
            threads (so ``io_submit`` never blocks); ``"uring"`` runs
            requests on file systems that block (FUSE, NFS...) on threads
            (:func:`route`).
        options: passed to the engine's constructor (``entries``/``capacity``,
            ``threads``...).

    Raises:
        ValueError: unknown engine name.
        OSError: the named engine does not work here (with the reason).
    """
    if name is None:
        env = os.environ.get("XAIO_ENGINE", "").strip()
        name = env or None
    if name is not None:
        if name not in ENGINE_NAMES:
            raise ValueError(f"unknown engine {name!r}: expected one of {', '.join(ENGINE_NAMES)}")
        return _make(name, options)
    fallback_reasons.clear()
    for candidate in ENGINE_NAMES:
        try:
            return _make(candidate, options)
        except OSError as e:
            fallback_reasons[candidate] = str(e.strerror or e)
    raise AssertionError("the thread engine cannot fail")  # pragma: no cover


def _make(name: str, options: dict[str, Any]) -> Engine:
    if name == "uring":
        from xaio.uring import UringEngine

        return UringEngine(**options)
    if name == "linux":
        return RoutedEngine(**options)
    from xaio.threads import ThreadEngine

    return ThreadEngine(**options)


# ---------------------------------------------------------------------------------
# What kind of file an fd is: the one routing rule every engine consults
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

_AT_EMPTY_PATH = 0x1000
_AT_STATX_DONT_SYNC = 0x4000  # no GETATTR round trip to a FUSE daemon or NFS server
_STATX_TYPE = 0x1
_STATX_MNT_ID_UNIQUE = 0x4000  # Linux 6.8; before it the device number is the key
_STATX_MODE_DEV = struct.Struct("<I24xH106xII")  # stx_mask, stx_mode, stx_dev_major/minor
_STATX_MNT_ID = struct.Struct("<144xQ")
_S_IFMT, _S_IFREG, _S_IFBLK = 0o170000, 0o100000, 0o060000
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
    if type(fd) is not int or fd < 0 or fd > 0x7FFFFFFF:
        return KIND_OTHER
    buf = getattr(_tls, "statx", None)
    if buf is None:
        buf = _tls.statx = ctypes.create_string_buffer(256)
        _tls.address = ctypes.c_void_p(ctypes.addressof(buf))
    flags = _AT_EMPTY_PATH | _AT_STATX_DONT_SYNC
    if _statx(fd, _EMPTY_PATH, flags, _STATX_TYPE | _STATX_MNT_ID_UNIQUE, _tls.address) < 0:
        return KIND_OTHER
    mask, mode, major, minor = _STATX_MODE_DEV.unpack_from(buf)
    fmt = mode & _S_IFMT
    if fmt != _S_IFREG and fmt != _S_IFBLK:
        return KIND_OTHER
    key = (-1, _STATX_MNT_ID.unpack_from(buf)[0]) if mask & _STATX_MNT_ID_UNIQUE else (major, minor)
    blocks = _blocking_mounts.get(key)
    if blocks is None:
        if len(_blocking_mounts) > 4096:
            _blocking_mounts.clear()
        blocks = _blocking_mounts[key] = fmt == _S_IFREG and _fs_type_blocks(major, minor)
    if blocks:
        return KIND_BLOCKING
    try:
        direct = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    except OSError:
        return KIND_OTHER
    return KIND_DIRECT if direct else KIND_BUFFERED


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
    fsync...) goes to the kernel only if :func:`fd_kind` allows it, asked
    once per fd per batch, so all of one fd's requests in a batch take the
    same way:

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
            fd = op.fd
            kind = kinds.get(fd)
            if kind is None:
                kind = kinds[fd] = fd_kind(fd)
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
            fd = op.fd
            kind = kinds.get(fd)
            if kind is None:
                kind = kinds[fd] = fd_kind(fd)
            if kind == KIND_DIRECT:
                kernel.append(op)
                continue
        threaded.append(op)
    return kernel, threaded


class RoutedEngine(Engine):
    """The ``linux`` engine: Linux AIO where it is truly asynchronous
    (O_DIRECT regular files on file systems that do not block, polls: see
    :func:`fd_kind`), the thread engine for the rest.

    ``fileno()`` is an epoll fd watching both engines' eventfds.
    """

    name = "linux"

    def __init__(self, capacity: int = 256, threads: int = 8) -> None:
        from xaio.linux import LinuxAioEngine
        from xaio.threads import ThreadEngine

        self._closed = True
        self._aio = LinuxAioEngine(capacity)
        try:
            self._threads: ThreadEngine = ThreadEngine(threads)
        except BaseException:
            self._aio.close()
            raise
        self._epoll = select.epoll()
        self._epoll.register(self._aio.fileno(), select.EPOLLIN)
        self._epoll.register(self._threads.fileno(), select.EPOLLIN)
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def owns(self, op: Operation) -> bool:
        """True if *op* was given to this engine and has not been delivered."""
        return self._aio.owns(op) or self._threads.owns(op)

    def fileno(self) -> int:
        return self._epoll.fileno()

    def submit(self, ops: Sequence[Operation]) -> int:
        if self._closed:
            raise EngineClosedError("engine is closed")
        check_batch(ops)  # before either engine takes anything
        aio, threaded = route(ops, KIND_DIRECT)
        if aio:
            self._aio._submit_checked(aio)
        if threaded:
            self._threads._submit_checked(threaded)
        return len(ops)

    def cancel(self, op: Operation) -> CancelOutcome:
        if self._aio.owns(op):
            return self._aio.cancel(op)
        return self._threads.cancel(op)

    def _reap_both(self, max_n: int) -> int:
        n = self._aio.reap(0, max_n=max_n)
        if max_n > 0 and n >= max_n:
            return n
        return n + self._threads.reap(0, max_n=max_n - n if max_n > 0 else 0)

    def reap(self, timeout: float | None = 0.0, *, max_n: int = 0) -> int:
        n = self._reap_both(max_n)
        if n or timeout == 0:
            return n
        deadline = None if timeout is None else time.monotonic() + timeout
        while not n:
            left = -1.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
            self._epoll.poll(left)
            n = self._reap_both(max_n)
            if deadline is not None and time.monotonic() >= deadline:
                break
        return n

    def close(self) -> None:
        """Close both engines (see :meth:`xaio.threads.ThreadEngine.close`
        and :meth:`xaio.linux.LinuxAioEngine.close`) and the epoll fd."""
        if self._closed:
            return
        self._closed = True
        try:
            self._aio.close()
        finally:
            self._threads.close()
            self._epoll.close()

    def read_nowait(self, fd: int, buffer: Any, offset: int, nbytes: int) -> int | None:
        """The thread engine's page-cache fast path (buffered files are its
        part; O_DIRECT fds are never read inline): *nbytes*, or None."""
        if self._closed:
            return None
        return self._threads.read_nowait(fd, buffer, offset, nbytes)

    def statistics(self) -> dict[str, Any]:
        threads = self._threads.statistics()
        return {
            "name": self.name,
            "inline": threads["inline"],
            "aio": self._aio.statistics(),
            "threads": threads,
        }

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        if sys.is_finalizing():
            return  # interpreter exit: each engine's own finaliser decides
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
        # Nothing here may wait for a request that can wait for ever: the
        # thread engine is abandoned (what runs ends on its own); kernel AIO
        # holds only O_DIRECT file requests, which end, and polls, cancelled.
        self._closed = True
        try:
            self._aio.close()
        finally:
            self._threads._abandon()
            self._epoll.close()
