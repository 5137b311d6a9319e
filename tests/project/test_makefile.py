"""The Makefile's plans (``make -n`` in a folder holding a copy of it and pyproject.toml): what
`make demo` and `make test` install, and into which virtual environment."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from support.helpers import ROOT

INHERITED = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PYTHON", "VENV"}


def plan(folder: Path, *args: str) -> str:
    """The commands make would run in ``folder``, without running them."""
    for name in ("Makefile", "pyproject.toml"):
        if not (folder / name).exists():
            shutil.copy(ROOT / name, folder / name)
    # Not what an outer make passes down (`make test PYTHON=...` exports PYTHON through MAKEFLAGS).
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    done = subprocess.run(
        ["make", "-n", "-C", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=env,
    )
    return done.stdout


def test_makefile_demo_installs_the_package_without_the_dev_tools(tmp_path: Path) -> None:
    commands = plan(tmp_path, "demo")
    assert "python3 -m venv .venv\n" in commands
    assert ".venv/bin/python -m pip install --quiet -e .\n" in commands
    assert "[dev" not in commands and "bench]" not in commands


def test_makefile_test_after_a_demo_still_installs_the_dev_tools(tmp_path: Path) -> None:
    plan(tmp_path)  # copies the files first: the stamp below must be newer than pyproject.toml
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch(mode=0o755)
    (venv / ".installed-demo").touch()  # as `make demo` leaves it
    assert "pip install" not in plan(tmp_path, "demo")
    assert ".venv/bin/python -m pip install --quiet -e '.[dev,bench]'\n" in plan(tmp_path, "test")


def test_makefile_another_python_gets_its_own_venv(tmp_path: Path) -> None:
    commands = plan(tmp_path, "test", "PYTHON=/opt/python/bin/python3.9")
    assert "/opt/python/bin/python3.9 -m venv .venv-python3.9\n" in commands
    assert ".venv-python3.9/bin/mypy" in commands
    assert not any(line.startswith(".venv/") for line in commands.splitlines())
