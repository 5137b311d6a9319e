"""The stand-in's lifecycle of a component's process (service.py), with small shell processes.

What is checked is what the nucleus's Lifecycle does (docs/greengrass.md): restarts after ERRORED, BROKEN
at the last error within the error reset time, FINISHED for a Run process that exits 0, STARTING until a
Startup process reports RUNNING. The error counts are small and the reset time is on a clock the test
moves, so nothing depends on how fast this machine is.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from ddcustom.tooling.devnucleus.service import (
    BROKEN,
    ERRORED,
    FINISHED,
    INSTALLED,
    RUNNING,
    STARTING,
    STOPPING,
    ComponentService,
)

WAIT = 15.0
FAILS = ["sh", "-c", "exit 3"]
RUNS = ["sh", "-c", "exec sleep 60"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service() -> Iterator[Callable[..., ComponentService]]:
    made: list[ComponentService] = []

    def make(command: list[str], **options: Any) -> ComponentService:
        made.append(
            ComponentService(
                command,
                env=dict(os.environ),
                cwd=tempfile.gettempdir(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                **options,
            )
        )
        return made[-1]

    yield make
    for each in made:
        each.close()


def states(service: ComponentService) -> list[str]:
    return [transition.state for transition in service.transitions]


def test_a_process_that_keeps_failing_is_restarted_then_broken(
    service: Callable[..., ComponentService],
) -> None:
    failing = service(FAILS, step="run", max_errors=3)
    failing.start()
    assert failing.wait_for(lambda state: state == BROKEN, WAIT) == BROKEN
    # RUNNING as soon as a Run process starts; each error stops it and starts it again, the third is BROKEN
    restart = [ERRORED, STOPPING, INSTALLED, STARTING, RUNNING]
    assert states(failing) == [INSTALLED, STARTING, RUNNING, *restart, *restart, BROKEN]
    assert failing.starts == 3 and failing.exits == [3, 3, 3]
    assert failing.pid is None  # and nothing starts it again


def test_errors_further_apart_than_the_reset_time_never_break_it(
    service: Callable[..., ComponentService], tmp_path: Path
) -> None:
    clock = Clock()
    # Each process waits for the test: it fails when told to ("go"), or runs on once "pass" exists, so
    # every error is counted at a time the test chose.
    go, run_on = tmp_path / "go", tmp_path / "pass"
    script = (
        f'while [ ! -e "{go}" ] && [ ! -e "{run_on}" ]; do sleep 0.02; done; '
        f'[ -e "{run_on}" ] && exec sleep 60; rm -f "{go}"; exit 1'
    )
    flaky = service(["sh", "-c", script], step="run", max_errors=2, error_reset_seconds=60, clock=clock)
    flaky.start()
    for errors in range(1, 5):
        go.touch()

        def counted(_state: str, n: int = errors) -> bool:
            return len(flaky.exits) >= n

        flaky.wait_for(counted, WAIT)
        clock.now += 61  # the next error comes more than the reset time after this one
    run_on.touch()
    assert flaky.wait_for(lambda state: state == RUNNING and flaky.starts == 5, WAIT) == RUNNING
    assert BROKEN not in states(flaky) and states(flaky).count(ERRORED) == 4
    # and two errors within the reset time are the second one: BROKEN
    run_on.unlink()
    flaky.report(ERRORED)
    flaky.wait_for(lambda _state: flaky.starts == 6, WAIT)
    go.touch()
    assert flaky.wait_for(lambda state: state == BROKEN, WAIT) == BROKEN


def test_a_startup_process_is_starting_until_it_reports_running(
    service: Callable[..., ComponentService],
) -> None:
    component = service(RUNS, step="startup", max_errors=2)
    component.start()
    component.wait_for(lambda _state: component.pid is not None, WAIT)
    assert component.state == STARTING
    component.report(RUNNING)
    assert component.wait_for(lambda state: state == RUNNING, WAIT) == RUNNING
    component.report(RUNNING)  # RUNNING while RUNNING is no transition: ignored
    # ERRORED reported while RUNNING: stopped and started again (STARTING, until it reports again)
    first = component.pid
    component.report(ERRORED)
    component.wait_for(lambda state: state == STARTING and component.pid not in (None, first), WAIT)
    assert states(component)[-4:] == [ERRORED, STOPPING, INSTALLED, STARTING]
    component.report(ERRORED)  # from STARTING: counted apart from RUNNING's, and not yet the second
    component.wait_for(lambda state: state == STARTING and component.starts == 3, WAIT)
    component.report(RUNNING)
    component.wait_for(lambda state: state == RUNNING, WAIT)
    component.report(ERRORED)  # the second error from RUNNING within the reset time
    assert component.wait_for(lambda state: state == BROKEN, WAIT) == BROKEN


def test_a_startup_process_is_errored_when_it_never_reports_running(
    service: Callable[..., ComponentService],
) -> None:
    silent = service(RUNS, step="startup", max_errors=1, startup_timeout_seconds=0.2)
    silent.start()
    assert silent.wait_for(lambda state: state == BROKEN, WAIT) == BROKEN
    assert "startup timeout" in silent.transitions[-1].reason


def test_exit_0_finishes_a_run_process_but_goes_unnoticed_for_a_startup_one(
    service: Callable[..., ComponentService], tmp_path: Path
) -> None:
    done = service(["sh", "-c", "exit 0"], step="run")
    done.start()
    assert done.wait_for(lambda state: state == FINISHED, WAIT) == FINISHED
    assert done.starts == 1

    gate = tmp_path / "gate"  # the process exits 0 once the test has seen it RUNNING
    quiet = service(["sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.05; done'], step="startup")
    quiet.start()
    quiet.wait_for(lambda _state: quiet.starts == 1, WAIT)
    quiet.report(RUNNING)
    quiet.wait_for(lambda state: state == RUNNING, WAIT)
    gate.touch()
    quiet.wait_for(lambda _state: quiet.exits == [0], WAIT)
    quiet.stop()  # a later event, handled after the exit: the exit changed nothing
    quiet.wait_for(lambda state: state == FINISHED, WAIT)
    assert states(quiet) == [INSTALLED, STARTING, RUNNING, STOPPING, FINISHED]


def test_a_stop_is_clean_and_a_reinstall_brings_a_broken_component_back(
    service: Callable[..., ComponentService],
) -> None:
    component = service(RUNS, step="run", max_errors=1)
    component.start()
    component.wait_for(lambda _state: component.pid is not None, WAIT)
    component.report(ERRORED)
    component.wait_for(lambda state: state == BROKEN, WAIT)
    component.reinstall()  # a deployment to a BROKEN component: its errors are forgotten
    component.wait_for(lambda state: state == RUNNING and component.pid is not None, WAIT)
    running = component.pid
    component.stop()
    assert component.wait_for(lambda state: state == FINISHED, WAIT) == FINISHED
    assert component.pid is None and running is not None
    assert component.exits[-1] == -15  # SIGTERM
