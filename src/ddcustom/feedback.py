"""The inference meter: what the device's ML application wraps around each inference.

It measures the inference time and rate over a rolling window, samples how busy the GPU is over the same
window, and writes the three feedback files the component reads (docs/gpu.md):

- the time file: mean inference time in milliseconds;
- the load file: GPU busy % over the window divided by inferences per second ("GPU load per inference");
- the busy-outside file: how many points the busiest GPU's busy % exceeds the share of the window in
  which an inference was running. An application whose GPU work happens inside its inferences keeps it
  near 0 whatever its rate or model; a miner hidden in the application's own process raises it by about
  its duty cycle, and no process list can show that miner.

Files are replaced atomically (``fileio.write_atomic``), so a reader sees the old value or the new one,
never a partial file. Writing and GPU sampling happen on a small daemon thread;
the inference path only takes a lock and appends to a deque.

An inference whose block raises is not counted: a failure is not an inference, and fast failures would
hide the slowdown a miner causes. The exception goes on to the caller unchanged.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union, cast

from ddcustom.device.config import DEFAULTS, busy_outside_file_next_to
from ddcustom.device.fileio import write_atomic
from ddcustom.device.sources.gpu.jetson import find_jetson_load_file, read_jetson_load
from ddcustom.device.sources.gpu.nvml import ComputeProcesses, shutdown_nvml, start_nvml

log = logging.getLogger(__name__)

# The component's defaults: the meter writes where the component reads unless both are told otherwise.
DEFAULT_LOAD_FILE: str = DEFAULTS["GpuLoadFeedbackFile"]
DEFAULT_TIME_FILE: str = DEFAULTS["InferenceTimeFeedbackFile"]
DEFAULT_STALE_SECONDS: int = DEFAULTS["MeterStaleSeconds"]
# NVML's utilisation covers the last 1/6 s to 1 s: a reading taken less than this after the first
# inference started may still show the application's start-up (model load, warm-up kernels).
GPU_READING_SPAN_SECONDS = 1.0
MAX_FEEDBACK_VALUE = 1e15  # the component reads at most 64 bytes; no real value comes near this

F = TypeVar("F", bound=Callable[..., Any])
Timed = TypeVar("Timed", bound=tuple[float, ...])  # window entries: (time, ...)
# A GPU busy reading: one percent, one percent per GPU, or None when unknown.
GpuBusy = Callable[[], Union[float, Sequence[float], None]]


def write_feedback_value(path: str, value: float) -> None:
    """Write one non-negative number to ``path`` atomically (mode 0644), e.g. ``"85"`` or ``"12.5"``."""
    if not math.isfinite(value) or not 0 <= value < MAX_FEEDBACK_VALUE:
        raise ValueError(
            f"feedback value must be a finite number from 0 to {MAX_FEEDBACK_VALUE:g}, not {value!r}"
        )
    text = f"{value:.3f}".rstrip("0").rstrip(".") + "\n"
    # 0644: the component may run as another user; not durable: rewritten every few seconds (fileio)
    write_atomic(path, text.encode("ascii"), durable=False, mode=0o644)


@dataclass(frozen=True)
class FeedbackValues:
    """What one flush computed (and wrote) over the window."""

    inferences: int
    inferences_per_second: float
    avg_inference_time_ms: Optional[float]  # None: no inference in the window
    gpu_busy_percent: Optional[float]  # mean over the GPUs; None: no GPU reading
    gpu_load_per_inference: Optional[float]  # None: no GPU reading or no inference
    inference_busy_percent: Optional[float]  # share of the window with an inference running
    gpu_busy_outside_inference: Optional[float]  # None: no GPU reading, or no inference yet


class GpuBusyReader:
    """GPU busy % now, one value per GPU: NVML utilisation, else the Jetson GPU load, else None.

    With NVML, only the GPUs on which this process (``pid``) has a CUDA context count: another GPU's work
    belongs to other processes, which the component attributes itself. Until the process has a context,
    or where NVML cannot list it (a PID namespace), every GPU counts. A miner in this process has a
    context on each GPU it uses, so it is always on a GPU that counts.
    NVML is initialised once, on the first call; a failed start is not retried.
    """

    def __init__(
        self, nvml: Optional[Any] = None, sysfs_root: str = "/sys", pid: Optional[int] = None
    ) -> None:
        self._pid = os.getpid() if pid is None else pid
        self._nvml: Any = nvml  # the module once started (None before, or without NVML)
        self._sysfs_root = Path(sysfs_root)
        self._handles: Optional[list[Any]] = None  # None: not started yet; []: no NVML GPU
        self._list_processes: Callable[[Any], list[Any]] = lambda _handle: []  # set once NVML starts
        self._jetson_load_file: Optional[Path] = None
        self._lock = threading.Lock()

    def __call__(self) -> Optional[list[float]]:
        with self._lock:
            if self._handles is None:
                self._nvml, self._handles, problem = start_nvml(self._nvml)
                if self._handles:
                    self._list_processes = ComputeProcesses(self._nvml)
                else:
                    log.info("%s: no NVML GPU busy reading", problem)
                    self._jetson_load_file = find_jetson_load_file(self._sysfs_root)
            if self._jetson_load_file is not None:
                load = read_jetson_load(self._jetson_load_file)
                return [load] if load is not None else None
            if not self._handles:
                return None
            try:
                busy = [float(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in self._handles]
            except self._nvml.NVMLError as exc:
                log.debug("NVML utilisation failed: %s", exc)
                return None
            own = [b for h, b in zip(self._handles, busy) if self._has_context(h)]
            return own or busy

    def _has_context(self, handle: Any) -> bool:
        try:
            return any(p.pid == self._pid for p in self._list_processes(handle))
        except self._nvml.NVMLError as exc:
            log.debug("NVML process list failed: %s", exc)
            return True  # unknown: the GPU counts

    def close(self) -> None:
        with self._lock:
            if self._handles:
                shutdown_nvml(self._nvml)
            self._handles = []


class InferenceMeter:
    """Wrap each inference: ``with meter: model(x)`` or ``@meter.measure``; thread-safe.

    ``gpu_busy``: a function returning the GPU busy % now, as one percent or a list of percents (one per
    GPU), or None when unknown; by default ``GpuBusyReader()`` (NVML, else the Jetson GPU load).
    ``busy_outside_file``: where to write the GPU busy % outside inferences; by default
    ``gpu_busy_outside_fb`` in the time file's folder (``/var/gpu_busy_outside_fb`` with the defaults).
    ``startup_seconds``: GPU work before the first inference is not counted, for at most this long after
    the meter was created (loading and warming up a model); after that, an idle GPU is expected.
    ``background=False`` starts no thread: call ``sample_gpu()`` and ``flush()`` yourself.
    """

    def __init__(
        self,
        load_file: str = DEFAULT_LOAD_FILE,
        time_file: str = DEFAULT_TIME_FILE,
        flush_seconds: float = 5.0,
        window_seconds: float = 10.0,
        gpu_busy: Optional[GpuBusy] = None,
        sample_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
        busy_outside_file: Optional[str] = None,
        startup_seconds: float = 120.0,
    ) -> None:
        if min(flush_seconds, window_seconds, sample_seconds) <= 0 or startup_seconds < 0:
            raise ValueError(
                "flush_seconds, window_seconds and sample_seconds must be positive, "
                "startup_seconds zero or more"
            )
        self.load_file = load_file
        self.time_file = time_file
        self.busy_outside_file = busy_outside_file or busy_outside_file_next_to(time_file)
        if 3 * flush_seconds > DEFAULT_STALE_SECONDS:
            log.warning(
                "inference meter: flush_seconds %g is long; the component takes a busy-outside file not "
                "rewritten for MeterStaleSeconds (default %d s) as a stopped application: keep flush_seconds "
                "under a third of MeterStaleSeconds",
                flush_seconds,
                DEFAULT_STALE_SECONDS,
            )
        self._startup_seconds = startup_seconds
        self._flush_seconds = flush_seconds
        self._window = window_seconds
        self._sample_seconds = sample_seconds
        self._clock = clock
        self._own_gpu_busy = GpuBusyReader() if gpu_busy is None else None
        self._gpu_busy: GpuBusy = gpu_busy or cast(GpuBusyReader, self._own_gpu_busy)
        self._started_at = clock()
        self._inferences: deque[tuple[float, float]] = deque()  # (end time, duration s)
        self._failed: deque[tuple[float, float]] = deque()  # the same, of inferences that raised
        self._busy: deque[tuple[float, float, float]] = deque()  # (time, mean busy %, busiest GPU %)
        self._running: dict[int, float] = {}  # inferences in progress: token -> start time
        self._first_start: Optional[float] = None  # when the first inference started
        self._tokens = itertools.count()
        self._lock = threading.Lock()  # guards the deques, _running and _first_start
        self._flush_lock = threading.Lock()  # one flush at a time
        self._local = threading.local()  # per-thread stack of (token, start) (nested blocks allowed)
        self._said: set[str] = set()
        self._last_flush = self._started_at
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if background:
            self._thread = threading.Thread(target=self._run, name="inference-meter", daemon=True)
            self._thread.start()

    # ---- measuring --------------------------------------------------------------------------------

    def __enter__(self) -> InferenceMeter:
        stack: Optional[list[tuple[int, float]]] = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        token, start = next(self._tokens), self._clock()
        with self._lock:
            self._running[token] = start
            if self._first_start is None:
                self._first_start = start
        stack.append((token, start))
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], *_: object) -> None:
        token, start = self._local.stack.pop()
        now = self._clock()
        with self._lock:  # one step: a flush must see the inference as running or as done
            del self._running[token]
            if exc_type is None:
                self._add_inference(now, now - start)
            else:  # not an inference, but its GPU work was the application's
                self._failed.append((now, now - start))
                _drop_older(self._failed, now - self._window)

    def measure(self, func: F) -> F:
        """Decorator: each call of ``func`` is one inference."""
        if inspect.iscoroutinefunction(func):  # the call would only create the coroutine
            raise TypeError(
                f"meter.measure cannot time the coroutine function {func.__qualname__}: use "
                "`with meter:` around the awaited GPU work inside it"
            )

        @functools.wraps(func)
        def measured(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return cast(F, measured)

    def record(self, duration_seconds: float) -> None:
        """Count one inference that took ``duration_seconds`` and ended now (for timings made elsewhere)."""
        now = self._clock()
        with self._lock:
            self._add_inference(now, duration_seconds)

    def _add_inference(self, end: float, duration_seconds: float) -> None:  # holding self._lock
        duration = max(0.0, duration_seconds)
        self._inferences.append((end, duration))
        _drop_older(self._inferences, end - self._window)
        if self._first_start is None or end - duration < self._first_start:
            self._first_start = end - duration

    def sample_gpu(self) -> Optional[float]:
        """Take one GPU busy reading into the window (the daemon thread does this every sample_seconds).

        Returns the mean over the GPUs, None when there is no reading.
        """
        reading = self._read_gpu_busy()
        if reading is None:
            return None
        now = self._clock()
        with self._lock:
            self._busy.append((now, *reading))
            _drop_older(self._busy, now - self._window)
        return reading[0]

    # ---- writing ----------------------------------------------------------------------------------

    def flush(self) -> Optional[FeedbackValues]:
        """Compute the window's values and write the files now; None when there was nothing to write.

        The time and load files are written when the window holds an inference. The busy-outside file is
        written whenever there is a GPU reading, even when the application is idle: GPU work while it is
        idle is work its inferences do not explain. Before the first inference it holds 0.
        """
        with self._flush_lock:
            now = self._clock()
            self._last_flush = now
            oldest = now - self._window
            with self._lock:
                _drop_older(self._inferences, oldest)
                _drop_older(self._failed, oldest)
                _drop_older(self._busy, oldest)
                inferences = list(self._inferences)
                spans = [(end - d, end) for end, d in (*self._inferences, *self._failed)]
                spans += [(start, now) for start in self._running.values()]
                busy = list(self._busy)
                first_start = self._first_start
            if not busy:  # no sample yet in this window (just started, or no daemon thread)
                reading = self._read_gpu_busy()
                busy = [(now, *reading)] if reading is not None else []
            durations = [d for _, d in inferences]
            span = min(self._window, now - self._started_at)
            rate = len(durations) / span if span > 0 else 0.0
            busy_mean = sum(b[1] for b in busy) / len(busy) if busy else None
            counted_from = self._started_at + self._startup_seconds
            if first_start is not None:
                counted_from = min(counted_from, first_start + GPU_READING_SPAN_SECONDS)
            inference_busy, outside = _busy_outside_inference(spans, busy, counted_from, now, oldest)
            values = FeedbackValues(
                inferences=len(durations),
                inferences_per_second=rate,
                avg_inference_time_ms=1000.0 * sum(durations) / len(durations) if durations else None,
                gpu_busy_percent=busy_mean,
                gpu_load_per_inference=busy_mean / rate if busy_mean is not None and rate > 0 else None,
                inference_busy_percent=inference_busy,
                gpu_busy_outside_inference=outside,
            )
            self._write(values)
            if values.avg_inference_time_ms is None and outside is None:
                return None
            return values

    def close(self) -> None:
        """Stop the daemon thread, write once more, release NVML."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self._sample_seconds))
        try:
            self.flush()
        except (OSError, ValueError) as exc:
            log.warning("inference meter: last flush failed: %s", exc)
        if self._own_gpu_busy is not None:
            self._own_gpu_busy.close()

    def _write(self, values: FeedbackValues) -> None:
        """Write each file that has a value; a file that cannot be written does not stop the others."""
        if values.avg_inference_time_ms is None:
            self._say_once("no inference in the window: time and load files left as they are")
        else:
            self._write_one(self.time_file, values.avg_inference_time_ms)
            if values.gpu_load_per_inference is not None:
                self._write_one(self.load_file, values.gpu_load_per_inference)
            else:
                self._say_once(
                    f"no GPU busy reading: writing only the inference time file {self.time_file}",
                    level=logging.WARNING,
                )
        if values.gpu_busy_outside_inference is not None:
            self._write_one(self.busy_outside_file, values.gpu_busy_outside_inference)

    def _write_one(self, path: str, value: float) -> None:
        try:
            write_feedback_value(path, value)
        except OSError as exc:
            self._say_once(
                f"inference meter: cannot write {path}: {exc.strerror or exc}", level=logging.WARNING
            )

    def _run(self) -> None:
        while not self._stop.wait(self._sample_seconds):
            try:
                self.sample_gpu()
                if self._clock() - self._last_flush >= self._flush_seconds:
                    self.flush()
            except Exception as exc:  # the meter must never stop metering: log and go on
                self._say_once(f"inference meter: {type(exc).__name__}: {exc}", level=logging.WARNING)

    def _read_gpu_busy(self) -> Optional[tuple[float, float]]:
        """(mean, busiest) GPU busy % over the GPUs, each clamped to 0-100; None: no reading."""
        try:
            reading = self._gpu_busy()
        except Exception as exc:  # a caller's function failing is no reason to stop writing times
            self._say_once(f"GPU busy function failed: {type(exc).__name__}: {exc}", level=logging.WARNING)
            return None
        if reading is None:
            return None
        try:  # one number of any kind (float, numpy scalar or 0-d array, 0-d tensor, Decimal), or several
            if isinstance(reading, (str, bytes)):
                raise TypeError("text is not a number")
            # a sequence of readings, or one (a 0-d array or tensor has __iter__ but is one number)
            if hasattr(reading, "__iter__") and getattr(reading, "ndim", 1) != 0:
                numbers = [float(v) for v in reading if v is not None]
            else:
                numbers = [float(reading)]  # type: ignore[arg-type]
            percents = [min(100.0, max(0.0, v)) for v in numbers if math.isfinite(v)]
        except (TypeError, ValueError) as exc:
            self._say_once(f"GPU busy function gave {reading!r}: {exc}", level=logging.WARNING)
            return None
        if not percents:
            return None
        return sum(percents) / len(percents), max(percents)

    def _say_once(self, message: str, level: int = logging.INFO) -> None:
        if message not in self._said:
            self._said.add(message)
            log.log(level, "%s", message)


def _busy_outside_inference(
    spans: list[tuple[float, float]],
    busy: list[tuple[float, float, float]],
    counted_from: float,
    now: float,
    oldest: float,
) -> tuple[Optional[float], Optional[float]]:
    """(% of the time an inference ran, busiest GPU's busy % beyond it), over the window, from
    ``counted_from`` on (the end of start-up). Without a GPU reading: (None, None). During start-up:
    (None, 0.0), so the file is there from the start: the component takes a file that is not rewritten
    for a while as a sign that the meter, and the application, stopped.

    ``spans``: (start, end) of the inferences, finished or running, in any order; they may overlap.
    """
    if not busy:
        return None, None
    since = max(oldest, counted_from)
    readings = [busiest for at, _, busiest in busy if at >= since]
    if not readings or now <= since:
        return None, 0.0  # start-up: GPU work before the first inference is not counted
    covered, reach = 0.0, since
    for start, end in sorted(spans):  # length of the union of the spans, clipped to [since, now]
        start, end = max(start, reach), min(end, now)
        if end > start:
            covered += end - start
            reach = end
    inference_busy = 100.0 * covered / (now - since)
    return inference_busy, max(0.0, sum(readings) / len(readings) - inference_busy)


def _drop_older(entries: deque[Timed], oldest: float) -> None:
    while entries and entries[0][0] < oldest:
        entries.popleft()
