"""Running outside Greengrass: the runner given fixed settings, and reports and alerts as JSON lines on
stdout; the run stops when stdout's reader goes away (``ddcustom run | head``)."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from typing import Callable, Optional

from ddcustom.device.agent import Agent
from ddcustom.device.config import Settings
from ddcustom.device.outputs.stdout import JsonLinesSink
from ddcustom.device.run.process import install_stop_handlers
from ddcustom.device.run.runner import run
from ddcustom.device.sources.source import THIS_MACHINE, Machine

log = logging.getLogger(__name__)


def local_thing_name(explicit: Optional[str] = None) -> str:
    return explicit or os.environ.get("AWS_IOT_THING_NAME") or socket.gethostname()


def run_local(settings: Settings, thing: Optional[str], machine: Machine = THIS_MACHINE) -> int:
    """``ddcustom run`` without SVCUID. Returns when stopped by SIGINT or SIGTERM."""
    thing_name = local_thing_name(thing)
    stop, wake = threading.Event(), threading.Event()
    reader_gone = threading.Event()

    def stdout_closed() -> None:
        if not reader_gone.is_set():
            log.info("the reader of stdout went away; stopping (unsent alerts stay spooled for the next run)")
        reader_gone.set()
        stop.set()
        wake.set()

    def started(agent: Agent) -> None:
        log.info(
            "running locally as %s: a sample every %gs, a report every %ds; JSON lines on stdout",
            thing_name,
            agent.settings.detect_interval_seconds,
            agent.settings.report_interval_seconds,
        )

    def stopped(agent: Agent) -> None:
        log.info("stopped: %s", json.dumps(agent.status()["counters"]))

    sink = _StdoutSink(thing_name, settings.alert_topic_for(thing_name), stdout_closed, reader_gone)
    install_stop_handlers(stop, wake)
    configuration = FixedSettings(settings)
    return run(configuration, sink, thing_name, stop, wake, started=started, stopped=stopped, machine=machine)


class FixedSettings:
    """A local run's configuration source: the settings it started with, for its whole life."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def first_settings(self, stop: threading.Event) -> Optional[Settings]:
        return self._settings

    def poll(self) -> Optional[Settings]:
        return None

    def seconds_to_next_poll(self) -> Optional[float]:
        return None


class _StdoutSink(JsonLinesSink):
    """JSON lines on stdout; once its reader has gone away, closing it leaves nothing to flush."""

    def __init__(
        self, thing_name: str, alert_topic: str, on_closed: Callable[[], None], reader_gone: threading.Event
    ) -> None:
        super().__init__(sys.stdout, thing_name, alert_topic, on_closed)
        self._reader_gone = reader_gone

    def close(self) -> None:
        if self._reader_gone.is_set():
            # what is still buffered cannot go anywhere: let the interpreter's exit flush into nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        else:
            super().close()
