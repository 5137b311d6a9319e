"""The component's own process under the stand-in nucleus's lifecycle: started as the recipe starts it,
stopped, restarted and broken as the nucleus would (devnucleus/service.py, docs/greengrass.md).

``ddcustom run`` runs as a child process with the nucleus's environment, with the project's recipe (its
Startup step: the deployment waits for the component to report RUNNING). The nucleus is told to break a
component at its second error, so a test needs two starts, not three.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from ddcustom.device.detect.events import ViolationEvent
from ddcustom.tooling.devnucleus import DevNucleus, Published
from ddcustom.tooling.devnucleus.server import (
    DO_NOTHING,
    FAILED_ROLLBACK_COMPLETE,
    FAILED_ROLLBACK_NOT_REQUESTED,
)
from ddcustom.tooling.devnucleus.service import BROKEN, ERRORED, FINISHED, RUNNING
from support.greengrass import ALERT_TOPIC, BASE, THING, is_report
from support.helpers import ROOT, WAIT, poll

COMMAND = [sys.executable, "-m", "ddcustom", "run"]


@pytest.fixture
def nucleus(tmp_path: Path) -> Iterator[Callable[..., DevNucleus]]:
    made: list[DevNucleus] = []

    def make(**merge: Any) -> DevNucleus:
        merge = {**BASE, "StateDirectory": str(tmp_path / "state"), **merge}
        made.append(DevNucleus(ROOT / "recipe.yaml", THING, merge).start())
        return made[-1]

    yield make
    for each in made:
        each.stop()


def run_component(nucleus: DevNucleus, tmp_path: Path, **options: Any) -> Any:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    log = (tmp_path / "component.log").open("ab")
    options = {"max_errors": 2, "wait_seconds": WAIT, "stdout": log, "stderr": subprocess.STDOUT, **options}
    return nucleus.run_component(COMMAND, cwd=str(work), **options)


def log_of(tmp_path: Path) -> str:
    return (tmp_path / "component.log").read_text(errors="replace")[-4000:]


def unclean_stops(nucleus: DevNucleus) -> list[dict[str, Any]]:
    bodies = [json.loads(p.payload) for p in nucleus.published if p.topic == ALERT_TOPIC]
    return [body for body in bodies if body.get("eventType") == "unclean-stop"]


def test_a_configuration_refused_at_start_breaks_the_component_and_fails_its_deployment(
    nucleus: Callable[..., DevNucleus], tmp_path: Path
) -> None:
    stand_in = nucleus(EnableGPUMetrics="yes")
    assert stand_in.lifecycle_step() == "startup"  # the recipe's: the deployment waits for RUNNING

    result = run_component(stand_in, tmp_path)

    # each start refuses the configuration: ERRORED, stopped, started again; the second error is BROKEN,
    # and the deployment that brought the configuration fails; its rollback removes the component
    assert result.detailed_status == FAILED_ROLLBACK_COMPLETE, log_of(tmp_path)
    assert result.failure_cause == f"Service {stand_in.component_name} in broken state after deployment"
    assert "COMPONENT_BROKEN" in result.error_stack
    service = stand_in.service
    assert service is not None and service.state == BROKEN and service.pid is None
    assert service.starts == 2 and stand_in.states == [ERRORED, ERRORED]
    assert [t.state for t in service.transitions].count(RUNNING) == 0  # never ran with it
    assert not [p for p in stand_in.published if is_report(p)]
    assert "'EnableGPUMetrics'" in log_of(tmp_path)


def test_a_broken_component_stays_down_until_a_deployment_fixes_its_configuration(
    nucleus: Callable[..., DevNucleus], tmp_path: Path
) -> None:
    stand_in = nucleus(MaxReportListSize=0)
    result = run_component(stand_in, tmp_path, failure_handling=DO_NOTHING)
    assert result.detailed_status == FAILED_ROLLBACK_NOT_REQUESTED, log_of(tmp_path)
    assert stand_in.service is not None and stand_in.service.state == BROKEN

    fixed = stand_in.deploy({"MaxReportListSize": 10}, wait_seconds=WAIT)

    # not asked to validate (it does not run): applied, the component reinstalled, and it runs with it
    assert fixed.succeeded, log_of(tmp_path)
    assert stand_in.service.state == RUNNING and stand_in.service.starts == 3
    stand_in.wait_for(is_report, timeout=WAIT)


def test_a_component_killed_with_sigkill_is_restarted_and_raises_an_unclean_stop_alert(
    nucleus: Callable[..., DevNucleus], tmp_path: Path
) -> None:
    stand_in = nucleus()
    assert run_component(stand_in, tmp_path).succeeded, log_of(tmp_path)
    service = stand_in.service
    assert service is not None
    stand_in.wait_for(is_report, timeout=WAIT)
    poll(lambda: (tmp_path / "state" / "running.json").exists(), what="the run marker")
    assert unclean_stops(stand_in) == []  # a first start has nothing to report
    killed = service.pid
    assert killed is not None

    os.kill(killed, signal.SIGKILL)

    def alerted(published: Published) -> bool:
        return published.topic == ALERT_TOPIC and b"unclean-stop" in published.payload

    alert = json.loads(stand_in.wait_for(alerted, timeout=WAIT).payload)
    # the nucleus took the kill as an error and started the component again, which raised the alert
    assert ERRORED in [t.state for t in service.transitions] and service.starts == 2
    assert service.exits[0] == -signal.SIGKILL
    assert alert["eventType"] == "unclean-stop" and alert["thingName"] == THING
    assert alert["cause"] == "killed-or-crashed"
    assert alert["stopped"]["pid"] == killed
    down = alert["detectionDown"]
    assert down["exact"] is False and down["seconds"] >= 0
    assert alert["stopped"]["startedAt"] <= down["since"] <= alert["eventTime"]
    # it is not a violation: nothing that reads violations (the quarantine rule and function) takes it
    assert "violationEventType" not in alert and "violationId" not in alert
    with pytest.raises(ValueError):
        ViolationEvent.from_json(alert)
    # local subscribers get it too (published right after IoT Core), and it is sent once
    stand_in.wait_for(lambda p: p.topic == "ddcustom/alerts" and b"unclean-stop" in p.payload, timeout=WAIT)
    assert len(unclean_stops(stand_in)) == 1


def test_a_stop_the_nucleus_asks_for_is_clean_and_raises_nothing(
    nucleus: Callable[..., DevNucleus], tmp_path: Path
) -> None:
    stand_in = nucleus()
    assert run_component(stand_in, tmp_path).succeeded, log_of(tmp_path)
    service = stand_in.service
    assert service is not None
    stand_in.wait_for(is_report, timeout=WAIT)
    service.stop()
    service.wait_for(lambda state: state == FINISHED, WAIT)
    assert service.exits == [0]
    assert not (tmp_path / "state" / "running.json").exists()

    service.start()  # started again (the nucleus restarts, a deployment): nothing to report
    service.wait_for(lambda state: state == RUNNING, WAIT)
    count = len([p for p in stand_in.published if is_report(p)])
    poll(lambda: len([p for p in stand_in.published if is_report(p)]) > count, what="the next start's report")
    assert unclean_stops(stand_in) == []
