"""``ddcustom dev`` as a user runs it: the component under the stand-in nucleus, in a child process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import jsonschema
import psutil

from support.helpers import REPORT_SCHEMA, ROOT, WAIT, Lines, reap, start

THING = "dev-test"
REPORT_TOPIC = f"$aws/things/{THING}/defender/metrics/json"


def published(lines: Lines, wanted: Callable[[str, Any], bool]) -> Any:
    """The body of the first printed message (``--> where topic`` then indented JSON) that is wanted."""
    while True:
        header = lines.next()
        if not header.startswith("--> "):
            continue
        topic = header.split()[-1]
        text = ""
        while True:
            text += lines.next()
            try:
                body = json.loads(text)
                break
            except ValueError:
                continue
        if wanted(topic, body):
            return body


def dev(*args: str) -> subprocess.Popen[str]:
    """``ddcustom dev`` in a process group of its own: helpers.reap ends it with the component."""
    command = [sys.executable, "-m", "ddcustom", "dev", "--recipe", str(ROOT / "recipe.yaml"), *args]
    return start(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def is_report(topic: str, _body: Any) -> bool:
    return topic == REPORT_TOPIC


def test_devnucleus_dev_prints_reports_takes_typed_merges_and_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "load").write_text("85\n")
    (tmp_path / "time").write_text("180\n")
    process = dev("--thing", THING)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    stdout, stderr = Lines(process.stdout), Lines(process.stderr)
    try:
        first = published(stdout, is_report)
        jsonschema.validate(first, REPORT_SCHEMA)
        assert "gpu_load_per_inference" not in first.get("custom_metrics", {})  # off by default

        merge = {
            "EnableGPUMetrics": True,
            "GpuLoadFeedbackFile": str(tmp_path / "load"),
            "InferenceTimeFeedbackFile": str(tmp_path / "time"),
            "GpuBusyOutsideFeedbackFile": str(tmp_path / "outside"),
        }
        process.stdin.write(json.dumps(merge) + "\n")
        process.stdin.flush()
        with_gpu = published(
            stdout,
            lambda topic, body: is_report(topic, body) and "gpu_load_per_inference" in body["custom_metrics"],
        )
        assert with_gpu["custom_metrics"]["gpu_load_per_inference"] == [{"number": 85}]
        assert with_gpu["header"]["report_id"] > first["header"]["report_id"]

        component = psutil.Process(process.pid).children()
        assert component, "the component is not running"
        process.send_signal(signal.SIGTERM)  # as `timeout` or `kill` would
        assert process.wait(WAIT) == 0
        _gone, alive = psutil.wait_procs(component, timeout=5)
        assert alive == [], "the component outlived ddcustom dev"
        while not any("states reported: ['RUNNING']" in line for line in stderr.seen):
            stderr.next()
        assert not any("FAILED" in line for line in stderr.seen)
    finally:
        reap(process)


def test_devnucleus_dev_shows_a_typed_merge_the_component_refuses_as_a_failed_deployment() -> None:
    # What an operator gets from a bad merge on a device: the deployment fails before anything applies,
    # with the component's reason, and the component runs on with its settings.
    process = dev("--thing", THING)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    stdout, stderr = Lines(process.stdout), Lines(process.stderr)
    try:
        first = published(stdout, is_report)
        process.stdin.write(json.dumps({"EnableGPUMetrics": "yes"}) + "\n")
        process.stdin.flush()
        while "deployment of the typed merge" not in (line := stderr.next()):
            pass
        assert "FAILED (FAILED_NO_STATE_CHANGE)" in line
        assert "Components reported that their to-be-deployed configuration is invalid" in line
        assert "configuration key 'EnableGPUMetrics'" in line and '"yes"' in line
        while "nothing was applied" not in stderr.next():  # the component's own log may come between
            pass
        # it runs on, with its settings: a valid merge after it applies and reports at once
        process.stdin.write(json.dumps({"MaxReportListSize": 50}) + "\n")
        process.stdin.flush()
        later = published(stdout, is_report)
        assert later["header"]["report_id"] > first["header"]["report_id"]
        assert "gpu_load_per_inference" not in later.get("custom_metrics", {})  # GPU metrics still off
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 1
        while not any("1 deployment(s) failed: exit 1" in line for line in stderr.seen):
            stderr.next()
    finally:
        reap(process)


def test_devnucleus_dev_ends_with_the_component_and_reports_its_failure() -> None:
    # An empty thing name makes the component exit at once with status 1: restarted, then BROKEN, and dev
    # ends without waiting out --seconds.
    process = dev("--thing", "", "--seconds", "300")
    try:
        _out, err = process.communicate(timeout=WAIT)
    finally:
        reap(process)
    assert process.returncode == 1
    assert err.count("the process exited with status 1") == 3
    assert "the component is BROKEN" in err
    assert "in broken state after deployment" in err


def test_devnucleus_dev_shows_a_merge_refused_at_start_as_the_deployment_failure_it_would_be() -> None:
    # The deployment that adds the component with an invalid merge: no component runs to ask first, so it
    # starts, reports ERRORED, is started again, is BROKEN at the third error, and the deployment fails
    # and rolls back.
    process = dev("--thing", THING, "--merge", '{"DetectIntervalSeconds": -1}', "--seconds", "300")
    try:
        _out, err = process.communicate(timeout=WAIT)
    finally:
        reap(process)
    assert process.returncode == 1
    assert err.count("the component is ERRORED (the component reported ERRORED") == 2
    assert "the component is BROKEN" in err
    assert "with --merge: deployment" in err and "FAILED (FAILED_ROLLBACK_COMPLETE)" in err
    assert "in broken state after deployment" in err and "rolled back: the component is removed" in err
