"""Which process a kernel object belongs to.

An io_uring ring and a Linux AIO context belong to the process that made
them.  A forked child inherits the Python objects and the ring's mapping,
but using them there would steal the parent's completions (io_uring) or hand
the kernel a context id it does not know in this process (Linux AIO).  So an
object records its :class:`Owner` when it is made and checks it before each
use: in a forked child the check raises ``OSError(EINVAL)``.

``os.getpid()`` is a system call (glibc does not cache it), too dear for a
check on every submission, so the owner is told apart by a fork generation:
a counter that an ``os.register_at_fork`` hook increments in every child.
"""

from __future__ import annotations

import errno
import os

from xaio._syscall import oserror

__all__ = ["Owner", "generation"]

#: The fork generation of this process: 0 in the process that imported xaio,
#: incremented in each forked child.  A check too hot for :class:`Owner`'s
#: property keeps ``generation[0]`` and compares it with the current one.
generation = [0]


def _after_fork_in_child() -> None:
    generation[0] += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class Owner:
    """The process that made an object (its pid and fork generation).

    Args:
        what: what the object is, for the error message ("io_uring ring").
    """

    __slots__ = ("_generation", "pid", "_what")

    def __init__(self, what: str) -> None:
        self._generation = generation[0]
        #: The id of the process the object belongs to.
        self.pid = os.getpid()
        self._what = what

    @property
    def foreign(self) -> bool:
        """True in a process forked from the owner (or from its children)."""
        return self._generation != generation[0]

    def check(self) -> None:
        """Refuse use in a forked child.

        Raises:
            OSError: ``EINVAL`` when this process is not the owner.
        """
        if self._generation != generation[0]:
            raise self.error()

    def error(self) -> OSError:
        """The ``OSError(EINVAL)`` that :meth:`check` raises in a child."""
        err = oserror(errno.EINVAL)
        err.strerror = (
            f"{err.strerror}: this {self._what} belongs to process {self.pid}; a forked "
            "child must not use it (it would steal the parent's completions): create a new one"
        )
        return err
