"""The ``xaio`` command, run as a user runs it: ``python -m xaio ...`` in a subprocess.

Sizes and runtimes are small (every run well under a few seconds); each
subprocess has a timeout.  Temporary bench files go to ``tmp_path`` (with
``--directory``) so that the tests can check they are gone afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xaio.cli import cp as _cp
from xaio.cli._job import Job, latency_stats, parse_size
from xaio.engine import probe

from .support import wait_until

TIMEOUT = 60


def xaio(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m xaio ARGS`` and capture its output."""
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("XAIO_ENGINE", None)
    return subprocess.run(
        [sys.executable, "-m", "xaio", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert *proc* failed with exactly one line on stderr, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("xaio"), lines[0]
    return lines[0]


WORKING = [name for name, reason in probe().items() if reason is None]


def supports_direct(directory: Path) -> bool:
    p = directory / ".direct-probe"
    p.write_bytes(b"\0" * 4096)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    else:
        os.close(fd)
        return True
    finally:
        p.unlink()


# ---------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4096), ("4k", 4096), ("4K", 4096), ("64M", 64 << 20), ("1GiB", 1 << 30),
     ("1g", 1 << 30), ("512B", 512), ("1.5k", 1536)],
)  # fmt: skip
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "k", "1x", "abc", "1.1", "nan", "4 kk"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_latency_stats_nearest_rank() -> None:
    s = latency_stats(list(range(1, 1001)))
    assert s is not None
    assert (s.min, s.p50, s.p99, s.p999, s.max) == (1, 500, 990, 999, 1000)
    assert latency_stats([]) is None


def test_job_default_is_the_readme_job() -> None:
    job = Job()
    job.check()
    assert (job.rw, job.bs, job.size, job.iodepth, job.runtime) == (
        "randread",
        4096,
        64 << 20,
        32,
        3.0,
    )


# ---------------------------------------------------------------------------------
# the command as a whole
# ---------------------------------------------------------------------------------


def test_rich_is_imported_lazily() -> None:
    code = (
        "import sys, xaio, xaio.cli; "
        "assert 'rich' not in sys.modules and 'matplotlib' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_help_lists_the_commands() -> None:
    proc = xaio("--help")
    assert proc.returncode == 0
    for cmd in ("bench", "info", "cp"):
        assert cmd in proc.stdout


def test_no_command_shows_help_and_fails() -> None:
    proc = xaio()
    assert proc.returncode == 2
    assert "bench" in proc.stdout


def test_version() -> None:
    import xaio as lib

    proc = xaio("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"xaio {lib.__version__}"


def test_bench_dir_is_short_for_directory() -> None:
    """``--dir`` (as the benchmarks spell it) is --directory, not an ambiguous
    prefix of --direct and --directory."""
    proc = xaio("bench", "--dir", "/nonexistent-dir")
    one_line_error(proc)
    assert "--directory /nonexistent-dir" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["bench", "--bogus"],
        ["bench", "--bs", "0"],
        ["bench", "--bs", "4x"],
        ["bench", "--size", "-1M"],
        ["bench", "--bs", "1M", "--size", "4k"],
        ["bench", "--iodepth", "0"],
        ["bench", "--iodepth", "lots"],
        ["bench", "--rw", "sideways"],
        ["bench", "--runtime", "-1"],
        ["bench", "--runtime", "1", "--number", "5"],
        ["bench", "--rwmixread", "101", "--rw", "randrw"],
        ["bench", "--engine", "warp"],
        ["bench", "--file", "/nonexistent-dir/xaio.dat"],
        ["bench", "--directory", "/nonexistent-dir"],
        ["bench", "--file", "/", "--number", "10"],
        ["bench", "--file", "/etc/hostname", "--size", "1G"],
        ["info", "/nonexistent-path"],
        ["cp", "/nonexistent-src", "/tmp/never-created"],
        ["cp", "/", "/tmp/never-created"],
        ["cp", "--bs", "0", "/etc/hostname", "/tmp/never-created"],
        ["cp", "--iodepth", "-3", "/etc/hostname", "/tmp/never-created"],
        ["cp", "onlyone"],
    ],
)
def test_bad_input_is_one_line_and_nonzero(args: list[str]) -> None:
    proc = xaio(*args)
    one_line_error(proc)
    assert proc.returncode in (1, 2)
    assert not os.path.exists("/tmp/never-created")


# ---------------------------------------------------------------------------------
# xaio bench
# ---------------------------------------------------------------------------------


def bench_json(tmp_path: Path, *args: str) -> dict[str, Any]:
    proc = xaio("bench", "--json", "--directory", str(tmp_path), *args)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == [], "temporary file left behind"
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc


def check_latency(lat: dict[str, Any]) -> None:
    assert set(lat) == {"count", "min", "mean", "p50", "p99", "p99_9", "max"}
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]


def check_result(r: dict[str, Any], *, reads: int | None = None) -> None:
    assert set(r) >= {"tool", "engine", "api", "seconds", "ops", "iops", "mib_s", "fsyncs",
                      "read", "write", "cpu", "timeline", "ratio"}  # fmt: skip
    read = r["read"]
    assert isinstance(read, dict)
    assert set(read) == {"ops", "bytes", "iops", "mib_s", "lat_ns"}
    if reads is not None:
        assert read["ops"] == reads
    if read["ops"]:
        check_latency(read["lat_ns"])
    cpu = r["cpu"]
    assert isinstance(cpu, dict) and set(cpu) == {"user_s", "sys_s", "percent"}
    assert isinstance(r["seconds"], float) and r["seconds"] > 0


def test_bench_default_table(tmp_path: Path) -> None:
    proc = xaio("bench", "--runtime", "0.3", "--size", "2M", "--directory", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "randread bs=4 KiB size=2 MiB iodepth=32" in out
    for col in ("IOPS", "MiB/s", "p50", "p99", "p99.9", "max", "CPU"):
        assert col in out
    assert "\x1b[" not in out  # plain text when not a terminal
    assert list(tmp_path.iterdir()) == []


def test_bench_json_schema_all_engines(tmp_path: Path) -> None:
    doc = bench_json(tmp_path, "--engine", "all", "--number", "3000", "--size", "1M")
    assert set(doc) == {"xaio_version", "python", "kernel", "job", "results", "skipped"}
    job = doc["job"]
    assert isinstance(job, dict)
    assert job["rw"] == "randread" and job["bs"] == 4096 and job["number"] == 3000
    assert job["temporary"] is True and job["file"].startswith(str(tmp_path))
    results = doc["results"]
    assert isinstance(results, list)
    assert [r["engine"] for r in results] == WORKING
    for r in results:
        check_result(r, reads=3000)
        assert r["api"] == "sync" and r["tool"] == "xaio"
        assert r["read"]["bytes"] == 3000 * 4096
        assert r["ratio"]["kind"] == "vs best"
    skipped = doc["skipped"]
    assert isinstance(skipped, list)
    assert {s["engine"] for s in skipped} == {"uring", "linux", "thread"} - set(WORKING)
    assert all(s["reason"] for s in skipped)


@pytest.mark.parametrize("engine", WORKING)
def test_bench_posix_api(tmp_path: Path, engine: str) -> None:
    doc = bench_json(tmp_path, "--api", "posix", "--engine", engine, "--number", "500",
                     "--size", "1M", "--iodepth", "8")  # fmt: skip
    (r,) = doc["results"]
    check_result(r, reads=500)
    assert r["api"] == "posix" and r["engine"] == engine


def test_bench_randrw_fsync_on_kept_file(tmp_path: Path) -> None:
    path = tmp_path / "job.dat"
    proc = xaio("bench", "--json", "--rw", "randrw", "--rwmixread", "70", "--fsync", "16",
                "--number", "2000", "--size", "1M", "--file", str(path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert path.stat().st_size == 1 << 20  # --file is created, filled and kept
    (r,) = json.loads(proc.stdout)["results"]
    check_result(r)
    reads, writes = r["read"]["ops"], r["write"]["ops"]
    assert reads + writes == 2000
    assert 0.55 < reads / 2000 < 0.85
    check_latency(r["write"]["lat_ns"])
    assert r["fsyncs"] >= 1
    # a second run reuses the existing file (its size by default)
    proc = xaio("bench", "--json", "--rw", "read", "--bs", "64k", "--number", "32",
                "--file", str(path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["job"]["size"] == 1 << 20


def test_bench_write_direct(tmp_path: Path) -> None:
    if not supports_direct(tmp_path):
        pytest.skip(f"no O_DIRECT on the file system of {tmp_path}")
    doc = bench_json(tmp_path, "--rw", "randwrite", "--direct", "--number", "300",
                     "--size", "1M", "--iodepth", "4")  # fmt: skip
    (r,) = doc["results"]
    assert r["write"]["ops"] == 300 and r["read"]["ops"] == 0


def test_bench_output_file_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    work = tmp_path / "work"
    work.mkdir()
    out, png = tmp_path / "report.json", tmp_path / "plot.png"
    proc = xaio("bench", "--json", "--output", str(out), "--plot", str(png), "--runtime", "0.3",
                "--size", "1M", "--directory", str(work))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    doc = json.loads(out.read_text())
    assert doc["results"][0]["timeline"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(work.iterdir()) == []


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_bench_compare_fio(tmp_path: Path) -> None:
    doc = bench_json(tmp_path, "--compare", "fio", "--runtime", "0.3", "--size", "1M",
                     "--iodepth", "4")  # fmt: skip
    xa, fio = doc["results"]
    assert xa["tool"] == "xaio" and fio["tool"] == "fio"
    check_result(fio)
    assert xa["ratio"]["kind"] == "xaio/fio"
    assert xa["ratio"]["value"] == pytest.approx(xa["iops"] / fio["iops"], abs=0.006)  # 2 decimals


def test_bench_asyncio_api(tmp_path: Path) -> None:
    import xaio as lib

    proc = xaio("bench", "--api", "asyncio", "--number", "200", "--size", "1M",
                "--directory", str(tmp_path), "--json")  # fmt: skip
    if not hasattr(lib, "open_engine"):
        line = one_line_error(proc)
        assert "asyncio" in line
    else:
        assert proc.returncode == 0, proc.stderr
        check_result(json.loads(proc.stdout)["results"][0], reads=200)
    assert list(tmp_path.iterdir()) == []


def test_bench_explicit_unavailable_engine_says_why(tmp_path: Path) -> None:
    broken = [n for n, r in probe().items() if r is not None]
    if not broken:
        pytest.skip("every engine works on this machine")
    line = one_line_error(xaio("bench", "--engine", broken[0], "--directory", str(tmp_path)))
    assert broken[0] in line


def test_bench_direct_misaligned_bs_removes_file(tmp_path: Path) -> None:
    if not supports_direct(tmp_path):
        pytest.skip(f"no O_DIRECT on the file system of {tmp_path}")
    line = one_line_error(
        xaio("bench", "--direct", "--bs", "100", "--size", "1M", "--directory", str(tmp_path))
    )
    assert "alignment" in line
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def running_bench(tmp_path: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "xaio", "bench", "--runtime", "30", "--size", "4M",
         "--directory", str(tmp_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


def wait_for_file(directory: Path, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    def appeared() -> bool:
        assert proc.poll() is None, "bench exited early"
        return any(directory.iterdir())

    wait_until(appeared, timeout, "a temporary file")


def wait_for_timed_loop(directory: Path, proc: subprocess.Popen[str]) -> None:
    """Wait until the bench of *proc* is in its timed loop: it has reopened its
    file in *directory* read-only and read a first MiB through it."""
    where = os.path.realpath(directory) + "/"

    def reading() -> bool:
        assert proc.poll() is None, "bench exited early"
        for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
                info = Path(f"/proc/{proc.pid}/fdinfo/{fd.name}").read_text()
            except OSError:  # closed meanwhile
                continue
            flags = int(info.split("flags:")[1].split()[0], 8)
            if target.startswith(where) and flags & os.O_ACCMODE == os.O_RDONLY:
                return True
        return False

    def rchar() -> int:
        assert proc.poll() is None, "bench exited early"
        io = Path(f"/proc/{proc.pid}/io").read_text()
        return int(io.split("rchar:")[1].split()[0])

    wait_until(reading, 20, "the bench reading its file")
    start = rchar()
    wait_until(lambda: rchar() >= start + (1 << 20), 20, "a first MiB read")


@pytest.mark.parametrize(("api", "sig", "status", "word"), [
    ("sync", signal.SIGINT, 130, "interrupted"),
    ("posix", signal.SIGINT, 130, "interrupted"),
    ("sync", signal.SIGTERM, 143, "terminated"),
])  # fmt: skip
def test_bench_signal_exits_cleanly(
    tmp_path: Path, api: str, sig: signal.Signals, status: int, word: str
) -> None:
    with running_bench(tmp_path, "--api", api, "--engine", "thread") as proc:
        wait_for_timed_loop(tmp_path, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == status, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [f"xaio bench: error: {word}"]
    assert list(tmp_path.iterdir()) == []


def test_bench_interrupted_as_the_fill_ends_removes_the_file(tmp_path: Path) -> None:
    """Ctrl-C as the "preparing file" bar closes -- the file is full, no run
    has begun -- still removes the temporary file."""
    from xaio.cli import build_parser
    from xaio.cli._ui import UI
    from xaio.cli.bench import cmd_bench

    class InterruptedUI(UI):
        @contextlib.contextmanager
        def progress(self, description: str, total: float) -> Iterator[Any]:
            yield lambda completed, info: None
            if description == "preparing file":
                raise KeyboardInterrupt

    args = build_parser().parse_args(
        ["bench", "--size", "1M", "--number", "10", "--directory", str(tmp_path)]
    )
    with pytest.raises(KeyboardInterrupt):
        cmd_bench(args, InterruptedUI(io.StringIO()))
    assert list(tmp_path.iterdir()) == []


def test_bench_sigint_while_filling(tmp_path: Path) -> None:
    with running_bench(tmp_path, "--size", "4G") as proc:
        wait_for_file(tmp_path, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def run_in_pty(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run *argv* with a pseudo-terminal as stdout and stderr; (status, output)."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                                env=env)  # fmt: skip
    finally:
        os.close(slave)
    chunks = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        status = proc.wait(timeout=TIMEOUT)
    return status, b"".join(chunks).decode(errors="replace")


def tty_env() -> dict[str, str]:
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    return env


def test_bench_on_a_terminal_uses_rich(tmp_path: Path) -> None:
    pytest.importorskip("rich")
    status, out = run_in_pty(
        [sys.executable, "-m", "xaio", "bench", "--runtime", "0.5", "--size", "1M",
         "--directory", str(tmp_path)],
        tty_env(),
    )  # fmt: skip
    assert status == 0, out
    assert "\x1b[" in out  # styled
    assert "IOPS" in out and "p99.9" in out
    assert "\u2501" in out or "\u2500" in out  # a rich table (box drawing)
    assert list(tmp_path.iterdir()) == []


def test_bench_on_a_terminal_without_rich_is_plain(tmp_path: Path) -> None:
    code = "import sys; sys.modules['rich'] = None; from xaio.cli import main; sys.exit(main())"
    status, out = run_in_pty(
        [sys.executable, "-c", code, "bench", "--runtime", "0.3", "--size", "1M",
         "--directory", str(tmp_path)],
        tty_env(),
    )  # fmt: skip
    assert status == 0, out
    assert "\x1b[" not in out
    assert "IOPS" in out and "p99.9" in out
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------
# xaio info
# ---------------------------------------------------------------------------------


def test_info_text(tmp_path: Path) -> None:
    proc = xaio("info", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for word in ("kernel", "engine uring", "engine linux", "engine thread", "aio-max-nr",
                 "io_uring_disabled", "O_DIRECT", "python"):  # fmt: skip
        assert word in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_info_json_schema(tmp_path: Path) -> None:
    proc = xaio("info", "--json", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert set(info) == {"xaio", "python", "kernel", "engines", "default_engine", "asyncio",
                         "io_uring", "aio", "o_direct", "optional"}  # fmt: skip
    assert info["kernel"]["release"] == os.uname().release
    assert info["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    engines = info["engines"]
    assert set(engines) == {"uring", "linux", "thread"}
    for name, e in engines.items():
        assert e["works"] == (name in WORKING)
        assert (e["reason"] is None) == e["works"]
    assert engines["thread"]["works"]
    assert info["default_engine"] == WORKING[0]
    uring = info["io_uring"]
    if engines["uring"]["works"]:
        assert {"read", "write", "readv", "fsync", "async_cancel"} <= set(uring["opcodes"])
    with open("/proc/sys/fs/aio-max-nr") as f:
        assert info["aio"]["aio_max_nr"] == int(f.read())
    d = info["o_direct"]
    assert d["path"] == str(tmp_path)
    if supports_direct(tmp_path):
        assert d["offset"] >= 1 and d["memory"] >= 1


# ---------------------------------------------------------------------------------
# xaio cp
# ---------------------------------------------------------------------------------


def make_src(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    path.chmod(0o640)
    return data


@pytest.mark.parametrize("engine", WORKING)
def test_cp_larger_than_its_buffers_byte_for_byte(tmp_path: Path, engine: str) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    data = make_src(src, (3 << 20) + 12345)  # 49 chunks of 64 KiB and a tail
    proc = xaio("cp", "--bs", "64k", "--iodepth", "4", "--engine", engine, "--verify",
                str(src), str(dst))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout
    assert dst.read_bytes() == data
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640


def test_cp_direct(tmp_path: Path) -> None:
    if not supports_direct(tmp_path):
        pytest.skip(f"no O_DIRECT on the file system of {tmp_path}")
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    data = make_src(src, (1 << 20) + 777)  # unaligned tail: written rounded up, then cut
    proc = xaio("cp", "--direct", "--bs", "128k", "--verify", "--json", str(src), str(dst))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["direct"] is True and summary["bytes"] == len(data) and summary["verified"]
    assert dst.read_bytes() == data


def test_cp_into_directory_and_over_existing(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = make_src(src, 100_000)
    out = tmp_path / "out"
    out.mkdir()
    (out / "src.bin").write_bytes(b"x" * 1_000_000)  # longer: must be truncated
    proc = xaio("cp", "-q", str(src), str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert (out / "src.bin").read_bytes() == data


def test_cp_empty_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "empty", tmp_path / "copy"
    src.write_bytes(b"")
    proc = xaio("cp", "--verify", str(src), str(dst))
    assert proc.returncode == 0, proc.stderr
    assert dst.read_bytes() == b""


def test_cp_to_dev_full(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    src = tmp_path / "src.bin"
    make_src(src, 1 << 20)
    line = one_line_error(xaio("cp", str(src), "/dev/full"))
    assert "No space left on device" in line


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=10, check=False)


def test_cp_full_disk_removes_partial_copy(tmp_path: Path, small_tmpfs: Path) -> None:
    src = tmp_path / "src.bin"
    make_src(src, 3 << 20)
    dst = small_tmpfs / "dst.bin"
    line = one_line_error(xaio("cp", str(src), str(dst)))
    assert "No space left on device" in line
    assert not dst.exists()


def test_bench_refuses_a_file_larger_than_the_disk(small_tmpfs: Path) -> None:
    line = one_line_error(xaio("bench", "--size", "4M", "--directory", str(small_tmpfs)))
    assert "not enough space" in line
    assert list(small_tmpfs.iterdir()) == []


def test_bench_full_disk_while_filling_removes_the_file(small_tmpfs: Path) -> None:
    # fill the tmpfs behind the free-space check's back: the 700 KiB job no longer fits
    (small_tmpfs / "hog").write_bytes(b"\0" * (600 << 10))
    proc = xaio("bench", "--file", str(small_tmpfs / "job.dat"), "--size", "700k",
                "--number", "10")  # fmt: skip
    line = one_line_error(proc)
    assert "No space left on device" in line
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["hog"]


def test_cp_same_file_refused(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = make_src(src, 5000)
    line = one_line_error(xaio("cp", str(src), str(tmp_path)))
    assert "same file" in line
    assert src.read_bytes() == data


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_cp_unreadable_source(tmp_path: Path) -> None:
    src = tmp_path / "secret"
    make_src(src, 100)
    src.chmod(0)
    line = one_line_error(xaio("cp", str(src), str(tmp_path / "copy")))
    assert "Permission denied" in line
    assert not (tmp_path / "copy").exists()


def test_cp_sigint_removes_partial_copy(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    make_src(src, 64 << 20)
    # 4 KiB requests one at a time: slow enough to be interrupted mid-copy
    proc = subprocess.Popen(
        [sys.executable, "-m", "xaio", "cp", "--bs", "4k", "--iodepth", "1", "--engine",
         "thread", str(src), str(dst)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip

    def started() -> bool:  # the temporary copy beside dst has data
        assert proc.poll() is None, "cp finished before it could be interrupted"
        return any(p.stat().st_blocks for p in tmp_path.iterdir() if p != src)

    try:
        wait_until(started, 20, "the copy started")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["xaio cp: error: interrupted"]
    assert list(tmp_path.iterdir()) == [src]


def test_verify_reports_first_difference(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    data = os.urandom(3 << 20)
    a.write_bytes(data)
    changed = bytearray(data)
    changed[2_500_000] ^= 0xFF
    b.write_bytes(bytes(changed))
    with pytest.raises(_cp.CopyError, match="at offset 2500000"):
        _cp.verify(str(a), str(b))
    b.write_bytes(data[:-1])
    with pytest.raises(_cp.CopyError, match="bytes"):
        _cp.verify(str(a), str(b))


# ---------------------------------------------------------------------------------
# xaio cp under real faults: a full ext4 on a loop device, EIO from a corrupt
# squashfs image; an existing destination survives every failure
# ---------------------------------------------------------------------------------


def _run_root(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


@contextlib.contextmanager
def _mounted(image: Path, mnt: Path, *options: str) -> Iterator[Path]:
    """Mount *image* on *mnt* through a loop device (root only), or skip."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a loop device needs root and mount(8)")
    mnt.mkdir()
    proc = _run_root("mount", "-o", ",".join(("loop", *options)), str(image), str(mnt))
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        _run_root("umount", str(mnt))  # the loop device is released with it (autoclear)


@pytest.fixture
def small_ext4(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB ext4 file system on a loop device (root only, else skipped)."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("no mkfs.ext4 (Debian package e2fsprogs)")
    image = tmp_path / "ext4.img"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    proc = _run_root("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    assert proc.returncode == 0, proc.stderr
    with _mounted(image, tmp_path / "ext4") as mnt:
        yield mnt


def _compressible(size: int) -> bytes:
    return b"".join((f"block {i:08d} ".encode() * 300)[:4096] for i in range(size // 4096))


def _squashfs_with_a_bad_block(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    """A squashfs image holding ``f.bin`` (*size* compressible bytes) whose
    middle data blocks are overwritten with garbage: reading the file gives
    its first blocks, then EIO (the decompressor fails, as on a bad disk)."""
    if shutil.which("mksquashfs") is None:
        pytest.skip("no mksquashfs (Debian package squashfs-tools; .ci/run installs it)")
    tree = tmp_path / "tree"
    tree.mkdir()
    data = _compressible(size)
    (tree / "f.bin").write_bytes(data)
    image = tmp_path / "sq.img"
    proc = _run_root("mksquashfs", str(tree), str(image), "-b", "4096", "-no-fragments",
                     "-noappend", "-quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(image, "r+b") as f:
        inode_table = int.from_bytes(f.read(72)[64:72], "little")  # the data blocks end there
        middle = 96 + (inode_table - 96) // 2
        f.seek(middle)
        f.write(b"\xff" * 64)
    return image, data


@pytest.fixture
def eio_source(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file whose read fails with EIO about half-way (root only)."""
    image, _data = _squashfs_with_a_bad_block(tmp_path, 1 << 20)
    with _mounted(image, tmp_path / "sq", "ro") as mnt:
        src = mnt / "f.bin"
        fd = os.open(src, os.O_RDONLY)
        try:  # the fault is real: a short read, then EIO
            got = os.preadv(fd, [bytearray(1 << 20)], 0)
            assert 0 < got < 1 << 20
            with pytest.raises(OSError) as ei:
                os.preadv(fd, [bytearray(1 << 20)], got)
            assert ei.value.errno == errno.EIO
        finally:
            os.close(fd)
        yield src


@pytest.mark.parametrize("engine", WORKING)
def test_cp_eio_mid_file_is_an_input_output_error(
    tmp_path: Path, eio_source: Path, engine: str
) -> None:
    dst = tmp_path / "dst.bin"
    # one request holds the whole file: the read comes back short, then EIO
    line = one_line_error(xaio("cp", "--bs", "4m", "--engine", engine, str(eio_source), str(dst)))
    assert "Input/output error" in line and str(eio_source) in line, line
    assert "shrank" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sq", "sq.img", "tree"]


def test_cp_eio_over_an_existing_file_keeps_it(tmp_path: Path, eio_source: Path) -> None:
    dst = tmp_path / "dst.bin"
    old = os.urandom(300_000)
    dst.write_bytes(old)
    line = one_line_error(xaio("cp", str(eio_source), str(dst)))
    assert "Input/output error" in line
    assert dst.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "sq", "sq.img", "tree"]


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
def test_cp_full_disk_over_an_existing_file_keeps_it(
    tmp_path: Path, small_ext4: Path, direct: bool
) -> None:
    if direct and not supports_direct(tmp_path):
        pytest.skip(f"no O_DIRECT on the file system of {tmp_path}")
    src = tmp_path / "src.bin"
    make_src(src, 20 << 20)  # more than the whole file system
    dst = small_ext4 / "dst.bin"
    old = os.urandom(6 << 20)
    dst.write_bytes(old)
    before = sorted(p.name for p in small_ext4.iterdir())
    line = one_line_error(xaio("cp", *(["--direct"] if direct else []), str(src), str(dst)))
    assert "No space left on device" in line and str(dst) in line, line
    assert dst.read_bytes() == old
    assert sorted(p.name for p in small_ext4.iterdir()) == before
    free = os.statvfs(small_ext4)
    assert free.f_bavail * free.f_frsize > 6 << 20  # the failed copy's blocks are freed


def test_cp_replaces_atomically_and_follows_a_symlink(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = make_src(src, 200_000)
    target = tmp_path / "target.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link"
    link.symlink_to(target)
    proc = xaio("cp", str(src), str(link))
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "src.bin", "target.bin"]


def test_failed_verify_keeps_the_destination_and_names_it(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    data = make_src(src, 300_000)
    old = b"the previous backup"
    dst.write_bytes(old)
    with _cp.Copy(str(src), str(dst), bs=64 << 10) as job:
        job.run()
        assert job.path != str(dst) and os.path.dirname(job.path) == str(tmp_path)
        fd = os.open(job.path, os.O_WRONLY)
        try:  # the copy goes bad on its way to the disk: a byte unlike the source's
            os.pwrite(fd, bytes([data[123_456] ^ 0xFF]), 123_456)
        finally:
            os.close(fd)
        with pytest.raises(_cp.CopyError) as ei:
            job.verify()
    msg = str(ei.value)
    assert str(dst) in msg and "offset 123456" in msg and job.path not in msg, msg
    assert dst.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]


def test_verify_read_error_names_the_file(tmp_path: Path, eio_source: Path) -> None:
    copy = tmp_path / "copy.bin"
    copy.write_bytes(_compressible(1 << 20))  # what the source holds
    with pytest.raises(_cp.CopyError) as ei:
        _cp.verify(str(eio_source), str(copy))
    assert str(ei.value) == f"verify: {eio_source}: Input/output error"


def test_fio_latency_is_completion_latency_within_min_max() -> None:
    # fio's percentiles are histogram bucket bounds (here below the exact
    # minimum), and its lat_ns adds the submission time to clat_ns.
    from xaio.cli._runner import _fio_result

    side = {
        "total_ios": 100,
        "io_bytes": 409600,
        "clat_ns": {
            "min": 4727,
            "max": 90000,
            "mean": 6000.0,
            "percentile": {"50.000000": 3984, "99.000000": 20000, "99.900000": 95000},
        },
        "lat_ns": {"min": 9000, "max": 99000, "mean": 11000.0},
    }
    job = {"job_runtime": 300, "elapsed": 1, "read": side, "write": {"total_ios": 0}}
    lat = _fio_result(job, "libaio", "sync", 1).lat_read
    assert lat is not None
    check_latency(lat.to_json())
    assert (lat.min, lat.p50, lat.p99, lat.p999, lat.max) == (4727, 4727, 20000, 90000, 90000)
    assert lat.mean == 6000.0
