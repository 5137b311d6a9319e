"""Retry backoff: exponential with full jitter, so that a fleet does not retry in step."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Optional


def backoff_delays(base: float, cap: float, rng: Optional[random.Random] = None) -> Iterator[float]:
    """Endless exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""
    if base <= 0 or cap < base:
        raise ValueError(f"need 0 < base <= cap, got base={base}, cap={cap}")
    rng = rng or random.Random()
    ceiling = base
    while True:
        yield rng.uniform(0.0, ceiling)
        ceiling = min(cap, ceiling * 2)
