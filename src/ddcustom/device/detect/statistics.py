"""Statistical thresholds on the device: a percentile (or the mean) of a metric's recent datapoints.

Device Defender computes a statisticalThreshold over all devices of the profile; a single device has
only its own history, so the engine keeps a bounded window of its recent datapoints per behavior (not to
be confused with the learned baseline of what the device runs, ddcustom.device.baseline).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Optional


def statistic_of(values: Sequence[float], statistic: str) -> float:
    """Device Defender's statistic: "Average", or a percentile ("p90", "p99.9") with linear interpolation."""
    if not values:
        raise ValueError("statistic of no values")
    if statistic == "Average":
        return math.fsum(values) / len(values)
    ordered = sorted(values)
    rank = float(statistic[1:]) / 100 * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class RecentValues:
    """The last ``size`` datapoints; a threshold only once ``warmup`` of them have been seen."""

    def __init__(self, statistic: str, size: int, warmup: int) -> None:
        if not 1 <= warmup <= size:
            raise ValueError(f"warm-up {warmup} must be from 1 to the window size {size}")
        self.statistic = statistic
        self.warmup = warmup
        self._values: deque[float] = deque(maxlen=size)

    def threshold(self) -> Optional[float]:
        """The statistic over the window, or None while warming up."""
        if len(self._values) < self.warmup:
            return None
        return statistic_of(self._values, self.statistic)

    def add(self, value: float) -> None:
        self._values.append(value)
