"""The evasion benchmark's machinery (bench/evasion.py), without running the benchmark: the miners reach
a pool and speak JSON lines to it, the proxy relays CONNECT, nothing is ever pointed outside the
private /30 or loopback, and the command line picks what it should. Loopback only."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.helpers import ROOT

BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import evasion  # noqa: E402
import evasion_pool  # noqa: E402
from ddcustom.tooling.devnucleus import Published  # noqa: E402

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
WAIT = 15.0  # bound on every wait for a process; each usually answers within a second


@pytest.fixture(scope="module")
def miner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return evasion.compile_miner(tmp_path_factory.mktemp("miner"))


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return evasion.compile_library(tmp_path_factory.mktemp("library"))


@pytest.fixture
def pool() -> Iterator[evasion_pool.Server]:
    server = evasion_pool.Server("127.0.0.1", 0, evasion_pool.PoolHandler, LOOPBACK).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy() -> Iterator[evasion_pool.Server]:
    server = evasion_pool.Server("127.0.0.1", 0, evasion_pool.ProxyHandler, LOOPBACK).start()
    yield server
    server.shutdown()
    server.server_close()


def port_of(server: evasion_pool.Server) -> int:
    return int(server.server_address[1])


def wait_for_methods(server: evasion_pool.Server, wanted: set[str]) -> list[dict]:
    deadline = time.monotonic() + WAIT
    while True:
        with server.received_lock:
            received = list(server.received)
        if wanted <= {m.get("method") for m in received} or time.monotonic() > deadline:
            return received
        time.sleep(0.05)


def run_until(argv: list[str], executable: str, server: evasion_pool.Server, wanted: set[str]) -> list[dict]:
    process = subprocess.Popen(argv, executable=executable, stdout=subprocess.PIPE, start_new_session=True)
    try:
        return wait_for_methods(server, wanted)
    finally:
        process.kill()
        process.wait(WAIT)


def test_the_c_miner_names_itself_and_speaks_json_lines_to_its_pool(
    miner: Path, pool: evasion_pool.Server
) -> None:
    argv = [
        "kworker/0:2",
        "-o",
        f"stratum+tcp://127.0.0.1:{port_of(pool)}",
        "--duty",
        "10",
        "--name",
        "kworker/0:2",
    ]
    process = subprocess.Popen(
        argv, executable=str(miner), stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "connected"
        assert Path(f"/proc/{process.pid}/comm").read_text().strip() == "kworker/0:2"
        received = wait_for_methods(pool, {"mining.subscribe", "mining.authorize"})
    finally:
        process.kill()
        process.wait(WAIT)
    assert [m["method"] for m in received[:2]] == ["mining.subscribe", "mining.authorize"]


def test_the_c_miner_reads_its_pool_from_a_config_file_and_goes_through_the_proxy(
    miner: Path, pool: evasion_pool.Server, proxy: evasion_pool.Server, tmp_path: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"pools": [{"url": f"127.0.0.1:{port_of(pool)}", "user": "w"}]}))
    argv = ["m", "-c", str(config), "-x", f"127.0.0.1:{port_of(proxy)}", "--duty", "10"]
    received = run_until(argv, str(miner), pool, {"mining.subscribe"})
    assert "mining.subscribe" in {m["method"] for m in received}


@pytest.mark.parametrize("pool_address", ["0.0.0.0", "10.200.0.3", "10.200.0.8", "192.0.2.1"])
def test_the_c_miner_refuses_a_pool_outside_the_allowed_network_before_connecting(
    miner: Path, pool_address: str
) -> None:
    # The proxy "localhost:1" is not numeric: were the pool let through, the miner would stop on it,
    # still before connecting, with another message. Nothing is sent either way.
    options = ["-o", f"{pool_address}:3333", "-x", "localhost:1", "--allow", "10.200.0.4/30"]
    done = subprocess.run([str(miner), *options], capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 2
    assert f"refused: outside the allowed network and loopback: {pool_address}" in done.stderr


def test_the_c_miner_takes_only_numeric_addresses(miner: Path) -> None:
    done = subprocess.run([str(miner), "-o", "localhost:3333"], capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 2 and "not a numeric IPv4 address: localhost" in done.stderr


def test_the_python_miner_speaks_json_lines_to_its_pool_and_refuses_other_addresses(
    pool: evasion_pool.Server,
) -> None:
    script = str(BENCH / "miner.py")
    argv = [
        "python3",
        script,
        "--pool",
        f"127.0.0.1:{port_of(pool)}",
        "--allow",
        "10.200.0.4/30",
        "--duty",
        "10",
    ]
    received = run_until(argv, sys.executable, pool, {"mining.subscribe"})
    assert received[0]["method"] == "mining.subscribe"

    refused = subprocess.run(
        [sys.executable, script, "--pool", "0.0.0.0:3333", "--allow", "10.200.0.4/30", "--seconds", "5"],
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert refused.returncode == 2 and "refused" in refused.stderr


def ask_proxy(proxy: evasion_pool.Server, request_line: str) -> tuple[socket.socket, bytes]:
    client = socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=WAIT)
    client.sendall(f"{request_line}\r\nHost: test\r\n\r\n".encode())
    return client, evasion_pool.read_head(client)


def test_the_proxy_relays_a_connect_to_a_loopback_listener(
    pool: evasion_pool.Server, proxy: evasion_pool.Server
) -> None:
    client, head = ask_proxy(proxy, f"CONNECT 127.0.0.1:{port_of(pool)} HTTP/1.1")
    with client:
        assert head.startswith(b"HTTP/1.1 200 ")
        client.sendall(b'{"id": 7, "method": "mining.submit", "params": []}\n')
        reply = json.loads(client.makefile("rb").readline())
    assert reply == {"id": 7, "result": True, "error": None}


# Only targets that cannot leave this host, were the proxy to let them through.
@pytest.mark.parametrize(
    "request_line",
    [
        "CONNECT 0.0.0.0:{port} HTTP/1.1",
        "CONNECT localhost:{port} HTTP/1.1",
        "GET http://127.0.0.1:{port}/ HTTP/1.1",
    ],
)
def test_the_proxy_refuses_anything_but_a_connect_to_an_allowed_address(
    pool: evasion_pool.Server, proxy: evasion_pool.Server, request_line: str
) -> None:
    client, head = ask_proxy(proxy, request_line.format(port=port_of(pool)))
    with client:
        assert head.startswith(b"HTTP/1.1 403 ")
    assert pool.received == []


def test_require_allowed_takes_only_the_private_network_and_loopback() -> None:
    private = ipaddress.IPv4Network("10.200.7.4/30")
    assert str(evasion_pool.require_allowed("10.200.7.6", private)) == "10.200.7.6"
    assert str(evasion_pool.require_allowed("127.0.0.1", private)) == "127.0.0.1"
    for address in ("10.200.7.8", "10.200.7.3", "0.0.0.0", "192.0.2.1", "::1", "pool.example.com", ""):
        with pytest.raises(ValueError):
            evasion_pool.require_allowed(address, private)


@pytest.mark.parametrize(
    ("used", "start"),
    [
        ([], 0),
        ([], 16383),
        ([], 123456),
        (["10.200.0.0/17", "10.200.128.0/18"], 0),
        (["10.200.0.0/30", "10.200.0.5/32", "192.0.2.0/24", "127.0.0.0/8"], 0),
        (["10.200.255.252/30"], 16383),
    ],
)
def test_the_picked_subnet_is_an_unused_30_in_the_private_range_holding_both_addresses(
    used: list[str], start: int
) -> None:
    networks = [ipaddress.IPv4Network(n) for n in used]
    subnet = evasion_pool.pick_subnet(networks, start)
    assert subnet.prefixlen == 30 and subnet.subnet_of(evasion_pool.PRIVATE_RANGE)
    assert not any(subnet.overlaps(n) for n in networks)
    namespace = evasion_pool.Namespace("n", "h", "p", subnet)
    hosts = set(map(str, subnet.hosts()))
    assert {namespace.host_address, namespace.pool_address} == hosts


def test_no_subnet_is_picked_when_the_private_range_is_all_used() -> None:
    with pytest.raises(RuntimeError):
        evasion_pool.pick_subnet([ipaddress.IPv4Network("10.200.0.0/16")], 5)


def test_every_miner_command_points_only_inside_the_private_network(tmp_path: Path) -> None:
    subnet = ipaddress.IPv4Network("10.200.9.0/30")
    network = evasion.Network("namespace", "", subnet, "10.200.9.2", 3333, 443, 80)
    fake_miner = tmp_path / "miner"
    fake_miner.write_bytes(b"\x7fELF")
    for attack in evasion.ATTACKS:
        if attack.library:
            continue  # a shared object that mines on a thread: it is given no address at all
        folder = tmp_path / attack.name
        folder.mkdir()
        _executable, argv = evasion.miner_command(attack, network, fake_miner, tmp_path / "x.py", folder, 30)
        text = " ".join(argv) + " ".join(p.read_text() for p in folder.glob("*.json"))
        addresses = set(re.findall(r"\d+\.\d+\.\d+\.\d+", text))
        assert "10.200.9.2" in addresses, attack.name
        assert all(ipaddress.ip_address(a) in subnet for a in addresses), (attack.name, addresses)
        assert argv[0] == attack.shown_argv0
        assert attack.launcher == "interpreter" or argv[argv.index("--name") + 1] == attack.process_name
        assert ("-x" in argv) == attack.via_proxy
    outside = evasion.Network("namespace", "", subnet, "10.200.9.6", 3333, 443, 80)
    with pytest.raises(ValueError):
        evasion.miner_command(evasion.ATTACKS[0], outside, fake_miner, tmp_path / "x.py", tmp_path, 30)


def test_scenarios_are_picked_by_name_or_group_and_unknown_ones_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    attacks, benign = evasion.select_scenarios("attacks")
    assert len(attacks) == len(evasion.ATTACKS) >= 9 and benign == []
    attacks, benign = evasion.select_scenarios("build, kworker-443")
    assert [a.name for a in attacks] == ["kworker-443"] and [b.name for b in benign] == ["build"]
    with pytest.raises(ValueError, match="unknown scenario 'xmrig'"):
        evasion.select_scenarios("xmrig")

    assert evasion.main(["--scenarios", "kworker-443,nope"]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err


def test_quick_shortens_every_period_and_explicit_options_win() -> None:
    quick = evasion.timing_of(evasion.parse_args(["--quick"]))
    full = evasion.timing_of(evasion.parse_args([]))
    assert quick.learning < full.learning and quick.attack < full.attack and quick.benign < full.benign
    given = evasion.timing_of(
        evasion.parse_args(["--quick", "--benign-seconds", "7", "--learning-seconds", "9"])
    )
    assert (given.benign, given.learning, given.attack) == (7, 9, quick.attack)
    with pytest.raises(SystemExit):
        evasion.parse_args(["--attack-seconds", "0"])


def test_files_edited_during_a_run_are_named_in_the_results() -> None:
    # an edit of a script a run's process executes raises new-executables: the table must say so
    before = {"bench/evasion_pool.py": "a", "src/ddcustom/device/agent.py": "b", "bench/old.py": "c"}
    after = {"bench/evasion_pool.py": "a2", "src/ddcustom/device/agent.py": "b", "bench/new.py": "d"}
    assert evasion.changed_files(before, after) == ["bench/evasion_pool.py", "bench/new.py", "bench/old.py"]
    assert evasion.changed_files(before, dict(before)) == []
    hashes = evasion.source_hashes()
    assert "bench/evasion.py" in hashes and "src/ddcustom/device/agent.py" in hashes
    assert not any("__pycache__" in path or ".egg-info" in path for path in hashes)
    document = {"attacks": [], "benign": [], "failure": None, "files_changed_during_run": ["bench/x.py"]}
    assert "WARNING: files of the project changed during the run" in evasion.markdown(document)
    assert "bench/x.py" in evasion.markdown(document)
    assert "WARNING" not in evasion.markdown({**document, "files_changed_during_run": []})


def test_cycles_are_counted_from_the_grid_the_alerts_arrive_on() -> None:
    # cycles tick at 2.0 + 5k; alerts arrive 20-300 ms after their tick, one off the grid (an extra cycle)
    ticks = [2.0 + 5 * k for k in range(40)]
    arrivals = [t + 0.02 + (k % 7) * 0.04 for k, t in enumerate(ticks)] + [103.4]
    phase = evasion.cycle_phase(arrivals, 5.0)
    assert phase is not None and 2.0 <= phase <= 2.03  # the earliest arrival of the cluster: never early
    # a miner started 0.1 s after a tick is seen by the next two: alarmed by cycle 2, arriving after 10 s
    assert evasion.cycles_between(phase, 5.0, 12.1, 22.0 + 0.15) == 2
    assert evasion.cycles_between(phase, 5.0, 11.9, 22.0 + 0.15) == 3  # started before the tick at 12
    # within the smallest delay after a tick, the tick counts as after the start: too many, never too few
    assert evasion.cycles_between(phase, 5.0, 12.01, 22.0 + 0.15) == 3
    assert evasion.cycles_between(phase, 5.0, 12.5, 17.1) == 1
    # the grid's phase near the interval's end: arrivals wrap around modulo the interval
    wrapped = [4.95 + 5 * k + 0.1 for k in range(10)]
    wrapped_phase = evasion.cycle_phase(wrapped, 5.0)
    assert wrapped_phase is not None and abs(wrapped_phase - 0.05) < 1e-9
    assert evasion.cycle_phase([], 5.0) is None
    document: dict[str, Any] = {"attacks": [
        {"started_monotonic": 12.1, "first_alarm_monotonic": 22.15},
        {"started_monotonic": 11.9, "first_alarm_monotonic": 22.15},
        {"started_monotonic": 30.0, "first_alarm_monotonic": None},  # not caught
    ]}  # fmt: skip
    evasion.count_cycles(document, phase)
    assert [(r.get("first_alarm_cycle"), r["within_two_intervals"]) for r in document["attacks"]] == [
        (2, True),
        (3, False),
        (None, False),
    ]
    evasion.count_cycles(document, None)  # no alert arrived at all: nothing was caught
    assert [r["within_two_intervals"] for r in document["attacks"]] == [False, False, False]


def test_alarms_follow_the_alert_topic_only() -> None:
    alarms = evasion.Alarms()

    def alert(behavior: str, kind: str, topic: str = evasion.ALERT_TOPIC) -> None:
        payload = json.dumps({"behavior": {"name": behavior}, "violationEventType": kind}).encode()
        alarms.record(Published(topic, payload, 1, time.time(), "iot"))

    start = time.monotonic()
    alert("cpu-usage", "in-alarm")
    alert("child-processes", "in-alarm", topic="ddcustom/alerts")  # the local copy: not counted twice
    alert("miner-processes", "in-alarm")
    alert("cpu-usage", "alarm-cleared")
    alarms.record(Published(evasion.ALERT_TOPIC, b"not json", 1, time.time(), "iot"))
    assert [b for _, b in alarms.raised(start, time.monotonic())] == ["cpu-usage", "miner-processes"]
    assert set(alarms.active()) == {"miner-processes"}
    assert alarms.last_clear("cpu-usage") is not None and alarms.last_clear("miner-processes") is None


def test_the_watched_app_names_itself_and_starts_and_stops_a_child_on_command(
    miner: Path, pool: evasion_pool.Server
) -> None:
    app = subprocess.Popen(
        [sys.executable, str(BENCH / "evasion_app.py"), "--seconds", "60"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert app.stdin is not None and app.stdout is not None
    try:
        assert app.stdout.readline().strip() == "infer-app 1.0.0 started"
        assert Path(f"/proc/{app.pid}/comm").read_text().strip() == "infer-app"
        child = {
            "executable": str(miner),
            "argv": ["worker", "-o", f"127.0.0.1:{port_of(pool)}", "--duty", "5"],
        }
        app.stdin.write(json.dumps({"start-child": child}) + "\n")
        app.stdin.flush()
        assert app.stdout.readline().strip() == "connected"  # the child's output goes where the app's does
        assert wait_for_methods(pool, {"mining.subscribe"})
        app.stdin.write(json.dumps({"stop-child": True}) + "\n")
        app.stdin.close()
        assert app.wait(WAIT) == 0
    finally:
        if app.poll() is None:
            os.killpg(app.pid, 9)
            app.wait(WAIT)


def test_the_egress_client_holds_connections_through_the_proxy(
    pool: evasion_pool.Server, proxy: evasion_pool.Server
) -> None:
    argv = [
        sys.executable, str(BENCH / "evasion_pool.py"), "--allow", "127.0.0.0/8",
        "--egress", f"127.0.0.1:{port_of(proxy)}", "--target", f"127.0.0.1:{port_of(pool)}",
        "--hold", "0.5", "--seconds", "30",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "egress connected"
        assert process.stdout.readline().strip() == "egress connected"  # the next connection after --hold
        assert wait_for_methods(pool, {"update.check"})
    finally:
        process.kill()
        process.wait(WAIT)
    refused = [*argv[:4], "--egress", "192.0.2.1:80", "--target", f"127.0.0.1:{port_of(pool)}"]
    done = subprocess.run(refused, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 1 and "refused" in done.stderr


def test_the_mode_is_deployed_unless_asked_and_unknown_modes_are_refused() -> None:
    assert evasion.parse_args([]).mode == evasion.DEPLOYED
    assert evasion.parse_args(["--mode", "fallback"]).mode == evasion.FALLBACK
    assert evasion.parse_args(["--mode", "privileged"]).mode == evasion.PRIVILEGED
    with pytest.raises(SystemExit):
        evasion.parse_args(["--mode", "root"])


def test_the_run_fails_when_the_component_is_not_in_the_mode_asked_for() -> None:
    modes = evasion.privileges
    ok = {
        evasion.DEPLOYED: (modes.PRIVILEGED_READER, 4321, [99]),
        evasion.FALLBACK: (modes.UNPRIVILEGED, 4321, []),
        evasion.PRIVILEGED: (modes.ROOT, 0, []),
    }
    for asked, (logged, uid, root_children) in ok.items():
        assert evasion.mode_problem(asked, logged, uid, 4321, root_children) is None, asked
    # stayed root although deployed was asked for (a work folder of root's, say)
    problem = evasion.mode_problem(evasion.DEPLOYED, modes.ROOT, 0, 4321, [])
    assert problem is not None and "did not run in the deployed mode" in problem
    assert (
        modes.MODES[modes.ROOT] in problem and "uid 0, not 4321" in problem and "privileged reader" in problem
    )
    # dropped, but without the reader: the fallback, not the deployment
    problem = evasion.mode_problem(evasion.DEPLOYED, modes.UNPRIVILEGED, 4321, 4321, [])
    assert problem is not None and "privileged reader" in problem
    # a reader although PrivilegedReader was false
    assert evasion.mode_problem(evasion.FALLBACK, modes.UNPRIVILEGED, 4321, 4321, [77]) is not None
    # logged nothing known (an older component): never taken for the mode asked for
    assert evasion.mode_problem(evasion.PRIVILEGED, None, 0, 4321, []) is not None


MINER = "/tmp/ddc-evasion-x/scenarios/sshd-443/sshd"
DIGEST = "ab" * 32


def described(**fields: Any) -> dict[str, Any]:
    return {"pid": 41, "name": "sshd", "user": "root", **fields}


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        ({"processes": [described(exe=MINER, sha256=DIGEST)]}, evasion.EVIDENCE_FULL),
        # another process first, the miner second: still named
        ({"processes": [described(pid=7, exe="/usr/bin/x", sha256="cd" * 32),
                        described(exe=MINER, sha256=DIGEST)]}, evasion.EVIDENCE_FULL),
        ({"processes": [described(exe=MINER, sha256="")]}, evasion.EVIDENCE_PATH_ONLY),
        # the fallback's "no access": the process is there, its path and hash are not
        ({"processes": [described(exe="", sha256="", unknowable="no access")]}, evasion.EVIDENCE_NO_PATH),
        # the address only (new-outbound-endpoints without the process holding it)
        ({"connections": ["10.200.0.2:443"]}, evasion.EVIDENCE_NOT_NAMED),
        ({"processes": [described(pid=7, exe="/usr/sbin/sshd", sha256=DIGEST)]}, evasion.EVIDENCE_NOT_NAMED),
        (None, evasion.EVIDENCE_NOT_NAMED),
        ("not a dict", evasion.EVIDENCE_NOT_NAMED),
    ],
)  # fmt: skip
def test_the_evidence_names_the_miner_by_path_and_sha256_or_says_what_is_missing(
    evidence: Any, expected: str
) -> None:
    assert evasion.evidence_class(evidence, MINER, DIGEST, {41}) == expected


def test_an_interpreted_miner_is_named_by_its_script_and_the_scripts_sha256() -> None:
    script = "/dev/shm/ddc-evasion-x/x.py"
    python = described(exe="/usr/bin/python3.11", sha256="cd" * 32, script=script, script_sha256=DIGEST)
    assert (
        evasion.evidence_class({"processes": [python]}, script, DIGEST, {41}, script=True) == "path + SHA-256"
    )
    assert evasion.evidence_class({"processes": [python]}, script, "00" * 32, {41}, script=True) == (
        evasion.EVIDENCE_PATH_ONLY
    )


def test_the_first_alerts_are_those_of_the_first_cycle_and_the_best_of_them_counts() -> None:
    def classify(evidence: Any) -> str:
        return evasion.evidence_class(evidence, MINER, DIGEST, {41})

    alerts = [
        (10.0, "new-outbound-endpoints", {"connections": ["10.200.0.2:80"]}),
        (10.2, "new-executables", {"processes": [described(exe="", sha256="", unknowable="no access")]}),
        (15.1, "unknown-process-cpu", {"processes": [described(exe=MINER, sha256=DIGEST)]}),
    ]
    found = evasion.first_alert_evidence(alerts, classify, same_cycle=2.5)
    assert found["evidence"] == evasion.EVIDENCE_NO_PATH and found["evidence_by"] == ["new-executables"]
    assert found["evidence_by_behavior"] == {
        "new-executables": "no path",
        "new-outbound-endpoints": "process not named",
        "unknown-process-cpu": "path + SHA-256",
    }
    assert [f["behavior"] for f in found["first_evidence"]] == ["new-outbound-endpoints", "new-executables"]
    assert evasion.first_alert_evidence([], classify)["evidence"] is None
    result = {"scenario": "sshd-443", "caught": True, "attacker": "root", **found}
    miss = evasion.evidence_misses(result)
    assert miss is not None and "unknowable: no access" in miss and "address 10.200.0.2:80" in miss
    assert evasion.evidence_misses({**result, "evidence": evasion.EVIDENCE_FULL}) is None


def test_both_attackers_are_covered_and_the_daemon_namesakes_take_its_name_and_argv0() -> None:
    attackers = {a.attacker for a in evasion.ATTACKS}
    assert attackers == {evasion.ROOT, evasion.APP}
    by_name = {a.name: a for a in evasion.ATTACKS}
    assert by_name["child-of-app"].attacker == evasion.APP  # a child of the application is its user's
    for name in ("sshd-443", "sshd-proxy", "sshd-proxy-app"):
        attack = by_name[name]
        assert (attack.process_name, attack.shown_argv0) == (evasion.DAEMON_NAME, evasion.DAEMON_ARGV0)
    assert by_name["sshd-443"].attacker == by_name["sshd-proxy"].attacker == evasion.ROOT
    assert by_name["sshd-proxy"].via_proxy and by_name["sshd-proxy-app"].attacker == evasion.APP


def test_the_tables_say_the_mode_the_attacker_and_the_evidence_and_compare_modes() -> None:
    attack = {
        "scenario": "sshd-proxy", "description": "d", "attacker": "root", "attacker_uid": 0, "status": "ran",
        "caught": True, "behaviors": ["new-executables"], "first_alarm_s": 9.9, "first_alarm_cycle": 2,
        "within_two_intervals": True, "clear_s": 10.0, "already_in_alarm": [],
        "evidence": evasion.EVIDENCE_FULL, "evidence_by": ["new-executables"],
    }  # fmt: skip
    document: dict[str, Any] = {
        "mode": "deployed", "component": {"logged": "unprivileged, with ...", "uid": 61000},
        "users": {"app": 61001}, "timing": {"clear": 60}, "attacks": [attack], "benign": [], "failure": None,
    }  # fmt: skip
    text = evasion.markdown(document)
    assert "component: deployed mode" in text and "| sshd-proxy | root |" in text
    assert "path + SHA-256 (new-executables)" in text
    assert "1 of 1 attacks caught with the miner's path and SHA-256" in text
    missed = {**attack, "caught": False, "evidence": None, "first_alarm_cycle": None}
    fallback = {**document, "mode": "fallback", "attacks": [missed]}
    table = evasion.compare_markdown([document, fallback], ["a.json", "b.json"])
    assert "| scenario | attacker | deployed | fallback |" in table
    assert "| sshd-proxy | root | cycle 2; path + SHA-256 (new-executables) | **not caught** |" in table
    late = {**attack, "first_alarm_cycle": 3, "evidence": evasion.EVIDENCE_NO_PATH}
    assert "| **cycle 3**; **no path (new-executables)** |" in evasion.compare_markdown(
        [{**document, "attacks": [late]}], ["c"]
    )

    other = {"items": ["/usr/bin/dash (pid 7) maps /usr/lib/libc.so.6 (sha256 unknown)"]}
    noisy = {
        **attack, "behaviors": ["new-executables", "new-program-libraries"],
        "evidence_by_behavior": {
            "new-executables": evasion.EVIDENCE_FULL, "new-program-libraries": evasion.EVIDENCE_NOT_NAMED,
        },
        "alerts": [{"at_s": 45.0, "behavior": "new-program-libraries", "evidence": other}],
    }  # fmt: skip
    text = evasion.markdown({**document, "attacks": [noisy]})
    assert (
        "sshd-proxy: new-program-libraries (not about the miner) pointed at /usr/bin/dash (pid 7) maps "
        "/usr/lib/libc.so.6 (sha256 unknown)"
    ) in text


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_app_loads_a_library_whose_thread_mines_and_unloads_it_on_command(
    library: tuple[Path, Path],
) -> None:
    miner_lib, plugin = library
    assert evasion.sha256_of(plugin) != evasion.sha256_of(miner_lib)  # the plug-in is a file of its own
    app = subprocess.Popen(
        [sys.executable, str(BENCH / "evasion_app.py"), "--seconds", "60"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert app.stdin is not None and app.stdout is not None
    try:
        assert app.stdout.readline().strip() == "infer-app 1.0.0 started"
        load = {"path": str(miner_lib), "env": {"DDC_LIB_DUTY": "100"}}
        app.stdin.write(json.dumps({"load-library": load}) + "\n")
        app.stdin.flush()
        assert app.stdout.readline().strip() == f"library loaded {miner_lib}"
        assert evasion.pids_mapping(str(miner_lib)) == {app.pid}
        before = cpu_seconds(app.pid)
        time.sleep(2)
        assert cpu_seconds(app.pid) - before > 0.5  # the thread mines (the app alone uses 10 %)
        app.stdin.write(json.dumps({"unload-libraries": True}) + "\n")
        app.stdin.flush()
        assert app.stdout.readline().strip() == "libraries unloaded"
        assert evasion.pids_mapping(str(miner_lib)) == set()
        # the plug-in, loaded as an ordinary library, does nothing
        app.stdin.write(
            json.dumps({"load-library": {"path": str(plugin), "env": {"DDC_LIB_DUTY": "0"}}}) + "\n"
        )
        app.stdin.flush()
        assert app.stdout.readline().strip() == f"library loaded {plugin}"
        app.stdin.close()
        assert app.wait(WAIT) == 0
    finally:
        if app.poll() is None:
            os.killpg(app.pid, 9)
            app.wait(WAIT)


def test_a_preloaded_library_mines_on_a_thread_of_the_program_it_was_preloaded_into(
    library: tuple[Path, Path],
) -> None:
    miner_lib, _ = library
    sleep = subprocess.Popen(
        ["sleep", "30"], env={**os.environ, "LD_PRELOAD": str(miner_lib), "DDC_LIB_DUTY": "50"}
    )
    try:
        time.sleep(0.5)
        assert evasion.pids_mapping(str(miner_lib)) == {sleep.pid}
        before = cpu_seconds(sleep.pid)
        time.sleep(2)
        assert cpu_seconds(sleep.pid) - before > 0.3
        assert len(os.listdir(f"/proc/{sleep.pid}/task")) == 2  # sleep's own thread and the miner's
    finally:
        sleep.kill()
        sleep.wait(WAIT)


LIBRARY = "/tmp/ddc-evasion-x/scenarios/app-library/libapp-library.so"


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        ({"processes": [described()], "items": [f"python3 (pid 41) maps {LIBRARY} (sha256 {DIGEST})"]},
         evasion.EVIDENCE_FULL),
        ({"processes": [described()], "items": [f"python3 (pid 41) maps {LIBRARY} (sha256 unknown)"]},
         evasion.EVIDENCE_PATH_ONLY),
        # a CPU level alert: the process and its program, not the library
        ({"processes": [described()], "items": ["/usr/bin/python3 (pid 41) at 110 % of one core"]},
         evasion.EVIDENCE_NO_PATH),
        # the library named, in a process that is not the one mapping it
        ({"processes": [described(pid=7)], "items": [f"x (pid 7) maps {LIBRARY} (sha256 {DIGEST})"]},
         evasion.EVIDENCE_NOT_NAMED),
        (None, evasion.EVIDENCE_NOT_NAMED),
    ],
)  # fmt: skip
def test_a_library_miner_is_named_by_the_library_s_path_and_sha256_with_its_process(
    evidence: Any, expected: str
) -> None:
    assert evasion.library_evidence_class(evidence, LIBRARY, DIGEST, {41}) == expected


def test_the_library_attacks_and_the_known_programs_benign_runs_are_there() -> None:
    by_name = {a.name: a for a in evasion.ATTACKS}
    assert (by_name["app-library"].launcher, by_name["app-library"].attacker) == ("app-library", evasion.APP)
    assert by_name["preload-daemon"].shown_argv0 == evasion.DAEMON_ARGV0
    assert {a.name for a in evasion.ATTACKS if a.library} == {"app-library", "preload-daemon"}
    assert set(evasion.KNOWN_PROGRAMS_AT_WORK) <= {b.name for b in evasion.BENIGN}
