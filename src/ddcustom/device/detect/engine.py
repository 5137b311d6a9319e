"""The on-device detection engine: one Sample in, Device Defender violation events out.

Criteria describe normal behaviour; a datapoint violates when its criterion is false. A behavior goes
into alarm after ``consecutiveDatapointsToAlarm`` violating datapoints and clears after
``consecutiveDatapointsToClear`` normal ones. A metric absent from a sample gives no datapoint: the
behavior's state neither advances nor clears. Pure apart from the random violation ids.
"""

from __future__ import annotations

import ipaddress
import math
import operator
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ddcustom.device.detect.events import (
    ALARM_CLEARED,
    ALARM_INVALIDATED,
    IN_ALARM,
    OpenAlarm,
    ViolationEvent,
)
from ddcustom.device.detect.profile import Behavior, Criteria, Profile
from ddcustom.device.detect.statistics import RecentValues
from ddcustom.device.metrics import LIST_VALUE_KEYS, METRICS, MetricValue
from ddcustom.device.sample import Sample

NUMERIC: dict[str, Callable[[float, float], bool]] = {
    "less-than": operator.lt,
    "less-than-equals": operator.le,
    "greater-than": operator.gt,
    "greater-than-equals": operator.ge,
}
# Upper bounds: a sum over part of a duration window that already violates can only grow.
UPPER_BOUNDS = frozenset({"less-than", "less-than-equals"})

DEFAULT_WINDOW_SIZE = 360  # datapoints of a statistical threshold: an hour at the default 10 s interval
DEFAULT_WARMUP = 30  # datapoints before a statistical threshold may alarm


@dataclass
class _Alarm:
    violation_id: str
    since: float
    metric_value: dict[str, Any]


@dataclass
class _State:
    violating: int = 0
    normal: int = 0
    alarm: Optional[_Alarm] = None
    window: deque[tuple[float, float]] = field(default_factory=deque)  # (monotonic, delta): durationSeconds
    window_start: Optional[float] = None  # monotonic start of the first delta in the window
    recent: Optional[RecentValues] = None  # statisticalThreshold behaviors: the window of datapoints


class Engine:
    """Evaluates the device behaviors of one security profile on each Sample and keeps their alarm
    state: ``evaluate`` returns the violation events of this sample (in-alarm, cleared); ``resume`` and
    ``active_alarms`` carry open alarms across a restart; ``replace_profile`` swaps the profile, ending
    the alarms of behaviors that changed or went away."""

    def __init__(
        self,
        profile: Profile,
        thing_name: str,
        window_size: int = DEFAULT_WINDOW_SIZE,
        warmup: int = DEFAULT_WARMUP,
    ) -> None:
        self.profile = profile
        self.thing_name = thing_name
        self._window_size = window_size
        self._warmup = warmup
        self._previous: Optional[Sample] = None
        self._states = {behavior.name: self._new_state(behavior) for behavior in profile.device_behaviors}

    def _new_state(self, behavior: Behavior) -> _State:
        state = _State()
        assert behavior.criteria is not None
        if behavior.criteria.statistic is not None:
            state.recent = RecentValues(behavior.criteria.statistic, self._window_size, self._warmup)
        return state

    def replace_profile(self, profile: Profile, now: float) -> list[ViolationEvent]:
        """Evaluate ``profile`` from now on; return alarm-invalidated events for alarms it ends.

        A behavior that is unchanged (same name, same JSON) keeps its state: an alarm raised before the
        update is cleared by the same violationId. An alarm of a behavior that was removed or changed
        can never clear, so it is invalidated, as Device Defender does; ``now`` is the wall-clock time.
        """
        same_profile = profile.name == self.profile.name  # events of another profile never share an id
        kept = {b.name: b.json_text for b in profile.device_behaviors} if same_profile else {}
        events: list[ViolationEvent] = []
        for behavior in self.profile.device_behaviors:
            alarm = self._states[behavior.name].alarm
            if alarm is None or behavior.suppress_alerts or kept.get(behavior.name) == behavior.json_text:
                continue
            events.append(
                self._event(
                    behavior.to_json(), alarm.violation_id, ALARM_INVALIDATED, alarm.metric_value, now
                )
            )
        old = {b.name: b.json_text for b in self.profile.device_behaviors} if same_profile else {}
        self._states = {
            b.name: self._states[b.name] if old.get(b.name) == b.json_text else self._new_state(b)
            for b in profile.device_behaviors
        }
        self.profile = profile
        return events

    def evaluate(self, sample: Sample) -> list[ViolationEvent]:
        """Evaluate every behavior on ``sample``; return the events to publish, in profile order."""
        previous = self._previous
        if previous is not None and sample.monotonic <= previous.monotonic:
            return []  # the same or an older sample: no new datapoint
        measured = {m.name: v for m in METRICS.values() if (v := m.read(sample, previous)) is not None}
        self._previous = sample
        interval_start = previous.monotonic if previous is not None else sample.monotonic
        events: list[ViolationEvent] = []
        for behavior in self.profile.device_behaviors:
            value = measured.get(behavior.metric)
            if value is None:
                continue
            if isinstance(value, (int, float)):
                if not math.isfinite(value):
                    continue  # NaN/inf is no measurement
                value = float(value)  # sources may hand over ints; datapoints are floats
            event = self._step(behavior, self._states[behavior.name], value, sample, interval_start)
            if event is not None and not behavior.suppress_alerts:
                events.append(event)
        return events

    def active_alarms(self) -> list[OpenAlarm]:
        """Behaviors in alarm now (suppressed ones included), in profile order."""
        return [
            OpenAlarm(self.profile.name, b.to_json(), alarm.violation_id, alarm.since, alarm.metric_value)
            for b in self.profile.device_behaviors
            for alarm in [self._states[b.name].alarm]
            if alarm is not None
        ]

    def resume(self, alarms: list[OpenAlarm], now: float) -> list[ViolationEvent]:
        """Take over the alarms a previous run left open (before any sample), so that each one ends with
        its own violationId: an alarm of an unchanged behavior goes on (and clears when its datapoints
        are normal again); one whose behavior changed or left the profile is invalidated at ``now``."""
        events: list[ViolationEvent] = []
        current = {b.name: b for b in self.profile.device_behaviors}
        for alarm in alarms:
            behavior = current.get(alarm.behavior_name)
            same = alarm.profile == self.profile.name and behavior is not None
            if same and behavior is not None and behavior.to_json() == alarm.behavior:
                assert behavior.criteria is not None
                state = self._states[behavior.name]
                state.alarm = _Alarm(alarm.violation_id, alarm.since, alarm.metric_value)
                state.violating = behavior.criteria.consecutive_datapoints_to_alarm
            elif not alarm.behavior.get("suppressAlerts", False):
                events.append(
                    self._event(
                        alarm.behavior,
                        alarm.violation_id,
                        ALARM_INVALIDATED,
                        alarm.metric_value,
                        now,
                        alarm.profile,
                    )
                )
        return events

    def _step(
        self, behavior: Behavior, state: _State, value: MetricValue, sample: Sample, interval_start: float
    ) -> Optional[ViolationEvent]:
        criteria = behavior.criteria
        assert criteria is not None
        datapoint = self._datapoint(criteria, state, value, sample.monotonic, interval_start)
        if datapoint is None:
            return None
        value, violates = datapoint
        metric_value = _metric_value(behavior, criteria, value)
        if violates:
            state.violating, state.normal = state.violating + 1, 0
            if state.alarm is None and state.violating >= criteria.consecutive_datapoints_to_alarm:
                state.alarm = _Alarm(str(uuid.uuid4()), sample.time, metric_value)
                return self._event(
                    behavior.to_json(), state.alarm.violation_id, IN_ALARM, metric_value, sample.time
                )
            if state.alarm is not None:
                state.alarm.metric_value = metric_value
            return None
        state.violating, state.normal = 0, state.normal + 1
        alarm = state.alarm
        if alarm is not None and state.normal >= criteria.consecutive_datapoints_to_clear:
            state.alarm = None
            return self._event(
                behavior.to_json(), alarm.violation_id, ALARM_CLEARED, metric_value, sample.time
            )
        return None

    def _datapoint(
        self, criteria: Criteria, state: _State, value: MetricValue, now: float, interval_start: float
    ) -> Optional[tuple[MetricValue, bool]]:
        """The datapoint for this sample and whether it violates; None when there is none."""
        complete = True
        if criteria.duration_seconds is not None and isinstance(value, float):
            value, complete = _window_sum(state, criteria.duration_seconds, value, now, interval_start)
        if state.recent is not None and isinstance(value, float):
            if not complete:
                return None  # the baseline takes whole windows only
            threshold = state.recent.threshold()
            state.recent.add(value)
            if threshold is None:
                return None  # still warming up
            return value, not NUMERIC[criteria.comparison_operator](value, threshold)
        violates = _violates(criteria, value)
        if not complete and violates != (criteria.comparison_operator in UPPER_BOUNDS):
            return None  # a partly filled window whose verdict could still change
        return value, violates

    def _event(
        self,
        behavior: dict[str, Any],
        violation_id: str,
        kind: str,
        metric_value: dict[str, Any],
        time: float,
        profile: Optional[str] = None,
    ) -> ViolationEvent:
        return ViolationEvent(
            violation_id=violation_id,
            thing_name=self.thing_name,
            security_profile_name=profile or self.profile.name,
            behavior=behavior,
            metric_value=metric_value,
            event_type=kind,
            event_time=int(time),
        )


def _window_sum(
    state: _State, duration: int, delta: float, now: float, interval_start: float
) -> tuple[float, bool]:
    """Sum of the deltas of the last ``duration`` seconds, and whether the window is fully covered."""
    if state.window_start is None:
        state.window_start = interval_start
    state.window.append((now, delta))
    while state.window and state.window[0][0] <= now - duration:
        state.window.popleft()
    return sum(d for _, d in state.window), now - state.window_start >= duration


def _violates(criteria: Criteria, value: MetricValue) -> bool:
    op = criteria.comparison_operator
    if op in NUMERIC:
        assert isinstance(value, float) and criteria.threshold is not None
        return not NUMERIC[op](value, criteria.threshold)
    items: list[Any] = list(value) if isinstance(value, list) else [value]
    if op in ("in-cidr-set", "not-in-cidr-set"):
        inside = [_in_cidrs(str(ip), criteria) for ip in items]
    else:
        inside = [item in criteria.members for item in items]
    if op.startswith("in-"):
        return not all(inside)  # normal: every element inside the set
    return any(inside)  # not-in-*: normal when no element is inside


def _in_cidrs(ip: str, criteria: Criteria) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in criteria.cidrs)


def _metric_value(behavior: Behavior, criteria: Criteria, value: MetricValue) -> dict[str, Any]:
    """The datapoint in Device Defender's metricValue form."""
    if isinstance(value, list):
        key = LIST_VALUE_KEYS[behavior.metric_type]
        if key == "ports":
            return {key: [int(v) for v in value]}
        return {key: list(value)}
    kind = criteria.value_kind or ("count" if behavior.metric.startswith("aws:") else "number")
    return {"count": int(value)} if kind == "count" else {"number": value}
