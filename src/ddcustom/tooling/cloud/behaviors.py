"""The cloud security profile's behaviors, taken from the same profile the device evaluates."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddcustom.device.detect.profile import Profile


def cloud_behaviors(profile: Profile) -> tuple[list[dict[str, Any]], list[str]]:
    """Behaviors as CreateSecurityProfile takes them, and notes on what was left out.

    Keys the service model does not know (device-only extras) are dropped. Behaviors with a value the
    model's pattern refuses (botocore does not check patterns: the service would fail setup halfway)
    stay on the device only. (A parsed Profile names only standard or catalogued custom metrics.)
    """
    import botocore.session

    behavior_shape = botocore.session.get_session().get_service_model("iot").shape_for("Behavior")
    behaviors: list[dict[str, Any]] = []
    notes: list[str] = []
    for raw in profile.to_json()["behaviors"]:
        dropped: list[str] = []
        refused: list[str] = []
        behavior = _trim(raw, behavior_shape, "", dropped, refused)
        if refused:
            notes.extend(
                f"behavior {raw.get('name')!r}: {what} is evaluated on the device only" for what in refused
            )
            continue
        behaviors.append(behavior)
        notes.extend(f"behavior {raw.get('name')!r}: device-only key {key!r} left out" for key in dropped)
    return behaviors, notes


def _trim(value: Any, shape: Any, path: str, dropped: list[str], refused: list[str]) -> Any:
    """``value`` without the keys ``shape`` lacks (their paths go to ``dropped``); strings that do not
    match the shape's pattern go to ``refused``."""
    if shape.type_name == "structure" and isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if key in shape.members:
                out[key] = _trim(item, shape.members[key], where, dropped, refused)
            else:
                dropped.append(where)
        return out
    if shape.type_name == "list" and isinstance(value, list):
        return [_trim(item, shape.member, path, dropped, refused) for item in value]
    pattern = shape.metadata.get("pattern")
    if isinstance(value, str) and pattern and not re.fullmatch(pattern, value):
        refused.append(f"{path} {value!r}")
    return value
