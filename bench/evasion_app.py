"""The watched application of bench/evasion.py, deployed there as the Greengrass component
com.example.InferApp (this file is its artifact; each version is a copy with its VERSION line rewritten).

It names itself ``infer-app`` (prctl PR_SET_NAME: the name WatchedProcesses lists), works 10 % of one
core (20 ms of hashing every 200 ms), and reads JSON commands on stdin, one a line:

    {"load": "steady"}   the 10 % above
    {"load": "bursty"}   bursts of 100 % of one core for 2-6 s, 5-15 s apart (steady between them)
    {"start-child": {"executable": PATH, "argv": [...]}}   start a child process (a scenario's miner)
    {"stop-child": true}  kill it

It exits at the end of its input or after --seconds, killing its child. Standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import random
import select
import subprocess
import sys
import time
from typing import Optional

VERSION = "1.0.0"
NAME = b"infer-app"
PR_SET_NAME = 15


def work(seconds: float) -> None:
    end = time.monotonic() + seconds
    digest = b"frame"
    while time.monotonic() < end:
        for _ in range(200):
            digest = hashlib.sha256(digest).digest()


def stop(child: Optional[subprocess.Popen[bytes]]) -> None:
    if child is not None and child.poll() is None:
        child.kill()
        child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, required=True, help="exit after this long")
    deadline = time.monotonic() + parser.parse_args().seconds
    ctypes.CDLL(None).prctl(PR_SET_NAME, NAME, 0, 0, 0)
    print(f"infer-app {VERSION} started", flush=True)
    rng = random.Random(7)
    bursty = False
    burst_until = next_burst = 0.0
    child: Optional[subprocess.Popen[bytes]] = None
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            if bursty and now >= next_burst:
                burst_until = now + rng.uniform(2, 6)
                next_burst = burst_until + rng.uniform(5, 15)
            if now < burst_until:
                work(0.2)
                wait = 0.0
            else:
                work(0.02)
                wait = 0.18
            if not select.select([sys.stdin], [], [], wait)[0]:
                continue
            line = sys.stdin.readline()
            if not line:
                break
            command = json.loads(line)
            if "load" in command:
                bursty = command["load"] == "bursty"
                burst_until = next_burst = 0.0
            elif "start-child" in command:
                stop(child)
                spec = command["start-child"]
                child = subprocess.Popen(spec["argv"], executable=spec["executable"])
            elif "stop-child" in command:
                stop(child)
                child = None
    finally:
        stop(child)
    return 0


if __name__ == "__main__":
    sys.exit(main())
