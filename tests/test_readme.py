"""Every ```python block of README.md and of the documentation pages (docs/)
runs as it stands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))


def python_blocks(path: Path) -> list[str]:
    """The ```python fenced blocks of a markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


EXAMPLES = [
    pytest.param(block, id=f"{path.relative_to(ROOT)}:{i}")
    for path in (README, *PAGES)
    for i, block in enumerate(python_blocks(path))
]


def test_readme_has_examples() -> None:
    assert python_blocks(README)
    assert len(python_blocks(ROOT / "docs" / "tutorial.md")) >= 10


@pytest.mark.parametrize("code", EXAMPLES)
def test_example_runs(code: str, tmp_path: Path) -> None:
    # a fresh interpreter each, in an empty directory: examples must not
    # depend on each other
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"example failed:\n{proc.stderr}"
