"""xaio._fork: a kernel object belongs to the process that made it, and a
forked child is refused with EINVAL (docs/architecture.md, rule 8)."""

from __future__ import annotations

import errno
import os
import time

import pytest

import xaio
from xaio import uring
from xaio._fork import Owner
from xaio._ops import OpCode, Operation
from xaio.linux import LinuxAioEngine

from .support import in_child, pattern


def test_owner_is_this_process_until_a_fork() -> None:
    owner = Owner("test object")
    parent = os.getpid()
    assert owner.pid == parent and not owner.foreign
    owner.check()

    def child() -> int:
        if not owner.foreign:
            return 2
        try:
            owner.check()
        except OSError as e:
            ok = e.errno == errno.EINVAL and f"test object belongs to process {parent}" in str(e)
            return 0 if ok else 3
        return 4

    assert in_child(child) == 0
    assert not owner.foreign  # the parent is still the owner
    owner.check()


def test_linux_engine_refuses_use_in_a_forked_child(direct_fd: int) -> None:
    eng = LinuxAioEngine(8)
    parent = os.getpid()
    try:
        buf = xaio.aligned_buffer(4096)
        op = Operation(OpCode.READ, direct_fd, [buf], 0)
        eng.submit([op])

        def child() -> int:
            codes = []
            for call in (
                lambda: eng.submit([Operation(OpCode.NOP, -1)]),
                lambda: eng.reap(0),
            ):
                try:
                    call()
                    codes.append(0)
                except OSError as e:
                    if f"belongs to process {parent}" not in str(e):
                        return 2
                    codes.append(e.errno or 0)
            eng.close()  # drops the child's eventfd only, waits for nothing
            return 0 if codes == [errno.EINVAL] * 2 else 3

        assert in_child(child) == 0
        deadline = time.monotonic() + 10
        while not op.done and time.monotonic() < deadline:
            eng.reap(0.1)
        assert op.result == 4096 and bytes(buf) == pattern(4096)
    finally:
        eng.close()


def test_uring_ring_and_engine_name_their_owner_in_a_forked_child() -> None:
    reason = uring.unavailable_reason()
    if reason is not None:
        pytest.skip(f"io_uring unavailable: {reason}")
    parent = os.getpid()
    with uring.Ring(4) as ring:
        eng = uring.UringEngine(4)
        try:

            def child() -> int:
                for call in (ring.submit, lambda: eng.reap(0)):
                    try:
                        call()
                    except OSError as e:
                        if e.errno != errno.EINVAL or f"belongs to process {parent}" not in str(e):
                            return 2
                    else:
                        return 3
                ring.close()
                eng.close()
                return 0

            assert in_child(child) == 0
            ring.prep_nop(user_data=7)
            assert ring.submit() == 1  # the parent still owns both
        finally:
            eng.close()
