"""Provisioning steps of the silent-device check (silent.py): the function, its role and log group, and
the schedule that runs it every ``--silent-every`` minutes."""

from __future__ import annotations

from ddcustom.tooling.cloud import policies
from ddcustom.tooling.cloud.fleet_index import INDEX
from ddcustom.tooling.cloud.lambda_steps import FunctionSpec, function_steps
from ddcustom.tooling.cloud.options import CloudOptions
from ddcustom.tooling.cloud.schedule_steps import rate, scheduled
from ddcustom.tooling.cloud.steps import Env, Step

# The handler, and the fleet index helpers it queries with.
PACKAGE_FILES = {
    "silent.py": "tooling/cloud/silent.py",
    "ddcustom/tooling/cloud/fleet_index.py": "tooling/cloud/fleet_index.py",
}
TIMEOUT_SECONDS = 300  # a fleet-wide outage marks many devices in one run; the run stops in time


def silent_spec(opts: CloudOptions, topic_arn: str) -> FunctionSpec:
    return FunctionSpec(
        name=opts.silent_function,
        role=opts.silent_function_role,
        files=PACKAGE_FILES,
        description="alert on devices whose ddcustom shadow went silent, and when they report again",
        environment={
            "THING_GROUP": opts.thing_group,
            "SILENT_AFTER": str(opts.silent_after),
            "ALERT_TOPIC_ARN": topic_arn,
            "STACK": opts.stack,
        },
        timeout=TIMEOUT_SECONDS,
    )


def silent_steps(opts: CloudOptions, env: Env, topic_arn: str) -> list[Step]:
    """The function (it may query the index, read and mark things, publish to the topic) and its schedule."""
    spec = silent_spec(opts, topic_arn)
    statements = policies.silent_statements(
        env.arn("iot", f"index/{INDEX}"), env.arn("iot", "thing/*"), topic_arn
    )
    return [
        *function_steps(opts, env, spec, "silent-devices", statements),
        *scheduled(
            opts,
            env,
            spec.name,
            opts.silent_schedule_role,
            rate(opts.silent_every),
            {"action": "check"},
            f"ddcustom stack {opts.stack}: the silent-device check of {opts.thing_group}",
        ),
    ]
