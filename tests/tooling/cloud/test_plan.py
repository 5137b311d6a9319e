"""Pure parts of the cloud side: policies agree with the repository's file, behaviors, options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddcustom.device.detect.profile import load_profile
from ddcustom.tooling.cloud.behaviors import cloud_behaviors
from ddcustom.tooling.cloud.options import (
    CloudOptions,
    OptionError,
    default_region,
    parse_merge_configuration,
)
from ddcustom.tooling.cloud.policies import artifact_policy
from support.helpers import ROOT


def test_cloud_artifact_policy_matches_repository_file() -> None:
    text = (ROOT / "component-artifact-policy.json").read_text(encoding="utf-8")
    filled = (
        text.replace("REPLACE-WITH-BUCKET-PREFIX", "my-artifacts")
        .replace("REPLACE-WITH-REGION", "eu-west-1")
        .replace("REPLACE-WITH-ACCOUNT-ID", "111122223333")
    )
    expected = json.loads(filled)
    ours = artifact_policy("my-artifacts", "eu-west-1", "111122223333", "com.awsiotblog.DeviceDefenderCustom")
    assert ours == expected
    assert ours["Statement"][0]["Resource"] == [
        "arn:aws:s3:::my-artifacts-eu-west-1-111122223333/com.awsiotblog.DeviceDefenderCustom/*"
    ]


def test_cloud_behaviors_from_the_built_in_profile_are_unchanged() -> None:
    raw = json.loads((ROOT / "src/ddcustom/profiles/crypto-mining.json").read_text(encoding="utf-8"))
    behaviors, notes = cloud_behaviors(load_profile("crypto-mining"))
    assert behaviors == raw["behaviors"]
    assert notes == []


def test_cloud_behaviors_drop_keys_the_service_lacks() -> None:
    """The device reads only the keys it knows in statisticalThreshold and mlDetectionConfig; any other
    would make CreateSecurityProfile fail, so the cloud copy leaves it out and says so."""
    profile = load_profile(
        {
            "name": "custom",
            "behaviors": [
                {
                    "name": "cpu",
                    "metric": "cpu_usage",
                    "criteria": {
                        "comparisonOperator": "less-than",
                        "statisticalThreshold": {"statistic": "p90", "window": 100},
                    },
                },
                {
                    "name": "out",
                    "metric": "aws:all-bytes-out",
                    "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH", "deviceOnly": True}},
                },
            ],
        }
    )
    behaviors, notes = cloud_behaviors(profile)
    assert behaviors == [
        {
            "name": "cpu",
            "metric": "cpu_usage",
            "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p90"}},
        },
        {
            "name": "out",
            "metric": "aws:all-bytes-out",
            "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}},
        },
    ]
    assert notes == [
        "behavior 'cpu': device-only key 'criteria.statisticalThreshold.window' left out",
        "behavior 'out': device-only key 'criteria.mlDetectionConfig.deviceOnly' left out",
    ]


def test_cloud_options_names_and_alert_filter() -> None:
    opts = CloudOptions(
        region="eu-west-1", stack="fleet-a", merge_configuration={"AlertTopic": "alerts/{thingName}"}
    )
    assert opts.topic_rule == "fleet_a_alerts"
    assert opts.quarantine_group_name == "fleet-a-quarantine"
    assert opts.alert_topic_filter() == "alerts/+"
    assert CloudOptions(region="eu-west-1").alert_topic_filter() == "ddcustom/+/alerts"


@pytest.mark.parametrize("stack", ["", "1abc", "a_b", "x" * 33])
def test_cloud_options_reject_bad_stack(stack: str) -> None:
    with pytest.raises(OptionError, match="--stack"):
        CloudOptions(region="eu-west-1", stack=stack)


def test_cloud_default_region_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_region({"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "eu-west-1"}) == "eu-west-3"
    assert default_region({"AWS_DEFAULT_REGION": "eu-west-1"}) == "eu-west-1"
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert default_region({}) == "us-east-1"


def test_cloud_behaviors_leave_out_values_the_service_refuses() -> None:
    """The device takes statistic "Average" (CloudFormation lists it); CreateSecurityProfile does not."""
    average = {
        "name": "mean-cpu",
        "metric": "cpu_usage",
        "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "Average"}},
    }
    p90 = {
        "name": "p90-cpu",
        "metric": "cpu_usage",
        "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p90"}},
    }
    behaviors, notes = cloud_behaviors(load_profile({"name": "custom", "behaviors": [average, p90]}))
    assert behaviors == [p90]
    assert notes == [
        "behavior 'mean-cpu': criteria.statisticalThreshold.statistic 'Average' "
        "is evaluated on the device only"
    ]


def test_cloud_options_refuse_a_security_profile_name_too_long() -> None:
    """CreateSecurityProfile takes 128 characters: refused before any call, not halfway through setup."""
    with pytest.raises(OptionError, match=r"security profile name 'stack-x{123}' is longer than 128"):
        CloudOptions(region="eu-west-1", stack="stack", profile="x" * 123)
    assert CloudOptions(region="eu-west-1", stack="stack", profile="x" * 122).security_profile == (
        "stack-" + "x" * 122
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [("merge.json", '{"LogLevel": "DEBUG"}'), ("merge.yaml", "LogLevel: DEBUG\n")],
)
def test_cloud_merge_configuration_from_a_file(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert parse_merge_configuration(f"@{path}") == {"LogLevel": "DEBUG"}


def test_cloud_merge_configuration_file_errors(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"cannot read --merge-config file '.*missing\.json'"):
        parse_merge_configuration(f"@{tmp_path / 'missing.json'}")
    listed = tmp_path / "list.json"
    listed.write_text('["LogLevel"]', encoding="utf-8")
    with pytest.raises(OptionError, match="must hold a mapping of keys, not list"):
        parse_merge_configuration(f"@{listed}")
    dated = tmp_path / "dated.yaml"  # the deployment carries JSON: YAML is read as JSON would read it
    dated.write_text("accessControl:\n  since: 2024-05-01\n", encoding="utf-8")
    assert parse_merge_configuration(f"@{dated}") == {"accessControl": {"since": "2024-05-01"}}
    binary = tmp_path / "binary.yaml"
    binary.write_text("accessControl: !!binary aGVsbG8=\n", encoding="utf-8")
    with pytest.raises(OptionError, match="does not parse"):
        parse_merge_configuration(f"@{binary}")
    bad = tmp_path / "bad.json"
    bad.write_text('{"EnableGPUMetrics": "yes"}', encoding="utf-8")
    with pytest.raises(OptionError, match="EnableGPUMetrics"):
        parse_merge_configuration(f"@{bad}")


def test_cloud_plan_keeps_every_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A quarantine behavior the profile lacks is named, with Detect on as with it off."""
    from support.cloud_account import cloud

    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))

    def no_aws(service: str) -> None:
        raise AssertionError(f"--plan called {service}")

    for detect in ((), ("--no-detect",)):
        argv = ("setup", "--plan", "--quarantine-behaviors", "miner-processes,no-such-behavior", *detect)
        code, out, err = cloud(no_aws, *argv)  # type: ignore[arg-type]
        assert (code, err) == (0, "")
        assert "note     quarantine behavior 'no-such-behavior' is not in profile 'crypto-mining'" in out
