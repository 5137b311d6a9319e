"""Running under Greengrass: configuration through IPC, reports and alerts published over IPC.

``GreengrassConnection`` owns the IPC client. It is the agent's sink, reconnects with backoff and
jitter after a dropped connection (resubscribing and re-reading the configuration, since updates may
have been missed meanwhile), and logs Device Defender's /rejected answers with their error codes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from typing import Any, Optional

from ddcustom.agent import Agent
from ddcustom.config import ConfigError, Settings, parse_settings, shorten
from ddcustom.report import serialise
from ddcustom.runtime import backoff_delays, install_stop_handlers, setup_logging
from ddcustom.sinks.base import SinkError
from ddcustom.sinks.ipc import GreengrassIpc, IpcError, UnauthorizedIpcError
from ddcustom.sinks.local import report_topic

log = logging.getLogger(__name__)

RECONNECT_BASE = 0.5
RECONNECT_CAP = 30.0
RESUBSCRIBE_SECONDS = 60.0  # retry period of subscriptions a reconnect could not make


class GreengrassConnection:
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

    def publish_alert(self, alert: dict[str, Any]) -> None:
        assert self.settings is not None
        payload = serialise(alert).encode()
        self._call(
            "PublishToIoTCore (alert)",
            self._ipc.publish_iot,
            self.settings.alert_topic_for(self.thing_name),
            payload,
        )
        try:
            self._call(
                "PublishToTopic (local alert)",
                self._ipc.publish_local,
                self.settings.local_alert_topic,
                payload,
            )
        except SinkError as exc:  # IoT Core has it; local subscribers are a convenience
            log.warning("alert %s not published locally: %s", alert.get("violationId"), exc)

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
            details = answer.get("statusDetails", {})
            code, message, report_id = (
                details.get("ErrorCode"),
                details.get("ErrorMessage"),
                answer.get("reportId"),
            )
        except (ValueError, AttributeError):
            code, message, report_id = "unparseable answer", payload[:200].decode(errors="replace"), None
        log.error(
            "Device Defender rejected report %s: %s: %s (%d rejected so far)",
            report_id,
            code,
            message,
            self.rejected,
        )


def run_under_greengrass(config_path: Optional[str] = None) -> int:
    """``ddcustom run`` with SVCUID set. Returns only when stopped by a signal."""
    if config_path:
        log.warning("--config is ignored under Greengrass: the configuration comes from the deployment")
    thing_name = os.environ.get("AWS_IOT_THING_NAME", "")
    if not thing_name:
        log.error("AWS_IOT_THING_NAME is not set; the nucleus sets it for components")
        return 1
    conn = GreengrassConnection(thing_name)
    stop = threading.Event()
    install_stop_handlers(stop, conn.wake)
    serve(conn, stop)
    return 0


def serve(conn: GreengrassConnection, stop: threading.Event) -> None:
    """The component's life under Greengrass, until ``stop`` is set."""
    settings = _first_settings(conn, stop)
    if settings is None:
        return
    setup_logging(settings.log_level)
    conn.settings = settings
    agent = Agent(settings, conn.thing_name, conn)

    def before_cycle() -> None:
        conn.keep_connected()
        if conn.connected:
            conn.update_state("RUNNING")  # sent once per connection (update_state skips repeats)
        if conn.config_changed.is_set():
            _apply_update(conn, agent)

    try:
        agent.run_forever(stop, conn.wake, before_cycle, conn.seconds_to_next_attempt)
    finally:
        agent.close()
        conn.close()


def _apply_update(conn: GreengrassConnection, agent: Agent) -> None:
    conn.config_changed.clear()
    try:
        new = conn.read_settings()
    except ConfigError as exc:  # every problem, each value cut short; the line is cut at 4000 all the same
        log.error("configuration update refused, the previous settings stay: %s", shorten(str(exc), 4000))
        return
    except SinkError as exc:
        conn.config_changed.set()  # try again next cycle
        log.warning("cannot read the configuration update yet: %s", exc)
        return
    if new != conn.settings:
        log.info("configuration updated; applying without a restart")
        setup_logging(new.log_level)
        conn.settings = new
        agent.apply_settings(new)


def _first_settings(conn: GreengrassConnection, stop: threading.Event) -> Optional[Settings]:
    """Connect and read the configuration; never exit while Greengrass expects the component to run.

    A configuration that does not validate is reported as ERRORED and the component waits for a
    deployment that fixes it, instead of running with settings nobody asked for.
    """
    while not stop.is_set():
        backoff = conn.seconds_to_next_attempt()
        if backoff:  # not connected, and the next attempt is not due yet
            stop.wait(backoff)
            continue
        try:
            settings = conn.read_settings()
        except ConfigError as exc:
            log.error("the deployed configuration is invalid; waiting for a corrected one: %s", exc)
            conn.update_state("ERRORED")
            conn.wake.wait(60)
            conn.wake.clear()
            continue
        except SinkError as exc:
            log.warning("%s", exc)
            if conn.connected:  # the call failed, not the connection: do not hammer the nucleus
                stop.wait(1.0)
            continue
        conn.config_changed.clear()
        return settings
    return None
