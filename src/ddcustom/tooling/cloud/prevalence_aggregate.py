"""The prevalence function's scheduled part (every minute): the group's counts, its device lists, the
rare-program alerts, and hourly, aging and the common programs.

**Counts, exactly once, without transactions.** Devices leave what their messages change in the counts
as pending entries on their own items (prevalence.py). A run, holding the group's lease (``A#<group>``),
takes up to MAX_DEVICES_PER_RUN devices with pending entries, writes their names and entry ids into the
lease item as the run's journal under a new run number, then:

1. writes the device lists (``I#<sha>``/``<group>#<thing>``, and ``F#<path>``): puts and deletes, which give
   the same result however often they are made;
2. adds the run's sums to each counter and to the group's device count, each under the condition that the
   counter has not seen this run number yet (``wm``): a counter is changed once per run, whatever happens;
3. takes the journaled entries off the devices' items (under their version);
4. alerts, then clears the journal.

A run that stops anywhere (a timeout, throttling) leaves its journal: the next run does the same run
again, and steps 1 to 3 skip what was done. The counter of a program every device runs is written once
per run, not once per device, which is what lets a fleet of 100 000 devices report at once.

**Rare programs.** An identity is rare when the group has at least RARE_MIN_GROUP reporting devices and
it runs on at most RARE_DEVICES of them or on fewer than RARE_SHARE percent. One alert when it is first
rare, one more each time it spreads to more devices while it is rare, and a last one when it spreads past
the thresholds; never while every device that runs it says a deployment placed it and that component
(at that version) is in the group's current Greengrass deployment.
"""

from __future__ import annotations

import logging
import math
import posixpath
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Optional

from boto3.dynamodb.conditions import Key

from ddcustom.tooling.cloud import prevalence_table as layout
from ddcustom.tooling.cloud.lambda_common import duration, error_code, message, publish, utc
from ddcustom.tooling.cloud.prevalence_state import (
    KEPT,
    Clients,
    DeviceState,
    PrevalenceError,
    Settings,
    leave,
)

MAX_DEVICES_PER_RUN = 200
LEASE_SECONDS = 330  # longer than the function's timeout
HOURLY_SECONDS = 3600
AGE_OUT_SECONDS = 7 * 86400  # a device that has not reported for a week leaves the counts
MAX_AGING_PER_HOUR = 500
MAX_LISTED = 20  # devices named in an alert
MIN_LISTED = 20  # device lists are kept for identities on at most this many devices, or more (link_most)
KIND = "rare-program"

log = logging.getLogger("ddcustom.prevalence")


def aggregate(aws: Clients, settings: Settings, now: float, deadline: float, owner: str) -> dict[str, Any]:
    """One scheduled run: pending counts, alerts, and the hourly work when it is due."""
    table, group = aws.table, settings.group
    result: dict[str, Any] = {"devices": 0, "identities": 0, "alerts": []}
    if not _lease(table, group, owner, now):
        return {**result, "busy": True}
    try:
        while True:
            done = _run(aws, settings, owner, now, result)
            if done < MAX_DEVICES_PER_RUN or time.monotonic() > deadline:
                break
        lease = layout.get(table, layout.aggregation_key(group), consistent=True) or {}
        last = lease.get("hourly")  # the first hourly work is an hour after the first run
        due = last is not None and now - float(last) >= HOURLY_SECONDS and time.monotonic() < deadline
        if due:
            hourly(aws, settings, now, result)
        if due or last is None:
            table.update_item(
                Key=layout.aggregation_key(group),
                UpdateExpression="SET hourly = :now",
                ExpressionAttributeValues={":now": layout.number(now)},
            )
    finally:
        table.update_item(
            Key=layout.aggregation_key(group),
            UpdateExpression="REMOVE lease, lessee",
            ConditionExpression="lessee = :me",
            ExpressionAttributeValues={":me": owner},
        )
    return result


def _lease(table: Any, group: str, owner: str, now: float) -> bool:
    try:
        table.update_item(
            Key=layout.aggregation_key(group),
            UpdateExpression="SET lease = :until, lessee = :me",
            ConditionExpression="attribute_not_exists(lease) OR lease < :now OR lessee = :me",
            ExpressionAttributeValues={
                ":until": layout.number(now + LEASE_SECONDS),
                ":now": layout.number(now),
                ":me": owner,
            },
        )
        return True
    except Exception as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise
        return False  # another run holds it


def _states(table: Any, things: list[str]) -> dict[str, DeviceState]:
    """The devices' items, read consistently."""
    items = layout.batch_get(table, [layout.state_key(thing) for thing in things])
    return {str(item["thing"]): DeviceState.from_item(str(item["thing"]), item) for item in items}


def _run(aws: Clients, settings: Settings, owner: str, now: float, result: dict[str, Any]) -> int:
    table, group = aws.table, settings.group
    lease = layout.get(table, layout.aggregation_key(group), consistent=True) or {}
    run = int(lease.get("run", 0))
    journal: dict[str, list[str]] = lease.get("journal") or {}
    states: dict[str, DeviceState] = {}
    if not journal:
        waiting = layout.query(
            table,
            limit=MAX_DEVICES_PER_RUN,
            IndexName=layout.PENDING,
            KeyConditionExpression=Key("ppk").eq(f"P#{group}"),
        )
        states = _states(table, sorted({item["pk"][2:] for item in waiting}))
        journal = {thing: sorted(state.pending) for thing, state in states.items() if state.pending}
        if not journal:
            return 0
        run += 1
        table.update_item(
            Key=layout.aggregation_key(group),
            UpdateExpression="SET #run = :run, journal = :journal",
            ConditionExpression="lessee = :me",
            ExpressionAttributeNames={"#run": "run"},
            ExpressionAttributeValues={":run": run, ":journal": journal, ":me": owner},
        )
    else:  # the journal of a run that stopped: do that run again
        states = _states(table, sorted(journal))
    changes = Changes.collect(states, journal)
    devices = _apply_group(table, settings, changes.devices, run, now)
    counters = changes.apply_counters(table, group, run, now, link_most(devices, settings))
    changes.write_links(table, group, {str(c["sha"]) for c in counters if c.get("unlisted")})
    _clean(table, journal, now)
    alerts = Alerts(aws, settings, devices, now)
    for counter in counters:
        alerts.consider(counter)
    table.update_item(Key=layout.aggregation_key(group), UpdateExpression="REMOVE journal")
    result["devices"] += len(journal)
    result["identities"] += len(counters)
    result["alerts"] += alerts.sent
    return len(journal)


class Changes:
    """What the journaled entries change: counts and claims per identity, devices, device lists."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.claims: dict[str, int] = defaultdict(int)
        self.devices = 0
        self.links: dict[tuple[str, str], Optional[dict[str, Any]]] = {}  # (sha, thing) -> details, or gone
        self.details: dict[str, dict[str, Any]] = {}  # sha -> the details of one device that runs it
        self.components: dict[str, str] = {}  # sha -> the component@version a device says placed it

    @classmethod
    def collect(cls, states: dict[str, DeviceState], journal: dict[str, list[str]]) -> Changes:
        changes = cls()
        for thing in sorted(journal):
            state = states.get(thing)
            for entry_id in journal[thing]:
                entry = state.pending.get(entry_id) if state is not None else None
                if entry is None or state is None:
                    continue  # taken off already: its run did everything before that
                for sha in entry["add"]:
                    changes.counts[sha] += 1
                for sha in entry["rm"]:
                    changes.counts[sha] -= 1
                    changes.links[(sha, thing)] = None
                for sha in [*entry["add"], *entry["upd"]]:
                    details = state.ids.get(sha, {})
                    changes.links[(sha, thing)] = details
                    if details.get("path"):
                        changes.details.setdefault(sha, details)
                    if details.get("comp"):
                        changes.components[sha] = str(details["comp"])
                for sha, delta in entry["c"].items():
                    changes.claims[sha] += int(delta)
                changes.devices += int(entry["dev"])
        return changes

    def write_links(self, table: Any, group: str, unlisted: set[str]) -> None:
        """The device lists: a device that no longer runs an identity leaves its list; one that runs it
        joins it unless the identity runs on too many devices to keep a list (``unlisted``)."""
        files: set[tuple[str, str]] = set()
        with table.batch_writer(overwrite_by_pkeys=["pk", "sk"]) as batch:
            for (sha, thing), details in sorted(self.links.items(), key=lambda kv: kv[0]):
                key = layout.link_key(sha, group, thing)
                if details is None:
                    batch.delete_item(Key=key)
                    continue
                files |= {(path, sha) for path in (details.get("path"), details.get("script")) if path}
                if sha not in unlisted:
                    batch.put_item(Item=link_item(sha, group, thing, details))
            for path, sha in sorted(files):
                if path.startswith("/"):
                    batch.put_item(Item={**layout.file_key(path, sha), "path": path})

    def apply_counters(
        self, table: Any, group: str, run: int, now: float, most_listed: int
    ) -> list[dict[str, Any]]:
        """Adds the run's sums to the counters; the counters after. Only the lease holder writes counters,
        so a counter is read, changed and put back (25 a call), with the run number: a counter that has it
        already got this run's sums before the run stopped. A counter over ``most_listed`` devices is
        marked ``unlisted``: its device list is not kept."""
        shas = sorted(set(self.counts) | set(self.claims))
        current = {
            c["sha"]: c for c in layout.batch_get(table, [layout.counter_key(group, sha) for sha in shas])
        }
        counters = []
        with table.batch_writer() as batch:
            for sha in shas:
                old = current.get(sha, {})
                if int(old.get("wm", 0)) >= run:
                    counters.append(old)
                    continue
                new: dict[str, Any] = {**old, **layout.counter_key(group, sha), "gpk": f"C#{group}"}
                new.update(grp=group, sha=sha)
                new.update(wm=run, gsk=int(old.get("gsk", 0)) + self.counts.get(sha, 0))
                new["claims"] = int(old.get("claims", 0)) + self.claims.get(sha, 0)
                new.setdefault("since", now)
                details = self.details.get(sha, {})
                new.update({k: details[k] for k in ("path", "script") if details.get(k) and not new.get(k)})
                if sha in self.components:
                    new["comp"] = self.components[sha]
                if new["gsk"] > most_listed:
                    new["unlisted"] = True
                batch.put_item(Item=layout.stored(new))
                counters.append(new)
        return counters


def _apply_group(table: Any, settings: Settings, delta: int, run: int, now: float) -> int:
    """The group's count of reporting devices after the run (and its thresholds, for the command line)."""
    key = layout.group_key(settings.group)
    try:
        group = table.update_item(
            Key=key,
            UpdateExpression="SET wm = :run, updated = :now, rareDevices = :rd, rareShare = :rs, "
            "minGroup = :mg ADD devices :d",
            ConditionExpression="attribute_not_exists(wm) OR wm < :run",
            ExpressionAttributeValues={
                ":run": run,
                ":now": layout.number(now),
                ":rd": settings.rare_devices,
                ":rs": layout.number(settings.rare_share),
                ":mg": settings.rare_min_group,
                ":d": delta,
            },
            ReturnValues="ALL_NEW",
        )["Attributes"]
    except Exception as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise
        group = table.get_item(Key=key, ConsistentRead=True)["Item"]
    return int(group.get("devices", 0))


def _clean(table: Any, journal: dict[str, list[str]], now: float) -> None:
    """Takes the journaled entries off the devices' items, under their version (a message may write the
    item meanwhile: then read it again)."""
    for thing, entry_ids in journal.items():
        for _ in range(5):
            item = layout.get(table, layout.state_key(thing), consistent=True)
            state = DeviceState.from_item(thing, item)
            if item is None or not set(entry_ids) & set(state.pending):
                break
            state.pending = {k: v for k, v in state.pending.items() if k not in entry_ids}
            new = state.to_item()
            new["ver"] = state.version + 1
            try:
                table.put_item(
                    Item=new,
                    ConditionExpression="ver = :ver",
                    ExpressionAttributeValues={":ver": state.version},
                )
                break
            except Exception as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
        else:
            raise PrevalenceError(f"the item of {thing} kept changing; the next run finishes the run")


# ---- rare programs ----


def rare(devices: int, group_devices: int, settings: Settings) -> bool:
    return layout.is_rare(
        devices, group_devices, settings.rare_devices, settings.rare_share, settings.rare_min_group
    )


def rare_most(group_devices: int, settings: Settings) -> int:
    return layout.rare_most(group_devices, settings.rare_devices, settings.rare_share)


def link_most(group_devices: int, settings: Settings) -> int:
    """The most devices an identity's device list is kept for: twice the rare limit, at least
    MIN_LISTED. A list of every device is no use for what every device runs, and would be one item per
    device and identity (30 million for 100 000 devices of 300 programs)."""
    return max(MIN_LISTED, 2 * rare_most(group_devices, settings))


def link_item(sha: str, group: str, thing: str, details: dict[str, Any]) -> dict[str, Any]:
    kept = {k: details[k] for k in KEPT if k in details}
    return dict(layout.stored({**layout.link_key(sha, group, thing), "thing": thing, **kept}))


class Alerts:
    """Rare-program alerts of one run; ``sent``: the identities alerted."""

    def __init__(self, aws: Clients, settings: Settings, group_devices: int, now: float) -> None:
        self.aws, self.settings, self.group_devices, self.now = aws, settings, group_devices, now
        self.sent: list[str] = []
        self._deployed: Optional[set[str]] = None

    def consider(self, counter: dict[str, Any]) -> None:
        devices, alerted = int(counter.get("gsk", 0)), int(counter.get("alerted", 0))
        if counter.get("unlisted"):
            return  # its device list is rebuilt first (hourly), then it is considered
        if devices < alerted:
            self._set_alerted(counter, devices, expected=alerted)  # fewer devices: a new spread alerts
            return
        if devices <= alerted or self.exempt(counter):
            return
        was_rare = alerted > 0 and rare(alerted, self.group_devices, self.settings)
        if not (rare(devices, self.group_devices, self.settings) or was_rare):
            return
        if not self._set_alerted(counter, devices, expected=alerted):
            return  # another run alerted
        try:
            subject, body = self.alert(counter, devices, alerted)
            publish(self.aws.sns, self.settings.topic_arn, subject, body)
        except Exception as exc:
            self._set_alerted(counter, alerted, expected=devices)
            raise PrevalenceError(f"cannot publish to {self.settings.topic_arn}: {exc}") from exc
        self.sent.append(str(counter["sha"]))

    def exempt(self, counter: dict[str, Any]) -> bool:
        """Placed by a deployment to the group: every device that runs it says so, naming a component
        (at a version) that the group's current Greengrass deployment holds."""
        devices, claims = int(counter.get("gsk", 0)), int(counter.get("claims", 0))
        return devices > 0 and claims >= devices and counter.get("comp") in self.deployed()

    def deployed(self) -> set[str]:
        if self._deployed is None:
            self._deployed = deployed_components(self.aws.greengrass, self.settings.group_arn)
        return self._deployed

    def _set_alerted(self, counter: dict[str, Any], devices: int, expected: int) -> bool:
        try:
            self.aws.table.update_item(
                Key=layout.counter_key(self.settings.group, counter["sha"]),
                UpdateExpression="SET alerted = :n",
                ConditionExpression="attribute_not_exists(alerted) OR alerted = :old",
                ExpressionAttributeValues={":n": devices, ":old": expected},
            )
            return True
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            return False

    def alert(self, counter: dict[str, Any], devices: int, alerted: int) -> tuple[str, str]:
        settings, group, total = self.settings, self.settings.group, self.group_devices
        sha = str(counter["sha"])
        found = layout.devices(self.aws.table, sha, group, limit=MAX_LISTED + 1)
        path = str(counter.get("path") or "(path unknown)")
        shown = str(counter.get("script") or path)
        still_rare = rare(devices, total, settings)
        thresholds = (
            f"at most {settings.rare_devices} devices, or under {settings.rare_share:g} % of them, in a "
            f"group of at least {settings.rare_min_group}"
        )
        name = posixpath.basename(shown)
        if alerted == 0:
            subject = f"ddcustom: rare program on {devices} of {total} devices of {group}: {name}"
            sentences = [
                f"A program runs on {devices} of the {total} devices of thing group {group} that report "
                f"their inventory: rare by this stack's thresholds ({thresholds}).",
            ]
        else:
            subject = f"ddcustom: rare program spread to {devices} of {total} devices of {group}: {name}"
            sentences = [
                f"A rare program has spread: it runs on {devices} of the {total} devices of thing group "
                f"{group}, {alerted} at the last alert about it."
            ]
            if not still_rare:
                sentences.append("It is no longer rare by the thresholds: this is the last alert about it.")
        sentences.append(
            "A program that only a few devices of a fleet run is how a miner installed before the component "
            "looks; so do a one-off tool, a failed update and a device of another model."
        )
        facts = [
            ("identity (SHA-256)", sha),
            ("path", path),
            *([("script", str(counter["script"]))] if counter.get("script") else []),
            ("in the group since", utc(float(counter.get("since", self.now)))),
            ("devices", f"{devices} of {total}"),
        ]
        if counter.get("claims"):
            comp = counter.get("comp")
            claim = f"say {counter['claims']} of the {devices} devices ({comp}, not in the deployment)"
            facts.append(("placed by a deployment", claim))
        for device in found[:MAX_LISTED]:
            first = device.get("first")
            seen = f"first seen {utc(first)} ({duration(self.now - first)} ago)" if first else "first seen -"
            facts.append(("device", f"{device['thing']}, {seen}, {device.get('origin', '-')}"))
        if len(found) > MAX_LISTED:
            facts.append(("device", f"... and {devices - MAX_LISTED} more"))
        region = f" --region {settings.region}" if settings.region else ""
        commands = [
            f"ddcustom cloud prevalence {sha} --thing-group {group}{region}",
            f"ddcustom cloud status --thing-group {group}{region}",
            "docs/responding.md, section 'Rare program', says what to look for",
        ]
        data = {
            "kind": KIND,
            "event": "rare" if alerted == 0 else "spread",
            "thingGroup": group,
            "sha256": sha,
            "path": counter.get("path"),
            "script": counter.get("script"),
            "devices": devices,
            "groupDevices": total,
            "previousDevices": alerted,
            "since": counter.get("since"),
            "thingNames": [d["thing"] for d in found[:MAX_LISTED]],
        }
        return subject, message(sentences, facts, commands, data)


def deployed_components(greengrass: Any, group_arn: str) -> set[str]:
    """``name@version`` of the components in the group's current Greengrass deployment (empty when
    there is none or it cannot be read: then no claim is believed)."""
    try:
        listed = greengrass.list_deployments(targetArn=group_arn, historyFilter="LATEST_ONLY")
        deployments = listed.get("deployments", [])
        if not deployments:
            return set()
        deployment = greengrass.get_deployment(deploymentId=deployments[0]["deploymentId"])
    except Exception as exc:
        log.warning("cannot read the deployment of %s (%s): no deployment claim is believed", group_arn, exc)
        return set()
    components = deployment.get("components", {})
    return {f"{name}@{spec.get('componentVersion')}" for name, spec in components.items()}


# ---- hourly ----


def hourly(aws: Clients, settings: Settings, now: float, result: dict[str, Any]) -> None:
    """Devices silent for a week leave the counts; the common identities get (or lose) ``commonSince``;
    identities that became rare without a change of their own (the group grew) are alerted."""
    table, group = aws.table, settings.group
    stale = layout.query(
        table,
        limit=MAX_AGING_PER_HOUR,
        IndexName=layout.BY_GROUP,
        KeyConditionExpression=Key("gpk").eq(f"D#{group}")
        & Key("gsk").lt(layout.number(now - AGE_OUT_SECONDS)),
    )
    aged = [str(item["thing"]) for item in stale]
    for thing in aged:
        leave(aws, thing, now)
    result["aged"] = aged
    registry = layout.get(table, layout.group_key(group), consistent=True) or {}
    devices = int(registry.get("devices", 0))
    _common_since(table, group, devices, now)
    result["relisted"] = _relist(table, settings, devices)
    if devices >= settings.rare_min_group:
        alerts = Alerts(aws, settings, devices, now)
        for counter in layout.identities(table, group, most=rare_most(devices, settings)):
            alerts.consider(counter)
        result["alerts"] += alerts.sent


def _common_since(table: Any, group: str, devices: int, now: float) -> None:
    """Keeps ``commonSince`` on the identities run by at least half of the group's devices: set when one
    becomes common, removed when it is no longer (an identity must stay common to become known). Only the
    lease holder writes counters: they are changed and put back, 25 a call."""
    if devices <= 0:
        return
    least = math.ceil(layout.COMMON_SHARE * devices / 100)
    common = {str(c["sha"]): c for c in layout.identities(table, group, least=least)}
    before = set((layout.get(table, layout.known_key(group)) or {}).get("common", []))
    gone = layout.batch_get(table, [layout.counter_key(group, sha) for sha in sorted(before - set(common))])
    with table.batch_writer() as batch:
        for counter in common.values():
            if counter.get("commonSince") is None:
                batch.put_item(Item=layout.stored({**counter, "commonSince": now}))
        for counter in gone:
            batch.put_item(Item=layout.stored({k: v for k, v in counter.items() if k != "commonSince"}))
    if common:
        table.put_item(Item={**layout.known_key(group), "common": set(common), "at": layout.number(now)})
    else:
        table.delete_item(Key=layout.known_key(group))


def _relist(table: Any, settings: Settings, devices: int) -> list[str]:
    """Device lists again for the identities that run on few enough devices once more (an old version
    that a few devices kept after an update): from the items of the group's devices, 100 at a time (all
    of them: about 2 GB read for 100 000 devices, and only in an hour that needs it)."""
    group = settings.group
    most = link_most(devices, settings)
    counters = layout.identities(table, group, most=most, least=0)
    wanted = {str(c["sha"]) for c in counters if c.get("unlisted")}
    if not wanted:
        return []
    members = layout.query(
        table, IndexName=layout.BY_GROUP, KeyConditionExpression=Key("gpk").eq(f"D#{group}")
    )
    with table.batch_writer(overwrite_by_pkeys=["pk", "sk"]) as batch:
        for chunk in _chunks((str(item["thing"]) for item in members), 100):
            for state in _states(table, chunk).values():
                for sha, details in state.counted().items():
                    if sha in wanted:
                        batch.put_item(Item=link_item(sha, group, state.thing, details))
    for sha in sorted(wanted):
        table.update_item(Key=layout.counter_key(group, sha), UpdateExpression="REMOVE unlisted")
    return sorted(wanted)


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
