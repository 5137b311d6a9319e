"""`python -m ddcustom.tooling.build`: the gdk zip-build layout, the artifact's contents, the built recipe."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from typing import Any, Optional

import jsonschema
import pytest
import yaml

from ddcustom import COMPONENT_NAME, __version__
from ddcustom.tooling.build import BuildError, BuildResult, build, keys_to_lower, main
from support.helpers import ROOT

ZIP_FILE = f"{COMPONENT_NAME}.zip"
# Files the artifact must never carry; created in the test project so their absence means something.
DECOYS = (
    "tests/test_x.py",
    "tests/fixtures/packaging/x.txt",
    ".venv/bin/python",
    ".git/HEAD",
    ".pytest_cache/v/x",
    "src/ddcustom/__pycache__/config.cpython-311.pyc",
    "src/ddcustom/stray.pyc",
    "src/ddcustom.egg-info/PKG-INFO",
    "bench/results/run.json",
    "bench/collect_cost.py",
    "tools/docs_tables.py",
    "venv/bin/python",
    "build/lib/x.py",
    "dist/ddcustom-1.0.0.tar.gz",
    "docs/packaging.md",
    "greengrass-build/old.txt",
    "zip-build/old.zip",
)


def recipe_schema() -> dict[str, Any]:
    path = ROOT / "src" / "ddcustom" / "schemas" / "greengrass-recipe.schema.json"
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def make_project(tmp_path: Path, name: str = "ddcustom-checkout") -> Path:
    """A copy of the real project files plus the decoys, in a folder with a different name."""
    project = tmp_path / name
    project.mkdir(parents=True)
    for file_name in ("recipe.yaml", "gdk-config.json", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / file_name, project / file_name)
    shutil.copytree(
        ROOT / "src" / "ddcustom",
        project / "src" / "ddcustom",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    for decoy in DECOYS:
        (project / decoy).parent.mkdir(parents=True, exist_ok=True)
        (project / decoy).write_text("decoy\n")
    return project


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build(make_project(tmp_path_factory.mktemp("build")))


def zip_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def test_packaging_build_layout_matches_gdk(built: BuildResult) -> None:
    project = built.recipe.parents[2]
    assert built.recipe == project / "greengrass-build" / "recipes" / "recipe.yaml"
    artifact_dir = project / "greengrass-build" / "artifacts" / COMPONENT_NAME / __version__
    assert built.artifacts == (artifact_dir / ZIP_FILE,)
    assert sorted(p.name for p in (project / "greengrass-build").iterdir()) == ["artifacts", "recipes"]
    assert sorted(p.name for p in (project / "zip-build").iterdir()) == [ZIP_FILE, project.name]
    assert (project / "zip-build" / ZIP_FILE).read_bytes() == built.artifacts[0].read_bytes()
    assert (project / "zip-build" / project.name / "pyproject.toml").is_file()


def test_packaging_built_recipe_validates_and_fits(built: BuildResult) -> None:
    recipe = yaml.safe_load(built.recipe.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(recipe_schema()).validate(keys_to_lower(recipe))
    assert built.recipe.stat().st_size < 16_000


def test_packaging_built_recipe_takes_name_version_publisher_and_rewritten_uri(built: BuildResult) -> None:
    recipe = yaml.safe_load(built.recipe.read_text(encoding="utf-8"))
    gdk = json.loads((ROOT / "gdk-config.json").read_text())["component"][COMPONENT_NAME]
    assert (recipe["ComponentName"], recipe["ComponentVersion"], recipe["ComponentPublisher"]) == (
        COMPONENT_NAME,
        gdk["version"],
        gdk["author"],
    )
    assert recipe["Manifests"][0]["Artifacts"] == [
        {"URI": f"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/{ZIP_FILE}", "Unarchive": "ZIP"}
    ]
    source = yaml.safe_load((ROOT / "recipe.yaml").read_text(encoding="utf-8"))
    assert recipe["ComponentConfiguration"] == source["ComponentConfiguration"]
    assert recipe["Manifests"][0]["Lifecycle"] == source["Manifests"][0]["Lifecycle"]


def test_packaging_zip_holds_the_package_and_nothing_excluded(built: BuildResult) -> None:
    names = zip_names(built.artifacts[0])
    files = {n for n in names if not n.endswith("/")}
    expected_sources = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "src" / "ddcustom").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert expected_sources <= files
    assert {"pyproject.toml", "README.md", "src/ddcustom/__init__.py", "src/ddcustom/__main__.py"} <= files
    assert files - expected_sources == {"pyproject.toml", "README.md"}
    for name in names:
        parts = name.rstrip("/").split("/")
        assert not any(part.startswith(".") for part in parts), name
        assert not {"tests", "__pycache__", "venv", "bench", "build", "dist", "docs"} & set(parts), name
        assert not name.endswith((".pyc", ".egg-info/")) and ".egg-info/" not in name, name
        assert parts[0] not in {"gdk-config.json", "recipe.yaml", "greengrass-build", "zip-build"}, name


def test_packaging_zip_is_deterministic(tmp_path: Path) -> None:
    first = build(make_project(tmp_path / "a", "one")).artifacts[0].read_bytes()
    second = build(make_project(tmp_path / "b", "two")).artifacts[0].read_bytes()
    assert first == second
    with zipfile.ZipFile(tmp_path / "a" / "one" / "zip-build" / ZIP_FILE) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_packaging_rebuild_replaces_previous_output(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    build(project)
    (project / "zip-build" / "leftover.txt").write_text("x")
    (project / "greengrass-build" / "leftover.txt").write_text("x")
    build(project)
    assert not (project / "zip-build" / "leftover.txt").exists()
    assert not (project / "greengrass-build" / "leftover.txt").exists()


def setuptools_builds_wheels() -> bool:
    """setuptools >= 70.1 builds wheels by itself; older ones need the `wheel` package."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    return numbers >= (70, 1) or importlib.util.find_spec("wheel") is not None


def test_packaging_unzipped_artifact_installs_offline(built: BuildResult, tmp_path: Path) -> None:
    # the dev extra pins setuptools >= 70.1, which builds wheels without the `wheel` package
    assert setuptools_builds_wheels(), "the dev extra's setuptools >= 70.1 is not installed"
    unpacked = tmp_path / "artifacts-unarchived" / COMPONENT_NAME
    with zipfile.ZipFile(built.artifacts[0]) as archive:
        archive.extractall(unpacked)
    wheels = tmp_path / "wheels"
    # No PYTHONPATH (as PYTHONPATH=src): the venv would see the checkout's ddcustom and its egg-info,
    # so pip would find it "already installed" and the import would not come from the install.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    offline = [
        "--no-deps",
        "--no-index",
        "--no-build-isolation",
        "--no-cache-dir",
        "--disable-pip-version-check",
    ]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", *offline, "-w", str(wheels), str(unpacked)],
        check=True,
        timeout=120,
        env=env,
    )
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    (wheel,) = wheels.glob("ddcustom-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", *offline, str(wheel)],
        check=True,
        timeout=120,
        env=env,
    )
    found = subprocess.run(
        [str(python), "-c", "import ddcustom; print(ddcustom.__file__, ddcustom.__version__)"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    ).stdout.split()
    assert Path(found[0]).is_relative_to(target)
    assert found[1] == __version__


# ---- gdk semantics on a tiny project -----------------------------------------------------------


def tiny_project(
    tmp_path: Path, options: Any, recipe_text: Optional[str] = None, zip_file: str = "tiny.zip"
) -> Path:
    project = tmp_path / "tiny"
    for name in ("keep.py", "docs/a.md", "pkg/docs/b.md", "pkg/test_x.py", "testdata/c", ".hidden", "pkg/.h"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    (project / "node_modules" / "m").mkdir(parents=True)
    build_config: dict[str, Any] = {"build_system": "zip"}
    if options is not None:
        build_config["options"] = options
    config = {
        "component": {
            "com.example.Tiny": {
                "author": "me",
                "version": "0.1.0",
                "build": build_config,
                "publish": {"bucket": "b", "region": "r"},
            }
        },
        "gdk_version": "1.5.0",
    }
    (project / "gdk-config.json").write_text(json.dumps(config))
    (project / "recipe.yaml").write_text(
        recipe_text
        or "RecipeFormatVersion: '2020-01-25'\nComponentName: x\nComponentVersion: '9.9.9'\n"
        "Manifests:\n  - Lifecycle:\n      Run: python3 -u {artifacts:decompressedPath}/tiny/keep.py\n"
        f"    Artifacts:\n      - Uri: s3://bucket/{zip_file}\n        Unarchive: ZIP\n"
    )
    return project


def test_packaging_default_excludes_without_options(tmp_path: Path) -> None:
    result = build(tiny_project(tmp_path, None))
    assert result.artifacts[0].name == "tiny.zip"  # no zip_name: the project folder's name
    files = {n for n in zip_names(result.artifacts[0]) if not n.endswith("/")}
    assert files == {"keep.py", "docs/a.md", "pkg/docs/b.md"}  # **/test*, **/.*, **/node_modules gone


def test_packaging_excludes_match_from_the_root_unless_starred(tmp_path: Path) -> None:
    options = {"excludes": ["docs", "**/.*"], "zip_name": ""}
    result = build(tiny_project(tmp_path, options, zip_file="com.example.Tiny.zip"))
    assert result.artifacts[0].name == "com.example.Tiny.zip"  # zip_name "": the component name
    files = {n for n in zip_names(result.artifacts[0]) if not n.endswith("/")}
    assert files == {"keep.py", "pkg/docs/b.md", "pkg/test_x.py", "testdata/c"}
    recipe = yaml.safe_load(result.recipe.read_text())
    # Key case is kept; only the name, version and publisher come from gdk-config.
    assert recipe["Manifests"][0]["Artifacts"][0]["Uri"] == (
        "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/com.example.Tiny.zip"
    )
    assert (recipe["ComponentName"], recipe["ComponentVersion"], recipe["ComponentPublisher"]) == (
        "com.example.Tiny",
        "0.1.0",
        "me",
    )


def test_packaging_artifact_not_built_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="was not built"):
        build(tiny_project(tmp_path, {"excludes": ["docs"], "zip_name": "other"}))


def test_packaging_oversized_recipe_is_rejected(tmp_path: Path) -> None:
    big = "RecipeFormatVersion: '2020-01-25'\nComponentName: x\nComponentVersion: '1.0.0'\n"
    big += "ComponentDescription: '" + "x" * 16_000 + "'\nManifests: []\n"
    with pytest.raises(BuildError, match="at most 16000"):
        build(tiny_project(tmp_path, None, big))


def test_packaging_invalid_recipe_is_rejected_with_its_place(tmp_path: Path) -> None:
    bad = "RecipeFormatVersion: '2020-01-25'\nComponentName: x\nComponentVersion: '1.0.0'\n"
    bad += "Manifests:\n  - Artifacts:\n      - Uri: s3://b/tiny.zip\n        Unarchive: TAR\n"
    with pytest.raises(BuildError, match=r"manifests/0/artifacts/0/unarchive"):
        build(tiny_project(tmp_path, None, bad))


def test_packaging_next_patch_and_two_recipes_are_rejected(tmp_path: Path) -> None:
    project = tiny_project(tmp_path, None)
    (project / "recipe.json").write_text("{}")
    with pytest.raises(BuildError, match=r"exactly one of recipe\.json or recipe\.yaml"):
        build(project)
    (project / "recipe.json").unlink()
    config = json.loads((project / "gdk-config.json").read_text())
    config["component"]["com.example.Tiny"]["version"] = "NEXT_PATCH"
    (project / "gdk-config.json").write_text(json.dumps(config))
    with pytest.raises(BuildError, match="NEXT_PATCH"):
        build(project)


def test_packaging_invalid_gdk_config_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tiny_project(tmp_path, None)
    config = json.loads((project / "gdk-config.json").read_text())
    config["component"]["com.example.Tiny"]["build"]["build_system"] = "make"
    (project / "gdk-config.json").write_text(json.dumps(config))
    assert main(["--project-dir", str(project)]) == 2
    err = capsys.readouterr().err
    assert "gdk-config.json" in err and "build_system" in err
    assert not (project / "greengrass-build").exists()


def test_packaging_unreadable_project_files_get_clear_errors(tmp_path: Path) -> None:
    project = tiny_project(tmp_path, None)
    recipe = (project / "recipe.yaml").read_bytes()
    (project / "recipe.yaml").write_bytes(b"ComponentName: \xff\n")
    with pytest.raises(BuildError, match=r"recipe '.*recipe\.yaml' is not UTF-8 text"):
        build(project)
    (project / "recipe.yaml").write_text("# nothing but a comment\n")
    with pytest.raises(BuildError, match=r"recipe .*recipe\.yaml is empty"):
        build(project)
    (project / "recipe.yaml").write_bytes(recipe)
    (project / "gdk-config.json").write_text('{"component": ')
    with pytest.raises(BuildError, match=r"gdk configuration '.*gdk-config\.json' does not parse"):
        build(project)
    (project / "gdk-config.json").unlink()
    with pytest.raises(BuildError, match=r"cannot read gdk configuration '.*gdk-config\.json'"):
        build(project)
