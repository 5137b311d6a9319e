"""A simulated fleet in moto: 50 devices of one group report the same 300 programs, 2 of them a miner
too, and a program a deployment placed on all 50. The rare alert names the miner and those 2 devices,
`ddcustom cloud prevalence --rare` lists it first, and the deployed program is never rare. Then
`--publish-known` puts the group's common programs, and only those, into the deployment."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import ANY

from ddcustom.device.baseline.file import Entry
from ddcustom.device.outputs.inventory import InventoryPublisher
from ddcustom.device.sources.identity import identity_key
from ddcustom.tooling.cloud.deployment import FLEET_KNOWN_KEY
from ddcustom.tooling.cloud.options import DEFAULT_KNOWN_AFTER
from ddcustom.tooling.cloud.prevalence_aggregate import HOURLY_SECONDS
from ddcustom.tooling.cloud.prevalence_commands import known
from support.cloud_account import (
    COMPONENT,
    EXISTING_COMPONENTS,
    KEPT_COMPONENTS,
    Account,
    cloud,
    expect_component_published,
    expect_latest_deployment,
    fleet,
    mocked_account,
)
from support.cloud_account import GROUP_ARN as QUICKSTART_ARN
from support.fakes import RecordingSink
from support.prevalence_world import APP, GROUP, GROUP_ARN, World, identity, sha, world

PROGRAMS = [identity(f"program-{i:03}") for i in range(300)]
MINER = identity("kthreadd2", path="/var/tmp/.cache/kthreadd2")
DEPLOYED = identity("inference-server", origin="deployment", component=f"{APP}@1.2.0")
INFECTED = ("gpu-edge-13", "gpu-edge-41")
THINGS = [f"gpu-edge-{i:02}" for i in range(50)]


@pytest.fixture
def simulated(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with mocked_account(monkeypatch):
        fleet = world()
        for thing in THINGS:
            fleet.device(thing)
            extra = [MINER] if thing in INFECTED else []
            assert fleet.full(thing, [*PROGRAMS, DEPLOYED, *extra]) == "recorded"
        fleet.deployment({APP: "1.2.0", "aws.greengrass.Nucleus": "2.13.0"})
        fleet.now += 60
        fleet.aggregate()
        yield fleet


def prevalence(*argv: str) -> tuple[int, str, str]:
    """`ddcustom cloud prevalence ...`: it reads the table through boto3, which moto answers; it makes no
    other call, so it needs none of the account's other clients."""

    def nothing_else(service: str) -> None:
        raise AssertionError(f"cloud prevalence called {service}")

    return cloud(nothing_else, "prevalence", *argv)  # type: ignore[arg-type]


def test_cloud_prevalence_simulated_fleet_finds_the_miner(simulated: World) -> None:
    [alert] = simulated.inbox.take()
    assert alert["data"]["sha256"] == MINER["sha256"]
    assert sorted(alert["data"]["thingNames"]) == sorted(INFECTED)
    assert (alert["data"]["devices"], alert["data"]["groupDevices"]) == (2, 50)
    assert alert["Subject"] == "ddcustom: rare program on 2 of 50 devices of line-3: kthreadd2"
    body = alert["Message"]
    assert "/var/tmp/.cache/kthreadd2" in body and all(thing in body for thing in INFECTED)

    code, out, err = prevalence("--rare", "--thing-group", GROUP)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert "thing group line-3: 50 devices report their inventory" in lines[0]
    first = lines[2].split()
    assert first[:3] == ["2", "4.0", "%"] and first[3] == "rare" and MINER["sha256"] in first
    assert len(lines) == 3  # nothing else is rare

    code, out, _ = prevalence("--json")
    [group] = json.loads(out)["groups"]
    assert group["identities"][0]["sha256"] == MINER["sha256"]  # rarest first
    deployed = next(i for i in group["identities"] if i["sha256"] == DEPLOYED["sha256"])
    assert (deployed["devices"], deployed["rare"], deployed["deploymentClaims"]) == (50, False, 50)
    assert sum(1 for i in group["identities"] if i["devices"] == 50) == 301

    code, out, _ = prevalence(MINER["sha256"])
    assert code == 0
    assert "on 2 of 50 devices (rare)" in out
    assert [line.split()[0] for line in out.splitlines()[3:]] == sorted(INFECTED)
    code, out, _ = prevalence("/var/tmp/.cache/kthreadd2", "--json")
    assert sorted(json.loads(out)["identities"][0]["thingNames"]) == sorted(INFECTED)

    # the next version of the application reaches 3 devices first: on 3 of 50 it would be rare, but the
    # group's deployment placed it
    upgrade = identity("inference-server-1.3", origin="deployment", component=f"{APP}@1.3.0")
    for thing in THINGS[:3]:
        simulated.full(thing, [*PROGRAMS, upgrade])
    simulated.deployment({APP: "1.3.0"})
    simulated.aggregate()
    assert simulated.inbox.take() == []


def recipe(defaults: dict[str, Any]) -> dict[str, Any]:
    body = {"RecipeFormatVersion": "2020-01-25", "ComponentConfiguration": {"DefaultConfiguration": defaults}}
    return {"recipeOutputFormat": "JSON", "recipe": json.dumps(body).encode()}


def deployed(account: Account, recipe_defaults: dict[str, Any]) -> None:
    """The group's current deployment holds the component, version 1.0.0, whose recipe declares these."""
    components = {COMPONENT: {"componentVersion": "1.0.0", "configurationUpdate": {"merge": "{}"}}}
    account.greengrass.add_response("list_deployments", {"deployments": [{"deploymentId": "d-7"}]}, None)
    found = {"deploymentId": "d-7", "deploymentName": "ddcustom-x", "components": components}
    account.greengrass.add_response("get_deployment", found, None)
    account.greengrass.add_response("get_component", recipe(recipe_defaults), None)


PUBLISH = ("prevalence", "--publish-known", "--thing-group", GROUP, "--known-after", "3600")


def test_cloud_prevalence_publish_known_writes_the_common_programs(simulated: World) -> None:
    table = simulated.clients.table
    assert known(table, GROUP, 50, 3600, simulated.now + 3600) == []  # nothing common for an hour yet
    simulated.now += HOURLY_SECONDS  # the hourly look notes since when each program is common
    simulated.aggregate()
    assert known(table, GROUP, 50, DEFAULT_KNOWN_AFTER, simulated.now + 3600) == []  # not for a week yet
    account = Account()

    # --dry-run shows the revision: the 301 common programs, not the miner
    deployed(account, {FLEET_KNOWN_KEY: []})
    code, out, _ = cloud(account, *PUBLISH, "--dry-run")
    assert code == 0
    create = "would call greengrassv2 CreateDeployment"
    [call] = [line for line in out.splitlines() if line.startswith(create)]
    params = json.loads(call.split(" ", 4)[4])
    published = json.loads(params["components"][COMPONENT]["configurationUpdate"]["merge"])[FLEET_KNOWN_KEY]
    assert len(published) == 301
    assert MINER["sha256"] not in published and DEPLOYED["sha256"] in published
    assert published == sorted(published)

    # published: the group's deployment, that one key changed
    deployed(account, {FLEET_KNOWN_KEY: []})
    merge = json.dumps({FLEET_KNOWN_KEY: published}, sort_keys=True)
    revision = {COMPONENT: {"componentVersion": "1.0.0", "configurationUpdate": {"merge": merge}}}
    expected = {"targetArn": GROUP_ARN, "deploymentName": "ddcustom-x", "components": revision}
    account.greengrass.add_response("create_deployment", {"deploymentId": "d-8"}, expected)
    code, out, err = cloud(account, *PUBLISH)
    assert (code, err) == (0, ""), out
    assert "301 programs run on at least 50 % of the devices of line-3" in out
    assert "updated  FleetKnownExecutables (301 SHA-256) in the deployment" in out
    account.greengrass.assert_no_pending_responses()


def test_cloud_prevalence_publish_known_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    with mocked_account(monkeypatch):
        small = world(rare_min_group=2)  # a group of 3 is enough for these thresholds
        for thing in THINGS[:3]:
            small.device(thing)
            small.full(thing, PROGRAMS[:5])
        small.aggregate()
        small.now += HOURLY_SECONDS
        small.aggregate()
        account = Account()
        # a component version that does not read the key: refused, nothing deployed
        deployed(account, {"LogLevel": "INFO"})
        code, out, _ = cloud(account, *PUBLISH)
        assert code == 2
        assert "does not read FleetKnownExecutables (its recipe's default configuration lacks it)" in out
        account.greengrass.assert_no_pending_responses()
        # a group too small for the thresholds: one device of two would be half of it
        code, _, err = cloud(account, "prevalence", "--publish-known", "--thing-group", "line-9")
        assert code == 2
        assert "thing group line-9: 0 devices report their inventory, fewer than 20" in err
        code, _, err = cloud(account, "prevalence", "--publish-known", "--known-share", "20")
        assert code == 2
        assert "--known-share 20: expected 50 to 100" in err


def test_cloud_prevalence_without_a_table_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with mocked_account(monkeypatch):
        code, out, err = prevalence("--rare", "--stack", "other")
    assert (code, out) == (2, "")
    assert "no prevalence table other-prevalence in us-east-1: `ddcustom cloud setup` makes it" in err


def test_cloud_setup_keeps_the_published_known_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A later `cloud setup` writes the component's merge configuration again, and keeps the key."""
    published = [sha("a"), sha("b")]

    def component(merge: dict[str, Any]) -> dict[str, Any]:
        return {COMPONENT: {"componentVersion": "1.0.0", "configurationUpdate": {"merge": json.dumps(merge)}}}

    with mocked_account(monkeypatch):
        account = fleet()
        before = component({"EnableGPUMetrics": True, FLEET_KNOWN_KEY: published})
        expect_component_published(account)
        expect_latest_deployment(
            account, "d-known", {**EXISTING_COMPONENTS, **before}, {"ddcustom:stack": "x"}
        )
        after = {"EnableGPUMetrics": True, FLEET_KNOWN_KEY: published, "LogLevel": "DEBUG"}
        wanted = {**KEPT_COMPONENTS, **component(dict(sorted(after.items())))}
        expected = {"targetArn": QUICKSTART_ARN, "deploymentName": ANY, "components": wanted, "tags": ANY}
        account.greengrass.add_response("create_deployment", {"deploymentId": "d-next"}, expected)
        argv = ("setup", "--no-detect", "--fleet", "off", "--quarantine", "off", "--prevalence", "off")
        code, out, err = cloud(
            account, *argv, "--merge-config", '{"EnableGPUMetrics": true, "LogLevel": "DEBUG"}'
        )
        assert (code, err) == (0, ""), out
        account.all_stubs_used()


class DeviceBaseline:
    """A device's baseline as the inventory publisher reads it: executable entries made of identities."""

    def __init__(self, identities: list[dict[str, Any]]) -> None:
        self.executables: dict[str, Entry] = {}
        for item in identities:
            details = {"path": item["path"], "sha256": item["sha256"]}
            if "component" in item:
                details["component"] = item["component"]
            key = identity_key(item["path"], item["sha256"])
            self.executables[key] = Entry(item["firstSeen"], item["firstSeen"], item["origin"], details)

    def live(self, kind: str) -> Mapping[str, Entry]:
        return self.executables if kind == "executable" else {}


def test_the_devices_own_inventories_find_the_miner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same fleet, each device's messages made by the component's inventory publisher from its
    baseline, as the IoT rule hands them over (with the topic's thing)."""
    with mocked_account(monkeypatch):
        fleet = world()
        for thing in THINGS:
            fleet.device(thing)
            extra = [MINER] if thing in INFECTED else []
            sink = RecordingSink()
            publisher = InventoryPublisher(thing, str(tmp_path / thing / "inventory.json"), lambda: fleet.now)
            publisher.run(sink, DeviceBaseline([*PROGRAMS, DEPLOYED, *extra]), False, 0.0)
            assert [m["kind"] for m in sink.inventories] == ["full"]
            for message in sink.inventories:
                assert fleet.send({**message, "topicThing": thing}) == "recorded"
        fleet.deployment({APP: "1.2.0", "aws.greengrass.Nucleus": "2.13.0"})
        fleet.now += 60
        fleet.aggregate()
        [alert] = fleet.inbox.take()
    assert alert["data"]["sha256"] == MINER["sha256"]
    assert sorted(alert["data"]["thingNames"]) == sorted(INFECTED)
    assert (alert["data"]["devices"], alert["data"]["groupDevices"]) == (2, 50)
