"""The prevalence table: its layout, and the reads that ``ddcustom cloud prevalence`` and the prevalence
function share. One DynamoDB table (on-demand), every read a GetItem or a Query, never a Scan.

Items (pk / sk):

- ``T#<thing>`` / ``S``: the device's identities (sha256 -> path, script, firstSeen, origin, component,
  cpu, seq, present), its version, the thing group it is counted in, and the pending count changes of its
  messages that the aggregation has not applied yet (``pending``; the ``pending`` index lists such devices);
- ``T#<thing>`` / ``M``: when it last reported, its group and when that was checked, the newest full
  inventory applied (``fullSeq``); in the ``by-group`` index under ``D#<group>`` by last report, for aging;
- ``C#<group>#<sha256>`` / ``C``: how many devices of the group run the identity (``n``), how many of them
  say a deployment placed it (``claims``), its path, when the group first had it, the device count of the
  last alert about it, since when it has been common; in the ``by-group`` index under ``C#<group>`` by
  ``n``: a group's identities rarest first;
- ``I#<sha256>`` / ``<group>#<thing>``: a device that runs the identity (with its path and first seen);
- ``F#<path>`` / ``<sha256>``: an identity seen at that path;
- ``GROUPS`` / ``<group>``: how many devices of the group report their inventory, and the rare thresholds;
- ``A#<group>`` / ``A``: the aggregation's lease, run number and journal;
- ``K#<group>`` / ``K``: the identities common at the last hourly look (for ``commonSince``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Optional

from boto3.dynamodb.conditions import Attr, Key
from boto3.dynamodb.types import Binary

COMMON_SHARE = 50.0  # percent: commonSince is kept for identities on at least half of the group's devices
BY_GROUP = "by-group"
PENDING = "pending"
GROUPS = "GROUPS"


def rare_most(group_devices: int, rare_devices: int, rare_share: float) -> int:
    """The most devices an identity can run on and still be rare in a group of that size: at most
    ``rare_devices``, or fewer than ``rare_share`` percent of the group's devices."""
    return max(rare_devices, math.ceil(rare_share * group_devices / 100) - 1)


def is_rare(devices: int, group_devices: int, rare_devices: int, rare_share: float, min_group: int) -> bool:
    """Rare: in a group of at least ``min_group`` reporting devices, on 1 to ``rare_most`` of them."""
    if group_devices < min_group or devices <= 0:
        return False
    return devices <= rare_most(group_devices, rare_devices, rare_share)


def state_key(thing: str) -> dict[str, str]:
    return {"pk": f"T#{thing}", "sk": "S"}


def meta_key(thing: str) -> dict[str, str]:
    return {"pk": f"T#{thing}", "sk": "M"}


def counter_key(group: str, sha256: str) -> dict[str, str]:
    return {"pk": f"C#{group}#{sha256}", "sk": "C"}


def link_key(sha256: str, group: str, thing: str) -> dict[str, str]:
    return {"pk": f"I#{sha256}", "sk": f"{group}#{thing}"}


def file_key(path: str, sha256: str) -> dict[str, str]:
    return {"pk": f"F#{path}", "sk": sha256}


def group_key(group: str) -> dict[str, str]:
    return {"pk": GROUPS, "sk": group}


def aggregation_key(group: str) -> dict[str, str]:
    return {"pk": f"A#{group}", "sk": "A"}


def known_key(group: str) -> dict[str, str]:
    return {"pk": f"K#{group}", "sk": "K"}


def table_definition(name: str) -> dict[str, Any]:
    """CreateTable's parameters (without tags): keys, the two indexes, on-demand capacity."""
    return {
        "TableName": name,
        "AttributeDefinitions": [
            {"AttributeName": attribute, "AttributeType": kind}
            for attribute, kind in (
                ("pk", "S"),
                ("sk", "S"),
                ("gpk", "S"),
                ("gsk", "N"),
                ("ppk", "S"),
                ("psk", "N"),
            )
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": BY_GROUP,
                "KeySchema": [
                    {"AttributeName": "gpk", "KeyType": "HASH"},
                    {"AttributeName": "gsk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            },
            {
                "IndexName": PENDING,
                "KeySchema": [
                    {"AttributeName": "ppk", "KeyType": "HASH"},
                    {"AttributeName": "psk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            },
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def plain(value: Any) -> Any:
    """An item as read (Decimal numbers, sets) as plain JSON values: ints, floats, sorted lists."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if isinstance(value, Binary):
        return bytes(value.value)  # type: ignore[attr-defined]  # the stubs lack it
    return value


def number(value: float) -> Decimal:
    """A number as DynamoDB takes it (boto3 refuses floats)."""
    return Decimal(str(value))


def stored(value: Any) -> Any:
    """A plain value as DynamoDB takes it: floats as Decimal, at any depth."""
    if isinstance(value, float):
        return number(value)
    if isinstance(value, dict):
        return {k: stored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [stored(v) for v in value]
    return value


def query(table: Any, limit: Optional[int] = None, **params: Any) -> Iterator[dict[str, Any]]:
    """Every item of a Query, page after page (at most ``limit``)."""
    found = 0
    while True:
        page = table.query(**params)
        for item in page.get("Items", []):
            yield plain(item)
            found += 1
            if limit is not None and found >= limit:
                return
        if "LastEvaluatedKey" not in page:
            return
        params = {**params, "ExclusiveStartKey": page["LastEvaluatedKey"]}


def get(table: Any, key: dict[str, str], consistent: bool = False) -> Optional[dict[str, Any]]:
    item = table.get_item(Key=key, ConsistentRead=consistent).get("Item")
    return None if item is None else dict(plain(item))


def batch_get(table: Any, keys: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The items of ``keys`` that exist, read consistently, 100 keys a call."""
    import time

    client, items = table.meta.client, []  # the resource's client: it takes and gives plain values
    for start in range(0, len(keys), 100):
        request: dict[str, Any] = {table.name: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
        while request:
            answer = client.batch_get_item(RequestItems=request)
            for item in answer.get("Responses", {}).get(table.name, []):
                items.append(plain(item))
            request = answer.get("UnprocessedKeys") or {}
            if request:
                time.sleep(0.2)  # throttled: DynamoDB returns what it could not read yet
    return items


def groups(table: Any) -> list[dict[str, Any]]:
    """Every group that has reporting devices, with its device count and rare thresholds."""
    return list(query(table, KeyConditionExpression=Key("pk").eq(GROUPS)))


def identities(
    table: Any, group: str, most: Optional[int] = None, least: int = 1, common_before: Optional[float] = None
) -> Iterator[dict[str, Any]]:
    """The group's identities that ``least`` to ``most`` devices run, rarest first (with
    ``common_before``: only those common since before then)."""
    count = Key("gsk").gte(least) if most is None else Key("gsk").between(least, most)
    params: dict[str, Any] = {
        "IndexName": BY_GROUP,
        "KeyConditionExpression": Key("gpk").eq(f"C#{group}") & count,
    }
    if common_before is not None:
        params["FilterExpression"] = Attr("commonSince").lte(number(common_before))
    return query(table, **params)


def devices(table: Any, sha256: str, group: Optional[str] = None, limit: Optional[int] = None) -> list[dict]:
    """The devices that run an identity (of one group, or of all)."""
    condition: Any = Key("pk").eq(f"I#{sha256}")
    if group is not None:
        condition = condition & Key("sk").begins_with(f"{group}#")
    return list(query(table, limit=limit, KeyConditionExpression=condition))


def identities_at(table: Any, path: str) -> list[str]:
    """The identities seen at a path."""
    return [item["sk"] for item in query(table, KeyConditionExpression=Key("pk").eq(f"F#{path}"))]
