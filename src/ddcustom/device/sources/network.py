"""Network source: interface counters, listening ports and established TCP connections.

Parses ``/proc/net/dev`` and ``/proc/net/{tcp,tcp6,udp,udp6}`` directly. The public agent SDK asks psutil
for every connection and then looks the local interface up with ``net_if_addrs()`` once or twice per
connection; here the address-to-interface map is built once per cycle and each table is one pass over
its lines. Parsing functions take text and return values, so tests feed them fixture files.

TCP sockets are listed through the kernel's sock_diag netlink interface (what ``ss`` uses) when it is
available: reading /proc/net/tcp and tcp6 makes the kernel walk its whole established-socket hash table
(262144 buckets on a machine with 24 GB) once per file, about 1 ms of CPU each even with no sockets,
while a netlink dump filtered to the two states we need costs a fraction of that. Where netlink is not
allowed (some sandboxes), the /proc tables are read instead; both give the same entries.

The dump is asked for with the kernel's older TCPDIAG_GETSOCK request, which covers IPv4 and IPv6 sockets
in one walk of the hash table; the per-family SOCK_DIAG_BY_FAMILY request walks it once per family, and
the walk alone is about 2.5 ms of CPU on a large table even with no sockets. A kernel that refuses the
older request is asked per family from then on. Each record is read with one precompiled struct, and the
Connection of a socket that was already open in the previous cycle is reused rather than built again.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Iterable, Mapping
from typing import Any, Callable, ClassVar, Optional

import psutil

from ddcustom.device.fileio import read_bounded
from ddcustom.device.sample import Connection, ListeningPort, NetCounters, NetworkStats, Sample
from ddcustom.device.sources.source import THIS_MACHINE, Machine, SourceSettings

log = logging.getLogger(__name__)

# Socket states (include/net/tcp_states.h).
TCP_ESTABLISHED = 1
TCP_LISTEN = 10
UDP_UNCONNECTED = 7  # TCP_CLOSE: an unconnected (listening) UDP socket
_STATE_TEXT = {f"{state:02X}": state for state in (TCP_ESTABLISHED, TCP_LISTEN, UDP_UNCONNECTED)}

# /proc/net/tcp lines are 150 bytes: 64 MiB is about 400 000 sockets, far beyond a device.
MAX_TABLE_BYTES = 64 * 1024 * 1024
MAX_DEV_BYTES = 1024 * 1024

_WILDCARDS = frozenset({"0.0.0.0", "::"})
_IPV4_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"

# (state, local_ip, local_port, remote_ip, remote_port, inode, uid of the socket's owner)
SocketEntry = tuple[int, str, int, str, int, int, int]


def decode_address(hex_ip: str) -> str:
    """Text form of a kernel hex address: 8 hex digits (IPv4) or 32 (IPv6), each 32-bit word in host
    byte order. IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are returned as IPv4."""
    if len(hex_ip) not in (8, 32):
        raise ValueError(f"not a kernel socket address: {hex_ip!r}")
    words = [int(hex_ip[i : i + 8], 16) for i in range(0, len(hex_ip), 8)]
    return _ip_text(struct.pack(f"={len(words)}I", *words))


def parse_socket_table(text: str, states: Iterable[int]) -> list[SocketEntry]:
    """Entries of a /proc/net/{tcp,tcp6,udp,udp6} table whose state is in ``states``."""
    wanted = {f"{state:02X}" for state in states}
    decoded: dict[str, str] = {}  # many sockets share an address: decode each one once
    entries: list[SocketEntry] = []
    for line in text.splitlines()[1:]:
        # sl, local, remote, st, queues, timer, retransmits, uid, timeout, inode
        fields = line.split(None, 10)
        if len(fields) < 4 or fields[3] not in wanted:
            continue
        local_hex, _, local_port = fields[1].partition(":")
        remote_hex, _, remote_port = fields[2].partition(":")
        local_ip = decoded.get(local_hex) or decoded.setdefault(local_hex, decode_address(local_hex))
        remote_ip = decoded.get(remote_hex) or decoded.setdefault(remote_hex, decode_address(remote_hex))
        inode = int(fields[9]) if len(fields) > 9 else 0
        uid = int(fields[7]) if len(fields) > 7 else -1
        entries.append(
            (
                _STATE_TEXT[fields[3]],
                local_ip,
                int(local_port, 16),
                remote_ip,
                int(remote_port, 16),
                inode,
                uid,
            )
        )
    return entries


def parse_net_dev_interfaces(text: str) -> dict[str, NetCounters]:
    """Cumulative byte and packet counters of each interface in /proc/net/dev, ``lo`` included."""
    out: dict[str, NetCounters] = {}
    for line in text.splitlines()[2:]:
        name, sep, counters = line.partition(":")
        if not sep:
            continue
        values = counters.split()
        # receive: bytes packets errs drop fifo frame compressed multicast; then transmit: bytes packets
        out[name.strip()] = NetCounters(
            bytes_in=int(values[0]),
            bytes_out=int(values[8]),
            packets_in=int(values[1]),
            packets_out=int(values[9]),
        )
    return out


_ZERO = NetCounters(bytes_in=0, bytes_out=0, packets_in=0, packets_out=0)


class CounterTotals:
    """Interface counters summed so that the sum only grows by the traffic of the counted interfaces.

    A plain sum drops when an interface goes away (a container's veth, a USB modem) or one interface's
    counters restart, and a report's delta would then count all traffic since boot again. Here each
    interface's growth since the previous reading is added instead: a reset counts from zero, a new
    interface counts from its creation, a vanished one adds nothing, and ``lo`` switched on or off is
    counted from then on. The first reading is the plain sum since boot.
    """

    def __init__(self) -> None:
        self._last: dict[str, NetCounters] = {}  # every interface of the previous reading, lo included
        self._total = _ZERO

    def update(self, interfaces: Mapping[str, NetCounters], include_loopback: bool) -> NetCounters:
        total = self._total
        for name, now in interfaces.items():
            if name == "lo" and not include_loopback:
                continue
            # a new interface (or the first reading): since its creation
            total += now.grown_since(self._last.get(name, _ZERO))
        self._last = dict(interfaces)
        self._total = total
        return total


def interface_by_address(if_addrs: Mapping[str, Iterable[Any]]) -> dict[str, str]:
    """Map each local IP address to its interface name, from ``psutil.net_if_addrs()``-shaped data."""
    out: dict[str, str] = {}
    for name, addresses in if_addrs.items():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                # link-local IPv6 addresses come with their scope: fe80::1%eth0
                out.setdefault(address.address.split("%", 1)[0], name)
    return out


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


def build_network_stats(
    counters: NetCounters,
    tcp: Iterable[SocketEntry],
    udp: Iterable[SocketEntry],
    interfaces: Mapping[str, str],
    include_loopback: bool,
    known: Optional[dict[SocketEntry, Connection]] = None,
) -> NetworkStats:
    """Assemble NetworkStats from the interface counters, TCP and UDP socket entries (IPv4 and IPv6
    together) and an address-to-interface map.

    Listening ports are de-duplicated on (port, interface): a service bound on 0.0.0.0 and :: is one
    port. A wildcard bind has interface None.

    ``known`` holds the Connection of each established entry of the previous call and is updated to this
    one's: a connection that is still open is not built again (a frozen dataclass costs about 1 µs).
    """
    # each socket's interface in one lookup: a wildcard bind is on no single interface
    interface_of: dict[str, Optional[str]] = dict(interfaces)
    interface_of.update(dict.fromkeys(_WILDCARDS))
    previous = known if known is not None else {}
    current: dict[SocketEntry, Connection] = {}
    listening_tcp: dict[tuple[int, Optional[str]], tuple[int, int]] = {}  # -> (inode, uid) of one socket
    listening_udp: dict[tuple[int, Optional[str]], tuple[int, int]] = {}
    established: list[Connection] = []
    for entry in tcp:
        state, local_ip, local_port, remote_ip, remote_port, inode, uid = entry
        if not include_loopback and is_loopback(local_ip):
            continue
        if state == TCP_ESTABLISHED:
            interface = interface_of.get(local_ip)
            connection = previous.get(entry)
            if connection is None or connection.local_interface != interface:
                connection = Connection(remote_ip, remote_port, local_port, interface, inode, uid)
            current[entry] = connection
            established.append(connection)
        elif state == TCP_LISTEN:
            listening_tcp.setdefault((local_port, interface_of.get(local_ip)), (inode, uid))
    for state, local_ip, local_port, remote_ip, remote_port, inode, uid in udp:
        if state != UDP_UNCONNECTED or remote_port != 0 or remote_ip not in _WILDCARDS:
            continue
        if not include_loopback and is_loopback(local_ip):
            continue
        listening_udp.setdefault((local_port, interface_of.get(local_ip)), (inode, uid))
    if known is not None:
        known.clear()
        known.update(current)
    return NetworkStats(
        listening_tcp=_ports(listening_tcp),
        listening_udp=_ports(listening_udp),
        established_tcp=tuple(established),
        counters=counters,
    )


def parse_proc_tables(tables: Mapping[str, str]) -> tuple[list[SocketEntry], list[SocketEntry]]:
    """(TCP entries, UDP entries) of /proc/net texts keyed tcp, tcp6, udp, udp6; a missing table (a
    kernel without IPv6) counts as empty."""
    tcp = [
        e
        for name in ("tcp", "tcp6")
        for e in parse_socket_table(tables.get(name, ""), (TCP_ESTABLISHED, TCP_LISTEN))
    ]
    udp = [
        e for name in ("udp", "udp6") for e in parse_socket_table(tables.get(name, ""), (UDP_UNCONNECTED,))
    ]
    return tcp, udp


# ---- sock_diag netlink (linux/sock_diag.h, linux/inet_diag.h) -------------------------------------------

_NETLINK_SOCK_DIAG = 4
_TCPDIAG_GETSOCK = 18  # the older request: IPv4 and IPv6 sockets in one walk
_SOCK_DIAG_BY_FAMILY = 20  # the per-family request: one walk per family
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
# inet_diag_req: family, source and destination prefix lengths, extensions, socket id (any), states, dbs
_COMPAT_REQUEST = struct.Struct("=BBBB48xII")
_DIAG_REQUEST = struct.Struct("=BBBBI48x")  # inet_diag_req_v2: family, protocol, extensions, pad, states, id
# A message as far as its inet_diag_msg is read: header length and type (flags, sequence and port id
# skipped), then family, state (timer and retransmits skipped), source and destination ports (network
# byte order, read as native and swapped), source and destination addresses (16 bytes; an IPv4 one in the
# first 4), then interface, cookie, expires and queues skipped, the uid and the inode.
_DIAG_RECORD = struct.Struct("=IH10x BB2x HH 16s16s 24x II")
_RECORD_PADDING = bytes(_DIAG_RECORD.size)
_ERRNO = struct.Struct("=i")
NETLINK_TIMEOUT_SECONDS = 2.0

# (IPv4, IPv6) address texts by their 16-byte field, kept across receive buffers
AddressTexts = tuple[dict[bytes, str], dict[bytes, str]]


class SockDiagRefused(OSError):
    """The kernel answered a sock_diag request with an error message."""


def parse_sock_diag(data: bytes, texts: AddressTexts) -> tuple[list[SocketEntry], list[SocketEntry], bool]:
    """Entries of IPv4 sockets and of IPv6 sockets in one netlink receive buffer of inet_diag_msg records,
    and whether the dump is done."""
    ipv4: list[SocketEntry] = []
    ipv6: list[SocketEntry] = []
    ipv4_texts, ipv6_texts = texts
    end = len(data)
    # padded, so that a message shorter than a record (done, error) can be unpacked as one: only the
    # fields its type and length vouch for are used
    padded = data + _RECORD_PADDING
    unpack = _DIAG_RECORD.unpack_from
    ntohs = socket.ntohs
    offset = 0
    while offset + _NLMSG_HEADER.size <= end:
        length, kind, family, state, local_port, remote_port, src, dst, uid, inode = unpack(padded, offset)
        if length < _NLMSG_HEADER.size or offset + length > end:
            raise OSError(f"sock_diag: malformed message length {length}")
        if kind == _NLMSG_DONE:
            return ipv4, ipv6, True
        if kind == _NLMSG_ERROR:
            if length < _NLMSG_HEADER.size + _ERRNO.size:
                raise OSError(f"sock_diag: malformed message length {length}")
            errno = -_ERRNO.unpack_from(data, offset + _NLMSG_HEADER.size)[0]
            raise SockDiagRefused(errno, f"sock_diag: {os.strerror(errno)}")
        if length < _DIAG_RECORD.size:
            raise OSError(f"sock_diag: record of {length} bytes is too short")
        if family == socket.AF_INET:
            local_ip = ipv4_texts.get(src) or ipv4_texts.setdefault(src, _ip_text(src[:4]))
            remote_ip = ipv4_texts.get(dst) or ipv4_texts.setdefault(dst, _ip_text(dst[:4]))
            ipv4.append((state, local_ip, ntohs(local_port), remote_ip, ntohs(remote_port), inode, uid))
        else:
            local_ip = ipv6_texts.get(src) or ipv6_texts.setdefault(src, _ip_text(src))
            remote_ip = ipv6_texts.get(dst) or ipv6_texts.setdefault(dst, _ip_text(dst))
            ipv6.append((state, local_ip, ntohs(local_port), remote_ip, ntohs(remote_port), inode, uid))
        offset += (length + 3) & ~3
    return ipv4, ipv6, False


def _ip_text(raw: bytes) -> str:
    """Text form of a 4- or 16-byte address; IPv4-mapped IPv6 addresses as IPv4."""
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if raw[:12] == _IPV4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def diag_requests(state_mask: int, one_walk: bool) -> list[bytes]:
    """The netlink messages asking for the TCP sockets in ``state_mask`` (bit ``1 << state`` per state):
    one message for both families, or with ``one_walk`` off one per family."""
    if one_walk:  # the dump ignores this request's family field and lists both
        bodies = [(_TCPDIAG_GETSOCK, _COMPAT_REQUEST.pack(socket.AF_INET, 0, 0, 0, state_mask, 0))]
    else:
        bodies = [
            (_SOCK_DIAG_BY_FAMILY, _DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, state_mask))
            for family in (socket.AF_INET, socket.AF_INET6)
        ]
    return [
        _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(body), kind, _NLM_F_REQUEST_DUMP, sequence, 0) + body
        for sequence, (kind, body) in enumerate(bodies, 1)
    ]


def sock_diag_tcp(
    states: Iterable[int], limit_bytes: int = MAX_TABLE_BYTES, one_walk: bool = True
) -> list[SocketEntry]:
    """TCP sockets of this network namespace in ``states``, IPv4 ones then IPv6 ones, from a sock_diag
    dump: one request for both families, or with ``one_walk`` off one request per family.

    Raises SockDiagRefused when the kernel answers with an error, OSError when netlink is not usable or
    the dump is malformed or larger than ``limit_bytes``."""
    ipv4: list[SocketEntry] = []
    ipv6: list[SocketEntry] = []
    texts: AddressTexts = ({}, {})
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(NETLINK_TIMEOUT_SECONDS)
        for request in diag_requests(sum(1 << state for state in set(states)), one_walk):
            sock.sendto(request, (0, 0))
            received, done = 0, False
            while not done:
                data = sock.recv(1 << 16)
                received += len(data)
                if not data or received > limit_bytes:
                    raise OSError(f"sock_diag: dump ended early or exceeded {limit_bytes} bytes")
                batch4, batch6, done = parse_sock_diag(data, texts)
                ipv4 += batch4
                ipv6 += batch6
    return ipv4 + ipv6


def _ports(sockets: Mapping[tuple[int, Optional[str]], tuple[int, int]]) -> tuple[ListeningPort, ...]:
    ordered = sorted(sockets.items(), key=lambda item: (item[0][0], item[0][1] or ""))
    return tuple(ListeningPort(port, iface, inode, uid) for (port, iface), (inode, uid) in ordered)


def read_proc_text(path: str, limit: int) -> str:
    """Read at most ``limit`` bytes of a /proc text file (a partial last line is dropped)."""
    data = read_bounded(path, limit)
    if len(data) >= limit:
        data = data[: data.rfind(b"\n") + 1]
    return data.decode("ascii", "replace")


class NetworkSource:
    """The network state of the host: sockets (listening and established) and interface counters."""

    name: ClassVar[str] = "network"
    fills: ClassVar[str] = "network"
    needs: ClassVar[tuple[str, ...]] = ()
    reads: ClassVar[str] = (
        "TCP sockets through sock_diag netlink (else /proc/net/tcp*), /proc/net/udp*, /proc/net/dev"
    )

    def __init__(
        self,
        machine: Machine = THIS_MACHINE,
        *,
        include_loopback: bool = False,
        if_addrs: Callable[[], Mapping[str, Iterable[Any]]] = psutil.net_if_addrs,
        use_netlink: bool = True,
    ) -> None:
        self.include_loopback = include_loopback
        self._net_dir = os.path.join(machine.proc_root, "net")
        self._if_addrs = if_addrs
        # netlink sees the caller's own network namespace: only usable for the real /proc
        self._use_netlink = use_netlink and machine.proc_root == "/proc"
        self._one_walk = True  # until the kernel refuses the request for both families
        # kept across settings changes: the counter totals must not restart, or report deltas would jump
        self._totals = CounterTotals()
        self._connections: dict[SocketEntry, Connection] = {}  # of the previous cycle, reused

    def configure(self, settings: SourceSettings) -> None:
        self.include_loopback = settings.include_loopback

    def close(self) -> None:
        pass

    def read(self, sample: Optional[Sample] = None) -> NetworkStats:
        tables: dict[str, str] = {}
        names = ("udp", "udp6") if self._use_netlink else ("tcp", "tcp6", "udp", "udp6")
        for name in names:
            try:
                tables[name] = read_proc_text(os.path.join(self._net_dir, name), MAX_TABLE_BYTES)
            except FileNotFoundError:  # no IPv6 in this kernel
                continue
        tcp, udp = parse_proc_tables(tables)
        if self._use_netlink:
            try:
                tcp = self._sock_diag_tcp()
            except OSError as exc:
                log.info("sock_diag netlink not usable (%s); reading /proc/net/tcp instead", exc)
                self._use_netlink = False
                return self.read(sample)
        dev_text = read_proc_text(os.path.join(self._net_dir, "dev"), MAX_DEV_BYTES)
        counters = self._totals.update(parse_net_dev_interfaces(dev_text), self.include_loopback)
        interfaces = interface_by_address(self._if_addrs())  # once per cycle, not per connection
        return build_network_stats(counters, tcp, udp, interfaces, self.include_loopback, self._connections)

    def _sock_diag_tcp(self) -> list[SocketEntry]:
        states = (TCP_ESTABLISHED, TCP_LISTEN)
        if self._one_walk:
            try:
                return sock_diag_tcp(states)
            except SockDiagRefused as exc:
                log.info("sock_diag: the request for both families was refused (%s); asking per family", exc)
                self._one_walk = False
        return sock_diag_tcp(states, one_walk=False)
