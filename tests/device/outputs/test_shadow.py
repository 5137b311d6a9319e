"""The named shadow ``ddcustom``: the device's alarms for fleet indexing, on change and on a heartbeat."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from ddcustom import __version__
from ddcustom.device.detect.events import OpenAlarm
from ddcustom.device.outputs.shadow import MAX_DOCUMENT_BYTES, FleetShadow, reported_state
from support.greengrass import THING, Component
from support.helpers import poll

SHADOW_TOPIC = f"$aws/things/{THING}/shadow/name/ddcustom/update"
RULE = {
    "name": "gpu-load",
    "metric": "gpu_load_per_inference",
    "criteria": {"comparisonOperator": "less-than", "value": {"number": 40}},
}


def alarm(name: str, value: dict[str, Any], **behavior: Any) -> OpenAlarm:
    return OpenAlarm("p", {"name": name, "metric": "m", **behavior}, f"id-{name}", 1764650000.5, value)


def test_the_reported_state_names_each_alarm_and_leaves_suppressed_ones_out() -> None:
    state = reported_state(
        [alarm("a", {"number": 85}), alarm("quiet", {"number": 1}, suppressAlerts=True)], "p"
    )
    assert state == {
        "schema": 1,
        "componentVersion": __version__,
        "profile": "p",
        "inAlarm": True,
        "alarmCount": 1,
        "behaviorsInAlarm": ["a"],
        "alarms": [
            {
                "behavior": "a",
                "metric": "m",
                "since": 1764650000,
                "violationId": "id-a",
                "metricValue": {"number": 85},
            }
        ],
        "baseline": "off",
    }
    assert reported_state([], "p")["inAlarm"] is False


def test_the_document_stays_under_the_shadow_size_limit_and_keeps_every_name() -> None:
    names = [f"process-{i:04d}-" + "x" * 100 for i in range(300)]
    alarms = [alarm(f"behavior-{i:03d}", {"strings": names}) for i in range(100)]
    state = reported_state(alarms, "p")
    document = FleetShadow().update_document(state, 1764650000.0)
    assert len(json.dumps(document)) <= MAX_DOCUMENT_BYTES
    assert state["alarmCount"] == 100 and state["alarmsTruncated"] is True
    assert state["behaviorsInAlarm"] == [a.behavior_name for a in alarms]
    assert all(len(entry["metricValue"]["strings"]) <= 10 for entry in state["alarms"])


def test_published_on_change_and_as_an_hourly_heartbeat_only() -> None:
    shadow = FleetShadow(heartbeat_seconds=3600)
    quiet, alarmed = reported_state([], "p"), reported_state([alarm("a", {"number": 85})], "p")
    assert shadow.due(quiet, 0.0)
    shadow.sent(quiet, 0.0)
    assert not shadow.due(quiet, 3599.0)
    assert shadow.due(alarmed, 10.0)
    assert shadow.due(quiet, 3600.0)
    document = shadow.update_document(alarmed, 1764650123.7)
    assert document == {"state": {"reported": {**alarmed, "updated": 1764650123}}}


@pytest.fixture
def component(tmp_path: Path) -> Iterator[Callable[..., Component]]:
    started: list[Component] = []

    def start(load: float, **merge: Any) -> Component:
        write_load(tmp_path, load)
        config = {
            "EnableGPUMetrics": True,
            "GpuLoadFeedbackFile": str(tmp_path / "load"),
            "InferenceTimeFeedbackFile": str(tmp_path / "time"),
            "SecurityProfile": {"name": "p", "behaviors": [RULE]},  # nothing on the host can alarm
            **merge,
        }
        started.append(Component(tmp_path, config))
        return started[-1]

    yield start
    for c in started:
        c.close()


def write_load(tmp_path: Path, load: float) -> None:
    (tmp_path / "load").write_text(str(load))


def shadows(c: Component) -> list[dict[str, Any]]:
    return [
        json.loads(p.payload)["state"]["reported"] for p in c.nucleus.published if p.topic == SHADOW_TOPIC
    ]


def test_the_shadow_follows_alarms_through_the_recipe_s_grant(
    component: Callable[..., Component], tmp_path: Path
) -> None:
    c = component(10)
    poll(lambda: len(shadows(c)) == 1, what="the first shadow update")
    assert shadows(c)[0]["inAlarm"] is False and shadows(c)[0]["profile"] == "p"
    write_load(tmp_path, 85)
    poll(lambda: len(shadows(c)) == 2, what="the shadow of the alarm")
    assert shadows(c)[1]["behaviorsInAlarm"] == ["gpu-load"]
    write_load(tmp_path, 10)
    poll(lambda: len(shadows(c)) == 3, what="the shadow of the cleared alarm")
    assert shadows(c)[2]["alarmCount"] == 0


def test_the_shadow_is_right_after_a_connection_dropped_while_an_alarm_opened(
    component: Callable[..., Component], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = component(10)
    poll(lambda: len(shadows(c)) == 1, what="the first shadow update")
    with caplog.at_level(logging.WARNING, logger="ddcustom.device.agent"):
        c.nucleus.drop_connections(refuse_next=10**6)  # down until told otherwise
        write_load(tmp_path, 85)
        poll(lambda: "fleet shadow not updated" in caplog.text, what="a failed update while down")
        c.nucleus.drop_connections(refuse_next=0)
        poll(lambda: len(shadows(c)) == 2, what="the shadow after the reconnect")
    assert shadows(c)[-1]["inAlarm"] is True


def test_fleet_shadow_false_publishes_no_shadow(component: Callable[..., Component]) -> None:
    c = component(85, FleetShadow=False)
    poll(lambda: any(p.topic.endswith("/alerts") for p in c.nucleus.published), what="the alert")
    assert shadows(c) == []


def test_what_the_device_writes_is_what_cloud_status_reads() -> None:
    from ddcustom.tooling.cloud.status import _device

    state = reported_state([alarm("miner-processes", {"number": 2})], "crypto-mining", "active")
    document = FleetShadow().update_document(state, 1764650300.0)
    indexed = {"thingName": "cam-7", "shadow": json.dumps({"name": {"ddcustom": document["state"]}})}
    device = _device(indexed)
    assert (device.thing, device.behaviors, device.since, device.updated) == (
        "cam-7",
        ["miner-processes"],
        1764650000,
        1764650300,
    )
