"""The runner: the first settings, updates applied between cycles, refusals, the end of the run.

Driven by a scripted configuration source (one step per cycle, never a wait) and a recording sink
(support.fakes); the agent in between is the real one, with a profile the host's load cannot trip.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from ddcustom.device.agent import Agent
from ddcustom.device.config import ConfigError, Settings
from ddcustom.device.run.runner import run
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
