"""The watched application of bench/evasion.py, deployed there as the Greengrass component
com.example.InferApp (this file is its artifact; each version is a copy with its VERSION line rewritten).

It names itself ``infer-app`` (prctl PR_SET_NAME: the name WatchedProcesses lists), works 10 % of one
core (20 ms of hashing every 200 ms), and reads JSON commands on stdin, one a line:

    {"load": "steady"}   the 10 % above
    {"load": "bursty"}   bursts of 100 % of one core for 2-6 s, 5-15 s apart (steady between them)
    {"start-child": {"executable": PATH, "argv": [...]}}   start a child process (a scenario's miner)
    {"stop-child": true}  kill it
    {"load-library": {"path": PATH, "env": {...}}}   set these environment variables and load the shared
                          object (ctypes, that is dlopen: a plug-in, or the code a compromised
                          application is made to load); prints "library loaded PATH"
    {"unload-libraries": true}   stop their threads (ddc_lib_stop, when they have it) and unload them

It exits at the end of its input or after --seconds, killing its child. Standard library only.
"""

from __future__ import annotations

import _ctypes
import argparse
import ctypes
import hashlib
import json
import os
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


def unload(libraries: list[ctypes.CDLL]) -> None:
    for library in libraries:
        stop = getattr(library, "ddc_lib_stop", None)
        if stop is not None:
            stop()  # its thread must end before its code goes
        _ctypes.dlclose(library._handle)
    libraries.clear()
    print("libraries unloaded", flush=True)


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
    libraries: list[ctypes.CDLL] = []
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
            elif "load-library" in command:
                spec = command["load-library"]
                os.environ.update(spec.get("env", {}))
                libraries.append(ctypes.CDLL(spec["path"]))
                print(f"library loaded {spec['path']}", flush=True)
            elif "unload-libraries" in command:
                unload(libraries)
    finally:
        stop(child)
        if libraries:
            unload(libraries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
