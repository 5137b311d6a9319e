"""The typed alert: its wire form is the one consumers have always received, and it reads back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ddcustom.device.alerts.spool import AlertSpool
from ddcustom.device.detect.events import UncleanStopEvent, ViolationEvent, alert_from_json
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


# ---- the unclean-stop event ------------------------------------------------------------------------

# Written by hand: the wire form docs/responding.md describes.
STOP_WIRE = {
    "eventType": "unclean-stop",
    "eventId": "9b2f0c1d4e5a6b7c8d9e0f1a2b3c4d5e",
    "thingName": "cam-42",
    "eventTime": 1764650060,
    "source": "device",
    "cause": "killed-or-crashed",
    "stopped": {"pid": 4242, "version": "1.0.0", "startedAt": 1764640000, "lastSeenAt": 1764650000},
    "detectionDown": {"since": 1764650000, "seconds": 60, "exact": False, "heartbeatSeconds": 60.0},
}


def test_an_unclean_stop_reads_back_and_writes_the_same_wire_form() -> None:
    event = alert_from_json(STOP_WIRE)
    assert isinstance(event, UncleanStopEvent)
    assert event.identity == ("9b2f0c1d4e5a6b7c8d9e0f1a2b3c4d5e", "unclean-stop")
    assert event.to_json() == STOP_WIRE
    assert alert_from_json(json.loads(WIRE)) == EVENT  # a violation is still read as one


def test_an_unclean_stop_is_never_taken_for_a_violation() -> None:
    # The quarantine rule selects violationEventType = 'in-alarm'; the quarantine function and the
    # history plots read violations with ViolationEvent.from_json. Neither takes the unclean stop.
    assert "violationEventType" not in STOP_WIRE and "violationId" not in STOP_WIRE
    with pytest.raises(ValueError):
        ViolationEvent.from_json(STOP_WIRE)
    # what the quarantine rule would hand the function if its WHERE clause let it through
    from ddcustom.tooling.cloud.quarantine import handler

    passed = {**STOP_WIRE, "topicThing": "cam-42"}
    assert handler(passed, iot=object())["ignored"] == ["cam-42"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"eventId": 7}, "eventId"),
        ({"eventTime": "soon"}, "eventTime"),
        ({"detectionDown": []}, "detectionDown"),
    ],
)
def test_a_malformed_unclean_stop_is_refused_with_the_field_named(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        alert_from_json({**STOP_WIRE, **change})


def test_the_spool_keeps_both_kinds_in_order_across_a_restart(tmp_path: Path) -> None:
    spool = AlertSpool(tmp_path / "alerts", 1_000_000)
    stop = UncleanStopEvent.from_json(STOP_WIRE)
    spool.append(stop)
    spool.append(EVENT)
    spool.append(stop)  # the same alert again (a start that crashed before replacing its marker): kept once
    replayed = [event for _, event in AlertSpool(tmp_path / "alerts", 1_000_000).pending()]
    assert replayed == [stop, EVENT]
