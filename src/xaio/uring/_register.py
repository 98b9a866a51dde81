"""``io_uring_register(2)``: eventfd, files, buffers, probe, synchronous cancel."""

from __future__ import annotations

import bisect
import ctypes
import errno
import operator
from collections.abc import Sequence
from typing import Any

from xaio import _syscall
from xaio._abi import uring as abi
from xaio._buffers import Pin, iovec_array, pin, pin_many
from xaio._syscall import check, oserror
from xaio.uring._prep import iovecs
from xaio.uring._setup import _U64, RingSetup

_span_start = operator.itemgetter(0)


class RingRegister(RingSetup):
    """What a :class:`~xaio.uring.Ring` registers with the kernel
    (liburing's ``src/register.c``)."""

    def _register(self, opcode: int, arg: int, nr: int) -> int:
        self._check()
        while True:
            ret: int = _syscall.io_uring_register(self.fd, opcode, arg, nr)
            if ret != -errno.EINTR:
                return ret
            _syscall.run_signal_handlers()

    def register_eventfd(self, fd: int, *, async_only: bool = False) -> None:
        """Have the kernel signal eventfd *fd* when CQEs are posted
        (io_uring_register_eventfd(3); ``async_only``: only for completions
        that did not happen inline, io_uring_register_eventfd_async(3)).

        Raises:
            OSError: EBUSY if one is registered already, EBADF...
        """
        arg = ctypes.c_int32(fd)
        op = abi.IORING_REGISTER_EVENTFD_ASYNC if async_only else abi.IORING_REGISTER_EVENTFD
        check(self._register(op, ctypes.addressof(arg), 1))

    def unregister_eventfd(self) -> None:
        """io_uring_unregister_eventfd(3).

        Raises:
            OSError: ENXIO if none is registered.
        """
        check(self._register(abi.IORING_UNREGISTER_EVENTFD, 0, 0))

    def register_files(self, fds: Sequence[int]) -> None:
        """Register *fds* as fixed files (io_uring_register_files(3)); use the
        index as the fd with ``sqe_flags=IOSQE_FIXED_FILE``; -1 leaves a slot empty.

        Raises:
            OSError: EBUSY if files are registered already, EBADF, EMFILE...
            ValueError: an empty sequence.
        """
        if not fds:
            raise ValueError("no files to register")
        arr = (ctypes.c_int32 * len(fds))(*fds)
        check(self._register(abi.IORING_REGISTER_FILES, ctypes.addressof(arr), len(fds)))

    def unregister_files(self) -> None:
        """io_uring_unregister_files(3).

        Raises:
            OSError: ENXIO if none are registered.
        """
        check(self._register(abi.IORING_UNREGISTER_FILES, 0, 0))

    def register_buffers(self, buffers: Sequence[Any]) -> None:
        """Register writable *buffers* as fixed buffers for ``*_fixed`` I/O
        (io_uring_register_buffers(3)); they stay pinned until
        :meth:`unregister_buffers` or :meth:`close`.

        Raises:
            TypeError: a buffer is not writable.
            ValueError: an empty sequence.
            OSError: EBUSY if buffers are registered already, ENOMEM (RLIMIT_MEMLOCK)...
        """
        if not buffers:
            raise ValueError("no buffers to register")
        pins = pin_many(buffers, writable=True)
        iovs = iovecs(pins)
        ret = self._register(abi.IORING_REGISTER_BUFFERS, ctypes.addressof(iovs), len(pins))
        if ret < 0:
            for p in pins:
                p.release()
            raise oserror(-ret)
        self._set_fixed(list(pins))

    def register_buffers_sparse(self, nr: int) -> None:
        """Register a table of *nr* empty fixed-buffer slots, to be filled with
        :meth:`register_buffers_update` (io_uring_register_buffers_sparse(3),
        Linux 5.19).

        Raises:
            ValueError: *nr* is not positive.
            OSError: EBUSY if buffers are registered already, EINVAL on an old kernel...
        """
        if nr <= 0:
            raise ValueError("nr must be > 0")
        reg = abi.io_uring_rsrc_register(nr=nr, flags=abi.IORING_RSRC_REGISTER_SPARSE)
        check(
            self._register(abi.IORING_REGISTER_BUFFERS2, ctypes.addressof(reg), ctypes.sizeof(reg))
        )
        self._set_fixed([None] * nr)

    def register_buffers_update(self, offset: int, buffers: Sequence[Any]) -> None:
        """Replace the registered buffers from slot *offset* on with *buffers*
        (writable; None empties a slot) (io_uring_register_buffers_update_tag(3),
        Linux 5.13).  Requests in flight on a replaced buffer keep it.

        Raises:
            ValueError: the slots lie outside the registered table.
            TypeError: a buffer is not writable.
            OSError: ENOMEM (RLIMIT_MEMLOCK), EFAULT (memory that cannot be pinned)...
        """
        if offset < 0 or offset + len(buffers) > len(self._fixed_buffers):
            raise ValueError("slots outside the registered buffer table")
        pins = [None if b is None else pin(b, writable=True) for b in buffers]
        iovs = iovec_array(pins)
        upd = abi.io_uring_rsrc_update2(offset=offset, data=ctypes.addressof(iovs), nr=len(pins))
        ret = self._register(
            abi.IORING_REGISTER_BUFFERS_UPDATE, ctypes.addressof(upd), ctypes.sizeof(upd)
        )
        if ret < 0:
            for p in pins:
                if p is not None:
                    p.release()
            raise oserror(-ret)
        table = list(self._fixed_buffers)
        for i, p in enumerate(pins):
            old = table[offset + i]
            if old is not None:
                old.release()
            table[offset + i] = p
        self._set_fixed(table)

    def unregister_buffers(self) -> None:
        """io_uring_unregister_buffers(3); the buffers are unpinned (requests in
        flight keep their own pins).

        Raises:
            OSError: ENXIO if none are registered.
        """
        check(self._register(abi.IORING_UNREGISTER_BUFFERS, 0, 0))
        pins = self._fixed_buffers
        self._set_fixed([])
        for p in pins:
            if p is not None:
                p.release()

    def _set_fixed(self, table: list[Pin | None]) -> None:
        """Record the registered buffer table and the spans it covers."""
        self._fixed_buffers = table
        self._fixed_spans = sorted(
            (p.address, p.address + p.nbytes, i) for i, p in enumerate(table) if p is not None
        )

    def is_buffer_registered(self, index: int) -> bool:
        """True if the fixed-buffer slot *index* holds a registered buffer."""
        table = self._fixed_buffers
        return 0 <= index < len(table) and table[index] is not None

    def _fixed_index(self, address: int, nbytes: int) -> int:
        """The index of a registered buffer holding ``[address, address +
        nbytes)``, or -1."""
        spans = self._fixed_spans
        i = bisect.bisect_right(spans, address, key=_span_start) - 1
        if i >= 0:
            _start, end, index = spans[i]
            if address + nbytes <= end:
                return index
        return -1

    def probe(self) -> frozenset[int]:
        """The ``IORING_OP_*`` opcodes this kernel supports
        (io_uring_get_probe_ring(3); cached).

        Raises:
            OSError: as io_uring_register(2) reports.
        """
        if self._probe is None:
            n = 256
            buf = ctypes.create_string_buffer(
                ctypes.sizeof(abi.io_uring_probe) + n * ctypes.sizeof(abi.io_uring_probe_op)
            )
            check(self._register(abi.IORING_REGISTER_PROBE, ctypes.addressof(buf), n))
            head = abi.io_uring_probe.from_buffer(buf)
            ops = (abi.io_uring_probe_op * n).from_buffer(buf, ctypes.sizeof(head))
            self._probe = frozenset(
                ops[i].op for i in range(head.ops_len) if ops[i].flags & abi.IO_URING_OP_SUPPORTED
            )
            del head, ops
        return self._probe

    def opcode_supported(self, opcode: int) -> bool:
        """True if the kernel supports ``IORING_OP_*`` *opcode* (io_uring_opcode_supported(3))."""
        return opcode in self.probe()

    def sync_cancel(
        self, user_data: int = 0, *, fd: int | None = None, flags: int = 0, timeout: float = 0.0
    ) -> int:
        """Cancel synchronously (``IORING_REGISTER_SYNC_CANCEL``, Linux 6.0;
        io_uring_register_sync_cancel(3)).

        Args:
            user_data: the target's user_data (ignored with *fd* or
                ``IORING_ASYNC_CANCEL_ANY``).
            fd: cancel requests on this fd instead.
            flags: ``IORING_ASYNC_CANCEL_*`` (``ALL``, ``ANY`` ...).
            timeout: how long to wait for a running request to finish
                (0: do not wait; negative: wait for ever).

        Returns:
            The kernel's answer, which is an outcome, not an error: ``0``
            (cancelled, or it finished while we waited), ``-ENOENT`` (not
            found: already completed), ``-EALREADY`` or ``-ETIME`` (running).

        Raises:
            OSError: any other error (EINVAL where the kernel lacks it, EBADF...).
        """
        reg = self._cancel_reg
        ctypes.memset(ctypes.addressof(reg), 0, ctypes.sizeof(reg))
        reg.addr = user_data & _U64
        reg.fd = -1 if fd is None else fd
        reg.flags = flags | (abi.IORING_ASYNC_CANCEL_FD if fd is not None else 0)
        if timeout < 0:
            reg.timeout.tv_sec = reg.timeout.tv_nsec = -1
        else:
            reg.timeout.tv_sec = int(timeout)
            reg.timeout.tv_nsec = int((timeout - int(timeout)) * 1e9)
        ret = self._register(abi.IORING_REGISTER_SYNC_CANCEL, ctypes.addressof(reg), 1)
        if ret >= 0 or ret in (-errno.ENOENT, -errno.EALREADY, -errno.ETIME):
            return ret
        raise oserror(-ret)
