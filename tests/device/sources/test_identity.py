"""Executable identity: real processes from the real /proc, and fixture /proc trees."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ddcustom
from ddcustom.device.sources.identity import (
    _PERL,
    _PYTHON,
    _SHELL,
    DELETED,
    INLINE,
    MEMFD,
    NO_ACCESS,
    NOT_A_FILE,
    STDIN,
    TOO_LARGE,
    UNREADABLE,
    ExecutableIdentity,
    IdentityReader,
    identity_key,
    interpreter_syntax,
    java_argument,
    script_argument,
)
from support.helpers import poll
from support.procfs import Spawn, deny_exe_links, exec_while_read, fake_process, spawn, wait_for_exec

__all__ = ["spawn"]  # the fixture, imported for the tests below

PYTHON = os.path.realpath(sys.executable)
SLEEP = shutil.which("sleep") or "/bin/sleep"
SLEEPER = "import time\ntime.sleep(120)\n"


def sha256_of(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


# ---- command lines -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["python3", "/dev/shm/x.py", "--flag"], ("path", "/dev/shm/x.py")),
        (["python3", "-u", "-W", "ignore", "-X", "dev", "x.py"], ("path", "x.py")),
        (["python3", "-Wignore", "-Bu", "x.py"], ("path", "x.py")),
        (["python3", "-m", "http.server", "8000"], ("module", "http.server")),
        (["python3", "-mhttp.server"], ("module", "http.server")),
        (["python3", "-Bm", "pip"], ("module", "pip")),
        (["python3", "-c", "print(1)"], ("inline", "")),
        (["python3", "-uc", "print(1)"], ("inline", "")),
        (["python3", "-"], ("stdin", "")),
        (["python3", "--", "x.py"], ("path", "x.py")),
        (["python3", "--check-hash-based-pycs", "always", "x.py"], ("path", "x.py")),
        (["python3"], ("", "")),
    ],
)
def test_python_command_lines(args: list[str], expected: tuple[str, str]) -> None:
    assert script_argument(args, _PYTHON) == expected


@pytest.mark.parametrize(
    "args, expected",
    [
        (["bash", "/opt/run.sh", "a"], ("path", "/opt/run.sh")),
        (["sh", "-e", "-o", "pipefail", "run.sh"], ("path", "run.sh")),
        (["bash", "-lc", "curl x | sh"], ("inline", "")),
        (["sh", "-ec", "xmrig"], ("inline", "")),
        (["sh", "-s", "arg"], ("stdin", "")),
        (["bash", "+x", "run.sh"], ("path", "run.sh")),
        (["bash", "--rcfile", "/etc/rc", "run.sh"], ("path", "run.sh")),
        (["-bash"], ("", "")),
    ],
)
def test_shell_command_lines(args: list[str], expected: tuple[str, str]) -> None:
    assert script_argument(args, _SHELL) == expected


@pytest.mark.parametrize(
    "args, expected",
    [
        (["perl", "-Mstrict", "-w", "x.pl"], ("path", "x.pl")),
        (["perl", "-lane", "print"], ("inline", "")),
        (["perl", "-l0", "-e", "print"], ("inline", "")),
        (["perl", "-I/opt/lib", "x.pl"], ("path", "x.pl")),
    ],
)
def test_perl_command_lines(args: list[str], expected: tuple[str, str]) -> None:
    assert script_argument(args, _PERL) == expected


@pytest.mark.parametrize(
    "args, expected",
    [
        (["java", "-Xmx1g", "-jar", "app.jar", "--port", "1"], ("path", "app.jar")),
        (["java", "-cp", "lib/*", "com.example.Main"], ("class", "com.example.Main")),
        (["java", "-Dx=y", "--module", "m/com.example.Main"], ("module", "m/com.example.Main")),
        (["java", "--module=m/c"], ("module", "m/c")),
        (["java", "Hello.java"], ("path", "Hello.java")),
        (["java", "-version"], ("", "")),
    ],
)
def test_java_command_lines(args: list[str], expected: tuple[str, str]) -> None:
    assert java_argument(args) == expected


@pytest.mark.parametrize(
    "path, argv0, interpreter",
    [
        ("/usr/bin/python3.11", "python3", True),
        ("/usr/bin/python3.12d", "python3", True),
        ("/usr/bin/dash", "sh", True),
        ("/usr/bin/bash", "bash", True),
        ("/usr/bin/perl5.36.0", "perl", True),
        ("/usr/bin/node", "node", True),
        ("/usr/bin/php8.2", "php", True),
        ("/usr/bin/luajit", "luajit", True),
        ("/usr/bin/busybox", "sh", True),
        ("/usr/bin/busybox", "-ash", True),
        ("/usr/bin/busybox", "wget", False),
        ("/usr/bin/xmrig", "xmrig", False),
        ("/usr/bin/pythonista", "pythonista", False),
        ("/usr/sbin/sshd", "sshd", False),
    ],
)
def test_interpreters_are_recognised_by_their_resolved_name(path: str, argv0: str, interpreter: bool) -> None:
    assert (interpreter_syntax(path, argv0) is not None) is interpreter


def test_keys_are_unambiguous_whatever_the_paths_hold() -> None:
    sha = "a" * 64
    plain = identity_key("/usr/bin/python3 " + sha + " /x.py", sha)
    with_script = identity_key("/usr/bin/python3", sha, "/x.py", sha)
    assert plain != with_script
    assert identity_key("/opt/my app/bin", sha) == f"{sha} /opt/my%20app/bin"
    assert identity_key("/a%20b", sha) != identity_key("/a b", sha)


# ---- real processes ------------------------------------------------------------------------------


def test_an_interpreted_script_is_part_of_the_identity(tmp_path: Path, spawn: Spawn) -> None:
    script = tmp_path / "x.py"
    script.write_text(SLEEPER)
    other = tmp_path / "y.py"
    other.write_text(SLEEPER + "# another program\n")
    first = spawn([sys.executable, str(script)])
    second = spawn([sys.executable, str(other)])
    inline = spawn([sys.executable, "-c", SLEEPER])
    for process, args in (
        (first, [sys.executable, str(script)]),
        (second, [sys.executable, str(other)]),
        (inline, [sys.executable, "-c", SLEEPER]),
    ):
        wait_for_exec(process.pid, args)

    reader = IdentityReader()
    identity = reader.read(first.pid)
    assert identity == ExecutableIdentity(
        path=PYTHON,
        sha256=sha256_of(PYTHON),
        script=str(script),
        script_sha256=sha256_of(str(script)),
    )
    assert identity.knowable
    other_identity = reader.read(second.pid)
    inline_identity = reader.read(inline.pid)
    assert other_identity is not None and inline_identity is not None
    assert inline_identity.script == INLINE and inline_identity.script_sha256 == ""
    assert len({identity.key, other_identity.key, inline_identity.key}) == 3
    assert identity.details() == {
        "path": PYTHON,
        "sha256": sha256_of(PYTHON),
        "script": str(script),
        "script_sha256": sha256_of(str(script)),
    }


def test_a_relative_script_is_resolved_against_the_process_cwd(tmp_path: Path, spawn: Spawn) -> None:
    (tmp_path / "x.py").write_text(SLEEPER)
    process = spawn([sys.executable, "x.py"], cwd=tmp_path)
    wait_for_exec(process.pid, [sys.executable, "x.py"])
    identity = IdentityReader().read(process.pid)
    assert identity is not None
    assert identity.script == str(tmp_path / "x.py")
    assert identity.script_sha256 == sha256_of(str(tmp_path / "x.py"))


def test_a_python_module_is_part_of_the_identity(tmp_path: Path, spawn: Spawn) -> None:
    (tmp_path / "quietmod.py").write_text(SLEEPER)
    args = [sys.executable, "-m", "quietmod"]
    process = spawn(args, cwd=tmp_path)
    wait_for_exec(process.pid, args)
    identity = IdentityReader().read(process.pid)
    assert identity is not None
    assert (identity.script, identity.script_sha256) == ("-m quietmod", "")
    assert identity.content_path == "" and identity.content_sha256 == ""


def test_a_shell_script_run_by_sh(tmp_path: Path, spawn: Spawn) -> None:
    script = tmp_path / "run.sh"
    script.write_text("while :; do sleep 1; done\n")
    process = spawn(["/bin/sh", str(script)])
    wait_for_exec(process.pid, ["/bin/sh", str(script)])
    identity = IdentityReader().read(process.pid)
    assert identity is not None
    assert identity.path == os.path.realpath("/bin/sh")
    assert (identity.script, identity.script_sha256) == (str(script), sha256_of(str(script)))


def test_a_program_that_is_no_interpreter_has_no_script(tmp_path: Path, spawn: Spawn) -> None:
    process = spawn([SLEEP, "120"])
    wait_for_exec(process.pid, [SLEEP, "120"])
    identity = IdentityReader().read(process.pid)
    real = os.path.realpath(SLEEP)
    assert identity == ExecutableIdentity(path=real, sha256=sha256_of(real))
    assert identity.content_path == real and identity.content_sha256 == sha256_of(real)


def test_a_deleted_executable_is_never_knowable(tmp_path: Path, spawn: Spawn) -> None:
    copy = tmp_path / "kworker"
    shutil.copy(SLEEP, copy)
    process = spawn([str(copy), "120"])
    wait_for_exec(process.pid, [str(copy), "120"])
    reader = IdentityReader()
    before = reader.read(process.pid)
    assert before is not None and before.knowable and before.path == str(copy)
    copy.unlink()
    after = reader.read(process.pid)
    assert after == ExecutableIdentity(path=str(copy), sha256="", reason_unknowable=DELETED)
    assert not after.knowable


def test_a_memfd_executable_is_never_knowable(spawn: Spawn) -> None:
    fd = os.memfd_create("miner", 0)
    try:
        with open(SLEEP, "rb") as handle:
            os.write(fd, handle.read())
        process = spawn([f"/proc/self/fd/{fd}", "120"], pass_fds=(fd,))
        poll(lambda: os.readlink(f"/proc/{process.pid}/exe").startswith("/memfd:"), "exec from memfd")
    finally:
        os.close(fd)
    identity = IdentityReader().read(process.pid)
    assert identity is not None
    assert identity.reason_unknowable == MEMFD and identity.sha256 == ""
    assert identity.path.startswith("/memfd:miner")


SYSTEM_PYTHON = "/usr/bin/python3"  # the test's own interpreter may live in root's home


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root and a system python3 to run a reader as another user",
)
def test_a_process_the_reader_may_not_inspect_is_no_access(tmp_path: Path, spawn: Spawn) -> None:
    target = spawn([SLEEP, "120"])
    wait_for_exec(target.pid, [SLEEP, "120"])
    probe = (
        "from ddcustom.device.sources.identity import IdentityReader; "
        f"print(IdentityReader().read({target.pid}).reason_unknowable)"
    )
    source = str(Path(ddcustom.__file__).resolve().parents[1])
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", probe],
        user="nobody",
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": source},
        check=True,
    )
    assert result.stdout.strip() == NO_ACCESS


# ---- fixture /proc trees ---------------------------------------------------------------------------


def test_fixture_memfd_deleted_and_anonymous_links(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_process(proc, 10, "/memfd:x (deleted)", ["x"])
    fake_process(proc, 11, "/usr/bin/xmrig (deleted)", ["kworker/0:2"])
    fake_process(proc, 12, "anon_inode:[x]", ["x"])
    reader = IdentityReader(proc_root=str(proc))
    assert reader.read(10) == ExecutableIdentity(
        path="/memfd:x (deleted)", sha256="", reason_unknowable=MEMFD
    )
    assert reader.read(11) == ExecutableIdentity(path="/usr/bin/xmrig", sha256="", reason_unknowable=DELETED)
    assert reader.read(12) == ExecutableIdentity(
        path="anon_inode:[x]", sha256="", reason_unknowable=NOT_A_FILE
    )


def test_fixture_unreadable_executables(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (tmp_path / "adir").mkdir()
    fake_process(proc, 20, str(tmp_path / "missing"), ["missing"])
    fake_process(proc, 21, str(tmp_path / "adir"), ["adir"])
    reader = IdentityReader(proc_root=str(proc))
    for pid, path in ((20, "missing"), (21, "adir")):
        identity = reader.read(pid)
        assert identity == ExecutableIdentity(
            path=str(tmp_path / path), sha256="", reason_unknowable=UNREADABLE
        )


def test_fixture_an_exiting_process_has_no_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zombie keeps its /proc folder, not its executable: read while it exits (a fork storm's), it is
    gone, not an unreadable executable nor another user's process without access."""
    proc = tmp_path / "proc"
    for pid in (20, 21):
        fake_process(proc, pid, str(tmp_path / "exited"), ["true"])
    deny_exe_links(monkeypatch, proc, [21])
    reader = IdentityReader(proc_root=str(proc))
    for pid in (20, 21):
        (proc / str(pid) / "stat").write_text(f"{pid} (true) R 1 " + "0 " * 20)
    assert reader.read(20) == ExecutableIdentity(
        path=str(tmp_path / "exited"), sha256="", reason_unknowable=UNREADABLE
    )
    assert reader.read(21) == ExecutableIdentity(path="", sha256="", reason_unknowable=NO_ACCESS)
    for pid in (20, 21):
        (proc / str(pid) / "stat").write_text(f"{pid} (true) Z 1 " + "0 " * 20)
    assert reader.read(20) is None
    assert reader.read(21) is None


def test_fixture_a_process_read_while_it_executes_another_program_is_judged_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork storm's shell child executing true(1) while it is read: the link said the shell, then the
    command line and the file were true's, an identity of neither program. None this time, true's next."""
    shell, true = tmp_path / "dash", tmp_path / "true"
    shell.write_bytes(b"a shell")
    true.write_bytes(b"true(1)")
    proc = tmp_path / "proc"
    fake_process(proc, 50, str(shell), ["sh", "-c", "while :; do true & done"])
    exec_while_read(monkeypatch, proc, 50, str(true), [str(true)])
    reader = IdentityReader(proc_root=str(proc))
    assert reader.read(50) is None
    assert reader.read(50) == ExecutableIdentity(path=str(true), sha256=sha256_of(str(true)))


def test_fixture_an_interpreter_read_before_its_arguments_are_set_is_judged_next_time(tmp_path: Path) -> None:
    """Right after an exec the kernel shows the new executable before the new arguments: an interpreter
    read then has an empty command line, which would be an interactive one. None the first time; a
    process that cleared its own arguments is judged from the second read on."""
    python = tmp_path / "python3"
    python.write_bytes(b"an interpreter")
    proc = tmp_path / "proc"
    fake_process(proc, 51, str(python), [])
    reader = IdentityReader(proc_root=str(proc))
    assert reader.read(51) is None
    assert reader.read(51) == ExecutableIdentity(path=str(python), sha256=sha256_of(str(python)))


def test_fixture_gone_process_and_kernel_thread_have_no_identity(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_process(proc, 2, None, [])  # a kernel thread: no exe link
    reader = IdentityReader(proc_root=str(proc))
    assert reader.read(2) is None
    assert reader.read(99999) is None


def test_each_file_is_hashed_once_until_it_changes(tmp_path: Path) -> None:
    exe = tmp_path / "app"
    exe.write_bytes(b"\x7fELF version 1")
    proc = tmp_path / "proc"
    fake_process(proc, 30, str(exe), ["app"])
    fake_process(proc, 31, str(exe), ["app", "--other"])
    reader = IdentityReader(proc_root=str(proc), recheck_seconds=0)
    first = reader.read(30)
    for _ in range(5):
        assert reader.read(30) == first
        assert reader.read(31) == first
    assert reader.files_hashed == 1
    assert first is not None and first.sha256 == hashlib.sha256(b"\x7fELF version 1").hexdigest()
    exe.write_bytes(b"\x7fELF version 2, longer")
    changed = reader.read(30)
    assert reader.files_hashed == 2
    assert changed is not None and changed.sha256 == hashlib.sha256(b"\x7fELF version 2, longer").hexdigest()
    assert changed.key != first.key


def test_a_process_is_looked_at_again_after_recheck_seconds_or_at_once_when_it_execs(tmp_path: Path) -> None:
    app, other = tmp_path / "app", tmp_path / "other"
    app.write_bytes(b"version 1")
    other.write_bytes(b"another program")
    interpreter = tmp_path / "python3"
    interpreter.write_bytes(b"an interpreter")
    proc = tmp_path / "proc"
    fake_process(proc, 90, str(app), ["app"])
    fake_process(proc, 91, str(interpreter), ["python3", "/srv/a.py"])
    now = [1000.0]
    reader = IdentityReader(proc_root=str(proc), recheck_seconds=60, clock=lambda: now[0])
    first = reader.read(90)
    script = reader.read(91)
    assert first is not None and script is not None
    app.write_bytes(b"version 2, changed in place")
    now[0] += 59
    assert reader.read(90) == first  # not looked at again yet
    assert reader.read(91, cmdline=["python3", "/srv/b.py"]) != script  # another command line: at once
    now[0] += 2
    assert reader.read(90) != first
    os.remove(proc / "90" / "exe")
    os.symlink(other, proc / "90" / "exe")  # the process execs another file
    switched = reader.read(90)
    assert switched is not None and switched.path == str(other)


def test_the_caches_are_bounded(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid in range(40, 50):
        exe = tmp_path / f"app{pid}"
        exe.write_bytes(f"program {pid}".encode())
        fake_process(proc, pid, str(exe), [exe.name])
    reader = IdentityReader(proc_root=str(proc), cache_size=4)
    for pid in range(40, 50):
        assert reader.read(pid) is not None
    assert len(reader._hashes) == 4 and len(reader._identities) == 4
    reader.read(40)  # fell out of the cache: hashed again
    assert reader.files_hashed == 11


def test_a_file_over_the_size_bound_is_too_large(tmp_path: Path) -> None:
    exe = tmp_path / "big"
    exe.write_bytes(b"x" * 5000)
    proc = tmp_path / "proc"
    fake_process(proc, 60, str(exe), ["big"])
    identity = IdentityReader(proc_root=str(proc), max_hash_bytes=4096).read(60)
    assert identity == ExecutableIdentity(path=str(exe), sha256="", reason_unknowable=TOO_LARGE)


def test_fixture_script_from_a_process_fd_is_read_from_that_process(tmp_path: Path) -> None:
    interpreter = tmp_path / "bash"
    interpreter.write_bytes(b"a shell")
    piped = tmp_path / "fetched.sh"
    piped.write_text("xmrig --url pool\n")
    proc = tmp_path / "proc"
    fake_process(proc, 70, str(interpreter), ["bash", "/dev/fd/63"], fds={63: str(piped)})
    fake_process(proc, 71, str(interpreter), ["bash"], fds={0: str(piped)})
    fake_process(proc, 72, str(interpreter), ["bash", "-"], fds={0: str(piped)})
    reader = IdentityReader(proc_root=str(proc))
    identity = reader.read(70)
    assert identity is not None
    assert (identity.script, identity.script_sha256) == ("/dev/fd/63", sha256_of(str(piped)))
    interactive = reader.read(71)
    assert interactive is not None and interactive.script == ""
    from_stdin = reader.read(72)
    assert from_stdin is not None and from_stdin.script == STDIN


def test_fixture_cmdline_passed_by_the_caller_is_used(tmp_path: Path) -> None:
    interpreter = tmp_path / "python3.11"
    interpreter.write_bytes(b"an interpreter")
    proc = tmp_path / "proc"
    fake_process(proc, 80, str(interpreter), ["python3", "/unused.py"], cwd=str(tmp_path))
    identity = IdentityReader(proc_root=str(proc)).read(80, cmdline=["python3", "-m", "server"])
    assert identity is not None and identity.script == "-m server"


def test_read_file_gives_the_identity_a_process_running_it_would_have(tmp_path: Path, spawn: Spawn) -> None:
    link = tmp_path / "sleep-link"
    os.symlink(SLEEP, link)
    process = spawn([str(link), "120"])
    wait_for_exec(process.pid, [str(link), "120"])
    reader = IdentityReader()
    assert reader.read_file(str(link)) == reader.read(process.pid)
