"""Whether each known program holds network sockets (kind ``program_network``): outbound connections (that
the device opened: not to a port it listens on) and listening sockets.

Keys: ``<program key> | outbound``, ``<program key> | listening``, and the marker ``<program key> |`` of
when this kind first saw the program (learning as for the other kinds about what programs do:
levels.py, ``learning_until``). A program that never held an outbound connection (or a listening
socket) while learning now does: new.

Which process holds a socket is found through the process's open files (``fd/``, or the privileged
reader's ``sockets`` answer for another user's process): a walk over processes, done only for sockets
not seen before, over the processes of the socket's user first, and at most MAX_WALKED processes a
cycle; what a walk finds is kept for as long as the socket is open. A socket whose holder is not found
(gone, or another user's without the privileged reader) is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ddcustom.device.baseline.cycle import CycleBaseline
from ddcustom.device.baseline.kinds.executables import ExecutableItems
from ddcustom.device.baseline.kinds.kind import Context, ItemError, Items, Kind, Program
from ddcustom.device.baseline.kinds.levels import learning_until
from ddcustom.device.baseline.kinds.program_code import marker_key
from ddcustom.device.sample import NewNetworkUse, ProcessInfo, Sample
from ddcustom.device.sources.identity import IdentityReader

OUTBOUND = "outbound"
LISTENING = "listening"
USES = (OUTBOUND, LISTENING)
MAX_WALKED = 512  # processes whose open files are looked through in one cycle, at most
GIVE_UP_CYCLES = 3  # a socket whose holder is not found this many times is left alone


class NetworkUseWatch:
    """Fills ``new_network_use``."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._kind = PROGRAM_NETWORK.name
        self._holders: dict[int, tuple[int, str]] = {}  # socket inode -> (pid, use)
        self._new: set[int] = set()  # the inodes of _holders whose use is new
        self._misses: dict[int, int] = {}  # socket inode -> walks that did not find its holder

    def observe(self, sample: Sample, baseline: CycleBaseline, now: float) -> Mapping[str, Any]:
        network, processes = sample.network, sample.processes
        if network is None or processes is None:
            return {"new_network_use": ()}
        listening_ports = {p.port for p in network.listening_tcp}
        sockets: dict[int, tuple[str, int]] = {}  # inode -> (use, uid)
        for connection in network.established_tcp:
            if connection.inode and connection.local_port not in listening_ports:
                sockets[connection.inode] = (OUTBOUND, connection.uid)
        for port in (*network.listening_tcp, *network.listening_udp):
            if port.inode:
                sockets[port.inode] = (LISTENING, port.uid)
        for inode in self._holders.keys() - sockets.keys():
            del self._holders[inode]  # closed
            self._new.discard(inode)
        unknown = {inode: found for inode, found in sockets.items() if inode not in self._holders}
        if unknown:
            self._walk(unknown, processes.table, baseline, now)
        programs = self._context.programs
        new = [
            NewNetworkUse(pid, programs[pid].path, use)
            for pid, use in (self._holders[inode] for inode in self._new)
            if pid in programs
        ]
        return {"new_network_use": tuple(sorted(set(new), key=lambda n: (n.pid, n.use)))}

    def _walk(
        self,
        unknown: dict[int, tuple[str, int]],
        table: Mapping[int, ProcessInfo],
        baseline: CycleBaseline,
        now: float,
    ) -> None:
        """Find the holders of the ``unknown`` sockets among the processes of known programs."""
        details = self._context.details
        programs = self._context.programs
        uids = {uid for _, uid in unknown.values()}
        candidates = [pid for pid in programs if pid in table]
        if -1 not in uids:  # the sockets' users are known: their processes first
            candidates.sort(key=lambda pid: details.owner(pid) not in uids)
        for pid in candidates[:MAX_WALKED]:
            held = details.socket_inodes(pid) & unknown.keys()
            for inode in held:
                use = unknown.pop(inode)[0]
                is_new = self._judge(baseline, programs[pid], use, now)
                self._holders[inode] = (pid, use)
                if is_new:
                    self._new.add(inode)
            if not unknown:
                break
        for inode in unknown:
            misses = self._misses.get(inode, 0) + 1
            if misses >= GIVE_UP_CYCLES:
                self._holders[inode] = (0, "")  # left alone while it is open
                self._misses.pop(inode, None)
            else:
                self._misses[inode] = misses
        for inode in self._misses.keys() - unknown.keys():
            del self._misses[inode]

    def _judge(self, baseline: CycleBaseline, program: Program, use: str, now: float) -> bool:
        """Whether ``program`` holding a socket of ``use`` is new; learned while learning."""
        entries = baseline.live(self._kind)
        marker = entries.get(marker_key(program))
        if marker is None:
            baseline.add(self._kind, marker_key(program), {"path": program.path}, now)
            marker = entries.get(marker_key(program))
        key = f"{program.key} | {use}"
        entry = entries.get(key)
        if entry is not None:
            baseline.refresh(self._kind, key, entry, now)
            return False
        if marker is not None and now < learning_until(baseline, marker):
            baseline.add(self._kind, key, {"path": program.path, "use": use}, now)
            return False
        return True


class NetworkUseItems(Items):
    """``network:<outbound|listening>:<pid:N or /abs/path>``: the program may hold such sockets."""

    def parse(self, text: str, reader: IdentityReader) -> tuple[str, dict[str, Any]]:
        use, _, program = text.partition(":")
        if use not in USES or not program.startswith(("pid:", "/")):
            raise ItemError(
                f"{self.prefix}{text!r}: expected {self.prefix}outbound:<pid:N or /abs/path> or "
                f"{self.prefix}listening:<pid:N or /abs/path>"
            )
        key, details = ExecutableItems("", []).parse(program, reader)
        path = details.get("script") or details.get("path", "")
        return f"{key} | {use}", {"path": path, "use": use}


PROGRAM_NETWORK = Kind(
    name="program_network",
    key=lambda program, use: f"{program.key} | {use}",
    items=NetworkUseItems(
        "network:",
        [
            (
                "network:outbound:<pid:N or /abs/path>",
                "the program may open connections (network:listening:...: may listen)",
            )
        ],
        shown_details=["path", "use"],
    ),
    watch=NetworkUseWatch,
    fields=("new_network_use",),
    metrics=("new_program_network_use",),
)
