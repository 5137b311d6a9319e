"""The quarantine handler on alerts as the quarantine rule delivers them (today's alert JSON plus the
topic's thing), against moto's IoT registry (its package: test_lambda_packages.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from ddcustom.tooling.cloud.quarantine import ATTRIBUTE, QuarantineError, handler, record_value
from support.helpers import FIXTURES

CLOUD_FIXTURES = FIXTURES / "cloud"
GROUP = "ddcustom-quarantine"
THINGS = ("gpu-edge-07", "gpu-edge-12")


def device_alert(**changes: Any) -> dict[str, Any]:
    """The on-device alert of the fixture (thing gpu-edge-12, behavior miner-processes)."""
    alert: dict[str, Any] = json.loads((CLOUD_FIXTURES / "device-alert.json").read_text(encoding="utf-8"))
    alert.update(changes)
    return alert


def from_rule(alert: dict[str, Any], topic_thing: str) -> dict[str, Any]:
    """What the rule's ``SELECT *, topic(2) AS topicThing`` passes for an alert on ddcustom/<thing>/alerts."""
    return {**alert, "topicThing": topic_thing}


@pytest.fixture
def iot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("QUARANTINE_GROUP", raising=False)
    monkeypatch.delenv("QUARANTINE_BEHAVIORS", raising=False)
    with mock_aws():
        client = boto3.client("iot", region_name="us-east-1")
        client.create_thing_group(thingGroupName=GROUP)
        for thing in THINGS:
            client.create_thing(thingName=thing, attributePayload={"attributes": {"site": "lyon-2"}})
        yield client


def members(iot: Any, group: str = GROUP) -> list[str]:
    return sorted(iot.list_things_in_thing_group(thingGroupName=group)["things"])


def attributes(iot: Any, thing: str) -> dict[str, str]:
    return dict(iot.describe_thing(thingName=thing)["attributes"])


def test_cloud_quarantine_moves_the_thing_and_records_why(iot: Any) -> None:
    result = handler(from_rule(device_alert(), "gpu-edge-12"))
    assert result == {
        "quarantined": ["gpu-edge-12"],
        "already_quarantined": [],
        "ignored": [],
        "refused": [],
    }
    assert members(iot) == ["gpu-edge-12"]
    recorded = attributes(iot, "gpu-edge-12")
    assert recorded["site"] == "lyon-2"  # merged: the thing's own attributes stay
    assert re.fullmatch(
        r"at=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ,behavior=miner-processes,"
        r"violation=3f6c2a9e-1d4b-4c8e-9a7f-0b2d5e8c1a34",
        recorded[ATTRIBUTE],
    )
    assert ATTRIBUTE not in attributes(iot, "gpu-edge-07")


def test_cloud_quarantine_refuses_an_alert_naming_another_thing(iot: Any) -> None:
    """gpu-edge-07 publishes, on its own alert topic, an alert that names gpu-edge-12."""
    spoofed = from_rule(device_alert(thingName="gpu-edge-12"), "gpu-edge-07")
    assert handler(spoofed)["refused"] == ["gpu-edge-12"]
    assert members(iot) == []
    assert ATTRIBUTE not in attributes(iot, "gpu-edge-12")
    assert ATTRIBUTE not in attributes(iot, "gpu-edge-07")


def test_cloud_quarantine_refuses_an_alert_without_its_topic(iot: Any) -> None:
    """An alert that did not come through the quarantine rule (invoked directly, or from SNS) has no
    topic to check it against."""
    assert handler(device_alert())["refused"] == ["gpu-edge-12"]
    wrapped = {"Records": [{"Sns": {"Message": json.dumps(device_alert())}}]}
    assert handler(wrapped)["ignored"] == [""]  # an SNS record is no alert: it names no thing
    assert members(iot) == []


def test_cloud_quarantine_is_idempotent_and_keeps_the_first_record(iot: Any) -> None:
    first = "at=2026-11-25T09:30:00Z,behavior=mining-pool-connections,violation=first"
    iot.update_thing(
        thingName="gpu-edge-12", attributePayload={"attributes": {ATTRIBUTE: first}, "merge": True}
    )
    iot.add_thing_to_thing_group(thingGroupName=GROUP, thingName="gpu-edge-12")
    alert = from_rule(device_alert(), "gpu-edge-12")
    result = handler([alert, alert])
    assert result["already_quarantined"] == ["gpu-edge-12", "gpu-edge-12"]
    assert result["quarantined"] == []
    assert attributes(iot, "gpu-edge-12")[ATTRIBUTE] == first
    assert members(iot) == ["gpu-edge-12"]


@pytest.mark.parametrize("event_type", ["alarm-cleared", "alarm-invalidated", "in-alarm-test", None])
def test_cloud_quarantine_acts_on_in_alarm_only(iot: Any, event_type: Any) -> None:
    alert = device_alert(violationEventType=event_type)
    assert handler(from_rule(alert, "gpu-edge-12"))["ignored"] == ["gpu-edge-12"]
    assert members(iot) == []


def test_cloud_quarantine_only_the_configured_behaviors(iot: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUARANTINE_BEHAVIORS", "mining-pool-connections,gpu-unknown-processes")
    assert handler(from_rule(device_alert(), "gpu-edge-12"))["ignored"] == ["gpu-edge-12"]
    pool = device_alert(behavior={"name": "mining-pool-connections", "metric": "mining_pool_connections"})
    assert handler(from_rule(pool, "gpu-edge-12"))["quarantined"] == ["gpu-edge-12"]
    assert "behavior=mining-pool-connections" in attributes(iot, "gpu-edge-12")[ATTRIBUTE]


def test_cloud_quarantine_ignores_keys_it_does_not_know(iot: Any) -> None:
    evidence = {"processes": [{"pid": 4242, "name": "xmrig", "cmdline": "xmrig -o stratum+tcp://pool:3333"}]}
    alert = from_rule(device_alert(evidence=evidence, schema=2), "gpu-edge-12")
    assert handler(alert)["quarantined"] == ["gpu-edge-12"]


def test_cloud_quarantine_skips_what_is_not_an_alert(iot: Any) -> None:
    result = handler(["not an object", 42, {"hello": 1}])
    assert result == {
        "quarantined": [],
        "already_quarantined": [],
        "ignored": ["", "", ""],
        "refused": [],
    }
    assert members(iot) == []


def test_cloud_quarantine_group_from_the_environment(iot: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    iot.create_thing_group(thingGroupName="isolated")
    monkeypatch.setenv("QUARANTINE_GROUP", "isolated")
    handler(from_rule(device_alert(), "gpu-edge-12"))
    assert members(iot, "isolated") == ["gpu-edge-12"]
    assert members(iot) == []


def test_cloud_quarantine_group_deleted_by_hand_fails_clearly(iot: Any) -> None:
    iot.delete_thing_group(thingGroupName=GROUP)
    with pytest.raises(
        QuarantineError, match=r"the thing group ddcustom-quarantine does not exist \(deleted"
    ):
        handler(from_rule(device_alert(), "gpu-edge-12"))


def test_cloud_quarantine_unknown_thing_fails_clearly(iot: Any) -> None:
    with pytest.raises(QuarantineError, match="cannot quarantine gpu-edge-99"):
        handler(from_rule(device_alert(thingName="gpu-edge-99"), "gpu-edge-99"))


def test_cloud_quarantine_without_room_for_the_record_still_quarantines() -> None:
    """A thing without a thing type has few attributes; IoT then refuses UpdateThing: the device is
    quarantined all the same (the function's log keeps the reason)."""
    client = boto3.client("iot", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_response("list_thing_groups_for_thing", {"thingGroups": []}, {"thingName": "gpu-edge-12"})
        stub.add_client_error(
            "update_thing", "InvalidRequestException", "Maximum number of attributes exceeded"
        )
        stub.add_response(
            "add_thing_to_thing_group", {}, {"thingGroupName": GROUP, "thingName": "gpu-edge-12"}
        )
        result = handler(from_rule(device_alert(), "gpu-edge-12"), iot=client)
        stub.assert_no_pending_responses()
    assert result["quarantined"] == ["gpu-edge-12"]


VALUE_PATTERN = botocore.session.get_session().get_service_model("iot").shape_for("AttributeValue")


@given(behavior=st.text(max_size=300), violation=st.one_of(st.none(), st.text(max_size=2000), st.integers()))
def test_cloud_quarantine_record_is_a_valid_attribute_value(behavior: str, violation: Any) -> None:
    value = record_value(1764650000, behavior, violation)
    assert len(value) <= VALUE_PATTERN.metadata["max"]
    assert re.fullmatch(VALUE_PATTERN.metadata["pattern"], value)
    assert value.startswith("at=2025-12-02T04:33:20Z,behavior=")
