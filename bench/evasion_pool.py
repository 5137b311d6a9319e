"""The "remote" side of bench/evasion.py: a stand-in mining pool, an HTTP CONNECT proxy, and the private
network namespace they run in.

The pool answers each JSON line with ``{"id": ..., "result": true, "error": null}``. The proxy takes
``CONNECT host:port`` and relays both ways. Nothing here connects, or lets a client connect through the
proxy, to an address outside the benchmark's allowed network (a /30 picked unused in 10.200.0.0/16)
and loopback: ``require_allowed`` is checked before every connection and bind. Run as a script it
serves until killed or ``--seconds`` (stdlib only: it runs inside the namespace with ``ip netns exec``):

    python bench/evasion_pool.py --allow 10.200.3.0/30 --pool 10.200.3.2:3333 --proxy 10.200.3.2:80

With ``--egress`` it is instead the device's egress client: it keeps a connection through the proxy to
``--target`` open, ``--hold`` seconds at a time (a JSON line every EGRESS_EVERY seconds), and opens the
next one, until ``--seconds``; it prints ``egress connected`` for each:

    python bench/evasion_pool.py --allow 10.200.3.0/30 --egress 10.200.3.2:80 --target 10.200.3.2:443
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import select
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

PRIVATE_RANGE = ipaddress.IPv4Network("10.200.0.0/16")
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
MAX_LINE = 65536  # bytes of one JSON line the pool reads
MAX_HEAD = 4096  # bytes of a CONNECT request head
RELAY_IDLE = 600.0  # seconds without traffic after which a relayed connection is closed
EGRESS_EVERY = 5.0  # seconds between the egress client's lines


def require_allowed(host: str, allowed: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The numeric IPv4 address ``host`` if it is inside ``allowed`` or loopback; ValueError otherwise."""
    address = ipaddress.ip_address(host)  # ValueError for a name: nothing is resolved
    if not isinstance(address, ipaddress.IPv4Address):
        raise ValueError(f"refused: {host} is not an IPv4 address")
    if address not in allowed and address not in LOOPBACK:
        raise ValueError(f"refused: {host} is outside {allowed} and loopback")
    return address


def pick_subnet(used: list[ipaddress.IPv4Network], start: int) -> ipaddress.IPv4Network:
    """The first /30 of 10.200.0.0/16 from the ``start``-th on (wrapping) that overlaps none of ``used``."""
    count = 2 ** (30 - PRIVATE_RANGE.prefixlen)
    base = int(PRIVATE_RANGE.network_address)
    for step in range(count):
        candidate = ipaddress.IPv4Network((base + 4 * ((start + step) % count), 30))
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise RuntimeError(f"no unused /30 left in {PRIVATE_RANGE}")


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network on this host's interfaces and in its routing table (``ip -4``)."""
    found: list[ipaddress.IPv4Network] = []
    for command in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=10).stdout
        for word in output.split():
            if word[:1].isdigit() and ("/" in word or word.count(".") == 3):
                with contextlib.suppress(ValueError):
                    found.append(ipaddress.IPv4Network(word, strict=False))
    return found


class NamespaceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Namespace:
    """A network namespace joined to this host by a veth pair in a private /30 (only that /30 is routed:
    the kernel's connected routes; the namespace has no default route)."""

    name: str
    host_if: str
    ns_if: str
    subnet: ipaddress.IPv4Network

    @property
    def host_address(self) -> str:
        return str(self.subnet[1])

    @property
    def pool_address(self) -> str:
        return str(self.subnet[2])

    @classmethod
    def create(cls, tag: int) -> Namespace:
        """``ddc-evasion-<tag>``, with an unused /30; half-made ones are deleted before NamespaceError."""
        try:
            subnet = pick_subnet(used_networks(), start=tag)
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            raise NamespaceError(f"cannot list the host's networks: {exc}") from exc
        made = cls(f"ddc-evasion-{tag}", f"ddce{tag}h", f"ddce{tag}n", subnet)
        prefix = subnet.prefixlen
        steps = [
            ["ip", "netns", "add", made.name],
            ["ip", "link", "add", made.host_if, "type", "veth", "peer", "name", made.ns_if],
            ["ip", "link", "set", made.ns_if, "netns", made.name],
            ["ip", "addr", "add", f"{made.host_address}/{prefix}", "dev", made.host_if],
            ["ip", "link", "set", made.host_if, "up"],
            ["ip", "-n", made.name, "addr", "add", f"{made.pool_address}/{prefix}", "dev", made.ns_if],
            ["ip", "-n", made.name, "link", "set", made.ns_if, "up"],
            ["ip", "-n", made.name, "link", "set", "lo", "up"],
        ]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.SubprocessError) as exc:
                made.delete()
                raise NamespaceError(f"{' '.join(step)}: {exc}") from exc
            if done.returncode != 0:
                made.delete()
                raise NamespaceError(f"{' '.join(step)}: {done.stderr.strip()}")
        return made

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def delete(self) -> None:
        """Remove the veth pair (both ends) and the namespace; what does not exist is skipped."""
        for step in (["ip", "link", "del", self.host_if], ["ip", "netns", "del", self.name]):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(step, capture_output=True, timeout=30)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, handler: Any, allowed: ipaddress.IPv4Network) -> None:
        require_allowed(host, allowed)
        self.allowed = allowed
        self.received: list[dict[str, Any]] = []  # the pool's JSON lines, for tests
        self.received_lock = threading.Lock()
        super().__init__((host, port), handler)

    def start(self) -> Server:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


class PoolHandler(socketserver.StreamRequestHandler):
    """One miner's connection: a reply to each JSON object line; anything else is skipped."""

    server: Server

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            for line in iter(lambda: self.rfile.readline(MAX_LINE), b""):
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                with self.server.received_lock:
                    self.server.received.append(message)
                reply = {"id": message.get("id"), "result": True, "error": None}
                self.wfile.write(json.dumps(reply).encode() + b"\n")


class ProxyHandler(socketserver.BaseRequestHandler):
    """``CONNECT host:port HTTP/1.x`` to an allowed address: 200 and a relay; anything else: 403."""

    server: Server

    def handle(self) -> None:
        client: socket.socket = self.request
        try:
            head = read_head(client)
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            host, _, port = target.rpartition(":")
            if method != "CONNECT":
                raise ValueError(f"{method} is not CONNECT")
            require_allowed(host, self.server.allowed)
            upstream = socket.create_connection((host, int(port)), timeout=5)
        except (ValueError, OSError):
            with contextlib.suppress(OSError):
                client.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            return
        with upstream:
            upstream.settimeout(None)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            relay(client, upstream)


def read_head(sock: socket.socket) -> bytes:
    """A request head, byte by byte so that nothing after it is consumed; ValueError if too long."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte or len(head) >= MAX_HEAD:
            raise ValueError("no complete request head")
        head += byte
    return head


def relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until one side closes, fails or is idle for RELAY_IDLE seconds."""
    peers = {a: b, b: a}
    with contextlib.suppress(OSError):
        while True:
            ready, _, _ = select.select(list(peers), [], [], RELAY_IDLE)
            if not ready:
                return
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                peers[sock].sendall(data)


def egress(
    proxy: tuple[str, int],
    target: tuple[str, int],
    allowed: ipaddress.IPv4Network,
    hold: float,
    seconds: float,
) -> int:
    """The egress client (see the module's docstring); 1 when an address is not allowed."""
    try:
        require_allowed(proxy[0], allowed)
        require_allowed(target[0], allowed)
    except ValueError as exc:
        print(f"evasion_pool: {exc}", file=sys.stderr)
        return 1
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            with socket.create_connection(proxy, timeout=5) as sock:
                host = f"{target[0]}:{target[1]}"
                sock.sendall(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                if not read_head(sock).startswith(b"HTTP/1.1 200 "):
                    raise OSError("the proxy refused the CONNECT")
                print("egress connected", flush=True)
                end = min(until, time.monotonic() + hold)
                while time.monotonic() < end:
                    sock.sendall(b'{"id": 1, "method": "update.check", "params": []}\n')
                    if not sock.recv(4096):
                        raise OSError("closed by the far end")
                    time.sleep(max(0.0, min(EGRESS_EVERY, end - time.monotonic())))
        except (OSError, ValueError) as exc:
            print(f"evasion_pool: egress: {exc}", file=sys.stderr, flush=True)
            time.sleep(1.0)
    return 0


def endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--allow", required=True, type=ipaddress.IPv4Network, help="the allowed network")
    parser.add_argument("--pool", action="append", default=[], type=endpoint, help="HOST:PORT, repeatable")
    parser.add_argument("--proxy", type=endpoint, help="HOST:PORT of the HTTP CONNECT proxy")
    parser.add_argument("--seconds", type=float, default=7200.0, help="exit after this long")
    parser.add_argument("--egress", type=endpoint, help="HOST:PORT of the proxy: be the egress client")
    parser.add_argument("--target", type=endpoint, help="HOST:PORT the egress client CONNECTs to")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds each egress connection stays open")
    args = parser.parse_args(argv)
    if args.egress is not None:
        if args.target is None:
            parser.error("--egress needs --target")
        return egress(args.egress, args.target, args.allow, args.hold, args.seconds)
    try:
        servers = [Server(host, port, PoolHandler, args.allow).start() for host, port in args.pool]
        if args.proxy is not None:
            host, port = args.proxy
            servers.append(Server(host, port, ProxyHandler, args.allow).start())
    except (ValueError, OSError) as exc:
        print(f"evasion_pool: {exc}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    time.sleep(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
