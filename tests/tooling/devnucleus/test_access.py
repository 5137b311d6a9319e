"""Recipe reading, configuration merge and the accessControl rules of the stand-in nucleus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ddcustom.tooling.build import get_nocase
from ddcustom.tooling.devnucleus import access

PUB_IOT = "aws.greengrass#PublishToIoTCore"
SUB_IOT = "aws.greengrass#SubscribeToIoTCore"
PUB_LOCAL = "aws.greengrass#PublishToTopic"


def _policies(service: str, operations: list[str], resources: list[str], config: dict | None = None):
    body = {"accessControl": {service: {"p": {"operations": operations, "resources": resources}}}}
    return access.parse_policies({**(config or {}), **body}, "thing-1")


def test_devnucleus_access_reads_yaml_and_json_recipes_case_insensitively(tmp_path: Path) -> None:
    yaml_recipe = tmp_path / "recipe.yaml"
    yaml_recipe.write_text(
        "componentname: com.example.A\n"
        "componentConfiguration:\n"
        "  defaultconfiguration:\n"
        "    Interval: 300\n"
        "    Nested: {Keep: 1, Change: 2}\n"
    )
    component = access.component_from_recipe(
        access.load_recipe(yaml_recipe), merge={"Nested": {"Change": 3}, "New": "x"}
    )
    assert component.name == "com.example.A"
    assert component.configuration == {"Interval": 300, "Nested": {"Keep": 1, "Change": 3}, "New": "x"}

    json_recipe = tmp_path / "recipe.json"
    json_recipe.write_text(json.dumps({"ComponentName": "com.example.B"}))
    assert access.component_from_recipe(access.load_recipe(json_recipe)).configuration == {}


def test_devnucleus_access_bad_recipes_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(access.RecipeError, match="cannot read recipe"):
        access.load_recipe(tmp_path / "absent.yaml")
    broken = tmp_path / "recipe.yaml"
    broken.write_text("a: [unclosed\n")
    with pytest.raises(access.RecipeError, match="does not parse"):
        access.load_recipe(broken)
    huge = tmp_path / "huge.yaml"  # read whole before: now bounded like configuration files
    huge.write_text("ComponentName: x\n" + "# padding\n" * 200_000)
    with pytest.raises(access.RecipeError, match="is larger than"):
        access.load_recipe(huge)
    with pytest.raises(access.RecipeError, match="no ComponentName"):
        access.component_from_recipe({"ComponentVersion": "1.0.0"})
    with pytest.raises(access.RecipeError, match="must be lists"):
        access.parse_policies({"accessControl": {"s": {"p": {"operations": "x"}}}}, "t")


def test_devnucleus_access_changed_paths() -> None:
    before = {"A": 1, "B": {"C": 2, "D": 3}}
    after = {"A": 1, "B": {"C": 5, "D": 3}, "E": 0}
    assert access.changed_paths(before, after) == [("B", "C"), ("E",)]


def test_devnucleus_access_interpolates_thing_name_and_configuration() -> None:
    config = {"Prefix": "fleet/a", "Port": 8883, "On": True}
    text = "{configuration:/Prefix}/{iot:thingName}/{configuration:/Port}/{configuration:/On}"
    assert access.interpolate(text, {"iot:thingName": "thing-1"}, config) == "fleet/a/thing-1/8883/true"


def interpolate(text: str, configuration: Any) -> str:
    return access.interpolate(text, {"iot:thingName": "thing-1"}, configuration)


def test_devnucleus_access_interpolation_matches_keys_case_insensitively() -> None:
    config = {"AlertTopic": "x/alerts", "Nested": {"Inner": 1}}
    assert interpolate("{configuration:/alerttopic} {configuration:/NESTED/inner}", config) == "x/alerts 1"
    # an exact match wins over one that differs only in case
    assert interpolate("{configuration:/a}", {"A": "upper", "a": "lower"}) == "lower"


def test_devnucleus_access_interpolation_unescapes_json_pointer() -> None:
    config = {"a/b": {"c~d": "slash-tilde"}, "~1": "literal"}
    assert interpolate("{configuration:/a~1b/c~0d}", config) == "slash-tilde"
    assert interpolate("{configuration:/~01}", config) == "literal"  # ~01 is ~1, not /


def test_devnucleus_access_interpolation_indexes_lists() -> None:
    config = {"Ports": [8883, 443], "Hosts": [{"Name": "a"}]}
    assert interpolate("{configuration:/Ports/1} {configuration:/Hosts/0/name}", config) == "443 a"
    for missing in ("/Ports/2", "/Ports/01", "/Ports/-1", "/Ports/x"):
        assert interpolate(f"{{configuration:{missing}}}", config) == f"{{configuration:{missing}}}"


def test_devnucleus_access_interpolation_writes_containers_as_compact_json() -> None:
    config = {"Ports": [1, 2], "Limits": {"cpu": 90, "name": "x"}}
    assert interpolate("{configuration:/Ports}", config) == "[1,2]"
    assert interpolate("{configuration:/Limits}", config) == '{"cpu":90,"name":"x"}'


def test_devnucleus_access_interpolation_leaves_unresolvable_variables_as_written() -> None:
    text = "{configuration:/Missing} {configuration:/Port/x} {work:path} {iot:thingName} ${HOME}"
    assert interpolate(text, {"Port": 1}) == (
        "{configuration:/Missing} {configuration:/Port/x} {work:path} thing-1 ${HOME}"
    )


def test_devnucleus_access_interpolation_survives_non_string_yaml_keys() -> None:
    config = yaml.safe_load("1: one\nfalse: no-key\nnull: nothing\nName: x\n")
    assert set(map(type, config)) == {int, bool, type(None), str}
    # a key that is not a string compares as its text
    assert interpolate("{configuration:/name} {configuration:/1} {configuration:/FALSE}", config) == (
        "x one no-key"
    )
    assert interpolate("{configuration:/Other}", config) == "{configuration:/Other}"
    assert get_nocase(config, "name") == "x" and get_nocase(config, "other", "dflt") == "dflt"


def test_devnucleus_access_lookup_is_case_insensitive_and_keeps_lists_whole() -> None:
    config = {"Ports": [1, 2], "Nested": {"Key": "v"}}
    assert access.lookup(config, ["nested", "KEY"]) == (True, "v")
    assert access.lookup(config, ["Ports"]) == (True, [1, 2])
    assert access.lookup(config, ["Ports", "0"]) == (False, None)  # a list is a leaf to GetConfiguration


@pytest.mark.parametrize(
    ("granted", "requested", "allowed"),
    [
        (
            "$aws/things/{iot:thingName}/defender/metrics/json",
            "$aws/things/thing-1/defender/metrics/json",
            True,
        ),
        (
            "$aws/things/{iot:thingName}/defender/metrics/json",
            "$aws/things/other/defender/metrics/json",
            False,
        ),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/+/c", "a/+/c", True),  # the same filter
        ("a/b/c", "a/+/c", False),  # a wider filter than granted
        ("test/topic/#", "test/topic/filter", True),
        ("test/topic/#", "test/topic/#", True),
        ("test/topic/#", "test/topic", True),
        ("test/topic/#", "test/other", False),
        ("test/+", "test/#", False),
        ("*", "anything/at/all", True),
        ("alerts/*", "alerts/x/y", True),
    ],
)
def test_devnucleus_access_mqttproxy_resources(granted: str, requested: str, allowed: bool) -> None:
    policies = _policies(access.MQTT_PROXY_SERVICE, [PUB_IOT, SUB_IOT], [granted])
    assert access.is_authorized(policies, SUB_IOT, requested) is allowed


@pytest.mark.parametrize(
    ("granted", "requested", "allowed"),
    [
        ("local/alerts", "local/alerts", True),
        ("local/*", "local/alerts/x", True),
        ("local/*", "other/alerts", False),
        ("local/+", "local/x", False),  # MQTT wildcards are literal for local pub/sub policies
        ("*", "x", True),
    ],
)
def test_devnucleus_access_pubsub_resources(granted: str, requested: str, allowed: bool) -> None:
    policies = _policies(access.PUBSUB_SERVICE, [PUB_LOCAL], [granted])
    assert access.is_authorized(policies, PUB_LOCAL, requested) is allowed


def test_devnucleus_access_operation_and_service_must_match() -> None:
    iot_only = _policies(access.MQTT_PROXY_SERVICE, [PUB_IOT], ["*"])
    assert access.is_authorized(iot_only, PUB_IOT, "t")
    assert not access.is_authorized(iot_only, SUB_IOT, "t")  # operation not granted
    assert not access.is_authorized(iot_only, PUB_LOCAL, "t")  # other service
    star_ops = _policies(access.PUBSUB_SERVICE, ["*"], ["t"])
    assert access.is_authorized(star_ops, PUB_LOCAL, "t")


def test_devnucleus_access_resources_use_configuration_variables() -> None:
    policies = _policies(
        access.MQTT_PROXY_SERVICE,
        [PUB_IOT],
        ["{configuration:/AlertTopic}"],
        config={"AlertTopic": "x/alerts"},
    )
    assert access.is_authorized(policies, PUB_IOT, "x/alerts")


def test_devnucleus_access_mqtt_filter_matching() -> None:
    assert access.mqtt_filter_matches("a/+/c", "a/b/c")
    assert access.mqtt_filter_matches("a/#", "a/b/c")
    assert access.mqtt_filter_matches("a/#", "a")
    assert not access.mqtt_filter_matches("a/+", "a/b/c")
    assert not access.mqtt_filter_matches("a/b", "a/b/c")
