"""``xaio.os`` and ``xaio.os.path`` side by side with :mod:`os` and
:mod:`os.path`, on every engine.

Every function is called with the same arguments both ways -- existing and
missing paths, directories, symlinks (dangling and looping ones too), fds
open and not open, ``dir_fd``, str, bytes and ``PathLike`` paths, a
read-only bind mount (EROFS: root ignores permission bits), wrong types --
and the outcomes must be equal: the result (a ``stat_result`` field by
field), or the exception's type, and for an ``OSError`` its errno, message
and file names.  Functions that change the file system run on two identical
trees, one per side, and the trees must be equal afterwards.  Hypothesis
draws further paths from the tree's names.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xaio
from tests.support import ENGINES, run, skip_unavailable
from xaio._async._current import current_driver

pytestmark = pytest.mark.timeout(120)

STAT_FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size",
               "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blksize", "st_blocks",
               "st_rdev", "st_atime", "st_mtime", "st_ctime")  # fmt: skip

#: the names of ``aiofiles.os.__all__`` and ``aiofiles.os.path.__all__``
AIOFILES_OS = ["path", "stat", "rename", "renames", "replace", "remove", "unlink", "mkdir",
               "makedirs", "rmdir", "removedirs", "symlink", "readlink", "listdir", "scandir",
               "access", "wrap", "getcwd", "link", "sendfile", "statvfs"]  # fmt: skip
AIOFILES_OS_PATH = ["abspath", "getatime", "getctime", "getmtime", "getsize", "exists", "isdir",
                    "isfile", "islink", "ismount", "samefile", "sameopenfile"]  # fmt: skip


# ---------------------------------------------------------------------------------
# outcomes
# ---------------------------------------------------------------------------------


def norm(value: Any) -> Any:
    """A comparable form of a result."""
    if isinstance(value, os.stat_result):
        return ("stat_result", tuple(getattr(value, f) for f in STAT_FIELDS))
    if isinstance(value, os.statvfs_result):  # free counts move with other processes
        return ("statvfs", value.f_bsize, value.f_frsize, value.f_blocks, value.f_files,
                value.f_flag, value.f_namemax)  # fmt: skip
    if isinstance(value, list):
        return sorted(value)
    return value


def failure(e: BaseException) -> tuple[Any, ...]:
    if isinstance(e, OSError):
        return (type(e), e.errno, e.strerror, e.filename, e.filename2)
    return (type(e),)


def outcome(fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[Any, ...]:
    try:
        return ("ok", norm(fn(*args, **kw)))
    except Exception as e:
        return ("raised", *failure(e))


async def aoutcome(fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> tuple[Any, ...]:
    try:
        return ("ok", norm(await fn(*args, **kw)))
    except Exception as e:
        return ("raised", *failure(e))


def os_twin(name: str) -> Callable[..., Any]:
    """The os or os.path function that xaio.os.NAME mirrors."""
    return getattr(os, name) if hasattr(os, name) else getattr(os.path, name)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------
# the world: a tree, a read-only bind mount, one event loop per engine
# ---------------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    """f, d/ (with g, e/), empty/, ln -> f, lnd -> d, dangling -> missing, loop -> loop."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "f").write_bytes(b"0123456789")
    (root / "d").mkdir()
    (root / "d" / "g").write_bytes(b"g")
    (root / "d" / "e").mkdir()
    (root / "empty").mkdir()
    (root / "ln").symlink_to("f")
    (root / "lnd").symlink_to("d")
    (root / "dangling").symlink_to("missing")
    (root / "loop").symlink_to("loop")


def snapshot(root: Path) -> list[tuple[str, str, Any]]:
    """What is in the tree: relative path, kind, content or link target."""
    out: list[tuple[str, str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if os.path.islink(p):
                out.append((rel, "link", os.readlink(p).replace(str(root), "<root>")))
            elif os.path.isdir(p):
                out.append((rel, "dir", oct(st.st_mode & 0o7777)))
            else:
                out.append((rel, "file", (Path(p).read_bytes(), st.st_nlink)))
    return sorted(out)


@pytest.fixture(scope="module")
def ro_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """A read-only bind mount of a small tree (None where mounting is refused)."""
    base = tmp_path_factory.mktemp("ro")
    make_tree(base / "src")
    mnt = base / "ro"
    mnt.mkdir()
    ok = False
    if os.geteuid() == 0 and shutil.which("mount"):
        a = subprocess.run(["mount", "--bind", str(base / "src"), str(mnt)],
                           capture_output=True, timeout=10, check=False)  # fmt: skip
        if a.returncode == 0:
            b = subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)],
                               capture_output=True, timeout=10, check=False)  # fmt: skip
            ok = b.returncode == 0
            if not ok:
                subprocess.run(["umount", str(mnt)], capture_output=True, timeout=10, check=False)
    try:
        yield mnt if ok else None
    finally:
        if ok:
            subprocess.run(["umount", str(mnt)], capture_output=True, timeout=10, check=False)


class World:
    """A persistent event loop whose default engine is *engine*, and a tree."""

    def __init__(self, engine: str, root: Path, ro: Path | None) -> None:
        self.engine = engine
        self.root = root
        self.ro = ro
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture(scope="module", params=ENGINES)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ro_mount: Path | None
) -> Iterator[World]:
    name = str(request.param)
    skip_unavailable(name)
    root = tmp_path_factory.mktemp(f"tree-{name}")
    make_tree(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XAIO_ENGINE", name)
        w = World(name, root, ro_mount)

        async def check() -> None:
            assert current_driver().engine.name == name

        w.run(check())
        try:
            yield w
        finally:
            w.close()


@contextlib.contextmanager
def fds(root: Path) -> Iterator[dict[str, int]]:
    """Open fds on the tree: its directory, a file, and a path-only (O_PATH) one."""
    opened = {
        "dirfd": os.open(root, os.O_RDONLY | os.O_DIRECTORY),
        "filefd": os.open(root / "f", os.O_RDONLY),
        "pathfd": os.open(root / "d", os.O_PATH),
    }
    try:
        yield opened
    finally:
        for fd in opened.values():
            os.close(fd)


NAMES = ["f", "d", "d/g", "d/e", "empty", "ln", "lnd", "dangling", "loop", "missing", "f/",
         "d/", "ln/", "lnd/", "dangling/", "f/x", "missing/x", "d/../f", "", "."]  # fmt: skip
NOT_OPEN = 987


def path_args(w: World, fd: dict[str, int]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """(args, kwargs) for a one-path function: every shape of path."""
    out: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for n in NAMES:
        p = str(w.root / n) if n else ""
        if n.endswith("/"):
            p += "/"
        out += [((p,), {}), ((os.fsencode(p),), {}), ((Path(p),), {})]
        out += [((n,), {"dir_fd": fd["dirfd"]}), ((os.fsencode(n),), {"dir_fd": fd["dirfd"]})]
    out += [
        (("f",), {"dir_fd": fd["filefd"]}),  # ENOTDIR
        (("g",), {"dir_fd": fd["pathfd"]}),  # an O_PATH directory fd works
        (("f",), {"dir_fd": NOT_OPEN}),
        (("f",), {"dir_fd": -1}),
        ((str(w.root / "f"),), {"dir_fd": NOT_OPEN}),  # absolute: dir_fd unused
        (("f",), {"dir_fd": 2**31}),
        (("f",), {"dir_fd": True}),
        (("f",), {"dir_fd": 1.5}),
        (("f",), {"dir_fd": "3"}),
    ]
    for v in (fd["filefd"], fd["dirfd"], fd["pathfd"], NOT_OPEN, -1, -100, 2**31, 2**70, True):
        out += [((v,), {})]
    out += [((v,), {"dir_fd": fd["dirfd"]}) for v in (fd["filefd"],)]
    for garbage in (None, 1.5, "a\0b", b"a\0b", bytearray(os.fsencode(w.root)), object()):
        out += [((garbage,), {})]
    if w.ro is not None:
        out += [((str(w.ro / "f"),), {}), ((str(w.ro / "d"),), {})]
    return out


def compare(w: World, name: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
    xfn = getattr(xaio.os.path, name, None) or getattr(xaio.os, name)
    want = outcome(os_twin(name), *args, **kw)
    got = w.run(aoutcome(xfn, *args, **kw))
    assert got == want, f"{w.engine}: xaio.os.{name}(*{args!r}, **{kw!r})"


# ---------------------------------------------------------------------------------
# functions that look: on one shared tree
# ---------------------------------------------------------------------------------

#: name -> which extra keyword sets to try (besides none)
LOOKERS: dict[str, list[dict[str, Any]]] = {
    "stat": [{"follow_symlinks": False}],
    "lstat": [],
    "exists": [],
    "lexists": [],
    "isfile": [],
    "isdir": [],
    "islink": [],
    "ismount": [],
    "getsize": [],
    "getmtime": [],
    "getatime": [],
    "getctime": [],
    "readlink": [],
    "listdir": [],
    "statvfs": [],
    "abspath": [],
}
NO_DIR_FD = {"exists", "lexists", "isfile", "isdir", "islink", "ismount", "getsize",
             "getmtime", "getatime", "getctime", "listdir", "statvfs", "abspath"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(LOOKERS))
def test_lookers_match_os(world: World, name: str) -> None:
    with fds(world.root) as fd:
        for args, kw in path_args(world, fd):
            if "dir_fd" in kw and name in NO_DIR_FD:
                continue
            compare(world, name, args, kw)
            for extra in LOOKERS[name]:
                compare(world, name, args, {**kw, **extra})


def test_access_matches_os(world: World) -> None:
    with fds(world.root) as fd:
        for args, kw in path_args(world, fd):
            for mode in (os.F_OK, os.R_OK, os.W_OK | os.X_OK):
                compare(world, "access", (*args, mode), kw)
                compare(world, "access", (*args, mode), {**kw, "follow_symlinks": False})
                compare(world, "access", (*args, mode), {**kw, "effective_ids": True})
        compare(world, "access", (str(world.root), "r"), {})


def test_samefile_and_sameopenfile_match_os(world: World) -> None:
    with fds(world.root) as fd:
        f, ln = str(world.root / "f"), str(world.root / "ln")
        for a, b in [(f, ln), (f, str(world.root / "d")), (f, "missing"), (fd["filefd"], f),
                     (NOT_OPEN, f), (f, None), (os.fsencode(f), Path(ln))]:  # fmt: skip
            compare(world, "samefile", (a, b), {})
        other = os.open(world.root / "f", os.O_RDONLY)
        try:
            ffd = fd["filefd"]
            for a, b in [(ffd, other), (ffd, fd["dirfd"]), (ffd, NOT_OPEN), (-1, 0),
                         (2**31, 0), (True, 1), (f, 0), (None, 0), (1.5, 0)]:  # fmt: skip
                compare(world, "sameopenfile", (a, b), {})
        finally:
            os.close(other)


def test_getcwd_matches_os(world: World) -> None:
    compare(world, "getcwd", (), {})


def scanned(entries: Any) -> list[tuple[Any, ...]]:
    out = []
    for e in entries:
        out.append((e.name, e.path, e.inode(), e.is_dir(), e.is_file(), e.is_symlink(),
                    e.is_dir(follow_symlinks=False)))  # fmt: skip
    return sorted(out)


def test_scandir_matches_os_and_is_a_context_manager(world: World) -> None:
    async def xscan(*args: Any) -> list[tuple[Any, ...]]:
        with await xaio.os.scandir(*args) as it:
            return scanned(it)

    def oscan(*args: Any) -> list[tuple[Any, ...]]:
        with os.scandir(*args) as it:
            return scanned(it)

    with fds(world.root) as fd:
        for args in [(str(world.root),), (os.fsencode(world.root),), (world.root,),
                     (str(world.root / "d"),), (fd["dirfd"],), (str(world.root / "f"),),
                     (str(world.root / "missing"),), (NOT_OPEN,), (1.5,), ()]:  # fmt: skip
            assert world.run(aoutcome(xscan, *args)) == outcome(oscan, *args), args

    async def closing() -> None:
        it = await xaio.os.scandir(world.root)
        first = next(it)
        assert first.name in os.listdir(world.root)
        it.close()
        assert list(it) == []
        with await xaio.os.scandir(world.root) as it2:
            assert iter(it2) is it2
        assert list(it2) == []  # closed on exit, as os.scandir's

    world.run(closing())


NAME_PARTS = st.sampled_from(["f", "d", "g", "e", "empty", "ln", "lnd", "dangling", "loop",
                              "missing", "..", ".", "", "f\0"])  # fmt: skip


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(NAME_PARTS, min_size=0, max_size=4), absolute=st.booleans(),
       as_bytes=st.booleans(), trailing=st.booleans())  # fmt: skip
def test_random_paths_match_os(
    world: World, parts: list[str], absolute: bool, as_bytes: bool, trailing: bool
) -> None:
    rel = "/".join(parts) + ("/" if trailing else "")
    p: Any = os.path.join(str(world.root), rel) if absolute else rel
    if as_bytes:
        p = os.fsencode(p)
    with fds(world.root) as fd:
        kw = {} if absolute else {"dir_fd": fd["dirfd"]}
        for name in ("stat", "lstat", "readlink"):
            compare(world, name, (p,), kw)
        compare(world, "stat", (p,), {**kw, "follow_symlinks": False})
        compare(world, "access", (p, os.R_OK), kw)
        if absolute:
            for name in ("exists", "lexists", "isfile", "isdir", "islink", "getsize"):
                compare(world, name, (p,), {})


# ---------------------------------------------------------------------------------
# functions that change the tree: each side on its own copy
# ---------------------------------------------------------------------------------


def change_and_compare(
    tmp_path: Path,
    w: World,
    name: str,
    make_args: Callable[[Path], tuple[tuple[Any, ...], dict[str, Any]]],
) -> None:
    """Run os.NAME on tree a and xaio.os.NAME on tree b: same outcome (file
    names compared relative to each tree), same trees afterwards."""
    a, b = tmp_path / "a", tmp_path / "b"
    for t in (a, b):
        shutil.rmtree(t, ignore_errors=True)
        make_tree(t)

    def rel(o: tuple[Any, ...], root: Path) -> tuple[Any, ...]:
        def strip(v: Any) -> Any:
            if isinstance(v, str):
                return v.replace(str(root), "<root>")
            if isinstance(v, bytes):
                return v.replace(os.fsencode(root), b"<root>")
            return v

        return tuple(strip(v) for v in o)

    with fds(a) as fa, fds(b) as fb:
        aargs, akw = make_args_in(make_args, a, fa)
        bargs, bkw = make_args_in(make_args, b, fb)
        want = rel(outcome(os_twin(name), *aargs, **akw), a)
        xfn = getattr(xaio.os, name)
        got = rel(w.run(aoutcome(xfn, *bargs, **bkw)), b)
    desc = f"{w.engine}: xaio.os.{name}(*{bargs!r}, **{bkw!r})"
    assert got == want, desc
    assert snapshot(b) == snapshot(a), desc


def make_args_in(
    make: Callable[..., tuple[tuple[Any, ...], dict[str, Any]]], root: Path, fd: dict[str, int]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return make(root, fd)


def at(root: Path, name: str) -> str:
    """*name* under *root*, a trailing slash kept ("" stays "")."""
    return f"{root}/{name}" if name else ""


def one_path_cases(ro: Path | None) -> list[Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]]:
    cases: list[Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]] = []
    for n in ["f", "d", "d/e", "empty", "ln", "lnd", "dangling", "loop", "missing", "new",
              "f/x", "missing/x", "d/", "empty/", "f/", "new/a/b", ""]:  # fmt: skip
        cases.append(lambda r, fd, n=n: ((at(r, n),), {}))
        cases.append(lambda r, fd, n=n: ((os.fsencode(at(r, n)),), {}))
        cases.append(lambda r, fd, n=n: ((n,), {"dir_fd": fd["dirfd"]}))
    cases += [
        lambda r, fd: (("f",), {"dir_fd": fd["filefd"]}),
        lambda r, fd: (("x",), {"dir_fd": NOT_OPEN}),
        lambda r, fd: (("x",), {"dir_fd": 1.5}),
        lambda r, fd: (("x",), {"dir_fd": 2**40}),
        lambda r, fd: ((fd["filefd"],), {}),
        lambda r, fd: ((None,), {}),
        lambda r, fd: (("a\0b",), {}),
        lambda r, fd: ((Path(r / "new"),), {}),
    ]
    if ro is not None:
        cases += [lambda r, fd, n=n: ((str(ro / n),), {}) for n in ("f", "d/e", "new", "empty")]
    return cases


@pytest.mark.parametrize("name", ["mkdir", "rmdir", "remove", "unlink", "makedirs", "removedirs"])
def test_one_path_changers_match_os(tmp_path: Path, world: World, name: str) -> None:
    for make in one_path_cases(world.ro):
        _args, kw = make(tmp_path, {"dirfd": 0, "filefd": 0})
        if "dir_fd" in kw and name in ("makedirs", "removedirs"):  # they take none
            continue
        change_and_compare(tmp_path, world, name, make)


def test_mkdir_modes_match_os(tmp_path: Path, world: World) -> None:
    for mode in (0o700, 0o7777, 0, -1, True, 2**40, -(2**40), "a", 1.5, None):
        change_and_compare(
            tmp_path, world, "mkdir", lambda r, fd, m=mode: ((str(r / "new"), m), {})
        )
    for mode in (0o700, 0o777):
        for exist_ok in (False, True):
            for n in ("new/a/b", "d/e", "f", "d/./x", "new/."):
                change_and_compare(
                    tmp_path, world, "makedirs",
                    lambda r, fd, m=mode, e=exist_ok, n=n: ((str(r / n), m, e), {}),
                )  # fmt: skip


def two_path_cases(ro: Path | None) -> list[Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]]:
    pairs = [("f", "new"), ("f", "d/g"), ("f", "d"), ("d", "f"), ("d", "empty"), ("empty", "d"),
             ("d", "d/e/x"), ("missing", "x"), ("f", "missing/x"), ("ln", "x"),
             ("dangling", "x"), ("f", "f"), ("d/", "x"), ("f/", "x"), ("f", "x/"), ("lnd", "x"),
             ("f", ""), ("", "x")]  # fmt: skip
    cases: list[Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]] = []
    for s, t in pairs:
        cases.append(lambda r, fd, s=s, t=t: ((at(r, s), at(r, t)), {}))
        cases.append(lambda r, fd, s=s, t=t: ((os.fsencode(at(r, s)), Path(at(r, t))), {}))
    cases += [
        lambda r, fd: (("f", "new"), {"src_dir_fd": fd["dirfd"], "dst_dir_fd": fd["dirfd"]}),
        lambda r, fd: (("g", "../new"), {"src_dir_fd": fd["pathfd"], "dst_dir_fd": fd["pathfd"]}),
        lambda r, fd: (("f", "new"), {"src_dir_fd": NOT_OPEN}),
        lambda r, fd: (("f", "new"), {"src_dir_fd": fd["dirfd"], "dst_dir_fd": fd["filefd"]}),
        lambda r, fd: (("f", "new"), {"src_dir_fd": 1.5}),
        lambda r, fd: ((fd["filefd"], "new"), {}),
        lambda r, fd: ((str(r / "f"), None), {}),
        lambda r, fd: ((str(r / "f"), "a\0b"), {}),
    ]
    if ro is not None:
        cases += [
            lambda r, fd: ((str(ro / "f"), str(ro / "new")), {}),
            lambda r, fd: ((str(r / "f"), str(ro / "new")), {}),  # EXDEV
            lambda r, fd: ((str(ro / "f"), str(r / "new")), {}),
        ]
    return cases


@pytest.mark.parametrize("name", ["rename", "replace", "renames", "link", "symlink"])
def test_two_path_changers_match_os(tmp_path: Path, world: World, name: str) -> None:
    for make in two_path_cases(world.ro):
        _args, kw = make(tmp_path, {"dirfd": 0, "filefd": 0, "pathfd": 0})
        if kw and name in ("renames",):
            continue
        if kw and name == "symlink":
            if "dst_dir_fd" not in kw:
                continue
            make = (lambda m: lambda r, fd: (m(r, fd)[0], {"dir_fd": m(r, fd)[1]["dst_dir_fd"]}))(
                make
            )
        change_and_compare(tmp_path, world, name, make)
    if name == "link":
        for follow in (False, True):
            change_and_compare(
                tmp_path, world, "link",
                lambda r, fd, f=follow: ((str(r / "ln"), str(r / "x")), {"follow_symlinks": f}),
            )  # fmt: skip


# ---------------------------------------------------------------------------------
# sendfile
# ---------------------------------------------------------------------------------


def test_sendfile_between_files_matches_os(tmp_path: Path, world: World) -> None:
    data = os.urandom(100_000)
    src = tmp_path / "src"
    src.write_bytes(data)

    def attempt(side: str, offset: Any, count: Any, what: str) -> tuple[Any, ...]:
        out_path = tmp_path / f"out-{side}"
        out_path.write_bytes(b"")
        i = os.open(src, os.O_RDONLY)
        o = os.open(out_path, os.O_WRONLY if what != "ro-out" else os.O_RDONLY)
        os.lseek(i, 7, os.SEEK_SET)
        try:
            out_fd, in_fd = o, i
            if what == "in-not-open":
                in_fd = NOT_OPEN
            elif what == "out-not-open":
                out_fd = NOT_OPEN
            elif what == "in-dir":
                in_fd = os.open(tmp_path, os.O_RDONLY)
            args = (out_fd, in_fd, offset, count)
            if side == "os":
                res = outcome(os.sendfile, *args)
            else:
                res = world.run(aoutcome(xaio.os.sendfile, *args))
            if what == "in-dir":
                os.close(in_fd)
            return res, os.lseek(i, 0, os.SEEK_CUR), out_path.read_bytes()
        finally:
            os.close(i)
            os.close(o)

    for offset in (0, 5, None, 99_990, 200_000, -1, 1.5, "0"):
        for count in (0, 10, 1 << 20, -1, None):
            for what in ("plain", "in-not-open", "out-not-open", "ro-out", "in-dir"):
                want = attempt("os", offset, count, what)
                got = attempt("xaio", offset, count, what)
                assert got == want, (world.engine, offset, count, what)


@pytest.mark.parametrize("lib", ["asyncio", "trio"])
def test_sendfile_to_a_full_nonblocking_socket_waits_in_the_loop(
    tmp_path: Path, lib: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.sendfile would raise BlockingIOError; xaio waits for writability in
    the event loop (which keeps running), then sends as os.sendfile does."""
    monkeypatch.setenv("XAIO_ENGINE", "thread")
    data = os.urandom(1 << 20)
    src = tmp_path / "src"
    src.write_bytes(data)
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        filler = b"x" * 65536
        while True:  # fill a's send buffer and b's receive buffer
            try:
                a.send(filler)
            except BlockingIOError:
                break
        fd = os.open(src, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                os.sendfile(a.fileno(), fd, 0, 4096)
            drained = threading.Event()
            received = bytearray()

            def drain() -> None:  # the peer starts reading only once the loop ticked
                drained.wait(30)
                b.settimeout(10)
                while True:
                    try:
                        chunk = b.recv(1 << 20)
                    except TimeoutError:
                        return
                    if not chunk:
                        return
                    received.extend(chunk)

            reader = threading.Thread(target=drain)
            reader.start()
            ticks = 0

            async def main() -> int:
                nonlocal ticks

                async def sender() -> int:
                    return await xaio.os.sendfile(a.fileno(), fd, 0, len(data))

                if lib == "trio":
                    import trio

                    result: list[int] = []

                    async def send_into() -> None:
                        result.append(await sender())

                    async with trio.open_nursery() as n:
                        n.start_soon(send_into)
                        while ticks < 20:  # the loop runs while sendfile waits
                            await trio.sleep(0.005)
                            ticks += 1
                        drained.set()
                    return result[0]
                task = asyncio.ensure_future(sender())
                while ticks < 20:
                    await asyncio.sleep(0.005)
                    ticks += 1
                assert not task.done()
                drained.set()
                return await task

            sent = run(lib, main)
            a.shutdown(socket.SHUT_WR)
            reader.join(30)
        finally:
            os.close(fd)
        assert ticks == 20
        assert 0 < sent <= len(data)
        skip = received.find(data[:64])
        assert skip >= 0 and bytes(received[skip:]) == data[:sent]
    finally:
        a.close()
        b.close()


def test_sendfile_to_a_pipe_matches_os(tmp_path: Path, world: World) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"abcdefghij" * 10)
    for nonblock in (False, True):
        results = []
        for side in ("os", "xaio"):
            r, w = os.pipe()
            os.set_blocking(w, not nonblock)
            i = os.open(src, os.O_RDONLY)
            try:
                args = (w, i, 3, 50)
                res = (outcome(os.sendfile, *args) if side == "os"
                       else world.run(aoutcome(xaio.os.sendfile, *args)))  # fmt: skip
                results.append((res, os.read(r, 1000)))
            finally:
                for x in (r, w, i):
                    os.close(x)
        assert results[0] == results[1], nonblock


# ---------------------------------------------------------------------------------
# the surface
# ---------------------------------------------------------------------------------


def test_aiofiles_names_are_all_there() -> None:
    for n in AIOFILES_OS:
        assert hasattr(xaio.os, n), n
    for n in AIOFILES_OS_PATH:
        assert hasattr(xaio.os.path, n), n
        assert asyncio.iscoroutinefunction(getattr(xaio.os.path, n)), n
    for n in set(AIOFILES_OS) - {"path", "wrap"}:
        assert asyncio.iscoroutinefunction(getattr(xaio.os, n)), n


def test_wrap_runs_in_a_worker_thread(world: World) -> None:
    caller = threading.get_ident()

    def blocking(x: int, *, y: int) -> tuple[int, bool]:
        time.sleep(0.01)
        return x + y, threading.get_ident() != caller

    astat = xaio.os.wrap(os.stat)
    assert xaio.os.wrap(blocking).__name__ == "blocking"
    assert world.run(xaio.os.wrap(blocking)(1, y=2)) == (3, True)
    assert norm(world.run(astat(world.root))) == norm(os.stat(world.root))
    with pytest.raises(FileNotFoundError):
        world.run(astat(world.root / "missing"))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("lib", ["asyncio", "trio"])
def test_stat_of_an_fd_that_is_not_open(
    engine: str, lib: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reported case, on every engine, under asyncio and trio."""
    skip_unavailable(engine)
    monkeypatch.setenv("XAIO_ENGINE", engine)

    async def main() -> None:
        with pytest.raises(OSError) as ei:
            await xaio.os.stat(NOT_OPEN)
        assert ei.value.errno == errno.EBADF and ei.value.filename == NOT_OPEN
        assert await xaio.os.path.exists(NOT_OPEN) is False
        assert await xaio.os.path.isdir(NOT_OPEN) is False
        with pytest.raises(ValueError):
            await xaio.os.stat(3, follow_symlinks=False)
        with pytest.raises(TypeError):
            await xaio.os.lstat(0)
        with pytest.raises(TypeError):
            await xaio.os.path.islink(0)

    run(lib, main)


def test_sendfile_cancelled_while_waiting_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XAIO_ENGINE", "thread")
    src = tmp_path / "src"
    src.write_bytes(b"D" * 100_000)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        queued = 0
        while True:
            try:
                queued += a.send(b"x" * 65536)
            except BlockingIOError:
                break
        fd = os.open(src, os.O_RDONLY)
        try:

            async def main() -> None:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(xaio.os.sendfile(a.fileno(), fd, None, 100_000), 0.05)

            run("asyncio", main)
            assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # in_fd's position did not move
        finally:
            os.close(fd)
        got = 0
        while True:
            try:
                chunk = b.recv(1 << 20)
            except BlockingIOError:
                break
            assert set(chunk) == {ord("x")}
            got += len(chunk)
        assert got == queued
    finally:
        a.close()
        b.close()
