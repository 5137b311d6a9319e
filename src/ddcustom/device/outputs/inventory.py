"""The fleet inventory (``FleetInventory``): the executable identities of the learned baseline, published
to ``ddcustom/{thing}/inventory`` for the cloud's prevalence (docs/fleet.md, "The inventory message";
the JSON schema is ``ddcustom/schemas/inventory.schema.json``).

What is sent: every identity of the ``executable`` and ``gpu_executable`` kinds that can be known, one
per SHA-256 of what runs (``program_sha256``: the executable's, the script's, or for an interpreter
running a module or inline code the digest of "<interpreter's SHA-256> <script>"), with its path, the
script, when the baseline first saw it, its origin, the component of a deployment, and the CPU level its
program learned (``program_cpu``). Weak identities (another user's process without the privileged
reader) and the operator's ``sha256:``/``path:`` patterns are not identities of something that ran and
are left out.

When: a full inventory at the start (unless one went out less than a day ago), once a day at a time of
day drawn from the thing name (a fleet does not send at once), and when the learning period ends; in
between, what changed, looked at every CHANGES_EVERY_SECONDS. What was sent is kept in
``<StateDirectory>/inventory.json`` (digests of the identities, the last ``seq``): changes are what
differs from what IoT Core acknowledged, so a message that failed is simply part of the next one, and
a restart loses nothing. A failure is tried again after 1 minute, doubling to an hour; the error is
logged once. Each message stays under MAX_MESSAGE_BYTES of JSON and MAX_IDENTITIES; a full inventory
that does not fit is cut into parts by SHA-256 range, each part standing alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Optional, Protocol, TypeVar, Union

from ddcustom.device.backoff import backoff_delays
from ddcustom.device.baseline.file import APPROVED, DEPLOYMENT, LEARNED, Entry
from ddcustom.device.baseline.keys import PATH_PREFIX, SHA256_PREFIX
from ddcustom.device.baseline.kinds.executables import EXECUTABLE, GPU_EXECUTABLE, WEAK_PREFIX
from ddcustom.device.baseline.kinds.program_levels import PROGRAM_CPU
from ddcustom.device.fileio import read_bounded, write_atomic
from ddcustom.device.outputs.sink import SinkError, serialise
from ddcustom.device.sources.identity import program_sha256

log = logging.getLogger(__name__)

# an identity, or the SHA-256 of one that is gone
ItemT = TypeVar("ItemT", dict[str, Any], str, Union[dict[str, Any], str])

SCHEMA = 1
MAX_MESSAGE_BYTES = 120_000  # of JSON: IoT Core takes 128 KB, with room for the topic and MQTT
MAX_IDENTITIES = 2000
MAX_TEXT = 1024  # a path or script longer than this is cut (the schema's bound)
CHANGES_EVERY_SECONDS = 300.0
DAY = 86400.0
RETRY_FIRST_SECONDS, RETRY_CAP_SECONDS = 60.0, 3600.0
STATE_BYTES = 8_000_000
SHA256_HEX = frozenset("0123456789abcdef")
COMPONENT_MAX = (128, 64)  # name@version bounds of the schema
ORIGINS = {LEARNED: "learned", DEPLOYMENT: "deployment", APPROVED: "approved"}


def inventory_topic(thing_name: str) -> str:
    return f"ddcustom/{thing_name}/inventory"


class InventoryBaseline(Protocol):
    """What the publisher reads of the baseline (``CycleBaseline`` satisfies it)."""

    def live(self, kind: str) -> Mapping[str, Entry]: ...


class InventorySink(Protocol):
    def publish_inventory(self, message: dict[str, Any]) -> bool:
        """Publish one inventory message (acknowledged when it returns; SinkError otherwise). False when
        the sink has no fleet to send it to."""


def identities(baseline: InventoryBaseline) -> dict[str, dict[str, Any]]:
    """The inventory's identities of ``baseline``, by SHA-256 (the module docstring says which)."""
    levels = baseline.live(PROGRAM_CPU.name)
    found: dict[str, dict[str, Any]] = {}
    for kind in (EXECUTABLE.name, GPU_EXECUTABLE.name):
        for key, entry in baseline.live(kind).items():
            identity = _identity(key, entry, levels.get(key))
            if identity is None:
                continue
            kept = found.get(identity["sha256"])
            if kept is None:
                found[identity["sha256"]] = identity
            else:  # the same content at two paths, or as process and GPU process: its first sight
                kept["firstSeen"] = min(kept["firstSeen"], identity["firstSeen"])
    return found


def _identity(key: str, entry: Entry, level: Optional[Entry]) -> Optional[dict[str, Any]]:
    if key.startswith((WEAK_PREFIX, SHA256_PREFIX, PATH_PREFIX)):
        return None  # a weak identity, or an operator's pattern
    details = entry.details
    path, sha = details.get("path"), details.get("sha256")
    script, script_sha = details.get("script", ""), details.get("script_sha256", "")
    if not (isinstance(path, str) and path and isinstance(sha, str) and len(sha) == 64):
        return None
    content = program_sha256(sha, script, script_sha)
    if len(content) != 64 or not SHA256_HEX.issuperset(content):
        return None
    identity: dict[str, Any] = {
        "sha256": content,
        "path": path[:MAX_TEXT],
        "firstSeen": max(0, int(entry.first_seen)),
        "origin": ORIGINS.get(entry.origin, "learned"),
    }
    if script:
        identity["script"] = str(script)[:MAX_TEXT]
    component = details.get("component")
    if identity["origin"] == "deployment":
        name, _, version = str(component).partition("@")
        if 0 < len(name) <= COMPONENT_MAX[0] and 0 < len(version) <= COMPONENT_MAX[1] and "@" not in version:
            identity["component"] = f"{name}@{version}"
        else:
            identity["origin"] = "learned"  # a deployment that cannot be named is not vouched for
    if level is not None:
        value = level.details.get("all")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 100_000:
            identity["cpuLevel"] = round(float(value), 1)
    return identity


def digest(identity: Mapping[str, Any]) -> str:
    """What the state keeps of a sent identity: enough to see that it changed."""
    return hashlib.sha256(serialise(dict(identity)).encode()).hexdigest()[:16]


def day_slot(thing_name: str) -> float:
    """This device's time of day for its daily full inventory, in seconds after midnight UTC."""
    return float(int(hashlib.sha256(thing_name.encode()).hexdigest()[:8], 16) % int(DAY))


def last_slot(thing_name: str, wall: float) -> float:
    """The latest time at or before ``wall`` at this device's time of day."""
    slot = day_slot(thing_name)
    return (wall - slot) // DAY * DAY + slot


def full_messages(
    thing_name: str, found: Mapping[str, dict[str, Any]], seq: int, sent: int
) -> list[dict[str, Any]]:
    """A full inventory: one message, or parts by SHA-256 range, each under the bounds."""
    ordered = [found[sha] for sha in sorted(found)]
    head = {"schema": SCHEMA, "thingName": thing_name, "seq": seq, "kind": "full", "sent": sent}
    groups = list(_groups(head, ordered))
    if len(groups) == 1:
        return [{**head, "part": 1, "parts": 1, "identities": groups[0]}]
    messages = []
    for number, group in enumerate(groups, 1):
        message = {**head, "part": number, "parts": len(groups)}
        if number > 1:
            message["from"] = group[0]["sha256"]
        if number < len(groups):
            message["to"] = groups[number][0]["sha256"]
        message["identities"] = group
        messages.append(message)
    return messages


def change_batches(
    head: dict[str, Any], changed: list[dict[str, Any]], removed: list[str]
) -> Iterator[tuple[list[dict[str, Any]], list[str]]]:
    """(identities, removed) of each ``changes`` message, each message under the bounds."""
    items: list[Union[dict[str, Any], str]] = [*changed, *removed]
    for group in _groups(head, items):
        yield [i for i in group if isinstance(i, dict)], [i for i in group if isinstance(i, str)]


def _groups(head: dict[str, Any], items: Sequence[ItemT]) -> Iterator[list[ItemT]]:
    """``items`` (identities, or SHA-256s of what is gone) cut so that each group, in a message like
    ``head`` (with room for the part fields), stays under MAX_MESSAGE_BYTES and MAX_IDENTITIES. Always
    one group at least, empty or not."""
    base = len(serialise(head)) + 300  # part, parts, from, to, the fields' names
    group: list[ItemT] = []
    size = base
    for item in items:
        item_size = (len(serialise(item)) if isinstance(item, dict) else len(item) + 2) + 1
        if group and (size + item_size > MAX_MESSAGE_BYTES or len(group) >= MAX_IDENTITIES):
            yield group
            group, size = [], base
        group.append(item)
        size += item_size
    if group or not items:
        yield group


class InventoryPublisher:
    """Decides when the inventory is due and publishes it (the module docstring); one per agent."""

    def __init__(
        self,
        thing_name: str,
        state_file: str,
        wall_clock: Callable[[], float],
    ) -> None:
        self.thing_name = thing_name
        self._state_file = state_file
        self._wall = wall_clock
        self._seq = 0
        self._full_at = 0.0  # wall time of the last full inventory acknowledged
        self._sent: dict[str, str] = {}  # sha256 -> digest, as IoT Core acknowledged them
        self._next_look = 0.0  # monotonic
        self._learning: Optional[bool] = None
        self._delays: Optional[Iterator[float]] = None  # while failing
        self._failure: Optional[str] = None
        self.messages_sent = 0
        self._load()

    def run(self, sink: InventorySink, baseline: InventoryBaseline, learning: bool, now: float) -> None:
        """Publish what is due at monotonic time ``now``; never raises for a failed publish."""
        learning_ended = self._learning is True and not learning
        self._learning = learning
        if now < self._next_look and not learning_ended:
            return
        wall = self._wall()
        found = identities(baseline)
        full = learning_ended or not self._full_at or self._full_at < last_slot(self.thing_name, wall)
        try:
            if full:
                self._send_full(sink, found, wall)
            else:
                self._send_changes(sink, found, wall)
        except SinkError as exc:
            delays = self._delays = self._delays or backoff_delays(RETRY_FIRST_SECONDS, RETRY_CAP_SECONDS)
            delay = next(delays)
            if str(exc) != self._failure:
                self._failure = str(exc)
                log.warning("fleet inventory not sent, trying again in %.0f s: %s", delay, exc)
            self._next_look = now + delay
            return
        if self._failure is not None:
            log.info("fleet inventory sent again")
        self._delays, self._failure = None, None
        self._next_look = now + CHANGES_EVERY_SECONDS

    def _send_full(self, sink: InventorySink, found: Mapping[str, dict[str, Any]], wall: float) -> None:
        seq = self._next_seq(wall)
        messages = full_messages(self.thing_name, found, seq, int(wall))
        for message in messages:
            if not sink.publish_inventory(message):
                return
            self.messages_sent += 1
        self._sent = {sha: digest(identity) for sha, identity in found.items()}
        self._full_at = wall
        self._save()
        log.info("fleet inventory sent: %d identities in %d message(s)", len(found), len(messages))

    def _send_changes(self, sink: InventorySink, found: Mapping[str, dict[str, Any]], wall: float) -> None:
        changed = [
            identity for sha, identity in sorted(found.items()) if self._sent.get(sha) != digest(identity)
        ]
        removed = sorted(self._sent.keys() - found.keys())
        if not changed and not removed:
            return
        head = {"schema": SCHEMA, "thingName": self.thing_name, "seq": 1, "kind": "changes", "sent": 0}
        for group, gone in change_batches(head, changed, removed):
            message: dict[str, Any] = {**head, "seq": self._next_seq(wall), "sent": int(wall)}
            message["identities"] = group
            if gone:
                message["removed"] = gone
            if not sink.publish_inventory(message):
                return
            self.messages_sent += 1
            for identity in group:
                self._sent[identity["sha256"]] = digest(identity)
            for sha in gone:
                self._sent.pop(sha, None)
            self._save()  # what went out is not sent again, even if a later batch fails
        log.info("fleet inventory: %d identities changed, %d gone", len(changed), len(removed))

    def _next_seq(self, wall: float) -> int:
        self._seq = max(self._seq + 1, int(wall * 1000))
        return self._seq

    # ---- state ---------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            state = json.loads(read_bounded(self._state_file, STATE_BYTES))
            seq, full_at, sent = state["seq"], state["full_at"], state["sent"]
            if not (isinstance(seq, int) and isinstance(full_at, (int, float)) and isinstance(sent, dict)):
                raise ValueError("unexpected types")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "fleet inventory state %s unusable (%s): a full inventory goes out", self._state_file, exc
            )
            return
        self._seq, self._full_at = seq, float(full_at)
        self._sent = {str(k): str(v) for k, v in sent.items()}

    def _save(self) -> None:
        state = {"seq": self._seq, "full_at": self._full_at, "sent": self._sent}
        try:
            os.makedirs(os.path.dirname(self._state_file), mode=0o700, exist_ok=True)
            write_atomic(self._state_file, json.dumps(state, separators=(",", ":")).encode(), durable=False)
        except OSError as exc:  # the next start sends a full inventory: harmless
            log.warning("cannot keep the fleet inventory state in %s: %s", self._state_file, exc)
