"""The baseline in the detection loop, with real processes in a PID namespace of their own.

Each run of the component sees only the processes the test starts (``unshare --pid --mount-proc``), so
nothing else running on the machine changes a result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from ddcustom.cli.main import main as ddcustom_main
from ddcustom.device.metrics import METRICS
from ddcustom.device.sample import BaselineStats, Connection, NewProcess, Sample
from support.helpers import ROOT

SRC = ROOT / "src"
RULE = {
    "name": "new-executables",
    "metric": "new_executables",
    "criteria": {"comparisonOperator": "less-than-equals", "value": {"number": 0}},
}

# The component's loop: learn for a second, then start PROGRAM and print the alerts of a few cycles.
COMPONENT = """
import json, subprocess, sys, time
from ddcustom.device.agent import Agent
from ddcustom.device.config import parse_settings

class Printer:
    def publish_report(self, report): return True
    def publish_shadow(self, document): return False
    def publish_alert(self, alert): print(json.dumps(alert.to_json()), flush=True)

config = json.loads(sys.argv[1])
agent = Agent(parse_settings(config)[0], "cam-1", Printer())
now = 1.0
def cycles(seconds):
    global now
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        agent.run_cycle(now)
        now += 1.0
        time.sleep(0.1)
cycles(1.5)  # longer than BaselineLearningSeconds: what runs now is learned
program = subprocess.Popen(sys.argv[2:])
cycles(1.0)
program.kill()
agent.close()
"""


def run_component(state: Path, program: list[str], **config: Any) -> list[dict[str, Any]]:
    settings = {
        "StateDirectory": str(state),
        "BaselineLearningSeconds": 1,
        "DetectIntervalSeconds": 0.5,
        "EnableDeviceDefenderReport": False,
        "SecurityProfile": {"name": "p", "behaviors": [RULE]},
        **config,
    }
    isolate = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    if os.geteuid() != 0:
        isolate[1:1] = ["--user", "--map-root-user"]
    code = textwrap.dedent(COMPONENT)
    command = [*isolate, sys.executable, "-c", code, json.dumps(settings), *program]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_renamed_copy_of_a_system_binary_alarms_with_its_path_and_hash_until_approved(
    tmp_path: Path,
) -> None:
    program = tmp_path / "kworker-x"
    shutil.copy("/bin/sleep", program)  # a copy of a known binary, under a new name and in a new place
    digest = hashlib.sha256(program.read_bytes()).hexdigest()
    [alert] = run_component(tmp_path / "state", [str(program), "30"])
    assert (alert["behavior"]["name"], alert["violationEventType"]) == ("new-executables", "in-alarm")
    [process] = alert["evidence"]["processes"]
    assert (process["exe"], process["sha256"]) == (str(program), digest)
    assert process["cmdline"] == f"{program} 30"
    assert process["user"] == "root"
    assert process["parents"][0]["name"].startswith("python")  # started by the component's test loop
    assert isinstance(process["started"], int)

    assert ddcustom_main(["baseline", "approve", str(program), "--state-dir", str(tmp_path / "state")]) == 0
    # the next run raises nothing, and ends the alarm the first run left open
    [ended] = run_component(tmp_path / "state", [str(program), "30"])
    assert (ended["violationEventType"], ended["violationId"]) == ("alarm-cleared", alert["violationId"])


def test_the_fleet_configuration_approves_by_hash(tmp_path: Path) -> None:
    program = tmp_path / "updater"
    shutil.copy("/bin/sleep", program)
    digest = hashlib.sha256(program.read_bytes()).hexdigest()
    assert run_component(tmp_path / "state", [str(program), "30"], ApprovedExecutables=[digest]) == []


def test_baseline_metrics_have_no_value_while_learning_and_name_what_is_new_after() -> None:
    learning = Sample(time=0.0, monotonic=0.0, baseline=BaselineStats(learning=True))
    assert all(
        METRICS[name].read(learning, None) is None for name in ("new_executables", "unknown_process_cpu")
    )
    new = BaselineStats(
        learning=False,
        new_processes=(NewProcess(7, "kworker/0:2", "/dev/shm/x.py", "ab" * 32),),
        new_endpoints=(Connection("203.0.113.9", 443, 50000, "eth0"),),
        busiest_new=(7, 45.0),
    )
    after = Sample(time=0.0, monotonic=0.0, baseline=new)
    values = {
        name: METRICS[name].read(after, None) for name in METRICS if name.startswith(("new_", "unknown_"))
    }
    assert values == {
        "new_executables": 1.0,
        "new_executable_paths": ["/dev/shm/x.py"],
        "unknown_process_cpu": 45.0,
        "new_outbound_endpoints": 1.0,
        "new_endpoint_addresses": ["203.0.113.9:443"],
        "new_listening_ports": 0.0,
        "new_gpu_executables": 0.0,
        "new_program_libraries": 0.0,
        "new_program_anonymous_code": 0.0,
        "new_program_network_use": 0.0,
    }


def test_a_pool_connection_alert_names_the_process_holding_it(tmp_path: Path) -> None:
    pool = socket.create_server(("127.0.0.1", 0))
    port = pool.getsockname()[1]
    rule = {
        "name": "mining-pool-connections",
        "metric": "mining_pool_connections",
        "criteria": {"comparisonOperator": "less-than-equals", "value": {"number": 0}},
    }
    connect = f"import socket, time; s = socket.create_connection(('127.0.0.1', {port})); time.sleep(30)"
    try:
        alerts = run_component(
            tmp_path / "state",
            [sys.executable, "-c", connect],
            IncludeLoopback=True,
            MiningPoolPorts=[port],
            SecurityProfile={"name": "p", "behaviors": [rule]},
        )
    finally:
        pool.close()
    evidence = alerts[0]["evidence"]
    assert evidence["connections"] == [f"127.0.0.1:{port}"]
    [holder] = evidence["processes"]  # found by the socket's inode: the pool port is not on its command line
    assert holder["endpoints"] == [f"127.0.0.1:{port}"] and holder["cmdline"].endswith(connect)
