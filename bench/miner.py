"""The interpreted stand-in miner of bench/evasion.py: the benchmark copies it to /dev/shm and runs it
as ``python3 /dev/shm/.../x.py``, as a dropper does.

Hashes at --duty percent of one core (100 ms periods) and keeps a stratum-like TCP connection to its
pool: mining.subscribe when it connects, a mining.submit JSON line every 3 s, replies read and dropped.
Numeric IPv4 only, inside --allow or loopback, checked before connecting. Prints "connected" at each
connection; exits after --seconds. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import select
import socket
import sys
import time

PERIOD = 0.1
SUBMIT_EVERY = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pool", required=True, help="HOST:PORT")
    parser.add_argument("--allow", required=True, type=ipaddress.IPv4Network)
    parser.add_argument("--duty", type=float, default=100.0, help="percent of one core")
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()
    host, _, port = args.pool.rpartition(":")
    address = ipaddress.ip_address(host)
    if address not in args.allow and not address.is_loopback:
        print(f"miner: refused: {host} is outside {args.allow} and loopback", file=sys.stderr)
        return 2
    end = time.monotonic() + args.seconds
    sock = None
    retry_at = last_send = 0.0
    sent = 0
    digest = b"block"
    while time.monotonic() < end:
        started = time.monotonic()
        while time.monotonic() - started < PERIOD * args.duty / 100:
            for _ in range(200):
                digest = hashlib.sha256(digest).digest()
        now = time.monotonic()
        if sock is None and now >= retry_at:
            try:
                sock = socket.create_connection((str(address), int(port)), timeout=2)
                sock.sendall(b'{"id":1,"method":"mining.subscribe","params":["pyminer/1.0"]}\n')
                print("connected", flush=True)
                last_send = now
            except OSError:
                sock, retry_at = None, now + 1.0
        if sock is not None and now - last_send >= SUBMIT_EVERY:
            sent += 1
            line = {
                "id": sent + 1,
                "method": "mining.submit",
                "params": ["wallet", "job-1", digest.hex()[:16]],
            }
            try:
                sock.sendall(json.dumps(line).encode() + b"\n")
                while select.select([sock], [], [], 0)[0]:  # the replies so far
                    if sock.recv(4096) == b"":
                        raise ConnectionResetError("the pool closed the connection")
            except OSError:
                sock.close()
                sock, retry_at = None, now + 1.0
            last_send = now
        time.sleep(max(0.0, PERIOD - (time.monotonic() - started)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
