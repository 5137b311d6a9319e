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


def quarantine_function_policy(group_arn: str, things_arn: str, log_group_arn: str) -> dict:
    """What the quarantine function needs and nothing more: look up and record on things, add them to the
    one quarantine group, write to its own log group (setup creates the group, so no CreateLogGroup)."""
    return {
        "Version": VERSION,
        "Statement": [
            {"Effect": "Allow", "Action": "iot:AddThingToThingGroup", "Resource": [group_arn, things_arn]},
            {
                "Effect": "Allow",
                "Action": ["iot:ListThingGroupsForThing", "iot:UpdateThing"],
                "Resource": things_arn,
            },
            {
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": f"{log_group_arn}:*",
            },
        ],
    }


def quarantine_iot_policy(topic_arn_prefix: str, alert_topic: str, stack_sid: str) -> dict:
    """IoT policy for the quarantine thing group: denies every publish except the device's own reserved
    topics ($aws/things/<thing>/..., where Greengrass deployments (jobs, the deployment shadow), Device
    Defender reports and shadows travel) and its own alert topic. Subscribe, receive, connect and the
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
                ],
            }
        ],
    }
