"""Local sink: reports, alerts (and the fleet inventory, when on) as JSON lines on a stream (stdout in
``ddcustom run``), each with the topic it would be published on under Greengrass; there is no shadow
outside Greengrass."""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, TextIO

from ddcustom.device.detect.events import Alert
from ddcustom.device.outputs.inventory import inventory_topic
from ddcustom.device.outputs.sink import SinkError, SinkSettings, report_topic, serialise


class JsonLinesSink:
    """Writes ``{"kind": "report"|"alert"|"inventory", "topic": ..., ...}`` lines; the topic is where it
    would go."""

    def __init__(
        self,
        stream: TextIO,
        thing_name: str,
        alert_topic: str,
        on_closed: Optional[Callable[[], None]] = None,
    ) -> None:
        """``on_closed`` is called once when the reader goes away (EPIPE: ``ddcustom run | head``)."""
        self._stream = stream
        self._thing_name = thing_name
        self.alert_topic = alert_topic
        self._on_closed = on_closed
        self._lock = threading.Lock()

    def apply_settings(self, settings: SinkSettings) -> None:
        self.alert_topic = settings.alert_topic_for(self._thing_name)

    def close(self) -> None:
        self._stream.flush()

    def publish_report(self, report: dict[str, Any]) -> bool:
        self._write({"kind": "report", "topic": report_topic(self._thing_name), "report": report})
        return True

    def publish_alert(self, alert: Alert) -> None:
        self._write({"kind": "alert", "topic": self.alert_topic, "alert": alert.to_json()})

    def publish_shadow(self, document: dict[str, Any]) -> bool:
        return False  # a local run has no thing in the cloud; its state is in the alerts it prints

    def publish_inventory(self, message: dict[str, Any]) -> bool:
        self._write({"kind": "inventory", "topic": inventory_topic(self._thing_name), "inventory": message})
        return True

    def _write(self, line: dict[str, Any]) -> None:
        try:
            with self._lock:
                self._stream.write(serialise(line) + "\n")
                self._stream.flush()
        except BrokenPipeError as exc:
            if self._on_closed is not None:
                self._on_closed()
            raise SinkError("the output stream was closed by its reader") from exc
        except (OSError, ValueError) as exc:  # a closed stream, a full disk
            raise SinkError(f"cannot write to the output stream: {exc}") from exc
