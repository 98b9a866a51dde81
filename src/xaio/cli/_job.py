"""What ``xaio bench`` runs and what it measured: :class:`Job` and :class:`Result`.

A :class:`Job` speaks fio's vocabulary (pattern, block size, file size,
requests in flight, O_DIRECT, run time or request count, fsync interval) and
:meth:`Job.check` refuses an impossible one before any file is made.  A
:class:`Result` is what one run through an (engine, API) pair -- or fio's
counterpart -- measured; :func:`latency_stats` summarises the latency samples
of one direction.  Sizes are read and written the way fio writes them
(:func:`parse_size`, :func:`format_size`).  Plain data: nothing here does I/O.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "API_NAMES",
    "BenchError",
    "Job",
    "LatencyStats",
    "RW_MODES",
    "Result",
    "format_size",
    "latency_stats",
    "parse_size",
]

#: The access patterns, as fio names them.
RW_MODES: tuple[str, ...] = ("read", "write", "randread", "randwrite", "randrw")
#: The APIs a run can go through.
API_NAMES: tuple[str, ...] = ("sync", "asyncio", "posix")


class BenchError(Exception):
    """A problem to report to the user in one line (bad job, failed I/O)."""


# ---------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """A size as fio writes it: ``4096``, ``4k``, ``64M``, ``1GiB``, ``1g``.

    Suffixes are powers of 1024 (fio's default ``kb_base``); ``B``, ``iB``
    and case are ignored.

    Raises:
        ValueError: not a size (the message says what was expected).
    """
    t = text.strip().upper()
    for suffix in ("IB", "B"):
        if t.endswith(suffix) and len(t) > len(suffix):
            t = t[: -len(suffix)]
            break
    unit = ""
    if t and t[-1] in _UNITS:
        unit, t = t[-1], t[:-1]
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"invalid size {text!r} (expected e.g. 4096, 4k, 64M, 1G)") from None
    size = value * _UNITS[unit]
    if size != size or size in (float("inf"), float("-inf")) or size != int(size):
        raise ValueError(f"invalid size {text!r}: not a whole number of bytes")
    return int(size)


def format_size(n: float) -> str:
    """``4096`` -> ``"4 KiB"``, ``67108864`` -> ``"64 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            if unit == "B" or n == int(n):
                return f"{int(n)} {unit}"
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------------
# The job and its results
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What to run (fio's vocabulary).  :meth:`check` validates it."""

    rw: str = "randread"
    bs: int = 4096
    size: int = 64 << 20
    iodepth: int = 32
    direct: bool = False
    runtime: float | None = 3.0
    number: int | None = None
    fsync: int = 0
    rwmixread: int = 50
    seed: int = 1234

    def check(self) -> None:
        """Raise :class:`BenchError` for an impossible job."""
        if self.rw not in RW_MODES:
            raise BenchError(f"unknown --rw {self.rw!r} (expected one of {', '.join(RW_MODES)})")
        if self.bs <= 0:
            raise BenchError(f"--bs must be positive, not {self.bs}")
        if self.size <= 0:
            raise BenchError(f"--size must be positive, not {self.size}")
        if self.bs > self.size:
            raise BenchError(
                f"--bs {format_size(self.bs)} is larger than --size {format_size(self.size)}"
            )
        if self.bs > 1 << 30:
            raise BenchError(f"--bs {format_size(self.bs)} is too large (at most 1 GiB)")
        if not 1 <= self.iodepth <= 4096:
            raise BenchError(f"--iodepth must be between 1 and 4096, not {self.iodepth}")
        if self.iodepth * self.bs > 4 << 30:
            raise BenchError("--iodepth x --bs is more than 4 GiB of buffers")
        if self.runtime is not None and not (0 < self.runtime <= 86400):
            raise BenchError(f"--runtime must be between 0 and 86400 seconds, not {self.runtime}")
        if self.number is not None and self.number <= 0:
            raise BenchError(f"--number must be positive, not {self.number}")
        if self.runtime is None and self.number is None:
            raise BenchError("give --runtime or --number")
        if self.fsync < 0:
            raise BenchError(f"--fsync must be >= 0, not {self.fsync}")
        if not 0 <= self.rwmixread <= 100:
            raise BenchError(f"--rwmixread must be between 0 and 100, not {self.rwmixread}")

    @property
    def blocks(self) -> int:
        """How many *bs* blocks the file holds."""
        return self.size // self.bs

    @property
    def writes(self) -> bool:
        """True if the job writes."""
        return self.rw in ("write", "randwrite") or (self.rw == "randrw" and self.rwmixread < 100)

    def describe(self) -> str:
        """One line, fio-like: ``randread bs=4 KiB size=64 MiB iodepth=32 buffered 3s``."""
        parts = [self.rw]
        if self.rw == "randrw":
            parts.append(f"rwmixread={self.rwmixread}")
        parts += [
            f"bs={format_size(self.bs)}",
            f"size={format_size(self.size)}",
            f"iodepth={self.iodepth}",
            "direct" if self.direct else "buffered",
        ]
        if self.number is not None:
            parts.append(f"number={self.number}")
        else:
            parts.append(f"runtime={self.runtime:g}s")
        if self.fsync:
            parts.append(f"fsync={self.fsync}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The job as a JSON-able dict."""
        return {
            "rw": self.rw,
            "bs": self.bs,
            "size": self.size,
            "iodepth": self.iodepth,
            "direct": self.direct,
            "runtime": self.runtime,
            "number": self.number,
            "fsync": self.fsync,
            "rwmixread": self.rwmixread,
        }


@dataclass(frozen=True)
class LatencyStats:
    """Completion latency of one direction, in nanoseconds."""

    count: int
    min: int
    mean: float
    p50: int
    p99: int
    p999: int
    max: int

    def to_json(self) -> dict[str, Any]:
        """As a dict (keys ``min``, ``mean``, ``p50``, ``p99``, ``p99_9``, ``max``)."""
        return {
            "count": self.count,
            "min": self.min,
            "mean": round(self.mean, 1),
            "p50": self.p50,
            "p99": self.p99,
            "p99_9": self.p999,
            "max": self.max,
        }


def latency_stats(samples: Sequence[int]) -> LatencyStats | None:
    """Min, mean, p50/p99/p99.9 (nearest rank) and max of *samples*; None if empty."""
    n = len(samples)
    if not n:
        return None
    s = sorted(samples)

    def rank(p: float) -> int:
        return s[min(n - 1, max(0, int(p * n + 0.5) - 1))]

    return LatencyStats(n, s[0], sum(s) / n, rank(0.50), rank(0.99), rank(0.999), s[-1])


@dataclass
class Result:
    """What one run measured."""

    engine: str
    api: str
    tool: str = "xaio"
    note: str = ""
    seconds: float = 0.0
    reads: int = 0
    writes: int = 0
    fsyncs: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    lat_read: LatencyStats | None = None
    lat_write: LatencyStats | None = None
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    #: (seconds since start, IOPS during the tick that ended then)
    timeline: list[tuple[float, float]] = field(default_factory=list)
    #: raw latency samples in ns (reads then writes), for plots; not in JSON
    samples: array.array[int] = field(default_factory=lambda: array.array("q"), repr=False)

    @property
    def label(self) -> str:
        """``"uring/sync"``, ``"fio io_uring"``..."""
        if self.tool == "xaio":
            return f"{self.engine}/{self.api}"
        return f"{self.tool} {self.engine}"

    @property
    def ops(self) -> int:
        """Reads plus writes (fsyncs are not counted, as in fio)."""
        return self.reads + self.writes

    @property
    def iops(self) -> float:
        """Requests per second."""
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def mib_s(self) -> float:
        """MiB per second, both directions."""
        b = self.bytes_read + self.bytes_written
        return b / self.seconds / (1 << 20) if self.seconds > 0 else 0.0

    @property
    def latency(self) -> LatencyStats | None:
        """The latency of the dominant direction (reads if any)."""
        if self.lat_read is not None and (self.lat_write is None or self.reads >= self.writes):
            return self.lat_read
        return self.lat_write

    @property
    def cpu_percent(self) -> float:
        """User + system CPU time as a percentage of one core."""
        return 100.0 * (self.cpu_user + self.cpu_sys) / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """As a JSON-able dict (the schema the CLI's ``--json`` documents)."""

        def side(ops: int, nbytes: int, lat: LatencyStats | None) -> dict[str, Any]:
            secs = self.seconds or float("inf")
            return {
                "ops": ops,
                "bytes": nbytes,
                "iops": round(ops / secs, 1),
                "mib_s": round(nbytes / secs / (1 << 20), 2),
                "lat_ns": None if lat is None else lat.to_json(),
            }

        return {
            "tool": self.tool,
            "engine": self.engine,
            "api": self.api,
            "note": self.note,
            "seconds": round(self.seconds, 4),
            "ops": self.ops,
            "iops": round(self.iops, 1),
            "mib_s": round(self.mib_s, 2),
            "fsyncs": self.fsyncs,
            "read": side(self.reads, self.bytes_read, self.lat_read),
            "write": side(self.writes, self.bytes_written, self.lat_write),
            "cpu": {
                "user_s": round(self.cpu_user, 4),
                "sys_s": round(self.cpu_sys, 4),
                "percent": round(self.cpu_percent, 1),
            },
            "timeline": [[round(t, 3), round(v, 1)] for t, v in self.timeline],
        }
