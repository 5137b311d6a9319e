"""An unclean stop of the last run, told at the next start and raised as an alert.

Whoever can kill the component stops all detection, and a stop that was not asked for is itself a sign of
tampering. So the component leaves a marker in its state folder, ``running.json``, while it detects:
written durably when detection starts, rewritten with the time of its last sign of life every
HEARTBEAT_SECONDS (a few hundred bytes a minute), and removed when it stops cleanly. A marker found at the
next start means the last run ended otherwise, and ``unclean_stop_event`` says how, as far as can be known:

- ``stopped-by-signal``: it received a stop signal that the nucleus did not send (the marker then holds
  the signal and its sender's pid and user, as the kernel gave them), and exited non-zero so that the
  nucleus starts it again;
- ``device-restarted``: the device booted again under it (the kernel's boot id changed): power lost,
  a reset, a kernel crash;
- ``killed-or-crashed``: same boot, no stop seen: SIGKILL, a crash, the out-of-memory killer;
- ``unknown``: the boot ids cannot be compared, or the marker was unreadable.

What cannot be known: who sent a SIGKILL (the process gets no word of it), and the exact moment of a stop
that was not seen: detection was down from some time after the last heartbeat (at most HEARTBEAT_SECONDS
after it) until this start, and the event gives that bound. A stop that is never followed by a start (a
clean-looking exit the nucleus takes as finished, the nucleus stopped, a BROKEN component) raises nothing
here: the fleet's silent-device check is for those.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ddcustom.device.detect.events import (
    DEVICE_RESTARTED,
    KILLED_OR_CRASHED,
    STOPPED_BY_SIGNAL,
    UNKNOWN_CAUSE,
    UncleanStopEvent,
)
from ddcustom.device.fileio import fsync_directory, read_bounded, write_atomic

log = logging.getLogger(__name__)

MARKER_NAME = "running.json"
HEARTBEAT_SECONDS = 60.0
MAX_MARKER_BYTES = 4096


@dataclass(frozen=True)
class PreviousRun:
    """What the marker of a run that did not stop cleanly says (None: not recorded, or unreadable)."""

    raw: bytes  # the marker as found: the event's id is made from it, so the same marker raises the same id
    pid: Optional[int] = None
    version: Optional[str] = None
    boot_id: Optional[str] = None
    started_at: Optional[float] = None
    last_seen_at: Optional[float] = None
    heartbeat_seconds: Optional[float] = None
    signal: Optional[dict[str, Any]] = None  # {"name", "senderPid", "senderUid", "at"}: a stop not asked for
    readable: bool = True


class RunMarker:
    """The marker of the run in progress, at ``path``. Every write is best effort: a failure is logged and
    detection goes on (the next start then sees no marker, or an older one)."""

    def __init__(
        self,
        path: str,
        *,
        pid: int,
        version: str,
        boot_id: Optional[str],
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._pid = pid
        self._version = version
        self._boot_id = boot_id
        self.heartbeat_seconds = heartbeat_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._started_at = 0.0
        self._next_beat: Optional[float] = None  # None: not started (or stopped): nothing to beat
        self._signal: Optional[dict[str, Any]] = None
        self._failing = False  # the last write failed: the next failure is not logged again

    def previous(self) -> Optional[PreviousRun]:
        """The run before this one, if it left its marker (it did not stop cleanly); None when it did not."""
        try:
            raw = read_bounded(self.path, MAX_MARKER_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the run marker %s (%s): the last run's stop is unknown", self.path, exc)
            return None
        try:
            if len(raw) > MAX_MARKER_BYTES:
                raise ValueError(f"larger than {MAX_MARKER_BYTES} bytes")
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            log.warning("run marker %s unreadable (%s): the last run did not stop cleanly", self.path, exc)
            return PreviousRun(raw[:MAX_MARKER_BYTES], readable=False)
        signal = data.get("signal")
        return PreviousRun(
            raw=raw,
            pid=_typed(data.get("pid"), int),
            version=_typed(data.get("version"), str),
            boot_id=_typed(data.get("bootId"), str),
            started_at=_number(data.get("startedAt")),
            last_seen_at=_number(data.get("lastSeenAt")),
            heartbeat_seconds=_number(data.get("heartbeatSeconds")),
            signal=signal if isinstance(signal, dict) else None,
        )

    def start(self) -> None:
        """Detection starts: write the marker (durably), replacing the last run's."""
        self._started_at = self._clock()
        self._signal = None
        self._write()
        self._next_beat = self._monotonic() + self.heartbeat_seconds

    def beat(self) -> None:
        """Call as often as you like: the marker is rewritten when the heartbeat is due."""
        if self._next_beat is None or self._monotonic() < self._next_beat:
            return
        self._next_beat = self._monotonic() + self.heartbeat_seconds
        self._write()

    def stopped_cleanly(self) -> None:
        """Detection stopped because it was asked to: remove the marker."""
        self._next_beat = None
        try:
            os.unlink(self.path)
            fsync_directory(os.path.dirname(self.path) or ".")
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove run marker %s (%s): the next start reports this stop", self.path, exc)

    def stopped_by(self, name: str, sender_pid: Optional[int], sender_uid: Optional[int], at: float) -> None:
        """Detection stopped on a signal that the nucleus did not send: keep the marker, with the signal."""
        self._signal = {"name": name, "senderPid": sender_pid, "senderUid": sender_uid, "at": round(at, 3)}
        self._next_beat = None
        self._write()

    def move(self, path: str) -> None:
        """The state folder changed: the marker follows it."""
        if path == self.path:
            return
        old, self.path = self.path, path
        if self._next_beat is not None:
            self._write()
        with contextlib.suppress(OSError):
            os.unlink(old)

    def _write(self) -> None:
        document: dict[str, Any] = {
            "pid": self._pid,
            "version": self._version,
            "bootId": self._boot_id,
            "startedAt": round(self._started_at, 3),
            "lastSeenAt": round(self._clock(), 3),
            "heartbeatSeconds": self.heartbeat_seconds,
        }
        if self._signal is not None:
            document["signal"] = self._signal
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            write_atomic(self.path, json.dumps(document, sort_keys=True).encode(), durable=True)
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "cannot write run marker %s (%s): an unclean stop may go unreported", self.path, exc
                )
            self._failing = True
            return
        if self._failing:
            log.info("run marker %s written again", self.path)
        self._failing = False


def unclean_stop_event(
    previous: PreviousRun, thing_name: str, boot_id: Optional[str], now: Optional[float] = None
) -> UncleanStopEvent:
    """The alert for a run that ended without a clean stop; ``boot_id``: this boot's (None: unknown)."""
    now = time.time() if now is None else now
    if not previous.readable:
        cause = UNKNOWN_CAUSE
    elif previous.signal is not None:
        cause = STOPPED_BY_SIGNAL
    elif boot_id is None or previous.boot_id is None:
        cause = UNKNOWN_CAUSE
    elif boot_id != previous.boot_id:
        cause = DEVICE_RESTARTED
    else:
        cause = KILLED_OR_CRASHED
    stopped: dict[str, Any] = {
        "pid": previous.pid,
        "version": previous.version,
        "startedAt": _seconds(previous.started_at),
        "lastSeenAt": _seconds(previous.last_seen_at),
    }
    signal_at = _number(previous.signal.get("at")) if previous.signal is not None else None
    if previous.signal is not None:
        stopped["signal"] = previous.signal
    since = signal_at if signal_at is not None else previous.last_seen_at or previous.started_at
    down: dict[str, Any] = {
        "since": _seconds(since),
        "seconds": None if since is None else max(0, round(now - since)),
        "exact": signal_at is not None,
        "heartbeatSeconds": previous.heartbeat_seconds,
    }
    event_id = hashlib.sha256(b"unclean-stop\0" + previous.raw).hexdigest()[:32]
    return UncleanStopEvent(
        event_id=event_id,
        thing_name=thing_name,
        event_time=int(now),
        cause=cause,
        stopped=stopped,
        detection_down=down,
    )


def _typed(value: Any, kind: type) -> Any:
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _number(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _seconds(value: Optional[float]) -> Optional[int]:
    return None if value is None else int(value)
