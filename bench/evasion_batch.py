"""A batch job of the device for bench/evasion.py: a program whose work varies, the same way each time
it runs (the "known program whose work varies as it did while learning").

It hashes at a duty cycle that steps through PATTERN, 10 s a step, over and over (a 40 s cycle, so any
30 s the component's level window covers averages between 33 and 47 % of one core), until --seconds.
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

PATTERN = (20, 50, 30, 60)  # % of one core, 10 s each
STEP = 10.0
PERIOD = 0.1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, required=True, help="exit after this long")
    seconds = parser.parse_args().seconds
    start = time.monotonic()
    digest = b"batch"
    print("batch started", flush=True)
    while (elapsed := time.monotonic() - start) < seconds:
        duty = PATTERN[int(elapsed // STEP) % len(PATTERN)] / 100
        busy_until = time.monotonic() + PERIOD * duty
        while time.monotonic() < busy_until:
            for _ in range(200):
                digest = hashlib.sha256(digest).digest()
        time.sleep(PERIOD * (1 - duty))
    return 0


if __name__ == "__main__":
    sys.exit(main())
