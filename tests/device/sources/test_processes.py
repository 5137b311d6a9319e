"""Process source: a fake /proc tree with known answers, and real processes on this machine."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from ddcustom.device.config import DEFAULT_MINER_PROCESS_NAMES
from ddcustom.device.sample import Connection, MinerProcess
from ddcustom.device.sources.network import NetworkSource
from ddcustom.device.sources.processes import (
    CpuMeter,
    ProcessInfo,
    ProcessSource,
    ProcFiles,
    build_process_stats,
    find_miners,
    miner_name,
    miner_name_pattern,
    parse_cmdline,
    parse_stat,
    read_process_table,
)
from ddcustom.device.sources.source import Machine
from support.helpers import FIXTURES, poll, reap, start

TREE = FIXTURES / "proc" / "tree"
WATCHED = ("inference_app", "long_name_inference_service")


def process_source(
    watched: tuple[str, ...],
    miners: list[str] | tuple[str, ...],
    ports: frozenset[int],
    proc_root: str = "/proc",
) -> ProcessSource:
    source = ProcessSource(Machine(proc_root=proc_root))
    source.set_rules(watched, miners, ports)
    return source


def test_parse_stat_with_parentheses_and_spaces_in_name() -> None:
    assert parse_stat("202 (my (weird) name)) S 2 202 202 0") == ("my (weird) name)", 2, 0, 0)
    assert parse_stat("1 (systemd) S 0 1 1 0") == ("systemd", 0, 0, 0)
    with pytest.raises(ValueError):
        parse_stat("garbage")


def test_parse_cmdline() -> None:
    assert parse_cmdline(b"python3\0-m\0miner\0") == ["python3", "-m", "miner"]
    assert parse_cmdline(b"") == []  # kernel thread
    assert parse_cmdline(b"nginx: worker process") == ["nginx: worker process"]  # rewritten title


@pytest.mark.parametrize(
    "name, expected",
    [
        ("xmrig", "xmrig"),
        ("XMRig", "xmrig"),
        ("xmrig-6.21", "xmrig"),
        ("xmrig6", "xmrig"),
        ("t-rex", "t-rex"),
        ("xmrigger", None),
        ("minerd", "minerd"),
        ("minergate-cli", "minergate"),
        ("miner", None),
        ("nginx", None),
        ("", None),
    ],
)
def test_miner_name(name: str, expected: Optional[str]) -> None:
    assert miner_name(name, miner_name_pattern(DEFAULT_MINER_PROCESS_NAMES)) == expected


@pytest.mark.parametrize(
    "cmdline, reason",
    [
        ("python3 -o stratum+ssl://pool:443", "stratum"),
        ("python3 -o stratum2+tcp://pool:3333", "stratum"),
        ("python3 -o stratum+tls://pool:443", "stratum"),
        ("python3 -o STRATUM+TCP://pool:3333", "stratum"),
        ("python3 --donate-level=1", "flag"),
        ("python3 --donate-level 1", "flag"),
        ("python3 --donate-levels", None),
        ("python3 -o stratum://pool", None),
        ("python3 train.py", None),
    ],
)
def test_command_line_indicators(cmdline: str, reason: Optional[str]) -> None:
    table = {10: ProcessInfo(10, 1, "python3", "python3", cmdline)}
    miners = find_miners(table, miner_name_pattern(DEFAULT_MINER_PROCESS_NAMES))
    assert [m.reason for m in miners] == ([reason] if reason else [])


def test_fake_tree_table_skips_vanished_and_non_pids() -> None:
    table = read_process_table(str(TREE))
    assert 300 not in table  # its stat is gone
    assert set(table) == {1, 2, 100, 101, 102, 103, 104, 200, 201, 202, 203, 204, 205, 206, 207}
    assert table[203].argv0_name == "XMRig"
    assert table[202].comm == "my (weird) name)"


def test_fake_tree_scan() -> None:
    source = process_source(
        WATCHED, DEFAULT_MINER_PROCESS_NAMES, frozenset({3333, 4444}), proc_root=str(TREE)
    )
    connections = (
        Connection("203.0.113.7", 3333, 50000, "eth0"),
        Connection("198.51.100.1", 443, 50001, "eth0"),
        Connection("2001:db8::7", 4444, 50002, "eth0"),
    )
    scan = source.scan(connections)
    # watched: 100 and 103 (inference_app), 206 (comm cut to 15 characters: long_name_infer)
    # their descendants that are not watched themselves: 101, 102 (grandchild), 104 (child of 103), 207
    assert scan.child_processes == 4
    assert scan.watched_pids == frozenset({100, 101, 102, 103, 104, 206, 207})
    assert scan.miners == (
        MinerProcess(200, "xmrig-6.21", "name"),
        MinerProcess(201, "python3", "stratum"),  # STRATUM+TCP:// in upper case
        MinerProcess(203, "nginx", "name"),  # argv[0] /usr/bin/XMRig
        MinerProcess(204, "worker", "flag"),
    )
    assert scan.pool_connections == (connections[0], connections[2])
    # 103 is a same-name child of 100: one top-level inference_app; 206 is the one long_name_inference
    assert scan.watched_instances == 1


def test_fake_tree_nothing_watched() -> None:
    scan = process_source((), (), frozenset(), proc_root=str(TREE)).scan(())
    assert scan.child_processes == 0
    assert scan.watched_instances is None  # not measured, so not reported as 0
    assert scan.watched_pids == frozenset()
    # no names configured: only command lines give miners away
    assert [m.pid for m in scan.miners] == [201, 204]


def test_a_process_started_elsewhere_under_the_apps_name_is_a_second_instance() -> None:
    table = {
        1: ProcessInfo(1, 0, "systemd", "systemd", ""),
        100: ProcessInfo(100, 1, "infer", "infer", ""),  # the application
        101: ProcessInfo(101, 100, "infer", "infer", ""),  # its forked worker keeps the name
        300: ProcessInfo(300, 1, "sh", "sh", ""),
        301: ProcessInfo(301, 300, "infer", "infer", ""),  # a miner renamed like the application
        400: ProcessInfo(400, 401, "other", "other", ""),  # a parent cycle must not hang the walk
        401: ProcessInfo(401, 400, "other", "other", ""),
    }
    pattern = miner_name_pattern(())
    without_impostor = {pid: info for pid, info in table.items() if pid != 301}
    one = build_process_stats(without_impostor, ("infer",), pattern, frozenset(), ())
    assert one.watched_instances == 1
    two = build_process_stats(table, ("infer", "absent"), pattern, frozenset(), ())
    assert two.watched_instances == 2
    assert build_process_stats(table, ("absent",), pattern, frozenset(), ()).watched_instances == 0


# ---- real processes --------------------------------------------------------------------------------


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test starts (helpers.start); each is reaped with all it started."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        reap(proc)


def test_real_renamed_miner_and_stratum_command_line(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    xmrig = tmp_path / "xmrig"
    shutil.copy(sleep, xmrig)
    started.append(start([str(xmrig), "30"]))
    started.append(
        start(
            [sys.executable, "-c", "import time; time.sleep(30)", "-o", "stratum+tcp://pool.example.com:3333"]
        )
    )
    miner_pid, stratum_pid = started[0].pid, started[1].pid
    source = process_source((), DEFAULT_MINER_PROCESS_NAMES, frozenset())

    def both_found() -> bool:
        found = {m.pid: m for m in source.scan(()).miners}
        return miner_pid in found and stratum_pid in found

    poll(both_found, "the miner processes to show up")
    found = {m.pid: m for m in source.scan(()).miners}
    assert found[miner_pid] == MinerProcess(miner_pid, "xmrig", "name")
    assert found[stratum_pid].reason == "stratum"


def test_real_watched_application_tree(tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    app = tmp_path / "ddtest_app"
    app.symlink_to(os.path.realpath(sys.executable))  # comm is the name the program was started by
    script = (
        "import subprocess, time\n"
        "subprocess.Popen(['sleep', '30'])\n"
        "subprocess.Popen(['sh', '-c', 'sleep 30; true'])\n"
        "time.sleep(30)\n"
    )
    started.append(start([str(app), "-c", script]))
    app_pid = started[0].pid
    source = process_source(("ddtest_app",), (), frozenset())
    # the app, its sleep and sh children, and sh's own sleep child
    poll(lambda: source.scan(()).child_processes == 3, "the application's 3 descendants")
    scan = source.scan(())
    assert app_pid in scan.watched_pids
    assert len(scan.watched_pids) == 4
    assert os.getpid() not in scan.watched_pids
    assert scan.watched_instances == 1
    # a second process under the application's name, started from elsewhere
    started.append(start([str(app), "-c", "import time; time.sleep(30)"]))
    poll(lambda: source.scan(()).watched_instances == 2, "the second instance")


RENAME_ON_INPUT = (
    "import ctypes, sys, time\n"
    "sys.stdin.readline()\n"
    "ctypes.CDLL(None).prctl(15, b'renamed-later', 0, 0, 0)\n"
    "print('renamed', flush=True)\n"
    "time.sleep(30)\n"
)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_held_files_show_the_process_as_it_is_now(started: list[subprocess.Popen[bytes]]) -> None:
    # the table read through files kept open sees a rename (prctl) made after the files were opened
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    started.append(start([sys.executable, "-c", RENAME_ON_INPUT], **pipes))
    child = started[0]
    files = ProcFiles()
    poll(lambda: child.pid in read_process_table(files=files), "the child in the table")
    assert child.pid in files.held
    before = read_process_table(files=files)[child.pid]
    assert before.comm == os.path.basename(sys.executable)[:15]
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(b"go\n")
    child.stdin.flush()
    assert child.stdout.readline() == b"renamed\n"
    after = read_process_table(files=files)[child.pid]
    assert after.comm == "renamed-later"
    assert (after.cmdline, after.start_ticks) == (before.cmdline, before.start_ticks)
    assert after == read_process_table()[child.pid]  # what opening the files afresh reads
    files.close()
    assert not files.held


def test_held_files_of_an_exited_process_are_closed_and_not_read_again(
    started: list[subprocess.Popen[bytes]],
) -> None:
    fds_before = open_fds()
    started.append(start(["sleep", "30"]))
    pid = started[0].pid
    files = ProcFiles()
    poll(lambda: pid in read_process_table(files=files), "the sleep in the table")
    assert pid in files.held
    reap(started[0])  # exited and reaped: its pid may be given to another process now
    with pytest.raises(OSError):  # the held files answer ESRCH; the pid's path is gone: not the old process
        files.read(pid)
    assert pid not in files.held
    table = read_process_table(files=files)
    assert pid not in table
    assert files.held <= set(table)
    files.close()
    assert open_fds() == fds_before


def test_files_beyond_the_limit_are_read_and_closed(started: list[subprocess.Popen[bytes]]) -> None:
    for _ in range(3):
        started.append(start(["sleep", "30"]))
    pids = {p.pid for p in started}
    files = ProcFiles(max_processes=2)
    poll(lambda: pids <= set(read_process_table(files=files)), "the three sleeps in the table")
    assert len(files.held) == 2
    table = read_process_table(files=files)
    for pid in pids:
        assert table[pid].comm == "sleep"
        assert table[pid].cmdline == "sleep 30"


def test_a_dropped_proc_files_closes_what_it_held(started: list[subprocess.Popen[bytes]]) -> None:
    fds_before = open_fds()
    started.append(start(["sleep", "30"]))

    def held_while_alive() -> int:
        files = ProcFiles()
        poll(lambda: started[0].pid in read_process_table(files=files), "the sleep in the table")
        return len(open_fds() - fds_before)

    assert held_while_alive() >= 2
    assert open_fds() == fds_before  # the ProcFiles is gone with the function's frame


def test_fixture_trees_are_never_held() -> None:
    source = process_source(WATCHED, DEFAULT_MINER_PROCESS_NAMES, frozenset(), proc_root=str(TREE))
    source.scan(())
    assert not source.files.held


def test_real_pool_connection_from_network_source() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    pool_port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", pool_port), timeout=5)
    accepted, _ = server.accept()
    try:
        connections = NetworkSource(include_loopback=True).read().established_tcp
        scan = process_source((), (), frozenset({pool_port})).scan(connections)
        assert scan.pool_connections == (Connection("127.0.0.1", pool_port, client.getsockname()[1], "lo"),)
    finally:
        for sock in (client, accepted, server):
            sock.close()


def test_parse_stat_reads_cpu_and_start_ticks_of_a_real_line() -> None:
    # captured from a python3 busy loop 1.5 s after its start: utime 72 + stime 1, started at tick 105457
    text = (TREE.parent / "real" / "pid" / "stat_busy_python").read_text()
    assert parse_stat(text) == ("python3", 22944, 73, 105457)


def test_cpu_meter_gives_each_process_its_share_of_one_core_and_skips_reused_pids() -> None:
    meter = CpuMeter(ticks_per_second=100)
    first = {7: ProcessInfo(7, 1, "xmrig", "xmrig", "", cpu_ticks=1000, start_ticks=50)}
    assert meter.update(first, now=10.0) == {}  # nothing to compare with yet
    later = {
        7: ProcessInfo(7, 1, "xmrig", "xmrig", "", cpu_ticks=1900, start_ticks=50),  # 900 ticks in 5 s
        8: ProcessInfo(8, 1, "new", "new", "", cpu_ticks=400, start_ticks=60),  # not seen before
    }
    assert meter.update(later, now=15.0) == {7: 180.0}  # two cores' worth
    reused = {7: ProcessInfo(7, 1, "other", "other", "", cpu_ticks=2000, start_ticks=99)}
    assert meter.update(reused, now=20.0) == {}  # pid 7 is another process now
