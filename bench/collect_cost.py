"""CPU cost of one collection cycle: this component against the public Device Defender agent SDK.

One cycle = collect the metrics + build the report + serialise it to JSON. Both collectors run in this
process, one after the other, while a helper process holds 0, 100 and 1000 established loopback TCP
connections open. CPU time is time.process_time() (this process only).

The learned baseline (the default profile's new-executable/endpoint/listening-port rules): the detection
cycle (collect + evaluate the profile, with the evidence of in-alarm events as the agent adds it + build
report + serialise) of the default profile against the same profile without its baseline behaviors, the
two cycles alternating, with 1000 established loopback connections and at least 300 processes (sleep
processes the benchmark starts). First after a short learning period (the steady state of a learned
device), then with everything new: a new listener with its own 1000 connections and 300 processes run
from copies of sleep under new names (the first cycle hashes every copy; the next raises the alarms).
Taking turns with the learned cycles, the system calls alone (SyscallFloor): what of a cycle is the
machine's kernel rather than the component.

Resident memory of a running ``python -m ddcustom run`` (default profile, a temporary StateDirectory,
learning): with an empty baseline and with one of 10 000 entries written beforehand by the store itself.

    .venv/bin/python bench/collect_cost.py [--cycles 30] [--loads 0,100,1000] [--no-baseline]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import io
import json
import os
import platform
import pstats
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ddcustom.device.agent import uses_baseline
from ddcustom.device.alerts.evidence import EvidenceReader
from ddcustom.device.baseline.file import FILE_NAME
from ddcustom.device.baseline.kinds.endpoints import EndpointWatch
from ddcustom.device.baseline.kinds.executables import ExecutableWatch
from ddcustom.device.baseline.kinds.kind import Context
from ddcustom.device.baseline.kinds.listening import ListeningWatch
from ddcustom.device.baseline.observer import BaselineObserver
from ddcustom.device.baseline.store import BaselineStore
from ddcustom.device.config import Settings, parse_settings
from ddcustom.device.detect.engine import Engine
from ddcustom.device.detect.events import IN_ALARM
from ddcustom.device.detect.profile import load_profile
from ddcustom.device.metrics import BASELINE_METRICS, METRICS
from ddcustom.device.outputs.report import ReportBuilder
from ddcustom.device.outputs.sink import serialise
from ddcustom.device.sample import Sample
from ddcustom.device.sources.collect import Collector
from ddcustom.device.sources.identity import ExecutableIdentity
from ddcustom.device.sources.network import TCP_ESTABLISHED, TCP_LISTEN, diag_requests
from ddcustom.device.sources.processes import ProcFiles

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


class DetectionCycle:
    """What the component does every DetectIntervalSeconds, plus the report it sends every
    ReportIntervalSeconds: collect, evaluate the profile (collecting the evidence of each in-alarm event,
    as the agent does), build the report, serialise it."""

    def __init__(self, settings: Settings) -> None:
        self.collector = Collector(settings)
        self.observer = BaselineObserver(self.collector.identities, self.collector.details)
        self.observer.configure(settings, uses_baseline(settings))
        self.evidence = EvidenceReader(self.collector.identities, self.collector.details)
        self.builder = ReportBuilder(settings)
        self.engine = Engine(settings.security_profile, "bench")
        self.sample: Optional[Sample] = None
        self.alarms = 0

    def __call__(self) -> object:
        sample = self.observer.observe(self.collector.sample())
        for event in self.engine.evaluate(sample):
            metric = METRICS.get(str(event.behavior.get("metric")))
            if event.event_type == IN_ALARM and metric is not None and metric.culprits is not None:
                self.evidence.collect(sample, metric.culprits(sample))
                self.alarms += 1
        report = self.builder.build(sample, self.sample)
        self.sample = sample
        return serialise(report) if report is not None else None

    def new_items(self) -> dict[str, int]:
        """What the baseline found new in the last sample."""
        stats = self.sample.baseline if self.sample is not None else None
        if stats is None:
            return {}
        return {
            "processes": len(stats.new_processes),
            "endpoints": len(stats.new_endpoints),
            "listening": len(stats.new_listening),
        }


class SyscallFloor:
    """The system calls a learned cycle cannot do without, and nothing else: the sock_diag dump of the TCP
    sockets (received, not parsed), a read of each process's stat and cmdline through descriptors kept
    open (as the process table reads them), and a readlink of each exe link (as the baseline reads them).
    Measured in the same run as the cycles: what of a cycle is the machine's kernel, not the component."""

    def __init__(self) -> None:
        self.files = ProcFiles()
        self.requests = diag_requests((1 << TCP_ESTABLISHED) | (1 << TCP_LISTEN), one_walk=True)

    def __call__(self) -> None:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as sock:  # NETLINK_SOCK_DIAG
            for request in self.requests:
                sock.sendto(request, (0, 0))
                while not _dump_done(sock.recv(1 << 16)):
                    pass
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
        for pid in pids:
            with contextlib.suppress(OSError):
                self.files.read(pid)
            with contextlib.suppress(OSError):
                os.readlink(f"/proc/{pid}/exe")
        self.files.keep_only(pids)


def _dump_done(data: bytes) -> bool:
    """Whether a netlink receive buffer ends the dump (NLMSG_DONE or NLMSG_ERROR, or nothing)."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if kind in (2, 3) or length < 16:
            return True
        offset += (length + 3) & ~3
    return not data


def cpu_ms(cycle: Callable[[], object]) -> float:
    start = time.process_time()
    cycle()
    return (time.process_time() - start) * 1000


def alternating(
    cycles: dict[str, Callable[[], object]], count: int, warmup: int = 2
) -> dict[str, list[float]]:
    """CPU ms per cycle of each of ``cycles``, taking turns, so a shared machine's load hits all alike."""
    for _ in range(warmup):
        for cycle in cycles.values():
            cycle()
    costs: dict[str, list[float]] = {name: [] for name in cycles}
    for _ in range(count):
        for name, cycle in cycles.items():
            costs[name].append(cpu_ms(cycle))
    return costs


def profiled(cycle: Callable[[], object], count: int) -> str:
    """The top functions (own time) of ``count`` cycles under cProfile."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        cycle()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    return text.getvalue()


def process_count() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


class Sleepers:
    """Processes running ``sleep 600`` in one process group of their own; stop() kills and reaps them."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.group = 0

    def start(self, executables: list[str]) -> None:
        for path in executables:
            # setpgroup 0 makes the first one lead a new group; the others join it
            pid = os.posix_spawn(
                path, [os.path.basename(path), "600"], dict(os.environ), setpgroup=self.group
            )
            self.group = self.group or pid
            self.pids.append(pid)

    def stop(self) -> None:
        if self.group:
            with contextlib.suppress(ProcessLookupError):  # all of them exited already (sleep 600 ended)
                os.killpg(self.group, signal.SIGKILL)
        for pid in self.pids:
            os.waitpid(pid, 0)
        self.pids, self.group = [], 0


def profile_without_baseline() -> dict[str, Any]:
    """The default profile less its baseline behaviors: the same cycle with the baseline off."""
    profile = load_profile("crypto-mining").to_json()
    profile["behaviors"] = [b for b in profile["behaviors"] if b.get("metric") not in BASELINE_METRICS]
    return profile


# BaselineLearningSeconds of the baseline cycle: a few cycles learn the host, the connections, the listener
LEARNING_SECONDS = 2


def measure_baseline(connections: int, processes: int, cycles: int, profile_count: int) -> dict[str, Any]:
    """The detection cycle with the default profile against the same without its baseline behaviors:
    learned, then with everything new (see the module docstring)."""
    work = Path(tempfile.mkdtemp(prefix="ddcustom-cost-"))
    sleep = shutil.which("sleep") or "/bin/sleep"
    sleepers = Sleepers()
    holders: list[subprocess.Popen[str]] = []
    on: Optional[DetectionCycle] = None
    off: Optional[DetectionCycle] = None
    result: dict[str, Any] = {"connections": connections}
    try:
        holders.append(start_connections(connections))
        while process_count() < processes:  # other processes come and go meanwhile
            sleepers.start([sleep] * (processes - process_count()))
        result["processes_learned"] = process_count()
        common = {"IncludeLoopback": True, "StateDirectory": str(work / "state")}
        on_settings, _ = parse_settings({**common, "BaselineLearningSeconds": LEARNING_SECONDS})
        off_settings, _ = parse_settings({**common, "SecurityProfile": profile_without_baseline()})
        on, off = DetectionCycle(on_settings), DetectionCycle(off_settings)

        learning = [cpu_ms(on)]  # the first one hashes every executable on the host
        deadline = time.monotonic() + LEARNING_SECONDS + 30
        while on.sample is not None and on.sample.baseline is not None and on.sample.baseline.learning:
            if time.monotonic() > deadline:
                raise SystemExit("the baseline did not end its learning period")
            time.sleep(0.25)
            learning.append(cpu_ms(on))
        if on.sample is None or on.sample.baseline is None:
            raise SystemExit(f"the baseline is not on (sample errors: {on.sample and on.sample.errors})")
        result["learning_cycles"] = len(learning)
        result["first_learning_cycle_ms"] = learning[0]
        alarms = on.alarms
        floor = SyscallFloor()
        learned = alternating({"on": on, "off": off, "floor": floor}, cycles)
        floor.files.close()
        result["learned"] = summary(learned, on, alarms)
        result["syscall_floor_ms"] = statistics.median(learned["floor"])
        if profile_count:
            print(f"cProfile, {profile_count} learned cycles with the baseline:", file=sys.stderr)
            print(profiled(on, profile_count), file=sys.stderr)

        # Everything new: other processes (copies of sleep, each file new), a new listener and endpoint.
        sleepers.stop()
        holders.append(start_connections(connections))
        holders[0].kill()
        holders[0].wait()
        copies = work / "new"
        copies.mkdir()
        names = []
        for number in range(processes):
            copy = copies / f"sleep-new-{number:03d}"
            shutil.copyfile(sleep, copy)  # not copy2: a new mtime, as a file written now has
            copy.chmod(0o755)
            names.append(str(copy))
        sleepers.start(names)
        result["processes_new"] = len(names)
        result["processes_total_new"] = process_count()
        for name in ("new_first", "new_second"):  # hashes the new files; raises the alarms
            alarms = on.alarms
            one = {"on": [cpu_ms(on)], "off": [cpu_ms(off)]}
            result[name] = summary(one, on, alarms)
        alarms = on.alarms
        steady = alternating({"on": on, "off": off}, cycles, warmup=0)
        result["new_steady"] = summary(steady, on, alarms)
        if profile_count:
            print(f"cProfile, {profile_count} cycles with the baseline, everything new:", file=sys.stderr)
            print(profiled(on, profile_count), file=sys.stderr)
    finally:
        for cycle in (on, off):
            if cycle is not None:
                cycle.observer.close()
                cycle.collector.close()
        sleepers.stop()
        for holder in holders:
            holder.kill()
            holder.wait()
        shutil.rmtree(work, ignore_errors=True)
    return result


def summary(costs: dict[str, list[float]], on: DetectionCycle, alarms_before: int) -> dict[str, Any]:
    """Medians of ``costs`` ("on": with the baseline, "off": without), what the baseline found new in
    the last sample, and the alarms raised (with their evidence) since ``alarms_before``."""
    with_ms, without_ms = statistics.median(costs["on"]), statistics.median(costs["off"])
    return {
        "with_ms": with_ms,
        "without_ms": without_ms,
        "ratio": with_ms / without_ms if without_ms > 0 else None,
        "cycles": len(costs["on"]),
        "new_items": on.new_items(),
        "alarms": on.alarms - alarms_before,
    }


def memory_mb(pid: int) -> Optional[tuple[float, float]]:
    """(VmRSS, VmHWM: the peak) of ``pid`` in MB, None when it is gone."""
    values: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values[name] = int(rest.split()[0]) / 1024
    except OSError:
        return None
    if len(values) < 2:
        return None
    return values["VmRSS"], values["VmHWM"]


RSS_LOOP = """
import json, sys, time
from ddcustom.device.config import parse_settings
from ddcustom.device.outputs.report import ReportBuilder
from ddcustom.device.outputs.sink import serialise
from ddcustom.device.sources.collect import Collector
from ddcustom.device.sources.network import TCP_ESTABLISHED, TCP_LISTEN, diag_requests
from ddcustom.device.sources.processes import ProcFiles
with open(sys.argv[1]) as f:
    settings, _ = parse_settings(json.load(f))
collector, builder, previous = Collector(settings), ReportBuilder(settings), None
while True:
    sample = collector.sample(); serialise(builder.build(sample, previous) or {}); previous = sample
    time.sleep(0.2)
"""


def measure_rss(config: Path, settle_seconds: float) -> dict[str, Any]:
    """VmRSS and VmHWM of ``python -m ddcustom run --config CONFIG`` after its first cycles (or of a
    Collector loop under the same configuration, when that does not stay up)."""
    for what, command in (
        ("python -m ddcustom run", [sys.executable, "-m", "ddcustom", "run", "--config", str(config)]),
        (
            "a process running Collector + ReportBuilder in a loop",
            [sys.executable, "-c", RSS_LOOP, str(config)],
        ),
    ):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(settle_seconds)
        value = memory_mb(proc.pid) if proc.poll() is None else None
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if value is not None:
            return {"rss_mb": value[0], "peak_mb": value[1], "of": what}
    return {"rss_mb": None, "peak_mb": None, "of": "no process stayed up"}


PYTHON_SHA256 = hashlib.sha256(b"python3.11").hexdigest()
ENDPOINT_PORTS = (443, 8883, 443, 123, 53, 80, 5671, 443)


def write_baseline(path: Path, entries: int) -> int:
    """Write a baseline of ``entries`` entries with the store itself, as a learning component writes it
    (observed while learning, written once by close()): 70 % executables (a fifth of them interpreter
    scripts), 1 % listening ports, the rest outbound endpoints (a fifth IPv6), each in its own network.
    Returns the number of entries the file's header counts."""
    now = time.time()
    store = BaselineStore(path, now=now, learning_seconds=86400)
    context = Context()
    executables_watch, endpoints_watch, listening_watch = (
        ExecutableWatch(context),
        EndpointWatch(context),
        ListeningWatch(context),
    )
    executables, listening = entries * 70 // 100, entries // 100
    for number in range(executables):
        digest = hashlib.sha256(b"executable %d" % number).hexdigest()
        if number % 5 == 0:
            script = f"/opt/app/jobs/job_{number}.py"
            identity = ExecutableIdentity("/usr/bin/python3.11", PYTHON_SHA256, script, digest)
        else:
            identity = ExecutableIdentity(f"/usr/lib/package-{number % 97}/bin/tool-{number}", digest)
        executables_watch.observe_executable(store, identity, now)
    for number in range(entries - executables - listening):
        if number % 5 == 0:
            address = f"2001:db8:{number:x}::10"
        else:
            address = f"{10 + number // 65536}.{number // 256 % 256}.{number % 256}.17"
        endpoints_watch.observe_endpoint(store, address, ENDPOINT_PORTS[number % len(ENDPOINT_PORTS)], now)
    for number in range(listening):
        listening_watch.observe_listening(store, "tcp", 20000 + number, now)
    store.close(now)
    with open(path) as f:
        return int(json.loads(f.readline())["entries"])


def measure_rss_with_baseline(entries: int, settle_seconds: float) -> dict[str, Any]:
    """RSS of the component learning (BaselineLearningSeconds 86400) with an empty baseline and, when
    ``entries``, with a baseline of that many entries."""
    results: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="ddcustom-rss-"))
    try:
        for name, count in (("empty", 0), ("entries", entries)):
            if name == "entries" and not entries:
                continue
            state = work / name
            state.mkdir()
            if count:
                results["entries_written"] = write_baseline(state / FILE_NAME, count)
                results["baseline_file_bytes"] = (state / FILE_NAME).stat().st_size
            config = work / f"{name}.json"
            # DetectIntervalSeconds 1: a few cycles within the settle time
            config.write_text(
                json.dumps(
                    {
                        "StateDirectory": str(state),
                        "BaselineLearningSeconds": 86400,
                        "DetectIntervalSeconds": 1,
                    }
                )
            )
            results[name] = measure_rss(config, settle_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=30, help="measured cycles per collector and load")
    parser.add_argument("--sdk-cycles-at-1000", type=int, default=10, help="SDK cycles at 1000 (330 ms each)")
    parser.add_argument("--loads", default="0,100,1000", help="numbers of loopback connections to hold")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write results ({RESULTS})")
    parser.add_argument("--no-rss", action="store_true", help="skip the resident memory measurement")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline cycle measurement")
    parser.add_argument(
        "--baseline-connections", type=int, default=1000, help="connections held for the baseline cycle"
    )
    parser.add_argument(
        "--processes", type=int, default=300, help="processes for the baseline cycle (sleep fills up to it)"
    )
    parser.add_argument(
        "--baseline-entries",
        type=int,
        default=10_000,
        help="entries of the baseline the RSS is measured with",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="print cProfile's top functions of N baseline cycles",
    )
    args = parser.parse_args()
    load_start = os.getloadavg()

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

    baseline = None
    if not args.no_baseline:
        baseline = measure_baseline(args.baseline_connections, args.processes, args.cycles, args.profile)
        print(
            f"  baseline, learned: {baseline['learned']['with_ms']:.2f} ms "
            f"(without {baseline['learned']['without_ms']:.2f} ms)",
            file=sys.stderr,
        )
    memory = None if args.no_rss else measure_rss_with_baseline(args.baseline_entries, settle_seconds=5.0)
    load_end = os.getloadavg()
    result = {
        "what": "median CPU ms (time.process_time) per cycle: collect + build report + serialise JSON",
        "note": "IncludeLoopback on for ddcustom so the held loopback connections are counted",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "load_average_start": load_start,
            "load_average_end": load_end,
        },
        "rows": rows,
        "baseline": baseline,
        "baseline_what": "median CPU ms per detection cycle: collect + evaluate the profile (+ evidence "
        "of in-alarm events) + build report + serialise; default profile with and without its baseline "
        "behaviors",
        "memory": memory,
        "rss_mb": memory["empty"]["rss_mb"] if memory else None,
        "rss_of": memory["empty"]["of"] if memory else "not measured",
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
    if baseline is not None:
        print_baseline(baseline)
    if memory is not None:
        print_memory(memory)
    start, end = (" ".join(f"{v:.2f}" for v in load) for load in (load_start, load_end))
    print(f"\nLoad average (1, 5, 15 min): {start} at the start, {end} at the end")
    print(f"\nJSON: {args.json}")
    return 0


def print_baseline(baseline: dict[str, Any]) -> None:
    print(
        "\nThe learned baseline: median CPU time per detection cycle (collect + evaluate the profile + "
        "build report + serialise), the default profile with and without its baseline behaviors, cycles "
        f"taking turns; {baseline['connections']} established loopback connections, IncludeLoopback on.\n"
    )
    print(
        "| state | processes | with baseline ms | without ms | with / without "
        "| new items (last cycle) | alarms raised |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    rows = (
        ("learned, steady", baseline["processes_learned"], baseline["learned"]),
        (
            f"everything new: first cycle (hashes {baseline['processes_new']} new files)",
            baseline["processes_total_new"],
            baseline["new_first"],
        ),
        (
            "everything new: second cycle (raises the alarms, collects their evidence)",
            baseline["processes_total_new"],
            baseline["new_second"],
        ),
        ("everything new, steady", baseline["processes_total_new"], baseline["new_steady"]),
    )
    for name, processes, row in rows:
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "n/a"
        new = ", ".join(f"{kind} {count}" for kind, count in row["new_items"].items())
        print(
            f"| {name} | {processes} | {row['with_ms']:.2f} | {row['without_ms']:.2f} | {ratio} | {new} "
            f"| {row['alarms']} |"
        )
    print(
        f"\nThe system calls alone (the sock_diag dump, each process's stat and cmdline read, its exe link "
        f"read; taking turns with the learned cycles): {baseline['syscall_floor_ms']:.2f} ms, the kernel's "
        "share of a learned cycle on this machine."
    )
    print(
        f"\nLearning ({LEARNING_SECONDS} s): {baseline['learning_cycles']} cycles, the first (hashing every "
        f"executable of the host) {baseline['first_learning_cycle_ms']:.2f} ms. Steady rows: medians of "
        f"{baseline['learned']['cycles']} cycles; the first and second cycles are one cycle each."
    )


def print_memory(memory: dict[str, Any]) -> None:
    empty = memory["empty"]
    if empty["rss_mb"] is not None:
        print(
            f"\nResident memory (VmRSS) of {empty['of']}, default profile, learning, empty baseline: "
            f"{empty['rss_mb']:.1f} MB (peak {empty['peak_mb']:.1f} MB)"
        )
    entries = memory.get("entries")
    if entries is not None and entries["rss_mb"] is not None:
        print(
            f"The same with a baseline of {memory['entries_written']} entries "
            f"({memory['baseline_file_bytes'] / 1e6:.1f} MB file): {entries['rss_mb']:.1f} MB "
            f"(peak {entries['peak_mb']:.1f} MB)"
        )


if __name__ == "__main__":
    sys.exit(main())
