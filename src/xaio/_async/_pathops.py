"""Path operations (openat, statx, renameat, unlinkat, mkdirat) on a small io_uring.

The engines run reads, writes and syncs on file descriptors; the path
operations of :mod:`xaio.os` and :func:`xaio.open` need the other io_uring
opcodes.  When the running loop's engine is io_uring, its driver makes one more
small :class:`~xaio.uring.Ring` on first use (with its own eventfd, watched by
the loop like the engine's), and each operation is one SQE whose completion
wakes the one task waiting for it.  The completion token is a ``NOP``
:class:`~xaio._ops.Operation` used only for waking and cancelling, so the
driver's ordinary wait (and its cancel-then-wait-for-the-completion rule)
applies unchanged; the path strings and the statx buffer are pinned by the
Ring until their CQE has been reaped.

Otherwise -- another engine, or a kernel without the opcode
(``IORING_REGISTER_PROBE``) -- the same calls run the :mod:`os` function in a
worker thread, waiting for it to finish if the task is cancelled.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from xaio._abi import uring as abi
from xaio._async._driver import Driver
from xaio._ops import OpCode, Operation, OpState

__all__ = ["PathRing", "path_ring", "run_pathop"]


class PathRing:
    """A small io_uring for path operations, bound to one driver (see module essay)."""

    def __init__(self, driver: Driver) -> None:
        from xaio.uring import Ring

        self._driver = driver
        self.ring = Ring(32)
        try:
            self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except BaseException:
            self.ring.close()
            raise
        try:
            self.ring.register_eventfd(self._efd)
            self.supported = self.ring.probe()
            self._unwatch = driver.watch(self._efd, self._on_ready)
        except BaseException:
            self.ring.close()
            os.close(self._efd)
            raise
        self._ops: dict[int, Operation] = {}
        self._next = 1
        self._closed = False

    def has(self, opcode: int) -> bool:
        """True if the kernel knows *opcode* (an ``IORING_OP_*``)."""
        return opcode in self.supported

    def _on_ready(self) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass
        if self._closed:
            return
        for ud, res, _fl in self.ring.peek_batch():
            op = self._ops.pop(ud, None)
            if op is not None and op.state is not OpState.DONE:
                op.complete(res)

    async def run(self, prep: Callable[[int], Any]) -> int:
        """Queue one SQE with ``prep(user_data)``, submit, wait for its CQE.

        Returns:
            The CQE's ``res`` (>= 0 or -errno).
        """
        drv = self._driver
        ud = self._next
        self._next = ud + 1 if ud < (1 << 62) else 1
        op = Operation(OpCode.NOP, -1, on_done=drv._on_done, context=None)
        prep(ud)
        op.state = OpState.SUBMITTED
        self._ops[ud] = op
        drv._inflight += 1
        try:
            self.ring.submit()
        except BaseException:
            self._ops.pop(ud, None)
            op.complete(-errno.EIO)
            raise
        self._on_ready()  # completed inline (a cached statx)?
        if op.state is not OpState.DONE:
            await drv._wait(op)
        assert op.result is not None
        return op.result

    def cancel(self, op: Operation) -> bool:
        """Cancel *op* if it is one of ours; True if it was ours."""
        for ud, o in self._ops.items():
            if o is op:
                try:
                    self.ring.sync_cancel(ud)
                except OSError:
                    pass
                return True
        return False

    def close(self) -> None:
        """Stop watching, let the Ring cancel and drain what is in flight, release."""
        if self._closed:
            return
        self._closed = True
        try:
            self._unwatch()
        finally:
            try:
                self.ring.close()
            finally:
                os.close(self._efd)
                ops, self._ops = self._ops, {}
                for op in ops.values():
                    if op.state is not OpState.DONE:
                        op.complete(-errno.ECANCELED)


def path_ring(driver: Driver) -> PathRing | None:
    """The driver's PathRing (made on first use) if its engine runs path
    operations in the kernel (``Engine.kernel_path_ops``: io_uring), else None."""
    if not driver.engine.kernel_path_ops:
        return None
    pring = driver._pathring
    if pring is None:
        if driver._pathring_failed:
            return None
        try:
            pring = driver._pathring = PathRing(driver)
        except OSError:
            driver._pathring_failed = True
            return None
    return pring  # type: ignore[no-any-return]


async def run_pathop(
    driver: Driver,
    opcode: int,
    prep: Callable[[Any, int], Any],
    fallback: Callable[[], Any],
) -> Any:
    """Run a path operation on io_uring (``prep(ring, user_data)``) when the
    kernel has *opcode*, else ``fallback()`` in a worker thread.

    Returns:
        The CQE's ``res`` (an int, maybe -errno) on io_uring, or
        ``fallback()``'s value (its exception propagates) otherwise.
    """
    pring = path_ring(driver)
    if pring is not None and pring.has(opcode):
        ring = pring.ring
        return await pring.run(lambda ud: prep(ring, ud))
    return await driver.run_in_thread(fallback)


OP_OPENAT = abi.IORING_OP_OPENAT
OP_STATX = abi.IORING_OP_STATX
OP_RENAMEAT = abi.IORING_OP_RENAMEAT
OP_UNLINKAT = abi.IORING_OP_UNLINKAT
OP_MKDIRAT = abi.IORING_OP_MKDIRAT
