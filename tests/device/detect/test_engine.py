"""The detection engine: Device Defender semantics evaluated on Samples."""

from __future__ import annotations

import uuid
from typing import Any, Optional

import pytest

from ddcustom.device.detect.engine import Engine
from ddcustom.device.detect.profile import load_profile
from ddcustom.device.detect.statistics import statistic_of
from ddcustom.device.sample import (
    Connection,
    GpuProcess,
    GpuStats,
    ListeningPort,
    NetCounters,
    NetworkStats,
)
from support.helpers import sample

T0 = 1_800_000_000.0


def net(
    bytes_out: int = 0, peers: tuple[str, ...] = (), tcp_ports: tuple[int, ...] = (), bytes_in: int = 0
) -> NetworkStats:
    return NetworkStats(
        listening_tcp=tuple(ListeningPort(p, None) for p in tcp_ports),
        listening_udp=(),
        established_tcp=tuple(Connection(ip, 443, 50000 + i, "eth0") for i, ip in enumerate(peers)),
        counters=NetCounters(bytes_in=bytes_in, bytes_out=bytes_out, packets_in=0, packets_out=0),
    )


def gpu(*names: str) -> GpuStats:
    procs = tuple(GpuProcess(i, n, 0, None, None, "unknown") for i, n in enumerate(names))
    return GpuStats(10.0, 50.0, 1000.0, 10.0, procs)


def engine_for(criteria: dict[str, Any], metric: str = "cpu_usage", **extra: Any) -> Engine:
    profile = load_profile(
        {
            "name": "test-profile",
            "behaviors": [{"name": "b", "metric": metric, "criteria": criteria, **extra}],
        }
    )
    return Engine(profile, "thing-1", window_size=10, warmup=5)


def run(engine: Engine, values: list[Optional[float]], step: float = 10.0) -> list[list[str]]:
    """Evaluate cpu_usage values (None: not measured); the event types per evaluation."""
    return [
        [e.event_type for e in engine.evaluate(sample(T0 + i * step, cpu_percent=v))]
        for i, v in enumerate(values)
    ]


@pytest.mark.parametrize(
    ("operator", "threshold", "value", "violates"),
    [
        ("less-than", 90, 89.9, False),
        ("less-than", 90, 90, True),
        ("less-than-equals", 90, 90, False),
        ("less-than-equals", 90, 90.1, True),
        ("greater-than", 10, 10, True),
        ("greater-than", 10, 10.5, False),
        ("greater-than-equals", 10, 10, False),
        ("greater-than-equals", 10, 9, True),
    ],
)
def test_numeric_operators_describe_normal(
    operator: str, threshold: float, value: float, violates: bool
) -> None:
    engine = engine_for({"comparisonOperator": operator, "value": {"number": threshold}})
    assert run(engine, [value]) == [["in-alarm"] if violates else []]


def test_event_carries_device_defender_violation_fields() -> None:
    engine = engine_for({"comparisonOperator": "less-than", "value": {"number": 90}})
    alarm = engine.evaluate(sample(T0, cpu_percent=95.5))[0]
    cleared = engine.evaluate(sample(T0 + 10, cpu_percent=20.0))[0]
    assert alarm.event_type == "in-alarm" and cleared.event_type == "alarm-cleared"
    assert alarm.violation_id == cleared.violation_id
    uuid.UUID(alarm.violation_id)
    assert alarm.thing_name == "thing-1"
    assert alarm.security_profile_name == "test-profile"
    assert alarm.behavior == {
        "name": "b",
        "metric": "cpu_usage",
        "criteria": {"comparisonOperator": "less-than", "value": {"number": 90}},
    }
    assert alarm.metric_value == {"number": 95.5} and cleared.metric_value == {"number": 20.0}
    assert alarm.event_time == int(T0) and cleared.event_time == int(T0) + 10
    assert alarm.source == "device"
    second = engine.evaluate(sample(T0 + 20, cpu_percent=99.0))[0]
    assert second.violation_id != alarm.violation_id


def test_consecutive_datapoints_to_alarm_and_to_clear() -> None:
    engine = engine_for(
        {
            "comparisonOperator": "less-than",
            "value": {"number": 90},
            "consecutiveDatapointsToAlarm": 3,
            "consecutiveDatapointsToClear": 2,
        }
    )
    #                   v    v   n    v    v    v    v    n   v    n   n
    values: list[Optional[float]] = [95, 95, 10, 95, 95, 95, 95, 10, 95, 10, 10]
    assert run(engine, values) == [[], [], [], [], [], ["in-alarm"], [], [], [], [], ["alarm-cleared"]]


def test_missing_metric_neither_advances_nor_clears() -> None:
    engine = engine_for(
        {
            "comparisonOperator": "less-than",
            "value": {"number": 90},
            "consecutiveDatapointsToAlarm": 2,
            "consecutiveDatapointsToClear": 2,
        }
    )
    assert run(engine, [95, None, float("nan"), 95, None, 10, None, 10]) == [
        [],
        [],
        [],
        ["in-alarm"],
        [],
        [],
        [],
        ["alarm-cleared"],
    ]
    assert engine.active_alarms() == []


def test_active_alarms_and_suppressed_alerts() -> None:
    engine = engine_for({"comparisonOperator": "less-than", "value": {"number": 90}}, suppressAlerts=True)
    assert engine.evaluate(sample(T0, cpu_percent=99.0)) == []
    active = engine.active_alarms()
    assert len(active) == 1
    assert active[0].behavior_name == "b" and active[0].behavior["suppressAlerts"] is True
    assert active[0].metric_value == {"number": 99.0} and active[0].since == T0
    engine.evaluate(sample(T0 + 10, cpu_percent=98.0))
    assert engine.active_alarms()[0].metric_value == {"number": 98.0}
    assert engine.evaluate(sample(T0 + 20, cpu_percent=10.0)) == []
    assert engine.active_alarms() == []


def test_repeated_sample_gives_no_datapoint() -> None:
    engine = engine_for(
        {"comparisonOperator": "less-than", "value": {"number": 90}, "consecutiveDatapointsToAlarm": 2}
    )
    s = sample(T0, cpu_percent=99.0)
    assert engine.evaluate(s) == [] and engine.evaluate(s) == []
    assert len(engine.evaluate(sample(T0 + 5, cpu_percent=99.0))) == 1


@pytest.mark.parametrize(
    ("operator", "members", "names", "violates"),
    [
        ("in-set", ["app", "triton"], ["app"], False),
        ("in-set", ["app", "triton"], ["app", "xmrig"], True),
        ("in-set", ["app"], [], False),
        ("not-in-set", ["xmrig"], ["app"], False),
        ("not-in-set", ["xmrig"], ["app", "xmrig"], True),
    ],
)
def test_string_set_operators(operator: str, members: list[str], names: list[str], violates: bool) -> None:
    engine = engine_for(
        {"comparisonOperator": operator, "value": {"strings": members}}, metric="gpu_process_names"
    )
    events = engine.evaluate(sample(T0, gpu=gpu(*names)))
    assert bool(events) == violates
    if events:
        assert events[0].metric_value == {"strings": sorted(set(names))}


@pytest.mark.parametrize(
    ("operator", "cidrs", "peers", "violates"),
    [
        ("in-cidr-set", ["10.0.0.0/8", "2001:db8::/32"], ["10.1.2.3", "2001:db8::5"], False),
        ("in-cidr-set", ["10.0.0.0/8"], ["10.1.2.3", "52.1.2.3"], True),
        ("in-cidr-set", ["10.0.0.0/8"], ["::ffff:52.1.2.3"], True),
        ("not-in-cidr-set", ["198.51.100.0/24"], ["10.1.2.3"], False),
        ("not-in-cidr-set", ["198.51.100.0/24"], ["10.1.2.3", "198.51.100.7"], True),
    ],
)
def test_cidr_set_operators(operator: str, cidrs: list[str], peers: list[str], violates: bool) -> None:
    engine = engine_for(
        {"comparisonOperator": operator, "value": {"cidrs": cidrs}}, metric="aws:destination-ip-addresses"
    )
    events = engine.evaluate(sample(T0, network=net(peers=tuple(peers))))
    assert bool(events) == violates
    if events:
        assert events[0].metric_value == {"cidrs": sorted(set(peers))}


@pytest.mark.parametrize(
    ("operator", "ports", "listening", "violates"),
    [
        ("in-port-set", [22, 8883], [22], False),
        ("in-port-set", [22], [22, 3333], True),
        ("not-in-port-set", [3333, 4444], [22], False),
        ("not-in-port-set", [3333, 4444], [22, 4444], True),
    ],
)
def test_port_set_operators(operator: str, ports: list[int], listening: list[int], violates: bool) -> None:
    engine = engine_for(
        {"comparisonOperator": operator, "value": {"ports": ports}}, metric="aws:listening-tcp-ports"
    )
    events = engine.evaluate(sample(T0, network=net(tcp_ports=tuple(listening))))
    assert bool(events) == violates
    if events:
        assert events[0].metric_value == {"ports": sorted(listening)}


def test_standard_count_metric_reports_count_and_first_sample_has_no_byte_delta() -> None:
    engine = engine_for(
        {"comparisonOperator": "less-than", "value": {"count": 1000}}, metric="aws:all-bytes-out"
    )
    assert (
        engine.evaluate(sample(T0, network=net(bytes_out=10_000_000))) == []
    )  # no previous sample: no delta
    assert engine.evaluate(sample(T0 + 10, network=net(bytes_out=10_000_500))) == []
    alarm = engine.evaluate(sample(T0 + 20, network=net(bytes_out=10_002_000)))
    assert alarm[0].metric_value == {"count": 1500}


def test_duration_seconds_sums_bytes_over_the_window() -> None:
    engine = engine_for(
        {"comparisonOperator": "less-than", "value": {"count": 1000}, "durationSeconds": 300},
        metric="aws:all-bytes-out",
    )
    sent = 0
    kinds: list[list[str]] = []
    # one sample a minute: 100 bytes/min for 6 min, 300 bytes/min for 3 min, then nothing
    for minute, per_minute in enumerate([0] + [100] * 6 + [300] * 3 + [0] * 6):
        sent += per_minute
        events = engine.evaluate(sample(T0 + minute * 60.0, network=net(bytes_out=sent)))
        kinds.append([f"{e.event_type}:{e.metric_value['count']}" for e in events])
    # the datapoint at minute m is the sum of the deltas of minutes m-4..m (the last 300 s)
    assert kinds[:9] == [[]] * 9  # sums 100, 200, ..., 500, 500, 700, 900
    assert kinds[9] == ["in-alarm:1100"]  # 100+100+300+300+300
    assert kinds[10] == []  # 1000: still violating (not less than 1000)
    assert kinds[11] == ["alarm-cleared:900"]  # the first 100s have left the window
    assert kinds[12:] == [[]] * 4


def test_partial_duration_window_alarms_early_on_an_upper_bound() -> None:
    engine = engine_for(
        {"comparisonOperator": "less-than", "value": {"count": 1000}, "durationSeconds": 300},
        metric="aws:all-bytes-out",
    )
    engine.evaluate(sample(T0, network=net(bytes_out=0)))
    events = engine.evaluate(sample(T0 + 10, network=net(bytes_out=5000)))
    assert [e.event_type for e in events] == ["in-alarm"]


def test_partial_duration_window_does_not_alarm_on_a_lower_bound_too_early() -> None:
    engine = engine_for(
        {"comparisonOperator": "greater-than", "value": {"count": 500}, "durationSeconds": 300},
        metric="aws:all-bytes-in",
    )
    received = 0
    kinds = []
    for step in range(12):  # 50 bytes per 30 s: 500 per full window, which violates greater-than 500
        received += 50
        kinds.append(
            [e.event_type for e in engine.evaluate(sample(T0 + step * 30.0, network=net(bytes_in=received)))]
        )
    assert kinds[:10] == [[]] * 10  # the first delta starts at t=0; the window is full at t=300
    assert kinds[10] == ["in-alarm"]


def test_statistical_threshold_warm_up_then_alarm_then_clear() -> None:
    engine = engine_for(
        {"comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p90"}}
    )
    values: list[Optional[float]] = [99, 20, 21, 22, 20, 21, 22, 60, 21]
    kinds = run(engine, values)
    # warm-up is 5 datapoints: the 99 cannot alarm; then 21 and 22 are below p90 of the history (68.2, 52.8)
    assert kinds[:7] == [[]] * 7
    assert kinds[7] == ["in-alarm"]  # 60 > p90 of [99, 20, 21, 22, 20, 21, 22] = 52.8
    assert kinds[8] == ["alarm-cleared"]


def test_statistical_baseline_is_a_bounded_window() -> None:
    engine = engine_for(
        {"comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p100"}}
    )
    values: list[Optional[float]] = [99.0, *[20.0] * 10, 30.0]
    kinds = run(engine, values)
    # window of 10: when 30 arrives the 99 has been forgotten, so the maximum of the history is 20
    assert kinds[-1] == ["in-alarm"]
    assert kinds[:-1] == [[]] * 11


@pytest.mark.parametrize(
    ("values", "statistic", "expected"),
    [
        ([5, 1, 4, 2, 3], "p50", 3),
        ([5, 1, 4, 2, 3], "p0", 1),
        ([5, 1, 4, 2, 3], "p100", 5),
        ([0, 10], "p90", 9),
        ([0, 1000], "p99.9", 999),
        ([5, 1, 4, 2, 4], "Average", 3.2),
    ],
)
def test_statistic_of(values: list[float], statistic: str, expected: float) -> None:
    assert statistic_of(values, statistic) == pytest.approx(expected)


def test_average_statistic_is_accepted_and_uses_the_mean_of_the_devices_own_history() -> None:
    # CloudFormation's AWS::IoT::SecurityProfile allows "Average" next to the percentiles.
    engine = engine_for(
        {"comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "Average"}}
    )
    values: list[Optional[float]] = [10, 20, 30, 40, 50, 30, 31, 29]
    kinds = run(engine, values)
    # warm-up of 5 datapoints; then 30 <= mean 30 is normal, 31 > mean(10..50, 30) = 30 violates,
    # and 29 <= mean(10, 20, 30, 40, 50, 30, 31) = 30.14 clears
    assert kinds == [[]] * 6 + [["in-alarm"], ["alarm-cleared"]]


def test_a_new_profile_keeps_unchanged_behaviors_and_invalidates_alarms_of_changed_ones() -> None:
    cpu = {
        "name": "cpu",
        "metric": "cpu_usage",
        "criteria": {"comparisonOperator": "less-than", "value": {"number": 90}},
    }
    mem = {
        "name": "mem",
        "metric": "memory_usage",
        "criteria": {"comparisonOperator": "less-than", "value": {"number": 50}},
    }
    engine = Engine(load_profile({"name": "p", "behaviors": [cpu, mem]}), "thing-1")
    raised = engine.evaluate(sample(T0, cpu_percent=99.0, memory_percent=80.0))
    assert [e.behavior_name for e in raised] == ["cpu", "mem"]
    stricter_mem = {**mem, "criteria": {"comparisonOperator": "less-than", "value": {"number": 90}}}
    invalidated = engine.replace_profile(
        load_profile({"name": "p", "behaviors": [cpu, stricter_mem]}), T0 + 5
    )
    assert [(e.behavior, e.event_type, e.violation_id) for e in invalidated] == [
        (mem, "alarm-invalidated", raised[1].violation_id)
    ]
    assert invalidated[0].event_time == int(T0) + 5
    cleared = engine.evaluate(sample(T0 + 10, cpu_percent=10.0, memory_percent=80.0))
    # the unchanged cpu behavior clears the alarm it raised; the changed mem behavior starts afresh
    assert [(e.behavior_name, e.event_type, e.violation_id) for e in cleared] == [
        ("cpu", "alarm-cleared", raised[0].violation_id)
    ]
