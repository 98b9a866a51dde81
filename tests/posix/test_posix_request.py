"""The state machine of a POSIX AIO request (xaio.posix._request), without
I/O: every transition, the answers of aio_error/aio_return (its queries,
which do no I/O either) in each state,
and the transitions it refuses.  The requests that travel through real
engines are tested in test_posix.py and test_posix_uring.py."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from xaio._lanes import PARALLEL, Lane
from xaio._ops import OpCode, Operation
from xaio.posix import aio_error, aio_return, aiocb
from xaio.posix._request import (
    ACTIVE,
    CANCELLING,
    DONE,
    FINISH,
    HELD,
    NEW,
    PARK,
    RESUBMIT,
    RETRIEVED,
    TRANSIT,
    StateError,
)

ENGINE: Any = object()  # the machine only records which engine has the request


def op() -> Operation:
    return Operation(OpCode.READ, 7, [bytearray(8)], 0)


def begun() -> tuple[aiocb, Operation]:
    cb = aiocb(7, 0, bytearray(8))
    o = op()
    cb._begin(o, None, ENGINE)
    return cb, o


def active() -> tuple[aiocb, Operation]:
    cb, o = begun()
    cb._enter(Lane(PARALLEL), True)
    assert cb._handed(o)
    return cb, o


def errno_of(fn: Any) -> int:
    with pytest.raises(OSError) as e:
        fn()
    return e.value.errno  # type: ignore[no-any-return]


def test_a_new_request_was_never_submitted() -> None:
    cb = aiocb()
    assert cb._state == NEW and not cb._in_progress
    assert errno_of(lambda: aio_error(cb)) == errno.EINVAL
    assert errno_of(lambda: aio_return(cb)) == errno.EINVAL
    assert "new" in repr(cb)


def test_submitted_request_is_in_progress_until_finished() -> None:
    cb, o = begun()
    assert cb._state == TRANSIT and cb._in_progress and cb._op is o and cb._fd == 7
    assert aio_error(cb) == errno.EINPROGRESS
    assert errno_of(lambda: aio_return(cb)) == errno.EINPROGRESS
    assert errno_of(lambda: cb._begin(op(), None, ENGINE)) == errno.EINVAL  # in progress
    assert cb._finish(8)
    assert cb._state == DONE and cb._op is None and cb._lane is None
    assert aio_error(cb) == 0
    assert aio_return(cb) == 8
    assert cb._state == RETRIEVED
    assert errno_of(lambda: aio_return(cb)) == errno.EINVAL  # only once
    assert aio_error(cb) == 0
    assert not cb._finish(8)  # a stale completion changes nothing
    cb._begin(op(), None, ENGINE)  # resubmitted after its status was taken
    assert cb._state == TRANSIT


def test_a_failure_is_recorded_as_errno_and_minus_one() -> None:
    cb, _ = active()
    cb._finish(-errno.EBADF)
    assert aio_error(cb) == errno.EBADF and aio_return(cb) == -1


def test_lane_holds_then_releases() -> None:
    cb, o = begun()
    lane: Lane[aiocb] = Lane(PARALLEL)
    cb._enter(lane, False)
    assert cb._state == HELD and cb._lane is lane and cb._in_progress
    assert not cb._handed(o)  # the engine cannot have a held request
    cb._release()
    assert cb._state == TRANSIT
    assert cb._handed(o) and cb._state == ACTIVE
    assert not cb._handed(o)


def test_a_held_request_is_taken_out_of_its_lane_to_be_cancelled() -> None:
    cb, o = begun()
    cb._enter(Lane(PARALLEL), False)
    assert cb._unlane() is o
    assert cb._state == TRANSIT and cb._lane is None
    cb._finish(-errno.ECANCELED)
    assert aio_error(cb) == errno.ECANCELED


def test_cancel_parks_a_stop_and_hands_it_to_the_canceller() -> None:
    cb, o = active()
    assert cb._ask_cancel(o) and cb._state == CANCELLING
    assert cb._on_result(o, -errno.ECANCELED) == PARK
    assert cb._answered(False) == -errno.ECANCELED
    assert cb._state == ACTIVE and not cb._keep


def test_a_request_reported_running_runs_to_the_end() -> None:
    cb, o = active()
    assert cb._ask_cancel(o)
    assert cb._answered(True) is None
    assert cb._keep and cb._state == ACTIVE
    assert not cb._ask_cancel(o)  # reported running once: never cancelled
    assert cb._on_result(o, -errno.EINTR) == RESUBMIT
    assert cb._on_result(o, 8) == FINISH
    assert cb._on_result(op(), -errno.ECANCELED) == FINISH  # not its operation


def test_a_request_in_parts_counts_the_bytes_of_each() -> None:
    cb, o = active()
    nxt = op()
    assert cb._carry(o, nxt, 3)
    assert cb._state == TRANSIT and cb._op is nxt and cb._moved == 3
    assert not cb._carry(o, op(), 1)  # the old operation is no longer its own
    assert not cb._ask_cancel(nxt)  # partly done: not cancelled
    assert cb._handed(nxt)
    assert cb._total(5) == 8
    assert cb._total(-errno.EPIPE) == 3  # what was written before the error
    cb._finish(cb._total(5))
    assert aio_return(cb) == 8


def test_cancel_is_asked_only_of_the_current_active_operation() -> None:
    cb, o = begun()
    assert not cb._ask_cancel(o)  # still in transit
    cb._enter(Lane(PARALLEL), True)
    cb._handed(o)
    assert not cb._ask_cancel(op())
    assert cb._ask_cancel(o)


def test_give_back_and_fast_path_and_fork() -> None:
    cb, o = begun()
    assert cb._give_back() is o
    assert cb._state == NEW and errno_of(lambda: aio_error(cb)) == errno.EINVAL
    cb._complete_now(8)
    assert cb._state == DONE and aio_return(cb) == 8
    cb, _ = active()
    cb._forget()
    assert cb._state == NEW and cb._op is None


@pytest.mark.parametrize(
    "make, transition",
    [
        (begun, lambda cb: cb._release()),  # only a held request is released
        (begun, lambda cb: cb._unlane()),
        (active, lambda cb: cb._enter(Lane(PARALLEL), True)),  # entered once
        (active, lambda cb: cb._give_back()),  # the engine has it
        (lambda: (aiocb(), None), lambda cb: cb._give_back()),
    ],
)
def test_illegal_transitions_are_refused(make: Any, transition: Any) -> None:
    cb, _ = make()
    state = cb._state
    with pytest.raises(StateError):
        transition(cb)
    assert cb._state == state
