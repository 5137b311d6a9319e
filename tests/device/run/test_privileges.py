"""The component as deployed: started by root, run as another user, with the privileged reader.

Each run happens in a PID namespace of its own (``unshare --pid --mount-proc``): the component sees only
the processes of the test, so nothing else on the machine changes a result. The component runs as a
user of its own; the program it must name runs as root, which that user may not inspect.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ddcustom.device.alerts.evidence import WEAK_IDENTITY
from ddcustom.device.run import privileges
from support.helpers import ROOT

COMPONENT_UID = 4321  # no passwd entry: a user of its own, as ggc_user is
RULE = {
    "name": "new-executables",
    "metric": "new_executables",
    "criteria": {
        "comparisonOperator": "less-than-equals",
        "value": {"number": 0},
        "consecutiveDatapointsToAlarm": 1,
        "consecutiveDatapointsToClear": 1,
    },
}

# In the namespace: `ddcustom run` as the component's user; once it has learned, PROGRAM is started (as
# root), and the first in-alarm alert that names it is printed.
SCENARIO = """
import json, subprocess, sys, time
options = json.loads(sys.argv[2])
command = [sys.executable, "-m", "ddcustom", "run", "--config", sys.argv[1], "--thing", "cam-1", *options]
component = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
program = None
deadline = time.monotonic() + 30
for line in component.stdout:
    message = json.loads(line)
    if program is None and message["kind"] == "report":  # the first cycle: learning has begun
        time.sleep(1.6)  # longer than BaselineLearningSeconds: what runs now is learned
        program = subprocess.Popen(sys.argv[3:])
    elif program is not None and message["kind"] == "alert":
        alert = message["alert"]
        named = [p["pid"] for p in alert.get("evidence", {}).get("processes", [])]
        if alert["violationEventType"] == "in-alarm" and program.pid in named:
            print(json.dumps({"alert": alert, "program": program.pid}), flush=True)
            break
    if time.monotonic() > deadline:
        break
if program is not None:
    program.kill()
component.terminate()
component.wait(15)
"""


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder the component's user may enter (pytest's own tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="ddcustom-deployed-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root (to start the component as another user) and unshare",
)


def run_as_deployed(tmp_path: Path, program: list[str], *options: str) -> dict[str, Any]:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, COMPONENT_UID, COMPONENT_UID)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "StateDirectory": str(state),
                "BaselineLearningSeconds": 1,
                "DetectIntervalSeconds": 0.5,
                "EnableDeviceDefenderReport": False,
                "FleetShadow": False,
                "SecurityProfile": {"name": "p", "behaviors": [RULE]},
            }
        )
    )
    config.chmod(0o644)
    isolate = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    code = textwrap.dedent(SCENARIO)
    command = [*isolate, sys.executable, "-c", code, str(config), json.dumps(options), *program]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout, f"no alert; the component said:\n{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(done.stdout)
    result["log"] = done.stderr
    return result


def program_copy(tmp_path: Path) -> Path:
    """A program the component has never seen: a copy of sleep under another name, only root may read."""
    copy = tmp_path / "kworker-copy"
    shutil.copy("/bin/sleep", copy)
    copy.chmod(0o700)
    return copy


@needs_root
def test_run_as_another_user_names_a_root_program_by_path_and_sha256(folder: Path) -> None:
    program = program_copy(folder)
    result = run_as_deployed(folder, [str(program), "30"], "--user", str(COMPONENT_UID))

    [described] = [p for p in result["alert"]["evidence"]["processes"] if p["pid"] == result["program"]]
    assert described["exe"] == str(program)
    assert described["sha256"] == hashlib.sha256(program.read_bytes()).hexdigest()
    assert described["user"] == "root"
    assert "unknowable" not in described
    assert privileges.MODES[privileges.PRIVILEGED_READER] in result["log"]


@needs_root
def test_run_as_another_user_without_the_reader_still_sees_the_root_program(folder: Path) -> None:
    program = program_copy(folder)
    options = ("--user", str(COMPONENT_UID))
    result = run_as_deployed(folder, [str(program), "30"], *options, "--privileged-reader", "off")

    named = [p for p in result["alert"]["evidence"]["processes"] if p["pid"] == result["program"]]
    assert len(named) == 1, result["alert"]
    [described] = named
    assert described["unknowable"] == "no access"
    assert "sha256" not in described or described["sha256"] == ""
    assert described["identity"] == WEAK_IDENTITY  # the alert says plainly why there is no path
    assert described["code_kb"]["VmExe"] > 0
    assert privileges.MODES[privileges.UNPRIVILEGED] in result["log"]
