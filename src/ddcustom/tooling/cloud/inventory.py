"""The inventory message a device publishes to ``ddcustom/{thingName}/inventory``, read and checked as
``src/ddcustom/schemas/inventory.schema.json`` defines it (docs/fleet.md, "The inventory message").

Standard library only: the prevalence function's package carries it. ``parse`` refuses what the schema
refuses (a test holds the two together), so the function never stores what a device made up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

TOPIC = "ddcustom/{thingName}/inventory"
TOPIC_FILTER = "ddcustom/+/inventory"
THING_LEVEL = 2  # topic(2) is the thing
SCHEMA = 1
FULL, CHANGES = "full", "changes"
ORIGINS = ("learned", "deployment", "approved")
DEPLOYMENT = "deployment"
MAX_IDENTITIES = 2000
MAX_SEQ = 2**53 - 1
LOWEST, HIGHEST = "0" * 64, "g"  # every sha256 is >= LOWEST and < HIGHEST

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_THING = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
_COMPONENT = re.compile(r"^[^@\s]{1,128}@[^@\s]{1,64}$")
_MESSAGE_KEYS = {
    "schema",
    "thingName",
    "seq",
    "kind",
    "sent",
    "part",
    "parts",
    "from",
    "to",
    "identities",
    "removed",
}
_IDENTITY_KEYS = {"sha256", "path", "script", "firstSeen", "origin", "component", "cpuLevel"}


@dataclass(frozen=True)
class Identity:
    sha256: str
    path: str
    first_seen: int
    origin: str
    script: str = ""
    component: str = ""
    cpu_level: Optional[float] = None

    def details(self) -> dict[str, Any]:
        """What the cloud keeps of it, in the table's short names."""
        details: dict[str, Any] = {"path": self.path, "first": self.first_seen, "origin": self.origin}
        if self.script:
            details["script"] = self.script
        if self.component:
            details["comp"] = self.component
        if self.cpu_level is not None:
            details["cpu"] = self.cpu_level
        return details


@dataclass(frozen=True)
class Message:
    thing: str
    seq: int
    kind: str
    identities: tuple[Identity, ...]
    removed: tuple[str, ...] = ()
    low: str = LOWEST  # a full inventory (or its part) covers low <= sha256 < high
    high: str = HIGHEST

    def covers(self, sha256: str) -> bool:
        return self.low <= sha256 < self.high


def parse(data: Any) -> Message:
    """The message, or ValueError saying what is wrong with it (keys the rule adds, topicThing, are read
    by the caller and ignored here)."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    unknown = set(data) - _MESSAGE_KEYS - {"topicThing"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    if data.get("schema") != SCHEMA:
        raise ValueError(f"schema {data.get('schema')!r}: only {SCHEMA} is known")
    thing = _text(data, "thingName", _THING)
    seq = _integer(data, "seq", 1, MAX_SEQ)
    kind = data.get("kind")
    if kind not in (FULL, CHANGES):
        raise ValueError(f"kind {kind!r}: expected full or changes")
    for key in ("sent", "part", "parts"):
        if key in data:
            _integer(data, key, 0 if key == "sent" else 1, MAX_SEQ if key == "sent" else 1000)
    if kind == CHANGES and {"part", "parts", "from", "to"} & set(data):
        raise ValueError("a changes message has no part, parts, from or to")
    if kind == FULL and "removed" in data:
        raise ValueError("a full inventory has no removed list: what it does not list is gone")
    low = _text(data, "from", _SHA256) if "from" in data else LOWEST
    high = _text(data, "to", _SHA256) if "to" in data else HIGHEST
    identities = tuple(_identity(item) for item in _items(data, "identities", required=True))
    removed = tuple(_sha256(item) for item in _items(data, "removed", required=False))
    if kind == FULL and not all(low <= i.sha256 < high for i in identities):
        raise ValueError("an identity of this part is outside its from/to range")
    return Message(thing, seq, kind, identities, removed, low, high)


def _identity(item: Any) -> Identity:
    if not isinstance(item, dict):
        raise ValueError("an identity is not an object")
    unknown = set(item) - _IDENTITY_KEYS
    if unknown:
        raise ValueError(f"unknown identity keys {sorted(unknown)}")
    origin = item.get("origin")
    if origin not in ORIGINS:
        raise ValueError(f"origin {origin!r}: expected one of {', '.join(ORIGINS)}")
    component = _text(item, "component", _COMPONENT) if "component" in item else ""
    if origin == DEPLOYMENT and not component:
        raise ValueError("an identity placed by a deployment names its component@version")
    cpu = item.get("cpuLevel")
    if cpu is not None and (
        isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not 0 <= cpu <= 100000
    ):
        raise ValueError(f"cpuLevel {cpu!r}: expected a number from 0 to 100000")
    return Identity(
        sha256=_sha256(item.get("sha256")),
        path=_bounded(item, "path"),
        first_seen=_integer(item, "firstSeen", 0, MAX_SEQ),
        origin=origin,
        script=_bounded(item, "script") if "script" in item else "",
        component=component,
        cpu_level=None if cpu is None else float(cpu),
    )


def _items(data: dict[str, Any], key: str, required: bool) -> list[Any]:
    value = data.get(key, None if required else [])
    if not isinstance(value, list) or len(value) > MAX_IDENTITIES:
        raise ValueError(f"{key}: expected a list of at most {MAX_IDENTITIES}")
    return value


def _sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ValueError(f"{str(value)[:80]!r} is not a SHA-256 in lower-case hex")
    return value


def _text(data: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"{key} {str(value)[:80]!r} is not valid")
    return value


def _bounded(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not 1 <= len(value) <= 1024:
        raise ValueError(f"{key}: expected 1 to 1024 characters")
    return value


def _integer(data: dict[str, Any], key: str, low: int, high: int) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} {str(value)[:80]!r}: expected an integer from {low} to {high}")
    return value
