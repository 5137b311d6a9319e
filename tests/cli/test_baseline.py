"""``ddcustom baseline``: the operator's commands, in process and as separate processes next to a
running component's store."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

import ddcustom
from ddcustom.cli.main import main
from ddcustom.device.baseline.store import BaselineStore
from ddcustom.device.sources.identity import IdentityReader
from support.baseline import ENDPOINT, EXECUTABLE, GPU_EXECUTABLE, LISTENING, Observing
from support.procfs import Spawn, read_baseline_file, spawn, wait_for_exec

__all__ = ["spawn"]  # the fixture, imported for the tests below

SLEEP = shutil.which("sleep") or "/bin/sleep"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["baseline", *args])
    out, err = capsys.readouterr()
    return code, out, err


def saved(state: Path) -> dict[str, Any]:
    data: dict[str, Any] = read_baseline_file(state / "baseline.json")["entries"]
    return data


def sha256_of(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_show_before_the_component_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show", "--state-dir", str(tmp_path))
    assert code == 0
    assert f"baseline {tmp_path / 'baseline.json'} (epoch 0)" in out
    assert "learning: not started" in out
    assert not (tmp_path / "baseline.json").exists()


def test_approve_each_item_form(tmp_path: Path, capsys: pytest.CaptureFixture[str], spawn: Spawn) -> None:
    state = ["--state-dir", str(tmp_path)]
    copy = tmp_path / "kworker"
    shutil.copy(SLEEP, copy)
    process = spawn([str(copy), "120"])
    wait_for_exec(process.pid, [str(copy), "120"])
    running = IdentityReader().read(process.pid)
    assert running is not None
    real_sleep = os.path.realpath(SLEEP)
    for item in (
        f"pid:{process.pid}",
        SLEEP,
        "sha256:" + "AB" * 32,
        "cd" * 32,
        "path:/opt/app/bin/server",
        f"gpu:pid:{process.pid}",
        "endpoint:203.0.113.7:443",
        "endpoint:10.0.0.0/8",
        "endpoint:[2001:db8::/64]:443",
        "listen:udp:53",
    ):
        code, out, err = run(capsys, "approve", item, *state)
        assert (code, err) == (0, ""), item
        assert out.startswith("approved "), item
    entries = saved(tmp_path)
    assert set(entries[EXECUTABLE]) == {
        running.key,
        f"{sha256_of(real_sleep)} {real_sleep}",
        "sha256:" + "ab" * 32,
        "sha256:" + "cd" * 32,
        "path:/opt/app/bin/server",
    }
    assert set(entries[GPU_EXECUTABLE]) == {running.key}
    assert set(entries[ENDPOINT]) == {"203.0.113.7/32:443", "10.0.0.0/8", "[2001:db8::/64]:443"}
    assert set(entries[LISTENING]) == {"udp:53"}
    assert {e["origin"] for kind in entries.values() for e in kind.values()} == {"approved"}
    assert entries[EXECUTABLE][running.key]["details"] == {"path": str(copy), "sha256": sha256_of(str(copy))}


@pytest.mark.parametrize(
    "item, message",
    [
        ("xmrig", "'xmrig' is no ITEM form"),
        ("pid:abc", "expected pid:N"),
        ("pid:999999999", "no such process"),
        ("path:relative", "expected path:/absolute/path"),
        ("endpoint:10.0.0.1/8:443", "has host bits set"),
        ("endpoint:pool.example.com:3333", "'pool.example.com:3333'"),
        ("listen:sctp:9", "protocol 'sctp'"),
        ("listen:tcp:0", "port '0'"),
        ("key:things:x", "expected key:KIND:KEY"),
        ("/nonexistent/file", "cannot hash the file (unreadable)"),
    ],
)
def test_bad_items_are_refused_and_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], item: str, message: str
) -> None:
    code, out, err = run(capsys, "approve", item, "--state-dir", str(tmp_path))
    assert code == 2 and out == ""
    assert err.startswith("ddcustom baseline: ") and message in err
    assert not (tmp_path / "baseline.json").exists()


def test_a_deleted_executable_cannot_be_approved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spawn: Spawn
) -> None:
    copy = tmp_path / "gone"
    shutil.copy(SLEEP, copy)
    process = spawn([str(copy), "120"])
    wait_for_exec(process.pid, [str(copy), "120"])
    copy.unlink()
    code, _, err = run(capsys, "approve", f"pid:{process.pid}", "--state-dir", str(tmp_path))
    assert code == 2 and "its executable is deleted: it can never be known" in err


def test_forget_by_path_hash_address_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "baseline.json"
    now = time.time()
    store = BaselineStore(path, now=now, learning_seconds=3600)
    tool = {"path": "/usr/bin/tool", "sha256": "1" * 64}
    script = {
        "path": "/usr/bin/python3",
        "sha256": "2" * 64,
        "script": "/opt/x.py",
        "script_sha256": "3" * 64,
    }
    store.observe(EXECUTABLE, "k-tool", tool, now)
    store.observe(EXECUTABLE, "k-tool-v2", {**tool, "sha256": "4" * 64}, now)
    store.observe(EXECUTABLE, "k-script", script, now)
    store.observe(EXECUTABLE, "k-other", {"path": "/usr/bin/other", "sha256": "5" * 64}, now)
    Observing(store).endpoint("203.0.113.7", 443, now)
    Observing(store).listening("tcp", 22, now)
    store.flush(now)
    state = ["--state-dir", str(tmp_path)]

    code, out, _ = run(capsys, "forget", "/usr/bin/tool", *state)
    assert code == 0 and out.splitlines() == ["forgot executable k-tool", "forgot executable k-tool-v2"]
    code, out, _ = run(capsys, "forget", "3" * 64, *state)  # the script's hash
    assert code == 0 and out.splitlines() == ["forgot executable k-script"]
    code, out, _ = run(capsys, "forget", "endpoint:203.0.113.9:443", *state)  # an address of the group
    assert code == 0 and out.splitlines() == ["forgot endpoint 203.0.113.0/24:443"]
    code, out, _ = run(capsys, "forget", "key:listening:tcp:22", *state)
    assert code == 0 and out.splitlines() == ["forgot listening tcp:22"]
    code, _, err = run(capsys, "forget", "listen:tcp:22", *state)
    assert code == 1 and "nothing in the baseline matches 'listen:tcp:22'" in err
    assert set(saved(tmp_path)[EXECUTABLE]) == {"k-other"}
    assert saved(tmp_path)[ENDPOINT] == {} and saved(tmp_path)[LISTENING] == {}


def test_forget_key_of_an_approved_address_forgets_its_group_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    store = BaselineStore(tmp_path / "baseline.json", now=now)
    Observing(store).endpoint("203.0.113.20", 443, now)  # learned: the group
    store.flush(now)
    state = ["--state-dir", str(tmp_path)]
    assert run(capsys, "approve", "endpoint:203.0.113.9:443", *state)[0] == 0
    code, out, _ = run(capsys, "forget", "key:endpoint:203.0.113.9/32:443", *state)
    assert code == 0
    assert out.splitlines() == ["forgot endpoint 203.0.113.9/32:443", "forgot endpoint 203.0.113.0/24:443"]
    assert saved(tmp_path)[ENDPOINT] == {}


def test_approve_key_keeps_a_learned_entry_and_refuses_an_unknown_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    store = BaselineStore(tmp_path / "baseline.json", now=now)
    Observing(store).listening("tcp", 8443, now)
    store.flush(now)
    assert run(capsys, "approve", "key:listening:tcp:8443", "--state-dir", str(tmp_path))[0] == 0
    assert saved(tmp_path)[LISTENING]["tcp:8443"]["origin"] == "approved"
    code, _, err = run(capsys, "approve", "key:listening:tcp:1", "--state-dir", str(tmp_path))
    assert code == 1 and "no listening entry 'tcp:1'" in err


def test_relearn_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    store = BaselineStore(tmp_path / "baseline.json", now=now - 7200)
    Observing(store).listening("tcp", 8080, now - 7000)
    store.flush(now - 7000)
    assert run(capsys, "approve", "listen:tcp:22", "--state-dir", str(tmp_path))[0] == 0

    code, out, _ = run(capsys, "show", "--state-dir", str(tmp_path))
    assert code == 0
    assert "learning: started " in out and "(with BaselineLearningSeconds 86400)" in out
    assert "listening: 2" in out
    assert any(line.split()[0] == "approved" and line.endswith(" tcp:22") for line in out.splitlines())
    assert any(line.split()[0] == "learned" and line.endswith(" tcp:8080") for line in out.splitlines())

    code, out, _ = run(capsys, "relearn", "--state-dir", str(tmp_path))
    assert code == 0 and "1 learned entries dropped, approvals kept" in out
    code, out, _ = run(capsys, "show", "--json", "--state-dir", str(tmp_path))
    shown = json.loads(out)
    assert shown["epoch"] == 1 and shown["learning"] is True
    assert shown["learning_started"] >= now
    assert [entry["key"] for entry in shown["entries"][LISTENING]] == ["tcp:22"]


def test_the_state_directory_comes_from_the_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "from-config"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"StateDirectory": str(state)}))
    assert run(capsys, "approve", "listen:tcp:22", "--config", str(config))[0] == 0
    assert set(saved(state)[LISTENING]) == {"tcp:22"}
    config.write_text(json.dumps({"StateDirectory": 5}))
    assert main(["baseline", "show", "--config", str(config)]) == 2


def test_a_corrupt_baseline_is_reported_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "baseline.json").write_text("not json")
    code, _, err = run(capsys, "approve", "listen:tcp:22", "--state-dir", str(tmp_path))
    assert code == 2 and "is not a baseline file" in err
    assert (tmp_path / "baseline.json").read_text() == "not json"


def test_commands_in_other_processes_reach_a_running_component(tmp_path: Path, spawn: Spawn) -> None:
    """The issue's workflow at the store level: after learning, a copy of a system binary under a new
    name is new; the operator approves it from another process while the component keeps flushing; the
    component then knows it; forgotten, it is new again."""
    path = tmp_path / "baseline.json"
    start = time.time()
    store = BaselineStore(path, now=start, learning_seconds=0, flush_seconds=0)
    seen = Observing(store)
    reader = IdentityReader()
    copy = tmp_path / "kworker"
    shutil.copy(SLEEP, copy)
    process = spawn([str(copy), "120"])
    wait_for_exec(process.pid, [str(copy), "120"])
    identity = reader.read(process.pid)
    assert identity is not None and not seen.executable(identity, time.time())

    def command(*args: str) -> None:
        cli = [sys.executable, "-m", "ddcustom", "baseline", *args, "--state-dir", str(tmp_path)]
        child = spawn(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while child.poll() is None:  # the component keeps working and writing meanwhile
            seen.listening("tcp", 22, time.time())
            store.tick(time.time())
        assert child.returncode == 0, child.stderr.read() if child.stderr else ""

    command("approve", f"pid:{process.pid}")
    store.tick(time.time())
    assert seen.executable(identity, time.time())
    command("forget", str(copy))
    store.tick(time.time())
    assert not seen.executable(identity, time.time())
    store.close(time.time())
    assert saved(tmp_path)[EXECUTABLE] == {}


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
    reason="needs root and a system python3: an operator's sudo next to a component user",
)
def test_an_operator_running_as_root_leaves_the_files_to_the_component_user(
    capsys: pytest.CaptureFixture[str],
) -> None:
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory() as top:  # not under pytest's root-only tmp_path: nobody must reach it
        os.chmod(top, 0o711)
        state = Path(top) / "state"
        state.mkdir(mode=0o700)
        os.chown(state, nobody.pw_uid, nobody.pw_gid)
        assert run(capsys, "approve", "listen:tcp:22", "--state-dir", str(state))[0] == 0
        for name in ("baseline.json", "baseline.lock"):
            info = (state / name).stat()
            assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid)
            assert stat.S_IMODE(info.st_mode) == 0o600
        # the component's user can still lock, read and write it
        probe = (
            "import time; from ddcustom.device.baseline.store import BaselineStore; "
            "from ddcustom.device.baseline.kinds.kind import Context; "
            "from ddcustom.device.baseline.kinds.listening import ListeningWatch; "
            f"s = BaselineStore({str(state / 'baseline.json')!r}, now=time.time()); "
            "ListeningWatch(Context()).observe_listening(s, 'udp', 53, time.time()); s.flush(time.time()); "
            "print(sorted(s.entries('listening')))"
        )
        source = str(Path(ddcustom.__file__).resolve().parents[1])
        result = subprocess.run(
            ["/usr/bin/python3", "-c", probe],
            user="nobody",
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": source},
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "['tcp:22', 'udp:53']"


def test_show_takes_the_learning_period_from_the_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    BaselineStore(tmp_path / "state" / "baseline.json", now=time.time(), learning_seconds=60).close(
        time.time()
    )
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"StateDirectory": str(tmp_path / "state"), "BaselineLearningSeconds": 60}))
    code, out, _ = run(capsys, "show", "--config", str(config))
    assert code == 0 and "(with BaselineLearningSeconds 60)" in out


def test_approve_what_a_known_program_may_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A higher CPU level for a program, a library for every program, network use for a program."""
    state = tmp_path / "state"
    tool = tmp_path / "tool"
    shutil.copy("/bin/sleep", tool)
    library = tmp_path / "libvendor.so"
    library.write_bytes(b"\x7fELF vendor library")
    program_key = IdentityReader().read_file(str(tool)).key
    hex64 = "ab" * 32
    items = (f"cpu:{tool}=150", f"library:{library}", f"library:sha256:{hex64}", f"network:outbound:{tool}")
    for item in items:
        code, _, err = run(capsys, "approve", item, "--state-dir", str(state))
        assert code == 0, err
    entries = saved(state)
    level = entries["program_cpu"][program_key]
    assert (level["origin"], level["details"]) == (
        "approved",
        {"path": str(tool), "process": 150.0, "all": 150.0},
    )
    assert set(entries["program_code"]) == {f"* | path:{library}", f"* | sha256:{hex64}"}
    assert set(entries["program_network"]) == {f"{program_key} | outbound"}

    for bad in (f"cpu:{tool}", f"cpu:{tool}=lots", f"cpu:sha256:{hex64}=50", "library:tool", "network:up:/x"):
        code, _, err = run(capsys, "approve", bad, "--state-dir", str(state))
        assert code == 2 and "expected" in err, (bad, err)
