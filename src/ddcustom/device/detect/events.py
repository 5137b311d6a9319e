"""The alerts' wire forms: the violation event raised by detection, and the unclean-stop event.

A violation event's wire form is the JSON of the events Device Defender Detect sends (violationId,
thingName, securityProfileName, behavior, metricValue, violationEventType, violationEventTime) plus
``"source": "device"`` and, on in-alarm events whose metric points at something, ``evidence``
(sources/evidence.py). Every sink publishes ``to_json()``, the spool stores it, and ``from_json`` reads
it back (keys it does not know, from another version, are kept and written again unchanged).

The unclean-stop event (``UncleanStopEvent``, alerts/stops.py raises it) says that the component's last
run ended without a clean stop, so detection was down. It goes to the same topic with the same durability,
and is built so that nothing that reads violations takes it for one: it has no ``violationId`` and no
``violationEventType`` (the quarantine rule selects ``violationEventType = 'in-alarm'``, and
``ViolationEvent.from_json`` refuses it); its type is in ``eventType``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

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


UNCLEAN_STOP = "unclean-stop"
# Why the last run ended uncleanly, as far as the next start can tell (alerts/stops.py).
STOPPED_BY_SIGNAL = "stopped-by-signal"  # a stop signal the nucleus did not send (its sender is named)
DEVICE_RESTARTED = "device-restarted"  # the device booted again under the running component
KILLED_OR_CRASHED = "killed-or-crashed"  # same boot, no stop seen: SIGKILL, a crash, the OOM killer
UNKNOWN_CAUSE = "unknown"  # the boot cannot be compared, or the marker was unreadable
STOP_CAUSES = (STOPPED_BY_SIGNAL, DEVICE_RESTARTED, KILLED_OR_CRASHED, UNKNOWN_CAUSE)


@dataclass(frozen=True)
class UncleanStopEvent:
    """The component's last run ended without a clean stop: detection was down until this start.

    Wire form: ``eventType`` ("unclean-stop"), ``eventId``, ``thingName``, ``eventTime`` (seconds since the
    epoch, this start), ``source`` ("device"), ``cause`` (one of STOP_CAUSES), ``stopped`` (what is known
    of the run that stopped: ``pid``, ``version``, ``startedAt``, ``lastSeenAt``, and ``signal`` when a
    stop signal was seen) and ``detectionDown`` (``since``, ``seconds``, ``exact``: whether ``since`` is
    the moment it stopped, or its last sign of life, up to ``heartbeatSeconds`` before it stopped).
    """

    event_id: str
    thing_name: str
    event_time: int
    cause: str
    stopped: dict[str, Any]
    detection_down: dict[str, Any]
    source: str = "device"
    extra: dict[str, Any] = field(default_factory=dict)  # wire keys this version does not know

    @property
    def event_type(self) -> str:
        return UNCLEAN_STOP

    @property
    def identity(self) -> tuple[str, str]:
        """What tells copies of the same alert (a replay) apart from new alerts."""
        return self.event_id, UNCLEAN_STOP

    def to_json(self) -> dict[str, Any]:
        return {
            "eventType": UNCLEAN_STOP,
            "eventId": self.event_id,
            "thingName": self.thing_name,
            "eventTime": self.event_time,
            "source": self.source,
            "cause": self.cause,
            "stopped": self.stopped,
            "detectionDown": self.detection_down,
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: Any) -> UncleanStopEvent:
        """The event of a wire-form mapping; ValueError says what is missing or of the wrong type."""
        if not isinstance(data, Mapping) or data.get("eventType") != UNCLEAN_STOP:
            raise ValueError(f"not an {UNCLEAN_STOP} event")
        expected: dict[str, type] = {
            "eventId": str,
            "thingName": str,
            "eventTime": int,
            "source": str,
            "cause": str,
            "stopped": dict,
            "detectionDown": dict,
        }
        for key, kind in expected.items():
            value = data.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{UNCLEAN_STOP} field {key!r} must be {kind.__name__}, not {value!r:.80}")
        known = {"eventType", *expected}
        return cls(
            event_id=data["eventId"],
            thing_name=data["thingName"],
            event_time=data["eventTime"],
            cause=data["cause"],
            stopped=data["stopped"],
            detection_down=data["detectionDown"],
            source=data["source"],
            extra={k: v for k, v in data.items() if k not in known},
        )


# What the spool keeps and the sinks publish on the alert topic.
Alert = Union[ViolationEvent, UncleanStopEvent]


def alert_from_json(data: Any) -> Alert:
    """The alert of a wire-form mapping, of whichever kind it is; ValueError when it is none."""
    if isinstance(data, Mapping) and "eventType" in data and "violationEventType" not in data:
        return UncleanStopEvent.from_json(data)
    return ViolationEvent.from_json(data)
