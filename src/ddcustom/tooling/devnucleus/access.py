"""Recipe reading, component configuration, recipe variables and the accessControl rules the nucleus
enforces."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ddcustom.device.config import ConfigError, load_config_file
from ddcustom.tooling.build import get_nocase

MQTT_PROXY_SERVICE = "aws.greengrass.ipc.mqttproxy"
PUBSUB_SERVICE = "aws.greengrass.ipc.pubsub"

# operation -> the IPC service whose policies grant it
GRANTING_SERVICE = {
    "aws.greengrass#PublishToIoTCore": MQTT_PROXY_SERVICE,
    "aws.greengrass#SubscribeToIoTCore": MQTT_PROXY_SERVICE,
    "aws.greengrass#PublishToTopic": PUBSUB_SERVICE,
    "aws.greengrass#SubscribeToTopic": PUBSUB_SERVICE,
}

RecipeSource = Union[str, Path, Mapping[str, Any]]


class RecipeError(ValueError):
    """The recipe cannot be read or lacks what the stand-in nucleus needs."""


def load_recipe(source: RecipeSource) -> dict[str, Any]:
    """Read a recipe from a dict, or a .json / .yaml file (with the configuration file's bounds)."""
    if isinstance(source, Mapping):
        return dict(source)
    try:
        return load_config_file(source, what="recipe")
    except ConfigError as exc:
        raise RecipeError(str(exc)) from None


def merge_config(base: Mapping[str, Any], merge: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge like a deployment's ``merge``: mappings merge key by key, other values replace."""
    result = copy.deepcopy(dict(base))
    for key, value in merge.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = merge_config(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def changed_paths(before: Any, after: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths of the leaves that differ between two configurations."""
    if isinstance(before, dict) and isinstance(after, dict):
        paths: list[tuple[str, ...]] = []
        for key in sorted(set(before) | set(after), key=str):
            if key not in before or key not in after:
                paths.append((*prefix, key))
            else:
                paths.extend(changed_paths(before[key], after[key], (*prefix, key)))
        return paths
    return [] if before == after else [prefix]


_MISSING = object()


def _walk(node: Any, keys: list[str], list_indices: bool) -> tuple[bool, Any]:
    """(found, value) at a key path; mapping keys compare case-insensitively, as in the nucleus's
    configuration store. ``list_indices``: a decimal key also picks a list item."""
    for key in keys:
        if isinstance(node, Mapping):
            node = get_nocase(node, key, _MISSING)
            if node is _MISSING:
                return False, None
        elif list_indices and isinstance(node, list) and re.fullmatch(r"0|[1-9][0-9]*", key):
            if int(key) >= len(node):
                return False, None
            node = node[int(key)]
        else:
            return False, None
    return True, node


def lookup(config: Any, key_path: list[str]) -> tuple[bool, Any]:
    """(found, value) of GetConfiguration's key path: mapping keys only (a list is a leaf there)."""
    return _walk(config, key_path, list_indices=False)


def resolve_pointer(config: Any, pointer: str) -> tuple[bool, Any]:
    """(found, value) at a JSON pointer such as ``/a/b`` (RFC 6901: ``~1`` is ``/``, ``~0`` is ``~``;
    list indices)."""
    keys = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]
    return _walk(config, keys, list_indices=True)


# {configuration:/JSON/pointer} or a plain variable such as {iot:thingName} or {work:path}
_VARIABLE = re.compile(r"\{(?:configuration:(/[^}]*)|([A-Za-z]+:[A-Za-z]+))\}")


def interpolate(text: str, variables: Mapping[str, str], configuration: Mapping[str, Any]) -> str:
    """Replace recipe variables as the nucleus does: ``variables`` maps names such as ``iot:thingName``
    to their values; ``{configuration:/a/b}`` is a JSON pointer into ``configuration`` (keys matched
    case-insensitively), a scalar becoming its text and a mapping or list compact JSON. A variable that
    cannot be resolved stays as written."""

    def replace(match: re.Match[str]) -> str:
        pointer, name = match.group(1), match.group(2)
        if pointer is None:
            return variables.get(name, match.group(0))
        found, value = resolve_pointer(configuration, pointer)
        if not found:
            return match.group(0)
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))

    return _VARIABLE.sub(replace, text)


def mqtt_filter_matches(topic_filter: str, topic: str) -> bool:
    """Does an MQTT topic filter (with + and #) match a topic name, or a narrower filter? A ``#`` in
    ``topic`` is matched only by a ``#`` at the same level of the filter or above."""
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or topic_levels[index] == "#":
            return False
        if level not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


def _glob_matches(pattern: str, value: str) -> bool:
    """``*`` matches any run of characters; everything else is literal."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _mqtt_resource_matches(resource: str, requested: str) -> bool:
    """mqttproxy: a granted filter permits the same filter, narrower filters and matching topics; a
    resource with ``*`` is also a glob."""
    return (
        resource == requested
        or ("*" in resource and _glob_matches(resource, requested))
        or mqtt_filter_matches(resource, requested)
    )


@dataclass(frozen=True)
class Policy:
    service: str
    name: str
    operations: tuple[str, ...]
    resources: tuple[str, ...]


def parse_policies(config: Mapping[str, Any], thing_name: str) -> list[Policy]:
    """The accessControl policies of a component configuration, with recipe variables interpolated."""
    access = get_nocase(config, "accessControl") or {}
    if not isinstance(access, Mapping):
        raise RecipeError("accessControl must be a mapping of IPC service -> policies")
    variables = {"iot:thingName": thing_name}
    policies: list[Policy] = []
    for service, named in access.items():
        if not isinstance(named, Mapping):
            raise RecipeError(f"accessControl.{service} must be a mapping of policy id -> policy")
        for name, body in named.items():
            if not isinstance(body, Mapping):
                raise RecipeError(f"accessControl.{service}.{name} must be a mapping")
            operations = get_nocase(body, "operations") or []
            resources = get_nocase(body, "resources") or []
            if not isinstance(operations, list) or not isinstance(resources, list):
                raise RecipeError(f"accessControl.{service}.{name}: operations and resources must be lists")
            policies.append(
                Policy(
                    service=str(service),
                    name=str(name),
                    operations=tuple(str(op) for op in operations),
                    resources=tuple(interpolate(str(res), variables, config) for res in resources),
                )
            )
    return policies


def is_authorized(policies: list[Policy], operation: str, resource: str) -> bool:
    """Does any policy of the operation's service grant this operation on this resource?"""
    service = GRANTING_SERVICE.get(operation)
    matches = _mqtt_resource_matches if service == MQTT_PROXY_SERVICE else _glob_matches
    return any(
        matches(granted, resource)
        for policy in policies
        if policy.service == service and (operation in policy.operations or "*" in policy.operations)
        for granted in policy.resources
    )


@dataclass(frozen=True)
class Component:
    """What the nucleus knows of the one component it serves."""

    name: str
    configuration: dict[str, Any]


def component_from_recipe(recipe: Mapping[str, Any], merge: Mapping[str, Any] | None = None) -> Component:
    name = get_nocase(recipe, "ComponentName")
    if not isinstance(name, str) or not name:
        raise RecipeError("recipe has no ComponentName")
    component_config = get_nocase(recipe, "ComponentConfiguration") or {}
    if not isinstance(component_config, Mapping):
        raise RecipeError("ComponentConfiguration must be a mapping")
    default = get_nocase(component_config, "DefaultConfiguration") or {}
    if not isinstance(default, Mapping):
        raise RecipeError("ComponentConfiguration.DefaultConfiguration must be a mapping")
    return Component(name=name, configuration=merge_config(default, merge or {}))
