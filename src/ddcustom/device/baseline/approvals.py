"""Fleet approvals from configuration: ``ApprovedExecutables``, ``ApprovedEndpoints``,
``ApprovedLibraries`` and ``ApprovedCpuLevels``.

One deployment's merge configuration approves a known-good change on every device:

- ``ApprovedExecutables``: SHA-256 hex strings (64 digits, optionally prefixed ``sha256:``) or absolute
  paths. A hash approves that content wherever it lies; a path approves whatever lies there (use it for
  files whose content changes per device or per release, in a folder only root can write). They match
  what runs: the script for an interpreter running a script file, else the executable. Approving
  ``python3`` therefore does not approve ``python3 /dev/shm/x.py``.
- ``ApprovedEndpoints``: ``CIDR`` (every port) or ``CIDR:port``; IPv6 with a port in brackets,
  ``[2001:db8::/32]:443``; a bare address is its own /32 or /128.
- ``ApprovedLibraries``: SHA-256s or absolute paths of shared objects any program may map.
- ``ApprovedCpuLevels``: a mapping from a program (its SHA-256, or its absolute path: the script for an
  interpreter running one) to the CPU it may use, in % of one core, above what it used while learning.
- ``FleetKnownExecutables``: the SHA-256s (``program_sha256``, identity.py) of the programs common in
  the device's thing group, written by ``ddcustom cloud prevalence --publish-known``. Known as an
  approval is, and they let the learning of what runs end early (kinds/executables.py, ``judging``).

``Approvals.parse`` raises ``ApprovalError`` naming the configuration key and the bad entry. Lookups are a
few set lookups: the endpoint matcher keeps one set per prefix length.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ddcustom.device.baseline.keys import SHA256_PREFIX, V4_MAPPED_PREFIX, network_key, parse_endpoint_pattern
from ddcustom.device.sources.identity import ExecutableIdentity

EXECUTABLES_KEY = "ApprovedExecutables"
ENDPOINTS_KEY = "ApprovedEndpoints"
LIBRARIES_KEY = "ApprovedLibraries"
CPU_LEVELS_KEY = "ApprovedCpuLevels"
FLEET_KNOWN_KEY = "FleetKnownExecutables"
MAX_FLEET_KNOWN = 5000
MAX_LEVEL = 100_000.0  # % of one core: a thousand cores

SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


class ApprovalError(ValueError):
    """An approval entry that cannot be used; the message names the key and the entry."""


def parse_sha256(text: str) -> Optional[str]:
    """Lower-case hex of ``<64 hex>`` or ``sha256:<64 hex>``; None when it is neither."""
    value = text.strip()
    if value.lower().startswith(SHA256_PREFIX):
        value = value[len(SHA256_PREFIX) :]
    return value.lower() if SHA256_HEX.fullmatch(value) else None


def address_int(ip: str) -> tuple[int, int]:
    """(IP version, address as an integer); IPv4-mapped IPv6 counts as IPv4. ValueError when not an IP."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        packed = socket.inet_pton(family, ip)
    except OSError:
        raise ValueError(f"not an IP address: {ip!r}") from None
    if family == socket.AF_INET6 and packed[:12] == V4_MAPPED_PREFIX:
        packed = packed[12:]
    return (4 if len(packed) == 4 else 6), int.from_bytes(packed, "big")


@dataclass
class EndpointMatcher:
    """Networks with an optional port; ``match(ip, port)`` is one set lookup per prefix length in use."""

    # (version, prefix length) -> {(network bits, port or None)}
    _buckets: dict[tuple[int, int], set[tuple[int, Optional[int]]]] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)  # canonical form of each pattern, as added

    def add(self, pattern: str) -> str:
        """Add a pattern (``parse_endpoint_pattern`` forms); returns its canonical text."""
        network, port = parse_endpoint_pattern(pattern)
        bits = network.max_prefixlen
        prefix = int(network.network_address) >> (bits - network.prefixlen)
        self._buckets.setdefault((network.version, network.prefixlen), set()).add((prefix, port))
        text = network_key(str(network), port)
        self.texts.append(text)
        return text

    def match(self, ip: str, port: int) -> bool:
        if not self._buckets:
            return False
        try:
            version, value = address_int(ip)
        except ValueError:
            return False
        bits = 32 if version == 4 else 128
        for (bucket_version, length), members in self._buckets.items():
            if bucket_version != version:
                continue
            prefix = value >> (bits - length)
            if (prefix, port) in members or (prefix, None) in members:
                return True
        return False


@dataclass
class Approvals:
    sha256s: frozenset[str] = frozenset()
    paths: frozenset[str] = frozenset()
    endpoints: EndpointMatcher = field(default_factory=EndpointMatcher)
    libraries: frozenset[str] = frozenset()  # SHA-256 (lower-case hex) or absolute paths
    cpu_levels: Mapping[str, float] = field(default_factory=dict)  # program SHA-256 or path -> % of one core
    fleet_known: frozenset[str] = frozenset()  # program_sha256 of the group's common programs

    @classmethod
    def parse(
        cls,
        executables: Iterable[str] = (),
        endpoints: Iterable[str] = (),
        libraries: Iterable[str] = (),
        cpu_levels: Optional[Mapping[str, Any]] = None,
        fleet_known: Iterable[str] = (),
    ) -> Approvals:
        sha256s, paths = _files(EXECUTABLES_KEY, executables)
        common: set[str] = set()
        for entry in fleet_known:
            sha = parse_sha256(entry) if isinstance(entry, str) else None
            if sha is None:
                raise ApprovalError(f"{FLEET_KNOWN_KEY} entry {entry!r}: expected a SHA-256 (64 hex digits)")
            common.add(sha)
        if len(common) > MAX_FLEET_KNOWN:
            raise ApprovalError(f"{FLEET_KNOWN_KEY}: {len(common)} entries, at most {MAX_FLEET_KNOWN}")
        library_hashes, library_paths = _files(LIBRARIES_KEY, libraries)
        levels: dict[str, float] = {}
        for program, level in (cpu_levels or {}).items():
            sha = parse_sha256(program)
            if sha is None and not (program.startswith("/") and "\0" not in program):
                raise ApprovalError(
                    f"{CPU_LEVELS_KEY} key {program!r}: expected a program's SHA-256 or absolute path"
                )
            if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 <= level <= MAX_LEVEL:
                raise ApprovalError(
                    f"{CPU_LEVELS_KEY} {program!r}: {level!r} is not a level in % of one core (0 to "
                    f"{MAX_LEVEL:g})"
                )
            levels[sha or program] = float(level)
        matcher = EndpointMatcher()
        for entry in endpoints:
            if not isinstance(entry, str):
                raise ApprovalError(f"{ENDPOINTS_KEY} entry {entry!r}: expected a string")
            try:
                matcher.add(entry)
            except ValueError as exc:
                raise ApprovalError(
                    f"{ENDPOINTS_KEY} entry {exc}; expected CIDR, CIDR:port or [IPv6 CIDR]:port"
                ) from None
        return cls(sha256s, paths, matcher, library_hashes | library_paths, levels, frozenset(common))

    def is_approved_executable(self, identity: ExecutableIdentity) -> bool:
        if not identity.knowable:
            return False
        sha = identity.content_sha256
        path = identity.content_path
        return bool(sha and sha in self.sha256s) or bool(path and path in self.paths)

    def is_fleet_known(self, identity: ExecutableIdentity) -> bool:
        """Whether ``identity`` is one of the group's common programs (FleetKnownExecutables)."""
        return bool(self.fleet_known) and identity.program_sha256 in self.fleet_known

    def is_approved_endpoint(self, ip: str, port: int) -> bool:
        return self.endpoints.match(ip, port)

    def is_approved_library(self, path: str, sha256: str) -> bool:
        return bool(sha256 and sha256 in self.libraries) or bool(path and path in self.libraries)


def _files(key: str, entries: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(SHA-256s, absolute paths) of a list of files; ApprovalError naming ``key`` and the bad entry."""
    sha256s: set[str] = set()
    paths: set[str] = set()
    for entry in entries:
        if not isinstance(entry, str):
            raise ApprovalError(f"{key} entry {entry!r}: expected a string")
        sha = parse_sha256(entry)
        if sha is not None:
            sha256s.add(sha)
        elif entry.startswith("/") and "\0" not in entry:
            paths.add(entry)
        else:
            raise ApprovalError(
                f"{key} entry {entry!r}: expected a SHA-256 (64 hex digits) or an absolute path"
            )
    return frozenset(sha256s), frozenset(paths)
