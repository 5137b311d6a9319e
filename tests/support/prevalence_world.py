"""A fleet that reports its inventory to the prevalence function, in moto: the table made as setup makes
it, moto's IoT registry for the thing group, moto's SNS (read through an SQS inbox) for the alerts, and
botocore's Stubber for Greengrass v2 (moto lacks it)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

import boto3
from botocore.stub import Stubber

from ddcustom.tooling.cloud.prevalence import handler, receive
from ddcustom.tooling.cloud.prevalence_aggregate import aggregate
from ddcustom.tooling.cloud.prevalence_state import Clients, Settings
from ddcustom.tooling.cloud.prevalence_table import table_definition
from support.cloud_account import ACCOUNT, REGION, Inbox

GROUP = "line-3"
GROUP_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{GROUP}"
TABLE = "ddcustom-prevalence"
START = 1700000000.0  # 2023-11-14: before any clock the tests run on
APP = "com.example.Inference"


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def identity(name: str, origin: str = "learned", **more: Any) -> dict[str, Any]:
    """An identity as a device sends it: the program ``name`` at /usr/bin/<name>."""
    return {
        "sha256": sha(name),
        "path": f"/usr/bin/{name}",
        "firstSeen": 1690000000,
        "origin": origin,
        **more,
    }


@dataclass
class World:
    clients: Clients
    settings: Settings
    inbox: Inbox
    greengrass: Stubber
    now: float = START
    seqs: dict[str, int] = field(default_factory=dict)

    def device(self, thing: str, member: bool = True) -> None:
        iot = self.clients.iot
        iot.create_thing(thingName=thing)
        if member:
            iot.add_thing_to_thing_group(thingGroupName=GROUP, thingName=thing)

    def message(self, thing: str, kind: str, identities: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
        """The next message of ``thing`` (its seq one more than its last), as the rule passes it."""
        seq = more.pop("seq", self.seqs.get(thing, 0) + 1)
        topic_thing = more.pop("topicThing", thing)
        self.seqs[thing] = max(seq, self.seqs.get(thing, 0))
        body = {"schema": 1, "thingName": thing, "seq": seq, "kind": kind, "identities": identities, **more}
        return {**body, "topicThing": topic_thing}

    def send(self, event: dict[str, Any]) -> str:
        return receive(self.clients, self.settings, event, self.now)

    def full(self, thing: str, identities: list[dict[str, Any]], **more: Any) -> str:
        return self.send(self.message(thing, "full", identities, **more))

    def changes(
        self, thing: str, identities: list[dict[str, Any]], removed: Optional[list[str]] = None, **more: Any
    ) -> str:
        return self.send(self.message(thing, "changes", identities, removed=removed or [], **more))

    def aggregate(self, owner: str = "run-1") -> dict[str, Any]:
        return aggregate(self.clients, self.settings, self.now, float("inf"), owner)

    def deployment(self, components: dict[str, str]) -> None:
        """The group's current Greengrass deployment, as the function will read it (once)."""
        self.greengrass.add_response(
            "list_deployments",
            {"deployments": [{"deploymentId": "d-1", "targetArn": GROUP_ARN, "isLatestForTarget": True}]},
            {"targetArn": GROUP_ARN, "historyFilter": "LATEST_ONLY"},
        )
        spec = {name: {"componentVersion": version} for name, version in components.items()}
        self.greengrass.add_response(
            "get_deployment", {"deploymentId": "d-1", "components": spec}, {"deploymentId": "d-1"}
        )

    def handle(self, event: Any) -> dict[str, Any]:
        return handler(event, None, self.clients)


def world(**settings: Any) -> World:
    """Inside mocked_account: an empty table, the thing group, the topic and its inbox."""
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(**table_definition(TABLE))
    iot = boto3.client("iot", region_name=REGION)
    iot.create_thing_group(thingGroupName=GROUP)
    sns = boto3.client("sns", region_name=REGION)
    topic = sns.create_topic(Name="ddcustom-alerts")["TopicArn"]
    greengrass = boto3.client("greengrassv2", region_name=REGION)
    stub = Stubber(greengrass)
    stub.activate()
    table = boto3.resource("dynamodb", region_name=REGION).Table(TABLE)
    clients = Clients(table=table, iot=iot, sns=sns, greengrass=greengrass)
    configured = Settings(
        table=TABLE, group=GROUP, group_arn=GROUP_ARN, topic_arn=topic, region=REGION, **settings
    )
    return World(clients, configured, Inbox(sns, boto3.client("sqs", region_name=REGION), topic), stub)
