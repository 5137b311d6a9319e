"""The baseline observer: what a sample shows that the device's learned baseline does not know.

The agent calls it after collecting. It looks at what the sources saw (the process table, the sockets,
the GPU's compute processes) through the baseline store: while the store learns, everything is added and
nothing is new; afterwards, every process whose executable (with an interpreter's script) is not in the
baseline, every connection the device opened to an endpoint not in it, and every listening port not in
it is new, until an operator approves it or the fleet configuration does. It is on only while the
security profile uses a metric of the baseline.

A process whose executable link the component may not read (another user's, when the component runs
unprivileged) is identified by its user, name and argv[0] instead: weaker, since a miner could take the
name of a known process of the same user, but it does not flood the rules with every other user's
process. The component running as root (the containerized core) or with CAP_SYS_PTRACE reads them all.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Callable, Optional, Protocol

from ddcustom.device.baseline.approvals import Approvals
from ddcustom.device.baseline.deployment import DEFAULT_GREENGRASS_ROOT, DeploymentTrust
from ddcustom.device.baseline.keys import EXECUTABLE, GPU_EXECUTABLE
from ddcustom.device.baseline.store import BaselineStore
from ddcustom.device.sample import BaselineStats, GpuStats, NetworkStats, NewProcess, ProcessInfo, Sample
from ddcustom.device.sources.identity import NO_ACCESS, IdentityReader
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
    def allowed_gpu_processes(self) -> tuple[str, ...]: ...


def greengrass_root() -> str:
    """The nucleus's root: the component runs in ``<root>/work/<component>`` (its {work:path})."""
    if os.environ.get("SVCUID"):
        return os.path.dirname(os.path.dirname(os.getcwd()))
    return DEFAULT_GREENGRASS_ROOT


class BaselineObserver:
    """Fills ``Sample.baseline``; opens the store when turned on and closes it when turned off."""

    def __init__(
        self, identities: IdentityReader, details: ProcessDetails, clock: Callable[[], float] = time.time
    ) -> None:
        self._identities = identities
        self._details = details
        self._clock = clock
        self._failures = FailureLog(log)
        self.store: Optional[BaselineStore] = None
        self._path = ""  # of the store's file, as configured
        self._allowed: frozenset[str] = frozenset()

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
                self.store = BaselineStore(
                    settings.baseline_file,
                    now=self._clock(),
                    learning_seconds=settings.baseline_learning_seconds,
                    forget_seconds=settings.baseline_forget_seconds,
                    approvals=_approvals(settings),
                    deployment=DeploymentTrust(greengrass_root()),
                )
            except Exception as exc:
                self._failures.failed(NAME, exc)
                return
            self._failures.succeeded(NAME)
        self.store.learning_seconds = settings.baseline_learning_seconds
        self.store.forget_seconds = settings.baseline_forget_seconds
        self.store.approvals = _approvals(settings)
        self._allowed = frozenset(settings.allowed_gpu_processes)

    def observe(self, sample: Sample) -> Sample:
        """``sample`` with its ``baseline`` filled; unchanged while the observer is off or the process
        table is missing; with "baseline" in its errors when observing failed."""
        if self.store is None or sample.processes is None:
            return sample
        processes = sample.processes
        try:
            stats = self.read(
                self.store,
                processes.table,
                processes.cpu_percent,
                processes.watched_pids,
                sample.network,
                sample.gpu,
            )
        except Exception as exc:  # the baseline failing must not fail the cycle
            self._failures.failed(NAME, exc)
            return replace(sample, errors=(*sample.errors, NAME))
        self._failures.succeeded(NAME)
        return replace(sample, baseline=stats)

    def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            try:
                store.close(self._clock())
            except Exception as exc:
                self._failures.failed(NAME, exc)

    def read(
        self,
        store: BaselineStore,
        table: Mapping[int, ProcessInfo],
        cpu_percent: Mapping[int, float],
        watched_pids: Iterable[int],
        network: Optional[NetworkStats],
        gpu: Optional[GpuStats],
    ) -> BaselineStats:
        now = self._clock()
        learning = store.learning(now)
        new = [
            p for p in (self._check(store, info, EXECUTABLE, now) for info in table.values()) if p is not None
        ]
        gpu_new: list[NewProcess] = []
        for process in gpu.processes if gpu is not None else ():
            info = table.get(process.pid) or ProcessInfo(process.pid, 0, process.name, process.name, "")
            found = self._check(store, info, GPU_EXECUTABLE, now)
            if found is not None:
                gpu_new.append(found)
        endpoints, listening = [], []
        if network is not None:
            tcp_ports = {p.port for p in network.listening_tcp}
            for connection in network.established_tcp:  # opened by the device: not to a port it listens on
                if connection.local_port not in tcp_ports and not store.observe_endpoint(
                    connection.remote_ip, connection.remote_port, now
                ):
                    endpoints.append(connection)
            for protocol, ports in (("tcp", network.listening_tcp), ("udp", network.listening_udp)):
                for port in sorted({p.port for p in ports}):
                    if not store.observe_listening(protocol, port, now):
                        listening.append(f"{protocol}:{port}")
        store.tick(now)
        if learning:
            return BaselineStats(learning=True)
        watched = frozenset(watched_pids)
        allowed = self._allowed
        unexplained = [
            (cpu_percent.get(p.pid, 0.0), p.pid)
            for p in new
            if p.pid not in watched and p.name not in allowed
        ]
        busiest = max(unexplained, default=None)
        return BaselineStats(
            learning=False,
            new_processes=tuple(sorted(new, key=lambda p: p.pid)),
            new_endpoints=tuple(endpoints),
            new_listening=tuple(listening),
            new_gpu_processes=tuple(gpu_new),
            busiest_new=(busiest[1], busiest[0]) if busiest is not None else None,
        )

    def _check(self, store: BaselineStore, info: ProcessInfo, kind: str, now: float) -> Optional[NewProcess]:
        """The process as a NewProcess when the baseline does not know what it runs, else None."""
        if info.argv0_name == "" and info.cmdline == "":
            return None  # a kernel thread: it runs no executable
        identity = self._identities.read(info.pid)
        if identity is None:
            return None  # exited meanwhile, or a zombie
        if identity.reason_unknowable == NO_ACCESS:
            known = self._observe_unreadable(store, info, kind, now)
        else:
            known = store.observe_executable(identity, now, kind=kind)
        if known:
            return None
        path = identity.content_path or identity.path or info.argv0_name
        return NewProcess(info.pid, info.comm, path, identity.content_sha256, identity.reason_unknowable)

    def _observe_unreadable(self, store: BaselineStore, info: ProcessInfo, kind: str, now: float) -> bool:
        uid = self._details.owner(info.pid)
        if uid is None:
            return True  # exited meanwhile
        key = f"unreadable uid={uid} name={info.comm} argv0={info.argv0_name}"
        return store.observe(kind, key, {"uid": uid, "name": info.comm, "argv0": info.argv0_name}, now)


def _approvals(settings: BaselineSettings) -> Approvals:
    return Approvals.parse(settings.approved_executables, settings.approved_endpoints)
