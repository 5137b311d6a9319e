"""Running under Greengrass: the runner given the deployment's configuration and the nucleus over IPC.

``GreengrassConfiguration`` is the runner's configuration source: it reads the configuration with
GetConfiguration (again after each update event and each reconnect, since an update may have come
while the connection was down) and tells the nucleus the component's state. An invalid first
configuration is reported as ERRORED and the component waits for a deployment that fixes it, instead
of running with settings nobody asked for; once running it reports RUNNING, once per connection.
It lives here, above the outputs, because it needs ``device.config``.
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
from ddcustom.device.run.process import install_stop_handlers
from ddcustom.device.run.runner import run
from ddcustom.device.sources.source import THIS_MACHINE, Machine

log = logging.getLogger(__name__)

ERRORED_RECHECK_SECONDS = 60.0  # with an invalid first configuration: read it again at least this often


def run_under_greengrass(config_path: Optional[str] = None, machine: Machine = THIS_MACHINE) -> int:
    """``ddcustom run`` with SVCUID set. Returns only when stopped by a signal."""
    if config_path:
        log.warning("--config is ignored under Greengrass: the configuration comes from the deployment")
    thing_name = os.environ.get("AWS_IOT_THING_NAME", "")
    if not thing_name:
        log.error("AWS_IOT_THING_NAME is not set; the nucleus sets it for components")
        return 1
    connection = GreengrassConnection()
    configuration = GreengrassConfiguration(connection)
    sink = GreengrassSink(connection, thing_name)
    stop = threading.Event()
    install_stop_handlers(stop, connection.wake)
    return run(configuration, sink, thing_name, stop, connection.wake, machine=machine)


class GreengrassConfiguration:
    """The deployment's configuration over IPC, and the component's state for the nucleus."""

    def __init__(self, connection: GreengrassConnection) -> None:
        self._connection = connection
        self._changed = threading.Event()  # set by the IPC thread, read by the loop
        connection.subscribe_configuration(self._on_update)
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
        """Connect and read the configuration; never give up while Greengrass expects the component to run."""
        connection = self._connection
        while not stop.is_set():
            backoff = connection.seconds_to_next_attempt()
            if backoff:  # not connected, and the next attempt is not due yet
                stop.wait(backoff)
                continue
            try:
                settings = self.read()
            except ConfigError as exc:
                log.error("the deployed configuration is invalid; waiting for a corrected one: %s", exc)
                connection.update_state("ERRORED")
                connection.wake.wait(ERRORED_RECHECK_SECONDS)
                connection.wake.clear()
                continue
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
