"""The Device Defender metrics report, version 1.0 (docs/device-defender.md, "The metrics report").

Pure: a Sample (and the previously *reported* Sample, for the network_stats deltas) in, a JSON-ready dict
out. Long names by default, short names on request (every key, value keys excepted). Lists are capped at
MaxReportListSize: the standard ones carry their true total, custom list values are cut. Empty sections
are left out, and so are custom metrics whose value is not a finite number or is an empty list.
``report_id`` is epoch milliseconds of the sample, but always above the previous id, so two reports in
the same millisecond or a clock stepping back still get strictly increasing ids.

What the builder reads of the settings is the ``ReportSettings`` protocol, which the configuration's
``Settings`` satisfies: the outputs sit below the configuration and do not import it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional, Protocol

from ddcustom.device.metrics import CUSTOM_METRICS, MetricValue
from ddcustom.device.sample import Connection, ListeningPort, NetworkStats, Sample

REPORT_VERSION = "1.0"

SHORT_NAMES: dict[str, str] = {
    "header": "hed",
    "metrics": "met",
    "report_id": "rid",
    "version": "v",
    "tcp_connections": "tc",
    "established_connections": "ec",
    "connections": "cs",
    "remote_addr": "rad",
    "local_port": "lp",
    "local_interface": "li",
    "listening_tcp_ports": "tp",
    "listening_udp_ports": "up",
    "ports": "pts",
    "port": "pt",
    "interface": "if",
    "network_stats": "ns",
    "bytes_in": "bi",
    "bytes_out": "bo",
    "packets_in": "pi",
    "packets_out": "po",
    "total": "t",
    "custom_metrics": "cmet",
}


def _json_number(value: float) -> Optional[float]:
    """An integral float as int (85.0 -> 85), other finite floats unchanged, non-finite -> None."""
    if not math.isfinite(value):
        return None
    return int(value) if float(value).is_integer() else float(value)


def custom_metric_entry(value_key: str, value: MetricValue) -> Optional[list[dict[str, Any]]]:
    """The report form of one custom metric value, ``[{"number": 85}]``; None when it cannot be sent."""
    if value_key == "number":
        if isinstance(value, list):
            return None
        number = _json_number(value)
        return None if number is None else [{"number": number}]
    if not isinstance(value, list) or not value:
        return None
    if value_key == "number_list":
        numbers = [_json_number(float(v)) for v in value]
        if any(n is None for n in numbers):
            return None
        return [{"number_list": numbers}]
    return [{value_key: [str(v) for v in value]}]


class ReportSettings(Protocol):
    """What a report depends on of the settings."""

    @property
    def use_short_names(self) -> bool: ...

    @property
    def max_report_list_size(self) -> int: ...


class ReportBuilder:
    """Builds reports; remembers only the last report_id."""

    def __init__(self, settings: ReportSettings, last_report_id: Optional[int] = None) -> None:
        """``last_report_id``: the last id sent before (e.g. persisted by a previous run), None if none."""
        self.settings = settings
        # the id of the last report built (or the one given): persist it to continue after a restart
        self.last_report_id = last_report_id or 0

    def build(self, sample: Sample, previous: Optional[Sample]) -> Optional[dict[str, Any]]:
        """The report of ``sample``; network_stats are deltas since ``previous``, the last *reported*
        sample (none in the first report). None when the sample holds nothing to report."""
        metrics = self._network_metrics(sample.network, previous.network if previous else None)
        custom: dict[str, Any] = {}
        for metric in CUSTOM_METRICS:
            value = metric.read(sample, None)
            if isinstance(value, list):  # no total to carry here: the count metrics stay true
                value = list(self._capped(value))
            entry = None if value is None else custom_metric_entry(metric.kind, value)
            if entry is not None:
                custom[metric.name] = entry
        if not metrics and not custom:
            return None
        report_id = max(int(sample.time * 1000), self.last_report_id + 1)
        self.last_report_id = report_id
        n = self._name
        report: dict[str, Any] = {n("header"): {n("report_id"): report_id, n("version"): REPORT_VERSION}}
        if metrics:
            report[n("metrics")] = metrics
        if custom:
            report[n("custom_metrics")] = custom
        return report

    def _name(self, long_name: str) -> str:
        return SHORT_NAMES[long_name] if self.settings.use_short_names else long_name

    def _network_metrics(self, net: Optional[NetworkStats], before: Optional[NetworkStats]) -> dict[str, Any]:
        n = self._name
        metrics: dict[str, Any] = {}
        if net is None:
            return metrics
        if net.listening_tcp:
            metrics[n("listening_tcp_ports")] = self._port_list(net.listening_tcp)
        if net.listening_udp:
            metrics[n("listening_udp_ports")] = self._port_list(net.listening_udp)
        if before is not None:
            grown = net.counters.grown_since(before.counters)
            metrics[n("network_stats")] = {
                n("bytes_in"): grown.bytes_in,
                n("bytes_out"): grown.bytes_out,
                n("packets_in"): grown.packets_in,
                n("packets_out"): grown.packets_out,
            }
        if net.established_tcp:
            metrics[n("tcp_connections")] = {
                n("established_connections"): {
                    n("connections"): [self._connection(c) for c in self._capped(net.established_tcp)],
                    n("total"): len(net.established_tcp),
                }
            }
        return metrics

    def _capped(self, items: Sequence[Any]) -> Sequence[Any]:
        return items[: self.settings.max_report_list_size]

    def _port_list(self, ports: Sequence[ListeningPort]) -> dict[str, Any]:
        n = self._name
        entries: list[dict[str, Any]] = []
        for p in self._capped(ports):
            entry: dict[str, Any] = {n("port"): p.port}
            if p.interface is not None:
                entry[n("interface")] = p.interface
            entries.append(entry)
        return {n("ports"): entries, n("total"): len(ports)}

    def _connection(self, c: Connection) -> dict[str, Any]:
        n = self._name
        entry: dict[str, Any] = {n("remote_addr"): c.remote_addr, n("local_port"): c.local_port}
        if c.local_interface is not None:
            entry[n("local_interface")] = c.local_interface
        return entry
