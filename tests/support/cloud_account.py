"""A fake AWS account for the cloud tests: moto where it has the API, botocore's Stubber where it does
not (Device Defender Detect, Greengrass v2, fleet indexing, fleet metrics, search), and the calls that
drive ``ddcustom cloud`` against it."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from ddcustom.tooling.cloud.cli import add_cloud_parser, run_cloud
from support.helpers import ROOT

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
TAGS = [{"Key": "ddcustom:stack", "Value": "ddcustom"}]
COMPONENT = "com.awsiotblog.DeviceDefenderCustom"
GROUP = "GreengrassQuickStartGroup"
GROUP_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{GROUP}"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:ddcustom-alerts"
IOT_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/ddcustom-iot-alerts"
MITIGATION_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/ddcustom-quarantine-action"
POLICY_ARN = f"arn:aws:iam::{ACCOUNT}:policy/ddcustom-artifact-access"
COMPONENT_ARN = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{COMPONENT}:versions:1.0.0"
NUCLEUS_ARN = f"arn:aws:greengrass:{REGION}:aws:components:aws.greengrass.Nucleus"
PROFILE_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:securityprofile/ddcustom-crypto-mining"
ACTION_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:mitigationaction/ddcustom-quarantine"
PROFILE_BEHAVIORS = json.loads(
    (ROOT / "src/ddcustom/profiles/crypto-mining.json").read_text(encoding="utf-8")
)["behaviors"]
HAND_MADE_METRIC = "gpu_load_per_inference"  # made by hand as the article does: used, never removed
QUARANTINE_PARAMS = {
    "addThingsToThingGroupParams": {
        "thingGroupNames": ["ddcustom-quarantine"],
        "overrideDynamicGroups": False,
    }
}
# The group already runs a deployment (as after the Greengrass quick start): setup adds to it.
EXISTING_COMPONENTS = {
    "aws.greengrass.Nucleus": {"componentVersion": "2.13.0"},
    "aws.greengrass.Cli": {"componentVersion": "2.13.0"},
}
INTERPOLATE = {"merge": '{"interpolateComponentConfiguration": true}'}
KEPT_COMPONENTS = {  # what teardown leaves: the nucleus keeps the option it needs for 2.6+ recipes
    "aws.greengrass.Nucleus": {"componentVersion": "2.13.0", "configurationUpdate": INTERPOLATE},
    "aws.greengrass.Cli": {"componentVersion": "2.13.0"},
}
DEPLOYED_COMPONENTS = {
    **KEPT_COMPONENTS,
    COMPONENT: {"componentVersion": "1.0.0", "configurationUpdate": {"merge": '{"EnableGPUMetrics": true}'}},
}
NOT_FOUND = "ResourceNotFoundException"


MOTO_SERVICES = (
    "iam",
    "sns",
    "sqs",
    "sts",
    "iot",
    "iot-data",
    "lambda",
    "logs",
    "cloudwatch",
    "ssm",
    "scheduler",
    "dynamodb",
)


@contextmanager
def mocked_account(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's account, with fake credentials in the environment."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


class Account:
    """Service key -> client: moto for MOTO_SERVICES; Stubber for iot-detect (Device Defender Detect),
    greengrassv2 and iot-fleet (fleet indexing, fleet metrics, search), which moto lacks or models only
    in part."""

    def __init__(self) -> None:
        self.moto: dict[str, Any] = {
            name: boto3.client(name, region_name=REGION)  # type: ignore[call-overload]
            for name in MOTO_SERVICES
        }
        self.detect_client = boto3.client("iot", region_name=REGION)
        self.greengrass_client = boto3.client("greengrassv2", region_name=REGION)
        self.fleet_client = boto3.client("iot", region_name=REGION)
        self.detect = Stubber(self.detect_client)
        self.greengrass = Stubber(self.greengrass_client)
        self.fleet = Stubber(self.fleet_client)
        for stubber in (self.detect, self.greengrass, self.fleet):
            stubber.activate()

    def __call__(self, service: str) -> Any:
        stubbed = {
            "iot-detect": self.detect_client,
            "greengrassv2": self.greengrass_client,
            "iot-fleet": self.fleet_client,
        }
        return stubbed.get(service) or self.moto[service]

    def all_stubs_used(self) -> None:
        for stubber in (self.detect, self.greengrass, self.fleet):
            stubber.assert_no_pending_responses()

    def snapshot(self) -> dict[str, Any]:
        """What exists in the moto-backed services."""
        iam, sns, iot = self.moto["iam"], self.moto["sns"], self.moto["iot"]
        topics = sorted(t["TopicArn"] for t in sns.list_topics()["Topics"])
        return {
            "topics": topics,
            "subscriptions": sorted(
                s["Endpoint"]
                for t in topics
                for s in sns.list_subscriptions_by_topic(TopicArn=t)["Subscriptions"]
            ),
            "roles": sorted(r["RoleName"] for r in iam.list_roles()["Roles"]),
            "policies": sorted(p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]),
            "tes_policies": sorted(
                p["PolicyName"]
                for p in iam.list_attached_role_policies(RoleName="GreengrassV2TokenExchangeRole")[
                    "AttachedPolicies"
                ]
            ),
            "rules": sorted(r["ruleName"] for r in iot.list_topic_rules()["rules"]),
            "groups": sorted(g["groupName"] for g in iot.list_thing_groups()["thingGroups"]),
            "functions": sorted(f["FunctionName"] for f in self.moto["lambda"].list_functions()["Functions"]),
            "log_groups": sorted(
                g["logGroupName"] for g in self.moto["logs"].describe_log_groups()["logGroups"]
            ),
            "alarms": sorted(
                a["AlarmName"] for a in self.moto["cloudwatch"].describe_alarms()["MetricAlarms"]
            ),
            "parameters": sorted(p["Name"] for p in self.moto["ssm"].describe_parameters()["Parameters"]),
            "iot_policies": sorted(p["policyName"] for p in iot.list_policies()["policies"]),
            "schedules": sorted(
                f"{s['GroupName']}/{s['Name']}" for s in self.moto["scheduler"].list_schedules()["Schedules"]
            ),
            "schedule_groups": sorted(
                g["Name"]
                for g in self.moto["scheduler"].list_schedule_groups()["ScheduleGroups"]
                if g["Name"] != "default"
            ),
            "tables": sorted(self.moto["dynamodb"].list_tables()["TableNames"]),
        }


def fleet() -> Account:
    """An account after the Greengrass quick start: token exchange role, thing group with a device."""
    account = Account()
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "credentials.iot.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    account.moto["iam"].create_role(
        RoleName="GreengrassV2TokenExchangeRole", AssumeRolePolicyDocument=json.dumps(trust)
    )
    account.moto["iot"].create_thing_group(thingGroupName=GROUP)
    account.moto["iot"].create_thing(thingName="gpu-edge-07")
    account.moto["iot"].add_thing_to_thing_group(thingGroupName=GROUP, thingName="gpu-edge-07")
    return account


def cloud(account: Account, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="ddcustom")
    add_cloud_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cloud", *argv, "--region", REGION])
    out, err = io.StringIO(), io.StringIO()
    code = run_cloud(args, clients=account, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


LATEST = {"targetArn": GROUP_ARN, "historyFilter": "LATEST_ONLY"}


def expect_latest_deployment(
    account: Account, deployment_id: str, components: dict, tags: dict, **extra: Any
) -> None:
    """The group's latest deployment; ``extra``: more of its fields (deploymentPolicies, ...)."""
    account.greengrass.add_response(
        "list_deployments",
        {"deployments": [{"deploymentId": deployment_id, "targetArn": GROUP_ARN, "isLatestForTarget": True}]},
        LATEST,
    )
    found = {
        "deploymentId": deployment_id,
        "targetArn": GROUP_ARN,
        "components": components,
        "tags": tags,
        **extra,
    }
    account.greengrass.add_response("get_deployment", found, {"deploymentId": deployment_id})


def expect_no_deployment(account: Account) -> None:
    account.greengrass.add_response("list_deployments", {"deployments": []}, LATEST)


def expect_nucleus(account: Account, version: str) -> None:
    """The newest aws.greengrass.Nucleus, asked for where the group has no deployment yet."""
    found = {
        "componentVersions": [
            {
                "componentName": "aws.greengrass.Nucleus",
                "componentVersion": version,
                "arn": f"{NUCLEUS_ARN}:versions:{version}",
            }
        ]
    }
    account.greengrass.add_response("list_component_versions", found, {"arn": NUCLEUS_ARN, "maxResults": 1})


def expect_component_published(account: Account) -> None:
    found = {"arn": COMPONENT_ARN, "componentName": COMPONENT, "componentVersion": "1.0.0"}
    account.greengrass.add_response("describe_component", found, {"arn": COMPONENT_ARN})


def would_call(out: str) -> list[tuple[str, str, dict[str, Any]]]:
    """What a --dry-run printed it would call: (service, operation, parameters), in order."""
    calls = []
    for line in out.splitlines():
        if line.startswith("would call "):
            service, operation, params = line[len("would call ") :].split(" ", 2)
            calls.append((service, operation, json.loads(params)))
    return calls


def expect_no_fleet_metrics(account: Account) -> None:
    """Teardown's look-ups of the stack's fleet metrics in an account that has none (reverse order)."""
    for name in ("ddcustom-devices-reporting", "ddcustom-devices-in-alarm"):
        account.fleet.add_client_error(
            "describe_fleet_metric", "ResourceNotFoundException", expected_params={"metricName": name}
        )


class Inbox:
    """What an SNS topic delivers, read from an SQS queue subscribed to it (moto delivers it there)."""

    def __init__(self, sns: Any, sqs: Any, topic_arn: str, name: str = "inbox") -> None:
        self.sqs = sqs
        self.url = sqs.create_queue(QueueName=name)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)

    def take(self) -> list[dict[str, Any]]:
        """The notifications delivered since the last call: Subject, Message, and the JSON after ``--``."""
        taken: list[dict[str, Any]] = []
        while True:
            found = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10)
            messages = found.get("Messages", [])
            if not messages:
                return taken
            for received in messages:
                envelope = json.loads(received["Body"])
                body = envelope["Message"]
                data = json.loads(body.rsplit("\n--\n", 1)[1]) if "\n--\n" in body else None
                taken.append({"Subject": envelope.get("Subject"), "Message": body, "data": data})
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=received["ReceiptHandle"])
