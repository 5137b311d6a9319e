"""Recipe reading, component configuration and the accessControl rules the nucleus enforces."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ddcustom.config import ConfigError, load_config_file

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


def get_ci(mapping: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Look a key up case-insensitively, as Greengrass reads recipe keys."""
    if key in mapping:
        return mapping[key]
    lowered = key.lower()
    for name, value in mapping.items():
        if isinstance(name, str) and name.lower() == lowered:
            return value
    return default


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


def lookup(config: Any, key_path: list[str]) -> tuple[bool, Any]:
    """(found, value) of a key path in a nested configuration; keys compare case-insensitively."""
    node = config
    for key in key_path:
        if not isinstance(node, Mapping):
            return False, None
        missing = object()
        node = get_ci(node, key, missing)
        if node is missing:
            return False, None
    return True, node


_VARIABLE = re.compile(r"\{(iot:thingName|configuration:(/[^}]*))\}")


def interpolate(text: str, thing_name: str, config: Mapping[str, Any]) -> str:
    """Replace ``{iot:thingName}`` and ``{configuration:/JSON/Pointer}`` (unknown keys stay as written)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(2) is None:
            return thing_name
        found, value = lookup(config, [part for part in match.group(2).split("/") if part])
        if not found or isinstance(value, (dict, list)):
            return match.group(0)
        return value if isinstance(value, str) else json.dumps(value)

    return _VARIABLE.sub(replace, text)


def mqtt_filter_matches(topic_filter: str, topic: str) -> bool:
    """Does an MQTT topic filter (with + and #) match a topic name? (message delivery)"""
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


def _glob_matches(pattern: str, value: str) -> bool:
    """``*`` matches any run of characters; everything else is literal."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _mqtt_resource_matches(resource: str, requested: str) -> bool:
    """mqttproxy: a granted filter permits the same filter, narrower filters and matching topics."""
    if resource == requested or ("*" in resource and _glob_matches(resource, requested)):
        return True
    granted = resource.split("/")
    wanted = requested.split("/")
    for index, level in enumerate(granted):
        if level == "#":
            return True
        if index >= len(wanted) or wanted[index] == "#":
            return False
        if level not in ("+", wanted[index]):
            return False
    return len(granted) == len(wanted)


@dataclass(frozen=True)
class Policy:
    service: str
    name: str
    operations: tuple[str, ...]
    resources: tuple[str, ...]


def parse_policies(config: Mapping[str, Any], thing_name: str) -> list[Policy]:
    """The accessControl policies of a component configuration, with recipe variables interpolated."""
    access = get_ci(config, "accessControl") or {}
    if not isinstance(access, Mapping):
        raise RecipeError("accessControl must be a mapping of IPC service -> policies")
    policies: list[Policy] = []
    for service, named in access.items():
        if not isinstance(named, Mapping):
            raise RecipeError(f"accessControl.{service} must be a mapping of policy id -> policy")
        for name, body in named.items():
            if not isinstance(body, Mapping):
                raise RecipeError(f"accessControl.{service}.{name} must be a mapping")
            operations = get_ci(body, "operations") or []
            resources = get_ci(body, "resources") or []
            if not isinstance(operations, list) or not isinstance(resources, list):
                raise RecipeError(f"accessControl.{service}.{name}: operations and resources must be lists")
            policies.append(
                Policy(
                    service=str(service),
                    name=str(name),
                    operations=tuple(str(op) for op in operations),
                    resources=tuple(interpolate(str(res), thing_name, config) for res in resources),
                )
            )
    return policies


def is_authorized(policies: list[Policy], operation: str, resource: str) -> bool:
    """Does any policy of the operation's service grant this operation on this resource?"""
    service = GRANTING_SERVICE.get(operation)
    if service is None:
        return False
    for policy in policies:
        if policy.service != service:
            continue
        if operation not in policy.operations and "*" not in policy.operations:
            continue
        for granted in policy.resources:
            if service == MQTT_PROXY_SERVICE and _mqtt_resource_matches(granted, resource):
                return True
            if service == PUBSUB_SERVICE and _glob_matches(granted, resource):
                return True
    return False


@dataclass(frozen=True)
class Component:
    """What the nucleus knows of the one component it serves."""

    name: str
    configuration: dict[str, Any]


def component_from_recipe(recipe: Mapping[str, Any], merge: Mapping[str, Any] | None = None) -> Component:
    name = get_ci(recipe, "ComponentName")
    if not isinstance(name, str) or not name:
        raise RecipeError("recipe has no ComponentName")
    component_config = get_ci(recipe, "ComponentConfiguration") or {}
    if not isinstance(component_config, Mapping):
        raise RecipeError("ComponentConfiguration must be a mapping")
    default = get_ci(component_config, "DefaultConfiguration") or {}
    if not isinstance(default, Mapping):
        raise RecipeError("ComponentConfiguration.DefaultConfiguration must be a mapping")
    return Component(name=name, configuration=merge_config(default, merge or {}))
