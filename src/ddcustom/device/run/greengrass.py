"""Running under Greengrass: the runner given the deployment's configuration and the nucleus over IPC.

``GreengrassConfiguration`` is the runner's configuration source: it reads the configuration with
GetConfiguration (again after each update event and each reconnect, since an update may have come
while the connection was down), answers a deployment's validation request before the deployment applies
a configuration (validation.py), and tells the nucleus the component's state. An invalid first
configuration is reported as ERRORED and the component exits with a non-zero status instead of running
with settings nobody asked for: the nucleus starts it again, and after three errors within its error reset
time it is BROKEN, which fails the deployment that brought that configuration (docs/deploying.md).
Once running it reports RUNNING, once per connection. It lives here, above the outputs, because it needs
``device.config``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Optional

from ddcustom.device.config import ConfigError, Settings, parse_settings
from ddcustom.device.outputs.greengrass.connection import GreengrassConnection
from ddcustom.device.outputs.greengrass.sink import GreengrassSink
from ddcustom.device.outputs.sink import SinkError
from ddcustom.device.run.process import StopSignal, StopSignals, install_stop_handlers
from ddcustom.device.run.runner import run
from ddcustom.device.run.validation import ValidationRequests
from ddcustom.device.sources.source import THIS_MACHINE, Machine

log = logging.getLogger(__name__)


def run_under_greengrass(
    config_path: Optional[str] = None, machine: Machine = THIS_MACHINE, *, started_as_root: bool = False
) -> int:
    """``ddcustom run`` with SVCUID set. Returns when stopped by a signal, or at once with a non-zero
    status when the deployed configuration is invalid. ``started_as_root``: the recipe's step started it
    as root (it has dropped to its own user since), so the nucleus's own stop signals come from root."""
    if config_path:
        log.warning("--config is ignored under Greengrass: the configuration comes from the deployment")
    thing_name = os.environ.get("AWS_IOT_THING_NAME", "")
    if not thing_name:
        log.error("AWS_IOT_THING_NAME is not set; the nucleus sets it for components")
        return 1
    stop = threading.Event()
    connection = GreengrassConnection()
    signals = install_stop_handlers(stop, connection.wake)  # before the IPC client starts its threads
    configuration = GreengrassConfiguration(connection)
    sink = GreengrassSink(connection, thing_name)
    nucleus_uid = 0 if started_as_root else None
    return run(
        configuration,
        sink,
        thing_name,
        stop,
        connection.wake,
        machine=machine,
        unrequested_stop=lambda: stop_not_from_the_nucleus(signals, nucleus_uid),
    )


def stop_not_from_the_nucleus(signals: StopSignals, nucleus_uid: Optional[int]) -> Optional[StopSignal]:
    """The stop signal received, when the nucleus cannot have sent it; None when it may have.

    The nucleus stops a component with ``kill -TERM`` run as the user it started the component's step as
    (UnixPlatform.killProcessAndChildren, through the step's user decorator). The recipe's step runs as
    root, so the nucleus's own signal comes from uid 0 (``nucleus_uid``); a stop signal from any other
    user is someone else's. Started unprivileged, the component cannot tell (``nucleus_uid`` None): the
    nucleus's kill then runs as the component's user, like anyone else's.
    """
    received = signals.received
    if received is None or nucleus_uid is None or received.sender_uid is None:
        return None
    if received.sender_uid in (0, nucleus_uid) or received.sender_pid == 0:  # root, or the kernel
        return None
    return received


class GreengrassConfiguration:
    """The deployment's configuration over IPC, its validation requests, and the component's state."""

    def __init__(self, connection: GreengrassConnection) -> None:
        self._connection = connection
        self._changed = threading.Event()  # set by the IPC thread, read by the loop
        self.validation = ValidationRequests(connection.send_validity_report)
        connection.subscribe_configuration(self._on_update)
        connection.subscribe_validation(
            self.validation.on_request,
            "a configuration update is checked only once a deployment has applied it (and refused then)",
        )
        connection.on_reconnect(self._changed.set)  # an update may have come while we were away

    def read(self) -> Settings:
        """The deployed configuration, validated (warnings logged); ConfigError if it is invalid,
        SinkError if it cannot be read now."""
        raw = self._connection.call("GetConfiguration", lambda ipc: ipc.get_configuration())
        settings, warnings = parse_settings(raw)
        for warning in warnings:
            log.warning("%s", warning)
        return settings

    def first_settings(self, stop: threading.Event) -> Optional[Settings]:
        """Connect and read the configuration; never give up while Greengrass expects the component to run.
        An invalid configuration is reported as ERRORED, and raised: the component does not start."""
        connection = self._connection
        while not stop.is_set():
            backoff = connection.seconds_to_next_attempt()
            if backoff:  # not connected, and the next attempt is not due yet
                stop.wait(backoff)
                continue
            try:
                settings = self.read()
            except ConfigError as exc:
                log.error(
                    "the deployed configuration is invalid; reporting ERRORED and exiting (the nucleus "
                    "starts the component again, and after three errors within an hour it is BROKEN and "
                    "the deployment fails): %s",
                    exc,
                )
                connection.update_state("ERRORED")
                raise
            except SinkError as exc:
                log.warning("%s", exc)
                if connection.connected:  # the call failed, not the connection: do not hammer the nucleus
                    stop.wait(1.0)
                continue
            self._changed.clear()
            return settings
        return None

    def poll(self) -> Optional[Settings]:
        """Keep the connection up, report RUNNING once per connection, and read the configuration
        again when it may have changed (None when it was not, or cannot be read yet: tried next cycle)."""
        connection = self._connection
        connection.keep_connected()
        if connection.connected:
            connection.update_state("RUNNING")  # sent once per connection (update_state skips repeats)
        if not self._changed.is_set():
            return None
        self._changed.clear()
        try:
            return self.read()
        except SinkError as exc:
            self._changed.set()  # try again next cycle
            log.warning("cannot read the configuration update yet: %s", exc)
            return None

    def seconds_to_next_poll(self) -> Optional[float]:
        return self._connection.seconds_to_next_attempt()

    # ---- IPC callback (runs on the client's thread: keep it short) -------------------------------

    def _on_update(self) -> None:
        self._changed.set()
        self._connection.wake.set()
