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

*Opens served by the dentry cache.*  Before any of that, an open that does not
create or truncate is tried in the loop's thread, on every engine, by
:func:`open_cached`: ``openat2(2)`` with ``RESOLVE_CACHED`` and
``O_NONBLOCK`` -- what io_uring itself tries inline before it punts an
``OPENAT`` to a worker: the lookup fails with EAGAIN unless every path
component is in the dentry cache (no disk I/O, no revalidation a network file
system would wait for), and ``O_NONBLOCK`` keeps the open of a FIFO or a
device from waiting.  The flag is cleared again once the file is open, so the
fd is the one the builtin ``open`` makes.  It is one system
call, where the ring costs an SQE, an ``io_uring_enter``, a completion and
their Python.  The open runs the file system's own open, which a FUSE daemon
or a network file system may take long to answer even for a cached name; so
an ``O_PATH`` open with ``RESOLVE_CACHED`` comes first (it runs no file
system's open), and :func:`~xaio.engine._route.classify` of that fd sends
files on such file systems (:data:`~xaio.engine.KIND_BLOCKING`) and streams
(a FIFO, whose builtin open waits for the other end; a tty) the other way.
Both cost about as much as the open itself.  When the probe finds the path
not cached (EAGAIN), so would the open's lookup: the attempt ends there, and a
cold open costs the loop's thread one lookup, not two.

*Chains.*  :meth:`PathRing.run_chain` submits several linked SQEs at once
(``IOSQE_IO_LINK``: each starts when the one before has finished) and wakes
its task once every one of their CQEs has come, with all their results: the
whole-file read (:mod:`xaio._async._wholefile`) opens into a *direct
descriptor* (a slot of the ring's registered file table, see
:meth:`PathRing.take_slot`), reads and closes it in one submission.  A
cancelled chain is cancelled SQE by SQE except the ones the caller marks as
not to be cancelled (the close of the slot), and is waited for until its last
CQE, so that the slot is known to be closed or still open when the caller
goes on.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from typing import Any

from xaio import _syscall
from xaio._abi import uring as abi
from xaio._async._driver import Driver
from xaio._ops import OpCode, Operation, OpState
from xaio.engine import KIND_BLOCKING
from xaio.engine._route import classify, stat_and_kind

__all__ = ["PathRing", "cached_opens_work", "open_cached", "path_ring", "run_pathop"]

_AT_FDCWD = -100
#: Registered file slots of a PathRing: direct descriptors open at once.
SLOTS = 64

#: ``openat2(2)``'s ``RESOLVE_CACHED`` (include/uapi/linux/openat2.h).
_RESOLVE_CACHED = 0x20
#: Open flags a cached open never takes (the kernel answers EAGAIN to them).
_NEVER_CACHED = os.O_CREAT | os.O_TRUNC | getattr(os, "O_TMPFILE", 0)
#: Answers of a cached open that a plain open might not give: EAGAIN (not
#: cached, or a lease to break), ENXIO (O_NONBLOCK: a FIFO with no reader),
#: EINTR.  Anything else is the answer of the plain open too.
_NOT_THE_ANSWER = frozenset({errno.EAGAIN, errno.ENXIO, errno.EINTR})
#: ``struct open_how`` per open flags: the probe's and the open's.
_HOWS: dict[int, tuple[bytes, bytes]] = {}
#: Open flags the probe keeps (they decide what the path names).
_PROBE_KEEPS = os.O_NOFOLLOW | os.O_DIRECTORY
#: cached_opens_work()'s answer, once asked.
_cached_opens: list[bool] = []


def cached_opens_work() -> bool:
    """Whether :func:`open_cached` can open anything here: ``openat2(2)``
    with ``RESOLVE_CACHED`` (Linux 5.12), probed once with ``/`` (always in
    the dentry cache)."""
    if not _cached_opens:
        how = struct.pack("=QQQ", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, _RESOLVE_CACHED)
        fd = _syscall.openat2(_AT_FDCWD, b"/", how)
        if fd >= 0:
            os.close(fd)
        _cached_opens.append(fd >= 0)
    return _cached_opens[0]


def open_cached(path: Any, flags: int) -> tuple[int, os.stat_result, int] | int | None:
    """``os.open(path, flags)`` in this thread if the dentry cache can
    serve it without waiting (see the module essay), and the fd's ``fstat``
    and kind.

    Returns:
        ``(fd, fstat(fd), kind)`` (the kind as
        :func:`~xaio.engine._route.stat_and_kind` gives it); or ``-errno``
        when the open failed with the answer a plain open gives (ENOENT,
        EACCES, EISDIR...); or None when it must be done the other way (not
        cached, creating or truncating, a kernel without ``RESOLVE_CACHED``,
        an answer only ``O_NONBLOCK`` gives, a path the other way rejects
        with its own exception).
    """
    if flags & _NEVER_CACHED or not cached_opens_work():
        return None
    try:
        raw = os.fsencode(path)
    except TypeError:
        return None
    if b"\0" in raw:
        return None
    hows = _HOWS.get(flags)
    if hows is None:
        probe_flags = os.O_PATH | os.O_CLOEXEC | (flags & _PROBE_KEEPS)
        hows = (
            struct.pack("=QQQ", probe_flags, 0, _RESOLVE_CACHED),
            struct.pack("=QQQ", flags | os.O_NONBLOCK, 0, _RESOLVE_CACHED),
        )
        if len(_HOWS) < 64:
            _HOWS[flags] = hows
    probe = _syscall.openat2(_AT_FDCWD, raw, hows[0])
    if probe < 0:
        if -probe in _NOT_THE_ANSWER:
            return None  # not cached: the open's lookup would fail as the probe's did
        # (else the open fails as the probe did, running no file system's open)
    else:
        try:
            kind = classify(probe)
        finally:
            os.close(probe)
        if kind < 0 or kind == KIND_BLOCKING:
            return None  # a stream, or a file system whose open may wait
    fd = _syscall.openat2(_AT_FDCWD, raw, hows[1])
    if fd < 0:
        return None if -fd in _NOT_THE_ANSWER else fd
    try:
        st, kind = stat_and_kind(fd, bool(flags & os.O_DIRECT))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st, kind


class _Chain:
    """The CQEs of one :meth:`PathRing.run_chain`: *results* fill in as they
    come; the token *op* completes with the last."""

    __slots__ = ("op", "uds", "results", "left", "keep")

    def __init__(self, op: Operation, uds: list[int], keep: frozenset[int]) -> None:
        self.op = op
        self.uds = uds
        self.results: list[int] = [-errno.ECANCELED] * len(uds)
        self.left = len(uds)
        self.keep = keep  # indexes of SQEs a cancel leaves alone


class PathRing:
    """A small io_uring for path operations, bound to one driver (see module essay)."""

    def __init__(self, driver: Driver) -> None:
        from xaio.uring import Ring

        self._driver = driver
        self.ring = Ring(256)
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
        self._ops: dict[int, Operation | tuple[_Chain, int] | int] = {}
        self._unsent: list[int] = []  # user_data of SQEs left to _flush
        self._flush_pending = False
        self._next = 1
        self._closed = False
        self._slots: list[int] | None = None  # free file slots, once registered
        self._slots_failed = False
        #: the whole-file reads' state (_wholefile._Buffers), and whether the
        #: kernel turned out unable to open into a slot
        self.wholefile: Any = None
        self.wholefile_failed = False

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
            entry = self._ops.pop(ud, None)
            if entry is None:
                continue
            if type(entry) is tuple:
                chain, i = entry
                chain.results[i] = res
                chain.left -= 1
                if not chain.left and chain.op.state is not OpState.DONE:
                    chain.op.complete(0)
            elif type(entry) is int:  # a slot's close (close_slot): free either way
                if self._slots is not None:
                    self._slots.append(entry)
            elif entry.state is not OpState.DONE:  # type: ignore[union-attr]
                entry.complete(res)  # type: ignore[union-attr]

    def _ud(self, n: int = 1) -> int:
        """The first of *n* fresh user_data values."""
        ud = self._next
        self._next = ud + n if ud < (1 << 62) else 1
        return ud

    async def run(
        self,
        prep: Callable[[int], Any],
        undo: Callable[[int], Any] | None = None,
        later: bool = False,
    ) -> int:
        """Queue one SQE with ``prep(user_data)``, submit, wait for its CQE.

        Args:
            prep: fills the SQE.
            undo: called with the CQE's ``res`` when the task was cancelled
                but the request had done its work all the same (e.g. close
                the fd an open made).
            later: submit with the other SQEs of this loop iteration
                (:meth:`_submit_later`), for one that cannot complete inline.
                Such a request passes no checkpoint of its own (its wait is
                one): the caller has just passed one (:meth:`Driver._fair`,
                where a cancelled trio task stops before anything starts),
                and a second would only let the fairness slice park a task
                whose request the kernel's workers could be running.

        Returns:
            The CQE's ``res`` (>= 0 or -errno).
        """
        drv = self._driver
        if not later:  # it may complete inline: share the loop (trio: a checkpoint)
            await drv._fair()
        ud = self._ud()
        op = Operation(OpCode.NOP, -1, on_done=drv._on_done, context=None)
        prep(ud)
        op.state = OpState.SUBMITTED
        self._ops[ud] = op
        drv._inflight += 1
        if later:
            self._submit_later((ud,))
        else:
            try:
                self.ring.submit()
            except BaseException:
                self._ops.pop(ud, None)
                op.complete(-errno.EIO)
                raise
            self._on_ready()  # completed inline (a cached statx)?
        if op.state is not OpState.DONE:
            try:
                await drv._wait(op)
            except BaseException:
                # (the wait returns only once the CQE came, cancelled or not)
                if undo is not None and op.result is not None and op.result >= 0:
                    undo(op.result)
                raise
        assert op.result is not None
        return op.result

    async def run_chain(
        self,
        prep: Callable[[list[int]], Any],
        n: int,
        keep: frozenset[int] = frozenset(),
        later: bool = False,
    ) -> list[int]:
        """Queue *n* SQEs with ``prep(user_datas)`` (the caller links them),
        submit, wait for all their CQEs.

        Args:
            prep: fills the SQEs, one per user_data given, in order.
            n: how many SQEs *prep* queues.
            keep: indexes of SQEs that a cancellation of the chain must not
                cancel (they still run, unless a link failure cancels them).
            later: as :meth:`run`'s.

        Returns:
            The CQEs' ``res``, in SQE order.  When the task is cancelled, the
            chain has still finished (every CQE came) when CancelledError is
            raised.
        """
        drv = self._driver
        if not later:  # it may complete inline: share the loop (trio: a checkpoint)
            await drv._fair()
        first = self._ud(n)
        uds = list(range(first, first + n))
        op = Operation(OpCode.NOP, -1, on_done=drv._on_done, context=None)
        chain = _Chain(op, uds, keep)
        prep(uds)
        op.state = OpState.SUBMITTED
        ops = self._ops
        for i, ud in enumerate(uds):
            ops[ud] = (chain, i)
        drv._inflight += 1
        if later:
            self._submit_later(uds)
        else:
            try:
                self.ring.submit()
            except BaseException:
                for ud in uds:
                    ops.pop(ud, None)
                op.complete(-errno.EIO)
                raise
            self._on_ready()  # completed inline?
        if op.state is not OpState.DONE:
            await drv._wait(op)
        return chain.results

    def _submit_later(self, uds: Any) -> None:
        """Leave the SQEs of *uds* (queued, their entries made) to one
        io_uring_enter at the end of this loop iteration with the others
        queued so (:meth:`_flush`): for SQEs that go to the kernel's workers
        anyway (``IOSQE_ASYNC``), which gain nothing from an enter of their
        own but its cost in the loop's thread."""
        self._unsent.extend(uds)
        if not self._flush_pending:
            self._flush_pending = True
            self._driver._call_soon(self._flush)

    def _flush(self) -> None:
        """Submit what :meth:`_submit_later` left; if the kernel refuses,
        each of those requests fails with its errno (EIO if it gave none)."""
        self._flush_pending = False
        unsent, self._unsent = self._unsent, []
        if self._closed or not unsent:
            return
        try:
            self.ring.submit()
        except Exception as e:
            err = e.errno if isinstance(e, OSError) and e.errno else errno.EIO
            for ud in unsent:
                entry = self._ops.pop(ud, None)
                op = entry[0].op if type(entry) is tuple else entry
                if isinstance(op, Operation) and op.state is not OpState.DONE:
                    op.complete(-err)
            return
        self._on_ready()

    def take_slot(self) -> int:
        """A free slot of the registered file table (registered, sparse, on
        first use), or -1 if there is none free or the kernel cannot."""
        slots = self._slots
        if slots is None:
            if self._slots_failed:
                return -1
            try:
                self.ring.register_files([-1] * SLOTS)
            except OSError:
                self._slots_failed = True
                return -1
            slots = self._slots = list(range(SLOTS - 1, -1, -1))
        return slots.pop() if slots else -1

    def give_slot(self, slot: int) -> None:
        """Put back a slot known to be closed."""
        if self._slots is not None:
            self._slots.append(slot)

    def close_slot(self, slot: int) -> None:
        """Close the direct descriptor in *slot* without waiting: the slot is
        free again when the close's CQE has come."""
        if self._closed:
            return  # closing the ring closed every slot
        ud = self._ud()
        self.ring.prep_close_direct(slot, user_data=ud)
        self._ops[ud] = slot
        self.ring.submit()

    def slots_in_use(self) -> int:
        """How many registered file slots are taken (open or closing)."""
        return 0 if self._slots is None else SLOTS - len(self._slots)

    def cancel(self, op: Operation) -> bool:
        """Cancel *op* if it is one of ours; True if it was ours."""
        for ud, o in list(self._ops.items()):
            if type(o) is tuple:
                chain = o[0]
                if chain.op is not op:
                    continue
                for j, cud in enumerate(chain.uds):
                    if j not in chain.keep and cud in self._ops:
                        try:
                            self.ring.sync_cancel(cud)
                        except OSError:
                            pass
                return True
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
                for entry in ops.values():
                    op = entry[0].op if type(entry) is tuple else entry
                    if isinstance(op, Operation) and op.state is not OpState.DONE:
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
    undo: Callable[[Any], Any] | None = None,
    later: bool = False,
) -> Any:
    """Run a path operation on io_uring (``prep(ring, user_data)``) when the
    kernel has *opcode*, else ``fallback()`` in a worker thread.

    Args:
        undo: called with the result (a CQE's ``res`` >= 0, or what
            *fallback* returned) of an operation that completed although
            the task was cancelled: what it made would otherwise be lost
            (the fd of an open).
        later: the SQE cannot complete inline (``IOSQE_ASYNC``): it is
            submitted with the others of this loop iteration.

    Returns:
        The CQE's ``res`` (an int, maybe -errno) on io_uring, or
        ``fallback()``'s value (its exception propagates) otherwise.
    """
    pring = path_ring(driver)
    if pring is not None and pring.has(opcode):
        ring = pring.ring
        return await pring.run(lambda ud: prep(ring, ud), undo, later)
    if undo is None:
        return await driver.run_in_thread(fallback)
    made: list[Any] = []

    def call() -> Any:
        made.append(fallback())
        return made[0]

    try:
        return await driver.run_in_thread(call)
    except BaseException:
        # (run_in_thread returns only once the call has finished)
        for value in made:
            undo(value)
        raise


OP_OPENAT = abi.IORING_OP_OPENAT
OP_STATX = abi.IORING_OP_STATX
OP_RENAMEAT = abi.IORING_OP_RENAMEAT
OP_UNLINKAT = abi.IORING_OP_UNLINKAT
OP_MKDIRAT = abi.IORING_OP_MKDIRAT
