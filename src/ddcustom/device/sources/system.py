"""CPU and memory sources: CPU use (/proc/stat, since the previous reading) and memory use (/proc/meminfo)."""

from __future__ import annotations

import contextlib
import os
from typing import ClassVar, Optional

from ddcustom.device.fileio import read_text
from ddcustom.device.sample import Sample
from ddcustom.device.sources.source import THIS_MACHINE, Machine, SourceSettings

MAX_STAT_BYTES = 1024 * 1024
MIN_CPU_SPAN_SECONDS = 0.5

# (busy jiffies, total jiffies) of the aggregate "cpu" line
CpuTimes = tuple[int, int]


def parse_cpu_times(stat_text: str) -> CpuTimes:
    """Busy and total time of the aggregate ``cpu`` line of /proc/stat.

    Total is user+nice+system+idle+iowait+irq+softirq+steal (guest time is already inside user/nice);
    idle time is idle+iowait.
    """
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:9]]
            values += [0] * (8 - len(values))  # old kernels print fewer columns
            total = sum(values)
            return total - values[3] - values[4], total
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def cpu_percent_between(before: CpuTimes, after: CpuTimes) -> Optional[float]:
    """CPU use in percent between two readings; None when no time passed (or the counters went back)."""
    total = after[1] - before[1]
    busy = after[0] - before[0]
    if total <= 0 or busy < 0:
        return None
    return round(100.0 * min(busy, total) / total, 1)


def parse_memory_percent(meminfo_text: str) -> float:
    """Memory in use in percent: 1 - MemAvailable/MemTotal (MemFree+Buffers+Cached before Linux 3.14)."""
    fields: dict[str, int] = {}
    for line in meminfo_text.splitlines():
        key, sep, rest = line.partition(":")
        if sep and key in ("MemTotal", "MemAvailable", "MemFree", "Buffers", "Cached"):
            fields[key] = int(rest.split()[0])
    total = fields.get("MemTotal", 0)
    if total <= 0:
        raise ValueError("no MemTotal in /proc/meminfo")
    available = fields.get("MemAvailable")
    if available is None:
        available = fields.get("MemFree", 0) + fields.get("Buffers", 0) + fields.get("Cached", 0)
    return round(100.0 * (total - min(available, total)) / total, 1)


class CpuSource:
    """CPU use of the whole device since the previous reading (the first since construction)."""

    name: ClassVar[str] = "cpu"
    fills: ClassVar[str] = "cpu_percent"
    needs: ClassVar[tuple[str, ...]] = ()
    reads: ClassVar[str] = "/proc/stat"

    def __init__(self, machine: Machine = THIS_MACHINE) -> None:
        self._stat_path = os.path.join(machine.proc_root, "stat")
        self._last_cpu: Optional[CpuTimes] = None
        # /proc/stat totals are summed over all CPUs, in USER_HZ ticks
        self._min_span_jiffies = MIN_CPU_SPAN_SECONDS * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        with contextlib.suppress(OSError, ValueError):  # read() reports it on its first call
            self._last_cpu = parse_cpu_times(read_text(self._stat_path, MAX_STAT_BYTES))

    def configure(self, settings: SourceSettings) -> None:
        pass

    def read(self, sample: Optional[Sample] = None) -> Optional[float]:
        """None until at least MIN_CPU_SPAN_SECONDS passed since the baseline reading.

        Counters tick in 10 ms jiffies: over a few milliseconds 2 busy of 2 total reads as 100 %,
        which a one-datapoint CPU rule would take for a miner. A short call keeps the old baseline.
        """
        now = parse_cpu_times(read_text(self._stat_path, MAX_STAT_BYTES))
        before = self._last_cpu
        if before is not None and now[1] - before[1] < self._min_span_jiffies:
            return None
        self._last_cpu = now
        return None if before is None else cpu_percent_between(before, now)

    def close(self) -> None:
        pass


class MemorySource:
    """Memory in use on the device."""

    name: ClassVar[str] = "memory"
    fills: ClassVar[str] = "memory_percent"
    needs: ClassVar[tuple[str, ...]] = ()
    reads: ClassVar[str] = "/proc/meminfo"

    def __init__(self, machine: Machine = THIS_MACHINE) -> None:
        self._meminfo_path = os.path.join(machine.proc_root, "meminfo")

    def configure(self, settings: SourceSettings) -> None:
        pass

    def read(self, sample: Optional[Sample] = None) -> float:
        return parse_memory_percent(read_text(self._meminfo_path, MAX_STAT_BYTES))

    def close(self) -> None:
        pass
