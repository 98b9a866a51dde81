"""Could io_uring's SQPOLL move the floor of the cached POSIX AIO loop?

``floor_posix.py`` shows where a page-cached POSIX AIO request's time goes:
xaio does the read in the caller's thread (``preadv2(RWF_NOWAIT)``, one
system call per request), glibc hands it to a helper thread that copies on
the other CPU when one is free.  With ``IORING_SETUP_SQPOLL`` a kernel thread
(``iou-sqp-PID``, a thread of this process) reads the SQ tail and runs the
reads itself, on whatever CPU it gets; the Python caller only writes SQEs,
stores the tail and reads CQEs, and enters the kernel only to wake that
thread when it went to sleep.

This script runs, alternating round by round on one page-cached file, the
loop of ``bench_posix.py`` (32 outstanding 4 KiB reads at random aligned
offsets into anonymous mappings):

- ``glibc``: glibc's ``aio_read`` / ``aio_suspend`` / ``aio_error`` /
  ``aio_return`` through ctypes (``bench_posix.run_glibc``);
- ``xaio.posix``: the same loop on ``xaio.posix`` as it is (default engine,
  ``bench_posix.run_xaio``);
- ``ring sqpoll idle=N spin``: a bare Python loop on a
  :class:`xaio.uring.Ring` made with ``IORING_SETUP_SQPOLL`` and
  ``sq_thread_idle=N`` ms: ``prep_read`` into the mapping and ``submit`` per
  request (the shape an ``aio_read`` would have), ``peek_batch`` for
  completions, peeking again (no system call) while none is there;
- ``ring sqpoll idle=N wait``: the same, but waiting in ``io_uring_enter``
  for ``--wait-nr`` completions when a peek finds nothing (the caller
  sleeps instead of spinning);
- ``ring enter/request``: the same loop on a Ring without SQPOLL: one
  ``io_uring_enter`` per request (it runs the cached read inline);
- ``ring enter/batch``: without SQPOLL, one ``io_uring_enter`` for all the
  requests refilled after one peek (a shape ``aio_read`` cannot have);
- ``UringBatch sqpoll spin|wait`` and ``UringBatch enter/batch``:
  :class:`xaio.uring.UringBatch` (ready-made SQE images, buffers pinned once
  and registered, one submit per reaped batch) with and without SQPOLL
  (``sq_thread_idle`` at the kernel's default, 1000 ms): the least Python
  per request a ring costs here;
- ``IOBatch submit/batch``: :class:`xaio.linux.IOBatch` (ready-made iocbs,
  one ``io_submit`` per reaped batch, which runs the cached reads inline,
  completions read from the kernel's ``aio_ring``): the same with Linux AIO;
- ``preadv2/request``: the bare Python loop of one ``os.preadv(RWF_NOWAIT)``
  per request, what ``xaio.posix`` does in ``aio_read`` without its aiocb
  work: the floor a batched path has to beat.

Each ring is made before its round and closed after it (a SQPOLL thread
left behind would spin for ``sq_thread_idle`` ms in the next contender's
round).  Per round it prints ops/s, the ratio to the glibc round of the
same round, and the CPU time per request of the whole process (user +
system of every thread: glibc's helpers, xaio's workers, the SQ thread),
of the caller's thread alone, and of the SQ thread alone; for the rings,
``io_uring_enter`` calls and empty peeks per request.

Run::

    .venv/bin/python benchmarks/floor_sqpoll.py [--rounds 5] [--seconds 1] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import mmap
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import _glibc
import bench_posix
import floor_posix
import xaio.posix as P
from _common import drive_batch, make_file
from xaio._abi import uring as abi
from xaio.linux import IOBatch, io_destroy, io_setup
from xaio.uring import Ring, UringBatch

BLOCK = 4096
_TICK = os.sysconf("SC_CLK_TCK")


def sq_threads() -> dict[int, float]:
    """CPU seconds (user + system) used so far by each SQPOLL thread of this
    process, by thread id."""
    got: dict[int, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")].startswith("iou-sqp"):
            fields = stat[stat.rindex(")") + 2 :].split()
            got[int(tid)] = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return got


def sq_seconds_since(before: dict[int, float]) -> float:
    """CPU seconds the SQPOLL threads alive now used since *before* was taken
    (all of it for one started since: the kernel starts a ring's thread a
    little after ``io_uring_setup`` returns; a thread of a ring closed
    earlier that exited meanwhile is not counted)."""
    now = sq_threads()
    return sum(v - before.get(t, 0.0) for t, v in now.items())


@dataclass
class RingRun:
    """What a ring loop reports beside its rate."""

    sq_seconds: float = 0.0
    enters: int = 0
    empty_peeks: int = 0
    done: int = 0


def run_ring(
    fd: int,
    bufs: list[mmap.mmap],
    offsets: list[int],
    seconds: float,
    *,
    sqpoll: bool,
    idle: int | None,
    per_request: bool,
    spin: bool,
    wait_nr: int,
    info: RingRun,
) -> float:
    """Keep ``len(bufs)`` reads in flight on a Ring of its own; ops/s.

    *per_request*: one ``submit`` after each ``prep_read`` (else one per
    refilled batch); *spin*: with no completion there, peek again (else wait
    in ``io_uring_enter`` for *wait_nr* of them)."""
    k = len(bufs)
    flags = abi.IORING_SETUP_SQPOLL if sqpoll else 0
    with Ring(k, flags, sq_thread_idle=idle if sqpoll else None) as ring:
        prep, submit, peek, wait_cqes = ring.prep_read, ring.submit, ring.peek_batch, ring.wait_cqes
        wait_nr = min(wait_nr, k)
        noff = len(offsets)
        for i in range(k):
            prep(fd, bufs[i], offsets[i], user_data=i)
        submit()
        out: list[tuple[int, int, int]] = []
        done = empty = 0
        enter0 = ring.statistics()["enter"]
        sq0 = sq_threads()
        now = time.perf_counter
        t0 = now()
        deadline = t0 + seconds
        while now() < deadline:
            peek(out)
            if not out:
                empty += 1
                if spin:  # the SQ thread is working on them: no system call
                    continue
                out += wait_cqes(wait_nr)
            for ud, res, _flags in out:
                if res != BLOCK:
                    raise RuntimeError(f"ring read failed: {res}")
                done += 1
                prep(fd, bufs[ud], offsets[(done + k) % noff], user_data=ud)
                if per_request:
                    submit()
            if not per_request:
                submit()
            out.clear()
        elapsed = now() - t0
        info.sq_seconds += sq_seconds_since(sq0)
        info.enters += ring.statistics()["enter"] - enter0
        info.empty_peeks += empty
        info.done += done
        ring.wait_cqes(k, timeout=10.0)  # drain (not counted)
    return done / elapsed


def run_batch(
    fd: int,
    bufs: list[mmap.mmap],
    offsets: list[int],
    seconds: float,
    *,
    sqpoll: bool,
    spin: bool,
    wait_nr: int,
    info: RingRun,
) -> float:
    """The same loop on a :class:`UringBatch` (one submit per reaped batch);
    ops/s.  *spin*, *wait_nr*: as for :func:`run_ring`."""
    k = len(bufs)
    with UringBatch(k, setup_flags=abi.IORING_SETUP_SQPOLL if sqpoll else 0) as batch:
        noff = len(offsets)
        for i in range(k):
            batch.prep_pread(i, fd, bufs[i], offsets[i])
        batch.submit(range(k))
        slots, results = batch.done_slots, batch.done_res
        reap, set_offset, submit = batch.reap, batch.set_offset, batch.submit
        wait_nr = min(wait_nr, k)
        done = empty = 0
        enter0 = batch.ring.statistics()["enter"]
        sq0 = sq_threads()
        now = time.perf_counter
        t0 = now()
        deadline = t0 + seconds
        while now() < deadline:
            n = reap(0)
            if not n:
                empty += 1
                if spin:
                    continue
                n = reap(wait_nr)
            for j in range(n):
                if results[j] != BLOCK:
                    raise RuntimeError(f"batch read failed: {results[j]}")
                done += 1
                set_offset(slots[j], offsets[(done + k) % noff])
            submit(slots[:n])
        elapsed = now() - t0
        info.sq_seconds += sq_seconds_since(sq0)
        info.enters += batch.ring.statistics()["enter"] - enter0
        info.empty_peeks += empty
        info.done += done
        while batch.in_flight:  # drain (not counted)
            batch.reap(batch.in_flight, timeout=10.0)
    return done / elapsed


def run_iobatch(fd: int, bufs: list[mmap.mmap], offsets: list[int], seconds: float) -> float:
    """The same loop on an :class:`IOBatch` of its own (one ``io_submit`` per
    reaped batch); ops/s."""
    ctx = io_setup(2 * len(bufs))
    batch = IOBatch(ctx, len(bufs))
    try:
        return drive_batch(batch, fd, bufs, offsets, seconds, 0, 0)
    finally:
        batch.close()
        io_destroy(ctx)


def run_preadv(fd: int, bufs: list[mmap.mmap], offsets: list[int], seconds: float) -> float:
    """The same loop with one ``os.preadv(RWF_NOWAIT)`` per request and
    nothing else; ops/s."""
    k, noff = len(bufs), len(offsets)
    lists = [(b,) for b in bufs]
    preadv, nowait = os.preadv, os.RWF_NOWAIT
    done = 0
    now = time.perf_counter
    t0 = now()
    deadline = t0 + seconds
    while now() < deadline:
        for b in lists:
            if preadv(fd, b, offsets[(done + k) % noff], nowait) != BLOCK:
                raise RuntimeError("a short or failed read")
            done += 1
    return done / (now() - t0)


@dataclass
class Row:
    """One contender's rounds."""

    name: str
    run: Callable[[float], float]  # seconds -> ops/s
    ring: RingRun | None = None
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # us per request, whole process
    caller: list[float] = field(default_factory=list)  # us per request, caller's thread
    sq: list[float] = field(default_factory=list)  # us per request, the SQ thread


def measure(row: Row, seconds: float) -> None:
    """One round of *row*: ops/s and CPU per request (``floor_posix.timed``),
    plus the caller's thread and the SQ thread."""
    before = RingRun(**vars(row.ring)) if row.ring is not None else None
    t0 = resource.getrusage(resource.RUSAGE_THREAD)
    w0 = time.perf_counter()
    rate, cpu = bench_posix.timed(lambda: row.run(seconds))
    wall = time.perf_counter() - w0
    t1 = resource.getrusage(resource.RUSAGE_THREAD)
    caller = t1.ru_utime - t0.ru_utime + t1.ru_stime - t0.ru_stime
    row.rates.append(rate)
    row.cpu.append(cpu)
    row.caller.append(caller / (rate * wall) * 1e6)
    if row.ring is not None and before is not None:
        row.sq.append((row.ring.sq_seconds - before.sq_seconds) / (rate * wall) * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument(
        "--idle", default="1,1000", help="comma-separated sq_thread_idle values (ms) to try"
    )
    ap.add_argument(
        "--wait-nr", type=int, default=1, help="completions a waiting loop waits for (default 1)"
    )
    ap.add_argument("--dir", default=None, help="directory for the test file (not tmpfs)")
    args = ap.parse_args()
    lib = _glibc.load()
    size = 64 << 20
    path = make_file(size, args.dir)
    print(f"load average at the start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            offsets = floor_posix.cached_offsets(path, size)
            bufs = [mmap.mmap(-1, BLOCK) for _ in range(args.depth)]
            addrs = [ctypes.addressof(ctypes.c_char.from_buffer(b)) for b in bufs]
            P.aio_init()
            rows = [
                Row("glibc", lambda s: bench_posix.run_glibc(lib, fd, addrs, offsets, s)),
                Row("xaio.posix", lambda s: bench_posix.run_xaio(fd, bufs, offsets, s)),
                Row("preadv2/request", lambda s: run_preadv(fd, bufs, offsets, s)),
            ]

            def ring_row(
                name: str, sqpoll: bool, idle: int | None, per_request: bool, spin: bool
            ) -> Row:
                info = RingRun()
                return Row(
                    name,
                    lambda s: run_ring(
                        fd,
                        bufs,
                        offsets,
                        s,
                        sqpoll=sqpoll,
                        idle=idle,
                        per_request=per_request,
                        spin=spin,
                        wait_nr=args.wait_nr,
                        info=info,
                    ),
                    info,
                )

            idles = [int(v) for v in args.idle.split(",")]
            for idle in idles:
                rows.append(ring_row(f"ring sqpoll idle={idle} spin", True, idle, True, True))
            rows.append(
                ring_row(f"ring sqpoll idle={idles[-1]} wait", True, idles[-1], True, False)
            )
            rows.append(ring_row("ring enter/request", False, None, True, False))
            rows.append(ring_row("ring enter/batch", False, None, False, False))
            for sqpoll, spin in ((True, True), (True, False), (False, False)):
                info = RingRun()
                mode = "sqpoll " + ("spin" if spin else "wait") if sqpoll else "enter/batch"
                rows.append(
                    Row(
                        f"UringBatch {mode}",
                        functools.partial(
                            run_batch,
                            fd,
                            bufs,
                            offsets,
                            sqpoll=sqpoll,
                            spin=spin,
                            wait_nr=args.wait_nr,
                            info=info,
                        ),
                        info,
                    )
                )
            rows.append(Row("IOBatch submit/batch", lambda s: run_iobatch(fd, bufs, offsets, s)))
            for row in rows:  # warm-up (threads started, code paths taken): not counted
                row.run(0.2)
                if row.ring is not None:
                    vars(row.ring).update(vars(RingRun()))
            for i in range(args.rounds):
                for row in rows:
                    measure(row, args.seconds)
                glibc = rows[0].rates[-1]
                print(
                    f"round {i + 1}: "
                    + ", ".join(
                        f"{r.name} {r.rates[-1]:,.0f} ({r.rates[-1] / glibc:.2f})" for r in rows
                    ),
                    flush=True,
                )
        finally:
            os.close(fd)
    finally:
        path.unlink()
    report(rows)
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


def _fmt(xs: list[float], spec: str) -> str:
    return ", ".join(format(x, spec) for x in xs)


def report(rows: list[Row]) -> None:
    """Per row: ops/s per round, the paired ratios to glibc, CPU per request."""
    glibc = rows[0].rates
    print()
    print("ops/s per round; ratio to the glibc round of the same round; CPU us per request")
    for r in rows:
        ratios = [x / g for x, g in zip(r.rates, glibc, strict=True)]
        print(f"{r.name}:")
        print(f"  ops/s      [{_fmt(r.rates, ',.0f')}]  median {statistics.median(r.rates):,.0f}")
        print(f"  / glibc    [{_fmt(ratios, '.2f')}]  median {statistics.median(ratios):.2f}")
        print(f"  CPU/req    process [{_fmt(r.cpu, '.2f')}]  caller [{_fmt(r.caller, '.2f')}]")
        if r.ring is not None and r.ring.done:
            d = r.ring.done
            print(
                f"  SQ thread  [{_fmt(r.sq, '.2f')}] us/req; io_uring_enter "
                f"{r.ring.enters / d:.3f}/req, empty peeks {r.ring.empty_peeks / d:.2f}/req"
            )


if __name__ == "__main__":
    main()
