"""The ordered list of steps for one stack; setup runs it forwards, teardown backwards."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ddcustom.device.metrics import CUSTOM_METRICS
from ddcustom.tooling.cloud import policies
from ddcustom.tooling.cloud.behaviors import cloud_behaviors
from ddcustom.tooling.cloud.deployment import DeploymentStep
from ddcustom.tooling.cloud.fleet import FleetAlarmStep, FleetMetricStep, IndexingStep
from ddcustom.tooling.cloud.fleet_index import REPORTED
from ddcustom.tooling.cloud.lambda_steps import IOT_SERVICE
from ddcustom.tooling.cloud.options import CloudOptions
from ddcustom.tooling.cloud.prevalence_steps import prevalence_steps
from ddcustom.tooling.cloud.quarantine_steps import (
    IotPolicyAttachmentStep,
    IotPolicyStep,
    policy_owner_sid,
    quarantine_steps,
)
from ddcustom.tooling.cloud.schedule_steps import ScheduleGroupStep
from ddcustom.tooling.cloud.silent_steps import silent_steps
from ddcustom.tooling.cloud.steps import (
    CustomMetricStep,
    EmailSubscriptionStep,
    Env,
    ManagedPolicyStep,
    MitigationActionStep,
    RolePolicyAttachmentStep,
    RoleStep,
    SecurityProfileAttachmentStep,
    SecurityProfileStep,
    SnsTopicStep,
    Step,
    ThingGroupStep,
    TopicRuleStep,
)

if TYPE_CHECKING:
    from ddcustom.device.detect.profile import Profile

TOKEN_EXCHANGE_HINT = (
    "the Greengrass installer creates it with --provision true; name yours with --token-exchange-role"
)


def build_steps(opts: CloudOptions, env: Env, profile: Profile) -> tuple[list[Step], list[str]]:
    """Steps in creation order, and notes (what of the profile stays on the device only)."""
    group_arn = env.arn("iot", f"thinggroup/{opts.thing_group}")
    quarantine_arn = env.arn("iot", f"thinggroup/{opts.quarantine_group_name}")
    topic = SnsTopicStep(opts, env)
    iot_role_arn = env.arn("iam", f"role/{opts.iot_role}", regional=False)
    artifact_document = policies.artifact_policy(
        opts.bucket, env.region, env.account, opts.component, env.partition
    )
    artifact = ManagedPolicyStep(
        opts, env, opts.artifact_policy, artifact_document, f"Read the {opts.component} artifacts (ddcustom)"
    )
    steps: list[Step] = [
        ThingGroupStep(opts, opts.thing_group, "Greengrass core devices running ddcustom"),
        ThingGroupStep(opts, opts.quarantine_group_name, "Devices quarantined after a cryptomining alert"),
        topic,
    ]
    if opts.email:
        steps.append(EmailSubscriptionStep(topic.topic_arn, opts.email))
    steps += [
        RoleStep(
            opts,
            opts.iot_role,
            # the rule and the security profile publish with it (the profile ARN also without Detect,
            # so that the role stays the same when Detect comes or goes)
            policies.trust_policy(
                IOT_SERVICE,
                env.account,
                [
                    env.arn("iot", f"rule/{opts.topic_rule}"),
                    env.arn("iot", f"securityprofile/{opts.security_profile}"),
                ],
            ),
            "publish-alerts",
            policies.sns_publish_policy(topic.topic_arn),
        ),
        TopicRuleStep(
            opts,
            opts.topic_rule,
            f"SELECT * FROM '{opts.alert_topic_filter()}'",
            [{"sns": {"targetArn": topic.topic_arn, "roleArn": iot_role_arn, "messageFormat": "RAW"}}],
            "on-device ddcustom alerts to SNS",
        ),
        artifact,
        RolePolicyAttachmentStep(opts.token_exchange_role, artifact.arn, TOKEN_EXCHANGE_HINT),
    ]
    notes: list[str] = []
    if opts.quarantine:
        steps += quarantine_steps(opts, env)
        notes += [
            f"quarantine behavior {name!r} is not in profile {profile.name!r}: it never quarantines"
            for name in opts.quarantine_behaviors
            if name not in {behavior.name for behavior in profile.behaviors}
        ]
    if opts.quarantine_policy:
        document = policies.quarantine_iot_policy(
            env.arn("iot", "topic/"),
            str(opts.merge_configuration.get("AlertTopic", "ddcustom/{thingName}/alerts")),
            policy_owner_sid(opts),
        )
        steps += [IotPolicyStep(opts, document), IotPolicyAttachmentStep(opts, quarantine_arn)]
    if opts.fleet:
        steps += [
            IndexingStep(opts),
            FleetMetricStep(
                opts, opts.fleet_metric_in_alarm, f"{REPORTED}inAlarm:true", "ddcustom devices in alarm"
            ),
            FleetMetricStep(
                opts, opts.fleet_metric_reporting, f"{REPORTED}alarmCount>=0", "ddcustom devices reporting"
            ),
            FleetAlarmStep(opts, topic.topic_arn),
        ]
    if opts.silent_check_on or opts.prevalence:
        steps.append(ScheduleGroupStep(opts, env))
    if opts.silent_check_on:
        steps += silent_steps(opts, env, topic.topic_arn)
    if opts.prevalence:
        steps += prevalence_steps(opts, env, topic.topic_arn)
    if opts.detect:
        behaviors, detect_notes = cloud_behaviors(profile)
        notes += detect_notes
        steps += [CustomMetricStep(opts, m.name, m.cloud_type, m.description) for m in CUSTOM_METRICS]
        steps += [
            SecurityProfileStep(opts, behaviors, topic.topic_arn, iot_role_arn),
            SecurityProfileAttachmentStep(opts, group_arn),
            RoleStep(
                opts,
                opts.mitigation_role,
                policies.trust_policy(
                    IOT_SERVICE, env.account, [env.arn("iot", f"mitigationaction/{opts.mitigation_action}")]
                ),
                "add-to-quarantine",
                policies.add_to_group_policy(quarantine_arn, env.arn("iot", "thing/*")),
                detect=True,
            ),
            MitigationActionStep(opts, env.arn("iam", f"role/{opts.mitigation_role}", regional=False)),
        ]
    steps.append(DeploymentStep(opts, env, group_arn))
    return steps, notes
