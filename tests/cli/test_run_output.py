"""``ddcustom run`` outside Greengrass: what it prints, and that a closed stdout stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from support.helpers import ROOT


def test_a_closed_stdout_stops_the_run_cleanly(tmp_path: Path) -> None:
    (tmp_path / "load").write_text("85")
    rule = {
        "name": "gpu-load",
        "metric": "gpu_load_per_inference",
        "criteria": {"comparisonOperator": "less-than", "value": {"number": 40}},
    }
    config = {
        "EnableGPUMetrics": True,
        "EnableDeviceDefenderReport": False,
        "SampleIntervalSeconds": 5,
        "DetectIntervalSeconds": 0.5,
        "GpuLoadFeedbackFile": str(tmp_path / "load"),
        "InferenceTimeFeedbackFile": str(tmp_path / "time"),
        "StateDirectory": str(tmp_path / "state"),
        "SecurityProfile": {"name": "p", "behaviors": [rule]},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # `ddcustom run | head -1`: the reader takes one line and goes away
    run = subprocess.Popen(
        [sys.executable, "-m", "ddcustom", "run", "--config", str(tmp_path / "config.json"), "--thing", "t"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        assert run.stdout is not None
        assert json.loads(run.stdout.readline())["kind"] == "report"
        run.stdout.close()
        (tmp_path / "load").write_text("86")  # an alarm to write: the next write meets the closed pipe
        status = run.wait(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=10)
    assert run.stderr is not None
    log = run.stderr.read().decode()
    assert status == 0, log
    assert "the reader of stdout went away; stopping" in log
    assert "Traceback" not in log and "Exception ignored" not in log
    assert log.count("Broken pipe") <= 1 and log.count("closed by its reader") <= 1
