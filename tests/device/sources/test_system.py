"""System source: CPU and memory use from /proc/stat and /proc/meminfo samples."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from ddcustom.device.sources.source import Machine
from ddcustom.device.sources.system import (
    CpuSource,
    MemorySource,
    cpu_percent_between,
    parse_cpu_times,
    parse_memory_percent,
)
from support.helpers import FIXTURES

HAND = FIXTURES / "proc" / "hand"
REAL = FIXTURES / "proc" / "real"


def test_cpu_times_by_hand() -> None:
    # cpu 100 20 30 800 50 0 0 0: total 1000, idle+iowait 850
    assert parse_cpu_times((HAND / "stat").read_text()) == (150, 1000)
    # cpu 160 20 50 900 70 0 0 0: total 1200, idle+iowait 970
    assert parse_cpu_times((HAND / "stat_later").read_text()) == (230, 1200)


def test_cpu_percent_between_by_hand() -> None:
    assert cpu_percent_between((150, 1000), (230, 1200)) == 40.0  # 80 busy of 200
    assert cpu_percent_between((150, 1000), (150, 1000)) is None  # no time passed
    assert cpu_percent_between((230, 1200), (150, 1000)) is None  # counters went back


def test_real_stat_and_meminfo_parse() -> None:
    busy, total = parse_cpu_times((REAL / "stat").read_text())
    first_line = (REAL / "stat").read_text().splitlines()[0].split()
    assert first_line[0] == "cpu"
    assert total == sum(int(v) for v in first_line[1:9])
    assert busy == total - int(first_line[4]) - int(first_line[5])
    meminfo = dict(line.split(":", 1) for line in (REAL / "meminfo").read_text().splitlines())
    total_kb, available_kb = int(meminfo["MemTotal"].split()[0]), int(meminfo["MemAvailable"].split()[0])
    assert parse_memory_percent((REAL / "meminfo").read_text()) == pytest.approx(
        100 * (total_kb - available_kb) / total_kb, abs=0.05
    )


def test_memory_percent_by_hand() -> None:
    assert parse_memory_percent((HAND / "meminfo").read_text()) == 25.0  # 1 - 6000000/8000000
    # before Linux 3.14: MemFree + Buffers + Cached = 4000000 of 8000000
    assert parse_memory_percent((HAND / "meminfo_old_kernel").read_text()) == 50.0


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="no aggregate 'cpu' line"):
        parse_cpu_times("intr 0\n")
    with pytest.raises(ValueError, match="no MemTotal"):
        parse_memory_percent("MemFree: 1 kB\n")


def test_source_measures_since_previous_call(tmp_path: Path) -> None:
    shutil.copyfile(HAND / "stat", tmp_path / "stat")
    shutil.copyfile(HAND / "meminfo", tmp_path / "meminfo")
    source = CpuSource(Machine(proc_root=str(tmp_path)))
    shutil.copyfile(HAND / "stat_later", tmp_path / "stat")
    assert source.read() == 40.0
    assert source.read() is None  # nothing changed since
    assert MemorySource(Machine(proc_root=str(tmp_path))).read() == 25.0


def test_source_on_this_machine() -> None:
    source = CpuSource()
    assert source.read() is None  # the baseline: no span measured yet
    # Busy here until the source has a span long enough for a reading (MIN_CPU_SPAN_SECONDS), bounded.
    deadline = time.monotonic() + 10
    cpu = None
    while cpu is None and time.monotonic() < deadline:
        sum(i * i for i in range(50_000))
        cpu = source.read()
    assert cpu is not None, "no CPU reading within 10 s"
    assert 0.0 < cpu <= 100.0  # this process kept a CPU busy all along
    assert 0.0 < MemorySource().read() < 100.0


def _stat(user: int, idle: int) -> str:
    return f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 {user} 0 0 {idle} 0 0 0 0 0 0\n"


def test_a_span_of_a_few_jiffies_is_no_reading_and_keeps_the_baseline(tmp_path: Path) -> None:
    # Regression: 2 busy jiffies of 2, a few ms after start, read as 100 % CPU and set off the CPU rule.
    (tmp_path / "stat").write_text(_stat(1000, 1000))
    source = CpuSource(Machine(proc_root=str(tmp_path)))
    min_span = 0.5 * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
    (tmp_path / "stat").write_text(_stat(1002, 1000))
    assert source.read() is None
    # later, measured from the first baseline: 25 % of the whole span
    busy = int(min_span)
    (tmp_path / "stat").write_text(_stat(1000 + busy, 1000 + 3 * busy))
    assert source.read() == 25.0
