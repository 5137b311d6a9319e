"""CPU cost of one collection cycle: this component against the public Device Defender agent SDK.

One cycle = collect the metrics + build the report + serialise it to JSON. Both collectors run in this
process, one after the other, while a helper process holds 0, 100 and 1000 established loopback TCP
connections open. CPU time is time.process_time() (this process only). Also measures the resident memory
of a running ``python -m ddcustom run``.

    .venv/bin/python bench/collect_cost.py [--cycles 30] [--loads 0,100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ddcustom.config import Settings, parse_settings
from ddcustom.report import ReportBuilder
from ddcustom.sample import Sample
from ddcustom.sink import serialise
from ddcustom.sources.collect import Collector

# Holds N established loopback TCP connections (both ends) until killed.
CONN_LOAD = """
import socket, sys, time
n = int(sys.argv[1]); hold = float(sys.argv[2]) if len(sys.argv) > 2 else 120
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(4096)
keep = []
for _ in range(n):
    c = socket.create_connection(srv.getsockname()); s, _ = srv.accept(); keep += [c, s]
print("READY", srv.getsockname()[1], flush=True)
time.sleep(hold)
"""
RESULTS = Path(__file__).parent / "results" / "collect_cost.json"
# A one-behavior profile: the bench measures collection, not the built-in profiles.
PROFILE = [
    {
        "name": "cpu",
        "metric": "cpu_usage",
        "criteria": {"comparisonOperator": "less-than", "value": {"number": 90}},
    }
]


def start_connections(count: int) -> subprocess.Popen[str]:
    load = subprocess.Popen(
        [sys.executable, "-c", CONN_LOAD, str(count), "600"], stdout=subprocess.PIPE, text=True
    )
    assert load.stdout is not None
    line = load.stdout.readline()  # READY <port>, once every connection is established
    if not line.startswith("READY"):
        load.kill()
        raise SystemExit(f"connection holder failed to start ({count} connections): {line!r}")
    return load


def cpu_ms_per_cycle(cycle: Callable[[], object], cycles: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        cycle()
    costs: list[float] = []
    for _ in range(cycles):
        start = time.process_time()
        cycle()
        costs.append((time.process_time() - start) * 1000)
    return costs


def ours(settings: Settings) -> Callable[[], object]:
    collector = Collector(settings)
    builder = ReportBuilder(settings)
    previous: list[Optional[Sample]] = [None]

    def cycle() -> object:
        sample = collector.sample()
        report = builder.build(sample, previous[0])
        previous[0] = sample
        return serialise(report) if report is not None else None

    return cycle


def sdk() -> Callable[[], object]:
    from AWSIoTDeviceDefenderAgentSDK import collector as sdk_collector

    collector = sdk_collector.Collector(short_metrics_names=False, use_custom_metrics=True)
    return lambda: collector.collect_metrics().to_json_string()


def rss_mb(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


RSS_LOOP = """
import time
from ddcustom.config import parse_settings
from ddcustom.report import ReportBuilder
from ddcustom.sink import serialise
from ddcustom.sources.collect import Collector
settings, _ = parse_settings({"SecurityProfile": %r})
collector, builder, previous = Collector(settings), ReportBuilder(settings), None
while True:
    sample = collector.sample(); serialise(builder.build(sample, previous) or {}); previous = sample
    time.sleep(0.2)
"""


def measure_rss(settle_seconds: float) -> tuple[Optional[float], str]:
    """RSS of ``python -m ddcustom run`` after it has run its first cycles (or of a Collector loop)."""
    for what, command in (
        ("python -m ddcustom run", [sys.executable, "-m", "ddcustom", "run"]),
        ("a process running Collector + ReportBuilder in a loop", [sys.executable, "-c", RSS_LOOP % PROFILE]),
    ):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(settle_seconds)
        value = rss_mb(proc.pid) if proc.poll() is None else None
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if value is not None:
            return value, what
    return None, "no process stayed up"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=30, help="measured cycles per collector and load")
    parser.add_argument("--sdk-cycles-at-1000", type=int, default=10, help="SDK cycles at 1000 (330 ms each)")
    parser.add_argument("--loads", default="0,100,1000", help="numbers of loopback connections to hold")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write results ({RESULTS})")
    parser.add_argument("--no-rss", action="store_true", help="skip the resident memory measurement")
    args = parser.parse_args()

    # IncludeLoopback: the held connections are on 127.0.0.1; without it our collector would skip them.
    settings, _ = parse_settings({"IncludeLoopback": True, "SecurityProfile": PROFILE})
    rows: list[dict[str, Any]] = []
    for count in (int(n) for n in args.loads.split(",")):
        load = start_connections(count)
        try:
            our_costs = cpu_ms_per_cycle(ours(settings), args.cycles)
            sdk_cycles = args.sdk_cycles_at_1000 if count >= 1000 else args.cycles
            sdk_costs = cpu_ms_per_cycle(sdk(), sdk_cycles)
        finally:
            load.kill()
            load.wait()
        row: dict[str, Any] = {
            "connections": count,
            "ours_ms": statistics.median(our_costs),
            "sdk_ms": statistics.median(sdk_costs),
            "ours_cycles": len(our_costs),
            "sdk_cycles": len(sdk_costs),
        }
        row["ratio_sdk_over_ours"] = row["sdk_ms"] / row["ours_ms"] if row["ours_ms"] > 0 else None
        rows.append(row)
        print(
            f"  {count} connections: ours {row['ours_ms']:.2f} ms, SDK {row['sdk_ms']:.2f} ms",
            file=sys.stderr,
        )

    rss, rss_of = (None, "not measured") if args.no_rss else measure_rss(settle_seconds=3.0)
    result = {
        "what": "median CPU ms (time.process_time) per cycle: collect + build report + serialise JSON",
        "note": "IncludeLoopback on for ddcustom so the held loopback connections are counted",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "rows": rows,
        "rss_mb": rss,
        "rss_of": rss_of,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")

    print("Median CPU time per collection cycle (collect + build report + serialise), one run.")
    print("ddcustom runs with IncludeLoopback on, so the held loopback connections are counted.\n")
    print("| established loopback TCP connections | ddcustom ms | agent SDK 2.0.0 ms | SDK / ddcustom |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        ratio = row["ratio_sdk_over_ours"]
        ratio_text = f"{ratio:.0f}x" if ratio is not None else "n/a"
        print(f"| {row['connections']} | {row['ours_ms']:.2f} | {row['sdk_ms']:.2f} | {ratio_text} |")
    if rss is not None:
        print(f"\nResident memory (VmRSS) of {rss_of}: {rss:.1f} MB")
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
