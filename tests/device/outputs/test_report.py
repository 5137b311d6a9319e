"""Device Defender report v1.0: exact content, names, deltas, caps, ids, schema, properties."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ddcustom.device.config import MAX_REPORT_LIST_SIZE, ConfigError
from ddcustom.device.outputs.report import SHORT_NAMES, ReportBuilder
from ddcustom.device.outputs.sink import serialise
from ddcustom.device.sample import (
    Connection,
    Feedback,
    GpuProcess,
    GpuStats,
    ListeningPort,
    MinerProcess,
    NetCounters,
    NetworkStats,
    ProcessStats,
)
from ddcustom.device.sources.collect import Collector
from support.helpers import REPORT_SCHEMA, sample, settings

VALIDATOR = jsonschema.Draft7Validator(REPORT_SCHEMA)


def network(
    bytes_in: int = 1000, bytes_out: int = 500, packets_in: int = 10, packets_out: int = 5
) -> NetworkStats:
    return NetworkStats(
        listening_tcp=(ListeningPort(22, None), ListeningPort(8883, "eth0")),
        listening_udp=(ListeningPort(5353, "eth0"),),
        established_tcp=(
            Connection("52.1.2.3", 8883, 51000, "eth0"),
            Connection("2001:db8::1", 443, 51001, None),
        ),
        counters=NetCounters(bytes_in, bytes_out, packets_in, packets_out),
    )


FULL = sample(
    network=network(),
    cpu_percent=12.5,
    memory_percent=40.0,
    feedback=Feedback(gpu_load_per_inference=85.0, avg_inference_time_ms=None),
    processes=ProcessStats(
        child_processes=2,
        miners=(MinerProcess(7, "xmrig", "name"),),
        pool_connections=(Connection("203.0.113.9", 3333, 50000, "eth0"),),
    ),
    gpu=GpuStats(
        utilization_percent=91.0,
        power_watts=432.25,
        sm_clock_mhz=1980.0,
        memory_used_percent=None,
        processes=(GpuProcess(7, "xmrig", 0, 1 << 20, 50.0, "unknown"),),
    ),
)


def assert_valid(report: dict[str, Any]) -> None:
    errors = [e.message for e in VALIDATOR.iter_errors(report)]
    assert errors == []


def test_first_report_long_names_exactly() -> None:
    report = ReportBuilder(settings()).build(FULL, None)
    assert report == {
        "header": {"report_id": 1_700_000_000_000, "version": "1.0"},
        "metrics": {
            "listening_tcp_ports": {"ports": [{"port": 22}, {"port": 8883, "interface": "eth0"}], "total": 2},
            "listening_udp_ports": {"ports": [{"port": 5353, "interface": "eth0"}], "total": 1},
            "tcp_connections": {
                "established_connections": {
                    "connections": [
                        {"remote_addr": "52.1.2.3:8883", "local_port": 51000, "local_interface": "eth0"},
                        {"remote_addr": "[2001:db8::1]:443", "local_port": 51001},
                    ],
                    "total": 2,
                }
            },
        },
        "custom_metrics": {
            "gpu_load_per_inference": [{"number": 85}],
            "cpu_usage": [{"number": 12.5}],
            "memory_usage": [{"number": 40}],
            "child_processes": [{"number": 2}],
            "miner_processes": [{"number": 1}],
            "mining_pool_connections": [{"number": 1}],
            "mining_pool_addresses": [{"ip_list": ["203.0.113.9"]}],
            "gpu_utilization": [{"number": 91}],
            "gpu_power_watts": [{"number": 432.25}],
            "gpu_unknown_processes": [{"number": 1}],
            "gpu_process_names": [{"string_list": ["xmrig"]}],
        },
    }
    assert_valid(report)


def test_serialised_numbers_are_json_numbers_compact() -> None:
    report = ReportBuilder(settings()).build(FULL, None)
    assert report is not None
    text = serialise(report)
    assert '"gpu_load_per_inference":[{"number":85}]' in text
    assert '"cpu_usage":[{"number":12.5}]' in text
    assert ": " not in text and ", " not in text


def test_second_report_has_deltas_since_previous() -> None:
    builder = ReportBuilder(settings())
    before = sample(network=network(1000, 500, 10, 5))
    after = sample(time=1_700_000_300.0, network=network(4000, 800, 30, 9))
    report = builder.build(after, before)
    assert report is not None
    assert report["metrics"]["network_stats"] == {
        "bytes_in": 3000,
        "bytes_out": 300,
        "packets_in": 20,
        "packets_out": 4,
    }
    assert_valid(report)


def test_counter_reset_is_not_negative() -> None:
    before = sample(network=network(10_000, 10_000, 100, 100))
    after = sample(time=1_700_000_300.0, network=network(700, 20_000, 7, 150))  # rx counters reset
    report = ReportBuilder(settings()).build(after, before)
    assert report is not None
    assert report["metrics"]["network_stats"] == {
        "bytes_in": 700,
        "bytes_out": 10_000,
        "packets_in": 7,
        "packets_out": 50,
    }


def test_short_names_for_every_key_but_value_keys() -> None:
    builder = ReportBuilder(settings(UseShortNames=True))
    first = builder.build(FULL, None)
    second = builder.build(replace(FULL, time=FULL.time + 300), FULL)
    assert first is not None and second is not None
    assert second["met"]["ns"] == {"bi": 0, "bo": 0, "pi": 0, "po": 0}
    assert second["met"]["tp"] == {"pts": [{"pt": 22}, {"pt": 8883, "if": "eth0"}], "t": 2}
    assert second["met"]["tc"]["ec"]["cs"][0] == {"rad": "52.1.2.3:8883", "lp": 51000, "li": "eth0"}
    assert second["cmet"]["mining_pool_addresses"] == [{"ip_list": ["203.0.113.9"]}]
    assert set(second["hed"]) == {"rid", "v"}

    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        if isinstance(node, list):
            return {k for v in node for k in keys(v)}
        return set()

    long_names = set(SHORT_NAMES)
    assert not keys(second) & long_names
    assert_valid(first)
    assert_valid(second)


def test_lists_capped_with_true_total() -> None:
    many = tuple(Connection("10.0.0.1", 443, 40000 + i, "eth0") for i in range(7))
    ports = tuple(ListeningPort(1000 + i, None) for i in range(5))
    net = NetworkStats(ports, ports, many, NetCounters(0, 0, 0, 0))
    report = ReportBuilder(settings(MaxReportListSize=3)).build(sample(network=net), None)
    assert report is not None
    connections = report["metrics"]["tcp_connections"]["established_connections"]
    assert len(connections["connections"]) == 3 and connections["total"] == 7
    assert len(report["metrics"]["listening_tcp_ports"]["ports"]) == 3
    assert report["metrics"]["listening_tcp_ports"]["total"] == 5
    assert_valid(report)


def test_custom_metric_lists_capped_too() -> None:
    # a report over IoT Core's 128 KB is rejected whole: no list in it may grow without bound
    pools = tuple(Connection(f"203.0.113.{i}", 3333, 50000 + i, "eth0") for i in range(1, 8))
    processes = ProcessStats(child_processes=0, miners=(), pool_connections=pools)
    report = ReportBuilder(settings(MaxReportListSize=3)).build(sample(processes=processes), None)
    assert report is not None
    custom = report["custom_metrics"]
    assert custom["mining_pool_addresses"] == [{"ip_list": ["203.0.113.1", "203.0.113.2", "203.0.113.3"]}]
    assert custom["mining_pool_connections"] == [{"number": 7}]  # the count stays true
    assert_valid(report)


def test_report_at_the_largest_list_size_fits_in_an_iot_core_message() -> None:
    """Worst case: every list over the cap, IPv6 addresses, long interface and process names."""
    n = MAX_REPORT_LIST_SIZE + 5
    connections = tuple(
        Connection(f"ffff:ffff:ffff:ffff:ffff:ffff:ffff:{0xF000 + i:x}", 65535, 65535 - i, "x" * 15)
        for i in range(n)
    )
    ports = tuple(ListeningPort(60000 + i, "x" * 15) for i in range(n))
    net = NetworkStats(ports, ports, connections, NetCounters(2**62, 2**62, 2**62, 2**62))
    gpu_processes = tuple(GpuProcess(i, f"{'y' * 15}{i}", 0, 1, 1.0, "unknown") for i in range(n))
    assert FULL.gpu is not None
    worst = replace(
        FULL,
        network=net,
        processes=ProcessStats(child_processes=2**31, miners=(), pool_connections=connections),
        gpu=replace(FULL.gpu, processes=gpu_processes),
    )
    builder = ReportBuilder(settings(MaxReportListSize=MAX_REPORT_LIST_SIZE))
    report = builder.build(worst, worst)
    assert report is not None
    assert len(serialise(report).encode()) < 128 * 1024
    with pytest.raises(ConfigError, match="MaxReportListSize"):
        settings(MaxReportListSize=MAX_REPORT_LIST_SIZE + 1)


def test_empty_sections_left_out() -> None:
    quiet = NetworkStats((), (), (), NetCounters(0, 0, 0, 0))
    builder = ReportBuilder(settings())
    only_custom = builder.build(sample(network=quiet, cpu_percent=3.0), None)
    assert only_custom is not None
    assert "metrics" not in only_custom
    assert only_custom["custom_metrics"] == {"cpu_usage": [{"number": 3}]}
    only_metrics = builder.build(sample(time=2e9, network=quiet), sample(network=quiet))
    assert only_metrics is not None and "custom_metrics" not in only_metrics
    assert only_metrics["metrics"] == {
        "network_stats": {"bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0}
    }
    assert_valid(only_custom)
    assert_valid(only_metrics)


def test_nothing_to_report_gives_none_and_keeps_the_id() -> None:
    builder = ReportBuilder(settings(), last_report_id=5)
    assert builder.build(sample(network=NetworkStats((), (), (), NetCounters(0, 0, 0, 0))), None) is None
    assert builder.last_report_id == 5


def test_non_finite_and_empty_values_left_out() -> None:
    odd = sample(
        cpu_percent=float("nan"),
        memory_percent=float("inf"),
        processes=ProcessStats(child_processes=0, miners=(), pool_connections=()),
    )
    report = ReportBuilder(settings()).build(odd, None)
    assert report is not None
    assert "cpu_usage" not in report["custom_metrics"] and "memory_usage" not in report["custom_metrics"]
    assert "mining_pool_addresses" not in report["custom_metrics"]  # empty ip list
    assert report["custom_metrics"]["miner_processes"] == [{"number": 0}]
    serialise(report)  # would raise on NaN


def test_report_id_strictly_increasing_same_millisecond_and_clock_back() -> None:
    builder = ReportBuilder(settings())
    ids = []
    for t in (100.0, 100.0, 99.0):
        report = builder.build(sample(time=t, cpu_percent=1.0), None)
        assert report is not None
        ids.append(report["header"]["report_id"])
    assert ids == [100_000, 100_001, 100_002]
    assert builder.last_report_id == 100_002


def test_report_id_continues_from_seed() -> None:
    builder = ReportBuilder(settings(), last_report_id=5_000_000_000_000)
    report = builder.build(sample(time=1_700_000_000.0, cpu_percent=1.0), None)
    assert report is not None and report["header"]["report_id"] == 5_000_000_000_001
    assert builder.last_report_id == 5_000_000_000_001


def test_report_of_a_real_sample_is_valid() -> None:
    collector = Collector(settings(IncludeLoopback=True))
    builder = ReportBuilder(settings(IncludeLoopback=True, UseShortNames=True))
    try:
        first = collector.sample()
        second = collector.sample()
    finally:
        collector.close()
    for report in (builder.build(first, None), builder.build(second, first)):
        assert report is not None
        assert_valid(report)
        assert_valid(json.loads(serialise(report)))


# ---- the schema rejects what Device Defender rejects ------------------------------------------------

GOOD = {"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"m": [{"number": 0}]}}


@pytest.mark.parametrize(
    "bad",
    [
        {"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"m": [{"number": "180"}]}},
        {"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"m": {"number": 0}}},
        {
            "header": {"report_id": 1, "version": "1.0"},
            "custom_metrics": {"m": [{"number": 1}, {"number": 2}]},
        },
        {"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"aws:m": [{"number": 0}]}},
        {"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"m": [{"ip_list": "10.0.0.1"}]}},
        {"header": {"report_id": 1, "version": "1.0"}},
        {"header": {"report_id": 0, "version": "1.0"}, "custom_metrics": {"m": [{"number": 0}]}},
        {"header": {"report_id": "1", "version": "1.0"}, "custom_metrics": {"m": [{"number": 0}]}},
        {"header": {"report_id": 1, "version": "2.0"}, "custom_metrics": {"m": [{"number": 0}]}},
        {"hed": {"rid": 1, "v": "1.0"}, "custom_metrics": {"m": [{"number": 0}]}},  # mixed long and short
        {"hed": {"rid": 1, "v": "1.0"}, "met": {"ns": {"bi": -1, "bo": 0, "pi": 0, "po": 0}}},
        {"header": {"report_id": 1, "version": "1.0"}, "metrics": {"network_stats": {"bytes_in": "5"}}},
        {
            "header": {"report_id": 1, "version": "1.0"},
            "metrics": {"listening_tcp_ports": {"ports": [{"pt": 22}], "total": 1}},
        },
    ],
)
def test_schema_rejects(bad: dict[str, Any]) -> None:
    assert_valid(GOOD)
    assert not VALIDATOR.is_valid(bad)


# ---- properties ---------------------------------------------------------------------------------------

clock = st.floats(min_value=-1e10, max_value=1e13, allow_nan=False)
counter = st.integers(min_value=0, max_value=2**64 - 1)


@hypothesis_settings(max_examples=200, deadline=None)
@given(times=st.lists(clock, min_size=1, max_size=30), seed=st.integers(min_value=0, max_value=2**53))
def test_report_id_monotonic_under_any_clock(times: list[float], seed: int) -> None:
    builder = ReportBuilder(settings(), last_report_id=seed)
    last = seed
    for t in times:
        report = builder.build(sample(time=t, cpu_percent=1.0), None)
        assert report is not None
        report_id = report["header"]["report_id"]
        assert isinstance(report_id, int) and report_id > last and report_id >= 1
        last = report_id


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    before=st.tuples(counter, counter, counter, counter), after=st.tuples(counter, counter, counter, counter)
)
def test_deltas_never_negative(before: tuple[int, int, int, int], after: tuple[int, int, int, int]) -> None:
    report = ReportBuilder(settings()).build(
        sample(network=network(*after)), sample(network=network(*before))
    )
    assert report is not None
    deltas = report["metrics"]["network_stats"]
    assert all(isinstance(v, int) and v >= 0 for v in deltas.values())
    for key, was, now in zip(("bytes_in", "bytes_out", "packets_in", "packets_out"), before, after):
        assert deltas[key] == (now - was if now >= was else now)
    assert_valid(report)
