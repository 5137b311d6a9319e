"""A device's identities in the prevalence table, and what a change of them does to the counts of its
thing group (prevalence.py receives the messages, prevalence_aggregate.py applies the counts).

The device's item ``T#<thing>``/``S`` holds each identity with the ``seq`` of the message that last changed
it, so that a replayed or late message changes nothing, and the version the item is written under; what a
change does to the group's counts is kept in the same item as a pending entry, written in the same put,
until the aggregation applies it. Standard library and boto3 only (the function's package carries it).
"""

from __future__ import annotations

import copy
import json
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ddcustom.tooling.cloud import prevalence_table as layout
from ddcustom.tooling.cloud.inventory import DEPLOYMENT, FULL, Message
from ddcustom.tooling.cloud.lambda_common import error_code

TOMBSTONE_SECONDS = 86400  # a removed identity is remembered this long against late messages
MAX_IDENTITIES = 1500  # per device: keeps its item far under DynamoDB's 400 KB
WRITE_TRIES = 5
KEPT = ("path", "script", "first", "origin", "comp", "cpu")  # what the cloud keeps of an identity

log = logging.getLogger("ddcustom.prevalence")
log.setLevel(logging.INFO)


@dataclass(frozen=True)
class Settings:
    table: str
    group: str
    group_arn: str
    topic_arn: str
    rare_devices: int = 2
    rare_share: float = 1.0
    rare_min_group: int = 20
    region: str = ""
    stack: str = "ddcustom"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            table=environ["TABLE"],
            group=environ["THING_GROUP"],
            group_arn=environ["THING_GROUP_ARN"],
            topic_arn=environ["ALERT_TOPIC_ARN"],
            rare_devices=int(environ.get("RARE_DEVICES", 2)),
            rare_share=float(environ.get("RARE_SHARE", 1.0)),
            rare_min_group=int(environ.get("RARE_MIN_GROUP", 20)),
            region=environ.get("AWS_REGION", ""),
            stack=environ.get("STACK", "ddcustom"),
        )


@dataclass
class Clients:
    table: Any  # a boto3 DynamoDB Table
    iot: Any
    sns: Any
    greengrass: Any

    @classmethod
    def from_boto3(cls, settings: Settings) -> Clients:
        import boto3

        return cls(
            table=boto3.resource("dynamodb").Table(settings.table),
            iot=boto3.client("iot"),
            sns=boto3.client("sns"),
            greengrass=boto3.client("greengrassv2"),
        )


class PrevalenceError(Exception):
    """The message or run could not be recorded; Lambda's retries (or the next run) try again."""


@dataclass
class DeviceState:
    """The device's item ``T#<thing>``/``S``. Its identities and pending entries are one compressed JSON
    document (``data``): a few hundred identities fit in about 20 KB, and DynamoDB bills an item's reads
    and writes by its size."""

    thing: str
    version: int = 0
    group: Optional[str] = None  # the group it is counted in
    ids: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_item(cls, thing: str, item: Optional[dict[str, Any]]) -> DeviceState:
        if item is None:
            return cls(thing)
        data = json.loads(zlib.decompress(bytes(item["data"]))) if "data" in item else {}
        version, group = int(item.get("ver", 0)), item.get("grp")
        return cls(thing, version, group, data.get("ids", {}), data.get("pending", {}))

    def counted(self) -> dict[str, dict[str, Any]]:
        """The identities that count in its group (none when it is in none)."""
        if self.group is None:
            return {}
        return {sha: entry for sha, entry in self.ids.items() if entry.get("on")}

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {**layout.state_key(self.thing), "thing": self.thing, "ver": self.version}
        data = json.dumps({"ids": self.ids, "pending": self.pending}, sort_keys=True, separators=(",", ":"))
        item["data"] = zlib.compress(data.encode(), 6)
        if self.group is not None:
            item["grp"] = self.group
        if self.pending:  # listed in the pending index until the aggregation has applied it
            item["ppk"] = f"P#{next(iter(self.pending.values()))['g']}"
            item["psk"] = min(p["t"] for p in self.pending.values())
        return dict(layout.stored(item))


def apply(state: DeviceState, message: Optional[Message], group: Optional[str], now: float) -> DeviceState:
    """The state after ``message`` (None: only the group changes), with the pending entry of what it
    changes in the group's counts. The same state (``is``) when nothing changes."""
    ids = copy.deepcopy(state.ids)
    if message is not None:
        _apply_message(ids, message, now)
    for sha in [
        sha for sha, e in ids.items() if not e.get("on") and now - e.get("at", 0) > TOMBSTONE_SECONDS
    ]:
        del ids[sha]
    new = DeviceState(state.thing, state.version + 1, group, ids, dict(state.pending))
    if ids == state.ids and group == state.group:
        return state
    entry = _pending_entry(state, new, now)
    if entry is not None:
        new.pending[f"{new.version:012d}"] = entry
    return new


def _apply_message(ids: dict[str, dict[str, Any]], message: Message, now: float) -> None:
    listed = {identity.sha256: identity for identity in message.identities}
    if message.kind == FULL:
        gone = [sha for sha, e in ids.items() if message.covers(sha) and sha not in listed and e.get("on")]
        removed = [sha for sha in gone if ids[sha]["seq"] < message.seq]
    else:
        removed = [sha for sha in message.removed if sha not in listed]
    for sha in removed:
        entry = ids.get(sha)
        if entry is None:  # never seen: remember the removal against an older add arriving late
            ids[sha] = {"seq": message.seq, "on": False, "at": now}
        elif entry["seq"] < message.seq:
            entry.update(seq=message.seq, on=False, at=now)
    for sha, identity in listed.items():
        entry = ids.get(sha)
        if entry is not None and entry["seq"] >= message.seq:
            continue  # a newer message already said otherwise
        wanted = {**identity.details(), "on": True}
        if entry is not None and message.kind == FULL and all(entry.get(k) == v for k, v in wanted.items()):
            continue  # as it was: a full inventory that changes nothing writes nothing
        if entry is None and len(ids) >= MAX_IDENTITIES:
            log.warning("%s reports more than %d identities; %s left out", message.thing, MAX_IDENTITIES, sha)
            continue
        ids[sha] = {**wanted, "seq": message.seq, "at": now}


def _pending_entry(before: DeviceState, after: DeviceState, now: float) -> Optional[dict[str, Any]]:
    """What the change does to the counts of the group: identities the group gains and loses with this
    device, those whose details changed, the change in deployment claims and in devices."""
    old, new = before.counted(), after.counted()
    group = after.group or before.group
    if group is None:
        return None
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    updated = sorted(
        sha for sha in set(old) & set(new) if any(old[sha].get(k) != new[sha].get(k) for k in KEPT)
    )
    claims = {
        sha: _claim(new.get(sha)) - _claim(old.get(sha))
        for sha in set(old) | set(new)
        if _claim(new.get(sha)) != _claim(old.get(sha))
    }
    devices = int(after.group is not None) - int(before.group is not None)
    if not (added or removed or updated or claims or devices):
        return None
    return {"g": group, "add": added, "rm": removed, "upd": updated, "c": claims, "dev": devices, "t": now}


def _claim(entry: Optional[dict[str, Any]]) -> int:
    return int(entry is not None and entry.get("origin") == DEPLOYMENT)


def save(table: Any, thing: str, change: Callable[[DeviceState], DeviceState]) -> bool:
    """Applies ``change(state) -> new state`` to the device's item under its version; False: nothing to
    write. Retries when another writer (a message, the aggregation) changed the item meanwhile."""
    for _ in range(WRITE_TRIES):
        state = DeviceState.from_item(thing, layout.get(table, layout.state_key(thing), consistent=True))
        new = change(state)
        if new is state:
            return False
        condition = "attribute_not_exists(ver) OR ver = :ver"
        try:
            table.put_item(
                Item=new.to_item(),
                ConditionExpression=condition,
                ExpressionAttributeValues={":ver": state.version},
            )
            return True
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
    raise PrevalenceError(f"the item of {thing} kept changing; a retry records the message")


def member_group(iot: Any, thing: str, group: str) -> Optional[str]:
    """``group`` when the thing is a member of it, else None (a thing deleted meanwhile is in none)."""
    pages = iot.get_paginator("list_thing_groups_for_thing").paginate(thingName=thing)
    try:
        member = any(g.get("groupName") == group for page in pages for g in page.get("thingGroups", []))
    except Exception as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        member = False
    return group if member else None


def leave(aws: Clients, thing: str, now: float) -> None:
    """The device leaves the counts of its group (it left the group, or stopped reporting)."""
    save(aws.table, thing, lambda state: apply(state, None, None, now))
    aws.table.update_item(
        Key=layout.meta_key(thing),
        UpdateExpression="SET checked = :now REMOVE grp, gpk, gsk",
        ExpressionAttributeValues={":now": layout.number(now)},
    )
