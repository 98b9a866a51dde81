"""Ctrl-C anywhere: an exception from a signal handler can come out of any
call or loop jump of the main thread, in the middle of an engine's
bookkeeping.  Whatever it interrupts, the engine must still close without
hanging, complete every operation it took, leave no worker thread and no
signal blocked.

A child process keeps an engine busy (submit and reap of reads and no-ops,
a worker thread started for most batches) and the parent sends it SIGINT
after SIGINT at random moments; after each, the child closes its engine,
checks, and says so (``tests/_sigint_child.py``).  Before the fixes these
hung within a few dozen signals: a worker counted but never started (the
thread engine), CQEs or AIO events taken from the kernel but never
delivered (io_uring, Linux AIO), iocbs filled but never submitted.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from xaio.engine import probe

CHILD = Path(__file__).with_name("_sigint_child.py")
SIGNALS = int(os.environ.get("XAIO_TEST_SIGNALS", "150"))
ACK_TIMEOUT = 30
RESEND_AFTER = 5


def _engines() -> list[str]:
    works = probe()
    return [e for e in ("thread", "linux", "uring") if works.get(e) is None] + ["posix"]


@pytest.mark.parametrize("engine", _engines())
def test_sigint_anywhere_leaves_the_engine_closable(engine: str, tmp_path: Path) -> None:
    rng = random.Random(os.getpid())
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(4 << 20))
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), engine, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    problems: list[str] = []
    try:
        assert proc.stdout.read(1) == b"r", proc.communicate()[1]
        for i in range(SIGNALS):
            select.select([], [], [], rng.uniform(0.001, 0.01))
            proc.send_signal(signal.SIGINT)
            # CPython loses a KeyboardInterrupt raised inside a weakref
            # callback or __del__ ("Exception ignored"): send again when
            # there is no answer.  A hung close gets the repeat too, and dies.
            for _ in range(ACK_TIMEOUT // RESEND_AFTER):
                ready, _, _ = select.select([proc.stdout], [], [], RESEND_AFTER)
                if ready:
                    break
                proc.send_signal(signal.SIGINT)
            assert ready, f"no answer {ACK_TIMEOUT} s after SIGINT {i + 1}: hung"
            got = proc.stdout.read(1)
            assert got, f"the child died at SIGINT {i + 1}: {proc.communicate()[1].decode()}"
            if got == b"x":
                problems.append(proc.stdout.readline().decode().strip())
            else:
                assert got == b"k"
    finally:
        proc.kill()
        proc.communicate()
    assert problems == []
