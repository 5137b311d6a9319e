"""Idempotent provisioning steps: each looks first (read-only), then says which calls create or remove it.

A step never calls a mutating API itself: it returns ``Call`` values, which the runner makes or, for
``--dry-run``, prints. Ownership is the stack tag written at creation time; what is not tagged by this
stack is never changed or removed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Optional

from botocore.exceptions import ClientError

from ddcustom.tooling.cloud.options import TAG_KEY, CloudOptions
from ddcustom.tooling.cloud.policies import as_json

# service key -> client; "iot-detect" is the iot client used for Device Defender Detect calls.
Clients = Callable[[str], Any]

NOT_FOUND = frozenset({"ResourceNotFoundException", "NoSuchEntity", "NotFound", "NotFoundException"})


class Status(Enum):
    MISSING = "missing"  # setup creates it
    CHANGED = "changed"  # ours (or an account setting) but not as these options want it: setup updates it
    OWNED = "owned"  # exists and carries this stack's tag: setup keeps it, teardown removes it
    PRESENT = "present"  # exists, not this stack's (or goes with its parent): used as is, never removed


class Conflict(Exception):
    """The resource exists but not as this stack would make it; setup stops before changing anything."""


@dataclass(frozen=True)
class Call:
    service: str
    operation: str
    params: dict[str, Any]
    tolerate: frozenset[str] = frozenset()  # error codes that mean "already done"

    def describe(self) -> str:
        service = "iot" if self.service in ("iot-detect", "iot-fleet") else self.service
        return f"{service} {self.operation} {json.dumps(self.params, sort_keys=True, default=_printable)}"


def _printable(value: Any) -> str:
    """A zip archive is printed as its size and hash (what CodeSha256 will be), not as bytes."""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes, sha256 {code_sha256(value)}>"
    return str(value)


def code_sha256(data: bytes) -> str:
    """Lambda's CodeSha256: the base64 SHA-256 of the deployment package."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


@dataclass(frozen=True)
class Env:
    """Where the stack lives: from STS GetCallerIdentity and the region option."""

    account: str
    region: str
    partition: str = "aws"

    def arn(self, service: str, resource: str, regional: bool = True) -> str:
        region = self.region if regional else ""
        return f"arn:{self.partition}:{service}:{region}:{self.account}:{resource}"


class Step:
    label = ""
    detect = False  # part of Device Defender Detect: skipped where the account has no Detect
    removed_with_parent = False  # an attachment or subscription: teardown of its parent removes it

    def check(self, aws: Clients) -> Status:
        """Read-only: what setup has to do. Raises Conflict when it cannot go on."""
        raise NotImplementedError

    def owned(self, aws: Clients) -> bool:
        """Read-only: does teardown remove it (exists and tagged by this stack)?"""
        return False

    def create(self) -> list[Call]:
        """The calls that make it (after check() said MISSING or CHANGED)."""
        raise NotImplementedError

    def planned(self) -> list[Call]:
        """The calls that would make it in an empty account, without any look-up (``setup --plan``)."""
        return self.create()

    def remove(self, aws: Clients) -> list[Call]:
        return []


class OwnedStep(Step):
    """A resource setup makes and marks as this stack's (a tag, or a mark in its description).
    ``_find`` reads it (None: not there), ``_ours`` looks for the mark: one without it is a conflict for
    setup and is left alone by teardown. ``_compare`` says what setup does with one of ours."""

    opts: CloudOptions

    def _find(self, aws: Clients) -> Any:
        raise NotImplementedError

    def _ours(self, aws: Clients, found: Any) -> bool:
        raise NotImplementedError

    def _compare(self, aws: Clients, found: Any) -> Status:
        """OWNED when as these options want it, CHANGED when setup updates it; else raises Conflict."""
        return Status.OWNED

    def check(self, aws: Clients) -> Status:
        found = self._find(aws)
        if found is None:
            return Status.MISSING
        if not self._ours(aws, found):
            raise _not_ours(self.label, self.opts)
        return self._compare(aws, found)

    def owned(self, aws: Clients) -> bool:
        found = self._find(aws)
        return found is not None and self._ours(aws, found)


class AttachmentStep(Step):
    """An attachment, subscription or permission: teardown of its parent removes it. ``_attached``
    looks; a parent that is not there yet means it is missing too."""

    removed_with_parent = True

    def _attached(self, aws: Clients) -> bool:
        raise NotImplementedError

    def check(self, aws: Clients) -> Status:
        try:
            attached = self._attached(aws)
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                return Status.MISSING
            raise
        return Status.PRESENT if attached else Status.MISSING


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def _or_none(read: Callable[[], Any], also: frozenset[str] = frozenset()) -> Optional[dict[str, Any]]:
    """``dict(read())``, or None where the resource is not there (a NOT_FOUND code, or one in ``also``)."""
    try:
        return dict(read())
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND | also:
            return None
        raise


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _has_tag(tags: Optional[list[dict[str, str]]], opts: CloudOptions) -> bool:
    return any(t.get("Key") == TAG_KEY and t.get("Value") == opts.stack for t in tags or [])


def _document(value: Any) -> Any:
    """IAM returns policy documents as dicts, or as (URL-encoded) JSON text."""
    if isinstance(value, str):
        return json.loads(urllib.parse.unquote(value))
    return value


def _not_ours(what: str, opts: CloudOptions) -> Conflict:
    return Conflict(
        f"{what} already exists and is not tagged {TAG_KEY}={opts.stack}: it was not made by this stack. "
        "Remove or rename it, or choose another --stack."
    )


def _changed(what: str, differs: str, opts: CloudOptions) -> Conflict:
    """Ours, but not as these options would make it: ``differs`` says how ("another document ...")."""
    return Conflict(f"{what} exists with {differs}; run `ddcustom cloud teardown --stack {opts.stack}` first")


# ---- IoT thing groups: used as they are when they exist, created (and owned) when they do not ----


class ThingGroupStep(Step):
    def __init__(self, opts: CloudOptions, name: str, description: str) -> None:
        self.opts, self.name, self.description = opts, name, description
        self.label = f"IoT thing group {name}"

    def _attributes(self, aws: Clients) -> Optional[dict[str, str]]:
        found = _or_none(lambda: aws("iot").describe_thing_group(thingGroupName=self.name))
        if found is None:
            return None
        return dict(found.get("thingGroupProperties", {}).get("attributePayload", {}).get("attributes", {}))

    def check(self, aws: Clients) -> Status:
        attributes = self._attributes(aws)
        if attributes is None:
            return Status.MISSING
        return Status.OWNED if attributes.get(TAG_KEY) == self.opts.stack else Status.PRESENT

    def owned(self, aws: Clients) -> bool:
        # IoT tags are written too, but the attribute is readable with the describe call itself.
        return self.check(aws) is Status.OWNED

    def create(self) -> list[Call]:
        properties = {
            "thingGroupDescription": self.description,
            "attributePayload": {"attributes": dict(self.opts.tags)},
        }
        params = {
            "thingGroupName": self.name,
            "thingGroupProperties": properties,
            "tags": _tag_list(self.opts.tags),
        }
        return [Call("iot", "CreateThingGroup", params)]

    def remove(self, aws: Clients) -> list[Call]:
        return [Call("iot", "DeleteThingGroup", {"thingGroupName": self.name})]


# ---- SNS ----


class SnsTopicStep(OwnedStep):
    def __init__(self, opts: CloudOptions, env: Env) -> None:
        self.opts = opts
        self.topic_arn = env.arn("sns", opts.sns_topic)
        self.label = f"SNS topic {opts.sns_topic}"

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        return _or_none(lambda: aws("sns").get_topic_attributes(TopicArn=self.topic_arn))

    def _ours(self, aws: Clients, found: Any) -> bool:
        return _has_tag(aws("sns").list_tags_for_resource(ResourceArn=self.topic_arn).get("Tags"), self.opts)

    def create(self) -> list[Call]:
        return [Call("sns", "CreateTopic", {"Name": self.opts.sns_topic, "Tags": _tag_list(self.opts.tags)})]

    def remove(self, aws: Clients) -> list[Call]:
        return [Call("sns", "DeleteTopic", {"TopicArn": self.topic_arn})]  # its subscriptions go with it


class EmailSubscriptionStep(AttachmentStep):
    """Removed together with the topic; SNS sends a confirmation e-mail first."""

    def __init__(self, topic_arn: str, email: str) -> None:
        self.topic_arn, self.email = topic_arn, email
        self.label = f"SNS e-mail subscription {email}"

    def _attached(self, aws: Clients) -> bool:
        pages = aws("sns").get_paginator("list_subscriptions_by_topic").paginate(TopicArn=self.topic_arn)
        subscriptions = [s for page in pages for s in page.get("Subscriptions", [])]
        return any(s.get("Protocol") == "email" and s.get("Endpoint") == self.email for s in subscriptions)

    def create(self) -> list[Call]:
        params = {"TopicArn": self.topic_arn, "Protocol": "email", "Endpoint": self.email}
        return [Call("sns", "Subscribe", params)]


# ---- IAM ----


class RoleStep(OwnedStep):
    """A role with a trust policy (one service principal) and one inline policy."""

    def __init__(
        self,
        opts: CloudOptions,
        name: str,
        trust: dict,
        policy_name: str,
        policy: dict,
        detect: bool = False,
    ) -> None:
        self.opts, self.name, self.trust = opts, name, trust
        self.policy_name, self.policy, self.detect = policy_name, policy, detect
        self.label = f"IAM role {name}"

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        return _or_none(lambda: aws("iam").get_role(RoleName=self.name)["Role"])

    def _ours(self, aws: Clients, found: Any) -> bool:
        return _has_tag(found.get("Tags"), self.opts)

    def _compare(self, aws: Clients, found: Any) -> Status:
        inline = _or_none(lambda: aws("iam").get_role_policy(RoleName=self.name, PolicyName=self.policy_name))
        trust = _document(found.get("AssumeRolePolicyDocument"))
        policy = None if inline is None else _document(inline["PolicyDocument"])
        if trust != self.trust or policy != self.policy:
            raise _changed(self.label, "another trust or permission policy", self.opts)
        return Status.OWNED

    def create(self) -> list[Call]:
        role = {
            "RoleName": self.name,
            "AssumeRolePolicyDocument": as_json(self.trust),
            "Description": f"ddcustom stack {self.opts.stack}: {self.policy_name}",
            "Tags": _tag_list(self.opts.tags),
        }
        policy = {
            "RoleName": self.name,
            "PolicyName": self.policy_name,
            "PolicyDocument": as_json(self.policy),
        }
        return [Call("iam", "CreateRole", role), Call("iam", "PutRolePolicy", policy)]

    def remove(self, aws: Clients) -> list[Call]:
        iam = aws("iam")
        calls = [
            Call("iam", "DeleteRolePolicy", {"RoleName": self.name, "PolicyName": name})
            for name in iam.list_role_policies(RoleName=self.name)["PolicyNames"]
        ]
        calls += [
            Call("iam", "DetachRolePolicy", {"RoleName": self.name, "PolicyArn": attached["PolicyArn"]})
            for attached in iam.list_attached_role_policies(RoleName=self.name)["AttachedPolicies"]
        ]
        return [*calls, Call("iam", "DeleteRole", {"RoleName": self.name})]


class ManagedPolicyStep(OwnedStep):
    def __init__(self, opts: CloudOptions, env: Env, name: str, document: dict, description: str) -> None:
        self.opts, self.name, self.document, self.description = opts, name, document, description
        self.arn = env.arn("iam", f"policy/{name}", regional=False)
        self.label = f"IAM policy {name}"

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        return _or_none(lambda: aws("iam").get_policy(PolicyArn=self.arn)["Policy"])

    def _ours(self, aws: Clients, found: Any) -> bool:
        return _has_tag(found.get("Tags"), self.opts)

    def _compare(self, aws: Clients, found: Any) -> Status:
        version = aws("iam").get_policy_version(PolicyArn=self.arn, VersionId=found["DefaultVersionId"])
        if _document(version["PolicyVersion"]["Document"]) != self.document:
            raise _changed(self.label, "another document (another --bucket or --component?)", self.opts)
        return Status.OWNED

    def create(self) -> list[Call]:
        params = {
            "PolicyName": self.name,
            "PolicyDocument": as_json(self.document),
            "Description": self.description,
            "Tags": _tag_list(self.opts.tags),
        }
        return [Call("iam", "CreatePolicy", params)]

    def remove(self, aws: Clients) -> list[Call]:
        iam = aws("iam")
        entities = iam.list_entities_for_policy(PolicyArn=self.arn)
        calls = [
            Call("iam", "DetachRolePolicy", {"RoleName": r["RoleName"], "PolicyArn": self.arn})
            for r in entities.get("PolicyRoles", [])
        ]
        calls += [
            Call("iam", "DetachUserPolicy", {"UserName": u["UserName"], "PolicyArn": self.arn})
            for u in entities.get("PolicyUsers", [])
        ]
        calls += [
            Call("iam", "DetachGroupPolicy", {"GroupName": g["GroupName"], "PolicyArn": self.arn})
            for g in entities.get("PolicyGroups", [])
        ]
        calls += [
            Call("iam", "DeletePolicyVersion", {"PolicyArn": self.arn, "VersionId": v["VersionId"]})
            for v in iam.list_policy_versions(PolicyArn=self.arn)["Versions"]
            if not v["IsDefaultVersion"]
        ]
        return [*calls, Call("iam", "DeletePolicy", {"PolicyArn": self.arn})]


class RolePolicyAttachmentStep(Step):
    """Attaches a managed policy to a role that is not ours (the token exchange role)."""

    removed_with_parent = True

    def __init__(self, role: str, policy_arn: str, hint: str) -> None:
        self.role, self.policy_arn, self.hint = role, policy_arn, hint
        self.label = f"policy {policy_arn.rsplit('/', 1)[-1]} on IAM role {role}"

    def check(self, aws: Clients) -> Status:
        iam = aws("iam")
        try:
            pages = iam.get_paginator("list_attached_role_policies").paginate(RoleName=self.role)
            attached = [p["PolicyArn"] for page in pages for p in page["AttachedPolicies"]]
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                raise Conflict(f"IAM role {self.role} does not exist: {self.hint}") from None
            raise
        return Status.PRESENT if self.policy_arn in attached else Status.MISSING

    def create(self) -> list[Call]:
        return [Call("iam", "AttachRolePolicy", {"RoleName": self.role, "PolicyArn": self.policy_arn})]


# ---- IoT topic rule ----


class TopicRuleStep(OwnedStep):
    """An IoT topic rule; its description carries the owner mark. A rule of ours with another SQL or
    actions (another AlertTopic, other quarantine behaviors) is replaced."""

    def __init__(self, opts: CloudOptions, name: str, sql: str, actions: list[dict], purpose: str) -> None:
        self.opts, self.name = opts, name
        self.payload = {
            "sql": sql,
            "description": f"{TAG_KEY}={opts.stack}: {purpose}",
            "actions": actions,
            "ruleDisabled": False,
            "awsIotSqlVersion": "2016-03-23",
        }
        self.label = f"IoT topic rule {name}"
        self.replace = False  # set by check(): ours, with another SQL or actions

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        return _or_none(
            lambda: aws("iot").get_topic_rule(ruleName=self.name)["rule"],
            also=frozenset({"UnauthorizedException"}),  # IoT answers it too for a missing rule
        )

    def _ours(self, aws: Clients, found: Any) -> bool:
        # The owner mark is in the description, which GetTopicRule returns (the IoT tags are written too).
        return bool(found.get("description") == self.payload["description"])

    def _compare(self, aws: Clients, found: Any) -> Status:
        self.replace = (
            found.get("sql") != self.payload["sql"] or found.get("actions") != self.payload["actions"]
        )
        return Status.CHANGED if self.replace else Status.OWNED

    def create(self) -> list[Call]:
        if self.replace:
            return [
                Call("iot", "ReplaceTopicRule", {"ruleName": self.name, "topicRulePayload": self.payload})
            ]
        params = {
            "ruleName": self.name,
            "topicRulePayload": self.payload,
            "tags": urllib.parse.urlencode(self.opts.tags),
        }
        return [Call("iot", "CreateTopicRule", params)]

    def remove(self, aws: Clients) -> list[Call]:
        return [Call("iot", "DeleteTopicRule", {"ruleName": self.name})]


# ---- Device Defender Detect ----


def _iot_tagged(aws: Clients, arn: str, opts: CloudOptions) -> bool:
    pages = aws("iot-detect").get_paginator("list_tags_for_resource").paginate(resourceArn=arn)
    return _has_tag([t for page in pages for t in page.get("tags", [])], opts)


class CustomMetricStep(Step):
    """A custom metric made by hand before (as the article does) is used as is and kept by teardown."""

    detect = True

    def __init__(self, opts: CloudOptions, name: str, metric_type: str, description: str) -> None:
        self.opts, self.name, self.metric_type, self.description = opts, name, metric_type, description
        self.label = f"Device Defender custom metric {name}"

    def _metric(self, aws: Clients) -> Optional[dict[str, Any]]:
        return _or_none(lambda: aws("iot-detect").describe_custom_metric(metricName=self.name))

    def check(self, aws: Clients) -> Status:
        metric = self._metric(aws)
        if metric is None:
            return Status.MISSING
        if metric.get("metricType") != self.metric_type:
            raise Conflict(
                f"{self.label} exists with type {metric.get('metricType')!r}, the component sends "
                f"{self.metric_type!r}; a metric's type cannot change: delete it first"
            )
        return Status.OWNED if _iot_tagged(aws, metric["metricArn"], self.opts) else Status.PRESENT

    def owned(self, aws: Clients) -> bool:
        metric = self._metric(aws)
        return metric is not None and _iot_tagged(aws, metric["metricArn"], self.opts)

    def create(self) -> list[Call]:
        params = {
            "metricName": self.name,
            "displayName": self.description[:128],
            "metricType": self.metric_type,
            "tags": _tag_list(self.opts.tags),
        }
        return [Call("iot-detect", "CreateCustomMetric", params)]

    def remove(self, aws: Clients) -> list[Call]:
        return [Call("iot-detect", "DeleteCustomMetric", {"metricName": self.name})]


class SecurityProfileStep(OwnedStep):
    detect = True

    def __init__(self, opts: CloudOptions, behaviors: list[dict], topic_arn: str, role_arn: str) -> None:
        self.opts, self.behaviors = opts, behaviors
        self.alert_targets = {"SNS": {"alertTargetArn": topic_arn, "roleArn": role_arn}}
        self.label = f"Device Defender security profile {opts.security_profile}"

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        name = self.opts.security_profile
        return _or_none(lambda: aws("iot-detect").describe_security_profile(securityProfileName=name))

    def _ours(self, aws: Clients, found: Any) -> bool:
        return _iot_tagged(aws, found["securityProfileArn"], self.opts)

    def _compare(self, aws: Clients, found: Any) -> Status:
        if found.get("behaviors", []) != self.behaviors or found.get("alertTargets") != self.alert_targets:
            raise _changed(self.label, "other behaviors or alert target (profile edited since?)", self.opts)
        return Status.OWNED

    def create(self) -> list[Call]:
        params = {
            "securityProfileName": self.opts.security_profile,
            "securityProfileDescription": f"ddcustom profile {self.opts.profile!r}, as on the devices",
            "behaviors": self.behaviors,
            "alertTargets": self.alert_targets,
            "tags": _tag_list(self.opts.tags),
        }
        return [Call("iot-detect", "CreateSecurityProfile", params)]

    def remove(self, aws: Clients) -> list[Call]:
        name = self.opts.security_profile
        detach = [
            Call(
                "iot-detect",
                "DetachSecurityProfile",
                {"securityProfileName": name, "securityProfileTargetArn": arn},
            )
            for arn in _profile_targets(aws, name)
        ]
        return [*detach, Call("iot-detect", "DeleteSecurityProfile", {"securityProfileName": name})]


def _profile_targets(aws: Clients, profile: str) -> list[str]:
    paginator = aws("iot-detect").get_paginator("list_targets_for_security_profile")
    pages = paginator.paginate(securityProfileName=profile)
    return [t["arn"] for page in pages for t in page.get("securityProfileTargets", [])]


class SecurityProfileAttachmentStep(AttachmentStep):
    """Detached by the security profile's removal."""

    detect = True

    def __init__(self, opts: CloudOptions, group_arn: str) -> None:
        self.opts, self.group_arn = opts, group_arn
        self.label = f"security profile {opts.security_profile} on {group_arn.rsplit('/', 1)[-1]}"

    def _attached(self, aws: Clients) -> bool:
        return self.group_arn in _profile_targets(aws, self.opts.security_profile)

    def create(self) -> list[Call]:
        params = {
            "securityProfileName": self.opts.security_profile,
            "securityProfileTargetArn": self.group_arn,
        }
        return [Call("iot-detect", "AttachSecurityProfile", params)]


class MitigationActionStep(OwnedStep):
    """ADD_THINGS_TO_THING_GROUP into the quarantine group, for Detect alarms (console or API)."""

    detect = True

    def __init__(self, opts: CloudOptions, role_arn: str) -> None:
        self.opts, self.role_arn = opts, role_arn
        self.params = {
            "addThingsToThingGroupParams": {
                "thingGroupNames": [opts.quarantine_group_name],
                "overrideDynamicGroups": False,
            }
        }
        self.label = f"Device Defender mitigation action {opts.mitigation_action}"

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        return _or_none(
            lambda: aws("iot-detect").describe_mitigation_action(actionName=self.opts.mitigation_action)
        )

    def _ours(self, aws: Clients, found: Any) -> bool:
        return _iot_tagged(aws, found["actionArn"], self.opts)

    def _compare(self, aws: Clients, found: Any) -> Status:
        if found.get("actionParams") != self.params or found.get("roleArn") != self.role_arn:
            raise _changed(self.label, "another group or role (another --quarantine-group?)", self.opts)
        return Status.OWNED

    def create(self) -> list[Call]:
        params = {
            "actionName": self.opts.mitigation_action,
            "roleArn": self.role_arn,
            "actionParams": self.params,
            "tags": _tag_list(self.opts.tags),
        }
        return [Call("iot-detect", "CreateMitigationAction", params)]

    def remove(self, aws: Clients) -> list[Call]:
        return [Call("iot-detect", "DeleteMitigationAction", {"actionName": self.opts.mitigation_action})]
