"""``ddcustom`` where boto3 is missing (a device, a workstation without the cloud extra): every way into
``ddcustom cloud`` says how to install it. Each case runs ``ddcustom`` in a Python whose import system
finds no boto3 or botocore, as a Python without them would."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support.helpers import ROOT

INSTALL = "pip install '.[cloud]'"
# ddcustom in a Python where boto3 and botocore are not found: an import finder ahead of all others
# answers for them as an empty site-packages would.
WITHOUT_BOTO3 = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("boto3", "botocore"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from ddcustom.cli.main import main
sys.exit(main())
"""


def ddcustom(*args: str, boto3: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "100"}
    env.pop("SVCUID", None)
    code = "from ddcustom.cli.main import main; import sys; sys.exit(main())" if boto3 else WITHOUT_BOTO3
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_the_finder_hides_boto3_as_a_python_without_it_would() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_BOTO3.replace("from ddcustom.cli.main import main", "import boto3")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "ModuleNotFoundError: No module named 'boto3'" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("cloud",),
        ("cloud", "setup", "--plan"),
        ("cloud", "status", "--region", "eu-west-1"),
        ("cloud", "release", "cam-1"),
        ("cloud", "--bogus"),
    ],
)
def test_a_cloud_command_without_boto3_says_how_to_install_it(args: tuple[str, ...]) -> None:
    done = ddcustom(*args)
    assert done.returncode == 2
    assert INSTALL in done.stderr and "needs boto3" in done.stderr
    assert "invalid choice" not in done.stderr and "required" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    "args",
    [("--help",), ("cloud", "--help"), ("cloud", "setup", "--help"), ("cloud", "status", "-h")],
)
def test_the_help_without_boto3_says_how_to_install_it(args: tuple[str, ...]) -> None:
    done = ddcustom(*args)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # as wrapped to any width
    said = "ddcustom cloud needs boto3, which this Python does not have: pip install boto3"
    assert f"{said} (in the ddcustom repository: {INSTALL})" in text


def test_the_command_list_without_boto3_marks_cloud() -> None:
    text = " ".join(ddcustom("--help").stdout.split())
    assert "deployment) (needs boto3, not installed here)" in text


def test_with_boto3_nothing_is_said_about_it() -> None:
    for args in (("--help",), ("cloud", "setup", "--help")):
        done = ddcustom(*args, boto3=True)
        assert done.returncode == 0
        assert "needs boto3" not in done.stdout
    done = ddcustom("cloud", boto3=True)
    assert done.returncode == 2  # argparse: an action is required, and it lists them
    assert "the following arguments are required: {setup,teardown,status,release" in done.stderr
    assert "needs boto3" not in done.stderr
