"""The baseline observer: what a sample shows that the device's learned baseline does not know.

The agent calls it after collecting. Each kind's watch (kinds/) looks at what the sources saw (the
process table, the sockets, the GPU's compute processes) through the baseline store: while the store
learns, everything is added and nothing is new (with the group's common programs, FleetKnownExecutables,
what runs is judged after the first hour: kinds/executables.py); afterwards, what is not in the baseline
is new, until an operator approves it or the fleet configuration does. It is on only while the security
profile uses a metric of the baseline (metrics.py, BASELINE_METRICS); a store that cannot be opened
leaves the baseline out (logged once) and is tried again at the next configuration change.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Callable, Optional, Protocol

from ddcustom.device.baseline.approvals import Approvals
from ddcustom.device.baseline.deployment import DEFAULT_GREENGRASS_ROOT, DeploymentTrust
from ddcustom.device.baseline.kinds import KINDS, Kind
from ddcustom.device.baseline.kinds.executables import judging
from ddcustom.device.baseline.kinds.kind import Context, Watch
from ddcustom.device.baseline.store import BaselineStore
from ddcustom.device.sample import BaselineStats, Sample
from ddcustom.device.sources.identity import IdentityReader
from ddcustom.device.sources.process_details import ProcessDetails
from ddcustom.device.sources.source import FailureLog

log = logging.getLogger(__name__)

NAME = "baseline"  # in the logs and in Sample.errors when it fails


class BaselineSettings(Protocol):
    """The configuration the baseline reads (``ddcustom.device.config.Settings`` has all of it)."""

    @property
    def baseline_file(self) -> str: ...
    @property
    def baseline_learning_seconds(self) -> int: ...
    @property
    def baseline_forget_seconds(self) -> int: ...
    @property
    def approved_executables(self) -> tuple[str, ...]: ...
    @property
    def approved_endpoints(self) -> tuple[str, ...]: ...
    @property
    def approved_libraries(self) -> tuple[str, ...]: ...
    @property
    def approved_cpu_levels(self) -> tuple[tuple[str, float], ...]: ...
    @property
    def fleet_known_executables(self) -> tuple[str, ...]: ...
    @property
    def allowed_gpu_processes(self) -> tuple[str, ...]: ...


def greengrass_root() -> str:
    """The nucleus's root: the component runs in ``<root>/work/<component>`` (its {work:path})."""
    if os.environ.get("SVCUID"):
        return os.path.dirname(os.path.dirname(os.getcwd()))
    return DEFAULT_GREENGRASS_ROOT


class BaselineObserver:
    """Fills ``Sample.baseline``; opens the store when turned on and closes it when turned off."""

    def __init__(
        self,
        identities: IdentityReader,
        details: ProcessDetails,
        clock: Callable[[], float] = time.time,
        kinds: Sequence[Kind] = KINDS,
    ) -> None:
        self._context = Context(identities, details)
        self._kinds = tuple(kinds)
        self._watches = self._new_watches()
        self._clock = clock
        self._failures = FailureLog(log)
        self.store: Optional[BaselineStore] = None
        self._path = ""  # of the store's file, as configured

    def configure(self, settings: BaselineSettings, enabled: bool) -> None:
        """Turn the observer on (``enabled``: the profile uses a baseline metric) or off. A store that
        cannot be opened leaves the baseline out, logged, and is tried again at the next change."""
        if not enabled:
            self.close()
            return
        if self.store is None or self._path != settings.baseline_file:
            self.close()
            self._path = settings.baseline_file
            try:
                self._context.approvals = _approvals(settings)
                self._context.deployment = DeploymentTrust(greengrass_root())
                self.store = BaselineStore(
                    settings.baseline_file,
                    now=self._clock(),
                    learning_seconds=settings.baseline_learning_seconds,
                    forget_seconds=settings.baseline_forget_seconds,
                    kinds=self._kinds,
                )
            except Exception as exc:
                self._failures.failed(NAME, exc)
                return
            self._failures.succeeded(NAME)
        self.store.learning_seconds = settings.baseline_learning_seconds
        self.store.forget_seconds = settings.baseline_forget_seconds
        self._context.approvals = _approvals(settings)
        self._context.allowed_gpu_processes = frozenset(settings.allowed_gpu_processes)

    def observe(self, sample: Sample) -> Sample:
        """``sample`` with its ``baseline`` filled; unchanged while the observer is off or the process
        table is missing; with "baseline" in its errors when observing failed."""
        if self.store is None or sample.processes is None:
            return sample
        try:
            stats = self.read(self.store, sample)
        except Exception as exc:  # the baseline failing must not fail the cycle
            self._failures.failed(NAME, exc)
            return replace(sample, errors=(*sample.errors, NAME))
        self._failures.succeeded(NAME)
        return replace(sample, baseline=stats)

    def close(self) -> None:
        store, self.store = self.store, None
        self._watches = self._new_watches()  # nothing of the store kept in their caches
        if store is not None:
            try:
                store.close(self._clock())
            except Exception as exc:
                self._failures.failed(NAME, exc)

    def _new_watches(self) -> list[Watch]:
        return [kind.watch(self._context) for kind in self._kinds]

    def read(self, store: BaselineStore, sample: Sample) -> BaselineStats:
        """What of ``sample`` ``store`` does not know, kind by kind; written to the store when due."""
        now = self._clock()
        judged = judging(self._context.approvals, store, now)
        found: dict[str, Any] = {}
        for watch in self._watches:
            found.update(watch.observe(sample, store, now))
        store.tick(now)
        if not judged:
            return BaselineStats(learning=True)
        # judged while the period goes on (FleetKnownExecutables): the kinds still learning find nothing new
        return BaselineStats(learning=False, **found)


def _approvals(settings: BaselineSettings) -> Approvals:
    return Approvals.parse(
        settings.approved_executables,
        settings.approved_endpoints,
        settings.approved_libraries,
        dict(settings.approved_cpu_levels),
        settings.fleet_known_executables,
    )
