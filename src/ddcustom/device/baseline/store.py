"""The learned baseline of the device: what runs and talks here, and since when.

Integration (the detection loop, one thread)::

    store = BaselineStore(os.path.join(state_dir, "baseline.json"), now=time.time(),
                          learning_seconds=86400, forget_seconds=90 * 86400,
                          approvals=Approvals.parse(approved_executables, approved_endpoints),
                          deployment=DeploymentTrust())
    # every cycle (``now`` is wall-clock time.time(), not the monotonic loop clock):
    store.learning(now)                                  # True: baseline rules neither alarm nor clear
    store.observe_executable(identity, now)              # -> known?  (identity from IdentityReader)
    store.observe_executable(identity, now, kind=GPU_EXECUTABLE)
    store.observe_endpoint(remote_ip, remote_port, now)  # connections the device opened (caller decides)
    store.observe_listening("tcp", port, now)
    store.tick(now)                                      # once per cycle: flush / reload; never raises
    ...
    store.close(now)                                     # on stop
    # configuration update: store.approvals = Approvals.parse(...); store.learning_seconds = ...

    store.entries(kind)[key] -> Entry (first_seen, last_seen, origin, details)   # evidence for alerts
    store.show(now)                                      # everything, JSON-ready (``baseline show --json``)
    store.approve(kind, key, details, now); store.forget([(kind, key)], now); store.relearn(now)
                                                         # operator operations, written at once

The constructor reads (and, the first time, creates) the file under the lock; it raises BaselineError
when the file cannot be read or locked, or has a newer format (left untouched): run without the baseline
rules then, and say so. ``flush``, ``approve``, ``forget`` and ``relearn`` raise BaselineError too;
``tick`` and ``close`` log instead.

``observe*`` answers whether the item is known (in the baseline, approved by the operator or the fleet
configuration) with dict lookups and no file I/O. While learning, an unknown item is added (origin
``learned``) and counts as known; after learning it is *not* added (it is new, every cycle, until it is
approved or a relearn), except an executable a Greengrass deployment placed (deployment.py), which is
added with origin ``deployment``. Known items get their ``last_seen`` refreshed; items not seen for
``forget_seconds`` are forgotten (operator approvals are kept until an operator forgets them).
Unknowable identities (deleted, memfd, unreadable executables) are never known.

Several writers (the component and ``ddcustom baseline`` commands) share the file safely:

- the component keeps the baseline in memory and writes its changes (learned entries, last_seen moves
  of more than SEEN_RESOLUTION) at most every ``flush_seconds``, every MAINTENANCE_SECONDS (forgetting
  old entries), and on ``close``; ``tick`` also reloads when the file changed on disk (one stat per tick);
- every write is a read-modify-write under the lock (storage.py): the changes made here since the last
  write are merged into what is on disk (union of keys, earliest first_seen, latest last_seen, approved
  over deployment over learned), never a blind overwrite, so no writer's update is lost;
- ``forget`` leaves a tombstone (kept TOMBSTONE_SECONDS) so that an entry this process learned but had
  not written yet when the operator forgot it is dropped at the merge: forgotten stays forgotten unless it
  is observed again, during learning, after this process has seen the forget;
- ``relearn`` bumps the file's epoch: changes made in an older epoch are dropped at the merge.

Bounds: at most ``max_entries`` per kind and ``max_bytes`` for the file; beyond them the least recently
seen entries that are not operator approvals go first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Optional, Union

from ddcustom.device.baseline.approvals import Approvals, EndpointMatcher
from ddcustom.device.baseline.deployment import DeploymentTrust
from ddcustom.device.baseline.file import (
    APPROVED,
    DEPLOYMENT,
    LEARNED,
    MAX_KEY_CHARS,
    BaselineCorrupt,
    BaselineData,
    BaselineError,
    BaselineFile,
    BaselineFull,
    Entry,
    FileSignature,
    compact_json,
)
from ddcustom.device.baseline.keys import (
    ENDPOINT,
    EXECUTABLE,
    KINDS,
    LISTENING,
    PATH_PREFIX,
    SHA256_PREFIX,
    endpoint_key,
    listening_key,
)
from ddcustom.device.sources.identity import ExecutableIdentity

log = logging.getLogger(__name__)

FILE_NAME = "baseline.json"  # under StateDirectory
DEFAULT_LEARNING_SECONDS = 86400
DEFAULT_FORGET_SECONDS = 90 * 86400
DEFAULT_MAX_ENTRIES = 10_000  # per kind
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_FLUSH_SECONDS = 60.0
SEEN_RESOLUTION = 3600.0  # last_seen moves smaller than this are not worth a write (forgetting is in days)
MAINTENANCE_SECONDS = 3600.0  # forget old entries at least this often
TOMBSTONE_SECONDS = 86400.0
EVICT_FRACTION = 0.1  # a full kind evicts this share at once, so eviction is not a scan per add
_ENDPOINT_CACHE_SIZE = 4096  # (address, port) -> key: the connections of a few cycles

Operation = Callable[[BaselineData], Any]


class BaselineStore:
    """The baseline under ``path`` (e.g. ``<StateDirectory>/baseline.json``); see the module docstring.

    ``operator=True`` is the command line's view: it does not start the learning period, refuses a file
    that is not a baseline (BaselineCorrupt) where the component moves it aside to
    ``baseline.json.corrupt-<time>`` and starts a new one, and leaves forgetting and the bounds to the
    component (they are the component's configuration). A file of a newer format always raises
    BaselineError.
    """

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
        approvals: Optional[Approvals] = None,
        deployment: Optional[DeploymentTrust] = None,
        operator: bool = False,
        lock_timeout: float = 5.0,
    ) -> None:
        self.file = BaselineFile(path, lock_timeout)
        self.learning_seconds = learning_seconds
        self.forget_seconds = forget_seconds
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.flush_seconds = flush_seconds
        self.approvals = approvals if approvals is not None else Approvals()
        self.deployment = deployment
        self.operator = operator
        self._data = BaselineData()
        self._added: set[tuple[str, str]] = set()  # (kind, key) added here since the last write
        self._refreshed: set[tuple[str, str]] = set()  # (kind, key) whose last_seen moved since then
        self._signature: Optional[FileSignature] = None  # the file as this process last wrote or read it
        self._last_sync = now
        self._last_error = ""
        self._approved_endpoints = EndpointMatcher()
        self._endpoint_keys: dict[tuple[str, int], str] = {}
        self._sync(now)

    # ---- the learning period ------------------------------------------------------------------

    @property
    def learning_started(self) -> Optional[float]:
        return self._data.learning_started

    def learning(self, now: float) -> bool:
        """True while ``now`` is within ``learning_seconds`` of the learning start."""
        started = self._data.learning_started
        return started is not None and now - started < self.learning_seconds

    # ---- the per-cycle path: dict lookups only ------------------------------------------------

    def observe(self, kind: str, key: str, details: Mapping[str, Any], now: float) -> bool:
        """Whether ``key`` of ``kind`` is known; while learning an unknown key is added (and known)."""
        entry = self._data.entries[kind].get(key)
        if entry is not None:
            self._refresh(kind, key, entry, now)
            return True
        if self.learning(now):
            self._add(kind, key, details, now, LEARNED)
            return True
        return False

    def observe_executable(self, identity: ExecutableIdentity, now: float, kind: str = EXECUTABLE) -> bool:
        """Whether what a process runs is known: in the baseline (its identity, or an operator's
        ``sha256:``/``path:`` approval), approved by the fleet configuration, learned now, or placed by a
        deployment. Unknowable identities never are."""
        if not identity.knowable:
            return False
        entries = self._data.entries[kind]
        key = identity.key
        entry = entries.get(key)
        if entry is None:
            for pattern in _executable_patterns(identity):
                entry = entries.get(pattern)
                if entry is not None:
                    key = pattern
                    break
        if entry is not None:
            self._refresh(kind, key, entry, now)
            return True
        if self.approvals.is_approved_executable(identity):
            return True
        if self.learning(now):
            self._add(kind, identity.key, identity.details(), now, LEARNED)
            return True
        component = self.deployment.component_of(identity) if self.deployment is not None else None
        if component is not None:
            self._add(kind, identity.key, {**identity.details(), "component": component}, now, DEPLOYMENT)
            return True
        return False

    def observe_endpoint(self, ip: str, port: int, now: float) -> bool:
        """Whether the remote endpoint ``ip``:``port`` of a connection the device opened is known (its
        /24 or /64 and the port; or an approval); an address that is not an IP never is."""
        key = self._endpoint_keys.get((ip, port))
        if key is None:
            try:
                key = endpoint_key(ip, port)
            except ValueError:
                return False
            if len(self._endpoint_keys) >= _ENDPOINT_CACHE_SIZE:
                self._endpoint_keys.clear()
            self._endpoint_keys[(ip, port)] = key
        entry = self._data.entries[ENDPOINT].get(key)
        if entry is not None:
            self._refresh(ENDPOINT, key, entry, now)
            return True
        if self._approved_endpoints.match(ip, port) or self.approvals.is_approved_endpoint(ip, port):
            return True
        if self.learning(now):
            self._add(ENDPOINT, key, {"address": ip, "port": port}, now, LEARNED)
            return True
        return False

    def observe_listening(self, protocol: str, port: int, now: float) -> bool:
        """Whether listening on ``protocol`` (tcp/udp) ``port`` is known."""
        details = {"protocol": protocol, "port": port}
        return self.observe(LISTENING, listening_key(protocol, port), details, now)

    def _refresh(self, kind: str, key: str, entry: Entry, now: float) -> None:
        if now > entry.last_seen:
            entry.last_seen = now
            if now - entry.stored_seen >= SEEN_RESOLUTION:
                self._refreshed.add((kind, key))

    def _add(self, kind: str, key: str, details: Mapping[str, Any], now: float, origin: str) -> None:
        if len(key) > MAX_KEY_CHARS:
            return  # a path made to bloat the baseline: known this once, never kept
        entries = self._data.entries[kind]
        if len(entries) >= self.max_entries:
            self._evict(kind, max(1, int(self.max_entries * EVICT_FRACTION)))
            if len(entries) >= self.max_entries:
                return  # all approved: nothing to make room with
        entries[key] = Entry(now, now, origin, details)
        self._added.add((kind, key))

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

    # ---- writing and reloading ----------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether this process holds changes not yet written."""
        return bool(self._added or self._refreshed)

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
            disk = BaselineData()
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
                theirs.merge(ours)
                continue
            forgotten_at = disk.forgotten[kind].get(key)
            if forgotten_at is None or forgotten_at < ours.first_seen:
                disk.entries[kind][key] = ours
        for kind, key in self._refreshed - self._added:
            ours = self._data.entries[kind].get(key)
            theirs = disk.entries[kind].get(key)
            if ours is not None and theirs is not None:
                theirs.last_seen = max(theirs.last_seen, ours.last_seen)
        return disk

    def _prune(self, data: BaselineData, now: float) -> bool:
        """Forget old tombstones, and (the component) entries not seen for forget_seconds and entries
        beyond max_entries."""
        removed = False
        oldest = now - self.forget_seconds
        for kind in KINDS:
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
                for kind in KINDS
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
        matcher = EndpointMatcher()
        for key, entry in data.entries[ENDPOINT].items():
            if entry.origin == APPROVED:
                try:
                    matcher.add(key)
                except ValueError:
                    log.warning("baseline: approved endpoint %r is not an endpoint pattern; ignored", key)
        self._approved_endpoints = matcher

    # ---- operator operations: written at once -------------------------------------------------

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
            for kind in KINDS:
                entries = data.entries[kind]
                for key in [key for key, entry in entries.items() if entry.origin != APPROVED]:
                    del entries[key]
                    dropped += 1
                data.forgotten[kind].clear()
            data.epoch += 1
            data.learning_started = now
            return dropped

        return int(self._sync(now, operation))

    # ---- reading ------------------------------------------------------------------------------

    def entries(self, kind: str) -> Mapping[str, Entry]:
        """The entries of ``kind`` by key (read-only view; do not keep it across ticks)."""
        return MappingProxyType(self._data.entries[kind])

    def show(self, now: float) -> dict[str, Any]:
        """The baseline as JSON-ready data: the learning period and every entry, sorted by key."""
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
                for kind in KINDS
            },
        }


def _executable_patterns(identity: ExecutableIdentity) -> Iterable[str]:
    """The operator approval keys that could cover ``identity``: its content's hash and path."""
    if identity.content_sha256:
        yield SHA256_PREFIX + identity.content_sha256
    if identity.content_path:
        yield PATH_PREFIX + identity.content_path
