from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from ddcustom.cli.main import main
from ddcustom.device.config import (
    DEFAULTS,
    MIN_REPORT_INTERVAL,
    ConfigError,
    load_config_file,
    parse_settings,
)
from ddcustom.device.documents import MAX_DOCUMENT_BYTES, MAX_NESTING, MAX_SHOWN_CHARS, MAX_VALUES
from ddcustom.feedback import InferenceMeter
from support.helpers import ROOT

README = ROOT / "README.md"


def test_defaults_parse_without_warnings() -> None:
    settings, warnings = parse_settings({})
    assert warnings == []
    assert settings.report_interval_seconds == 300
    assert settings.detect_interval_seconds == 10
    assert settings.enable_gpu_metrics is False
    assert settings.enable_device_defender_report is True
    assert settings.gpu_load_feedback_file == "/var/gpu_load_fb"
    assert settings.inference_time_feedback_file == "/var/gpu_inference_fb"
    assert 3333 in settings.mining_pool_ports and 8080 not in settings.mining_pool_ports
    assert "xmrig" in settings.miner_process_names
    assert settings.security_profile.name == "crypto-mining"


def test_busy_outside_file_follows_the_time_file_as_the_meter_does(tmp_path: Path) -> None:
    # The meter writes it next to its time file unless told: with only the time file moved, the
    # component must still read where the meter writes.
    assert parse_settings({})[0].gpu_busy_outside_feedback_file == "/var/gpu_busy_outside_fb"
    moved, _ = parse_settings({"InferenceTimeFeedbackFile": str(tmp_path / "app" / "time")})
    meter = InferenceMeter(str(tmp_path / "app" / "load"), str(tmp_path / "app" / "time"), background=False)
    assert (
        moved.gpu_busy_outside_feedback_file
        == meter.busy_outside_file
        == str(tmp_path / "app" / "gpu_busy_outside_fb")
    )
    told, _ = parse_settings({"GpuBusyOutsideFeedbackFile": " /run/outside "})
    assert told.gpu_busy_outside_feedback_file == "/run/outside"
    with pytest.raises(ConfigError, match="GpuBusyOutsideFeedbackFile"):
        parse_settings({"GpuBusyOutsideFeedbackFile": 5})


@pytest.mark.parametrize("text, expected", [("false", False), ("true", True)])
def test_boolean_strings(text: str, expected: bool) -> None:
    settings, _ = parse_settings({"EnableGPUMetrics": text})
    assert settings.enable_gpu_metrics is expected


# The README: JSON true/false or the strings "true"/"false" only; not Python's or YAML 1.1's spellings.
@pytest.mark.parametrize("value", ["yes", "0", 1, 0, None, [], "no", "True", "FALSE", " true ", "on", "off"])
def test_boolean_rejects_everything_else(value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings({"UseShortNames": value})
    message = str(exc.value)
    assert "'UseShortNames'" in message
    assert json.dumps(value) in message
    assert "true or false" in message


def test_number_errors_name_key_value_and_range() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings({"DetectIntervalSeconds": -3})
    assert "'DetectIntervalSeconds'" in str(exc.value) and "-3" in str(exc.value)
    assert "from 0.5 to 3600" in str(exc.value)
    for bad in ("ten", True, float("nan"), 10.5, [300]):
        with pytest.raises(ConfigError, match="SampleIntervalSeconds"):
            parse_settings({"SampleIntervalSeconds": bad})


def test_numbers_from_greengrass_may_be_floats_or_strings() -> None:
    # The nucleus's configuration store hands numbers back as doubles; consoles produce strings.
    settings, _ = parse_settings({"SampleIntervalSeconds": 600.0, "MaxReportListSize": "50"})
    assert settings.report_interval_seconds == 600
    assert isinstance(settings.report_interval_seconds, int)
    assert settings.max_report_list_size == 50


def test_unknown_key_is_an_error_that_lists_known_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings({"EnableGpuMetrics": True})  # wrong case: a typo users make
    assert "'EnableGpuMetrics'" in str(exc.value)
    assert "EnableGPUMetrics" in str(exc.value)


def test_access_control_key_from_greengrass_is_ignored() -> None:
    settings, _ = parse_settings({"accessControl": {"aws.greengrass.ipc.mqttproxy": {}}})
    assert settings.enable_device_defender_report


def test_short_interval_raised_with_warning_when_reporting_to_device_defender() -> None:
    settings, warnings = parse_settings({"SampleIntervalSeconds": 60})
    assert settings.report_interval_seconds == MIN_REPORT_INTERVAL
    assert len(warnings) == 1 and "SampleIntervalSeconds 60 raised to 300" in warnings[0]


def test_short_interval_kept_when_device_defender_reports_are_off() -> None:
    settings, warnings = parse_settings({"SampleIntervalSeconds": 60, "EnableDeviceDefenderReport": "false"})
    assert settings.report_interval_seconds == 60
    assert warnings == []


@pytest.mark.parametrize(
    "key, value",
    [
        ("MiningPoolPorts", [3333, 70000]),
        ("MiningPoolPorts", "3333"),
        ("WatchedProcesses", ["myapp", 3]),
        ("AlertTopic", "$aws/things/x/alerts"),
        ("AlertTopic", "alerts/#"),
        ("LogLevel", "LOUD"),
        ("GpuLoadFeedbackFile", ""),
        ("SecurityProfile", 42),
        ("FleetKnownExecutables", "0" * 64),
        ("FleetInventory", "yes"),
        ("EvidenceRedactPatterns", "password=\\S+"),  # a list, not one string: a pattern may hold commas
        ("EvidenceRedactPatterns", ["("]),
        ("EvidenceRedactPatterns", [r"(a+)+b"]),
        ("EvidenceRedactPatterns", [r"x\d"] * 17),
    ],
)
def test_wrong_values_are_rejected_with_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=repr(key)):
        parse_settings({key: value})


def test_the_groups_common_programs_are_hashes_kept_lower_case_and_sorted() -> None:
    settings, _ = parse_settings({"FleetKnownExecutables": ["B" * 64, "sha256:" + "a" * 64]})
    assert settings.fleet_known_executables == ("a" * 64, "b" * 64)
    with pytest.raises(ConfigError, match="FleetKnownExecutables entry '/usr/bin/app': expected a SHA-256"):
        parse_settings({"FleetKnownExecutables": ["a" * 64, "/usr/bin/app"]})


def test_redaction_patterns_are_checked_each_saying_why() -> None:
    assert parse_settings({"EvidenceRedactPatterns": [r"corp-[A-Z0-9]{12}"]})[0].evidence_redact_patterns == (
        r"corp-[A-Z0-9]{12}",
    )
    with pytest.raises(ConfigError) as raised:
        parse_settings({"EvidenceRedactPatterns": [r"ok\d", r"(\w)\1", r"\s*\S+x"]})
    assert len(raised.value.problems) == 2
    assert raised.value.problems[0].startswith("configuration key 'EvidenceRedactPatterns': pattern ")
    assert "refused: backreferences" in raised.value.problems[0]
    assert "refused: its worst case" in raised.value.problems[1]


def test_names_accept_a_comma_separated_string_and_drop_duplicates() -> None:
    settings, _ = parse_settings({"WatchedProcesses": "myapp, inference,myapp"})
    assert settings.watched_processes == ("myapp", "inference")


def test_settings_are_frozen() -> None:
    settings, _ = parse_settings({})
    with pytest.raises(AttributeError):
        settings.enable_gpu_metrics = True  # type: ignore[misc]


def test_alert_topic_takes_the_thing_name() -> None:
    settings, _ = parse_settings({})
    assert settings.alert_topic_for("cam-7") == "ddcustom/cam-7/alerts"


def documented_defaults() -> dict[str, str]:
    """Key -> default column of the README's configuration table."""
    text = README.read_text(encoding="utf-8")
    table = text.split("| key | default | meaning |\n", 1)[1].split("\n\n", 1)[0]
    return dict(re.findall(r"^\| `(\w+)` \| `(.+?)` \| .+ \|$", table, re.MULTILINE))


def test_the_readme_documents_every_key_with_the_default_the_code_uses() -> None:
    documented = documented_defaults()
    assert list(documented) == list(DEFAULTS)  # every key, none extra, in the same order
    for key, default in DEFAULTS.items():
        assert json.loads(documented[key]) == default, (key, documented[key])


def test_yaml_and_json_files(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("EnableGPUMetrics: true\nWatchedProcesses: [myapp]\n")
    (tmp_path / "c.json").write_text('{"EnableGPUMetrics": "false"}')
    assert parse_settings(load_config_file(tmp_path / "c.yaml"))[0].watched_processes == ("myapp",)
    assert parse_settings(load_config_file(tmp_path / "c.json"))[0].enable_gpu_metrics is False


def test_unreadable_or_garbled_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="does not parse"):
        load_config_file(tmp_path / "bad.json")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(tmp_path / "list.yaml")


def test_check_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"EnableGPUMetrics": true}')
    assert main(["check", "--config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out

    bad = tmp_path / "bad.json"
    bad.write_text('{"EnableGPUMetrics": "maybe"}')
    assert main(["check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "EnableGPUMetrics" in err and "maybe" in err


def test_a_number_too_large_for_a_float_is_a_config_error() -> None:
    # JSON and YAML give arbitrarily large integers; float() of one raises OverflowError.
    with pytest.raises(ConfigError, match=r"'MaxReportListSize'.*from 1 to 300"):
        parse_settings({"MaxReportListSize": 10**400})
    with pytest.raises(ConfigError, match=r"'MiningPoolPorts'.*from 1 to 65535"):
        parse_settings({"MiningPoolPorts": [3333, 10**400]})


def test_unknown_keys_name_their_values() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings({"Enabled": 1, "EnableGpuMetrics": "yes"})
    message = str(exc.value)
    assert "'Enabled' (value 1)" in message and "'EnableGpuMetrics' (value \"yes\")" in message
    assert "known keys: SampleIntervalSeconds" in message


def test_a_key_that_is_not_a_string_is_refused_not_a_crash() -> None:
    # YAML turns `1: x` into an integer key; JSON has string keys only.
    with pytest.raises(ConfigError, match="mapping key 1 is not a string"):
        parse_settings({1: "one", "EnableGpuMetrics": "yes"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="under key 'SecurityProfile': mapping key 5 is not a string"):
        parse_settings({"SecurityProfile": {"behaviors": [{5: "x"}]}})


def test_config_file_read_is_bounded(tmp_path: Path) -> None:
    # A valid YAML comment larger than the bound: refused, not read whole.
    big = tmp_path / "big.yaml"
    big.write_text("#" * (MAX_DOCUMENT_BYTES + 1))
    with pytest.raises(ConfigError, match=f"larger than {MAX_DOCUMENT_BYTES} bytes"):
        load_config_file(big)


def test_config_file_that_never_ends_or_blocks_is_refused(tmp_path: Path) -> None:
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match=r"zero\.yaml': it is a device, not a regular file"):
        load_config_file(tmp_path / "zero.yaml")
    os.mkfifo(tmp_path / "fifo.yaml")  # nobody writes it: opening it to read would wait forever
    with pytest.raises(ConfigError, match=r"fifo\.yaml': it is a FIFO, not a regular file"):
        load_config_file(tmp_path / "fifo.yaml")


def test_a_profile_path_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "profile.json")
    with pytest.raises(ConfigError, match="is a FIFO, not a regular file"):
        parse_settings({"SecurityProfile": str(tmp_path / "profile.json")})


def test_config_file_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"AlertTopic: caf\xe9/alerts\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config_file(latin)


def test_every_bad_key_is_reported_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("EnableGPUMetrics: yes\nLogLevel: LOUD\nMaxReportListSize: 0\nTypo: 1\n")
    with pytest.raises(ConfigError) as exc:
        parse_settings(load_config_file(bad))
    assert len(exc.value.problems) == 4
    assert main(["check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: 4 configuration problems:" in err
    lines = err.splitlines()[1:]
    assert [line.split(":")[0] for line in lines] == [
        "  - unknown configuration key(s) 'Typo' (value 1); known keys",
        "  - configuration key 'EnableGPUMetrics'",
        "  - configuration key 'MaxReportListSize'",
        "  - configuration key 'LogLevel'",
    ]
    assert '"yes" is not allowed' in lines[1] and "from 1 to 300" in lines[2] and '"LOUD"' in lines[3]


def test_a_relative_profile_path_is_taken_from_the_configuration_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "device"
    (folder / "profiles").mkdir(parents=True)
    behavior = {
        "name": "load",
        "metric": "gpu_load_per_inference",
        "criteria": {"comparisonOperator": "less-than", "value": {"number": 70}},
    }
    (folder / "profiles" / "mine.json").write_text(json.dumps({"name": "mine", "behaviors": [behavior]}))
    config = folder / "config.yaml"
    config.write_text("SecurityProfile: profiles/mine.json\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["check", "--config", str(config)]) == 0
    assert "security profile 'mine'" in capsys.readouterr().out
    # relative to the folder the file is in, not to the current one, for a relative --config too
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--config", "device/config.yaml"]) == 0
    # a mapping handed over without a file (a deployment) keeps the current folder
    monkeypatch.chdir(folder)
    assert parse_settings({"SecurityProfile": "profiles/mine.json"})[0].security_profile.name == "mine"


def test_the_readme_states_the_input_bounds_and_boolean_spelling_the_code_uses() -> None:
    text = " ".join(README.read_text(encoding="utf-8").split("## Configuration", 1)[1].split("|")[0].split())
    assert f"more than {MAX_NESTING} levels deep" in text
    assert f"more than {MAX_VALUES:,} values".replace(",", " ") in text
    assert f"more than {MAX_DOCUMENT_BYTES // 1024 // 1024} MiB of text" in text
    assert f"cut to {MAX_SHOWN_CHARS} characters" in text
    refused = re.search(r'spelled exactly so: ((?:`"\w+"`, )*`"\w+"`) are refused', text)
    assert refused is not None
    for word in re.findall(r'"(\w+)"', refused.group(1)):
        with pytest.raises(ConfigError):
            parse_settings({"EnableGPUMetrics": word})
