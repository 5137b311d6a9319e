"""The metrics the component measures, by their Device Defender names.

One catalogue serves the report (custom_metrics section), the detection engine (datapoints) and the
cloud side (CreateCustomMetric types). A metric whose source did not measure it is absent, never 0.
"""

from __future__ import annotations

from typing import Optional, Union

from ddcustom.sample import Sample

# Value kinds as the report writes them: number, number_list, string_list, ip_list.
MetricValue = Union[float, list[float], list[str]]

# custom metric name -> (report value key, CreateCustomMetric metricType, description)
CUSTOM_METRICS: dict[str, tuple[str, str, str]] = {
    "gpu_load_per_inference": ("number", "number", "GPU load % per inference/s, from the application"),
    "avg_inference_time": ("number", "number", "Mean ML inference time in ms, from the application"),
    "gpu_busy_outside_inference": ("number", "number", "GPU busy % its inferences do not explain (meter)"),
    "cpu_usage": ("number", "number", "CPU use in percent"),
    "memory_usage": ("number", "number", "Memory use in percent"),
    "child_processes": ("number", "number", "Descendant processes of the watched applications"),
    "watched_process_instances": ("number", "number", "Top-level processes under a watched app's name"),
    "miner_processes": ("number", "number", "Processes named like miners or with stratum URLs"),
    "mining_pool_connections": ("number", "number", "Established connections to mining-pool ports"),
    "mining_pool_addresses": ("ip_list", "ip-address-list", "Remote IPs of mining-pool connections"),
    "gpu_utilization": ("number", "number", "GPU busy percent (NVML) or load (Jetson)"),
    "gpu_power_watts": ("number", "number", "GPU power draw in watts"),
    "gpu_memory_used_percent": ("number", "number", "GPU memory in use, percent"),
    "gpu_unknown_processes": ("number", "number", "GPU compute processes not attributed to the app"),
    "gpu_process_names": ("string_list", "string-list", "Names of all GPU compute processes"),
}

# Standard Device Defender device-side metrics the engine can evaluate on the device.
STANDARD_METRICS: dict[str, str] = {
    "aws:all-bytes-in": "number",
    "aws:all-bytes-out": "number",
    "aws:all-packets-in": "number",
    "aws:all-packets-out": "number",
    "aws:destination-ip-addresses": "ip_list",
    "aws:listening-tcp-ports": "ports",
    "aws:listening-udp-ports": "ports",
    "aws:num-established-tcp-connections": "number",
    "aws:num-listening-tcp-ports": "number",
    "aws:num-listening-udp-ports": "number",
}


def custom_values(sample: Sample) -> dict[str, MetricValue]:
    """Custom metric values of one sample, by metric name; unmeasured metrics are absent."""
    out: dict[str, MetricValue] = {}
    fb = sample.feedback
    if fb is not None:
        if fb.gpu_load_per_inference is not None:
            out["gpu_load_per_inference"] = fb.gpu_load_per_inference
        if fb.avg_inference_time_ms is not None:
            out["avg_inference_time"] = fb.avg_inference_time_ms
        if fb.gpu_busy_outside_inference is not None:
            out["gpu_busy_outside_inference"] = fb.gpu_busy_outside_inference
    if sample.cpu_percent is not None:
        out["cpu_usage"] = sample.cpu_percent
    if sample.memory_percent is not None:
        out["memory_usage"] = sample.memory_percent
    ps = sample.processes
    if ps is not None:
        out["child_processes"] = float(ps.child_processes)
        if ps.watched_instances is not None:
            out["watched_process_instances"] = float(ps.watched_instances)
        out["miner_processes"] = float(len(ps.miners))
        out["mining_pool_connections"] = float(len(ps.pool_connections))
        out["mining_pool_addresses"] = sorted({c.remote_ip for c in ps.pool_connections})
    gpu = sample.gpu
    if gpu is not None:
        _put(out, "gpu_utilization", gpu.utilization_percent)
        _put(out, "gpu_power_watts", gpu.power_watts)
        _put(out, "gpu_memory_used_percent", gpu.memory_used_percent)
        if gpu.source == "nvml" and gpu.processes_measured:
            unknown = sum(1 for p in gpu.processes if p.attribution == "unknown")
            out["gpu_unknown_processes"] = float(unknown)
            out["gpu_process_names"] = sorted({p.name for p in gpu.processes})
    return out


def standard_values(previous: Optional[Sample], current: Sample) -> dict[str, MetricValue]:
    """Standard metrics of ``current``; byte/packet counts are deltas since ``previous``."""
    out: dict[str, MetricValue] = {}
    net = current.network
    if net is None:
        return out
    tcp_ports = sorted({p.port for p in net.listening_tcp})
    udp_ports = sorted({p.port for p in net.listening_udp})
    out["aws:listening-tcp-ports"] = [float(p) for p in tcp_ports]
    out["aws:listening-udp-ports"] = [float(p) for p in udp_ports]
    out["aws:num-listening-tcp-ports"] = float(len(tcp_ports))
    out["aws:num-listening-udp-ports"] = float(len(udp_ports))
    out["aws:num-established-tcp-connections"] = float(len(net.established_tcp))
    out["aws:destination-ip-addresses"] = sorted({c.remote_ip for c in net.established_tcp})
    if previous is not None and previous.network is not None:
        grown = net.counters.grown_since(previous.network.counters)
        out["aws:all-bytes-in"] = float(grown.bytes_in)
        out["aws:all-bytes-out"] = float(grown.bytes_out)
        out["aws:all-packets-in"] = float(grown.packets_in)
        out["aws:all-packets-out"] = float(grown.packets_out)
    return out


def _put(out: dict[str, MetricValue], name: str, value: Optional[float]) -> None:
    if value is not None:
        out[name] = value
