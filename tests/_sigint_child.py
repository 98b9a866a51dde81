"""Child process of ``test_signals.py``: keeps an engine (or POSIX AIO) busy
until a SIGINT lands somewhere in it, then checks that the engine can still
be drained and closed, and says so on stdout: ``r`` once ready, then per
SIGINT ``k`` (recovered) or ``x<message>\\n`` (something was wrong).

Usage: python _sigint_child.py ENGINE FILE, with ENGINE one of thread,
linux, uring, posix; FILE a file to read (1 MiB or more).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Callable

from xaio import aligned_buffer
from xaio.engine import Engine, OpCode, Operation, OpState, create_engine

OUT = sys.stdout.buffer


def say(msg: bytes) -> None:
    OUT.write(msg)
    OUT.flush()


def check_mask() -> str:
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    return f"signals left blocked: {sorted(blocked)}" if blocked else ""


def serve(step: Callable[[], None], recover: Callable[[], str]) -> None:
    """Run *step* over and over; on each SIGINT, *recover* checks what it
    left and returns a problem ("" if none), and the parent gets the answer.
    The parent sends the next SIGINT once it has the answer: from there on
    everything runs inside the try."""
    ack = b"r"
    while True:
        try:
            msg, ack = ack, b""
            if msg:
                say(msg)
            while True:
                step()
        except KeyboardInterrupt:
            problem = recover() or check_mask()
            ack = b"x" + problem.encode() + b"\n" if problem else b"k"


def engine_loop(name: str, path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    dfd = -1
    if name == "linux":  # O_DIRECT reads go to io_submit, the rest to threads
        try:
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError:  # no O_DIRECT on this file system: threads only
            dfd = -1
    bufs = [aligned_buffer(4096) for _ in range(4)]

    def make() -> Engine:
        if name == "thread":  # workers exit at once: a thread starts for most batches
            from xaio.threads import ThreadEngine

            return ThreadEngine(threads=4, idle_time=0.0)
        return create_engine(name)

    # made while the parent waits for an answer: no SIGINT lands in a constructor
    eng = make()
    ops: list[Operation] = []
    k = 0

    def step() -> None:
        nonlocal ops, k
        k = (k + 1) % 256
        off = k * 4096
        ops = [
            Operation(OpCode.NOP, -1),
            Operation(OpCode.READ, fd, (bufs[0],), off),
            Operation(OpCode.READ, fd, (bufs[1],), off + 4096),
            Operation(OpCode.READ, dfd if dfd >= 0 else fd, (bufs[2],), off),
        ]
        eng.submit(ops)
        while any(op.state is not OpState.DONE for op in ops):
            eng.reap(None)

    def recover() -> str:
        nonlocal eng
        eng.close()
        eng = make()
        taken = (OpState.SUBMITTED, OpState.CANCEL_REQUESTED)
        stuck = [op for op in ops if op.state in taken]
        if stuck:
            return f"taken and never completed after close: {stuck}"
        if threading.active_count() != 1:
            return f"threads left after close: {threading.enumerate()}"
        return ""

    serve(step, recover)


def posix_loop(path: str) -> None:
    from xaio import posix

    posix.aio_init(threads=4, idle_time=0.0)  # a worker starts for most requests
    fd = os.open(path, os.O_RDONLY)
    cbs: list[posix.aiocb] = []
    k = 0

    def step() -> None:
        nonlocal cbs, k
        k = (k + 1) % 256
        cbs = [
            posix.aiocb(aio_fildes=fd, aio_buf=bytearray(4096), aio_offset=(k + i) * 4096)
            for i in range(3)
        ]
        for cb in cbs:
            posix.aio_read(cb)
        for cb in cbs:
            while posix.aio_error(cb) == errno.EINPROGRESS:
                posix.aio_suspend([cb])
            posix.aio_return(cb)

    def recover() -> str:
        for cb in cbs:  # every request queued must still finish
            try:
                err = posix.aio_error(cb)
            except OSError:
                continue  # never queued, or returned already
            if err == errno.EINPROGRESS:
                try:
                    posix.aio_suspend([cb], 10.0)
                except OSError:  # EAGAIN: still in progress after 10 s
                    return f"a request never finished: {cb}"
        return ""

    serve(step, recover)


if __name__ == "__main__":
    if sys.argv[1] == "posix":
        posix_loop(sys.argv[2])
    else:
        engine_loop(sys.argv[1], sys.argv[2])
