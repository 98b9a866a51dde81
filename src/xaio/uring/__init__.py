"""io_uring driven from pure Python: the :class:`Ring` and the :class:`UringEngine`.

Some facts about io_uring
=========================

*The rings.*  ``io_uring_setup(2)`` returns an fd and fills ``struct
io_uring_params`` with the offsets of the submission (SQ) and completion (CQ)
rings inside memory the process maps from that fd (one mapping for both rings
when the kernel reports ``IORING_FEAT_SINGLE_MMAP``, plus one for the SQE
array).  We write 64-byte SQEs with one precompiled ``struct.pack_into`` each,
publish them by storing the SQ tail, and hand them over with
``io_uring_enter(2)``; completions appear as 16-byte CQEs between the CQ head
(ours) and the CQ tail (the kernel's), read with ``unpack_from``.  The SQ index
array is filled once with the identity at setup (liburing does the same), so a
submission writes only the SQE and the tail.

*Buffer lifetime.*  The kernel keeps the addresses it was given and uses them
until it posts the request's CQE -- which can be long after the syscall that
submitted it returned, and after a cancel was "successful".  So a buffer stays
pinned (:class:`xaio._buffers.Pin`) until the CQE carrying *its own*
``user_data`` has been reaped: the Ring keeps what its ``prep_*`` helpers pinned
in a table keyed by ``user_data``; the engine keeps it in the
:class:`~xaio._ops.InFlight` table.  No API here takes an integer address.

*The two-CQE cancel race.*  Cancelling (``IORING_OP_ASYNC_CANCEL`` or the
synchronous ``IORING_REGISTER_SYNC_CANCEL`` of Linux 6.0) produces a result for
the cancel -- 0 (found and cancelled), ``-ENOENT`` (not found: it completed
already, its CQE may still be waiting in the ring), ``-EALREADY`` (it is
running in an io-wq worker, which was signalled and will complete it) -- *and*
a CQE for the target (``-ECANCELED``, ``-EINTR``, or its real result).  The two
arrive in either order; measured on this machine, cancelling a read pending on
an empty pipe posts the cancel's CQE first and the target's ``-ECANCELED``
right after (both inside the same ``io_uring_enter``).  Only the target's CQE
releases its buffers.  A synchronous cancel is given a zero timeout: when the
request is running the kernel reports ``-ETIME`` (after rechecking once), which
the engine reports as :attr:`CancelOutcome.RUNNING`; probed here with a 64 MiB
page-cached read forced into an io-wq worker (``IOSQE_ASYNC``): ``-ETIME``, and
the target then completes with its full byte count -- or, rarely, with
``-ECANCELED``, when the worker had taken the request but not yet begun it (a
worker looks at the cancel mark before it starts).  A read pending on a pipe
or socket (armed on poll, even with ``IOSQE_ASYNC``) is always cancellable: 0,
then ``-ECANCELED``.  Closing an fd cancels nothing: a read pending on a pipe
whose read end was closed still completes when data arrives.

*Memory ordering.*  Without SQPOLL (we never set it by default: it costs a core
on a small machine) the kernel reads the SQ tail and the SQEs only inside
``io_uring_enter``, called by the thread that wrote them (or by another thread
after taking the engine's lock, whose acquire/release orders the writes).
Program order plus the syscall is enough on every architecture, so
:meth:`Ring.submit` needs no fence.  The CQ is different: the kernel (an io-wq
worker or an interrupt on another CPU) writes CQEs and then stores the tail
with ``smp_store_release``; we must load the tail with acquire semantics before
reading the CQEs, and finish reading the CQEs before the store of our head
lets the kernel reuse the slots.  Each Python-level access to the mapping is a
separate C call, which the C compiler cannot reorder, so what remains is the
CPU.  On x86-64 (TSO) loads are not reordered with older loads and stores are
not reordered with older loads: the plain accesses of the CQ protocol
(``RingQueue._take_cqes``, behind :meth:`Ring.peek_batch` and every reap)
*are* acquire/release there.  This is the one place the code relies on x86-64
ordering.  On arm64 they are not, so there the CQ protocol puts a full
fence (the acquire and release of a :class:`threading.Lock`, i.e. an atomic
read-modify-write with acquire and a store-release, which together order the
preceding tail load before the following CQE loads, and the CQE loads before
the head store) at exactly those two points.  SQPOLL (only on request) changes
the SQ side: a kernel thread reads the tail concurrently, so
``Ring._submit_sqpoll`` fences before the tail store and again between it
and the load of ``IORING_SQ_NEED_WAKEUP`` -- a store->load order that even
x86-64 keeps only with a locked instruction (liburing's ``io_uring_smp_mb``).

*The layers.*  Like liburing, the :class:`Ring` is set up (``_setup``:
``io_uring_setup``, the mappings), queued on (``_queue``: the SQ/CQ protocol,
the one place the ring's indices move and CQEs are read), prepared
(``_prep``: :func:`~xaio.uring._prep.prep_rw` writes every SQE xaio makes,
:func:`~xaio.uring._prep.prep_rw_slots` many plain reads and writes at once)
and registered with (``_register``); :class:`UringBatch` and
:class:`UringEngine` drive a Ring through that protocol.

*Two paths.*  :class:`UringEngine` takes :class:`~xaio._ops.Operation` records
(any opcode, any buffer, from any thread) and builds an SQE for each, checking
each operation as it writes its SQE (a bad one makes ``submit`` take back what
it wrote: the tail is published only at the end), and as ``READ_FIXED`` when
the buffer lies in one the caller registered (``register_buffers``);
:class:`UringBatch` is the lean path for a fixed set of requests: every slot
keeps a ready-made SQE image whose offset alone changes, its buffer is
registered with the ring (``READ_FIXED``: the kernel skips pinning the pages
per request, ~0.8 us of system time per 4 KiB O_DIRECT read here), and
completions are taken from the mapped CQ into two preallocated lists.  The
block layer plugs a submission of more than two requests until the syscall
returns, and a virtio disk completes a batch almost together, so how a
reaped batch is handed back matters: ``UringBatch.submit(slots, chunk)``
enters once per *chunk* SQEs, and the engine hands submissions made by
``on_done`` callbacks over in groups of four while it delivers the rest
(``_DEFER_FLUSH``).  One enter per request costs a virtio kick each (~20 us
of system time per read).  Taking a few completions at a time
(``UringBatch.reap(max_nr=8)``, ``UringEngine.reap(max_n=16)``) and
resubmitting them before taking the rest lets the device start on them while
Python handles the others, which keeps a deep queue as busy as fio keeps it.

*Unavailable.*  ``io_uring_setup`` fails with ``ENOSYS`` when the kernel lacks
io_uring (or a seccomp filter says so), and with ``EPERM`` when
``kernel.io_uring_disabled`` is 2 (or 1 and the process is not in
``kernel.io_uring_group``) or when a container's seccomp profile forbids it
(Docker's default does).  :class:`Ring` turns these into ``OSError`` with that
errno and a message naming the cause; :func:`unavailable_reason` probes once.
xaio also requires ``IORING_FEAT_NODROP`` and ``IORING_FEAT_EXT_ARG`` (Linux
5.11): without them it reports ``ENOSYS`` and the engine layer falls back.

*Overflow.*  With ``IORING_FEAT_NODROP`` a full CQ does not lose completions:
the kernel queues them internally and sets ``IORING_SQ_CQ_OVERFLOW`` in the SQ
flags; an ``io_uring_enter(IORING_ENTER_GETEVENTS)`` moves them into the CQ as
it drains.  The CQ protocol does that flush when it sees the flag.
Measured here: a ring with a 2-entry CQ given 64 NOPs keeps 62 in the kernel's
list and hands all of them over, in order, as the CQ is drained.
``io_uring_enter`` may answer ``EBUSY`` or ``EAGAIN`` (overflow not flushable,
out of memory): :meth:`Ring.submit` lets the kernel flush its overflow list
(``GETEVENTS``) and tries again a few times before reporting it; unconsumed
SQEs stay queued for the next submit.  ``EINTR`` is retried after running the
signal handlers (PEP 475), with what remains of a timeout.

*Fork.*  The child inherits the ring fd (and the mapping dups Python's mmap
holds), and the kernel does *not* stop it from using the parent's ring: probed
on this machine (Linux 6.18), a child can ``io_uring_enter`` on the parent's
fd, its NOP is accepted and its CQE lands in the *shared* CQ, where the parent
-- or the child -- would reap it; reading the CQ in the child steals the
parent's completions.  The mappings are inherited too.  So every Ring and
engine remembers the fork generation it was created in (bumped by
``os.register_at_fork``) and refuses any use in a child with ``OSError(EINVAL)``
naming the cause; closing it there (or garbage collection) only drops the
child's copies of the fd and mappings, which does not disturb the parent
(closing an io_uring fd cancels nothing: the ring lives until its last
reference goes).

*Requests belong to the thread that submitted them.*  A request still waiting
(a read pending on a pipe or socket, a poll) when the thread that submitted it
has exited is cancelled by the kernel as soon as it would run -- e.g. when the
data arrives: it completes with ``-ECANCELED`` although nobody asked, and the
data stays in the pipe (probed here, and tested).  Regular-file I/O already
under way still completes.  So submit from threads that outlive their requests
-- an event loop's thread, the main thread, a reaper -- and never from a
throw-away worker; :mod:`xaio.posix` hands requests from other threads to its
reaper for this reason.  The kernel also finishes each completion (the task
work that posts its CQE) in the submitting thread, interrupting it if it runs:
a thread that waits in ``io_uring_enter`` for the completions of requests
another thread submitted waits for that thread too.

*Slow file systems.*  A read or write on a file system that cannot be asked
not to block (FUSE, NFS, CIFS...) is not punted to io-wq: ``io_uring_enter``
runs it inline, and a batch of them one after the other (measured here on a
FUSE file taking 1 s per read: four reads, buffered or O_DIRECT, kept
``io_uring_enter`` for 4 s; ``IOSQE_ASYNC`` makes that 1 s).  And io_uring
gets a short transfer there wrong.  It finishes a short read or write on a
regular file by issuing the rest (the iovec advanced past what was done, at
the kiocb's position, which the file system is expected to advance); FUSE's
direct I/O for an asynchronous kiocb (a ``direct_io`` mount, or
``O_DIRECT``) transfers at a copy of that position and leaves it where it
was.  So a FUSE daemon serving 300 of 4096 bytes makes a READ at offset 0
report 4096 (600 with ``IOSQE_ASYNC``: one more try) with the file's bytes
0..300 over and over in the buffer, and an O_DIRECT WRITE report 4096 (600)
with each 300-byte piece written at offset 0 in turn, where ``os.preadv`` /
``os.pwrite`` say 300 (Linux 6.18).  With ``O_DIRECT`` on a FUSE mount
without ``direct_io`` the bytes are right but the count is above theirs.  So
:meth:`UringEngine.submit` sends every request on such an fd to a thread
engine (:func:`xaio.engine.route`, :func:`xaio.engine.fd_kind` asked once
per fd per batch), made on first use; a poll on the ring watches that
engine's eventfd, so ``reap``, ``fileno`` and ``cancel`` serve both.  The
lean :class:`UringBatch` and :class:`Ring` do only what they are told.

*Closing with work in flight.*  Closing the ring fd makes the kernel cancel and
reap in the background, and it may still be writing into our buffers after
``close(2)`` returned.  So :meth:`Ring.close` and :meth:`UringEngine.close`
first cancel everything and wait for every outstanding CQE, then unregister,
unmap and close.

References: io_uring_setup(2), io_uring_enter(2), io_uring_register(2),
io_uring_prep_read(3) and the other liburing prep pages, liburing's
``src/setup.c`` and ``src/queue.c``.
"""

from __future__ import annotations

from xaio.uring._batch import SlotInFlightError, UringBatch
from xaio.uring._engine import UringEngine
from xaio.uring._ring import Ring, unavailable_reason
from xaio.uring._setup import AT_FDCWD, STATX_SIZE, Completion

__all__ = [
    "Ring",
    "UringBatch",
    "SlotInFlightError",
    "UringEngine",
    "Completion",
    "unavailable_reason",
    "AT_FDCWD",
    "STATX_SIZE",
]

# The public path in reprs and tracebacks.  UringBatch keeps its home module:
# Sphinx reads the comments documenting its attributes from that module's source.
Ring.__module__ = UringEngine.__module__ = SlotInFlightError.__module__ = __name__
unavailable_reason.__module__ = __name__
