"""The component's process as the nucleus runs it: its lifecycle states, restarts after errors, BROKEN.

Follows ``Lifecycle`` and ``GenericExternalService`` of the nucleus (aws-greengrass/aws-greengrass-nucleus,
``src/main/java/com/aws/greengrass/lifecyclemanager/``) where the component depends on them:

- With a Run step the component is RUNNING as soon as its process starts (``handleRunScript``); with a
  Startup step it stays STARTING until it reports RUNNING over IPC (or the script exits 0), and is
  ERRORED when that takes longer than the step's timeout (120 s by default).
- ERRORED, reported over IPC or by a non-zero exit while STARTING or RUNNING, is counted against the state
  it came from; the nucleus then stops the process and starts it again (``handleCurrentStateErrored``).
  An error more than the error reset time (``errorResetTime``, one hour) after the previous one starts the
  count again; at the third the component is BROKEN instead (``MAXIMUM_CONTINUAL_ERROR``): its process is
  stopped and it stays down until a deployment reinstalls it.
- A Run process that exits 0 is FINISHED and not started again; a Startup process that exits 0 while
  RUNNING goes unnoticed (the state stays RUNNING).
- A reported state the lifecycle does not allow from the current one (RUNNING while RUNNING, anything while
  stopping) is ignored, as ``reportState`` ignores it; so is the exit of a process being stopped.
- Stopping sends SIGTERM, then SIGKILL after a grace period (``UnixExec.close``: 5 s by default).

The error count and the reset time are parameters, so that tests reach BROKEN in a few starts.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Optional, Union

NEW = "NEW"
INSTALLED = "INSTALLED"
STARTING = "STARTING"
RUNNING = "RUNNING"
STOPPING = "STOPPING"
FINISHED = "FINISHED"
ERRORED = "ERRORED"
BROKEN = "BROKEN"

MAXIMUM_CONTINUAL_ERROR = 3  # Lifecycle.MAXIMUM_CONTINUAL_ERROR
DEFAULT_ERROR_RESET_SECONDS = 3600.0  # Lifecycle.DEFAULT_ERROR_RESET_TIME_IN_SEC
DEFAULT_STARTUP_TIMEOUT_SECONDS = 120.0  # Lifecycle.DEFAULT_STARTUP_STAGE_TIMEOUT_IN_SEC
DEFAULT_STOP_GRACE_SECONDS = 5.0  # UnixExec's graceful shutdown timeout

Output = Union[int, IO[Any], None]


@dataclass(frozen=True)
class Transition:
    state: str
    reason: str


class ComponentService:
    """One component's process under the stand-in's lifecycle. ``step``: "run" or "startup", the recipe's
    lifecycle step that starts it. Every change of state is recorded in ``transitions`` and passed to
    ``on_transition``. ``clock`` (monotonic seconds) times the error reset; tests may fix it."""

    def __init__(
        self,
        command: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        step: str = "run",
        max_errors: int = MAXIMUM_CONTINUAL_ERROR,
        error_reset_seconds: float = DEFAULT_ERROR_RESET_SECONDS,
        startup_timeout_seconds: float = DEFAULT_STARTUP_TIMEOUT_SECONDS,
        stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS,
        stdout: Output = None,
        stderr: Output = None,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Optional[Callable[[Transition], None]] = None,
    ) -> None:
        if step not in ("run", "startup"):
            raise ValueError(f"step must be 'run' or 'startup', not {step!r}")
        self.command = list(command)
        self.env = dict(env)
        self.cwd = cwd
        self.step = step
        self.max_errors = max_errors
        self.error_reset_seconds = error_reset_seconds
        self.startup_timeout_seconds = startup_timeout_seconds
        self.stop_grace_seconds = stop_grace_seconds
        self._output = (stdout, stderr)
        self._clock = clock
        self._on_transition = on_transition
        self._changed = threading.Condition()
        self._state = NEW
        self.transitions: list[Transition] = []
        self.exits: list[int] = []  # exit statuses of the processes, in order (negative: killed by a signal)
        self.starts = 0  # processes started
        self._errors: dict[str, list[float]] = {}  # state -> times of the errors counted from it
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._generation = 0  # of the process: an exit of an older one is not this one's
        self._startup_deadline: Optional[float] = None
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="devnucleus-lifecycle", daemon=True)
        self._thread.start()

    # ---- what the nucleus asks ------------------------------------------------------------------

    @property
    def state(self) -> str:
        with self._changed:
            return self._state

    @property
    def pid(self) -> Optional[int]:
        """The component's process while it runs."""
        with self._changed:
            process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> None:
        """Start the component (a deployment adds it, or the nucleus starts)."""
        self._events.put(("start",))

    def reinstall(self) -> None:
        """A deployment updates a BROKEN component: its errors are forgotten and it starts again."""
        self._events.put(("reinstall",))

    def stop(self) -> None:
        """Stop the component (SIGTERM, then SIGKILL after the grace period): FINISHED."""
        self._events.put(("stop",))

    def report(self, state: str) -> None:
        """The component reported ``state`` over IPC (UpdateState)."""
        self._events.put(("report", state))

    def close(self, timeout: float = 15.0) -> None:
        """Stop the process and the lifecycle thread."""
        self._events.put(("close",))
        self._thread.join(timeout)

    def wait_for(self, condition: Callable[[str], bool], timeout: float) -> str:
        """Wait until ``condition(state)`` holds; the state then. TimeoutError if it does not in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self._state):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the component is {self._state} after {timeout} s")
                self._changed.wait(min(left, 0.2))
            return self._state

    # ---- the lifecycle thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            timeout = None
            if self._startup_deadline is not None:
                timeout = max(0.0, self._startup_deadline - time.monotonic())
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                self._startup_timed_out()
                continue
            kind = event[0]
            if kind == "close":
                self._kill()
                return
            if kind == "start" and self._state in (NEW, INSTALLED, FINISHED):
                self._set(INSTALLED, "start requested")
                self._launch()
            elif kind == "reinstall":
                self._kill()
                self._errors.clear()
                self._set(NEW, "reinstalled by a deployment")
                self._set(INSTALLED, "installed")
                self._launch()
            elif kind == "stop" and self._state not in (FINISHED, BROKEN, NEW):
                self._set(STOPPING, "stop requested")
                self._kill()
                self._set(FINISHED, "stopped")
            elif kind == "report":
                self._reported(event[1])
            elif kind == "exited":
                self._exited(event[1], event[2])

    def _launch(self) -> None:
        self._set(STARTING, "starting")
        self._generation += 1
        generation = self._generation
        stdout, stderr = self._output
        try:
            process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        except OSError as exc:
            self._errored(STARTING, f"cannot start the process: {exc}")
            return
        with self._changed:
            self._process = process
        self.starts += 1
        threading.Thread(target=self._watch, args=(process, generation), daemon=True).start()
        if self.step == "run":
            self._set(RUNNING, f"process {process.pid} started (Run step)")
        else:
            self._startup_deadline = time.monotonic() + self.startup_timeout_seconds

    def _watch(self, process: subprocess.Popen[bytes], generation: int) -> None:
        self._events.put(("exited", generation, process.wait()))

    def _reported(self, state: str) -> None:
        if state == RUNNING and self._state == STARTING:
            self._startup_deadline = None
            self._set(RUNNING, "the component reported RUNNING")
        elif state == ERRORED and self._state in (STARTING, RUNNING):
            self._errored(self._state, "the component reported ERRORED")
        # anything else is not a transition the lifecycle allows from here: ignored, as the nucleus does

    def _exited(self, generation: int, status: int) -> None:
        try:
            self._handle_exit(generation, status)
        finally:
            self.exits.append(status)  # once handled: who waits for it sees what it did

    def _handle_exit(self, generation: int, status: int) -> None:
        if generation != self._generation or self._state not in (STARTING, RUNNING):
            return  # a process being stopped, or already replaced
        if status != 0:
            self._errored(self._state, f"the process exited with status {status}")
        elif self._state == STARTING:  # a Startup script that ends well
            self._startup_deadline = None
            self._set(RUNNING, "the startup script exited 0")
        elif self.step == "run":
            self._set(STOPPING, "the Run process exited 0")
            self._set(FINISHED, "finished: not started again")
        # a Startup process that exits 0 while RUNNING: the nucleus does not notice

    def _startup_timed_out(self) -> None:
        self._startup_deadline = None
        if self._state == STARTING:
            self._errored(STARTING, f"startup timeout ({self.startup_timeout_seconds:g} s)")

    def _errored(self, from_state: str, reason: str) -> None:
        self._startup_deadline = None
        now = self._clock()
        errors = self._errors.setdefault(from_state, [])
        if errors and now - errors[-1] >= self.error_reset_seconds:
            errors.clear()
        errors.append(now)
        self._generation += 1  # the exit of the process stopped below is not a new error
        if len(errors) >= self.max_errors:
            self._set(BROKEN, f"{reason}; error {len(errors)} from {from_state} within the error reset time")
            self._kill()
            return
        self._set(ERRORED, f"{reason} (error {len(errors)} of {self.max_errors} before BROKEN)")
        self._set(STOPPING, "stopping to start again")
        self._kill()
        self._set(INSTALLED, "stopped")
        self._launch()

    def _kill(self) -> None:
        with self._changed:
            process, self._process = self._process, None
        self._generation += 1
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(self.stop_grace_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()

    def _set(self, state: str, reason: str) -> None:
        transition = Transition(state, reason)
        if self._on_transition is not None:  # first: whoever waits for the state sees it told already
            self._on_transition(transition)
        with self._changed:
            if state not in (ERRORED, BROKEN):
                # Lifecycle.internalReportState: a state other than ERRORED resets the error count of the
                # state it leaves (so errors from RUNNING add up across restarts; a clean stop resets them)
                self._errors.pop(self._state, None)
            self._state = state
            self.transitions.append(transition)
            self._changed.notify_all()
