"""Helpers for the baseline tests: the kinds' names, and their lookups on one store as the observer's
watches make them."""

from __future__ import annotations

from typing import Optional

from ddcustom.device.baseline.approvals import Approvals
from ddcustom.device.baseline.cycle import CycleBaseline
from ddcustom.device.baseline.deployment import DeploymentTrust
from ddcustom.device.baseline.kinds.endpoints import EndpointWatch
from ddcustom.device.baseline.kinds.executables import ExecutableWatch, GpuExecutableWatch
from ddcustom.device.baseline.kinds.kind import Context
from ddcustom.device.baseline.kinds.listening import ListeningWatch
from ddcustom.device.sources.identity import ExecutableIdentity

# The kinds, as the file's kind column, ``show`` and ``key:KIND:KEY`` name them.
EXECUTABLE = "executable"
GPU_EXECUTABLE = "gpu_executable"
ENDPOINT = "endpoint"
LISTENING = "listening"
PROGRAM_CPU = "program_cpu"
PROGRAM_GPU = "program_gpu"
PROGRAM_CODE = "program_code"
PROGRAM_NETWORK = "program_network"
# in the file's order
KIND_NAMES = (
    EXECUTABLE,
    GPU_EXECUTABLE,
    ENDPOINT,
    LISTENING,
    PROGRAM_CPU,
    PROGRAM_GPU,
    PROGRAM_CODE,
    PROGRAM_NETWORK,
)


class Observing:
    """Whether single items are known to ``baseline`` (learned while it learns), through the kinds'
    watches, with the fleet ``approvals`` and the ``deployment`` trust the observer would give them."""

    def __init__(
        self,
        baseline: CycleBaseline,
        approvals: Optional[Approvals] = None,
        deployment: Optional[DeploymentTrust] = None,
    ) -> None:
        self.baseline = baseline
        self.context = context = Context(approvals=approvals or Approvals(), deployment=deployment)
        self._executables = ExecutableWatch(context)
        self._gpu_executables = GpuExecutableWatch(context)
        self._endpoints = EndpointWatch(context)
        self._listening = ListeningWatch(context)

    def executable(self, identity: ExecutableIdentity, now: float, gpu: bool = False) -> bool:
        watch = self._gpu_executables if gpu else self._executables
        return watch.observe_executable(self.baseline, identity, now)

    def endpoint(self, ip: str, port: int, now: float) -> bool:
        return self._endpoints.observe_endpoint(self.baseline, ip, port, now)

    def listening(self, protocol: str, port: int, now: float) -> bool:
        return self._listening.observe_listening(self.baseline, protocol, port, now)
