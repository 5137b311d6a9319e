"""The ordered list of steps for one stack; setup runs it forwards, teardown backwards."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ddcustom.cloud import policies
from ddcustom.cloud.behaviors import cloud_behaviors
from ddcustom.cloud.deployment import DeploymentStep
from ddcustom.cloud.options import CloudOptions
from ddcustom.cloud.steps import (
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
from ddcustom.metrics import CUSTOM_METRICS

if TYPE_CHECKING:
    from ddcustom.detect.profile import Profile

IOT_SERVICE = "iot.amazonaws.com"
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
        TopicRuleStep(opts, topic.topic_arn, iot_role_arn),
        artifact,
        RolePolicyAttachmentStep(opts.token_exchange_role, artifact.arn, TOKEN_EXCHANGE_HINT),
    ]
    notes: list[str] = []
    if opts.detect:
        behaviors, notes = cloud_behaviors(profile)
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
