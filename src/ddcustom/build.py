"""Build the Greengrass component without gdk: the layout `gdk component build` (zip build system) makes.

``python -m ddcustom.build [--project-dir DIR]`` (``make build``) follows gdk 1.6.2 step by step
(docs/greengrass.md section 5): read gdk-config.json and the one recipe; recreate
``greengrass-build/recipes`` and ``greengrass-build/artifacts/<name>/<version>``; copy the project into
``zip-build/<project dir name>/`` leaving out gdk-config.json, greengrass-build, the recipe and the
``options.excludes`` globs (matched from the project root, ``**/`` for any depth); zip it into
``zip-build/<zip name>.zip``; write the component name, version and publisher into the recipe; rewrite
the URI of each built artifact to ``s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/<file>``; validate
the recipe against gdk's schema (keys lower-cased) and the 16,000-byte limit; write it.

Standard library and PyYAML only. The zip is deterministic (sorted entries, fixed times and modes).
``jsonschema`` is used for full schema validation when installed (it is in the dev extra); without it
only the schema's required and allowed top-level keys are checked.

``lifecycle_steps`` returns a recipe's lifecycle scripts with the recipe variables substituted as the
nucleus does, for running the Install/Run scripts outside Greengrass (tests, stand-in nucleus).
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import re
import shutil
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

MAX_RECIPE_BYTES = 16_000  # gdk's MAX_RECIPE_FILE_SIZE_BYTES
GDK_CONFIG_FILE = "gdk-config.json"
GG_BUILD_DIR = "greengrass-build"
ZIP_BUILD_DIR = "zip-build"
RECIPE_FILES = ("recipe.json", "recipe.yaml")
ARTIFACT_URI_PREFIX = "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION"
# gdk leaves these out when the zip build has no `options`.
DEFAULT_EXCLUDES = ("**/test*", "**/.*", "**/node_modules")
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
RECIPE_SCHEMA = SCHEMA_DIR / "greengrass-recipe.schema.json"
GDK_CONFIG_SCHEMA = SCHEMA_DIR / "gdk-config.schema.json"
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold: same bytes on every build


class _RecipeDumper(yaml.SafeDumper):
    """safe_dump with multi-line strings (lifecycle scripts) as readable literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_RecipeDumper.add_representer(str, _represent_str)


class BuildError(Exception):
    """The project cannot be built; the message says which file and why."""


@dataclass(frozen=True)
class ComponentProject:
    """The single component entry of gdk-config.json."""

    name: str
    author: str
    version: str
    build_system: str
    build_options: Mapping[str, Any]
    bucket: str
    region: str


@dataclass(frozen=True)
class BuildResult:
    recipe: Path
    artifacts: tuple[Path, ...]
    component: ComponentProject


# ---- schema validation ------------------------------------------------------------------------


def keys_to_lower(value: Any) -> Any:
    """Lower-case every mapping key at every depth, as gdk does before validating a recipe."""
    if isinstance(value, dict):
        return {str(key).lower(): keys_to_lower(item) for key, item in value.items()}
    if isinstance(value, list):
        return [keys_to_lower(item) for item in value]
    return value


def load_schema(path: Path) -> dict[str, Any]:
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read schema {path}: {exc}") from None
    return schema


def validate(instance: Any, schema_path: Path, what: str) -> None:
    """Validate ``instance`` against a draft-07 schema; raises BuildError naming the failing place."""
    schema = load_schema(schema_path)
    try:
        import jsonschema
    except ImportError:
        _validate_top_level(instance, schema, what)
        return
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(part) for part in errors[0].absolute_path) or "(top level)"
        raise BuildError(f"{what} does not match {schema_path.name} at {where}: {errors[0].message}")


def _validate_top_level(instance: Any, schema: Mapping[str, Any], what: str) -> None:
    """The part of a schema that needs no jsonschema: required and allowed top-level keys."""
    if not isinstance(instance, dict):
        raise BuildError(f"{what} must be a mapping, not {type(instance).__name__}")
    missing = [key for key in schema.get("required", []) if key not in instance]
    if missing:
        raise BuildError(f"{what} lacks required key(s): {', '.join(missing)}")
    if schema.get("additionalProperties") is False:
        unknown = sorted(set(instance) - set(schema.get("properties", {})))
        if unknown:
            raise BuildError(f"{what} has unknown key(s): {', '.join(unknown)}")


# ---- reading the project ----------------------------------------------------------------------


def load_gdk_config(project_dir: Path) -> ComponentProject:
    path = project_dir / GDK_CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BuildError(f"{path} is not valid JSON: {exc}") from None
    validate(config, GDK_CONFIG_SCHEMA, str(path))
    components = config.get("component", {})
    if not isinstance(components, dict) or len(components) != 1:
        raise BuildError(f"{path} must name exactly one component under 'component'")
    name, entry = next(iter(components.items()))
    build = entry.get("build", {})
    publish = entry.get("publish", {})
    project = ComponentProject(
        name=name,
        author=entry.get("author", ""),
        version=entry.get("version", ""),
        build_system=build.get("build_system", ""),
        build_options=build.get("options") or {},
        bucket=publish.get("bucket", ""),
        region=publish.get("region", ""),
    )
    if project.version == "NEXT_PATCH":
        raise BuildError(f"{path}: version NEXT_PATCH needs the cloud to resolve; set an explicit version")
    if project.build_system != "zip":
        raise BuildError(f"{path}: only build_system 'zip' is supported here, not {project.build_system!r}")
    return project


def find_recipe(project_dir: Path) -> Path:
    found = [project_dir / name for name in RECIPE_FILES if (project_dir / name).is_file()]
    if len(found) != 1:
        raise BuildError(
            f"{project_dir} must hold exactly one of {' or '.join(RECIPE_FILES)}, found {len(found)}"
        )
    return found[0]


def check_recipe_size(path: Path) -> None:
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise BuildError(f"recipe {path} is {size} bytes; Greengrass accepts at most {MAX_RECIPE_BYTES}")


def read_recipe(path: Path) -> dict[str, Any]:
    check_recipe_size(path)
    try:
        text = path.read_text(encoding="utf-8")
        recipe = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise BuildError(f"cannot read recipe {path}: {exc}") from None
    if not isinstance(recipe, dict):
        raise BuildError(f"recipe {path} must be a mapping")
    return recipe


# ---- zip build --------------------------------------------------------------------------------


def exclude_patterns(project: ComponentProject, recipe_path: Path) -> list[str]:
    """gdk's ignore list: always its own files; then options.excludes, or the defaults without options."""
    patterns = [GDK_CONFIG_FILE, GG_BUILD_DIR, recipe_path.name]
    if project.build_options:
        patterns.extend(project.build_options.get("excludes", []))
    else:
        patterns.extend(DEFAULT_EXCLUDES)
    return patterns


def excluded_paths(root: Path, patterns: list[str]) -> set[str]:
    """Every path the globs match, each glob taken from the project root (as gdk's glob.glob call)."""
    matched: set[str] = set()
    for pattern in patterns:
        matched.update(glob.glob(f"{root}{os.path.sep}{pattern}", recursive=True))
    return matched


def copy_project(root: Path, destination: Path, patterns: list[str]) -> None:
    unwanted = excluded_paths(root, patterns)

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {
            name
            for name in names
            if str(Path(directory) / name) in unwanted or f"{Path(directory) / name}{os.path.sep}" in unwanted
        }

    shutil.copytree(root, destination, ignore=ignore)


def write_zip(source_dir: Path, zip_path: Path) -> None:
    """Zip ``source_dir``'s contents, no top folder (as make_archive with root_dir), deterministically."""
    entries = sorted(source_dir.rglob("*"), key=lambda p: p.relative_to(source_dir).as_posix())
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in entries:
            name = path.relative_to(source_dir).as_posix()
            if path.is_dir():
                info = zipfile.ZipInfo(name + "/", ZIP_TIMESTAMP)
                info.external_attr = (0o40755 << 16) | 0x10  # directory, rwxr-xr-x
                archive.writestr(info, b"")
            else:
                info = zipfile.ZipInfo(name, ZIP_TIMESTAMP)
                mode = 0o755 if os.access(path, os.X_OK) else 0o644
                info.external_attr = (0o100000 | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())


def zip_name(project: ComponentProject, project_dir: Path) -> str:
    setting = project.build_options.get("zip_name")
    if setting is None:
        return project_dir.name
    return setting or project.name


def build_zip(project: ComponentProject, project_dir: Path, recipe_path: Path) -> Path:
    zip_build = project_dir / ZIP_BUILD_DIR
    shutil.rmtree(zip_build, ignore_errors=True)
    # Not created beforehand: copytree lists the project before it creates zip-build/<name>, so
    # zip-build never copies into itself (as in gdk), even when the excludes do not name it.
    staged = zip_build / project_dir.name
    copy_project(project_dir, staged, exclude_patterns(project, recipe_path))
    archive = zip_build / f"{zip_name(project, project_dir)}.zip"
    write_zip(staged, archive)
    return archive


# ---- recipe transform -------------------------------------------------------------------------


def _key(mapping: Mapping[str, Any], name: str) -> Optional[str]:
    """The key of ``mapping`` equal to ``name`` ignoring case (recipe keys are case-insensitive)."""
    return next((key for key in mapping if key.lower() == name.lower()), None)


def get_ci(mapping: Mapping[str, Any], name: str, default: Any = None) -> Any:
    key = _key(mapping, name)
    return default if key is None else mapping[key]


def set_ci(mapping: dict[str, Any], name: str, value: Any) -> None:
    mapping[_key(mapping, name) or name] = value


def transform_recipe(
    recipe: Mapping[str, Any], project: ComponentProject, built_dir: Path, artifacts_dir: Path
) -> dict[str, Any]:
    """gdk's BuildRecipeTransformer: name/version/publisher from gdk-config, built artifacts copied and
    their URIs rewritten. An s3:// artifact that was not built is an error (gdk would look on S3)."""
    result = copy.deepcopy(dict(recipe))
    set_ci(result, "ComponentName", project.name)
    set_ci(result, "ComponentVersion", project.version)
    set_ci(result, "ComponentPublisher", project.author)
    for manifest in get_ci(result, "Manifests", []) or []:
        for artifact in get_ci(manifest, "Artifacts", []) or []:
            uri = get_ci(artifact, "URI")
            if not isinstance(uri, str) or not uri.startswith("s3://"):
                continue
            file_name = Path(uri).name
            built = built_dir / file_name
            if not built.is_file():
                raise BuildError(
                    f"artifact {uri} was not built (no {built}); gdk would look it up on S3, which this "
                    "offline build does not do"
                )
            shutil.copy(built, artifacts_dir / file_name)
            set_ci(artifact, "URI", f"{ARTIFACT_URI_PREFIX}/{file_name}")
    return result


def validate_recipe(recipe: Mapping[str, Any], what: str = "recipe") -> None:
    validate(keys_to_lower(dict(recipe)), RECIPE_SCHEMA, what)


def build(project_dir: Path) -> BuildResult:
    """Run the whole gdk zip build in ``project_dir``; returns where the recipe and artifacts are."""
    project_dir = project_dir.resolve()
    project = load_gdk_config(project_dir)
    recipe_path = find_recipe(project_dir)
    recipe = read_recipe(recipe_path)

    gg_build = project_dir / GG_BUILD_DIR
    shutil.rmtree(gg_build, ignore_errors=True)
    recipes_dir = gg_build / "recipes"
    artifacts_dir = gg_build / "artifacts" / project.name / project.version
    recipes_dir.mkdir(parents=True)
    artifacts_dir.mkdir(parents=True)

    build_zip(project, project_dir, recipe_path)
    built = transform_recipe(recipe, project, project_dir / ZIP_BUILD_DIR, artifacts_dir)
    validate_recipe(built, f"built recipe from {recipe_path.name}")

    out = recipes_dir / recipe_path.name
    if out.suffix == ".json":
        out.write_text(json.dumps(built, indent=4), encoding="utf-8")
    else:
        out.write_text(yaml.dump(built, Dumper=_RecipeDumper, sort_keys=False, width=110), encoding="utf-8")
    check_recipe_size(out)
    return BuildResult(recipe=out, artifacts=tuple(sorted(artifacts_dir.iterdir())), component=project)


# ---- lifecycle with recipe variables substituted ----------------------------------------------


@dataclass(frozen=True)
class LifecycleStep:
    """One lifecycle phase as the nucleus runs it: ``sh -c script`` in the work folder with ``setenv``."""

    script: str
    timeout: Optional[int]  # seconds; None: no limit (Run)
    requires_privilege: bool = False
    skip_if: Optional[str] = None
    setenv: dict[str, str] = field(default_factory=dict)


_VARIABLE = re.compile(
    r"\{(artifacts:path|artifacts:decompressedPath|work:path|kernel:rootPath|iot:thingName)\}"
)
_CONFIG_VARIABLE = re.compile(r"\{configuration:(/[^}]*)\}")
# The nucleus's defaults when a step gives no Timeout (Run and Startup have none).
DEFAULT_TIMEOUTS: dict[str, Optional[int]] = {
    "bootstrap": 120,
    "install": 120,
    "startup": 120,
    "run": None,
    "shutdown": 15,
    "recover": 60,
}


def _json_pointer(document: Any, pointer: str) -> Any:
    node = document
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(pointer)
    return node


def interpolate(text: str, variables: Mapping[str, str], configuration: Mapping[str, Any]) -> str:
    """Replace recipe variables; ``{configuration:/a/b}`` by JSON pointer (non-strings as JSON).
    A variable the nucleus cannot resolve stays as written, as on a device."""

    def config_value(match: re.Match[str]) -> str:
        try:
            value = _json_pointer(configuration, match.group(1))
        except KeyError:
            return match.group(0)
        return value if isinstance(value, str) else json.dumps(value)

    text = _VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), text)
    return _CONFIG_VARIABLE.sub(config_value, text)


def select_manifest(recipe: Mapping[str, Any], os_name: str = "linux") -> Mapping[str, Any]:
    """The first manifest whose Platform os is ``os_name``, ``*`` or absent (the nucleus's choice)."""
    for manifest in get_ci(recipe, "Manifests", []) or []:
        platform = get_ci(manifest, "Platform", {}) or {}
        if get_ci(platform, "os", "*") in (os_name, "*"):
            return dict(manifest)
    raise BuildError(f"recipe has no manifest for platform os {os_name!r}")


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
        configuration = get_ci(get_ci(recipe, "ComponentConfiguration", {}) or {}, "DefaultConfiguration", {})
    variables = {
        "artifacts:path": artifacts_path,
        "artifacts:decompressedPath": decompressed_path,
        "work:path": work_path,
        "kernel:rootPath": kernel_root,
        "iot:thingName": thing_name,
    }

    def sub(value: Any) -> str:
        return interpolate(str(value), variables, configuration or {})

    lifecycle = get_ci(select_manifest(recipe), "Lifecycle", {}) or {}
    common_env = {k: sub(v) for k, v in (get_ci(lifecycle, "Setenv", {}) or {}).items()}
    steps: dict[str, LifecycleStep] = {}
    for phase, default_timeout in DEFAULT_TIMEOUTS.items():
        body = get_ci(lifecycle, phase)
        if body is None:
            continue
        if isinstance(body, str):
            body = {"Script": body}
        timeout = get_ci(body, "Timeout")
        privilege = get_ci(body, "RequiresPrivilege", False)
        skip_if = get_ci(body, "SkipIf")
        steps[phase] = LifecycleStep(
            script=sub(get_ci(body, "Script", "")),
            timeout=int(timeout) if timeout is not None else default_timeout,
            requires_privilege=str(privilege).lower() == "true",
            skip_if=sub(skip_if) if skip_if is not None else None,
            setenv={**common_env, **{k: sub(v) for k, v in (get_ci(body, "Setenv", {}) or {}).items()}},
        )
    return steps


# ---- command line -----------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ddcustom.build",
        description="Build the Greengrass component as `gdk component build` does (zip build system).",
    )
    parser.add_argument("--project-dir", type=Path, default=Path.cwd(), help="folder with gdk-config.json")
    args = parser.parse_args(argv)
    try:
        result = build(args.project_dir)
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 2
    print(f"component {result.component.name} {result.component.version}")
    print(f"recipe    {result.recipe} ({result.recipe.stat().st_size} bytes)")
    for artifact in result.artifacts:
        print(f"artifact  {artifact} ({artifact.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
