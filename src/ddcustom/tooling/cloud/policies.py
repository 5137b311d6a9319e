"""IAM policy documents, built from the same names the rest of the setup uses."""

from __future__ import annotations

import json
from typing import Any

VERSION = "2012-10-17"


def artifact_policy(bucket: str, region: str, account: str, component: str, partition: str = "aws") -> dict:
    """S3 read of the component's artifacts in the bucket gdk publishes to, ``<bucket>-<region>-<account>``;
    component-artifact-policy.json holds the same statement."""
    statement = {
        "Sid": "ReadDeviceDefenderCustomArtifacts",
        "Effect": "Allow",
        "Action": ["s3:GetObject"],
        "Resource": [f"arn:{partition}:s3:::{bucket}-{region}-{account}/{component}/*"],
    }
    return {"Version": VERSION, "Statement": [statement]}


def trust_policy(service: str, account: str, source_arns: list[str]) -> dict:
    """Lets ``service`` (e.g. iot.amazonaws.com) assume the role, only on behalf of ``source_arns``.

    The conditions are AWS's confused-deputy protection: IoT passes the rule, security profile or
    mitigation action it acts for as aws:SourceArn.
    """
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": service},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": account},
                    "ArnEquals": {"aws:SourceArn": source_arns},
                },
            }
        ],
    }


def sns_publish_policy(topic_arn: str) -> dict:
    return {
        "Version": VERSION,
        "Statement": [{"Effect": "Allow", "Action": "sns:Publish", "Resource": topic_arn}],
    }


def add_to_group_policy(group_arn: str, things_arn: str) -> dict:
    """What the quarantine mitigation action needs: add any thing to that one group."""
    return {
        "Version": VERSION,
        "Statement": [
            {"Effect": "Allow", "Action": "iot:AddThingToThingGroup", "Resource": [group_arn, things_arn]}
        ],
    }


def as_json(document: Any) -> str:
    return json.dumps(document, sort_keys=True)


def service_trust_policy(service: str) -> dict:
    """Lets ``service`` assume the role. For the Lambda execution role: Lambda assumes it only for the
    functions the role is given to, and only someone allowed iam:PassRole on it can give it."""
    return {
        "Version": VERSION,
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    }


def function_policy(statements: list[dict[str, Any]], log_group_arn: str) -> dict:
    """A function's execution role: ``statements`` and writing to its own log group, nothing more (setup
    creates the log group, so no logs:CreateLogGroup)."""
    logs = {
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": f"{log_group_arn}:*",
    }
    return {"Version": VERSION, "Statement": [*statements, logs]}


def quarantine_statements(group_arn: str, things_arn: str) -> list[dict[str, Any]]:
    """The quarantine function: look up and record on things, add them to the one quarantine group."""
    return [
        {"Effect": "Allow", "Action": "iot:AddThingToThingGroup", "Resource": [group_arn, things_arn]},
        {
            "Effect": "Allow",
            "Action": ["iot:ListThingGroupsForThing", "iot:UpdateThing"],
            "Resource": things_arn,
        },
    ]


def silent_statements(index_arn: str, things_arn: str, topic_arn: str) -> list[dict[str, Any]]:
    """The silent-device check: query the fleet index, read and mark things, publish to the alert topic."""
    return [
        {"Effect": "Allow", "Action": "iot:SearchIndex", "Resource": index_arn},
        {"Effect": "Allow", "Action": ["iot:DescribeThing", "iot:UpdateThing"], "Resource": things_arn},
        {"Effect": "Allow", "Action": "sns:Publish", "Resource": topic_arn},
    ]


def prevalence_statements(
    table_arn: str, things_arn: str, topic_arn: str, deployments_arn: str
) -> list[dict[str, Any]]:
    """The prevalence function: its table and its indexes, the thing groups of a thing (membership),
    the group's Greengrass deployment (which components a deployment placed), the alert topic."""
    return [
        {
            "Effect": "Allow",
            "Action": [
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                "dynamodb:Query",
                "dynamodb:BatchGetItem",
                "dynamodb:BatchWriteItem",
            ],
            "Resource": [table_arn, f"{table_arn}/index/*"],
        },
        {"Effect": "Allow", "Action": "iot:ListThingGroupsForThing", "Resource": things_arn},
        # ListDeployments takes no resource-level permission; GetDeployment takes the deployment.
        {"Effect": "Allow", "Action": "greengrass:ListDeployments", "Resource": "*"},
        {"Effect": "Allow", "Action": "greengrass:GetDeployment", "Resource": deployments_arn},
        {"Effect": "Allow", "Action": "sns:Publish", "Resource": topic_arn},
    ]


def invoke_policy(function_arn: str) -> dict:
    """What EventBridge Scheduler needs to run one function, and nothing more."""
    return {
        "Version": VERSION,
        "Statement": [{"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": function_arn}],
    }


def quarantine_iot_policy(topic_arn_prefix: str, alert_topic: str, stack_sid: str) -> dict:
    """IoT policy for the quarantine thing group: denies every publish except the device's own reserved
    topics ($aws/things/<thing>/..., where Greengrass deployments (jobs, the deployment shadow), Device
    Defender reports and shadows travel), its own alert topic and its own fleet inventory (the fleet's
    prevalence goes on counting what a quarantined device runs). Subscribe, receive, connect and the
    Greengrass data plane (artifact downloads) are left to the device's own policy.

    A thing group policy applies only where the MQTT client ID is the thing name, so ``${iot:ClientId}``
    is the thing there (thing policy variables are not supported for Greengrass core devices).
    ``topic_arn_prefix`` is ``arn:<partition>:iot:<region>:<account>:topic/``.
    """
    own_alerts = alert_topic.replace("{thingName}", "${iot:ClientId}")
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": stack_sid,
                "Effect": "Deny",
                "Action": ["iot:Publish", "iot:RetainPublish"],
                "NotResource": [
                    f"{topic_arn_prefix}$aws/things/${{iot:ClientId}}/*",
                    f"{topic_arn_prefix}{own_alerts}",
                    f"{topic_arn_prefix}ddcustom/${{iot:ClientId}}/inventory",
                ],
            }
        ],
    }
