"""The agent's sink under Greengrass: reports and alerts published over IPC, the connection kept up.

``GreengrassSink`` owns the IPC client. It reconnects with backoff and jitter after a dropped
connection (resubscribing and re-reading the configuration, since updates may have been missed
meanwhile), and logs Device Defender's /rejected answers with their error codes.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any, Optional

from ddcustom.device.backoff import backoff_delays
from ddcustom.device.config import Settings, parse_settings
from ddcustom.device.detect.events import ViolationEvent
from ddcustom.device.outputs.greengrass.ipc import GreengrassIpc, IpcError, UnauthorizedIpcError
from ddcustom.device.outputs.shadow import shadow_update_topic
from ddcustom.device.outputs.sink import SinkError, report_topic, serialise

log = logging.getLogger(__name__)

RECONNECT_BASE = 0.5
RECONNECT_CAP = 30.0
RESUBSCRIBE_SECONDS = 60.0  # retry period of subscriptions a reconnect could not make


class GreengrassSink:
    """The agent's sink under Greengrass; every call is bounded by the IPC timeout."""

    def __init__(
        self,
        thing_name: str,
        *,
        timeout: float = 10.0,
        socket_path: Optional[str] = None,
        token: Optional[str] = None,
        reconnect_base: float = RECONNECT_BASE,
        reconnect_cap: float = RECONNECT_CAP,
        resubscribe_seconds: float = RESUBSCRIBE_SECONDS,
    ) -> None:
        self.thing_name = thing_name
        self._ipc = GreengrassIpc(timeout, socket_path, token, on_disconnect=self._on_disconnect)
        self._backoff = (reconnect_base, reconnect_cap)
        self.settings: Optional[Settings] = None
        self.config_changed = threading.Event()  # set by the IPC thread, read by the loop
        self.wake = threading.Event()
        self.rejected = 0
        self.connects = 0
        self._delays = backoff_delays(*self._backoff, random.Random())
        self._next_attempt = 0.0
        self._resubscribe_seconds = resubscribe_seconds
        self._next_resubscribe = 0.0
        self._last_state: Optional[str] = None

    # ---- connection ----------------------------------------------------------------------------

    def close(self) -> None:
        self._ipc.close()

    def _ensure_connected(self) -> None:
        if self._ipc.connected:
            return
        now = time.monotonic()
        if now < self._next_attempt:
            raise SinkError(f"not connected to the nucleus; next attempt in {self._next_attempt - now:.1f} s")
        try:
            self._ipc.connect()  # also makes the earlier subscriptions again
            if self.connects == 0:
                self._ipc.subscribe_configuration(self._on_config_update)
        except IpcError as exc:
            self._ipc.close()
            self._next_attempt = time.monotonic() + next(self._delays)
            raise SinkError(f"cannot connect to the nucleus: {exc}") from exc
        if self.connects == 0:
            self._subscribe_answers()
        self.connects += 1
        self._delays = backoff_delays(*self._backoff, random.Random())
        self._last_state = None
        if self.connects > 1:
            log.info("reconnected to the nucleus (connection %d)", self.connects)
            self.config_changed.set()  # an update may have come while we were away

    def _subscribe_answers(self) -> None:
        """Device Defender's rejections (acceptances say nothing worth a message per report); without
        the subscription reports still go out, only rejections go unseen."""
        topic = f"{report_topic(self.thing_name)}/rejected"
        try:
            self._ipc.subscribe_iot(topic, self._on_rejected)
        except IpcError as exc:
            log.warning("cannot subscribe to %s, rejections will not be logged: %s", topic, exc)

    def keep_connected(self) -> None:
        """Reconnect now if the connection is down and the backoff allows, and make again, now and then,
        subscriptions a reconnect could not; never raises."""
        try:
            self._ensure_connected()
        except SinkError as exc:
            log.debug("%s", exc)
            return
        now = time.monotonic()
        if now < self._next_resubscribe or not self._ipc.missing_subscriptions():
            return
        self._next_resubscribe = now + self._resubscribe_seconds
        try:
            self._ipc.resubscribe()
            log.info("subscribed again to what the last reconnect missed")
        except IpcError as exc:
            log.warning("%s; trying again in %.0f s", exc, self._resubscribe_seconds)

    @property
    def connected(self) -> bool:
        return self._ipc.connected

    def seconds_to_next_attempt(self) -> Optional[float]:
        if self._ipc.connected:
            return None
        return max(0.0, self._next_attempt - time.monotonic())

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        self._ensure_connected()
        try:
            return fn(*args)
        except UnauthorizedIpcError as exc:
            raise SinkError(f"{what}: the recipe's accessControl does not grant it: {exc}") from exc
        except IpcError as exc:
            if not self._ipc.connected:
                self._next_attempt = time.monotonic() + next(self._delays)
            raise SinkError(f"{what}: {exc}") from exc

    # ---- what the agent and the runner call ------------------------------------------------------

    def read_settings(self) -> Settings:
        """The deployed configuration, validated (warnings logged); ConfigError if it is invalid."""
        raw = self._call("GetConfiguration", self._ipc.get_configuration)
        settings, warnings = parse_settings(raw)
        for warning in warnings:
            log.warning("%s", warning)
        return settings

    def update_state(self, state: str) -> None:
        if state == self._last_state:
            return
        try:
            self._call("UpdateState", self._ipc.update_state, state)
            self._last_state = state
        except SinkError as exc:
            log.warning("cannot report state %s: %s", state, exc)

    def publish_report(self, report: dict[str, Any]) -> bool:
        if self.settings is None or not self.settings.enable_device_defender_report:
            return False
        payload = serialise(report).encode()
        self._call("PublishToIoTCore (report)", self._ipc.publish_iot, report_topic(self.thing_name), payload)
        return True

    def publish_alert(self, alert: ViolationEvent) -> None:
        assert self.settings is not None
        payload = serialise(alert.to_json()).encode()
        topic, local_topic = self.settings.alert_topic_for(self.thing_name), self.settings.local_alert_topic
        self._call("PublishToIoTCore (alert)", self._ipc.publish_iot, topic, payload)
        try:
            self._call("PublishToTopic (local alert)", self._ipc.publish_local, local_topic, payload)
        except SinkError as exc:  # IoT Core has it; local subscribers are a convenience
            log.warning("alert %s not published locally: %s", alert.violation_id, exc)

    def publish_shadow(self, document: dict[str, Any]) -> bool:
        payload = serialise(document).encode()
        topic = shadow_update_topic(self.thing_name)
        self._call("PublishToIoTCore (shadow)", self._ipc.publish_iot, topic, payload)
        return True

    # ---- IPC callbacks (run on the client's threads: keep them short) ----------------------------

    def _on_disconnect(self, _reason: str) -> None:
        self.wake.set()  # reconnect at once (within the backoff), not at the next report

    def _on_config_update(self) -> None:
        self.config_changed.set()
        self.wake.set()

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
