"""Time from a simulated CPU miner's start to each on-device alert, and from its stop to each clear.

Runs ``python -m ddcustom run`` locally (DetectIntervalSeconds 5) and, once it has settled, starts
(in one trial for each PHASE: that many seconds after one of the agent's detection ticks):
- a hashing process named ``xmrig`` (comm set with prctl) as a child of a watched process ``infer-app``,
  connected to a listener on 127.0.0.1:3333 (a mining-pool port);
- a second hashing process with an innocent name.
Signals: miner-processes, mining-pool-connections, child-processes, cpu-usage (the default profile's
rules on these four metrics, with cpu-usage raising alerts, which the default keeps quiet). Target: each alarm
within two detection intervals. Only loopback; every process it starts ends by itself within
CHILD_LIFETIME seconds even if this script dies, and is killed on exit. Takes about two minutes.

    .venv/bin/python bench/detect_latency.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Optional

INTERVAL = 5.0
POOL_PORT = 3333
CHILD_LIFETIME = 300  # seconds: the hashers and the fake app exit by themselves after this
SETTLE = 2 * INTERVAL  # let the agent take its first samples before the miner starts
PHASES = (0.5, 2.5, 4.5)  # seconds after a detection tick at which the miner starts: best to worst case
WAIT_LIMIT = 6 * INTERVAL  # give up on a signal after this long
EXPECTED = ("miner-processes", "mining-pool-connections", "child-processes", "cpu-usage")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "detect_latency.json"

# Sets its own comm (what /proc/<pid>/stat shows) and hashes until its deadline.
HASHER = """
import ctypes, hashlib, socket, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
deadline = time.monotonic() + float(sys.argv[2])
conn = socket.create_connection(("127.0.0.1", int(sys.argv[3])), timeout=5) if len(sys.argv) > 3 else None
h = b"block"
while time.monotonic() < deadline:
    for _ in range(20000):
        h = hashlib.sha256(h).digest()
"""

# The watched application: starts the miner as its child on "go", kills it on "stop", exits at end of input.
APP = """
import ctypes, select, subprocess, sys, time
ctypes.CDLL(None).prctl(15, b"infer-app", 0, 0, 0)
deadline = time.monotonic() + float(sys.argv[1])
child = None
while time.monotonic() < deadline:
    ready, _, _ = select.select([sys.stdin], [], [], 0.5)
    if not ready:
        continue
    line = sys.stdin.readline()
    if line.strip() == "go" and child is None:
        child = subprocess.Popen([sys.executable, "-c", sys.argv[2], "xmrig", sys.argv[1], sys.argv[3]])
    elif line.strip() == "stop" and child is not None:
        child.kill()
        child.wait()
        child = None
    elif not line:
        break
if child is not None:
    child.kill()
    child.wait()
"""


class AlertLog:
    """Reads the agent's JSON lines; remembers when each alert arrived (monotonic)."""

    def __init__(self, stream: IO[str]) -> None:
        self.alerts: list[tuple[float, dict[str, Any]]] = []
        self.ready = threading.Event()
        self.first_line_at = 0.0  # the agent prints a report at its first tick: ticks follow every INTERVAL
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if not self.ready.is_set():
                self.first_line_at = time.monotonic()
                self.ready.set()
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if item.get("kind") == "alert":
                with self._lock:
                    self.alerts.append((time.monotonic(), item["alert"]))

    def first(self, behavior: str, kind: str, after: float) -> Optional[float]:
        with self._lock:
            for at, alert in self.alerts:
                if (
                    at >= after
                    and alert["behavior"]["name"] == behavior
                    and alert["violationEventType"] == kind
                ):
                    return at
        return None

    def wait_all(self, kind: str, after: float, limit: float) -> dict[str, Optional[float]]:
        deadline = after + limit
        while True:
            found = {b: self.first(b, kind, after) for b in EXPECTED}
            if all(v is not None for v in found.values()) or time.monotonic() > deadline:
                return {b: (None if v is None else round(v - after, 2)) for b, v in found.items()}
            time.sleep(0.1)

    def in_alarm_before(self, when: float) -> list[str]:
        state: dict[str, str] = {}
        with self._lock:
            for at, alert in self.alerts:
                if at < when:
                    state[alert["behavior"]["name"]] = alert["violationEventType"]
        return sorted(b for b, kind in state.items() if kind == "in-alarm")


def latency_profile() -> dict[str, object]:
    """The default profile's rules on the four signals measured here, each raising alerts."""
    from ddcustom.device.detect.profile import load_profile

    behaviors = [b for b in load_profile("crypto-mining").to_json()["behaviors"] if b["name"] in EXPECTED]
    return {"name": "crypto-mining", "behaviors": [{**b, "suppressAlerts": False} for b in behaviors]}


def stop(proc: Optional[subprocess.Popen[Any]], grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


def main() -> int:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # no options: --help explains what it does
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", POOL_PORT))
    except OSError as exc:
        print(f"cannot listen on 127.0.0.1:{POOL_PORT}: {exc}", file=sys.stderr)
        return 1
    listener.listen(4)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()

    agent = app = worker = None
    with tempfile.TemporaryDirectory(prefix="ddcustom-bench-") as state:
        config = Path(state) / "config.json"
        config.write_text(
            json.dumps(
                {
                    "DetectIntervalSeconds": INTERVAL,
                    "SampleIntervalSeconds": 3600,
                    "EnableDeviceDefenderReport": False,
                    "IncludeLoopback": True,
                    "WatchedProcesses": ["infer-app"],
                    "StateDirectory": state,
                    "LogLevel": "WARNING",
                    "SecurityProfile": latency_profile(),
                }
            )
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        try:
            app = subprocess.Popen(
                [sys.executable, "-c", APP, str(CHILD_LIFETIME), HASHER, str(POOL_PORT)],
                stdin=subprocess.PIPE,
                text=True,
            )
            agent = subprocess.Popen(
                [sys.executable, "-m", "ddcustom", "run", "--config", str(config), "--thing", "bench-thing"],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            assert agent.stdout is not None and app.stdin is not None
            log = AlertLog(agent.stdout)
            if not log.ready.wait(30):
                print("the agent printed nothing within 30 s", file=sys.stderr)
                return 1
            time.sleep(SETTLE)
            trials: list[dict[str, Any]] = []
            for phase in PHASES:
                tick = log.first_line_at + INTERVAL * math.ceil(
                    (time.monotonic() - log.first_line_at) / INTERVAL
                )
                time.sleep(max(0.0, tick + phase - time.monotonic()))
                started = time.monotonic()
                already = log.in_alarm_before(started)
                app.stdin.write("go\n")
                app.stdin.flush()
                worker = subprocess.Popen([sys.executable, "-c", HASHER, "data-worker", str(CHILD_LIFETIME)])
                alarms = log.wait_all("in-alarm", started, WAIT_LIMIT)
                stopped = time.monotonic()
                app.stdin.write("stop\n")
                app.stdin.flush()
                stop(worker)
                clears = log.wait_all("alarm-cleared", stopped, WAIT_LIMIT)
                trials.append(
                    {"phase_s": phase, "already_in_alarm": already, "alarm_s": alarms, "clear_s": clears}
                )
        finally:
            for proc in (worker, app, agent):
                stop(proc)
            for conn in accepted:
                conn.close()
            listener.close()

    rows: list[dict[str, Any]] = []
    for b in EXPECTED:
        alarm = [t["alarm_s"][b] for t in trials]
        clear = [t["clear_s"][b] for t in trials]
        worst = None if None in alarm else max(alarm)
        rows.append(
            {
                "behavior": b,
                "alarm_s": alarm,
                "worst_alarm_intervals": None if worst is None else round(worst / INTERVAL, 2),
                "within_two_intervals": worst is not None and worst <= 2 * INTERVAL,
                "clear_after_stop_s": clear,
            }
        )
    result = {
        "detect_interval_s": INTERVAL,
        "start_phases_s": list(PHASES),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu(s), {platform.python_implementation()} "
        f"{platform.python_version()}",
        "signals": rows,
        "trials": trials,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    phases = " / ".join(f"{p:g}" for p in PHASES)
    print(f"DetectIntervalSeconds {INTERVAL:g}; the miner starts {phases} s after a detection tick\n")
    header = (
        f"alarm after (s), phase {phases} | worst (intervals) | within 2 intervals | cleared after stop (s)"
    )
    print(f"| behavior | {header} |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['behavior']} | {_show(row['alarm_s'])} | {_show([row['worst_alarm_intervals']])} | "
            f"{'yes' if row['within_two_intervals'] else 'NO'} | {_show(row['clear_after_stop_s'])} |"
        )
    for trial in trials:
        if trial["already_in_alarm"]:
            names = ", ".join(trial["already_in_alarm"])
            print(f"\nphase {trial['phase_s']:g}: already in alarm before the start: {names}")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")
    return 0 if all(row["within_two_intervals"] for row in rows) else 3


def _show(values: list[Optional[float]]) -> str:
    return " / ".join("none" if v is None else f"{v:g}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
