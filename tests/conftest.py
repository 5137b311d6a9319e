"""Shared fixtures: the stand-in Greengrass nucleus serving a small test recipe."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from ddcustom.tooling.devnucleus import DevNucleus

TEST_THING = "test-thing"

# A small recipe granting what the component needs; tests that need other grants write their own.
TEST_RECIPE: dict[str, Any] = {
    "RecipeFormatVersion": "2020-01-25",
    "ComponentName": "com.awsiotblog.DeviceDefenderCustom",
    "ComponentVersion": "1.0.0",
    "ComponentConfiguration": {
        "DefaultConfiguration": {
            "SampleIntervalSeconds": 300,
            "AlertTopic": "ddcustom/{iot:thingName}/alerts",
            "Gpu": {"Enabled": True, "FeedbackFile": "/var/gpu_load_fb"},
            "accessControl": {
                "aws.greengrass.ipc.mqttproxy": {
                    "com.awsiotblog.DeviceDefenderCustom:mqttproxy:1": {
                        "policyDescription": "Device Defender report and its answers, alerts",
                        "operations": [
                            "aws.greengrass#PublishToIoTCore",
                            "aws.greengrass#SubscribeToIoTCore",
                        ],
                        "resources": [
                            "$aws/things/{iot:thingName}/defender/metrics/json",
                            "$aws/things/{iot:thingName}/defender/metrics/json/+",
                            "ddcustom/{iot:thingName}/alerts",
                        ],
                    }
                },
                "aws.greengrass.ipc.pubsub": {
                    "com.awsiotblog.DeviceDefenderCustom:pubsub:1": {
                        "policyDescription": "local alerts",
                        "operations": ["aws.greengrass#PublishToTopic", "aws.greengrass#SubscribeToTopic"],
                        "resources": ["ddcustom/local/*"],
                    }
                },
            },
        }
    },
    "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": {"run": "python3 -m ddcustom run"}}],
}


@pytest.fixture
def test_recipe() -> dict[str, Any]:
    """A copy of TEST_RECIPE that a test may change."""
    return copy.deepcopy(TEST_RECIPE)


@pytest.fixture
def nucleus(monkeypatch: pytest.MonkeyPatch) -> Iterator[DevNucleus]:
    """A running stand-in nucleus; its environment variables are set for the client."""
    with DevNucleus(TEST_RECIPE, thing_name=TEST_THING) as running:
        for name, value in running.env().items():
            monkeypatch.setenv(name, value)
        yield running


@pytest.fixture(autouse=True, scope="session")
def _state_outside_the_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Settings without a StateDirectory keep their state (spool, baseline) in a folder of the test run,
    never in the home of whoever runs the tests; child processes inherit it."""
    import os

    previous = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state-home"))
    yield
    if previous is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = previous
