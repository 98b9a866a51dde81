"""Ring setup: ``io_uring_setup(2)``, the mappings, and what refuses a ring.

:class:`RingSetup` creates the ring, checks the features xaio requires, maps
the SQ, CQ and SQE array and fills the SQ index array; it also holds what a
ring refuses in a forked child or once closed, and why ``io_uring_setup``
failed (liburing's ``src/setup.c``).  See the essay in :mod:`xaio.uring`.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import warnings
from collections.abc import Callable
from typing import Any

from xaio import _syscall
from xaio._abi import uring as abi
from xaio._buffers import Pin
from xaio._fork import Owner
from xaio._syscall import oserror

#: A completion as the Ring reports it: ``(user_data, res, flags)``.
Completion = tuple[int, int, int]

AT_FDCWD = -100
#: ``sizeof(struct statx)``: the least a ``prep_statx`` buffer must hold.
STATX_SIZE = 256

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_SQE_SIZE = 64
_CQE_SIZE = 16
_REQUIRED_FEATURES = abi.IORING_FEAT_NODROP | abi.IORING_FEAT_EXT_ARG


def _closed_error() -> OSError:
    err = oserror(errno.EBADF)
    err.strerror = f"{err.strerror}: the io_uring ring is closed"
    return err


# --- unavailability ------------------------------------------------------------------

SetupFunction = Callable[[int, int], int]
"""``io_uring_setup(entries, params_address) -> fd or -errno`` (the private test hook)."""


def _read_sysctl(name: str) -> str | None:
    return _syscall.read_proc(f"/proc/sys/{name.replace('.', '/')}")


def _explain(err: int) -> str:
    """Why io_uring_setup failed with *err*, as a short message naming the cause."""
    if err == errno.EPERM:
        disabled = _read_sysctl("kernel.io_uring_disabled")
        if disabled == "2":
            return "kernel.io_uring_disabled=2"
        if disabled == "1":
            group = _read_sysctl("kernel.io_uring_group")
            return f"kernel.io_uring_disabled=1 and not in kernel.io_uring_group={group}"
        return "io_uring_setup is not permitted here (seccomp filter of a container?)"
    if err == errno.ENOSYS:
        return "the kernel has no io_uring (Linux < 5.1, CONFIG_IO_URING=n, or seccomp)"
    return os.strerror(err)


def _unavailable(err: int, detail: str | None = None) -> OSError:
    e = oserror(err)
    e.strerror = f"{errno.errorcode.get(err, str(err))}: {detail or _explain(err)}"
    return e


#: Memory of requests that could not be stopped before a close: kept alive for ever.
_graveyard: list[Any] = []


def finalize(obj: Any, forked: bool) -> None:
    """The ``__del__`` of a ring, or of what owns one, that was not closed:
    warn (``ResourceWarning``; not in a forked child, whose close only drops
    its copies of the fd and mappings), then close."""
    try:
        if not forked:
            # may raise (warnings as errors): the finally still closes
            warnings.warn(f"unclosed {obj!r}", ResourceWarning, source=obj, stacklevel=3)
    finally:
        try:
            obj.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class RingSetup:
    """The ring's fd, its mappings and its sizes: the part of :class:`~xaio.uring.Ring`
    that ``io_uring_setup(2)`` and ``mmap(2)`` make."""

    _closed: bool
    _keep: dict[int, Any]

    def __init__(
        self,
        entries: int = 256,
        flags: int = 0,
        *,
        cq_entries: int | None = None,
        sq_thread_idle: int | None = None,
        _setup: SetupFunction | None = None,
    ) -> None:
        """Create a ring.

        Args:
            entries: SQ size (rounded up to a power of two by the kernel).
            flags: ``IORING_SETUP_*`` flags.  ``IORING_SETUP_SUBMIT_ALL`` is
                added when the kernel knows it (Linux 5.18), so a bad SQE never
                stops the rest of a batch; SQPOLL is never added.
            cq_entries: CQ size (``IORING_SETUP_CQSIZE``); default twice ``entries``.
            sq_thread_idle: with ``IORING_SETUP_SQPOLL``, milliseconds the
                kernel's SQ thread polls before it sleeps (kernel default 1000).
            _setup: private test hook replacing the ``io_uring_setup`` syscall.

        Raises:
            OSError: ``ENOSYS``/``EPERM`` with the cause in the message when
                io_uring is unavailable; ``EINVAL`` for bad sizes or flags;
                ``ENOSYS`` when the kernel lacks NODROP or EXT_ARG.
            ValueError: *entries* or *cq_entries* not positive.
        """
        self._closed = True  # until fully set up (so __del__ does nothing)
        self._keep = {}
        self._mmaps: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self.fd = -1
        if not isinstance(entries, int) or entries <= 0:
            raise ValueError(f"entries must be a positive int, not {entries!r}")
        if cq_entries is not None and (not isinstance(cq_entries, int) or cq_entries <= 0):
            raise ValueError(f"cq_entries must be a positive int, not {cq_entries!r}")
        setup = _setup if _setup is not None else _syscall.io_uring_setup
        params = abi.io_uring_params()
        extra = abi.IORING_SETUP_SUBMIT_ALL
        while True:
            ctypes.memset(ctypes.addressof(params), 0, ctypes.sizeof(params))
            params.flags = flags | extra
            if cq_entries is not None:
                params.flags |= abi.IORING_SETUP_CQSIZE
                params.cq_entries = cq_entries
            if sq_thread_idle is not None:
                params.sq_thread_idle = sq_thread_idle
            fd = setup(entries, ctypes.addressof(params))
            if fd == -errno.EINVAL and extra:
                extra = 0  # a kernel older than SUBMIT_ALL: try without it
                continue
            break
        if fd < 0:
            if -fd in (errno.ENOSYS, errno.EPERM):
                raise _unavailable(-fd)
            raise oserror(-fd)
        self.fd = fd
        try:
            if params.features & _REQUIRED_FEATURES != _REQUIRED_FEATURES:
                raise _unavailable(
                    errno.ENOSYS, "io_uring lacks IORING_FEAT_NODROP/EXT_ARG (Linux < 5.11)"
                )
            self._map(params)
        except BaseException:
            self._unmap()
            os.close(fd)
            self.fd = -1
            raise
        self.params = params
        self.features: int = params.features
        self.flags: int = params.flags
        self.sq_entries: int = params.sq_entries
        self._sqpoll = bool(params.flags & abi.IORING_SETUP_SQPOLL)
        self.cq_entries: int = params.cq_entries
        self._owner = Owner("io_uring ring")
        self._probe: frozenset[int] | None = None
        self._fixed_buffers: list[Pin | None] = []
        # the registered buffers as (start, end, index), by start
        self._fixed_spans: list[tuple[int, int, int]] = []
        # the EXT_ARG wait argument, preallocated
        self._ts = abi.kernel_timespec()
        self._arg = abi.io_uring_getevents_arg()
        self._arg.ts = ctypes.addressof(self._ts)
        self._arg_addr = ctypes.addressof(self._arg)
        self._arg_size = ctypes.sizeof(self._arg)
        self._cancel_reg = abi.io_uring_sync_cancel_reg()
        self._stats = {"enter": 0, "submitted": 0, "reaped": 0, "overflow_flush": 0}
        self._closed = False

    def _map(self, p: abi.io_uring_params) -> None:
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        mflags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        sq_size = p.sq_off.array + p.sq_entries * 4
        cq_size = p.cq_off.cqes + p.cq_entries * _CQE_SIZE
        single = bool(p.features & abi.IORING_FEAT_SINGLE_MMAP)
        if single:
            sq_size = cq_size = max(sq_size, cq_size)
        sq_mm = mmap.mmap(self.fd, sq_size, mflags, prot, offset=abi.IORING_OFF_SQ_RING)
        self._mmaps.append(sq_mm)
        if single:
            cq_mm = sq_mm
        else:
            cq_mm = mmap.mmap(self.fd, cq_size, mflags, prot, offset=abi.IORING_OFF_CQ_RING)
            self._mmaps.append(cq_mm)
        sqes = mmap.mmap(
            self.fd, p.sq_entries * _SQE_SIZE, mflags, prot, offset=abi.IORING_OFF_SQES
        )
        self._mmaps.append(sqes)
        self._sqes = sqes
        self._cq_mm = cq_mm
        sq32 = memoryview(sq_mm).cast("I")
        cq32 = sq32 if single else memoryview(cq_mm).cast("I")
        self._views += [sq32] if single else [sq32, cq32]
        self._sq32 = sq32
        self._cq32 = cq32
        so, co = p.sq_off, p.cq_off
        self._sq_khead = so.head // 4
        self._sq_ktail = so.tail // 4
        self._sq_kflags = so.flags // 4
        self._sq_mask: int = sq32[so.ring_mask // 4]
        self._sq_n: int = sq32[so.ring_entries // 4]
        array = so.array // 4
        for i in range(self._sq_n):  # identity: SQE i is always array slot i
            sq32[array + i] = i
        self._sqe_tail: int = sq32[self._sq_ktail]
        self._cq_khead = co.head // 4
        self._cq_ktail = co.tail // 4
        self._cq_koverflow = co.overflow // 4
        self._cq_mask: int = cq32[co.ring_mask // 4]
        self._cq_n: int = cq32[co.ring_entries // 4]
        self._cqes = co.cqes
        self._cq_head: int = cq32[self._cq_khead]

    # --- state --------------------------------------------------------------------

    def _forked(self) -> bool:
        """True in a forked child: the ring belongs to the parent."""
        return self._owner.foreign

    def _check(self) -> None:
        """Refuse use in a forked child, or once closed."""
        self._owner.check()
        if self._closed:
            raise _closed_error()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    def fileno(self) -> int:
        """The ring's file descriptor.

        Raises:
            OSError: EBADF if closed, EINVAL in a forked child.
        """
        self._check()
        return self.fd

    def statistics(self) -> dict[str, Any]:
        """Counters: ``enter`` (io_uring_enter calls), ``submitted``, ``reaped``,
        ``overflow_flush``, plus sizes, features and what is in flight with pinned
        buffers (``held``)."""
        return {
            **self._stats,
            "sq_entries": getattr(self, "sq_entries", 0),
            "cq_entries": getattr(self, "cq_entries", 0),
            "features": getattr(self, "features", 0),
            "held": len(self._keep),
            "closed": self._closed,
        }

    def _unmap(self) -> None:
        for v in self._views:
            v.release()
        self._views = []
        for m in self._mmaps:
            m.close()
        self._mmaps = []
