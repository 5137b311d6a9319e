"""Alarms outlive the process: a restarted component ends the alarms its last run opened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ddcustom.device.agent import Agent
from support.agent import feedback_settings, write_feedback
from support.fakes import RecordingSink
from support.helpers import ROOT

LOAD_RULE: dict[str, Any] = {
    "name": "gpu-load",
    "metric": "gpu_load_per_inference",
    "criteria": {
        "comparisonOperator": "less-than",
        "value": {"number": 40},
        "consecutiveDatapointsToAlarm": 1,
        "consecutiveDatapointsToClear": 2,
    },
}
TIME_RULE: dict[str, Any] = {
    "name": "inference-time",
    "metric": "avg_inference_time",
    "criteria": {"comparisonOperator": "less-than", "value": {"number": 100}},
}


def run(agent: Agent, cycles: range) -> None:
    for now in cycles:
        agent.run_cycle(float(now))


def kinds(sink: RecordingSink) -> list[tuple[str, str, str]]:
    return [(a.behavior_name, a.event_type, a.violation_id) for a in sink.alerts]


def test_an_alarm_still_holding_after_a_restart_goes_on_under_its_id_and_clears_with_it(
    tmp_path: Path,
) -> None:
    write_feedback(tmp_path, 85, 20)
    first = RecordingSink()
    run(Agent(feedback_settings(tmp_path, LOAD_RULE), "t", first), range(1, 3))  # then "killed": never closed
    [(_, kind, violation_id)] = kinds(first)
    assert kind == "in-alarm"
    second = RecordingSink()
    agent = Agent(feedback_settings(tmp_path, LOAD_RULE), "t", second)
    run(agent, range(1, 4))
    assert second.alerts == []  # still mining: no second in-alarm for the same alarm
    write_feedback(tmp_path, 10, 20)
    run(agent, range(4, 6))
    assert kinds(second) == [("gpu-load", "alarm-cleared", violation_id)]
    third = RecordingSink()
    run(Agent(feedback_settings(tmp_path, LOAD_RULE), "t", third), range(1, 4))
    assert third.alerts == []  # nothing left open to end


def test_an_alarm_whose_behavior_changed_or_left_is_invalidated_at_start(tmp_path: Path) -> None:
    write_feedback(tmp_path, 85, 180)
    first = RecordingSink()
    run(Agent(feedback_settings(tmp_path, LOAD_RULE, TIME_RULE), "t", first), range(1, 3))
    opened = {name: violation_id for name, _, violation_id in kinds(first)}
    changed = {**LOAD_RULE, "criteria": {**LOAD_RULE["criteria"], "value": {"number": 90}}}
    second = RecordingSink()
    run(
        Agent(feedback_settings(tmp_path, changed), "t", second), range(1, 2)
    )  # 85 is normal under the new rule
    assert sorted(kinds(second)) == [
        ("gpu-load", "alarm-invalidated", opened["gpu-load"]),
        ("inference-time", "alarm-invalidated", opened["inference-time"]),
    ]
    assert second.alerts[0].behavior in (LOAD_RULE, TIME_RULE)  # the behavior as it was raised


def test_an_unreadable_alarm_file_is_logged_and_the_component_starts(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "alarms.json").write_text('{"alarms": [{"profile": ')
    write_feedback(tmp_path, 85, 20)
    sink = RecordingSink()
    run(Agent(feedback_settings(tmp_path, LOAD_RULE), "t", sink), range(1, 2))
    assert [kind for _, kind, _ in kinds(sink)] == ["in-alarm"]


CHILD = """
import sys
from pathlib import Path
from ddcustom.device.agent import Agent
sys.path[:0] = [{here!r}, {tests!r}]
from test_agent_restart import LOAD_RULE
from support.agent import feedback_settings
from support.fakes import RecordingSink
sink = RecordingSink()
agent = Agent(feedback_settings(Path({tmp!r}), LOAD_RULE), "t", sink)
for now in range(1, 10**9):
    agent.run_cycle(float(now))
    for alert in sink.alerts:
        print(alert.event_type, alert.violation_id, flush=True)
    sink.alerts.clear()
"""


def test_kill_9_during_an_alarm_leaves_no_alarm_without_an_end(tmp_path: Path) -> None:
    write_feedback(tmp_path, 85, 20)
    code = CHILD.format(here=str(Path(__file__).parent), tests=str(ROOT / "tests"), tmp=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        assert child.stdout is not None
        kind, violation_id = child.stdout.readline().split()  # bounded: the child alarms on cycle 1
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert kind == "in-alarm"
    assert json.loads((tmp_path / "state" / "alarms.json").read_text())["alarms"][0]["violationId"] == (
        violation_id
    )
    write_feedback(tmp_path, 10, 20)
    sink = RecordingSink()
    run(Agent(feedback_settings(tmp_path, LOAD_RULE), "t", sink), range(1, 4))
    assert kinds(sink) == [("gpu-load", "alarm-cleared", violation_id)]
