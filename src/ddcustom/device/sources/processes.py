"""Process source: children of the watched applications, miner processes, connections to pool ports.

One scan of ``/proc/<pid>/stat`` (parent pid, name) and ``/proc/<pid>/cmdline`` per cycle, with bounded
reads; a process that exits during the scan is skipped. The two files of each process stay open across
scans (ProcFiles): a read at offset 0 returns a /proc file's current content, so a scan costs one system
call per file instead of three. Matching rules:

- a process is *watched* when its name (``comm``, or the basename of argv[0]) equals a WatchedProcesses
  entry (the kernel truncates ``comm`` to 15 characters; a longer entry matches its first 15). The
  watched tree is the watched processes and all their descendants; ``child_processes`` counts the
  members of the tree that are not themselves watched processes, and ``watched_instances`` the
  top-level watched processes (no watched ancestor) of the most-started name: one for a running
  application however many workers it forks, two when something else runs under its name.
- a process is a *miner* when its name, case-insensitively, is a MinerProcessNames entry or starts with
  one followed by a non-letter (``xmrig-6.21``); or its command line holds a stratum URL
  (``stratum+tcp://``, ``stratum+ssl://``, ``stratum+tls://``, ``stratum2+tcp://`` and the other
  stratum2 transports); or the miner flag ``--donate-level``. Only the first CMDLINE_BYTES of a command
  line are read.
- a *pool connection* is an established connection (from the network source) whose remote port is in
  MiningPoolPorts.
"""

from __future__ import annotations

import os
import re
import resource
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import ClassVar, Optional

from ddcustom.device.fileio import read_bounded
from ddcustom.device.sample import Connection, MinerProcess, ProcessInfo, ProcessStats, Sample
from ddcustom.device.sources.procfs import CMDLINE_BYTES, STAT_BYTES, argv0_name, parse_cmdline, parse_stat
from ddcustom.device.sources.source import THIS_MACHINE, Machine, SourceSettings

COMM_LENGTH = 15  # TASK_COMM_LEN - 1
MAX_HELD_PROCESSES = 4096  # processes whose /proc files ProcFiles keeps open, at most

STRATUM_URL = re.compile(r"stratum2?\+(?:tcp|ssl|tls)://", re.IGNORECASE)
MINER_FLAG = re.compile(r"--donate-level\b")


class CpuMeter:
    """Each process's CPU use between two scans, in % of one core (a miner on 2 cores reads 200)."""

    def __init__(self, ticks_per_second: float = os.sysconf("SC_CLK_TCK")) -> None:
        self._ticks_per_second = ticks_per_second
        self._last: dict[int, tuple[int, int]] = {}  # pid -> (start_ticks, cpu_ticks)
        self._last_time: Optional[float] = None

    def update(self, table: Mapping[int, ProcessInfo], now: float) -> dict[int, float]:
        """CPU % since the previous call of every process seen both times; {} on the first call."""
        elapsed = now - self._last_time if self._last_time is not None else 0.0
        out: dict[int, float] = {}
        for pid, info in table.items():
            before = self._last.get(pid)
            if elapsed > 0 and before is not None and before[0] == info.start_ticks:
                ticks = max(0, info.cpu_ticks - before[1])
                out[pid] = round(100.0 * ticks / self._ticks_per_second / elapsed, 1)
        self._last = {pid: (info.start_ticks, info.cpu_ticks) for pid, info in table.items()}
        self._last_time = now
        return out


class ProcFiles:
    """``/proc/<pid>/stat`` and ``cmdline`` descriptors kept open from one scan to the next.

    A descriptor of a /proc/<pid> file belongs to the process it was opened for, not to the number: once
    that process has exited and been reaped, reading it fails with ESRCH even when a new process got the
    same pid, so a reused pid is opened afresh and never read as the old process. (An open stat or
    cmdline file pins no memory of its process, only the kernel's small pid record.) At most
    ``max_processes`` processes are held (by default a quarter of the open-file limit, two descriptors
    each); the others are opened, read and closed as before. Only the real /proc is held: a fixture tree
    in tests has its files replaced rather than rewritten, which a held descriptor would not see.
    """

    def __init__(self, proc_root: str = "/proc", max_processes: Optional[int] = None) -> None:
        self.proc_root = proc_root
        if max_processes is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            max_processes = MAX_HELD_PROCESSES if soft == resource.RLIM_INFINITY else soft // 8
        self.max_processes = min(max_processes, MAX_HELD_PROCESSES) if proc_root == "/proc" else 0
        self._held: dict[int, tuple[int, int]] = {}  # pid -> (stat fd, cmdline fd)
        weakref.finalize(self, _close_all, self._held)  # a ProcFiles dropped without close() closes too

    @property
    def held(self) -> frozenset[int]:
        """The pids whose files are open now."""
        return frozenset(self._held)

    def read(self, pid: int) -> tuple[bytes, bytes]:
        """(stat, cmdline) of process ``pid``, each one bounded read; OSError when it is gone."""
        fds = self._held.get(pid)
        if fds is not None:
            try:
                stat = os.pread(fds[0], STAT_BYTES, 0)
                if stat:
                    return stat, os.pread(fds[1], CMDLINE_BYTES, 0)
            except OSError:
                pass
            self._drop(pid)  # exited; the pid may be another process's now: open it afresh
        base = f"{self.proc_root}/{pid}/"
        if len(self._held) >= self.max_processes:
            return (
                read_bounded(base + "stat", STAT_BYTES, one_read=True),
                read_bounded(base + "cmdline", CMDLINE_BYTES, one_read=True),
            )
        stat_fd = os.open(base + "stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            cmdline_fd = os.open(base + "cmdline", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(stat_fd)
            raise
        self._held[pid] = (stat_fd, cmdline_fd)
        try:
            return os.pread(stat_fd, STAT_BYTES, 0), os.pread(cmdline_fd, CMDLINE_BYTES, 0)
        except OSError:
            self._drop(pid)
            raise

    def keep_only(self, pids: Iterable[int]) -> None:
        """Close the files of every held process not in ``pids`` (those the last listing showed)."""
        for pid in self._held.keys() - set(pids):
            self._drop(pid)

    def close(self) -> None:
        _close_all(self._held)

    def _drop(self, pid: int) -> None:
        for fd in self._held.pop(pid):
            os.close(fd)


def _close_all(held: dict[int, tuple[int, int]]) -> None:
    while held:
        for fd in held.popitem()[1]:
            os.close(fd)


def read_process_table(proc_root: str = "/proc", files: Optional[ProcFiles] = None) -> dict[int, ProcessInfo]:
    """All processes under ``proc_root`` by pid; processes that vanish while being read are skipped.
    ``files`` keeps their files open for the next call (default: opened and closed each time)."""
    if files is None:
        files = ProcFiles(proc_root, max_processes=0)
    table: dict[int, ProcessInfo] = {}
    pids = [int(name) for name in os.listdir(proc_root) if name.isdigit()]
    for pid in pids:
        try:
            stat_raw, cmdline_raw = files.read(pid)
            stat = parse_stat(stat_raw.decode("utf-8", "replace"))
        except (OSError, ValueError, IndexError):  # exited mid-scan, or not readable
            continue
        argv = parse_cmdline(cmdline_raw)
        comm, ppid, cpu_ticks, start_ticks = stat
        table[pid] = ProcessInfo(pid, ppid, comm, argv0_name(argv), " ".join(argv), cpu_ticks, start_ticks)
    files.keep_only(pids)
    return table


def _is_watched(info: ProcessInfo, names: frozenset[str]) -> bool:
    return info.comm in names or info.argv0_name in names


def watched_tree(table: Mapping[int, ProcessInfo], watched_names: Iterable[str]) -> tuple[set[int], set[int]]:
    """(watched pids, watched pids and all their descendants)."""
    names = frozenset(n for name in watched_names for n in (name, name[:COMM_LENGTH]))
    roots = {pid for pid, info in table.items() if _is_watched(info, names)}
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    tree = set(roots)
    pending = list(roots)
    while pending:
        for child in children.get(pending.pop(), ()):
            if child not in tree:
                tree.add(child)
                pending.append(child)
    return roots, tree


def watched_instances(
    table: Mapping[int, ProcessInfo], watched_names: Iterable[str], roots: set[int]
) -> Optional[tuple[int, ...]]:
    """The top-level instances of the watched name that has most; None when no name is configured.

    Top-level: no ancestor is itself watched, so an application's forked workers (which keep its
    name) count once, while a process started elsewhere under the application's name counts again.
    """
    names = tuple(watched_names)
    if not names:
        return None
    top: list[int] = []
    for pid in roots:
        seen = {pid}
        parent = table[pid].ppid
        while parent in table and parent not in seen and parent not in roots:
            seen.add(parent)
            parent = table[parent].ppid
        if parent not in roots:
            top.append(pid)
    per_name = (frozenset((name, name[:COMM_LENGTH])) for name in names)
    instances = (tuple(sorted(p for p in top if _is_watched(table[p], matches))) for matches in per_name)
    return max(instances, key=len)


def miner_name_pattern(miner_names: Iterable[str]) -> re.Pattern[str]:
    """One pattern for all names: a name, then the end or a non-letter (a version suffix)."""
    names = sorted({n.lower() for n in miner_names if n}, key=len, reverse=True)
    if not names:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("(?:" + "|".join(map(re.escape, names)) + r")(?![^\W\d_])", re.IGNORECASE)


def miner_name(name: str, pattern: re.Pattern[str]) -> Optional[str]:
    """The MinerProcessNames entry that ``name`` matches (case-insensitive, version suffix allowed)."""
    match = pattern.match(name)
    return match.group(0).lower() if match else None


def find_miners(table: Mapping[int, ProcessInfo], pattern: re.Pattern[str]) -> tuple[MinerProcess, ...]:
    """Miner processes by pid; ``pattern`` from miner_name_pattern(MinerProcessNames)."""
    found: list[MinerProcess] = []
    for pid in sorted(table):
        info = table[pid]
        name = info.comm or info.argv0_name
        if miner_name(info.comm, pattern) or miner_name(info.argv0_name, pattern):
            found.append(MinerProcess(pid, name, "name"))
        elif STRATUM_URL.search(info.cmdline):
            found.append(MinerProcess(pid, name, "stratum"))
        elif MINER_FLAG.search(info.cmdline):
            found.append(MinerProcess(pid, name, "flag"))
    return tuple(found)


def pool_connections(connections: Iterable[Connection], pool_ports: frozenset[int]) -> tuple[Connection, ...]:
    return tuple(c for c in connections if c.remote_port in pool_ports)


def build_process_stats(
    table: Mapping[int, ProcessInfo],
    watched_names: Iterable[str],
    miner_pattern: re.Pattern[str],
    pool_ports: frozenset[int],
    connections: Iterable[Connection],
    cpu_percent: Optional[Mapping[int, float]] = None,
) -> ProcessStats:
    watched_names = tuple(watched_names)
    roots, tree = watched_tree(table, watched_names)
    children = tuple(sorted(tree - roots))
    instances = watched_instances(table, watched_names, roots)
    return ProcessStats(
        child_processes=len(children),
        miners=find_miners(table, miner_pattern),
        pool_connections=pool_connections(connections, pool_ports),
        watched_instances=None if instances is None else len(instances),
        child_pids=children,
        instance_pids=instances or (),
        table=table,
        watched_pids=frozenset(tree),
        cpu_percent=cpu_percent if cpu_percent is not None else {},
    )


class ProcessSource:
    name: ClassVar[str] = "processes"
    fills: ClassVar[str] = "processes"
    needs: ClassVar[tuple[str, ...]] = ("network",)  # pool connections are among its connections
    reads: ClassVar[str] = "/proc/<pid>/stat and cmdline of every process"

    def __init__(self, machine: Machine = THIS_MACHINE) -> None:
        self.watched_names: tuple[str, ...] = ()
        self.miner_pattern = miner_name_pattern(())
        self.pool_ports: frozenset[int] = frozenset()
        self.proc_root = machine.proc_root
        self.files = ProcFiles(machine.proc_root)  # open between scans
        self._cpu = CpuMeter()

    def configure(self, settings: SourceSettings) -> None:
        self.set_rules(settings.watched_processes, settings.miner_process_names, settings.mining_pool_ports)

    def set_rules(
        self, watched_names: Iterable[str], miner_names: Iterable[str], pool_ports: frozenset[int]
    ) -> None:
        """WatchedProcesses, MinerProcessNames and MiningPoolPorts."""
        self.watched_names = tuple(watched_names)
        self.miner_pattern = miner_name_pattern(miner_names)
        self.pool_ports = pool_ports

    def read(self, sample: Sample) -> ProcessStats:
        connections = sample.network.established_tcp if sample.network is not None else ()
        return self.scan(connections, sample.monotonic)

    def scan(self, connections: Iterable[Connection], now: Optional[float] = None) -> ProcessStats:
        """Scan the processes; ``connections`` are the network source's established connections, ``now``
        the monotonic time of the scan (per-process CPU is measured between scans)."""
        table = read_process_table(self.proc_root, self.files)
        cpu = self._cpu.update(table, time.monotonic() if now is None else now)
        return build_process_stats(
            table, self.watched_names, self.miner_pattern, self.pool_ports, connections, cpu
        )

    def close(self) -> None:
        self.files.close()
