"""The SQ/CQ protocol: publishing SQEs, ``io_uring_enter(2)``, taking CQEs.

:class:`RingQueue` holds the ring protocol (liburing's ``src/queue.c``): the
SQ tail is published, the kernel entered, the CQ read between our head and the
kernel's tail with the memory ordering the essay in :mod:`xaio.uring` explains.
"""

from __future__ import annotations

import errno
import mmap
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from xaio import _syscall
from xaio._abi import ARCH
from xaio._abi import uring as abi
from xaio._syscall import check, oserror
from xaio.uring._setup import _U32, Completion, RingSetup

_iter_cqes = abi.CQE_STRUCT.iter_unpack


# x86-64 is TSO: plain loads/stores already have acquire/release semantics (see
# the module essay).  Anywhere else, peek_batch fences with a lock round trip.
_NEEDS_FENCE = ARCH != "x86_64"
_fence_lock = threading.Lock()


def _fence() -> None:
    """A full memory barrier (acquire + release of a lock) for weakly ordered CPUs."""
    _fence_lock.acquire()
    _fence_lock.release()


# --- io_uring_enter on the hot path --------------------------------------------------
# _syscall.io_uring_enter_fast skips ctypes' argtype conversion on x86-64 (it
# costs more than the syscall itself); same ret-or--errno convention, and errors
# still become OSError only through _syscall.check/oserror.
_io_uring_enter: Callable[..., int] = _syscall.io_uring_enter_fast


class RingQueue(RingSetup):
    """The SQ and CQ of a :class:`~xaio.uring.Ring`: submit, peek, wait.

    :class:`~xaio.uring.UringBatch` and :class:`~xaio.uring.UringEngine`
    write SQEs and take CQEs through the underscored methods of the
    "driving the ring" section, so that the ring's indices and its hold
    table change only here.
    """

    def sq_space_left(self) -> int:
        """Free SQE slots (io_uring_sq_space_left(3))."""
        return self._sq_n - ((self._sqe_tail - int(self._sq32[self._sq_khead])) & _U32)

    def sq_ready(self) -> int:
        """SQEs prepared and not yet submitted (io_uring_sq_ready(3))."""
        return (self._sqe_tail - int(self._sq32[self._sq_khead])) & _U32

    def cq_ready(self) -> int:
        """CQEs waiting in the CQ (io_uring_cq_ready(3); not counting overflow)."""
        return (int(self._cq32[self._cq_ktail]) - self._cq_head) & _U32

    def cq_has_overflow(self) -> bool:
        """True if the kernel keeps CQEs that did not fit in the CQ
        (io_uring_cq_has_overflow(3)); the next :meth:`peek_batch` flushes them."""
        return bool(self._sq32[self._sq_kflags] & abi.IORING_SQ_CQ_OVERFLOW)

    @property
    def sq_flags(self) -> int:
        """The kernel's SQ flags (``IORING_SQ_NEED_WAKEUP``, ``IORING_SQ_CQ_OVERFLOW``...)."""
        return int(self._sq32[self._sq_kflags])

    @property
    def cq_overflow(self) -> int:
        """The kernel's count of CQEs it had to drop (0 with NODROP unless out of memory)."""
        return int(self._cq32[self._cq_koverflow])

    # --- io_uring_enter -----------------------------------------------------------

    def _enter(self, to_submit: int, min_complete: int, flags: int) -> int:
        """io_uring_enter without a timeout, retrying EINTR; returns ret or -errno."""
        while True:
            self._stats["enter"] += 1
            ret = _io_uring_enter(self.fd, to_submit, min_complete, flags, 0, 0)
            if ret != -errno.EINTR:
                return ret
            _syscall.run_signal_handlers()

    def _enter_wait(self, to_submit: int, min_complete: int, timeout: float | None) -> int:
        """io_uring_enter(GETEVENTS[|EXT_ARG]) waiting at most *timeout* seconds.

        Returns ret or -errno (``-ETIME`` on timeout); EINTR is retried with
        the remaining time after running the signal handlers."""
        if timeout is None:
            return self._enter(to_submit, min_complete, abi.IORING_ENTER_GETEVENTS)
        deadline = time.monotonic() + max(timeout, 0.0)
        flags = abi.IORING_ENTER_GETEVENTS | abi.IORING_ENTER_EXT_ARG
        ts = self._ts
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            whole = int(left)
            ts.tv_sec = whole
            ts.tv_nsec = min(int((left - whole) * 1e9), 999_999_999)
            self._stats["enter"] += 1
            ret = _io_uring_enter(
                self.fd, to_submit, min_complete, flags, self._arg_addr, self._arg_size
            )
            if ret != -errno.EINTR:
                return ret
            _syscall.run_signal_handlers()
            to_submit = 0 if ret < 0 else to_submit

    # --- SQEs -----------------------------------------------------------------------

    def get_sqe(self) -> int:
        """Take the next free SQE slot; return its index, or -1 if the SQ is full.

        The slot is published by the next :meth:`submit`; a ``prep_*`` helper
        fills it.  Corresponds to io_uring_get_sqe(3).

        Raises:
            OSError: EBADF if closed, EINVAL in a forked child.
        """
        self._check()
        tail = self._sqe_tail
        if (tail - self._sq32[self._sq_khead]) & _U32 >= self._sq_n:
            return -1
        self._sqe_tail = (tail + 1) & _U32
        return tail & self._sq_mask

    def _sqe(self) -> int:
        """A free SQE slot, submitting what is queued first if the SQ is full."""
        idx = self.get_sqe()
        if idx < 0:
            self._make_room()
            idx = self.get_sqe()
        return idx

    def _make_room(self) -> None:
        """Submit what is queued; with SQPOLL, wait until the SQ thread has
        taken at least one SQE (``IORING_ENTER_SQ_WAIT``)."""
        self.submit()
        while self.sq_space_left() == 0:
            if not self._sqpoll:  # pragma: no cover - SUBMIT_ALL consumes everything
                raise oserror(errno.EBUSY)
            ret = self._enter(0, 0, abi.IORING_ENTER_SQ_WAIT)
            if ret < 0:
                raise oserror(-ret)

    # --- submit -------------------------------------------------------------------

    def _publish(self) -> int:
        """Store the SQ tail (the kernel reads it inside io_uring_enter: no
        fence needed, see the essay); return how many SQEs are pending."""
        sq32 = self._sq32
        tail = self._sqe_tail
        sq32[self._sq_ktail] = tail
        return (tail - int(sq32[self._sq_khead])) & _U32

    def submit(self) -> int:
        """Hand every prepared SQE to the kernel with one io_uring_enter
        (io_uring_submit(3)).  On ``EBUSY``/``EAGAIN`` it flushes the CQ
        overflow and tries again (a few times), leaving unconsumed SQEs queued.

        Returns:
            The number of SQEs the kernel consumed.

        Raises:
            OSError: the kernel's error (EBUSY/EAGAIN if it persists, EBADF...),
                EINVAL in a forked child.
        """
        self._check()
        if self._sqpoll:
            return self._submit_sqpoll()
        n = self._publish()
        if not n:
            return 0
        for _ in range(8):
            ret = self._enter(n, 0, 0)
            if ret >= 0:
                self._stats["submitted"] += ret
                return ret
            if ret not in (-errno.EBUSY, -errno.EAGAIN):
                break
            # backpressure: let the kernel flush the overflow list, then retry
            self._enter(0, 0, abi.IORING_ENTER_GETEVENTS)
        raise oserror(-ret)

    def _submit_sqpoll(self) -> int:
        """SQPOLL: the kernel thread reads the tail and the SQEs concurrently.
        The fence before publishing orders the SQE writes before the tail store
        (a no-op need on x86-64, needed on arm64); the fence after it orders
        the tail store before the load of the flags -- a store->load order
        that even x86-64 does not keep without a locked instruction (liburing's
        io_uring_smp_mb()).  Then wake the thread if it sleeps."""
        _fence()
        n = self._publish()
        _fence()
        if self._sq32[self._sq_kflags] & abi.IORING_SQ_NEED_WAKEUP:
            ret = self._enter(0, 0, abi.IORING_ENTER_SQ_WAKEUP)
            if ret < 0:
                raise oserror(-ret)
        self._stats["submitted"] += n
        return n

    def submit_and_wait(self, wait_nr: int = 1, timeout: float | None = None) -> int:
        """Submit what is prepared and wait until *wait_nr* CQEs are ready
        (io_uring_submit_and_wait(3), io_uring_submit_and_wait_timeout(3)).

        Args:
            wait_nr: how many completions to wait for.
            timeout: seconds (None: no limit).  On timeout it returns normally;
                use :meth:`cq_ready` to see what arrived.

        Returns:
            The number of SQEs submitted.

        Raises:
            OSError: as :meth:`submit`.
        """
        self._check()
        if self._sqpoll:
            n = self._submit_sqpoll()
            self._wait(wait_nr, timeout)
            return n
        n = self._publish()
        ret = self._enter_wait(n, wait_nr, timeout)
        if ret == -errno.ETIME:
            return n - self.sq_ready()
        if ret in (-errno.EBUSY, -errno.EAGAIN):
            return self.submit()
        check(ret)
        self._stats["submitted"] += ret
        return ret

    # --- CQEs -----------------------------------------------------------------------

    def peek_batch(self, out: list[Completion] | None = None, max_n: int = 0) -> list[Completion]:
        """Take every completion waiting (at most *max_n* if > 0) without a
        syscall, unless the kernel flagged a CQ overflow, which is flushed
        first (io_uring_peek_batch_cqe(3) + io_uring_cq_advance(3)).

        Args:
            out: a list to append ``(user_data, res, flags)`` tuples to (reuse
                one to avoid allocating); a new list if None.
            max_n: the most to take (0: all).

        Returns:
            *out*.

        Raises:
            OSError: EBADF if closed, EINVAL in a forked child.
        """
        self._check()
        if out is None:
            out = []
        self._take_cqes(out, max_n)
        return out

    def peek_cqe(self) -> Completion | None:
        """Take one completion if one is waiting (io_uring_peek_cqe(3) followed
        by io_uring_cqe_seen(3)); never blocks.

        Returns:
            ``(user_data, res, flags)`` or None.
        """
        got = self.peek_batch(None, 1)
        return got[0] if got else None

    def wait_cqe(self, timeout: float | None = None) -> Completion | None:
        """Wait for one completion and take it (io_uring_wait_cqe(3),
        io_uring_wait_cqe_timeout(3) via ``IORING_ENTER_EXT_ARG``).

        Args:
            timeout: seconds to wait at most; None waits for ever.

        Returns:
            ``(user_data, res, flags)``, or None if *timeout* expired first.

        Raises:
            OSError: the kernel's error; EINVAL in a forked child.
        """
        got = self.peek_cqe()
        if got is not None:
            return got
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready = self._wait(1, left)
            got = self.peek_cqe()
            if got is not None:
                return got
            if not ready or (left is not None and left <= 0):
                return None

    def wait_cqes(self, n: int, timeout: float | None = None) -> list[Completion]:
        """Wait until *n* completions were taken or *timeout* expired; return them."""
        out: list[Completion] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(out) < n:
            self.peek_batch(out, n - len(out))
            if len(out) >= n:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self._wait(n - len(out), left)
        return out

    # --- driving the ring (UringBatch, UringEngine) ---------------------------------

    def _take_cqes(self, out: list[Completion], max_n: int) -> int:
        """The CQ protocol: append the CQEs waiting (at most *max_n* if > 0)
        to *out*, flushing a CQ overflow first, and release the held objects
        of each request whose last CQE this is.  Returns how many were taken.
        No check of the ring's state: the callers made it."""
        cq32 = self._cq32
        head = self._cq_head
        tail = cq32[self._cq_ktail]
        if head == tail:
            if not self._sq32[self._sq_kflags] & abi.IORING_SQ_CQ_OVERFLOW:
                return 0
            self._stats["overflow_flush"] += 1
            self._enter(0, 0, abi.IORING_ENTER_GETEVENTS)
            tail = cq32[self._cq_ktail]
        if _NEEDS_FENCE:
            _fence()  # acquire: the tail load before the CQE loads
        n: int = (tail - head) & _U32
        if max_n and n > max_n:
            n = max_n
        if n:
            # one slice of the mapping per contiguous run (two if the run wraps),
            # unpacked by iter_unpack in C: no Python-level step per CQE
            mm = self._cq_mm
            base = self._cqes
            first = head & self._cq_mask
            run = self._cq_n - first
            if run > n:
                run = n
            lo = base + (first << 4)
            items = list(_iter_cqes(mm[lo : lo + (run << 4)]))
            if run < n:
                items += _iter_cqes(mm[base : base + ((n - run) << 4)])
            keep = self._keep
            if keep:  # a request's last CQE: the kernel is done with its objects
                for ud, _res, fl in items:
                    if not fl & abi.IORING_CQE_F_MORE:
                        keep.pop(ud, None)
            head = (head + n) & _U32
            if _NEEDS_FENCE:
                _fence()  # release: the CQE loads before the head store
            # The CQEs join *out* and leave the ring with no call in between
            # (an exception from a signal handler, Ctrl-C's KeyboardInterrupt,
            # is raised only at a call or a loop's jump): it comes before both
            # or after both, and a CQE is never lost nor taken twice.
            out += items
            cq32[self._cq_khead] = head
            self._cq_head = head
            self._stats["reaped"] += n
        return n

    def _sq_begin(self) -> tuple[mmap.mmap, int, int]:
        """Where the caller writes SQEs: the SQE memory, the SQ tail and the
        index mask (SQE *i* from here lies at ``((tail + i) & mask) << 6``).
        :meth:`_sq_end` then moves the tail past them (the caller holds the
        ring and checked :meth:`sq_space_left`)."""
        return self._sqes, self._sqe_tail, self._sq_mask

    def _sq_end(self, tail: int) -> None:
        """Move the SQ tail to *tail*: past the SQEs written since
        :meth:`_sq_begin`, or back to take unpublished ones back."""
        self._sqe_tail = tail & _U32

    def _hold_each(self, slots: Sequence[int], objs: Sequence[Any], base: int = 0) -> None:
        """Hold ``objs[s]`` for each *s* of *slots* until the CQE carrying
        user_data ``base | s`` is taken (the memory its request reads or
        writes)."""
        keep = self._keep
        for s in slots:
            keep[base | s] = objs[s]

    def _unhold_each(self, slots: Sequence[int], base: int = 0) -> None:
        """Undo :meth:`_hold_each` for requests that never reached the kernel."""
        keep = self._keep
        for s in slots:
            keep.pop(base | s, None)

    def _hand_over(self, chunk: int = 0, defer_below: int = 0) -> None:
        """Publish the SQ tail and hand the pending SQEs to the kernel, at most
        *chunk* per io_uring_enter (0: all in one); with SQPOLL, wake its
        thread if it sleeps.  Fewer than *defer_below* pending are only
        published: a later hand-over takes them.  On EINTR or EBUSY/EAGAIN
        backpressure it falls back to :meth:`submit`, which retries carefully."""
        if self._sqpoll:
            self._submit_sqpoll()
            return
        pending = self._publish()
        if pending < defer_below or not pending:
            return
        step = chunk or pending
        fd = self.fd
        stats = self._stats
        while pending:
            stats["enter"] += 1
            ret = _io_uring_enter(fd, pending if pending < step else step, 0, 0, 0, 0)
            if ret <= 0:
                self.submit()
                return
            stats["submitted"] += ret
            pending -= ret

    def _wait(self, min_complete: int, timeout: float | None) -> bool:
        """Wait until *min_complete* CQEs are ready or *timeout* seconds have
        passed (None: no limit), submitting nothing.  Returns False on
        timeout.

        Raises:
            OSError: the kernel's error, but for EBUSY/EAGAIN (the CQ overflow
                the next take flushes).
        """
        ret = self._enter_wait(0, min_complete, timeout)
        if ret == -errno.ETIME:
            return False
        if ret < 0 and ret not in (-errno.EBUSY, -errno.EAGAIN):
            raise oserror(-ret)
        return True
