"""The component's process: logging to stderr and the signals that stop it cleanly."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any, TextIO

log = logging.getLogger("ddcustom")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (as logging's own last-resort handler does), and
    marks the handler this module added, so a second call changes the level only."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr (Greengrass captures it into the component's log file) at ``level``."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))


def install_stop_handlers(stop: threading.Event, wake: threading.Event) -> None:
    """SIGINT and SIGTERM (how the nucleus stops a component) end the loop cleanly."""

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d received, stopping", signum)
        stop.set()
        wake.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
