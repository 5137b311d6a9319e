"""Details of single processes, read on demand (never for every process every cycle): who owns a
process, which sockets it holds, when it started, the sizes of its code, its loader variables.

The baseline reads the owner and code sizes of a process whose executable it may not read; an alert's
evidence reads the rest for the few processes it names. What only the process's own user (or root) may
read (its open files, its environment) is asked of the privileged reader when there is one.
"""

from __future__ import annotations

import os
from typing import Optional

from ddcustom.device.fileio import read_bounded, read_text
from ddcustom.device.sources.privileged.client import PrivilegedReader
from ddcustom.device.sources.privileged.protocol import LOADER_VARIABLES, MAX_VALUE_CHARS
from ddcustom.device.sources.procfs import STAT_BYTES, argv0_name, exiting, parse_stat, read_cmdline

MAX_FDS = 4096  # of one process, when looking for the sockets it holds
MAX_STATUS_BYTES = 8192
MAX_ENVIRON_BYTES = 256 * 1024
CODE_SIZES = ("VmExe", "VmLib")  # kB of the program's text and of its libraries: anyone may read them


class ProcessDetails:
    def __init__(self, proc_root: str = "/proc", privileged: Optional[PrivilegedReader] = None) -> None:
        self.proc_root = proc_root
        self.privileged = privileged
        self._boot_time: Optional[float] = None
        self._ticks = os.sysconf("SC_CLK_TCK")

    def owner(self, pid: int) -> Optional[int]:
        """The uid the process runs as; None when it has exited."""
        try:
            return os.stat(f"{self.proc_root}/{pid}").st_uid
        except OSError:
            return None

    def image(self, pid: int) -> Optional[tuple[str, int]]:
        """(name, start time in clock ticks) of the process now, as anyone may read them; None when it has
        exited or is exiting (a zombie). A process that executed another program since keeps its start
        time, not its name."""
        try:
            text = read_bounded(f"{self.proc_root}/{pid}/stat", STAT_BYTES).decode("utf-8", "replace")
            comm, _, _, start = parse_stat(text)
        except (OSError, ValueError, IndexError):
            return None
        return None if exiting(text) else (comm, start)

    def argv0_name(self, pid: int) -> str:
        """The base name of the process's argv[0] now, as anyone may read it ("" for none)."""
        return argv0_name(read_cmdline(f"{self.proc_root}/{pid}/cmdline"))

    def socket_inodes(self, pid: int) -> set[int]:
        """Inodes of the sockets process ``pid`` holds (none when it cannot be looked at)."""
        folder = f"{self.proc_root}/{pid}/fd"
        inodes: set[int] = set()
        try:
            names = os.listdir(folder)[:MAX_FDS]
        except PermissionError:
            answer = self._ask("sockets", pid)
            found = answer.get("inodes") if answer is not None else None
            return {i for i in found if isinstance(i, int)} if isinstance(found, list) else inodes
        except OSError:
            return inodes
        for name in names:
            try:
                target = os.readlink(f"{folder}/{name}")
            except OSError:
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                inodes.add(int(target[8:-1]))
        return inodes

    def sockets_visible(self, pid: int) -> bool:
        """Whether ``socket_inodes`` can look into the process: its fd folder is readable to this
        component (its own user's process, or running as root), or the privileged reader answers for it."""
        return self.privileged is not None or os.access(f"{self.proc_root}/{pid}/fd", os.R_OK)

    def started(self, start_ticks: int) -> Optional[int]:
        """A process's start in epoch seconds, from its start time in clock ticks after boot."""
        if self._boot_time is None:
            try:
                lines = read_text(f"{self.proc_root}/stat", 1 << 20).splitlines()
                self._boot_time = next(float(line.split()[1]) for line in lines if line.startswith("btime "))
            except (OSError, StopIteration, ValueError, IndexError):
                return None
        return int(self._boot_time + start_ticks / self._ticks)

    def code_sizes(self, pid: int) -> dict[str, int]:
        """VmExe and VmLib of ``/proc/PID/status`` in kB (none for a kernel thread or a process gone)."""
        try:
            text = read_bounded(f"{self.proc_root}/{pid}/status", MAX_STATUS_BYTES).decode("ascii", "replace")
        except OSError:
            return {}
        sizes: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name in CODE_SIZES and value.split() and value.split()[0].isdigit():
                sizes[name] = int(value.split()[0])
        return sizes

    def loader_variables(self, pid: int) -> dict[str, str]:
        """The dynamic loader's variables in the process's environment (LD_PRELOAD and the like), and no
        other variable; from the privileged reader for another user's process."""
        try:
            raw = read_bounded(f"{self.proc_root}/{pid}/environ", MAX_ENVIRON_BYTES)
        except PermissionError:
            answer = self._ask("preload", pid)
            found = answer.get("variables") if answer is not None else None
            if not isinstance(found, dict):
                return {}
            return {k: v for k, v in found.items() if k in LOADER_VARIABLES and isinstance(v, str)}
        except OSError:
            return {}
        variables: dict[str, str] = {}
        for entry in raw.split(b"\0"):
            name, sep, value = entry.partition(b"=")
            text = name.decode("ascii", "replace")
            if sep and text in LOADER_VARIABLES and text not in variables:
                variables[text] = value.decode("utf-8", "replace")[:MAX_VALUE_CHARS]
        return variables

    def _ask(self, op: str, pid: int) -> Optional[dict[str, object]]:
        reader = self.privileged
        return reader.ask(op, pid) if reader is not None else None
