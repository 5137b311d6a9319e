"""Provisioning steps of automatic quarantine: the handler as a Lambda function (lambda_steps.py) with
the IoT rule that feeds it, and the optional IoT policy on the quarantine thing group."""

from __future__ import annotations

import json
from typing import Any, Optional

from ddcustom.tooling.cloud import policies
from ddcustom.tooling.cloud.lambda_steps import (
    COMMON_FILES,
    FunctionSpec,
    function_steps,
    package,
    rule_to_function,
)
from ddcustom.tooling.cloud.options import CloudOptions
from ddcustom.tooling.cloud.policies import as_json
from ddcustom.tooling.cloud.steps import (
    NOT_FOUND,
    AttachmentStep,
    Call,
    Clients,
    Env,
    OwnedStep,
    Status,
    Step,
    _changed,
    _or_none,
    _tag_list,
)

# The deployment package: the handler, and the alert it reads (the package's own typed event).
PACKAGE_FILES = {
    "quarantine.py": "tooling/cloud/quarantine.py",
    "ddcustom/device/__init__.py": "device/__init__.py",
    "ddcustom/device/detect/__init__.py": "device/detect/__init__.py",
    "ddcustom/device/detect/events.py": "device/detect/events.py",
}


def quarantine_spec(opts: CloudOptions) -> FunctionSpec:
    return FunctionSpec(
        name=opts.quarantine_function,
        role=opts.quarantine_function_role,
        files=PACKAGE_FILES,
        description="quarantine the thing of an in-alarm alert",
        environment={
            "QUARANTINE_GROUP": opts.quarantine_group_name,
            "QUARANTINE_BEHAVIORS": ",".join(opts.quarantine_behaviors),
        },
    )


def quarantine_package() -> bytes:
    """The quarantine function's deployment package (what ``quarantine_spec(...).package()`` gives)."""
    return package({**PACKAGE_FILES, **COMMON_FILES})


def quarantine_steps(opts: CloudOptions, env: Env) -> list[Step]:
    """The quarantine function, its role and log group, and the rule that feeds it the in-alarm alerts
    of the quarantine behaviors with the thing named by the topic (``topicThing``)."""
    spec = quarantine_spec(opts)
    behaviors = " OR ".join(f"behavior.name = '{name}'" for name in opts.quarantine_behaviors)
    sql = (
        f"SELECT *, topic({opts.alert_topic_thing_level()}) AS topicThing FROM '{opts.alert_topic_filter()}' "
        f"WHERE violationEventType = 'in-alarm' AND ({behaviors})"
    )
    statements = policies.quarantine_statements(
        env.arn("iot", f"thinggroup/{opts.quarantine_group_name}"), env.arn("iot", "thing/*")
    )
    purpose = "in-alarm alerts of the quarantine behaviors to the quarantine function"
    return [
        *function_steps(opts, env, spec, "quarantine", statements),
        *rule_to_function(opts, env, spec.name, opts.quarantine_rule, sql, purpose),
    ]


def policy_owner_sid(opts: CloudOptions) -> str:
    """The statement id that marks the IoT policy as this stack's (IoT policies have no description)."""
    return "ddcustomQuarantine" + "".join(c for c in opts.stack.title() if c.isalnum())


class IotPolicyStep(OwnedStep):
    """The IoT policy of the quarantine group (--quarantine-policy); detached everywhere on removal."""

    def __init__(self, opts: CloudOptions, document: dict) -> None:
        self.opts, self.document = opts, document
        self.name = opts.quarantine_iot_policy
        self.label = f"IoT policy {self.name}"

    def _find(self, aws: Clients) -> Optional[Any]:
        found = _or_none(lambda: aws("iot").get_policy(policyName=self.name))
        return None if found is None else json.loads(found["policyDocument"])

    def _ours(self, aws: Clients, found: Any) -> bool:
        statements = found.get("Statement", []) if isinstance(found, dict) else []
        return any(s.get("Sid") == policy_owner_sid(self.opts) for s in statements if isinstance(s, dict))

    def _compare(self, aws: Clients, found: Any) -> Status:
        if found != self.document:
            raise _changed(self.label, "another document (another AlertTopic?)", self.opts)
        return Status.OWNED

    def create(self) -> list[Call]:
        params = {
            "policyName": self.name,
            "policyDocument": as_json(self.document),
            "tags": _tag_list(self.opts.tags),
        }
        return [Call("iot", "CreatePolicy", params)]

    def remove(self, aws: Clients) -> list[Call]:
        iot = aws("iot")
        targets = iot.list_targets_for_policy(policyName=self.name).get("targets", [])
        # A target deleted by hand (the quarantine group) may still be listed: nothing to detach there.
        calls = [
            Call("iot", "DetachPolicy", {"policyName": self.name, "target": t}, tolerate=NOT_FOUND)
            for t in targets
        ]
        calls += [
            Call("iot", "DeletePolicyVersion", {"policyName": self.name, "policyVersionId": v["versionId"]})
            for v in iot.list_policy_versions(policyName=self.name).get("policyVersions", [])
            if not v.get("isDefaultVersion")
        ]
        return [*calls, Call("iot", "DeletePolicy", {"policyName": self.name})]


class IotPolicyAttachmentStep(AttachmentStep):
    """The quarantine policy on the quarantine group; detached by the policy's removal."""

    def __init__(self, opts: CloudOptions, group_arn: str) -> None:
        self.opts, self.group_arn = opts, group_arn
        self.label = f"IoT policy {opts.quarantine_iot_policy} on {opts.quarantine_group_name}"

    def _attached(self, aws: Clients) -> bool:
        targets = aws("iot").list_targets_for_policy(policyName=self.opts.quarantine_iot_policy)
        return self.group_arn in targets.get("targets", [])

    def create(self) -> list[Call]:
        params = {"policyName": self.opts.quarantine_iot_policy, "target": self.group_arn}
        return [Call("iot", "AttachPolicy", params)]
