"""Details of single processes, read on demand (never for every process every cycle): who owns a
process, which sockets it holds, when it started.

The baseline reads the owner of a process whose executable it may not read; an alert's evidence reads
all three for the few processes it names.
"""

from __future__ import annotations

import os
from typing import Optional

from ddcustom.device.fileio import read_text

MAX_FDS = 4096  # of one process, when looking for the sockets it holds


class ProcessDetails:
    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self._boot_time: Optional[float] = None
        self._ticks = os.sysconf("SC_CLK_TCK")

    def owner(self, pid: int) -> Optional[int]:
        """The uid the process runs as; None when it has exited."""
        try:
            return os.stat(f"{self.proc_root}/{pid}").st_uid
        except OSError:
            return None

    def socket_inodes(self, pid: int) -> set[int]:
        """Inodes of the sockets process ``pid`` holds (none when it cannot be looked at)."""
        folder = f"{self.proc_root}/{pid}/fd"
        inodes: set[int] = set()
        try:
            names = os.listdir(folder)[:MAX_FDS]
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

    def started(self, start_ticks: int) -> Optional[int]:
        """A process's start in epoch seconds, from its start time in clock ticks after boot."""
        if self._boot_time is None:
            try:
                lines = read_text(f"{self.proc_root}/stat", 1 << 20).splitlines()
                self._boot_time = next(float(line.split()[1]) for line in lines if line.startswith("btime "))
            except (OSError, StopIteration, ValueError, IndexError):
                return None
        return int(self._boot_time + start_ticks / self._ticks)
