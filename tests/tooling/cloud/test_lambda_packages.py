"""The stack's three Lambda packages: each is its handler and the package's own modules it needs, byte
for byte the same for the same sources (setup compares the hash), and imports with the standard library
and boto3 alone, as in Lambda."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest

from ddcustom.tooling.cloud.lambda_steps import COMMON_FILES, FunctionSpec
from ddcustom.tooling.cloud.options import CloudOptions
from ddcustom.tooling.cloud.prevalence_steps import prevalence_spec
from ddcustom.tooling.cloud.quarantine_steps import quarantine_package, quarantine_spec
from ddcustom.tooling.cloud.silent_steps import silent_spec
from ddcustom.tooling.cloud.steps import Env
from support.helpers import ROOT

OPTIONS = CloudOptions(region="eu-west-1")
ENV = Env(account="111122223333", region="eu-west-1")
TOPIC = "arn:aws:sns:eu-west-1:111122223333:ddcustom-alerts"
SPECS = {
    "quarantine": quarantine_spec(OPTIONS),
    "silent": silent_spec(OPTIONS, TOPIC),
    "prevalence": prevalence_spec(OPTIONS, ENV, TOPIC),
}
# What each handler must see of ddcustom in Lambda: the modules in its package, nothing else.
CHECKS = {
    "quarantine": "import quarantine; print(quarantine.handler(['x'], iot=object())['ignored'])",
    "silent": "import silent, ddcustom.tooling.cloud.fleet_index as f; print(silent.ATTRIBUTE, f.INDEX)",
    "prevalence": "import prevalence, ddcustom.tooling.cloud.prevalence_aggregate as a; print(a.KIND)",
}
PRINTED = {"quarantine": "['']", "silent": "ddcustomSilent AWS_Things", "prevalence": "rare-program"}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_cloud_lambda_package_is_its_handler_and_what_it_imports(name: str, tmp_path: Path) -> None:
    spec: FunctionSpec = SPECS[name]
    package = spec.package()
    assert package == spec.package()
    assert spec.handler == f"{name}.handler"
    src = ROOT / "src/ddcustom"
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        files = {**spec.files, **COMMON_FILES}
        assert sorted(archive.namelist()) == sorted(files)
        for entry, source in files.items():
            assert archive.read(entry) == (src / source).read_bytes(), entry
    (tmp_path / "function.zip").write_bytes(package)
    # An interpreter without site customisation: the package first, then boto3 where it is installed
    # (Lambda provides it), and nothing of ddcustom outside the package.
    boto3_home = str(Path(boto3.__file__).parents[1])
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{tmp_path / 'function.zip'}{os.pathsep}{boto3_home}",
    }
    check = CHECKS[name] + "; import ddcustom; print(ddcustom.__file__)"
    done = subprocess.run(
        [sys.executable, "-S", "-c", check], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    printed, location = done.stdout.strip().splitlines()
    assert printed == PRINTED[name]
    assert location.startswith(str(tmp_path / "function.zip"))


def test_cloud_quarantine_package_is_the_one_its_spec_makes() -> None:
    assert quarantine_package() == SPECS["quarantine"].package()
