"""The layer contracts of pyproject.toml: every package of the device is placed in a layer, and
lint-imports (run by `make test`) refuses an import from a lower layer to a higher one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.helpers import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.9 and 3.10: the dev extra installs tomli
    import tomli as tomllib

PACKAGE = ROOT / "src" / "ddcustom"


def contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}


def layered(contract: dict[str, object]) -> set[str]:
    layers = contract["layers"]
    assert isinstance(layers, list)
    return {name.strip() for layer in layers for name in str(layer).split("|")}


def modules_under(folder: Path, dotted: str) -> set[str]:
    """The modules and packages directly in ``folder`` (data folders and __main__ left out)."""
    found = set()
    for child in folder.iterdir():
        if child.is_dir() and (child / "__init__.py").exists():
            found.add(f"{dotted}.{child.name}")
        elif child.suffix == ".py" and child.stem not in ("__init__", "__main__"):
            found.add(f"{dotted}.{child.stem}")
    return found


def test_every_part_of_the_package_is_in_a_layer() -> None:
    assert layered(contracts()["package"]) == modules_under(PACKAGE, "ddcustom")


def test_every_part_of_the_device_is_in_a_layer_of_the_pipeline() -> None:
    assert layered(contracts()["pipeline"]) == modules_under(PACKAGE / "device", "ddcustom.device")


def test_make_test_checks_the_layers() -> None:
    lint = (ROOT / "Makefile").read_text(encoding="utf-8").split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "lint-imports" in lint


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is installed with the dev extra")  # fmt: skip
def test_an_import_from_a_lower_layer_to_a_higher_one_is_refused(tmp_path: Path) -> None:
    """A copy of the package where a source imports the agent: lint-imports names that import."""
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "ddcustom", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    network = copy / "ddcustom" / "device" / "sources" / "network.py"
    network.write_text(network.read_text(encoding="utf-8") + "\nfrom ddcustom.device import agent\n")
    lint_imports = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint_imports), "--no-cache", "--contract", "pipeline"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0, done.stdout
    assert "ddcustom.device.sources.network -> ddcustom.device.agent" in done.stdout
