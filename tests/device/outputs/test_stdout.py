"""JsonLinesSink: one JSON line per report or alert, with the topic it would go to under Greengrass."""

from __future__ import annotations

import io
import json

import pytest

from ddcustom.device.detect.events import ViolationEvent
from ddcustom.device.outputs.sink import SinkError
from ddcustom.device.outputs.stdout import JsonLinesSink
from support.helpers import settings

ALERT = ViolationEvent(
    violation_id="00000000-0000-4000-8000-000000000001",
    thing_name="t1",
    security_profile_name="crypto-mining",
    behavior={"name": "cpu-usage"},
    metric_value={"number": 95},
    event_type="in-alarm",
    event_time=1764650000,
)


def test_alerts_carry_the_topic_of_the_settings_in_use() -> None:
    out = io.StringIO()
    sink = JsonLinesSink(out, "t1", "ddcustom/t1/alerts")
    sink.publish_alert(ALERT)
    sink.apply_settings(settings(AlertTopic="fleet/{thingName}/alarms"))
    sink.publish_alert(ALERT)
    assert sink.publish_report({"header": {"report_id": 1}}) is True
    assert sink.publish_shadow({"state": {}}) is False  # no thing in the cloud
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["kind"], line["topic"]) for line in lines] == [
        ("alert", "ddcustom/t1/alerts"),
        ("alert", "fleet/t1/alarms"),
        ("report", "$aws/things/t1/defender/metrics/json"),
    ]
    assert lines[0]["alert"]["violationId"] == ALERT.violation_id


class GoneReader(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_reader_gone_away_is_told_and_the_write_fails() -> None:
    told: list[bool] = []
    sink = JsonLinesSink(GoneReader(), "t1", "ddcustom/t1/alerts", on_closed=lambda: told.append(True))
    with pytest.raises(SinkError, match="closed by its reader"):
        sink.publish_alert(ALERT)
    assert told == [True]
