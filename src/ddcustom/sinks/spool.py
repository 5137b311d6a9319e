"""Durable alert spool: every alert is on disk (fsynced) before it is sent, and removed once acknowledged.

One file per alert, named by a sequence number that only grows, so replay after a restart or reconnect
is in order. When the spool would exceed its size bound the OLDEST alerts are dropped (and logged at
error level): appending never blocks and never fails because the spool is full. A file that does not
parse (truncated, corrupt) is moved to ``corrupt/`` with a warning. A crash after the send but before
the ack replays that alert again: receivers recognise duplicates by (violationId, violationEventType).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Optional, Union

log = logging.getLogger(__name__)

SUFFIX = ".alert.json"
NAME = re.compile(r"(\d{16})" + re.escape(SUFFIX))
TEMP = re.compile(r"\.(\d{16}" + re.escape(SUFFIX) + r")\.tmp")
CORRUPT_DIR = "corrupt"


class SpoolError(Exception):
    """The alert could not be stored (disk error, or one alert larger than the whole spool)."""


def alert_identity(event: dict[str, Any]) -> Optional[tuple[str, str]]:
    """(violationId, violationEventType): what tells two copies of the same alert apart from new ones."""
    violation_id, kind = event.get("violationId"), event.get("violationEventType")
    if isinstance(violation_id, str) and isinstance(kind, str):
        return violation_id, kind
    return None


class AlertSpool:
    def __init__(self, directory: Union[str, Path], max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}  # key (file name) -> bytes, oldest first
        self._identities: dict[tuple[str, str], str] = {}  # alert identity -> key
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.chmod(self.directory, 0o700)  # alerts name the device and what it runs: owner only
        except OSError as exc:
            log.warning("cannot restrict alert spool %s to its owner: %s", self.directory, exc)
        self._recover()
        numbers = [int(NAME.fullmatch(key).group(1)) for key in self._sizes]  # type: ignore[union-attr]
        self._next = max(numbers, default=0) + 1

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def size_bytes(self) -> int:
        return sum(self._sizes.values())

    def append(self, event: dict[str, Any]) -> str:
        """Store ``event`` durably and return its key; an alert already pending returns the pending key."""
        data = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        if len(data) > self.max_bytes:
            raise SpoolError(
                f"alert of {len(data)} bytes is larger than the whole spool ({self.max_bytes} bytes)"
            )
        identity = alert_identity(event)
        with self._lock:
            if identity is not None and identity in self._identities:
                return self._identities[identity]
            while self._sizes and self.size_bytes + len(data) > self.max_bytes:
                self._drop_oldest()
            key = f"{self._next:016d}{SUFFIX}"
            self._write(key, data)
            self._next += 1
            self._sizes[key] = len(data)
            if identity is not None:
                self._identities[identity] = key
            return key

    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        """Alerts not yet acknowledged, oldest first."""
        with self._lock:
            out = []
            for key in list(self._sizes):
                event = self._read(key)
                if event is None:
                    self._forget(key)
                else:
                    out.append((key, event))
            return out

    def ack(self, key: str) -> None:
        """The alert was delivered: remove it. Unknown keys are ignored (acknowledged twice)."""
        with self._lock:
            if key not in self._sizes:
                return
            try:
                (self.directory / key).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                # Left on disk it would be sent again after a restart: a recognisable duplicate, not a loss.
                log.warning("cannot remove delivered alert %s from the spool: %s", key, exc)
            self._forget(key)

    # ---- internals (called with the lock held, or from __init__) ------------------------------

    def _recover(self) -> None:
        """Index the files left by an earlier run; finish or set aside interrupted writes."""
        for path in sorted(self.directory.iterdir()):
            temp = TEMP.fullmatch(path.name)
            if temp is not None:
                # The process died inside append(): keep the alert if it was written completely.
                if self._parse(path) is not None:
                    os.replace(path, self.directory / temp.group(1))
                    _fsync_dir(self.directory)
                else:
                    self._set_aside(path, "an interrupted write")
        for path in sorted(self.directory.iterdir()):
            if NAME.fullmatch(path.name) is None:
                continue
            event = self._parse(path)
            if event is None:
                self._set_aside(path, "it does not parse")
                continue
            self._sizes[path.name] = path.stat().st_size
            identity = alert_identity(event)
            if identity is not None:
                self._identities.setdefault(identity, path.name)
        if self._sizes:
            log.info("alert spool %s holds %d alert(s) not yet delivered", self.directory, len(self._sizes))

    def _write(self, key: str, data: bytes) -> None:
        temp = self.directory / f".{key}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.directory / key)
            _fsync_dir(self.directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise SpoolError(f"cannot store alert in {self.directory}: {exc}") from exc

    def _read(self, key: str) -> Optional[dict[str, Any]]:
        path = self.directory / key
        if not path.exists():
            log.warning("spooled alert %s disappeared from %s", key, self.directory)
            return None
        event = self._parse(path)
        if event is None:
            self._set_aside(path, "it does not parse")
        return event

    def _parse(self, path: Path) -> Optional[dict[str, Any]]:
        try:
            with path.open("rb") as f:
                data = f.read(self.max_bytes + 1)
            event = json.loads(data)
        except (OSError, ValueError) as exc:
            log.debug("spooled alert %s unreadable: %s", path.name, exc)
            return None
        return event if isinstance(event, dict) and len(data) <= self.max_bytes else None

    def _set_aside(self, path: Path, why: str) -> None:
        target_dir = self.directory / CORRUPT_DIR
        try:
            target_dir.mkdir(mode=0o700, exist_ok=True)
            os.replace(path, target_dir / path.name)
            log.warning("alert spool: moved %s to %s because %s", path.name, target_dir, why)
        except OSError as exc:
            log.warning("alert spool: %s is unusable (%s) and cannot be moved aside: %s", path.name, why, exc)

    def _drop_oldest(self) -> None:
        key = next(iter(self._sizes))
        log.error(
            "ALERT SPOOL FULL (%d bytes max): dropping the oldest undelivered alert %s; alerts are lost",
            self.max_bytes,
            key,
        )
        try:
            (self.directory / key).unlink()
        except OSError as exc:
            log.warning("cannot remove dropped alert %s: %s", key, exc)
        self._forget(key)

    def _forget(self, key: str) -> None:
        self._sizes.pop(key, None)
        for identity in [i for i, k in self._identities.items() if k == key]:
            del self._identities[identity]


def _fsync_dir(directory: Path) -> None:
    """Make a rename or new file in ``directory`` survive a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
