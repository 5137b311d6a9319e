"""The cloud security profile's behaviors, taken from the same profile the device evaluates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ddcustom.metrics import CUSTOM_METRICS


def profile_document(profile: Any) -> dict[str, Any]:
    """The profile in Device Defender form, from a loaded ``Profile`` or a plain ``{"name", "behaviors"}``."""
    if isinstance(profile, Mapping):
        return dict(profile)
    document: dict[str, Any] = profile.to_json()
    return document


def cloud_behaviors(profile: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Behaviors as CreateSecurityProfile takes them, and notes on what was left out.

    Keys the service model does not know (device-only extras) are dropped, and so are behaviors on
    metrics that are neither standard (``aws:``) nor in the custom metric catalogue.
    """
    import botocore.session

    behavior_shape = botocore.session.get_session().get_service_model("iot").shape_for("Behavior")
    behaviors: list[dict[str, Any]] = []
    notes: list[str] = []
    for raw in profile_document(profile).get("behaviors", []):
        metric = str(raw.get("metric", ""))
        if not metric.startswith("aws:") and metric not in CUSTOM_METRICS:
            notes.append(f"behavior {raw.get('name')!r}: metric {metric!r} is evaluated on the device only")
            continue
        dropped: list[str] = []
        behaviors.append(_trim(raw, behavior_shape, raw.get("name", ""), dropped))
        notes.extend(f"behavior {raw.get('name')!r}: device-only key {key!r} left out" for key in dropped)
    return behaviors, notes


def _trim(value: Any, shape: Any, path: str, dropped: list[str]) -> Any:
    if shape.type_name == "structure" and isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if key in shape.members:
                out[key] = _trim(item, shape.members[key], f"{path}.{key}", dropped)
            else:
                dropped.append(f"{path}.{key}".split(".", 1)[1])
        return out
    if shape.type_name == "list" and isinstance(value, list):
        return [_trim(item, shape.member, path, dropped) for item in value]
    return value
