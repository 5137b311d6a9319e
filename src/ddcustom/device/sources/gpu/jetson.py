"""Jetson backend of the GPU source: the integrated GPU's load from sysfs, the only figure Jetson offers.

Jetson boards have no NVML; their GPU load is a per-mille value in a sysfs file whose place differs by
model and kernel. Compute processes cannot be listed, so the process metrics are left out.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

from ddcustom.device.fileio import read_text
from ddcustom.device.sample import GpuStats
from ddcustom.device.sources.gpu.backend import GpuGone

# Device-tree names of the integrated GPUs of Jetson TX2 (gp10b), Xavier (gv11b) and Orin (ga10b).
JETSON_GPU_NAMES = frozenset({"gv11b", "gp10b", "ga10b", "gpu"})
JETSON_LOAD_FILES = ("devices/gpu.0/load", "devices/platform/gpu.0/load")
MAX_SYSFS_BYTES = 64  # a load or a name is a few bytes; never read more


class JetsonBackend:
    def __init__(self, load_file: Path) -> None:
        self.load_file = load_file

    def read(self, _watched_pids: frozenset[int], _allowed_names: frozenset[str]) -> GpuStats:
        load = read_jetson_load(self.load_file)
        if load is None:
            raise GpuGone(
                f"cannot read the Jetson GPU load {self.load_file}, or it is not a per-mille value (0-1000): "
                "GPU metrics left out"
            )
        return GpuStats(load, None, None, None, processes_measured=False, busiest_utilization_percent=load)

    def close(self) -> None:
        pass


def read_jetson_load(path: Path) -> Optional[float]:
    """The Jetson GPU load in percent from its sysfs file; None when unreadable or not per-mille."""
    try:
        return parse_jetson_load(read_text(path, MAX_SYSFS_BYTES))
    except OSError:
        return None


def find_jetson_load_file(sysfs_root: Path) -> Optional[Path]:
    """The Jetson GPU load file under ``sysfs_root`` (normally /sys), or None on other machines."""
    for relative in JETSON_LOAD_FILES:
        candidate = sysfs_root / relative
        if candidate.is_file():
            return candidate
    devfreq = sysfs_root / "class" / "devfreq"
    try:
        nodes = sorted(devfreq.iterdir())
    except OSError:
        return None
    for node in nodes:
        with contextlib.suppress(OSError):  # not a device-tree device
            name = read_text(node / "device" / "of_node" / "name", MAX_SYSFS_BYTES)
            if name.strip("\x00 \n") in JETSON_GPU_NAMES:  # device-tree strings end with a NUL byte
                load = node / "device" / "load"
                if load.is_file():
                    return load
    return None


def parse_jetson_load(text: str) -> Optional[float]:
    """Jetson load is per-mille (0-1000); returns percent, or None for anything else."""
    try:
        per_mille = int(text.strip("\x00 \n"))
    except ValueError:
        return None
    if not 0 <= per_mille <= 1000:
        return None
    return per_mille / 10.0
