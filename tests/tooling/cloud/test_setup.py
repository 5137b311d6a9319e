"""`ddcustom cloud setup|teardown` against moto (IAM, SNS, IoT registry and rules) and botocore's
Stubber for what moto lacks (Device Defender Detect, Greengrass v2): requests, tags, idempotence."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from botocore.stub import ANY

from ddcustom.device.metrics import CUSTOM_METRICS
from ddcustom.tooling.cloud.cli import add_cloud_parser, run_cloud
from support.cloud_account import (
    ACCOUNT,
    ACTION_ARN,
    COMPONENT,
    COMPONENT_ARN,
    DEPLOYED_COMPONENTS,
    EXISTING_COMPONENTS,
    GROUP,
    GROUP_ARN,
    HAND_MADE_METRIC,
    INTERPOLATE,
    IOT_ROLE_ARN,
    KEPT_COMPONENTS,
    MITIGATION_ROLE_ARN,
    NOT_FOUND,
    POLICY_ARN,
    PROFILE_ARN,
    PROFILE_BEHAVIORS,
    QUARANTINE_PARAMS,
    REGION,
    TAGS,
    TOPIC_ARN,
    Account,
    cloud,
    expect_component_published,
    expect_latest_deployment,
    expect_no_deployment,
    expect_no_fleet_metrics,
    expect_nucleus,
    fleet,
    mocked_account,
    would_call,
)

# These tests are about the alert routing, Detect and the deployment; the quarantine function, the fleet
# views, the silent-device check and prevalence have their own (test_fleet.py).
PARTS_OFF = ("--quarantine", "off", "--fleet", "off", "--prevalence", "off")
METRIC_NAMES = [m.name for m in CUSTOM_METRICS]
# CreateCustomMetric's types for the list metrics; the other custom metrics are numbers
LIST_METRIC_TYPES = {
    "mining_pool_addresses": "ip-address-list",
    "gpu_process_names": "string-list",
    "new_executable_paths": "string-list",
    "new_endpoint_addresses": "string-list",
}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with mocked_account(monkeypatch):
        yield


# ---- what the stubbed services expect and answer ----

# ---- what the stubbed services expect and answer ----


def metric_arn(name: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:custommetric/{name}"


def expect_metric_lookups(account: Account, created: bool, order: list[str]) -> None:
    for name in order:
        metric_type = LIST_METRIC_TYPES.get(name, "number")
        if not created and name != HAND_MADE_METRIC:
            account.detect.add_client_error(
                "describe_custom_metric", NOT_FOUND, expected_params={"metricName": name}
            )
            continue
        found = {"metricName": name, "metricArn": metric_arn(name), "metricType": metric_type}
        account.detect.add_response("describe_custom_metric", found, {"metricName": name})
        tags = [] if name == HAND_MADE_METRIC else TAGS
        account.detect.add_response(
            "list_tags_for_resource", {"tags": tags}, {"resourceArn": metric_arn(name)}
        )


def expect_profile_found(account: Account) -> None:
    found = {
        "securityProfileName": "ddcustom-crypto-mining",
        "securityProfileArn": PROFILE_ARN,
        "behaviors": PROFILE_BEHAVIORS,
        "alertTargets": {"SNS": {"alertTargetArn": TOPIC_ARN, "roleArn": IOT_ROLE_ARN}},
    }
    account.detect.add_response(
        "describe_security_profile", found, {"securityProfileName": "ddcustom-crypto-mining"}
    )
    account.detect.add_response("list_tags_for_resource", {"tags": TAGS}, {"resourceArn": PROFILE_ARN})


def expect_targets(account: Account) -> None:
    account.detect.add_response(
        "list_targets_for_security_profile",
        {"securityProfileTargets": [{"arn": GROUP_ARN}]},
        {"securityProfileName": "ddcustom-crypto-mining"},
    )


def expect_action_found(account: Account) -> None:
    found = {
        "actionName": "ddcustom-quarantine",
        "actionType": "ADD_THINGS_TO_THING_GROUP",
        "actionArn": ACTION_ARN,
        "roleArn": MITIGATION_ROLE_ARN,
        "actionParams": QUARANTINE_PARAMS,
    }
    account.detect.add_response("describe_mitigation_action", found, {"actionName": "ddcustom-quarantine"})
    account.detect.add_response("list_tags_for_resource", {"tags": TAGS}, {"resourceArn": ACTION_ARN})


def expect_first_checks(account: Account) -> None:
    """The checks of a first setup on a quick-start fleet, in plan order: nothing of ours exists."""
    expect_metric_lookups(account, created=False, order=METRIC_NAMES)
    account.detect.add_client_error(
        "describe_security_profile",
        NOT_FOUND,
        expected_params={"securityProfileName": "ddcustom-crypto-mining"},
    )
    account.detect.add_client_error(
        "list_targets_for_security_profile",
        NOT_FOUND,
        expected_params={"securityProfileName": "ddcustom-crypto-mining"},
    )
    account.detect.add_client_error(
        "describe_mitigation_action", NOT_FOUND, expected_params={"actionName": "ddcustom-quarantine"}
    )
    expect_component_published(account)
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})


def expect_first_setup(account: Account) -> None:
    expect_first_checks(account)
    # creations
    for metric in CUSTOM_METRICS:
        if metric.name == HAND_MADE_METRIC:
            continue
        name, metric_type = metric.name, LIST_METRIC_TYPES.get(metric.name, "number")
        params = {
            "metricName": name,
            "displayName": metric.description,
            "metricType": metric_type,
            "tags": TAGS,
        }
        account.detect.add_response(
            "create_custom_metric", {"metricName": name, "metricArn": metric_arn(name)}, params
        )
    account.detect.add_response(
        "create_security_profile",
        {"securityProfileName": "ddcustom-crypto-mining", "securityProfileArn": PROFILE_ARN},
        {
            "securityProfileName": "ddcustom-crypto-mining",
            "securityProfileDescription": ANY,
            "behaviors": PROFILE_BEHAVIORS,
            "alertTargets": {"SNS": {"alertTargetArn": TOPIC_ARN, "roleArn": IOT_ROLE_ARN}},
            "tags": TAGS,
        },
    )
    account.detect.add_response(
        "attach_security_profile",
        {},
        {"securityProfileName": "ddcustom-crypto-mining", "securityProfileTargetArn": GROUP_ARN},
    )
    account.detect.add_response(
        "create_mitigation_action",
        {"actionArn": ACTION_ARN, "actionId": "a-1"},
        {
            "actionName": "ddcustom-quarantine",
            "roleArn": MITIGATION_ROLE_ARN,
            "actionParams": QUARANTINE_PARAMS,
            "tags": TAGS,
        },
    )
    expect_deployment_created(account)


def expect_deployment_created(account: Account) -> None:
    account.greengrass.add_response(
        "create_deployment",
        {"deploymentId": "d-ddcustom"},
        {
            "targetArn": GROUP_ARN,
            "deploymentName": f"ddcustom-{COMPONENT}",
            "components": DEPLOYED_COMPONENTS,
            "tags": {"ddcustom:stack": "ddcustom"},
        },
    )


def expect_second_setup(account: Account) -> None:
    expect_metric_lookups(account, created=True, order=METRIC_NAMES)
    expect_profile_found(account)
    expect_targets(account)
    expect_action_found(account)
    expect_component_published(account)
    expect_latest_deployment(account, "d-ddcustom", DEPLOYED_COMPONENTS, {"ddcustom:stack": "ddcustom"})


def expect_teardown(account: Account) -> None:
    for _ in range(2):  # owned? then the components to keep
        expect_latest_deployment(account, "d-ddcustom", DEPLOYED_COMPONENTS, {"ddcustom:stack": "ddcustom"})
    account.greengrass.add_response(
        "create_deployment",
        {"deploymentId": "d-removal"},
        {"targetArn": GROUP_ARN, "deploymentName": "ddcustom-removal", "components": KEPT_COMPONENTS},
    )
    expect_action_found(account)
    account.detect.add_response("delete_mitigation_action", {}, {"actionName": "ddcustom-quarantine"})
    expect_profile_found(account)
    expect_targets(account)
    account.detect.add_response(
        "detach_security_profile",
        {},
        {"securityProfileName": "ddcustom-crypto-mining", "securityProfileTargetArn": GROUP_ARN},
    )
    account.detect.add_response(
        "delete_security_profile", {}, {"securityProfileName": "ddcustom-crypto-mining"}
    )
    for name in reversed(METRIC_NAMES):
        expect_metric_lookups(account, created=True, order=[name])
        if name != HAND_MADE_METRIC:
            account.detect.add_response("delete_custom_metric", {}, {"metricName": name})


# ---- the tests ----


def test_cloud_setup_twice_then_teardown(aws: None) -> None:
    account = fleet()
    before = account.snapshot()

    expect_first_setup(account)
    code, out, err = cloud(account, "setup", *PARTS_OFF, "--email", "ops@example.com")
    assert (code, err) == (0, "")
    account.all_stubs_used()
    after_setup = account.snapshot()
    assert after_setup == {
        "topics": [TOPIC_ARN],
        "subscriptions": ["ops@example.com"],
        "roles": ["GreengrassV2TokenExchangeRole", "ddcustom-iot-alerts", "ddcustom-quarantine-action"],
        "policies": ["ddcustom-artifact-access"],
        "tes_policies": ["ddcustom-artifact-access"],
        "rules": ["ddcustom_alerts"],
        "groups": [GROUP, "ddcustom-quarantine"],
        "functions": [],
        "log_groups": [],
        "alarms": [],
        "parameters": [],
        "iot_policies": [],
        "schedules": [],
        "schedule_groups": [],
        "tables": [],
    }
    assert "created  Greengrass deployment" in out

    # what was created, and how
    iam, sns, iot = account.moto["iam"], account.moto["sns"], account.moto["iot"]
    assert sns.list_tags_for_resource(ResourceArn=TOPIC_ARN)["Tags"] == TAGS
    role = iam.get_role(RoleName="ddcustom-iot-alerts")["Role"]
    assert role["Tags"] == TAGS
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "iot.amazonaws.com"}
    # confused-deputy protection: IoT may assume the roles only for this stack's rule, profile, action
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnEquals": {"aws:SourceArn": [f"arn:aws:iot:{REGION}:{ACCOUNT}:rule/ddcustom_alerts", PROFILE_ARN]},
    }
    action_role = iam.get_role(RoleName="ddcustom-quarantine-action")["Role"]
    assert action_role["AssumeRolePolicyDocument"]["Statement"][0]["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnEquals": {"aws:SourceArn": [ACTION_ARN]},
    }
    assert iam.get_role_policy(RoleName="ddcustom-quarantine-action", PolicyName="add-to-quarantine")[
        "PolicyDocument"
    ]["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "iot:AddThingToThingGroup",
            "Resource": [
                f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/ddcustom-quarantine",
                f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/*",
            ],
        }
    ]
    publish = iam.get_role_policy(RoleName="ddcustom-iot-alerts", PolicyName="publish-alerts")[
        "PolicyDocument"
    ]
    assert publish["Statement"] == [{"Effect": "Allow", "Action": "sns:Publish", "Resource": TOPIC_ARN}]
    policy_version = iam.get_policy_version(PolicyArn=POLICY_ARN, VersionId="v1")["PolicyVersion"]
    assert policy_version["Document"]["Statement"][0]["Resource"] == [
        f"arn:aws:s3:::greengrass-component-artifacts-{REGION}-{ACCOUNT}/{COMPONENT}/*"
    ]
    assert iam.get_policy(PolicyArn=POLICY_ARN)["Policy"]["Tags"] == TAGS
    rule = iot.get_topic_rule(ruleName="ddcustom_alerts")["rule"]
    assert rule["sql"] == "SELECT * FROM 'ddcustom/+/alerts'"
    assert rule["actions"] == [
        {"sns": {"targetArn": TOPIC_ARN, "roleArn": IOT_ROLE_ARN, "messageFormat": "RAW"}}
    ]
    quarantine = iot.describe_thing_group(thingGroupName="ddcustom-quarantine")["thingGroupProperties"]
    assert quarantine["attributePayload"]["attributes"] == {"ddcustom:stack": "ddcustom"}
    assert "attributePayload" not in iot.describe_thing_group(thingGroupName=GROUP)["thingGroupProperties"]

    # second run: nothing new (the stubs hold no create call; an unexpected call fails)
    expect_second_setup(account)
    code, out, err = cloud(account, "setup", *PARTS_OFF, "--email", "ops@example.com")
    assert (code, err) == (0, "")
    assert "created " not in out
    assert "setup complete: 0 made" in out
    account.all_stubs_used()
    assert account.snapshot() == after_setup

    # teardown: back to the account as it was; the group, its device and the hand-made metric stay
    expect_teardown(account)
    expect_no_fleet_metrics(account)
    code, out, err = cloud(account, "teardown")
    assert (code, err) == (0, "")
    account.all_stubs_used()
    assert account.snapshot() == before
    assert iot.list_things_in_thing_group(thingGroupName=GROUP)["things"] == ["gpu-edge-07"]
    assert f"kept     Device Defender custom metric {HAND_MADE_METRIC}" in out


def lookalikes(account: Account) -> None:
    """Resources with the stack's names, made by someone else (no tag, no owner mark)."""
    iam, sns, iot = account.moto["iam"], account.moto["sns"], account.moto["iot"]
    sns.create_topic(Name="ddcustom-alerts")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    iam.create_role(RoleName="ddcustom-iot-alerts", AssumeRolePolicyDocument=json.dumps(trust))
    iot.create_thing_group(thingGroupName="ddcustom-quarantine")
    iot.create_topic_rule(
        ruleName="ddcustom_alerts",
        topicRulePayload={"sql": "SELECT * FROM 'other/+'", "actions": [], "description": "someone else's"},
    )


def test_cloud_teardown_leaves_untagged_lookalikes(aws: None) -> None:
    account = fleet()
    lookalikes(account)
    before = account.snapshot()
    expect_no_deployment(account)
    expect_no_fleet_metrics(account)
    code, out, err = cloud(account, "teardown", "--no-detect")
    assert (code, err) == (0, "")
    account.all_stubs_used()
    assert account.snapshot() == before
    assert "removed" not in out.replace("teardown complete: 0 removed", "")


def test_cloud_setup_stops_on_lookalikes_before_changing_anything(aws: None) -> None:
    account = fleet()
    lookalikes(account)
    before = account.snapshot()
    expect_component_published(account)
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    code, out, _ = cloud(account, "setup", *PARTS_OFF, "--no-detect")
    assert code == 2
    assert "setup stopped before changing anything" in out
    assert "SNS topic ddcustom-alerts already exists and is not tagged ddcustom:stack=ddcustom" in out
    assert "IAM role ddcustom-iot-alerts already exists and is not tagged" in out
    assert "IoT topic rule ddcustom_alerts already exists and is not tagged" in out
    assert account.snapshot() == before  # the quarantine group look-alike is used as is, nothing made


def test_cloud_setup_without_detect_access_carries_on(aws: None) -> None:
    account = fleet()
    account.detect.add_client_error(
        "describe_custom_metric",
        "AccessDeniedException",
        "Device Defender Detect is not available to new customers",
        expected_params={"metricName": METRIC_NAMES[0]},
    )
    expect_component_published(account)
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    account.greengrass.add_response("create_deployment", {"deploymentId": "d-ddcustom"}, None)
    code, out, err = cloud(account, "setup", *PARTS_OFF)
    assert (code, err) == (0, "")
    account.all_stubs_used()  # no other Detect call was made
    assert "Device Defender Detect refused (DescribeCustomMetric: AccessDeniedException" in out
    assert "closed to new AWS customers since 31 August 2026" in out
    snapshot = account.snapshot()
    assert snapshot["rules"] == ["ddcustom_alerts"]  # alert routing is there all the same
    assert "ddcustom-quarantine-action" not in snapshot["roles"]  # only Detect uses that role


def test_cloud_setup_detect_refused_at_creation_carries_on(aws: None) -> None:
    """The look-ups pass but the first creation is refused: the other Detect steps are skipped."""
    account = fleet()
    expect_first_checks(account)
    first_created = next(name for name in METRIC_NAMES if name != HAND_MADE_METRIC)
    account.detect.add_client_error(
        "create_custom_metric",
        "AccessDeniedException",
        "Device Defender Detect is not available to new customers",
        expected_params={"metricName": first_created, "displayName": ANY, "metricType": ANY, "tags": TAGS},
    )
    expect_deployment_created(account)
    code, out, err = cloud(account, "setup", *PARTS_OFF)
    assert (code, err) == (0, "")
    account.all_stubs_used()  # no other Detect call was made
    assert "Device Defender Detect refused (CreateCustomMetric: AccessDeniedException" in out
    assert "created  Greengrass deployment" in out
    snapshot = account.snapshot()
    assert snapshot["rules"] == ["ddcustom_alerts"]
    assert "ddcustom-quarantine-action" not in snapshot["roles"]  # a Detect step: skipped too


def test_cloud_teardown_without_detect_access_carries_on(aws: None) -> None:
    account = fleet()
    before = account.snapshot()
    expect_no_deployment(account)
    account.detect.add_client_error(
        "describe_mitigation_action",
        "AccessDeniedException",
        "Device Defender Detect is not available to new customers",
        expected_params={"actionName": "ddcustom-quarantine"},
    )
    expect_no_fleet_metrics(account)
    code, out, err = cloud(account, "teardown")
    assert (code, err) == (0, "")
    account.all_stubs_used()  # no other Detect call was made
    assert "Device Defender Detect refused (DescribeMitigationAction: AccessDeniedException" in out
    assert "kept     SNS topic ddcustom-alerts" in out  # the steps after it still ran
    assert account.snapshot() == before


def test_cloud_setup_dry_run_prints_calls_and_changes_nothing(aws: None) -> None:
    account = fleet()
    before = account.snapshot()
    expect_component_published(account)
    expect_no_deployment(account)
    expect_nucleus(account, "2.14.3")
    code, out, err = cloud(
        account, "setup", *PARTS_OFF, "--no-detect", "--dry-run", "--merge-config", '{"LogLevel": "DEBUG"}'
    )
    assert (code, err) == (0, "")
    account.all_stubs_used()
    assert account.snapshot() == before
    calls = would_call(out)
    assert [(service, operation) for service, operation, _ in calls] == [
        ("iot", "CreateThingGroup"),
        ("sns", "CreateTopic"),
        ("iam", "CreateRole"),
        ("iam", "PutRolePolicy"),
        ("iot", "CreateTopicRule"),
        ("iam", "CreatePolicy"),
        ("iam", "AttachRolePolicy"),
        ("greengrassv2", "CreateDeployment"),
    ]
    deployment = calls[-1][2]
    assert deployment["components"] == {
        "aws.greengrass.Nucleus": {"componentVersion": "2.14.3", "configurationUpdate": INTERPOLATE},
        COMPONENT: {"componentVersion": "1.0.0", "configurationUpdate": {"merge": '{"LogLevel": "DEBUG"}'}},
    }


def test_cloud_setup_unpublished_component_is_refused_first(aws: None) -> None:
    account = fleet()
    before = account.snapshot()
    account.greengrass.add_client_error(
        "describe_component", NOT_FOUND, expected_params={"arn": COMPONENT_ARN}
    )
    code, out, _ = cloud(account, "setup", *PARTS_OFF, "--no-detect")
    assert code == 2
    assert "component com.awsiotblog.DeviceDefenderCustom 1.0.0 is not published in us-east-1" in out
    assert account.snapshot() == before


def test_cloud_setup_missing_token_exchange_role(aws: None) -> None:
    account = Account()  # no Greengrass installed yet
    expect_component_published(account)
    expect_no_deployment(account)
    expect_nucleus(account, "2.14.3")  # its params are checked now too
    code, out, _ = cloud(account, "setup", *PARTS_OFF, "--no-detect")
    assert code == 2
    assert "IAM role GreengrassV2TokenExchangeRole does not exist" in out
    assert account.moto["iam"].list_roles()["Roles"] == []


# ---- errors: a clear message and an exit code, never a traceback ----


def test_cloud_throttled_midway_says_what_was_created(aws: None) -> None:
    account = fleet()
    expect_first_checks(account)  # now with the Detect look-ups' params checked too
    account.detect.add_client_error("create_custom_metric", "ThrottlingException", "Rate exceeded")
    code, _, err = cloud(account, "setup", *PARTS_OFF)
    assert code == 1
    assert "Traceback" not in err
    assert "AWS throttled the requests even after retries" in err
    assert "already done before the failure (tagged ddcustom:stack=ddcustom" in err
    assert "  - SNS topic ddcustom-alerts" in err
    assert "  - IAM policy ddcustom-artifact-access" in err
    # everything made so far carries the tag, so teardown finds it
    assert account.moto["sns"].list_tags_for_resource(ResourceArn=TOPIC_ARN)["Tags"] == TAGS


def test_cloud_throttled_during_checks_changes_nothing(aws: None) -> None:
    account = fleet()
    before = account.snapshot()
    account.greengrass.add_client_error("describe_component", "ThrottlingException", "Rate exceeded")
    code, _, err = cloud(account, "setup", *PARTS_OFF, "--no-detect")
    assert code == 1
    assert err.startswith("ddcustom cloud: AWS throttled the requests even after retries (DescribeComponent")
    assert "Nothing was changed." in err
    assert account.snapshot() == before


def test_cloud_refused_credentials_change_nothing(aws: None) -> None:
    account = fleet()
    before = account.snapshot()
    account.greengrass.add_client_error(
        "describe_component", "ExpiredTokenException", "The security token included in the request is expired"
    )
    code, _, err = cloud(account, "setup", *PARTS_OFF, "--no-detect")
    assert code == 2
    assert err.startswith(
        "ddcustom cloud: the AWS credentials were refused (DescribeComponent: ExpiredTokenException"
    )
    assert "Nothing was changed." in err
    assert account.snapshot() == before


def test_cloud_no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    parser = argparse.ArgumentParser()
    add_cloud_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cloud", "setup", "--region", REGION])
    out, err = io.StringIO(), io.StringIO()
    assert run_cloud(args, out=out, err=err) == 2
    assert err.getvalue().startswith("ddcustom cloud: no AWS credentials found")
    assert "Traceback" not in err.getvalue()


@pytest.mark.parametrize("region", ["us-east-7", "useast1", "eu-west"])
def test_cloud_wrong_region(region: str) -> None:
    parser = argparse.ArgumentParser()
    add_cloud_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cloud", "teardown", "--region", region])
    out, err = io.StringIO(), io.StringIO()
    assert run_cloud(args, out=out, err=err) == 2
    assert err.getvalue().startswith(
        f"ddcustom cloud: --region '{region}': not a region where AWS IoT is offered"
    )


def test_cloud_bad_merge_config_is_refused(aws: None) -> None:
    code, _, err = cloud(Account(), "setup", *PARTS_OFF, "--merge-config", '{"EnableGPUMetrics": "yes"}')
    assert code == 2
    assert "EnableGPUMetrics" in err and "expected true or false" in err


def test_cloud_clients_retry_in_standard_mode() -> None:
    from ddcustom.tooling.cloud.clients import client_factory

    clients = client_factory("eu-west-1")
    iot = clients("iot-detect")
    assert iot.meta.service_model.service_name == "iot"
    assert iot.meta.region_name == "eu-west-1"
    assert iot.meta.config.retries["mode"] == "standard"
    assert clients("iot-detect") is iot and clients("iot") is not iot


def test_cloud_main_cli_dispatches_to_run_cloud(capsys: pytest.CaptureFixture[str]) -> None:
    from ddcustom.cli.main import main

    assert main(["cloud", "teardown", "--region", "mars-1"]) == 2
    assert "--region 'mars-1': not a region where AWS IoT is offered" in capsys.readouterr().err


def test_cloud_setup_refuses_a_nucleus_too_old_for_the_recipe(aws: None) -> None:
    account = fleet()
    expect_component_published(account)
    old = {"aws.greengrass.Nucleus": {"componentVersion": "2.5.6"}}
    expect_latest_deployment(account, "d-old", old, {})
    code, out, _ = cloud(account, "setup", *PARTS_OFF, "--no-detect")
    assert code == 2
    assert "aws.greengrass.Nucleus 2.5.6 (the group's) is older than 2.6.0" in out


# ---- the cloud profile is the one the devices evaluate ----


def dry_run(account: Account, *argv: str) -> tuple[int, str, dict[str, dict[str, Any]]]:
    """A --no-detect --dry-run setup of a quick-start fleet; the parameters it would send, by operation."""
    expect_component_published(account)
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    code, out, err = cloud(account, "setup", *PARTS_OFF, "--no-detect", "--dry-run", *argv)
    return code, err, {operation: params for _, operation, params in would_call(out)}


def component_merge(calls: dict[str, dict[str, Any]]) -> Any:
    return json.loads(calls["CreateDeployment"]["components"][COMPONENT]["configurationUpdate"]["merge"])


def test_cloud_profile_file_goes_to_the_devices_too(aws: None, tmp_path: Path) -> None:
    behaviors = [dict(PROFILE_BEHAVIORS[2], name="miners")]
    path = tmp_path / "strict.json"
    path.write_text(json.dumps({"name": "strict", "behaviors": behaviors}), encoding="utf-8")
    code, err, calls = dry_run(fleet(), "--profile-name", str(path))
    assert (code, err) == (0, "")
    assert component_merge(calls) == {
        "EnableGPUMetrics": True,
        "SecurityProfile": {"name": "strict", "behaviors": behaviors},
    }


@pytest.mark.parametrize(
    "argv, expected",
    [
        ((), None),  # --prevalence off: nothing reads inventories
        (("--prevalence", "on"), True),
        (("--prevalence", "on", "--merge-config", '{"FleetInventory": false}'), False),
    ],
)
def test_cloud_prevalence_on_turns_the_devices_inventory_on_unless_told_otherwise(
    aws: None, argv: tuple[str, ...], expected: Optional[bool]
) -> None:
    code, err, calls = dry_run(fleet(), *argv)
    assert (code, err) == (0, "")
    assert component_merge(calls).get("FleetInventory") is expected


def test_cloud_profile_in_the_merge_configuration_names_the_cloud_profile(aws: None) -> None:
    profile = {"name": "strict", "behaviors": [PROFILE_BEHAVIORS[2]]}
    code, err, calls = dry_run(fleet(), "--merge-config", json.dumps({"SecurityProfile": profile}))
    assert (code, err) == (0, "")
    assert component_merge(calls) == {"SecurityProfile": profile}
    trust = json.loads(calls["CreateRole"]["AssumeRolePolicyDocument"])
    assert (
        f"arn:aws:iot:{REGION}:{ACCOUNT}:securityprofile/ddcustom-strict"
        in (trust["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"])
    )


def test_cloud_profile_name_and_merge_configuration_must_agree(aws: None) -> None:
    merge = json.dumps({"SecurityProfile": "crypto-mining", "EnableGPUMetrics": False})
    code, _, err = cloud(
        Account(), "setup", *PARTS_OFF, "--profile-name", "other.json", "--merge-config", merge
    )
    assert code == 2
    assert "--profile-name 'other.json' differs from SecurityProfile in --merge-config" in err


def test_cloud_default_profile_is_left_to_the_recipe(aws: None) -> None:
    code, err, calls = dry_run(fleet())
    assert (code, err) == (0, "")
    assert component_merge(calls) == {"EnableGPUMetrics": True}


def test_cloud_deployment_keeps_the_groups_deployment_policies(aws: None) -> None:
    """A new revision replaces the group's deployment: its policies and job settings go along unchanged."""
    account = fleet()
    policies = {
        "failureHandlingPolicy": "DO_NOTHING",
        "componentUpdatePolicy": {"timeoutInSeconds": 120, "action": "SKIP_NOTIFY_COMPONENTS"},
    }
    job = {"timeoutConfig": {"inProgressTimeoutInMinutes": 30}}
    expect_component_published(account)
    expect_latest_deployment(
        account, "d-own", EXISTING_COMPONENTS, {}, deploymentPolicies=policies, iotJobConfiguration=job
    )
    code, out, err = cloud(account, "setup", *PARTS_OFF, "--no-detect", "--dry-run")
    assert (code, err) == (0, "")
    account.all_stubs_used()
    [deployment] = [params for _, operation, params in would_call(out) if operation == "CreateDeployment"]
    assert deployment["deploymentPolicies"] == policies
    assert deployment["iotJobConfiguration"] == job
