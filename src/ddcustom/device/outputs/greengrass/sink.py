"""The agent's sink under Greengrass: reports, alerts, the fleet shadow and inventory published over IPC.

``GreengrassSink`` publishes on a ``GreengrassConnection`` (connection.py), which keeps the connection
up, and logs Device Defender's /rejected answers with their error codes. What it needs of the settings
(the alert topics, whether Device Defender reports are on) it reads, when it publishes, from the object
the runner hands to ``apply_settings``, typed by the ``SinkSettings`` protocol of outputs/sink.py. That
is simpler than values copied in by the runner: one assignment when the settings change, nothing that
could be left half updated, and the alert topic still derived from the thing name here, as before.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

from ddcustom.device.detect.events import Alert
from ddcustom.device.outputs.greengrass.connection import GreengrassConnection
from ddcustom.device.outputs.inventory import inventory_topic
from ddcustom.device.outputs.shadow import shadow_update_topic
from ddcustom.device.outputs.sink import SinkError, SinkSettings, report_topic, serialise

log = logging.getLogger(__name__)


class GreengrassSink:
    """The agent's sink under Greengrass; every call is bounded by the IPC timeout.

    Nothing is published before the first ``apply_settings``. ``rejected`` counts Device Defender's
    rejections.
    """

    def __init__(self, connection: GreengrassConnection, thing_name: str) -> None:
        self.connection = connection
        self.thing_name = thing_name
        self.settings: Optional[SinkSettings] = None
        self.rejected = 0
        # Device Defender's rejections (acceptances say nothing worth a message per report); without
        # the subscription reports still go out, only rejections go unseen.
        connection.subscribe_iot(
            f"{report_topic(thing_name)}/rejected", self._on_rejected, "rejections will not be logged"
        )

    def apply_settings(self, settings: SinkSettings) -> None:
        self.settings = settings

    def close(self) -> None:
        """Close the connection: the sink is its last user (the runner closes it after the agent)."""
        self.connection.close()

    def publish_report(self, report: dict[str, Any]) -> bool:
        if self.settings is None or not self.settings.enable_device_defender_report:
            return False
        payload = serialise(report).encode()
        topic = report_topic(self.thing_name)
        self.connection.call("PublishToIoTCore (report)", lambda ipc: ipc.publish_iot(topic, payload))
        return True

    def publish_alert(self, alert: Alert) -> None:
        assert self.settings is not None
        payload = serialise(alert.to_json()).encode()
        topic, local_topic = self.settings.alert_topic_for(self.thing_name), self.settings.local_alert_topic
        self.connection.call("PublishToIoTCore (alert)", lambda ipc: ipc.publish_iot(topic, payload))
        try:
            self.connection.call(
                "PublishToTopic (local alert)", lambda ipc: ipc.publish_local(local_topic, payload)
            )
        except SinkError as exc:  # IoT Core has it; local subscribers are a convenience
            log.warning("alert %s not published locally: %s", alert.identity[0], exc)

    def publish_shadow(self, document: dict[str, Any]) -> bool:
        payload = serialise(document).encode()
        topic = shadow_update_topic(self.thing_name)
        self.connection.call("PublishToIoTCore (shadow)", lambda ipc: ipc.publish_iot(topic, payload))
        return True

    def publish_inventory(self, message: dict[str, Any]) -> bool:
        payload = serialise(message).encode()
        topic = inventory_topic(self.thing_name)
        self.connection.call("PublishToIoTCore (inventory)", lambda ipc: ipc.publish_iot(topic, payload))
        return True

    # ---- IPC callback (runs on the client's threads: keep it short) ------------------------------

    def _on_rejected(self, _topic: str, payload: bytes) -> None:
        self.rejected += 1
        try:
            answer = json.loads(payload)
            details, report_id = answer.get("statusDetails", {}), answer.get("reportId")
            code, message = details.get("ErrorCode"), details.get("ErrorMessage")
        except (ValueError, AttributeError):
            code, message, report_id = "unparseable answer", payload[:200].decode(errors="replace"), None
        log.error(
            "Device Defender rejected report %s: %s: %s (%d rejected so far)",
            report_id,
            code,
            message,
            self.rejected,
        )
