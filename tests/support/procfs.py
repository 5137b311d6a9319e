"""Helpers for the baseline tests: processes that are always reaped, and fixture /proc trees."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from ddcustom.device.sample import ProcessInfo
from support.baseline import KIND_NAMES
from support.helpers import poll, reap, start

Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a process in its own session (output discarded); its whole group is reaped at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def run(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        started.append(start(args, **kwargs))
        return started[-1]

    yield run
    for process in started:
        reap(process)


def cmdline_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [arg.decode() for arg in raw.rstrip(b"\0").split(b"\0")] if raw else []


def wait_for_exec(pid: int, args: list[str]) -> None:
    """Wait until process ``pid`` runs ``args`` (Popen returns before the child's exec)."""
    poll(lambda: cmdline_of(pid) == args, f"pid {pid} to exec {args}")


def fake_process(
    proc_root: Path,
    pid: int,
    exe: Optional[str],
    cmdline: list[str],
    cwd: Optional[str] = None,
    fds: Optional[dict[int, str]] = None,
) -> None:
    """A /proc/PID directory: exe and cwd links, cmdline, root linked to "/", fd links."""
    base = proc_root / str(pid)
    base.mkdir(parents=True)
    if exe is not None:
        os.symlink(exe, base / "exe")
    (base / "cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in cmdline))
    if cwd is not None:
        os.symlink(cwd, base / "cwd")
    os.symlink("/", base / "root")
    (base / "fd").mkdir()
    for fd, target in (fds or {}).items():
        os.symlink(target, base / "fd" / str(fd))


def read_baseline_file(path: Path) -> dict[str, Any]:
    """The baseline file as one mapping: its header, and entries and tombstones by kind and key (read
    here, independently of the code under test, from the format file.py documents)."""
    header, *items = [json.loads(line) for line in path.read_text().splitlines()]
    entries: dict[str, dict[str, Any]] = {kind: {} for kind in KIND_NAMES}
    forgotten: dict[str, dict[str, float]] = {kind: {} for kind in KIND_NAMES}
    for item in items:
        if item[0] == "forgotten":
            forgotten.setdefault(item[1], {})[item[2]] = item[3]
        else:
            kind, key, first_seen, last_seen, origin, details = item
            entries.setdefault(kind, {})[key] = {
                "first_seen": first_seen,
                "last_seen": last_seen,
                "origin": origin,
                "details": details,
            }
    assert header["entries"] == sum(map(len, entries.values()))
    assert header["forgotten"] == sum(map(len, forgotten.values()))
    return {**header, "entries": entries, "forgotten": forgotten}


class FixtureHost:
    """A fixture /proc tree under ``root``/proc whose processes run program files under ``root``/bin, and
    the process table the process source would read of it."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.bin = root / "bin"
        self.proc.mkdir(parents=True)
        self.bin.mkdir(parents=True)
        self.table: dict[int, ProcessInfo] = {}

    def program(self, name: str) -> Path:
        """A program file of its own content (so its own SHA-256)."""
        path = self.bin / name
        path.write_bytes(f"#!/bin/false\nprogram {name}\n".encode())
        return path

    def start(self, pid: int, program: Path, name: Optional[str] = None, argv0: Optional[str] = None) -> None:
        """Process ``pid`` running ``program``, named ``name`` (comm; the program's name by default)."""
        fake_process(self.proc, pid, str(program), [argv0 or str(program)])
        argv0_name = os.path.basename(argv0 or str(program))
        self.table[pid] = ProcessInfo(pid, 1, name or program.name, argv0_name, argv0 or str(program))
        self.rename(pid, name or program.name)

    def rename(self, pid: int, name: str, state: str = "S") -> None:
        """What /proc/PID/stat says of the process now: ``name`` (another after it executed another
        program) and ``state`` (Z: exiting), started at tick 0 as the table says."""
        (self.proc / str(pid) / "stat").write_text(f"{pid} ({name}) {state} 1 " + "0 " * 20 + "\n")

    def kernel_thread(self, pid: int, name: str) -> None:
        self.table[pid] = ProcessInfo(pid, 2, name, "", "")

    def stop(self, pid: int) -> None:
        del self.table[pid]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deny_exe_links(monkeypatch: pytest.MonkeyPatch, proc_root: Path, pids: Iterable[int]) -> None:
    """Make the exe links of ``pids`` under ``proc_root`` unreadable (EACCES), as another user's are to a
    component without the privilege (root reads every link, so a test cannot make it so otherwise)."""
    denied = {f"{proc_root}/{pid}/exe" for pid in pids}
    readlink = os.readlink

    def denying(path: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(path) in denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return readlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", denying)


def exec_while_read(
    monkeypatch: pytest.MonkeyPatch, proc_root: Path, pid: int, exe: str, cmdline: list[str]
) -> None:
    """Fixture process ``pid`` executes ``exe`` with ``cmdline`` right after its exe link is first read:
    what a reader meets when a process executes another program while it is read (a fork storm's shell
    child becoming true(1))."""
    base = Path(proc_root) / str(pid)
    link = str(base / "exe")
    readlink = os.readlink
    executed: list[bool] = []

    def reading(path: Any, *args: Any, **kwargs: Any) -> Any:
        target = readlink(path, *args, **kwargs)
        if os.fspath(path) == link and not executed:
            executed.append(True)
            os.remove(link)
            os.symlink(exe, link)
            (base / "cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in cmdline))
        return target

    monkeypatch.setattr(os, "readlink", reading)


def spare_library() -> str:
    """A shared object of the C library that no program loads unless told to (libBrokenLocale), for
    tests that load one at run time or preload one."""
    for folder in (
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/usr/lib",
    ):
        candidate = os.path.join(folder, "libBrokenLocale.so.1")
        if os.path.isfile(candidate):
            return candidate
    raise AssertionError("no libBrokenLocale.so.1 (part of glibc) on this machine")
