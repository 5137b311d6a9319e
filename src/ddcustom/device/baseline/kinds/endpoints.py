"""Outbound endpoints (kind ``endpoint``): the remote ends of the established connections the device
opened, grouped by network and port (keys.py: ``203.0.113.0/24:443``, ``[2001:db8:1:2::/64]:443``).

A connection from a port the device listens on was opened by the other end and is not looked at. An
endpoint is known when its group is in the baseline, an operator approved a pattern holding it (any CIDR,
with or without a port), or the fleet configuration does (``ApprovedEndpoints``); an address that is not
an IP never is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ddcustom.device.baseline.approvals import EndpointMatcher
from ddcustom.device.baseline.cycle import CycleBaseline
from ddcustom.device.baseline.file import APPROVED, LEARNED, Entry
from ddcustom.device.baseline.keys import endpoint_key, network_key, parse_endpoint_pattern
from ddcustom.device.baseline.kinds.kind import Context, ItemError, Items, Kind
from ddcustom.device.sample import Sample
from ddcustom.device.sources.identity import IdentityReader

log = logging.getLogger(__name__)

KEY_CACHE_SIZE = 4096  # (address, port) -> key: the connections of a few cycles


class EndpointWatch:
    """The established TCP connections; fills ``new_endpoints``."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._kind = ENDPOINT.name
        self._keys: dict[tuple[str, int], str] = {}
        self._entries: Mapping[str, Entry] = {}  # CycleBaseline.live, and
        self._approved = EndpointMatcher()  # the operator's approved patterns among them, of:
        self._generation = 0  # (CycleBaseline.generation; none is 0)

    def observe(self, sample: Sample, baseline: CycleBaseline, now: float) -> Mapping[str, Any]:
        network = sample.network
        if network is None:
            return {"new_endpoints": ()}
        tcp_ports = {p.port for p in network.listening_tcp}
        new = [
            connection
            for connection in network.established_tcp  # opened by the device: not to a port it listens on
            if connection.local_port not in tcp_ports
            and not self.observe_endpoint(baseline, connection.remote_ip, connection.remote_port, now)
        ]
        return {"new_endpoints": tuple(new)}

    def observe_endpoint(self, baseline: CycleBaseline, ip: str, port: int, now: float) -> bool:
        """Whether the remote endpoint ``ip``:``port`` is known (module docstring); learned while
        learning."""
        key = self._keys.get((ip, port))
        if key is None:
            try:
                key = endpoint_key(ip, port)
            except ValueError:
                return False
            if len(self._keys) >= KEY_CACHE_SIZE:
                self._keys.clear()
            self._keys[(ip, port)] = key
        if baseline.generation != self._generation:
            self._entries = baseline.live(self._kind)
            self._approved = approved_patterns(self._entries)
            self._generation = baseline.generation
        entry = self._entries.get(key)
        if entry is not None:
            baseline.refresh(self._kind, key, entry, now)
            return True
        if self._approved.match(ip, port) or self._context.approvals.is_approved_endpoint(ip, port):
            return True
        if baseline.learning(now):
            baseline.add(self._kind, key, {"address": ip, "port": port}, now, LEARNED)
            return True
        return False


def approved_patterns(entries: Mapping[str, Entry]) -> EndpointMatcher:
    """The patterns of the operator's approved entries; one that is not a pattern is logged and left
    out."""
    matcher = EndpointMatcher()
    for key, entry in entries.items():
        if entry.origin == APPROVED:
            try:
                matcher.add(key)
            except ValueError:
                log.warning("baseline: approved endpoint %r is not an endpoint pattern; ignored", key)
    return matcher


class EndpointItems(Items):
    """``endpoint:PATTERN``: a CIDR or an address, with or without a port (keys.py)."""

    def parse(self, text: str, reader: IdentityReader) -> tuple[str, dict[str, Any]]:
        try:
            network, port = parse_endpoint_pattern(text)
        except ValueError as exc:
            raise ItemError(f"endpoint: {exc}") from None
        return network_key(str(network), port), {"pattern": text}

    def made_of(self, key: str, entries: Mapping[str, Entry]) -> list[str]:
        """An address with a port: the group it falls in."""
        try:
            network, port = parse_endpoint_pattern(key)
        except ValueError:
            return []
        if port is not None and network.prefixlen == network.max_prefixlen:
            return [endpoint_key(str(network.network_address), port)]
        return []


ENDPOINT = Kind(
    name="endpoint",
    key=endpoint_key,
    items=EndpointItems(
        "endpoint:",
        [
            (
                "endpoint:ADDR:PORT",
                "a remote endpoint: endpoint:203.0.113.7:443, endpoint:203.0.113.0/24:443,\n"
                "endpoint:10.0.0.0/8 (every port), endpoint:[2001:db8::/64]:443",
            )
        ],
        shown_details=["address", "pattern"],
    ),
    watch=EndpointWatch,
    fields=("new_endpoints",),
    metrics=("new_outbound_endpoints", "new_endpoint_addresses"),
)
