"""No secret of the redaction table leaves the device in an alert.

Real processes whose command lines are the table's rows run under an application the configuration
watches; the rule ``child-processes`` raises an alert naming them, and the agent (the real collector,
evidence, spool) publishes it to a recording sink. What is checked is the published JSON, as IoT Core
would receive it. Only the processes this test starts are the application's children, so nothing else
running on the machine changes the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ddcustom.device.agent import Agent
from ddcustom.device.alerts.evidence import MAX_PROCESSES
from ddcustom.device.alerts.redact import REDACTED
from support.agent import feedback_settings
from support.fakes import RecordingSink
from support.helpers import WAIT
from support.redaction_table import EXTRA_PATTERN, ROWS

APP = "ddcustom-redaction-app"  # argv[0] of the watched application: its name
CHILDREN_RULE = {
    "name": "child-processes",
    "metric": "child_processes",
    "criteria": {
        "comparisonOperator": "less-than-equals",
        "value": {"number": 0},
        "consecutiveDatapointsToAlarm": 1,
        "consecutiveDatapointsToClear": 1,
    },
}
# The application: starts one `cat` per command line read from stdin, whose argv is that command line
# (cat reads its stdin until the end and ignores its argv[0]), says so, and ends them when its own stdin
# ends.
APPLICATION = """
import json, subprocess, sys
rows = json.loads(sys.stdin.readline())
children = [subprocess.Popen([row], executable="/bin/cat", stdin=subprocess.PIPE) for row in rows]
print(" ".join(str(child.pid) for child in children), flush=True)
sys.stdin.read()
for child in children:
    child.kill()
    child.wait()
"""


def start_application(rows: list[str]) -> tuple[subprocess.Popen[str], list[int]]:
    app = subprocess.Popen(
        [APP, "-c", APPLICATION],
        executable=sys.executable,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert app.stdin is not None and app.stdout is not None
    app.stdin.write(json.dumps(rows) + "\n")
    app.stdin.flush()
    pids = [int(pid) for pid in app.stdout.readline().split()]
    return app, pids


def cycle_until(agent: Agent, sink: RecordingSink, event_type: str, clock: list[float]) -> dict[str, Any]:
    """Run detection cycles until the sink has an alert of ``event_type``; its JSON as published."""
    for _ in range(20):
        clock[0] += 1.0
        agent.run_cycle(clock[0])
        for alert in sink.alerts:
            if alert.event_type == event_type:
                sink.alerts.remove(alert)
                return dict(json.loads(json.dumps(alert.to_json())))  # what the sink's wire form carries
    raise AssertionError(f"no {event_type} alert after 20 cycles: {sink.alerts}")


def test_no_secret_of_the_table_survives_in_a_published_alert(tmp_path: Path) -> None:
    settings = feedback_settings(
        tmp_path,
        CHILDREN_RULE,
        WatchedProcesses=[APP],
        EvidenceRedactPatterns=[EXTRA_PATTERN],
        EnableGPUMetrics=False,
    )
    sink = RecordingSink()
    agent = Agent(settings, "cam-1", sink)
    clock = [0.0]
    published: dict[str, dict[str, Any]] = {}  # command line -> the process as the alert described it
    try:
        for first in range(0, len(ROWS), MAX_PROCESSES):
            batch = [row.cmdline for row in ROWS[first : first + MAX_PROCESSES]]
            app, pids = start_application(batch)
            try:
                alert = cycle_until(agent, sink, "in-alarm", clock)
            finally:
                assert app.stdin is not None
                app.stdin.close()
                app.wait(WAIT)
            text = json.dumps(alert)
            for row in ROWS[first : first + MAX_PROCESSES]:
                for secret in row.cut:
                    assert secret not in text, (secret, row.cmdline)
            described = {p["pid"]: p for p in alert["evidence"]["processes"]}
            assert sorted(described) == sorted(pids), "every command line of the batch is in the alert"
            for pid, cmdline in zip(pids, batch):
                published[cmdline] = described[pid]
            cycle_until(agent, sink, "alarm-cleared", clock)
    finally:
        agent.close()

    for row in ROWS:
        process = published[row.cmdline]
        for kept in row.kept:
            assert kept in process["cmdline"], (kept, process["cmdline"])
        assert (REDACTED in process["cmdline"]) == bool(row.cut)
        assert process.get("redacted", {}).get("cmdline", []) == list(row.kinds)
        assert process["exe"] == "/bin/cat" or process["exe"].endswith("/cat")  # what runs is kept
        assert len(process["sha256"]) == 64


def test_new_patterns_apply_from_the_next_alert_without_a_restart(tmp_path: Path) -> None:
    line = "license-agent --serial corp-lic-AB12CD34EF56"
    settings = feedback_settings(tmp_path, CHILDREN_RULE, WatchedProcesses=[APP], EnableGPUMetrics=False)
    sink = RecordingSink()
    agent = Agent(settings, "cam-1", sink)
    clock = [0.0]
    try:
        seen = []
        for patterns in ([], [EXTRA_PATTERN]):
            agent.apply_settings(replace(settings, evidence_redact_patterns=tuple(patterns)))
            app, _pids = start_application([line])
            try:
                seen.append(
                    cycle_until(agent, sink, "in-alarm", clock)["evidence"]["processes"][0]["cmdline"]
                )
            finally:
                assert app.stdin is not None
                app.stdin.close()
                app.wait(WAIT)
            cycle_until(agent, sink, "alarm-cleared", clock)
    finally:
        agent.close()
    assert seen == [line, f"license-agent --serial {REDACTED}"]
