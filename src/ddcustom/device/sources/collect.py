"""Collector: one Sample per call from all sources, under the current settings.

A source that fails does not fail the cycle: its part of the Sample is None, its name goes into
``Sample.errors``, and the error is logged once (again when it changes, and when the source recovers).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional, TypeVar

from ddcustom.device.alerts.evidence import EvidenceReader
from ddcustom.device.baseline.observer import BaselineSource
from ddcustom.device.config import Settings
from ddcustom.device.metrics import BASELINE_METRICS, Culprits
from ddcustom.device.sample import (
    BaselineStats,
    Connection,
    Feedback,
    GpuStats,
    NetworkStats,
    ProcessStats,
    Sample,
)
from ddcustom.device.sources.feedback_files import FeedbackReader
from ddcustom.device.sources.gpu import GpuSource
from ddcustom.device.sources.identity import IdentityReader
from ddcustom.device.sources.network import NetworkSource
from ddcustom.device.sources.processes import ProcessScan, ProcessSource, ProcFiles
from ddcustom.device.sources.system import SystemSource

log = logging.getLogger(__name__)

T = TypeVar("T")


class Collector:
    def __init__(
        self,
        settings: Settings,
        proc_root: str = "/proc",
        nvml: Optional[Any] = None,
        sysfs_root: str = "/sys",
    ) -> None:
        """``nvml``: the pynvml module to use (None: import it); ``nvml`` and ``sysfs_root`` for tests."""
        self._proc_root = proc_root
        self._nvml = nvml
        self._sysfs_root = sysfs_root
        self._system = SystemSource(proc_root)  # kept across settings changes: CPU % needs the last reading
        # kept too: its counter totals must not restart, or the next report's deltas would jump
        self._network = NetworkSource(settings.include_loopback, proc_root)
        self._last_error: dict[str, str] = {}  # source -> last error message logged
        self._gpu: Optional[GpuSource] = None  # created on the first GPU read
        self._baseline: Optional[BaselineSource] = None  # while the profile uses a baseline metric
        # kept across settings changes: the process table's /proc files stay open between cycles
        self._proc_files = ProcFiles(proc_root)
        self._identities = IdentityReader(proc_root)  # what processes run: files hashed once, for both
        self._evidence = EvidenceReader(self._identities.read, proc_root)
        self._feedback = FeedbackReader(*_feedback_paths(settings))  # configured by _configure
        self._errors: list[str] = []
        self.settings = settings
        self._configure(settings)

    def apply_settings(self, settings: Settings) -> None:
        """Use new settings from the next sample on. NVML stays initialised across changes, and is shut
        down when GPU metrics are turned off (a later start retries it, so does a restart)."""
        if not settings.enable_gpu_metrics:
            self._close_gpu()
        self.settings = settings
        self._configure(settings)

    def _configure(self, settings: Settings) -> None:
        self._network.include_loopback = settings.include_loopback
        if self._gpu is not None:
            self._gpu.allowed_names = frozenset(settings.allowed_gpu_processes)
        self._processes = ProcessSource(
            settings.watched_processes,
            settings.miner_process_names,
            settings.mining_pool_ports,
            self._proc_root,
            self._proc_files,
        )
        paths = _feedback_paths(settings)
        if self._feedback.paths != paths:
            self._feedback = FeedbackReader(*paths)  # kept otherwise: it remembers what it has logged
        self._feedback.meter_stale_seconds = settings.meter_stale_seconds
        uses_baseline = any(b.metric in BASELINE_METRICS for b in settings.security_profile.device_behaviors)
        if uses_baseline:
            self._configure_baseline(settings)
        else:
            self._close_baseline()

    def _configure_baseline(self, settings: Settings) -> None:
        """Open the baseline store of the state directory (again, when that changed); a store that cannot
        be opened leaves the baseline metrics out, logged, and is tried again at the next change."""
        if self._baseline is not None and self._baseline.path == settings.baseline_file:
            self._baseline.apply_settings(settings)
            return
        self._close_baseline()
        self._baseline = self._run("baseline", lambda: BaselineSource(settings, self._identities))

    def sample(self) -> Sample:
        self._errors = []
        wall, mono = time.time(), time.monotonic()
        network: Optional[NetworkStats] = self._run("network", self._network.read)
        connections: tuple[Connection, ...] = network.established_tcp if network is not None else ()
        scan: Optional[ProcessScan] = self._run("processes", lambda: self._processes.scan(connections, mono))
        processes: Optional[ProcessStats] = scan.stats if scan is not None else None
        cpu = self._run("cpu", self._system.read_cpu_percent)
        memory = self._run("memory", self._system.read_memory_percent)
        feedback: Optional[Feedback] = None
        gpu: Optional[GpuStats] = None
        if self.settings.enable_gpu_metrics:
            watched = scan.watched_pids if scan is not None else frozenset()
            gpu = self._run("gpu", lambda: self._read_gpu(watched))
            busiest = gpu.busiest_utilization_percent if gpu is not None else None
            feedback = self._run("feedback", lambda: self._feedback.read(busiest))
        baseline: Optional[BaselineStats] = None
        if self._baseline is not None and scan is not None:
            source = self._baseline
            baseline = self._run(
                "baseline",
                lambda: source.read(scan.stats.table, scan.cpu_percent, scan.watched_pids, network, gpu),
            )
        return Sample(
            time=wall,
            monotonic=mono,
            network=network,
            cpu_percent=cpu,
            memory_percent=memory,
            feedback=feedback,
            processes=processes,
            gpu=gpu,
            baseline=baseline,
            errors=tuple(self._errors),
        )

    def evidence(self, sample: Sample, culprits: Culprits) -> Optional[dict[str, Any]]:
        """What an alert raised on ``sample`` points at (see sources/evidence.py); never raises."""
        try:
            return self._evidence.describe(sample, culprits)
        except Exception as exc:  # evidence is a help: its failure must not cost the alert
            log.warning("alert evidence not collected: %s: %s", type(exc).__name__, exc)
            return None

    def close(self) -> None:
        self._close_gpu()
        self._close_baseline()
        self._proc_files.close()

    def _close_baseline(self) -> None:
        baseline, self._baseline = self._baseline, None
        if baseline is not None:
            self._run("baseline", baseline.close)

    def _read_gpu(self, watched_pids: frozenset[int]) -> Optional[GpuStats]:
        if self._gpu is None:
            # NVML is initialised once, by its first read
            self._gpu = GpuSource(
                self.settings, nvml=self._nvml, sysfs_root=self._sysfs_root, proc_root=self._proc_root
            )
        return self._gpu.read(watched_pids)

    def _close_gpu(self) -> None:
        gpu, self._gpu = self._gpu, None
        if gpu is not None:
            self._run("gpu", gpu.close)

    def _run(self, source: str, read: Callable[[], T]) -> Optional[T]:
        try:
            value = read()
        except Exception as exc:  # a failing source must not fail the cycle
            message = f"{type(exc).__name__}: {exc}"
            if self._last_error.get(source) != message:
                log.warning("source %s failed: %s (left out until it recovers)", source, message)
                self._last_error[source] = message
            self._errors.append(source)
            return None
        if source in self._last_error:
            log.info("source %s recovered", source)
            del self._last_error[source]
        return value


def _feedback_paths(settings: Settings) -> tuple[str, str, str]:
    return (
        settings.gpu_load_feedback_file,
        settings.inference_time_feedback_file,
        settings.gpu_busy_outside_feedback_file,
    )
