"""Running under Greengrass: the configuration through IPC, the agent's loop, RUNNING / ERRORED states."""

from __future__ import annotations

import logging
import os
import threading
from typing import Optional

from ddcustom.device.agent import Agent
from ddcustom.device.config import ConfigError, Settings
from ddcustom.device.documents import shorten
from ddcustom.device.outputs.greengrass.sink import GreengrassSink
from ddcustom.device.outputs.sink import SinkError
from ddcustom.device.run.process import install_stop_handlers, setup_logging

log = logging.getLogger(__name__)


def run_under_greengrass(config_path: Optional[str] = None) -> int:
    """``ddcustom run`` with SVCUID set. Returns only when stopped by a signal."""
    if config_path:
        log.warning("--config is ignored under Greengrass: the configuration comes from the deployment")
    thing_name = os.environ.get("AWS_IOT_THING_NAME", "")
    if not thing_name:
        log.error("AWS_IOT_THING_NAME is not set; the nucleus sets it for components")
        return 1
    sink = GreengrassSink(thing_name)
    stop = threading.Event()
    install_stop_handlers(stop, sink.wake)
    serve(sink, stop)
    return 0


def serve(sink: GreengrassSink, stop: threading.Event) -> None:
    """The component's life under Greengrass, until ``stop`` is set."""
    settings = _first_settings(sink, stop)
    if settings is None:
        return
    setup_logging(settings.log_level)
    sink.settings = settings
    agent = Agent(settings, sink.thing_name, sink)
    refused = ""  # the last configuration refused, logged once however many update events it sends

    def before_cycle() -> None:
        nonlocal refused
        sink.keep_connected()
        if sink.connected:
            sink.update_state("RUNNING")  # sent once per connection (update_state skips repeats)
        if sink.config_changed.is_set():
            refused = _apply_update(sink, agent, refused)

    try:
        agent.run_forever(stop, sink.wake, before_cycle, sink.seconds_to_next_attempt)
    finally:
        agent.close()
        sink.close()


def _apply_update(sink: GreengrassSink, agent: Agent, refused: str) -> str:
    """Apply the deployed configuration; returns the refusal of an invalid one ("" when none)."""
    sink.config_changed.clear()
    try:
        new = sink.read_settings()
    except ConfigError as exc:  # every problem, each value cut short; the line is cut at 4000 all the same
        refusal = shorten(str(exc), 4000)
        if refusal != refused:
            log.error("configuration update refused, the previous settings stay: %s", refusal)
        return refusal
    except SinkError as exc:
        sink.config_changed.set()  # try again next cycle
        log.warning("cannot read the configuration update yet: %s", exc)
        return refused
    if new != sink.settings:
        log.info("configuration updated; applying without a restart")
        setup_logging(new.log_level)
        sink.settings = new
        agent.apply_settings(new)
    return ""


def _first_settings(sink: GreengrassSink, stop: threading.Event) -> Optional[Settings]:
    """Connect and read the configuration; never exit while Greengrass expects the component to run.

    A configuration that does not validate is reported as ERRORED and the component waits for a
    deployment that fixes it, instead of running with settings nobody asked for.
    """
    while not stop.is_set():
        backoff = sink.seconds_to_next_attempt()
        if backoff:  # not connected, and the next attempt is not due yet
            stop.wait(backoff)
            continue
        try:
            settings = sink.read_settings()
        except ConfigError as exc:
            log.error("the deployed configuration is invalid; waiting for a corrected one: %s", exc)
            sink.update_state("ERRORED")
            sink.wake.wait(60)
            sink.wake.clear()
            continue
        except SinkError as exc:
            log.warning("%s", exc)
            if sink.connected:  # the call failed, not the connection: do not hammer the nucleus
                stop.wait(1.0)
            continue
        sink.config_changed.clear()
        return settings
    return None
