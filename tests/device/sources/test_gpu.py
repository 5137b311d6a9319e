from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import pynvml
import pytest

from ddcustom.device.config import Settings
from ddcustom.device.metrics import METRICS
from ddcustom.device.sample import GpuProcess
from ddcustom.device.sources.gpu.jetson import parse_jetson_load
from ddcustom.device.sources.gpu.source import GpuSource
from ddcustom.device.sources.source import Machine
from support.fakenvml import FIELDS, FakeGpu, FakeNvml
from support.helpers import FIXTURES, sample, settings

GPU_FIXTURES = FIXTURES / "gpu"
NO_SYSFS = GPU_FIXTURES / "no-such-sysfs"  # no Jetson GPU there
GIB = 2**30


def gpu_source(
    configured: Settings, *, nvml: object = None, sysfs_root: str = "/sys", proc_root: str = "/proc"
) -> GpuSource:
    source = GpuSource(Machine(proc_root=proc_root, sysfs_root=sysfs_root, nvml=nvml))
    source.configure(configured)
    return source


def make_proc(root: Path, pid: int, comm: str | None = None, exe: str | None = None) -> None:
    """A /proc/<pid> entry with a comm file and an exe link, as the kernel shows them."""
    entry = root / str(pid)
    entry.mkdir(parents=True)
    if comm is not None:
        (entry / "comm").write_text(comm + "\n")
    if exe is not None:
        os.symlink(exe, entry / "exe")


def gpu_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("ddcustom.device.sources.gpu") and r.levelno >= logging.WARNING
    ]


def by_pid(processes: tuple[GpuProcess, ...]) -> dict[int, GpuProcess]:
    return {p.pid: p for p in processes}


# ---- NVML -------------------------------------------------------------------------------------------


def test_two_gpus_are_aggregated(tmp_path: Path) -> None:
    make_proc(tmp_path, 100, "app")
    make_proc(tmp_path, 200, "trainer")
    nvml = FakeNvml(
        [
            FakeGpu(gpu_percent=30, power_mw=118_500, sm_clock_mhz=1980, memory_total=80 * GIB,
                    memory_used=20 * GIB, processes=[(100, 3 * GIB)]),
            FakeGpu(gpu_percent=90, power_mw=432_000, sm_clock_mhz=1500, memory_total=40 * GIB,
                    memory_used=40 * GIB, processes=[(200, 5 * GIB)]),
        ]
    )  # fmt: skip
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path))

    stats = source.measure(frozenset({100}))

    assert stats is not None
    assert stats.processes_measured
    assert stats.utilization_percent == pytest.approx(60.0)
    assert stats.busiest_utilization_percent == pytest.approx(90.0)
    assert stats.power_watts == pytest.approx(550.5)
    assert stats.sm_clock_mhz == pytest.approx(1740.0)
    assert stats.memory_used_percent == pytest.approx(100.0 * 60 / 120)
    procs = by_pid(stats.processes)
    assert procs[100].gpu_index == 0 and procs[100].used_memory_bytes == 3 * GIB
    assert procs[200].gpu_index == 1 and procs[200].used_memory_bytes == 5 * GIB


def test_processes_are_attributed_watched_allowed_or_unknown(tmp_path: Path) -> None:
    make_proc(tmp_path, 10, "python3")  # the watched application (name not in the allowed list)
    make_proc(tmp_path, 11, "tritonserver")  # allowed by its comm
    # comm is cut to 15 characters by the kernel: the exe basename still matches the allowed name.
    make_proc(tmp_path, 12, "inference-serv", "/opt/app/bin/inference-server-v2")
    make_proc(tmp_path, 13, "python3")  # same name as the app but not in its tree
    # 14: no /proc entry visible (another PID namespace, or gone)
    # 15: no /proc entry either, but in the watched tree as the collector saw it
    nvml = FakeNvml([FakeGpu(processes=[(10, 1), (11, 2), (12, 3), (13, 4), (14, 5), (15, 6)])])
    source = gpu_source(
        settings(AllowedGpuProcesses=["tritonserver", "inference-server-v2"]),
        nvml=nvml,
        sysfs_root=str(NO_SYSFS),
        proc_root=str(tmp_path),
    )

    stats = source.measure(frozenset({10, 15}))

    assert stats is not None
    procs = by_pid(stats.processes)
    assert {pid: (p.name, p.attribution) for pid, p in procs.items()} == {
        10: ("python3", "watched"),
        11: ("tritonserver", "allowed"),
        12: ("inference-serv", "allowed"),
        13: ("python3", "unknown"),
        14: ("pid:14", "unknown"),
        15: ("pid:15", "watched"),
    }


def test_process_name_read_from_the_real_proc() -> None:
    pid = os.getpid()
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    nvml = FakeNvml([FakeGpu(processes=[(pid, GIB)])])
    source = gpu_source(settings(AllowedGpuProcesses=[comm]), nvml=nvml, sysfs_root=str(NO_SYSFS))

    stats = source.measure(frozenset())

    assert stats is not None
    assert stats.processes[0].name == comm
    assert stats.processes[0].attribution == "allowed"


def test_a_field_not_supported_on_one_gpu_leaves_only_that_field_of_that_gpu_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = FakeNvml(
        [
            FakeGpu(gpu_percent=40, power_mw=50_000),
            FakeGpu(gpu_percent=20, power_mw=70_000, errors={"power": pynvml.NVML_ERROR_NOT_SUPPORTED}),
        ]
    )
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path))

    with caplog.at_level(logging.INFO, logger="ddcustom.device.sources.gpu"):
        first = source.measure(frozenset())
        second = source.measure(frozenset())

    assert first is not None and second is not None
    assert first.power_watts == pytest.approx(50.0)  # the GPU that reports it
    assert first.utilization_percent == pytest.approx(30.0)
    assert gpu_warnings(caplog) == []  # NOT_SUPPORTED is a property of the board, not a fault
    notes = [r.getMessage() for r in caplog.records if "power left out" in r.getMessage()]
    assert notes == ["GPU 1: power left out: Not Supported"]


def test_power_not_supported_anywhere_is_none_and_other_fields_stay(tmp_path: Path) -> None:
    not_supported = {"power": pynvml.NVML_ERROR_NOT_SUPPORTED, "clock": pynvml.NVML_ERROR_NOT_SUPPORTED}
    nvml = FakeNvml(
        [FakeGpu(gpu_percent=55, errors=not_supported, memory_total=8 * GIB, memory_used=2 * GIB)]
    )
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path))

    stats = source.measure(frozenset())

    assert stats is not None
    assert stats.power_watts is None
    assert stats.sm_clock_mhz is None
    assert stats.utilization_percent == 55.0
    assert stats.memory_used_percent == pytest.approx(25.0)


def test_other_field_errors_are_warned_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml([FakeGpu(gpu_percent=5, errors={"memory": pynvml.NVML_ERROR_NO_PERMISSION})])
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path))

    results = [source.measure(frozenset()) for _ in range(3)]

    assert all(
        r is not None and r.memory_used_percent is None and r.utilization_percent == 5 for r in results
    )
    assert gpu_warnings(caplog) == ["GPU 0: memory left out: Insufficient Permissions"]


def test_per_process_sm_use_and_the_last_seen_timestamp_per_device(tmp_path: Path) -> None:
    gpu0 = FakeGpu(processes=[(1, 0), (2, 0)], samples=[(1, 40, 1_000), (1, 60, 2_000)])
    gpu1 = FakeGpu(processes=[(3, 0)], samples=[(3, 90, 5_000)])
    nvml = FakeNvml([gpu0, gpu1])
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path))

    first = source.measure(frozenset())
    gpu0.samples.append((2, 10, 3_000))  # only pid 2 was active since the last read on GPU 0
    second = source.measure(frozenset())

    assert first is not None and second is not None
    assert {p.pid: p.sm_percent for p in first.processes} == {1: 50.0, 2: 0.0, 3: 90.0}
    assert {p.pid: p.sm_percent for p in second.processes} == {1: 0.0, 2: 10.0, 3: 0.0}
    assert nvml.utilization_timestamps == [0, 0, 2_000, 5_000]


def test_used_gpu_memory_not_available_is_left_out_of_that_process_only(tmp_path: Path) -> None:
    make_proc(tmp_path, 21, "app")
    nvml = FakeNvml([FakeGpu(processes=[(21, None), (22, 3 * GIB)])])
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path))

    stats = source.measure(frozenset({21}))

    assert stats is not None
    procs = by_pid(stats.processes)
    assert (procs[21].used_memory_bytes, procs[21].attribution) == (None, "watched")
    assert (procs[22].used_memory_bytes, procs[22].attribution) == (3 * GIB, "unknown")


def test_a_driver_older_than_the_binding_still_lists_the_processes_through_v2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """nvidia-ml-py calls nvmlDeviceGetComputeRunningProcesses_v3, which drivers before R510 lack."""
    nvml = FakeNvml([FakeGpu(processes=[(31, GIB)])], driver_has_v3=False)
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path))

    results = [source.measure(frozenset()) for _ in range(2)]

    for stats in results:
        assert stats is not None
        assert [(p.pid, p.used_memory_bytes, p.attribution) for p in stats.processes] == [
            (31, GIB, "unknown")
        ]
    assert gpu_warnings(caplog) == []


def test_a_process_list_failing_also_through_v2_is_left_out_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gpu = FakeGpu(
        gpu_percent=9, processes=[(31, GIB)], errors={"processes": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND}
    )
    source = gpu_source(
        settings(),
        nvml=FakeNvml([gpu], driver_has_v3=False),
        sysfs_root=str(NO_SYSFS),
        proc_root=str(tmp_path),
    )

    results = [source.measure(frozenset()) for _ in range(3)]

    assert all(r is not None and r.utilization_percent == 9 and r.processes == () for r in results)
    warnings = gpu_warnings(caplog)
    assert len(warnings) == 1 and "compute processes left out: Function Not Found" in warnings[0]


def test_an_unreadable_process_list_is_not_reported_as_zero_unknown_processes(tmp_path: Path) -> None:
    # Regression: a failed process list read as "0 unknown GPU processes", hiding a miner behind an error.
    failing = FakeGpu(gpu_percent=9, processes=[(31, GIB)], errors={"processes": pynvml.NVML_ERROR_UNKNOWN})
    healthy = FakeGpu(gpu_percent=3, processes=[(32, GIB)])
    source = gpu_source(
        settings(), nvml=FakeNvml([healthy, failing]), sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path)
    )
    stats = source.measure(frozenset())
    assert stats is not None and not stats.processes_measured
    assert METRICS["gpu_unknown_processes"].read(sample(gpu=stats), None) is None
    assert METRICS["gpu_process_names"].read(sample(gpu=stats), None) is None
    assert METRICS["gpu_utilization"].read(sample(gpu=stats), None) == 6.0  # the rest of the GPU metrics stay

    whole = gpu_source(
        settings(), nvml=FakeNvml([healthy]), sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path)
    )
    measured = whole.measure(frozenset())
    assert measured is not None and measured.processes_measured
    assert METRICS["gpu_unknown_processes"].read(sample(gpu=measured), None) == 1.0


def test_process_utilization_not_found_means_no_process_was_active(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(processes=[(7, GIB)], samples=[])])
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path))

    stats = source.measure(frozenset())

    assert stats is not None
    assert stats.processes[0].sm_percent == 0.0


def test_process_utilization_not_supported_leaves_sm_out(tmp_path: Path) -> None:
    errors = {"process_utilization": pynvml.NVML_ERROR_NOT_SUPPORTED}
    nvml = FakeNvml([FakeGpu(processes=[(7, GIB)], samples=[(7, 50, 10)], errors=errors)])
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path))

    stats = source.measure(frozenset())

    assert stats is not None
    assert stats.processes[0].sm_percent is None
    assert stats.processes[0].used_memory_bytes == GIB


@pytest.mark.parametrize(
    "code, reason",
    [(pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"),
     (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found")],
)  # fmt: skip
def test_nvml_failing_at_init_gives_none_and_one_warning(
    code: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = FakeNvml([FakeGpu()], init_error=code)
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS))

    results = [source.measure(frozenset()) for _ in range(4)]
    source.close()

    assert results == [None, None, None, None]
    assert nvml.init_calls == 1
    warnings = gpu_warnings(caplog)
    assert len(warnings) == 1
    assert reason in warnings[0] and "GPU metrics left out" in warnings[0]


def test_nvml_is_initialised_once_and_shut_down_on_close(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(gpu_percent=12)])
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path))

    for _ in range(5):
        assert source.measure(frozenset()) is not None
    assert (nvml.init_calls, nvml.shutdown_calls) == (1, 0)
    source.close()

    assert (nvml.init_calls, nvml.shutdown_calls) == (1, 1)
    assert not nvml.initialised


def test_no_device_shuts_nvml_down_and_reports_nothing(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml([])
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS))

    assert source.measure(frozenset()) is None
    assert source.measure(frozenset()) is None

    assert (nvml.init_calls, nvml.shutdown_calls) == (1, 1)
    assert len(gpu_warnings(caplog)) == 1 and "NVML found no GPU" in gpu_warnings(caplog)[0]


def test_a_gpu_lost_while_running_gives_none_and_one_warning_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gpu = FakeGpu(gpu_percent=70)
    nvml = FakeNvml([gpu])
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path))
    assert source.measure(frozenset()) is not None

    gpu.errors = {name: pynvml.NVML_ERROR_GPU_IS_LOST for name in FIELDS}  # every call fails
    lost = [source.measure(frozenset()) for _ in range(3)]
    gpu.errors = {}
    back = source.measure(frozenset())

    assert lost == [None, None, None]
    assert back is not None and back.utilization_percent == 70
    warnings = gpu_warnings(caplog)  # one warning for the lost GPU, not one per field
    assert len(warnings) == 1
    assert "no value for any GPU" in warnings[0] and "GPU is lost" in warnings[0]


def test_a_field_failing_on_every_cycle_is_warned_once_also_after_the_gpu_came_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gpu = FakeGpu(gpu_percent=70, errors={"memory": pynvml.NVML_ERROR_UNKNOWN})
    source = gpu_source(settings(), nvml=FakeNvml([gpu]), sysfs_root=str(NO_SYSFS), proc_root=str(tmp_path))

    results = [source.measure(frozenset()) for _ in range(3)]

    assert [r.utilization_percent if r else None for r in results] == [70, 70, 70]
    assert gpu_warnings(caplog) == ["GPU 0: memory left out: Unknown Error"]


def test_the_real_pynvml_never_raises_and_warns_once_without_a_driver(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        has_driver = True
    except OSError:
        has_driver = False
    source = gpu_source(settings(), sysfs_root=str(NO_SYSFS))  # nvml=None: the installed pynvml
    first, second = source.measure(frozenset()), source.measure(frozenset())
    source.close()

    if has_driver:  # a GPU machine: real readings, or None with a warning if the GPU is unusable
        for stats in (first, second):
            assert stats is None or stats.processes_measured
        assert len(gpu_warnings(caplog)) <= 1
        return
    assert first is None and second is None
    warnings = gpu_warnings(caplog)
    assert len(warnings) == 1
    assert "NVML Shared Library Not Found" in warnings[0]


# ---- Jetson -----------------------------------------------------------------------------------------

NO_NVML = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND


@pytest.mark.parametrize(
    "tree, percent",
    [("jetson-gpu0", 43.1), ("jetson-platform", 100.0), ("jetson-devfreq", 12.7)],
)
def test_jetson_load_from_each_sysfs_layout(
    tree: str, percent: float, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = FakeNvml([], init_error=NO_NVML)
    source = gpu_source(settings(), nvml=nvml, sysfs_root=str(GPU_FIXTURES / tree))

    stats = source.measure(frozenset())

    assert stats is not None
    assert not stats.processes_measured  # Jetson cannot list compute processes
    assert stats.utilization_percent == pytest.approx(percent)
    assert stats.busiest_utilization_percent == pytest.approx(percent)
    assert (stats.power_watts, stats.sm_clock_mhz, stats.memory_used_percent, stats.processes) == (
        None, None, None, (),
    )  # fmt: skip
    assert gpu_warnings(caplog) == []


@pytest.mark.parametrize("tree", ["jetson-garbage", "jetson-out-of-range"])
def test_jetson_load_that_is_not_per_mille_is_left_out_with_one_warning(
    tree: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = gpu_source(
        settings(), nvml=FakeNvml([], init_error=NO_NVML), sysfs_root=str(GPU_FIXTURES / tree)
    )

    assert [source.measure(frozenset()) for _ in range(3)] == [None, None, None]

    warnings = gpu_warnings(caplog)
    assert len(warnings) == 1 and "not a per-mille value" in warnings[0]


def test_jetson_load_file_that_disappears_is_left_out(tmp_path: Path) -> None:
    load = tmp_path / "devices" / "gpu.0" / "load"
    load.parent.mkdir(parents=True)
    load.write_text("250\n")
    source = gpu_source(settings(), nvml=FakeNvml([], init_error=NO_NVML), sysfs_root=str(tmp_path))
    first = source.measure(frozenset())
    load.unlink()

    assert first is not None and first.utilization_percent == 25.0
    assert source.measure(frozenset()) is None


@pytest.mark.parametrize(
    "text, expected",
    [("0\n", 0.0), ("1000", 100.0), ("5\x00", 0.5), ("-1", None), ("1001", None), ("", None), ("4 5", None)],
)
def test_parse_jetson_load(text: str, expected: float | None) -> None:
    assert parse_jetson_load(text) == expected
