"""The baseline file: its format, the advisory lock, and atomic writes.

Format: JSON Lines, so that neither writing nor reading ever holds the whole document in memory (a
baseline of 10 000 entries per kind is several MB of text, and json.loads of that is many times more).
The first line is a header; ``format`` is bumped on any change an older reader would get wrong, and a
file with a newer format is refused, never overwritten::

    {"format": 1, "revision": "<random hex, new on every write>", "learning_started": 1800000000.0,
     "epoch": 0, "entries": 2, "forgotten": 1}
    ["executable", "<key>", 1800000000, 1800003600, "learned", {"path": "...", "sha256": "..."}]
    ["endpoint", "203.0.113.0/24:443", 1800000000, 1800000000, "approved", {"pattern": "..."}]
    ["forgotten", "executable", "<key>", 1800000500.0]

``learning_started`` is null until the component first runs; ``epoch`` is bumped by relearn; entry lines
are [kind, key, first_seen, last_seen, origin, details], kind by kind in the order of the kinds given
(the registry's, kinds/); "forgotten" lines are tombstones (when an operator forgot a key). The header's
counts make a truncated file detectable. A line of a kind not given does not fit the format: dropped.

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
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

from ddcustom.device.fileio import fsync_directory

log = logging.getLogger(__name__)

FORMAT = 1
LEARNED = "learned"
DEPLOYMENT = "deployment"
APPROVED = "approved"
ORIGINS = (LEARNED, DEPLOYMENT, APPROVED)  # in rising precedence when two writers disagree
RANK = {origin: rank for rank, origin in enumerate(ORIGINS)}
TOMBSTONE = "forgotten"

FILE_NAME = "baseline.json"  # under StateDirectory
LOCK_NAME = "baseline.lock"
MAX_KEY_CHARS = 4096 + 200  # a PATH_MAX path, its hash and a script
MAX_DETAIL_CHARS = 4096
MAX_DETAILS = 8
MAX_LINE_BYTES = 64 * 1024
MAX_READ_BYTES = 256 * 1024 * 1024  # refuse to read a file far beyond any bound we write

FileSignature = tuple[int, int, int]  # st_ino, st_mtime_ns, st_size


def compact_json(value: Any) -> str:
    """One-line JSON; ASCII, so paths that are not UTF-8 (kept as surrogates) survive the round trip."""
    return json.dumps(value, separators=(",", ":"))


class BaselineError(Exception):
    """The baseline cannot be read or written; the message says which file and why."""


class BaselineCorrupt(BaselineError):
    """The file is not a baseline (not JSON, or not this format's structure)."""


class BaselineFull(BaselineError):
    """Approved entries alone would exceed the bounds."""


class Entry:
    """One baseline entry. Details are kept as their JSON text: a third of the memory of a dict of
    strings, and they are only read to show or merge them. ``stored_seen`` is the last_seen the file
    holds (in memory only)."""

    __slots__ = ("details_text", "first_seen", "last_seen", "origin", "stored_seen")

    def __init__(
        self, first_seen: float, last_seen: float, origin: str, details: Union[Mapping[str, Any], str]
    ) -> None:
        self.first_seen = first_seen
        self.last_seen = last_seen
        self.origin = origin
        self.details_text = details if isinstance(details, str) else compact_json(dict(details))
        self.stored_seen = last_seen

    @property
    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = json.loads(self.details_text)
        return details

    def to_json(self) -> dict[str, Any]:
        return {
            "first_seen": int(self.first_seen),
            "last_seen": int(self.last_seen),
            "origin": self.origin,
            "details": self.details,
        }

    def line(self, kind: str, key: str) -> str:
        return (
            f'["{kind}",{json.dumps(key)},{int(self.first_seen)},{int(self.last_seen)},'
            f'"{self.origin}",{self.details_text}]\n'
        )


@dataclass
class BaselineData:
    """The file's content: ``entries`` and ``forgotten`` hold a mapping for every kind (``empty``)."""

    entries: dict[str, dict[str, Entry]]
    forgotten: dict[str, dict[str, float]]
    learning_started: Optional[float] = None
    epoch: int = 0
    revision: str = ""

    @classmethod
    def empty(cls, kinds: Sequence[str]) -> BaselineData:
        """No entries of ``kinds`` (the kinds' names, in the file's order)."""
        return cls({kind: {} for kind in kinds}, {kind: {} for kind in kinds})

    def lines(self) -> Iterator[str]:
        """The file's lines (header, entries, tombstones), one at a time."""
        yield (
            compact_json(
                {
                    "format": FORMAT,
                    "revision": self.revision,
                    "learning_started": self.learning_started,
                    "epoch": self.epoch,
                    "entries": sum(len(entries) for entries in self.entries.values()),
                    "forgotten": sum(len(tombstones) for tombstones in self.forgotten.values()),
                }
            )
            + "\n"
        )
        for kind, entries in self.entries.items():
            for key, entry in entries.items():
                yield entry.line(kind, key)
        for kind, tombstones in self.forgotten.items():
            for key, at in tombstones.items():
                yield f'["{TOMBSTONE}","{kind}",{json.dumps(key)},{at!r}]\n'


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


def _header(line: bytes, where: str) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("format"), int) or header["format"] < 1:
        raise BaselineCorrupt(f"{where} is not a baseline file (no format number)")
    if header["format"] > FORMAT:
        raise BaselineError(
            f"{where} has format {header['format']}, written by a newer ddcustom (this one reads format "
            f"{FORMAT}); it is left as it is"
        )
    return header


def _entry(item: Any, kinds: Mapping[str, object]) -> Optional[tuple[str, str, Entry]]:
    """(kind, key, entry) of an entry line, None when it does not fit the format."""
    if not (isinstance(item, list) and len(item) == 6):
        return None
    kind, key, first_seen, last_seen, origin, details = item
    if (
        isinstance(kind, str)
        and kind in kinds
        and isinstance(key, str)
        and len(key) <= MAX_KEY_CHARS
        and _number(first_seen)
        and _number(last_seen)
        and origin in RANK
        and _valid_details(details)
    ):
        return kind, key, Entry(first_seen, last_seen, origin, details)
    return None


def parse_baseline(handle: BinaryIO, where: str, kinds: Sequence[str]) -> BaselineData:
    """BaselineData of a file read line by line, holding ``kinds``; entries that do not fit the format
    are dropped with a warning. BaselineCorrupt for a file that is not a baseline or was cut short."""
    header = _header(handle.readline(MAX_LINE_BYTES), where)
    started = header.get("learning_started")
    epoch = header.get("epoch", 0)
    counts = (header.get("entries"), header.get("forgotten"))
    if not (started is None or _number(started)) or not isinstance(epoch, int):
        raise BaselineCorrupt(f"{where} is not a baseline file (bad learning_started or epoch)")
    data = BaselineData.empty(kinds)
    data.learning_started, data.epoch, data.revision = started, epoch, str(header.get("revision", ""))
    entry_lines = tombstone_lines = dropped = 0
    for line in handle:
        try:
            item = json.loads(line)
        except ValueError:
            raise BaselineCorrupt(f"{where}: line {entry_lines + tombstone_lines + 2} is not JSON") from None
        if isinstance(item, list) and item[:1] == [TOMBSTONE]:
            tombstone_lines += 1
            known_kind = len(item) == 4 and isinstance(item[1], str) and item[1] in data.forgotten
            if known_kind and isinstance(item[2], str) and _number(item[3]):
                data.forgotten[item[1]][item[2]] = float(item[3])
            continue
        entry_lines += 1
        parsed = _entry(item, data.entries)
        if parsed is None:
            dropped += 1
        else:
            data.entries[parsed[0]][parsed[1]] = parsed[2]
    if counts != (entry_lines, tombstone_lines):
        raise BaselineCorrupt(
            f"{where} is cut short: {entry_lines} entries and {tombstone_lines} tombstones instead of "
            f"{counts[0]} and {counts[1]}"
        )
    if dropped:
        log.warning("%s: %d entries that do not fit the baseline format were dropped", where, dropped)
    return data


class BaselineFile:
    """The file at ``path`` holding entries of ``kinds`` (their names, in the file's order)."""

    def __init__(self, path: Union[str, Path], kinds: Sequence[str], lock_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.kinds = tuple(kinds)
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
            self._keep_owner(fd, self.path.parent)
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

    @staticmethod
    def _keep_owner(fd: int, like: Path) -> None:
        """Root (an operator's sudo) gives what it creates to the owner of ``like`` (the baseline file,
        else the state directory), so the component, running as its own user, can still read and lock it."""
        if os.geteuid() != 0:
            return
        owner = os.stat(like)
        current = os.fstat(fd)
        if (current.st_uid, current.st_gid) != (owner.st_uid, owner.st_gid):
            os.fchown(fd, owner.st_uid, owner.st_gid)

    def read_revision(self) -> Optional[str]:
        """The revision in the file's header (without reading the rest); None when unreadable."""
        try:
            with open(self.path, "rb") as handle:
                header = json.loads(handle.readline(MAX_LINE_BYTES))
        except (OSError, ValueError):
            return None
        return header.get("revision") if isinstance(header, dict) else None

    def read(self) -> Optional[BaselineData]:
        """The file's content, None when there is none. BaselineCorrupt / BaselineError otherwise."""
        try:
            with open(self.path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size > MAX_READ_BYTES:
                    raise BaselineCorrupt(f"{self.path} is larger than {MAX_READ_BYTES} bytes")
                return parse_baseline(handle, str(self.path), self.kinds)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BaselineError(f"cannot read baseline {self.path}: {exc.strerror or exc}") from None

    def write_temporary(self, data: BaselineData) -> int:
        """Write ``data`` under a new revision token into the temporary file, synced; returns its size.
        ``commit`` then puts it in place. Caller holds the lock."""
        data.revision = secrets.token_hex(8)
        return self._write_lines(data.lines())

    def _write_lines(self, lines: Iterable[str]) -> int:
        size = 0
        try:
            with open(self.temp_path, "wb", buffering=256 * 1024) as handle:
                os.fchmod(handle.fileno(), 0o600)
                self._keep_owner(handle.fileno(), self.path if self.path.exists() else self.path.parent)
                for line in lines:
                    size += handle.write(line.encode())
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise BaselineError(f"cannot write baseline {self.temp_path}: {exc.strerror or exc}") from None
        return size

    def commit(self) -> None:
        """Rename the temporary file over the baseline and sync the directory."""
        try:
            os.replace(self.temp_path, self.path)
            fsync_directory(self.path.parent)
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
