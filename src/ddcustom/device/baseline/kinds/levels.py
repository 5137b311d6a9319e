"""What the level kinds share (program_cpu.py, program_gpu.py): how much of a resource each program used
while it was learned, and how far a process of a known program is above that now.

A program is what the baseline knows a process by (its executable identity, or the weak identity of a
process this component may not read: kind.py, ``Program``). Its level is the highest *sustained* use,
the mean over the last WINDOW_SECONDS, of one of its processes (``process``) and of all its processes
together (``all``), in % of one core (CPU) or of one GPU's SMs. A level is learned while its entry is:
for the learning period of the baseline, or, for a program the baseline came to know later (a
deployment, an upgrade that brought the level kinds to a learned baseline), for as long from the
entry's first sight after it. After that it stays as learned: a miner that ramps up slowly is not
learned into it (docs/detection.md weighs this against following the load).

After learning, a process is above its program's level by ``sustained - max(level, FLOOR)``, and the
program's processes together by the same for ``all``; FLOOR is what any program may use without having
shown it while learning (a program seen only briefly, or idle, then). An operator approval of the
program's level (``ApprovedCpuLevels``, ``ddcustom baseline approve cpu:...``) raises what it may use.
Two writers merge a level by its maximum.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ddcustom.device.baseline.cycle import CycleBaseline
from ddcustom.device.baseline.file import APPROVED, Entry, compact_json
from ddcustom.device.baseline.kinds.kind import Context, MergeRule, Program
from ddcustom.device.sample import LevelExcess

WINDOW_SECONDS = 30.0  # a level is the mean over this long: a burst shorter than it moves it little
FLOOR = 25.0  # what any process (and any program's processes together) may use, in % of one unit
REVISE_POINTS = 1.0  # a learned level rises in the baseline when it grew by at least this much
LEVELS = ("process", "all")


class MaximumMerge(MergeRule):
    """Today's rule, and each level the larger of the two writers'."""

    def added(self, kept: Entry, ours: Entry) -> None:
        super().added(kept, ours)
        self._levels(kept, ours)

    def seen(self, kept: Entry, ours: Entry) -> None:
        super().seen(kept, ours)
        self._levels(kept, ours)

    @staticmethod
    def _levels(kept: Entry, ours: Entry) -> None:
        if kept.origin == APPROVED and ours.origin != APPROVED:
            return  # an operator's level is kept as given
        mine, theirs = ours.details, kept.details
        merged = {**theirs, **{name: max(_number(mine, name), _number(theirs, name)) for name in LEVELS}}
        if merged != theirs:
            kept.details_text = compact_json(merged)


MAXIMUM = MaximumMerge()


def learning_until(baseline: CycleBaseline, entry: Entry) -> float:
    """When what a program does stops being learned (wall-clock): with the baseline's learning period
    for an entry first seen in it, else a learning period from the entry's first sight."""
    started = baseline.learning_started
    ends = started + baseline.learning_seconds if started is not None else entry.first_seen
    return ends if entry.first_seen < ends else entry.first_seen + baseline.learning_seconds


def _number(details: Mapping[str, Any], name: str) -> float:
    value = details.get(name, 0.0)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class Window:
    """The mean of the values of the last WINDOW_SECONDS, once they cover that long."""

    __slots__ = ("_sum", "_values")

    def __init__(self) -> None:
        self._values: deque[tuple[float, float]] = deque()  # (monotonic time, value since the last one)
        self._sum = 0.0

    def add(self, now: float, value: float) -> Optional[float]:
        """Add ``value`` (the use since the previous value) at ``now``; the sustained level, or None while
        the values cover less than the window."""
        values = self._values
        values.append((now, value))
        self._sum += value
        while len(values) > 1 and values[1][0] <= now - WINDOW_SECONDS:
            self._sum -= values.popleft()[1]
        if values[0][0] > now - WINDOW_SECONDS:
            return None  # the first value's interval began after the window's start: not covered
        return max(0.0, (self._sum - values[0][1]) / (len(values) - 1)) if len(values) > 1 else None


@dataclass
class _Learned:
    levels: dict[str, float]  # LEVELS
    approved: bool
    until: float  # the end of its learning (wall-clock)


class LevelWatch:
    """The level kinds' watch: per process and per program, the sustained level; while learning, the
    learned level raised; after, the process furthest above its program's level."""

    def __init__(self, kind: str, context: Context, approved: Callable[[], Mapping[str, float]]) -> None:
        """``approved``: the configuration's approved levels now (program SHA-256 or path -> level)."""
        self._kind = kind
        self._context = context
        self._approved_levels = approved
        self._processes: dict[tuple[int, int], Window] = {}  # (pid, start ticks)
        self._programs: dict[str, Window] = {}
        self._learned: dict[str, _Learned] = {}  # parsed entries, of:
        self._generation = 0

    def levels(
        self, baseline: CycleBaseline, now: float, monotonic: float, uses: Iterable[tuple[int, int, float]]
    ) -> Optional[LevelExcess]:
        """``uses``: (pid, start ticks, use since the last sample) of the processes whose program is known
        (Context.programs). Learns, and returns the process furthest above its program's level (None: none
        is above)."""
        if baseline.generation != self._generation:
            self._learned, self._generation = {}, baseline.generation
        programs = self._context.programs
        totals: dict[str, tuple[float, int, float]] = {}  # program key -> (sum, busiest pid, its use)
        seen_processes: set[tuple[int, int]] = set()
        worst: Optional[LevelExcess] = None
        for pid, start, use in uses:
            program = programs.get(pid)
            if program is None:
                continue
            seen_processes.add((pid, start))
            window = self._processes.get((pid, start))
            if window is None:
                window = self._processes[(pid, start)] = Window()
            sustained = window.add(monotonic, use)
            total, busiest, busiest_use = totals.get(program.key, (0.0, pid, -1.0))
            totals[program.key] = (total + use, pid if use > busiest_use else busiest, max(use, busiest_use))
            if sustained is not None:
                worst = self._judge(baseline, program, "process", pid, sustained, now, worst)
        for process in self._processes.keys() - seen_processes:
            del self._processes[process]  # exited
        for key, (total, busiest, _) in totals.items():
            program_window = self._programs.get(key)
            if program_window is None:
                program_window = self._programs[key] = Window()
            sustained = program_window.add(monotonic, total)
            if sustained is not None:
                worst = self._judge(baseline, programs[busiest], "all", busiest, sustained, now, worst)
        for gone in self._programs.keys() - totals.keys():
            del self._programs[gone]
        return worst

    def _judge(
        self,
        baseline: CycleBaseline,
        program: Program,
        level: str,
        pid: int,
        sustained: float,
        now: float,
        worst: Optional[LevelExcess],
    ) -> Optional[LevelExcess]:
        learned = self._entry(baseline, program, now)
        if learned is None:
            return worst  # a key too long to keep: never judged
        if not learned.approved and now < learned.until:
            kept = program.key in baseline.live(self._kind)  # not evicted meanwhile
            if kept and sustained >= learned.levels[level] + REVISE_POINTS:
                learned.levels[level] = round(sustained, 1)
                baseline.revise(self._kind, program.key, {"path": program.path, **learned.levels}, now)
            return worst
        allowed = max(learned.levels[level], FLOOR, self._approved(program))
        excess = sustained - allowed
        if excess <= 0 or (worst is not None and worst.excess >= excess):
            return worst
        return LevelExcess(pid, program.path, level, round(allowed, 1), round(sustained, 1), round(excess, 1))

    def _entry(self, baseline: CycleBaseline, program: Program, now: float) -> Optional[_Learned]:
        learned = self._learned.get(program.key)
        if learned is not None:
            return learned
        entry = baseline.live(self._kind).get(program.key)
        if entry is None:
            baseline.add(self._kind, program.key, {"path": program.path, "process": 0.0, "all": 0.0}, now)
            entry = baseline.live(self._kind).get(program.key)
            if entry is None:
                return None
        else:
            baseline.refresh(self._kind, program.key, entry, now)
        details = json.loads(entry.details_text)
        until = learning_until(baseline, entry)
        learned = _Learned({name: _number(details, name) for name in LEVELS}, entry.origin == APPROVED, until)
        self._learned[program.key] = learned
        return learned

    def _approved(self, program: Program) -> float:
        approved = self._approved_levels()
        if not approved:
            return 0.0
        return max(approved.get(program.sha256, 0.0), approved.get(program.path, 0.0))
