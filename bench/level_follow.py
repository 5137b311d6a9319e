"""Should a program's learned CPU level follow its load after learning? Both ways, on the same model.

The model is the component's own: the sustained level is the mean over the same window
(``ddcustom.device.baseline.kinds.levels.Window``), a process may use its program's learned level or the
floor, and the ``known-process-cpu`` rule of the default profile alarms when it is above that by more
than its threshold for its number of datapoints (both read from the built-in profile). What differs:

- **frozen** (what the component does): the level stays what it was at the end of learning;
- **follow, tau**: after learning the level moves toward the sustained use whenever that is higher,
  ``level += (sustained - level) * dt / tau``, the way a slowly adapting baseline would.

Scenarios, sampled every DetectIntervalSeconds (10 s) in simulated time:

- a miner in a known program (learned at 10 % of one core) that ramps up to 60 % over 10 minutes, one
  hour, one day, one week;
- the application's load growing legitimately from 40 % to 70 % over one day and over one week.

For each: whether the rule alarms, and after how long. No process is started: this measures the
policy, not the machine.

    .venv/bin/python bench/level_follow.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from ddcustom.device.baseline.kinds.levels import FLOOR, Window

INTERVAL = 10.0
HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY
POLICIES: dict[str, Optional[float]] = {"frozen": None, "follow, tau 1 day": DAY, "follow, tau 7 days": WEEK}


def rule() -> tuple[float, int]:
    """The known-process-cpu behavior of the built-in profile: (threshold, datapoints to alarm)."""
    profile = json.loads((resources.files("ddcustom") / "profiles" / "crypto-mining.json").read_text())
    [behavior] = [b for b in profile["behaviors"] if b["metric"] == "known_process_cpu_above_level"]
    criteria = behavior["criteria"]
    return float(criteria["value"]["number"]), int(criteria["consecutiveDatapointsToAlarm"])


def simulate(learned: float, start: float, end: float, ramp: float, tau: Optional[float]) -> Optional[float]:
    """Seconds from the start of the ramp (from ``start`` to ``end`` % over ``ramp`` seconds, then
    ``end`` for a week) to the alarm; None when none."""
    threshold, datapoints = rule()
    window = Window()
    level, violating, now = learned, 0, 0.0
    while now <= ramp + WEEK:
        use = start + (end - start) * min(1.0, now / ramp)
        sustained = window.add(now, use)
        if sustained is not None:
            if tau is not None and sustained > level:
                level += (sustained - level) * INTERVAL / tau
            excess = sustained - max(level, FLOOR)
            violating = violating + 1 if excess > threshold else 0
            if violating >= datapoints:
                return now
        now += INTERVAL
    return None


def shown(seconds: Optional[float]) -> str:
    if seconds is None:
        return "never"
    if seconds < HOUR:
        return f"{seconds / 60:.0f} min"
    if seconds < DAY:
        return f"{seconds / HOUR:.1f} h"
    return f"{seconds / DAY:.1f} days"


SCENARIOS = [
    ("miner ramping 10 -> 60 % over 10 min", 10.0, 10.0, 60.0, 600.0),
    ("miner ramping 10 -> 60 % over 1 hour", 10.0, 10.0, 60.0, HOUR),
    ("miner ramping 10 -> 60 % over 1 day", 10.0, 10.0, 60.0, DAY),
    ("miner ramping 10 -> 60 % over 1 week", 10.0, 10.0, 60.0, WEEK),
    ("load growing 40 -> 70 % over 1 day (benign)", 40.0, 40.0, 70.0, DAY),
    ("load growing 40 -> 70 % over 1 week (benign)", 40.0, 40.0, 70.0, WEEK),
]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    threshold, datapoints = rule()
    results: list[dict[str, Any]] = []
    print(f"known-process-cpu: above by more than {threshold:g} points for {datapoints} datapoints; "
          f"floor {FLOOR:g} %; a sample every {INTERVAL:g} s\n")  # fmt: skip
    print("| scenario | " + " | ".join(POLICIES) + " |")
    print("|---|" + "---|" * len(POLICIES))
    for name, learned, start, end, ramp in SCENARIOS:
        row = {policy: simulate(learned, start, end, ramp, tau) for policy, tau in POLICIES.items()}
        results.append({"scenario": name, "alarm_after_seconds": row})
        print(f"| {name} | " + " | ".join(shown(row[policy]) for policy in POLICIES) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
