"""What a backend of the GPU source offers: one GpuStats per read, or GpuGone when it failed as a whole."""

from __future__ import annotations

from typing import Protocol

from ddcustom.device.sample import GpuStats


class GpuGone(Exception):
    """The backend failed as a whole: no GPU metrics this cycle (the message says why)."""


class GpuBackend(Protocol):
    def read(self, watched_pids: frozenset[int], allowed_names: frozenset[str]) -> GpuStats:
        """The device's GPUs now; processes in ``watched_pids`` are the application's, names in
        ``allowed_names`` are allowed. Raises GpuGone."""

    def close(self) -> None: ...
