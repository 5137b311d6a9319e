"""The code each known program maps (kind ``program_code``): the shared objects it maps executable, and
whether it ever had executable memory that no file backs.

Keys: ``<program key> | <SHA-256> <library path>`` for a library (the path percent-quoted as in
executable keys), ``<program key> | anonymous executable memory``, and ``<program key> |``, a marker of
when this kind first saw the program. A library a known program never mapped while learning is new, and
so is executable memory without a file in a program that never had any. Learning is the baseline's, or
for a program the baseline came to know later (a deployment, an upgrade that brought this kind to a
learned baseline), as long from the marker's first sight.

What a process maps is read when it is first seen (once it is SETTLE_SECONDS old), every cycle for a
watched application's processes (where a library loaded at run time is most likely), every
BUSY_RECHECK_SECONDS for a process using more than a floor of CPU, and every RECHECK_SECONDS for the
others; at most MAX_READS_PER_CYCLE reads a cycle, new processes first. A new library is reported,
with the loader variables of the process (``LD_PRELOAD`` ...) and ``/etc/ld.so.preload``, for as long
as the process maps it.

Approvals: ``ApprovedLibraries`` (the configuration: SHA-256s or paths any program may map), and
``ddcustom baseline approve library:ITEM`` (keys ``* | sha256:<hex>`` and ``* | path:<path>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import quote

from ddcustom.device.baseline.approvals import parse_sha256
from ddcustom.device.baseline.cycle import CycleBaseline
from ddcustom.device.baseline.file import Entry
from ddcustom.device.baseline.kinds.kind import Context, ItemError, Items, Kind, Program
from ddcustom.device.baseline.kinds.levels import FLOOR, learning_until
from ddcustom.device.sample import NewLibrary, ProcessInfo, Sample
from ddcustom.device.sources.identity import DELETED_SUFFIX, IdentityReader
from ddcustom.device.sources.mapped_code import MappedCode, MappedCodeReader, MappedFile

RECHECK_SECONDS = 300.0
BUSY_RECHECK_SECONDS = 30.0
MAX_READS_PER_CYCLE = 32
# A process younger than this is read later: right after exec the loader has mapped only itself and the
# program, not yet the program's libraries (a read then would learn, or judge, a partial set).
SETTLE_SECONDS = 2.0
ANONYMOUS = "anonymous executable memory"
ANY_PROGRAM = "* | "


def marker_key(program: Program) -> str:
    return f"{program.key} |"


def library_key(program: Program, path: str, sha256: str) -> str:
    return (
        f"{program.key} | {sha256 or '-'} {quote(path, safe='/:@!$&()*+,;=-._~', errors='surrogateescape')}"
    )


@dataclass
class _Process:
    read_at: float  # monotonic time its code was last read
    new: tuple[NewLibrary, ...]  # what of it was new then
    anonymous: tuple[NewLibrary, ...]


class CodeWatch:
    """Fills ``new_libraries`` and ``new_anonymous_code``."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._kind = PROGRAM_CODE.name
        self._reader = MappedCodeReader(context.identities)
        self._processes: dict[tuple[int, int], _Process] = {}

    def observe(self, sample: Sample, baseline: CycleBaseline, now: float) -> Mapping[str, Any]:
        processes = sample.processes
        if processes is None:
            return {"new_libraries": (), "new_anonymous_code": ()}
        programs = self._context.programs
        mono = sample.monotonic
        due: list[tuple[float, int, ProcessInfo]] = []  # (priority: lower first, pid, info)
        seen: set[tuple[int, int]] = set()
        for pid in programs:
            info = processes.table.get(pid)
            if info is None:
                continue
            seen.add((pid, info.start_ticks))
            known = self._processes.get((pid, info.start_ticks))
            if known is None:
                started = self._context.details.started(info.start_ticks)
                if started is None or sample.time - started >= SETTLE_SECONDS:
                    due.append((0.0, pid, info))
                continue
            since = mono - known.read_at
            busy = processes.cpu_percent.get(pid, 0.0) > FLOOR
            if (
                pid in processes.watched_pids
                or since >= RECHECK_SECONDS
                or (busy and since >= BUSY_RECHECK_SECONDS)
            ):
                due.append((1.0 - since / RECHECK_SECONDS, pid, info))
        for key in self._processes.keys() - seen:
            del self._processes[key]
        due.sort(key=lambda item: item[0])
        for _, pid, info in due[:MAX_READS_PER_CYCLE]:
            code = self._reader.read(pid, info.start_ticks)
            # A process that executed another program since the sample (a shell's child becoming the
            # command it runs) maps that program's code, not its program's, and one that exited while
            # read leaves files unhashed: read it again next cycle, if it is still there.
            if code is not None and self._context.details.image(pid) == (info.comm, info.start_ticks):
                self._processes[(pid, info.start_ticks)] = self._look(
                    baseline, programs[pid], pid, code, now, mono
                )
        new = tuple(n for p in self._processes.values() for n in p.new)
        anonymous = tuple(n for p in self._processes.values() for n in p.anonymous)
        return {"new_libraries": new, "new_anonymous_code": anonymous}

    def _look(
        self, baseline: CycleBaseline, program: Program, pid: int, code: MappedCode, now: float, mono: float
    ) -> _Process:
        """Learn, or find what is new, in what process ``pid`` of ``program`` maps."""
        entries = baseline.live(self._kind)
        marker = entries.get(marker_key(program))
        if marker is None:
            baseline.add(self._kind, marker_key(program), {"path": program.path}, now)
            marker = entries.get(marker_key(program))
        learning = marker is not None and now < learning_until(baseline, marker)
        new: list[NewLibrary] = []
        approvals = self._context.approvals
        for mapped in code.files:
            if mapped.path == program.path:
                continue  # the program itself
            key = library_key(program, mapped.path, mapped.sha256)
            entry = entries.get(key)
            if entry is None and mapped.path.endswith(DELETED_SUFFIX):
                entry = self._learned_before_deleted(entries, program, mapped)
            if entry is not None:
                baseline.refresh(self._kind, key, entry, now)
            elif learning:
                baseline.add(self._kind, key, {"path": mapped.path, "sha256": mapped.sha256}, now)
            elif not (
                approvals.is_approved_library(mapped.path, mapped.sha256)
                or self._approved(entries, mapped.path, mapped.sha256)
            ):
                new.append(NewLibrary(pid, program.path, mapped.path, mapped.sha256))
        anonymous: list[NewLibrary] = []
        if code.anonymous_executable:
            key = f"{program.key} | {ANONYMOUS}"
            entry = entries.get(key)
            if entry is not None:
                baseline.refresh(self._kind, key, entry, now)
            elif learning:
                baseline.add(self._kind, key, {"path": ANONYMOUS}, now)
            else:
                anonymous.append(NewLibrary(pid, program.path, "", ""))
        if new or anonymous:
            preload = self._preload(pid)
            new = [NewLibrary(n.pid, n.program, n.path, n.sha256, preload) for n in new]
            anonymous = [NewLibrary(n.pid, n.program, n.path, n.sha256, preload) for n in anonymous]
        return _Process(mono, tuple(new), tuple(anonymous))

    def _learned_before_deleted(
        self, entries: Mapping[str, Entry], program: Program, mapped: MappedFile
    ) -> Optional[Entry]:
        """The entry of a library the program learned at the path of ``mapped``, a file deleted or
        replaced since it was mapped (a package upgrade under a running process): with the same SHA-256
        when it is known (read through the mapping), else any. None when the program never mapped it."""
        path = mapped.path[: -len(DELETED_SUFFIX)]
        if mapped.sha256:
            return entries.get(library_key(program, path, mapped.sha256))
        prefix, suffix = f"{program.key} | ", " " + library_key(program, path, "").rpartition(" ")[2]
        return next((e for k, e in entries.items() if k.startswith(prefix) and k.endswith(suffix)), None)

    def _approved(self, entries: Mapping[str, Entry], path: str, sha256: str) -> bool:
        return (
            sha256 != "" and f"{ANY_PROGRAM}sha256:{sha256}" in entries
        ) or f"{ANY_PROGRAM}path:{path}" in entries

    def _preload(self, pid: int) -> str:
        """The loader variables of the process and /etc/ld.so.preload, as one line ("" when neither)."""
        found = [f"{name}={value}" for name, value in self._context.details.loader_variables(pid).items()]
        system = self._reader.system_preload()
        if system:
            found.append(f"/etc/ld.so.preload: {system}")
        return "; ".join(found)


class CodeItems(Items):
    """``library:sha256:HEX`` (or ``library:HEX``) or ``library:/abs/path``: any program may map it."""

    def parse(self, text: str, reader: IdentityReader) -> tuple[str, dict[str, Any]]:
        sha = parse_sha256(text)
        if sha is not None:
            return f"{ANY_PROGRAM}sha256:{sha}", {"sha256": sha}
        if text.startswith("/") and "\0" not in text:
            return f"{ANY_PROGRAM}path:{text}", {"path": text}
        raise ItemError(f"{self.prefix}{text!r}: expected {self.prefix}sha256:HEX or {self.prefix}/abs/path")


PROGRAM_CODE = Kind(
    name="program_code",
    key=library_key,
    items=CodeItems(
        "library:",
        [
            (
                "library:sha256:HEX, library:/abs/path",
                "a shared object any program may map (by content, or whatever lies\nat that path)",
            )
        ],
        shown_details=["path", "sha256"],
    ),
    watch=CodeWatch,
    fields=("new_libraries", "new_anonymous_code"),
    metrics=("new_program_libraries", "new_program_anonymous_code"),
)
