"""nox sessions: the test suite on every supported CPython, the docs, the wheel.

    nox                  # everything (.ci/run runs this)
    nox -s tests-3.12    # one interpreter;  nox -l  lists the sessions
    nox -s docs          # sphinx-build -W -n into docs/_build/html
    nox -s wheel         # build, twine check, install the wheel elsewhere, smoke test

Each session runs in a fresh virtual environment.  An interpreter that is not
installed is reported and skipped, except in CI (``CI=true``), where it fails
the run.  Interpreters are found on PATH, else among pyenv's versions.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
ROOT = Path(__file__).resolve().parent

nox.options.sessions = [f"tests-{v}" for v in PYTHONS] + ["docs", "wheel"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = os.environ.get("CI", "").lower() in ("1", "true")


def _works(exe: str, version: str) -> bool:
    try:
        out = subprocess.run(
            [exe, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.strip() == version


def _find_interpreters() -> None:
    """Make ``python3.X`` on PATH the real interpreter for every supported X.

    pyenv puts shims for every version it knows on PATH, and a shim fails
    unless that version is selected; nox would take the shim.  A real
    interpreter found elsewhere is linked from a private directory put first
    on PATH (only ``python3.X`` names: ``python3`` and ``pip`` stay as they
    were).
    """
    links = ROOT / ".nox" / "interpreters"
    shutil.rmtree(links, ignore_errors=True)  # no stale link from an earlier run
    links.mkdir(parents=True)
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for version in PYTHONS:
        name = f"python{version}"
        found = shutil.which(name)
        if found and _works(found, version):
            continue
        candidates = sorted(
            glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*", "bin", name)),
            key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()],
            reverse=True,
        )
        for candidate in candidates:
            if _works(candidate, version):
                (links / name).symlink_to(candidate)
                break
    os.environ["PATH"] = f"{links}{os.pathsep}{os.environ.get('PATH', '')}"


_find_interpreters()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole test suite (pytest exits 5 when it collects nothing: a failure)."""
    session.install(".[test]")
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=sys.executable)
def docs(session: nox.Session) -> None:
    """The Sphinx site; a warning or a broken reference (-n) is an error."""
    session.install(".[docs]")
    out = ROOT / "docs" / "_build"
    shutil.rmtree(out, ignore_errors=True)
    session.run(
        "sphinx-build", "-W", "-n", "--keep-going", "-q", "-b", "html", "docs", str(out / "html")
    )


@nox.session(python=sys.executable)
def wheel(session: nox.Session) -> None:
    """Build the sdist and the wheel (from the sdist), check them, install the
    wheel alone in a fresh environment and smoke-test it outside the tree."""
    session.install("build", "twine")
    # outside the source tree, so that nothing there can stand in for the wheel
    tmp = Path(tempfile.mkdtemp(prefix="xaio-wheel-"))
    try:
        _build_install_smoke(session, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_install_smoke(session: nox.Session, tmp: Path) -> None:
    dist = tmp / "dist"
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    wheels = sorted(dist.glob("xaio-*.whl"))
    sdists = sorted(dist.glob("xaio-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        session.error(f"expected one wheel and one sdist in {dist}")
    session.run("twine", "check", "--strict", *map(str, wheels + sdists))

    env = tmp / "venv"
    session.run(sys.executable, "-m", "venv", str(env), external=True)
    py = str(env / "bin" / "python")
    session.run(py, "-m", "pip", "install", "-q", str(wheels[0]), external=True)
    smoke = tmp / "smoke.py"
    shutil.copy(ROOT / "tests" / "wheel_smoke.py", smoke)
    with session.chdir(tmp):
        session.run(str(env / "bin" / "xaio"), "info", external=True)
        session.run(py, str(smoke), str(ROOT), external=True)
