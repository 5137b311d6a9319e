from __future__ import annotations

import logging
import os
import threading
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional

import numpy
import pynvml
import pytest

from ddcustom.feedback import GpuBusyReader, InferenceMeter
from support.fakenvml import FakeGpu, FakeNvml
from support.helpers import FIXTURES, poll

GPU_FIXTURES = FIXTURES / "gpu"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Busy:
    """A GPU busy function returning the values it is given, one per call (None: no reading)."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.values.pop(0) if self.values else None


def meter_in(tmp_path: Path, clock: Clock, busy: Callable[[], Any], **options: Any) -> InferenceMeter:
    """A meter without its daemon thread, writing its three files into tmp_path; ``options`` override."""
    return InferenceMeter(
        **{
            "load_file": str(tmp_path / "gpu_load_fb"),
            "time_file": str(tmp_path / "gpu_inference_fb"),
            "busy_outside_file": str(tmp_path / "gpu_busy_outside_fb"),
            "gpu_busy": busy,
            "clock": clock,
            "background": False,
            **options,
        }
    )


def run_inferences(meter: InferenceMeter, clock: Clock, count: int, takes: float, every: float) -> None:
    for _ in range(count):
        with meter:
            clock.advance(takes)
        clock.advance(every - takes)


def meter_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ddcustom.feedback" and r.levelno >= logging.WARNING
    ]


def test_values_over_the_window(tmp_path: Path) -> None:
    clock, busy = Clock(), Busy(30.0, 50.0)
    meter = meter_in(tmp_path, clock, busy)

    run_inferences(meter, clock, 10, takes=0.05, every=0.5)  # 5 s: 2 inferences/s, 50 ms each
    meter.sample_gpu()
    run_inferences(meter, clock, 10, takes=0.05, every=0.5)
    meter.sample_gpu()
    values = meter.flush()

    assert values is not None
    assert values.inferences == 20
    assert values.inferences_per_second == pytest.approx(2.0)
    assert values.avg_inference_time_ms == pytest.approx(50.0)
    assert values.gpu_busy_percent == pytest.approx(40.0)
    assert values.gpu_load_per_inference == pytest.approx(20.0)  # 40 % busy / 2 inferences per second
    assert (tmp_path / "gpu_inference_fb").read_text() == "50\n"
    assert (tmp_path / "gpu_load_fb").read_text() == "20\n"
    # 50 ms of every 500 ms in inference: 10 % of the time; the GPU was busy 40 %: 30 points unexplained
    assert values.inference_busy_percent == pytest.approx(10.0)
    assert values.gpu_busy_outside_inference == pytest.approx(30.0)
    assert (tmp_path / "gpu_busy_outside_fb").read_text() == "30\n"


def test_the_window_rolls(tmp_path: Path) -> None:
    clock, busy = Clock(), Busy(90.0, 10.0)
    meter = meter_in(tmp_path, clock, busy, window_seconds=10.0)
    run_inferences(meter, clock, 10, takes=0.9, every=1.0)  # slow and busy: leaves the window below
    meter.sample_gpu()
    clock.advance(0.01)

    run_inferences(meter, clock, 40, takes=0.1, every=0.25)  # the last 10 s: 4/s, 100 ms, 10 % busy
    meter.sample_gpu()
    values = meter.flush()

    assert values is not None
    assert values.inferences == 40
    assert values.avg_inference_time_ms == pytest.approx(100.0)
    assert values.gpu_load_per_inference == pytest.approx(2.5)


def test_a_young_meter_counts_the_rate_over_its_age(tmp_path: Path) -> None:
    clock, busy = Clock(), Busy(20.0)
    meter = meter_in(tmp_path, clock, busy, window_seconds=10.0)

    run_inferences(meter, clock, 8, takes=0.1, every=0.5)  # 4 s old, 2/s
    values = meter.flush()  # no sample taken yet: the flush reads the GPU once itself

    assert values is not None
    assert values.inferences_per_second == pytest.approx(2.0)
    assert values.gpu_load_per_inference == pytest.approx(10.0)
    assert busy.calls == 1


def test_decorator_counts_each_call_and_keeps_the_function(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(50.0))

    @meter.measure
    def infer(x: int) -> int:
        """Double."""
        clock.advance(0.2)
        return 2 * x

    results = [infer(i) for i in range(5)]
    values = meter.flush()

    assert results == [0, 2, 4, 6, 8]
    assert infer.__name__ == "infer" and infer.__doc__ == "Double."
    assert values is not None and values.inferences == 5
    assert values.avg_inference_time_ms == pytest.approx(200.0)


def test_an_inference_that_raises_is_not_counted_and_the_error_goes_on(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(50.0))
    run_inferences(meter, clock, 2, takes=0.3, every=1.0)

    with pytest.raises(RuntimeError, match="CUDA out of memory"), meter:
        clock.advance(0.01)
        raise RuntimeError("CUDA out of memory")
    run_inferences(meter, clock, 1, takes=0.3, every=1.0)
    values = meter.flush()

    assert values is not None
    assert values.inferences == 3
    assert values.avg_inference_time_ms == pytest.approx(300.0)


def test_nested_blocks_time_each_level(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(50.0))

    with meter:
        clock.advance(1.0)
        with meter:
            clock.advance(0.5)
    values = meter.flush()

    assert values is not None
    assert values.inferences == 2
    assert values.avg_inference_time_ms == pytest.approx(1000.0)  # (1500 + 500) / 2


def test_before_the_first_inference_only_the_busy_outside_file_is_written_as_0(tmp_path: Path) -> None:
    # Start-up GPU work (loading, warm-up) is not counted, but the file is there: the component can tell
    # a meter that is running from one that stopped.
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(50.0))
    clock.advance(6)

    values = meter.flush()

    assert values is not None and values.inferences == 0 and values.gpu_busy_outside_inference == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_busy_outside_fb"]
    assert outside_file(tmp_path) == 0.0


def test_without_a_gpu_reading_and_an_inference_nothing_is_written(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy())
    clock.advance(6)

    assert meter.flush() is None
    assert list(tmp_path.iterdir()) == []


def test_flush_after_the_window_emptied_keeps_the_last_values(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(50.0, 0.0))
    run_inferences(meter, clock, 4, takes=0.25, every=0.5)
    assert meter.flush() is not None
    clock.advance(30)

    values = meter.flush()  # the application is idle, and so is the GPU
    assert values is not None and values.inferences == 0 and values.avg_inference_time_ms is None
    assert (tmp_path / "gpu_inference_fb").read_text() == "250\n"
    assert (tmp_path / "gpu_load_fb").read_text() == "25\n"
    assert (tmp_path / "gpu_busy_outside_fb").read_text() == "0\n"


def test_without_a_gpu_reading_only_the_time_file_is_written_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy())  # always None
    for _ in range(3):
        run_inferences(meter, clock, 5, takes=0.02, every=1.0)
        values = meter.flush()
        assert values is not None and values.gpu_load_per_inference is None

    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_inference_fb"]
    assert (tmp_path / "gpu_inference_fb").read_text() == "20\n"
    warnings = meter_warnings(caplog)
    assert len(warnings) == 1 and "writing only the inference time file" in warnings[0]


def test_a_failing_gpu_busy_function_does_not_stop_the_time_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> float:
        raise OSError("sensor gone")

    clock = Clock()
    meter = meter_in(tmp_path, clock, broken)
    run_inferences(meter, clock, 3, takes=0.1, every=1.0)
    meter.sample_gpu()

    assert meter.flush() is not None
    assert (tmp_path / "gpu_inference_fb").read_text() == "100\n"
    assert not (tmp_path / "gpu_load_fb").exists()
    assert any("sensor gone" in w for w in meter_warnings(caplog))


def test_busy_readings_are_clamped_to_0_100(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(250.0))
    run_inferences(meter, clock, 10, takes=0.1, every=1.0)

    values = meter.flush()

    assert values is not None and values.gpu_busy_percent == 100.0


def test_inferences_on_several_threads_are_all_counted(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(50.0))

    def work() -> None:
        for _ in range(500):
            with meter:
                pass

    threads = [threading.Thread(target=work, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "the meter blocked a thread"
    clock.advance(10)

    values = meter.flush()
    assert values is not None and values.inferences == 2000


def test_the_daemon_thread_samples_and_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    busy = Busy(*([60.0] * 10_000))
    meter = InferenceMeter(
        str(tmp_path / "load"), str(tmp_path / "time"), flush_seconds=0.05, sample_seconds=0.01, gpu_busy=busy
    )
    flushes = [0]
    flush = meter.flush

    def counted_flush() -> Any:
        flushes[0] += 1
        return flush()

    monkeypatch.setattr(meter, "flush", counted_flush)

    def infer_then_look() -> bool:
        with meter:
            time.sleep(0.002)
        return (tmp_path / "load").exists() and busy.calls >= 5

    try:
        poll(infer_then_look, "the daemon thread to sample and write the files", timeout=20)
    finally:
        meter.close()

    assert (tmp_path / "load").exists() and (tmp_path / "time").exists()
    # A flush reads the GPU itself only when the window holds no sample: more readings than flushes
    # means the thread samples between flushes.
    assert busy.calls > flushes[0] >= 1
    assert float((tmp_path / "load").read_text()) > 0


def test_bad_periods_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        InferenceMeter(str(tmp_path / "l"), str(tmp_path / "t"), flush_seconds=0, background=False)


# ---- the default GPU busy reader ----------------------------------------------------------------------


def test_gpu_busy_reader_reads_only_the_gpus_the_process_uses() -> None:
    # The application runs on GPU 1; GPU 0 belongs to another (allowed) model server.
    me = os.getpid()
    nvml = FakeNvml(
        [
            FakeGpu(gpu_percent=90, processes=[(me + 1, 1 << 30)]),
            FakeGpu(gpu_percent=30, processes=[(me, 1 << 30)]),
        ]
    )
    reader = GpuBusyReader(nvml=nvml, sysfs_root=str(GPU_FIXTURES / "no-such-sysfs"))

    assert reader() == [30.0]


@pytest.mark.parametrize("driver_has_v3", [True, False])
def test_gpu_busy_reader_lists_processes_on_old_drivers_too(driver_has_v3: bool) -> None:
    me = os.getpid()
    gpus = [FakeGpu(gpu_percent=90), FakeGpu(gpu_percent=30, processes=[(me, 1 << 30)])]
    reader = GpuBusyReader(
        nvml=FakeNvml(gpus, driver_has_v3=driver_has_v3), sysfs_root=str(GPU_FIXTURES / "x")
    )

    assert reader() == [30.0]


def test_gpu_busy_reader_counts_every_gpu_while_the_process_has_no_context_or_no_list() -> None:
    gpus = [FakeGpu(gpu_percent=90), FakeGpu(gpu_percent=30, processes=[(1, 1 << 30)])]
    reader = GpuBusyReader(nvml=FakeNvml(gpus), sysfs_root=str(GPU_FIXTURES / "no-such-sysfs"))
    assert reader() == [90.0, 30.0]

    for gpu in gpus:  # GPUs that cannot list their processes count
        gpu.errors = {"processes": pynvml.NVML_ERROR_NOT_SUPPORTED}
    assert reader() == [90.0, 30.0]
    gpus[1].errors = {}
    gpus[1].processes = [(os.getpid(), 1 << 30)]
    assert reader() == [90.0, 30.0]  # GPU 0 still cannot say whether the process uses it


def test_gpu_busy_reader_reads_each_gpu_and_initialises_nvml_once() -> None:
    nvml = FakeNvml([FakeGpu(gpu_percent=20), FakeGpu(gpu_percent=60)])
    reader = GpuBusyReader(nvml=nvml, sysfs_root=str(GPU_FIXTURES / "no-such-sysfs"))

    readings = [reader() for _ in range(3)]
    reader.close()

    assert readings == [[20.0, 60.0]] * 3
    assert (nvml.init_calls, nvml.shutdown_calls) == (1, 1)


def test_gpu_busy_reader_without_nvml_reads_the_jetson_load() -> None:
    nvml = FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    reader = GpuBusyReader(nvml=nvml, sysfs_root=str(GPU_FIXTURES / "jetson-gpu0"))

    assert reader() == pytest.approx([43.1])
    assert nvml.init_calls == 1


def test_gpu_busy_reader_without_any_gpu_gives_none() -> None:
    nvml = FakeNvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    reader = GpuBusyReader(nvml=nvml, sysfs_root=str(GPU_FIXTURES / "no-such-sysfs"))

    assert [reader(), reader()] == [None, None]
    assert nvml.init_calls == 1


@pytest.mark.parametrize("device_list_error", [None, pynvml.NVML_ERROR_NO_PERMISSION])
def test_gpu_busy_reader_shuts_nvml_down_when_it_gives_no_gpu(device_list_error: Optional[int]) -> None:
    nvml = FakeNvml([] if device_list_error is None else [FakeGpu()], count_error=device_list_error)
    reader = GpuBusyReader(nvml=nvml, sysfs_root=str(GPU_FIXTURES / "no-such-sysfs"))

    assert [reader(), reader()] == [None, None]
    assert (nvml.init_calls, nvml.shutdown_calls, nvml.initialised) == (1, 1, False)
    reader.close()
    assert nvml.shutdown_calls == 1


def test_gpu_busy_reader_error_on_a_read_gives_none() -> None:
    gpu = FakeGpu(gpu_percent=70)
    nvml = FakeNvml([gpu])
    reader = GpuBusyReader(nvml=nvml, sysfs_root=str(GPU_FIXTURES / "no-such-sysfs"))
    assert reader() == [70.0]

    gpu.errors = {"utilization": pynvml.NVML_ERROR_GPU_IS_LOST}
    assert reader() is None


# ---- GPU busy % outside inferences ---------------------------------------------------------------------


def run_and_sample(meter: InferenceMeter, clock: Clock, count: int, takes: float, every: float) -> None:
    """Inferences as run_inferences, with a GPU reading after each (the daemon thread's job)."""
    for _ in range(count):
        with meter:
            clock.advance(takes)
        clock.advance(every - takes)
        meter.sample_gpu()


def outside_file(tmp_path: Path) -> float:
    return float((tmp_path / "gpu_busy_outside_fb").read_text())


@pytest.mark.parametrize(
    ("gpu_busy", "expected_outside"),
    [
        (30.0, 0.0),  # benign: the GPU is busy only while an inference runs (40 % of the time)
        (40.0, 0.0),  # ...even when its kernels fill each inference
        (65.0, 25.0),  # a miner in the application's own process adds its duty cycle
    ],
)
def test_busy_outside_inference_is_the_busy_share_inferences_do_not_explain(
    tmp_path: Path, gpu_busy: float, expected_outside: float
) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[gpu_busy] * 100))
    run_and_sample(meter, clock, 60, takes=0.1, every=0.25)  # 15 s: 4 inferences/s of 100 ms

    values = meter.flush()

    assert values is not None
    assert values.inference_busy_percent == pytest.approx(40.0)
    assert values.gpu_busy_outside_inference == pytest.approx(expected_outside)
    assert outside_file(tmp_path) == pytest.approx(expected_outside)


def test_busy_outside_inference_reads_the_busiest_gpu(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[[5.0, 45.0]] * 100))
    run_and_sample(meter, clock, 20, takes=0.05, every=0.5)  # 10 % of the time in inference

    values = meter.flush()

    assert values is not None
    assert values.gpu_busy_percent == pytest.approx(25.0)  # the load file keeps the mean over the GPUs
    assert values.gpu_busy_outside_inference == pytest.approx(35.0)  # a miner on the second GPU shows


def test_an_inference_still_running_counts_as_inference(tmp_path: Path) -> None:
    # Long inferences back to back keep the GPU busy all the time. At a flush one is always running: if
    # only finished inferences counted, its part of the window would look like unexplained GPU work.
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[100.0] * 100))
    for _ in range(4):
        with meter:
            for _ in range(4):
                clock.advance(0.5)
                meter.sample_gpu()
    with meter:
        clock.advance(1.0)
        meter.sample_gpu()
        values = meter.flush()  # 1 s into the fifth inference

    assert values is not None
    assert values.inference_busy_percent == pytest.approx(100.0)
    assert values.gpu_busy_outside_inference == pytest.approx(0.0)


def test_overlapping_inferences_count_their_time_once(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[50.0] * 100))
    for _ in range(6):  # every 2 s: 1 s of inference, with a nested 0.5 s one inside
        with meter:
            clock.advance(0.25)
            with meter:
                clock.advance(0.5)
            clock.advance(0.25)
        clock.advance(0.5)
        meter.sample_gpu()
        clock.advance(0.5)
        meter.sample_gpu()

    values = meter.flush()

    assert values is not None
    assert values.inference_busy_percent == pytest.approx(50.0)  # not 75: the nested time is inside
    assert values.gpu_busy_outside_inference == pytest.approx(0.0)


def test_gpu_work_before_the_first_inference_is_not_counted(tmp_path: Path) -> None:
    # Loading the model and warming up keep the GPU busy before the application's first inference.
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[100.0] * 6, *[20.0] * 100))
    for _ in range(6):
        clock.advance(0.5)
        meter.sample_gpu()
    run_and_sample(meter, clock, 16, takes=0.1, every=0.5)  # 8 s: 20 % in inference, 20 % busy

    values = meter.flush()

    assert values is not None
    assert values.gpu_busy_outside_inference == pytest.approx(0.0, abs=1e-9)


def test_an_idle_application_with_a_busy_gpu_writes_only_the_outside_file(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[10.0] * 20, *[30.0] * 40))
    run_and_sample(meter, clock, 20, takes=0.1, every=0.5)
    assert meter.flush() is not None
    time_before = (tmp_path / "gpu_inference_fb").read_text()
    for _ in range(30):  # 15 s without an inference while something keeps the GPU 30 % busy
        clock.advance(0.5)
        meter.sample_gpu()

    values = meter.flush()

    assert values is not None and values.inferences == 0
    assert values.gpu_busy_outside_inference == pytest.approx(30.0)
    assert outside_file(tmp_path) == pytest.approx(30.0)
    assert (tmp_path / "gpu_inference_fb").read_text() == time_before


def test_the_busy_outside_file_goes_next_to_the_time_file_by_default(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[50.0] * 100), busy_outside_file=None)
    run_and_sample(meter, clock, 20, takes=0.1, every=0.5)

    values = meter.flush()

    assert values is not None and values.gpu_busy_outside_inference == pytest.approx(30.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gpu_busy_outside_fb",
        "gpu_inference_fb",
        "gpu_load_fb",
    ]
    assert InferenceMeter(background=False).busy_outside_file == "/var/gpu_busy_outside_fb"  # the component's


def test_a_file_that_cannot_be_written_does_not_stop_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    unwritable = str(tmp_path / "no-such-folder" / "outside")
    meter = meter_in(tmp_path, clock, Busy(*[50.0] * 100), busy_outside_file=unwritable)
    for _ in range(3):
        run_and_sample(meter, clock, 10, takes=0.1, every=0.5)
        assert meter.flush() is not None

    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_inference_fb", "gpu_load_fb"]
    warnings = meter_warnings(caplog)
    assert len(warnings) == 1 and "cannot write" in warnings[0] and "no-such-folder" in warnings[0]


def test_an_application_idle_since_start_is_counted_after_startup_seconds(tmp_path: Path) -> None:
    # A service waiting for its first request is not blind forever: after startup_seconds, the GPU
    # work of a miner started at import is busy time that no inference explains.
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[25.0] * 1000), startup_seconds=60)
    for _ in range(100):  # 50 s: start-up, not counted
        clock.advance(0.5)
        meter.sample_gpu()
    assert meter.flush() is not None and outside_file(tmp_path) == 0.0
    for _ in range(40):  # 20 s more: past start-up
        clock.advance(0.5)
        meter.sample_gpu()

    values = meter.flush()

    assert values is not None and values.inferences == 0
    assert values.gpu_busy_outside_inference == pytest.approx(25.0)


@pytest.mark.parametrize(
    "reading",
    [
        Decimal("42.5"),
        Fraction(85, 2),
        numpy.float32(42.5),
        numpy.array(42.5),  # 0-d: a number, not a sequence (as a 0-d torch tensor)
        numpy.array([42.5]),
        [numpy.float64(42.5), None],
    ],
    ids=["Decimal", "Fraction", "numpy.float32", "numpy 0-d array", "numpy 1-GPU array", "list"],
)
@pytest.mark.filterwarnings("error")  # numpy 1.x warned on float() of a 1-element array, 2.x refuses it
def test_gpu_busy_readings_of_any_number_type_are_taken(tmp_path: Path, reading: Any) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[reading] * 100))
    run_and_sample(meter, clock, 40, takes=0.05, every=0.5)

    values = meter.flush()

    assert values is not None and values.gpu_busy_percent == pytest.approx(42.5)


@pytest.mark.parametrize("reading", ["42", b"42"])
def test_gpu_busy_text_is_refused_not_read_as_digits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, reading: Any
) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[reading] * 100))
    run_and_sample(meter, clock, 10, takes=0.05, every=0.5)

    values = meter.flush()

    assert values is not None and values.gpu_busy_percent is None
    assert any("GPU busy function gave" in w for w in meter_warnings(caplog))


def test_measure_refuses_a_coroutine_function(tmp_path: Path) -> None:
    meter = meter_in(tmp_path, Clock(), Busy())

    async def infer() -> None:
        pass

    with pytest.raises(TypeError, match="coroutine function"):
        meter.measure(infer)


def test_a_long_flush_period_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    meter_in(tmp_path, Clock(), Busy())  # the default 5 s: no warning
    assert meter_warnings(caplog) == []
    InferenceMeter(str(tmp_path / "l"), str(tmp_path / "t"), flush_seconds=20, background=False)
    [warning] = meter_warnings(caplog)
    assert "MeterStaleSeconds" in warning


def test_a_gpu_busy_function_giving_garbage_is_said_and_gives_no_reading(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[["busy"]] * 10))
    run_and_sample(meter, clock, 5, takes=0.1, every=0.5)

    values = meter.flush()

    assert values is not None
    assert values.gpu_busy_percent is None and values.gpu_busy_outside_inference is None
    assert any("GPU busy function gave" in w for w in meter_warnings(caplog))


def test_an_inference_that_raises_still_counts_as_the_applications_gpu_time(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[40.0] * 100))
    for _ in range(40):  # 10 s of 100 ms inferences every 250 ms, every one of them failing
        with pytest.raises(RuntimeError), meter:
            clock.advance(0.1)
            raise RuntimeError("bad input")
        clock.advance(0.15)
        meter.sample_gpu()

    values = meter.flush()

    assert values is not None and values.inferences == 0  # not inferences for the time and load files
    assert values.inference_busy_percent == pytest.approx(40.0)
    assert values.gpu_busy_outside_inference == pytest.approx(0.0)


def test_record_counts_an_inference_timed_elsewhere(tmp_path: Path) -> None:
    clock = Clock()
    meter = meter_in(tmp_path, clock, Busy(*[40.0] * 10))
    clock.advance(5)
    meter.record(0.25)  # ended now, after 250 ms
    meter.sample_gpu()

    values = meter.flush()

    assert values is not None and values.inferences == 1
    assert values.avg_inference_time_ms == pytest.approx(250.0)
