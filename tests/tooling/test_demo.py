"""``make demo`` (python -m ddcustom.tooling.demo) as a user runs it: its output (the stand-in miner caught
with its evidence redacted, the feedback switch, the timeline), and Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from ddcustom.tooling.demo import rule_in_words

WAIT = 30.0  # bound on every wait; the demo prints its first report within a few seconds
REPORT_LINE = re.compile(r"\[ *[\d.]+ s\] report \d+: ")


def pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def demo(*args: str, **popen: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "SVCUID"}
    return subprocess.Popen(
        [sys.executable, "-m", "ddcustom.tooling.demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **popen,
    )


@pytest.fixture(scope="module")
def demo_output() -> str:
    """What a short demo prints (one run for the tests below); it exits 0."""
    process = demo("--seconds", "20", "--detect-interval", "0.5", "--report-interval", "5")
    try:
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)
    assert process.returncode == 0, out + err
    return out


def test_demo_prints_each_step_with_its_time_the_rules_in_words_and_the_timeline(demo_output: str) -> None:
    out = demo_output
    assert "`ddcustom simulate mining` writes two numbers into the feedback files" in out
    assert (
        ">>> ddcustom simulate mining (writes two numbers into the feedback files; no miner is started)"
        in out
    )
    assert (
        "gpu-load-per-inference: gpu_load_per_inference must stay below 40; alarm after 2 datapoints" in out
    )
    alert = re.search(r"^\[ *([\d.]+) s\] ALERT   gpu-load-per-inference: (.*)$", out, re.MULTILINE)
    assert alert is not None, out
    assert alert.group(2) == "gpu_load_per_inference must stay below 40; saw 85"
    cleared = re.search(r"^\[ *[\d.]+ s\] CLEARED avg-inference-time: (.*)$", out, re.MULTILINE)
    assert cleared is not None, out
    assert cleared.group(1) == "avg_inference_time must stay below 100; saw 45"
    assert '{"number"' not in out  # no raw JSON in the alerts

    # The timeline agrees with the lines above it: the write, and the first alarm of the feedback rules.
    written = re.search(r"^\[ *([\d.]+) s\] >>> ddcustom simulate mining", out, re.MULTILINE)
    raised = re.search(
        r"alarms raised at ([\d.]+) s, ([\d.]+) s after the write \(2 datapoints in a row, one every 0.5 s\)",
        out,
    )
    assert written is not None and raised is not None, out
    first_alarm = re.search(
        r"^\[ *([\d.]+) s\] ALERT   (gpu-load-per-inference|avg-inference-time)", out, re.M
    )
    assert first_alarm is not None
    assert raised.group(1) == first_alarm.group(1)
    assert f"mining values written at {written.group(1)} s" in out
    assert float(raised.group(2)) == pytest.approx(float(raised.group(1)) - float(written.group(1)), abs=0.11)
    assert re.search(
        r"normal values written at [\d.]+ s;.* cleared at [\d.]+ s, [\d.]+ s after the write", out
    )
    assert "Done: 2 of 2 feedback rules raised their alarm and cleared it" in out


def test_demo_catches_a_stand_in_miner_with_the_evidence_an_operator_acts_on_redacted(
    demo_output: str,
) -> None:
    out = demo_output

    # The stand-in as the demo started it: a renamed copy of yes, whose command line holds a made-up token.
    started = re.search(r"^ +(/\S+/demo-miner) (.*--http-access-token=(\w+))$", out, re.MULTILINE)
    assert started is not None, out
    path, arguments, token = started.groups()
    original = os.path.realpath(str(shutil.which("yes")))  # the copy is gone with the demo's folder

    # The alert names it, with what an operator acts on: what runs, its hash, who started it, its command
    # line with the token cut and the pool, the wallet and -p x kept as evidence.
    block = re.search(
        r"^\[ *[\d.]+ s\] ALERT   new-executables: new_executables must stay at or below 0; saw 1\n"
        r"(?P<evidence>(?: {11}.*\n)+)",
        out,
        re.MULTILINE,
    )
    assert block is not None, out
    evidence = dict(
        line.strip().split(maxsplit=1) for line in block.group("evidence").splitlines()[1:] if line.strip()
    )
    assert evidence["exe"] == path
    assert evidence["sha256"] == hashlib.sha256(Path(original).read_bytes()).hexdigest()
    assert evidence["process"].startswith("demo-miner (pid ")
    assert evidence["parents"]
    assert evidence["cmdline"] == f"{path} {arguments.replace(token, '[redacted]')}"
    assert (
        "stratum+tcp://pool.invalid:3333 -u 4DemoWa11et" in evidence["cmdline"]
        and " -p x " in evidence["cmdline"]
    )
    assert evidence["redacted"] == "cmdline: secret-option"
    assert out.count(token) == 1, "the token is in the demo's own account of the start only"

    # Stopping it ends the alarm.
    stopped = re.search(r"^\[ *([\d.]+) s\] >>> stand-in miner stopped", out, re.MULTILINE)
    ended = re.search(r"^\[ *([\d.]+) s\] CLEARED new-executables: .*; saw 0$", out, re.MULTILINE)
    assert stopped is not None and ended is not None, out
    assert float(ended.group(1)) >= float(stopped.group(1))
    assert "the stand-in miner was caught and its alarms cleared" in out


@pytest.mark.parametrize(
    ("stop", "status", "name"),
    [
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
        (lambda p: os.killpg(p.pid, signal.SIGINT), 130, "SIGINT"),
        (lambda p: p.send_signal(signal.SIGTERM), 143, "SIGTERM"),
    ],
)
def test_demo_stops_cleanly_on_ctrl_c_or_sigterm(stop: Any, status: int, name: str) -> None:
    process = demo("--seconds", "300", start_new_session=True)  # its own group, as a terminal job
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=pump, args=(process.stdout, lines), daemon=True).start()
    try:
        seen: list[str] = []
        while not any(REPORT_LINE.match(line) for line in seen):  # the component is running
            try:
                seen.append(lines.get(timeout=WAIT))
            except queue.Empty:
                pytest.fail(f"no report within {WAIT} s: {seen}")
        component = psutil.Process(process.pid).children()
        assert component, "the component is not running"
        stop(process)
        assert process.wait(WAIT) == status
        _gone, alive = psutil.wait_procs(component, timeout=5)
        assert alive == [], "the component outlived the demo"
        assert process.stderr is not None
        err = process.stderr.read()
        assert "unexpectedly" not in err and "Traceback" not in err, err
        while not any(f"Demo stopped by {name}" in line for line in seen):
            try:
                seen.append(lines.get(timeout=WAIT))
            except queue.Empty:
                pytest.fail(f"no 'Demo stopped by {name}' line: {seen[-10:]}")
        assert any("the component stopped with status 0" in line for line in seen), seen[-5:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)


@pytest.mark.parametrize(
    ("behavior", "words"),
    [
        (
            {"metric": "cpu_usage", "criteria": {"comparisonOperator": "less-than", "value": {"number": 90}}},
            "cpu_usage must stay below 90",
        ),
        (
            {
                "metric": "miner_processes",
                "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 0}},
            },
            "miner_processes must stay at or below 0",
        ),
        (
            {
                "metric": "aws:listening-tcp-ports",
                "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 8883]}},
            },
            "aws:listening-tcp-ports must be one of the ports 22, 8883",
        ),
        (
            {
                "metric": "aws:all-bytes-out",
                "criteria": {
                    "comparisonOperator": "less-than",
                    "value": {"count": 1000000000},
                    "durationSeconds": 300,
                },
            },
            "aws:all-bytes-out must stay below 1000000000, summed over 300 s",
        ),
        (
            {
                "metric": "cpu_usage",
                "criteria": {
                    "comparisonOperator": "greater-than",
                    "statisticalThreshold": {"statistic": "p10"},
                },
            },
            "cpu_usage must stay above the device's own p10 of it",
        ),
    ],
)
def test_demo_rule_in_words(behavior: dict[str, Any], words: str) -> None:
    assert rule_in_words(behavior) == words
