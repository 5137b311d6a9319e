"""Prevalence: the function's handler against moto's DynamoDB (the table as setup makes it), IoT registry
and SNS; Greengrass v2 through botocore's Stubber. What each device runs, how many devices of the group
run each program, and the rare-program alerts, whatever the order and number of deliveries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ddcustom.tooling.cloud import prevalence_aggregate, prevalence_table
from ddcustom.tooling.cloud.prevalence_aggregate import AGE_OUT_SECONDS, HOURLY_SECONDS
from ddcustom.tooling.cloud.prevalence_commands import listing, lookup
from support.cloud_account import mocked_account
from support.prevalence_world import APP, GROUP, World, identity, sha, world

COMMON = [identity(name) for name in ("python3.11", "nginx", "sshd", "cron", "systemd")]


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with mocked_account(monkeypatch):
        yield world()


def counter(fleet: World, name: str) -> dict[str, Any]:
    return prevalence_table.get(fleet.clients.table, prevalence_table.counter_key(GROUP, sha(name))) or {}


def devices_running(fleet: World, name: str) -> list[str]:
    return [d["thing"] for d in prevalence_table.devices(fleet.clients.table, sha(name), GROUP)]


def group_devices(fleet: World) -> int:
    return int(
        (prevalence_table.get(fleet.clients.table, prevalence_table.group_key(GROUP)) or {}).get("devices", 0)
    )


def grow(fleet: World, count: int, start: int = 0, extra: tuple[dict[str, Any], ...] = ()) -> list[str]:
    """``count`` devices of the group that report the common programs (and ``extra``)."""
    things = [f"gpu-edge-{i:02}" for i in range(start, start + count)]
    for thing in things:
        fleet.device(thing)
        assert fleet.full(thing, [*COMMON, *extra]) == "recorded"
    return things


def test_cloud_prevalence_first_report_counts_each_program_once(fleet: World) -> None:
    fleet.device("gpu-edge-01")
    fleet.device("gpu-edge-02")
    assert fleet.full("gpu-edge-01", COMMON) == "recorded"
    assert fleet.full("gpu-edge-02", COMMON[:3]) == "recorded"
    result = fleet.aggregate()
    assert (result["devices"], result["identities"]) == (2, 5)
    assert group_devices(fleet) == 2
    assert counter(fleet, "nginx")["gsk"] == 2
    assert counter(fleet, "cron")["gsk"] == 1
    assert counter(fleet, "nginx")["path"] == "/usr/bin/nginx"
    assert sorted(devices_running(fleet, "nginx")) == ["gpu-edge-01", "gpu-edge-02"]
    assert devices_running(fleet, "cron") == ["gpu-edge-01"]
    # a second run finds nothing left to do
    assert fleet.aggregate()["devices"] == 0
    assert counter(fleet, "nginx")["gsk"] == 2


def test_cloud_prevalence_replayed_and_late_messages_change_nothing(fleet: World) -> None:
    fleet.device("gpu-edge-01")
    first = fleet.message("gpu-edge-01", "full", COMMON)
    assert fleet.send(first) == "recorded"
    assert fleet.send(first) == "unchanged"  # the same message delivered twice
    fleet.aggregate()
    assert fleet.send(first) == "unchanged"
    fleet.aggregate()
    assert counter(fleet, "sshd")["gsk"] == 1
    assert group_devices(fleet) == 1

    # changes out of order: seq 3 (cron is gone) arrives before seq 2 (cron changed its path)
    late = fleet.message("gpu-edge-01", "changes", [identity("cron", path="/opt/cron")], removed=[])
    gone = fleet.message("gpu-edge-01", "changes", [], removed=[sha("cron")])
    assert fleet.send(gone) == "recorded"
    assert fleet.send(late) == "unchanged"  # older than what removed it
    fleet.aggregate()
    assert counter(fleet, "cron")["gsk"] == 0
    assert devices_running(fleet, "cron") == []

    # a change batch older than the newest full inventory is dropped
    old = fleet.message("gpu-edge-01", "changes", [identity("cron")], seq=2)
    without_cron = [i for i in COMMON if i["sha256"] != sha("cron")]
    assert fleet.full("gpu-edge-01", without_cron) == "unchanged"  # as it is: nothing to write
    assert fleet.send(old) == "stale"


def test_cloud_prevalence_a_stopped_run_is_finished_by_the_next_exactly_once(
    fleet: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    grow(fleet, 3)
    real_clean = prevalence_aggregate._clean

    def crash(*args: Any) -> None:
        raise RuntimeError("the function timed out here")

    monkeypatch.setattr(prevalence_aggregate, "_clean", crash)
    with pytest.raises(RuntimeError, match="timed out"):
        fleet.aggregate("run-1")
    assert counter(fleet, "nginx")["gsk"] == 3  # counted, but not yet taken off the devices
    monkeypatch.setattr(prevalence_aggregate, "_clean", real_clean)
    fleet.aggregate("run-2")  # the same run again: nothing counted twice
    fleet.aggregate("run-3")
    assert counter(fleet, "nginx")["gsk"] == 3
    assert group_devices(fleet) == 3


def test_cloud_prevalence_rare_alert_then_spread_then_last_alert(fleet: World) -> None:
    miner = identity("kworker-x", path="/tmp/.x/kworker")
    grow(fleet, 24)
    fleet.aggregate()
    assert fleet.inbox.take() == []  # 24 devices of the same programs: nothing rare
    infected = ["gpu-edge-03"]
    fleet.full("gpu-edge-03", [*COMMON, miner])
    fleet.aggregate()
    [sent] = fleet.inbox.take()
    assert sent["Subject"] == "ddcustom: rare program on 1 of 24 devices of line-3: kworker"
    assert sent["data"]["event"] == "rare"
    assert sent["data"]["thingNames"] == infected
    assert sent["data"]["sha256"] == sha("kworker-x")
    assert "gpu-edge-03, first seen 2023-07-22 " in sent["Message"]
    assert f"ddcustom cloud prevalence {sha('kworker-x')} --thing-group line-3" in sent["Message"]
    fleet.aggregate()
    assert fleet.inbox.take() == []  # once

    for thing in ("gpu-edge-17", "gpu-edge-20"):  # it spreads: 2 devices (still rare), then 3 (not)
        fleet.full(thing, [*COMMON, miner])
        fleet.aggregate()
    spread, last = fleet.inbox.take()
    assert spread["Subject"] == "ddcustom: rare program spread to 2 of 24 devices of line-3: kworker"
    assert spread["data"]["previousDevices"] == 1
    assert sorted(spread["data"]["thingNames"]) == ["gpu-edge-03", "gpu-edge-17"]
    assert last["data"]["devices"] == 3
    assert "no longer rare by the thresholds: this is the last alert" in last["Message"]
    fleet.full("gpu-edge-21", [*COMMON, miner])
    fleet.aggregate()
    assert fleet.inbox.take() == []  # common enough now


def test_cloud_prevalence_device_leaving_the_group_leaves_the_counts(fleet: World) -> None:
    things = grow(fleet, 2, extra=(identity("vendor-agent"),))
    fleet.aggregate()
    assert counter(fleet, "vendor-agent")["gsk"] == 2
    fleet.clients.iot.remove_thing_from_thing_group(thingGroupName=GROUP, thingName=things[0])
    fleet.now += 86400
    assert fleet.full(things[0], [*COMMON, identity("vendor-agent")]) == "recorded"  # membership checked
    fleet.aggregate()
    assert counter(fleet, "vendor-agent")["gsk"] == 1
    assert counter(fleet, "nginx")["gsk"] == 1
    assert group_devices(fleet) == 1
    assert devices_running(fleet, "vendor-agent") == [things[1]]


def test_cloud_prevalence_device_silent_for_a_week_is_aged_out(fleet: World) -> None:
    things = grow(fleet, 2)
    fleet.aggregate()  # the first run starts the hourly clock
    fleet.now += AGE_OUT_SECONDS - 3600
    fleet.full(things[1], COMMON)  # the other device keeps reporting daily
    fleet.now += 2 * 3600
    result = fleet.aggregate()
    assert result["aged"] == [things[0]]
    fleet.aggregate()
    assert group_devices(fleet) == 1
    assert counter(fleet, "nginx")["gsk"] == 1
    fleet.full(things[0], COMMON)  # it comes back: counted again
    fleet.aggregate()
    assert counter(fleet, "nginx")["gsk"] == 2


def test_cloud_prevalence_refuses_a_device_speaking_for_another(fleet: World) -> None:
    fleet.device("gpu-edge-01")
    fleet.device("gpu-edge-02")
    spoofed = fleet.message("gpu-edge-02", "full", [identity("xmrig")], topicThing="gpu-edge-01")
    assert fleet.send(spoofed) == "refused"
    for broken in (
        {**fleet.message("gpu-edge-01", "full", COMMON), "schema": 2},
        {**fleet.message("gpu-edge-01", "full", COMMON), "removed": []},
        {
            **fleet.message(
                "gpu-edge-01",
                "full",
                [{"sha256": "x" * 64, "path": "/a", "firstSeen": 1, "origin": "learned"}],
            )
        },
        {**fleet.message("gpu-edge-01", "full", [identity("a", origin="deployment")])},  # names no component
    ):
        assert fleet.send(broken) == "ignored"
    fleet.aggregate()
    assert counter(fleet, "xmrig") == {}
    assert group_devices(fleet) == 0


def test_cloud_prevalence_a_deployed_program_is_never_rare(fleet: World) -> None:
    grow(fleet, 24)
    fleet.aggregate()
    rollout = identity("inference-2", origin="deployment", component=f"{APP}@2.0.0")
    made_up = identity("helper", origin="deployment", component="com.example.Unknown@1.0.0")
    fleet.full("gpu-edge-05", [*COMMON, rollout, made_up])
    fleet.deployment({APP: "2.0.0", "aws.greengrass.Nucleus": "2.13.0"})
    fleet.aggregate()
    [sent] = fleet.inbox.take()  # the program of the component the group's deployment does not hold
    assert sent["data"]["sha256"] == sha("helper")
    assert "say 1 of the 1 devices (com.example.Unknown@1.0.0, not in the deployment)" in sent["Message"]
    fleet.greengrass.assert_no_pending_responses()


def test_cloud_prevalence_full_inventory_in_parts(fleet: World) -> None:
    fleet.device("gpu-edge-01")
    names = sorted(("nginx", "sshd", "cron", "systemd", "python3.11"), key=sha)
    low, high = [identity(n) for n in names[:2]], [identity(n) for n in names[2:]]
    middle = sha(names[2])
    seq = 10
    fleet.send(fleet.message("gpu-edge-01", "full", low, seq=seq, part=1, parts=2, to=middle))
    fleet.send(fleet.message("gpu-edge-01", "full", high, seq=seq, part=2, parts=2, **{"from": middle}))
    fleet.aggregate()
    assert all(counter(fleet, n)["gsk"] == 1 for n in names)
    # the next day's first part no longer lists names[0]: only the first part's range is concerned
    fleet.send(fleet.message("gpu-edge-01", "full", low[1:], seq=seq + 1, part=1, parts=2, to=middle))
    fleet.aggregate()
    assert counter(fleet, names[0])["gsk"] == 0
    assert all(counter(fleet, n)["gsk"] == 1 for n in names[1:])


def test_cloud_prevalence_group_too_small_then_big_enough(fleet: World) -> None:
    """No program is rare in a group of fewer than 20 reporting devices; when the group grows past it,
    the hourly look finds the rare program that nothing else changed."""
    grow(fleet, 10, extra=())
    fleet.full("gpu-edge-04", [*COMMON, identity("odd-tool")])
    fleet.aggregate()
    assert fleet.inbox.take() == []
    grow(fleet, 15, start=10)
    fleet.aggregate()
    assert fleet.inbox.take() == []  # odd-tool did not change: the runs did not look at it
    fleet.now += HOURLY_SECONDS
    fleet.aggregate()
    [sent] = fleet.inbox.take()
    assert sent["data"]["sha256"] == sha("odd-tool")
    assert sent["data"]["groupDevices"] == 25


def test_cloud_prevalence_handler_dispatch(fleet: World, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "TABLE": fleet.settings.table,
        "THING_GROUP": GROUP,
        "THING_GROUP_ARN": fleet.settings.group_arn,
        "ALERT_TOPIC_ARN": fleet.settings.topic_arn,
    }.items():
        monkeypatch.setenv(key, value)
    fleet.device("gpu-edge-01")
    assert fleet.handle(fleet.message("gpu-edge-01", "full", COMMON)) == {"inventory": "recorded"}
    assert fleet.handle({"action": "aggregate"})["devices"] == 1
    assert fleet.handle({"action": "unknown"}) == {"ignored": True}
    assert fleet.handle(["not", "an", "event"]) == {"ignored": True}


def test_cloud_prevalence_listing_and_lookup_read_with_queries(fleet: World) -> None:
    grow(fleet, 20)
    fleet.full("gpu-edge-07", [*COMMON, identity("kworker-x", path="/tmp/.x/kworker")])
    fleet.aggregate()
    table = fleet.clients.table
    [group] = listing(table, None, rare_only=False, limit=None)["groups"]
    assert group["devices"] == 20
    assert group["identities"][0]["sha256"] == sha("kworker-x")  # rarest first
    assert group["identities"][0]["rare"] is True
    assert [i["devices"] for i in group["identities"][1:]] == [20] * 5
    by_path = lookup(table, "/tmp/.x/kworker", GROUP, None)
    assert [i["thingNames"] for i in by_path["identities"]] == [["gpu-edge-07"]]
    assert lookup(table, "/nowhere", None, None)["identities"] == []


def test_cloud_prevalence_old_version_left_on_one_device_after_an_update(fleet: World) -> None:
    """Every device ran version 1 (too many devices to keep its device list); an update replaces it
    everywhere but on one device: its list is rebuilt from the devices' items, then it is alerted."""
    old, new = identity("app-1.0"), identity("app-1.1")
    things = grow(fleet, 22, extra=(old,))
    fleet.aggregate()
    assert counter(fleet, "app-1.0")["unlisted"] is True
    assert devices_running(fleet, "app-1.0") == []
    for thing in things[1:]:
        fleet.full(thing, [*COMMON, new])
    fleet.aggregate()
    assert counter(fleet, "app-1.0")["gsk"] == 1
    assert fleet.inbox.take() == []  # no device list yet: no alert that could not name the device
    fleet.now += HOURLY_SECONDS
    fleet.aggregate()
    assert devices_running(fleet, "app-1.0") == [things[0]]
    [sent] = fleet.inbox.take()
    assert sent["data"]["thingNames"] == [things[0]]
    assert sent["data"]["sha256"] == sha("app-1.0")
