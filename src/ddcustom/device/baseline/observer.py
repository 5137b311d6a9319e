"""Baseline source: what the device runs, listens on and talks to that its learned baseline does not know.

Each cycle it looks at what the other sources saw (the process table, the sockets, the GPU's compute
processes) through the baseline store (ddcustom.device.baseline): while the store learns, everything is added
and nothing is new; afterwards, every process whose executable (with an interpreter's script) is not in
the baseline, every connection the device opened to an endpoint not in it, and every listening port not
in it is new, until an operator approves it or the fleet configuration does.

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
from typing import Callable, Optional

from ddcustom.device.baseline.approvals import Approvals
from ddcustom.device.baseline.deployment import DEFAULT_GREENGRASS_ROOT, DeploymentTrust
from ddcustom.device.baseline.keys import EXECUTABLE, GPU_EXECUTABLE
from ddcustom.device.baseline.store import BaselineStore
from ddcustom.device.config import Settings
from ddcustom.device.sample import BaselineStats, GpuStats, NetworkStats, NewProcess, ProcessInfo
from ddcustom.device.sources.identity import NO_ACCESS, IdentityReader

log = logging.getLogger(__name__)


def greengrass_root() -> str:
    """The nucleus's root: the component runs in ``<root>/work/<component>`` (its {work:path})."""
    if os.environ.get("SVCUID"):
        return os.path.dirname(os.path.dirname(os.getcwd()))
    return DEFAULT_GREENGRASS_ROOT


class BaselineSource:
    def __init__(
        self, settings: Settings, identities: IdentityReader, clock: Callable[[], float] = time.time
    ) -> None:
        """Opens (or creates) the store; raises BaselineError when it cannot be read or locked."""
        self._proc_root = identities.proc_root
        self._clock = clock
        self._identities = identities
        self.path = settings.baseline_file
        self.store = BaselineStore(
            self.path,
            now=clock(),
            learning_seconds=settings.baseline_learning_seconds,
            forget_seconds=settings.baseline_forget_seconds,
            approvals=_approvals(settings),
            deployment=DeploymentTrust(greengrass_root()),
        )
        self.apply_settings(settings)

    def apply_settings(self, settings: Settings) -> None:
        self.store.learning_seconds = settings.baseline_learning_seconds
        self.store.forget_seconds = settings.baseline_forget_seconds
        self.store.approvals = _approvals(settings)
        self._allowed = frozenset(settings.allowed_gpu_processes)

    def read(
        self,
        table: Mapping[int, ProcessInfo],
        cpu_percent: Mapping[int, float],
        watched_pids: Iterable[int],
        network: Optional[NetworkStats],
        gpu: Optional[GpuStats],
    ) -> BaselineStats:
        now = self._clock()
        store = self.store
        learning = store.learning(now)
        new = [p for p in (self._check(info, EXECUTABLE, now) for info in table.values()) if p is not None]
        gpu_new: list[NewProcess] = []
        for process in gpu.processes if gpu is not None else ():
            info = table.get(process.pid) or ProcessInfo(process.pid, 0, process.name, process.name, "")
            found = self._check(info, GPU_EXECUTABLE, now)
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

    def close(self) -> None:
        self.store.close(self._clock())

    def _check(self, info: ProcessInfo, kind: str, now: float) -> Optional[NewProcess]:
        """The process as a NewProcess when the baseline does not know what it runs, else None."""
        if info.argv0_name == "" and info.cmdline == "":
            return None  # a kernel thread: it runs no executable
        identity = self._identities.read(info.pid)
        if identity is None:
            return None  # exited meanwhile, or a zombie
        if identity.reason_unknowable == NO_ACCESS:
            known = self._observe_unreadable(info, kind, now)
        else:
            known = self.store.observe_executable(identity, now, kind=kind)
        if known:
            return None
        path = identity.content_path or identity.path or info.argv0_name
        return NewProcess(info.pid, info.comm, path, identity.content_sha256, identity.reason_unknowable)

    def _observe_unreadable(self, info: ProcessInfo, kind: str, now: float) -> bool:
        try:
            uid = os.stat(f"{self._proc_root}/{info.pid}").st_uid
        except OSError:
            return True  # exited meanwhile
        key = f"unreadable uid={uid} name={info.comm} argv0={info.argv0_name}"
        return self.store.observe(kind, key, {"uid": uid, "name": info.comm, "argv0": info.argv0_name}, now)


def _approvals(settings: Settings) -> Approvals:
    return Approvals.parse(settings.approved_executables, settings.approved_endpoints)
