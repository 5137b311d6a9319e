"""The inventory message: the JSON schema the device side implements (src/ddcustom/schemas/), the example
in docs/fleet.md, and the prevalence function's reader (inventory.py) agree on what is a message."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from ddcustom.tooling.cloud.inventory import FULL, parse
from support.helpers import ROOT, documented_json

SCHEMA = json.loads((ROOT / "src/ddcustom/schemas/inventory.schema.json").read_text(encoding="utf-8"))
A, B, C = "0" * 63 + "a", "7" * 64, "f" * 64


def documented() -> dict[str, Any]:
    """The example message of docs/fleet.md."""
    example: dict[str, Any] = documented_json("fleet.md", "## The inventory message")
    return example


def valid(message: dict[str, Any]) -> bool:
    return jsonschema.Draft7Validator(SCHEMA).is_valid(message)


def accepted(message: dict[str, Any]) -> bool:
    try:
        parse(message)
    except ValueError:
        return False
    return True


GOOD = {
    "full": {
        "schema": 1,
        "thingName": "gpu-edge-12",
        "seq": 1796542060123,
        "kind": "full",
        "identities": [
            {
                "sha256": A,
                "path": "/usr/bin/python3.11",
                "script": "/opt/app/serve.py",
                "firstSeen": 1,
                "origin": "learned",
            },
            {
                "sha256": B,
                "path": "/greengrass/v2/packages/artifacts-unarchived/com.example.App/1.2.0/app/bin/infer",
                "firstSeen": 2,
                "origin": "deployment",
                "component": "com.example.App@1.2.0",
                "cpuLevel": 180.5,
            },
        ],
    },
    "part": {
        "schema": 1,
        "thingName": "t",
        "seq": 2,
        "kind": "full",
        "part": 2,
        "parts": 2,
        "from": B,
        "identities": [],
    },
    "changes": {
        "schema": 1,
        "thingName": "t",
        "seq": 3,
        "kind": "changes",
        "sent": 1796542060,
        "identities": [{"sha256": C, "path": "/usr/local/bin/tool", "firstSeen": 3, "origin": "approved"}],
        "removed": [A],
    },
}


def broken(name: str, change: Any) -> dict[str, Any]:
    message = copy.deepcopy(GOOD[name])
    change(message)
    return message


BAD = {
    "unknown key": broken("full", lambda m: m.update(extra=1)),
    "schema 2": broken("full", lambda m: m.update(schema=2)),
    "seq 0": broken("full", lambda m: m.update(seq=0)),
    "seq true": broken("full", lambda m: m.update(seq=True)),
    "seq as text": broken("full", lambda m: m.update(seq="5")),
    "another kind": broken("full", lambda m: m.update(kind="diff")),
    "thing with a slash": broken("full", lambda m: m.update(thingName="a/b")),
    "full with removed": broken("full", lambda m: m.update(removed=[])),
    "changes with a part": broken("changes", lambda m: m.update(part=1)),
    "changes with a range": broken("changes", lambda m: m.update(to=B)),
    "upper-case hash": broken("full", lambda m: m["identities"][0].update(sha256=A.upper())),
    "short hash": broken("full", lambda m: m["identities"][0].update(sha256="abc")),
    "no origin": broken("full", lambda m: m["identities"][0].pop("origin")),
    "other origin": broken("full", lambda m: m["identities"][0].update(origin="trusted")),
    "deployment without component": broken("full", lambda m: m["identities"][1].pop("component")),
    "component without version": broken(
        "full", lambda m: m["identities"][1].update(component="com.example.App")
    ),
    "negative cpu": broken("full", lambda m: m["identities"][1].update(cpuLevel=-1)),
    "empty path": broken("full", lambda m: m["identities"][0].update(path="")),
    "long path": broken("full", lambda m: m["identities"][0].update(path="/" + "a" * 1024)),
    "unknown identity key": broken("full", lambda m: m["identities"][0].update(pid=4242)),
    "removed not a hash": broken("changes", lambda m: m.update(removed=["/usr/bin/x"])),
    "no identities": broken("changes", lambda m: m.pop("identities")),
    "part 0": broken("part", lambda m: m.update(part=0)),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_cloud_inventory_good_messages_are_read(name: str) -> None:
    assert valid(GOOD[name])
    assert accepted(GOOD[name])


@pytest.mark.parametrize("name", sorted(BAD))
def test_cloud_inventory_what_the_schema_refuses_the_function_refuses(name: str) -> None:
    assert not valid(BAD[name])
    assert not accepted(BAD[name])


def test_cloud_inventory_documented_example_is_a_message() -> None:
    example = documented()
    assert valid(example)
    message = parse(example)
    assert message.kind == FULL
    assert {identity.origin for identity in message.identities} == {"learned", "deployment"}


def test_cloud_inventory_a_part_holds_only_its_range() -> None:
    """What the schema cannot say: an identity of a part lies in the part's from/to range."""
    outside = {
        **GOOD["part"],
        "identities": [{"sha256": A, "path": "/a", "firstSeen": 1, "origin": "learned"}],
    }
    assert valid(outside)
    with pytest.raises(ValueError, match="outside its from/to range"):
        parse(outside)
