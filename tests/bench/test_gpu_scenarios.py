"""The GPU scenario benchmark's own machinery, on the CPU: it must keep working between GPU runs.

``--cpu-rehearsal`` runs a scenario with CPU stand-ins for the inference and the miner: the component,
the application with its inference meter, a miner process renamed like the application, and the
collection of alerts and results are all the real ones; only the GPU work is replaced. Detection of GPU
miners is measured on a GPU (``make bench``), never here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.helpers import ROOT

BENCH = ROOT / "bench" / "gpu_scenarios.py"


def test_a_renamed_miner_scenario_runs_end_to_end_and_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    options = [
        "--cpu-rehearsal",
        "--scenarios",
        "miner-renamed",
        "--warmup-seconds",
        "3",
        "--phase-seconds",
        "12",  # detection within one 5 s interval, with room for a loaded machine
        "--behaviors",
        "watched-app-instances",  # the rule under test: the host's load and processes trip no other
        "--app-name",
        f"ddt-app-{os.getpid()}",  # not the name of an application running elsewhere on this host
    ]
    done = subprocess.run(
        [sys.executable, str(BENCH), *options, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "CPU rehearsal" in done.stdout and "| miner-renamed |" in done.stdout
    document = json.loads(out.read_text())
    assert document["gpu_backend"] == "cpu"
    [result] = document["results"]
    # a second top-level process under the application's name: caught without any GPU
    assert result["status"] == "CPU rehearsal: detected"
    assert result["behaviors"] == ["watched-app-instances"]
    assert result["false_alarms"] == 0 and result["target_met"] is None


def test_unknown_scenarios_and_behaviors_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--scenarios", "miner-42"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "unknown scenario(s) miner-42" in done.stdout and "miner-in-process" in done.stdout
    done = subprocess.run(
        [sys.executable, str(BENCH), "--behaviors", "cpu-usage,cpu-use"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "unknown behavior(s) cpu-use of the default profile" in done.stdout
