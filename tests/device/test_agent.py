"""The agent loop, stepped with explicit monotonic times against real sources and a recording sink."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from ddcustom.device.agent import Agent
from support.agent import feedback_settings, write_feedback
from support.fakes import RecordingSink
from support.helpers import MINING_RULES


def test_reports_on_the_report_interval_and_samples_on_the_detect_interval(tmp_path: Path) -> None:
    write_feedback(tmp_path, 10, 20)
    sink = RecordingSink()
    agent = Agent(feedback_settings(tmp_path), "t", sink)
    assert agent.run_cycle(100.0) == 101.0  # first report at once, next sample one interval later
    assert len(sink.reports) == 1 and "network_stats" not in sink.reports[0].get("metrics", {})
    for now in (101.0, 102.0, 130.0):
        agent.run_cycle(now)
    assert len(sink.reports) == 1
    agent.run_cycle(160.0)
    assert len(sink.reports) == 2 and "network_stats" in sink.reports[1]["metrics"]
    assert agent.counters.cycles == 5


def test_a_refused_report_leaves_the_delta_baseline_at_the_last_report_that_went_out(tmp_path: Path) -> None:
    write_feedback(tmp_path, 10, 20)
    sink = RecordingSink()
    agent = Agent(feedback_settings(tmp_path, IncludeLoopback=True), "t", sink)
    agent.run_cycle(0.5)
    first_sample = agent._last_reported
    sink.refuse = "connection lost"
    agent.run_cycle(60.5)
    assert agent.counters.reports_failed == 1 and agent._last_reported is first_sample
    sink.refuse = None
    agent.run_cycle(120.5)
    assert len(sink.reports) == 2 and agent._last_reported is not first_sample
    ids = [r["header"]["report_id"] for r in sink.reports]
    assert ids[1] > ids[0] + 1  # the refused report used an id too; ids never repeat


def test_alerts_survive_a_refusing_sink_and_the_refusal_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_feedback(tmp_path, 85, 180)
    sink = RecordingSink()
    sink.refuse = "not authorized: ddcustom/other/alerts"
    agent = Agent(feedback_settings(tmp_path, SampleIntervalSeconds=3600), "t", sink)
    with caplog.at_level(logging.WARNING, logger="ddcustom.device.agent"):
        for now in range(1, 11):
            agent.run_cycle(float(now))
    assert sink.alerts == []
    assert agent.counters.alerts_raised == 2  # the article's two rules, once each
    assert caplog.text.count("alerts kept in the spool") == 1  # regression: it was logged every cycle
    sink.refuse = None
    agent.run_cycle(11.0)
    assert [a.behavior_name for a in sink.alerts] == ["gpu-load-per-inference", "avg-inference-time"]
    assert agent.status()["pending_alerts"] == 0


def test_report_id_continues_after_a_restart(tmp_path: Path) -> None:
    write_feedback(tmp_path, 10, 20)
    first = RecordingSink()
    Agent(feedback_settings(tmp_path), "t", first).run_cycle(1.0)
    # a restart with the wall clock stepped far back still continues above the persisted id
    (tmp_path / "state" / "report_id").write_text(str(first.reports[0]["header"]["report_id"] + 10**9))
    second = RecordingSink()
    Agent(feedback_settings(tmp_path), "t", second).run_cycle(1.0)
    assert second.reports[0]["header"]["report_id"] > first.reports[0]["header"]["report_id"] + 10**9


def test_new_settings_report_at_once_and_keep_the_alarm_state(tmp_path: Path) -> None:
    write_feedback(tmp_path, 85, 180)
    sink = RecordingSink()
    agent = Agent(feedback_settings(tmp_path, SampleIntervalSeconds=3600), "t", sink)
    for now in (1.0, 2.0):
        agent.run_cycle(now)
    assert len(sink.alerts) == 2
    agent.apply_settings(feedback_settings(tmp_path, SampleIntervalSeconds=3600, UseShortNames=True))
    agent.run_cycle(2.5)
    assert len(sink.reports) == 2 and "hed" in sink.reports[1]  # the new settings, right away
    write_feedback(tmp_path, 10, 20)
    for now in (3.5, 4.5):
        agent.run_cycle(now)
    cleared = [a for a in sink.alerts if a.event_type == "alarm-cleared"]
    assert len(cleared) == 2  # the alarms raised before the update are cleared, not forgotten


def test_a_failing_cycle_is_retried_and_the_loop_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_feedback(tmp_path, 10, 20)
    sink = RecordingSink()
    agent = Agent(feedback_settings(tmp_path), "t", sink)
    stop = threading.Event()
    calls = {"n": 0}

    def before_cycle() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        stop.set()

    with caplog.at_level(logging.ERROR):
        thread = threading.Thread(target=agent.run_forever, args=(stop, None, before_cycle), daemon=True)
        thread.start()
        thread.join(30)
    assert not thread.is_alive()
    assert agent.counters.failed_cycles == 1 and calls["n"] == 2
    assert "cycle failed (1 in a row)" in caplog.text and "boom" in caplog.text


def test_no_alert_is_lost_when_the_spool_disk_fails_while_the_connection_is_down(tmp_path: Path) -> None:
    write_feedback(tmp_path, 85, 180)
    sink = RecordingSink()
    settings = feedback_settings(tmp_path, SampleIntervalSeconds=3600)
    agent = Agent(settings, "t", sink)
    spool_dir = Path(settings.alert_spool_dir)
    spool_dir.rmdir()
    spool_dir.write_text("a file: every spool write fails, as on a full or read-only disk")
    sink.refuse = "connection lost"
    for now in (1.0, 2.0, 3.0):
        agent.run_cycle(now)
    assert agent.counters.alerts_raised == 2 and sink.alerts == []
    sink.refuse = None
    agent.run_cycle(4.0)
    assert [a.behavior_name for a in sink.alerts] == ["gpu-load-per-inference", "avg-inference-time"]


def test_the_agent_starts_when_its_state_directory_cannot_be_created(tmp_path: Path) -> None:
    write_feedback(tmp_path, 85, 180)
    (tmp_path / "state").write_text("a file where the state directory should be")
    sink = RecordingSink()
    agent = Agent(feedback_settings(tmp_path, SampleIntervalSeconds=3600), "t", sink)
    for now in (1.0, 2.0):
        agent.run_cycle(now)
    assert len(sink.alerts) == 2 and len(sink.reports) == 1


def agent_with_two_alerts_pending(tmp_path: Path) -> tuple[Agent, RecordingSink]:
    """The article's mining values raised two alarms while the sink refused: both are spooled."""
    write_feedback(tmp_path, 85, 180)
    sink = RecordingSink()
    sink.refuse = "connection lost"
    agent = Agent(feedback_settings(tmp_path, SampleIntervalSeconds=3600), "t", sink)
    for now in (1.0, 2.0):
        agent.run_cycle(now)
    assert agent.status()["pending_alerts"] == 2 and sink.alerts == []
    return agent, sink


def test_alerts_pending_in_the_old_spool_are_sent_after_the_state_directory_changes(tmp_path: Path) -> None:
    agent, sink = agent_with_two_alerts_pending(tmp_path)
    moved = feedback_settings(
        tmp_path, *MINING_RULES, SampleIntervalSeconds=3600, StateDirectory=str(tmp_path / "new-state")
    )
    agent.apply_settings(moved)
    sink.refuse = None
    agent.run_cycle(3.0)
    assert [a.behavior_name for a in sink.alerts] == ["gpu-load-per-inference", "avg-inference-time"]
    assert list(Path(moved.alert_spool_dir).glob("*.alert.json")) == []
    assert list(Path(feedback_settings(tmp_path).alert_spool_dir).glob("*.alert.json")) == []


def test_a_smaller_spool_bound_keeps_the_pending_alerts(tmp_path: Path) -> None:
    agent, sink = agent_with_two_alerts_pending(tmp_path)
    agent.apply_settings(feedback_settings(tmp_path, SampleIntervalSeconds=3600, AlertSpoolMaxBytes=65536))
    sink.refuse = None
    agent.run_cycle(3.0)
    assert [a.behavior_name for a in sink.alerts] == ["gpu-load-per-inference", "avg-inference-time"]


def test_a_new_profile_invalidates_the_alarms_it_drops_and_clears_the_ones_it_keeps(tmp_path: Path) -> None:
    write_feedback(tmp_path, 85, 180)
    sink = RecordingSink()
    settings = feedback_settings(tmp_path, SampleIntervalSeconds=3600)
    agent = Agent(settings, "t", sink)
    for now in (1.0, 2.0):
        agent.run_cycle(now)
    raised = {a.behavior_name: a.violation_id for a in sink.alerts}
    kept = [b.to_json() for b in settings.security_profile.behaviors if b.name != "avg-inference-time"]
    agent.apply_settings(
        feedback_settings(
            tmp_path, SampleIntervalSeconds=3600, SecurityProfile={"name": "crypto-mining", "behaviors": kept}
        )
    )
    write_feedback(tmp_path, 10, 20)
    for now in (3.0, 4.0):
        agent.run_cycle(now)
    after = [(a.behavior_name, a.event_type, a.violation_id) for a in sink.alerts[2:]]
    assert after == [
        ("avg-inference-time", "alarm-invalidated", raised["avg-inference-time"]),
        ("gpu-load-per-inference", "alarm-cleared", raised["gpu-load-per-inference"]),
    ]
