"""Durable alert spool: every alert is on disk (fileio, durable) before it is sent, and removed once acked.

One file per alert, named by a sequence number that only grows, so replay after a restart or reconnect
is in order. When the spool would exceed its size bound the OLDEST alerts are dropped (and logged at
error level): appending never blocks and never fails because the spool is full. When the disk itself
fails (full, read-only, directory missing) an alert is kept in memory under its sequence number and
written as soon as a later write works, so it is sent in order and only a crash during the outage
loses it. A file that is not an alert (truncated, corrupt) is moved to ``corrupt/`` with a warning. A
crash after the send but before the ack replays that alert again: receivers recognise duplicates by
(violationId, violationEventType), or for an unclean-stop event by its eventId.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

from ddcustom.device.detect.events import Alert, alert_from_json
from ddcustom.device.fileio import fsync_directory, read_bounded, write_atomic

log = logging.getLogger(__name__)

SUFFIX = ".alert.json"
NAME = re.compile(r"(\d{16})" + re.escape(SUFFIX))
# An interrupted write: fileio's temporary file, or .<key>.tmp as earlier versions named it.
TEMP = re.compile(r"\.(\d{16}" + re.escape(SUFFIX) + r")\.(?:\w+\.)?tmp")
CORRUPT_DIR = "corrupt"


class SpoolError(Exception):
    """The alert cannot be stored: it is larger than the whole spool."""


class AlertSpool:
    """The alerts raised and not yet delivered, in the order raised, at most ``max_bytes`` of them.

    The agent appends every alert before sending it and acks it once the sink has it, so an alert
    outlives a dropped connection or a restart. An alert appended again while pending (same violation
    id and event type) keeps its place. Safe to use from several threads.
    """

    def __init__(self, directory: Union[str, Path], max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}  # key (file name) -> bytes, oldest first
        self._total = 0  # sum of _sizes
        self._in_memory: dict[str, bytes] = {}  # keys whose file could not be written yet
        self._identities: dict[tuple[str, str], str] = {}  # alert identity -> key
        self._identity_of: dict[str, tuple[str, str]] = {}  # key -> alert identity
        try:
            self._make_directory()
            try:
                os.chmod(self.directory, 0o700)  # alerts name the device and what it runs: owner only
            except OSError as exc:
                log.warning("cannot restrict alert spool %s to its owner: %s", self.directory, exc)
            self._recover()
        except OSError as exc:
            log.error(
                "ALERT SPOOL %s UNUSABLE (%s): alerts are kept in memory until it can be written",
                self.directory,
                exc,
            )
        numbers = [int(NAME.fullmatch(key).group(1)) for key in self._sizes]  # type: ignore[union-attr]
        self._next = max(numbers, default=0) + 1

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def size_bytes(self) -> int:
        return self._total

    def append(self, event: Alert) -> str:
        """Store ``event`` durably and return its key; an alert already pending returns the pending key."""
        data = json.dumps(event.to_json(), separators=(",", ":"), sort_keys=True).encode()
        if len(data) > self.max_bytes:
            raise SpoolError(
                f"alert of {len(data)} bytes is larger than the whole spool ({self.max_bytes} bytes)"
            )
        identity = event.identity
        with self._lock:
            if identity in self._identities:
                return self._identities[identity]
            while self._sizes and self._total + len(data) > self.max_bytes:
                self._drop_oldest()
            key = f"{self._next:016d}{SUFFIX}"
            self._next += 1
            self._in_memory[key] = data
            self._sizes[key] = len(data)
            self._total += len(data)
            self._identities[identity] = key
            self._identity_of[key] = identity
            self._write_pending()
            return key

    def pending(self) -> Iterator[tuple[str, Alert]]:
        """Alerts not yet acknowledged, oldest first; each is read when the iteration reaches it."""
        with self._lock:
            keys = list(self._sizes)
        for key in keys:
            with self._lock:
                if key not in self._sizes:
                    continue  # acknowledged or dropped meanwhile
                event = self._load(key)
                if event is None:
                    self._forget(key)
                    continue
            yield key, event

    def ack(self, key: str) -> None:
        """The alert was delivered: remove it. Unknown keys are ignored (acknowledged twice)."""
        with self._lock:
            if key not in self._sizes:
                return
            if key not in self._in_memory:
                try:
                    (self.directory / key).unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    # Left on disk it is sent again after a restart: a recognisable duplicate, not a loss.
                    log.warning("cannot remove delivered alert %s from the spool: %s", key, exc)
            self._forget(key)

    def move_to(self, directory: Union[str, Path], max_bytes: int) -> AlertSpool:
        """A spool at ``directory`` bounded by ``max_bytes`` that holds this one's pending alerts, in order.

        Used when the configuration changes the spool: alerts still waiting here are not left behind.
        """
        target = AlertSpool(directory, max_bytes)
        same_directory = os.path.realpath(target.directory) == os.path.realpath(self.directory)
        for key, event in self.pending():
            try:
                target.append(event)  # the same directory already holds the files: append finds them
            except SpoolError as exc:
                log.error("alert %s stays in %s: %s", key, self.directory, exc)
                continue
            if not same_directory:
                self.ack(key)
        return target

    # ---- internals (called with the lock held, or from __init__) ------------------------------

    def _make_directory(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fsync_directory(self.directory.parent)  # the new directory's entry must survive a power loss too

    def _recover(self) -> None:
        """Index the files left by an earlier run; finish or set aside interrupted writes."""
        for path in sorted(self.directory.iterdir()):
            temp = TEMP.fullmatch(path.name)
            if temp is not None:
                # The process died inside append(): keep the alert if it was written completely.
                if self._parse(path) is not None:
                    try:
                        os.replace(path, self.directory / temp.group(1))
                        fsync_directory(self.directory)
                    except OSError as exc:  # a read-only disk: finished at the next start
                        log.warning("alert spool: cannot finish the interrupted write %s: %s", path.name, exc)
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
            self._total += self._sizes[path.name]
            identity = event.identity
            if identity not in self._identities:
                self._identities[identity] = path.name
                self._identity_of[path.name] = identity
        if self._sizes:
            log.info("alert spool %s holds %d alert(s) not yet delivered", self.directory, len(self._sizes))

    def _write_pending(self) -> None:
        """Write the alerts held in memory, oldest first; on failure keep them in memory."""
        for key, data in list(self._in_memory.items()):
            try:
                self._make_directory()
                write_atomic(self.directory / key, data, durable=True)
            except OSError as exc:
                log.error(
                    "ALERT SPOOL %s CANNOT BE WRITTEN (%s): %d alert(s) kept in memory only, lost if the "
                    "process stops before they are sent",
                    self.directory,
                    exc,
                    len(self._in_memory),
                )
                return
            del self._in_memory[key]

    def _load(self, key: str) -> Optional[Alert]:
        if key in self._in_memory:
            return alert_from_json(json.loads(self._in_memory[key]))
        path = self.directory / key
        if not path.exists():
            log.warning("spooled alert %s disappeared from %s", key, self.directory)
            return None
        event = self._parse(path)
        if event is None:
            self._set_aside(path, "it does not parse")
        return event

    def _parse(self, path: Path) -> Optional[Alert]:
        try:
            data = read_bounded(path, self.max_bytes + 1)
            if len(data) > self.max_bytes:
                raise ValueError(f"larger than the spool ({self.max_bytes} bytes)")
            return alert_from_json(json.loads(data))
        except (OSError, ValueError) as exc:
            log.debug("spooled alert %s unreadable: %s", path.name, exc)
            return None

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
        if key not in self._in_memory:
            try:
                (self.directory / key).unlink()
            except OSError as exc:
                log.warning("cannot remove dropped alert %s: %s", key, exc)
        self._forget(key)

    def _forget(self, key: str) -> None:
        self._total -= self._sizes.pop(key, 0)
        self._in_memory.pop(key, None)
        identity = self._identity_of.pop(key, None)
        if identity is not None:
            del self._identities[identity]
