"""The component's IPC connection to the nucleus, kept up for whoever uses it.

Under Greengrass the sink and the configuration source share one connection. ``GreengrassConnection``
owns the IPC client: it connects when first used, reconnects after a drop with exponential backoff and
full jitter (so a fleet does not reconnect in step), makes again the subscriptions a reconnect missed, and
turns every IPC failure into ``SinkError``, the error the agent retries on. Its users register what they
subscribe to before the first connection; the client makes those subscriptions again on every reconnect.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable, Optional, TypeVar

from ddcustom.device.backoff import backoff_delays
from ddcustom.device.outputs.greengrass.ipc import GreengrassIpc, IpcError, UnauthorizedIpcError
from ddcustom.device.outputs.sink import SinkError

log = logging.getLogger(__name__)

RECONNECT_BASE = 0.5
RECONNECT_CAP = 30.0
RESUBSCRIBE_SECONDS = 60.0  # retry period of subscriptions a reconnect could not make

T = TypeVar("T")


class GreengrassConnection:
    """The IPC connection kept up; every call is bounded by the IPC timeout.

    ``connects`` counts the connections made. ``wake`` is set when the connection drops (and by the
    users' callbacks), so that the loop waiting on it reconnects at once, within the backoff.
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        socket_path: Optional[str] = None,
        token: Optional[str] = None,
        reconnect_base: float = RECONNECT_BASE,
        reconnect_cap: float = RECONNECT_CAP,
        resubscribe_seconds: float = RESUBSCRIBE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
    ) -> None:
        """``clock`` (monotonic seconds) and ``rng`` (the jitter's draws) are for tests to fix."""
        self._ipc = GreengrassIpc(timeout, socket_path, token, on_disconnect=self._on_disconnect)
        self._backoff = (reconnect_base, reconnect_cap)
        self._clock = clock
        self._rng = rng or random.Random()
        self.wake = threading.Event()
        self.connects = 0
        self._delays = backoff_delays(*self._backoff, self._rng)
        self._next_attempt = 0.0
        self._resubscribe_seconds = resubscribe_seconds
        self._next_resubscribe = 0.0
        self._last_state: Optional[str] = None
        # the users' subscriptions, made at the first connection (the IPC client makes them again later):
        # those the connection fails without, and (topic, what goes unseen without it, subscribe) of others
        self._required: list[Callable[[], None]] = []
        self._optional: list[tuple[str, str, Callable[[], None]]] = []
        self._reconnected: list[Callable[[], None]] = []

    # ---- what the users register (before the first connection) ----------------------------------

    def subscribe_configuration(self, on_update: Callable[[], None]) -> None:
        """``on_update()`` on every configuration update. The first connection fails without this
        subscription (updates would go unseen), and every reconnect makes it again."""
        self._before_first_connection()
        self._required.append(lambda: self._ipc.subscribe_configuration(on_update))

    def subscribe_iot(self, topic: str, on_message: Callable[[str, bytes], None], unseen: str) -> None:
        """``on_message(topic, payload)`` for IoT Core messages on ``topic``. The connection is good
        without it: a refusal is logged with ``unseen`` (what goes unseen without it)."""
        self._before_first_connection()
        self._optional.append((topic, unseen, lambda: self._ipc.subscribe_iot(topic, on_message)))

    def subscribe_validation(self, on_request: Callable[[str, dict[str, Any]], None], unseen: str) -> None:
        """``on_request(deployment_id, configuration)`` when a deployment asks, before it applies a
        configuration, whether the component accepts it; answer with ``send_validity_report``. The
        connection is good without it: a refusal is logged with ``unseen``."""
        self._before_first_connection()
        self._optional.append(
            ("configuration validation requests", unseen, lambda: self._ipc.subscribe_validation(on_request))
        )

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """``callback()`` after every reconnect (on the thread that reconnected), not after the first
        connection: whatever was published to the component meanwhile was missed."""
        self._reconnected.append(callback)

    def _before_first_connection(self) -> None:
        if self.connects:
            raise RuntimeError("subscriptions are registered before the first connection")

    # ---- the connection ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ipc.connected

    def close(self) -> None:
        self._ipc.close()

    def seconds_to_next_attempt(self) -> Optional[float]:
        """None when connected; else how long the backoff still holds the next attempt back (0: due)."""
        if self._ipc.connected:
            return None
        return max(0.0, self._next_attempt - self._clock())

    def keep_connected(self) -> None:
        """Reconnect now if the connection is down and the backoff allows, and make again, now and then,
        subscriptions a reconnect could not; never raises."""
        try:
            self._ensure_connected()
        except SinkError as exc:
            log.debug("%s", exc)
            return
        now = self._clock()
        if now < self._next_resubscribe or not self._ipc.missing_subscriptions():
            return
        self._next_resubscribe = now + self._resubscribe_seconds
        try:
            self._ipc.resubscribe()
            log.info("subscribed again to what the last reconnect missed")
        except IpcError as exc:
            log.warning("%s; trying again in %.0f s", exc, self._resubscribe_seconds)

    def call(self, what: str, operation: Callable[[GreengrassIpc], T]) -> T:
        """``operation(ipc)`` on a connection made first if need be; SinkError naming ``what`` on failure."""
        self._ensure_connected()
        try:
            return operation(self._ipc)
        except UnauthorizedIpcError as exc:
            raise SinkError(f"{what}: the recipe's accessControl does not grant it: {exc}") from exc
        except IpcError as exc:
            if not self._ipc.connected:
                self._next_attempt = self._clock() + next(self._delays)
            raise SinkError(f"{what}: {exc}") from exc

    def send_validity_report(self, deployment_id: str, accepted: bool, message: str = "") -> None:
        """Answer a deployment's validation request; SinkError when it cannot be sent. Safe from another
        thread than the loop's: it uses the connection the request came on and never reconnects (the
        loop's thread does that)."""
        try:
            self._ipc.send_validity_report(deployment_id, accepted, message)
        except IpcError as exc:
            raise SinkError(f"SendConfigurationValidityReport: {exc}") from exc

    def update_state(self, state: str) -> None:
        """Tell the nucleus the component's state, once per connection (a repeat is skipped); a failure
        is logged and tried again on the next call."""
        if state == self._last_state:
            return
        try:
            self.call("UpdateState", lambda ipc: ipc.update_state(state))
            self._last_state = state
        except SinkError as exc:
            log.warning("cannot report state %s: %s", state, exc)

    def _ensure_connected(self) -> None:
        if self._ipc.connected:
            return
        now = self._clock()
        if now < self._next_attempt:
            raise SinkError(f"not connected to the nucleus; next attempt in {self._next_attempt - now:.1f} s")
        first = self.connects == 0
        try:
            self._ipc.connect()  # also makes the earlier subscriptions again
            if first:
                for subscribe in self._required:
                    subscribe()
        except IpcError as exc:
            self._ipc.close()
            self._next_attempt = self._clock() + next(self._delays)
            raise SinkError(f"cannot connect to the nucleus: {exc}") from exc
        if first:
            for topic, unseen, subscribe in self._optional:
                try:
                    subscribe()
                except IpcError as exc:
                    log.warning("cannot subscribe to %s, %s: %s", topic, unseen, exc)
        self.connects += 1
        self._delays = backoff_delays(*self._backoff, self._rng)  # the backoff starts over
        self._last_state = None
        if self.connects > 1:
            log.info("reconnected to the nucleus (connection %d)", self.connects)
            for callback in self._reconnected:
                callback()

    # ---- IPC callback (runs on the client's thread: keep it short) -------------------------------

    def _on_disconnect(self, _reason: str) -> None:
        self.wake.set()  # reconnect at once (within the backoff), not at the next report
