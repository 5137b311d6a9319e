"""A deployment's merge configuration out of bounds, over real IPC (stand-in nucleus, awsiotsdk client):
the previous settings stay and the refusal is one short log line."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from ddcustom.device.config import DEFAULTS
from ddcustom.device.documents import MAX_NESTING
from ddcustom.device.outputs.greengrass.connection import GreengrassConnection
from ddcustom.tooling.devnucleus import DevNucleus
from support.greengrass import InProcess
from support.helpers import ROOT

THING = "cam-7"
REFUSED = "configuration update refused"


def poll(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.fixture
def component(tmp_path: Path) -> Iterator[tuple[DevNucleus, InProcess]]:
    merge = {"DetectIntervalSeconds": 0.5, "StateDirectory": str(tmp_path / "state")}
    nucleus = DevNucleus(ROOT / "recipe.yaml", THING, merge).start()
    c = InProcess(
        GreengrassConnection(timeout=5.0, socket_path=nucleus.socket_path, token=nucleus.token), THING
    )
    try:
        poll(lambda: c.settings is not None and "RUNNING" in nucleus.states, "the component running")
        yield nucleus, c
    finally:
        c.halt()
        nucleus.stop()
    assert not c.thread.is_alive(), "the component did not stop"


@pytest.mark.parametrize(
    "merge, expected",
    [
        ({"WatchedProcesses": nested(200)}, f"under key 'WatchedProcesses': nested more than {MAX_NESTING}"),
        ({"WatchedProcesses": ["x" * 2_000_000]}, "more than 1048576 characters of text"),
        ({"LogLevel": "L" * 500_000}, "... (500002 characters)"),
        ({"SecurityProfile": {"behaviors": [{"name": "n" * 5000}] * 50}}, "not valid: behavior 'nnnnn"),
        ({key: "x" * 5000 for key in DEFAULTS}, "configuration key 'SampleIntervalSeconds'"),
    ],
    ids=["deep", "huge", "long value", "long profile", "every key wrong"],
)
def test_an_update_out_of_bounds_is_refused_in_one_short_line(
    component: tuple[DevNucleus, InProcess],
    caplog: pytest.LogCaptureFixture,
    merge: dict[str, Any],
    expected: str,
) -> None:
    nucleus, c = component
    before = c.settings
    with caplog.at_level(logging.INFO, logger="ddcustom"):
        nucleus.update_configuration(merge)
        poll(lambda: REFUSED in caplog.text, "the refusal logged")
        # the component goes on: a later good update is still taken
        nucleus.update_configuration({**{key: DEFAULTS[key] for key in merge}, "MaxReportListSize": 42})
        poll(lambda: c.settings is not before, "the next good update applied")
    assert c.settings is not None and c.settings.max_report_list_size == 42
    refusals = [r.getMessage() for r in caplog.records if REFUSED in r.getMessage()]
    assert len(refusals) == 1
    assert expected in refusals[0]
    assert len(refusals[0]) < 4200 and "\n" not in refusals[0]


def test_a_refused_configuration_read_again_after_a_reconnect_is_logged_once(
    component: tuple[DevNucleus, InProcess], caplog: pytest.LogCaptureFixture
) -> None:
    nucleus, c = component
    with caplog.at_level(logging.INFO, logger="ddcustom"):
        nucleus.update_configuration({"DetectIntervalSeconds": "often"})
        poll(lambda: REFUSED in caplog.text, "the refusal logged")
        connects = c.connection.connects
        nucleus.drop_connections()  # the reconnect reads the configuration again: the same refusal
        poll(lambda: c.connection.connects > connects, "the reconnect")
        nucleus.update_configuration({"DetectIntervalSeconds": 2})
        poll(lambda: c.settings is not None and c.settings.detect_interval_seconds == 2, "the fix")
    assert sum(REFUSED in r.getMessage() for r in caplog.records) == 1
