"""The one mechanism every function of the stack is made with: a handler of this package packaged
deterministically, its execution role (least privilege, one per function), its log group, and the
permissions that let an IoT rule invoke it.

A function is described once (``FunctionSpec``); ``function_steps`` gives its log group, role and function
in creation order. The quarantine, silent-device and prevalence functions are three specs.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ddcustom.tooling.cloud import policies
from ddcustom.tooling.cloud.options import TAG_KEY, CloudOptions
from ddcustom.tooling.cloud.steps import (
    AttachmentStep,
    Call,
    Clients,
    Env,
    OwnedStep,
    RoleStep,
    Status,
    Step,
    TopicRuleStep,
    _changed,
    _or_none,
    code_sha256,
)

RUNTIME = "python3.13"  # a current Lambda Python runtime (supported into 2029)
LAMBDA_SERVICE = "lambda.amazonaws.com"
IOT_SERVICE = "iot.amazonaws.com"
LOG_RETENTION_DAYS = 30
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so that the same handler gives the same package and hash
SOURCE_ROOT = Path(__file__).parents[2]  # src/ddcustom

# What every handler package carries besides its own files: the package root (its version) and the
# helpers the handlers share (stdlib and boto3 only).
COMMON_FILES = {
    "ddcustom/__init__.py": "__init__.py",
    "ddcustom/tooling/__init__.py": "tooling/__init__.py",
    "ddcustom/tooling/cloud/__init__.py": "tooling/cloud/__init__.py",
    "ddcustom/tooling/cloud/lambda_common.py": "tooling/cloud/lambda_common.py",
}


@dataclass(frozen=True)
class FunctionSpec:
    """A Lambda function of the stack. ``files``: package entry -> source below src/ddcustom; the handler
    module is the first entry, at the top of the package."""

    name: str
    role: str
    files: Mapping[str, str]
    description: str
    environment: Mapping[str, str] = field(default_factory=dict)
    timeout: int = 30
    memory: int = 128

    @property
    def handler(self) -> str:
        module = next(iter(self.files)).removesuffix(".py")
        return f"{module}.handler"

    @property
    def log_group(self) -> str:
        return f"/aws/lambda/{self.name}"

    def package(self) -> bytes:
        return package({**self.files, **COMMON_FILES})


def package(files: Mapping[str, str]) -> bytes:
    """A deployment package of ``files`` (entry -> source below src/ddcustom), byte for byte the same for
    the same sources: setup compares its hash with the function's CodeSha256."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            entry = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, (SOURCE_ROOT / files[name]).read_bytes())
    return buffer.getvalue()


def function_steps(
    opts: CloudOptions, env: Env, spec: FunctionSpec, policy_name: str, statements: list[dict[str, Any]]
) -> list[Step]:
    """The function's log group, its role (``statements`` and writing its own log group, nothing else),
    and the function; in creation order."""
    log_group = LogGroupStep(opts, env, spec.log_group)
    role = RoleStep(
        opts,
        spec.role,
        policies.service_trust_policy(LAMBDA_SERVICE),
        policy_name,
        policies.function_policy(statements, log_group.arn),
    )
    role_arn = env.arn("iam", f"role/{spec.role}", regional=False)
    return [log_group, role, LambdaFunctionStep(opts, spec, role_arn)]


class LogGroupStep(OwnedStep):
    """A function's log group, made by setup (tagged, with a retention) rather than by Lambda on its
    first run, so that teardown removes it and the function needs no logs:CreateLogGroup."""

    def __init__(self, opts: CloudOptions, env: Env, name: str) -> None:
        self.opts, self.name = opts, name
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
    """A handler of this package as a function. Another handler (a newer ddcustom) or other settings
    are updated in place; another role, runtime or handler name is a conflict."""

    def __init__(self, opts: CloudOptions, spec: FunctionSpec, role_arn: str) -> None:
        self.opts, self.spec, self.role_arn = opts, spec, role_arn
        self.name = spec.name
        self.package = spec.package()
        self.environment = dict(spec.environment)
        self.label = f"Lambda function {self.name}"
        self.updates: list[Call] = []  # set by check(): what an existing function of ours lacks

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        self.updates = []  # a new look: what an earlier one found to update no longer counts
        return _or_none(lambda: aws("lambda").get_function(FunctionName=self.name))

    def _ours(self, aws: Clients, found: Any) -> bool:
        return bool(found.get("Tags", {}).get(TAG_KEY) == self.opts.stack)

    def _compare(self, aws: Clients, found: Any) -> Status:
        config = found.get("Configuration", {})
        wanted = [self.role_arn, RUNTIME, self.spec.handler]
        if [config.get(key) for key in ("Role", "Runtime", "Handler")] != wanted:
            raise _changed(self.label, "another role, runtime or handler", self.opts)
        settings = {"Timeout": self.spec.timeout, "MemorySize": self.spec.memory}
        variables = config.get("Environment", {}).get("Variables", {})
        if variables != self.environment or any(config.get(k) != v for k, v in settings.items()):
            params = {"FunctionName": self.name, "Environment": {"Variables": self.environment}, **settings}
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
            "Handler": self.spec.handler,
            "Code": {"ZipFile": self.package},
            "Description": f"ddcustom stack {self.opts.stack}: {self.spec.description}",
            "Timeout": self.spec.timeout,
            "MemorySize": self.spec.memory,
            "Environment": {"Variables": self.environment},
            "Tags": dict(self.opts.tags),
        }
        return [Call("lambda", "CreateFunction", params)]

    def remove(self, aws: Clients) -> list[Call]:
        return [Call("lambda", "DeleteFunction", {"FunctionName": self.name})]  # its permissions go with it


def rule_to_function(
    opts: CloudOptions, env: Env, function: str, rule: str, sql: str, purpose: str
) -> list[Step]:
    """An IoT topic rule whose one action invokes ``function``, and IoT's permission to, for that rule."""
    action = {"lambda": {"functionArn": env.arn("lambda", f"function:{function}")}}
    return [
        RuleInvokePermissionStep(env, function, rule),
        TopicRuleStep(opts, rule, sql, [action], purpose),
    ]


class RuleInvokePermissionStep(AttachmentStep):
    """Lets IoT invoke a function, only for one rule of this account (aws:SourceArn and
    aws:SourceAccount, AWS's confused-deputy protection). Removed with the function."""

    def __init__(self, env: Env, function: str, rule: str) -> None:
        self.function = function
        self.statement_id = f"iot-rule-{rule}"
        self.rule_arn = env.arn("iot", f"rule/{rule}")
        self.account = env.account
        self.label = f"permission for IoT rule {rule} to invoke {function}"

    def _attached(self, aws: Clients) -> bool:
        # NOT_FOUND: no function yet, or a function without a policy
        policy = aws("lambda").get_policy(FunctionName=self.function)["Policy"]
        statements = json.loads(policy).get("Statement", [])
        return any(statement.get("Sid") == self.statement_id for statement in statements)

    def create(self) -> list[Call]:
        params = {
            "FunctionName": self.function,
            "StatementId": self.statement_id,
            "Action": "lambda:InvokeFunction",
            "Principal": IOT_SERVICE,
            "SourceArn": self.rule_arn,
            "SourceAccount": self.account,
        }
        return [Call("lambda", "AddPermission", params)]
