"""Evidence for an alert: what an operator needs to act without logging in to the device.

A metric's declaration says what a violation points at (metrics.Metric.culprits): processes, connections,
other items (listening ports, a program's learned level next to its level now, a new library with its
SHA-256). This module describes them from the sample the alert was raised on and from the sources'
readers of single processes, once per in-alarm event (never on the per-cycle path): for each process its
pid, name, executable path and SHA-256 (with an interpreter's script), command line, user, start time,
loader variables (``LD_PRELOAD`` ...) when it has any, parent chain up to pid 1, and the remote endpoints
of its established connections; a connection whose process is not named is matched to the process
holding its socket. Everything is bounded, so that an alert stays far below IoT Core's 128 KB message
size whatever the device runs.

The free text of the evidence (a process's command line, its name, its loader variables and its parents'
names: what the process or its starter chose) passes through redact.py before it is put in: secrets are
replaced by ``[redacted]`` and ``redacted`` says, per field, which kinds of thing were cut. Paths,
hashes, users and addresses are not free text and are kept.
"""

from __future__ import annotations

import json
import logging
import pwd
from collections.abc import Mapping
from typing import Any, Optional

from ddcustom.device.alerts.redact import Redactor
from ddcustom.device.metrics import Culprits
from ddcustom.device.sample import Connection, ProcessInfo, Sample
from ddcustom.device.sources.identity import NO_ACCESS, IdentityReader
from ddcustom.device.sources.process_details import ProcessDetails

log = logging.getLogger(__name__)

MAX_PROCESSES = 5
MAX_ENDPOINTS = 20
MAX_CMDLINE_CHARS = 512
MAX_PARENTS = 16
MAX_BYTES = 16 * 1024
# What an alert says of a process the component may not read (no privileged reader): plainly, why its
# path and SHA-256 are missing, and what it was known by instead.
WEAK_IDENTITY = (
    "weak: this component runs without the privileged reader and may not read this user's executable; "
    "the process is known only by its user, name, argv[0] and code size (code_kb)"
)


class EvidenceReader:
    """Describes what an alert points at; shares the identity reader (and its hashes) with the baseline."""

    def __init__(
        self, identities: IdentityReader, details: ProcessDetails, redactor: Optional[Redactor] = None
    ) -> None:
        self._identities = identities
        self._details = details
        self.redactor = redactor or Redactor()  # replaced when EvidenceRedactPatterns changes

    def collect(self, sample: Sample, culprits: Culprits) -> Optional[dict[str, Any]]:
        """``describe``, for the agent: never raises (evidence is a help; its failure must not cost the
        alert), a failure is logged."""
        try:
            return self.describe(sample, culprits)
        except Exception as exc:
            log.warning("alert evidence not collected: %s: %s", type(exc).__name__, exc)
            return None

    def describe(self, sample: Sample, culprits: Culprits) -> Optional[dict[str, Any]]:
        """The evidence of ``culprits`` in ``sample``; None when there is nothing to show."""
        pids, connections, items = culprits
        table = sample.processes.table if sample.processes is not None else {}
        established = sample.network.established_tcp if sample.network is not None else ()
        by_inode = {c.inode: c for c in established if c.inode}
        chosen = list(dict.fromkeys(pids))[:MAX_PROCESSES]
        miners = (
            frozenset(m.pid for m in sample.processes.miners) if sample.processes is not None else frozenset()
        )
        evidence: dict[str, Any] = {}
        if connections and not chosen:  # the processes holding those connections
            wanted = {c.inode for c in connections if c.inode}
            holders = (pid for pid in sorted(table) if wanted & self._details.socket_inodes(pid))
            chosen = list(holders)[:MAX_PROCESSES]
            if not chosen:
                chosen = self._candidates(connections, sample, evidence)
        described = (self._process(pid, table, by_inode, pid in miners) for pid in chosen)
        processes = [p for p in described if p is not None]
        if processes:
            evidence["processes"] = processes
        if connections:
            evidence["connections"] = sorted({c.remote_addr for c in connections})[:MAX_ENDPOINTS]
        if items:
            evidence["items"] = list(items[:MAX_ENDPOINTS])
        while processes and len(json.dumps(evidence)) > MAX_BYTES:
            processes.pop()  # the first processes are described whole rather than all of them cut
            evidence["truncated"] = True
        return evidence or None

    def _candidates(
        self, connections: tuple[Connection, ...], sample: Sample, evidence: dict[str, Any]
    ) -> list[int]:
        """When no process holds the sockets as far as this component can look: the processes of the
        sockets' user it could not look into (another user's, without the privileged reader), the new
        ones first, and a ``holder`` note saying so; none when it looked into every one of them."""
        uids = {c.uid for c in connections if c.uid >= 0}
        table = sample.processes.table if sample.processes is not None else {}
        if not uids or not table:
            return []
        users = ", ".join(_user(uid) for uid in sorted(uids))
        owned = [pid for pid in sorted(table) if self._details.owner(pid) in uids]
        candidates = [pid for pid in owned if not self._details.sockets_visible(pid)]
        new = {p.pid for p in sample.baseline.new_processes} if sample.baseline is not None else set()
        candidates.sort(key=lambda pid: pid not in new)
        if owned and not candidates:
            evidence["holder"] = (
                f"none of the processes of user {users} this component sees: the holder may run in another "
                "PID namespace (a container's) or have closed the connection since"
            )
        elif len(candidates) == 1:
            unseen = "" if len(owned) == 1 else " this component may not look into"
            evidence["holder"] = f"the only process of user {users}{unseen}"
        elif candidates:
            evidence["holder"] = (
                f"one of the {len(candidates)} processes of user {users} (this component may not see which "
                "without the privileged reader; new ones first)"
            )
        return candidates[:MAX_PROCESSES]

    def _process(
        self, pid: int, table: Mapping[int, ProcessInfo], by_inode: Mapping[int, Connection], miner: bool
    ) -> Optional[dict[str, Any]]:
        """``miner``: the miner rule counts it (its pool login and wallets are evidence: redact.py)."""
        info = table.get(pid)
        uid = self._details.owner(pid)
        if uid is None:
            return None  # it has exited since the sample
        redacted: dict[str, list[str]] = {}

        def text(field: str, value: str, miner: bool = False) -> str:
            result = self.redactor.redact(value, miner)
            if result.kinds:
                kinds = redacted.setdefault(field, [])
                kinds.extend(k for k in result.kinds if k not in kinds)
            return result.text

        described: dict[str, Any] = {"pid": pid, "name": text("name", info.comm if info else "")}
        identity = self._identities.read(pid, process=info)
        if identity is not None:
            described["exe"] = identity.path
            described["sha256"] = identity.sha256
            if identity.script:
                described["script"] = identity.script
                described["script_sha256"] = identity.script_sha256
            if identity.reason_unknowable:
                described["unknowable"] = identity.reason_unknowable
            if identity.reason_unknowable == NO_ACCESS:
                described["identity"] = WEAK_IDENTITY
                described["code_kb"] = self._details.code_sizes(pid)
        if info is not None:
            described["cmdline"] = text("cmdline", _cut(info.cmdline), miner)
            started = self._details.started(info.start_ticks)
            if started is not None:
                described["started"] = started
        described["user"] = _user(uid)
        loader = self._details.loader_variables(pid)
        if loader:  # LD_PRELOAD and the like: code the process was told to load
            described["loader"] = {name: text("loader", value) for name, value in loader.items()}
        described["parents"] = [
            {**parent, "name": text("parents", parent["name"])} for parent in _parents(pid, table)
        ]
        endpoints = sorted(
            {by_inode[i].remote_addr for i in self._details.socket_inodes(pid) if i in by_inode}
        )
        described["endpoints"] = endpoints[:MAX_ENDPOINTS]
        if redacted:
            described["redacted"] = redacted
        return described


def _cut(cmdline: str) -> str:
    """The first MAX_CMDLINE_CHARS characters, without a word cut in two (whose rest could be a secret
    too short for the redaction's rules to recognize)."""
    if len(cmdline) <= MAX_CMDLINE_CHARS:
        return cmdline
    cut = cmdline[:MAX_CMDLINE_CHARS]
    if not cmdline[MAX_CMDLINE_CHARS].isspace() and " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip()


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _parents(pid: int, table: Mapping[int, ProcessInfo]) -> list[dict[str, Any]]:
    """The chain of parents from ``pid``'s up to pid 1 (names and pids), as far as the table has them."""
    chain: list[dict[str, Any]] = []
    seen = {pid}
    parent = table[pid].ppid if pid in table else 0
    while parent > 0 and parent not in seen and len(chain) < MAX_PARENTS:
        seen.add(parent)
        info = table.get(parent)
        chain.append({"pid": parent, "name": info.comm if info else ""})
        if info is None:
            break
        parent = info.ppid
    return chain
