"""The io_uring suite runs only where io_uring works: every test here is
skipped, saying why, where the kernel refuses it (ENOSYS, EPERM under
seccomp, ``kernel.io_uring_disabled``)."""

from __future__ import annotations

import pytest

from xaio import uring

REASON = uring.unavailable_reason()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip before any fixture (a ring) is made."""
    if REASON is not None:
        pytest.skip(f"io_uring unavailable: {REASON}")
