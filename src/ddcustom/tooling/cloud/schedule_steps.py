"""Functions run on a schedule, with Amazon EventBridge Scheduler (AWS's recommended way to invoke a target
on a schedule; EventBridge's scheduled rules are its legacy feature).

A schedule cannot carry tags; its schedule group can. The stack's schedules therefore live in one schedule
group of the stack's name, tagged like everything else: the group is what setup checks and teardown
removes (with its schedules). Scheduler invokes a function with an execution role of its own; each
scheduled function gets one, which Scheduler may assume only for this group of this account
(aws:SourceArn, aws:SourceAccount) and which may invoke that function and nothing else.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ddcustom.tooling.cloud import policies
from ddcustom.tooling.cloud.options import CloudOptions
from ddcustom.tooling.cloud.steps import (
    NOT_FOUND,
    Call,
    Clients,
    Env,
    OwnedStep,
    RoleStep,
    Status,
    Step,
    _has_tag,
    _or_none,
    _tag_list,
)

SCHEDULER_SERVICE = "scheduler.amazonaws.com"


def group_arn(opts: CloudOptions, env: Env) -> str:
    return env.arn("scheduler", f"schedule-group/{opts.schedule_group}")


class ScheduleGroupStep(OwnedStep):
    """The stack's schedule group; removed with its schedules."""

    def __init__(self, opts: CloudOptions, env: Env) -> None:
        self.opts, self.name = opts, opts.schedule_group
        self.arn = group_arn(opts, env)
        self.label = f"EventBridge Scheduler schedule group {self.name}"

    def _find(self, aws: Clients) -> Optional[dict[str, Any]]:
        return _or_none(lambda: aws("scheduler").get_schedule_group(Name=self.name))

    def _ours(self, aws: Clients, found: Any) -> bool:
        return _has_tag(aws("scheduler").list_tags_for_resource(ResourceArn=self.arn).get("Tags"), self.opts)

    def create(self) -> list[Call]:
        params = {"Name": self.name, "Tags": _tag_list(self.opts.tags)}
        return [Call("scheduler", "CreateScheduleGroup", params)]

    def remove(self, aws: Clients) -> list[Call]:
        pages = aws("scheduler").get_paginator("list_schedules").paginate(GroupName=self.name)
        schedules = [s["Name"] for page in pages for s in page.get("Schedules", [])]
        calls = [
            Call("scheduler", "DeleteSchedule", {"Name": name, "GroupName": self.name}, tolerate=NOT_FOUND)
            for name in schedules
        ]
        return [*calls, Call("scheduler", "DeleteScheduleGroup", {"Name": self.name})]


class ScheduleStep(Step):
    """A schedule in the stack's group that invokes a function with a fixed input. One of ours with
    another rate, target or input is updated; it goes with the group."""

    removed_with_parent = True

    def __init__(
        self, opts: CloudOptions, name: str, expression: str, target: dict[str, Any], description: str
    ) -> None:
        self.params: dict[str, Any] = {
            "Name": name,
            "GroupName": opts.schedule_group,
            "ScheduleExpression": expression,
            "Description": description,
            "State": "ENABLED",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "Target": target,
        }
        self.label = f"EventBridge Scheduler schedule {name} ({expression})"
        self.update = False  # set by check()

    def check(self, aws: Clients) -> Status:
        name, group = self.params["Name"], self.params["GroupName"]
        found = _or_none(lambda: aws("scheduler").get_schedule(Name=name, GroupName=group))
        if found is None:
            self.update = False
            return Status.MISSING
        target = found.get("Target", {})
        wanted = self.params["Target"]
        same = (
            found.get("ScheduleExpression") == self.params["ScheduleExpression"]
            and found.get("State") == "ENABLED"
            and all(target.get(key) == wanted[key] for key in ("Arn", "RoleArn", "Input"))
        )
        self.update = not same
        return Status.OWNED if same else Status.CHANGED

    def create(self) -> list[Call]:
        return [Call("scheduler", "UpdateSchedule" if self.update else "CreateSchedule", dict(self.params))]


def scheduled(
    opts: CloudOptions,
    env: Env,
    function: str,
    role: str,
    expression: str,
    payload: dict[str, Any],
    description: str,
) -> list[Step]:
    """The role Scheduler runs ``function`` with, and the schedule (the group is a step of its own)."""
    function_arn = env.arn("lambda", f"function:{function}")
    role_step = RoleStep(
        opts,
        role,
        policies.trust_policy(SCHEDULER_SERVICE, env.account, [group_arn(opts, env)]),
        "invoke",
        policies.invoke_policy(function_arn),
    )
    target = {
        "Arn": function_arn,
        "RoleArn": env.arn("iam", f"role/{role}", regional=False),
        "Input": json.dumps(payload, sort_keys=True),
        # a missed run is not retried: the next one does the same work
        "RetryPolicy": {"MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 60},
    }
    return [role_step, ScheduleStep(opts, function, expression, target, description)]


def rate(minutes: int) -> str:
    """A Scheduler rate expression: ``rate(1 minute)``, ``rate(15 minutes)``."""
    return f"rate({minutes} minute{'s' if minutes != 1 else ''})"
