"""The baseline observer on hand-built samples: the process table, the sockets and the GPU's processes of
a fixture /proc tree whose processes run program files of the test, and a clock the test moves."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import pytest

from ddcustom.device.baseline.observer import BaselineObserver
from ddcustom.device.sample import (
    BaselineStats,
    Connection,
    GpuProcess,
    GpuStats,
    ListeningPort,
    NetCounters,
    NetworkStats,
    NewProcess,
    ProcessInfo,
    ProcessStats,
    Sample,
)
from ddcustom.device.sources.identity import NO_ACCESS, IdentityReader
from ddcustom.device.sources.process_details import ProcessDetails
from support.baseline import ENDPOINT, EXECUTABLE, GPU_EXECUTABLE, LISTENING
from support.procfs import FixtureHost, deny_exe_links, fake_process, read_baseline_file, sha256_of

T0 = 1_800_000_000.0
LEARNING = 3600
AFTER = T0 + LEARNING + 1
OUT = Connection("203.0.113.7", 443, 50000, "eth0")  # opened by the device
IN = Connection("198.51.100.1", 51000, 22, "eth0")  # to the device's ssh port: opened by the other end


@dataclass
class Config:
    """What the observer reads of the configuration (BaselineSettings)."""

    baseline_file: str
    baseline_learning_seconds: int = LEARNING
    baseline_forget_seconds: int = 90 * 86400
    approved_executables: tuple[str, ...] = ()
    approved_endpoints: tuple[str, ...] = ()
    approved_libraries: tuple[str, ...] = ()
    approved_cpu_levels: tuple[tuple[str, float], ...] = ()
    fleet_known_executables: tuple[str, ...] = ()
    allowed_gpu_processes: tuple[str, ...] = ()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Owners(ProcessDetails):
    """Process owners as the test says (the fixture tree's directories all belong to the test's user)."""

    def __init__(self, uids: dict[int, int], proc_root: str) -> None:
        super().__init__(proc_root)
        self.uids = uids

    def owner(self, pid: int) -> Optional[int]:
        return self.uids.get(pid)


@pytest.fixture
def host(tmp_path: Path) -> FixtureHost:
    return FixtureHost(tmp_path / "host")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(str(tmp_path / "state" / "baseline.json"))


def observer_of(
    host: FixtureHost, clock: Clock, details: Optional[ProcessDetails] = None
) -> BaselineObserver:
    proc = str(host.proc)
    return BaselineObserver(IdentityReader(proc), details or ProcessDetails(proc), clock=clock)


def sample_of(
    host: FixtureHost,
    clock: Clock,
    *,
    connections: tuple[Connection, ...] = (),
    tcp: tuple[int, ...] = (),
    udp: tuple[int, ...] = (),
    gpu: tuple[int, ...] = (),
    cpu: Optional[dict[int, float]] = None,
    watched: frozenset[int] = frozenset(),
) -> Sample:
    """A sample of the host's processes now, with these sockets, GPU compute processes (pids), CPU use
    (% of one core by pid) and watched pids."""
    processes = ProcessStats(0, (), (), table=dict(host.table), watched_pids=watched, cpu_percent=cpu or {})
    network = NetworkStats(
        tuple(ListeningPort(port, None) for port in tcp),
        tuple(ListeningPort(port, None) for port in udp),
        connections,
        NetCounters(0, 0, 0, 0),
    )
    gpu_processes = tuple(GpuProcess(pid, host.table[pid].comm, 0, None, None, "unknown") for pid in gpu)
    gpu_stats = GpuStats(40.0, 120.0, 1400.0, 30.0, processes=gpu_processes)
    return Sample(time=clock.now, monotonic=clock.now, network=network, processes=processes, gpu=gpu_stats)


def learned(observer: BaselineObserver, kind: str) -> set[str]:
    assert observer.store is not None
    return set(observer.store.entries(kind))


def test_while_learning_nothing_is_new_and_everything_is_learned(host: FixtureHost, config: Config) -> None:
    clock = Clock()
    app, tool = host.program("server"), host.program("tool")
    host.start(100, app)
    host.start(101, tool)
    host.kernel_thread(2, "kthreadd")
    observer = observer_of(host, clock)
    observer.configure(config, enabled=True)

    sample = observer.observe(sample_of(host, clock, connections=(OUT, IN), tcp=(22,), udp=(53,), gpu=(100,)))

    assert sample.baseline == BaselineStats(learning=True)
    assert observer.store is not None
    details = {(e.details["path"], e.details["sha256"]) for e in observer.store.entries(EXECUTABLE).values()}
    assert details == {(str(app), sha256_of(app)), (str(tool), sha256_of(tool))}
    assert [e.details["path"] for e in observer.store.entries(GPU_EXECUTABLE).values()] == [str(app)]
    assert learned(observer, ENDPOINT) == {"203.0.113.0/24:443"}  # not the connection to port 22
    assert learned(observer, LISTENING) == {"tcp:22", "udp:53"}


def test_after_learning_what_was_not_learned_is_new_and_named(host: FixtureHost, config: Config) -> None:
    clock = Clock()
    app = host.program("server")
    host.start(100, app)
    observer = observer_of(host, clock)
    observer.configure(config, enabled=True)
    observer.observe(sample_of(host, clock, connections=(OUT,), tcp=(22,), gpu=(100,)))

    clock.now = AFTER
    miner = host.program("kworker")
    host.start(300, app)  # the learned program, in a process of its own: known
    host.start(200, miner)
    pool = Connection("198.51.100.9", 3333, 40000, "eth0")
    same_network = Connection("203.0.113.99", 443, 50001, "eth0")
    sample = observer.observe(
        sample_of(host, clock, connections=(OUT, same_network, pool), tcp=(22, 4444), gpu=(100, 200))
    )

    new_miner = NewProcess(200, "kworker", str(miner), sha256_of(miner))
    assert sample.baseline == BaselineStats(
        learning=False,
        new_processes=(new_miner,),
        new_endpoints=(pool,),
        new_listening=("tcp:4444",),
        new_gpu_processes=(new_miner,),
        busiest_new=(200, 0.0),
    )
    # new items are not learned after learning: still new at the next cycle
    clock.now = AFTER + 10
    again = observer.observe(sample_of(host, clock, connections=(pool,), tcp=(4444,)))
    assert again.baseline is not None
    assert [p.pid for p in again.baseline.new_processes] == [200]
    assert again.baseline.new_endpoints == (pool,) and again.baseline.new_listening == ("tcp:4444",)


def test_the_busiest_new_process_is_neither_watched_nor_allowed(host: FixtureHost, config: Config) -> None:
    clock = Clock()
    for pid, name in ((10, "app"), (11, "trainer"), (12, "xmr"), (13, "idle")):
        host.start(pid, host.program(name))
    observer = observer_of(host, clock)
    config.baseline_learning_seconds = 0  # nothing learned: every process is new
    config.allowed_gpu_processes = ("trainer",)
    observer.configure(config, enabled=True)
    cpu = {10: 95.0, 11: 90.0, 12: 40.0, 13: 5.0}

    stats = observer.observe(sample_of(host, clock, cpu=cpu, watched=frozenset({10}))).baseline

    assert stats is not None
    assert [p.pid for p in stats.new_processes] == [10, 11, 12, 13]
    assert stats.busiest_new == (12, 40.0)
    host.stop(12)
    host.stop(13)
    only_explained = observer.observe(sample_of(host, clock, cpu=cpu, watched=frozenset({10}))).baseline
    assert only_explained is not None and only_explained.busiest_new is None


def test_an_unreadable_process_is_known_by_its_user_name_and_argv0(
    host: FixtureHost, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    agent = host.program("agent")
    host.start(400, agent, argv0="/usr/bin/agent")
    deny_exe_links(monkeypatch, host.proc, [400, 401, 402, 403])
    observer = observer_of(host, clock, Owners({400: 1000, 401: 1000, 402: 1000, 403: 1001}, str(host.proc)))
    observer.configure(config, enabled=True)
    observer.observe(sample_of(host, clock))
    assert observer.store is not None
    [entry] = observer.store.entries(EXECUTABLE).values()
    assert entry.details == {"uid": 1000, "name": "agent", "argv0": "agent"}

    clock.now = AFTER
    host.start(401, agent, argv0="/usr/bin/agent")  # another instance: known
    host.start(402, agent, argv0="/tmp/kworker")  # the same name, another argv[0]
    host.start(403, agent, argv0="/usr/bin/agent")  # the same, another user's
    stats = observer.observe(sample_of(host, clock)).baseline

    assert stats is not None
    assert stats.new_processes == (
        NewProcess(402, "agent", "kworker", "", NO_ACCESS),
        NewProcess(403, "agent", "agent", "", NO_ACCESS),
    )


def test_turned_off_it_closes_its_store_and_leaves_samples_unchanged(
    host: FixtureHost, config: Config
) -> None:
    clock = Clock()
    app = host.program("server")
    host.start(100, app)
    observer = observer_of(host, clock)
    observer.configure(config, enabled=True)
    observer.observe(sample_of(host, clock, tcp=(22,)))
    assert read_baseline_file(Path(config.baseline_file))["entries"][EXECUTABLE] == {}  # not written yet

    observer.configure(config, enabled=False)

    assert observer.store is None
    saved = read_baseline_file(Path(config.baseline_file))["entries"]
    assert [e["details"]["path"] for e in saved[EXECUTABLE].values()] == [str(app)]
    assert set(saved[LISTENING]) == {"tcp:22"}
    sample = sample_of(host, clock, tcp=(22, 8080))
    assert observer.observe(sample) is sample


def test_a_store_that_cannot_be_opened_leaves_the_baseline_out_logged_once(
    host: FixtureHost, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    host.start(100, host.program("server"))
    blocked = tmp_path / "state"
    blocked.write_text("a file where the state directory should be")
    config = Config(str(blocked / "baseline.json"))
    observer = observer_of(host, clock)

    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # the agent configures it again at each configuration change
            observer.configure(config, enabled=True)
            sample = sample_of(host, clock)
            assert observer.observe(sample) is sample
    assert observer.store is None
    assert len([r for r in caplog.records if "baseline" in r.getMessage()]) == 1

    blocked.unlink()  # repaired: the next configuration opens it
    observer.configure(config, enabled=True)
    assert observer.observe(sample_of(host, clock)).baseline == BaselineStats(learning=True)


def test_observing_that_fails_puts_baseline_in_the_errors(
    host: FixtureHost, config: Config, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    host.start(100, host.program("server"))
    identities = IdentityReader(str(host.proc))
    observer = BaselineObserver(identities, ProcessDetails(str(host.proc)), clock=clock)
    observer.configure(config, enabled=True)

    def failing(pid: int, cmdline: Optional[list[str]] = None, process: object = None) -> None:
        raise RuntimeError("the identity reader broke")

    monkeypatch.setattr(identities, "read", failing)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            sample = sample_of(host, clock)
            sample = replace(sample, errors=("gpu",))
            observed = observer.observe(sample)
            assert observed.errors == ("gpu", "baseline")
            assert observed.baseline is None
    assert len([r for r in caplog.records if "the identity reader broke" in r.getMessage()]) == 1

    monkeypatch.undo()  # recovered: observed again, no error
    recovered = observer.observe(sample_of(host, clock))
    assert recovered.errors == () and recovered.baseline == BaselineStats(learning=True)


def code_size(host: FixtureHost, pid: int, exe_kb: int) -> None:
    """What /proc/PID/status says of the program's text size (VmExe), which anyone may read."""
    (host.proc / str(pid) / "status").write_text(f"Name:\tx\nVmExe:\t{exe_kb:8d} kB\nVmLib:\t    2000 kB\n")


def test_an_unreadable_process_is_known_by_its_code_size_too(
    host: FixtureHost, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A miner of root taking the name of a root daemon is new when its text is not the daemon's size."""
    clock = Clock()
    sshd = host.program("sshd")
    host.start(400, sshd, argv0="/usr/sbin/sshd")
    code_size(host, 400, 900)
    deny_exe_links(monkeypatch, host.proc, [400, 401, 402])
    observer = observer_of(host, clock, Owners({400: 0, 401: 0, 402: 0}, str(host.proc)))
    observer.configure(config, enabled=True)
    observer.observe(sample_of(host, clock))
    assert observer.store is not None
    [entry] = observer.store.entries(EXECUTABLE).values()
    assert entry.details == {"uid": 0, "name": "sshd", "argv0": "sshd", "exe_kb": 900}

    clock.now = AFTER
    miner = host.program("miner")
    host.start(401, sshd, argv0="/usr/sbin/sshd")  # another connection's sshd: the same size
    host.start(402, miner, name="sshd", argv0="/usr/sbin/sshd")
    code_size(host, 401, 900)
    code_size(host, 402, 7412)
    stats = observer.observe(sample_of(host, clock)).baseline

    assert stats is not None
    assert [p.pid for p in stats.new_processes] == [402]


def test_an_unreadable_process_whose_name_changed_since_the_table_was_read_is_judged_as_it_is_now(
    host: FixtureHost, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the reader. A fork storm's shell child: the table says "sh", its code size is already
    true(1)'s, whose name, argv[0] and size the baseline knows: not new (the old name beside the new size
    is neither program). A miner that renamed itself after the table was read is new in the same cycle."""
    clock = Clock()
    shell, true, miner = host.program("sh"), host.program("true"), host.program("miner")
    host.start(400, true, argv0="true")
    code_size(host, 400, 16)
    deny_exe_links(monkeypatch, host.proc, [400, 403, 404])
    observer = observer_of(host, clock, Owners({400: 0, 403: 0, 404: 0}, str(host.proc)))
    observer.configure(config, enabled=True)
    observer.observe(sample_of(host, clock))
    host.stop(400)

    clock.now = AFTER
    host.start(403, shell, argv0="sh")
    host.start(404, miner, argv0="miner")
    sample = sample_of(host, clock)
    for pid, name, size in ((403, "true", 16), (404, "kworker/0:2", 7412)):  # after the table was read
        host.rename(pid, name)
        (host.proc / str(pid) / "cmdline").write_bytes(name.encode() + b"\0")
        code_size(host, pid, size)
    stats = observer.observe(sample).baseline

    assert stats is not None and [p.pid for p in stats.new_processes] == [404]


def test_a_weaker_entry_vouches_once_for_a_process_that_ran_before_the_upgrade(
    host: FixtureHost, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Learned without the privileged reader (user, name, argv[0]); seen in full now, after an upgrade: an
    impostor started since this component started is new; the daemon that ran all along is known (the
    entry vouches for it, and says so); a second program that ran before under the same name is new (an
    entry vouches once)."""
    clock = Clock()
    sshd = host.program("sshd")
    host.start(500, sshd, argv0="/usr/sbin/sshd")
    deny_exe_links(monkeypatch, host.proc, [500])
    learning = observer_of(host, clock, Owners({500: 1000}, str(host.proc)))
    learning.configure(config, enabled=True)
    learning.observe(sample_of(host, clock))
    learning.close()
    monkeypatch.undo()  # the privileged reader's answers: every identity in full
    del host.table[500]

    clock.now = AFTER
    impostor, other = host.program("impostor"), host.program("other")
    host.start(501, impostor, name="sshd", argv0="/usr/sbin/sshd")
    host.table[501] = replace(host.table[501], start_ticks=10**12)  # started after this component
    host.start(502, sshd, argv0="/usr/sbin/sshd")
    host.start(503, other, name="sshd", argv0="/usr/sbin/sshd")
    observer = observer_of(host, clock, Owners({501: 1000, 502: 1000, 503: 1000}, str(host.proc)))
    observer.configure(config, enabled=True)
    stats = observer.observe(sample_of(host, clock)).baseline

    assert stats is not None
    assert [p.pid for p in stats.new_processes] == [501, 503]
    assert observer.store is not None
    entries = observer.store.entries(EXECUTABLE)
    weak = "unreadable uid=1000 name=sshd argv0=sshd"
    strong = next(key for key in entries if sha256_of(sshd) in key)
    assert entries[strong].details["vouched_by"] == weak
    assert entries[weak].details["vouched"] == strong


# ---- the group's common programs (FleetKnownExecutables) ------------------------------------------------

DAY = 86400


def test_with_the_groups_common_programs_what_starts_after_the_first_hour_is_new(
    host: FixtureHost, config: Config
) -> None:
    """A new device with the group's list: the service it runs at start is learned, the common program
    started later is known (and learned, the period going on), a program no device of the group runs,
    started after the first hour, is new at once; the endpoints still learn the whole period."""
    clock = Clock()
    service, app, miner = host.program("service"), host.program("app"), host.program("kworker")
    host.start(100, service)
    fleet = replace(config, baseline_learning_seconds=DAY, fleet_known_executables=(sha256_of(app),))
    observer = observer_of(host, clock)
    observer.configure(fleet, enabled=True)
    assert observer.observe(sample_of(host, clock)).baseline == BaselineStats(learning=True)

    clock.now = T0 + 3600 + 1
    host.start(200, app)
    host.start(300, miner)
    stats = observer.observe(sample_of(host, clock, connections=(OUT,))).baseline

    assert stats == BaselineStats(
        learning=False,
        new_processes=(NewProcess(300, "kworker", str(miner), sha256_of(miner)),),
        busiest_new=(300, 0.0),
    )
    assert observer.store is not None
    paths = {e.details["path"] for e in observer.store.entries(EXECUTABLE).values()}
    assert paths == {str(service), str(app)}  # the common program is learned too: the list may change
    assert learned(observer, ENDPOINT) == {"203.0.113.0/24:443"}


def test_without_the_list_the_same_device_learns_the_whole_period(host: FixtureHost, config: Config) -> None:
    clock = Clock()
    miner = host.program("kworker")
    observer = observer_of(host, clock)
    observer.configure(replace(config, baseline_learning_seconds=DAY), enabled=True)
    observer.observe(sample_of(host, clock))
    clock.now = T0 + 3600 + 1
    host.start(300, miner)
    assert observer.observe(sample_of(host, clock)).baseline == BaselineStats(learning=True)


def test_after_learning_a_common_program_is_known_without_being_learned(
    host: FixtureHost, config: Config
) -> None:
    """The list names what runs as the inventory does: an interpreter's script file by its own hash, a
    module by the hash of "<interpreter's SHA-256> -m NAME"."""
    clock = Clock()
    observer = observer_of(host, clock)
    observer.configure(config, enabled=True)
    observer.observe(sample_of(host, clock))
    python = host.program("python3")
    script = host.bin / "serve.py"
    script.write_text("print('serving')\n")
    for pid, args in ((400, [str(script)]), (401, ["-m", "worker"])):
        fake_process(host.proc, pid, str(python), [str(python), *args])
        host.table[pid] = ProcessInfo(pid, 1, "python3", "python3", " ".join([str(python), *args]))
    module = hashlib.sha256(f"{sha256_of(python)} -m worker".encode()).hexdigest()

    clock.now = AFTER
    stats = observer.observe(sample_of(host, clock)).baseline
    assert stats is not None and {p.pid for p in stats.new_processes} == {400, 401}
    observer.configure(replace(config, fleet_known_executables=(sha256_of(script), module)), enabled=True)
    clock.now = AFTER + 10
    assert observer.observe(sample_of(host, clock)).baseline == BaselineStats(learning=False)
    assert observer.store is not None and len(observer.store.entries(EXECUTABLE)) == 0
