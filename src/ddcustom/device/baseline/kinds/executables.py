"""Executables: what processes run (kind ``executable``) and what GPU compute processes run
(``gpu_executable``, GPU metrics on), the same keys and the same rules for both.

The key is ``ExecutableIdentity.key`` (identity.py): the resolved executable path and its SHA-256, plus
the script for interpreters, so ``python3 /dev/shm/x.py`` is not the known ``python3``. Operator approvals
may also be patterns (keys.py): ``sha256:<hex>`` (this content at any path, as executable or as script)
and ``path:<path>`` (anything at that path).

What a process runs is known when it is in the baseline (its identity, or an operator's pattern), approved
by the fleet configuration (``ApprovedExecutables``), common in the device's thing group
(``FleetKnownExecutables``), learned now, or placed by a Greengrass deployment (deployment.py: added with
origin ``deployment``, learning period or not). With a list of common programs, learning what runs ends
after the period's first hour (``judging``). Unknowable identities (deleted,
memfd, unreadable executables) never are. Kernel threads run no executable and are not looked at.

A process whose executable link the component may not read (another user's, when the component runs
unprivileged without the privileged reader) is identified by what anyone may read of it instead: its
user, name, argv[0] and the size of its program's text (``VmExe``). Weaker than path and SHA-256 (a miner
could take the name of a known process of the same user and a binary of the same text size), but an
impostor rarely matches the size, and it does not flood the rules with every other user's process. With
the privileged reader (the recipe's default) or as root, every process has its full identity.

Upgrades do not alarm: an entry learned under a weaker identity (without the text size, or without the
privileged reader) vouches once for the stronger identity the same process shows now, but only for a
process already running when this component started, so that what starts later must match on its own.

The busiest new process (``unknown_process_cpu``) is the new process using the most CPU that is neither
a watched application's (or a descendant) nor named in ``AllowedGpuProcesses``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from ddcustom.device.baseline.approvals import Approvals, parse_sha256
from ddcustom.device.baseline.cycle import CycleBaseline
from ddcustom.device.baseline.file import DEPLOYMENT, LEARNED, Entry
from ddcustom.device.baseline.keys import PATH_PREFIX, SHA256_PREFIX
from ddcustom.device.baseline.kinds.kind import Context, ItemError, Items, Kind, Program
from ddcustom.device.sample import NewProcess, ProcessInfo, Sample
from ddcustom.device.sources.identity import NO_ACCESS, ExecutableIdentity, IdentityReader

# With FleetKnownExecutables: what a new device runs in its first hour (its services, the Greengrass
# components starting) is learned; what starts later and no common program explains is new.
FLEET_LEARNING_SECONDS = 3600.0
WEAK_PREFIX = "unreadable "  # of the keys of weak identities


def executable_key(identity: ExecutableIdentity) -> str:
    """The key of what a process runs (identity.py makes it)."""
    return identity.key


def weak_key(uid: int, name: str, argv0: str, exe_kb: Optional[int]) -> str:
    """The key of what anyone may read of a process: user, name, argv[0] and its text size in kB (none:
    the key of earlier versions, which did not read it)."""
    key = f"{WEAK_PREFIX}uid={uid} name={name} argv0={argv0}"
    return key if exe_kb is None else f"{key} exe_kb={exe_kb}"


def judging(approvals: Approvals, baseline: CycleBaseline, now: float) -> bool:
    """Whether what processes run is judged at ``now``: after the learning period, or, with the group's
    common programs (FleetKnownExecutables), after its first FLEET_LEARNING_SECONDS. Then, while the
    period goes on, only those programs are still learned; the other kinds learn the whole period."""
    if not baseline.learning(now):
        return True
    started = baseline.learning_started
    return bool(approvals.fleet_known) and started is not None and now - started >= FLEET_LEARNING_SECONDS


def _patterns(identity: ExecutableIdentity) -> Iterable[str]:
    """The operator approval keys that could cover ``identity``: its content's hash and path."""
    if identity.content_sha256:
        yield SHA256_PREFIX + identity.content_sha256
    if identity.content_path:
        yield PATH_PREFIX + identity.content_path


class _ProcessWatch:
    """What the two kinds share: whether what a process runs is known."""

    def __init__(self, kind: str, context: Context) -> None:
        self._kind = kind
        self._context = context
        self._own_uid = os.geteuid()
        self._entries: Mapping[str, Entry] = {}  # CycleBaseline.live, of:
        self._generation = 0  # (CycleBaseline.generation; none is 0)

    def observe_executable(self, baseline: CycleBaseline, identity: ExecutableIdentity, now: float) -> bool:
        """Whether what a process runs is known (module docstring); learned while learning."""
        if not identity.knowable:
            return False
        kind = self._kind
        if baseline.generation != self._generation:
            self._entries, self._generation = baseline.live(kind), baseline.generation
        entries = self._entries
        key = identity.key
        entry = entries.get(key)
        if entry is None:
            for pattern in _patterns(identity):
                entry = entries.get(pattern)
                if entry is not None:
                    key = pattern
                    break
        if entry is not None:
            baseline.refresh(kind, key, entry, now)
            return True
        context = self._context
        approvals = context.approvals
        if approvals.is_approved_executable(identity):
            return True
        common = approvals.is_fleet_known(identity)
        if baseline.learning(now) and (common or not judging(approvals, baseline, now)):
            baseline.add(kind, identity.key, identity.details(), now, LEARNED)
            return True
        if common:
            return True
        component = context.deployment.component_of(identity) if context.deployment is not None else None
        if component is not None:
            baseline.add(kind, identity.key, {**identity.details(), "component": component}, now, DEPLOYMENT)
            return True
        return False

    def check(self, baseline: CycleBaseline, info: ProcessInfo, now: float) -> Optional[NewProcess]:
        """The process as a NewProcess when the baseline does not know what it runs, else None."""
        if info.argv0_name == "" and info.cmdline == "":
            return None  # a kernel thread: it runs no executable
        identity = self._context.identities.read(info.pid, process=info)
        if identity is None:
            return None  # exited meanwhile, or a zombie
        path = identity.content_path or identity.path or info.argv0_name
        program: Optional[Program] = None
        if identity.reason_unknowable == NO_ACCESS:
            key = self._observe_unreadable(baseline, info, now)
            known = key is not None
            program = Program(key, path) if key else None
        else:
            known = self.observe_executable(baseline, identity, now) or self._vouched(
                baseline, info, identity, now
            )
            program = Program(identity.key, path, identity.content_sha256) if known else None
        if program is not None and not self._context.is_component(info):
            self.known(info.pid, program)
        if known:
            return None
        return NewProcess(info.pid, info.comm, path, identity.content_sha256, identity.reason_unknowable)

    def known(self, pid: int, program: Program) -> None:
        """A process whose program is known (the executable kind tells the others: Context.programs)."""

    def _observe_unreadable(self, baseline: CycleBaseline, info: ProcessInfo, now: float) -> Optional[str]:
        """The key of the weak identity of a process this component may not read when it is known ("" when
        the process has exited meanwhile), None when it is new."""
        details = self._context.details
        uid = details.owner(info.pid)
        if uid is None:
            return ""  # exited meanwhile
        exe_kb = details.code_sizes(info.pid).get("VmExe")
        key = weak_key(uid, info.comm, info.argv0_name, exe_kb)
        weak: dict[str, Any] = {"uid": uid, "name": info.comm, "argv0": info.argv0_name}
        if exe_kb is not None:
            weak["exe_kb"] = exe_kb
        if baseline.observe(self._kind, key, weak, now):
            return key
        older = weak_key(uid, info.comm, info.argv0_name, None)
        if older != key and self._vouch(baseline, info, older, key, weak, now):
            return key
        image = details.image(info.pid)
        if image is None or image[1] != info.start_ticks:
            return ""  # exited since the process table was read
        if image[0] == info.comm:
            return None
        # Its name changed since the process table was read: it executed another program (the old name
        # beside the new program's text size is neither's: a fork storm's shell child becoming true) or
        # renamed itself. Judged by what it is now, at once.
        name, argv0 = image[0], details.argv0_name(info.pid)
        now_key = weak_key(uid, name, argv0, exe_kb)
        return (
            now_key
            if baseline.observe(self._kind, now_key, {**weak, "name": name, "argv0": argv0}, now)
            else None
        )

    def _vouched(
        self, baseline: CycleBaseline, info: ProcessInfo, identity: ExecutableIdentity, now: float
    ) -> bool:
        """Whether an entry learned under a weaker identity vouches for another user's process, whose
        full identity this component sees now (module docstring)."""
        if not identity.knowable:
            return False
        uid = self._context.details.owner(info.pid)
        if uid is None or uid == self._own_uid:
            return False  # this user's processes were always seen in full
        exe_kb = self._context.details.code_sizes(info.pid).get("VmExe")
        for older in dict.fromkeys(
            (
                weak_key(uid, info.comm, info.argv0_name, exe_kb),
                weak_key(uid, info.comm, info.argv0_name, None),
            )
        ):
            if self._vouch(baseline, info, older, identity.key, identity.details(), now):
                return True
        return False

    def _vouch(
        self,
        baseline: CycleBaseline,
        info: ProcessInfo,
        older: str,
        key: str,
        details: dict[str, Any],
        now: float,
    ) -> bool:
        """Add ``key`` as learned when the entry ``older`` vouches for it: it exists, has vouched for
        nothing yet, and the process was running before this component started."""
        entry = baseline.live(self._kind).get(older)
        if entry is None or "vouched" in entry.details or info.start_ticks >= self._context.started_ticks:
            return False
        baseline.add(self._kind, key, {**details, "vouched_by": older}, now, LEARNED)
        baseline.revise(self._kind, older, {**entry.details, "vouched": key}, now)
        return True


class ExecutableWatch(_ProcessWatch):
    """Every process of the process table; fills ``new_processes`` and ``busiest_new``."""

    def __init__(self, context: Context) -> None:
        super().__init__(EXECUTABLE.name, context)

    def known(self, pid: int, program: Program) -> None:
        self._context.programs[pid] = program

    def observe(self, sample: Sample, baseline: CycleBaseline, now: float) -> Mapping[str, Any]:
        self._context.programs.clear()
        processes = sample.processes
        if processes is None:
            return {}
        checked = (self.check(baseline, info, now) for info in processes.table.values())
        new = [p for p in checked if p is not None]
        watched = processes.watched_pids
        allowed = self._context.allowed_gpu_processes
        cpu_percent = processes.cpu_percent
        unexplained = [
            (cpu_percent.get(p.pid, 0.0), p.pid)
            for p in new
            if p.pid not in watched and p.name not in allowed
        ]
        busiest = max(unexplained, default=None)
        return {
            "new_processes": tuple(sorted(new, key=lambda p: p.pid)),
            "busiest_new": (busiest[1], busiest[0]) if busiest is not None else None,
        }


class GpuExecutableWatch(_ProcessWatch):
    """The GPU's compute processes; fills ``new_gpu_processes``."""

    def __init__(self, context: Context) -> None:
        super().__init__(GPU_EXECUTABLE.name, context)

    def observe(self, sample: Sample, baseline: CycleBaseline, now: float) -> Mapping[str, Any]:
        table = sample.processes.table if sample.processes is not None else {}
        new: list[NewProcess] = []
        for process in sample.gpu.processes if sample.gpu is not None else ():
            info = table.get(process.pid) or ProcessInfo(process.pid, 0, process.name, process.name, "")
            found = self.check(baseline, info, now)
            if found is not None:
                new.append(found)
        return {"new_gpu_processes": tuple(new)}


class ExecutableItems(Items):
    """``pid:N``, ``/abs/path``, ``sha256:HEX`` (or ``HEX``), ``path:/abs/path``, after ``prefix``."""

    def parse(self, text: str, reader: IdentityReader) -> tuple[str, dict[str, Any]]:
        if text.startswith("pid:"):
            if not text[4:].isdigit():
                raise ItemError(f"{text!r}: expected pid:N with N a process id")
            identity = reader.read(int(text[4:]))
            if identity is None:
                raise ItemError(f"{text!r}: no such process, or it runs no executable")
            if not identity.knowable:
                reason = identity.reason_unknowable
                raise ItemError(f"{text!r}: its executable is {reason}: it can never be known")
            return identity.key, identity.details()
        if text.startswith(PATH_PREFIX):
            path = text[len(PATH_PREFIX) :]
            if not path.startswith("/"):
                raise ItemError(f"{text!r}: expected path:/absolute/path")
            return PATH_PREFIX + path, {"path": path}
        sha = parse_sha256(text)
        if sha is not None:
            return SHA256_PREFIX + sha, {"sha256": sha}
        if text.startswith("/"):
            identity = reader.read_file(text)
            if not identity.knowable:
                raise ItemError(f"{text!r}: cannot hash the file ({identity.reason_unknowable})")
            return identity.key, identity.details()
        raise ItemError(f"{text!r} is no ITEM form")

    def forget(self, text: str, reader: IdentityReader, entries: Mapping[str, Entry]) -> list[str]:
        """A path: its ``path:`` approval, the file as it is now (when it can be hashed), and every
        entry whose executable or script is that path (as given or resolved); otherwise the key and, for
        a hash, every entry whose executable or script has it."""
        if not text.startswith("/"):
            return super().forget(text, reader, entries)
        keys = [PATH_PREFIX + text]
        identity = reader.read_file(text)
        if identity.knowable:
            keys.append(identity.key)
        for path in dict.fromkeys((text, os.path.realpath(text))):
            keys += _made_of(entries, "path", path)
        return keys

    def made_of(self, key: str, entries: Mapping[str, Entry]) -> list[str]:
        if key.startswith(SHA256_PREFIX):
            return _made_of(entries, "sha256", key[len(SHA256_PREFIX) :])
        return []


def _made_of(entries: Mapping[str, Entry], field: str, value: str) -> list[str]:
    """Keys of entries whose executable or script has this path (field "path") or hash ("sha256")."""
    script_field = "script" if field == "path" else "script_sha256"
    return [
        key
        for key, entry in entries.items()
        if entry.details.get(field) == value or entry.details.get(script_field) == value
    ]


EXECUTABLE = Kind(
    name="executable",
    key=executable_key,
    items=ExecutableItems(
        "",
        [
            (
                "pid:N",
                "what process N runs now: its executable (path and SHA-256), or the\n"
                "interpreter and the script it runs",
            ),
            (
                "/abs/path",
                "the executable file at that path as it is now (path and SHA-256);\n"
                "forget: every entry whose executable or script is that path",
            ),
            ("sha256:HEX (or HEX)", "that content wherever it lies, as executable or as script"),
            ("path:/abs/path", "whatever lies at that path (its content may change)"),
        ],
        shown_details=["component"],
    ),
    watch=ExecutableWatch,
    fields=("new_processes", "busiest_new"),
    metrics=("new_executables", "new_executable_paths", "unknown_process_cpu"),
)

GPU_EXECUTABLE = Kind(
    name="gpu_executable",
    key=executable_key,
    items=ExecutableItems(
        "gpu:",
        [("gpu:<one of the above>", "the same, for GPU compute processes")],
        shown_details=["component"],
    ),
    watch=GpuExecutableWatch,
    fields=("new_gpu_processes",),
    metrics=("new_gpu_executables",),
)
