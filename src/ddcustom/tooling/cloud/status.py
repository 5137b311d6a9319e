"""``ddcustom cloud status``: the devices in alarm now, with behaviors and since when, the devices gone
silent, and fleet totals, from the fleet index of the named shadow ``ddcustom`` (docs/fleet.md has the
document it reads)."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

from ddcustom.tooling.cloud.fleet_index import (
    INDEX,
    PAGE_SIZE,
    QUERY_VERSION,
    REPORTED,
    quoted,
    reported,
    search,
)
from ddcustom.tooling.cloud.fleet_index import updated as last_update
from ddcustom.tooling.cloud.lambda_common import duration
from ddcustom.tooling.cloud.options import DEFAULT_SILENT_AFTER
from ddcustom.tooling.cloud.silent import ATTRIBUTE as SILENT_MARK
from ddcustom.tooling.cloud.steps import Clients


@dataclass
class Device:
    thing: str
    behaviors: list[str]
    alarms: list[dict[str, Any]]
    updated: Optional[int]
    groups: list[str] = field(default_factory=list)

    @property
    def since(self) -> Optional[int]:
        times = [a["since"] for a in self.alarms if isinstance(a.get("since"), (int, float))]
        return int(min(times)) if times else None

    def to_json(self) -> dict[str, Any]:
        return {
            "thingName": self.thing,
            "behaviorsInAlarm": self.behaviors,
            "since": self.since,
            "updated": self.updated,
            "alarms": self.alarms,
            "thingGroupNames": self.groups,
        }


def query(thing_group: Optional[str], behavior: Optional[str], base: str) -> str:
    parts = [base]
    if thing_group:
        parts.append(f"thingGroupNames:{quoted(thing_group)}")
    if behavior:
        parts.append(f"{REPORTED}behaviorsInAlarm:{quoted(behavior)}")
    return " AND ".join(parts)


def devices_in_alarm(aws: Clients, search_query: str) -> list[Device]:
    """Every device the query finds, page after page (any number of devices)."""
    return [_device(thing) for thing in search(aws("iot-fleet"), search_query)]


def _device(thing: dict[str, Any]) -> Device:
    document = reported(thing)
    alarms = [a for a in document.get("alarms", []) if isinstance(a, dict)]
    behaviors = [b for b in document.get("behaviorsInAlarm", []) if isinstance(b, str)]
    return Device(
        thing=str(thing.get("thingName", "")),
        behaviors=behaviors or [str(a.get("behavior")) for a in alarms],
        alarms=alarms,
        updated=last_update(thing),
        groups=list(thing.get("thingGroupNames", [])),
    )


def silent_devices(aws: Clients, search_query: str, now: float) -> list[dict[str, Any]]:
    """The first page of silent devices (oldest update first), with whether the check reported them."""
    found = []
    for thing in search(aws("iot-fleet"), search_query, limit=PAGE_SIZE):
        when = last_update(thing)
        found.append(
            {
                "thingName": str(thing.get("thingName", "")),
                "lastUpdate": when,
                "silentSeconds": None if when is None else max(0, int(now) - when),
                "reported": SILENT_MARK in (thing.get("attributes") or {}),
                "thingGroupNames": list(thing.get("thingGroupNames", [])),
            }
        )
    return sorted(found, key=lambda d: (d["lastUpdate"] or 0, d["thingName"]))


def count(aws: Clients, search: str) -> int:
    """How many devices match, from GetStatistics over the typed alarmCount field."""
    found = aws("iot-fleet").get_statistics(
        indexName=INDEX,
        queryString=search,
        aggregationField=f"{REPORTED}alarmCount",
        queryVersion=QUERY_VERSION,
    )
    return int(found.get("statistics", {}).get("count", 0))


def fleet_status(
    aws: Clients,
    thing_group: Optional[str],
    behavior: Optional[str],
    now: float,
    silent_after: int = DEFAULT_SILENT_AFTER,
) -> dict[str, Any]:
    devices = devices_in_alarm(aws, query(thing_group, behavior, f"{REPORTED}inAlarm:true"))
    devices.sort(key=lambda d: (d.since if d.since is not None else float("inf"), d.thing))
    reporting = count(aws, query(thing_group, None, f"{REPORTED}alarmCount>=0"))
    silent_query = query(thing_group, None, f"{REPORTED}updated<{int(now) - silent_after}")
    silent = count(aws, silent_query)
    by_behavior = Counter(b for d in devices for b in d.behaviors)
    return {
        "devices": [d.to_json() for d in devices],
        "silentDevices": silent_devices(aws, silent_query, now) if silent else [],
        "totals": {
            "reporting": reporting,
            "inAlarm": len(devices),
            "silent": silent,
            "silentAfterSeconds": silent_after,
            "byBehavior": dict(sorted(by_behavior.items())),
        },
        "filters": {"thingGroup": thing_group, "behavior": behavior},
    }


def _when(epoch: Optional[int]) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def print_status(status: dict[str, Any], out: TextIO, as_json: bool) -> None:
    if as_json:
        json.dump(status, out, indent=2, sort_keys=True)
        out.write("\n")
        return
    devices = status["devices"]
    if devices:
        width = max(len("THING"), *(len(d["thingName"]) for d in devices))
        print(f"{'THING':{width}}  {'IN ALARM SINCE (UTC)':20}  BEHAVIORS", file=out)
        for device in devices:
            behaviors = ", ".join(device["behaviorsInAlarm"]) or "-"
            print(f"{device['thingName']:{width}}  {_when(device['since']):20}  {behaviors}", file=out)
    else:
        print("no device in alarm", file=out)
    totals = status["totals"]
    silent_for = duration(totals["silentAfterSeconds"])
    print(
        f"{totals['inAlarm']} in alarm of {totals['reporting']} reporting; {totals['silent']} silent for "
        f"more than {silent_for}",
        file=out,
    )
    for behavior, devices_count in totals["byBehavior"].items():
        print(f"  {behavior}: {devices_count}", file=out)
    _print_silent(status["silentDevices"], totals["silent"], out)


def _print_silent(silent: list[dict[str, Any]], total: int, out: TextIO) -> None:
    if not silent:
        return
    width = max(len("SILENT THING"), *(len(d["thingName"]) for d in silent))
    print(f"{'SILENT THING':{width}}  {'LAST UPDATE (UTC)':20}  {'SILENT FOR':12}  ALERT SENT", file=out)
    for device in silent:
        since = "-" if device["silentSeconds"] is None else duration(device["silentSeconds"])
        sent = "yes" if device["reported"] else "not yet"
        print(
            f"{device['thingName']:{width}}  {_when(device['lastUpdate']):20}  {since:12}  {sent}", file=out
        )
    if total > len(silent):
        print(
            f"... and {total - len(silent)} more silent devices (the {len(silent)} oldest are listed)",
            file=out,
        )
