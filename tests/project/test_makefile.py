"""The Makefile's plans (``make -n`` in a folder holding a copy of it and pyproject.toml): what
`make demo`, `make build` and `make test` install, and into which virtual environment."""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from support.helpers import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.9 and 3.10: the dev extra installs tomli
    import tomli as tomllib

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


def test_makefile_build_installs_the_build_extra_without_the_dev_tools(tmp_path: Path) -> None:
    commands = plan(tmp_path, "build")
    assert "python3 -m venv .venv\n" in commands
    assert ".venv/bin/python -m pip install --quiet -e '.[build]'\n" in commands
    assert "[dev" not in commands and "bench]" not in commands
    assert ".venv/bin/python -m ddcustom.tooling.build\n" in commands


def test_makefile_build_after_a_demo_adds_jsonschema_and_after_a_test_installs_nothing(
    tmp_path: Path,
) -> None:
    plan(tmp_path)  # copies the files first: the stamps below must be newer than pyproject.toml
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch(mode=0o755)
    (venv / ".installed-demo").touch()  # as `make demo` leaves it: the package without jsonschema
    assert ".venv/bin/python -m pip install --quiet -e '.[build]'\n" in plan(tmp_path, "build")
    for stamp in (".installed-dev", ".installed-build"):  # as `make test` leaves them
        (venv / stamp).touch()
    assert "pip install" not in plan(tmp_path, "build")


def test_the_build_extra_holds_what_the_build_imports_beyond_the_package() -> None:
    """tooling/build.py imports, beyond the standard library and the package's own dependencies,
    only what the build extra installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    tree = ast.parse((ROOT / "src" / "ddcustom" / "tooling" / "build.py").read_text(encoding="utf-8"))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
    }
    installed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}

    def third_party(name: str) -> bool:
        spec = importlib.util.find_spec(name)
        return spec is not None and any((spec.origin or "").startswith(path) for path in installed)

    assert {name for name in imported if third_party(name)} == {"yaml", "jsonschema"}
    assert "PyYAML>=6.0" in project["dependencies"]
    assert [r.split(">")[0] for r in project["optional-dependencies"]["build"]] == ["jsonschema"]
