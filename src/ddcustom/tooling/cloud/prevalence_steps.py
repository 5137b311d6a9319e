"""Provisioning steps of prevalence (prevalence.py): the DynamoDB table, the function with its role and
log group, the IoT rule that passes it the devices' inventory messages, and the schedule that runs its
aggregation every minute."""

from __future__ import annotations

from typing import Any, Optional

from ddcustom.tooling.cloud import policies
from ddcustom.tooling.cloud.inventory import THING_LEVEL, TOPIC_FILTER
from ddcustom.tooling.cloud.lambda_steps import FunctionSpec, function_steps, rule_to_function
from ddcustom.tooling.cloud.options import CloudOptions
from ddcustom.tooling.cloud.prevalence_table import table_definition
from ddcustom.tooling.cloud.schedule_steps import rate, scheduled
from ddcustom.tooling.cloud.steps import (
    Call,
    Clients,
    Env,
    OwnedStep,
    Status,
    Step,
    _changed,
    _has_tag,
    _or_none,
    _tag_list,
)

# The handler, and the modules it reads messages, keeps device items and aggregates with.
PACKAGE_FILES = {
    "prevalence.py": "tooling/cloud/prevalence.py",
    "ddcustom/tooling/cloud/inventory.py": "tooling/cloud/inventory.py",
    "ddcustom/tooling/cloud/prevalence_aggregate.py": "tooling/cloud/prevalence_aggregate.py",
    "ddcustom/tooling/cloud/prevalence_state.py": "tooling/cloud/prevalence_state.py",
    "ddcustom/tooling/cloud/prevalence_table.py": "tooling/cloud/prevalence_table.py",
}
TIMEOUT_SECONDS = 300  # an aggregation run stops in time and leaves the rest to the next minute
MEMORY_MB = 256
AGGREGATE_EVERY_MINUTES = 1


def prevalence_spec(opts: CloudOptions, env: Env, topic_arn: str) -> FunctionSpec:
    return FunctionSpec(
        name=opts.prevalence_function,
        role=opts.prevalence_function_role,
        files=PACKAGE_FILES,
        description="which device runs which program; alerts on programs few devices run",
        environment={
            "TABLE": opts.prevalence_table,
            "THING_GROUP": opts.thing_group,
            "THING_GROUP_ARN": env.arn("iot", f"thinggroup/{opts.thing_group}"),
            "ALERT_TOPIC_ARN": topic_arn,
            "RARE_DEVICES": str(opts.rare_devices),
            "RARE_SHARE": f"{opts.rare_share:g}",
            "RARE_MIN_GROUP": str(opts.rare_min_group),
            "STACK": opts.stack,
        },
        timeout=TIMEOUT_SECONDS,
        memory=MEMORY_MB,
    )


def prevalence_steps(opts: CloudOptions, env: Env, topic_arn: str) -> list[Step]:
    spec = prevalence_spec(opts, env, topic_arn)
    table = TableStep(opts, env)
    statements = policies.prevalence_statements(
        table.arn,
        env.arn("iot", "thing/*"),
        topic_arn,
        env.arn("greengrass", "deployments:*"),
    )
    sql = f"SELECT *, topic({THING_LEVEL}) AS topicThing FROM '{TOPIC_FILTER}'"
    purpose = "the devices' inventory messages to the prevalence function"
    return [
        table,
        *function_steps(opts, env, spec, "prevalence", statements),
        *rule_to_function(opts, env, spec.name, opts.inventory_rule, sql, purpose),
        *scheduled(
            opts,
            env,
            spec.name,
            opts.prevalence_schedule_role,
            rate(AGGREGATE_EVERY_MINUTES),
            {"action": "aggregate"},
            f"ddcustom stack {opts.stack}: prevalence counts and rare-program alerts of {opts.thing_group}",
        ),
    ]


class TableStep(OwnedStep):
    """The prevalence table (on-demand). One of ours with other keys or indexes is a conflict; teardown
    deletes it, and with it every inventory it holds."""

    def __init__(self, opts: CloudOptions, env: Env) -> None:
        self.opts = opts
        self.definition = table_definition(opts.prevalence_table)
        self.arn = env.arn("dynamodb", f"table/{opts.prevalence_table}")
        self.label = f"DynamoDB table {opts.prevalence_table}"

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        return _or_none(lambda: aws("dynamodb").describe_table(TableName=self.opts.prevalence_table)["Table"])

    def _ours(self, aws: Clients, found: Any) -> bool:
        tags = aws("dynamodb").list_tags_of_resource(ResourceArn=found.get("TableArn", self.arn)).get("Tags")
        return _has_tag(tags, self.opts)

    def _compare(self, aws: Clients, found: Any) -> Status:
        indexes = {i["IndexName"]: i["KeySchema"] for i in found.get("GlobalSecondaryIndexes", [])}
        wanted = {i["IndexName"]: i["KeySchema"] for i in self.definition["GlobalSecondaryIndexes"]}
        if found.get("KeySchema") != self.definition["KeySchema"] or indexes != wanted:
            raise _changed(self.label, "other keys or indexes (made by another ddcustom?)", self.opts)
        return Status.OWNED

    def create(self) -> list[Call]:
        return [Call("dynamodb", "CreateTable", {**self.definition, "Tags": _tag_list(self.opts.tags)})]

    def remove(self, aws: Clients) -> list[Call]:
        return [Call("dynamodb", "DeleteTable", {"TableName": self.opts.prevalence_table})]
