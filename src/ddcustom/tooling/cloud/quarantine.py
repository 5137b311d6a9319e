"""Quarantine handler: puts the thing of an in-alarm alert into the quarantine thing group.

``ddcustom cloud setup`` deploys this file as an AWS Lambda function (handler ``quarantine.handler``),
with the package's alert (``ddcustom.device.detect.events``) and the handlers' helpers (lambda_common.py)
beside it; it needs only the standard library and boto3, which Lambda provides. It sits behind an IoT
rule on the alert topic (``ddcustom/+/alerts``): the rule selects the in-alarm alerts of the quarantine
behaviors and adds ``topicThing``, the thing named by the MQTT topic, which the device's IoT policy ties
to its own identity. An alert is read as the
component wrote it (``ViolationEvent.from_json``); one that is not an alert is ignored, logged.

The handler
- refuses an alert whose ``thingName`` is not the thing in the topic (one device naming another);
- acts on ``in-alarm`` only, and, where QUARANTINE_BEHAVIORS is set, on those behaviors only;
- is idempotent: a thing already in the group is left as it is, its first record kept;
- records why and when on the thing, in one attribute (things without a thing type have few
  attributes to spare), then adds it to the group.

Environment: QUARANTINE_GROUP (default ddcustom-quarantine), QUARANTINE_BEHAVIORS (comma-separated;
empty: any behavior the rule passes).
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Optional

from ddcustom.device.detect.events import IN_ALARM, ViolationEvent
from ddcustom.tooling.cloud.lambda_common import error_code

DEFAULT_GROUP = "ddcustom-quarantine"
# One thing attribute holds the record: "at=<UTC time>,behavior=<name>,violation=<violationId>".
ATTRIBUTE = "ddcustomQuarantine"
ATTRIBUTE_MAX = 800  # IoT's limit on an attribute value
_NOT_IN_ATTRIBUTE = re.compile(r"[^a-zA-Z0-9_.@/:#\[\]-]")  # IoT's value pattern, less "," and "="
_FIELD_MAX = 200
_LOG_MAX = 200

log = logging.getLogger("ddcustom.quarantine")
log.setLevel(logging.INFO)


class QuarantineError(Exception):
    """The quarantine could not be done; Lambda records the failure and IoT's retries try again."""


def handler(event: Any, context: Any = None, iot: Optional[Any] = None) -> dict[str, list[str]]:
    """Quarantines the thing of an in-alarm alert (or of each alert in a list); returns what it did."""
    group = os.environ.get("QUARANTINE_GROUP", DEFAULT_GROUP)
    behaviors = {b for b in os.environ.get("QUARANTINE_BEHAVIORS", "").split(",") if b}
    if iot is None:
        import boto3

        iot = boto3.client("iot")
    result: dict[str, list[str]] = {
        "quarantined": [],
        "already_quarantined": [],
        "ignored": [],
        "refused": [],
    }
    for alert in event if isinstance(event, list) else [event]:
        outcome, thing = _quarantine(iot, alert, group, behaviors)
        result[outcome].append(thing)
    return result


def _quarantine(iot: Any, data: Any, group: str, behaviors: set[str]) -> tuple[str, str]:
    try:
        alert = ViolationEvent.from_json(data)
    except ValueError as exc:
        log.warning("ignored an event that is not an alert (%s): %.200r", exc, data)
        thing = data.get("thingName") if isinstance(data, dict) else None
        return "ignored", str(thing or "")[:_LOG_MAX]
    thing, topic_thing, behavior_name = alert.thing_name, alert.extra.get("topicThing"), alert.behavior_name
    if not thing or alert.event_type != IN_ALARM:
        return "ignored", thing[:_LOG_MAX]
    if topic_thing != thing:
        # Not from the quarantine rule (no topic), or a device naming another thing than itself.
        log.warning(
            "refused: alert names thing %.200r but came on the topic of %.200r (violation %.200r)",
            thing,
            topic_thing,
            alert.violation_id,
        )
        return "refused", thing
    if behaviors and behavior_name not in behaviors:
        return "ignored", thing
    try:
        if in_group(iot, thing, group):
            return "already_quarantined", thing
        _record(iot, thing, behavior_name, alert.violation_id)
    except Exception as exc:
        raise QuarantineError(f"cannot quarantine {thing}: {exc}") from exc
    try:
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing)
    except Exception as exc:
        if error_code(exc) == "ResourceNotFoundException":
            message = (
                f"cannot quarantine {thing}: the thing group {group} does not exist (deleted by hand?); "
                "run `ddcustom cloud setup` again to recreate it"
            )
            raise QuarantineError(message) from exc
        raise QuarantineError(f"cannot quarantine {thing} in {group}: {exc}") from exc
    log.info(
        "quarantined %s in %s (behavior %.200r, violation %.200r)",
        thing,
        group,
        behavior_name,
        alert.violation_id,
    )
    return "quarantined", thing


def in_group(iot: Any, thing: str, group: str) -> bool:
    pages = iot.get_paginator("list_thing_groups_for_thing").paginate(thingName=thing)
    return any(g.get("groupName") == group for page in pages for g in page.get("thingGroups", []))


def record_value(now: float, behavior: str, violation: Any) -> str:
    """The attribute value: IoT allows only [a-zA-Z0-9_.,@/:#=[]-] and 800 characters."""
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    fields = {"at": at, "behavior": behavior, "violation": "" if violation is None else str(violation)}
    value = ",".join(f"{k}={_NOT_IN_ATTRIBUTE.sub('_', v)[:_FIELD_MAX]}" for k, v in fields.items())
    return value[:ATTRIBUTE_MAX]


def _record(iot: Any, thing: str, behavior: str, violation: Any) -> None:
    """Records why and when before the thing joins the group: a retry after a failure in between finds
    it outside the group and records again, so a quarantined thing always carries its record."""
    payload = {"attributes": {ATTRIBUTE: record_value(time.time(), behavior, violation)}, "merge": True}
    try:
        iot.update_thing(thingName=thing, attributePayload=payload)
    except Exception as exc:
        if error_code(exc) != "InvalidRequestException":
            raise
        # e.g. a thing without a thing type that already has its maximum of attributes: quarantine it
        # all the same; the log keeps the reason.
        log.warning("could not record the quarantine on %s (%s); quarantining it all the same", thing, exc)
