"""A fake NVML layer with the real pynvml error classes, constants and return structures.

Only the C library is replaced: errors are raised as pynvml raises them (``pynvml.NVMLError(code)``
returns the matching ``NVMLError_*`` subclass), and values come back in pynvml's own ctypes structures
(``c_nvmlUtilization_t``, ``c_nvmlMemory_t``, ``c_nvmlProcessUtilizationSample_t``) or, for running
processes, in the friendly objects ``nvmlStructToFriendlyObject`` makes of ``c_nvmlProcessInfo_v2_t``, with
``usedGpuMemory`` None where the driver says NVML_VALUE_NOT_AVAILABLE, as pynvml does.

A driver older than R510 has no ``nvmlDeviceGetComputeRunningProcesses_v3``: pynvml's unversioned
``nvmlDeviceGetComputeRunningProcesses`` (which calls _v3) then raises ``NVMLLibraryMismatchError``
(its ``throwOnVersionMismatch``), while ``_v2`` works. ``FakeNvml(..., driver_has_v3=False)`` is that driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pynvml

# What GpuSource and InferenceMeter use from the module, taken from the real one.
NVMLError = pynvml.NVMLError
NVMLError_NotSupported = pynvml.NVMLError_NotSupported
NVMLError_NotFound = pynvml.NVMLError_NotFound
NVMLLibraryMismatchError = pynvml.NVMLLibraryMismatchError
NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
NOT_AVAILABLE = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value

# Field names a test may make fail, as the methods that read them.
FIELDS = ("utilization", "power", "clock", "memory", "processes", "process_utilization")


@dataclass
class FakeGpu:
    gpu_percent: int = 0
    memory_percent: int = 0
    power_mw: int = 100_000
    sm_clock_mhz: int = 1980
    memory_total: int = 80 * 2**30
    memory_used: int = 8 * 2**30
    # (pid, used GPU memory bytes, or None: NVML_VALUE_NOT_AVAILABLE)
    processes: list[tuple[int, Optional[int]]] = field(default_factory=list)
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # (pid, smUtil, timeStamp µs)
    errors: dict[str, int] = field(default_factory=dict)  # field name -> NVML_ERROR_* code


class _Handle:
    def __init__(self, index: int) -> None:
        self.index = index


class FakeNvml:
    """Module-like: pass an instance as ``GpuSource(settings, nvml=fake)``."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NotFound = NVMLError_NotFound
    NVMLLibraryMismatchError = NVMLLibraryMismatchError
    NVML_CLOCK_SM = NVML_CLOCK_SM

    def __init__(
        self,
        gpus: list[FakeGpu],
        init_error: Optional[int] = None,
        count_error: Optional[int] = None,
        driver_has_v3: bool = True,
    ) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.count_error = count_error  # NVML_ERROR_* code nvmlDeviceGetCount raises
        self.driver_has_v3 = driver_has_v3
        self.init_calls = 0
        self.shutdown_calls = 0
        self.initialised = False
        self.utilization_timestamps: list[int] = []  # lastSeenTimeStamp passed to GetProcessUtilization

    # ---- library ------------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._check_initialised()
        self.shutdown_calls += 1
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        self._check_initialised()
        if self.count_error is not None:
            raise pynvml.NVMLError(self.count_error)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check_initialised()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(index)

    # ---- device queries -----------------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        gpu = self._gpu(handle, "utilization")
        return pynvml.c_nvmlUtilization_t(gpu=gpu.gpu_percent, memory=gpu.memory_percent)

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return self._gpu(handle, "power").power_mw

    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock_type: int) -> int:
        gpu = self._gpu(handle, "clock")
        if clock_type != pynvml.NVML_CLOCK_SM:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.sm_clock_mhz

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> Any:
        gpu = self._gpu(handle, "memory")
        free = gpu.memory_total - gpu.memory_used
        return pynvml.c_nvmlMemory_t(total=gpu.memory_total, free=free, used=gpu.memory_used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        if not self.driver_has_v3:  # pynvml's throwOnVersionMismatch turns the missing _v3 into this
            self._check_initialised()
            raise pynvml.NVMLLibraryMismatchError(
                "Unversioned function called and the pyNVML version does not match the NVML lib version. "
                "Either use matching pyNVML and NVML lib versions or use a versioned function such as "
                "nvmlDeviceGetComputeRunningProcesses_v2"
            )
        return self._running_processes(handle)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: _Handle) -> list[Any]:
        return self._running_processes(handle)

    def _running_processes(self, handle: _Handle) -> list[Any]:
        gpu = self._gpu(handle, "processes")
        processes = []
        for pid, used in gpu.processes:
            info = pynvml.c_nvmlProcessInfo_v2_t(
                pid=pid, usedGpuMemory=NOT_AVAILABLE if used is None else used, gpuInstanceId=0,
                computeInstanceId=0,
            )  # fmt: skip
            obj = pynvml.nvmlStructToFriendlyObject(info)
            if obj.usedGpuMemory == NOT_AVAILABLE:  # as pynvml's wrapper does
                obj.usedGpuMemory = None
            processes.append(obj)
        return processes

    def nvmlDeviceGetProcessUtilization(self, handle: _Handle, timeStamp: int) -> list[Any]:
        gpu = self._gpu(handle, "process_utilization")
        self.utilization_timestamps.append(timeStamp)
        newer = [s for s in gpu.samples if s[2] > timeStamp]
        if not newer:  # what the driver answers when no process was active since timeStamp
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return [
            pynvml.c_nvmlProcessUtilizationSample_t(
                pid=pid, timeStamp=ts, smUtil=sm, memUtil=0, encUtil=0, decUtil=0
            )
            for pid, sm, ts in newer
        ]

    def _check_initialised(self) -> None:
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: _Handle, field_name: str) -> FakeGpu:
        self._check_initialised()
        gpu = self.gpus[handle.index]
        code = gpu.errors.get(field_name)
        if code is not None:
            raise pynvml.NVMLError(code)
        return gpu
