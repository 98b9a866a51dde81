"""``python -m xaio``: the command line (see :mod:`xaio.cli`)."""

from __future__ import annotations

import sys

from xaio.cli import main

if __name__ == "__main__":
    sys.exit(main())
