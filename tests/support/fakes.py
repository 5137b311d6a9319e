"""Stand-ins that tests drive by hand, so that what they check never depends on the host's timing."""

from __future__ import annotations

import random


class Clock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Highest(random.Random):
    """Always draws the top of the range: backoff delays are their ceilings."""

    def uniform(self, a: float, b: float) -> float:
        return b
