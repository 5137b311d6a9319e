"""The evidence of an alert, read from a fixture /proc tree and a hand-built sample: what each named
process runs (path and SHA-256, computed here independently), its command line, owner, start, parents and
endpoints; the holder of a connection found by its socket; the bounds; a failure costs only the evidence."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ddcustom.device.alerts.evidence import MAX_BYTES, MAX_CMDLINE_CHARS, MAX_PROCESSES, EvidenceReader
from ddcustom.device.alerts.redact import REDACTED, Redactor
from ddcustom.device.sample import (
    BaselineStats,
    Connection,
    MinerProcess,
    NetCounters,
    NetworkStats,
    NewProcess,
    ProcessInfo,
    ProcessStats,
    Sample,
)
from ddcustom.device.sources.identity import IdentityReader
from ddcustom.device.sources.process_details import ProcessDetails
from support.helpers import sample
from support.procfs import fake_process

BOOT = 1_700_000_000  # the btime of the fixture /proc/stat
TICKS = os.sysconf("SC_CLK_TCK")
POOL = Connection("203.0.113.7", 3333, 50000, "eth0", inode=4242)
OTHER = Connection("198.51.100.1", 443, 50001, "eth0", inode=4343)


def sha256_of(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """A /proc tree: 1 (init) <- 10 (sh) <- 20 (the miner, holding the pool's socket), and 30 (python3
    running a script) holding another socket."""
    root = tmp_path / "proc"
    root.mkdir()
    (root / "stat").write_text(f"cpu  1 2 3 4\nbtime {BOOT}\n")
    fake_process(root, 1, "/bin/sh", ["/sbin/init"])
    fake_process(root, 10, "/bin/sh", ["sh"])
    fake_process(root, 20, "/bin/sh", ["./xmrig", "-o", "pool"], fds={3: "socket:[4242]", 4: "/dev/null"})
    script = tmp_path / "job.py"
    script.write_text("print('hi')\n")
    fake_process(root, 30, sys.executable, ["python3", str(script)], fds={5: "socket:[4343]"})
    return root


def table() -> dict[int, ProcessInfo]:
    return {
        1: ProcessInfo(1, 0, "init", "init", "/sbin/init"),
        10: ProcessInfo(10, 1, "sh", "sh", "sh"),
        20: ProcessInfo(20, 10, "xmrig", "xmrig", "./xmrig -o pool", start_ticks=50 * TICKS),
        30: ProcessInfo(30, 1, "python3", "python3", "python3 job.py"),
    }


def sample_with(processes: dict[int, ProcessInfo], connections: tuple[Connection, ...] = ()) -> Sample:
    network = NetworkStats((), (), connections, NetCounters(0, 0, 0, 0))
    return sample(processes=ProcessStats(0, (), (), table=processes), network=network)


def reader(proc: Path) -> EvidenceReader:
    return EvidenceReader(IdentityReader(str(proc)), ProcessDetails(str(proc)))


def test_a_named_process_is_described_with_what_it_runs(proc: Path) -> None:
    evidence = reader(proc).describe(sample_with(table(), (POOL, OTHER)), ((20,), (), ()))

    assert evidence is not None
    [miner] = evidence["processes"]
    assert miner == {
        "pid": 20,
        "name": "xmrig",
        "exe": "/bin/sh",  # the exe link as /proc shows it
        "sha256": sha256_of("/bin/sh"),
        "cmdline": "./xmrig -o pool",
        "started": BOOT + 50,
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "parents": [{"pid": 10, "name": "sh"}, {"pid": 1, "name": "init"}],
        "endpoints": ["203.0.113.7:3333"],  # the connection whose socket it holds, not the other one
    }
    assert "connections" not in evidence and "items" not in evidence


def test_an_interpreter_is_described_with_its_script(proc: Path, tmp_path: Path) -> None:
    evidence = reader(proc).describe(sample_with(table()), ((30,), (), ()))

    assert evidence is not None
    [described] = evidence["processes"]
    assert described["script"] == str(tmp_path / "job.py")
    assert described["script_sha256"] == sha256_of(str(tmp_path / "job.py"))
    assert described["sha256"] == sha256_of(sys.executable)


def test_a_connection_names_the_process_that_holds_its_socket(proc: Path) -> None:
    evidence = reader(proc).describe(sample_with(table(), (POOL, OTHER)), ((), (POOL,), ()))

    assert evidence is not None
    assert [p["pid"] for p in evidence["processes"]] == [20]
    assert evidence["connections"] == ["203.0.113.7:3333"]


def test_items_are_listed_and_a_process_gone_since_the_sample_is_left_out(proc: Path) -> None:
    evidence = reader(proc).describe(sample_with(table()), ((99,), (), ("tcp:8080",)))

    assert evidence == {"items": ["tcp:8080"]}
    assert reader(proc).describe(sample_with(table()), ((99,), (), ())) is None  # nothing to show


def test_what_an_alert_carries_is_bounded(proc: Path) -> None:
    long_line = "x" * (MAX_CMDLINE_CHARS * 3)
    many = {pid: ProcessInfo(pid, 1, f"p{pid}", f"p{pid}", long_line) for pid in range(100, 120)}
    for pid in many:
        fake_process(proc, pid, "/bin/sh", ["sh"])
    evidence = reader(proc).describe(sample_with({**table(), **many}), (tuple(many), (), ()))

    assert evidence is not None
    assert len(evidence["processes"]) == MAX_PROCESSES
    assert all(len(p["cmdline"]) == MAX_CMDLINE_CHARS for p in evidence["processes"])
    assert len(json.dumps(evidence)) <= MAX_BYTES


def test_evidence_too_large_keeps_the_first_processes_whole(proc: Path) -> None:
    # executables at paths of 3500 characters (unreadable: nothing is there): five do not fit in MAX_BYTES
    culprits = (41, 42, 43, 44, 45)
    for pid in culprits:
        fake_process(proc, pid, "/gone/" + str(pid) * 1750, ["sh"])
    processes = {pid: ProcessInfo(pid, 1, "sh", "sh", "sh") for pid in culprits}
    evidence = reader(proc).describe(sample_with(processes), (culprits, (), ()))

    assert evidence is not None
    assert evidence["truncated"] is True
    assert 0 < len(evidence["processes"]) < len(culprits)
    assert [p["pid"] for p in evidence["processes"]] == list(culprits[: len(evidence["processes"])])
    assert all(p["unknowable"] == "unreadable" for p in evidence["processes"])
    assert len(json.dumps(evidence)) <= MAX_BYTES


class _Failing(IdentityReader):
    def read(self, pid: int, cmdline: Any = None, process: Any = None) -> Any:
        raise RuntimeError("the disk went away")


def test_a_failure_costs_the_evidence_not_the_alert(proc: Path, caplog: pytest.LogCaptureFixture) -> None:
    failing = EvidenceReader(_Failing(str(proc)), ProcessDetails(str(proc)))
    with caplog.at_level(logging.WARNING):
        assert failing.collect(sample_with(table()), ((20,), (), ())) is None
    assert "alert evidence not collected: RuntimeError: the disk went away" in caplog.text


class _Owners(ProcessDetails):
    """Owners as the test says; no process holds a socket, and no process's sockets can be looked into
    (another user's, no reader) unless ``visible`` (the privileged reader, or the component as root)."""

    def __init__(self, proc: Path, uids: dict[int, int], visible: bool = False) -> None:
        super().__init__(str(proc))
        self.uids = uids
        self.visible = visible

    def owner(self, pid: int) -> Any:
        return self.uids.get(pid)

    def socket_inodes(self, pid: int) -> set[int]:
        return set()

    def sockets_visible(self, pid: int) -> bool:
        return self.visible


def test_without_the_reader_a_connection_names_the_processes_of_its_user(proc: Path) -> None:
    """The socket's user is known (sock_diag gives it), its holder is not: the processes of that user are
    named, the new ones first, and the evidence says so."""
    pool = Connection("203.0.113.7", 3333, 50000, "eth0", inode=4242, uid=0)
    details = _Owners(proc, {1: 0, 10: 0, 20: 0, 30: 1000})
    new = BaselineStats(learning=False, new_processes=(NewProcess(20, "xmrig", "/bin/sh", ""),))
    sample = replace(sample_with(table(), (pool,)), baseline=new)
    evidence = EvidenceReader(IdentityReader(str(proc)), details).describe(sample, ((), (pool,), ()))

    assert evidence is not None
    assert [p["pid"] for p in evidence["processes"]] == [20, 1, 10]
    assert evidence["holder"].startswith("one of the 3 processes of user root")

    details.uids = {1: 1000, 10: 1000, 20: 0, 30: 1000}
    evidence = EvidenceReader(IdentityReader(str(proc)), details).describe(sample, ((), (pool,), ()))
    assert evidence is not None
    assert [p["pid"] for p in evidence["processes"]] == [20]
    assert evidence["holder"] == "the only process of user root"


def test_a_connection_no_process_in_sight_holds_names_no_process(proc: Path) -> None:
    """Every process of the socket's user looked into (the privileged reader, or the component as root)
    and none holds it (its process runs in another PID namespace, or closed it): no process is named as
    a possible holder, and the evidence says why."""
    pool = Connection("203.0.113.80", 443, 50000, "eth0", inode=4242, uid=0)
    details = _Owners(proc, {1: 0, 10: 0, 20: 0, 30: 1000}, visible=True)
    sample = sample_with(table(), (pool,))
    evidence = EvidenceReader(IdentityReader(str(proc)), details).describe(sample, ((), (pool,), ()))

    assert evidence is not None
    assert "processes" not in evidence
    assert evidence["connections"] == ["203.0.113.80:443"]
    assert evidence["holder"].startswith("none of the processes of user root this component sees")


# ---- redaction (redact.py's rules are tested there; here: where the evidence applies them) ---------


def redacting(proc: Path, *patterns: str) -> EvidenceReader:
    return EvidenceReader(IdentityReader(str(proc)), ProcessDetails(str(proc)), Redactor(patterns))


def test_every_free_text_field_is_redacted_and_the_evidence_says_what_was_cut(proc: Path) -> None:
    processes = {
        **table(),
        10: ProcessInfo(10, 1, "tok-ACME12", "sh", "sh"),  # a parent whose name a pattern cuts
        20: ProcessInfo(20, 10, "acme-ACME34", "x", "./x --password=hunter2 https://u:pw1@h/ -v"),
    }
    (proc / "20" / "environ").write_bytes(b"HOME=/root\0LD_PRELOAD=/opt/ACME56/libhook.so\0")
    evidence = redacting(proc, r"ACME\d\d").describe(sample_with(processes), ((20,), (), ()))

    assert evidence is not None
    [described] = evidence["processes"]
    assert described["cmdline"] == f"./x --password={REDACTED} https://u:{REDACTED}@h/ -v"
    assert described["name"] == f"acme-{REDACTED}"
    assert described["parents"] == [{"pid": 10, "name": f"tok-{REDACTED}"}, {"pid": 1, "name": "init"}]
    assert described["loader"] == {"LD_PRELOAD": f"/opt/{REDACTED}/libhook.so"}
    assert described["redacted"] == {
        "name": ["pattern"],
        "cmdline": ["secret-option", "url-password"],
        "loader": ["pattern"],
        "parents": ["pattern"],
    }
    # what is not free text is kept: the path and hash of what runs, the user
    assert (described["exe"], described["sha256"]) == ("/bin/sh", sha256_of("/bin/sh"))
    assert "hunter2" not in json.dumps(evidence) and "pw1" not in json.dumps(evidence)


def test_nothing_cut_adds_no_redacted_field(proc: Path) -> None:
    evidence = redacting(proc).describe(sample_with(table()), ((20,), (), ()))
    assert evidence is not None
    assert "redacted" not in evidence["processes"][0]


def test_a_miners_pool_login_is_kept_as_evidence(proc: Path) -> None:
    line = "./xmrig -o pool:3333 -u WALLET -p x --pass=rig7 --api-token=t0k"
    processes = {**table(), 20: ProcessInfo(20, 10, "xmrig", "xmrig", line)}
    network = NetworkStats((), (), (), NetCounters(0, 0, 0, 0))
    counted = ProcessStats(0, (MinerProcess(20, "xmrig", "name"),), (), table=processes)
    evidence = redacting(proc).describe(sample(processes=counted, network=network), ((20,), (), ()))
    assert evidence is not None
    assert (
        evidence["processes"][0]["cmdline"]
        == f"./xmrig -o pool:3333 -u WALLET -p x --pass=rig7 --api-token={REDACTED}"
    )

    # the same line, of a process the miner rule does not count: --pass is a password
    evidence = redacting(proc).describe(sample_with(processes), ((20,), (), ()))
    assert evidence is not None
    assert "rig7" not in evidence["processes"][0]["cmdline"]


def test_a_long_command_line_is_cut_between_words_before_it_is_redacted(proc: Path) -> None:
    token = "7Hq2Lm9XcV4bN8kP3sR6tY1wZ5aD0fGj"
    head = "y" * (MAX_CMDLINE_CHARS - 10)
    # the token straddles the cut: its first characters alone would be too short to look like one
    processes = {**table(), 20: ProcessInfo(20, 10, "x", "x", f"{head} {token} tail")}
    evidence = redacting(proc).describe(sample_with(processes), ((20,), (), ()))
    assert evidence is not None
    assert evidence["processes"][0]["cmdline"] == head
