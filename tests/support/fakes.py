"""Stand-ins that tests drive by hand, so that what they check never depends on the host's timing:
a clock and a random source for backoffs, a sink and a configuration source for the runner."""

from __future__ import annotations

import random
import threading
from typing import Any, Optional, Union

from ddcustom.device.config import ConfigError, Settings
from ddcustom.device.detect.events import Alert, UncleanStopEvent, ViolationEvent
from ddcustom.device.outputs.sink import SinkError


class Clock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Highest(random.Random):
    """Always draws the top of the range: backoff delays are their ceilings."""

    def uniform(self, a: float, b: float) -> float:
        return b


class RecordingSink:
    """A sink that keeps what it is given: reports, alerts, shadows, the settings it is told, and
    whether it was closed, inventories; it refuses every publish while ``refuse`` holds an error message."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.alerts: list[ViolationEvent] = []
        self.stops: list[UncleanStopEvent] = []  # unclean-stop alerts, apart from the violations
        self.shadows: list[dict[str, Any]] = []
        self.inventories: list[dict[str, Any]] = []
        self.settings: list[Settings] = []
        self.closed = False
        self.refuse: Optional[str] = None

    def apply_settings(self, settings: Settings) -> None:
        self.settings.append(settings)

    def close(self) -> None:
        self.closed = True

    def publish_report(self, report: dict[str, Any]) -> bool:
        self._check()
        self.reports.append(report)
        return True

    def publish_alert(self, alert: Alert) -> None:
        self._check()
        if isinstance(alert, UncleanStopEvent):
            self.stops.append(alert)
        else:
            self.alerts.append(alert)

    def publish_shadow(self, document: dict[str, Any]) -> bool:
        self._check()
        self.shadows.append(document)
        return True

    def publish_inventory(self, message: dict[str, Any]) -> bool:
        self._check()
        self.inventories.append(message)
        return True

    def _check(self) -> None:
        if self.refuse:
            raise SinkError(self.refuse)


Step = Union[Settings, ConfigError, None]


class ScriptedConfiguration:
    """A configuration source that answers the runner's polls from a script, one step per cycle: the
    settings read (a Settings), an invalid configuration (a ConfigError, raised) or nothing read (None).
    When the script is done it sets ``stop``: the runner ends after that cycle. No waits: its next poll
    is always due at once."""

    def __init__(self, first: Optional[Settings], steps: list[Step], stop: threading.Event) -> None:
        self._first = first
        self._steps = list(steps)
        self._stop = stop
        self.polls = 0

    def first_settings(self, stop: threading.Event) -> Optional[Settings]:
        return self._first

    def poll(self) -> Optional[Settings]:
        self.polls += 1
        if not self._steps:
            self._stop.set()
            return None
        step = self._steps.pop(0)
        if isinstance(step, ConfigError):
            raise step
        return step

    def seconds_to_next_poll(self) -> Optional[float]:
        return 0.0
