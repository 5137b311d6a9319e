"""Silent-device check: an alert for each device whose detector went silent, and one when it reports again.

A detector that stops is silent, not alarming: whoever can kill the component stops all detection, and
after three kills within an hour the nucleus leaves it BROKEN. What the fleet still sees is the named
shadow ``ddcustom`` no longer changing: the component republishes it at least hourly (``updated`` is the
device's wall-clock time of the update). ``ddcustom cloud setup`` deploys this file as a Lambda function
(handler ``silent.handler``) that EventBridge Scheduler runs every few minutes. Each run makes two fleet
index queries, whatever the size of the fleet:

- devices of the thing group whose shadow was last updated before ``now - SILENT_AFTER`` and that carry no
  mark: they went silent;
- devices that carry the mark and updated since: they came back.

The mark is the thing attribute ``ddcustomSilent`` (``since=<last update>,at=<when it was marked>``). The
function sets it when it reports a device silent and removes it when it reports it back, with the
thing's version as a condition (UpdateThing ``expectedVersion``): of two runs that race, one reports,
so each silence gives one "went silent" and one "came back" message. The attribute is in the fleet index
(registry data), which is how the next run knows without reading any shadow. When more than BURST
devices change at once (an outage, a deployment that stopped the component everywhere) they are marked
all the same and reported in one summary message rather than one e-mail each.

Environment: THING_GROUP, SILENT_AFTER (seconds), ALERT_TOPIC_ARN, STACK. The package carries the
fleet index helpers (fleet_index.py) and the handlers' helpers (lambda_common.py): standard library and
boto3 only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from ddcustom.tooling.cloud.fleet_index import REPORTED, quoted, search, updated
from ddcustom.tooling.cloud.lambda_common import duration, error_code, from_iso, iso, message, publish, utc

ATTRIBUTE = "ddcustomSilent"
DEFAULT_SILENT_AFTER = 3 * 3600  # three missed hourly heartbeats
BURST = 20  # more devices than this changing in one run: one summary message instead of one each
SUMMARY_NAMES = 50  # devices named in a summary
DEADLINE_MARGIN = 20.0  # seconds a run keeps for its messages when it stops marking
KIND = "silent-device"
SILENT, BACK = "silent", "back"

log = logging.getLogger("ddcustom.silent")
log.setLevel(logging.INFO)


@dataclass(frozen=True)
class Settings:
    group: str
    silent_after: int
    topic_arn: str
    region: str
    stack: str

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            group=environ["THING_GROUP"],
            silent_after=int(environ.get("SILENT_AFTER", DEFAULT_SILENT_AFTER)),
            topic_arn=environ["ALERT_TOPIC_ARN"],
            region=environ.get("AWS_REGION", ""),
            stack=environ.get("STACK", "ddcustom"),
        )


@dataclass
class Device:
    thing: str
    updated: int  # the last update the index shows
    since: Optional[int] = None  # came back: the last update before the silence (from the mark)
    recorded: bool = True  # False: the mark could not be written (no room for the attribute)


class SilentCheckError(Exception):
    """A run could not finish; the next run tries again (what it already reported stays marked)."""


def handler(event: Any, context: Any = None, clients: Optional[Mapping[str, Any]] = None) -> dict:
    """One run of the check. ``clients``: "iot" (registry), "index" (SearchIndex), "sns"; for tests."""
    settings = Settings.from_environment(os.environ)
    if clients is None:
        import boto3

        iot = boto3.client("iot")
        clients = {"iot": iot, "index": iot, "sns": boto3.client("sns")}
    budget = context.get_remaining_time_in_millis() / 1000 if context is not None else 60.0
    return check(clients, settings, time.time(), time.monotonic() + budget - DEADLINE_MARGIN)


def queries(settings: Settings, now: float) -> dict[str, str]:
    """The two fleet index queries of a run: devices that went silent, devices that came back."""
    group = f"thingGroupNames:{quoted(settings.group)}"
    before = int(now) - settings.silent_after
    return {
        SILENT: f"{group} AND {REPORTED}updated<{before} AND NOT attributes.{ATTRIBUTE}:*",
        BACK: f"{group} AND attributes.{ATTRIBUTE}:* AND {REPORTED}updated>={before}",
    }


def check(aws: Mapping[str, Any], settings: Settings, now: float, deadline: Optional[float] = None) -> dict:
    """Marks and reports the devices that went silent or came back; returns their names by outcome."""
    result: dict[str, list[str]] = {SILENT: [], BACK: [], "skipped": [], "later": []}
    for event, query in queries(settings, now).items():
        # every page first: marking a device takes it out of the query's results
        things = [t for t in search(aws["index"], query) if updated(t) is not None]
        _report(aws, settings, now, event, things, result, deadline)
    return result


def _report(
    aws: Mapping[str, Any],
    settings: Settings,
    now: float,
    event: str,
    things: list[dict[str, Any]],
    result: dict[str, list[str]],
    deadline: Optional[float],
) -> None:
    burst = len(things) > BURST
    claimed: list[Device] = []
    for thing in things:
        name = str(thing.get("thingName", ""))
        if deadline is not None and time.monotonic() > deadline:
            result["later"].append(name)  # the next run finds it again
            continue
        device = _claim(aws["iot"], name, int(updated(thing) or 0), event, now)
        if device is None:
            result["skipped"].append(name)
            continue
        if burst:
            claimed.append(device)
            continue
        _send(aws, settings, [device], event, now)
        result[event].append(name)
    if claimed:
        _send(aws, settings, claimed, event, now)
        result[event] += [d.thing for d in claimed]


def _send(aws: Mapping[str, Any], settings: Settings, devices: list[Device], event: str, now: float) -> None:
    """Publishes the message; on failure takes the marks back, so that the next run reports again."""
    if len(devices) == 1:
        subject, body = alert(settings, devices[0], event, now)
    else:
        subject, body = summary(settings, devices, event, now)
    try:
        publish(aws["sns"], settings.topic_arn, subject, body)
    except Exception as exc:
        for device in devices:
            _undo(aws["iot"], device, event)
        raise SilentCheckError(f"cannot publish to {settings.topic_arn}: {exc}") from exc


def _claim(iot: Any, thing: str, last_update: int, event: str, now: float) -> Optional[Device]:
    """Sets (went silent) or removes (came back) the mark, if this run is the one to do it; the Device to
    report, or None (another run did it, or the thing is gone)."""
    try:
        described = iot.describe_thing(thingName=thing)
    except Exception as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise
    mark = dict(described.get("attributes") or {}).get(ATTRIBUTE)
    device = Device(thing, last_update)
    if event == SILENT:
        if mark is not None:
            return None
        value = f"since={iso(last_update)},at={iso(now)}"
    else:
        if mark is None:
            return None
        device.since = _since(mark)
        value = ""  # an empty value removes the attribute
    payload = {"attributes": {ATTRIBUTE: value}, "merge": True}
    try:
        iot.update_thing(thingName=thing, attributePayload=payload, expectedVersion=described["version"])
    except Exception as exc:
        code = error_code(exc)
        if code in ("VersionConflictException", "ResourceNotFoundException"):
            return None  # changed meanwhile (another run marked it) or deleted
        if code != "InvalidRequestException" or event != SILENT:
            raise
        # a thing without a thing type that has no attribute to spare: report it, and say so
        log.warning("cannot record %s as silent (%s); it is reported again every run", thing, exc)
        device.recorded = False
    return device


def _undo(iot: Any, device: Device, event: str) -> None:
    value = "" if event == SILENT else f"since={iso(device.since or device.updated)},at={iso(time.time())}"
    try:
        payload = {"attributes": {ATTRIBUTE: value}, "merge": True}
        iot.update_thing(thingName=device.thing, attributePayload=payload)
    except Exception as exc:  # the message failed already; say so and let the next run sort it out
        log.warning("cannot take back the mark of %s: %s", device.thing, exc)


def _since(mark: str) -> Optional[int]:
    fields = dict(part.split("=", 1) for part in mark.split(",") if "=" in part)
    try:
        return from_iso(fields.get("since", ""))
    except ValueError:
        return None


def _commands(settings: Settings, thing: Optional[str]) -> list[str]:
    region = f" --region {settings.region}" if settings.region else ""
    commands = [f"ddcustom cloud status{region} --thing-group {settings.group}"]
    if thing:
        commands.append(
            f"aws greengrassv2 list-installed-components{region} --core-device-thing-name {thing}"
        )
    return [*commands, "docs/responding.md, section 'Silent device', says what to look for"]


def alert(settings: Settings, device: Device, event: str, now: float) -> tuple[str, str]:
    """Subject and body of the message about one device."""
    data: dict[str, Any] = {
        "kind": KIND,
        "event": event,
        "thingName": device.thing,
        "thingGroup": settings.group,
        "lastUpdate": device.updated,
    }
    if event == SILENT:
        silent = now - device.updated
        subject = f"ddcustom: {device.thing} is silent ({duration(silent)} without an update)"
        sentences = [
            f"Device {device.thing} of thing group {settings.group} has not updated its ddcustom shadow for "
            f"{duration(silent)}. The component updates it at least hourly: its detector has stopped "
            "reporting.",
            "The component was stopped or killed (after three errors within an hour the nucleus leaves it "
            "BROKEN), or the device lost its connection or is off. Whoever can kill the component stops "
            "all detection on the device.",
        ]
        if not device.recorded:
            sentences.append(
                f"This silence could not be recorded on the thing (attribute {ATTRIBUTE}: the thing has no "
                "attribute to spare), so every run of the check reports it again."
            )
        facts = [
            ("thing", device.thing),
            ("thing group", settings.group),
            ("last update", f"{utc(device.updated)} ({duration(silent)} ago)"),
            ("silent after", f"{duration(settings.silent_after)} without an update"),
        ]
        data.update(silentSeconds=int(silent), silentAfterSeconds=settings.silent_after)
        data.update(recorded=device.recorded)
    else:
        since = device.since if device.since is not None else device.updated
        silent = device.updated - since
        subject = f"ddcustom: {device.thing} reports again after {duration(silent)} of silence"
        sentences = [
            f"Device {device.thing} of thing group {settings.group} updated its ddcustom shadow again at "
            f"{utc(device.updated)}, after {duration(silent)} without an update.",
            "Find out why it was silent: a restart after a crash, an outage, or someone who stopped the "
            "component. What ran on the device meanwhile was not watched.",
        ]
        facts = [
            ("thing", device.thing),
            ("thing group", settings.group),
            ("silent from", utc(since)),
            ("reports again", utc(device.updated)),
            ("silent for", duration(silent)),
        ]
        data.update(silentSince=since, silentSeconds=int(silent))
    return subject, message(sentences, facts, _commands(settings, device.thing), data)


def summary(settings: Settings, devices: list[Device], event: str, now: float) -> tuple[str, str]:
    """Subject and body of one message about many devices (more than BURST in one run)."""
    count = len(devices)
    named = sorted(devices, key=lambda d: d.thing)[:SUMMARY_NAMES]
    listing = ", ".join(d.thing for d in named)
    if count > len(named):
        listing += f" and {count - len(named)} more"
    if event == SILENT:
        subject = f"ddcustom: {count} devices of {settings.group} went silent"
        sentences = [
            f"{count} devices of thing group {settings.group} have not updated their ddcustom shadow for "
            f"more than {duration(settings.silent_after)}.",
            f"So many at once is more likely an outage (network, Region, a deployment that stopped the "
            f"component) than {count} attacks. Each is recorded as silent (thing attribute {ATTRIBUTE}) and "
            "reported when it comes back.",
        ]
    else:
        subject = f"ddcustom: {count} devices of {settings.group} report again"
        sentences = [f"{count} devices of thing group {settings.group} updated their ddcustom shadow again."]
    facts = [("thing group", settings.group), ("devices", str(count)), ("names", listing)]
    data = {
        "kind": KIND,
        "event": event,
        "thingGroup": settings.group,
        "count": count,
        "thingNames": [d.thing for d in named],
    }
    return subject, message(sentences, facts, _commands(settings, None), data)
