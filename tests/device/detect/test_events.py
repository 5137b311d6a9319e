"""The typed alert: its wire form is the one consumers have always received, and it reads back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ddcustom.device.alerts.spool import AlertSpool
from ddcustom.device.detect.events import ViolationEvent
from ddcustom.device.outputs.sink import serialise

EVENT = ViolationEvent(
    violation_id="6f1c2d3e-0000-4000-8000-000000000001",
    thing_name="cam-42",
    security_profile_name="crypto-mining",
    behavior={"name": "cpu-usage", "metric": "cpu_usage"},
    metric_value={"number": 95.5},
    event_type="in-alarm",
    event_time=1764650000,
)

# Written by hand: what IoT rules, e-mails and the quarantine handler have received since 1.0.0.
WIRE = (
    '{"violationId":"6f1c2d3e-0000-4000-8000-000000000001","thingName":"cam-42",'
    '"securityProfileName":"crypto-mining","behavior":{"name":"cpu-usage","metric":"cpu_usage"},'
    '"metricValue":{"number":95.5},"violationEventType":"in-alarm","violationEventTime":1764650000,'
    '"source":"device"}'
)


def test_the_wire_form_is_unchanged() -> None:
    assert serialise(EVENT.to_json()) == WIRE


def test_the_wire_form_reads_back_into_the_same_event() -> None:
    assert ViolationEvent.from_json(json.loads(WIRE)) == EVENT


def test_keys_of_another_version_are_kept_and_written_again() -> None:
    data = {**json.loads(WIRE), "severity": {"level": 4}}
    event = ViolationEvent.from_json(data)
    assert event.extra == {"severity": {"level": 4}}
    assert event.to_json() == data


def test_evidence_follows_the_violation_fields_and_reads_back() -> None:
    event = replace(EVENT, evidence={"processes": [{"pid": 4242}]})
    assert serialise(event.to_json()) == WIRE[:-1] + ',"evidence":{"processes":[{"pid":4242}]}}'
    assert ViolationEvent.from_json(event.to_json()) == event


def test_a_cloud_event_without_source_reads_and_writes_without_one() -> None:
    data = json.loads(WIRE)
    del data["source"]
    event = ViolationEvent.from_json(data)
    assert event.source is None and "source" not in event.to_json()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"violationId": None}, "violationId"),
        ({"violationEventTime": "soon"}, "violationEventTime"),
        ({"violationEventTime": True}, "violationEventTime"),
        ({"behavior": "cpu"}, "behavior"),
        ({"violationEventType": "in-trouble"}, "violationEventType"),
    ],
)
def test_a_malformed_alert_is_refused_with_the_field_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViolationEvent.from_json({**json.loads(WIRE), **change})


def test_an_alert_spooled_by_version_1_0_is_replayed_after_an_upgrade(tmp_path: Path) -> None:
    # the file 1.0.0 wrote: compact JSON with sorted keys, named by its sequence number
    old = json.dumps(json.loads(WIRE), separators=(",", ":"), sort_keys=True)
    (tmp_path / "0000000000000007.alert.json").write_text(old)
    spool = AlertSpool(tmp_path, 1_000_000)
    assert list(spool.pending()) == [("0000000000000007.alert.json", EVENT)]
    assert spool.append(EVENT) == "0000000000000007.alert.json"  # recognised as the same alert
