"""Runs the steps: every check first (read-only), then the calls; or, with dry_run, prints the calls."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, TextIO

from botocore import xform_name
from botocore.exceptions import BotoCoreError, ClientError

from ddcustom.cloud.steps import Call, Clients, Conflict, Status, Step, error_code

# What an account without Device Defender Detect (or credentials without its permissions) gets.
REFUSED = frozenset(
    {"AccessDeniedException", "UnauthorizedException", "SubscriptionRequiredException", "OptInRequired"}
)
DETECT_OPERATION_WORDS = ("CustomMetric", "SecurityProfile", "MitigationAction", "ListTagsForResource")
THROTTLED = frozenset(
    {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded"}
)
CREDENTIALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
    }
)
# A role just created takes a few seconds before IoT or Lambda may assume it.
ROLE_WAIT_SECONDS = 3.0
ROLE_WAIT_TRIES = 10


class StepFailed(Exception):
    """An AWS call failed after the checks; ``done`` lists what was already created or removed."""

    def __init__(self, message: str, done: list[str]) -> None:
        super().__init__(message)
        self.done = done


def explain(exc: Exception) -> str:
    """One line a user can act on, for a botocore error."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        where = f"{exc.operation_name}: {code}: {message}"
        if code in THROTTLED:
            return f"AWS throttled the requests even after retries ({where}); wait a minute and run again"
        if code in CREDENTIALS:
            return f"the AWS credentials were refused ({where}); check AWS_PROFILE or `aws configure`"
        return where
    return str(exc)


def _detect_refusal(step: Step, exc: ClientError) -> bool:
    return (
        step.detect
        and error_code(exc) in REFUSED
        and any(word in exc.operation_name for word in DETECT_OPERATION_WORDS)
    )


def _refusal_message(exc: ClientError) -> str:
    return (
        f"Device Defender Detect refused ({explain(exc)}). Detect is closed to new AWS customers since "
        "31 August 2026, or these credentials lack its iot: permissions. Skipping the custom metrics, "
        "security profile and mitigation action; on-device alerts still reach SNS through the topic rule."
    )


def invoke(aws: Clients, call: Call, sleep: Callable[[float], None] = time.sleep) -> Any:
    method = getattr(aws(call.service), xform_name(call.operation))
    for attempt in range(1, ROLE_WAIT_TRIES + 1):
        try:
            return method(**call.params)
        except ClientError as exc:
            message = str(exc.response.get("Error", {}).get("Message", "")).lower()
            if attempt < ROLE_WAIT_TRIES and "assume" in message and "role" in message:
                sleep(ROLE_WAIT_SECONDS)
                continue
            raise
    raise AssertionError("unreachable")


def setup(
    steps: list[Step],
    aws: Clients,
    out: TextIO,
    dry_run: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """0 when done (or planned), 2 when a check found a conflict (nothing changed). Raises StepFailed."""
    pending: list[Step] = []
    problems: list[str] = []
    detect_refused = False
    for step in steps:
        if step.detect and detect_refused:
            continue
        try:
            status = step.check(aws)
        except Conflict as exc:
            problems.append(str(exc))
            continue
        except ClientError as exc:
            if not _detect_refusal(step, exc):
                raise
            detect_refused = True
            print(_refusal_message(exc), file=out)
            continue
        print(f"{status.value:8} {step.label}", file=out)
        if status is Status.MISSING:
            pending.append(step)
    if problems:
        print("setup stopped before changing anything:", file=out)
        for problem in problems:
            print(f"  - {problem}", file=out)
        return 2
    done: list[str] = []
    for step in pending:
        if step.detect and detect_refused:
            continue
        if dry_run:
            for call in step.create():
                print(f"would call {call.describe()}", file=out)
            continue
        try:
            for call in step.create():
                invoke(aws, call, sleep)
        except ClientError as exc:
            if not _detect_refusal(step, exc):
                raise StepFailed(f"{step.label}: {explain(exc)}", done) from None
            detect_refused = True
            print(_refusal_message(exc), file=out)
            continue
        except BotoCoreError as exc:
            raise StepFailed(f"{step.label}: {explain(exc)}", done) from None
        done.append(step.label)
        print(f"created  {step.label}", file=out)
    if not dry_run:
        print(f"setup complete: {len(done)} created, {len(steps) - len(pending)} already in place", file=out)
    return 0


def teardown(
    steps: list[Step],
    aws: Clients,
    out: TextIO,
    dry_run: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Removes, in reverse order, what carries this stack's tag; everything else is left alone."""
    done: list[str] = []
    detect_refused = False
    for step in reversed(steps):
        if step.removed_with_parent or (step.detect and detect_refused):
            continue
        try:
            owned = step.owned(aws)
            calls: Optional[list[Call]] = step.remove(aws) if owned else None
        except ClientError as exc:
            if not _detect_refusal(step, exc):
                raise StepFailed(f"{step.label}: {explain(exc)}", done) from None
            detect_refused = True
            print(_refusal_message(exc), file=out)
            continue
        if not calls:
            print(f"kept     {step.label} (absent, or not made by this stack)", file=out)
            continue
        if dry_run:
            for call in calls:
                print(f"would call {call.describe()}", file=out)
            continue
        try:
            for call in calls:
                invoke(aws, call, sleep)
        except (ClientError, BotoCoreError) as exc:
            raise StepFailed(f"{step.label}: {explain(exc)}", done) from None
        done.append(step.label)
        print(f"removed  {step.label}", file=out)
    if not dry_run:
        print(f"teardown complete: {len(done)} removed", file=out)
    return 0
