"""The baseline in memory, and what the agent asks of it every cycle: dict lookups, no file I/O.

Each kind's watch (kinds/) asks whether what it observed is known: in the baseline, or by the kind's own
rules (an operator's pattern, the fleet configuration, a deployment). The rules here hold for every kind:

- While learning (``learning_seconds`` from ``learning_started``, which the file keeps across restarts),
  an unknown item is added with origin ``learned`` and counts as known. After learning it is *not* added:
  it is new, every cycle, until it is approved or a relearn; a kind may still add it with another origin
  (an executable a Greengrass deployment placed: origin ``deployment``).
- A known item gets its ``last_seen`` refreshed in memory; a move of SEEN_RESOLUTION or more is a change
  worth a write (forgetting is in days), smaller ones are not.
- At most ``max_entries`` per kind: a full kind drops its EVICT_FRACTION least recently seen entries
  that are not operator approvals at once, so eviction is not a scan per add (all approved: the new
  item is known this once, not kept). A key longer than MAX_KEY_CHARS (a path made to bloat the
  baseline) is known this once, never kept.

What is added or refreshed here is kept as the changes since the last write, which sync.py merges into
the file. Times are wall-clock (``time.time()``), never the monotonic loop clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Optional

from ddcustom.device.baseline.file import APPROVED, LEARNED, MAX_KEY_CHARS, BaselineData, Entry, compact_json

DEFAULT_LEARNING_SECONDS = 86400
DEFAULT_MAX_ENTRIES = 10_000  # per kind
SEEN_RESOLUTION = 3600.0  # last_seen moves smaller than this are not worth a write (forgetting is in days)
EVICT_FRACTION = 0.1  # a full kind evicts this share at once, so eviction is not a scan per add

_generations = itertools.count(1)


def new_generation() -> int:
    """A number no baseline in this process had before (``CycleBaseline.generation``)."""
    return next(_generations)


class CycleBaseline:
    """The entries of ``kinds`` (their names, in the file's order) in memory; sync.py fills and writes
    them."""

    def __init__(self, kinds: Sequence[str], *, learning_seconds: float, max_entries: int) -> None:
        self.kinds = tuple(kinds)
        self.learning_seconds = learning_seconds
        self.max_entries = max_entries
        self._data = BaselineData.empty(self.kinds)
        self._added: set[tuple[str, str]] = set()  # (kind, key) added here since the last write
        self._refreshed: set[tuple[str, str]] = set()  # (kind, key) whose last_seen moved since then
        # Changes whenever the entries are replaced (read from the file or written), and only then: a
        # watch may keep ``live`` and what it builds of the entries (the endpoint patterns an operator
        # approved) while it is the same.
        self.generation = new_generation()

    # ---- the learning period ------------------------------------------------------------------

    @property
    def learning_started(self) -> Optional[float]:
        return self._data.learning_started

    def learning(self, now: float) -> bool:
        """True while ``now`` is within ``learning_seconds`` of the learning start."""
        started = self._data.learning_started
        return started is not None and now - started < self.learning_seconds

    # ---- lookups ------------------------------------------------------------------------------

    def entries(self, kind: str) -> Mapping[str, Entry]:
        """The entries of ``kind`` by key (read-only view; do not keep it across ticks)."""
        return MappingProxyType(self._data.entries[kind])

    def live(self, kind: str) -> Mapping[str, Entry]:
        """The entries of ``kind`` themselves, for the lookups of a watch (no view: the cheapest); valid
        while ``generation`` is the same, and changed only through ``add`` and ``refresh``."""
        return self._data.entries[kind]

    def known(self, kind: str, key: str, now: float) -> bool:
        """Whether ``key`` of ``kind`` is in the baseline; if so it was seen at ``now``."""
        entry = self._data.entries[kind].get(key)
        if entry is None:
            return False
        self.refresh(kind, key, entry, now)
        return True

    def observe(self, kind: str, key: str, details: Mapping[str, Any], now: float) -> bool:
        """Whether ``key`` of ``kind`` is known; while learning an unknown key is added (and known)."""
        if self.known(kind, key, now):
            return True
        if self.learning(now):
            self.add(kind, key, details, now, LEARNED)
            return True
        return False

    # ---- changes ------------------------------------------------------------------------------

    def add(self, kind: str, key: str, details: Mapping[str, Any], now: float, origin: str = LEARNED) -> None:
        """Add ``key`` of ``kind``, first and last seen ``now``, within the bounds (module docstring)."""
        if len(key) > MAX_KEY_CHARS:
            return  # a path made to bloat the baseline: known this once, never kept
        entries = self._data.entries[kind]
        if len(entries) >= self.max_entries:
            self._evict(kind, max(1, int(self.max_entries * EVICT_FRACTION)))
            if len(entries) >= self.max_entries:
                return  # all approved: nothing to make room with
        entries[key] = Entry(now, now, origin, details)
        self._added.add((kind, key))

    def revise(self, kind: str, key: str, details: Mapping[str, Any], now: float) -> None:
        """New ``details`` for the entry of ``key`` (a number its kind follows), seen at ``now``: a
        change written at the next flush, merged by the kind's rule (kinds/kind.py, MergeRule.seen)."""
        entry = self._data.entries[kind][key]
        entry.details_text = compact_json(dict(details))
        if now > entry.last_seen:
            entry.last_seen = now
        self._refreshed.add((kind, key))

    @property
    def pending(self) -> bool:
        """Whether this process holds changes not yet written."""
        return bool(self._added or self._refreshed)

    def refresh(self, kind: str, key: str, entry: Entry, now: float) -> None:
        """``entry`` (of ``key``, from ``live``) was seen at ``now``."""
        if now > entry.last_seen:
            entry.last_seen = now
            if now - entry.stored_seen >= SEEN_RESOLUTION:
                self._refreshed.add((kind, key))

    def _evict(self, kind: str, count: int) -> None:
        """Drop the ``count`` least recently seen entries of ``kind`` that are not operator approvals."""
        entries = self._data.entries[kind]
        candidates = sorted(
            (entry.last_seen, key) for key, entry in entries.items() if entry.origin != APPROVED
        )
        for _, key in candidates[:count]:
            del entries[key]
            self._added.discard((kind, key))
            self._refreshed.discard((kind, key))
