"""The keys the kinds (kinds/) store observations under, and the address forms they and the fleet
approvals (approvals.py) read.

- Endpoints are grouped by network: ``203.0.113.0/24:443`` for IPv4 (the /24) and
  ``[2001:db8:1:2::/64]:443`` for IPv6 (the /64), with the remote port. Grouping keeps services that rotate
  addresses inside their block (a CDN front, a cloud endpoint behind a load balancer) from looking new
  every few hours; a pool the device never talked to is in a network it never talked to. IPv4-mapped IPv6
  addresses count as IPv4.
- Endpoint patterns (operator and fleet approvals) are any CIDR with a port (``10.0.0.0/8:443``,
  ``[2001:db8::/32]:443``) or without one (``10.0.0.0/8``: every port); a bare address is its own /32 or
  /128.
- Listening ports: ``tcp:22`` or ``udp:53``.
- Operator approvals of executables may be patterns: ``sha256:<hex>`` (this content at any path, as
  executable or as script) and ``path:<path>`` (anything at that path).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Optional, Union

PROTOCOLS = ("tcp", "udp")

# The networks endpoints are grouped into.
IPV4_GROUP_PREFIX = 24
IPV6_GROUP_PREFIX = 64

SHA256_PREFIX = "sha256:"
PATH_PREFIX = "path:"

V4_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"  # ::ffff:a.b.c.d

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def endpoint_group(ip: str) -> str:
    """The network an address is grouped into, as text: ``203.0.113.0/24`` or ``2001:db8:1:2::/64``.

    IPv4-mapped IPv6 addresses count as IPv4. Raises ValueError for text that is not an address.
    """
    if ":" in ip:
        try:
            packed = socket.inet_pton(socket.AF_INET6, ip)
        except OSError:
            raise ValueError(f"not an IP address: {ip!r}") from None
        if packed[:12] != V4_MAPPED_PREFIX:
            network = socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8))
            return f"{network}/{IPV6_GROUP_PREFIX}"
        packed = packed[12:]
    else:
        try:
            packed = socket.inet_pton(socket.AF_INET, ip)
        except OSError:
            raise ValueError(f"not an IP address: {ip!r}") from None
    return f"{packed[0]}.{packed[1]}.{packed[2]}.0/{IPV4_GROUP_PREFIX}"


def network_key(network: str, port: Optional[int]) -> str:
    """``203.0.113.0/24:443``, ``[2001:db8::/64]:443``; without a port the network alone."""
    if port is None:
        return network
    if ":" in network:
        return f"[{network}]:{port}"
    return f"{network}:{port}"


def endpoint_key(ip: str, port: int) -> str:
    """The key an observed connection to ``ip``:``port`` is stored under (its group and the port)."""
    return network_key(endpoint_group(ip), port)


def listening_key(protocol: str, port: int) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not from 1 to 65535")
    return f"{protocol}:{port}"


def parse_port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{what}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_endpoint_pattern(text: str) -> tuple[Network, Optional[int]]:
    """``CIDR``, ``CIDR:port``, ``ADDR``, ``ADDR:port``, ``[v6 CIDR or ADDR]:port`` or a bare IPv6 CIDR or
    address (no port: a bare IPv6 text cannot carry one). An address is its own /32 or /128. Raises
    ValueError naming what is wrong."""
    text = text.strip()
    port: Optional[int] = None
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [IPv6 address or CIDR]:port")
        address, port = inside, parse_port(rest[1:], repr(text))
    elif text.count(":") == 1:  # IPv4 with a port
        address, _, port_text = text.partition(":")
        port = parse_port(port_text, repr(text))
    else:
        address = text
    try:
        network = ipaddress.ip_network(address, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
        raise ValueError(f"{text!r}: write IPv4-mapped addresses as IPv4")
    return network, port
