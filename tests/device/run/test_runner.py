"""The runner: the first settings, updates applied between cycles, refusals, the end of the run.

Driven by a scripted configuration source (one step per cycle, never a wait) and a recording sink
(support.fakes); the agent in between is the real one, with a profile the host's load cannot trip.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from ddcustom.device.agent import Agent
from ddcustom.device.config import ConfigError, Settings
from ddcustom.device.run.process import StopSignal
from ddcustom.device.run.runner import EXIT_INVALID_CONFIGURATION, run
from support.fakes import RecordingSink, ScriptedConfiguration, Step
from support.helpers import MINING_RULES, settings

REFUSED = "configuration update refused, the previous settings stay"
UPDATED = "configuration updated; applying without a restart"


def settings_for(tmp_path: Path, **keys: Any) -> Settings:
    """The article's two rules, on feedback files that do not exist: nothing on the host trips them."""
    base = {
        "GpuLoadFeedbackFile": str(tmp_path / "load"),
        "InferenceTimeFeedbackFile": str(tmp_path / "time"),
        "StateDirectory": str(tmp_path / "state"),
    }
    return settings(*MINING_RULES, **{**base, **keys})


def run_script(first: Settings, steps: list[Step]) -> tuple[RecordingSink, int]:
    """Run the runner through ``steps`` to their end; the sink and the exit status."""
    stop = threading.Event()
    sink = RecordingSink()
    return sink, run(ScriptedConfiguration(first, steps, stop), sink, "t", stop, threading.Event())


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_the_first_settings_are_used_and_an_update_is_applied_between_cycles(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, updated = settings_for(tmp_path), settings_for(tmp_path, UseShortNames=True)
    with caplog.at_level(logging.INFO, logger="ddcustom"):
        sink, status = run_script(first, [None, updated])
    assert status == 0
    assert sink.settings[0] is first and sink.settings[1] is updated and len(sink.settings) == 2
    assert "header" in sink.reports[0]  # the first report, with the first settings' long names
    assert "hed" in sink.reports[-1]  # a report at once after the update, with its short names
    assert len(messages(caplog, UPDATED)) == 1
    assert sink.closed


def test_a_refused_update_keeps_the_settings_in_use_and_each_refusal_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = settings_for(tmp_path)
    bad_x, bad_y = ConfigError("configuration key 'X': bad"), ConfigError("configuration key 'Y': bad")
    same = settings_for(tmp_path)  # equal to the settings in use: nothing to apply
    with caplog.at_level(logging.INFO, logger="ddcustom"):
        sink, _ = run_script(first, [bad_x, bad_x, bad_y, bad_y, same, bad_y, None])
    assert sink.settings == [first] and sink.settings[0] is first  # never replaced
    assert all("header" in report for report in sink.reports)  # reports went on with the first settings
    refusals = messages(caplog, REFUSED)
    # the same refusal read again is not logged again; a valid configuration read in between resets that
    assert [r.split(": ", 1)[1] for r in refusals] == [str(bad_x), str(bad_y), str(bad_y)]
    assert messages(caplog, UPDATED) == []


def test_hooks_see_the_agent_built_and_then_closed_with_its_sink(tmp_path: Path) -> None:
    first = settings_for(tmp_path)
    stop = threading.Event()
    sink, source = RecordingSink(), ScriptedConfiguration(first, [None, None], stop)
    seen: list[tuple[str, bool, bool]] = []

    def started(agent: Agent) -> None:
        seen.append(("started", agent.settings is first and sink.settings == [first], sink.closed))

    def stopped(agent: Agent) -> None:
        seen.append(("stopped", agent.counters.cycles == source.polls, sink.closed))

    assert run(source, sink, "t", stop, threading.Event(), started=started, stopped=stopped) == 0
    assert seen == [("started", True, False), ("stopped", True, True)]
    assert source.polls == 3  # two steps, then the one that stops: a cycle after each


def test_stopped_before_any_settings_builds_nothing_and_closes_the_sink() -> None:
    stop = threading.Event()
    stop.set()
    sink, source = RecordingSink(), ScriptedConfiguration(None, [], stop)
    assert run(source, sink, "t", stop, threading.Event()) == 0
    assert sink.settings == [] and sink.reports == [] and source.polls == 0
    assert sink.closed


# ---- the first configuration refused, and the run marker -------------------------------------------


class RefusedAtStart(ScriptedConfiguration):
    def first_settings(self, stop: threading.Event) -> Settings:
        raise ConfigError("configuration key 'X': bad")


def test_an_invalid_first_configuration_builds_nothing_and_exits_non_zero(tmp_path: Path) -> None:
    stop = threading.Event()
    sink = RecordingSink()
    status = run(RefusedAtStart(None, [], stop), sink, "t", stop, threading.Event())
    assert status == EXIT_INVALID_CONFIGURATION != 0
    assert sink.settings == [] and sink.reports == [] and sink.closed


def test_a_run_that_was_not_stopped_cleanly_is_reported_by_the_next_start(tmp_path: Path) -> None:
    first = settings_for(tmp_path)
    marker = Path(first.run_marker_file)
    sink, status = run_script(first, [None])
    assert status == 0 and not marker.exists()  # stopped cleanly: nothing left behind
    assert sink.stops == []

    marker.write_text(json.dumps({"pid": 4242, "version": "0.9.0", "bootId": "x", "lastSeenAt": 1.0}))
    sink, status = run_script(first, [None])

    (alert,) = sink.stops
    assert alert.thing_name == "t" and alert.stopped["pid"] == 4242 and alert.stopped["version"] == "0.9.0"
    assert sink.alerts == []  # no violation came with it
    assert status == 0 and not marker.exists()


def test_a_stop_the_nucleus_did_not_ask_for_exits_non_zero_and_is_reported_next(tmp_path: Path) -> None:
    first = settings_for(tmp_path)
    stop = threading.Event()
    sink = RecordingSink()
    foreign = StopSignal(signal.SIGTERM, 777, 1001, 1_764_650_000.0)
    status = run(
        ScriptedConfiguration(first, [None], stop),
        sink,
        "t",
        stop,
        threading.Event(),
        unrequested_stop=lambda: foreign,
    )
    assert status == 128 + signal.SIGTERM  # the nucleus takes it as an error and starts it again
    kept = json.loads(Path(first.run_marker_file).read_text())
    assert kept["signal"] == {"name": "SIGTERM", "senderPid": 777, "senderUid": 1001, "at": 1_764_650_000.0}

    sink, _ = run_script(first, [None])

    (alert,) = sink.stops
    assert alert.cause == "stopped-by-signal" and alert.stopped["signal"]["senderUid"] == 1001
    assert alert.detection_down["exact"] is True


def test_the_marker_follows_a_new_state_folder(tmp_path: Path) -> None:
    first = settings_for(tmp_path)
    moved = settings_for(tmp_path, StateDirectory=str(tmp_path / "elsewhere"))
    stop = threading.Event()
    seen: list[bool] = []

    class Watch(ScriptedConfiguration):
        def poll(self) -> Settings | None:
            seen.append(Path(moved.run_marker_file).exists())
            return super().poll()

    run(Watch(first, [moved, None], stop), RecordingSink(), "t", stop, threading.Event())
    assert seen == [False, True, True]  # written in the new folder as soon as the settings moved there
    assert not Path(first.run_marker_file).exists() and not Path(moved.run_marker_file).exists()
