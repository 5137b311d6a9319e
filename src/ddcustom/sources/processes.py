"""Process source: children of the watched applications, miner processes, connections to pool ports.

One scan of ``/proc/<pid>/stat`` (parent pid, name) and ``/proc/<pid>/cmdline`` per cycle, with bounded
reads; a process that exits during the scan is skipped. Matching rules:

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
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Optional

from ddcustom.fileio import read_bounded, read_text
from ddcustom.sample import Connection, MinerProcess, ProcessInfo, ProcessStats

STAT_BYTES = 4096
CMDLINE_BYTES = 4096
COMM_LENGTH = 15  # TASK_COMM_LEN - 1

STRATUM_URL = re.compile(r"stratum2?\+(?:tcp|ssl|tls)://", re.IGNORECASE)
MINER_FLAG = re.compile(r"--donate-level\b")


@dataclass(frozen=True)
class ProcessScan:
    stats: ProcessStats
    watched_pids: frozenset[int]  # the watched processes and their descendants (for GPU attribution)
    cpu_percent: Mapping[int, float] = field(default_factory=dict)  # per pid, % of one core since last scan


def parse_stat(text: str) -> tuple[str, int, int, int]:
    """(comm, ppid, utime + stime, starttime) of a /proc/<pid>/stat line. comm may hold spaces and
    parentheses: it ends at the last ')'. Fields a short line lacks count as 0."""
    head, sep, tail = text.rpartition(")")
    if not sep:
        raise ValueError(f"malformed stat line: {text[:60]!r}")
    comm = head.partition("(")[2]
    fields = tail.split()  # state, ppid, ... utime at 11, stime at 12, starttime at 19
    numbers = [int(fields[i]) if len(fields) > i else 0 for i in (11, 12, 19)]
    return comm, int(fields[1]), numbers[0] + numbers[1], numbers[2]


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


def parse_cmdline(raw: bytes) -> list[str]:
    """Arguments of /proc/<pid>/cmdline (NUL-separated; a process may have rewritten it with spaces)."""
    return [arg.decode("utf-8", "replace") for arg in raw.rstrip(b"\0").split(b"\0")] if raw else []


def read_process_table(proc_root: str = "/proc") -> dict[int, ProcessInfo]:
    """All processes under ``proc_root`` by pid; processes that vanish while being read are skipped."""
    table: dict[int, ProcessInfo] = {}
    for name in os.listdir(proc_root):
        if not name.isdigit():
            continue
        base = f"{proc_root}/{name}/"
        try:
            stat = parse_stat(read_text(base + "stat", STAT_BYTES, one_read=True))
            argv = parse_cmdline(read_bounded(base + "cmdline", CMDLINE_BYTES, one_read=True))
        except (OSError, ValueError, IndexError):  # exited mid-scan, or not readable
            continue
        argv0_name = argv[0].rpartition("/")[2] if argv else ""
        comm, ppid, cpu_ticks, start_ticks = stat
        table[int(name)] = ProcessInfo(
            int(name), ppid, comm, argv0_name, " ".join(argv), cpu_ticks, start_ticks
        )
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


def build_process_scan(
    table: Mapping[int, ProcessInfo],
    watched_names: Iterable[str],
    miner_pattern: re.Pattern[str],
    pool_ports: frozenset[int],
    connections: Iterable[Connection],
) -> ProcessScan:
    watched_names = tuple(watched_names)
    roots, tree = watched_tree(table, watched_names)
    children = tuple(sorted(tree - roots))
    instances = watched_instances(table, watched_names, roots)
    stats = ProcessStats(
        child_processes=len(children),
        miners=find_miners(table, miner_pattern),
        pool_connections=pool_connections(connections, pool_ports),
        watched_instances=None if instances is None else len(instances),
        child_pids=children,
        instance_pids=instances or (),
        table=table,
    )
    return ProcessScan(stats=stats, watched_pids=frozenset(tree))


class ProcessSource:
    def __init__(
        self,
        watched_names: Iterable[str],
        miner_names: Iterable[str],
        pool_ports: frozenset[int],
        proc_root: str = "/proc",
    ) -> None:
        self.watched_names = tuple(watched_names)
        self.miner_pattern = miner_name_pattern(miner_names)
        self.pool_ports = pool_ports
        self.proc_root = proc_root
        self._cpu = CpuMeter()

    def scan(self, connections: Iterable[Connection], now: Optional[float] = None) -> ProcessScan:
        """Scan the processes; ``connections`` are the network source's established connections, ``now``
        the monotonic time of the scan (per-process CPU is measured between scans)."""
        table = read_process_table(self.proc_root)
        scan = build_process_scan(table, self.watched_names, self.miner_pattern, self.pool_ports, connections)
        cpu = self._cpu.update(table, time.monotonic() if now is None else now)
        return replace(scan, cpu_percent=cpu)
