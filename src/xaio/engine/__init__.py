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
  complete on its own, later: normally, though io_uring may still stop it,
  with ``-ECANCELED`` or ``-EINTR``) or ``DONE`` (it had completed already).
- ``reap(timeout, *, max_n=0)`` delivers finished operations
  (``op.complete(res)``, which runs ``op.on_done``) in the calling thread --
  at most *max_n* if > 0, the rest at the next reap; ``timeout=0`` never
  blocks, ``None`` waits for at least one.  Returns how many were delivered.  An
  ``on_done`` may submit, cancel and reap again (also blocking); one that
  raises makes ``reap`` raise, and the completions not yet delivered come
  with the next ``reap`` -- none is lost or delivered twice (contract tests).
- ``fileno()`` is an eventfd that is readable while completions are waiting
  (``reap`` clears it), for event loops.  Once the engine is closed it raises
  :class:`EngineClosedError` (a :class:`ValueError` too, as a closed file's
  ``fileno()``): the old number may already be another fd's.
- ``owns(op)`` says whether *op* was taken and not yet delivered (what the
  caller of a ``submit`` interrupted by Ctrl-C asks); ``read_nowait(fd,
  buffer, offset, nbytes)`` reads from the page cache in the calling thread,
  or returns None when the request must be submitted; ``nowait_reader`` is
  the same as one callable to bind once (the engine's reader itself), which
  takes the buffer in a tuple the caller keeps: ``reader(fd, (buffer,),
  offset, nbytes)``.
- ``close()`` stops accepting, cancels what it can, waits for the rest, then
  releases every kernel object.  Idempotent.  An unclosed engine that is
  garbage collected warns (``ResourceWarning``) and closes without waiting
  for what may wait for ever (the thread engine abandons what runs; its
  workers do not keep it alive).  At interpreter exit an open engine is
  abandoned, never waited for.  In a forked child every inherited engine is
  closed at once and its ``close()`` does not wait; the parent's requests
  are not touched.

Callers branch on the engine's capability flags, never on its ``name``:
``completes_in_submit`` (reap right after a submit), ``cancels_running``
(a running request can be stopped, so ``close`` never waits for ever),
``thread_bound`` (a waiting request dies with the thread that submitted it),
``slow_close`` (run ``close`` off an event loop), ``kernel_path_ops`` (path
operations have a kernel path beside the engine), ``orders_requests`` (it
orders an fd's requests itself, as ``xaio._lanes`` says, and its ``submit``
runs no ``on_done``) and ``delivers_itself`` (nobody needs to reap).

Threads: ``submit`` and ``cancel`` may be called from any thread while one
thread is inside ``reap``.  One kernel fact limits this on io_uring: a request
still waiting (on a pipe, a socket, a poll) after the thread that submitted it
has exited is cancelled by the kernel when it would run (it completes with
``-ECANCELED``), so submit from threads that outlive their requests.

Rule 1 holds in every engine: an operation's buffers stay pinned until its
completion has been reaped, whatever happened to the cancel.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from xaio._ops import CancelOutcome, OpCode, Operation, OpState
from xaio._syscall import read_proc as _read_proc
from xaio.engine._protocol import BatchPort, Engine, EngineClosedError
from xaio.engine._route import (
    BLOCKING_FS_TYPES,
    KIND_BLOCKING,
    KIND_BUFFERED,
    KIND_DIRECT,
    KIND_OTHER,
    fd_kind,
    is_direct_regular,
)
from xaio.engine._route import (
    route as route,
)
from xaio.engine._routed import RoutedEngine

__all__ = [
    "Engine",
    "EngineClosedError",
    "BatchPort",
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

#: Engine names, best first: the order :func:`open_engine` tries them.
ENGINE_NAMES: tuple[str, ...] = ("uring", "linux", "thread")


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
