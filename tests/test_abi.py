"""Every struct size, field offset and constant of xaio._abi against the
installed kernel UAPI headers, compiled with the system C compiler."""

from __future__ import annotations

import ctypes
import errno
import importlib
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ABI_MODULES = ["xaio._abi.aio", "xaio._abi.uring"]

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _modules() -> list[ModuleType]:
    mods = []
    for name in ABI_MODULES:
        try:
            mods.append(importlib.import_module(name))
        except ModuleNotFoundError:
            continue
    return mods


def _c_program(mod: ModuleType) -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <sys/uio.h>"]
    lines += [f"#include <{h}>" for h in mod.ABI_HEADERS]
    lines.append("int main(void) {")
    for cname, cls in mod.ABI_STRUCTS.items():
        lines.append(f'  printf("size {cname} %zu\\n", sizeof({cname}));')
        for field in cls._fields_:
            fname = field[0]
            if fname.startswith("_"):
                continue
            lines.append(f'  printf("offset {cname} {fname} %zu\\n", offsetof({cname}, {fname}));')
    for const in mod.ABI_CONSTANTS:
        lines.append(f'  printf("const {const} %lld\\n", (long long)({const}));')
    lines.append("  return 0; }")
    return "\n".join(lines)


def _compile_and_run(src: str, tmp_path: Path) -> str:
    c = tmp_path / "abi.c"
    exe = tmp_path / "abi"
    c.write_text(src)
    assert CC is not None
    subprocess.run([CC, "-o", str(exe), str(c)], check=True, capture_output=True, text=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


def _known_to_header(mod: ModuleType, const: str, tmp_path: Path) -> bool:
    """True if *const* compiles against the headers (newer constants may not)."""
    src = "\n".join(
        [f"#include <{h}>" for h in mod.ABI_HEADERS]
        + [f"long long x = (long long)({const});", "int main(void){return 0;}"]
    )
    c = tmp_path / f"k_{const}.c"
    c.write_text(src)
    return (
        subprocess.run(
            [CC or "cc", "-c", "-o", str(tmp_path / f"k_{const}.o"), str(c)],
            capture_output=True,
        ).returncode
        == 0
    )


@pytest.mark.skipif(CC is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("mod", _modules(), ids=lambda m: m.__name__)
def test_layouts_and_constants_match_kernel_headers(mod: ModuleType, tmp_path: Path) -> None:
    # constants unknown to older installed headers are left out of the program
    consts = {k: v for k, v in mod.ABI_CONSTANTS.items() if _known_to_header(mod, k, tmp_path)}
    assert consts, "no constant compiled: headers missing?"

    class Sub:
        ABI_HEADERS = mod.ABI_HEADERS
        ABI_STRUCTS = mod.ABI_STRUCTS
        ABI_CONSTANTS = consts

    out = _compile_and_run(_c_program(Sub), tmp_path)  # type: ignore[arg-type]
    checked = 0
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "size":
            cname, value = " ".join(rest[:-1]), int(rest[-1])
            assert ctypes.sizeof(mod.ABI_STRUCTS[cname]) == value, cname
        elif kind == "offset":
            cname, fname, value = " ".join(rest[:-2]), rest[-2], int(rest[-1])
            assert getattr(mod.ABI_STRUCTS[cname], fname).offset == value, (cname, fname)
        else:
            name, value = rest[0], int(rest[1])
            assert mod.ABI_CONSTANTS[name] == value, name
        checked += 1
    assert checked > len(mod.ABI_STRUCTS)


def test_syscall_numbers_known_for_reference_platforms() -> None:
    from xaio._abi import SYSCALLS

    for arch in ("x86_64", "aarch64"):
        table = SYSCALLS[arch]
        for name in (
            "io_setup",
            "io_destroy",
            "io_submit",
            "io_getevents",
            "io_cancel",
            "io_pgetevents",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
        ):
            assert name in table, (arch, name)
        assert len(set(table.values())) == len(table), f"duplicate numbers in {arch}"


@pytest.mark.skipif(CC is None, reason="no C compiler on this machine")
def test_syscall_numbers_match_this_machine(tmp_path: Path) -> None:
    from xaio._abi import SYS

    if not SYS:
        pytest.skip("architecture without a syscall table in xaio")
    lines = ["#include <stdio.h>", "#include <sys/syscall.h>", "int main(void) {"]
    for name in SYS:
        lines.append(f'  printf("{name} %ld\\n", (long)SYS_{name});')
    lines.append("return 0; }")
    out = _compile_and_run("\n".join(lines), tmp_path)
    got = {n: int(v) for n, v in (line.split() for line in out.splitlines())}
    assert got == SYS


@pytest.mark.parametrize("one_tuple", [True, False])
def test_fstat_cached_is_fstat(
    tmp_path: Path, one_tuple: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_syscall.fstat_cached`` (statx with AT_STATX_DONT_SYNC, decoded by
    ``_syscall.stat_result``) gives ``os.fstat``'s answer on a local file
    system, for every kind of fd, and its errors; every field, whether the
    result is made from one tuple or from the sequence and a dict."""
    import os

    from xaio import _syscall
    from xaio._syscall import fstat_cached

    if _syscall._STAT_ONE_TUPLE or not one_tuple:
        monkeypatch.setattr(_syscall, "_STAT_ONE_TUPLE", one_tuple)
    else:
        pytest.skip("os.stat_result has other fields here")

    f = tmp_path / "f"
    f.write_bytes(b"x" * 5000)
    os.utime(f, ns=(1_000_000_123, 2_000_000_456))  # three times apart (ctime: now)
    r, w = os.pipe()
    fds = [os.open(f, os.O_RDONLY), os.open(tmp_path, os.O_RDONLY), r, w]
    fds.append(os.open("/dev/null", os.O_RDONLY))
    try:
        for fd in fds:
            got, want = fstat_cached(fd), os.fstat(fd)
            assert got == want
            for name in dir(want):
                if name.startswith("st_"):
                    assert getattr(got, name) == getattr(want, name), name
    finally:
        for fd in fds:
            os.close(fd)
    with pytest.raises(OSError) as e:
        fstat_cached(fds[0])
    assert e.value.errno == errno.EBADF
    with pytest.raises(OverflowError):
        fstat_cached(1 << 40)
    with pytest.raises(TypeError):
        fstat_cached("0")  # type: ignore[arg-type]
