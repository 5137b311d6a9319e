"""Prevalence handler: which device of the thing group runs which program, and how many devices run each.

``ddcustom cloud setup`` deploys this file as a Lambda function (handler ``prevalence.handler``) with two
callers:

- the IoT rule ``<stack>_inventory``, ``SELECT *, topic(2) AS topicThing FROM 'ddcustom/+/inventory'``:
  each inventory message a device publishes (inventory.py reads it; a message whose ``thingName`` is not
  the thing of its topic is refused, as the quarantine function refuses an alert);
- EventBridge Scheduler, every minute, with ``{"action": "aggregate"}`` (prevalence_aggregate.py): the
  counts, the device lists and the rare-program alerts.

An inventory message changes only its device's own item (prevalence_state.py): a replayed or late
message changes nothing (a change older than the identity's is skipped; a change batch older than the
newest full inventory is dropped), and a full inventory that says what the item already holds writes
nothing. What the message changes in the group's counts waits in the same item; the aggregation applies
the pending counts of many devices at once, exactly once (prevalence_aggregate.py says how), so that the
counter of a program every device runs is written once a minute, not once per device.

A device is counted in the stack's thing group (THING_GROUP) while it is a member: the function checks
the membership on a device's first message, with each full inventory (daily) and at least daily; a device
that left, or that has not reported for AGE_OUT_SECONDS, leaves the counts.

Environment: TABLE, THING_GROUP, THING_GROUP_ARN, ALERT_TOPIC_ARN, RARE_DEVICES, RARE_SHARE,
RARE_MIN_GROUP, STACK. Standard library and boto3 only; the package carries inventory.py,
prevalence_state.py, prevalence_table.py, prevalence_aggregate.py and lambda_common.py.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional

from ddcustom.tooling.cloud import prevalence_table as layout
from ddcustom.tooling.cloud.inventory import CHANGES, FULL, Message, parse
from ddcustom.tooling.cloud.lambda_common import error_code
from ddcustom.tooling.cloud.prevalence_aggregate import aggregate
from ddcustom.tooling.cloud.prevalence_state import Clients, Settings, apply, member_group, save

GROUP_CHECK_SECONDS = 86400  # a device's group membership is looked up again after a day

log = logging.getLogger("ddcustom.prevalence")
log.setLevel(logging.INFO)


def handler(event: Any, context: Any = None, clients: Optional[Clients] = None) -> dict[str, Any]:
    settings = Settings.from_environment(os.environ)
    aws = clients or Clients.from_boto3(settings)
    if isinstance(event, dict) and "topicThing" in event:
        return {"inventory": receive(aws, settings, event, time.time())}
    if isinstance(event, dict) and event.get("action") == "aggregate":
        budget = context.get_remaining_time_in_millis() / 1000 if context is not None else 60.0
        owner = str(getattr(context, "aws_request_id", "") or os.urandom(8).hex())
        return aggregate(aws, settings, time.time(), time.monotonic() + budget - 30, owner)
    log.warning("ignored an event that is neither an inventory message nor the schedule's: %.200r", event)
    return {"ignored": True}


# ---- an inventory message ----


def receive(aws: Clients, settings: Settings, event: dict[str, Any], now: float) -> str:
    """Records one inventory message: "recorded", "unchanged", "stale", "ignored" or "refused"."""
    try:
        message = parse(event)
    except ValueError as exc:
        log.warning("ignored an inventory message (%s) on the topic of %.200r", exc, event.get("topicThing"))
        return "ignored"
    if message.thing != event.get("topicThing"):
        log.warning(
            "refused: inventory names %s but came on the topic of %.200r",
            message.thing,
            event.get("topicThing"),
        )
        return "refused"
    meta = layout.get(aws.table, layout.meta_key(message.thing)) or {}
    if message.seq < int(meta.get("fullSeq", 0)) or (
        message.kind == CHANGES and message.seq == meta.get("fullSeq")
    ):
        return "stale"  # a newer full inventory already said what the device runs
    group = meta.get("grp")
    checked = float(meta.get("checked", 0))
    if message.kind == FULL or now - checked > GROUP_CHECK_SECONDS or "checked" not in meta:
        group, checked = member_group(aws.iot, message.thing, settings.group), now
    written = save(aws.table, message.thing, lambda state: apply(state, message, group, now))
    _touch(aws.table, message, group, checked, now)
    return "recorded" if written else "unchanged"


def _touch(table: Any, message: Message, group: Optional[str], checked: float, now: float) -> None:
    """The device's small item: last report (for aging), group, and the newest full inventory applied."""
    names = {"#g": "grp"}
    values: dict[str, Any] = {
        ":now": layout.number(now),
        ":checked": layout.number(checked),
        ":thing": message.thing,
    }
    sets = ["thing = :thing", "lastSeen = :now", "checked = :checked"]
    if group is None:
        update = "SET " + ", ".join(sets) + " REMOVE #g, gpk, gsk"
    else:
        values.update({":g": group, ":gpk": f"D#{group}"})
        update = "SET " + ", ".join([*sets, "#g = :g", "gpk = :gpk", "gsk = :now"])
    key = layout.meta_key(message.thing)
    if message.kind == FULL:
        try:
            table.update_item(
                Key=key,
                UpdateExpression=update.replace("SET ", "SET fullSeq = :seq, ", 1),
                ConditionExpression="attribute_not_exists(fullSeq) OR fullSeq <= :seq",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={**values, ":seq": message.seq},
            )
            return
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
    table.update_item(
        Key=key, UpdateExpression=update, ExpressionAttributeNames=names, ExpressionAttributeValues=values
    )
