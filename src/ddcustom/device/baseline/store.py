"""The baseline store, as the component and the ``ddcustom baseline`` commands open it, in three parts:

- cycle.py (``CycleBaseline``): the baseline in memory and what the agent asks of it every cycle (the
  learning period, lookups, learning);
- sync.py (``SyncedBaseline``): the file, merged with this process's changes under the lock;
- here (``BaselineStore``): the operator's operations and ``show``.

The operator's operations are written at once, each one read-modify-write under the lock, and raise
BaselineError when they cannot be:

- ``approve`` makes an item an operator approval, kept until an operator forgets it (never forgotten for
  age, never dropped for the bounds); BaselineFull when its kind holds ``max_entries`` approvals already;
- ``forget`` removes items and leaves a tombstone for each, so that a writer that learned one but had not
  written it yet does not bring it back (sync.py);
- ``relearn`` starts a new learning period: every entry but operator approvals is dropped, and the file's
  epoch is bumped so that what other writers learned before it is void (sync.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ddcustom.device.baseline.file import APPROVED, BaselineData, BaselineFull, Entry, compact_json
from ddcustom.device.baseline.sync import SyncedBaseline


class BaselineStore(SyncedBaseline):
    """The baseline under ``path`` (e.g. ``<StateDirectory>/baseline.json``); see the module docstring,
    and sync.py for ``operator=True``, the command line's view."""

    def approve(self, kind: str, key: str, details: Mapping[str, Any], now: float) -> None:
        """Make ``key`` an operator approval (kept until forgotten). BaselineError when it cannot be
        written; BaselineFull when the kind holds ``max_entries`` approvals already."""

        def operation(data: BaselineData) -> None:
            entries = data.entries[kind]
            entry = entries.get(key)
            if entry is None:
                approved = sum(1 for e in entries.values() if e.origin == APPROVED)
                if approved >= self.max_entries:
                    raise BaselineFull(f"the baseline holds {approved} approved {kind} entries already")
                entries[key] = Entry(now, now, APPROVED, details)
            else:
                entry.origin = APPROVED
                entry.details_text = compact_json({**entry.details, **details})
            data.forgotten[kind].pop(key, None)

        self._sync(now, operation)

    def forget(self, items: Iterable[tuple[str, str]], now: float) -> list[tuple[str, str]]:
        """Remove (kind, key) items and leave tombstones for them; returns the ones that were present."""
        wanted = list(items)

        def operation(data: BaselineData) -> list[tuple[str, str]]:
            present = []
            for kind, key in wanted:
                if data.entries[kind].pop(key, None) is not None:
                    present.append((kind, key))
                data.forgotten[kind][key] = now
            return present

        return list(self._sync(now, operation))

    def relearn(self, now: float) -> int:
        """Start a new learning period at ``now``: every entry but operator approvals is dropped.
        Returns how many were dropped."""

        def operation(data: BaselineData) -> int:
            dropped = 0
            for kind in self.kinds:
                entries = data.entries[kind]
                for key in [key for key, entry in entries.items() if entry.origin != APPROVED]:
                    del entries[key]
                    dropped += 1
                data.forgotten[kind].clear()
            data.epoch += 1
            data.learning_started = now
            return dropped

        return int(self._sync(now, operation))

    def show(self, now: float) -> dict[str, Any]:
        """The baseline as JSON-ready data: the learning period and every entry, kind by kind, sorted by
        key."""
        started = self._data.learning_started
        return {
            "file": str(self.file.path),
            "learning_started": started,
            "learning_seconds": self.learning_seconds,
            "learning": self.learning(now),
            "epoch": self._data.epoch,
            "entries": {
                kind: [
                    {"key": key, **entry.to_json()} for key, entry in sorted(self._data.entries[kind].items())
                ]
                for kind in self.kinds
            },
        }
