"""The component's process: logging to stderr, the signals that stop it, and the boot it runs in."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional, TextIO

from ddcustom.device.fileio import read_bounded

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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True)
class StopSignal:
    """A stop signal received, with its sender as the kernel gives it (None: not known, when the signal
    could not be waited for with its details)."""

    number: int
    sender_pid: Optional[int]
    sender_uid: Optional[int]
    at: float  # wall-clock time it arrived

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.number).name
        except ValueError:
            return f"signal {self.number}"


class StopSignals:
    """SIGINT and SIGTERM end the loop cleanly; ``received`` is the first one, with its sender."""

    def __init__(self) -> None:
        self.received: Optional[StopSignal] = None

    def _record(self, received: StopSignal, stop: threading.Event, wake: threading.Event) -> None:
        if self.received is None:
            self.received = received
            sender = ""
            if received.sender_pid is not None:
                sender = f" from pid {received.sender_pid} uid {received.sender_uid}"
            log.info("%s received%s, stopping", received.name, sender)
        stop.set()
        wake.set()


def install_stop_handlers(stop: threading.Event, wake: threading.Event) -> StopSignals:
    """SIGINT and SIGTERM (how the nucleus stops a component) end the loop cleanly.

    Call from the main thread before any other thread starts. Where the platform allows (Linux), the two
    signals are blocked and waited for on a thread of their own with ``sigwaitinfo``, which gives the
    sender's pid and real user id; threads started afterwards inherit the block. A Python handler stays
    installed as well, for a signal that reaches a thread started before (its sender is then unknown).
    """
    signals = StopSignals()

    def handler(signum: int, _frame: Any) -> None:
        signals._record(StopSignal(signum, None, None, time.time()), stop, wake)

    for number in STOP_SIGNALS:
        signal.signal(number, handler)
    if hasattr(signal, "sigwaitinfo") and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

        def wait_for_signals() -> None:
            while True:
                info = signal.sigwaitinfo(STOP_SIGNALS)
                received = StopSignal(info.si_signo, info.si_pid, info.si_uid, time.time())
                signals._record(received, stop, wake)

        threading.Thread(target=wait_for_signals, name="ddcustom-signals", daemon=True).start()
    return signals


def boot_id() -> Optional[str]:
    """The kernel's id of the current boot (it changes at every boot); None where it cannot be read."""
    try:
        return read_bounded(BOOT_ID_FILE, 64).decode("ascii", "replace").strip() or None
    except OSError:
        return None
