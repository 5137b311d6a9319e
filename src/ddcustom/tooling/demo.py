"""``make demo``: the component locally for about a minute, with the article's mining switch.

It starts ``ddcustom run`` with short intervals against feedback files in a temporary folder, runs
``ddcustom simulate mining`` a third of the way in and ``ddcustom simulate normal`` two thirds in, and
prints, each with its time since the start, the reports' custom metrics, what changed since the previous
report, and the alerts with their rule in words; at the end, how long each alarm took to come and go.
Ctrl-C (or SIGTERM) stops the component and the demo with exit status 130 (143).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ddcustom.device.detect.profile import load_profile
from ddcustom.tooling.child import stop_child

SHOWN = ("gpu_load_per_inference", "avg_inference_time", "cpu_usage", "memory_usage", "miner_processes")
CHANGES = ("gpu_load_per_inference", "avg_inference_time", "miner_processes")  # CPU and memory always move
# The behaviors of the built-in profile that the feedback files trip: the demo succeeds when each of them
# raised an alarm and cleared it.
DEMO_BEHAVIORS = ("gpu-load-per-inference", "avg-inference-time")
PROFILE = "crypto-mining"
SCENARIO_LOAD = {"mining": 85, "normal": 20}  # the GPU load per inference `ddcustom simulate` writes
OPERATOR_WORDS = {
    "less-than": "must stay below",
    "less-than-equals": "must stay at or below",
    "greater-than": "must stay above",
    "greater-than-equals": "must stay at or above",
    "in-set": "must be one of",
    "not-in-set": "must not be one of",
    "in-cidr-set": "must be within",
    "not-in-cidr-set": "must not be within",
    "in-port-set": "must be one of the ports",
    "not-in-port-set": "must not be one of the ports",
}
LABELS = {"in-alarm": "ALERT  ", "alarm-cleared": "CLEARED", "alarm-invalidated": "INVALID"}


class _Stopped(Exception):
    """Ctrl-C or SIGTERM: stop the component, then the demo."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise _Stopped(signum)


@dataclass
class _Timeline:
    """When each step happened, in seconds since the demo started."""

    written: dict[str, float] = field(default_factory=dict)  # scenario -> when the switch to it was written
    last_written: Optional[str] = None
    first_report: dict[str, float] = field(default_factory=dict)  # scenario -> first report showing it
    first_event: dict[str, float] = field(default_factory=dict)  # in-alarm / alarm-cleared -> when
    raised: set[str] = field(default_factory=set)
    cleared: set[str] = field(default_factory=set)
    datapoints: dict[str, int] = field(default_factory=dict)  # in-alarm / alarm-cleared -> datapoints needed


def _number(value: Any) -> str:
    """85.0 as 85, whole numbers in full (1000000000), others as given."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _value_in_words(value: dict[str, Any]) -> str:
    """A Device Defender value (``{"number": 40}``, ``{"ports": [...]}``...) as text: ``40``."""
    parts = []
    for item in value.values():
        items = item if isinstance(item, list) else [item]
        parts.append(", ".join(_number(i) for i in items))
    return "; ".join(parts) or "nothing"


def rule_in_words(behavior: dict[str, Any]) -> str:
    """A behavior's criteria in words: ``gpu_load_per_inference must stay below 40``."""
    criteria = behavior.get("criteria", {})
    operator = criteria.get("comparisonOperator", "?")
    if "statisticalThreshold" in criteria:
        bound = f"the device's own {criteria['statisticalThreshold'].get('statistic')} of it"
    else:
        bound = _value_in_words(criteria.get("value", {}))
    rule = f"{behavior.get('metric')} {OPERATOR_WORDS.get(operator, operator)} {bound}"
    if "durationSeconds" in criteria:
        rule += f", summed over {criteria['durationSeconds']} s"
    return rule


def _datapoints(behavior: dict[str, Any], kind: str) -> int:
    key = "consecutiveDatapointsToAlarm" if kind == "in-alarm" else "consecutiveDatapointsToClear"
    return int(behavior.get("criteria", {}).get(key, 1))


def _reader(stream: Any, lines: queue.Queue[Optional[str]]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _stamp(t: float) -> str:
    return f"[{t:5.1f} s]"


def _simulate(scenario: str, config: str, t: float) -> None:
    cmd = [sys.executable, "-m", "ddcustom", "simulate", scenario, "--config", config]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise SystemExit(f"ddcustom simulate {scenario} failed: {out.stderr.strip()}")
    what = "two numbers into the feedback files; no miner is started"
    print(f"\n{_stamp(t)} >>> ddcustom simulate {scenario} (writes {what})", flush=True)
    print(f"           {out.stdout.strip()}\n", flush=True)


def _values(report: dict[str, Any]) -> dict[str, Any]:
    custom = report.get("custom_metrics", {})  # the demo's configuration keeps long names
    return {name: next(iter(entry[0].values())) for name, entry in custom.items()}


def _show_report(report: dict[str, Any], previous: Optional[dict[str, Any]], t: float) -> None:
    values = _values(report)
    shown = "  ".join(f"{k}={_number(values[k])}" for k in SHOWN if isinstance(values.get(k), (int, float)))
    print(f"{_stamp(t)} report {report['header']['report_id']}: {shown}", flush=True)
    if previous is not None:
        changed = [
            f"{k} {previous.get(k)} -> {v}"
            for k, v in values.items()
            if k in CHANGES and previous.get(k) != v
        ]
        if changed:
            print(f"           changed: {', '.join(changed)}", flush=True)


def _show_alert(alert: dict[str, Any], t: float) -> None:
    kind = alert.get("violationEventType", "?")
    behavior = alert.get("behavior", {})
    seen = _value_in_words(alert.get("metricValue") or {})
    label = LABELS.get(kind, kind)
    print(f"{_stamp(t)} {label} {behavior.get('name')}: {rule_in_words(behavior)}; saw {seen}", flush=True)


def _record(message: dict[str, Any], t: float, timeline: _Timeline) -> None:
    """Note the first report showing the values last written, and the demo behaviors' first events."""
    if message["kind"] == "report":
        scenario = timeline.last_written
        load = _values(message["report"]).get("gpu_load_per_inference")
        if scenario is not None and load == SCENARIO_LOAD[scenario]:
            timeline.first_report.setdefault(scenario, t)
        return
    alert = message["alert"]
    behavior = alert.get("behavior", {})
    kind = alert.get("violationEventType")
    if behavior.get("name") not in DEMO_BEHAVIORS or kind not in ("in-alarm", "alarm-cleared"):
        return
    (timeline.raised if kind == "in-alarm" else timeline.cleared).add(behavior["name"])
    timeline.first_event.setdefault(kind, t)
    timeline.datapoints.setdefault(kind, _datapoints(behavior, kind))


def _summary(timeline: _Timeline, detect_interval: float, report_interval: int) -> list[str]:
    """The timeline: from each write to the first report and the first alert (or clearing) it caused."""
    lines = []
    for scenario, kind, what in (
        ("mining", "in-alarm", "alarms raised"),
        ("normal", "alarm-cleared", "cleared"),
    ):
        written = timeline.written.get(scenario)
        if written is None:
            continue
        steps = [(written, f"{scenario} values written at {written:.1f} s")]
        if scenario in timeline.first_report:
            at = timeline.first_report[scenario]
            steps.append((at, f"first report with them at {at:.1f} s"))
        if kind in timeline.first_event:
            at, need = timeline.first_event[kind], timeline.datapoints[kind]
            rule = f"{need} datapoint{'s' if need != 1 else ''} in a row, one every {detect_interval:g} s"
            steps.append((at, f"{what} at {at:.1f} s, {at - written:.1f} s after the write ({rule})"))
        else:
            steps.append((float("inf"), f"not {what} yet"))
        lines.append("; ".join(text for _at, text in sorted(steps)))
    lines.append(f"(a report every {report_interval} s; the rules are evaluated every {detect_interval:g} s)")
    return lines


def _intro(seconds: float, detect_interval: float, report_interval: int, config: dict[str, Any]) -> None:
    print(f"Demo: `ddcustom run` on this machine for {seconds:g} s, evaluating the built-in security profile")
    print(f"'{PROFILE}' every {detect_interval:g} s and printing a report every {report_interval} s.")
    print("Configuration:")
    print(json.dumps(config, indent=2))
    print(
        "\nNo GPU and no miner are involved: `ddcustom simulate mining` only writes two numbers into the\n"
        "feedback files (85 for the GPU load per inference, 180 ms for the inference time), as an\n"
        "application sharing its GPU with a miner would report them; `ddcustom simulate normal` writes\n"
        "20 and 45. It starts no miner. The rules those two numbers trip:"
    )
    for behavior in load_profile(PROFILE).device_behaviors:
        if behavior.name in DEMO_BEHAVIORS:
            raw = behavior.to_json()
            print(
                f"  {behavior.name}: {rule_in_words(raw)}; alarm after {_datapoints(raw, 'in-alarm')} "
                f"datapoints in a row, cleared after {_datapoints(raw, 'alarm-cleared')}"
            )
    print("Other rules of the profile watch this machine's real processes, connections and CPU.", flush=True)


def _start_component(config_path: str, log: Any) -> subprocess.Popen[str]:
    # Its own session: Ctrl-C in the terminal reaches the demo only, which stops the component.
    return subprocess.Popen(
        [sys.executable, "-m", "ddcustom", "run", "--config", config_path, "--thing", "demo-device"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )


def _follow(
    proc: subprocess.Popen[str], seconds: float, start: float, config_path: str, timeline: _Timeline
) -> bool:
    """Print what the component writes for ``seconds``, switching the scenarios; False if it ended."""
    lines: queue.Queue[Optional[str]] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    steps = [(seconds / 3, "mining"), (2 * seconds / 3, "normal")]
    previous: Optional[dict[str, Any]] = None
    while (elapsed := time.monotonic() - start) < seconds:
        if steps and elapsed >= steps[0][0]:
            scenario = steps.pop(0)[1]
            _simulate(scenario, config_path, elapsed)
            timeline.written[scenario] = elapsed
            timeline.last_written = scenario
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            return False
        message = json.loads(line)
        t = time.monotonic() - start
        _record(message, t, timeline)
        if message["kind"] == "report":
            _show_report(message["report"], previous, t)
            previous = _values(message["report"])
        elif message["kind"] == "alert":
            _show_alert(message["alert"], t)
    return True


def run_demo(seconds: float, detect_interval: float, report_interval: int) -> int:
    with tempfile.TemporaryDirectory(prefix="ddcustom-demo-") as tmp:
        config_path = os.path.join(tmp, "config.json")
        log_path = os.path.join(tmp, "component.log")
        config = {
            "EnableGPUMetrics": True,
            "EnableDeviceDefenderReport": False,  # no AWS here: reports go to stdout, faster than 300 s
            "SampleIntervalSeconds": report_interval,
            "DetectIntervalSeconds": detect_interval,
            "SecurityProfile": PROFILE,
            "GpuLoadFeedbackFile": os.path.join(tmp, "gpu_load_fb"),
            "InferenceTimeFeedbackFile": os.path.join(tmp, "gpu_inference_fb"),
            "GpuBusyOutsideFeedbackFile": os.path.join(tmp, "gpu_busy_outside_fb"),
            "StateDirectory": os.path.join(tmp, "state"),
        }
        with open(config_path, "w") as f:
            json.dump(config, f)
        _intro(seconds, detect_interval, report_interval, config)
        timeline = _Timeline()
        start = time.monotonic()
        proc: Optional[subprocess.Popen[str]] = None
        try:
            _simulate("normal", config_path, 0.0)
            with open(log_path, "w") as log:
                proc = _start_component(config_path, log)
            ran = _follow(proc, seconds, start, config_path, timeline)
            status = stop_child(proc)
        except _Stopped as stopped:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan the component
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            what = (
                "it had not started"
                if proc is None
                else f"the component stopped with status {stop_child(proc)}"
            )
            print(f"\nDemo stopped by {stopped} at {time.monotonic() - start:.1f} s; {what}.", flush=True)
            return 128 + stopped.signum
        finally:
            if proc is not None and proc.poll() is None:
                stop_child(proc)
        if not ran:
            with open(log_path) as log_file:
                tail = log_file.read()[-2000:]
            print(f"the component stopped unexpectedly (status {status}); its log:\n{tail}", file=sys.stderr)
            return 1
        print("\nTimeline:")
        for line in _summary(timeline, detect_interval, report_interval):
            print(f"  {line}")
        done = [b for b in DEMO_BEHAVIORS if b in timeline.raised and b in timeline.cleared]
        print(
            f"\nDone: {len(done)} of {len(DEMO_BEHAVIORS)} feedback rules raised their alarm and cleared it; "
            f"the component stopped on SIGTERM with status {status}."
        )
        return 0 if len(done) == len(DEMO_BEHAVIORS) and status == 0 else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddcustom.tooling.demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60, help="how long the demo runs (default 60)")
    parser.add_argument("--detect-interval", type=float, default=2, help="DetectIntervalSeconds (default 2)")
    parser.add_argument("--report-interval", type=int, default=6, help="SampleIntervalSeconds (default 6)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, _raise_stopped)
    signal.signal(signal.SIGTERM, _raise_stopped)
    return run_demo(args.seconds, args.detect_interval, args.report_interval)


if __name__ == "__main__":
    raise SystemExit(main())
