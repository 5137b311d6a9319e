"""``ddcustom baseline show | approve ITEM | forget ITEM | relearn``: the operator's side of the baseline.

Safe while the component runs: every command is a locked read-modify-write of the file (store.py), and
the running component picks the change up at its next detection cycle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any, Optional

from ddcustom import COMPONENT_NAME
from ddcustom.device.baseline.approvals import parse_sha256
from ddcustom.device.baseline.deployment import DEFAULT_GREENGRASS_ROOT
from ddcustom.device.baseline.file import BaselineError
from ddcustom.device.baseline.keys import (
    ENDPOINT,
    EXECUTABLE,
    EXECUTABLE_KINDS,
    GPU_EXECUTABLE,
    KINDS,
    LISTENING,
    PATH_PREFIX,
    SHA256_PREFIX,
    endpoint_key,
    listening_key,
    network_key,
    parse_endpoint_pattern,
    parse_port,
)
from ddcustom.device.baseline.store import DEFAULT_LEARNING_SECONDS, FILE_NAME, BaselineStore
from ddcustom.device.sources.identity import IdentityReader

EXIT_NOT_FOUND = 1
EXIT_ERROR = 2

# Where the component keeps its state under a default Greengrass install (StateDirectory automatic).
GREENGRASS_STATE_DIR = os.path.join(DEFAULT_GREENGRASS_ROOT, "work", COMPONENT_NAME, "state")

ITEM_HELP = """\
ITEM forms:
  pid:N                   what process N runs now: its executable (path and SHA-256), or the
                          interpreter and the script it runs
  /abs/path               the executable file at that path as it is now (path and SHA-256);
                          forget: every entry whose executable or script is that path
  sha256:HEX (or HEX)     that content wherever it lies, as executable or as script
  path:/abs/path          whatever lies at that path (its content may change)
  gpu:<one of the above>  the same, for GPU compute processes
  endpoint:ADDR:PORT      a remote endpoint: endpoint:203.0.113.7:443, endpoint:203.0.113.0/24:443,
                          endpoint:10.0.0.0/8 (every port), endpoint:[2001:db8::/64]:443
  listen:tcp:PORT         a listening port (listen:udp:PORT for UDP)
  key:KIND:KEY            an entry exactly as `show` lists it (KIND: executable, gpu_executable,
                          endpoint, listening)
"""


class ItemError(ValueError):
    """An ITEM the command line cannot use; the message says why."""


def baseline_path(state_dir: Optional[str], config: Optional[str]) -> str:
    """The baseline file: --state-dir, else the configuration's StateDirectory, else the component's
    state folder under a default Greengrass install when it exists, else the local default."""
    from ddcustom.device.config import load_config_file, parse_settings, resolve_state_directory

    if state_dir:
        return os.path.join(state_dir, FILE_NAME)
    configured = ""
    if config:
        configured = parse_settings(load_config_file(config))[0].state_directory
    if not configured and not os.environ.get("SVCUID") and os.path.isdir(GREENGRASS_STATE_DIR):
        return os.path.join(GREENGRASS_STATE_DIR, FILE_NAME)
    return os.path.join(resolve_state_directory(configured), FILE_NAME)


# ---- ITEM ------------------------------------------------------------------------------------------


def _executable_item(text: str, kind: str, reader: IdentityReader) -> tuple[str, str, dict[str, Any]]:
    """(kind, key, details) of an executable ITEM."""
    if text.startswith("pid:"):
        if not text[4:].isdigit():
            raise ItemError(f"{text!r}: expected pid:N with N a process id")
        identity = reader.read(int(text[4:]))
        if identity is None:
            raise ItemError(f"{text!r}: no such process, or it runs no executable")
        if not identity.knowable:
            reason = identity.reason_unknowable
            raise ItemError(f"{text!r}: its executable is {reason}: it can never be known")
        return kind, identity.key, identity.details()
    if text.startswith(PATH_PREFIX):
        path = text[len(PATH_PREFIX) :]
        if not path.startswith("/"):
            raise ItemError(f"{text!r}: expected path:/absolute/path")
        return kind, PATH_PREFIX + path, {"path": path}
    sha = parse_sha256(text)
    if sha is not None:
        return kind, SHA256_PREFIX + sha, {"sha256": sha}
    if text.startswith("/"):
        identity = reader.read_file(text)
        if not identity.knowable:
            raise ItemError(f"{text!r}: cannot hash the file ({identity.reason_unknowable})")
        return kind, identity.key, identity.details()
    raise ItemError(f"{text!r} is no ITEM form")


def parse_item(text: str, reader: IdentityReader) -> tuple[str, str, dict[str, Any]]:
    """(kind, key, details) an ITEM names, for approve. ItemError when it names nothing."""
    if text.startswith("gpu:"):
        return _executable_item(text[4:], GPU_EXECUTABLE, reader)
    if text.startswith("endpoint:"):
        pattern = text[len("endpoint:") :]
        try:
            network, port = parse_endpoint_pattern(pattern)
        except ValueError as exc:
            raise ItemError(f"endpoint: {exc}") from None
        return ENDPOINT, network_key(str(network), port), {"pattern": pattern}
    if text.startswith("listen:"):
        protocol, _, port_text = text[len("listen:") :].partition(":")
        try:
            port = parse_port(port_text, repr(text))
            return LISTENING, listening_key(protocol, port), {"protocol": protocol, "port": port}
        except ValueError as exc:
            raise ItemError(str(exc)) from None
    if text.startswith("key:"):
        kind, _, key = text[len("key:") :].partition(":")
        if kind not in KINDS or not key:
            raise ItemError(f"{text!r}: expected key:KIND:KEY with KIND one of {', '.join(KINDS)}")
        return kind, key, {}
    return _executable_item(text, EXECUTABLE, reader)


def forget_targets(text: str, store: BaselineStore, reader: IdentityReader) -> list[tuple[str, str]]:
    """The (kind, key) pairs ``forget ITEM`` removes: the key the ITEM names, and for a path, a hash or
    an address, every entry made of it (entries whose executable or script is that file, the endpoint
    group holding that address)."""
    exe_kind, bare = (GPU_EXECUTABLE, text[4:]) if text.startswith("gpu:") else (EXECUTABLE, text)
    targets: list[tuple[str, str]] = []
    if bare.startswith("/"):
        targets.append((exe_kind, PATH_PREFIX + bare))
        identity = reader.read_file(bare)
        if identity.knowable:
            targets.append((exe_kind, identity.key))
        for path in dict.fromkeys((bare, os.path.realpath(bare))):
            targets += _entries_made_of(store, exe_kind, "path", path)
        return list(dict.fromkeys(targets))
    kind, key, _ = parse_item(text, reader)
    targets.append((kind, key))
    if kind in EXECUTABLE_KINDS and key.startswith(SHA256_PREFIX):
        targets += _entries_made_of(store, kind, "sha256", key[len(SHA256_PREFIX) :])
    if kind == ENDPOINT:
        network, port = parse_endpoint_pattern(text[len("endpoint:") :])
        if port is not None and network.prefixlen == network.max_prefixlen:
            targets.append((ENDPOINT, endpoint_key(str(network.network_address), port)))
    return list(dict.fromkeys(targets))


def _entries_made_of(store: BaselineStore, kind: str, field: str, value: str) -> list[tuple[str, str]]:
    """Entries of ``kind`` whose executable or script has this path (field "path") or hash ("sha256")."""
    script_field = "script" if field == "path" else "script_sha256"
    return [
        (kind, key)
        for key, entry in store.entries(kind).items()
        if entry.details.get(field) == value or entry.details.get(script_field) == value
    ]


# ---- commands --------------------------------------------------------------------------------------


def _time_text(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _open(args: argparse.Namespace, now: float) -> BaselineStore:
    """The operator's view of the store; the learning period shown is --config's, else the default."""
    learning = DEFAULT_LEARNING_SECONDS
    if args.config:
        from ddcustom.device.config import load_config_file, parse_settings

        learning = parse_settings(load_config_file(args.config))[0].baseline_learning_seconds
    return BaselineStore(
        baseline_path(args.state_dir, args.config), now=now, learning_seconds=learning, operator=True
    )


def _print_show(shown: dict[str, Any], now: float) -> None:
    started = shown["learning_started"]
    print(f"baseline {shown['file']} (epoch {shown['epoch']})")
    if started is None:
        print("learning: not started (the component has not run with this state directory)")
    else:
        ends = started + shown["learning_seconds"]
        state = "learning until" if now < ends else "learning ended"
        print(
            f"learning: started {_time_text(started)}; {state} {_time_text(ends)} "
            f"(with BaselineLearningSeconds {shown['learning_seconds']:g})"
        )
    for kind, entries in shown["entries"].items():
        print(f"{kind}: {len(entries)}")
        for entry in entries:
            extra = " ".join(
                f"{name}={value}"
                for name, value in entry["details"].items()
                if name in ("component", "address", "pattern")
            )
            print(
                f"  {entry['origin']:<10} first {_time_text(entry['first_seen'])} "
                f"last {_time_text(entry['last_seen'])}  {entry['key']}" + (f"  ({extra})" if extra else "")
            )


def cmd_baseline(args: argparse.Namespace) -> int:
    now = time.time()  # the baseline's times are wall-clock
    reader = IdentityReader()
    try:
        store = _open(args, now)
        if args.action == "show":
            shown = store.show(now)
            if args.json:
                json.dump(shown, sys.stdout, indent=2)
                sys.stdout.write("\n")
            else:
                _print_show(shown, now)
            return 0
        if args.action == "approve":
            kind, key, details = parse_item(args.item, reader)
            if args.item.startswith("key:") and key not in store.entries(kind):
                print(f"ddcustom baseline: no {kind} entry {key!r}", file=sys.stderr)
                return EXIT_NOT_FOUND
            store.approve(kind, key, details, now)
            print(f"approved {kind} {key}")
            return 0
        if args.action == "forget":
            removed = store.forget(forget_targets(args.item, store, reader), now)
            for kind, key in removed:
                print(f"forgot {kind} {key}")
            if not removed:
                print(f"ddcustom baseline: nothing in the baseline matches {args.item!r}", file=sys.stderr)
                return EXIT_NOT_FOUND
            return 0
        dropped = store.relearn(now)
        print(f"learning again from {_time_text(now)}: {dropped} learned entries dropped, approvals kept")
        return 0
    except (ItemError, BaselineError) as exc:
        print(f"ddcustom baseline: {exc}", file=sys.stderr)
        return EXIT_ERROR


def add_baseline_parser(subparsers: Any) -> None:
    """Add ``baseline`` and its commands to the ``ddcustom`` parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="take StateDirectory from this configuration file")
    common.add_argument(
        "--state-dir",
        help="the component's StateDirectory (default: from --config; else the component's state folder "
        f"under Greengrass, {GREENGRASS_STATE_DIR}, when it exists; else ~/.local/state/ddcustom)",
    )
    parser = subparsers.add_parser(
        "baseline",
        help="show or edit the learned baseline (safe while the component runs)",
        description="The baseline of what runs and talks on this device.\n\n" + ITEM_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", parents=[common], help="list the learning period and every entry")
    show.add_argument("--json", action="store_true", help="as JSON")
    for action, what in (
        ("approve", "keep ITEM in the baseline for good (until forgotten): it is no longer new"),
        ("forget", "remove ITEM from the baseline: it is new again after learning"),
    ):
        sub = actions.add_parser(
            action,
            parents=[common],
            help=what,
            description=what + ".\n\n" + ITEM_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("item", metavar="ITEM")
    actions.add_parser(
        "relearn",
        parents=[common],
        help="start a new learning period now: learned entries are dropped, approvals kept",
    )
    parser.set_defaults(func=cmd_baseline)
