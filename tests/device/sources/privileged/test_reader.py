"""The privileged reader: the four questions answered from a fixture /proc tree (digests computed here
independently), hostile requests refused while it keeps serving, a reused pid never answered for, and the
component's side bounded in time when the reader is slow or gone."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ddcustom.device.sources.identity import ExecutableIdentity, IdentityReader
from ddcustom.device.sources.privileged.client import PrivilegedReader
from ddcustom.device.sources.privileged.protocol import (
    MAX_ANSWER_BYTES,
    MAX_MAPPINGS,
    MAX_REQUEST_BYTES,
    MAX_VALUE_CHARS,
    encode_request,
)
from ddcustom.device.sources.privileged.server import Answers, serve
from support.procfs import deny_exe_links, exec_while_read, fake_process

START = 4242  # the fixture processes' start time, in clock ticks
Pair = tuple[socket.socket, threading.Thread]
LogCapture = pytest.LogCaptureFixture


def sha256_of(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def stat_line(pid: int, start: int = START) -> str:
    """A /proc/PID/stat line with the start time in field 22."""
    fields = ["S", "1", *["0"] * 17, str(start), "0"]
    return f"{pid} (p{pid}) {' '.join(fields)}\n"


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """Process 10 runs a copy of sh with a library and an anonymous executable region mapped, two
    sockets, and an environment holding loader variables beside a secret."""
    root = tmp_path / "proc"
    library = tmp_path / "libevil.so"
    library.write_bytes(b"\x7fELF pretend library")
    fake_process(root, 10, "/bin/sh", ["sh"], fds={3: "socket:[777]", 4: "socket:[778]", 5: "/dev/null"})
    base = root / "10"
    (base / "stat").write_text(stat_line(10))
    (base / "maps").write_text(
        "55d0-55e0 r-xp 00000000 08:01 1 /bin/sh\n"
        "55e0-55f0 r--p 00001000 08:01 1 /bin/sh\n"
        f"7f00-7f10 r-xp 00000000 08:01 2 {library}\n"
        "7f20-7f30 rwxp 00000000 00:00 0 \n"
        "7fff-8000 r-xp 00000000 00:00 0 [vdso]\n"
    )
    (base / "map_files").mkdir()
    os.symlink("/bin/sh", base / "map_files" / "55d0-55e0")
    os.symlink(library, base / "map_files" / "7f00-7f10")
    environ = [b"PATH=/usr/bin", b"AWS_SECRET_ACCESS_KEY=hunter2", b"LD_PRELOAD=" + str(library).encode()]
    (base / "environ").write_bytes(b"\0".join(environ) + b"\0")
    return root


def ask(answers: Answers, op: str, pid: int = 10, start: int = START) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(answers.answer(encode_request(7, op, pid, start)))
    assert answer["id"] == 7
    return answer


def test_identity_is_the_executable_and_its_digest(proc: Path) -> None:
    answer = ask(Answers(str(proc)), "identity")
    assert answer == {
        "id": 7,
        "path": "/bin/sh",
        "sha256": sha256_of("/bin/sh"),
        "script": "",
        "script_sha256": "",
        "reason": "",
    }


def test_maps_are_the_files_mapped_executable_and_the_regions_no_file_backs(
    proc: Path, tmp_path: Path
) -> None:
    answer = ask(Answers(str(proc)), "maps")
    library = str(tmp_path / "libevil.so")
    assert answer["files"] == [
        {"path": "/bin/sh", "sha256": sha256_of("/bin/sh"), "reason": ""},
        {"path": library, "sha256": sha256_of(library), "reason": ""},
    ]
    assert answer["anonymous_executable"] == 1  # the rwx region; [vdso] is the kernel's


def test_sockets_are_the_inodes_it_holds(proc: Path) -> None:
    assert ask(Answers(str(proc)), "sockets")["inodes"] == [777, 778]


def test_preload_names_only_the_loader_variables(proc: Path, tmp_path: Path) -> None:
    answer = ask(Answers(str(proc)), "preload")
    assert answer["variables"] == {"LD_PRELOAD": str(tmp_path / "libevil.so")}
    assert "hunter2" not in json.dumps(answer)


def test_a_long_loader_variable_is_cut(proc: Path) -> None:
    (proc / "10" / "environ").write_bytes(b"LD_LIBRARY_PATH=" + b"/x" * MAX_VALUE_CHARS + b"\0")
    assert len(ask(Answers(str(proc)), "preload")["variables"]["LD_LIBRARY_PATH"]) == MAX_VALUE_CHARS


def test_a_reused_pid_is_gone_and_so_is_an_exited_one(proc: Path) -> None:
    answers = Answers(str(proc))
    for op in ("identity", "maps", "sockets", "preload"):
        assert ask(answers, op, start=START + 1) == {"id": 7, "error": "gone"}
        assert ask(answers, op, pid=99) == {"id": 7, "error": "gone"}


def test_a_process_read_while_it_executes_another_program_has_no_program(proc: Path, tmp_path: Path) -> None:
    """Not an identity mixing the two programs (the shell's path, true's file), nor "gone": the component
    asks again next cycle and then gets true's."""
    true = tmp_path / "true"
    true.write_bytes(b"true(1)")
    with pytest.MonkeyPatch.context() as monkeypatch:
        exec_while_read(monkeypatch, proc, 10, str(true), [str(true)])
        answers = Answers(str(proc))
        assert ask(answers, "identity") == {"id": 7, "error": "no program"}
        assert ask(answers, "identity")["path"] == str(true)


def test_the_component_judges_next_time_a_process_the_reader_met_executing(
    proc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The component, which may not read the process's exe link, gets no identity this time rather than a
    weak one ("no access": a new executable to a baseline that learned the full identity)."""
    true = tmp_path / "true"
    true.write_bytes(b"true(1)")
    as_root = tmp_path / "proc-as-root"  # the same tree under another path: the reader may read the link
    os.symlink(proc, as_root)
    deny_exe_links(monkeypatch, proc, [10])
    exec_while_read(monkeypatch, as_root, 10, str(true), [str(true)])
    component, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    thread = threading.Thread(target=serve, args=(reader, Answers(str(as_root))), daemon=True)
    thread.start()
    try:
        identities = IdentityReader(str(proc), privileged=PrivilegedReader(component, proc_root=str(proc)))
        assert identities.read(10) is None
        assert identities.read(10) == ExecutableIdentity(path=str(true), sha256=sha256_of(str(true)))
    finally:
        component.close()
        thread.join(5)
        reader.close()


def test_many_mappings_are_bounded(proc: Path) -> None:
    lines = [f"{i:x}000-{i:x}fff r-xp 00000000 08:01 {i} /lib/m{i}.so\n" for i in range(1, 3 * MAX_MAPPINGS)]
    (proc / "10" / "maps").write_text("".join(lines))
    answer = ask(Answers(str(proc)), "maps")
    assert len(answer["files"]) == MAX_MAPPINGS
    assert all(f["reason"] == "unreadable" for f in answer["files"])  # no map_files link: no digest


HOSTILE = [
    b"",
    b"\xff\xfe",
    b"not json",
    b"[]",
    b'{"id": 1}',
    b'{"id": 1, "op": "identity", "pid": 10, "start": 4242, "path": "/etc/shadow"}',
    b'{"id": 1, "op": "read", "pid": 10, "start": 4242}',
    b'{"id": 1, "op": "identity", "pid": "10/../1", "start": 4242}',
    b'{"id": 1, "op": "identity", "pid": -1, "start": 4242}',
    b'{"id": 1, "op": "identity", "pid": 0, "start": 4242}',
    b'{"id": 1, "op": "identity", "pid": 99999999999, "start": 4242}',
    b'{"id": 1, "op": "identity", "pid": true, "start": 4242}',
    b'{"id": 1, "op": "identity", "pid": 10.0, "start": 4242}',
    b'{"id": -5, "op": "identity", "pid": 10, "start": 4242}',
    b'{"id": 1, "op": "identity", "pid": 10, "start": "4242"}',
    b'{"id": 1, "op": "identity", "pid": 10, "start": 4242, "id": 2' + b"0" * MAX_REQUEST_BYTES + b"}",
    b"[" * 100_000,
]


@pytest.mark.parametrize("request_bytes", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_request_is_refused_with_a_bounded_error(proc: Path, request_bytes: bytes) -> None:
    answer = json.loads(Answers(str(proc)).answer(request_bytes))
    assert answer["error"].startswith("bad request: ")
    assert len(json.dumps(answer)) < 200


@pytest.fixture
def pair(proc: Path) -> Iterator[tuple[socket.socket, threading.Thread]]:
    """The reader serving the fixture tree on a thread, and the component's end of the socket pair."""
    component, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    thread = threading.Thread(target=serve, args=(reader, Answers(str(proc))), daemon=True)
    thread.start()
    yield component, thread
    component.close()
    thread.join(5)
    reader.close()
    assert not thread.is_alive(), "the reader did not end when the component's end closed"


def test_the_reader_keeps_serving_after_hostile_requests(
    pair: Pair,
) -> None:
    component, _ = pair
    component.settimeout(5)
    for request_bytes in HOSTILE[1:-1]:  # an empty datagram is an end of file; the bomb is too long to send
        component.send(request_bytes)
        assert "error" in json.loads(component.recv(MAX_ANSWER_BYTES))
    client = PrivilegedReader(component)
    assert client.ask("sockets", 10, START) == {"id": 0, "inodes": [777, 778]}


def test_the_component_side_asks_with_the_start_time_it_reads(proc: Path, pair: Pair) -> None:
    component, _ = pair
    client = PrivilegedReader(component, proc_root=str(proc))
    answer = client.ask("identity", 10)
    assert answer is not None and answer["sha256"] == sha256_of("/bin/sh")
    assert client.ask("identity", 99) is None  # no such process: not even asked
    assert client.asked == 1


def test_a_silent_reader_costs_one_timeout_and_its_late_answer_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    component, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client = PrivilegedReader(component, timeout=0.2)
    with caplog.at_level(logging.WARNING):
        assert client.ask("identity", os.getpid(), 1) is None
    assert "no answer about pid" in caplog.text and client.available
    request = json.loads(reader.recv(MAX_REQUEST_BYTES))
    reader.send(json.dumps({"id": request["id"], "path": "/late"}).encode())  # the answer to the old question

    def answer_next() -> None:
        fresh = json.loads(reader.recv(MAX_REQUEST_BYTES))
        reader.send(json.dumps({"id": fresh["id"], "path": "/fresh"}).encode())

    threading.Thread(target=answer_next, daemon=True).start()
    assert client.ask("identity", os.getpid(), 1) == {"id": request["id"] + 1, "path": "/fresh"}
    reader.close()
    component.close()


def test_a_reader_that_went_away_is_not_asked_again(caplog: LogCapture) -> None:
    component, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reader.close()
    client = PrivilegedReader(component)
    with caplog.at_level(logging.ERROR):
        assert client.ask("identity", os.getpid(), 1) is None
        assert client.ask("identity", os.getpid(), 1) is None
    assert not client.available
    assert caplog.text.count("the privileged reader is gone") == 1
    assert client.asked == 1
    component.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's map_files needs root")
def test_the_real_proc_of_a_child(tmp_path: Path) -> None:
    """As root, the real /proc: the identity of a child running python and its loader variable."""
    script = tmp_path / "x.py"
    script.write_text("import sys, time; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(60)\n")
    env = {**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}
    import subprocess

    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        answers = Answers()
        start = int(Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[19])
        identity = ask(answers, "identity", child.pid, start)
        assert identity["sha256"] == sha256_of(os.path.realpath(sys.executable))
        assert identity["script"] == str(script) and identity["script_sha256"] == sha256_of(str(script))
        assert ask(answers, "preload", child.pid, start)["variables"] == {"LD_LIBRARY_PATH": str(tmp_path)}
        mapped = {f["path"]: f["sha256"] for f in ask(answers, "maps", child.pid, start)["files"]}
        assert mapped[os.path.realpath(sys.executable)] == identity["sha256"]
    finally:
        child.kill()
        child.wait()
