"""The baseline file: its JSON format, the advisory lock, and atomic writes.

Format (one JSON object; ``format`` is bumped on any change an older reader would get wrong, and a
file with a newer format is refused, never overwritten)::

    {"format": 1,
     "revision": "<random hex, new on every write>",
     "learning_started": 1800000000.0,            # null: the component has not started learning yet
     "epoch": 0,                                   # bumped by relearn
     "entries": {"executable": {"<key>": {"first_seen": 1800000000, "last_seen": 1800003600,
                                          "origin": "learned", "details": {"path": ..., "sha256": ...}}},
                 "gpu_executable": {...}, "endpoint": {...}, "listening": {...}},
     "forgotten": {"<kind>": {"<key>": 1800000500.0}}}   # tombstones: when an operator forgot a key

Writers hold ``baseline.lock`` (``fcntl.flock``, next to the file) around read-modify-write, write a
temporary file, fsync it, rename it over the file and fsync the directory: a reader (locked or not)
sees the old file or the new one, never a torn one, and a crash at any point leaves one of them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ddcustom.baseline.keys import KINDS

log = logging.getLogger(__name__)

FORMAT = 1
LEARNED = "learned"
DEPLOYMENT = "deployment"
APPROVED = "approved"
ORIGINS = (LEARNED, DEPLOYMENT, APPROVED)  # in rising precedence when two writers disagree
_RANK = {origin: rank for rank, origin in enumerate(ORIGINS)}

LOCK_NAME = "baseline.lock"
MAX_KEY_CHARS = 4096 + 200  # a PATH_MAX path, its hash and a script
MAX_DETAIL_CHARS = 4096
MAX_DETAILS = 8
MAX_READ_BYTES = 256 * 1024 * 1024  # refuse to read a file far beyond any bound we write
_REVISION = re.compile(rb'\{"format":\s*(\d+),\s*"revision":\s*"([0-9a-f]+)"')

FileSignature = tuple[int, int, int]  # st_ino, st_mtime_ns, st_size


class BaselineError(Exception):
    """The baseline cannot be read or written; the message says which file and why."""


class BaselineCorrupt(BaselineError):
    """The file is not a baseline (not JSON, or not this format's structure)."""


class BaselineFull(BaselineError):
    """Approved entries alone would exceed the bounds."""


class Entry:
    """One baseline entry; ``stored_seen`` is the last_seen the file holds (in memory only)."""

    __slots__ = ("details", "first_seen", "last_seen", "origin", "stored_seen")

    def __init__(self, first_seen: float, last_seen: float, origin: str, details: dict[str, Any]) -> None:
        self.first_seen = first_seen
        self.last_seen = last_seen
        self.origin = origin
        self.details = details
        self.stored_seen = last_seen

    def merge(self, other: Entry) -> None:
        """Take in what another writer knows of the same key."""
        self.first_seen = min(self.first_seen, other.first_seen)
        self.last_seen = max(self.last_seen, other.last_seen)
        if _RANK[other.origin] > _RANK[self.origin]:
            self.origin = other.origin
            self.details = other.details

    def to_json(self) -> dict[str, Any]:
        return {
            "first_seen": int(self.first_seen),
            "last_seen": int(self.last_seen),
            "origin": self.origin,
            "details": self.details,
        }


@dataclass
class BaselineData:
    learning_started: Optional[float] = None
    epoch: int = 0
    revision: str = ""
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
    forgotten: dict[str, dict[str, float]] = field(default_factory=lambda: {kind: {} for kind in KINDS})

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "revision": self.revision,
            "learning_started": self.learning_started,
            "epoch": self.epoch,
            "entries": {
                kind: {key: entry.to_json() for key, entry in entries.items()}
                for kind, entries in self.entries.items()
            },
            "forgotten": {kind: dict(tombstones) for kind, tombstones in self.forgotten.items()},
        }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _valid_details(details: Any) -> bool:
    return (
        isinstance(details, dict)
        and len(details) <= MAX_DETAILS
        and all(
            isinstance(name, str)
            and ((isinstance(value, str) and len(value) <= MAX_DETAIL_CHARS) or _number(value))
            for name, value in details.items()
        )
    )


def parse_baseline(obj: Any, where: str) -> BaselineData:
    """BaselineData of a parsed file; entries that do not fit the format are dropped with a warning."""
    if not isinstance(obj, dict) or not isinstance(obj.get("format"), int) or obj["format"] < 1:
        raise BaselineCorrupt(f"{where} is not a baseline file (no format number)")
    if obj["format"] > FORMAT:
        raise BaselineError(
            f"{where} has format {obj['format']}, written by a newer ddcustom (this one reads format "
            f"{FORMAT}); it is left as it is"
        )
    started = obj.get("learning_started")
    epoch = obj.get("epoch", 0)
    entries_obj = obj.get("entries", {})
    forgotten_obj = obj.get("forgotten", {})
    if (
        not (started is None or _number(started))
        or not isinstance(epoch, int)
        or not isinstance(entries_obj, dict)
        or not isinstance(forgotten_obj, dict)
    ):
        raise BaselineCorrupt(f"{where} is not a baseline file (bad learning_started, epoch or sections)")
    data = BaselineData(learning_started=started, epoch=epoch, revision=str(obj.get("revision", "")))
    dropped = 0
    for kind, entries in entries_obj.items():
        if kind not in data.entries or not isinstance(entries, dict):
            dropped += len(entries) if isinstance(entries, dict) else 1
            continue
        for key, raw in entries.items():
            if (
                len(key) <= MAX_KEY_CHARS
                and isinstance(raw, dict)
                and _number(raw.get("first_seen"))
                and _number(raw.get("last_seen"))
                and raw.get("origin") in _RANK
                and _valid_details(raw.get("details", {}))
            ):
                data.entries[kind][key] = Entry(
                    raw["first_seen"], raw["last_seen"], raw["origin"], raw.get("details", {})
                )
            else:
                dropped += 1
    for kind, tombstones in forgotten_obj.items():
        if kind in data.forgotten and isinstance(tombstones, dict):
            data.forgotten[kind] = {
                key: float(at) for key, at in tombstones.items() if isinstance(key, str) and _number(at)
            }
    if dropped:
        log.warning("%s: %d entries that do not fit the baseline format were dropped", where, dropped)
    return data


class BaselineFile:
    def __init__(self, path: Union[str, Path], lock_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(LOCK_NAME)
        self.temp_path = self.path.with_name(f".{self.path.name}.tmp")
        self.lock_timeout = lock_timeout

    def signature(self) -> Optional[FileSignature]:
        """(inode, mtime, size) of the file, None when there is none: a cheap "did it change?"."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BaselineError(f"cannot read baseline {self.path}: {exc.strerror or exc}") from None
        return st.st_ino, st.st_mtime_ns, st.st_size

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the writers' lock; BaselineError when another writer holds it past ``lock_timeout``."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise BaselineError(f"cannot open {self.lock_path}: {exc.strerror or exc}") from None
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise BaselineError(
                            f"baseline {self.path} is locked by another writer "
                            f"(waited {self.lock_timeout:g} s)"
                        ) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def read_revision(self) -> Optional[str]:
        """The revision token at the head of the file (without parsing it); None when unreadable."""
        try:
            with open(self.path, "rb") as handle:
                head = handle.read(128)
        except OSError:
            return None
        match = _REVISION.match(head)
        return match.group(2).decode() if match else None

    def read(self) -> Optional[BaselineData]:
        """The file's content, None when there is none. BaselineCorrupt / BaselineError otherwise."""
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(MAX_READ_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BaselineError(f"cannot read baseline {self.path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_READ_BYTES:
            raise BaselineCorrupt(f"{self.path} is larger than {MAX_READ_BYTES} bytes")
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise BaselineCorrupt(f"{self.path} does not parse as JSON: {exc}") from None
        return parse_baseline(obj, str(self.path))

    def serialize(self, data: BaselineData) -> bytes:
        """The file's bytes for ``data``, under a new revision token (set on ``data``)."""
        data.revision = secrets.token_hex(8)
        return json.dumps(data.to_json(), separators=(",", ":"), ensure_ascii=False).encode()

    def write(self, payload: bytes) -> None:
        """Replace the file atomically (caller holds the lock)."""
        try:
            fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.temp_path, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise BaselineError(f"cannot write baseline {self.path}: {exc.strerror or exc}") from None

    def move_aside(self, now: float) -> Path:
        """Rename a corrupt file out of the way (kept for a person to look at); returns its new path."""
        target = self.path.with_name(f"{self.path.name}.corrupt-{int(now)}")
        try:
            os.replace(self.path, target)
        except OSError as exc:
            raise BaselineError(f"cannot move {self.path} aside: {exc.strerror or exc}") from None
        return target
