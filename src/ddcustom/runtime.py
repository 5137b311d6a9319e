"""Process plumbing shared by the local and the Greengrass run (logging, stop signals, retry backoff),
and by the commands that run the component as a child process (``dev``, the demo): stopping it."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any, Optional, TextIO

log = logging.getLogger("ddcustom")

STOP_TIMEOUT = 10.0  # seconds a child component gets to stop on SIGTERM before it is killed


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


def backoff_delays(base: float, cap: float, rng: Optional[random.Random] = None) -> Iterator[float]:
    """Endless exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""
    if base <= 0 or cap < base:
        raise ValueError(f"need 0 < base <= cap, got base={base}, cap={cap}")
    rng = rng or random.Random()
    ceiling = base
    while True:
        yield rng.uniform(0.0, ceiling)
        ceiling = min(cap, ceiling * 2)


def stop_child(child: subprocess.Popen[Any]) -> int:
    """SIGTERM (unless it has ended), SIGKILL after STOP_TIMEOUT; its exit status."""
    child.terminate()
    try:
        return child.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()
