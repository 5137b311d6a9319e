"""GPU source: the device's GPUs through NVML, else the Jetson GPU load in sysfs, else nothing.

The backend is chosen at the first read after GPU metrics are turned on: NVML when it starts and lists a
GPU, else a Jetson load file, else none (the reason logged once). When GPU metrics are off, or no backend
is usable, or the backend fails as a whole, the GPU metrics are left out (``read`` returns None) and the
reason is logged once, never raised. Turning GPU metrics off releases NVML; turning them on chooses again.
Nothing outside this package knows which backend ran: Jetson's stats say only that processes were not
measured.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar, Optional

from ddcustom.device.sample import GpuStats, Sample
from ddcustom.device.sources.gpu.backend import GpuBackend, GpuGone
from ddcustom.device.sources.gpu.jetson import JetsonBackend, find_jetson_load_file
from ddcustom.device.sources.gpu.nvml import NvmlBackend, start_nvml
from ddcustom.device.sources.source import THIS_MACHINE, Machine, SourceSettings

log = logging.getLogger(__name__)


class GpuSource:
    name: ClassVar[str] = "gpu"
    fills: ClassVar[str] = "gpu"
    needs: ClassVar[tuple[str, ...]] = ("processes",)  # the watched applications' processes
    reads: ClassVar[str] = "NVML (utilisation, power, clocks, memory, compute processes), or Jetson sysfs"

    def __init__(self, machine: Machine = THIS_MACHINE) -> None:
        self.enabled = False
        self.allowed_names: frozenset[str] = frozenset()  # AllowedGpuProcesses
        self._machine = machine
        self._nvml = machine.nvml  # the module once imported
        self._backend: Optional[GpuBackend] = None
        self._chosen = False  # a backend (or none) was chosen since GPU metrics were turned on
        self._warned: set[str] = set()

    def configure(self, settings: SourceSettings) -> None:
        self.allowed_names = frozenset(settings.allowed_gpu_processes)
        if self.enabled and not settings.enable_gpu_metrics:
            self.close()
        self.enabled = settings.enable_gpu_metrics

    def read(self, sample: Sample) -> Optional[GpuStats]:
        if not self.enabled:
            return None
        return self.measure(sample.processes.watched_pids if sample.processes is not None else frozenset())

    def measure(self, watched_pids: frozenset[int]) -> Optional[GpuStats]:
        """The GPUs now, or None (no backend, or it failed as a whole: logged once)."""
        if not self._chosen:
            self._chosen = True
            self._backend = self._choose()
        if self._backend is None:
            return None
        try:
            return self._backend.read(watched_pids, self.allowed_names)
        except GpuGone as exc:
            self._warn_once(str(exc))
        return None

    def close(self) -> None:
        """Release NVML; the next read after GPU metrics are turned on again chooses anew."""
        backend, self._backend, self._chosen = self._backend, None, False
        self._warned.clear()
        if backend is not None:
            backend.close()

    def _choose(self) -> Optional[GpuBackend]:
        self._nvml, handles, nvml_problem = start_nvml(self._nvml)
        if handles:
            log.info("GPU: reading %d NVIDIA GPU(s) through NVML", len(handles))
            return NvmlBackend(self._nvml, handles, Path(self._machine.proc_root), self._warn_once)
        load_file = find_jetson_load_file(Path(self._machine.sysfs_root))
        if load_file is not None:
            log.info(
                "GPU: NVML not usable (%s); reading the Jetson GPU load from %s", nvml_problem, load_file
            )
            return JetsonBackend(load_file)
        self._warn_once(f"no GPU found ({nvml_problem}; no Jetson GPU in sysfs): GPU metrics left out")
        return None

    def _warn_once(self, message: str, level: int = logging.WARNING) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.log(level, "%s", message)
