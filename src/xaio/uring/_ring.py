"""The :class:`Ring`: setup, queue, prep and register together, and its close."""

from __future__ import annotations

import os
import time
import warnings

from xaio.uring._prep import RingPrep
from xaio.uring._register import RingRegister
from xaio.uring._setup import _U64, SetupFunction, _graveyard, finalize

_reason_cache: list[str | None] = []


def unavailable_reason(*, _setup: SetupFunction | None = None) -> str | None:
    """Whether io_uring works here: None if it does, else a short reason.

    Probes once (creating and closing a tiny ring) and caches the answer; the
    reason names the errno and the cause, e.g. ``"EPERM: kernel.io_uring_disabled=2"``.

    Args:
        _setup: private test hook replacing the ``io_uring_setup`` syscall
            (the answer is then not cached).

    Returns:
        None, or the reason io_uring cannot be used.
    """
    if _setup is None and _reason_cache:
        return _reason_cache[0]
    try:
        Ring(2, _setup=_setup).close()
        reason: str | None = None
    except OSError as e:
        reason = e.strerror or os.strerror(e.errno or 0)
    if _setup is None:
        _reason_cache.append(reason)
    return reason


class Ring(RingPrep, RingRegister):
    """An io_uring instance: setup, the SQ/CQ rings, prep helpers, submit and reap.

    A low-level object in liburing's vocabulary: ``prep_*`` helpers fill SQEs
    (each funnels into one private ``_prep_rw``), :meth:`submit` hands them to
    the kernel, :meth:`peek_cqe` / :meth:`peek_batch` / :meth:`wait_cqe` take
    completions as ``(user_data, res, flags)`` tuples.  Python buffers given to
    a ``prep_*`` helper are pinned by the Ring until the CQE carrying that
    ``user_data`` has been taken (so ``user_data`` must be unique among
    requests in flight with buffers).  A Ring is not thread-safe: use one from
    one thread at a time (:class:`UringEngine` adds the locking).

    If the SQ is full, a ``prep_*`` helper first submits what is queued.

    Corresponds to io_uring_setup(2), io_uring_queue_init_params(3).
    """

    def _drain_held(self, timeout: float = 10.0) -> None:
        """Cancel every request and wait for the CQEs of those holding buffers."""
        deadline = time.monotonic() + timeout
        while self._keep and time.monotonic() < deadline:
            self.prep_cancel_all(user_data=_U64)
            self.submit()
            self.wait_cqes(len(self._keep), timeout=0.1)
        if self._keep:  # pragma: no cover - a request the kernel could not stop
            _graveyard.append(self._keep)
            warnings.warn(
                f"io_uring closed with {len(self._keep)} requests still in flight: "
                "their buffers are kept alive for ever",
                ResourceWarning,
                stacklevel=3,
            )
        self._keep = {}

    def close(self) -> None:
        """Cancel what is in flight, wait for the CQEs of requests holding
        buffers, unregister, unmap and close the fd (io_uring_queue_exit(3)).
        Idempotent.  In a forked child it only drops the child's copies of the
        fd and mappings (the parent's ring is untouched)."""
        if self._closed:
            return
        if not self._forked():
            try:
                if self._keep:
                    self._drain_held()
            finally:
                self._closed = True
                for p in self._fixed_buffers:
                    if p is not None:
                        p.release()
                self._fixed_buffers = []
        self._closed = True
        self._keep = {}
        self._unmap()
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        finalize(self, self._forked())

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self.fd} sq={self.sq_entries}"
        return f"<xaio.uring.Ring {state}>"
