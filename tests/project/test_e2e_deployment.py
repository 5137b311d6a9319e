"""End to end: build the component, install it with the recipe's own Install, run it under the stand-in
nucleus started from the BUILT recipe, and watch what it publishes, as a core device would.

The layout is the nucleus's: the zip under ``packages/artifacts/<name>/<version>/``, unzipped into
``packages/artifacts-unarchived/<name>/<version>/<zip name>/``, the work folder ``work/<name>/``. Each
lifecycle script runs as ``sh -c`` in the work folder with the recipe's Setenv and the nucleus's
variables, nothing else of the test's environment that a nucleus would not give (no PYTHONPATH, no
active virtual environment): the component must run from what Install put in the root-owned
``{kernel:rootPath}/ddcustom/venv``.

Install: the recipe's Install step runs unmodified, without a network, as on a device without internet:
the artifact carries a ``wheels/`` folder (docs/packaging.md), which Install gives pip with
``--no-index --find-links``. The test makes those wheels from the distributions installed in its own
environment (tests/wheelhouse.py), so the component is installed with exactly the versions the rest of
the suite tested, and the test needs no package index. On an online device Install runs the same
command without those two options. The install happens once per module; each run test starts a fresh
process.

The interpreter: Install creates the venv with the first ``python3`` on the PATH (then python3.13 ...
python3.9), as a device's own Python. The wheels here are for the Python running the tests, which need
not be the first ``python3`` of this machine (``make test PYTHON=python3.9``), so the device's PATH
starts with a folder whose ``python3`` is the tests' interpreter: the device's Python is the one its
wheels were made for, as docs/packaging.md asks of a device without internet.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest
import yaml

from ddcustom.tooling.build import GG_BUILD_DIR, ZIP_BUILD_DIR, build
from ddcustom.tooling.devnucleus import DevNucleus
from ddcustom.tooling.devnucleus.lifecycle import LifecycleStep, lifecycle_steps
from support.helpers import MINING_RULES, REPORT_SCHEMA, ROOT, profile, reap, start
from support.wheelhouse import build_wheelhouse

REPO = ROOT
THING = "e2e-thing"
REPORT_TOPIC = f"$aws/things/{THING}/defender/metrics/json"
SHADOW_TOPIC = f"$aws/things/{THING}/shadow/name/ddcustom/update"  # the fleet state, granted too
ALERT_TOPIC = f"ddcustom/{THING}/alerts"
LOCAL_ALERT_TOPIC = "ddcustom/alerts"
FOREIGN_ALERT_TOPIC = "ddcustom/other-thing/alerts"
FOREIGN_LOCAL_TOPIC = "ddcustom/other-thing/local-alerts"
WAIT = 30.0  # bound on every wait for the component; it usually answers within a second or two
INSTALL_TIMEOUT = 300  # the recipe allows 900 s; an install here takes seconds
STOP_TIMEOUT = 20.0
# The article's mining scenario: GPU load per inference 85 % (normal < 40), inference 180 ms (normal < 100).
MINING_VALUES = {"gpu_load_per_inference": 85, "avg_inference_time": 180}
# Deployed with the article's two rules only: the host's load and processes raise no alert here.
ONLY_MINING_RULES = {"SecurityProfile": profile(*MINING_RULES)}


@dataclass(frozen=True)
class Deployment:
    device_bin: Path  # first on the PATH of every lifecycle step: its python3 is the tests' Python
    recipe_path: Path
    recipe: dict[str, Any]
    artifacts_path: Path
    decompressed_path: Path
    work_path: Path
    kernel_root: Path

    def steps(self, configuration: dict[str, Any] | None = None) -> dict[str, LifecycleStep]:
        return lifecycle_steps(
            self.recipe,
            artifacts_path=str(self.artifacts_path),
            decompressed_path=str(self.decompressed_path),
            work_path=str(self.work_path),
            kernel_root=str(self.kernel_root),
            thing_name=THING,
            configuration=configuration,
        )


def device_bin(folder: Path) -> Path:
    """A folder whose ``python3`` is the base interpreter of the Python running the tests (not its venv)."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert base.is_file(), f"the tests' base interpreter is not at {base}"
    folder.mkdir()
    (folder / "python3").symlink_to(base)
    return folder


def nucleus_environment(
    deployment: Deployment, step: LifecycleStep, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment a nucleus gives a lifecycle script: its own (here: the test's, less anything that
    would let the component run from the test's virtual environment or source tree) plus the step's;
    the device's python3 first on the PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env.pop("SVCUID", None)
    venv_bin = os.path.join(sys.prefix, "bin") if sys.prefix != sys.base_prefix else None
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    env["PATH"] = os.pathsep.join([str(deployment.device_bin), *path])
    return {**env, **step.setenv, **(extra or {})}


def run_step(deployment: Deployment, step: LifecycleStep) -> subprocess.CompletedProcess[str]:
    assert step.timeout is not None
    return subprocess.run(
        ["sh", "-c", step.script],
        cwd=deployment.work_path,
        env=nucleus_environment(deployment, step),
        capture_output=True,
        text=True,
        timeout=min(step.timeout, INSTALL_TIMEOUT),
    )


def component_requirements(pyproject: Path) -> list[str]:
    """What installing the component needs: its build backend and its dependencies (no extras)."""
    text = pyproject.read_text(encoding="utf-8")
    lists = {}
    for table, key in (("build-system", "requires"), ("project", "dependencies")):
        found = re.search(rf"^\[{table}\]$.*?^{key} = (\[.*?\])$", text, flags=re.MULTILINE | re.DOTALL)
        assert found is not None, f"[{table}] {key} not found in {pyproject}"
        lists[table] = json.loads(re.sub(r",\s*\]", "]", found.group(1)))  # a TOML string array, as JSON
    return [*lists["build-system"], *lists["project"]]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Built from a copy of the project (no build output in the repo), laid out and installed."""
    root = tmp_path_factory.mktemp("e2e")
    project = root / "project"
    # A developer's wheels/ (maybe for another platform) is replaced by wheels of what is installed here.
    unwanted = shutil.ignore_patterns(".*", "__pycache__", GG_BUILD_DIR, ZIP_BUILD_DIR, "wheels")
    shutil.copytree(REPO, project, ignore=unwanted)
    build_wheelhouse(component_requirements(project / "pyproject.toml"), project / "wheels")
    built = build(project)
    (artifact,) = built.artifacts
    name, version = built.component.name, built.component.version
    greengrass = root / "greengrass"
    artifacts_path = greengrass / "packages" / "artifacts" / name / version
    decompressed_path = greengrass / "packages" / "artifacts-unarchived" / name / version
    work_path = greengrass / "work" / name
    for folder in (artifacts_path, decompressed_path, work_path):
        folder.mkdir(parents=True)
    shutil.copy(artifact, artifacts_path)
    with zipfile.ZipFile(artifact) as archive:  # Unarchive: ZIP, into a folder named after the zip
        archive.extractall(decompressed_path / artifact.stem)
    recipe = yaml.safe_load(built.recipe.read_text(encoding="utf-8"))
    placed = Deployment(
        device_bin(root / "bin"),
        built.recipe,
        recipe,
        artifacts_path,
        decompressed_path,
        work_path,
        greengrass,
    )

    install = run_step(placed, placed.steps()["install"])
    assert install.returncode == 0, f"Install failed:\n{install.stdout[-3000:]}\n{install.stderr[-3000:]}"
    return placed


@contextmanager
def component(deployment: Deployment, nucleus: DevNucleus, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The recipe's Startup step as the nucleus starts it; killed at the end if a test left it running."""
    shutil.rmtree(deployment.work_path / "state", ignore_errors=True)  # report_id and spool: a new device
    run = deployment.steps(nucleus.configuration)["startup"]
    with log.open("wb") as output:
        process = start(
            ["sh", "-c", run.script],
            cwd=deployment.work_path,
            env=nucleus_environment(deployment, run, nucleus.env()),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        reap(process)  # with whatever the script started


def stop_cleanly(process: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, as the nucleus stops a component: it must exit 0 on its own."""
    assert process.poll() is None, f"the component ended early:\n{log.read_text(errors='replace')[-3000:]}"
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the component did not stop within {STOP_TIMEOUT} s of SIGTERM")
    assert code == 0, f"exit status {code}:\n{log.read_text(errors='replace')[-3000:]}"


def wait_until(nucleus: DevNucleus, log: Path, what: str, condition: Callable[[], bool]) -> None:
    """nucleus.wait_until, failing with what was published and the component's log."""
    try:
        nucleus.wait_until(condition, WAIT)
    except TimeoutError:
        topics = [p.topic for p in nucleus.published]
        pytest.fail(f"{what}: not within {WAIT} s; published: {topics}\n{log.read_text()[-3000:]}")


def wait_for_log(log: Path, needles: tuple[str, ...]) -> str:
    """The first log line holding every needle, waiting up to WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        for line in log.read_text(errors="replace").splitlines():
            if all(needle in line for needle in needles):
                return line
        if time.monotonic() > deadline:
            pytest.fail(f"no log line with {needles} within {WAIT} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def reports(nucleus: DevNucleus) -> list[dict[str, Any]]:
    return [json.loads(p.payload) for p in nucleus.published if p.topic == REPORT_TOPIC]


def next_report(
    nucleus: DevNucleus,
    log: Path,
    after: int,
    predicate: Callable[[dict[str, Any]], bool] = lambda _report: True,
) -> dict[str, Any]:
    """The first report past the first ``after`` ones that matches ``predicate``; it must validate."""
    found: list[dict[str, Any]] = []

    def matched() -> bool:
        found[:] = [report for report in reports(nucleus)[after:] if predicate(report)][:1]
        return bool(found)

    wait_until(nucleus, log, f"a report past the first {after}", matched)
    jsonschema.validate(found[0], REPORT_SCHEMA)
    return found[0]


def custom_numbers(report: dict[str, Any]) -> dict[str, Any]:
    """{metric: number} of the report's custom metrics (each sent as [{"number": n}])."""
    return {name: value[0].get("number") for name, value in report.get("custom_metrics", {}).items()}


def alert_behaviors(nucleus: DevNucleus, topic: str) -> dict[str, dict[str, Any]]:
    alerts = [json.loads(p.payload) for p in nucleus.published if p.topic == topic]
    return {alert["behavior"]["name"]: alert for alert in alerts}


def mining_merge(tmp_path: Path) -> dict[str, Any]:
    """The article's merge: GPU metrics on, feedback files with the mining values, detection every 1 s."""
    gpu_load, inference = tmp_path / "gpu_load_fb", tmp_path / "gpu_inference_fb"
    gpu_load.write_text(f"{MINING_VALUES['gpu_load_per_inference']}\n")
    inference.write_text(f"{MINING_VALUES['avg_inference_time']}\n")
    return {
        "EnableGPUMetrics": True,
        "GpuLoadFeedbackFile": str(gpu_load),
        "InferenceTimeFeedbackFile": str(inference),
        "GpuBusyOutsideFeedbackFile": str(tmp_path / "gpu_busy_outside_fb"),
        "DetectIntervalSeconds": 1,
    }


def test_e2e_install_puts_the_artifact_in_a_root_venv_and_reruns_as_a_no_op(deployment: Deployment) -> None:
    venv = deployment.kernel_root / "ddcustom" / "venv"
    home = venv.parent.stat()
    assert (home.st_uid, home.st_mode & 0o777) == (0, 0o755)  # root runs it: only root may change it
    python = venv / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import sys, ddcustom; print(ddcustom.__file__); print(*sys.version_info[:2])"],
        env=nucleus_environment(deployment, deployment.steps()["startup"]),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert where.returncode == 0, where.stderr
    module, version = where.stdout.splitlines()
    assert Path(module).is_relative_to(venv)
    assert version == f"{sys.version_info.major} {sys.version_info.minor}"  # the device's python3

    again = run_step(deployment, deployment.steps()["install"])
    assert again.returncode == 0, again.stderr
    assert "already installed" in again.stdout


def test_e2e_reports_then_applies_a_merge_without_restart_and_alerts(
    deployment: Deployment, tmp_path: Path
) -> None:
    log = tmp_path / "component.log"
    with (
        DevNucleus(deployment.recipe_path, THING, ONLY_MINING_RULES) as nucleus,
        component(deployment, nucleus, log) as process,
    ):
        first = next_report(nucleus, log, after=0)
        assert first["header"]["report_id"] >= 1
        assert "gpu_load_per_inference" not in custom_numbers(first)  # GPU metrics are off by default
        wait_until(nucleus, log, "state RUNNING", lambda: "RUNNING" in nucleus.states)
        wait_until(nucleus, log, "config subscription", lambda: bool(nucleus.subscriptions("config")))

        reports_before = len(reports(nucleus))
        nucleus.update_configuration(mining_merge(tmp_path))
        updated = next_report(nucleus, log, reports_before, lambda r: "custom_metrics" in r)
        numbers = custom_numbers(updated)
        assert {name: numbers.get(name) for name in MINING_VALUES} == MINING_VALUES
        assert updated["header"]["report_id"] > first["header"]["report_id"]

        wanted = {"gpu-load-per-inference": 85, "avg-inference-time": 180}
        wait_until(nucleus, log, "alerts", lambda: set(wanted) <= set(alert_behaviors(nucleus, ALERT_TOPIC)))
        wait_until(
            nucleus,
            log,
            "local alerts",
            lambda: set(wanted) <= set(alert_behaviors(nucleus, LOCAL_ALERT_TOPIC)),
        )
        for behavior, value in wanted.items():
            alert = alert_behaviors(nucleus, ALERT_TOPIC)[behavior]
            assert (alert["thingName"], alert["violationEventType"]) == (THING, "in-alarm")
            assert alert["metricValue"] == {"number": value}
            assert alert_behaviors(nucleus, LOCAL_ALERT_TOPIC)[behavior] == alert
        assert process.poll() is None  # the same process: applied without a restart
        stop_cleanly(process, log)


def test_e2e_a_topic_the_recipe_does_not_grant_is_refused_and_the_component_goes_on(
    deployment: Deployment, tmp_path: Path
) -> None:
    log = tmp_path / "component.log"
    with (
        DevNucleus(deployment.recipe_path, THING, ONLY_MINING_RULES) as nucleus,
        component(deployment, nucleus, log) as process,
    ):
        next_report(nucleus, log, after=0)
        wait_until(nucleus, log, "config subscription", lambda: bool(nucleus.subscriptions("config")))

        foreign = {**mining_merge(tmp_path), "AlertTopic": FOREIGN_ALERT_TOPIC}
        reports_before = len(reports(nucleus))
        nucleus.update_configuration({**foreign, "LocalAlertTopic": FOREIGN_LOCAL_TOPIC})
        next_report(nucleus, log, reports_before, lambda r: "custom_metrics" in r)
        wait_for_log(log, ("alert", "not authorized", FOREIGN_ALERT_TOPIC))
        assert process.poll() is None
        assert [p for p in nucleus.published if p.topic not in (REPORT_TOPIC, SHADOW_TOPIC)] == []

        # Its own AlertTopic again: a report right away, and the refused alerts, kept, are delivered
        # to IoT Core; the local topic is still refused, which does not hold them back.
        reports_before = len(reports(nucleus))
        nucleus.update_configuration({"AlertTopic": "ddcustom/{thingName}/alerts"})
        next_report(nucleus, log, reports_before)
        wanted = {"gpu-load-per-inference", "avg-inference-time"}
        wait_until(nucleus, log, "alerts", lambda: wanted <= set(alert_behaviors(nucleus, ALERT_TOPIC)))
        wait_for_log(log, ("not authorized", FOREIGN_LOCAL_TOPIC))
        assert {p.topic for p in nucleus.published} == {REPORT_TOPIC, ALERT_TOPIC, SHADOW_TOPIC}
        stop_cleanly(process, log)
