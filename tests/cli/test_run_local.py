"""The command line outside Greengrass, run as users run it: real processes, real /proc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema

from support.helpers import MINING_RULES, REPORT_SCHEMA, Lines, profile, reap, start


def ddcustom(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SVCUID", "AWS_IOT_THING_NAME")}
    return subprocess.run(
        [sys.executable, "-m", "ddcustom", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def write_config(tmp_path: Path, **keys: Any) -> Path:
    config = {
        "GpuLoadFeedbackFile": str(tmp_path / "load"),
        "InferenceTimeFeedbackFile": str(tmp_path / "time"),
        "GpuBusyOutsideFeedbackFile": str(tmp_path / "outside"),
        "StateDirectory": str(tmp_path / "state"),
        "SecurityProfile": profile(*MINING_RULES),  # no rule the host's load or processes trip
        **keys,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_collect_once_prints_a_valid_report(tmp_path: Path) -> None:
    result = ddcustom("collect", "--once", "--config", str(write_config(tmp_path, UseShortNames=True)))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, REPORT_SCHEMA)
    assert "hed" in report and "header" not in report


def test_simulate_writes_the_article_values_atomically(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert ddcustom("simulate", "mining", "--config", str(config)).returncode == 0
    assert float((tmp_path / "load").read_text()) == 85
    assert float((tmp_path / "time").read_text()) == 180
    assert ddcustom("simulate", "normal", "--config", str(config)).returncode == 0
    assert float((tmp_path / "load").read_text()) < 40
    assert float((tmp_path / "time").read_text()) < 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "load", "time"]  # no temp files left


def test_run_writes_json_lines_raises_alerts_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        EnableGPUMetrics=True,
        EnableDeviceDefenderReport=False,
        SampleIntervalSeconds=5,
        DetectIntervalSeconds=0.5,
    )
    assert ddcustom("simulate", "mining", "--config", str(config)).returncode == 0
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr_file:
        proc = start(
            [sys.executable, "-m", "ddcustom", "run", "--config", str(config), "--thing", "t1"],
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
        )
    lines: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        stdout = Lines(proc.stdout)
        while sum(m["kind"] == "alert" for m in lines) < 2:
            lines.append(stdout.next_json(timeout=60))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        reap(proc)
    stderr = log.read_text()
    assert proc.returncode == 0, stderr
    # the kernel names the sender of the signal: this test
    assert f"SIGTERM received from pid {os.getpid()} uid {os.getuid()}, stopping" in stderr
    report = next(m for m in lines if m["kind"] == "report")
    assert report["topic"] == "$aws/things/t1/defender/metrics/json"
    jsonschema.validate(report["report"], REPORT_SCHEMA)
    alerts = [m for m in lines if m["kind"] == "alert"]
    assert {a["alert"]["behavior"]["name"] for a in alerts} == {
        "gpu-load-per-inference",
        "avg-inference-time",
    }
    assert all(a["topic"] == "ddcustom/t1/alerts" and a["alert"]["thingName"] == "t1" for a in alerts)


def test_demo_shows_the_mining_switch_with_an_alert_raised_and_cleared() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SVCUID"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ddcustom.tooling.demo",
            "--seconds",
            "18",  # each third (6 s) outlasts the 5 s report interval: a report in each, even on a busy host
            "--detect-interval",
            "0.5",
            "--report-interval",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert ">>> ddcustom simulate mining" in out and ">>> ddcustom simulate normal" in out
    assert "changed: gpu_load_per_inference 20 -> 85" in out
    assert "ALERT   gpu-load-per-inference" in out and "CLEARED gpu-load-per-inference" in out
