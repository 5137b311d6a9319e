"""``make demo``: the component locally for about a minute, catching a stand-in miner and the article's
mining switch.

It starts ``ddcustom run`` with short intervals, a learning period of a few seconds, feedback files in a
temporary folder and four rules of the built-in profile. Once the component has learned what this
machine runs, it starts a stand-in miner: a copy of ``yes`` under another name in the temporary folder,
printing its arguments (a miner's, with a made-up API token) to /dev/null as fast as it can: one CPU
core busy, no network, no root. The component alerts on it (a new executable, unknown CPU use) with the
evidence an operator acts on, its command line redacted; the demo stops it and the alarms clear. Then
``ddcustom simulate mining`` and ``ddcustom simulate normal`` switch the feedback files, as in the AWS
article. Each line is printed with its time since the start; at the end, how long each alarm took to
come and go.

Where unprivileged user namespaces are allowed (``unshare``), the component and the stand-in run in a
PID namespace of their own, so the component sees only the demo's processes; elsewhere it sees the whole
machine, and alerts that do not name the stand-in are counted, not shown. Ctrl-C (or SIGTERM) stops the
component and the demo with exit status 130 (143).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import secrets
import shutil
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
from ddcustom.tooling.child import STOP_TIMEOUT, stop_child

SHOWN = (
    "gpu_load_per_inference",
    "avg_inference_time",
    "cpu_usage",
    "miner_processes",
    "new_executables",
    "unknown_process_cpu",
)
# what "changed:" names (CPU use moves all the time)
CHANGES = ("gpu_load_per_inference", "avg_inference_time", "miner_processes", "new_executables")
PROFILE = "crypto-mining"
# The feedback rules: the demo succeeds when each raised an alarm and cleared it.
FEEDBACK_BEHAVIORS = ("gpu-load-per-inference", "avg-inference-time")
# The rules the stand-in miner trips: new-executables must raise (naming it) and clear; the CPU rule
# usually does too, unless this machine leaves the stand-in too little CPU.
MINER_BEHAVIORS = ("new-executables", "unknown-process-cpu")
DEMO_BEHAVIORS = (*MINER_BEHAVIORS, *FEEDBACK_BEHAVIORS)
SCENARIO_LOAD = {"mining": 85, "normal": 20}  # the GPU load per inference `ddcustom simulate` writes
STAND_IN_NAME = "demo-miner"
# A made-up Monero-shaped address (base58, 95 characters from 4): what a miner's -u carries.
STAND_IN_WALLET = "4" + ("DemoWa11etNotRea1" * 6)[:94]
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
INDENT = " " * 11


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
    miner: dict[str, float] = field(default_factory=dict)  # "started", "stopped" -> when
    miner_events: dict[str, float] = field(default_factory=dict)  # "<behavior> <event type>" -> when
    open_alarms: set[str] = field(default_factory=set)  # behaviors in alarm now
    not_shown: int = 0  # alerts about other processes of this machine


@dataclass(frozen=True)
class _StandIn:
    """The stand-in miner: a renamed copy of ``yes`` and the command line it is started with."""

    path: str
    original: str
    sha256: str  # of the copy, which is the original's
    argv: tuple[str, ...]
    token: str  # the made-up secret on its command line, which the alert must not carry


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
    print(f"{INDENT}{out.stdout.strip()}\n", flush=True)


def _values(report: dict[str, Any]) -> dict[str, Any]:
    custom = report.get("custom_metrics", {})  # the demo's configuration keeps long names
    return {name: next(iter(entry[0].values())) for name, entry in custom.items()}


def _show_report(report: dict[str, Any], previous: Optional[dict[str, Any]], t: float) -> None:
    values = _values(report)
    shown = "  ".join(f"{k}={_number(values[k])}" for k in SHOWN if isinstance(values.get(k), (int, float)))
    print(f"{_stamp(t)} report {report['header']['report_id']}: {shown}", flush=True)
    if previous is not None:
        changed = [
            f"{k} {_number(previous[k])} -> {_number(v)}"
            for k, v in values.items()
            if k in CHANGES and k in previous and previous[k] != v
        ]
        if changed:
            print(f"{INDENT}changed: {', '.join(changed)}", flush=True)


# ---- the stand-in miner ---------------------------------------------------------------------------


def _stand_in(folder: str) -> _StandIn:
    """A renamed copy of ``yes`` in ``folder``/bin, and its command line: a miner's options after
    ``--`` (which ``yes`` then prints rather than reads), with a made-up API token."""
    found = shutil.which("yes")
    if found is None:
        raise SystemExit("the demo needs the program `yes` (GNU coreutils or busybox) for its stand-in miner")
    original = os.path.realpath(found)
    os.makedirs(os.path.join(folder, "bin"))
    path = os.path.join(folder, "bin", STAND_IN_NAME)
    shutil.copy(original, path)
    token = secrets.token_hex(12)
    # a multi-call binary (busybox, a single-binary coreutils) runs the program its argv[0] names
    argv0 = path if os.path.basename(original) == "yes" else "yes"
    argv = (argv0, "--", "-o", "stratum+tcp://pool.invalid:3333", "-u", STAND_IN_WALLET, "-p", "x")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return _StandIn(path, original, digest, (*argv, f"--http-access-token={token}"), token)


def _names_stand_in(evidence: Optional[dict[str, Any]], stand_in: _StandIn) -> Optional[dict[str, Any]]:
    """The evidence's description of the stand-in miner, if it names it."""
    for process in (evidence or {}).get("processes", []):
        if process.get("exe") == stand_in.path:
            return dict(process)
    return None


def _show_evidence(process: dict[str, Any], stand_in: _StandIn, event_time: int) -> None:
    started = process.get("started")
    when = f", started {event_time - started} s before the alert" if isinstance(started, int) else ""
    parents = ", ".join(f"{p.get('name')} (pid {p.get('pid')})" for p in process.get("parents", []))
    rows = [
        ("process", f"{process.get('name')} (pid {process.get('pid')}), user {process.get('user')}{when}"),
        ("exe", str(process.get("exe"))),
        ("sha256", str(process.get("sha256"))),
        ("parents", parents or "none"),
        ("cmdline", str(process.get("cmdline"))),
    ]
    if process.get("sha256") == stand_in.sha256:
        rows.insert(3, ("", f"the bytes of {stand_in.original}: a known program under a new name is new"))
    for field_name, kinds in process.get("redacted", {}).items():
        rows.append(("redacted", f"{field_name}: {', '.join(kinds)}"))
    print(f"{INDENT}evidence, what an operator acts on without logging in to the device:")
    for name, value in rows:
        print(f"{INDENT}  {name:<9}{value}")


def _show_alert(alert: dict[str, Any], t: float, stand_in: _StandIn, timeline: _Timeline) -> None:
    kind = alert.get("violationEventType", "?")
    behavior = alert.get("behavior", {})
    name = behavior.get("name")
    seen = _value_in_words(alert.get("metricValue") or {})
    label = LABELS.get(kind, kind)
    described = _names_stand_in(alert.get("evidence"), stand_in)
    if name in MINER_BEHAVIORS and kind == "in-alarm" and described is None:
        # other processes of this machine (no PID namespace): named in one line, their evidence not shown
        timeline.not_shown += 1
        others = len((alert.get("evidence") or {}).get("processes", []))
        print(
            f"{_stamp(t)} {label} {name}: {rule_in_words(behavior)}; saw {seen}: for {others} other "
            "processes of this machine, not the stand-in (evidence not shown)",
            flush=True,
        )
        return
    if name in MINER_BEHAVIORS and kind != "in-alarm" and name not in timeline.open_alarms:
        timeline.not_shown += 1  # the end of an alarm about other processes
        return
    print(f"{_stamp(t)} {label} {name}: {rule_in_words(behavior)}; saw {seen}", flush=True)
    if described is not None:
        if any(key.endswith(" in-alarm") for key in timeline.miner_events):
            print(f"{INDENT}evidence: the same process, {described.get('name')} (pid {described.get('pid')})")
        else:
            _show_evidence(described, stand_in, int(alert.get("violationEventTime", 0)))
        if stand_in.token in json.dumps(alert):
            print(f"{INDENT}the alert carries the stand-in's made-up token: redaction failed", flush=True)
    sys.stdout.flush()


def _record(message: dict[str, Any], t: float, timeline: _Timeline, stand_in: _StandIn) -> None:
    """Note the first report showing the values last written, and the demo behaviors' events."""
    if message["kind"] == "report":
        scenario = timeline.last_written
        load = _values(message["report"]).get("gpu_load_per_inference")
        if scenario is not None and load == SCENARIO_LOAD[scenario]:
            timeline.first_report.setdefault(scenario, t)
        return
    alert = message["alert"]
    behavior = alert.get("behavior", {})
    name, kind = behavior.get("name"), alert.get("violationEventType")
    if name in MINER_BEHAVIORS:
        if kind == "in-alarm" and _names_stand_in(alert.get("evidence"), stand_in) is not None:
            timeline.open_alarms.add(name)
            timeline.miner_events.setdefault(f"{name} in-alarm", t)
        elif kind != "in-alarm" and name in timeline.open_alarms:
            timeline.open_alarms.discard(name)
            timeline.miner_events.setdefault(f"{name} {kind}", t)
        return
    if name not in FEEDBACK_BEHAVIORS or kind not in ("in-alarm", "alarm-cleared"):
        return
    (timeline.raised if kind == "in-alarm" else timeline.cleared).add(name)
    timeline.first_event.setdefault(kind, t)
    timeline.datapoints.setdefault(kind, _datapoints(behavior, kind))


def _summary(timeline: _Timeline, detect_interval: float, report_interval: int) -> list[str]:
    """The timeline: the stand-in miner's alarms, and from each write to the first report and the first
    alert (or clearing) it caused."""
    lines = []
    started, stopped = timeline.miner.get("started"), timeline.miner.get("stopped")
    if started is not None:
        steps = [f"stand-in miner started at {started:.1f} s"]
        for name in MINER_BEHAVIORS:
            at = timeline.miner_events.get(f"{name} in-alarm")
            if at is not None:
                steps.append(f"{name} raised at {at:.1f} s, {at - started:.1f} s after the start")
        if stopped is not None:
            steps.append(f"stopped at {stopped:.1f} s")
            for name in MINER_BEHAVIORS:
                at = timeline.miner_events.get(f"{name} alarm-cleared")
                if at is not None:
                    steps.append(f"{name} cleared at {at:.1f} s, {at - stopped:.1f} s after the stop")
        lines.append("; ".join(steps))
    for scenario, kind, what in (
        ("mining", "in-alarm", "alarms raised"),
        ("normal", "alarm-cleared", "cleared"),
    ):
        written = timeline.written.get(scenario)
        if written is None:
            continue
        parts = [(written, f"{scenario} values written at {written:.1f} s")]
        if scenario in timeline.first_report:
            at = timeline.first_report[scenario]
            parts.append((at, f"first report with them at {at:.1f} s"))
        if kind in timeline.first_event:
            at, need = timeline.first_event[kind], timeline.datapoints[kind]
            rule = f"{need} datapoint{'s' if need != 1 else ''} in a row, one every {detect_interval:g} s"
            parts.append((at, f"{what} at {at:.1f} s, {at - written:.1f} s after the write ({rule})"))
        else:
            parts.append((float("inf"), f"not {what} yet"))
        lines.append("; ".join(text for _at, text in sorted(parts)))
    lines.append(f"(a report every {report_interval} s; the rules are evaluated every {detect_interval:g} s)")
    return lines


# ---- where the component runs: a PID namespace of its own when this machine allows it ---------------


def _namespace_command() -> Optional[list[str]]:
    """The ``unshare`` command that gives the component a PID namespace of its own (with a /proc that
    shows only it), or None where this machine does not allow one."""
    if shutil.which("unshare") is None:
        return None
    command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    if os.geteuid() != 0:
        command[1:1] = ["--user", "--map-root-user"]
    try:
        done = subprocess.run([*command, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return command if done.returncode == 0 else None


def _inside(config_path: str) -> int:
    """``--inside``: in the PID namespace (or directly), start the component with its output on this
    process's, start and stop the stand-in miner as told on stdin (one JSON line each: ``{"start":
    [argv...], "path": PATH}``, ``{"stop": true}``), and at the end of stdin stop both; the component's
    exit status."""
    component = subprocess.Popen(
        [sys.executable, "-m", "ddcustom", "run", "--config", config_path, "--thing", "demo-device"]
    )
    miner: Optional[subprocess.Popen[bytes]] = None
    for line in sys.stdin:
        command = json.loads(line)
        if "start" in command and miner is None:
            miner = subprocess.Popen(
                command["start"],
                executable=command["path"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        elif "stop" in command and miner is not None:
            stop_child(miner)
            miner = None
    if miner is not None:
        stop_child(miner)
    return stop_child(component)


class _Component:
    """The component (and the stand-in miner) as the demo drives them: through the ``--inside`` helper,
    in a PID namespace of its own when ``namespace`` is given."""

    def __init__(self, config_path: str, log: Any, namespace: Optional[list[str]]) -> None:
        helper = [sys.executable, "-m", "ddcustom.tooling.demo", "--inside", config_path]
        # Its own session: Ctrl-C in the terminal reaches the demo only, which stops the component.
        self.process = subprocess.Popen(
            [*(namespace or []), *helper],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )

    def tell(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def stop(self) -> int:
        """Stop the component (the end of the helper's stdin); its exit status."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):  # the helper has ended
                self.process.stdin.close()
        try:
            return self.process.wait(timeout=STOP_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            self.process.kill()  # unshare's --kill-child takes the helper, and the namespace, with it
            return self.process.wait()


# ---- the demo -------------------------------------------------------------------------------------


def _learning_ends(config_path: str) -> Optional[float]:
    """When the component's learning period ends (wall clock), once it has started one."""
    cmd = [sys.executable, "-m", "ddcustom", "baseline", "show", "--json", "--config", config_path]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    try:
        shown = json.loads(out.stdout)
        return float(shown["learning_started"]) + float(shown["learning_seconds"])
    except (ValueError, KeyError, TypeError):
        return None  # not yet


def _intro(
    seconds: float,
    detect_interval: float,
    report_interval: int,
    config: dict[str, Any],
    stand_in: _StandIn,
    namespace: bool,
) -> None:
    learning = config["BaselineLearningSeconds"]
    print(f"Demo: `ddcustom run` on this machine for {seconds:g} s, evaluating four rules of the built-in")
    print(f"security profile '{PROFILE}' every {detect_interval:g} s, a report every {report_interval} s.")
    print("Configuration:")
    print(json.dumps(config, indent=2))
    print(
        f"\n1. The component learns for {learning} s what this machine runs (BaselineLearningSeconds; a day\n"
        "   on a device). Then the demo starts a stand-in miner: a copy of "
        f"{stand_in.original} named {STAND_IN_NAME}\n"
        "   in the demo's folder, writing its arguments to /dev/null as fast as it can (one CPU core busy,\n"
        "   no network), started as\n"
        f"     {' '.join(stand_in.argv)}\n"
        "   (a miner's pool and wallet, and a made-up API token that the alert must not carry). It is\n"
        "   stopped a while later.\n"
        "2. `ddcustom simulate mining` writes two numbers into the feedback files (85 for the GPU load per\n"
        "   inference, 180 ms for the inference time), as an application sharing its GPU with a miner\n"
        "   would report them; `ddcustom simulate normal` writes 20 and 45. No GPU is involved.\n"
        "The rules:"
    )
    for behavior in load_profile(PROFILE).device_behaviors:
        if behavior.name in DEMO_BEHAVIORS:
            raw = behavior.to_json()
            print(
                f"  {behavior.name}: {rule_in_words(raw)}; alarm after {_datapoints(raw, 'in-alarm')} "
                f"datapoints in a row, cleared after {_datapoints(raw, 'alarm-cleared')}"
            )
    if namespace:
        print(
            "The component and the stand-in run in a PID namespace of their own (unshare): the component\n"
            "sees only the demo's processes, so nothing else running on this machine changes what it shows.\n"
            "In it they run as its user root, which is your own user outside it.",
            flush=True,
        )
    else:
        print(
            "This machine allows no PID namespace (unshare): the component sees all of its processes.\n"
            "Alerts about processes other than the stand-in are counted, not shown; a program started\n"
            "elsewhere on this machine after the learning period can hold an alarm the stand-in needs.",
            flush=True,
        )


def _follow(
    component: _Component,
    seconds: float,
    start: float,
    config_path: str,
    stand_in: _StandIn,
    timeline: _Timeline,
    detect_interval: float,
) -> bool:
    """Print what the component writes for ``seconds``, starting and stopping the stand-in miner and
    switching the scenarios; False if the component ended."""
    lines: queue.Queue[Optional[str]] = queue.Queue()
    threading.Thread(target=_reader, args=(component.process.stdout, lines), daemon=True).start()
    steps = [(seconds / 2, "mining"), (3 * seconds / 4, "normal")]
    miner_runs = seconds / 4
    learning_ends: Optional[float] = None
    previous: Optional[dict[str, Any]] = None
    while (elapsed := time.monotonic() - start) < seconds:
        if learning_ends is None and elapsed >= 1.0:
            learning_ends = _learning_ends(config_path)
        # a sample after learning, and one more: the stand-in is not learned
        if (
            learning_ends is not None
            and "started" not in timeline.miner
            and time.time() >= learning_ends + 2 * detect_interval
        ):
            component.tell({"start": list(stand_in.argv), "path": stand_in.path})
            timeline.miner["started"] = elapsed
            print(f"\n{_stamp(elapsed)} >>> stand-in miner started: {STAND_IN_NAME}, one CPU core busy\n")
        stop_at = timeline.miner.get("started", seconds) + miner_runs
        if "stopped" not in timeline.miner and elapsed >= stop_at:
            component.tell({"stop": True})
            timeline.miner["stopped"] = elapsed
            print(f"\n{_stamp(elapsed)} >>> stand-in miner stopped\n", flush=True)
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
        if message["kind"] == "report":
            _show_report(message["report"], previous, t)
            previous = _values(message["report"])
        elif message["kind"] == "alert":
            _show_alert(message["alert"], t, stand_in, timeline)  # from what was recorded before it
        _record(message, t, timeline, stand_in)
    return True


def _demo_profile(path: str) -> None:
    """The built-in profile's rules that the demo shows, in a profile file of their own."""
    behaviors = [b.to_json() for b in load_profile(PROFILE).device_behaviors if b.name in DEMO_BEHAVIORS]
    with open(path, "w") as f:
        json.dump({"name": f"{PROFILE}-demo", "behaviors": behaviors}, f, indent=2)


def _succeeded(timeline: _Timeline, status: int) -> tuple[bool, str]:
    feedback = [b for b in FEEDBACK_BEHAVIORS if b in timeline.raised and b in timeline.cleared]
    caught = "new-executables in-alarm" in timeline.miner_events
    cleared = caught and not timeline.open_alarms
    miner = "caught and its alarms cleared" if cleared else "caught" if caught else "not caught"
    words = (
        f"{len(feedback)} of {len(FEEDBACK_BEHAVIORS)} feedback rules raised their alarm and cleared it; the "
        f"stand-in miner was {miner}; the component stopped on SIGTERM with status {status}"
    )
    if timeline.not_shown:
        words += f" ({timeline.not_shown} alerts about other processes of this machine)"
    if not caught and timeline.not_shown:
        words += (
            ". Another process of this machine held the new-executables alarm while the stand-in ran: "
            "where unshare is allowed the demo sees only its own processes"
        )
    return len(feedback) == len(FEEDBACK_BEHAVIORS) and caught and cleared and status == 0, words


def run_demo(
    seconds: float, detect_interval: float, report_interval: int, namespace_allowed: bool = True
) -> int:
    with tempfile.TemporaryDirectory(prefix="ddcustom-demo-") as tmp:
        config_path = os.path.join(tmp, "config.json")
        profile_path = os.path.join(tmp, "profile.json")
        log_path = os.path.join(tmp, "component.log")
        _demo_profile(profile_path)
        config = {
            "EnableGPUMetrics": True,
            "EnableDeviceDefenderReport": False,  # no AWS here: reports go to stdout, faster than 300 s
            "SampleIntervalSeconds": report_interval,
            "DetectIntervalSeconds": detect_interval,
            "BaselineLearningSeconds": max(2, int(seconds / 7)),
            "SecurityProfile": profile_path,
            "GpuLoadFeedbackFile": os.path.join(tmp, "gpu_load_fb"),
            "InferenceTimeFeedbackFile": os.path.join(tmp, "gpu_inference_fb"),
            "GpuBusyOutsideFeedbackFile": os.path.join(tmp, "gpu_busy_outside_fb"),
            "StateDirectory": os.path.join(tmp, "state"),
        }
        with open(config_path, "w") as f:
            json.dump(config, f)
        stand_in = _stand_in(tmp)
        namespace = _namespace_command() if namespace_allowed else None
        _intro(seconds, detect_interval, report_interval, config, stand_in, namespace is not None)
        timeline = _Timeline()
        start = time.monotonic()
        component: Optional[_Component] = None
        try:
            _simulate("normal", config_path, 0.0)
            with open(log_path, "w") as log:
                component = _Component(config_path, log, namespace)
            ran = _follow(component, seconds, start, config_path, stand_in, timeline, detect_interval)
            status = component.stop()
        except _Stopped as stopped:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan the component
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            what = (
                "it had not started"
                if component is None
                else f"the component stopped with status {component.stop()}"
            )
            print(f"\nDemo stopped by {stopped} at {time.monotonic() - start:.1f} s; {what}.", flush=True)
            return 128 + stopped.signum
        finally:
            if component is not None and component.process.poll() is None:
                component.stop()
        if not ran:
            with open(log_path) as log_file:
                tail = log_file.read()[-2000:]
            print(f"the component stopped unexpectedly (status {status}); its log:\n{tail}", file=sys.stderr)
            return 1
        print("\nTimeline:")
        for line in _summary(timeline, detect_interval, report_interval):
            print(f"  {line}")
        ok, words = _succeeded(timeline, status)
        print(f"\nDone: {words}.")
        return 0 if ok else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddcustom.tooling.demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60, help="how long the demo runs (default 60)")
    parser.add_argument("--detect-interval", type=float, default=2, help="DetectIntervalSeconds (default 2)")
    parser.add_argument("--report-interval", type=int, default=6, help="SampleIntervalSeconds (default 6)")
    parser.add_argument(
        "--no-namespace",
        action="store_true",
        help="run the component without a PID namespace of its own, seeing every process of this machine",
    )
    parser.add_argument("--inside", metavar="CONFIG", help=argparse.SUPPRESS)  # the helper (_inside)
    args = parser.parse_args(argv)
    if args.inside:
        return _inside(args.inside)
    signal.signal(signal.SIGINT, _raise_stopped)
    signal.signal(signal.SIGTERM, _raise_stopped)
    return run_demo(args.seconds, args.detect_interval, args.report_interval, not args.no_namespace)


if __name__ == "__main__":
    raise SystemExit(main())
