"""The baseline kept in step with its file: the merge under the lock, tombstones, epochs, the bounds,
and reloading what another writer wrote.

The constructor reads (and, the first time, creates) the file under the lock; it raises BaselineError
when the file cannot be read or locked, or has a newer format (left untouched): run without the baseline
rules then, and say so. ``flush`` raises BaselineError too; ``tick`` and ``close`` log instead, and the
baseline in memory keeps working meanwhile.

Several writers (the component and ``ddcustom baseline`` commands) share the file safely:

- the component keeps the baseline in memory and writes its changes (learned entries, last_seen moves
  of SEEN_RESOLUTION or more) at most every ``flush_seconds``, every MAINTENANCE_SECONDS (forgetting
  old entries), and on ``close``; ``tick`` also reloads when the file changed on disk (one stat per tick);
- every write is a read-modify-write under the lock (file.py): the changes made here since the last
  write are merged into what is on disk, never a blind overwrite, so no writer's update is lost: the
  union of the keys, and for a key both have, the rule of its kind (kinds/kind.py, MergeRule: earliest
  first_seen, latest last_seen, approved over deployment over learned);
- a tombstone (``forget`` leaves one, kept TOMBSTONE_SECONDS) drops at the merge an entry this process
  learned but had not written yet when the operator forgot it: forgotten stays forgotten unless it is
  observed again, during learning, after this process has seen the forget;
- a relearn bumps the file's epoch: changes made here in an older epoch are dropped at the merge.

Forgetting and bounds, applied at each write by the component (``operator=False``): entries not seen for
``forget_seconds`` are forgotten, except operator approvals (kept until an operator forgets them); at most
``max_entries`` per kind and ``max_bytes`` for the file, beyond which the least recently seen entries that
are not operator approvals go first (BaselineFull when the approvals alone do not fit).

``operator=True`` is the command line's view: it does not start the learning period, refuses a file that
is not a baseline (BaselineCorrupt) where the component moves it aside to ``baseline.json.corrupt-<time>``
and starts a new one, and leaves forgetting and the bounds to the component (they are the component's
configuration). A file of a newer format always raises BaselineError.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ddcustom.device.baseline.cycle import (
    DEFAULT_LEARNING_SECONDS,
    DEFAULT_MAX_ENTRIES,
    CycleBaseline,
    new_generation,
)
from ddcustom.device.baseline.file import (
    APPROVED,
    BaselineCorrupt,
    BaselineData,
    BaselineError,
    BaselineFile,
    BaselineFull,
    FileSignature,
)
from ddcustom.device.baseline.kinds import KINDS, Kind

log = logging.getLogger(__name__)

DEFAULT_FORGET_SECONDS = 90 * 86400
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_FLUSH_SECONDS = 60.0
MAINTENANCE_SECONDS = 3600.0  # forget old entries at least this often
TOMBSTONE_SECONDS = 86400.0

Operation = Callable[[BaselineData], Any]


class SyncedBaseline(CycleBaseline):
    """The baseline of ``kinds`` under ``path`` (e.g. ``<StateDirectory>/baseline.json``), in memory and
    on disk; see the module docstring."""

    def __init__(
        self,
        path: Union[str, Path],
        *,
        now: float,
        learning_seconds: float = DEFAULT_LEARNING_SECONDS,
        forget_seconds: float = DEFAULT_FORGET_SECONDS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        operator: bool = False,
        lock_timeout: float = 5.0,
        kinds: Sequence[Kind] = KINDS,
    ) -> None:
        names = [kind.name for kind in kinds]
        super().__init__(names, learning_seconds=learning_seconds, max_entries=max_entries)
        self.file = BaselineFile(path, names, lock_timeout)
        self.forget_seconds = forget_seconds
        self.max_bytes = max_bytes
        self.flush_seconds = flush_seconds
        self.operator = operator
        self._merge_rules = {kind.name: kind.merge for kind in kinds}
        self._signature: Optional[FileSignature] = None  # the file as this process last wrote or read it
        self._last_sync = now
        self._last_error = ""
        self._sync(now)

    def tick(self, now: float) -> None:
        """Once per cycle: write the changes when ``flush_seconds`` have passed, reload when the file
        changed on disk, forget old entries hourly. Errors are logged (once each) and retried at the
        next flush time; the in-memory baseline keeps working meanwhile."""
        try:
            since = now - self._last_sync
            due = (self.pending and since >= self.flush_seconds) or since >= MAINTENANCE_SECONDS
            if due or self.file.signature() != self._signature:
                self._sync(now)
        except BaselineError as exc:
            self._last_sync = now  # retry after flush_seconds, not every cycle
            if str(exc) != self._last_error:
                log.error("baseline: %s (kept in memory, retried every %g s)", exc, self.flush_seconds)
                self._last_error = str(exc)
        else:
            if self._last_error:
                log.info("baseline: %s written again", self.file.path)
                self._last_error = ""

    def flush(self, now: float) -> None:
        """Write the changes now (merging with the file). Raises BaselineError."""
        self._sync(now)

    def close(self, now: float) -> None:
        """Write the changes before stopping; errors are logged."""
        if self.pending:
            try:
                self._sync(now)
            except BaselineError as exc:
                log.error("baseline: changes since the last write are lost: %s", exc)

    def _sync(self, now: float, operation: Optional[Operation] = None) -> Any:
        """Under the lock: merge the file and this process's changes, apply ``operation``, forget what
        is too old or beyond the bounds, write if anything changed, and adopt the result."""
        result = None
        with self.file.locked():
            data = self._merged_with_file(now)
            write = self.pending
            if data.learning_started is None and not self.operator:
                data.learning_started = now
                write = True
            if operation is not None:
                result = operation(data)
                write = True
            write = self._prune(data, now) or write
            if write and self.operator:
                self.file.write_temporary(data)
                self.file.commit()
            elif write:
                self._write_bounded(data)
            self._signature = self.file.signature()
        self._adopt(data)
        self._last_sync = now
        return result

    def _merged_with_file(self, now: float) -> BaselineData:
        """The file's content with this process's changes merged in; this process's own data when the
        file is still what it last wrote or read."""
        if self._data.revision and self.file.read_revision() == self._data.revision:
            return self._data
        try:
            disk = self.file.read()
        except BaselineCorrupt as exc:
            if self.operator:
                raise
            moved = self.file.move_aside(now)
            log.error("baseline: %s; moved to %s, starting a new baseline", exc, moved)
            disk = None
        if disk is None:
            disk = BaselineData.empty(self.kinds)
        if disk.epoch != self._data.epoch and self._data.revision:
            self._added.clear()  # a relearn happened meanwhile: what was learned before it is void
            self._refreshed.clear()
            return disk
        for kind, key in self._added:
            ours = self._data.entries[kind].get(key)
            if ours is None:
                continue
            theirs = disk.entries[kind].get(key)
            if theirs is not None:
                self._merge_rules[kind].added(theirs, ours)
                continue
            forgotten_at = disk.forgotten[kind].get(key)
            if forgotten_at is None or forgotten_at < ours.first_seen:
                disk.entries[kind][key] = ours
        for kind, key in self._refreshed - self._added:
            ours = self._data.entries[kind].get(key)
            theirs = disk.entries[kind].get(key)
            if ours is not None and theirs is not None:
                self._merge_rules[kind].seen(theirs, ours)
        return disk

    def _prune(self, data: BaselineData, now: float) -> bool:
        """Forget old tombstones, and (the component) entries not seen for forget_seconds and entries
        beyond max_entries."""
        removed = False
        oldest = now - self.forget_seconds
        for kind in self.kinds:
            entries = data.entries[kind]
            old = [
                key
                for key, e in entries.items()
                if not self.operator and e.origin != APPROVED and e.last_seen < oldest
            ]
            for key in old:
                del entries[key]
            tombstones = data.forgotten[kind]
            stale = [key for key, at in tombstones.items() if at < now - TOMBSTONE_SECONDS]
            for key in stale:
                del tombstones[key]
            if len(tombstones) > self.max_entries:
                by_age = sorted(tombstones, key=tombstones.__getitem__)
                for key in by_age[: len(tombstones) - self.max_entries]:
                    del tombstones[key]
            excess = 0 if self.operator else len(entries) - self.max_entries
            if excess > 0:
                candidates = sorted((e.last_seen, key) for key, e in entries.items() if e.origin != APPROVED)
                for _, key in candidates[:excess]:
                    del entries[key]
            removed = removed or bool(old or stale or excess > 0)
        return removed

    def _write_bounded(self, data: BaselineData) -> None:
        """Write ``data``, first dropping the least recently seen unapproved entries until it fits in
        ``max_bytes``."""
        size = self.file.write_temporary(data)
        while size > self.max_bytes:
            candidates = sorted(
                (entry.last_seen, kind, key)
                for kind in self.kinds
                for key, entry in data.entries[kind].items()
                if entry.origin != APPROVED
            )
            if not candidates:
                raise BaselineFull(
                    f"operator approvals alone take {size} bytes, more than the baseline's {self.max_bytes}"
                )
            total = sum(len(entries) for entries in data.entries.values())
            share = (size - self.max_bytes) / size
            count = min(len(candidates), max(1, math.ceil(total * share * 1.05)))
            for _, kind, key in candidates[:count]:
                del data.entries[kind][key]
            size = self.file.write_temporary(data)
        self.file.commit()

    def _adopt(self, data: BaselineData) -> None:
        """Make ``data`` (as written or read) this process's baseline."""
        for kind, key in self._refreshed:
            entry = data.entries[kind].get(key)
            if entry is not None:
                entry.stored_seen = entry.last_seen
        self._data = data
        self._added.clear()
        self._refreshed.clear()
        self.generation = new_generation()
