"""Collector: all sources into one Sample; failing sources are left out, logged once, and recover."""

from __future__ import annotations

import logging
import shutil
import socket
import time
from pathlib import Path
from typing import ClassVar

import pytest

from ddcustom.device.sample import Connection, Feedback
from ddcustom.device.sources.collect import SOURCES, Collector, check_order
from ddcustom.device.sources.source import Machine
from ddcustom.device.sources.system import MemorySource
from support.fakenvml import FakeGpu, FakeNvml
from support.helpers import FIXTURES, settings

PROC = FIXTURES / "proc"


def test_sample_of_this_machine() -> None:
    collector = Collector(settings())
    before_wall, before_mono = time.time(), time.monotonic()
    sample = collector.sample()
    assert before_wall <= sample.time <= time.time()
    assert before_mono <= sample.monotonic <= time.monotonic()
    assert sample.errors == ()
    assert sample.network is not None and sample.processes is not None
    assert sample.memory_percent is not None and 0 < sample.memory_percent < 100
    assert sample.feedback is None and sample.gpu is None  # EnableGPUMetrics is off by default
    collector.close()


def test_feedback_files_read_only_with_gpu_metrics(tmp_path: Path) -> None:
    load, inference = tmp_path / "load", tmp_path / "inference"
    load.write_text("85\n")
    inference.write_text("180\n")
    files = {
        "GpuLoadFeedbackFile": str(load),
        "InferenceTimeFeedbackFile": str(inference),
        "GpuBusyOutsideFeedbackFile": str(tmp_path / "outside"),
    }
    collector = Collector(settings(EnableGPUMetrics=True, **files))
    try:
        sample = collector.sample()
        assert sample.feedback == Feedback(gpu_load_per_inference=85.0, avg_inference_time_ms=180.0)
        assert "feedback" not in sample.errors
        collector.apply_settings(settings(EnableGPUMetrics="false", **files))
        assert collector.sample().feedback is None
    finally:
        collector.close()


def test_failing_sources_are_left_out_logged_once_and_recover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ddcustom.device.sources.collect")
    collector = Collector(settings(), Machine(proc_root=str(tmp_path)))  # an empty /proc: nothing to read
    first = collector.sample()
    second = collector.sample()
    for sample in (first, second):
        assert sample.network is None and sample.cpu_percent is None and sample.memory_percent is None
        assert set(sample.errors) == {"network", "cpu", "memory"}
        assert sample.processes is not None  # no processes is a valid answer, not a failure
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # once per failing source, not once per cycle
    assert any("network" in r.getMessage() and "FileNotFoundError" in r.getMessage() for r in warnings)

    (tmp_path / "net").mkdir()
    for name in ("dev", "tcp", "tcp6", "udp", "udp6"):
        shutil.copyfile(PROC / "hand" / "net" / name, tmp_path / "net" / name)
    for name in ("stat", "meminfo"):
        shutil.copyfile(PROC / "hand" / name, tmp_path / name)
    caplog.clear()
    third = collector.sample()
    assert third.errors == ()
    assert third.network is not None and third.memory_percent == 25.0
    assert third.processes is not None
    # the network source's connections feed the pool-port check (3333 is a default pool port)
    assert Connection("10.0.0.1", 3333, 50000, None) in third.processes.pool_connections
    assert sorted(r.getMessage() for r in caplog.records) == [
        "source cpu recovered",
        "source memory recovered",
        "source network recovered",
    ]


def test_apply_settings_takes_effect_on_next_sample() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    accepted, _ = server.accept()
    expected = Connection("127.0.0.1", server.getsockname()[1], client.getsockname()[1], "lo")
    collector = Collector(settings())
    try:
        first = collector.sample()
        assert first.network is not None and expected not in first.network.established_tcp
        collector.apply_settings(settings(IncludeLoopback=True))
        second = collector.sample()
        assert second.network is not None and expected in second.network.established_tcp
    finally:
        collector.close()
        for sock in (client, accepted, server):
            sock.close()


def test_settings_change_does_not_restart_the_network_counters(tmp_path: Path) -> None:
    """Switching IncludeLoopback on counts loopback traffic from then on, not all of it since boot."""
    (tmp_path / "net").mkdir()
    dev = (PROC / "hand" / "net" / "dev").read_text()  # lo has 1000 bytes in since boot
    (tmp_path / "net" / "dev").write_text(dev)
    collector = Collector(settings(), Machine(proc_root=str(tmp_path)))
    first = collector.sample().network
    collector.apply_settings(settings(IncludeLoopback=True))
    (tmp_path / "net" / "dev").write_text(dev.replace("lo:    1000      10", "lo:    1064      11"))
    second = collector.sample().network
    assert first is not None and second is not None
    assert second.counters.bytes_in - first.counters.bytes_in == 64
    assert second.counters.packets_in - first.counters.packets_in == 1


def test_when_the_meter_stops_the_busiest_gpu_is_the_busy_outside_inference(tmp_path: Path) -> None:
    # The application (and its meter) was killed; a miner keeps the second GPU 80 % busy.
    for name, text in (("load", "0.1"), ("time", "0.8"), ("outside", "0")):
        (tmp_path / name).write_text(text)
    nvml = FakeNvml([FakeGpu(gpu_percent=10), FakeGpu(gpu_percent=80)])
    files = {
        "GpuLoadFeedbackFile": str(tmp_path / "load"),
        "InferenceTimeFeedbackFile": str(tmp_path / "time"),
        "GpuBusyOutsideFeedbackFile": str(tmp_path / "outside"),
    }
    collector = Collector(
        settings(EnableGPUMetrics=True, **files), Machine(nvml=nvml, sysfs_root=str(tmp_path))
    )
    try:
        assert collector.sample().feedback == Feedback(0.1, 0.8, 0.0)  # the meter's value
        (tmp_path / "outside").unlink()  # the meter is gone (it will not rewrite the file either)
        assert collector.sample().feedback == Feedback(0.1, 0.8, 80.0)
        collector.apply_settings(settings(EnableGPUMetrics=True, MeterStaleSeconds=0, **files))
        assert collector.sample().feedback == Feedback(0.1, 0.8, None)  # turned off: no file, no value
    finally:
        collector.close()


def test_nvml_stays_initialised_across_settings_changes_until_gpu_metrics_are_off(tmp_path: Path) -> None:
    # A GPU process that AllowedGpuProcesses comes to allow: the next sample attributes it without
    # starting NVML again. Turning GPU metrics off releases NVML; turning them on starts it once more.
    proc = tmp_path / "proc"
    shutil.copytree(PROC / "tree", proc, symlinks=True)
    (proc / "4242").mkdir()
    (proc / "4242" / "comm").write_text("trainer\n")
    nvml = FakeNvml([FakeGpu(gpu_percent=50, processes=[(4242, 1 << 30)])])
    collector = Collector(settings(EnableGPUMetrics=True), Machine(proc_root=str(proc), nvml=nvml))
    try:

        def attribution() -> str:
            gpu = collector.sample().gpu
            assert gpu is not None
            [process] = gpu.processes
            return process.attribution

        assert attribution() == "unknown"
        collector.apply_settings(
            settings(EnableGPUMetrics=True, AllowedGpuProcesses=["trainer"], LogLevel="DEBUG")
        )
        assert attribution() == "allowed"
        assert (nvml.init_calls, nvml.shutdown_calls) == (1, 0)

        collector.apply_settings(settings(EnableGPUMetrics=False))
        assert collector.sample().gpu is None
        assert nvml.shutdown_calls == 1
        collector.apply_settings(settings(EnableGPUMetrics=True))
        assert attribution() == "unknown"
        assert nvml.init_calls == 2
    finally:
        collector.close()


class _Needs:
    """A source that reads a field (for the order check)."""

    name: ClassVar[str] = "late"
    fills: ClassVar[str] = "memory_percent"
    needs: ClassVar[tuple[str, ...]] = ("gpu",)
    reads: ClassVar[str] = "nothing"

    def __init__(self, machine: Machine) -> None:
        pass

    def configure(self, settings: object) -> None:
        pass

    def read(self, sample: object) -> float:
        return 1.0

    def close(self) -> None:
        pass


def test_a_source_that_needs_a_field_no_earlier_source_fills_is_refused() -> None:
    with pytest.raises(ValueError, match="source late needs gpu, which no source before it fills"):
        check_order((_Needs(Machine()),))
    check_order(tuple(make(Machine()) for make in SOURCES))  # the declared order is one that works


def test_each_source_fills_its_field_from_one_list(tmp_path: Path) -> None:
    """The collector's sample holds what the sources of its list filled, and nothing else."""
    (tmp_path / "meminfo").write_text((PROC / "hand" / "meminfo").read_text())
    collector = Collector(settings(), Machine(proc_root=str(tmp_path)), sources=(MemorySource,))
    try:
        sample = collector.sample()
    finally:
        collector.close()
    assert sample.memory_percent == 25.0
    assert (sample.network, sample.processes, sample.cpu_percent, sample.gpu, sample.errors) == (
        None, None, None, None, ()
    )  # fmt: skip
