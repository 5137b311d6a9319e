"""Real processes writing one baseline: the operator and the component at once, and writers killed
with SIGKILL in the middle of their writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddcustom.device.baseline.file import APPROVED, BaselineFile
from ddcustom.device.baseline.store import BaselineStore
from support.baseline import ENDPOINT, KIND_NAMES, LISTENING, Observing
from support.helpers import poll
from support.procfs import Spawn, read_baseline_file, spawn

__all__ = ["spawn"]  # the fixture, imported for the tests below

OPERATIONS = 120
OBSERVATIONS = 240

# The operator: approve tcp:1..N one command at a time, forgetting every third right after.
OPERATOR = """
import os, sys, time
from ddcustom.device.baseline.store import BaselineStore
path, go, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
while not os.path.exists(go):
    time.sleep(0.001)
for port in range(1, count + 1):
    cli = BaselineStore(path, now=time.time(), operator=True, lock_timeout=60)
    cli.approve("listening", f"tcp:{port}", {"protocol": "tcp", "port": port}, time.time())
    if port % 3 == 0:
        cli.forget([("listening", f"tcp:{port}")], time.time())
"""

# The component: learns one endpoint per cycle and writes at every tick.
COMPONENT = """
import os, sys, time
from ddcustom.device.baseline.store import BaselineStore
from ddcustom.device.baseline.kinds.endpoints import EndpointWatch
from ddcustom.device.baseline.kinds.kind import Context
from ddcustom.device.baseline.kinds.listening import ListeningWatch
path, go, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = BaselineStore(path, now=time.time(), learning_seconds=86400, flush_seconds=0, lock_timeout=60)
endpoints, listening = EndpointWatch(Context()), ListeningWatch(Context())
open(go, "w").close()
for i in range(count):
    now = time.time()
    assert endpoints.observe_endpoint(store, f"10.{i // 200}.{i % 200}.1", 443, now)
    listening.observe_listening(store, "tcp", 1, now)
    store.tick(now)
store.close(time.time())
"""

# A writer of a big baseline, rewriting it as fast as it can, printing a line after each write.
BIG_WRITER = """
import sys, time
from ddcustom.device.baseline.kinds.endpoints import EndpointWatch
from ddcustom.device.baseline.kinds.kind import Context
from ddcustom.device.baseline.store import BaselineStore
path = sys.argv[1]
store = BaselineStore(path, now=time.time(), learning_seconds=10**9, flush_seconds=0, max_entries=40000)
endpoints = EndpointWatch(Context())
round = 0
while True:
    now = time.time()
    for i in range(2000):
        endpoints.observe_endpoint(store, f"10.{round % 250}.{i % 250}.{i // 250}", 1000 + i, now)
    store.flush(now)
    print(round, flush=True)
    round += 1
"""

# A writer that SIGKILLs itself at one point of its second write: half-way through writing the temporary
# file, just before the rename, or just after it (before the directory's fsync).
CRASHING_WRITER = """
import os, signal, sys, time
from ddcustom.device.baseline import file as storage
from ddcustom.device.baseline.kinds.endpoints import EndpointWatch
from ddcustom.device.baseline.kinds.kind import Context
from ddcustom.device.baseline.store import BaselineStore
path, point = sys.argv[1], sys.argv[2]
store = BaselineStore(path, now=time.time(), learning_seconds=10**9, flush_seconds=0)
endpoints = EndpointWatch(Context())
def die():
    os.kill(os.getpid(), signal.SIGKILL)
for first in (10, 11):
    if first == 11:
        real_lines, real_fsync = storage.BaselineData.lines, os.fsync
        fsyncs = []
        def half_then_die(data):
            lines = list(real_lines(data))
            yield from lines[: len(lines) // 2]
            yield "x" * 300000  # past the write buffer: part of the file reaches the disk
            die()
        def second_fsync(fd):
            fsyncs.append(fd)
            if len(fsyncs) == 2:
                die()
            real_fsync(fd)
        if point == "write":
            storage.BaselineData.lines = half_then_die
        elif point == "rename":
            os.replace = lambda source, target: die()
        else:
            os.fsync = second_fsync
    for i in range(3000):
        endpoints.observe_endpoint(store, f"{first}.{i % 250}.{i // 250}.1", 443, time.time())
    store.flush(time.time())
"""


def test_operator_and_component_writing_at_once_lose_nothing(tmp_path: Path, spawn: Spawn) -> None:
    path = tmp_path / "baseline.json"
    go = tmp_path / "go"
    component = spawn([sys.executable, "-c", COMPONENT, str(path), str(go), str(OBSERVATIONS)])
    poll(go.exists, "the component to start")
    operator = spawn([sys.executable, "-c", OPERATOR, str(path), str(go), str(OPERATIONS)])
    reads = 0
    while component.poll() is None or operator.poll() is None:
        read_baseline_file(path)  # every version a reader meets parses, whole
        reads += 1
        time.sleep(0.002)
    assert component.returncode == 0 and operator.returncode == 0
    assert reads > 0

    saved = read_baseline_file(path)["entries"]
    forgotten = {f"tcp:{port}" for port in range(3, OPERATIONS + 1, 3)}
    # tcp:1 was both learned by the component and approved by the operator: approved wins
    assert set(saved[LISTENING]) == {f"tcp:{port}" for port in range(1, OPERATIONS + 1)} - forgotten
    assert {entry["origin"] for entry in saved[LISTENING].values()} == {APPROVED}
    assert set(saved[ENDPOINT]) == {f"10.{i // 200}.{i % 200}.0/24:443" for i in range(OBSERVATIONS)}


@pytest.mark.parametrize("point, endpoints", [("write", 3000), ("rename", 3000), ("directory-fsync", 6000)])
def test_a_crash_at_each_point_of_a_write_leaves_one_whole_version(
    tmp_path: Path, spawn: Spawn, point: str, endpoints: int
) -> None:
    path = tmp_path / "baseline.json"
    writer = spawn([sys.executable, "-c", CRASHING_WRITER, str(path), point])
    assert writer.wait(timeout=120) == -signal.SIGKILL
    data = BaselineFile(path, KIND_NAMES).read()
    assert data is not None and len(data.entries[ENDPOINT]) == endpoints
    if point == "write":
        assert (tmp_path / ".baseline.json.tmp").exists()  # the torn temporary file is left behind
    store = BaselineStore(path, now=time.time(), learning_seconds=10**9)
    Observing(store).listening("tcp", 22, time.time())
    store.flush(time.time())
    saved = BaselineFile(path, KIND_NAMES).read()
    assert saved is not None and len(saved.entries[ENDPOINT]) == endpoints
    assert set(saved.entries[LISTENING]) == {"tcp:22"}


def test_a_writer_killed_mid_write_leaves_a_baseline_that_parses(tmp_path: Path, spawn: Spawn) -> None:
    path = tmp_path / "baseline.json"
    file = BaselineFile(path, KIND_NAMES)
    for attempt, delay in enumerate((0.0, 0.037, 0.11, 0.23)):
        writer = spawn([sys.executable, "-c", BIG_WRITER, str(path)], stdout=subprocess.PIPE)
        assert writer.stdout is not None
        for _ in range(2):  # the file exists and is being rewritten
            assert writer.stdout.readline(), f"attempt {attempt}: the writer stopped"
        time.sleep(delay)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        data = file.read()
        assert data is not None and len(data.entries[ENDPOINT]) >= 2000
        reopened = BaselineStore(path, now=time.time(), operator=True)
        assert len(reopened.entries(ENDPOINT)) == len(data.entries[ENDPOINT])
    # a temporary file left by a killed writer does not stop the next one
    store = BaselineStore(path, now=time.time(), learning_seconds=10**9)
    Observing(store).listening("tcp", 22, time.time())
    store.flush(time.time())
    assert "tcp:22" in read_baseline_file(path)["entries"][LISTENING]
    assert not [name for name in os.listdir(tmp_path) if "corrupt" in name]
