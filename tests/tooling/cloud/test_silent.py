"""The silent-device check (silent.py) against moto's IoT registry and SNS, with a stand-in fleet index
over that registry (moto's SearchIndex knows no named shadows): one message when a device goes silent,
one when it reports again, none in between, whatever the number of runs."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from ddcustom.tooling.cloud.silent import (
    ATTRIBUTE,
    BURST,
    Settings,
    SilentCheckError,
    check,
    handler,
)
from support.cloud_account import REGION, Inbox, mocked_account
from support.fleet_index import FleetIndex

GROUP = "line-3"
NOW = int(time.time())  # the handler reads the wall clock: the devices are reported relative to it
HOUR = 3600
THINGS = [f"gpu-edge-{i:02}" for i in range(1, 6)]


@dataclass
class Fleet:
    iot: Any
    index: FleetIndex
    sns: Any
    inbox: Inbox
    settings: Settings

    @property
    def clients(self) -> dict[str, Any]:
        return {"iot": self.iot, "index": self.index, "sns": self.sns}

    def run(self, now: float = NOW) -> dict[str, list[str]]:
        return check(self.clients, self.settings, now)

    def mark(self, thing: str) -> Any:
        return (self.iot.describe_thing(thingName=thing).get("attributes") or {}).get(ATTRIBUTE)


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    with mocked_account(monkeypatch):
        iot = boto3.client("iot", region_name=REGION)
        sns = boto3.client("sns", region_name=REGION)
        topic = sns.create_topic(Name="ddcustom-alerts")["TopicArn"]
        iot.create_thing_group(thingGroupName=GROUP)
        index = FleetIndex(iot)
        for thing in [*THINGS, "elsewhere-01"]:
            iot.create_thing(thingName=thing, attributePayload={"attributes": {"site": "lyon-2"}})
            index.report(thing, updated=NOW - 600, alarmCount=0)
        for thing in THINGS:
            iot.add_thing_to_thing_group(thingGroupName=GROUP, thingName=thing)
        settings = Settings(
            group=GROUP, silent_after=3 * HOUR, topic_arn=topic, region=REGION, stack="ddcustom"
        )
        yield Fleet(iot, index, sns, Inbox(sns, boto3.client("sqs", region_name=REGION), topic), settings)


def test_cloud_silent_one_message_when_silent_and_one_when_back(fleet: Fleet) -> None:
    last = NOW - 3 * HOUR - 20 * 60
    fleet.index.report("gpu-edge-02", updated=last)
    assert fleet.run()["silent"] == ["gpu-edge-02"]
    [sent] = fleet.inbox.take()
    assert sent["Subject"] == "ddcustom: gpu-edge-02 is silent (3 h 20 min without an update)"
    body = sent["Message"]
    assert (
        "Device gpu-edge-02 of thing group line-3 has not updated its ddcustom shadow for 3 h 20 min" in body
    )
    assert re.search(r"^last update: +2026-12-06 \d\d:\d\d:\d\d UTC \(3 h 20 min ago\)$", body, re.M)
    assert re.search(r"^thing group: +line-3$", body, re.M)
    assert f"ddcustom cloud status --region {REGION} --thing-group line-3" in body
    assert sent["data"] == {
        "source": "cloud",
        "kind": "silent-device",
        "event": "silent",
        "thingName": "gpu-edge-02",
        "thingGroup": GROUP,
        "lastUpdate": last,
        "silentSeconds": 3 * HOUR + 20 * 60,
        "silentAfterSeconds": 3 * HOUR,
        "recorded": True,
    }
    assert fleet.mark("gpu-edge-02").startswith("since=2026-12-06T")
    assert fleet.iot.describe_thing(thingName="gpu-edge-02")["attributes"]["site"] == "lyon-2"

    # later runs while it stays silent (the others keep their hourly heartbeat): nothing new
    for later in (NOW + 900, NOW + 1800, NOW + 5 * HOUR):
        for thing in THINGS:
            if thing != "gpu-edge-02":
                fleet.index.report(thing, updated=later - 600)
        assert fleet.run(later)["silent"] == []
    assert fleet.inbox.take() == []

    # it reports again: one message, with how long it was silent; the mark is gone
    back = NOW + 2 * HOUR
    fleet.index.report("gpu-edge-02", updated=back)
    assert fleet.run(back + 60)["back"] == ["gpu-edge-02"]
    [sent] = fleet.inbox.take()
    assert sent["Subject"] == "ddcustom: gpu-edge-02 reports again after 5 h 20 min of silence"
    assert sent["data"]["event"] == "back"
    assert sent["data"]["silentSince"] == last
    assert sent["data"]["silentSeconds"] == back - last
    assert fleet.mark("gpu-edge-02") is None
    assert fleet.run(back + 120) == {"silent": [], "back": [], "skipped": [], "later": []}
    assert fleet.inbox.take() == []


def test_cloud_silent_only_the_group_and_only_past_the_threshold(fleet: Fleet) -> None:
    fleet.index.report("elsewhere-01", updated=NOW - 10 * HOUR)  # not in the group
    fleet.index.report("gpu-edge-03", updated=NOW - 3 * HOUR + 60)  # not silent long enough
    fleet.index.shadows.pop("gpu-edge-04")  # never reported: not a silent detector
    assert fleet.run()["silent"] == []
    assert fleet.inbox.take() == []
    assert fleet.mark("elsewhere-01") is None


def test_cloud_silent_an_outage_is_one_summary(fleet: Fleet) -> None:
    many = [f"gpu-edge-{i:02}" for i in range(10, 10 + BURST + 5)]
    for thing in many:
        fleet.iot.create_thing(thingName=thing)
        fleet.iot.add_thing_to_thing_group(thingGroupName=GROUP, thingName=thing)
        fleet.index.report(thing, updated=NOW - 4 * HOUR)
    fleet.index.page_size = 7
    assert sorted(fleet.run()["silent"]) == many
    [sent] = fleet.inbox.take()
    assert sent["Subject"] == f"ddcustom: {len(many)} devices of line-3 went silent"
    assert sent["data"]["count"] == len(many)
    assert sent["data"]["thingNames"] == many
    assert all(fleet.mark(thing) for thing in many)
    for thing in many:
        fleet.index.report(thing, updated=NOW + 60)
    assert sorted(fleet.run(NOW + 120)["back"]) == many
    [sent] = fleet.inbox.take()
    assert sent["Subject"] == f"ddcustom: {len(many)} devices of line-3 report again"


def test_cloud_silent_a_failed_message_is_sent_by_the_next_run(fleet: Fleet) -> None:
    fleet.index.report("gpu-edge-01", updated=NOW - 4 * HOUR)
    topic = fleet.settings.topic_arn
    fleet.sns.delete_topic(TopicArn=topic)
    with pytest.raises(SilentCheckError, match="cannot publish to arn:aws:sns"):
        fleet.run()
    assert fleet.mark("gpu-edge-01") is None  # taken back
    fleet.sns.create_topic(Name="ddcustom-alerts")
    fleet.inbox = Inbox(fleet.sns, boto3.client("sqs", region_name=REGION), topic, name="again")
    assert fleet.run(NOW + 900)["silent"] == ["gpu-edge-01"]
    assert len(fleet.inbox.take()) == 1


def test_cloud_silent_runs_out_of_time_and_leaves_the_rest_for_the_next(fleet: Fleet) -> None:
    fleet.index.report("gpu-edge-01", updated=NOW - 4 * HOUR)
    result = check(fleet.clients, fleet.settings, NOW, deadline=0.0)
    assert result["later"] == ["gpu-edge-01"]
    assert fleet.mark("gpu-edge-01") is None
    assert fleet.run(NOW + 900)["silent"] == ["gpu-edge-01"]


def test_cloud_silent_through_the_handler_and_its_environment(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {
        "THING_GROUP": GROUP,
        "SILENT_AFTER": "7200",
        "ALERT_TOPIC_ARN": fleet.settings.topic_arn,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    fleet.index.report("gpu-edge-05", updated=1)  # long ago, in 1970
    assert handler({"action": "check"}, None, fleet.clients)["silent"] == ["gpu-edge-05"]
    silent_query = (
        r'thingGroupNames:"line-3" AND shadow\.name\.ddcustom\.reported\.updated<(\d+) '
        r"AND NOT attributes\.ddcustomSilent:\*"
    )
    [before] = [int(m.group(1)) for m in (re.fullmatch(silent_query, q) for q in fleet.index.queries) if m]
    assert abs(before - (time.time() - 7200)) < 300


# ---- races and refusals, where moto does not model the registry's answers ----


def registry(stub_calls: list[tuple[str, Any, Any]]) -> Any:
    client = boto3.client("iot", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    for operation, response, params in stub_calls:
        if isinstance(response, str):
            stub.add_client_error(operation, response, expected_params=params)
        else:
            stub.add_response(operation, response, params)
    stub.activate()
    return client


class OneSilentDevice:
    """An index that answers: gpu-edge-01 went silent four hours ago; nobody came back."""

    def search_index(self, **params: Any) -> dict[str, Any]:
        if "NOT" not in params["queryString"]:
            return {"things": []}
        shadow = json.dumps({"name": {"ddcustom": {"reported": {"updated": NOW - 4 * HOUR}}}})
        return {"things": [{"thingName": "gpu-edge-01", "shadow": shadow}]}


def test_cloud_silent_of_two_racing_runs_one_reports(fleet: Fleet) -> None:
    """The other run marked the thing between this run's look and its write: the thing's version moved,
    IoT refuses the write, and this run sends nothing."""
    iot = registry(
        [
            ("describe_thing", {"thingName": "gpu-edge-01", "version": 4, "attributes": {}}, None),
            ("update_thing", "VersionConflictException", None),
        ]
    )
    clients = {"iot": iot, "index": OneSilentDevice(), "sns": fleet.sns}
    assert check(clients, fleet.settings, NOW)["skipped"] == ["gpu-edge-01"]
    assert fleet.inbox.take() == []


def test_cloud_silent_without_room_for_the_mark_still_reports_and_says_so(fleet: Fleet) -> None:
    iot = registry(
        [
            ("describe_thing", {"thingName": "gpu-edge-01", "version": 4, "attributes": {"a": "1"}}, None),
            ("update_thing", "InvalidRequestException", None),
        ]
    )
    clients = {"iot": iot, "index": OneSilentDevice(), "sns": fleet.sns}
    assert check(clients, fleet.settings, NOW)["silent"] == ["gpu-edge-01"]
    [sent] = fleet.inbox.take()
    assert sent["data"]["recorded"] is False
    assert "every run of the check reports it again" in sent["Message"]
