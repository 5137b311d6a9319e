"""What known programs do: the CPU and GPU levels learned per program (windows, floors, the processes of a
program together, restarts, late programs, approvals), the code programs map (real processes: a library
loaded at run time with ctypes, one preloaded with LD_PRELOAD), and the sockets programs hold (real
sockets). Fixture processes where the sample is built by hand; a clock the test moves."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import pytest

from ddcustom.device.baseline.kinds.levels import FLOOR, WINDOW_SECONDS, Window
from ddcustom.device.baseline.kinds.program_code import RECHECK_SECONDS
from ddcustom.device.baseline.observer import BaselineObserver
from ddcustom.device.sample import (
    BaselineStats,
    Connection,
    GpuProcess,
    GpuStats,
    ListeningPort,
    NetCounters,
    NetworkStats,
    ProcessInfo,
    ProcessStats,
    Sample,
)
from ddcustom.device.sources.identity import IdentityReader
from ddcustom.device.sources.mapped_code import MappedCodeReader
from ddcustom.device.sources.process_details import ProcessDetails
from support.baseline import PROGRAM_CPU
from support.helpers import poll
from support.procfs import FixtureHost, sha256_of, spare_library

T0 = 1_800_000_000.0
LEARNING = 600
STEP = 5.0  # seconds between samples
QUIET = BaselineStats(learning=False)


class Config:
    """What the observer reads of the configuration."""

    def __init__(self, path: Path, **changes: Any) -> None:
        self.baseline_file = str(path)
        self.baseline_learning_seconds = LEARNING
        self.baseline_forget_seconds = 90 * 86400
        self.approved_executables: tuple[str, ...] = ()
        self.approved_endpoints: tuple[str, ...] = ()
        self.approved_libraries: tuple[str, ...] = ()
        self.approved_cpu_levels: tuple[tuple[str, float], ...] = ()
        self.fleet_known_executables: tuple[str, ...] = ()
        self.allowed_gpu_processes: tuple[str, ...] = ()
        for name, value in changes.items():
            setattr(self, name, value)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def host(tmp_path: Path) -> FixtureHost:
    return FixtureHost(tmp_path / "host")


def observer_on(host: FixtureHost, clock: Clock, config: Config) -> BaselineObserver:
    observer = BaselineObserver(IdentityReader(str(host.proc)), ProcessDetails(str(host.proc)), clock=clock)
    observer.configure(config, enabled=True)
    return observer


def run(
    observer: BaselineObserver,
    host: FixtureHost,
    clock: Clock,
    seconds: float,
    cpu: dict[int, float],
    gpu: Optional[dict[int, float]] = None,
) -> Optional[BaselineStats]:
    """Samples every STEP seconds for ``seconds``, the processes using ``cpu`` (% of one core) and
    ``gpu`` (% of the SMs); the baseline statistics of the last."""
    stats = None
    end = clock.now + seconds
    while clock.now < end:
        clock.now += STEP
        processes = ProcessStats(0, (), (), table=dict(host.table), cpu_percent=dict(cpu))
        gpu_processes = tuple(GpuProcess(pid, "p", 0, None, sm, "watched") for pid, sm in (gpu or {}).items())
        gpu_stats = GpuStats(50.0, 100.0, 1400.0, 30.0, processes=gpu_processes) if gpu is not None else None
        sample = Sample(time=clock.now, monotonic=clock.now, processes=processes, gpu=gpu_stats)
        stats = observer.observe(sample).baseline
    return stats


# ---- levels ---------------------------------------------------------------------------------------


def test_a_window_gives_a_level_once_it_covers_its_length() -> None:
    window = Window()
    levels = [window.add(t, 40.0) for t in range(0, int(WINDOW_SECONDS) + 10, 5)]
    assert levels[: int(WINDOW_SECONDS) // 5] == [None] * (int(WINDOW_SECONDS) // 5)
    assert levels[-1] == 40.0
    # the values of the last 30 s: at 20, 25, 30, 35 and now, at 45
    assert window.add(WINDOW_SECONDS + 15, 100.0) == pytest.approx((4 * 40.0 + 100.0) / 5)


def test_a_process_above_its_programs_learned_level_is_named_with_both_levels(
    host: FixtureHost, tmp_path: Path
) -> None:
    clock = Clock()
    app = host.program("infer")
    host.start(100, app)
    observer = observer_on(host, clock, Config(tmp_path / "baseline.json"))
    run(observer, host, clock, LEARNING / 2, {100: 60.0})
    run(observer, host, clock, LEARNING / 2 + STEP, {100: 20.0})  # learning is over; its level stays 60

    assert run(observer, host, clock, 2 * WINDOW_SECONDS, {100: 60.0}) == BaselineStats(learning=False)
    stats = run(observer, host, clock, 2 * WINDOW_SECONDS, {100: 95.0})
    assert stats is not None and stats.cpu_above_level is not None
    above = stats.cpu_above_level
    assert (above.pid, above.program, above.level) == (100, str(app), "process")
    assert (above.allowed, above.now, above.excess) == (60.0, 95.0, 35.0)


def test_a_program_seen_idle_may_use_the_floor(host: FixtureHost, tmp_path: Path) -> None:
    """A program that used nothing while learning (sleep): a preloaded thread at half a core is above
    the floor by half a core less the floor."""
    clock = Clock()
    sleeper = host.program("sleep")
    host.start(200, sleeper)
    observer = observer_on(host, clock, Config(tmp_path / "baseline.json"))
    run(observer, host, clock, LEARNING + STEP, {200: 0.0})

    assert run(observer, host, clock, 2 * WINDOW_SECONDS, {200: FLOOR}) == BaselineStats(learning=False)
    stats = run(observer, host, clock, 2 * WINDOW_SECONDS, {200: 50.0})
    assert stats is not None and stats.cpu_above_level is not None
    assert (stats.cpu_above_level.allowed, stats.cpu_above_level.excess) == (FLOOR, 50.0 - FLOOR)


def test_the_processes_of_a_program_together_have_their_own_level(host: FixtureHost, tmp_path: Path) -> None:
    """Four workers at 30 % each while learning; eight at 30 % after: no one worker is above its level,
    the eight together are."""
    clock = Clock()
    worker = host.program("worker")
    for pid in range(300, 308):
        host.start(pid, worker)
    observer = observer_on(host, clock, Config(tmp_path / "baseline.json"))
    four = {pid: 30.0 if pid < 304 else 0.0 for pid in range(300, 308)}
    run(observer, host, clock, LEARNING + STEP, four)

    stats = run(observer, host, clock, 2 * WINDOW_SECONDS, dict.fromkeys(range(300, 308), 30.0))
    assert stats is not None and stats.cpu_above_level is not None
    above = stats.cpu_above_level
    assert (above.level, above.allowed, above.now, above.excess) == ("all", 120.0, 240.0, 120.0)


def test_learned_levels_survive_a_restart_and_merge_by_their_maximum(
    host: FixtureHost, tmp_path: Path
) -> None:
    clock = Clock()
    app = host.program("infer")
    host.start(100, app)
    path = tmp_path / "baseline.json"
    first = observer_on(host, clock, Config(path))
    run(first, host, clock, LEARNING / 2, {100: 70.0})
    first.close()

    second = observer_on(host, clock, Config(path))  # restarted: the level is read back
    run(second, host, clock, LEARNING / 2 + STEP, {100: 10.0})
    assert second.store is not None
    [entry] = second.store.entries(PROGRAM_CPU).values()
    assert entry.details["process"] == 70.0
    assert run(second, host, clock, 2 * WINDOW_SECONDS, {100: 70.0}) == BaselineStats(learning=False)


def test_a_program_known_only_after_learning_learns_its_level_from_its_first_sight(
    host: FixtureHost, tmp_path: Path
) -> None:
    """An upgrade brings the level kinds to a learned baseline: the programs it runs learn their level
    for a learning period from their first sight, then alarm above it."""
    clock = Clock()
    app = host.program("infer")
    host.start(100, app)
    path = tmp_path / "baseline.json"
    observer = observer_on(host, clock, Config(path))
    run(observer, host, clock, LEARNING + STEP, {100: 80.0})
    assert observer.store is not None
    observer.store.forget([(PROGRAM_CPU, key) for key in observer.store.entries(PROGRAM_CPU)], clock.now)

    assert run(observer, host, clock, LEARNING / 2, {100: 80.0}) == BaselineStats(learning=False)
    run(observer, host, clock, LEARNING / 2, {100: 80.0})
    stats = run(observer, host, clock, 2 * WINDOW_SECONDS, {100: 120.0})
    assert stats is not None and stats.cpu_above_level is not None
    assert stats.cpu_above_level.allowed == 80.0


def test_an_approved_level_lets_a_program_use_more(host: FixtureHost, tmp_path: Path) -> None:
    clock = Clock()
    app = host.program("infer")
    host.start(100, app)
    config = Config(tmp_path / "baseline.json", approved_cpu_levels=((str(app), 150.0),))
    observer = observer_on(host, clock, config)
    run(observer, host, clock, LEARNING + STEP, {100: 30.0})

    assert run(observer, host, clock, 2 * WINDOW_SECONDS, {100: 140.0}) == BaselineStats(learning=False)
    stats = run(observer, host, clock, 2 * WINDOW_SECONDS, {100: 190.0})
    assert stats is not None and stats.cpu_above_level is not None
    assert stats.cpu_above_level.allowed == 150.0


def test_a_gpu_process_above_its_programs_learned_level(host: FixtureHost, tmp_path: Path) -> None:
    clock = Clock()
    app = host.program("infer")
    host.start(100, app)
    observer = observer_on(host, clock, Config(tmp_path / "baseline.json"))
    run(observer, host, clock, LEARNING + STEP, {100: 10.0}, gpu={100: 40.0})

    assert run(observer, host, clock, 2 * WINDOW_SECONDS, {100: 10.0}, gpu={100: 35.0}) == BaselineStats(
        learning=False
    )
    stats = run(observer, host, clock, 2 * WINDOW_SECONDS, {100: 10.0}, gpu={100: 99.0})
    assert stats is not None and stats.gpu_above_level is not None
    assert (stats.gpu_above_level.allowed, stats.gpu_above_level.now) == (40.0, 99.0)
    assert stats.cpu_above_level is None


# ---- the code programs map (real processes) ----------------------------------------------------------

LOADER = """
import ctypes, sys, time
print("ready", flush=True)
sys.stdin.readline()
ctypes.CDLL(sys.argv[1])
print("loaded", flush=True)
time.sleep(60)
"""


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait(10)


def mapped_paths(reader: MappedCodeReader, pid: int) -> dict[str, str]:
    code = reader.read(pid)
    assert code is not None
    return {os.path.realpath(f.path): f.sha256 for f in code.files}


def test_a_library_loaded_at_run_time_is_mapped_with_its_digest(started: list[subprocess.Popen[str]]) -> None:
    library = spare_library()
    child = subprocess.Popen(
        [sys.executable, "-c", LOADER, library], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    started.append(child)
    assert child.stdin is not None and child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    reader = MappedCodeReader(IdentityReader())
    assert os.path.realpath(library) not in mapped_paths(reader, child.pid)

    child.stdin.write("load\n")
    child.stdin.flush()
    assert child.stdout.readline() == "loaded\n"
    assert mapped_paths(reader, child.pid)[os.path.realpath(library)] == sha256_of(Path(library))


def test_a_preloaded_library_is_mapped_and_named_in_the_loader_variables(
    started: list[subprocess.Popen[str]],
) -> None:
    library = spare_library()
    child = subprocess.Popen(["sleep", "60"], env={**os.environ, "LD_PRELOAD": library}, text=True)
    started.append(child)
    reader = MappedCodeReader(IdentityReader())
    poll(lambda: os.path.realpath(library) in mapped_paths(reader, child.pid), "the preloaded library")
    assert ProcessDetails().loader_variables(child.pid) == {"LD_PRELOAD": library}


def fixture_maps(host: FixtureHost, pid: int, libraries: list[Path]) -> None:
    lines = [
        f"{0x1000 * (i + 1):x}-{0x1000 * (i + 2):x} r-xp 0 08:01 {i} {lib}\n"
        for i, lib in enumerate(libraries)
    ]
    (host.proc / str(pid) / "maps").write_text("".join(lines))


def test_a_library_a_known_program_never_mapped_is_new(host: FixtureHost, tmp_path: Path) -> None:
    clock = Clock()
    sleeper = host.program("sleep")
    libc, evil, vetted = (host.program(name) for name in ("libc.so.6", "libevil.so", "libvetted.so"))
    host.start(200, sleeper)
    fixture_maps(host, 200, [sleeper, libc])
    config = Config(tmp_path / "baseline.json", approved_libraries=(sha256_of(vetted),))
    observer = observer_on(host, clock, config)
    run(observer, host, clock, LEARNING + STEP, {200: 0.0})

    host.start(201, sleeper)  # the same program, another process: preloaded with two more libraries
    fixture_maps(host, 201, [sleeper, evil, vetted, libc])
    (host.proc / "201" / "environ").write_bytes(f"PATH=/bin\0LD_PRELOAD={evil}\0".encode())
    stats = run(observer, host, clock, STEP, {200: 0.0, 201: 0.0})

    assert stats is not None
    [new] = stats.new_libraries
    assert (new.pid, new.program, new.path, new.sha256) == (201, str(sleeper), str(evil), sha256_of(evil))
    assert f"LD_PRELOAD={evil}" in new.preload


def test_a_process_that_executed_another_program_while_read_is_read_again(
    host: FixtureHost, tmp_path: Path
) -> None:
    """A shell's child is sampled and identified as the shell, then executes the command it runs before
    its code is read: those maps are the command's, not new libraries of the shell (a fork storm of
    true(1) raised new-program-libraries so). Had the process not executed anything, the same maps
    would be new."""
    clock = Clock()
    shell, true, libc = (host.program(name) for name in ("sh", "true", "libc.so.6"))
    host.start(200, shell)
    fixture_maps(host, 200, [shell, libc])
    observer = observer_on(host, clock, Config(tmp_path / "baseline.json"))
    run(observer, host, clock, LEARNING + STEP, {200: 0.0})

    host.start(201, shell)  # the sample and the identity say sh ...
    fixture_maps(host, 201, [true, libc])  # ... the maps, read after, are true's
    host.rename(201, "true")
    stats = run(observer, host, clock, STEP, {200: 0.0, 201: 0.0})
    assert stats is not None and stats.new_libraries == ()

    host.rename(201, "sh", state="Z")  # exiting while read: its maps may be torn down, files unhashed
    stats = run(observer, host, clock, STEP, {200: 0.0, 201: 0.0})
    assert stats is not None and stats.new_libraries == ()

    host.rename(201, "sh")  # the same maps in a process that still runs sh
    stats = run(observer, host, clock, STEP, {200: 0.0, 201: 0.0})
    assert stats is not None
    assert [(n.pid, n.path) for n in stats.new_libraries] == [(201, str(true))]


def test_the_component_and_its_reader_are_left_out_of_what_programs_do(
    host: FixtureHost, tmp_path: Path
) -> None:
    """The component's own process loads code as its work needs it (the first lookup of a user with no
    passwd entry loads libnss_systemd: seen as a new library of the component's program when it ran as
    root). It and its child, the privileged reader, are no program here; the same code in another
    process of that program is new."""
    clock = Clock()
    python, libc, nss = (host.program(name) for name in ("python3", "libc.so.6", "libnss_systemd.so.2"))
    me = os.getpid()
    for pid in (me, 200):  # this component, and another process of its program (a Python tool)
        host.start(pid, python)
        fixture_maps(host, pid, [python, libc])
    observer = observer_on(host, clock, Config(tmp_path / "baseline.json"))
    run(observer, host, clock, LEARNING + STEP, {me: 0.0, 200: 0.0})

    host.start(201, python)
    host.table[201] = replace(host.table[201], ppid=me)  # the privileged reader
    host.start(202, python)
    for pid in (me, 201, 202):
        fixture_maps(host, pid, [python, libc, nss])
    stats = run(observer, host, clock, STEP, {me: 90.0, 200: 0.0, 201: 0.0, 202: 0.0})
    assert stats is not None
    assert [(n.pid, n.path) for n in stats.new_libraries] == [(202, str(nss))]


def test_a_process_is_read_once_the_loader_has_mapped_its_libraries(
    host: FixtureHost, tmp_path: Path
) -> None:
    """Right after exec the loader has mapped only itself and the program: a process is read once it is
    SETTLE_SECONDS old (a fork storm's true(1) read in that window had learned a partial set)."""
    clock = Clock()
    daemon, libc, evil = (host.program(name) for name in ("daemon", "libc.so.6", "libevil.so"))
    host.start(200, daemon)
    fixture_maps(host, 200, [daemon, libc])
    observer = observer_on(host, clock, Config(tmp_path / "baseline.json"))
    run(observer, host, clock, LEARNING + STEP, {200: 0.0})

    host.start(201, daemon)
    fixture_maps(host, 201, [daemon, libc, evil])
    (host.proc / "stat").write_text(f"cpu 0 0 0 0\nbtime {int(clock.now + STEP - 1)}\n")  # 201: 1 s old
    stats = run(observer, host, clock, STEP, {200: 0.0, 201: 0.0})
    assert stats is not None and stats.new_libraries == ()
    stats = run(observer, host, clock, STEP, {200: 0.0, 201: 0.0})  # 6 s old
    assert stats is not None
    assert [(n.pid, n.path) for n in stats.new_libraries] == [(201, str(evil))]


def test_a_learned_library_deleted_under_a_running_process_is_not_new(
    host: FixtureHost, tmp_path: Path
) -> None:
    """A package upgrade replaces a library that running processes map: their maps name it "(deleted)".
    Learned at its path, it is not new (here by its path: the component reads its own user's maps, and
    cannot hash a deleted file by its path); another library deleted after loading is."""
    clock = Clock()
    daemon, libc, dropped = (host.program(name) for name in ("daemon", "libc.so.6", "libdrop.so"))
    host.start(200, daemon)
    fixture_maps(host, 200, [daemon, libc])
    observer = observer_on(host, clock, Config(tmp_path / "baseline.json"))
    run(observer, host, clock, LEARNING + STEP, {200: 0.0})

    host.start(201, daemon)
    lines = [f"1000-2000 r-xp 0 08:01 1 {daemon}\n", f"2000-3000 r-xp 0 08:01 2 {libc} (deleted)\n"]
    (host.proc / "201" / "maps").write_text("".join(lines))
    stats = run(observer, host, clock, STEP, {200: 0.0, 201: 0.0})
    assert stats is not None and stats.new_libraries == ()

    host.start(202, daemon)
    lines[1] = f"2000-3000 r-xp 0 08:01 2 {dropped} (deleted)\n"
    (host.proc / "202" / "maps").write_text("".join(lines))
    stats = run(observer, host, clock, STEP, {200: 0.0, 201: 0.0, 202: 0.0})
    assert stats is not None
    assert [(n.pid, n.path) for n in stats.new_libraries] == [(202, f"{dropped} (deleted)")]


def test_executable_memory_without_a_file_is_new_in_a_program_that_never_had_any(
    host: FixtureHost, tmp_path: Path
) -> None:
    clock = Clock()
    jit, plain = host.program("node"), host.program("server")
    host.start(300, jit)
    host.start(301, plain)
    anonymous = "3000-4000 rwxp 0 00:00 0 \n"  # executable, writable, no file: a JIT's code
    (host.proc / "300" / "maps").write_text(f"1000-2000 r-xp 0 08:01 1 {jit}\n{anonymous}")
    (host.proc / "301" / "maps").write_text(f"1000-2000 r-xp 0 08:01 1 {plain}\n")
    observer = observer_on(host, clock, Config(tmp_path / "baseline.json"))
    run(observer, host, clock, LEARNING + STEP, {300: 0.0, 301: 0.0})

    host.start(302, plain)  # another process of the program that never had such memory
    (host.proc / "302" / "maps").write_text(f"1000-2000 r-xp 0 08:01 1 {plain}\n{anonymous}")
    stats = run(observer, host, clock, STEP, {300: 0.0, 301: 0.0, 302: 0.0})
    assert stats is not None
    assert [(n.pid, n.path) for n in stats.new_anonymous_code] == [(302, "")]
    assert stats.new_libraries == ()


# ---- the sockets programs hold (real sockets) -----------------------------------------------------------


def network_sample(clock: Clock, table: dict[int, ProcessInfo], sockets: list[socket.socket]) -> Sample:
    """A sample holding the test's sockets as the network source lists them (with their inodes)."""
    established, listening = [], []
    for sock in sockets:
        inode = os.fstat(sock.fileno()).st_ino
        try:
            peer = sock.getpeername()
        except OSError:  # a listener
            listening.append(ListeningPort(sock.getsockname()[1], None, inode, os.geteuid()))
            continue
        established.append(Connection(peer[0], peer[1], sock.getsockname()[1], "lo", inode, os.geteuid()))
    network = NetworkStats(tuple(listening), (), tuple(established), NetCounters(0, 0, 0, 0))
    processes = ProcessStats(0, (), (), table=table)
    return Sample(time=clock.now, monotonic=clock.now, network=network, processes=processes)


def holding(*sockets: socket.socket) -> tuple[subprocess.Popen[bytes], ProcessInfo]:
    """A Python process holding ``sockets`` (inherited), and its process table entry (as if started by
    another process than this test's: a child of this component would be the privileged reader)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=[s.fileno() for s in sockets]
    )
    stat = Path(f"/proc/{child.pid}/stat").read_text()
    start = int(stat.rpartition(")")[2].split()[19])
    return child, ProcessInfo(child.pid, 1, "python3", "python3", sys.executable, start_ticks=start)


def test_a_program_that_never_connected_while_learning_connecting_now_is_new(tmp_path: Path) -> None:
    """A Python program listened while learning, never connected; then a process of it connects out, and
    that is new (its listening is not). Real sockets, held by child processes of the test (the test's
    own process would be this component, which is left out)."""
    clock = Clock()
    server = socket.create_server(("127.0.0.1", 0))
    listener, listener_info = holding(server)
    observer = BaselineObserver(IdentityReader(), ProcessDetails(), clock=clock)
    observer.configure(Config(tmp_path / "baseline.json"), enabled=True)
    table = {listener.pid: listener_info}
    client: Optional[subprocess.Popen[bytes]] = None
    try:
        observer.observe(network_sample(clock, table, [server]))
        clock.now += LEARNING + STEP
        assert observer.observe(network_sample(clock, table, [server])).baseline == BaselineStats(
            learning=False
        )

        connection = socket.create_connection(server.getsockname(), timeout=5)
        accepted, _ = server.accept()
        client, client_info = holding(connection)  # the same socket: the connection out, in the child
        clock.now += STEP
        both = {**table, client.pid: client_info}
        stats = observer.observe(network_sample(clock, both, [server, connection])).baseline
        assert stats is not None
        connection.close()
        accepted.close()
        client.kill()
        client.wait()
        clock.now += STEP  # the connection closed with the process that held it: nothing new any more
        assert observer.observe(network_sample(clock, table, [server])).baseline == BaselineStats(
            learning=False
        )
    finally:
        for child in (listener, client):
            if child is not None:
                child.kill()
                child.wait()
        server.close()
        observer.close()
    assert [(n.pid, n.use) for n in stats.new_network_use] == [(client.pid, "outbound")]
    written = [json.loads(line) for line in (tmp_path / "baseline.json").read_text().splitlines()[1:]]
    assert any(item[0] == "program_network" and item[1].endswith(" | listening") for item in written)


def test_a_new_socket_of_a_process_that_cannot_be_found_is_left_alone(
    host: FixtureHost, tmp_path: Path
) -> None:
    clock = Clock()
    app = host.program("infer")
    host.start(100, app)
    observer = observer_on(host, clock, Config(tmp_path / "baseline.json"))
    run(observer, host, clock, LEARNING + STEP, {100: 0.0})
    stranger = Connection("203.0.113.9", 443, 40000, "eth0", inode=987654, uid=0)  # nobody here holds it
    network = NetworkStats((), (), (stranger,), NetCounters(0, 0, 0, 0))
    for _ in range(4):
        clock.now += STEP
        sample = Sample(
            time=clock.now,
            monotonic=clock.now,
            network=network,
            processes=ProcessStats(0, (), (), table=dict(host.table)),
        )
        stats = observer.observe(sample).baseline
        assert stats is not None and stats.new_network_use == ()


def test_programs_of_unreadable_processes_are_judged_by_their_weak_identity(
    host: FixtureHost, tmp_path: Path
) -> None:
    """A level kind keys a program it may not read by the weak identity the executable kind found."""
    clock = Clock()
    daemon = host.program("sshd")
    host.start(400, daemon)
    denying = _Denying(str(host.proc))  # as without the privileged reader
    observer = BaselineObserver(denying, ProcessDetails(str(host.proc)), clock=clock)
    observer.configure(Config(tmp_path / "baseline.json"), enabled=True)
    run(observer, host, clock, LEARNING + STEP, {400: 5.0})
    assert observer.store is not None
    [key] = observer.store.entries(PROGRAM_CPU)
    assert key.startswith("unreadable uid=")


class _Denying(IdentityReader):
    def read(self, pid: int, cmdline: Any = None, process: Any = None) -> Any:
        identity = super().read(pid, cmdline, process)
        return replace(identity, path="", sha256="", reason_unknowable="no access") if identity else None


def test_a_watched_applications_code_is_read_every_cycle_an_idle_process_only_now_and_then(
    host: FixtureHost, tmp_path: Path
) -> None:
    """A library loaded at run time into the watched application shows at the next cycle; the same in an
    idle process of another program waits for the recheck (RECHECK_SECONDS)."""
    clock = Clock()
    app, tool, libc, evil = (host.program(name) for name in ("infer", "tool", "libc.so.6", "libevil.so"))
    host.start(100, app)
    host.start(101, tool)
    fixture_maps(host, 100, [app, libc])
    fixture_maps(host, 101, [tool, libc])
    observer = observer_on(host, clock, Config(tmp_path / "baseline.json"))

    def cycle(seconds: float = STEP) -> BaselineStats:
        stats = None
        end = clock.now + seconds
        while clock.now < end:
            clock.now += STEP
            processes = ProcessStats(0, (), (), table=dict(host.table), watched_pids=frozenset({100}))
            stats = observer.observe(
                Sample(time=clock.now, monotonic=clock.now, processes=processes)
            ).baseline
        assert stats is not None
        return stats

    cycle(LEARNING + STEP)
    fixture_maps(host, 100, [app, libc, evil])
    fixture_maps(host, 101, [tool, libc, evil])
    assert [n.pid for n in cycle().new_libraries] == [100]
    assert sorted(n.pid for n in cycle(RECHECK_SECONDS).new_libraries) == [100, 101]
