"""How much CPU (kind ``program_cpu``) and GPU (``program_gpu``, GPU metrics on) each known program used
while it was learned, and the process furthest above that now (levels.py says how levels are learned,
kept and judged). The key is the program's (the executable kind's key of what it runs); the details hold
its levels, in % of one core (CPU) or of one GPU's SMs (GPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ddcustom.device.baseline.cycle import CycleBaseline
from ddcustom.device.baseline.kinds.executables import ExecutableItems
from ddcustom.device.baseline.kinds.kind import Context, ItemError, Kind
from ddcustom.device.baseline.kinds.levels import MAXIMUM, LevelWatch
from ddcustom.device.sample import Sample
from ddcustom.device.sources.identity import IdentityReader

MAX_APPROVED_LEVEL = 100_000.0  # % of one unit: a thousand cores


class CpuLevelWatch:
    """The CPU of the processes of known programs; fills ``cpu_above_level``."""

    def __init__(self, context: Context) -> None:
        self._levels = LevelWatch(PROGRAM_CPU.name, context, lambda: context.approvals.cpu_levels)

    def observe(self, sample: Sample, baseline: CycleBaseline, now: float) -> Mapping[str, Any]:
        processes = sample.processes
        if processes is None:
            return {"cpu_above_level": None}
        table = processes.table
        uses = (
            (pid, table[pid].start_ticks, use) for pid, use in processes.cpu_percent.items() if pid in table
        )
        return {"cpu_above_level": self._levels.levels(baseline, now, sample.monotonic, uses)}


class GpuLevelWatch:
    """The SM use of the GPU compute processes of known programs (NVML's process samples); fills
    ``gpu_above_level``."""

    def __init__(self, context: Context) -> None:
        self._levels = LevelWatch(PROGRAM_GPU.name, context, dict)

    def observe(self, sample: Sample, baseline: CycleBaseline, now: float) -> Mapping[str, Any]:
        gpu, processes = sample.gpu, sample.processes
        if gpu is None or processes is None or not gpu.processes_measured:
            return {"gpu_above_level": None}
        table = processes.table
        uses: dict[int, float] = {}
        for process in gpu.processes:  # a process on several GPUs: the sum, in % of one GPU
            if process.sm_percent is not None and process.pid in table:
                uses[process.pid] = uses.get(process.pid, 0.0) + process.sm_percent
        found = ((pid, table[pid].start_ticks, use) for pid, use in uses.items())
        return {"gpu_above_level": self._levels.levels(baseline, now, sample.monotonic, found)}


class LevelItems(ExecutableItems):
    """``cpu:<executable ITEM>=PERCENT``: the program (``pid:N`` or ``/abs/path``) may use PERCENT of one
    core, in one process and in all its processes together."""

    def parse(self, text: str, reader: IdentityReader) -> tuple[str, dict[str, Any]]:
        program, sep, level_text = text.rpartition("=")
        try:
            level = float(level_text)
        except ValueError:
            level = -1.0
        if not sep or not 0 <= level <= MAX_APPROVED_LEVEL:
            raise ItemError(f"{self.prefix}{text!r}: expected {self.prefix}<pid:N or /abs/path>=PERCENT")
        if not program.startswith(("pid:", "/")):
            raise ItemError(
                f"{self.prefix}{program!r}: a level is for a program: expected pid:N or /abs/path"
            )
        key, details = super().parse(program, reader)
        path = details.get("script") or details.get("path", "")
        return key, {"path": path, "process": level, "all": level}


PROGRAM_CPU = Kind(
    name="program_cpu",
    key=lambda program: program.key,
    items=LevelItems(
        "cpu:",
        [
            (
                "cpu:<pid:N or /abs/path>=PERCENT",
                "the program may use PERCENT of one core (in one process, and in all\n"
                "its processes together), whatever it used while learning",
            )
        ],
        shown_details=["path", "process", "all"],
    ),
    watch=CpuLevelWatch,
    fields=("cpu_above_level",),
    metrics=("known_process_cpu_above_level",),
    merge=MAXIMUM,
)

PROGRAM_GPU = Kind(
    name="program_gpu",
    key=lambda program: program.key,
    items=LevelItems(
        "gpu-level:",
        [("gpu-level:<pid:N or /abs/path>=PERCENT", "the same, for the GPU's SMs (GPU metrics on)")],
        shown_details=["path", "process", "all"],
    ),
    watch=GpuLevelWatch,
    fields=("gpu_above_level",),
    metrics=("known_gpu_process_above_level",),
    merge=MAXIMUM,
)
