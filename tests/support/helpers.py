"""What many tests share: waiting with a deadline, a child's output lines, settings whose profile holds only
the behaviors a test is about, the report schema, samples, and processes reaped with all they started."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from importlib import resources
from pathlib import Path
from typing import IO, Any, Callable, Optional

import pytest

from ddcustom.device.config import Settings, parse_settings
from ddcustom.device.sample import Sample

ROOT = Path(__file__).resolve().parents[2]  # the repository
FIXTURES = ROOT / "tests" / "fixtures"
WAIT = 30.0  # bound on every wait for a component or a child; they usually answer within a second or two
T0 = 1_700_000_000.0  # the wall-clock time of samples
_PACKAGE = resources.files("ddcustom")
REPORT_SCHEMA = json.loads((_PACKAGE / "schemas" / "report.schema.json").read_text(encoding="utf-8"))
BUILT_IN_PROFILE = json.loads((_PACKAGE / "profiles" / "crypto-mining.json").read_text(encoding="utf-8"))
MINING_RULES = ("gpu-load-per-inference", "avg-inference-time")  # the article's two rules


def documented_json(document: str, heading: str) -> Any:
    """The first ```json block after ``heading`` in a document of docs/, parsed: what the docs promise."""
    text = (ROOT / "docs" / document).read_text(encoding="utf-8")
    block = re.search(re.escape(heading) + r".*?```json\n(.*?)```", text, re.S)
    assert block, f"docs/{document} lost the JSON example under {heading!r}"
    return json.loads(block.group(1))


def poll(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


class Lines:
    """A child's output read on a thread, so that every wait for a line has a bound."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[Optional[str]] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)  # the end

    def next(self, timeout: float = WAIT) -> str:
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output within {timeout:g} s after: {self.seen[-20:]}")
        if line is None:
            self._queue.put(None)
            pytest.fail(f"the output ended after: {self.seen[-20:]}")
        self.seen.append(line)
        return line

    def next_json(self, timeout: float = WAIT) -> Any:
        """The next line, a JSON document (the component's stdout holds one per line)."""
        return json.loads(self.next(timeout))


def profile(*behaviors: str) -> dict[str, Any]:
    """The built-in profile with only the ``behaviors`` named: no rule the host's load or processes trip."""
    kept = [b for b in BUILT_IN_PROFILE["behaviors"] if b["name"] in behaviors]
    assert {b["name"] for b in kept} == set(behaviors), f"not all of {behaviors} are built-in behaviors"
    return {"name": BUILT_IN_PROFILE["name"], "behaviors": kept}


def settings(*behaviors: str, **raw: Any) -> Settings:
    """Settings from configuration keys ``raw``, the profile holding only ``behaviors`` (none named:
    cpu-usage alone, for tests that evaluate no rule)."""
    return parse_settings({"SecurityProfile": profile(*(behaviors or ("cpu-usage",))), **raw})[0]


def sample(time: float = T0, **parts: Any) -> Sample:
    """A Sample at wall-clock ``time`` (its monotonic time too) holding only ``parts``."""
    return Sample(time=time, monotonic=time, **parts)


def start(command: list[str], **popen: Any) -> subprocess.Popen[Any]:
    """A child in a session of its own, for ``reap`` to end with everything it started."""
    return subprocess.Popen(command, start_new_session=True, **popen)


def reap(process: subprocess.Popen[Any]) -> None:
    """Kill ``process`` (from ``start``) and its whole process group, and wait for it."""
    with contextlib.suppress(ProcessLookupError):  # the whole group has ended
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(WAIT)
