"""xaio: asynchronous I/O for Python, done properly.

Layers (see docs/architecture.md):

- :mod:`xaio.linux` — Linux native AIO (``io_setup`` ... ``io_destroy``), raising OSError;
- :mod:`xaio.libaio` — the same in libaio's convention (negated errno returned);
- :func:`aligned_buffer` — memory aligned for O_DIRECT.

Importing xaio starts no thread and makes no system call.
"""

from __future__ import annotations

from xaio._memory import aligned_buffer, dio_alignment

__version__ = "0.1.0"

__all__ = ["__version__", "aligned_buffer", "dio_alignment"]
