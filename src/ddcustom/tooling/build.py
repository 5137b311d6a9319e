"""Build the Greengrass component without gdk: the layout `gdk component build` (zip build system) makes.

``python -m ddcustom.tooling.build [--project-dir DIR]`` (``make build``) follows gdk 1.6.2 step by step
(docs/greengrass.md, "Building like gdk"): read gdk-config.json and the one recipe; recreate
``greengrass-build/recipes`` and ``greengrass-build/artifacts/<name>/<version>``; copy the project into
``zip-build/<project dir name>/`` leaving out gdk-config.json, greengrass-build, the recipe and the
``options.excludes`` globs (matched from the project root, ``**/`` for any depth); zip it into
``zip-build/<zip name>.zip``; write the component name, version and publisher into the recipe; rewrite
the URI of each built artifact to ``s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/<file>``; validate
the recipe against gdk's schema (keys lower-cased) and the 16,000-byte limit; write it.

Standard library and PyYAML only. The zip is deterministic (sorted entries, fixed times and modes).
``jsonschema`` is used for full schema validation when installed (the build extra, which `make build`
installs; the dev extra has it too); without it only the schema's required and allowed top-level keys
are checked.

``get_nocase``/``set_nocase`` read and write recipe keys case-insensitively (the stand-in nucleus
uses them too).
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from ddcustom.device.config import ConfigError, load_config_file

MAX_RECIPE_BYTES = 16_000  # gdk's MAX_RECIPE_FILE_SIZE_BYTES
GDK_CONFIG_FILE = "gdk-config.json"
GG_BUILD_DIR = "greengrass-build"
ZIP_BUILD_DIR = "zip-build"
RECIPE_FILES = ("recipe.json", "recipe.yaml")
ARTIFACT_URI_PREFIX = "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION"
# gdk leaves these out when the zip build has no `options`.
DEFAULT_EXCLUDES = ("**/test*", "**/.*", "**/node_modules")
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"  # src/ddcustom/schemas
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


def validate(instance: Any, schema_path: Path, what: str) -> None:
    """Validate ``instance`` against a draft-07 schema; raises BuildError naming the failing place."""
    try:
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read schema {schema_path}: {exc}") from None
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
        config = load_config_file(path, what="gdk configuration")
    except ConfigError as exc:
        raise BuildError(str(exc)) from None
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
    check_recipe_size(path)  # Greengrass's limit, far below the loader's bound
    try:
        recipe = load_config_file(path, what="recipe")
    except ConfigError as exc:
        raise BuildError(str(exc)) from None
    if not recipe:
        raise BuildError(f"recipe {path} is empty")
    return recipe


# ---- zip build --------------------------------------------------------------------------------


def exclude_patterns(project: ComponentProject, recipe_path: Path) -> list[str]:
    """gdk's ignore list: always its own files; then options.excludes, or the defaults without options."""
    excludes = project.build_options.get("excludes", []) if project.build_options else DEFAULT_EXCLUDES
    return [GDK_CONFIG_FILE, GG_BUILD_DIR, recipe_path.name, *excludes]


def copy_project(root: Path, destination: Path, patterns: list[str]) -> None:
    # every path the globs match, each glob taken from the project root (as gdk's glob.glob call)
    unwanted = {
        path for pattern in patterns for path in glob.glob(f"{root}{os.path.sep}{pattern}", recursive=True)
    }

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


_NO_KEY = object()


def _key(mapping: Mapping[Any, Any], name: str) -> Any:
    """The key of ``mapping`` equal to ``name`` ignoring case (recipe keys and the nucleus's configuration
    store are case-insensitive); an exact match first. A key that is not a string (YAML reads ``1:`` as
    an int) compares as its text. ``_NO_KEY`` when there is none."""
    if name in mapping:
        return name
    lowered = name.lower()
    return next((key for key in mapping if str(key).lower() == lowered), _NO_KEY)


def get_nocase(mapping: Mapping[Any, Any], name: str, default: Any = None) -> Any:
    """``mapping[name]`` with the key matched case-insensitively; ``default`` when absent."""
    key = _key(mapping, name)
    return default if key is _NO_KEY else mapping[key]


def set_nocase(mapping: dict[Any, Any], name: str, value: Any) -> None:
    """Set ``name``, replacing the value of a key that differs only in case (its spelling is kept)."""
    key = _key(mapping, name)
    mapping[name if key is _NO_KEY else key] = value


def transform_recipe(
    recipe: Mapping[str, Any], project: ComponentProject, built_dir: Path, artifacts_dir: Path
) -> dict[str, Any]:
    """gdk's BuildRecipeTransformer: name/version/publisher from gdk-config, built artifacts copied and
    their URIs rewritten. An s3:// artifact that was not built is an error (gdk would look on S3)."""
    result = copy.deepcopy(dict(recipe))
    set_nocase(result, "ComponentName", project.name)
    set_nocase(result, "ComponentVersion", project.version)
    set_nocase(result, "ComponentPublisher", project.author)
    for manifest in get_nocase(result, "Manifests", []) or []:
        for artifact in get_nocase(manifest, "Artifacts", []) or []:
            uri = get_nocase(artifact, "URI")
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
            set_nocase(artifact, "URI", f"{ARTIFACT_URI_PREFIX}/{file_name}")
    return result


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
    validate(keys_to_lower(built), RECIPE_SCHEMA, f"built recipe from {recipe_path.name}")

    out = recipes_dir / recipe_path.name
    if out.suffix == ".json":
        out.write_text(json.dumps(built, indent=4), encoding="utf-8")
    else:
        out.write_text(yaml.dump(built, Dumper=_RecipeDumper, sort_keys=False, width=110), encoding="utf-8")
    check_recipe_size(out)
    return BuildResult(recipe=out, artifacts=tuple(sorted(artifacts_dir.iterdir())), component=project)


# ---- command line -----------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ddcustom.tooling.build",
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
