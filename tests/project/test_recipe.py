"""recipe.yaml as written in the repository: configuration, access control, lifecycle, artifact."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jsonschema
import pytest
import yaml

from ddcustom import COMPONENT_NAME
from ddcustom.device.config import DEFAULTS, parse_settings
from ddcustom.tooling.build import keys_to_lower
from ddcustom.tooling.devnucleus.lifecycle import lifecycle_steps
from support.helpers import ROOT

COPIED_SCHEMAS = ROOT / "src" / "ddcustom" / "schemas"
MQTT_PROXY = "aws.greengrass.ipc.mqttproxy"
PUBSUB = "aws.greengrass.ipc.pubsub"
METRICS_TOPIC = "$aws/things/{iot:thingName}/defender/metrics/json"


@pytest.fixture(scope="module")
def recipe() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "recipe.yaml").read_text(encoding="utf-8"))
    return data


def default_configuration(recipe: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    return config


def grants(recipe: dict[str, Any]) -> set[tuple[str, str, str]]:
    """Every (service, operation, resource) the access control allows."""
    allowed = set()
    for service, policies in default_configuration(recipe)["accessControl"].items():
        for policy in policies.values():
            for operation in policy["operations"]:
                for resource in policy["resources"]:
                    allowed.add((service, operation, resource))
    return allowed


def test_packaging_recipe_validates_against_gdk_schema(recipe: dict[str, Any]) -> None:
    schema = json.loads((COPIED_SCHEMAS / "greengrass-recipe.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(schema).validate(keys_to_lower(recipe))
    assert (ROOT / "recipe.yaml").stat().st_size < 16_000


def test_packaging_recipe_names_the_component(recipe: dict[str, Any]) -> None:
    assert recipe["RecipeFormatVersion"] == "2020-01-25"
    assert recipe["ComponentName"] == COMPONENT_NAME == "com.awsiotblog.DeviceDefenderCustom"
    assert recipe["ComponentDescription"].strip()
    assert (
        recipe["ComponentPublisher"]
        == json.loads((ROOT / "gdk-config.json").read_text())["component"][COMPONENT_NAME]["author"]
    )


def test_packaging_default_configuration_equals_config_defaults(recipe: dict[str, Any]) -> None:
    config = dict(default_configuration(recipe))
    assert "accessControl" in config
    del config["accessControl"]
    assert config == DEFAULTS


def test_packaging_default_configuration_parses_without_warnings(recipe: dict[str, Any]) -> None:
    settings, warnings = parse_settings(default_configuration(recipe))
    assert warnings == []
    assert settings.enable_gpu_metrics is False


def test_packaging_access_control_grants_exactly_what_the_component_uses(recipe: dict[str, Any]) -> None:
    assert grants(recipe) == {
        (MQTT_PROXY, "aws.greengrass#PublishToIoTCore", METRICS_TOPIC),
        (MQTT_PROXY, "aws.greengrass#PublishToIoTCore", "ddcustom/{iot:thingName}/alerts"),
        (
            MQTT_PROXY,
            "aws.greengrass#PublishToIoTCore",
            "$aws/things/{iot:thingName}/shadow/name/ddcustom/update",
        ),
        (MQTT_PROXY, "aws.greengrass#PublishToIoTCore", "ddcustom/{iot:thingName}/inventory"),
        (MQTT_PROXY, "aws.greengrass#SubscribeToIoTCore", METRICS_TOPIC + "/rejected"),
        (PUBSUB, "aws.greengrass#PublishToTopic", "ddcustom/alerts"),
    }


def test_packaging_access_control_is_for_this_thing_only(recipe: dict[str, Any]) -> None:
    for service, _operation, resource in grants(recipe):
        assert "*" not in resource and "+" not in resource and "#" not in resource
        if service == MQTT_PROXY:
            assert "{iot:thingName}" in resource
    policy_ids = [
        pid for policies in default_configuration(recipe)["accessControl"].values() for pid in policies
    ]
    assert all(pid.startswith(COMPONENT_NAME + ":") for pid in policy_ids)


def test_packaging_grants_cover_the_configured_alert_topics(recipe: dict[str, Any]) -> None:
    config = default_configuration(recipe)
    alert_topic = config["AlertTopic"].replace("{thingName}", "{iot:thingName}")
    assert (MQTT_PROXY, "aws.greengrass#PublishToIoTCore", alert_topic) in grants(recipe)
    assert (PUBSUB, "aws.greengrass#PublishToTopic", config["LocalAlertTopic"]) in grants(recipe)


def test_packaging_linux_manifest_lifecycle(recipe: dict[str, Any]) -> None:
    (manifest,) = recipe["Manifests"]
    assert manifest["Platform"] == {"os": "linux"}
    lifecycle = manifest["Lifecycle"]
    assert set(lifecycle) == {"Setenv", "Install", "Startup"}
    # Both as root: Install makes a virtual environment only root may change, because Startup starts it as
    # root to fork the privileged reader before the component drops to its own user.
    for phase in ("Install", "Startup"):
        assert lifecycle[phase]["RequiresPrivilege"] is True
    # Startup, not Run: the nucleus waits for the component to report RUNNING (docs/greengrass.md), at most
    # this long; the component reports it within seconds of its start.
    assert 60 <= lifecycle["Startup"]["Timeout"] <= 600
    assert 60 <= lifecycle["Install"]["Timeout"] <= 3600
    install = lifecycle["Install"]["Script"]
    assert '"$PY" -m venv "$VENV"' in install and 'HOME_DIR="{kernel:rootPath}/ddcustom"' in install
    assert 'chown root:root "$HOME_DIR"' in install and 'chmod 0755 "$HOME_DIR"' in install
    assert "{artifacts:decompressedPath}/com.awsiotblog.DeviceDefenderCustom" in install
    assert lifecycle["Startup"]["Script"] == (
        'exec "{kernel:rootPath}/ddcustom/venv/bin/python" -m ddcustom run '
        '--privileged-reader "{configuration:/PrivilegedReader}"'
    )


def test_packaging_artifact_is_the_unarchived_zip_gdk_builds(recipe: dict[str, Any]) -> None:
    (artifact,) = recipe["Manifests"][0]["Artifacts"]
    gdk = json.loads((ROOT / "gdk-config.json").read_text())["component"][COMPONENT_NAME]
    zip_file = f"{gdk['build']['options']['zip_name'] or COMPONENT_NAME}.zip"
    assert artifact == {
        "URI": f"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/{zip_file}",
        "Unarchive": "ZIP",
    }


def test_packaging_no_interpolation_needed_inside_configuration(recipe: dict[str, Any]) -> None:
    # Only accessControl may hold recipe variables (nucleus option interpolateComponentConfiguration);
    # a configuration value with one would reach the component uninterpolated on default nuclei.
    config = dict(default_configuration(recipe))
    del config["accessControl"]
    assert "{iot:" not in json.dumps(config) and "{configuration:" not in json.dumps(config)


def test_packaging_lifecycle_steps_substitute_recipe_variables(recipe: dict[str, Any]) -> None:
    steps = lifecycle_steps(
        recipe,
        artifacts_path="/gg/packages/artifacts/c/1.0.0",
        decompressed_path="/gg/packages/artifacts-unarchived/c/1.0.0",
        work_path="/gg/work/c",
        thing_name="edge-1",
        kernel_root="/gg",
    )
    assert set(steps) == {"install", "startup"}
    assert (
        steps["startup"].script
        == 'exec "/gg/ddcustom/venv/bin/python" -m ddcustom run --privileged-reader "true"'
    )
    assert steps["startup"].requires_privilege and steps["install"].requires_privilege
    assert steps["startup"].timeout == recipe["Manifests"][0]["Lifecycle"]["Startup"]["Timeout"]
    assert steps["install"].timeout == recipe["Manifests"][0]["Lifecycle"]["Install"]["Timeout"]
    assert 'SRC="/gg/packages/artifacts-unarchived/c/1.0.0/com.awsiotblog.DeviceDefenderCustom"' in (
        steps["install"].script
    )
    assert (
        'ZIP="/gg/packages/artifacts/c/1.0.0/com.awsiotblog.DeviceDefenderCustom.zip"'
        in steps["install"].script
    )
    for step in steps.values():
        assert "{work:" not in step.script and "{artifacts:" not in step.script
        assert "{kernel:" not in step.script and "{configuration:" not in step.script
        assert step.setenv == {"PYTHONUNBUFFERED": "1"}


def test_packaging_lifecycle_steps_configuration_variables() -> None:
    recipe = {
        "Manifests": [
            {"Platform": {"os": "windows"}, "Lifecycle": {"Run": "wrong manifest"}},
            {
                "platform": {"os": "linux"},
                "lifecycle": {
                    "install": {
                        "script": "echo {configuration:/Ports} {configuration:/A~1B/c}",
                        "timeout": "30",
                    },
                    "run": {
                        "script": "run {iot:thingName} {configuration:/Missing}",
                        "requiresPrivilege": "true",
                    },
                },
            },
        ]
    }
    steps = lifecycle_steps(
        recipe,
        artifacts_path="/a",
        decompressed_path="/d",
        work_path="/w",
        thing_name="edge-1",
        configuration={"Ports": [1, 2], "A/B": {"c": "x"}},
    )
    assert steps["install"].script == "echo [1,2] x"
    assert steps["install"].timeout == 30
    assert steps["run"].script == "run edge-1 {configuration:/Missing}"
    assert steps["run"].requires_privilege is True


# SHA-256 of gdk v1.6.2's own schema files (aws-greengrass-gdk-cli, commit a662a92,
# gdk/static/config_schema.json and gdk/static/recipe_schema.json), not computed from the copies: the copies
# must stay those files (docs/greengrass.md, "Building like gdk").
GDK_SCHEMA_SHA256 = {
    "gdk-config.schema.json": "ed3cf5fcdeaeeebc63606a694215effded889df25f00c0ededfad9af2b9fa66c",
    "greengrass-recipe.schema.json": "59442b74dddf0fc66b2b8da46d96429e30d5c94323f74e8bf10314cca4f403ff",
}


def test_packaging_schema_copies_are_gdks_files() -> None:
    for name, digest in GDK_SCHEMA_SHA256.items():
        assert hashlib.sha256((COPIED_SCHEMAS / name).read_bytes()).hexdigest() == digest, name
