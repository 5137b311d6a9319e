"""Security profile loading and validation (ValidateSecurityProfileBehaviors rules)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ddcustom.device.config import ConfigError, parse_settings
from ddcustom.device.detect.profile import ProfileError, load_profile
from support.helpers import ROOT

PACKAGED = ROOT / "src" / "ddcustom" / "profiles" / "crypto-mining.json"


def behavior(name: str = "b1", metric: str = "cpu_usage", **criteria: Any) -> dict[str, Any]:
    crit: dict[str, Any] = {"comparisonOperator": "less-than", "value": {"number": 90}}
    crit.update(criteria)
    return {"name": name, "metric": metric, "criteria": {k: v for k, v in crit.items() if v is not None}}


def problems_of(value: Any) -> str:
    with pytest.raises(ProfileError) as info:
        load_profile(value)
    return str(info.value)


def test_builtin_profile_loads_and_round_trips_to_the_packaged_json() -> None:
    profile = load_profile("crypto-mining")
    on_disk = json.loads(PACKAGED.read_text())
    assert profile.name == "crypto-mining"
    assert profile.to_json()["behaviors"] == on_disk["behaviors"]
    assert [b.name for b in profile.device_behaviors] == [b["name"] for b in on_disk["behaviors"]]
    assert profile.warnings == ()


def test_load_from_file_object_list_and_json_text(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "behaviors": [behavior()]}))
    assert load_profile(str(path)).name == "mine"
    nameless = tmp_path / "fleet-a.json"
    nameless.write_text(json.dumps([behavior()]))
    assert load_profile(str(nameless)).name == "fleet-a"
    assert load_profile({"name": "obj", "behaviors": [behavior()]}).name == "obj"
    from_list = load_profile([behavior("x")])
    assert from_list.behaviors[0].name == "x"
    assert load_profile(json.dumps([behavior("y")])).behaviors[0].name == "y"


def test_typed_behavior_fields() -> None:
    b = load_profile(
        [behavior("gpu", "gpu_process_names", comparisonOperator="in-set", value={"strings": ["app"]})]
    )
    crit = b.behaviors[0].criteria
    assert crit is not None
    assert (crit.comparison_operator, crit.value_kind, crit.members) == (
        "in-set",
        "strings",
        frozenset({"app"}),
    )
    assert (crit.consecutive_datapoints_to_alarm, crit.consecutive_datapoints_to_clear) == (1, 1)
    assert b.behaviors[0].metric_type == "string_list"


def test_missing_file_and_unknown_name_say_what_is_accepted() -> None:
    message = problems_of("/nonexistent/profile.json")
    assert "crypto-mining" in message and "/nonexistent/profile.json" in message
    assert "not valid JSON" in problems_of("{not json")
    assert "not int" in problems_of(5)


def test_bad_json_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x", "behaviors": [')
    assert "not valid JSON" in problems_of(str(path))


BAD_BEHAVIORS = [
    (behavior(comparisonOperator="less-than", value={"strings": ["a"]}), "does not take value.strings"),
    (
        behavior(metric="mining_pool_addresses", comparisonOperator="in-cidr-set", value={"numbers": [1]}),
        "does not take value.numbers",
    ),
    (behavior(consecutiveDatapointsToAlarm=0), "consecutiveDatapointsToAlarm 0"),
    (behavior(consecutiveDatapointsToClear=11), "consecutiveDatapointsToClear 11"),
    (behavior(consecutiveDatapointsToClear=True), "consecutiveDatapointsToClear true"),
    (
        behavior(metric="aws:all-bytes-out", value={"count": 5}, durationSeconds=120),
        "durationSeconds 120 must be one of 300, 600, 900, 1800, 3600",
    ),
    (behavior(durationSeconds=300), "durationSeconds needs a metric with a time dimension"),
    (behavior(value=None, statisticalThreshold={"statistic": "p42"}), 'statistic "p42" must be one of'),
    (
        behavior(statisticalThreshold={"statistic": "p90"}),
        "statisticalThreshold and value cannot be used together",
    ),
    (behavior(metric="no_such_metric"), 'unknown metric "no_such_metric"'),
    (behavior(metric="mining_pool_addresses", value={"cidrs": ["10.0.0.0/8"]}), "does not apply to ip_list"),
    (
        behavior(metric="aws:listening-tcp-ports", comparisonOperator="in-set", value={"numbers": [22]}),
        "does not apply to ports",
    ),
    (
        behavior(metric="gpu_process_names", comparisonOperator="in-set", value={"numbers": [1]}),
        "takes value.strings, not value.numbers",
    ),
    (behavior(comparisonOperator="in-set", value={"strings": ["a"]}), "does not apply to number metric"),
    (behavior(name="bad name!"), 'name "bad name!" must be 1-128 characters'),
    (behavior(name="x" * 129), "must be 1-128 characters"),
    (behavior(value={"count": 5}), "metric 'cpu_usage' takes value.number, not value.count"),
    (behavior(metric="aws:all-bytes-out", value={"number": 5}), "takes value.count, not value.number"),
    (behavior(value={"count": -1}), "value.count -1 must be a whole number >= 0"),
    (behavior(value={"number": 1, "count": 1}), "must hold exactly one of"),
    (
        behavior(
            metric="mining_pool_addresses",
            comparisonOperator="in-cidr-set",
            value={"cidrs": ["10.0.0.300/8"]},
        ),
        "value.cidrs",
    ),
    (
        behavior(
            metric="aws:listening-tcp-ports", comparisonOperator="in-port-set", value={"ports": [70000]}
        ),
        "port numbers 0-65535",
    ),
    (behavior(comparisonOperator="roughly"), 'comparisonOperator "roughly" must be one of'),
    (behavior(value=None), "criteria needs a value or a statisticalThreshold"),
    (
        behavior(
            metric="gpu_process_names",
            comparisonOperator="in-set",
            value=None,
            statisticalThreshold={"statistic": "p90"},
        ),
        "statisticalThreshold applies to number metrics only",
    ),
    (behavior(mlDetectionConfig={"confidenceLevel": "HIGH"}), "mlDetectionConfig cannot be combined with"),
    (
        {"name": "ml", "metric": "cpu_usage", "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}}},
        "ML Detect does not support metric 'cpu_usage'",
    ),
    (
        {
            "name": "ml",
            "metric": "aws:all-bytes-out",
            "criteria": {"mlDetectionConfig": {"confidenceLevel": "MAX"}},
        },
        'confidenceLevel "MAX" must be one of LOW, MEDIUM, HIGH',
    ),
    ({**behavior(), "suppressAlerts": "yes"}, 'suppressAlerts must be true or false, not "yes"'),
    (
        {**behavior(), "metricDimension": {"dimensionName": "t"}},
        "metricDimension applies to cloud-side metrics",
    ),
    ({**behavior(), "extra": 1}, "unknown key(s) 'extra'"),
    (behavior(threshold=1), "unknown criteria key(s) 'threshold'"),
    ({"name": "b1", "metric": "cpu_usage"}, "criteria must be an object"),
]


@pytest.mark.parametrize(("bad", "expected"), BAD_BEHAVIORS)
def test_each_invalid_behavior_is_rejected_with_a_message_naming_it(
    bad: dict[str, Any], expected: str
) -> None:
    message = problems_of({"name": "p", "behaviors": [bad]})
    assert expected in message
    name = bad.get("name")
    assert f"behavior {name!r}:" in message


def test_all_problems_are_reported_together() -> None:
    message = problems_of(
        [
            behavior("gpu-load", comparisonOperator="less-than", value={"strings": ["a"]}),
            behavior("ok"),
            behavior("ok"),
            behavior("cpu", consecutiveDatapointsToAlarm=20),
            behavior("net", metric="nope"),
        ]
    )
    assert "behavior 'gpu-load': operator less-than does not take value.strings" in message
    assert "behavior 'ok': duplicate behavior name" in message
    assert "behavior 'cpu': consecutiveDatapointsToAlarm 20" in message
    assert "behavior 'net': unknown metric" in message


def test_behavior_count_and_profile_shape_limits() -> None:
    assert "101 behaviors; Device Defender allows at most 100" in problems_of(
        [behavior(f"b{i}") for i in range(101)]
    )
    load_profile([behavior(f"b{i}") for i in range(100)])
    assert "at least one behavior" in problems_of([])
    assert "profile name" in problems_of({"name": "bad name", "behaviors": [behavior()]})
    assert "unknown profile key(s) 'tags'" in problems_of(
        {"name": "p", "behaviors": [behavior()], "tags": []}
    )
    assert "must be a list of behaviors" in problems_of({"name": "p", "behaviors": {}})
    assert "behavior #1: must be an object" in problems_of(["cpu_usage < 90"])


def test_ml_detect_behaviors_are_kept_for_the_cloud_and_skipped_on_the_device() -> None:
    ml = {
        "name": "bytes-ml",
        "metric": "aws:all-bytes-out",
        "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}},
    }
    profile = load_profile([behavior("cpu"), ml])
    assert [b.name for b in profile.behaviors] == ["cpu", "bytes-ml"]
    assert [b.name for b in profile.device_behaviors] == ["cpu"]
    assert profile.to_json()["behaviors"][1] == ml
    assert len(profile.warnings) == 1 and "behavior 'bytes-ml'" in profile.warnings[0]


def test_valid_forms_of_every_operator_are_accepted() -> None:
    profile = load_profile(
        [
            behavior("a", value={"number": 1.5}),
            behavior(
                "b",
                comparisonOperator="greater-than-equals",
                value=None,
                statisticalThreshold={"statistic": "p99.9"},
            ),
            behavior("c", "aws:all-bytes-in", value={"count": 10}, durationSeconds=3600),
            behavior(
                "avg",
                "aws:all-packets-out",
                comparisonOperator="less-than",
                value=None,
                statisticalThreshold={"statistic": "Average"},
                durationSeconds=300,
            ),
            behavior("d", "gpu_process_names", comparisonOperator="not-in-set", value={"strings": ["x"]}),
            behavior(
                "e",
                "aws:destination-ip-addresses",
                comparisonOperator="not-in-cidr-set",
                value={"cidrs": ["::1/128"]},
            ),
            behavior(
                "f",
                "aws:listening-udp-ports",
                comparisonOperator="not-in-port-set",
                value={"ports": [0, 65535]},
            ),
        ]
    )
    assert len(profile.device_behaviors) == 7


def test_config_reports_profile_errors_under_its_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"SecurityProfile": [behavior("gpu-load", consecutiveDatapointsToAlarm=0)]})
    assert "'SecurityProfile'" in str(info.value) and "behavior 'gpu-load'" in str(info.value)
    settings, _ = parse_settings({"SecurityProfile": [behavior("x")]})
    assert settings.security_profile.behaviors[0].name == "x"
