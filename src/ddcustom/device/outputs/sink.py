"""Where reports and alerts go: the contract both outputs (local JSON lines, Greengrass IPC) implement,
what they read of the settings, and the one encoding they publish."""

from __future__ import annotations

import json
from typing import Any, Protocol

from ddcustom.device.detect.events import Alert


class SinkError(Exception):
    """A report or alert could not be delivered now; the agent keeps alerts spooled and retries."""


class Sink(Protocol):
    def publish_report(self, report: dict[str, Any]) -> bool:
        """Deliver a Device Defender report. False when this sink does not take reports now."""

    def publish_alert(self, alert: Alert) -> None:
        """Deliver one alert; return only once it is acknowledged, else raise SinkError."""

    def publish_shadow(self, document: dict[str, Any]) -> bool:
        """Update the thing's named shadow ``ddcustom``. False when this sink has no shadow."""

    def publish_inventory(self, message: dict[str, Any]) -> bool:
        """Publish one fleet inventory message (outputs/inventory.py); return once acknowledged, else
        raise SinkError. False when this sink has no fleet to send it to."""


class SinkSettings(Protocol):
    """What a sink reads of the settings in use (the configuration's ``Settings`` satisfies it)."""

    @property
    def enable_device_defender_report(self) -> bool: ...

    @property
    def local_alert_topic(self) -> str: ...

    def alert_topic_for(self, thing_name: str) -> str: ...


def serialise(message: dict[str, Any]) -> str:
    """Compact JSON as every sink publishes it, reports and alerts (NaN and infinity are refused)."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def report_topic(thing_name: str) -> str:
    """Device Defender's reserved topic for a thing's JSON metrics reports."""
    return f"$aws/things/{thing_name}/defender/metrics/json"
