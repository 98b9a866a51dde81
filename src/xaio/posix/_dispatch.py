"""How a POSIX AIO request travels: handed to the engine (or held back in
its fd's lane), completed (recorded, waiters woken, notified, its
``lio_listio`` list counted down) and cancelled (see the essay of
:mod:`xaio.posix`)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import Any

from xaio import _syscall
from xaio._lanes import Lane, fd_order
from xaio._ops import CancelOutcome, OpCode, Operation, OpState
from xaio.engine import Engine, EngineClosedError
from xaio.posix._notify import notify
from xaio.posix._request import HELD, PARK, RESUBMIT, TRANSIT, _Group, _Waiter, aiocb
from xaio.posix._runtime import (
    _by_fd,
    _get_engine,
    _lanes,
    _state_lock,
    _submitter,
    _suspenders,
    _transit_waiters,
)


def _on_done(op: Operation) -> None:
    """An operation of ours finished (in a worker, the reaper, or a
    cancelling thread): record the status, wake waiters, notify -- or, on an
    engine that does not order requests itself, carry the request on.

    There (io_uring) a kernel request is not all of a POSIX request: a write
    on a blocking stream fd that the kernel completed short goes on with the
    rest, as ``write(2)`` on that fd would (io_uring stops at the first
    short transfer), so the request completes when all is written or with
    an error (the bytes written before the error, if any, as ``write(2)``);
    and a request that :func:`aio_cancel` reported ``AIO_NOTCANCELED`` but
    that the kernel then stopped (``-ECANCELED``/``-EINTR``: io_uring's
    cancel of a running request may still interrupt it) is submitted again,
    so that it completes normally."""
    cb: aiocb = op.context
    res = op.result
    assert res is not None
    if cb._lane is not None:
        if res == -errno.ECANCELED or res == -errno.EINTR:
            with _state_lock:
                action = cb._on_result(op, res)
            if action == PARK:
                return
            if action == RESUBMIT and _carry_on(cb, op, op.buffers, 0):
                return
        elif res > 0 and op.opcode is OpCode.WRITE:
            with memoryview(op.buffers[0]) as view:
                size = view.nbytes
            if res < size and _blocking_stream(op.fd):
                with memoryview(op.buffers[0]) as view, view.cast("B") as b:
                    rest = b[res:]
                if _carry_on(cb, op, (rest,), res):
                    return
        res = cb._total(res)
    _finish(cb, res)


def _blocking_stream(fd: int) -> bool:
    """Is *fd* a stream (not a regular file or block device) in blocking
    mode: where ``write(2)`` writes all it is given or fails?"""
    try:
        mode = _syscall.fstat_cached(fd).st_mode
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISBLK(mode) or flags & os.O_NONBLOCK)


def _carry_on(cb: aiocb, op: Operation, buffers: tuple[Any, ...], moved: int) -> bool:
    """Go on with the request of *cb* after its operation *op* ended (having
    transferred *moved* bytes): a new operation on *buffers* takes its place
    in the lane and goes to the engine.  False if it cannot (the engine is
    closed, or *cb* moved on): the caller then finishes the request."""
    eng = cb._engine
    if eng is None or eng.closed:
        return False
    nxt = Operation(op.opcode, op.fd, buffers, op.offset, on_done=_on_done, context=cb)
    with _state_lock:
        if not cb._carry(op, nxt, moved):
            for p in nxt.pins:
                p.release()
            return False
        waiters = cb._waiters  # an aio_cancel waiting for *op* (see _cancel_submitted)
        cb._waiters = None
        if waiters is not None:
            for w in waiters:
                w.wake_locked()
    _hand_over([cb])
    return True


def _finish(cb: aiocb, res: int) -> None:
    """Complete the request of *cb* with *res*: record it, release its lane,
    wake its waiters, notify, count its ``lio_listio`` list down."""
    with _state_lock:
        lane = cb._lane
        if not cb._finish(res):  # pragma: no cover - forked child, stale op
            return
        fd = cb._fd
        fdset = _by_fd.get(fd)
        if fdset is not None:
            fdset.pop(cb, None)
            if not fdset:
                del _by_fd[fd]
        released: list[aiocb] | None = None
        if lane is not None:
            lane.active -= 1
            released = _lane_release_locked(fd, lane)
        waiters = cb._waiters
        if waiters is not None:
            cb._waiters = None
            for w in waiters:
                w.wake_locked()
        if _suspenders:
            for w in _suspenders:
                w.wake_locked()
            _suspenders.clear()
        if _transit_waiters:  # an aio_cancel waiting for a request with an immediate error
            _wake_transit_locked()
        group = cb._group
        cb._group = None
        notice = cb._notice
        cb._notice = None
    if released:
        _hand_over(released)
    if notice is not None:
        notify(notice)
    if group is None:
        return
    # The list is counted down only after this request's own notification
    # was sent, so the list notification (sent by whichever request is
    # last) always comes after every request's.
    group_notice = None
    with _state_lock:
        if res < 0:
            group.failed = True
        group.remaining -= 1
        if not group.remaining:
            if group.waiter is not None:
                group.waiter.wake_locked()
            group_notice = group.notice
    if group_notice is not None:
        notify(group_notice)


def _enqueue(items: list[tuple[aiocb, Operation, int]], group: _Group | None) -> None:
    """Mark the cbs in progress and hand their operations to the engine (or
    hold them back in their lanes); complete at once those with an
    immediate error.

    An engine that orders requests itself (``Engine.orders_requests``: the
    thread engine) never calls back into posix from its submit, so it takes
    the requests while ``_state_lock`` is held: marking and handing over is
    one critical section, and no ``aio_cancel`` ever finds a request on its
    way.  Other engines may complete an operation inside ``submit``, so
    their requests go in transit: marked under the lock, submitted without
    it, then marked as the engine's."""
    eng = _get_engine()
    laned = not eng.orders_requests
    serial: dict[int, int] = {}  # fd -> fd_order(fd)
    if laned:
        for _, op, err in items:
            fd = op.fd
            if not err and fd not in _lanes and fd not in serial:
                serial[fd] = fd_order(fd)
    try:
        with _state_lock:
            for i, (cb, op, _err) in enumerate(items):
                try:
                    cb._begin(op, group, eng)
                except OSError:  # already in progress: nothing of this call is submitted
                    for c, _, _ in items[:i]:
                        _unmark_locked(c)
                    raise
                fdset = _by_fd.get(op.fd)
                if fdset is None:
                    fdset = _by_fd[op.fd] = {}
                fdset[cb] = None
            ops = []
            for cb, op, err in items:
                if not err and (not laned or _lane_admit_locked(cb, op, serial)):
                    ops.append(op)
            if ops and not laned:
                try:
                    eng.submit(ops)
                except EngineClosedError:
                    for cb, _, _ in items:
                        _unmark_locked(cb)
                    raise _syscall.oserror(
                        errno.EAGAIN, "the AIO engine is shutting down"
                    ) from None
                for op in ops:
                    op.context._handed(op)
                ops = []
        if ops:
            reaper = _submitter(eng)
            if reaper is not None:
                reaper.defer(_submit_released, [op.context for op in ops])
            else:
                try:
                    eng.submit(ops)
                except EngineClosedError:
                    with _state_lock:
                        for cb, _, _ in items:
                            _unmark_locked(cb)
                        _wake_transit_locked()
                    raise _syscall.oserror(
                        errno.EAGAIN, "the AIO engine is shutting down"
                    ) from None
                _end_transit(ops)
                # Collect what completed inside the submitting io_uring_enter
                # (page-cached reads): recorded here, with no hand-off to the reaper.
                eng.reap(0)
        for _, op, err in items:
            if err:
                op.complete(err)
    except BaseException:
        _recover_enqueue(eng, items)
        raise


def _recover_enqueue(eng: Engine, items: list[tuple[aiocb, Operation, int]]) -> None:
    """An exception came out of :func:`_enqueue` midway -- one from a signal
    handler (Ctrl-C) can come at any call.  The requests the engine did not
    take are not submitted after all (``aio_error`` says EINVAL, as for a cb
    never submitted: the caller may submit it again); those it took, or that
    wait in their lane, complete as usual, and so do those with an immediate
    error.  A no-op after the errors ``_enqueue`` raises itself (those undo
    their marks)."""
    errs: list[tuple[Operation, int]] = []
    with _state_lock:
        for cb, op, err in items:
            if cb._op is not op or not cb._in_progress:
                continue  # not marked by this call
            if op.state is not OpState.QUEUED:
                cb._handed(op)  # taken (or done)
            elif err:
                errs.append((op, err))
            elif cb._state == HELD:
                continue  # waits in its lane
            elif eng.owns(op):
                cb._handed(op)
            else:
                _unmark_locked(cb)
        _wake_transit_locked()
    for op, err in errs:
        op.complete(err)


def _lane_admit_locked(cb: aiocb, op: Operation, serial: dict[int, int]) -> bool:
    """Enter *cb* in its fd's lane; True if it may go to the engine now,
    False if it is held back (``_state_lock`` held)."""
    fd = op.fd
    lane = _lanes.get(fd)
    if lane is None:
        s = serial.get(fd)
        lane = _lanes[fd] = Lane(fd_order(fd) if s is None else s)
    admitted = lane.admit(op)
    if not admitted:
        lane.held.append(cb)
    cb._enter(lane, admitted)
    return admitted


def _op_of(cb: aiocb) -> Operation:
    op = cb._op
    assert op is not None
    return op


def _lane_release_locked(fd: int, lane: Lane[aiocb]) -> list[aiocb] | None:
    """Take the held requests of *lane* that may start now (in transit; the
    caller hands them over with :func:`_hand_over`); drop the lane once
    empty (``_state_lock`` held)."""
    out = lane.release(_op_of) if lane.held else None
    if out:
        for head in out:
            head._release()
    if lane.idle and _lanes.get(fd) is lane:
        del _lanes[fd]
    return out or None


def _hand_over(cbs: list[aiocb]) -> None:
    """Give released requests (in transit) to their engine, from this thread
    or through the reaper (no lock held)."""
    eng = cbs[0]._engine
    assert eng is not None
    reaper = _submitter(eng)
    if reaper is not None:
        reaper.defer(_submit_released, cbs)
    else:
        _submit_released(cbs)


def _submit_released(cbs: list[aiocb]) -> None:
    """Submit requests in transit.  If the engine was closed under us, they
    and everything held behind them are cancelled."""
    ops = [_op_of(cb) for cb in cbs]
    eng = cbs[0]._engine
    assert eng is not None
    try:
        eng.submit(ops)
    except EngineClosedError:
        doomed: list[Operation] = []
        with _state_lock:
            for cb in cbs:
                lane = cb._lane
                if lane is not None:
                    doomed.extend(h._unlane() for h in lane.held)
                    lane.held.clear()
            _wake_transit_locked()
        for op in [*ops, *doomed]:
            if op.state is not OpState.DONE:
                op.complete(-errno.ECANCELED)
        return
    _end_transit(ops)


def _end_transit(ops: list[Operation]) -> None:
    """The engine has *ops* now: an aio_cancel may ask it to cancel them.

    Each request is marked as sent (``aiocb._sent``) without the lock, and
    the lock is taken only if an aio_cancel waits for a request in transit:
    then they are moved on (``_handed``) and it is woken.  An aio_cancel
    that comes later finds the mark and moves the request on itself (see
    :func:`_cancel_submitted`).  Each side writes before it reads what the
    other writes (here the mark, then ``_transit_waiters``; there its
    waiter, then the mark), so one of them always sees the other."""
    for op in ops:
        op.context._sent = op
    if _transit_waiters:
        with _state_lock:
            for op in ops:
                op.context._handed(op)
            _wake_transit_locked()


def _wake_transit_locked() -> None:
    for w in _transit_waiters:
        w.wake_locked()
    _transit_waiters.clear()


def _unmark_locked(cb: aiocb) -> None:
    """Give back a request the engine never took (``_state_lock`` held)."""
    held = cb._state == HELD
    lane = cb._lane
    fd = cb._fd
    op = cb._give_back()
    fdset = _by_fd.get(fd)
    if fdset is not None:
        fdset.pop(cb, None)
        if not fdset:
            del _by_fd[fd]
    if lane is not None:
        if held:
            lane.held.remove(cb)
        else:
            lane.active -= 1
        if lane.idle and _lanes.get(fd) is lane:
            del _lanes[fd]
    if op is not None:
        op.on_done = None
        for p in op.pins:
            p.release()


def _lane_open(fd: int) -> bool:
    """May a read on *fd* complete now, overtaking nothing in its lane?"""
    lane = _lanes.get(fd)
    return lane is None or lane.passable


def _cancel_submitted(cb: aiocb, op: Operation, eng: Engine) -> CancelOutcome:
    """Ask the engine to cancel *op* (the request of *cb*) and say honestly
    what became of it; a cancelled one has been recorded and notified when
    this returns."""
    # Wait until the request is really in the engine's hands.
    while True:
        with _state_lock:
            if cb._op is not op or (cb._in_progress and (cb._moved or cb._keep)):
                if cb._in_progress and (cb._moved or cb._keep):
                    cb._keep = True  # carried on in parts (see _on_done)
                    return CancelOutcome.RUNNING
                return CancelOutcome.DONE
            if cb._state != TRANSIT:
                break
            w = _Waiter()
            _transit_waiters.append(w)
            if cb._sent is op:  # submitted, and its submitter saw no waiter (_end_transit)
                _transit_waiters.remove(w)
                cb._handed(op)
                break
        w.lock.acquire()
    if eng.orders_requests:
        outcome = eng.cancel(op)
        if outcome is CancelOutcome.CANCELED:
            _wait_done(cb, op)  # a reap-mode engine: let the completion land
        return outcome
    # An engine posix keeps lanes for (see _on_done): a request partly done
    # or already reported running is not cancelled; one the kernel stops
    # while we ask is decided here, from the engine's answer.
    with _state_lock:
        if cb._op is not op:
            return CancelOutcome.DONE
        if not cb._ask_cancel(op):
            cb._keep = True
            return CancelOutcome.RUNNING
    outcome = CancelOutcome.RUNNING  # what an exception out of cancel leaves
    try:
        outcome = eng.cancel(op)
    finally:
        with _state_lock:
            parked = cb._answered(outcome is CancelOutcome.RUNNING)
        if parked is not None and outcome is CancelOutcome.RUNNING:
            if not _carry_on(cb, op, op.buffers, 0):
                _finish(cb, parked)
            parked = None
    if parked is not None:  # CANCELED or DONE, and its completion is here
        _finish(cb, parked)
        return CancelOutcome.CANCELED if parked == -errno.ECANCELED else CancelOutcome.DONE
    if outcome is CancelOutcome.RUNNING:
        return outcome
    # CANCELED or DONE: its completion is posted; wait until it is recorded,
    # so that aio_error no longer says EINPROGRESS when we return.
    _wait_done(cb, op)
    with _state_lock:
        if cb._op is not op and cb._in_progress and cb._moved:
            cb._keep = True  # stopped part-way: it goes on to the end
            return CancelOutcome.RUNNING
    if outcome is CancelOutcome.CANCELED and op.result != -errno.ECANCELED:
        return CancelOutcome.DONE  # it finished in that very instant
    return outcome


def _wait_done(cb: aiocb, op: Operation) -> None:
    """Wait until the completion of *op* (the request of *cb*) is recorded."""
    with _state_lock:
        if cb._op is not op:
            return
        w = _Waiter()
        if cb._waiters is None:
            cb._waiters = [w]
        else:
            cb._waiters.append(w)
    w.lock.acquire()
