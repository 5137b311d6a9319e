"""`ddcustom cloud setup|teardown` with automatic quarantine and the fleet views: moto for IAM, SNS, IoT
registry, rules and policies, Lambda (created, never invoked), CloudWatch Logs and alarms, SSM; botocore's
Stubber for fleet indexing and fleet metrics, which moto lacks or models only in part."""

from __future__ import annotations

import copy
import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from ddcustom.tooling.cloud.fleet import additions, merged, restored
from ddcustom.tooling.cloud.quarantine import ATTRIBUTE
from ddcustom.tooling.cloud.quarantine_steps import quarantine_package
from ddcustom.tooling.cloud.steps import code_sha256
from support.cloud_account import (
    ACCOUNT,
    EXISTING_COMPONENTS,
    GROUP,
    KEPT_COMPONENTS,
    REGION,
    TAGS,
    TOPIC_ARN,
    Account,
    cloud,
    expect_component_published,
    expect_latest_deployment,
    fleet,
    mocked_account,
    would_call,
)

NOT_FOUND = "ResourceNotFoundException"
COMPONENT = "com.awsiotblog.DeviceDefenderCustom"
DEPLOYED = {
    **KEPT_COMPONENTS,
    COMPONENT: {
        "componentVersion": "1.0.0",
        "configurationUpdate": {"merge": '{"EnableGPUMetrics": true, "FleetInventory": true}'},
    },
}
# The same, as a setup with --prevalence off deploys it (the devices send no inventory).
DEPLOYED_WITHOUT_INVENTORY = {
    **KEPT_COMPONENTS,
    COMPONENT: {"componentVersion": "1.0.0", "configurationUpdate": {"merge": '{"EnableGPUMetrics": true}'}},
}
REPORTED = "shadow.name.ddcustom.reported."
OUR_FIELDS = [
    {"name": REPORTED + "alarmCount", "type": "Number"},
    {"name": REPORTED + "inAlarm", "type": "Boolean"},
    {"name": REPORTED + "updated", "type": "Number"},
]
# The account's fleet indexing before setup: someone indexes the registry and connectivity already.
THEIRS: dict[str, Any] = {
    "thingIndexingMode": "REGISTRY",
    "thingConnectivityIndexingMode": "STATUS",
    "namedShadowIndexingMode": "OFF",
    "deviceDefenderIndexingMode": "OFF",
    "managedFields": [{"name": "thingName", "type": "String"}],
    "customFields": [{"name": "attributes.site", "type": "String"}],
}
MERGED: dict[str, Any] = {
    "thingIndexingMode": "REGISTRY",
    "thingConnectivityIndexingMode": "STATUS",
    "namedShadowIndexingMode": "ON",
    "deviceDefenderIndexingMode": "OFF",
    "customFields": [{"name": "attributes.site", "type": "String"}, *OUR_FIELDS],
    "filter": {"namedShadowNames": ["ddcustom"]},
}
METRICS = {
    "ddcustom-devices-in-alarm": f'thingGroupNames:"{GROUP}" AND {REPORTED}inAlarm:true',
    "ddcustom-devices-reporting": f'thingGroupNames:"{GROUP}" AND {REPORTED}alarmCount>=0',
}
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:ddcustom-quarantine"
RULE_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:rule/ddcustom_quarantine"
QUARANTINE_GROUP_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/ddcustom-quarantine"
RECORD = "/ddcustom/ddcustom/fleet-indexing-added"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with mocked_account(monkeypatch):
        yield


def metric_arn(name: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:fleetmetric/{name}"


def metric_params(name: str) -> dict[str, Any]:
    return {
        "metricName": name,
        "queryString": METRICS[name],
        "aggregationType": {"name": "Statistics", "values": ["count"]},
        "period": 300,
        "aggregationField": REPORTED + "alarmCount",
        "description": ANY,
        "queryVersion": "2017-09-30",
        "indexName": "AWS_Things",
        "unit": "Count",
    }


def expect_indexing(account: Account, config: dict[str, Any]) -> None:
    account.fleet.add_response(
        "get_indexing_configuration",
        {
            "thingIndexingConfiguration": config,
            "thingGroupIndexingConfiguration": {"thingGroupIndexingMode": "OFF"},
        },
        {},
    )


def expect_metrics_found(account: Account, names: list[str]) -> None:
    for name in names:
        found = {**metric_params(name), "description": "x", "metricArn": metric_arn(name), "version": 1}
        account.fleet.add_response("describe_fleet_metric", found, {"metricName": name})
        account.fleet.add_response(
            "list_tags_for_resource", {"tags": TAGS}, {"resourceArn": metric_arn(name)}
        )


def expect_metrics_missing(account: Account, names: list[str]) -> None:
    for name in names:
        account.fleet.add_client_error(
            "describe_fleet_metric", NOT_FOUND, expected_params={"metricName": name}
        )


def expect_first_setup(account: Account, before: dict[str, Any], after: dict[str, Any]) -> None:
    expect_indexing(account, before)
    expect_metrics_missing(account, list(METRICS))
    expect_component_published(account)
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    account.fleet.add_response("update_indexing_configuration", {}, {"thingIndexingConfiguration": after})
    for name in METRICS:
        account.fleet.add_response(
            "create_fleet_metric",
            {"metricName": name, "metricArn": metric_arn(name)},
            {**metric_params(name), "tags": TAGS},
        )
    account.greengrass.add_response("create_deployment", {"deploymentId": "d-ddcustom"}, None)


def expect_second_setup(account: Account, config: dict[str, Any]) -> None:
    expect_indexing(account, config)
    expect_metrics_found(account, list(METRICS))
    expect_component_published(account)
    expect_latest_deployment(account, "d-ddcustom", DEPLOYED, {"ddcustom:stack": "ddcustom"})


def expect_teardown(account: Account, config: dict[str, Any], restored_config: dict[str, Any]) -> None:
    for _ in range(2):
        expect_latest_deployment(account, "d-ddcustom", DEPLOYED, {"ddcustom:stack": "ddcustom"})
    account.greengrass.add_response("create_deployment", {"deploymentId": "d-removal"}, None)
    for name in reversed(list(METRICS)):
        expect_metrics_found(account, [name])
        account.fleet.add_response("delete_fleet_metric", {}, {"metricName": name})
    expect_indexing(account, config)
    account.fleet.add_response(
        "update_indexing_configuration", {}, {"thingIndexingConfiguration": restored_config}
    )


SETUP = ("setup", "--no-detect", "--quarantine-policy", "--email", "ops@example.com")
# For the tests of other parts: the silent-device check and prevalence left out (the first test has them)
NEW_PARTS_OFF = ("--silent-check", "off", "--prevalence", "off")
TEARDOWN = ("teardown", "--no-detect")


def test_cloud_fleet_setup_twice_then_teardown(aws: None) -> None:
    account = fleet()
    before = account.snapshot()

    expect_first_setup(account, THEIRS, MERGED)
    code, out, err = cloud(account, *SETUP)
    assert (code, err) == (0, "")
    account.all_stubs_used()
    # what setup printed it changed in the account's fleet indexing
    assert (
        "updated  fleet indexing of named shadow ddcustom (namedShadowIndexingMode OFF -> ON; named shadow "
        "ddcustom added; custom fields shadow.name.ddcustom.reported.alarmCount, "
        "shadow.name.ddcustom.reported.inAlarm, shadow.name.ddcustom.reported.updated added)"
    ) in out
    after = account.snapshot()
    made = ("roles", "rules", "functions", "log_groups", "alarms", "schedule_groups", "schedules", "tables")
    assert {key: after[key] for key in made} == {
        "roles": [
            "GreengrassV2TokenExchangeRole",
            "ddcustom-iot-alerts",
            "ddcustom-prevalence-function",
            "ddcustom-prevalence-schedule",
            "ddcustom-quarantine-function",
            "ddcustom-silent-devices-function",
            "ddcustom-silent-devices-schedule",
        ],
        "rules": ["ddcustom_alerts", "ddcustom_inventory", "ddcustom_quarantine"],
        "functions": ["ddcustom-prevalence", "ddcustom-quarantine", "ddcustom-silent-devices"],
        "log_groups": [
            "/aws/lambda/ddcustom-prevalence",
            "/aws/lambda/ddcustom-quarantine",
            "/aws/lambda/ddcustom-silent-devices",
        ],
        "alarms": ["ddcustom-fleet-in-alarm"],
        "schedule_groups": ["ddcustom"],
        "schedules": ["ddcustom/ddcustom-prevalence", "ddcustom/ddcustom-silent-devices"],
        "tables": ["ddcustom-prevalence"],
    }
    silent_check_made_as_documented(account)
    prevalence_made_as_documented(account)
    assert after["parameters"] == [RECORD]
    assert after["iot_policies"] == ["ddcustom-quarantine-policy"]

    iam, iot, lam = account.moto["iam"], account.moto["iot"], account.moto["lambda"]
    # the function: the handler alone, a current runtime, the group and behaviors in its environment
    function = lam.get_function(FunctionName="ddcustom-quarantine")
    assert function["Tags"] == {"ddcustom:stack": "ddcustom"}
    config = function["Configuration"]
    assert (config["Runtime"], config["Handler"]) == ("python3.13", "quarantine.handler")
    assert config["CodeSha256"] == code_sha256(quarantine_package())
    assert config["Environment"]["Variables"] == {
        "QUARANTINE_GROUP": "ddcustom-quarantine",
        "QUARANTINE_BEHAVIORS": "miner-processes,mining-pool-connections,gpu-unknown-processes",
    }
    # IoT may invoke it for this rule of this account only
    [statement] = json.loads(lam.get_policy(FunctionName="ddcustom-quarantine")["Policy"])["Statement"]
    assert statement["Principal"] == {"Service": "iot.amazonaws.com"}
    assert statement["Condition"] == {
        "ArnLike": {"AWS:SourceArn": RULE_ARN},
        "StringEquals": {"AWS:SourceAccount": ACCOUNT},
    }
    # least privilege: the one group, the things, its own log group
    role_policy = iam.get_role_policy(RoleName="ddcustom-quarantine-function", PolicyName="quarantine")
    assert role_policy["PolicyDocument"]["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "iot:AddThingToThingGroup",
            "Resource": [QUARANTINE_GROUP_ARN, f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/*"],
        },
        {
            "Effect": "Allow",
            "Action": ["iot:ListThingGroupsForThing", "iot:UpdateThing"],
            "Resource": f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/*",
        },
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/ddcustom-quarantine:*",
        },
    ]
    # the rule: in-alarm alerts of the quarantine behaviors, with the topic's thing
    rule = iot.get_topic_rule(ruleName="ddcustom_quarantine")["rule"]
    assert rule["sql"] == (
        "SELECT *, topic(2) AS topicThing FROM 'ddcustom/+/alerts' WHERE violationEventType = 'in-alarm' "
        "AND (behavior.name = 'miner-processes' OR behavior.name = 'mining-pool-connections' OR "
        "behavior.name = 'gpu-unknown-processes')"
    )
    assert rule["actions"] == [{"lambda": {"functionArn": FUNCTION_ARN}}]
    # the quarantine policy, on the quarantine group
    assert iot.list_targets_for_policy(policyName="ddcustom-quarantine-policy")["targets"] == [
        QUARANTINE_GROUP_ARN
    ]
    document = json.loads(iot.get_policy(policyName="ddcustom-quarantine-policy")["policyDocument"])
    assert document["Statement"][0]["Effect"] == "Deny"
    assert document["Statement"][0]["NotResource"] == [
        f"arn:aws:iot:{REGION}:{ACCOUNT}:topic/$aws/things/${{iot:ClientId}}/*",
        f"arn:aws:iot:{REGION}:{ACCOUNT}:topic/ddcustom/${{iot:ClientId}}/alerts",
        f"arn:aws:iot:{REGION}:{ACCOUNT}:topic/ddcustom/${{iot:ClientId}}/inventory",
    ]
    # the fleet alarm, to the stack's topic
    [alarm] = account.moto["cloudwatch"].describe_alarms(AlarmNames=["ddcustom-fleet-in-alarm"])[
        "MetricAlarms"
    ]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Threshold"]) == (
        "IoTFleetMetrics",
        "ddcustom-devices-in-alarm",
        5.0,
    )
    assert alarm["Dimensions"] == [{"Name": "AggregationType", "Value": "count"}]
    assert alarm["AlarmActions"] == alarm["OKActions"] == [TOPIC_ARN]
    # the record of what setup added to fleet indexing
    record = json.loads(account.moto["ssm"].get_parameter(Name=RECORD)["Parameter"]["Value"])
    assert record == {
        "namedShadowIndexingMode": ["OFF", "ON"],
        "namedShadowNames": ["ddcustom"],
        "customFields": OUR_FIELDS,
    }

    # second run: nothing to do
    expect_second_setup(account, {**MERGED, "managedFields": THEIRS["managedFields"]})
    code, out, err = cloud(account, *SETUP)
    assert (code, err) == (0, "")
    account.all_stubs_used()
    assert "created " not in out and "updated " not in out
    assert "setup complete: 0 made" in out
    assert account.snapshot() == after

    # someone else indexes another named shadow meanwhile: teardown takes away only what setup added
    changed = copy.deepcopy(MERGED)
    changed["filter"]["namedShadowNames"] = ["ddcustom", "battery"]
    restored_config = copy.deepcopy(THEIRS)
    del restored_config["managedFields"]
    restored_config["namedShadowIndexingMode"] = "ON"
    restored_config["filter"] = {"namedShadowNames": ["battery"]}
    expect_teardown(account, changed, restored_config)
    code, out, err = cloud(account, *TEARDOWN)
    assert (code, err) == (0, "")
    account.all_stubs_used()
    assert "kept namedShadowIndexingMode ON (still indexes battery)" in out
    assert account.snapshot() == before


def silent_check_made_as_documented(account: Account) -> None:
    """The silent-device function, its role (least privilege) and its schedule in the stack's group."""
    iam, lam, scheduler = account.moto["iam"], account.moto["lambda"], account.moto["scheduler"]
    function = lam.get_function(FunctionName="ddcustom-silent-devices")
    assert function["Tags"] == {"ddcustom:stack": "ddcustom"}
    config = function["Configuration"]
    assert config["Handler"] == "silent.handler"
    assert config["Environment"]["Variables"] == {
        "THING_GROUP": GROUP,
        "SILENT_AFTER": "10800",
        "ALERT_TOPIC_ARN": TOPIC_ARN,
        "STACK": "ddcustom",
    }
    policy = iam.get_role_policy(RoleName="ddcustom-silent-devices-function", PolicyName="silent-devices")
    assert policy["PolicyDocument"]["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "iot:SearchIndex",
            "Resource": f"arn:aws:iot:{REGION}:{ACCOUNT}:index/AWS_Things",
        },
        {
            "Effect": "Allow",
            "Action": ["iot:DescribeThing", "iot:UpdateThing"],
            "Resource": f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/*",
        },
        {"Effect": "Allow", "Action": "sns:Publish", "Resource": TOPIC_ARN},
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/ddcustom-silent-devices:*",
        },
    ]
    schedule = scheduler.get_schedule(Name="ddcustom-silent-devices", GroupName="ddcustom")
    assert schedule["ScheduleExpression"] == "rate(15 minutes)"
    assert schedule["Target"]["Arn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:ddcustom-silent-devices"
    assert schedule["Target"]["RoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/ddcustom-silent-devices-schedule"
    group_arn = f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule-group/ddcustom"
    assert scheduler.list_tags_for_resource(ResourceArn=group_arn)["Tags"] == TAGS
    # Scheduler may assume the role for this group of this account only, to invoke that function only
    role = iam.get_role(RoleName="ddcustom-silent-devices-schedule")["Role"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnEquals": {"aws:SourceArn": [group_arn]},
    }
    invoke = iam.get_role_policy(RoleName="ddcustom-silent-devices-schedule", PolicyName="invoke")
    assert invoke["PolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": schedule["Target"]["Arn"]}
    ]


def prevalence_made_as_documented(account: Account) -> None:
    """The table (tagged, on demand), the function and its least-privilege role, the inventory rule."""
    iam, iot, lam = account.moto["iam"], account.moto["iot"], account.moto["lambda"]
    dynamodb = account.moto["dynamodb"]
    table = dynamodb.describe_table(TableName="ddcustom-prevalence")["Table"]
    assert dynamodb.list_tags_of_resource(ResourceArn=table["TableArn"])["Tags"] == TAGS
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert sorted(i["IndexName"] for i in table["GlobalSecondaryIndexes"]) == ["by-group", "pending"]
    rule = iot.get_topic_rule(ruleName="ddcustom_inventory")["rule"]
    assert rule["sql"] == "SELECT *, topic(2) AS topicThing FROM 'ddcustom/+/inventory'"
    function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:ddcustom-prevalence"
    assert rule["actions"] == [{"lambda": {"functionArn": function_arn}}]
    [statement] = json.loads(lam.get_policy(FunctionName="ddcustom-prevalence")["Policy"])["Statement"]
    assert statement["Condition"]["ArnLike"] == {
        "AWS:SourceArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:rule/ddcustom_inventory"
    }
    config = lam.get_function(FunctionName="ddcustom-prevalence")["Configuration"]
    assert config["Environment"]["Variables"] == {
        "TABLE": "ddcustom-prevalence",
        "THING_GROUP": GROUP,
        "THING_GROUP_ARN": f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{GROUP}",
        "ALERT_TOPIC_ARN": TOPIC_ARN,
        "RARE_DEVICES": "2",
        "RARE_SHARE": "1",
        "RARE_MIN_GROUP": "20",
        "STACK": "ddcustom",
    }
    statements = iam.get_role_policy(RoleName="ddcustom-prevalence-function", PolicyName="prevalence")[
        "PolicyDocument"
    ]["Statement"]
    table_arn = table["TableArn"]
    assert statements[0]["Resource"] == [table_arn, f"{table_arn}/index/*"]
    assert (
        "dynamodb:Scan" not in statements[0]["Action"]
        and "dynamodb:DeleteTable" not in statements[0]["Action"]
    )
    assert statements[1:4] == [
        {
            "Effect": "Allow",
            "Action": "iot:ListThingGroupsForThing",
            "Resource": f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/*",
        },
        {"Effect": "Allow", "Action": "greengrass:ListDeployments", "Resource": "*"},
        {
            "Effect": "Allow",
            "Action": "greengrass:GetDeployment",
            "Resource": f"arn:aws:greengrass:{REGION}:{ACCOUNT}:deployments:*",
        },
    ]
    schedule = account.moto["scheduler"].get_schedule(Name="ddcustom-prevalence", GroupName="ddcustom")
    assert schedule["ScheduleExpression"] == "rate(1 minute)"
    assert json.loads(schedule["Target"]["Input"]) == {"action": "aggregate"}


def test_cloud_fleet_teardown_restores_an_untouched_configuration(aws: None) -> None:
    """An account without fleet indexing: setup turns it on, teardown turns it off again."""
    account = fleet()
    before = account.snapshot()
    turned_on = {
        "thingIndexingMode": "REGISTRY",
        "namedShadowIndexingMode": "ON",
        "customFields": OUR_FIELDS,
        "filter": {"namedShadowNames": ["ddcustom"]},
    }
    expect_first_setup(account, {"thingIndexingMode": "OFF"}, turned_on)
    code, out, err = cloud(account, "setup", "--no-detect", *NEW_PARTS_OFF)
    assert (code, err) == (0, "")
    assert "thingIndexingMode OFF -> REGISTRY; namedShadowIndexingMode OFF -> ON" in out
    off = {"thingIndexingMode": "OFF", "namedShadowIndexingMode": "OFF", "customFields": []}
    expect_teardown(account, turned_on, off)
    code, out, err = cloud(account, *TEARDOWN)
    assert (code, err) == (0, ""), err
    account.all_stubs_used()
    assert "thingIndexingMode REGISTRY -> OFF" in out
    assert account.snapshot() == before


def test_cloud_fleet_dry_run_lists_function_rule_indexing_metrics_alarm(aws: None) -> None:
    account = fleet()
    before = account.snapshot()
    expect_indexing(account, THEIRS)
    expect_metrics_missing(account, list(METRICS))
    expect_component_published(account)
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    code, out, err = cloud(account, "setup", "--no-detect", "--dry-run")
    assert (code, err) == (0, "")
    account.all_stubs_used()
    assert account.snapshot() == before
    calls = would_call(out)
    operations = [operation for _, operation, _ in calls]
    for expected in (
        "CreateFunction",
        "AddPermission",
        "CreateTopicRule",
        "UpdateIndexingConfiguration",
        "CreateFleetMetric",
        "PutMetricAlarm",
    ):
        assert expected in operations, expected
    [indexing] = [params for _, operation, params in calls if operation == "UpdateIndexingConfiguration"]
    assert indexing == {"thingIndexingConfiguration": MERGED}
    functions = [params for _, operation, params in calls if operation == "CreateFunction"]
    assert [f["FunctionName"] for f in functions] == [
        "ddcustom-quarantine",
        "ddcustom-silent-devices",
        "ddcustom-prevalence",
    ]
    assert all(f["Code"]["ZipFile"].startswith("<") for f in functions)  # their size and hash, not the bytes
    assert ("scheduler", "CreateSchedule") in [(service, operation) for service, operation, _ in calls]


def test_cloud_plan_needs_no_credentials_and_calls_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def no_aws(service: str) -> Any:
        raise AssertionError(f"--plan called {service}")

    code, out, err = cloud(no_aws, "setup", "--plan")  # type: ignore[arg-type]
    assert (code, err) == (0, "")
    assert "in an empty account (<account-id>)" in out
    operations = [operation for _, operation, _ in would_call(out)]
    assert operations[:3] == ["CreateThingGroup", "CreateThingGroup", "CreateTopic"]
    for expected in ("CreateFunction", "UpdateIndexingConfiguration", "CreateFleetMetric", "PutMetricAlarm"):
        assert expected in operations
    assert operations[-1] == "CreateDeployment"
    assert "arn:aws:iam::<account-id>:role/ddcustom-quarantine-function" in out
    assert "thingIndexingMode OFF -> REGISTRY" in out
    # the silent-device check and prevalence, with the rest
    made = [line[len("would make ") :] for line in out.splitlines() if line.startswith("would make ")]
    for expected in (
        "EventBridge Scheduler schedule group ddcustom",
        "Lambda function ddcustom-silent-devices",
        "EventBridge Scheduler schedule ddcustom-silent-devices (rate(15 minutes))",
        "DynamoDB table ddcustom-prevalence",
        "Lambda function ddcustom-prevalence",
        "IoT topic rule ddcustom_inventory",
        "EventBridge Scheduler schedule ddcustom-prevalence (rate(1 minute))",
    ):
        assert expected in made, expected
    code, out, _ = cloud(no_aws, "setup", "--plan", "--silent-check", "off", "--prevalence", "off")  # type: ignore[arg-type]
    assert code == 0
    assert (
        "ddcustom-silent-devices" not in out and "ddcustom-prevalence" not in out and "Scheduler" not in out
    )


def test_cloud_plan_and_dry_run_together_are_refused(aws: None) -> None:
    code, _, err = cloud(Account(), "setup", "--plan", "--dry-run")
    assert code == 2
    assert "--plan and --dry-run: give one" in err


# ---- errors ----


class DeniedLambda(Account):
    """An account whose credentials may not create Lambda functions."""

    def __init__(self) -> None:
        super().__init__()
        self.lambda_stub = Stubber(self.moto["lambda"])

    def deny(self) -> None:
        self.lambda_stub.add_client_error("get_function", NOT_FOUND)
        self.lambda_stub.add_client_error("get_policy", NOT_FOUND)
        self.lambda_stub.add_client_error(
            "create_function",
            "AccessDeniedException",
            "User: arn:aws:iam::123456789012:user/ops is not authorized to perform: lambda:CreateFunction",
        )
        self.lambda_stub.activate()


def test_cloud_lambda_refused_says_what_was_made_and_teardown_removes_it(aws: None) -> None:
    account = DeniedLambda()
    iam = account.moto["iam"]
    iam.create_role(RoleName="GreengrassV2TokenExchangeRole", AssumeRolePolicyDocument="{}")
    account.moto["iot"].create_thing_group(thingGroupName=GROUP)
    before = account.snapshot()
    account.deny()
    expect_component_published(account)
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    code, _, err = cloud(account, "setup", "--no-detect", "--fleet", "off", "--prevalence", "off")
    assert code == 1
    assert "Lambda function ddcustom-quarantine: CreateFunction: AccessDeniedException" in err
    assert "grant it, or leave that part out (--quarantine off, --fleet off)" in err
    assert "  - IAM role ddcustom-quarantine-function" in err
    assert "  - CloudWatch Logs log group /aws/lambda/ddcustom-quarantine" in err
    # all of it tagged, and teardown takes it away
    assert iam.get_role(RoleName="ddcustom-quarantine-function")["Role"]["Tags"] == TAGS
    account.lambda_stub.deactivate()
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    expect_metrics_missing(account, list(reversed(METRICS)))
    code, _, err = cloud(account, *TEARDOWN)
    assert (code, err) == (0, "")
    account.all_stubs_used()
    assert account.snapshot() == before


def test_cloud_fleet_indexing_refused_changes_nothing(aws: None) -> None:
    account = fleet()
    before = account.snapshot()
    account.fleet.add_client_error(
        "get_indexing_configuration",
        "AccessDeniedException",
        "not authorized to perform: iot:GetIndexingConfiguration",
    )
    code, _, err = cloud(account, "setup", "--no-detect", *NEW_PARTS_OFF)
    assert code == 1
    assert "GetIndexingConfiguration: AccessDeniedException" in err
    assert "--fleet off" in err
    assert "Nothing was changed." in err
    assert account.snapshot() == before


def test_cloud_fleet_custom_field_of_another_type_stops_setup(aws: None) -> None:
    account = fleet()
    before = account.snapshot()
    theirs = {**THEIRS, "customFields": [{"name": REPORTED + "alarmCount", "type": "String"}]}
    expect_indexing(account, theirs)
    expect_metrics_missing(account, list(METRICS))
    expect_component_published(account)
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    code, out, _ = cloud(account, "setup", "--no-detect", *NEW_PARTS_OFF)
    assert code == 2
    assert "custom field shadow.name.ddcustom.reported.alarmCount as String, not Number" in out
    assert account.snapshot() == before


def test_cloud_fleet_record_not_ours_stops_setup(aws: None) -> None:
    account = fleet()
    account.moto["ssm"].put_parameter(Name=RECORD, Value="{}", Type="String")
    before = account.snapshot()
    expect_metrics_missing(account, list(METRICS))
    expect_component_published(account)
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    code, out, _ = cloud(account, "setup", "--no-detect", *NEW_PARTS_OFF)
    assert code == 2
    assert f"SSM parameter {RECORD} already exists and is not tagged ddcustom:stack=ddcustom" in out
    assert account.snapshot() == before


def test_cloud_quarantine_group_deleted_by_hand(aws: None) -> None:
    """Teardown still removes the rest; setup makes the group again. (Without --quarantine-policy: moto
    keeps listing a deleted group as a target of its policies and then refuses to delete the policy.)"""
    account = fleet()
    before = account.snapshot()
    expect_component_published(account)
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    account.greengrass.add_response("create_deployment", {"deploymentId": "d-ddcustom"}, None)
    assert cloud(account, "setup", "--no-detect", "--fleet", "off", "--prevalence", "off")[0] == 0
    account.moto["iot"].delete_thing_group(thingGroupName="ddcustom-quarantine")

    expect_component_published(account)
    expect_latest_deployment(
        account, "d-ddcustom", DEPLOYED_WITHOUT_INVENTORY, {"ddcustom:stack": "ddcustom"}
    )
    code, out, err = cloud(account, "setup", "--no-detect", "--fleet", "off", "--prevalence", "off")
    assert (code, err) == (0, "")
    assert "created  IoT thing group ddcustom-quarantine" in out

    account.moto["iot"].delete_thing_group(thingGroupName="ddcustom-quarantine")
    for _ in range(2):
        expect_latest_deployment(account, "d-ddcustom", DEPLOYED, {"ddcustom:stack": "ddcustom"})
    account.greengrass.add_response("create_deployment", {"deploymentId": "d-removal"}, None)
    expect_metrics_missing(account, list(reversed(METRICS)))
    code, out, err = cloud(account, *TEARDOWN)
    assert (code, err) == (0, ""), err
    account.all_stubs_used()
    assert "kept     IoT thing group ddcustom-quarantine (absent, or not made by this stack)" in out
    assert account.snapshot() == before


# ---- the fleet alarm ----


def test_cloud_fleet_alarm_on_a_share_of_the_reporting_devices(aws: None) -> None:
    account = fleet()
    for run in range(2):
        expect_indexing(account, MERGED)
        if run == 0:
            expect_metrics_missing(account, list(METRICS))
        else:
            expect_metrics_found(account, list(METRICS))
        expect_component_published(account)
        expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
        account.greengrass.add_response("create_deployment", {"deploymentId": "d-ddcustom"}, None)
        if run == 0:
            for name in METRICS:
                account.fleet.add_response("create_fleet_metric", {"metricName": name}, None)
        code, out, err = cloud(
            account, "setup", "--no-detect", "--fleet-alarm-threshold", "2.5%", *NEW_PARTS_OFF
        )
        assert (code, err) == (0, "")
        account.all_stubs_used()
    assert "CloudWatch alarm" not in out.replace("owned    CloudWatch alarm", "")  # second run: no change
    [alarm] = account.moto["cloudwatch"].describe_alarms(AlarmNames=["ddcustom-fleet-in-alarm"])[
        "MetricAlarms"
    ]
    assert alarm["Threshold"] == 2.5
    assert [query["Id"] for query in alarm["Metrics"]] == ["alarmed", "reporting", "share"]
    assert alarm["Metrics"][2]["Expression"] == "100 * alarmed / reporting"
    assert alarm["Metrics"][1]["MetricStat"]["Metric"]["MetricName"] == "ddcustom-devices-reporting"


@pytest.mark.parametrize("threshold", ["many", "100%", "-3", "5 %"])
def test_cloud_fleet_alarm_threshold_refused(aws: None, threshold: str) -> None:
    code, _, err = cloud(Account(), "setup", "--fleet-alarm-threshold", threshold)
    assert code == 2
    assert f"--fleet-alarm-threshold {threshold!r}" in err


# ---- merging into and restoring fleet indexing, on its own ----


def test_cloud_fleet_indexing_merge_keeps_a_higher_mode_and_everything_else() -> None:
    theirs: dict[str, Any] = {
        "thingIndexingMode": "REGISTRY_AND_SHADOW",
        "namedShadowIndexingMode": "ON",
        "filter": {
            "namedShadowNames": ["battery"],
            "geoLocations": [{"name": "shadow.reported.loc", "order": "LatLon"}],
        },
        "customFields": [{"name": REPORTED + "alarmCount", "type": "Number"}],
    }
    added = additions(theirs)
    assert added == {"namedShadowNames": ["ddcustom"], "customFields": OUR_FIELDS[1:]}
    new = merged(theirs, added)
    assert new["thingIndexingMode"] == "REGISTRY_AND_SHADOW"
    assert new["filter"] == {
        "namedShadowNames": ["battery", "ddcustom"],
        "geoLocations": [{"name": "shadow.reported.loc", "order": "LatLon"}],
    }
    assert theirs["filter"]["namedShadowNames"] == ["battery"]  # the input is left alone
    back, done, kept = restored(new, added)
    assert back == theirs
    assert done == ["named shadow ddcustom", "custom fields " + REPORTED + "inAlarm, " + REPORTED + "updated"]
    assert kept == []


def test_cloud_fleet_indexing_restore_keeps_a_mode_changed_or_still_used() -> None:
    record = {"thingIndexingMode": ["OFF", "REGISTRY"], "namedShadowIndexingMode": ["OFF", "ON"]}
    # someone raised the mode meanwhile
    raised = {"thingIndexingMode": "REGISTRY_AND_SHADOW", "namedShadowIndexingMode": "ON"}
    new, _, kept = restored(raised, record)
    assert new["thingIndexingMode"] == "REGISTRY_AND_SHADOW"
    assert "thingIndexingMode REGISTRY_AND_SHADOW (changed since setup)" in kept
    # someone turned connectivity indexing on meanwhile: the thing index stays
    connectivity = {"thingIndexingMode": "REGISTRY", "thingConnectivityIndexingMode": "STATUS"}
    new, _, kept = restored(connectivity, {"thingIndexingMode": ["OFF", "REGISTRY"]})
    assert new["thingIndexingMode"] == "REGISTRY"
    assert kept == ["thingIndexingMode REGISTRY (still used by thingConnectivityIndexingMode)"]
    # our additions already gone: nothing to take away
    new, done, _ = restored({"thingIndexingMode": "REGISTRY"}, {"namedShadowNames": ["ddcustom"]})
    assert (new, done) == ({"thingIndexingMode": "REGISTRY"}, [])


def test_cloud_fleet_indexing_full_shadow_filter_is_a_conflict() -> None:
    from ddcustom.tooling.cloud.steps import Conflict

    names = [f"s{i}" for i in range(10)]
    with pytest.raises(Conflict, match="already indexes 10 named shadows"):
        additions(
            {
                "thingIndexingMode": "REGISTRY",
                "namedShadowIndexingMode": "ON",
                "filter": {"namedShadowNames": names},
            }
        )


# ---- release ----


def test_cloud_release_takes_the_device_out_and_clears_the_record(aws: None) -> None:
    account = Account()
    iot = account.moto["iot"]
    iot.create_thing_group(thingGroupName="ddcustom-quarantine")
    record = "at=2026-11-25T09:30:00Z,behavior=miner-processes,violation=v1"
    iot.create_thing(
        thingName="gpu-edge-12", attributePayload={"attributes": {ATTRIBUTE: record, "site": "b"}}
    )
    iot.add_thing_to_thing_group(thingGroupName="ddcustom-quarantine", thingName="gpu-edge-12")
    code, out, err = cloud(account, "release", "gpu-edge-12")
    assert (code, err) == (0, "")
    assert f"cleared  {ATTRIBUTE} on gpu-edge-12 (was {record})" in out
    assert iot.list_things_in_thing_group(thingGroupName="ddcustom-quarantine")["things"] == []
    assert iot.describe_thing(thingName="gpu-edge-12")["attributes"] == {"site": "b"}
    # twice: nothing left to do, no error
    code, out, err = cloud(account, "release", "gpu-edge-12")
    assert (code, err) == (0, "")
    assert "kept     gpu-edge-12: not in ddcustom-quarantine" in out


def test_cloud_release_unknown_thing(aws: None) -> None:
    code, _, err = cloud(Account(), "release", "gpu-edge-99")
    assert code == 2
    assert "no thing named 'gpu-edge-99'" in err


def test_cloud_a_tolerated_error_means_already_done() -> None:
    """A policy target deleted by hand: detaching it answers not found, which is what teardown wanted."""
    import io

    import boto3

    from ddcustom.tooling.cloud import runner
    from ddcustom.tooling.cloud.steps import NOT_FOUND, Call

    client = boto3.client("iot", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    detach = {"policyName": "p", "target": QUARANTINE_GROUP_ARN}
    with Stubber(client) as stub:
        stub.add_client_error("detach_policy", "ResourceNotFoundException", expected_params=detach)
        stub.add_client_error("detach_policy", "ResourceNotFoundException", expected_params=detach)
        runner._make(
            [Call("iot", "DetachPolicy", detach, tolerate=NOT_FOUND)],
            lambda _: client,
            io.StringIO(),
            False,
            print,
        )
        with pytest.raises(Exception, match="ResourceNotFoundException"):
            runner._make([Call("iot", "DetachPolicy", detach)], lambda _: client, io.StringIO(), False, print)


def quarantine_only(account: Account, *argv: str) -> tuple[int, str, str]:
    """A setup with the quarantine function only (no Detect, no fleet views) of a quick-start fleet."""
    expect_component_published(account)
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    account.greengrass.add_response("create_deployment", {"deploymentId": "d-ddcustom"}, None)
    return cloud(account, "setup", "--no-detect", "--fleet", "off", "--prevalence", "off", *argv)


def test_cloud_quarantine_settings_and_handler_are_updated_in_place(aws: None) -> None:
    account = fleet()
    assert quarantine_only(account)[:3:2] == (0, "")
    lam, iot = account.moto["lambda"], account.moto["iot"]
    # an older handler deployed by an earlier ddcustom
    old = io.BytesIO()
    with zipfile.ZipFile(old, "w") as archive:
        archive.writestr("quarantine.py", "def handler(event, context):\n    return None\n")
    lam.update_function_code(FunctionName="ddcustom-quarantine", ZipFile=old.getvalue())

    code, out, err = quarantine_only(account, "--quarantine-behaviors", "miner-processes")
    assert (code, err) == (0, "")
    assert "updated  Lambda function ddcustom-quarantine" in out
    assert "updated  IoT topic rule ddcustom_quarantine" in out
    config = lam.get_function(FunctionName="ddcustom-quarantine")["Configuration"]
    assert config["CodeSha256"] == code_sha256(quarantine_package())
    assert config["Environment"]["Variables"]["QUARANTINE_BEHAVIORS"] == "miner-processes"
    assert iot.get_topic_rule(ruleName="ddcustom_quarantine")["rule"]["sql"].endswith(
        "AND (behavior.name = 'miner-processes')"
    )


def test_cloud_quarantine_function_of_another_role_is_a_conflict(aws: None) -> None:
    account = fleet()
    assert quarantine_only(account)[0] == 0
    lam = account.moto["lambda"]
    other = account.moto["iam"].create_role(RoleName="other", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    lam.update_function_configuration(FunctionName="ddcustom-quarantine", Role=other)
    expect_component_published(account)
    expect_latest_deployment(account, "d-ddcustom", DEPLOYED, {"ddcustom:stack": "ddcustom"})
    code, out, _ = cloud(account, "setup", "--no-detect", "--fleet", "off", "--prevalence", "off")
    assert code == 2
    assert "Lambda function ddcustom-quarantine exists with another role, runtime or handler" in out


def test_cloud_indexing_update_refused_leaves_a_tagged_record_teardown_removes(aws: None) -> None:
    account = fleet()
    before = account.snapshot()
    expect_indexing(account, THEIRS)
    expect_metrics_missing(account, list(METRICS))
    expect_component_published(account)
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    account.fleet.add_client_error(
        "update_indexing_configuration",
        "UnauthorizedException",
        "not authorized to perform: iot:UpdateIndexingConfiguration",
    )
    code, _, err = cloud(account, "setup", "--no-detect", "--quarantine", "off", *NEW_PARTS_OFF)
    assert code == 1
    assert "fleet indexing of named shadow ddcustom" in err
    assert "UpdateIndexingConfiguration: UnauthorizedException" in err
    tags = account.moto["ssm"].list_tags_for_resource(ResourceType="Parameter", ResourceId=RECORD)["TagList"]
    assert tags == TAGS
    # teardown: the configuration never changed, so only the record goes
    expect_latest_deployment(account, "d-quickstart", EXISTING_COMPONENTS, {})
    expect_metrics_missing(account, list(reversed(METRICS)))
    expect_indexing(account, THEIRS)
    code, out, err = cloud(account, *TEARDOWN)
    assert (code, err) == (0, "")
    account.all_stubs_used()
    assert "removed  fleet indexing of named shadow ddcustom (nothing of ours left in it)" in out
    assert account.snapshot() == before
