"""bench/evasion_pidns.py: the benchmark re-run in PID and network namespaces of its own sees neither the
host's processes nor the host's connections, and has a loopback that works. Needs root and unshare; the
test is skipped (not passed) elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import evasion_pidns

PROBE = """
import json, os, socket, sys
sys.path.insert(0, {bench!r})
import evasion_pidns
if not evasion_pidns.inside():
    raise SystemExit(3)
status = evasion_pidns.run_as_init()
if status is not None:
    raise SystemExit(status)
server = socket.socket()
server.bind(("127.0.0.1", 0))  # fails when the namespace's loopback is down
server.listen()
with open("/proc/net/tcp") as table:
    ports = [int(line.split()[1].split(":")[1], 16) for line in table.readlines()[1:]]
seen = {{
    "pid": os.getpid(),
    "pids": sorted(int(name) for name in os.listdir("/proc") if name.isdigit()),
    "listening": ports,
    "own_port": server.getsockname()[1],
}}
with open(sys.argv[1], "w") as out:
    json.dump(seen, out)
"""


def usable() -> str:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run([*evasion_pidns.UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    return "" if probe.returncode == 0 else f"unshare refused: {probe.stderr.strip()}"


def test_the_namespaces_hide_the_hosts_processes_and_connections(tmp_path: Path) -> None:
    why_not = usable()
    if why_not:
        pytest.skip(why_not)
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen()
    host_port = host.getsockname()[1]
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(bench=str(ROOT / "bench")))
    out = tmp_path / "seen.json"
    try:
        status, why = evasion_pidns.enter(str(script), [str(out)])
    finally:
        host.close()
    assert (status, why) == (0, "")
    seen = json.loads(out.read_text())
    assert seen["pids"] == [1, seen["pid"]]  # the namespace's init and the benchmark proper it forked
    assert host_port not in seen["listening"]
    assert seen["own_port"] in seen["listening"]
