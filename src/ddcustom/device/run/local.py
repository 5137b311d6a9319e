"""Running outside Greengrass: the agent's loop with reports and alerts as JSON lines on stdout."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from typing import Optional

from ddcustom.device.agent import Agent
from ddcustom.device.config import Settings
from ddcustom.device.outputs.stdout import JsonLinesSink
from ddcustom.device.run.process import install_stop_handlers, setup_logging

log = logging.getLogger(__name__)


def local_thing_name(explicit: Optional[str] = None) -> str:
    return explicit or os.environ.get("AWS_IOT_THING_NAME") or socket.gethostname()


def run_local(settings: Settings, thing: Optional[str]) -> int:
    """``ddcustom run`` without SVCUID. Returns when stopped by SIGINT or SIGTERM."""
    setup_logging(settings.log_level)
    thing_name = local_thing_name(thing)
    stop, wake = threading.Event(), threading.Event()
    reader_gone = threading.Event()

    def stdout_closed() -> None:
        if not reader_gone.is_set():
            log.info("the reader of stdout went away; stopping (unsent alerts stay spooled for the next run)")
        reader_gone.set()
        stop.set()
        wake.set()

    sink = JsonLinesSink(sys.stdout, thing_name, settings.alert_topic_for(thing_name), stdout_closed)
    agent = Agent(settings, thing_name, sink)
    install_stop_handlers(stop, wake)
    log.info(
        "running locally as %s: a sample every %gs, a report every %ds; JSON lines on stdout",
        thing_name,
        settings.detect_interval_seconds,
        settings.report_interval_seconds,
    )
    try:
        agent.run_forever(stop, wake)
    finally:
        agent.close()
        if reader_gone.is_set():
            # what is still buffered cannot go anywhere: let the interpreter's exit flush into nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        else:
            sink.close()
    log.info("stopped: %s", json.dumps(agent.status()["counters"]))
    return 0
