"""The component's loop, set up once for every way it runs.

``run`` takes the first settings from a configuration source, sets up logging, builds the ``Agent``,
applies configuration changes between cycles (an invalid one is refused and the settings in use stay)
and closes the agent and the sink at the end. Where the settings come from and where reports and alerts
go is all that differs between a local run (local.py: fixed settings, JSON lines on stdout) and one
under Greengrass (greengrass.py: the deployment's configuration and the nucleus, over IPC).

It also keeps the run marker (alerts/stops.py): a start that finds the last run's marker raises the
unclean-stop alert before detection starts; a clean stop removes the marker, a stop by a signal the
nucleus did not send keeps it, with the signal, and ends with a non-zero status.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Optional, Protocol

from ddcustom import __version__
from ddcustom.device.agent import Agent
from ddcustom.device.alerts.stops import RunMarker, unclean_stop_event
from ddcustom.device.config import ConfigError, Settings
from ddcustom.device.documents import shorten
from ddcustom.device.outputs.sink import Sink
from ddcustom.device.run.process import StopSignal, boot_id, setup_logging
from ddcustom.device.sources.collect import Collector
from ddcustom.device.sources.source import THIS_MACHINE, Machine

log = logging.getLogger(__name__)

MAX_REFUSAL_CHARS = 4000  # every problem, each value cut short; the line is cut at this all the same
# The exit status when the first configuration is invalid: non-zero, so that the nucleus records ERRORED
# even when the component could not tell it so.
EXIT_INVALID_CONFIGURATION = 2


class ConfigurationSource(Protocol):
    """Where the settings come from; called on the loop's thread only."""

    def first_settings(self, stop: threading.Event) -> Optional[Settings]:
        """The settings to start with, waiting as long as it takes to read them; None if stopped first.
        Raises ConfigError when they are invalid: the component does not start."""

    def poll(self) -> Optional[Settings]:
        """Before every cycle: the configuration when it was read again (it may be unchanged), None when
        it was not. Raises ConfigError for an invalid one."""

    def seconds_to_next_poll(self) -> Optional[float]:
        """In how many seconds ``poll`` has work to do, when that is sooner than the next sample; or None."""


class RunSink(Sink, Protocol):
    """A sink the runner tells the settings in use, and closes at the end."""

    def apply_settings(self, settings: Settings) -> None: ...

    def close(self) -> None: ...


def run(
    configuration: ConfigurationSource,
    sink: RunSink,
    thing_name: str,
    stop: threading.Event,
    wake: threading.Event,
    *,
    started: Optional[Callable[[Agent], None]] = None,
    stopped: Optional[Callable[[Agent], None]] = None,
    machine: Machine = THIS_MACHINE,
    unrequested_stop: Callable[[], Optional[StopSignal]] = lambda: None,
) -> int:
    """Run the agent until ``stop`` is set (``wake`` interrupts its wait); returns the exit status.

    ``started(agent)`` is called once the agent is built, ``stopped(agent)`` once it and the sink are
    closed after a clean stop. ``machine``: where the sources read (with the privileged reader, when
    there is one). ``unrequested_stop()``, asked once the loop has ended: the stop signal that ended it
    when that was not a stop the component's manager asked for (None: a clean stop).

    Exit status: 0 after a clean stop, EXIT_INVALID_CONFIGURATION when the first configuration is invalid,
    128 + the signal's number after a stop that was not asked for (as a shell reports a process killed by
    that signal): the nucleus takes that as an error and starts the component again.
    """
    try:
        settings = configuration.first_settings(stop)
    except ConfigError:
        sink.close()
        return EXIT_INVALID_CONFIGURATION
    if settings is None:
        sink.close()
        return 0
    setup_logging(settings.log_level)
    sink.apply_settings(settings)
    agent = Agent(settings, thing_name, sink, collector=Collector(settings, machine))
    this_boot = boot_id()
    marker = RunMarker(settings.run_marker_file, pid=os.getpid(), version=__version__, boot_id=this_boot)
    previous = marker.previous()
    if previous is not None:  # spooled (durably) before the marker is replaced: the alert cannot be lost
        agent.raise_alert(unclean_stop_event(previous, thing_name, this_boot))
    marker.start()
    if started is not None:
        started(agent)
    updates = _Updates(configuration, sink, agent, marker)
    try:
        agent.run_forever(stop, wake, updates.before_cycle, configuration.seconds_to_next_poll)
    finally:
        agent.close()
        sink.close()
    received = unrequested_stop()
    if received is not None:
        log.error(
            "stopped by %s from pid %s (uid %s), which the nucleus did not send: exiting with status %d so "
            "that it starts the component again; the next start raises an unclean-stop alert",
            received.name,
            received.sender_pid,
            received.sender_uid,
            128 + received.number,
        )
        marker.stopped_by(received.name, received.sender_pid, received.sender_uid, received.at)
        return 128 + received.number
    marker.stopped_cleanly()
    if stopped is not None:
        stopped(agent)
    return 0


class _Updates:
    """Configuration changes applied between cycles; a refused configuration is logged once, however
    many times it is read again (update events, reconnects)."""

    def __init__(
        self, configuration: ConfigurationSource, sink: RunSink, agent: Agent, marker: RunMarker
    ) -> None:
        self._configuration = configuration
        self._sink = sink
        self._agent = agent
        self._marker = marker
        self._refused = ""  # the last configuration refused, "" when the last one read was valid

    def before_cycle(self) -> None:
        self._marker.beat()
        try:
            new = self._configuration.poll()
        except ConfigError as exc:
            refusal = shorten(str(exc), MAX_REFUSAL_CHARS)
            if refusal != self._refused:
                log.error("configuration update refused, the previous settings stay: %s", refusal)
            self._refused = refusal
            return
        if new is None:
            return
        self._refused = ""
        if new != self._agent.settings:
            log.info("configuration updated; applying without a restart")
            setup_logging(new.log_level)
            self._sink.apply_settings(new)
            self._agent.apply_settings(new)
            self._marker.move(new.run_marker_file)
