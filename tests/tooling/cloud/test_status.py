"""`ddcustom cloud status` against a stubbed fleet index (moto's SearchIndex knows neither named shadows
nor paging): the documented shadow document, any number of pages, filters, text and JSON."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import boto3
from botocore.stub import ANY, Stubber

from ddcustom.tooling.cloud.status import fleet_status, print_status
from support.helpers import documented_json

REPORTED = "shadow.name.ddcustom.reported."
NOW = 1764660000


def contract() -> dict[str, Any]:
    """The reported document exactly as docs/fleet.md states it."""
    document: dict[str, Any] = documented_json("fleet.md", "## The named shadow `ddcustom`")
    return document


def search_thing(name: str, reported: dict[str, Any], groups: list[str]) -> dict[str, Any]:
    """A SearchIndex result: the named shadows are JSON text under "name"."""
    shadow = {"name": {"ddcustom": {"reported": reported, "hasDelta": False, "version": 7}}}
    return {
        "thingName": name,
        "thingId": f"id-{name}",
        "thingGroupNames": groups,
        "shadow": json.dumps(shadow),
    }


def stubbed() -> tuple[Any, Stubber]:
    client = boto3.client("iot", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    return client, Stubber(client)


def search(query: Any, token: Any = None) -> dict[str, Any]:
    params = {
        "indexName": "AWS_Things",
        "queryString": query,
        "maxResults": 500,
        "queryVersion": "2017-09-30",
    }
    if token:
        params["nextToken"] = token
    return params


def statistics(query: Any) -> dict[str, Any]:
    return {
        "indexName": "AWS_Things",
        "queryString": query,
        "aggregationField": REPORTED + "alarmCount",
        "queryVersion": "2017-09-30",
    }


def test_cloud_status_pages_through_every_device_in_alarm() -> None:
    reported = contract()["state"]["reported"]
    older = copy.deepcopy(reported)
    older["alarms"][0]["since"] = 1764640000
    pool = copy.deepcopy(reported)
    pool["behaviorsInAlarm"] = ["miner-processes", "mining-pool-connections"]
    pool["alarms"].append(
        {"behavior": "mining-pool-connections", "metric": "mining_pool_connections", "since": 1764655000}
    )
    first = [search_thing(f"gpu-edge-{i:03}", reported, ["line-3"]) for i in range(500)]
    second = [search_thing("gpu-edge-900", older, ["line-4"]), search_thing("gpu-edge-901", pool, ["line-4"])]
    in_alarm = REPORTED + "inAlarm:true"
    client, stub = stubbed()
    with stub:
        stub.add_response("search_index", {"things": first, "nextToken": "page-2"}, search(in_alarm))
        stub.add_response("search_index", {"things": second}, search(in_alarm, "page-2"))
        stub.add_response(
            "get_statistics", {"statistics": {"count": 1800}}, statistics(REPORTED + "alarmCount>=0")
        )
        silent_query = f"{REPORTED}updated<{NOW - 10800}"  # three missed hourly updates
        stub.add_response("get_statistics", {"statistics": {"count": 3}}, statistics(silent_query))
        quiet = dict(reported, updated=NOW - 5 * 3600, alarmCount=0)
        silent = [
            {**search_thing("gpu-edge-700", dict(quiet, updated=NOW - 4 * 3600), ["line-3"])},
            {**search_thing("gpu-edge-701", quiet, ["line-3"]), "attributes": {"ddcustomSilent": "since=x"}},
            search_thing("gpu-edge-702", dict(quiet, updated=NOW - 26 * 3600), ["line-4"]),
        ]
        stub.add_response("search_index", {"things": silent}, search(silent_query))
        status = fleet_status(lambda _: client, None, None, NOW)
        stub.assert_no_pending_responses()
    assert status["totals"] == {
        "reporting": 1800,
        "inAlarm": 502,
        "silent": 3,
        "silentAfterSeconds": 10800,
        "byBehavior": {"miner-processes": 502, "mining-pool-connections": 1},
    }
    # the silent devices, longest silent first, with whether the silent-device check has alerted
    assert [(d["thingName"], d["silentSeconds"], d["reported"]) for d in status["silentDevices"]] == [
        ("gpu-edge-702", 26 * 3600, False),
        ("gpu-edge-701", 5 * 3600, True),
        ("gpu-edge-700", 4 * 3600, False),
    ]
    devices = status["devices"]
    assert [d["thingName"] for d in devices[:2]] == ["gpu-edge-900", "gpu-edge-000"]  # oldest alarm first
    assert devices[0]["since"] == 1764640000
    assert devices[0]["thingGroupNames"] == ["line-4"]
    assert devices[-1]["thingName"] == "gpu-edge-901"  # its oldest alarm, not its newest, sorts it
    assert devices[-1]["behaviorsInAlarm"] == ["miner-processes", "mining-pool-connections"]

    text = io.StringIO()
    print_status(status, text, as_json=False)
    lines = text.getvalue().splitlines()
    assert lines[0].split() == ["THING", "IN", "ALARM", "SINCE", "(UTC)", "BEHAVIORS"]
    assert lines[1].split() == ["gpu-edge-900", "2025-12-02", "01:46:40Z", "miner-processes"]
    assert "502 in alarm of 1800 reporting; 3 silent for more than 3 h" in lines
    silent_table = lines[lines.index("  mining-pool-connections: 1") + 1 :]
    assert silent_table[0].split() == [
        "SILENT",
        "THING",
        "LAST",
        "UPDATE",
        "(UTC)",
        "SILENT",
        "FOR",
        "ALERT",
        "SENT",
    ]
    assert silent_table[1].split()[0] == "gpu-edge-702"
    assert "1 d 2 h" in silent_table[1] and silent_table[1].endswith("not yet")
    assert "5 h" in silent_table[2] and silent_table[2].endswith("yes")
    as_json = io.StringIO()
    print_status(status, as_json, as_json=True)
    assert json.loads(as_json.getvalue()) == status


def test_cloud_status_filters_by_group_and_behavior() -> None:
    client, stub = stubbed()
    group = 'thingGroupNames:"line:3"'
    behavior = REPORTED + 'behaviorsInAlarm:"miner-processes"'
    with stub:
        stub.add_response(
            "search_index", {"things": []}, search(f"{REPORTED}inAlarm:true AND {group} AND {behavior}")
        )
        stub.add_response(
            "get_statistics",
            {"statistics": {"count": 40}},
            statistics(f"{REPORTED}alarmCount>=0 AND {group}"),
        )
        stub.add_response("get_statistics", {"statistics": {"count": 0}}, statistics(ANY))
        status = fleet_status(lambda _: client, "line:3", "miner-processes", NOW)
        stub.assert_no_pending_responses()
    out = io.StringIO()
    print_status(status, out, as_json=False)
    assert out.getvalue().splitlines()[:2] == [
        "no device in alarm",
        "0 in alarm of 40 reporting; 0 silent for more than 3 h",
    ]


def test_cloud_status_survives_a_shadow_it_cannot_read() -> None:
    """A thing whose shadow text is not JSON, or lacks the document, is listed without behaviors."""
    client, stub = stubbed()
    broken = {"thingName": "gpu-edge-5", "shadow": "{not json"}
    empty = {"thingName": "gpu-edge-6"}
    with stub:
        stub.add_response("search_index", {"things": [broken, empty]}, search(REPORTED + "inAlarm:true"))
        stub.add_response("get_statistics", {"statistics": {"count": 2}}, statistics(ANY))
        stub.add_response("get_statistics", {"statistics": {"count": 0}}, statistics(ANY))
        status = fleet_status(lambda _: client, None, None, NOW)
    assert [(d["thingName"], d["behaviorsInAlarm"], d["since"]) for d in status["devices"]] == [
        ("gpu-edge-5", [], None),
        ("gpu-edge-6", [], None),
    ]


def test_cloud_status_command_prints_json() -> None:
    from support.cloud_account import cloud

    client, stub = stubbed()
    reported = contract()["state"]["reported"]
    with stub:
        things = [search_thing("gpu-edge-12", reported, ["line-3"])]
        stub.add_response("search_index", {"things": things}, search(REPORTED + "inAlarm:true"))
        stub.add_response("get_statistics", {"statistics": {"count": 9}}, statistics(ANY))
        stub.add_response("get_statistics", {"statistics": {"count": 1}}, statistics(ANY))
        silent = [search_thing("gpu-edge-3", dict(reported, updated=NOW - 9000), ["line-3"])]
        stub.add_response("search_index", {"things": silent}, search(ANY))
        arguments = ("status", "--json", "--silent-after", "7200")
        code, out, err = cloud(lambda _: client, *arguments)  # type: ignore[arg-type]
    assert (code, err) == (0, "")
    status = json.loads(out)
    assert status["totals"]["reporting"] == 9
    assert status["devices"][0]["alarms"] == reported["alarms"]
    assert status["totals"]["silentAfterSeconds"] == 7200
    assert [d["thingName"] for d in status["silentDevices"]] == ["gpu-edge-3"]


def test_cloud_status_without_a_fleet_index_says_what_to_do() -> None:
    from support.cloud_account import cloud

    client, stub = stubbed()
    with stub:
        stub.add_client_error(
            "search_index",
            "InvalidRequestException",
            "Query includes one or more constraints for Shadow attribute, but Shadow indexing is not enabled",
        )
        code, out, err = cloud(lambda _: client, "status")  # type: ignore[arg-type]
    assert (code, out) == (2, "")
    assert "SearchIndex: InvalidRequestException" in err
    assert "`ddcustom cloud setup` turns it on (--fleet on)" in err
