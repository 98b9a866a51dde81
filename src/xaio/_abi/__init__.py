"""Mirror of the kernel's user-space ABI, in ctypes.

Nothing here makes a system call.  This package holds, per architecture, the
system call numbers xaio uses, and (in submodules) the struct layouts and
constants of ``linux/aio_abi.h`` (:mod:`xaio._abi.aio`) and
``linux/io_uring.h`` (:mod:`xaio._abi.uring`).  The test suite compiles a tiny
C program against the installed UAPI headers and checks every size, offset and
constant here against it.
"""

from __future__ import annotations

import os
import sys

__all__ = ["ARCH", "SYSCALLS", "SYS", "syscall_number"]

# Syscall numbers per architecture, from the kernel's
# arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h
# (which arm64 uses).
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "io_setup": 206,
        "io_destroy": 207,
        "io_getevents": 208,
        "io_submit": 209,
        "io_cancel": 210,
        "io_pgetevents": 333,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "eventfd2": 290,
        "statx": 332,
        "openat2": 437,
        "gettid": 186,
        "rt_sigqueueinfo": 129,
        "rt_tgsigqueueinfo": 297,
    },
    "aarch64": {
        "io_setup": 0,
        "io_destroy": 1,
        "io_submit": 2,
        "io_cancel": 3,
        "io_getevents": 4,
        "io_pgetevents": 292,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "eventfd2": 19,
        "statx": 291,
        "openat2": 437,
        "gettid": 178,
        "rt_sigqueueinfo": 138,
        "rt_tgsigqueueinfo": 240,
    },
}


def _arch() -> str:
    machine = os.uname().machine.lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    return machine


ARCH: str = _arch()
#: The syscall table of this machine (empty on an architecture we do not know,
#: in which case every raw syscall wrapper reports ENOSYS).
SYS: dict[str, int] = SYSCALLS.get(ARCH, {}) if sys.platform.startswith("linux") else {}


def syscall_number(name: str) -> int | None:
    """Return the number of syscall *name* on this machine, or None if unknown."""
    return SYS.get(name)
