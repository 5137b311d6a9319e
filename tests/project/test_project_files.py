"""gdk-config.json and component-artifact-policy.json."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import jsonschema
import pytest

from ddcustom import COMPONENT_NAME, __version__
from support.helpers import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11
    tomllib = None


def load(name: str) -> Any:
    return json.loads((ROOT / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def gdk() -> dict[str, Any]:
    config: dict[str, Any] = load("gdk-config.json")
    return config


def test_packaging_gdk_config_validates_against_schema(gdk: dict[str, Any]) -> None:
    path = ROOT / "src" / "ddcustom" / "schemas" / "gdk-config.schema.json"
    jsonschema.Draft7Validator(json.loads(path.read_text(encoding="utf-8"))).validate(gdk)


def test_packaging_gdk_config_names_one_zip_built_component(gdk: dict[str, Any]) -> None:
    assert list(gdk["component"]) == [COMPONENT_NAME]
    entry = gdk["component"][COMPONENT_NAME]
    assert entry["build"]["build_system"] == "zip"
    assert entry["build"]["options"]["zip_name"] == ""  # the archive is named after the component
    # gdk >= 1.5.0 reads excludes as globs from the project root, which the patterns below rely on.
    assert tuple(int(p) for p in gdk["gdk_version"].split(".")) >= (1, 5, 0)


def test_packaging_gdk_config_version_is_the_package_version(gdk: dict[str, Any]) -> None:
    version = gdk["component"][COMPONENT_NAME]["version"]
    assert version == __version__
    if tomllib is not None:
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        assert version == pyproject["project"]["version"]


def test_packaging_gdk_config_excludes_keep_development_files_out(gdk: dict[str, Any]) -> None:
    excludes = set(gdk["component"][COMPONENT_NAME]["build"]["options"]["excludes"])
    assert {
        "**/.*",
        "**/__pycache__",
        "**/*.pyc",
        "**/*.egg-info",
        "**/tests",
        "bench",
        "tools",
        "zip-build",
    } <= excludes
    # What pip needs to install the artifact must stay in.
    assert not {"src", "pyproject.toml", "README.md", "**/src", "wheels"} & excludes


def test_packaging_gdk_config_publish_placeholders(gdk: dict[str, Any]) -> None:
    publish = gdk["component"][COMPONENT_NAME]["publish"]
    assert publish == {"bucket": "REPLACE-WITH-BUCKET-PREFIX", "region": "REPLACE-WITH-REGION"}


def test_packaging_artifact_policy_grants_only_reading_the_component_artifacts(gdk: dict[str, Any]) -> None:
    policy = load("component-artifact-policy.json")
    assert set(policy) == {"Version", "Statement"}
    assert policy["Version"] == "2012-10-17"
    assert isinstance(policy["Statement"], list) and len(policy["Statement"]) == 1
    (statement,) = policy["Statement"]
    assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == ["s3:GetObject"]
    (resource,) = statement["Resource"]
    publish = gdk["component"][COMPONENT_NAME]["publish"]
    # gdk publishes to the bucket <prefix>-<region>-<account id>, under the component name.
    bucket = f"{publish['bucket']}-{publish['region']}-REPLACE-WITH-ACCOUNT-ID"
    assert resource == f"arn:aws:s3:::{bucket}/{COMPONENT_NAME}/*"
    assert re.fullmatch(r"arn:aws:s3:::[A-Za-z0-9.-]+/[A-Za-z0-9._-]+/\*", resource)
