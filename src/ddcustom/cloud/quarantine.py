"""Quarantine handler: puts the thing of an alarm into the quarantine thing group.

Deployable as an AWS Lambda function on its own (this file, handler ``quarantine.handler``; it needs
only boto3, which Lambda provides). It takes a Device Defender violation event or an on-device
ddcustom alert (the same fields: thingName, violationEventType, violationId...), as they are or
wrapped in SNS notifications (``Records[].Sns.Message``), or a list of them. Only ``in-alarm`` events
act: ``alarm-cleared``, ``alarm-invalidated`` and messages without an event type are ignored; a thing
already in the group is left as it is.

Environment: QUARANTINE_GROUP (default ddcustom-quarantine).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

DEFAULT_GROUP = "ddcustom-quarantine"
IN_ALARM = "in-alarm"

log = logging.getLogger("ddcustom.quarantine")
log.setLevel(logging.INFO)


def alarms(event: Any) -> list[dict[str, Any]]:
    """The alarm objects inside an event, unwrapping SNS records and JSON text."""
    if isinstance(event, str):
        try:
            event = json.loads(event)
        except ValueError:
            log.warning("ignored a message that is not JSON: %.200s", event)
            return []
    if isinstance(event, list):
        return [alarm for item in event for alarm in alarms(item)]
    if not isinstance(event, dict):
        return []
    if isinstance(event.get("Records"), list):
        return [
            alarm for record in event["Records"] for alarm in alarms(record.get("Sns", {}).get("Message"))
        ]
    return [event]


def handler(event: Any, context: Any = None, iot: Optional[Any] = None) -> dict[str, list[str]]:
    """Quarantines the things of in-alarm events; returns what it did, by thing name."""
    group = os.environ.get("QUARANTINE_GROUP", DEFAULT_GROUP)
    if iot is None:
        import boto3

        iot = boto3.client("iot")
    result: dict[str, list[str]] = {"quarantined": [], "already_quarantined": [], "ignored": []}
    for alarm in alarms(event):
        thing = alarm.get("thingName")
        if not isinstance(thing, str) or not thing or alarm.get("violationEventType") != IN_ALARM:
            result["ignored"].append(str(thing))
            continue
        if thing in result["quarantined"] or _in_group(iot, thing, group):
            result["already_quarantined"].append(thing)
            continue
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing)
        log.info(
            "quarantined %s in %s (violation %s, behavior %s)",
            thing,
            group,
            alarm.get("violationId"),
            (alarm.get("behavior") or {}).get("name"),
        )
        result["quarantined"].append(thing)
    return result


def _in_group(iot: Any, thing: str, group: str) -> bool:
    pages = iot.get_paginator("list_thing_groups_for_thing").paginate(thingName=thing)
    return any(g.get("groupName") == group for page in pages for g in page.get("thingGroups", []))
