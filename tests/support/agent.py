"""The agent in tests: settings whose rules read feedback files in a test's folder (nothing on the host
changes a result), and the files written."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from ddcustom.device.config import Settings, parse_settings
from support.helpers import MINING_RULES, profile


def feedback_settings(folder: Path, *behaviors: Union[str, dict[str, Any]], **keys: Any) -> Settings:
    """Settings whose profile holds only ``behaviors`` (names of built-in behaviors, or behavior
    objects; none: the article's two feedback rules), with the feedback files and the state in
    ``folder``; ``keys`` override."""
    if all(isinstance(b, str) for b in behaviors):
        security_profile = profile(*(str(b) for b in behaviors or MINING_RULES))
    else:
        security_profile = {"name": "p", "behaviors": list(behaviors)}
    raw = {
        "EnableGPUMetrics": True,
        "EnableDeviceDefenderReport": False,
        "SampleIntervalSeconds": 60,
        "DetectIntervalSeconds": 1,
        "GpuLoadFeedbackFile": str(folder / "load"),
        "InferenceTimeFeedbackFile": str(folder / "time"),
        "GpuBusyOutsideFeedbackFile": str(folder / "outside"),
        "StateDirectory": str(folder / "state"),
        "SecurityProfile": security_profile,
    }
    return parse_settings({**raw, **keys})[0]


def write_feedback(folder: Path, load: float, latency: float) -> None:
    """What the application writes: its GPU load per inference and its inference time (ms)."""
    (folder / "load").write_text(str(load))
    (folder / "time").write_text(str(latency))
