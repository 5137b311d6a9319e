"""``ddcustom cloud status``: the devices in alarm now, with behaviors and since when, and fleet totals,
from the fleet index of the named shadow ``ddcustom`` (docs/fleet.md has the document it reads)."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

from ddcustom.tooling.cloud.fleet import INDEX, QUERY_VERSION, REPORTED, quoted
from ddcustom.tooling.cloud.options import FLEET_SHADOW
from ddcustom.tooling.cloud.steps import Clients

PAGE_SIZE = 500  # SearchIndex's largest page
# The component updates the shadow on change and at least once an hour: two hours without an update
# means a device that stopped reporting (or whose component was stopped).
SILENT_AFTER_SECONDS = 2 * 3600


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


def devices_in_alarm(aws: Clients, search: str) -> list[Device]:
    """Every device the query finds, page after page (any number of devices)."""
    iot = aws("iot-fleet")
    devices: list[Device] = []
    token: Optional[str] = None
    while True:
        params: dict[str, Any] = {
            "indexName": INDEX,
            "queryString": search,
            "maxResults": PAGE_SIZE,
            "queryVersion": QUERY_VERSION,
        }
        if token:
            params["nextToken"] = token
        page = iot.search_index(**params)
        devices += [_device(thing) for thing in page.get("things", [])]
        token = page.get("nextToken")
        if not token:
            return devices


def _device(thing: dict[str, Any]) -> Device:
    """A SearchIndex thing; its ``shadow`` is JSON text holding the named shadows under "name"."""
    try:
        shadow = json.loads(thing.get("shadow") or "{}")
    except ValueError:
        shadow = {}
    reported = (
        shadow.get("name", {}).get(FLEET_SHADOW, {}).get("reported", {}) if isinstance(shadow, dict) else {}
    )
    alarms = [a for a in reported.get("alarms", []) if isinstance(a, dict)]
    behaviors = [b for b in reported.get("behaviorsInAlarm", []) if isinstance(b, str)]
    updated = reported.get("updated")
    return Device(
        thing=str(thing.get("thingName", "")),
        behaviors=behaviors or [str(a.get("behavior")) for a in alarms],
        alarms=alarms,
        updated=int(updated) if isinstance(updated, (int, float)) else None,
        groups=list(thing.get("thingGroupNames", [])),
    )


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
    aws: Clients, thing_group: Optional[str], behavior: Optional[str], now: float
) -> dict[str, Any]:
    devices = devices_in_alarm(aws, query(thing_group, behavior, f"{REPORTED}inAlarm:true"))
    devices.sort(key=lambda d: (d.since if d.since is not None else float("inf"), d.thing))
    reporting = count(aws, query(thing_group, None, f"{REPORTED}alarmCount>=0"))
    silent_before = int(now) - SILENT_AFTER_SECONDS
    silent = count(aws, query(thing_group, None, f"{REPORTED}updated<{silent_before}"))
    by_behavior = Counter(b for d in devices for b in d.behaviors)
    return {
        "devices": [d.to_json() for d in devices],
        "totals": {
            "reporting": reporting,
            "inAlarm": len(devices),
            "silent": silent,
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
    print(
        f"{totals['inAlarm']} in alarm of {totals['reporting']} reporting; {totals['silent']} silent for "
        f"more than {SILENT_AFTER_SECONDS // 3600} h",
        file=out,
    )
    for behavior, devices_count in totals["byBehavior"].items():
        print(f"  {behavior}: {devices_count}", file=out)
