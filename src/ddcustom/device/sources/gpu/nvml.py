"""NVML backend of the GPU source: utilisation, power, clocks, memory and compute processes of NVIDIA GPUs.

NVML is the ``pynvml`` module of the nvidia-ml-py package. A field one GPU cannot give (``NOT_SUPPORTED``
power on many consumer and embedded boards) leaves only that field out; when every field of every GPU
fails (e.g. "GPU is lost") the cycle has no GPU metrics and one warning says why. Each compute process
is attributed: "watched" (its pid is in a watched application's process tree), "allowed" (its name is in
AllowedGpuProcesses) or "unknown". The inference meter (ddcustom.feedback) starts NVML the same way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from ddcustom.device.fileio import read_text
from ddcustom.device.sample import GpuProcess, GpuStats
from ddcustom.device.sources.gpu.backend import GpuGone

log = logging.getLogger(__name__)

T = TypeVar("T")
Warn = Callable[[str, int], None]  # a message and its logging level, said once

MAX_COMM_BYTES = 64  # /proc/<pid>/comm holds at most 16 bytes


@dataclass(frozen=True)
class _DeviceReading:
    utilization_percent: Optional[float]
    power_watts: Optional[float]
    sm_clock_mhz: Optional[float]
    memory_used_bytes: Optional[int]
    memory_total_bytes: Optional[int]
    processes: Optional[tuple[GpuProcess, ...]]  # None: the process list could not be read

    def is_empty(self) -> bool:
        return not self.processes and all(
            v is None
            for v in (self.utilization_percent, self.power_watts, self.sm_clock_mhz, self.memory_total_bytes)
        )


class NvmlBackend:
    """The GPUs NVML lists; ``nvml`` is the started module and ``handles`` its GPUs (``start_nvml``)."""

    def __init__(self, nvml: Any, handles: list[Any], proc_root: Path, warn: Warn) -> None:
        self._nvml = nvml
        self._handles = handles
        self._proc_root = proc_root
        self._warn = warn
        self._list_processes = ComputeProcesses(nvml)
        self._last_seen_us: dict[int, int] = {}  # device index -> newest process-utilisation timestamp
        self._field_errors: list[tuple[str, Exception]] = []  # this cycle's: (what failed, error)

    def read(self, watched_pids: frozenset[int], allowed_names: frozenset[str]) -> GpuStats:
        self._field_errors = []
        readings = [
            self._read_device(index, handle, watched_pids, allowed_names)
            for index, handle in enumerate(self._handles)
        ]
        if all(r.is_empty() for r in readings):  # one warning for the cause, not one per field
            cause = f" ({self._field_errors[0][0]}: {self._field_errors[0][1]})" if self._field_errors else ""
            raise GpuGone(f"NVML returned no value for any GPU{cause}: GPU metrics left out")
        for what, exc in self._field_errors:
            # NOT_SUPPORTED is a property of the board, not a fault: said once, quietly
            quiet = isinstance(exc, self._nvml.NVMLError_NotSupported)
            self._warn(f"{what} left out: {exc}", logging.INFO if quiet else logging.WARNING)
        utilizations = [r.utilization_percent for r in readings if r.utilization_percent is not None]
        powers = [r.power_watts for r in readings if r.power_watts is not None]
        clocks = [r.sm_clock_mhz for r in readings if r.sm_clock_mhz is not None]
        memory = [(r.memory_used_bytes, r.memory_total_bytes) for r in readings if r.memory_total_bytes]
        used = sum(u or 0 for u, _ in memory)
        total = sum(t or 0 for _, t in memory)
        return GpuStats(
            utilization_percent=sum(utilizations) / len(utilizations) if utilizations else None,
            power_watts=sum(powers) if powers else None,
            sm_clock_mhz=sum(clocks) / len(clocks) if clocks else None,
            memory_used_percent=100.0 * used / total if total else None,
            processes=tuple(p for r in readings for p in r.processes or ()),
            processes_measured=all(r.processes is not None for r in readings),
            busiest_utilization_percent=max(utilizations) if utilizations else None,
        )

    def close(self) -> None:
        if self._handles:
            self._handles = []
            shutdown_nvml(self._nvml)

    def _read_device(
        self, index: int, handle: Any, watched_pids: frozenset[int], allowed_names: frozenset[str]
    ) -> _DeviceReading:
        nvml = self._nvml
        utilization = self._field(index, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        power_mw = self._field(index, "power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        sm_clock = self._field(
            index, "SM clock", lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)
        )
        memory = self._field(index, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        return _DeviceReading(
            utilization_percent=float(utilization.gpu) if utilization is not None else None,
            power_watts=power_mw / 1000.0 if power_mw is not None else None,
            sm_clock_mhz=float(sm_clock) if sm_clock is not None else None,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            processes=self._read_processes(index, handle, watched_pids, allowed_names),
        )

    def _read_processes(
        self, index: int, handle: Any, watched_pids: frozenset[int], allowed_names: frozenset[str]
    ) -> Optional[tuple[GpuProcess, ...]]:
        running = self._field(index, "compute processes", lambda: self._list_processes(handle))
        if running is None:
            return None
        if not running:
            return ()
        sm_by_pid = self._read_process_sm(index, handle)
        processes = []
        for info in running:
            pid = int(info.pid)
            name, names = self._process_names(pid)
            if pid in watched_pids:
                attribution = "watched"
            elif names & allowed_names:
                attribution = "allowed"
            else:
                attribution = "unknown"
            sm: Optional[float] = None
            if sm_by_pid is not None:
                sm = sm_by_pid.get(pid, 0.0)  # the driver sampled the GPU: a pid it did not list was idle
            memory = info.usedGpuMemory  # None: the driver does not know it (NVML_VALUE_NOT_AVAILABLE)
            processes.append(
                GpuProcess(pid, name, index, int(memory) if memory is not None else None, sm, attribution)
            )
        return tuple(processes)

    def _read_process_sm(self, index: int, handle: Any) -> Optional[dict[int, float]]:
        """Mean SM % per pid since the last read; {} when no process was active; None when not offered."""
        nvml = self._nvml
        last_seen = self._last_seen_us.get(index, 0)
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(handle, last_seen)
        except nvml.NVMLError_NotFound:
            return {}
        except nvml.NVMLError as exc:
            self._field_errors.append((f"GPU {index}: process utilisation", exc))
            return None
        by_pid: dict[int, list[float]] = {}
        for s in samples:
            by_pid.setdefault(int(s.pid), []).append(float(s.smUtil))
            last_seen = max(last_seen, int(s.timeStamp))
        self._last_seen_us[index] = last_seen
        return {pid: sum(values) / len(values) for pid, values in by_pid.items()}

    def _field(self, index: int, what: str, call: Callable[[], T]) -> Optional[T]:
        nvml = self._nvml
        try:
            return call()
        except (nvml.NVMLError, nvml.NVMLLibraryMismatchError) as exc:
            self._field_errors.append((f"GPU {index}: {what}", exc))
            return None

    def _process_names(self, pid: int) -> tuple[str, frozenset[str]]:
        """The name to show and every name to match against AllowedGpuProcesses (comm, exe basename).

        NVML gives host pids. A pid that /proc does not show (the process ended, or lives in another
        PID namespace, e.g. a container) is named "pid:<n>" and can only be "watched" or "unknown".
        """
        try:
            comm = read_text(self._proc_root / str(pid) / "comm", MAX_COMM_BYTES).strip()
        except OSError:  # gone
            comm = ""
        names = {comm} if comm else set()
        try:
            exe = os.readlink(self._proc_root / str(pid) / "exe")
        except OSError:  # gone, or another user's process without ptrace rights
            exe = ""
        if exe:
            names.add(os.path.basename(exe.removesuffix(" (deleted)")))
        if not names:
            return f"pid:{pid}", frozenset()
        return comm or next(iter(names)), frozenset(names)


def start_nvml(nvml: Optional[Any] = None) -> tuple[Optional[Any], list[Any], str]:
    """Initialise NVML (``nvml``: the pynvml module, imported when None) and take every GPU's handle.

    Returns (the module or None, the handles, why NVML cannot be used or ''). Without a handle NVML is
    shut down again: it stays initialised only while it has a GPU to read.
    """
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            return None, [], "the nvidia-ml-py package (pynvml) is not installed"
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return nvml, [], f"NVML: {exc}"
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        problem = "" if handles else "NVML found no GPU"
    except nvml.NVMLError as exc:
        handles, problem = [], f"NVML device list: {exc}"
    if not handles:
        shutdown_nvml(nvml)
    return nvml, handles, problem


def shutdown_nvml(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except nvml.NVMLError as exc:
        log.debug("nvmlShutdown failed: %s", exc)


class ComputeProcesses:
    """A GPU's compute processes. pynvml's unversioned call needs the driver's ``_v3`` (R510 and later);
    on older drivers it raises a version mismatch once, and ``_v2`` is used from then on."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._v2 = False

    def __call__(self, handle: Any) -> list[Any]:
        if not self._v2:
            try:
                return list(self._nvml.nvmlDeviceGetComputeRunningProcesses(handle))
            except self._nvml.NVMLLibraryMismatchError:
                log.info("GPU: the driver has no nvmlDeviceGetComputeRunningProcesses_v3; using _v2")
                self._v2 = True
        return list(self._nvml.nvmlDeviceGetComputeRunningProcesses_v2(handle))
