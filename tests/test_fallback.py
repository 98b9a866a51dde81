"""Engine fallback when the kernel refuses io_uring or Linux AIO, for real.

A child interpreter installs a seccomp filter (as a container runtime would)
that makes ``io_uring_setup`` and/or ``io_setup`` fail with a chosen errno,
then asks xaio which engines work and which one it picks.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import pytest

from xaio._abi import ARCH, SYS

pytestmark = pytest.mark.skipif(ARCH != "x86_64", reason="filter written for x86-64")

CHILD = textwrap.dedent(
    """
    import ctypes, json, sys
    BLOCK = json.loads(sys.argv[1])          # {syscall number: errno}
    libc = ctypes.CDLL(None, use_errno=True)

    class sock_filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class sock_fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(sock_filter))]

    LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06
    RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
    prog = [sock_filter(LD_W_ABS, 0, 0, 0)]            # A = seccomp_data.nr
    for nr, err in BLOCK.items():
        prog.append(sock_filter(JEQ_K, 0, 1, int(nr)))  # if A == nr
        prog.append(sock_filter(RET_K, 0, 0, RET_ERRNO | err))
    prog.append(sock_filter(RET_K, 0, 0, RET_ALLOW))
    arr = (sock_filter * len(prog))(*prog)
    fprog = sock_fprog(len(prog), arr)
    assert libc.prctl(38, 1, 0, 0, 0) == 0                       # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0     # SECCOMP_MODE_FILTER

    from xaio import engine
    probe = engine.probe()
    eng = engine.create_engine()
    name = eng.name
    eng.close()
    print(json.dumps({"probe": probe, "chosen": name,
                      "reasons": engine.fallback_reasons}))
    """
)


def run_blocked(block: dict[str, int]) -> dict[str, object]:
    numbers = {str(SYS[name]): err for name, err in block.items()}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(numbers)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_uring_eperm_falls_back_to_linux() -> None:
    got = run_blocked({"io_uring_setup": errno.EPERM})
    probe = got["probe"]
    assert isinstance(probe, dict)
    assert probe["uring"] is not None and probe["uring"].startswith("EPERM")
    assert probe["linux"] is None and probe["thread"] is None
    assert got["chosen"] == "linux"
    reasons = got["reasons"]
    assert isinstance(reasons, dict) and reasons["uring"].startswith("EPERM")


def test_uring_enosys_and_no_aio_fall_back_to_threads() -> None:
    got = run_blocked({"io_uring_setup": errno.ENOSYS, "io_setup": errno.ENOSYS})
    probe = got["probe"]
    assert isinstance(probe, dict)
    assert probe["uring"].startswith("ENOSYS")
    assert probe["linux"].startswith("ENOSYS")
    assert got["chosen"] == "thread"


def test_aio_max_nr_exhausted_is_reported() -> None:
    got = run_blocked({"io_setup": errno.EAGAIN})
    probe = got["probe"]
    assert isinstance(probe, dict)
    assert probe["linux"].startswith("EAGAIN") and "aio-max-nr" in probe["linux"]
    assert probe["uring"] is None
    assert got["chosen"] == "uring"
