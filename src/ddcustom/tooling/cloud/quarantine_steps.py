"""Provisioning steps of automatic quarantine: the handler as a Lambda function, its log group, IoT's
permission to invoke it, and the optional IoT policy on the quarantine thing group.

The topic rule that feeds the function and the function's role are generic steps (steps.py).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Optional

from ddcustom.tooling.cloud.options import TAG_KEY, CloudOptions
from ddcustom.tooling.cloud.policies import as_json
from ddcustom.tooling.cloud.steps import (
    NOT_FOUND,
    AttachmentStep,
    Call,
    Clients,
    Env,
    OwnedStep,
    Status,
    _changed,
    _or_none,
    _tag_list,
    code_sha256,
)

RUNTIME = "python3.13"  # a current Lambda Python runtime (supported into 2029)
HANDLER = "quarantine.handler"
TIMEOUT_SECONDS = 30
MEMORY_MB = 128
LOG_RETENTION_DAYS = 30
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so that the same handler gives the same package and hash


# The deployment package: the handler, and the alert it reads (the package's own typed event).
PACKAGE_FILES = {
    "quarantine.py": "tooling/cloud/quarantine.py",
    "ddcustom/__init__.py": "__init__.py",
    "ddcustom/device/__init__.py": "device/__init__.py",
    "ddcustom/device/detect/__init__.py": "device/detect/__init__.py",
    "ddcustom/device/detect/events.py": "device/detect/events.py",
}


def quarantine_package() -> bytes:
    """The deployment package (PACKAGE_FILES), byte for byte the same for the same sources."""
    package = Path(__file__).parents[2]  # src/ddcustom
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, source in PACKAGE_FILES.items():
            entry = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, (package / source).read_bytes())
    return buffer.getvalue()


class LogGroupStep(OwnedStep):
    """The function's log group, made by setup (tagged, with a retention) rather than by Lambda on its
    first run, so that teardown removes it and the function needs no logs:CreateLogGroup."""

    def __init__(self, opts: CloudOptions, env: Env) -> None:
        self.opts = opts
        self.name = opts.quarantine_log_group
        self.arn = env.arn("logs", f"log-group:{self.name}")
        self.label = f"CloudWatch Logs log group {self.name}"

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        groups = aws("logs").describe_log_groups(logGroupNamePrefix=self.name).get("logGroups", [])
        return next((dict(group) for group in groups if group.get("logGroupName") == self.name), None)

    def _ours(self, aws: Clients, found: Any) -> bool:
        tags = aws("logs").list_tags_for_resource(resourceArn=self.arn).get("tags", {})
        return bool(tags.get(TAG_KEY) == self.opts.stack)

    def create(self) -> list[Call]:
        retention = {"logGroupName": self.name, "retentionInDays": LOG_RETENTION_DAYS}
        return [
            Call("logs", "CreateLogGroup", {"logGroupName": self.name, "tags": dict(self.opts.tags)}),
            Call("logs", "PutRetentionPolicy", retention),
        ]

    def remove(self, aws: Clients) -> list[Call]:
        return [Call("logs", "DeleteLogGroup", {"logGroupName": self.name})]


class LambdaFunctionStep(OwnedStep):
    """The quarantine handler as a function. Another handler (a newer ddcustom) or other quarantine
    settings are updated in place; another role, runtime or handler name is a conflict."""

    def __init__(self, opts: CloudOptions, role_arn: str) -> None:
        self.opts, self.role_arn = opts, role_arn
        self.name = opts.quarantine_function
        self.package = quarantine_package()
        self.environment = {
            "QUARANTINE_GROUP": opts.quarantine_group_name,
            "QUARANTINE_BEHAVIORS": ",".join(opts.quarantine_behaviors),
        }
        self.label = f"Lambda function {self.name}"
        self.updates: list[Call] = []  # set by check(): what an existing function of ours lacks

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        self.updates = []  # a new look: what an earlier one found to update no longer counts
        return _or_none(lambda: aws("lambda").get_function(FunctionName=self.name))

    def _ours(self, aws: Clients, found: Any) -> bool:
        return bool(found.get("Tags", {}).get(TAG_KEY) == self.opts.stack)

    def _compare(self, aws: Clients, found: Any) -> Status:
        config = found.get("Configuration", {})
        if [config.get(key) for key in ("Role", "Runtime", "Handler")] != [self.role_arn, RUNTIME, HANDLER]:
            raise _changed(self.label, "another role, runtime or handler", self.opts)
        if config.get("Environment", {}).get("Variables", {}) != self.environment:
            params = {"FunctionName": self.name, "Environment": {"Variables": self.environment}}
            self.updates.append(Call("lambda", "UpdateFunctionConfiguration", params))
        if config.get("CodeSha256") != code_sha256(self.package):
            self.updates.append(
                Call("lambda", "UpdateFunctionCode", {"FunctionName": self.name, "ZipFile": self.package})
            )
        return Status.CHANGED if self.updates else Status.OWNED

    def create(self) -> list[Call]:
        if self.updates:
            return list(self.updates)
        params = {
            "FunctionName": self.name,
            "Runtime": RUNTIME,
            "Role": self.role_arn,
            "Handler": HANDLER,
            "Code": {"ZipFile": self.package},
            "Description": f"ddcustom stack {self.opts.stack}: quarantine the thing of an in-alarm alert",
            "Timeout": TIMEOUT_SECONDS,
            "MemorySize": MEMORY_MB,
            "Environment": {"Variables": self.environment},
            "Tags": dict(self.opts.tags),
        }
        return [Call("lambda", "CreateFunction", params)]

    def remove(self, aws: Clients) -> list[Call]:
        return [Call("lambda", "DeleteFunction", {"FunctionName": self.name})]  # its permissions go with it


class LambdaPermissionStep(AttachmentStep):
    """Lets IoT invoke the function, only for this stack's rule in this account (aws:SourceArn and
    aws:SourceAccount, AWS's confused-deputy protection). Removed with the function."""

    def __init__(self, opts: CloudOptions, env: Env) -> None:
        self.opts = opts
        self.statement_id = f"iot-rule-{opts.quarantine_rule}"
        self.rule_arn = env.arn("iot", f"rule/{opts.quarantine_rule}")
        self.account = env.account
        self.label = f"permission for IoT rule {opts.quarantine_rule} to invoke {opts.quarantine_function}"

    def _attached(self, aws: Clients) -> bool:
        # NOT_FOUND: no function yet, or a function without a policy
        policy = aws("lambda").get_policy(FunctionName=self.opts.quarantine_function)["Policy"]
        statements = json.loads(policy).get("Statement", [])
        return any(statement.get("Sid") == self.statement_id for statement in statements)

    def create(self) -> list[Call]:
        params = {
            "FunctionName": self.opts.quarantine_function,
            "StatementId": self.statement_id,
            "Action": "lambda:InvokeFunction",
            "Principal": "iot.amazonaws.com",
            "SourceArn": self.rule_arn,
            "SourceAccount": self.account,
        }
        return [Call("lambda", "AddPermission", params)]


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
