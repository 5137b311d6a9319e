"""The code a process maps: the files it maps executable (path and SHA-256), and how many executable
regions no file backs (code written at run time: a JIT, or code injected without a file).

Read on demand, one process at a time (the baseline reads a process when it first sees it and now and
then, never every process every cycle): ``/proc/PID/maps`` of a process this component may inspect, the
privileged reader's ``maps`` answer for another user's. Each file is hashed once per version (the
identity reader's cache), through the process's own root so that a process in a container is hashed
right; a file deleted or replaced since it was mapped is reported so, and never hashed by its path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ddcustom.device.fileio import read_bounded, read_text
from ddcustom.device.sources.identity import DELETED, DELETED_SUFFIX, IdentityReader

MAX_MAPS_BYTES = 4 * 1024 * 1024  # /proc/PID/maps of a large process is a few hundred KB
MAX_MAPPINGS = 256  # executable files of one process
MAX_PRELOAD_BYTES = 64 * 1024
SYSTEM_PRELOAD = "/etc/ld.so.preload"
# Executable regions the kernel makes for every process: not code the program brought.
KERNEL_REGIONS = frozenset({"[vdso]", "[vsyscall]", "[uprobes]"})


@dataclass(frozen=True)
class MappedFile:
    path: str
    sha256: str  # "" when it cannot be known (``reason``)
    reason: str = ""


@dataclass(frozen=True)
class MappedCode:
    files: tuple[MappedFile, ...]  # each file once, in the order first mapped
    anonymous_executable: int  # executable regions no file backs (the kernel's own left out)


class MappedCodeReader:
    def __init__(self, identities: IdentityReader, through_map_files: bool = False) -> None:
        """``through_map_files``: hash each mapping through ``/proc/PID/map_files`` (what is mapped, even
        deleted or replaced since; needs root, as the privileged reader has), else by its path inside the
        process's root."""
        self._identities = identities
        self._map_files = through_map_files
        self.proc_root = identities.proc_root

    def read(self, pid: int, start_ticks: Optional[int] = None) -> Optional[MappedCode]:
        """The code process ``pid`` maps; None when it is gone or may not be read (no privileged reader)."""
        try:
            raw = read_bounded(f"{self.proc_root}/{pid}/maps", MAX_MAPS_BYTES)
        except PermissionError:
            return self._read_privileged(pid, start_ticks)
        except OSError:
            return None
        return self._parse(pid, raw.decode("utf-8", "replace"))

    def system_preload(self) -> str:
        """What ``/etc/ld.so.preload`` asks every program to load ("" when there is no such file)."""
        try:
            return read_text(SYSTEM_PRELOAD, MAX_PRELOAD_BYTES).strip()
        except OSError:
            return ""

    def _parse(self, pid: int, text: str) -> MappedCode:
        files: dict[str, MappedFile] = {}
        anonymous = 0
        for line in text.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) < 5 or len(fields[1]) < 3 or fields[1][2] != "x":
                continue
            path = fields[5] if len(fields) == 6 else ""
            if not path.startswith("/"):
                anonymous += path not in KERNEL_REGIONS
                continue
            if path in files or len(files) >= MAX_MAPPINGS:
                continue
            if self._map_files:
                sha, reason = self._identities.digest(f"{self.proc_root}/{pid}/map_files/{fields[0]}")
            elif path.endswith(DELETED_SUFFIX):
                sha, reason = "", DELETED
            else:
                sha, reason = self._identities.digest(f"{self.proc_root}/{pid}/root{path}")
            files[path] = MappedFile(path, sha, reason)
        return MappedCode(tuple(files.values()), anonymous)

    def _read_privileged(self, pid: int, start_ticks: Optional[int]) -> Optional[MappedCode]:
        reader = self._identities.privileged
        answer = reader.ask("maps", pid, start_ticks) if reader is not None else None
        if answer is None:
            return None
        found = answer.get("files")
        anonymous = answer.get("anonymous_executable")
        if not isinstance(found, list) or not isinstance(anonymous, int):
            return None
        files = []
        for item in found[:MAX_MAPPINGS]:
            fields = (
                [item.get(name) for name in ("path", "sha256", "reason")] if isinstance(item, dict) else []
            )
            if len(fields) == 3 and all(isinstance(value, str) for value in fields):
                files.append(MappedFile(*(str(value) for value in fields)))
        return MappedCode(tuple(files), anonymous)
