"""xaio.Path answers as pathlib.Path: the same results and the same
exceptions (type, errno, file name) on files, directories, symlinks, missing
paths and permission errors, on every event-loop library and engine."""

from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import xaio
from tests.support import fds_after_a_first_run, open_fds, run

pytestmark = pytest.mark.timeout(120)


def make_tree(root: pathlib.Path) -> None:
    """A file, a directory with a child, symlinks to each, a dangling
    symlink and a symlink loop."""
    root.mkdir()
    (root / "f.txt").write_text("line 1\r\nline 2\n")
    (root / "d").mkdir()
    (root / "d" / "c.bin").write_bytes(b"\x00\x01")
    (root / "d" / "e").mkdir()
    (root / "lf").symlink_to("f.txt")
    (root / "ld").symlink_to("d")
    (root / "dangling").symlink_to("missing")
    (root / "loop").symlink_to("loop")


NAMES = ["f.txt", "d", "d/c.bin", "lf", "ld", "dangling", "loop", "missing", "f.txt/under"]


def norm(value: Any, root: pathlib.Path) -> Any:
    """A result made comparable: paths relative to *root*, stat results as
    the fields that identify the file."""
    if isinstance(value, xaio.Path):
        value = value.path
    if isinstance(value, (pathlib.PurePath, str)):
        return str(value).replace(str(root), "<root>")
    if isinstance(value, os.stat_result):
        return (value.st_mode, value.st_ino, value.st_dev, value.st_size, value.st_nlink)
    if isinstance(value, list):
        return sorted(norm(v, root) for v in value)
    return value


def outcome_of(fn: Callable[[Any], Any], path: Any, root: pathlib.Path) -> Any:
    """``fn(path)``'s result, or the exception's type, errno and file name."""
    try:
        return ("ok", norm(fn(path), root))
    except Exception as e:
        return (
            "raised",
            type(e),
            getattr(e, "errno", None),
            norm(getattr(e, "filename", None), root),
        )


async def async_outcome_of(
    fn: Callable[[Any], Awaitable[Any]], path: Any, root: pathlib.Path
) -> Any:
    try:
        return ("ok", norm(await fn(path), root))
    except Exception as e:
        return (
            "raised",
            type(e),
            getattr(e, "errno", None),
            norm(getattr(e, "filename", None), root),
        )


async def alist(it: Any) -> list[Any]:
    return [x async for x in it]


READERS: dict[str, tuple[Callable[[pathlib.Path], Any], Callable[[xaio.Path], Any]]] = {
    "stat": (lambda p: p.stat(), lambda p: p.stat()),
    "stat-nofollow": (
        lambda p: p.stat(follow_symlinks=False),
        lambda p: p.stat(follow_symlinks=False),
    ),
    "lstat": (lambda p: p.lstat(), lambda p: p.lstat()),
    "exists": (lambda p: p.exists(), lambda p: p.exists()),
    "is_file": (lambda p: p.is_file(), lambda p: p.is_file()),
    "is_dir": (lambda p: p.is_dir(), lambda p: p.is_dir()),
    "is_symlink": (lambda p: p.is_symlink(), lambda p: p.is_symlink()),
    "read_bytes": (lambda p: p.read_bytes(), lambda p: p.read_bytes()),
    "read_text": (lambda p: p.read_text(), lambda p: p.read_text()),
    "read_text-ascii": (
        lambda p: p.read_text(encoding="ascii", errors="replace"),
        lambda p: p.read_text(encoding="ascii", errors="replace"),
    ),
    "resolve": (lambda p: p.resolve(), lambda p: p.resolve()),
    "resolve-strict": (lambda p: p.resolve(strict=True), lambda p: p.resolve(strict=True)),
    "readlink": (lambda p: p.readlink(), lambda p: p.readlink()),
    "iterdir": (lambda p: list(p.iterdir()), lambda p: alist(p.iterdir())),
    "glob": (lambda p: list(p.glob("*")), lambda p: alist(p.glob("*"))),
    "rglob": (lambda p: list(p.rglob("c*")), lambda p: alist(p.rglob("c*"))),
    "samefile": (
        lambda p: p.samefile(p.parent / "f.txt"),
        lambda p: p.samefile(p.parent / "f.txt"),
    ),
    "absolute": (lambda p: p.absolute(), lambda p: p.absolute()),
}


def test_readers_answer_as_pathlib(lib: str, engine_name: str, tmp_path: pathlib.Path) -> None:
    root = tmp_path / "tree"
    make_tree(root)
    expected = {
        (name, method): outcome_of(sync, root / name, root)
        for name in NAMES
        for method, (sync, _) in READERS.items()
    }
    before = fds_after_a_first_run(lib)

    async def main() -> dict[tuple[str, str], Any]:
        return {
            (name, method): await async_outcome_of(asy, xaio.Path(root, name), root)
            for name in NAMES
            for method, (_, asy) in READERS.items()
        }

    got = run(lib, main)
    assert open_fds() == before
    diff = [f"{k}: {expected[k]} != {got[k]}" for k in expected if expected[k] != got[k]]
    assert not diff, "\n".join(diff)


def _writers() -> dict[str, tuple[Callable[[pathlib.Path], Any], Callable[[xaio.Path], Any]]]:
    def both(
        f: Callable[[Any], Any],
    ) -> tuple[Callable[[pathlib.Path], Any], Callable[[xaio.Path], Any]]:
        return f, f

    return {
        "mkdir": both(lambda p: p.mkdir()),
        "mkdir-parents": both(lambda p: (p / "x" / "y").mkdir(parents=True)),
        "mkdir-exist_ok": both(lambda p: p.mkdir(exist_ok=True)),
        "mkdir-child": both(lambda p: (p / "new").mkdir(mode=0o700)),
        "unlink": both(lambda p: p.unlink()),
        "unlink-missing_ok": both(lambda p: p.unlink(missing_ok=True)),
        "rmdir": both(lambda p: p.rmdir()),
        "rmdir-child": both(lambda p: (p / "e").rmdir()),
        "rename": both(lambda p: p.rename(p.with_name("renamed"))),
        "rename-over-dir": both(lambda p: p.rename(p.with_name("d"))),
        "replace": both(lambda p: p.replace(p.with_name("f.txt"))),
        "touch": both(lambda p: p.touch()),
        "touch-excl": both(lambda p: p.touch(exist_ok=False)),
        "write_bytes": both(lambda p: p.write_bytes(b"new bytes")),
        "write_text": both(lambda p: p.write_text("new\ntext", newline="\r\n")),
        "write_text-not-str": both(lambda p: p.write_text(b"bytes")),  # type: ignore[arg-type]
        "symlink_to": both(lambda p: p.symlink_to("f.txt")),
    }


def snapshot(root: pathlib.Path) -> dict[str, Any]:
    """What the tree holds: each entry's type and contents."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = pathlib.Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", p.stat().st_mode & 0o777)
            else:
                out[rel] = ("file", p.read_bytes(), p.stat().st_mode & 0o777)
    return out


def test_writers_answer_as_pathlib(lib: str, engine_name: str, tmp_path: pathlib.Path) -> None:
    """Each changing method on each kind of path: the same result or
    exception, and the same tree afterwards."""
    writers = _writers()
    cases = [(name, method) for name in NAMES for method in writers]
    expected: dict[tuple[str, str], Any] = {}
    for i, (name, method) in enumerate(cases):
        root = tmp_path / f"p{i}"
        make_tree(root)
        res = outcome_of(writers[method][0], root / name, root)
        expected[name, method] = (res, snapshot(root))

    async def main() -> dict[tuple[str, str], Any]:
        got = {}
        for i, (name, method) in enumerate(cases):
            root = tmp_path / f"x{i}"
            make_tree(root)
            res = await async_outcome_of(writers[method][1], xaio.Path(root, name), root)
            got[name, method] = (res, snapshot(root))
        return got

    got = run(lib, main)
    diff = [f"{k}: {expected[k]} != {got[k]}" for k in expected if expected[k] != got[k]]
    assert not diff, "\n".join(diff)


@pytest.mark.parametrize("fsync", [False, True])
def test_atomic_and_fsync_writes(
    lib: str, engine_name: str, tmp_path: pathlib.Path, fsync: bool
) -> None:
    """atomic=True gives the result and the contents of a plain write, leaves
    no temporary file behind, and fails as pathlib does (with the caller's
    path as the file name) when the directory is missing or the path is a
    directory."""
    target = tmp_path / "t.bin"
    target.write_bytes(b"old contents, longer than the new")
    before = fds_after_a_first_run(lib)

    async def main() -> None:
        p = xaio.Path(target)
        assert await p.write_bytes(b"new", atomic=True, fsync=fsync) == 3
        assert target.read_bytes() == b"new"
        assert await p.write_text("\u00e9t\u00e9", encoding="utf-8", atomic=True) == 3
        assert target.read_bytes() == "\u00e9t\u00e9".encode()
        assert await p.write_bytes(bytearray(b"plain"), fsync=fsync) == 5
        assert target.read_bytes() == b"plain"
        for bad in (tmp_path / "no" / "f", tmp_path):
            with pytest.raises(OSError) as want:
                pathlib.Path(bad).write_bytes(b"x")
            with pytest.raises(OSError) as got:
                await xaio.Path(bad).write_bytes(b"x", atomic=True)
            assert (type(got.value), got.value.errno, got.value.filename) == (
                type(want.value),
                want.value.errno,
                want.value.filename,
            )
        with pytest.raises(TypeError):
            await p.write_bytes("text", atomic=True)  # type: ignore[arg-type]

    run(lib, main)
    assert sorted(os.listdir(tmp_path)) == ["t.bin"]
    assert open_fds() == before


def test_pure_parts_pass_through() -> None:
    p = xaio.Path("/a/b", "c.tar.gz")
    q = pathlib.Path("/a/b/c.tar.gz")
    assert str(p) == os.fspath(p) == str(q)
    assert (p.name, p.suffix, p.suffixes, p.stem) == (q.name, q.suffix, q.suffixes, q.stem)
    assert (p.parts, p.root, p.anchor, p.drive) == (q.parts, q.root, q.anchor, q.drive)
    assert p.parent == xaio.Path("/a/b") and p.parent == q.parent
    assert [str(x) for x in p.parents] == [str(x) for x in q.parents]
    assert p / "d" == xaio.Path(q / "d") and isinstance(p / "d", xaio.Path)
    assert "/x" / xaio.Path("y") == xaio.Path("/x/y")
    assert p.joinpath("d", xaio.Path("e")).path == q.joinpath("d", "e")
    assert p.with_suffix(".zip").path == q.with_suffix(".zip")
    assert p.with_name("n").path == q.with_name("n")
    assert p.with_stem("s").path == q.with_stem("s")
    assert p.relative_to("/a").path == q.relative_to("/a")
    assert p.is_relative_to("/a") and not p.is_relative_to("/z")
    assert p.is_absolute() and not xaio.Path("r").is_absolute()
    assert p.match("*.gz") and p.as_posix() == q.as_posix() and p.as_uri() == q.as_uri()
    assert hash(p) == hash(xaio.Path(q)) and p == q
    assert sorted([xaio.Path("b"), xaio.Path("a")]) == [xaio.Path("a"), xaio.Path("b")]
    assert repr(xaio.Path("a")) == "Path('a')"
    with pytest.raises(ValueError):
        p.relative_to("/z")
    with pytest.raises(TypeError):
        xaio.Path(3)  # type: ignore[arg-type]


def test_open_returns_xaio_file(lib: str, tmp_path: pathlib.Path) -> None:
    target = tmp_path / "o.txt"

    async def main() -> None:
        p = xaio.Path(target)
        async with p.open("w") as f:
            assert isinstance(f, xaio.AsyncTextFile)
            await f.write("abc")
        f2 = await p.open("rb")
        assert isinstance(f2, xaio.AsyncFile)
        assert await f2.read() == b"abc"
        await f2.close()
        assert (await xaio.Path.cwd()).path == pathlib.Path.cwd()
        assert (await xaio.Path.home()).path == pathlib.Path.home()

    run(lib, main)


def _permission_cases(base: pathlib.Path) -> list[tuple[str, str]]:
    return [
        ("closed/x", "exists"),
        ("closed/x", "is_file"),
        ("closed/x", "read_bytes"),
        ("closed", "iterdir"),
        ("noread", "iterdir"),
        ("secret", "read_bytes"),
        ("secret", "read_text"),
        ("secret", "write_bytes"),
        ("secret", "write_bytes-atomic"),
        ("closed/new", "mkdir"),
        ("closed/x", "unlink"),
        ("closed/x", "stat"),
    ]


PERMISSION_METHODS: dict[str, Callable[[Any], Any]] = {
    "exists": lambda p: p.exists(),
    "is_file": lambda p: p.is_file(),
    "stat": lambda p: p.stat(),
    "read_bytes": lambda p: p.read_bytes(),
    "read_text": lambda p: p.read_text(),
    "iterdir": lambda p: list(p.iterdir()) if isinstance(p, pathlib.Path) else alist(p.iterdir()),
    "write_bytes": lambda p: p.write_bytes(b"x"),
    "write_bytes-atomic": lambda p: (
        p.write_bytes(b"x") if isinstance(p, pathlib.Path) else p.write_bytes(b"x", atomic=True)
    ),
    "mkdir": lambda p: p.mkdir(),
    "unlink": lambda p: p.unlink(),
}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_permission_errors_as_pathlib(lib: str, engine_name: str) -> None:
    """As an unprivileged user (a forked child that dropped root), on a
    directory it may not enter or read and a file it may not open: the same
    PermissionError (or False) as pathlib, on every engine."""
    base = pathlib.Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        base.chmod(0o777)
        (base / "closed").mkdir(mode=0o000)
        (base / "noread").mkdir(mode=0o311)
        (base / "secret").write_bytes(b"s")
        (base / "secret").chmod(0o000)
        cases = _permission_cases(base)
        import concurrent.futures.thread  # noqa: F401 (the child may not read the stdlib's files)

        async def warm() -> None:  # the modules the child will need, imported here
            for n, m in cases:
                if m.startswith(("read", "exists", "is_", "stat", "iterdir")):
                    await async_outcome_of(PERMISSION_METHODS[m], xaio.Path(base, n), base)

        run(lib, warm)

        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: drop root, compare, report through the pipe
            code = 1
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                expected = [outcome_of(PERMISSION_METHODS[m], base / n, base) for n, m in cases]

                async def main() -> list[Any]:
                    return [
                        await async_outcome_of(PERMISSION_METHODS[m], xaio.Path(base, n), base)
                        for n, m in cases
                    ]

                got = run(lib, main)
                report = [
                    f"{c}: {e} != {g}"
                    for c, e, g in zip(cases, expected, got, strict=True)
                    if e != g
                ]
                report += [
                    f"{c}: no error"
                    for c, e in zip(cases, expected, strict=True)
                    if e[0] == "ok" and e[1]
                ]
                os.write(w, ("\n".join(report) or "same").encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            answer = f.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert answer == "same", answer
    finally:
        for p in (base / "closed", base / "noread"):
            p.chmod(0o755)
        subprocess.run(["rm", "-rf", str(base)], check=True)
