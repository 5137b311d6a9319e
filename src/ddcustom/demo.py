"""``make demo``: the component locally for about a minute, with the article's mining switch.

It starts ``ddcustom run`` with short intervals against feedback files in a temporary folder, runs
``ddcustom simulate mining`` a third of the way in and ``ddcustom simulate normal`` two thirds in, and
prints each report's custom metrics, what changed since the previous report, and the alerts.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional

SHOWN = ("gpu_load_per_inference", "avg_inference_time", "cpu_usage", "memory_usage", "miner_processes")


def _reader(stream: Any, lines: queue.Queue[Optional[str]]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _simulate(scenario: str, config: str) -> None:
    cmd = [sys.executable, "-m", "ddcustom", "simulate", scenario, "--config", config]
    print(f"\n>>> ddcustom simulate {scenario}", flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise SystemExit(f"ddcustom simulate {scenario} failed: {out.stderr.strip()}")
    print(f"    {out.stdout.strip()}\n", flush=True)


def _values(report: dict[str, Any]) -> dict[str, Any]:
    custom = report.get("custom_metrics", {})  # the demo's configuration keeps long names
    return {name: next(iter(entry[0].values())) for name, entry in custom.items()}


def _show_report(report: dict[str, Any], previous: Optional[dict[str, Any]], t: float) -> None:
    values = _values(report)
    header = report["header"]
    shown = "  ".join(f"{k}={values[k]:g}" for k in SHOWN if isinstance(values.get(k), (int, float)))
    print(f"[{t:5.1f}s] report {header['report_id']}: {shown}", flush=True)
    if previous is not None:
        changed = [
            f"{k} {previous.get(k)} -> {v}"
            for k, v in values.items()
            if k in SHOWN and k != "cpu_usage" and k != "memory_usage" and previous.get(k) != v
        ]
        if changed:
            print(f"          changed: {', '.join(changed)}", flush=True)


def _show_alert(alert: dict[str, Any], t: float) -> None:
    kind = alert.get("violationEventType")
    behavior = alert.get("behavior", {})
    criteria = behavior.get("criteria", {})
    rule = (
        f"{behavior.get('metric')} {criteria.get('comparisonOperator')} {json.dumps(criteria.get('value'))}"
    )
    label = "ALERT  " if kind == "in-alarm" else "CLEARED"
    seen = json.dumps(alert.get("metricValue"))
    print(f"[{t:5.1f}s] {label} {behavior.get('name')}: expected {rule}, saw {seen}", flush=True)


def run_demo(seconds: float, detect_interval: float, report_interval: int) -> int:
    with tempfile.TemporaryDirectory(prefix="ddcustom-demo-") as tmp:
        config_path = os.path.join(tmp, "config.json")
        config = {
            "EnableGPUMetrics": True,
            "EnableDeviceDefenderReport": False,  # no AWS here: reports go to stdout, faster than 300 s
            "SampleIntervalSeconds": report_interval,
            "DetectIntervalSeconds": detect_interval,
            "GpuLoadFeedbackFile": os.path.join(tmp, "gpu_load_fb"),
            "InferenceTimeFeedbackFile": os.path.join(tmp, "gpu_inference_fb"),
            "GpuBusyOutsideFeedbackFile": os.path.join(tmp, "gpu_busy_outside_fb"),
            "StateDirectory": os.path.join(tmp, "state"),
        }
        with open(config_path, "w") as f:
            json.dump(config, f)
        print(f"Demo: the component runs locally for {seconds:g} s with this configuration:")
        print(json.dumps(config, indent=2))
        _simulate("normal", config_path)

        proc = subprocess.Popen(
            [sys.executable, "-m", "ddcustom", "run", "--config", config_path, "--thing", "demo-device"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        lines: queue.Queue[Optional[str]] = queue.Queue()
        threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
        start = time.monotonic()
        steps = [(seconds / 3, "mining"), (2 * seconds / 3, "normal")]
        previous: Optional[dict[str, Any]] = None
        raised = cleared = 0
        try:
            while (elapsed := time.monotonic() - start) < seconds:
                if steps and elapsed >= steps[0][0]:
                    _simulate(steps.pop(0)[1], config_path)
                try:
                    line = lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if line is None:
                    print("the component stopped unexpectedly", file=sys.stderr)
                    return 1
                message = json.loads(line)
                if message["kind"] == "report":
                    _show_report(message["report"], previous, elapsed)
                    previous = _values(message["report"])
                elif message["kind"] == "alert":
                    _show_alert(message["alert"], elapsed)
                    raised += message["alert"].get("violationEventType") == "in-alarm"
                    cleared += message["alert"].get("violationEventType") == "alarm-cleared"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        print(
            f"\nDone: {raised} alert(s) raised, {cleared} cleared. The component stopped cleanly on SIGTERM."
        )
        return 0 if raised and cleared else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddcustom.demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60, help="how long the demo runs (default 60)")
    parser.add_argument("--detect-interval", type=float, default=2, help="DetectIntervalSeconds (default 2)")
    parser.add_argument("--report-interval", type=int, default=6, help="SampleIntervalSeconds (default 6)")
    args = parser.parse_args(argv)
    return run_demo(args.seconds, args.detect_interval, args.report_interval)


if __name__ == "__main__":
    raise SystemExit(main())
