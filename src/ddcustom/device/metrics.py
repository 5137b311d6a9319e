"""The metrics the component measures, each declared once, by its Device Defender name.

The report (custom_metrics), the detection engine (datapoints and profile validation), the cloud side
(CreateCustomMetric) and the README's metric table (``make docs``) all come from METRICS. A metric its
source did not measure reads None and is left out, never 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable, Optional, Union

from ddcustom.device.sample import (
    BaselineStats,
    Connection,
    GpuProcess,
    LevelExcess,
    ListeningPort,
    NetCounters,
    NewLibrary,
    Sample,
)

MetricValue = Union[float, list[float], list[str]]
# A metric's value in ``sample``; ``previous`` (None at first) is the sample before, for deltas.
Reader = Callable[[Sample, Optional[Sample]], Optional[MetricValue]]
# What a violation of a metric points at in ``sample``: processes (pids), connections, other items
# (listening ports); the alert's evidence describes them.
Culprits = tuple[tuple[int, ...], tuple[Connection, ...], tuple[str, ...]]
CulpritReader = Callable[[Sample], Culprits]
# Device Defender's value key of each list kind: criteria value.numbers, a violation's metricValue.numbers...
LIST_VALUE_KEYS = {"number_list": "numbers", "string_list": "strings", "ip_list": "cidrs", "ports": "ports"}


@dataclass(frozen=True)
class Metric:
    name: str  # standard Device Defender metrics start with "aws:", the others are custom metrics
    kind: str  # number, number_list, string_list, ip_list (also a custom metric's report value key), ports
    unit: str
    description: str  # one line; a custom metric's displayName in the cloud
    read: Reader
    culprits: Optional[CulpritReader] = None  # alerts on it carry evidence of these

    @property
    def standard(self) -> bool:
        return self.name.startswith("aws:")

    @property
    def baseline(self) -> bool:
        """Whether it is a metric of the learned baseline (read with ``_baseline``): a profile that uses
        one turns the baseline on."""
        return isinstance(self.read, BaselineReader)

    @property
    def cloud_type(self) -> str:
        """CreateCustomMetric's metricType."""
        return "ip-address-list" if self.kind == "ip_list" else self.kind.replace("_", "-")


def _count(n: Optional[int]) -> Optional[float]:
    return None if n is None else float(n)


def _ports(ports: tuple[ListeningPort, ...]) -> list[float]:
    return [float(p) for p in sorted({p.port for p in ports})]


# A GPU process metric: measured only when every compute process was listed.
def _gpu_processes(read: Callable[[tuple[GpuProcess, ...]], MetricValue]) -> Reader:
    def reader(sample: Sample, _: Optional[Sample]) -> Optional[MetricValue]:
        gpu = sample.gpu
        if gpu is None or not gpu.processes_measured:
            return None
        return read(gpu.processes)

    return reader


# A network counter's growth since the previous sample; none without one.
def _grown(counter: Callable[[NetCounters], int]) -> Reader:
    def read(sample: Sample, previous: Optional[Sample]) -> Optional[float]:
        if sample.network is None or previous is None or previous.network is None:
            return None
        return float(counter(sample.network.counters.grown_since(previous.network.counters)))

    return read


class BaselineReader:
    """The reader of a metric of the learned baseline: no value while it learns (its rules neither alarm
    nor clear). The kinds of baseline items (ddcustom.device.baseline.kinds) name these metrics."""

    def __init__(self, read: Callable[[BaselineStats], MetricValue]) -> None:
        self._read = read

    def __call__(self, sample: Sample, _: Optional[Sample]) -> Optional[MetricValue]:
        baseline = sample.baseline
        return None if baseline is None or baseline.learning else self._read(baseline)


# A metric of the learned baseline (in BASELINE_METRICS).
def _baseline(read: Callable[[BaselineStats], MetricValue]) -> Reader:
    return BaselineReader(read)


def _pids(read: Callable[[Sample], Iterable[int]]) -> CulpritReader:
    return lambda s: (tuple(read(s)), (), ())


def _connections(read: Callable[[Sample], Iterable[Connection]]) -> CulpritReader:
    return lambda s: ((), tuple(read(s)), ())


def _new(s: Sample) -> BaselineStats:
    return s.baseline or BaselineStats(learning=True)


def _above(read: Callable[[BaselineStats], Optional[LevelExcess]], unit: str) -> CulpritReader:
    """The process furthest above its program's level, and what it used next to what it may use."""

    def culprits(s: Sample) -> Culprits:
        found = read(_new(s))
        if found is None:
            return (), (), ()
        whose = "this process" if found.level == "process" else "its processes together"
        item = (
            f"{found.program}: {whose} used {found.now:g} % of {unit} over the last window; "
            f"it may use {found.allowed:g} % (what it used while learning, or the floor, or an approval)"
        )
        return (found.pid,), (), (item,)

    return culprits


def _libraries(read: Callable[[BaselineStats], tuple[NewLibrary, ...]]) -> CulpritReader:
    """The processes mapping new code, and what: the file with its SHA-256, the loader variables."""

    def culprits(s: Sample) -> Culprits:
        found = read(_new(s))
        items = []
        for library in found:
            what = (
                f"{library.path} (sha256 {library.sha256 or 'unknown'})" if library.path else "code in memory"
            )
            preload = f"; {library.preload}" if library.preload else ""
            items.append(f"{library.program} (pid {library.pid}) maps {what}{preload}")
        return tuple(dict.fromkeys(library.pid for library in found)), (), tuple(items)

    return culprits


def _network_use(s: Sample) -> Culprits:
    found = _new(s).new_network_use
    items = tuple(f"{n.program} (pid {n.pid}) holds a {n.use} socket" for n in found)
    return tuple(dict.fromkeys(n.pid for n in found)), (), items


# Custom metrics first, in report order; then the standard ones the engine evaluates on the device.
# fmt: off
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("gpu_load_per_inference", "number", "% per inference/s",
           "GPU load % per inference/s, from the application",
           lambda s, _: s.feedback.gpu_load_per_inference if s.feedback else None),
    Metric("avg_inference_time", "number", "ms", "Mean ML inference time in ms, from the application",
           lambda s, _: s.feedback.avg_inference_time_ms if s.feedback else None),
    Metric("gpu_busy_outside_inference", "number", "points",
           "GPU busy % its inferences do not explain (meter)",
           lambda s, _: s.feedback.gpu_busy_outside_inference if s.feedback else None),
    Metric("cpu_usage", "number", "%", "CPU use in percent", lambda s, _: s.cpu_percent),
    Metric("memory_usage", "number", "%", "Memory use in percent", lambda s, _: s.memory_percent),
    Metric("child_processes", "number", "processes", "Descendant processes of the watched applications",
           lambda s, _: float(s.processes.child_processes) if s.processes else None,
           _pids(lambda s: s.processes.child_pids if s.processes else ())),
    Metric("watched_process_instances", "number", "processes",
           "Top-level processes under a watched app's name",
           lambda s, _: _count(s.processes.watched_instances) if s.processes else None,
           _pids(lambda s: s.processes.instance_pids if s.processes else ())),
    Metric("miner_processes", "number", "processes", "Processes named like miners or with stratum URLs",
           lambda s, _: float(len(s.processes.miners)) if s.processes else None,
           _pids(lambda s: [m.pid for m in s.processes.miners] if s.processes else ())),
    Metric("mining_pool_connections", "number", "connections", "Established connections to mining-pool ports",
           lambda s, _: float(len(s.processes.pool_connections)) if s.processes else None,
           _connections(lambda s: s.processes.pool_connections if s.processes else ())),
    Metric("mining_pool_addresses", "ip_list", "IP addresses", "Remote IPs of mining-pool connections",
           lambda s, _: sorted({c.remote_ip for c in s.processes.pool_connections}) if s.processes else None),
    Metric("gpu_utilization", "number", "%", "GPU busy percent (NVML) or load (Jetson)",
           lambda s, _: s.gpu.utilization_percent if s.gpu else None),
    Metric("gpu_power_watts", "number", "W", "GPU power draw in watts",
           lambda s, _: s.gpu.power_watts if s.gpu else None),
    Metric("gpu_memory_used_percent", "number", "%", "GPU memory in use, percent",
           lambda s, _: s.gpu.memory_used_percent if s.gpu else None),
    Metric("gpu_unknown_processes", "number", "processes", "GPU compute processes not attributed to the app",
           _gpu_processes(lambda ps: float(sum(p.attribution == "unknown" for p in ps))),
           _pids(lambda s: [p.pid for p in s.gpu.processes if p.attribution == "unknown"] if s.gpu else ())),
    Metric("gpu_process_names", "string_list", "names", "Names of all GPU compute processes",
           _gpu_processes(lambda ps: sorted({p.name for p in ps}))),
    Metric("new_executables", "number", "processes",
           "Processes running an executable (or script) the device's learned baseline does not know",
           _baseline(lambda b: float(len(b.new_processes))),
           _pids(lambda s: [p.pid for p in _new(s).new_processes])),
    Metric("new_executable_paths", "string_list", "paths", "What those processes run",
           _baseline(lambda b: sorted({p.path for p in b.new_processes}))),
    Metric("unknown_process_cpu", "number", "% of one core",
           "CPU use of the busiest process neither watched, nor allowed, nor in the baseline",
           _baseline(lambda b: b.busiest_new[1] if b.busiest_new else 0.0),
           _pids(lambda s: [_new(s).busiest_new[0]] if _new(s).busiest_new else ())),  # type: ignore[index]
    Metric("new_outbound_endpoints", "number", "connections",
           "Connections the device opened to endpoints (/24 or /64 and port) its baseline does not know",
           _baseline(lambda b: float(len(b.new_endpoints))), _connections(lambda s: _new(s).new_endpoints)),
    Metric("new_endpoint_addresses", "string_list", "endpoints", "Those endpoints, as address:port",
           _baseline(lambda b: sorted({c.remote_addr for c in b.new_endpoints}))),
    Metric("new_listening_ports", "number", "ports", "Listening ports the baseline does not know",
           _baseline(lambda b: float(len(b.new_listening))), lambda s: ((), (), _new(s).new_listening)),
    Metric("new_gpu_executables", "number", "processes",
           "GPU compute processes running an executable the baseline does not know (GPU metrics on)",
           _baseline(lambda b: float(len(b.new_gpu_processes))),
           _pids(lambda s: [p.pid for p in _new(s).new_gpu_processes])),
    Metric("known_process_cpu_above_level", "number", "% of one core",
           "How far the busiest process of a known program is above the CPU its program used while learning",
           _baseline(lambda b: b.cpu_above_level.excess if b.cpu_above_level else 0.0),
           _above(lambda b: b.cpu_above_level, "one core")),
    Metric("new_program_libraries", "number", "processes",
           "Processes mapping a shared object their (known) program never mapped while learning",
           _baseline(lambda b: float(len({n.pid for n in b.new_libraries}))),
           _libraries(lambda b: b.new_libraries)),
    Metric("new_program_anonymous_code", "number", "processes",
           "Processes with executable memory no file backs, in a program that never had any while learning",
           _baseline(lambda b: float(len({n.pid for n in b.new_anonymous_code}))),
           _libraries(lambda b: b.new_anonymous_code)),
    Metric("new_program_network_use", "number", "processes",
           "Processes of a program that never opened connections (or listened) while learning, now doing so",
           _baseline(lambda b: float(len({n.pid for n in b.new_network_use}))), _network_use),
    Metric("known_gpu_process_above_level", "number", "% of one GPU",
           "How far the busiest GPU process of a known program is above the SM use it had while learning",
           _baseline(lambda b: b.gpu_above_level.excess if b.gpu_above_level else 0.0),
           _above(lambda b: b.gpu_above_level, "one GPU's SMs")),
    Metric("aws:all-bytes-in", "number", "bytes", "Bytes received since the previous sample",
           _grown(lambda c: c.bytes_in)),
    Metric("aws:all-bytes-out", "number", "bytes", "Bytes sent since the previous sample",
           _grown(lambda c: c.bytes_out)),
    Metric("aws:all-packets-in", "number", "packets", "Packets received since the previous sample",
           _grown(lambda c: c.packets_in)),
    Metric("aws:all-packets-out", "number", "packets", "Packets sent since the previous sample",
           _grown(lambda c: c.packets_out)),
    Metric("aws:destination-ip-addresses", "ip_list", "IP addresses",
           "Remote IPs of established TCP connections",
           lambda s, _: sorted({c.remote_ip for c in s.network.established_tcp}) if s.network else None),
    Metric("aws:listening-tcp-ports", "ports", "ports", "Listening TCP ports",
           lambda s, _: _ports(s.network.listening_tcp) if s.network else None),
    Metric("aws:listening-udp-ports", "ports", "ports", "Listening UDP ports",
           lambda s, _: _ports(s.network.listening_udp) if s.network else None),
    Metric("aws:num-established-tcp-connections", "number", "connections", "Established TCP connections",
           lambda s, _: float(len(s.network.established_tcp)) if s.network else None),
    Metric("aws:num-listening-tcp-ports", "number", "ports", "Number of listening TCP ports",
           lambda s, _: float(len(_ports(s.network.listening_tcp))) if s.network else None),
    Metric("aws:num-listening-udp-ports", "number", "ports", "Number of listening UDP ports",
           lambda s, _: float(len(_ports(s.network.listening_udp))) if s.network else None),
)}
# fmt: on
CUSTOM_METRICS = [m for m in METRICS.values() if not m.standard]
BASELINE_METRICS = frozenset(m.name for m in METRICS.values() if m.baseline)
