"""Answering a deployment's question "do you accept this configuration?" before it applies it.

A deployment that changes the component's configuration (and not its version) first sends the proposed
configuration to the component (SubscribeToValidateConfigurationUpdates) and waits, at most the
deployment's ``configurationValidationPolicy.timeoutInSeconds``, for the answer
(SendConfigurationValidityReport). REJECTED, or no answer in time, fails the deployment on that device
and nothing is applied (docs/greengrass.md).

``ValidationRequests`` answers on a thread of its own: the request arrives on the IPC client's thread,
which must not wait on a parse, and one slow check must not hold back the client's other callbacks. The
configuration is checked as the component checks its own (``parse_settings``), and a refusal carries the
problems ``ddcustom check`` prints, bounded. Nothing in here raises into the IPC client or stops the thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Optional

from ddcustom.device.config import ConfigError, parse_settings
from ddcustom.device.outputs.greengrass.ipc import MAX_VALIDITY_MESSAGE_CHARS
from ddcustom.device.outputs.sink import SinkError

log = logging.getLogger(__name__)

# A nucleus validates one deployment at a time; more waiting than this is not a nucleus: refuse by silence
# (the deployment times out and fails, and nothing is applied).
MAX_PENDING = 8


def judge(configuration: Any) -> tuple[bool, str]:
    """Whether the component accepts ``configuration`` (the whole proposed configuration, as GetConfiguration
    would return it), and why not: the problems, in at most MAX_VALIDITY_MESSAGE_CHARS characters."""
    if not isinstance(configuration, dict):
        return False, f"the proposed configuration is not a mapping but {type(configuration).__name__}"
    try:
        _settings, warnings = parse_settings(configuration)
    except ConfigError as exc:
        return False, exc.summary(MAX_VALIDITY_MESSAGE_CHARS)
    for warning in warnings:
        log.warning("proposed configuration: %s", warning)
    return True, ""


class ValidationRequests:
    """Answers validation requests, in the order they come, with ``send(deployment_id, accepted, message)``
    (which raises SinkError when the answer cannot be sent). ``answered`` counts the answers sent."""

    def __init__(self, send: Callable[[str, bool, str], None]) -> None:
        self._send = send
        self._requests: queue.Queue[tuple[str, Any]] = queue.Queue(MAX_PENDING)
        self.answered = 0
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def on_request(self, deployment_id: str, configuration: Any) -> None:
        """The IPC client's callback: queue the request and return at once."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="ddcustom-validation", daemon=True)
                self._thread.start()
        try:
            self._requests.put_nowait((deployment_id, configuration))
        except queue.Full:
            log.error(
                "deployment %s: %d validation requests are already waiting; this one is not answered and "
                "its deployment fails when its validation time is up",
                deployment_id,
                MAX_PENDING,
            )

    def _serve(self) -> None:
        while True:
            deployment_id, configuration = self._requests.get()
            try:
                self._answer(deployment_id, configuration)
            except Exception:  # never let one request end the thread that answers the next
                log.exception("deployment %s: the validation request could not be answered", deployment_id)

    def _answer(self, deployment_id: str, configuration: Any) -> None:
        try:
            accepted, message = judge(configuration)
        except Exception as exc:  # a bug in a check must not let a configuration through unchecked
            log.exception("deployment %s: checking the proposed configuration failed", deployment_id)
            accepted, message = False, f"the component could not check this configuration: {exc!r}"[:200]
        if not deployment_id:
            log.error("a validation request without a deployment id cannot be answered (%s)", message or "ok")
            return
        try:
            self._send(deployment_id, accepted, message)
        except SinkError as exc:
            log.error(
                "deployment %s: the answer (%s) did not reach the nucleus; the deployment fails when its "
                "validation time is up: %s",
                deployment_id,
                "accepted" if accepted else "refused",
                exc,
            )
            return
        self.answered += 1
        if accepted:
            log.info("deployment %s: the proposed configuration is valid: accepted", deployment_id)
        else:
            log.error(
                "deployment %s: the proposed configuration is invalid; refused before it applies, the "
                "settings in use stay: %s",
                deployment_id,
                message,
            )
