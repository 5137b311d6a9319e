"""``ddcustom cloud prevalence``: what the devices of a thing group run, rarest first; the devices that run
one program (by SHA-256 or path); and ``--publish-known``, the group's common programs into the
deployment's configuration (``FleetKnownExecutables``). Every read is a GetItem or a Query of the
prevalence table (prevalence_table.py), never a Scan."""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from typing import Any, Optional, TextIO

from ddcustom.tooling.cloud import prevalence_table as layout
from ddcustom.tooling.cloud.lambda_common import duration, utc
from ddcustom.tooling.cloud.options import (
    DEFAULT_RARE_DEVICES,
    DEFAULT_RARE_MIN_GROUP,
    DEFAULT_RARE_SHARE,
    CloudOptions,
    OptionError,
)

SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
KNOWN_AFTER_RANGE = (3600, 90 * 86400)
MAX_KNOWN = 5000  # FleetKnownExecutables: 5 000 hashes are about 335 KB of configuration


def is_rare(devices: int, group: dict[str, Any]) -> bool:
    """The function's rule, with the thresholds it wrote into the group's item."""
    return layout.is_rare(devices, int(group.get("devices", 0)), *_thresholds(group))


def _thresholds(group: dict[str, Any]) -> tuple[int, float, int]:
    """The rare thresholds the function wrote into the group's item (setup's defaults before it has)."""
    return (
        int(group.get("rareDevices", DEFAULT_RARE_DEVICES)),
        float(group.get("rareShare", DEFAULT_RARE_SHARE)),
        int(group.get("minGroup", DEFAULT_RARE_MIN_GROUP)),
    )


def _groups(table: Any, thing_group: Optional[str]) -> list[dict[str, Any]]:
    found = [_with_thresholds(group) for group in layout.groups(table)]
    if thing_group is None:
        return found
    return [g for g in found if g["sk"] == thing_group] or [
        _with_thresholds({"sk": thing_group, "devices": 0})
    ]


def _with_thresholds(group: dict[str, Any]) -> dict[str, Any]:
    rare_devices, rare_share, min_group = _thresholds(group)
    return {**group, "rareDevices": rare_devices, "rareShare": rare_share, "minGroup": min_group}


def _identity(counter: dict[str, Any], group: dict[str, Any]) -> dict[str, Any]:
    devices, total = int(counter.get("gsk", 0)), int(group.get("devices", 0))
    return {
        "sha256": counter["sha"],
        "path": counter.get("path"),
        "script": counter.get("script"),
        "devices": devices,
        "share": round(100.0 * devices / total, 2) if total else None,
        "rare": is_rare(devices, group),
        "deploymentClaims": int(counter.get("claims", 0)),
        "component": counter.get("comp"),
        "since": counter.get("since"),
        "commonSince": counter.get("commonSince"),
        "alertedAt": int(counter.get("alerted", 0)),
        "deviceListKept": not counter.get("unlisted"),
    }


def listing(table: Any, thing_group: Optional[str], rare_only: bool, limit: Optional[int]) -> dict[str, Any]:
    """The identities of each group, rarest first (only the rare ones with ``rare_only``)."""
    groups = []
    for group in _groups(table, thing_group):
        total = int(group.get("devices", 0))
        if rare_only and total < group["minGroup"]:
            counters: list[dict[str, Any]] = []
        else:
            rare_devices, rare_share, _ = _thresholds(group)
            most = layout.rare_most(total, rare_devices, rare_share) if rare_only else None
            counters = list(itertools.islice(layout.identities(table, group["sk"], most=most), limit))
        groups.append(
            {
                "thingGroup": group["sk"],
                "devices": total,
                "thresholds": {
                    "rareDevices": group.get("rareDevices"),
                    "rareSharePercent": group.get("rareShare"),
                    "minGroup": group.get("minGroup"),
                },
                "identities": [_identity(c, group) for c in counters],
            }
        )
    return {"groups": groups}


def lookup(table: Any, what: str, thing_group: Optional[str], limit: Optional[int]) -> dict[str, Any]:
    """The devices that run an identity, given by SHA-256 or by path (any identity seen there)."""
    if SHA256.match(what):
        shas = [what.lower()]
    elif what.startswith("/"):
        shas = layout.identities_at(table, what)
    else:
        raise OptionError(f"{what!r}: expected a SHA-256 (64 hex digits) or an absolute path")
    found = []
    for sha in shas:
        for group in _groups(table, thing_group):
            counter = layout.get(table, layout.counter_key(group["sk"], sha))
            if counter is None or int(counter.get("gsk", 0)) <= 0:
                continue
            devices = layout.devices(table, sha, group["sk"], limit=limit)
            found.append(
                {
                    **_identity(counter, group),
                    "thingGroup": group["sk"],
                    "groupDevices": int(group.get("devices", 0)),
                    "thingNames": [d["thing"] for d in devices],
                    "deviceList": [
                        {k: d.get(k) for k in ("thing", "path", "script", "first", "origin", "comp", "cpu")}
                        for d in devices
                    ],
                }
            )
    return {"query": what, "identities": found}


def known(table: Any, thing_group: str, share: float, after: int, now: float) -> list[str]:
    """The group's identities on at least ``share`` percent of its reporting devices, continuously (as the
    hourly look sees it) for at least ``after`` seconds."""
    [group] = _groups(table, thing_group)
    total, least = int(group.get("devices", 0)), int(group["minGroup"])
    if total < least:
        raise OptionError(
            f"thing group {thing_group}: {total} devices report their inventory, fewer than {least}: too few "
            "for one device's program not to count as common; nothing was published"
        )
    least = max(1, math.ceil(share * total / 100))
    return sorted(
        str(c["sha"]) for c in layout.identities(table, thing_group, least=least, common_before=now - after)
    )


def check_known_options(share: float, after: int) -> None:
    if not layout.COMMON_SHARE <= share <= 100:
        raise OptionError(
            f"--known-share {share:g}: expected {layout.COMMON_SHARE:g} to 100 (percent of the group's "
            "devices; below half, devices a single attacker controls could make a program common)"
        )
    low, high = KNOWN_AFTER_RANGE
    if not low <= after <= high:
        raise OptionError(f"--known-after {after}: expected {low} to {high} seconds")


# ---- printing ----


def _when(epoch: Any) -> str:
    return "-" if epoch is None else utc(float(epoch)).replace(" UTC", "")


def print_listing(result: dict[str, Any], out: TextIO, rare_only: bool) -> None:
    if not result["groups"]:
        print("no device reports its inventory yet (`ddcustom cloud setup` with --prevalence on)", file=out)
    for group in result["groups"]:
        limits = group["thresholds"]
        print(
            f"thing group {group['thingGroup']}: {group['devices']} devices report their inventory; rare: "
            f"on at most {limits['rareDevices']} devices or under {limits['rareSharePercent']} %, in a "
            f"group of at least {limits['minGroup']}",
            file=out,
        )
        identities = group["identities"]
        if not identities:
            print("  no rare program" if rare_only else "  no program reported", file=out)
            continue
        print(f"  {'DEVICES':>7}  {'SHARE':>7}  {'':4}  {'SINCE (UTC)':19}  {'SHA-256':64}  PATH", file=out)
        for i in identities:
            share = "-" if i["share"] is None else f"{i['share']:.1f} %"
            flag = "rare" if i["rare"] else ("dep." if i["deploymentClaims"] >= i["devices"] > 0 else "")
            columns = [
                f"{i['devices']:>7}",
                f"{share:>7}",
                f"{flag:4}",
                f"{_when(i['since']):19}",
                i["sha256"],
            ]
            print("  " + "  ".join([*columns, _shown(i)]), file=out)


def _shown(identity: dict[str, Any]) -> str:
    return " ".join(part for part in (identity.get("path") or "-", identity.get("script")) if part)


def print_lookup(result: dict[str, Any], out: TextIO, now: float) -> None:
    if not result["identities"]:
        print(f"no device of a reporting group runs {result['query']}", file=out)
    for i in result["identities"]:
        rare = " (rare)" if i["rare"] else ""
        print(f"{i['sha256']}  {_shown(i)}", file=out)
        print(
            f"  thing group {i['thingGroup']}: on {i['devices']} of {i['groupDevices']} devices{rare}, "
            f"first reported {_when(i['since'])} UTC",
            file=out,
        )
        if i["deploymentClaims"]:
            claims = f"{i['deploymentClaims']} of them say a deployment placed it ({i['component']})"
            print(f"  {claims}", file=out)
        if not i["deviceListKept"]:
            print("  the device list is not kept for a program that this many devices run", file=out)
            continue
        print(f"  {'THING':24}  {'FIRST SEEN (UTC)':19}  {'ORIGIN':10}  PATH", file=out)
        for d in i["deviceList"]:
            first = d.get("first")
            ago = f" ({duration(now - first)} ago)" if first else ""
            origin, path = d.get("origin") or "-", d.get("path") or "-"
            print(f"  {d['thing']:24}  {_when(first):19}  {origin:10}  {path}{ago}", file=out)
        if len(i["deviceList"]) < i["devices"]:
            print(f"  ... and {i['devices'] - len(i['deviceList'])} more (--limit)", file=out)


def run_prevalence(aws: Any, table: Any, opts: CloudOptions, args: Any, out: TextIO) -> int:
    """The command; ``table``: the prevalence table (a boto3 Table)."""
    now = time.time()
    if args.publish_known:
        check_known_options(args.known_share, args.known_after)
        return publish_known(aws, table, opts, args, out, now)
    if args.identity:
        result = lookup(table, args.identity, args.thing_group, args.limit)
        if args.json:
            print(json.dumps(result, indent=2, sort_keys=True), file=out)
        else:
            print_lookup(result, out, now)
        return 0
    result = listing(table, args.thing_group, args.rare, args.limit)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True), file=out)
    else:
        print_listing(result, out, args.rare)
    return 0


def publish_known(aws: Any, table: Any, opts: CloudOptions, args: Any, out: TextIO, now: float) -> int:
    from ddcustom.tooling.cloud import runner
    from ddcustom.tooling.cloud.deployment import KnownExecutablesStep
    from ddcustom.tooling.cloud.steps import Env

    shas = known(table, opts.thing_group, args.known_share, args.known_after, now)
    if len(shas) > MAX_KNOWN:
        raise OptionError(
            f"{len(shas)} programs are common in {opts.thing_group}, more than {MAX_KNOWN}: "
            "raise --known-share"
        )
    print(
        f"{len(shas)} programs run on at least {args.known_share:g} % of the devices of {opts.thing_group} "
        f"and have for at least {duration(args.known_after)}",
        file=out,
    )
    identity = aws("sts").get_caller_identity()
    env = Env(account=identity["Account"], region=opts.region, partition=identity["Arn"].split(":")[1])
    step = KnownExecutablesStep(opts, env, env.arn("iot", f"thinggroup/{opts.thing_group}"), shas)
    return runner.setup([step], aws, out, dry_run=args.dry_run)
