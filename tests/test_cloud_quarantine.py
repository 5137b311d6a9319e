"""The quarantine handler on real-shaped events, against moto's IoT registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from ddcustom.cloud.quarantine import handler

FIXTURES = Path(__file__).parent / "fixtures" / "cloud"
GROUP = "ddcustom-quarantine"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def sns_wrapped(*messages: dict[str, Any]) -> dict[str, Any]:
    """An SNS -> Lambda event, as Lambda delivers it."""
    records = [
        {
            "EventSource": "aws:sns",
            "EventVersion": "1.0",
            "EventSubscriptionArn": "arn:aws:sns:us-east-1:123456789012:ddcustom-alerts:2bcfbf39",
            "Sns": {
                "Type": "Notification",
                "MessageId": f"95df01b4-ee98-5cb9-9903-4c221d41eb5{i}",
                "TopicArn": "arn:aws:sns:us-east-1:123456789012:ddcustom-alerts",
                "Subject": None,
                "Message": json.dumps(message),
                "Timestamp": "2026-11-25T09:30:00.000Z",
            },
        }
        for i, message in enumerate(messages)
    ]
    return {"Records": records}


@pytest.fixture
def iot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("QUARANTINE_GROUP", raising=False)
    with mock_aws():
        client = boto3.client("iot", region_name="us-east-1")
        client.create_thing_group(thingGroupName=GROUP)
        for thing in ("gpu-edge-07", "gpu-edge-12"):
            client.create_thing(thingName=thing)
        yield client


def members(iot: Any, group: str = GROUP) -> list[str]:
    return sorted(iot.list_things_in_thing_group(thingGroupName=group)["things"])


def test_cloud_quarantine_device_defender_violation(iot: Any) -> None:
    result = handler(fixture("violation-in-alarm.json"), None)
    assert result["quarantined"] == ["gpu-edge-07"]
    assert members(iot) == ["gpu-edge-07"]


def test_cloud_quarantine_sns_wrapped_violation_and_device_alert(iot: Any) -> None:
    event = sns_wrapped(fixture("violation-in-alarm.json"), fixture("device-alert.json"))
    result = handler(event, None)
    assert result["quarantined"] == ["gpu-edge-07", "gpu-edge-12"]
    assert members(iot) == ["gpu-edge-07", "gpu-edge-12"]


def test_cloud_quarantine_on_device_alert_as_is(iot: Any) -> None:
    assert handler(fixture("device-alert.json"), None)["quarantined"] == ["gpu-edge-12"]
    assert members(iot) == ["gpu-edge-12"]


def test_cloud_quarantine_ignores_alarm_cleared(iot: Any) -> None:
    result = handler(sns_wrapped(fixture("violation-cleared.json")), None)
    assert result == {"quarantined": [], "already_quarantined": [], "ignored": ["gpu-edge-07"]}
    assert members(iot) == []


def test_cloud_quarantine_is_idempotent(iot: Any) -> None:
    iot.add_thing_to_thing_group(thingGroupName=GROUP, thingName="gpu-edge-07")
    first = handler(fixture("violation-in-alarm.json"), None)
    twice = handler(sns_wrapped(fixture("violation-in-alarm.json"), fixture("violation-in-alarm.json")), None)
    assert first["already_quarantined"] == ["gpu-edge-07"]
    assert twice["already_quarantined"] == ["gpu-edge-07", "gpu-edge-07"]
    assert members(iot) == ["gpu-edge-07"]


def test_cloud_quarantine_group_from_environment(iot: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    iot.create_thing_group(thingGroupName="isolated")
    monkeypatch.setenv("QUARANTINE_GROUP", "isolated")
    handler(fixture("device-alert.json"), None)
    assert members(iot, "isolated") == ["gpu-edge-12"]
    assert members(iot) == []


def test_cloud_quarantine_skips_what_is_not_an_alarm(iot: Any) -> None:
    event = {"Records": [{"Sns": {"Message": "not json"}}, {"Sns": {"Message": json.dumps({"hello": 1})}}]}
    assert handler(event, None) == {"quarantined": [], "already_quarantined": [], "ignored": ["None"]}
    assert members(iot) == []


def test_cloud_quarantine_needs_an_in_alarm_event_type(iot: Any) -> None:
    """A message that only names a thing (no violationEventType) is not an alarm."""
    untyped = {k: v for k, v in fixture("device-alert.json").items() if k != "violationEventType"}
    unknown = {**fixture("violation-in-alarm.json"), "violationEventType": "in-alarm-test"}
    result = handler(sns_wrapped(untyped, unknown), None)
    assert result == {"quarantined": [], "already_quarantined": [], "ignored": ["gpu-edge-12", "gpu-edge-07"]}
    assert members(iot) == []
