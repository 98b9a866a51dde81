"""The fault-injection file system itself: each kind of fault does what the
suite's tests rely on, seen through plain ``os`` calls."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from tests.faults._fusefs import FaultFS


def test_passthrough_and_every_fault(faultfs: FaultFS) -> None:
    p = faultfs.path("f.bin")
    p.write_bytes(b"abcdefgh")
    assert (faultfs.backing / "f.bin").read_bytes() == b"abcdefgh"
    fd = os.open(p, os.O_RDWR)
    try:
        faultfs.inject({"path": "f.bin", "ops": ["read"], "errno": errno.EIO})
        with pytest.raises(OSError) as ei:
            os.pread(fd, 4, 0)
        assert ei.value.errno == errno.EIO
        faultfs.inject({"path": "f.bin", "ops": ["write"], "errno": errno.ENOSPC})
        with pytest.raises(OSError) as ei:
            os.pwrite(fd, b"zz", 0)
        assert ei.value.errno == errno.ENOSPC
        faultfs.inject({"path": "f.bin", "ops": ["read", "write"], "short": 3})
        assert os.pread(fd, 8, 0) == b"abc"
        assert os.pwrite(fd, b"XYZW", 0) == 3
        faultfs.inject({"ops": ["read"], "errno": errno.EIO, "from": 4, "count": 1})
        assert os.pread(fd, 4, 0) == b"XYZd"  # before the range: untouched
        with pytest.raises(OSError):
            os.pread(fd, 4, 4)
        assert os.pread(fd, 4, 4) == b"efgh"  # count used up
        faultfs.inject({"ops": ["fsync"], "errno": errno.EIO})
        with pytest.raises(OSError) as ei:
            os.fsync(fd)
        assert ei.value.errno == errno.EIO
        faultfs.inject({"ops": ["flush"], "errno": errno.ENOSPC})
        fd2 = os.open(p, os.O_RDONLY)
        with pytest.raises(OSError) as ei:
            os.close(fd2)  # the fd is gone all the same
        assert ei.value.errno == errno.ENOSPC
        faultfs.inject()
    finally:
        os.close(fd)
    assert (faultfs.backing / "f.bin").read_bytes() == b"XYZdefgh"


def test_delayed_requests_are_served_concurrently(faultfs: FaultFS) -> None:
    p = faultfs.path("slow.bin")
    p.write_bytes(bytes(4096 * 4))
    faultfs.inject({"path": "slow.bin", "ops": ["read"], "delay": 0.5})
    fd = os.open(p, os.O_RDONLY)
    try:
        t0 = time.monotonic()
        threads = [threading.Thread(target=os.pread, args=(fd, 10, i * 4096)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - t0
    finally:
        os.close(fd)
    assert 0.5 <= took < 1.5, took


def test_unmounted_even_when_the_test_fails(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    from tests.faults._fusefs import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no FUSE here: {reason}")
    base = Path(tmp_path)
    with pytest.raises(RuntimeError), FaultFS(base) as fs:
        fs.inject({"ops": ["read"], "delay": 30})
        assert os.path.ismount(fs.root)
        raise RuntimeError("the test failed")
    assert not os.path.ismount(base / "mnt")
    assert fs.proc.poll() is not None
