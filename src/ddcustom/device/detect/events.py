"""The alert: a Device Defender violation event raised on the device.

Its wire form is the JSON of the events Device Defender Detect sends (violationId, thingName,
securityProfileName, behavior, metricValue, violationEventType, violationEventTime) plus
``"source": "device"`` and, on in-alarm events whose metric points at something, ``evidence``
(sources/evidence.py). Every sink publishes ``to_json()``, the spool stores it, and ``from_json`` reads
it back (keys it does not know, from another version, are kept and written again unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

IN_ALARM = "in-alarm"
ALARM_CLEARED = "alarm-cleared"
ALARM_INVALIDATED = "alarm-invalidated"
EVENT_TYPES = (IN_ALARM, ALARM_CLEARED, ALARM_INVALIDATED)

# wire key -> attribute, in the order the wire form has always had
_FIELDS = (
    ("violationId", "violation_id"),
    ("thingName", "thing_name"),
    ("securityProfileName", "security_profile_name"),
    ("behavior", "behavior"),
    ("metricValue", "metric_value"),
    ("violationEventType", "event_type"),
    ("violationEventTime", "event_time"),
    ("source", "source"),
    ("evidence", "evidence"),
)
_TYPES = {"behavior": dict, "metricValue": dict, "violationEventTime": int, "evidence": dict}


@dataclass(frozen=True)
class ViolationEvent:
    violation_id: str
    thing_name: str
    security_profile_name: str
    behavior: dict[str, Any]  # the behavior in Device Defender form, as the profile gave it
    metric_value: dict[str, Any]  # the datapoint: {"number": 85}, {"count": 3}, {"cidrs": [...]}, ...
    event_type: str  # one of EVENT_TYPES
    event_time: int  # seconds since the epoch
    source: Optional[str] = "device"  # None: an event of Device Defender in the cloud, which has none
    # what the datapoint points at on the device (processes, connections): sources/evidence.py; in-alarm only
    evidence: Optional[dict[str, Any]] = None
    extra: dict[str, Any] = field(default_factory=dict)  # wire keys this version does not know

    @property
    def behavior_name(self) -> str:
        return str(self.behavior.get("name", ""))

    @property
    def identity(self) -> tuple[str, str]:
        """What tells copies of the same alert (a replay) apart from new alerts."""
        return self.violation_id, self.event_type

    def to_json(self) -> dict[str, Any]:
        data = {key: getattr(self, attribute) for key, attribute in _FIELDS}
        for optional in ("source", "evidence"):
            if data[optional] is None:
                del data[optional]
        data.update(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Any) -> ViolationEvent:
        """The event of a wire-form mapping; ValueError says what is missing or of the wrong type."""
        if not isinstance(data, Mapping):
            raise ValueError(f"an alert is a JSON object, not {type(data).__name__}")
        values: dict[str, Any] = {}
        for key, attribute in _FIELDS:
            value = data.get(key)
            expected: Any = {
                "behavior": dict,
                "metricValue": dict,
                "violationEventTime": int,
                "evidence": dict,
            }
            expected = expected.get(key, str)
            wrong = not isinstance(value, expected) or isinstance(value, bool)
            if wrong and not (key in ("source", "evidence") and value is None):
                raise ValueError(f"alert field {key!r} must be {expected.__name__}, not {value!r:.80}")
            values[attribute] = value
        if values["event_type"] not in EVENT_TYPES:
            raise ValueError(f"alert violationEventType {values['event_type']!r} is not one of {EVENT_TYPES}")
        known = {key for key, _ in _FIELDS}
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class OpenAlarm:
    """A behavior in alarm: what the agent persists across restarts and the fleet shadow shows."""

    profile: str
    behavior: dict[str, Any]  # the behavior in Device Defender form
    violation_id: str
    since: float  # wall-clock time of the in-alarm event
    metric_value: dict[str, Any]  # the latest violating datapoint

    @property
    def behavior_name(self) -> str:
        return str(self.behavior.get("name", ""))
