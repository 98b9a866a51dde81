"""A FUSE file system for fault injection: a passthrough over a backing
directory whose requests can be delayed, failed or cut short, per file and per
request kind, from the test that mounted it.

Run as a program (``python _fusefs.py BACKING MOUNTPOINT RULES [--cached] [--names]``)
it is the daemon: fusepy over libfuse 2, multithreaded (concurrent requests
are served concurrently, so four requests delayed by 1 s take 1 s, not 4 s),
in the foreground.  Mounted with ``direct_io`` unless ``--cached``: every
read and write then reaches the daemon instead of the page cache.  The
kernel keeps no names or attributes (entry and attribute timeouts of 0, so
every lookup asks the daemon) unless ``--names``: then it keeps both for
60 s, as most FUSE file systems (sshfs...) let it.

The test side is :class:`FaultFS` (the ``faultfs`` fixture in
``tests/faults/conftest.py``): :meth:`FaultFS.inject` writes the rules file
(JSON, replaced atomically) that the daemon reads at every request.  A rule::

    {"path": "slow.bin",          # fnmatch pattern on the path inside the mount
     "ops": ["read", "write"],    # request kinds (see OPS); empty: all
     "delay": 1.0,                # seconds to sleep before serving
     "errno": 5,                  # fail with this errno (after the delay)
     "short": 100,                # serve at most this many bytes (read/write)
     "from": 0, "to": null,       # only requests whose offset is in [from, to)
     "count": null}               # only the first *count* matching requests

The first rule that matches a request decides what happens to it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: The request kinds a rule can name.
OPS = frozenset(
    {"open", "create", "read", "write", "flush", "fsync", "release", "truncate", "getattr"}
)


class Rules:
    """The daemon's view of the rules file: re-read at every request (a small
    file in the page cache: tens of microseconds), with per-rule counts."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._generation = -1
        self._used: dict[int, int] = {}

    def match(self, path: str, op: str, offset: int | None = None) -> dict[str, Any] | None:
        try:
            with open(self._path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return None
        with self._lock:
            if doc["generation"] != self._generation:
                self._generation = doc["generation"]
                self._used = {}
            for i, rule in enumerate(doc["rules"]):
                if rule.get("ops") and op not in rule["ops"]:
                    continue
                if not fnmatch.fnmatch(path.lstrip("/"), rule.get("path", "*")):
                    continue
                if offset is not None:
                    if offset < rule.get("from", 0):
                        continue
                    if rule.get("to") is not None and offset >= rule["to"]:
                        continue
                count = rule.get("count")
                if count is not None:
                    if self._used.get(i, 0) >= count:
                        continue
                    self._used[i] = self._used.get(i, 0) + 1
                return dict(rule)
        return None


def _daemon(backing: str, mountpoint: str, rules_path: str, cached: bool, names: bool) -> None:
    from fuse import FUSE, FuseOSError, Operations

    rules = Rules(rules_path)

    def fault(path: str, op: str, offset: int | None = None) -> int | None:
        """Apply the matching rule's delay and errno; return its short limit."""
        rule = rules.match(path, op, offset)
        if rule is None:
            return None
        if rule.get("delay"):
            time.sleep(rule["delay"])
        if rule.get("errno"):
            raise FuseOSError(rule["errno"])
        short = rule.get("short")
        return None if short is None else int(short)

    class Passthrough(Operations):
        def _real(self, path: str) -> str:
            return os.path.join(backing, path.lstrip("/"))

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            fault(path, "getattr")
            try:
                st = os.lstat(self._real(path))
            except OSError as e:
                raise FuseOSError(e.errno) from None
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
            out: dict[str, Any] = {k: getattr(st, k) for k in keys}
            for k in ("st_atime", "st_mtime", "st_ctime"):
                out[k] = getattr(st, k)
            return out

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._real(path))]

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(self._real(path))
            keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail")
            keys += ("f_files", "f_ffree", "f_favail", "f_namemax")
            return {k: getattr(sv, k) for k in keys}

        def _open(self, path: str, flags: int, mode: int | None = None) -> int:
            flags &= ~(os.O_DIRECT | os.O_APPEND)  # the daemon's own access is plain
            try:
                if mode is None:
                    return os.open(self._real(path), flags)
                return os.open(self._real(path), flags | os.O_CREAT, mode)
            except OSError as e:
                raise FuseOSError(e.errno) from None

        def open(self, path: str, flags: int) -> int:
            fault(path, "open")
            return self._open(path, flags)

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            fault(path, "create")
            return self._open(path, os.O_RDWR | os.O_CREAT, mode)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            short = fault(path, "read", offset)
            if short is not None:
                size = min(size, short)
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            short = fault(path, "write", offset)
            if short is not None:
                data = data[:short]
            try:
                return os.pwrite(fh, data, offset)
            except OSError as e:
                raise FuseOSError(e.errno) from None

        def truncate(self, path: str, length: int, fh: int | None = None) -> None:
            fault(path, "truncate")
            os.truncate(self._real(path), length)

        def flush(self, path: str, fh: int) -> None:
            fault(path, "flush")

        def fsync(self, path: str, datasync: int, fh: int) -> None:
            fault(path, "fsync")
            (os.fdatasync if datasync else os.fsync)(fh)

        def release(self, path: str, fh: int) -> None:
            try:
                fault(path, "release")
            finally:
                os.close(fh)

        def unlink(self, path: str) -> None:
            os.unlink(self._real(path))

        def rename(self, old: str, new: str) -> None:
            os.rename(self._real(old), self._real(new))

        def chmod(self, path: str, mode: int) -> None:
            os.chmod(self._real(path), mode)

        def chown(self, path: str, uid: int, gid: int) -> None:
            os.chown(self._real(path), uid, gid)

        def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
            os.utime(self._real(path), times)

        def mkdir(self, path: str, mode: int) -> None:
            os.mkdir(self._real(path), mode)

        def rmdir(self, path: str) -> None:
            os.rmdir(self._real(path))

    FUSE(
        Passthrough(),
        mountpoint,
        foreground=True,
        nothreads=False,
        direct_io=not cached,
        allow_other=False,
        default_permissions=False,
        attr_timeout=60 if names else 0,
        entry_timeout=60 if names else 0,
        fsname="xaio-faults",
    )


# ---------------------------------------------------------------------------------
# The test side
# ---------------------------------------------------------------------------------


def unavailable_reason() -> str | None:
    """Why no FUSE file system can be mounted here, or None."""
    import ctypes.util

    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (the fuse kernel module is not loaded)"
    if ctypes.util.find_library("fuse") is None:
        return "libfuse 2 is not installed (Debian: apt-get install libfuse2)"
    try:
        import fuse  # noqa: F401
    except ImportError:
        return "fusepy is not installed (pip install -e '.[test]')"
    except OSError as e:  # fusepy raises this when it cannot load libfuse
        return f"fusepy cannot load libfuse: {e}"
    if os.geteuid() != 0:
        return "mounting FUSE needs root here (the tests do not use fusermount)"
    return None


class FaultFS:
    """A mounted fault-injection file system (see the module documentation).

    Attributes:
        root: the mount point; files made here go through the daemon.
        backing: the directory the daemon serves (the real files).
    """

    def __init__(self, base: Path, *, cached: bool = False, names: bool = False) -> None:
        import subprocess

        self.backing = base / "backing"
        self.root = base / "mnt"
        self._rules = base / "rules.json"
        self.backing.mkdir()
        self.root.mkdir()
        self._generation = 0
        self.inject()
        argv = [sys.executable, __file__, str(self.backing), str(self.root), str(self._rules)]
        if cached:
            argv.append("--cached")
        if names:
            argv.append("--names")
        self._log = open(base / "daemon.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.root):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                log = (base / "daemon.log").read_text(errors="replace")
                raise RuntimeError(f"the FUSE daemon did not mount: {log}")
            time.sleep(0.01)

    def inject(self, *rules: dict[str, Any]) -> None:
        """Replace the rules (none: every request passes through untouched).
        Takes effect at the daemon's next request; counts start afresh."""
        for rule in rules:
            unknown = set(rule.get("ops", ())) - OPS
            if unknown:
                raise ValueError(f"unknown request kinds {sorted(unknown)}")
        self._generation += 1
        tmp = self._rules.with_suffix(".tmp")
        tmp.write_text(json.dumps({"generation": self._generation, "rules": list(rules)}))
        os.replace(tmp, self._rules)

    def path(self, name: str) -> Path:
        """*name* inside the mount."""
        return self.root / name

    def close(self) -> None:
        """Unmount (lazily: a test that left an fd open cannot block it), stop
        the daemon (SIGKILL after 10 s), and wait for it."""
        import subprocess

        self.inject()  # no more delays: pending requests finish quickly
        if os.path.ismount(self.root):
            subprocess.run(["umount", "-l", str(self.root)], check=False)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> FaultFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    _flags = {a for a in args if a.startswith("--")}
    _backing, _mountpoint, _rules = (a for a in args if not a.startswith("--"))
    _daemon(_backing, _mountpoint, _rules, "--cached" in _flags, "--names" in _flags)
