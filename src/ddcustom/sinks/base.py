"""What the agent needs from a sink: somewhere reports and alerts go."""

from __future__ import annotations

from typing import Any, Protocol


class SinkError(Exception):
    """A report or alert could not be delivered now; the agent keeps alerts spooled and retries."""


class Sink(Protocol):
    def publish_report(self, report: dict[str, Any]) -> bool:
        """Deliver a Device Defender report. False when this sink does not take reports now."""

    def publish_alert(self, alert: dict[str, Any]) -> None:
        """Deliver one alert; return only once it is acknowledged, else raise SinkError."""
