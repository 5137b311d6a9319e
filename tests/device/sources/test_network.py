"""Network source: parsing of /proc/net on a hand-checked sample, a real captured sample and live sockets."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import struct
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from ddcustom.device.sample import Connection, ListeningPort, NetCounters
from ddcustom.device.sources import network
from ddcustom.device.sources.network import (
    TCP_ESTABLISHED,
    TCP_LISTEN,
    CounterTotals,
    NetworkSource,
    build_network_stats,
    decode_address,
    interface_by_address,
    parse_net_dev_interfaces,
    parse_proc_tables,
    parse_sock_diag,
    sock_diag_tcp,
)
from ddcustom.device.sources.source import Machine
from support.helpers import FIXTURES

PROC = FIXTURES / "proc"
HAND = PROC / "hand"
REAL = PROC / "real"
Addr = namedtuple("Addr", "family address")

HAND_INTERFACES = interface_by_address(
    {
        "lo": [Addr(socket.AF_INET, "127.0.0.1"), Addr(socket.AF_INET6, "::1")],
        "eth0": [
            Addr(socket.AF_INET, "10.0.0.2"),
            Addr(socket.AF_INET6, "fd00::2"),
            Addr(socket.AF_INET6, "fe80::1%eth0"),
            Addr(socket.AF_PACKET, "02:00:00:00:00:01"),
        ],
    }
)


def first_reading(text: str, include_loopback: bool) -> NetCounters:
    """The counters the source reports at its first reading of this /proc/net/dev: the sum since boot."""
    return CounterTotals().update(parse_net_dev_interfaces(text), include_loopback)


def tables(root: Path) -> dict[str, str]:
    return {name: (root / "net" / name).read_text() for name in ("tcp", "tcp6", "udp", "udp6")}


@pytest.mark.parametrize(
    "hex_ip, expected",
    [
        ("0100007F", "127.0.0.1"),
        ("0200000A", "10.0.0.2"),
        ("00000000", "0.0.0.0"),
        ("00000000000000000000000001000000", "::1"),
        ("000000FD000000000000000002000000", "fd00::2"),
        ("B80D0120000000000000000001000000", "2001:db8::1"),
        ("0000000000000000FFFF00000100007F", "127.0.0.1"),  # IPv4-mapped: reported as IPv4
    ],
)
def test_decode_address_by_hand(hex_ip: str, expected: str) -> None:
    assert decode_address(hex_ip) == expected


def test_decode_address_rejects_other_lengths() -> None:
    with pytest.raises(ValueError, match="not a kernel socket address"):
        decode_address("7F0001")


def test_interface_map_strips_scope_and_skips_link_layer() -> None:
    assert HAND_INTERFACES == {
        "127.0.0.1": "lo",
        "::1": "lo",
        "10.0.0.2": "eth0",
        "fd00::2": "eth0",
        "fe80::1": "eth0",
    }


def test_hand_sample_without_loopback() -> None:
    stats = build_network_stats(
        first_reading((HAND / "net" / "dev").read_text(), False),
        *parse_proc_tables(tables(HAND)),
        HAND_INTERFACES,
        False,
    )
    # tcp 0.0.0.0:22 and tcp6 :::80 listen on all interfaces; 127.0.0.1:3333 and ::1:8081 are loopback
    assert stats.listening_tcp == (ListeningPort(22, None), ListeningPort(80, None))
    assert stats.established_tcp == (
        Connection("10.0.0.1", 3333, 50000, "eth0"),
        Connection("10.0.0.1", 4444, 8080, "eth0"),  # IPv4-mapped in tcp6
        Connection("2001:db8::1", 51000, 443, "eth0"),
    )
    assert stats.established_tcp[2].remote_addr == "[2001:db8::1]:51000"
    # udp 0.0.0.0:5353 and udp6 :::5353 are one port; the connected UDP socket is not listening
    assert stats.listening_udp == (
        ListeningPort(68, None),
        ListeningPort(546, "eth0"),
        ListeningPort(5353, None),
    )
    assert stats.counters == NetCounters(bytes_in=502000, bytes_out=303000, packets_in=420, packets_out=280)


def test_hand_sample_with_loopback() -> None:
    stats = build_network_stats(
        first_reading((HAND / "net" / "dev").read_text(), True),
        *parse_proc_tables(tables(HAND)),
        HAND_INTERFACES,
        True,
    )
    assert stats.listening_tcp == (
        ListeningPort(22, None),
        ListeningPort(80, None),
        ListeningPort(3333, "lo"),
        ListeningPort(8081, "lo"),
    )
    assert Connection("127.0.0.1", 3333, 40000, "lo") in stats.established_tcp
    assert len(stats.established_tcp) == 4
    assert ListeningPort(53, "lo") in stats.listening_udp
    assert stats.counters == NetCounters(bytes_in=503000, bytes_out=304000, packets_in=430, packets_out=290)


def test_missing_ipv6_tables_count_as_empty() -> None:
    ipv4_only = {k: v for k, v in tables(HAND).items() if not k.endswith("6")}
    stats = build_network_stats(
        first_reading((HAND / "net" / "dev").read_text(), False),
        *parse_proc_tables(ipv4_only),
        HAND_INTERFACES,
        False,
    )
    assert stats.listening_tcp == (ListeningPort(22, None),)
    assert stats.established_tcp == (Connection("10.0.0.1", 3333, 50000, "eth0"),)


def test_connections_of_the_previous_cycle_are_reused_while_unchanged() -> None:
    """A connection still open is the same object the next cycle; one whose local address moved to another
    interface, or a new socket on the same ports, is built again; closed ones are forgotten."""
    counters = NetCounters(bytes_in=0, bytes_out=0, packets_in=0, packets_out=0)
    first_socket = (TCP_ESTABLISHED, "10.0.0.2", 50000, "10.0.0.1", 3333, 11, 0)
    second_socket = (TCP_ESTABLISHED, "10.0.0.2", 50001, "10.0.0.1", 3333, 12, 0)
    known: dict[tuple[int, str, int, str, int, int, int], Connection] = {}
    eth0 = {"10.0.0.2": "eth0"}
    first = build_network_stats(
        counters, [first_socket, second_socket], [], eth0, False, known
    ).established_tcp
    assert first == (Connection("10.0.0.1", 3333, 50000, "eth0"), Connection("10.0.0.1", 3333, 50001, "eth0"))
    second = build_network_stats(counters, [first_socket], [], eth0, False, known).established_tcp
    assert second == first[:1] and second[0] is first[0]
    assert list(known) == [first_socket]

    moved = build_network_stats(counters, [first_socket], [], {"10.0.0.2": "wlan0"}, False, known)
    assert moved.established_tcp == (Connection("10.0.0.1", 3333, 50000, "wlan0"),)
    same_ports_new_socket = (*first_socket[:5], 99, 0)
    again = build_network_stats(counters, [same_ports_new_socket], [], eth0, False, known).established_tcp
    assert again == first[:1] and again[0].inode == 99


# ---- a real sample captured from this kind of machine (see fixtures/proc/capture_net.py) ----------


def _plain(ip: str) -> str:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else str(address)


@pytest.fixture(scope="module")
def real_expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REAL / "expected.json").read_text())
    return data


@pytest.fixture(scope="module")
def real_interfaces(real_expected: dict[str, Any]) -> dict[str, str]:
    """Address -> interface, straight from the psutil.net_if_addrs() data the capture recorded."""
    return {address: name for name, _, address in real_expected["interfaces"] if "%" not in address}


def if_addrs_of(real_expected: dict[str, Any]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for name, family, address in real_expected["interfaces"]:
        groups.setdefault(name, []).append(Addr(family, address))
    return groups


def test_real_sample_sockets_opened_by_the_capture(
    real_expected: dict[str, Any], real_interfaces: dict[str, str]
) -> None:
    interfaces = interface_by_address(if_addrs_of(real_expected))
    stats = build_network_stats(
        first_reading((REAL / "net" / "dev").read_text(), True),
        *parse_proc_tables(tables(REAL)),
        interfaces,
        True,
    )
    for sock in real_expected["tcp_listen"]:
        interface = None if sock["ip"] in ("0.0.0.0", "::") else real_interfaces[sock["ip"]]
        assert ListeningPort(sock["port"], interface) in stats.listening_tcp
    for sock in real_expected["udp_listen"]:
        interface = None if sock["ip"] in ("0.0.0.0", "::") else real_interfaces[sock["ip"]]
        assert ListeningPort(sock["port"], interface) in stats.listening_udp
    assert real_expected["udp_connected_port"] not in {p.port for p in stats.listening_udp}
    for conn in real_expected["established"]:
        local_ip = _plain(conn["local_ip"])
        expected = Connection(
            _plain(conn["remote_ip"]), conn["remote_port"], conn["local_port"], real_interfaces[local_ip]
        )
        assert expected in stats.established_tcp


def test_real_sample_without_loopback_keeps_only_external(real_expected: dict[str, Any]) -> None:
    stats = build_network_stats(
        first_reading((REAL / "net" / "dev").read_text(), False), *parse_proc_tables(tables(REAL)), {}, False
    )
    assert stats.established_tcp  # the capture connected to its own eth0 addresses
    for conn in stats.established_tcp:
        assert not ipaddress.ip_address(conn.remote_ip).is_loopback
    loopback_ports = {s["port"] for s in real_expected["tcp_listen"] if s["ip"] in ("127.0.0.1", "::1")}
    assert loopback_ports.isdisjoint({p.port for p in stats.listening_tcp})


def test_real_sample_matches_psutil_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """psutil parses the same captured files with its own code: both must agree."""
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(REAL))
    by_psutil: list[Any] = psutil.net_connections(kind="inet")
    pernic = psutil.net_io_counters(pernic=True)
    stats = build_network_stats(
        first_reading((REAL / "net" / "dev").read_text(), True), *parse_proc_tables(tables(REAL)), {}, True
    )

    established = sorted(
        (_plain(c.raddr.ip), c.raddr.port, c.laddr.port)
        for c in by_psutil
        if c.type == socket.SOCK_STREAM and c.status == psutil.CONN_ESTABLISHED
    )
    assert sorted((c.remote_ip, c.remote_port, c.local_port) for c in stats.established_tcp) == established
    tcp_listen = {
        c.laddr.port for c in by_psutil if c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN
    }
    assert {p.port for p in stats.listening_tcp} == tcp_listen
    udp_unconnected = {c.laddr.port for c in by_psutil if c.type == socket.SOCK_DGRAM and not c.raddr}
    assert {p.port for p in stats.listening_udp} == udp_unconnected
    assert stats.counters.bytes_in == sum(n.bytes_recv for n in pernic.values())
    assert stats.counters.packets_out == sum(n.packets_sent for n in pernic.values())
    without_lo = first_reading((REAL / "net" / "dev").read_text(), include_loopback=False)
    assert without_lo.bytes_out == sum(n.bytes_sent for name, n in pernic.items() if name != "lo")
    assert without_lo.packets_in == sum(n.packets_recv for name, n in pernic.items() if name != "lo")


# ---- the live reader on this machine's /proc ------------------------------------------------------


def test_live_source_sees_new_ipv4_and_ipv6_connections() -> None:
    opened: list[socket.socket] = []
    try:
        expected: list[Connection] = []
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            server = socket.socket(family, socket.SOCK_STREAM)
            server.bind((host, 0))
            server.listen(1)
            client = socket.create_connection((host, server.getsockname()[1]), timeout=5)
            accepted, _ = server.accept()
            opened += [server, client, accepted]
            local, peer = client.getsockname(), client.getpeername()
            expected.append(Connection(peer[0], peer[1], local[1], "lo"))
        stats = NetworkSource(include_loopback=True).read()
        for conn in expected:
            assert conn in stats.established_tcp
        assert all(c not in NetworkSource(include_loopback=False).read().established_tcp for c in expected)
    finally:
        for sock in opened:
            sock.close()


def test_live_source_without_ipv6_tables(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    for name in ("dev", "tcp", "udp"):
        (tmp_path / "net" / name).write_text((HAND / "net" / name).read_text())
    stats = NetworkSource(Machine(proc_root=str(tmp_path)), if_addrs=lambda: {}).read()
    assert stats.established_tcp == (Connection("10.0.0.1", 3333, 50000, None),)
    assert stats.counters.bytes_in == 502000


# ---- sock_diag netlink: hand-built buffers, and the live kernel against /proc/net/tcp ------------------

# what the kernel appends to each record even when no extension is asked for (here INET_DIAG_SHUTDOWN)
SHUTDOWN_ATTRIBUTE = struct.pack("=HHB3x", 5, 8, 0)


def diag_record(
    family: int,
    state: int,
    sport: int,
    dport: int,
    src: bytes,
    dst: bytes,
    inode: int = 0,
    kind: int = 18,
    uid: int = 1000,
) -> bytes:
    """One inet_diag_msg as the kernel sends it; the fields the parser skips are set, so that reading at
    a wrong offset shows."""
    body = struct.pack("=BBBB", family, state, 1, 2) + struct.pack(">HH", sport, dport)
    body += src.ljust(16, b"\0") + dst.ljust(16, b"\0") + b"\xab" * 24  # interface, cookie, ...queues
    body += struct.pack("=II", uid, inode) + SHUTDOWN_ATTRIBUTE
    return struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body


def ipv4_mapped(ipv4: bytes) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + ipv4


def test_parse_sock_diag_by_hand() -> None:
    data = diag_record(socket.AF_INET, 1, 50000, 3333, bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]), 987654)
    data += diag_record(socket.AF_INET6, 10, 80, 0, b"\0" * 16, b"\0" * 16, kind=20)
    data += diag_record(
        socket.AF_INET6, 1, 8080, 4444, ipv4_mapped(bytes([10, 0, 0, 2])), ipv4_mapped(bytes([10, 0, 0, 1]))
    )
    data += diag_record(socket.AF_INET, 10, 22, 0, bytes(4), bytes(4), 4242)
    fd00_2, db8_1 = (socket.inet_pton(socket.AF_INET6, ip) for ip in ("fd00::2", "2001:db8::1"))
    data += diag_record(socket.AF_INET6, 1, 443, 51000, fd00_2, db8_1, 77)
    ipv4, ipv6, done = parse_sock_diag(data, ({}, {}))
    assert not done
    assert ipv4 == [
        (1, "10.0.0.2", 50000, "10.0.0.1", 3333, 987654, 1000),
        (10, "0.0.0.0", 22, "0.0.0.0", 0, 4242, 1000),
    ]
    assert ipv6 == [
        (10, "::", 80, "::", 0, 0, 1000),
        (1, "10.0.0.2", 8080, "10.0.0.1", 4444, 0, 1000),  # an IPv6 socket on an IPv4-mapped address
        (1, "fd00::2", 443, "2001:db8::1", 51000, 77, 1000),
    ]
    done_message = struct.pack("=IHHII", 20, 3, 2, 1, 0) + b"\0" * 4
    assert parse_sock_diag(done_message, ({}, {})) == ([], [], True)
    assert parse_sock_diag(data + done_message, ({}, {})) == (ipv4, ipv6, True)


def test_parse_sock_diag_keeps_ipv4_and_ipv6_address_texts_apart() -> None:
    """An IPv4 address and the IPv6 address with the same first four bytes fill the same 16-byte field:
    the texts kept across buffers must not mix them up, whichever comes first."""
    ten = bytes([10, 0, 0, 2])
    for families in ((socket.AF_INET, socket.AF_INET6), (socket.AF_INET6, socket.AF_INET)):
        texts: tuple[dict[bytes, str], dict[bytes, str]] = ({}, {})
        found = {}
        for family in families:
            ipv4, ipv6, _ = parse_sock_diag(diag_record(family, 1, 1000, 2000, ten, ten), texts)
            found[family] = (ipv4 + ipv6)[0][1]
        assert found == {socket.AF_INET: "10.0.0.2", socket.AF_INET6: "a00:2::"}


def test_parse_sock_diag_errors() -> None:
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -13) + b"\0" * 16
    with pytest.raises(network.SockDiagRefused, match="Permission denied") as refused:
        parse_sock_diag(error, ({}, {}))
    assert refused.value.errno == 13
    record = diag_record(socket.AF_INET, 1, 1000, 2000, bytes(4), bytes(4))
    with pytest.raises(OSError, match="malformed message length 0"):
        parse_sock_diag(struct.pack("=IHHII", 0, 20, 0, 1, 0), ({}, {}))
    with pytest.raises(OSError, match="malformed message length 16"):  # an error without its errno
        parse_sock_diag(struct.pack("=IHHII", 16, 2, 0, 1, 0), ({}, {}))
    with pytest.raises(OSError, match=f"malformed message length {len(record) + 4}"):  # past the buffer
        parse_sock_diag(struct.pack("=I", len(record) + 4) + record[4:], ({}, {}))
    with pytest.raises(OSError, match="record of 56 bytes is too short"):  # header and 40 bytes of 72
        parse_sock_diag(struct.pack("=I", 56) + record[4:56], ({}, {}))
    assert parse_sock_diag(record + record[:12], ({}, {}))[:2] == (
        [(1, "0.0.0.0", 1000, "0.0.0.0", 2000, 0, 1000)],
        [],
    )


@pytest.fixture
def loopback_sockets() -> Iterator[list[socket.socket]]:
    """On 127.0.0.1, ::1 and ::ffff:127.0.0.1 (an IPv6 socket on an IPv4-mapped address): a listener, a
    client connected to it and the accepted end."""
    opened: list[socket.socket] = []
    try:
        for family, host in (
            (socket.AF_INET, "127.0.0.1"),
            (socket.AF_INET6, "::1"),
            (socket.AF_INET6, "::ffff:127.0.0.1"),
        ):
            server = socket.socket(family, socket.SOCK_STREAM)
            opened.append(server)
            server.bind((host, 0))
            server.listen(1)
            client = socket.socket(family, socket.SOCK_STREAM)
            opened.append(client)
            client.settimeout(5)
            client.connect((host, server.getsockname()[1]))
            opened.append(server.accept()[0])
        yield opened
    finally:
        for sock in opened:
            sock.close()


def expected_entry(sock: socket.socket) -> tuple[int, str, int, str, int, int, int]:
    local = sock.getsockname()
    local_ip = _shown(local[0])
    inode = os.fstat(sock.fileno()).st_ino
    if _listening(sock):
        return (
            TCP_LISTEN,
            local_ip,
            local[1],
            "::" if sock.family == socket.AF_INET6 else "0.0.0.0",
            0,
            inode,
            os.geteuid(),
        )
    peer = sock.getpeername()
    return (TCP_ESTABLISHED, local_ip, local[1], _shown(peer[0]), peer[1], inode, os.geteuid())


def _shown(ip: str) -> str:
    return ip[len("::ffff:") :] if ip.startswith("::ffff:") else ip


@pytest.mark.parametrize("one_walk", [True, False])
def test_sock_diag_lists_the_loopback_sockets_of_both_families(
    loopback_sockets: list[socket.socket], one_walk: bool
) -> None:
    entries = sock_diag_tcp((TCP_ESTABLISHED, TCP_LISTEN), one_walk=one_walk)
    inodes = {os.fstat(sock.fileno()).st_ino for sock in loopback_sockets}
    mine = [e for e in entries if e[5] in inodes]  # other sockets of the host are left out
    ipv4 = {expected_entry(sock) for sock in loopback_sockets if sock.family == socket.AF_INET}
    ipv6 = {expected_entry(sock) for sock in loopback_sockets if sock.family == socket.AF_INET6}
    assert len(mine) == 9
    assert set(mine[:3]) == ipv4 and set(mine[3:]) == ipv6  # IPv4 sockets first, as before


def test_one_walk_and_per_family_requests_give_the_same_entries(
    loopback_sockets: list[socket.socket],
) -> None:
    inodes = {os.fstat(sock.fileno()).st_ino for sock in loopback_sockets}
    states = (TCP_ESTABLISHED, TCP_LISTEN)
    one_walk = [e for e in sock_diag_tcp(states) if e[5] in inodes]
    per_family = [e for e in sock_diag_tcp(states, one_walk=False) if e[5] in inodes]
    assert len(one_walk) == 9 and one_walk == per_family  # in the same order too


def test_sock_diag_agrees_with_proc_net_tcp() -> None:
    opened: list[socket.socket] = []
    try:
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            server = socket.socket(family, socket.SOCK_STREAM)
            server.bind((host, 0))
            server.listen(4)
            for _ in range(3):
                opened.append(socket.create_connection((host, server.getsockname()[1]), timeout=5))
                opened.append(server.accept()[0])
            opened.append(server)
        proc = {name: Path(f"/proc/net/{name}").read_text() for name in ("tcp", "tcp6")}
        by_netlink = sock_diag_tcp((TCP_ESTABLISHED, TCP_LISTEN))
        by_proc, _ = parse_proc_tables(proc)
        ours = {(e[1], e[2], e[3], e[4]) for e in by_netlink}
        for sock in opened:
            local = sock.getsockname()
            if _listening(sock):
                expected = (local[0], local[1], "::" if ":" in local[0] else "0.0.0.0", 0)
            else:
                peer = sock.getpeername()
                expected = (local[0], local[1], peer[0], peer[1])
            assert expected in ours
        # other tests run beside this one: compare only the sockets opened here
        mine = {s.getsockname()[1] for s in opened}
        assert sorted(e for e in by_netlink if e[2] in mine) == sorted(e for e in by_proc if e[2] in mine)
        # and each entry carries its socket's inode, which tells the process that holds it
        assert {os.fstat(sock.fileno()).st_ino for sock in opened} <= {e[5] for e in by_netlink}
    finally:
        for sock in opened:
            sock.close()


def _listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def test_live_source_with_and_without_netlink_agree() -> None:
    server = socket.socket(socket.AF_INET6)
    server.bind(("::1", 0))
    server.listen(1)
    try:
        mine = ListeningPort(server.getsockname()[1], "lo")
        assert mine in NetworkSource(include_loopback=True).read().listening_tcp
        assert mine in NetworkSource(include_loopback=True, use_netlink=False).read().listening_tcp
    finally:
        server.close()


# ---- interface counters across cycles: deltas per interface, never a spike -------------------------

DEV_HEADER = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls"
    " carrier compressed\n"
)


def dev_text(**interfaces: int) -> str:
    """/proc/net/dev with each interface at ``n`` bytes in, 2n bytes out, n/10 packets in, n/5 out."""
    lines = [
        f"{name:>6}: {n} {n // 10} 0 0 0 0 0 0 {2 * n} {n // 5} 0 0 0 0 0 0\n"
        for name, n in interfaces.items()
    ]
    return DEV_HEADER + "".join(lines)


def source_reading(tmp_path: Path, include_loopback: bool = False) -> tuple[NetworkSource, Any]:
    (tmp_path / "net").mkdir(exist_ok=True)
    source = NetworkSource(
        Machine(proc_root=str(tmp_path)), include_loopback=include_loopback, if_addrs=lambda: {}
    )

    def read(text: str) -> NetCounters:
        (tmp_path / "net" / "dev").write_text(text)
        return source.read().counters

    return source, read


def growth(before: NetCounters, after: NetCounters) -> tuple[int, int, int, int]:
    assert after.bytes_in >= before.bytes_in and after.packets_out >= before.packets_out
    return (
        after.bytes_in - before.bytes_in,
        after.bytes_out - before.bytes_out,
        after.packets_in - before.packets_in,
        after.packets_out - before.packets_out,
    )


def test_a_vanished_interface_is_no_counter_reset(tmp_path: Path) -> None:
    # A container's veth carried 5 MB and went away: eth0 still only grew by 1000 bytes.
    _, read = source_reading(tmp_path)
    first = read(dev_text(lo=700, eth0=100_000, veth1=5_000_000))
    assert first.bytes_in == 5_100_000  # the first reading is the total since boot
    second = read(dev_text(lo=900, eth0=101_000))
    assert growth(first, second) == (1000, 2000, 100, 200)


def test_one_interface_reset_counts_only_its_new_traffic(tmp_path: Path) -> None:
    _, read = source_reading(tmp_path)
    first = read(dev_text(eth0=100_000, wlan0=50_000))
    second = read(dev_text(eth0=101_000, wlan0=500))  # wlan0 re-created: counts from zero
    assert growth(first, second) == (1500, 3000, 150, 300)


def test_an_interface_that_appears_counts_its_traffic(tmp_path: Path) -> None:
    _, read = source_reading(tmp_path)
    first = read(dev_text(eth0=100_000))
    second = read(dev_text(eth0=100_000, usb0=3000))
    assert growth(first, second) == (3000, 6000, 300, 600)


def test_loopback_switched_on_counts_from_then_on(tmp_path: Path) -> None:
    source, read = source_reading(tmp_path)
    first = read(dev_text(lo=9_000_000, eth0=100_000))
    source.include_loopback = True
    second = read(dev_text(lo=9_000_010, eth0=100_000))
    assert growth(first, second) == (10, 20, 1, 2)
    source.include_loopback = False
    third = read(dev_text(lo=9_500_000, eth0=100_100))
    assert growth(second, third) == (100, 200, 10, 20)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_sock_diag_refused_by_the_kernel_falls_back_to_proc(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A request type the kernel does not know gets a real NLMSG_ERROR (EINVAL): the source reads
    /proc/net/tcp instead, says so once, and closes its netlink socket."""
    monkeypatch.setattr(network, "_TCPDIAG_GETSOCK", 99)
    monkeypatch.setattr(network, "_SOCK_DIAG_BY_FAMILY", 99)
    caplog.set_level(logging.INFO, logger="ddcustom.device.sources.network")
    server = socket.socket(socket.AF_INET6)
    server.bind(("::1", 0))
    server.listen(1)
    try:
        source = NetworkSource(include_loopback=True)
        fds = open_fds()
        for _ in range(2):
            assert ListeningPort(server.getsockname()[1], "lo") in source.read().listening_tcp
        assert open_fds() == fds
    finally:
        server.close()
    fallbacks = [r.getMessage() for r in caplog.records if "sock_diag" in r.getMessage()]
    assert len(fallbacks) == 2 and all("Invalid argument" in message for message in fallbacks)
    assert "asking per family" in fallbacks[0] and "reading /proc/net/tcp" in fallbacks[1]


def test_a_refused_request_for_both_families_is_asked_per_family(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, loopback_sockets: list[socket.socket]
) -> None:
    """A kernel without the older request answers it with an error (here a type it does not know, EINVAL):
    the source asks per family from then on, and still lists every socket."""
    monkeypatch.setattr(network, "_TCPDIAG_GETSOCK", 99)
    with pytest.raises(network.SockDiagRefused, match="Invalid argument"):
        sock_diag_tcp((TCP_ESTABLISHED, TCP_LISTEN))
    caplog.set_level(logging.INFO, logger="ddcustom.device.sources.network")
    source = NetworkSource(include_loopback=True)
    client = loopback_sockets[1]
    expected = Connection("127.0.0.1", client.getpeername()[1], client.getsockname()[1], "lo")
    for _ in range(2):
        stats = source.read()
        assert ListeningPort(loopback_sockets[0].getsockname()[1], "lo") in stats.listening_tcp
        assert expected in stats.established_tcp
    fallbacks = [r.getMessage() for r in caplog.records if "sock_diag" in r.getMessage()]
    assert len(fallbacks) == 1 and "asking per family" in fallbacks[0] and "Invalid argument" in fallbacks[0]


def test_sock_diag_dump_over_the_bound_stops_and_closes_the_socket() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        fds = open_fds()
        with pytest.raises(OSError, match="exceeded 16 bytes"):
            sock_diag_tcp((TCP_LISTEN,), limit_bytes=16)
        assert open_fds() == fds
    finally:
        server.close()
