"""Feedback files: numbers the device's ML application writes (GPU load per inference, inference time,
GPU busy % outside inferences).

Each file holds one non-negative number as text. Reading never blocks and never reads much
(``fileio.read_regular``: a FIFO, a device such as /dev/zero, a directory are refused without opening
them). A symlink to a regular file is followed: applications commonly point the configured path at a file
in their own directory.

A missing or invalid value leaves that metric out (None) and logs a warning once per distinct problem;
a change of problem is logged again, and so is the recovery.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, ClassVar, NamedTuple, Optional

from ddcustom.device.fileio import NotRegularFile, read_regular
from ddcustom.device.sample import Feedback, Sample
from ddcustom.device.sources.source import THIS_MACHINE, Machine, SourceSettings

log = logging.getLogger(__name__)

MAX_FEEDBACK_BYTES = 64


class FeedbackProblem(Exception):
    """Why a feedback file gave no value. ``kind`` names the problem (logged once per kind)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def parse_feedback_number(text: str) -> float:
    """The value of a feedback file's text: a finite, non-negative decimal number."""
    value_text = text.strip()
    if not value_text:
        raise FeedbackProblem("empty", "")
    try:
        if "_" in value_text:  # float() accepts 1_000, an application would not mean that
            raise ValueError
        value = float(value_text)
    except ValueError:
        raise FeedbackProblem("not a number", repr(value_text[:20])) from None
    if not math.isfinite(value):
        raise FeedbackProblem("not a finite number", repr(value_text[:20]))
    if value < 0:
        raise FeedbackProblem("negative", repr(value_text[:20]))
    return value


class FeedbackRead(NamedTuple):
    value: float
    version: tuple[int, int]  # (inode, mtime in ns): changes with every write, atomic replaces included


def read_feedback_file(path: str) -> FeedbackRead:
    """Read one feedback file; raises FeedbackProblem saying why there is no value."""
    try:
        data, info = read_regular(path, MAX_FEEDBACK_BYTES + 1)
    except FileNotFoundError:
        raise FeedbackProblem("missing", "") from None
    except NotRegularFile as exc:
        raise FeedbackProblem("not a regular file", str(exc)) from None
    except OSError as exc:
        raise FeedbackProblem("unreadable", exc.strerror or str(exc)) from None
    if info.st_size > MAX_FEEDBACK_BYTES:
        raise FeedbackProblem("too large", f"{info.st_size} bytes, at most {MAX_FEEDBACK_BYTES}")
    if len(data) > MAX_FEEDBACK_BYTES:  # grew after fstat
        raise FeedbackProblem("too large", f"more than {MAX_FEEDBACK_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise FeedbackProblem("not a number", "not ASCII text") from None
    return FeedbackRead(parse_feedback_number(text), (info.st_ino, info.st_mtime_ns))


class FeedbackReader:
    """Reads the feedback files into a Feedback, logging each file's problems once.

    The busy-outside file is written only by the inference meter (ddcustom.feedback): its absence is
    normal for applications that write the other two themselves, so it is logged at INFO, not WARNING.
    The meter rewrites it every few seconds while it runs, even before the first inference and while
    the application is idle. Once it has not changed for ``meter_stale_seconds`` (0: never), or once it
    has disappeared, the meter has stopped, and with it the application; nothing then explains any GPU
    work, so the value becomes the busiest GPU's busy % measured by the component. A miner that replaced
    the application (killed it and took its name) is caught that way. Any problem with a file that was
    there (deleted, garbled, replaced by a directory) counts as a stop too: it is what silencing the meter
    looks like. Changes are told by the file's inode and mtime and timed on the monotonic clock, so clock
    steps neither hide nor fake a stop. What the reader has seen is not kept across restarts.
    """

    def __init__(
        self,
        gpu_load_path: str,
        inference_time_path: str,
        busy_outside_path: str,
        meter_stale_seconds: float = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = (gpu_load_path, inference_time_path, busy_outside_path)
        self.meter_stale_seconds = meter_stale_seconds
        self._clock = clock
        self._problem: dict[str, Optional[str]] = {}  # key -> kind of its last problem, None when fine
        self._outside_version: Optional[tuple[int, int]] = None  # of the busy-outside file, when last read
        self._outside_changed_at = 0.0  # clock() when that version was first seen
        self._meter_stopped = False

    def read(self, gpu_busiest_percent: Optional[float] = None) -> Feedback:
        """``gpu_busiest_percent``: the busiest GPU's busy % now, used when the meter has stopped."""
        load_path, time_path, outside_path = self.paths
        load = self._read_one(load_path, "GpuLoadFeedbackFile")
        latency = self._read_one(time_path, "InferenceTimeFeedbackFile")
        outside = self._read_one(outside_path, "GpuBusyOutsideFeedbackFile", missing_level=logging.INFO)
        return Feedback(
            gpu_load_per_inference=load.value if load is not None else None,
            avg_inference_time_ms=latency.value if latency is not None else None,
            gpu_busy_outside_inference=self._busy_outside(outside, gpu_busiest_percent),
        )

    def _busy_outside(
        self, read: Optional[FeedbackRead], gpu_busiest_percent: Optional[float]
    ) -> Optional[float]:
        now = self._clock()
        why = ""
        if read is not None:
            if read.version != self._outside_version:
                self._outside_version, self._outside_changed_at = read.version, now
            unchanged = now - self._outside_changed_at
            if self.meter_stale_seconds > 0 and unchanged > self.meter_stale_seconds:
                why = f"not rewritten for {unchanged:.0f} s (MeterStaleSeconds {self.meter_stale_seconds:g})"
        elif self._outside_version is not None:  # the meter's file was there: now gone, garbled, replaced
            if self.meter_stale_seconds > 0:
                why = str(self._problem.get("GpuBusyOutsideFeedbackFile") or "unreadable")
        else:
            return None  # never there (no meter, or not since the component started): no value
        stopped = bool(why)
        if stopped != self._meter_stopped:
            self._meter_stopped = stopped
            if stopped:
                log.warning(
                    "GpuBusyOutsideFeedbackFile %s: %s: the inference meter has stopped; all GPU busy time "
                    "counts as outside inference until it writes again",
                    self.paths[2],
                    why,
                )
            else:
                log.info("GpuBusyOutsideFeedbackFile %s: the inference meter writes again", self.paths[2])
        if stopped:
            return gpu_busiest_percent
        return read.value if read is not None else None

    def _read_one(self, path: str, key: str, missing_level: int = logging.WARNING) -> Optional[FeedbackRead]:
        try:
            read = read_feedback_file(path)
        except FeedbackProblem as problem:
            if self._problem.get(key) != problem.kind:
                level = missing_level if problem.kind == "missing" else logging.WARNING
                log.log(
                    level, "%s %s: %s; the metric is left out until it holds a number", key, path, problem
                )
            self._problem[key] = problem.kind
            return None
        if self._problem.get(key) is not None:
            log.info("%s %s: holds a valid number again", key, path)
        self._problem[key] = None
        return read


class FeedbackSource:
    """The feedback files, read while GPU metrics are on (they describe the application's GPU work)."""

    name: ClassVar[str] = "feedback"
    fills: ClassVar[str] = "feedback"
    needs: ClassVar[tuple[str, ...]] = ("gpu",)  # the busiest GPU, when the inference meter has stopped
    reads: ClassVar[str] = "GpuLoadFeedbackFile, InferenceTimeFeedbackFile, GpuBusyOutsideFeedbackFile"

    def __init__(self, machine: Machine = THIS_MACHINE) -> None:
        self.enabled = False
        self.reader: Optional[FeedbackReader] = None

    def configure(self, settings: SourceSettings) -> None:
        self.enabled = settings.enable_gpu_metrics
        paths = (
            settings.gpu_load_feedback_file,
            settings.inference_time_feedback_file,
            settings.gpu_busy_outside_feedback_file,
        )
        if self.reader is None or self.reader.paths != paths:
            self.reader = FeedbackReader(*paths)  # kept otherwise: it remembers what it has logged
        self.reader.meter_stale_seconds = settings.meter_stale_seconds

    def read(self, sample: Sample) -> Optional[Feedback]:
        if not self.enabled or self.reader is None:
            return None
        return self.reader.read(sample.gpu.busiest_utilization_percent if sample.gpu is not None else None)

    def close(self) -> None:
        pass
