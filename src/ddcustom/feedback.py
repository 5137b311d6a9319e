"""The inference meter: what the device's ML application wraps around each inference.

It measures the inference time and rate over a rolling window, samples how busy the GPU is over the same
window, and writes the two feedback files the component reads (docs/gpu.md):

- the time file: mean inference time in milliseconds;
- the load file: GPU busy % over the window divided by inferences per second ("GPU load per inference").

Files are replaced atomically (temp file in the same directory, fsync, ``os.replace``), so a reader sees the
old value or the new one, never a partial file. Writing and GPU sampling happen on a small daemon thread;
the inference path only takes a lock and appends to a deque.

An inference whose block raises is not counted: a failure is not an inference, and fast failures would
hide the slowdown a miner causes. The exception goes on to the caller unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar, cast

from ddcustom.sources.gpu import MAX_SYSFS_BYTES, find_jetson_load_file, parse_jetson_load, read_bounded

log = logging.getLogger(__name__)

DEFAULT_LOAD_FILE = "/var/gpu_load_fb"
DEFAULT_TIME_FILE = "/var/gpu_inference_fb"
MAX_FEEDBACK_VALUE = 1e15  # the component reads at most 64 bytes; no real value comes near this

F = TypeVar("F", bound=Callable[..., Any])


def write_feedback_value(path: str, value: float) -> None:
    """Write one non-negative number to ``path`` atomically (mode 0644), e.g. ``"85"`` or ``"12.5"``."""
    if not math.isfinite(value) or not 0 <= value < MAX_FEEDBACK_VALUE:
        raise ValueError(
            f"feedback value must be a finite number from 0 to {MAX_FEEDBACK_VALUE:g}, not {value!r}"
        )
    text = f"{value:.3f}".rstrip("0").rstrip(".") + "\n"
    directory, name = os.path.split(os.path.abspath(path))
    fd, temp_path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; the component may run as another user
            os.fsync(f.fileno())
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise


@dataclass(frozen=True)
class FeedbackValues:
    """What one flush computed (and wrote) over the window."""

    inferences: int
    inferences_per_second: float
    avg_inference_time_ms: float
    gpu_busy_percent: Optional[float]  # None: no GPU reading
    gpu_load_per_inference: Optional[float]  # None: no GPU reading


class GpuBusyReader:
    """GPU busy % now: NVML utilisation (mean over the GPUs), else the Jetson GPU load, else None.

    NVML is initialised once, on the first call; a failed start is not retried.
    """

    def __init__(self, nvml: Optional[Any] = None, sysfs_root: str = "/sys") -> None:
        self._nvml = nvml
        self._sysfs_root = Path(sysfs_root)
        self._handles: Optional[list[Any]] = None  # None: not started yet; []: no NVML GPU
        self._jetson_load_file: Optional[Path] = None
        self._lock = threading.Lock()

    def __call__(self) -> Optional[float]:
        with self._lock:
            if self._handles is None:
                self._handles = self._start()
                if not self._handles:
                    self._jetson_load_file = find_jetson_load_file(self._sysfs_root)
            if self._jetson_load_file is not None:
                text = read_bounded(self._jetson_load_file, MAX_SYSFS_BYTES)
                return parse_jetson_load(text) if text is not None else None
            if not self._handles or self._nvml is None:
                return None
            try:
                values = [self._nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles]
            except self._nvml.NVMLError as exc:
                log.debug("NVML utilisation failed: %s", exc)
                return None
            return sum(values) / len(values)

    def close(self) -> None:
        with self._lock:
            if self._handles and self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError as exc:
                    log.debug("nvmlShutdown failed: %s", exc)
            self._handles = []

    def _start(self) -> list[Any]:
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                log.info("nvidia-ml-py (pynvml) is not installed: no GPU busy reading")
                return []
            self._nvml = pynvml
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            log.info("NVML not usable (%s): no GPU busy reading", exc)
            return []
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            log.info("NVML device list failed (%s): no GPU busy reading", exc)
            handles = []
        if not handles:  # NVML stays initialised only while it has a GPU to read
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as exc:
                log.debug("nvmlShutdown failed: %s", exc)
        return handles


class InferenceMeter:
    """Wrap each inference: ``with meter: model(x)`` or ``@meter.measure``; thread-safe.

    ``gpu_busy``: a function returning the GPU busy % now (None when unknown); by default
    ``GpuBusyReader()`` (NVML, else the Jetson GPU load).
    ``background=False`` starts no thread: call ``sample_gpu()`` and ``flush()`` yourself.
    """

    def __init__(
        self,
        load_file: str = DEFAULT_LOAD_FILE,
        time_file: str = DEFAULT_TIME_FILE,
        flush_seconds: float = 5.0,
        window_seconds: float = 10.0,
        gpu_busy: Optional[Callable[[], Optional[float]]] = None,
        sample_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        if min(flush_seconds, window_seconds, sample_seconds) <= 0:
            raise ValueError("flush_seconds, window_seconds and sample_seconds must be positive")
        self.load_file = load_file
        self.time_file = time_file
        self._flush_seconds = flush_seconds
        self._window = window_seconds
        self._sample_seconds = sample_seconds
        self._clock = clock
        self._own_gpu_busy = GpuBusyReader() if gpu_busy is None else None
        self._gpu_busy: Callable[[], Optional[float]] = gpu_busy or cast(GpuBusyReader, self._own_gpu_busy)
        self._started_at = clock()
        self._inferences: deque[tuple[float, float]] = deque()  # (end time, duration s)
        self._busy: deque[tuple[float, float]] = deque()  # (time, GPU busy %)
        self._lock = threading.Lock()  # guards the two deques
        self._flush_lock = threading.Lock()  # one flush at a time
        self._local = threading.local()  # per-thread stack of start times (nested blocks allowed)
        self._said: set[str] = set()
        self._last_flush = self._started_at
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if background:
            self._thread = threading.Thread(target=self._run, name="inference-meter", daemon=True)
            self._thread.start()

    # ---- measuring --------------------------------------------------------------------------------

    def __enter__(self) -> InferenceMeter:
        starts: Optional[list[float]] = getattr(self._local, "starts", None)
        if starts is None:
            starts = self._local.starts = []
        starts.append(self._clock())
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        start = self._local.starts.pop()
        if exc_type is None:
            self.record(self._clock() - start)

    def measure(self, func: F) -> F:
        """Decorator: each call of ``func`` is one inference."""

        @functools.wraps(func)
        def measured(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return cast(F, measured)

    def record(self, duration_seconds: float) -> None:
        """Count one inference that took ``duration_seconds`` and ended now (for timings made elsewhere)."""
        now = self._clock()
        with self._lock:
            self._inferences.append((now, max(0.0, duration_seconds)))
            _drop_older(self._inferences, now - self._window)

    def sample_gpu(self) -> Optional[float]:
        """Take one GPU busy reading into the window (the daemon thread does this every sample_seconds)."""
        busy = self._read_gpu_busy()
        if busy is not None:
            now = self._clock()
            with self._lock:
                self._busy.append((now, busy))
                _drop_older(self._busy, now - self._window)
        return busy

    # ---- writing ----------------------------------------------------------------------------------

    def flush(self) -> Optional[FeedbackValues]:
        """Compute the window's values and write the files now; None (nothing written) if no inference."""
        with self._flush_lock:
            now = self._clock()
            self._last_flush = now
            with self._lock:
                _drop_older(self._inferences, now - self._window)
                _drop_older(self._busy, now - self._window)
                durations = [d for _, d in self._inferences]
                busy_values = [b for _, b in self._busy]
            if not durations:
                self._say_once("no inference in the window: feedback files left as they are")
                return None
            if not busy_values:  # no sample yet in this window (just started, or no daemon thread)
                busy = self._read_gpu_busy()
                busy_values = [busy] if busy is not None else []
            span = min(self._window, now - self._started_at)
            rate = len(durations) / span if span > 0 else 0.0
            busy_mean = sum(busy_values) / len(busy_values) if busy_values else None
            load = busy_mean / rate if busy_mean is not None and rate > 0 else None
            values = FeedbackValues(
                inferences=len(durations),
                inferences_per_second=rate,
                avg_inference_time_ms=1000.0 * sum(durations) / len(durations),
                gpu_busy_percent=busy_mean,
                gpu_load_per_inference=load,
            )
            write_feedback_value(self.time_file, values.avg_inference_time_ms)
            if load is not None:
                write_feedback_value(self.load_file, load)
            else:
                self._say_once(
                    f"no GPU busy reading: writing only the inference time file {self.time_file}",
                    level=logging.WARNING,
                )
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

    def _run(self) -> None:
        while not self._stop.wait(self._sample_seconds):
            try:
                self.sample_gpu()
                if self._clock() - self._last_flush >= self._flush_seconds:
                    self.flush()
            except Exception as exc:  # the meter must never stop metering: log and go on
                self._say_once(f"inference meter: {type(exc).__name__}: {exc}", level=logging.WARNING)

    def _read_gpu_busy(self) -> Optional[float]:
        try:
            busy = self._gpu_busy()
        except Exception as exc:  # a caller's function failing is no reason to stop writing times
            self._say_once(f"GPU busy function failed: {type(exc).__name__}: {exc}", level=logging.WARNING)
            return None
        if busy is None or not math.isfinite(busy):
            return None
        return min(100.0, max(0.0, float(busy)))

    def _say_once(self, message: str, level: int = logging.INFO) -> None:
        if message not in self._said:
            self._said.add(message)
            log.log(level, "%s", message)


def _drop_older(entries: deque[tuple[float, float]], oldest: float) -> None:
    while entries and entries[0][0] < oldest:
        entries.popleft()
