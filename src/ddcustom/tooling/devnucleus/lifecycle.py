"""A recipe's lifecycle scripts with the recipe variables substituted as the nucleus does, for running
the Install/Run scripts outside Greengrass (tests, local runs)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ddcustom.tooling.build import get_nocase
from ddcustom.tooling.devnucleus.access import RecipeError, interpolate


@dataclass(frozen=True)
class LifecycleStep:
    """One lifecycle phase as the nucleus runs it: ``sh -c script`` in the work folder with ``setenv``."""

    script: str
    timeout: Optional[int]  # seconds; None: no limit (Run)
    requires_privilege: bool = False
    skip_if: Optional[str] = None
    setenv: dict[str, str] = field(default_factory=dict)


# The nucleus's defaults when a step gives no Timeout (Run and Startup have none).
DEFAULT_TIMEOUTS: dict[str, Optional[int]] = {
    "bootstrap": 120,
    "install": 120,
    "startup": 120,
    "run": None,
    "shutdown": 15,
    "recover": 60,
}


def select_manifest(recipe: Mapping[str, Any], os_name: str = "linux") -> Mapping[str, Any]:
    """The first manifest whose Platform os is ``os_name``, ``*`` or absent (the nucleus's choice)."""
    for manifest in get_nocase(recipe, "Manifests", []) or []:
        platform = get_nocase(manifest, "Platform", {}) or {}
        if get_nocase(platform, "os", "*") in (os_name, "*"):
            return dict(manifest)
    raise RecipeError(f"recipe has no manifest for platform os {os_name!r}")


def lifecycle_steps(
    recipe: Mapping[str, Any],
    *,
    artifacts_path: str,
    decompressed_path: str,
    work_path: str,
    thing_name: str,
    kernel_root: str = "/greengrass/v2",
    configuration: Optional[Mapping[str, Any]] = None,
) -> dict[str, LifecycleStep]:
    """The Linux manifest's lifecycle phases (lower-case names) with every recipe variable substituted.

    ``configuration`` defaults to the recipe's DefaultConfiguration. ``artifacts_path`` is where the zip
    lies, ``decompressed_path`` where it was unzipped into ``<zip name>/``.
    """
    if configuration is None:
        configuration = get_nocase(
            get_nocase(recipe, "ComponentConfiguration", {}) or {}, "DefaultConfiguration", {}
        )
    variables = {
        "artifacts:path": artifacts_path,
        "artifacts:decompressedPath": decompressed_path,
        "work:path": work_path,
        "kernel:rootPath": kernel_root,
        "iot:thingName": thing_name,
    }

    def sub(value: Any) -> str:
        return interpolate(str(value), variables, configuration or {})

    lifecycle = get_nocase(select_manifest(recipe), "Lifecycle", {}) or {}
    common_env = {k: sub(v) for k, v in (get_nocase(lifecycle, "Setenv", {}) or {}).items()}
    steps: dict[str, LifecycleStep] = {}
    for phase, default_timeout in DEFAULT_TIMEOUTS.items():
        body = get_nocase(lifecycle, phase)
        if body is None:
            continue
        if isinstance(body, str):
            body = {"Script": body}
        timeout = get_nocase(body, "Timeout")
        privilege = get_nocase(body, "RequiresPrivilege", False)
        skip_if = get_nocase(body, "SkipIf")
        steps[phase] = LifecycleStep(
            script=sub(get_nocase(body, "Script", "")),
            timeout=int(timeout) if timeout is not None else default_timeout,
            requires_privilege=str(privilege).lower() == "true",
            skip_if=sub(skip_if) if skip_if is not None else None,
            setenv={
                **common_env,
                **{k: sub(v) for k, v in (get_nocase(body, "Setenv", {}) or {}).items()},
            },
        )
    return steps
