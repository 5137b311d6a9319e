"""Runs the steps: every check first (read-only), then the calls; or, with dry_run, prints the calls."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, TextIO

from botocore import xform_name
from botocore.exceptions import BotoCoreError, ClientError

from ddcustom.tooling.cloud.steps import Call, Clients, Conflict, Status, Step, error_code, error_message

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
ACCESS_DENIED = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedException"})
# A role just created takes a few seconds before IoT or Lambda may assume it.
ROLE_WAIT_SECONDS = 3.0
ROLE_WAIT_TRIES = 10
# A fleet index being (re)built after a configuration change refuses fleet metrics for a while.
INDEX_WAIT_SECONDS = 30.0


class StepFailed(Exception):
    """An AWS call failed after the checks; ``done`` lists what was already created or removed."""

    def __init__(self, message: str, done: list[str]) -> None:
        super().__init__(message)
        self.done = done


def explain(exc: Exception) -> str:
    """One line a user can act on, for a botocore error."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        where = f"{exc.operation_name}: {code}: {error_message(exc)}"
        if code in THROTTLED:
            return f"AWS throttled the requests even after retries ({where}); wait a minute and run again"
        if code in CREDENTIALS:
            return f"the AWS credentials were refused ({where}); check AWS_PROFILE or `aws configure`"
        if code in ACCESS_DENIED:
            return (
                f"{where}. These credentials may not make this call: grant it, or leave that part out "
                "(--quarantine off, --fleet off)"
            )
        return where
    return str(exc)


def _refusal_message(exc: ClientError) -> str:
    return (
        f"Device Defender Detect refused ({explain(exc)}). Detect is closed to new AWS customers since "
        "31 August 2026, or these credentials lack its iot: permissions. Skipping the custom metrics, "
        "security profile and mitigation action; on-device alerts still reach SNS through the topic rule."
    )


def _detect_refused(step: Step, exc: ClientError, out: TextIO) -> bool:
    """Is ``exc`` Device Defender Detect refusing this account? If so, says so on ``out`` (the caller
    then skips the Detect steps); any other error is the caller's to raise."""
    refused = (
        step.detect
        and error_code(exc) in REFUSED
        and any(word in exc.operation_name for word in DETECT_OPERATION_WORDS)
    )
    if refused:
        print(_refusal_message(exc), file=out)
    return refused


def invoke(aws: Clients, call: Call, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Makes the call; waits and tries again while a new role or a rebuilt index is not usable yet."""
    method = getattr(aws(call.service), xform_name(call.operation))
    for attempt in range(1, ROLE_WAIT_TRIES + 1):
        try:
            return method(**call.params)
        except ClientError as exc:
            wait = _wait_for(exc)
            if attempt < ROLE_WAIT_TRIES and wait:
                sleep(wait)
                continue
            raise
    raise AssertionError("unreachable")


def _wait_for(exc: ClientError) -> float:
    message = error_message(exc).lower()
    if "assume" in message and "role" in message:
        return ROLE_WAIT_SECONDS
    if error_code(exc) == "IndexNotReadyException":
        return INDEX_WAIT_SECONDS
    if error_code(exc) == "ResourceConflictException" and "in progress" in message:
        return ROLE_WAIT_SECONDS  # a Lambda function still applying the previous update
    return 0.0


def _make(
    calls: list[Call], aws: Clients, out: TextIO, dry_run: bool, sleep: Callable[[float], None]
) -> None:
    """Makes the calls in order, or, with dry_run, prints them."""
    for call in calls:
        if dry_run:
            print(f"would call {call.describe()}", file=out)
            continue
        try:
            invoke(aws, call, sleep)
        except ClientError as exc:
            if error_code(exc) not in call.tolerate:
                raise


def setup(
    steps: list[Step],
    aws: Clients,
    out: TextIO,
    dry_run: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """0 when done (or planned), 2 when a check found a conflict (nothing changed). Raises StepFailed."""
    pending: list[tuple[Step, Status]] = []
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
            if not _detect_refused(step, exc, out):
                raise  # nothing was changed yet
            detect_refused = True
            continue
        print(f"{status.value:8} {step.label}", file=out)
        if status in (Status.MISSING, Status.CHANGED):
            pending.append((step, status))
    if problems:
        print("setup stopped before changing anything:", file=out)
        for problem in problems:
            print(f"  - {problem}", file=out)
        return 2
    done: list[str] = []
    for step, status in pending:
        if step.detect and detect_refused:
            continue
        try:
            _make(step.create(), aws, out, dry_run, sleep)
        except ClientError as exc:
            if not _detect_refused(step, exc, out):
                raise StepFailed(f"{step.label}: {explain(exc)}", done) from None
            detect_refused = True
            continue
        except BotoCoreError as exc:
            raise StepFailed(f"{step.label}: {explain(exc)}", done) from None
        if dry_run:
            continue
        done.append(step.label)
        print(f"{'created ' if status is Status.MISSING else 'updated '} {step.label}", file=out)
    if not dry_run:
        print(f"setup complete: {len(done)} made, {len(steps) - len(pending)} already in place", file=out)
    return 0


def plan(steps: list[Step], out: TextIO) -> int:
    """Prints what setup would call in an empty account, in order; calls nothing."""
    for step in steps:
        calls = step.planned()  # may complete the label (the indexing change)
        print(f"would make {step.label}", file=out)
        for call in calls:
            print(f"would call {call.describe()}", file=out)
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
            if not _detect_refused(step, exc, out):
                raise StepFailed(f"{step.label}: {explain(exc)}", done) from None
            detect_refused = True
            continue
        if not calls:
            print(f"kept     {step.label} (absent, or not made by this stack)", file=out)
            continue
        try:
            _make(calls, aws, out, dry_run, sleep)
        except (ClientError, BotoCoreError) as exc:
            raise StepFailed(f"{step.label}: {explain(exc)}", done) from None
        if dry_run:
            continue
        done.append(step.label)
        print(f"removed  {step.label}", file=out)
    if not dry_run:
        print(f"teardown complete: {len(done)} removed", file=out)
    return 0
