"""``ddcustom baseline show | approve ITEM | forget ITEM | relearn``: the operator's side of the baseline.

Safe while the component runs: every command is a locked read-modify-write of the file (store.py), and
the running component picks the change up at its next detection cycle. The ITEM forms are the kinds'
(ddcustom.device.baseline.kinds), with ``key:KIND:KEY`` for any entry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from datetime import datetime, timezone
from typing import Any, Optional

from ddcustom import COMPONENT_NAME
from ddcustom.device.baseline.cycle import DEFAULT_LEARNING_SECONDS
from ddcustom.device.baseline.deployment import DEFAULT_GREENGRASS_ROOT
from ddcustom.device.baseline.file import FILE_NAME, BaselineError
from ddcustom.device.baseline.kinds import BY_NAME, KINDS, Kind
from ddcustom.device.baseline.kinds.kind import ItemError
from ddcustom.device.baseline.store import BaselineStore
from ddcustom.device.sources.identity import IdentityReader

EXIT_NOT_FOUND = 1
EXIT_ERROR = 2

# Where the component keeps its state under a default Greengrass install (StateDirectory automatic).
GREENGRASS_STATE_DIR = os.path.join(DEFAULT_GREENGRASS_ROOT, "work", COMPONENT_NAME, "state")

KEY_PREFIX = "key:"
FORM_WIDTH = 24  # of the ITEM help's first column
HELP_WIDTH = 100


def _help_row(form: str, description: str) -> str:
    indent = " " * (2 + FORM_WIDTH)
    first, *rest = description.split("\n")
    if len(form) >= FORM_WIDTH:  # a long form on a line of its own, its description below
        return "".join([f"  {form}\n", *(f"{indent}{line}\n" for line in (first, *rest))])
    return "".join([f"  {form:<{FORM_WIDTH}}{first}\n", *(f"{indent}{line}\n" for line in rest)])


def _item_help() -> str:
    """The ITEM forms of every kind, then ``key:KIND:KEY``."""
    kinds = ", ".join(kind.name for kind in KINDS)
    key_form = textwrap.fill(
        f"an entry exactly as `show` lists it (KIND: {kinds})",
        HELP_WIDTH,
        initial_indent=f"  {KEY_PREFIX + 'KIND:KEY':<{FORM_WIDTH}}",
        subsequent_indent=" " * (2 + FORM_WIDTH),
    )
    rows = [_help_row(form, text) for kind in KINDS for form, text in kind.items.help]
    return "ITEM forms:\n" + "".join(rows) + key_form + "\n"


ITEM_HELP = _item_help()


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


def _item_kind(text: str) -> tuple[Kind, str]:
    """The kind whose ITEM form ``text`` is (its prefix, else the kind without one), and the rest."""
    for kind in KINDS:
        prefix = kind.items.prefix
        if prefix and text.startswith(prefix):
            return kind, text[len(prefix) :]
    return next(kind for kind in KINDS if not kind.items.prefix), text


def _key_item(text: str) -> tuple[Kind, str]:
    """The kind and key of ``key:KIND:KEY``."""
    name, _, key = text[len(KEY_PREFIX) :].partition(":")
    kind = BY_NAME.get(name)
    if kind is None or not key:
        names = ", ".join(kind.name for kind in KINDS)
        raise ItemError(f"{text!r}: expected key:KIND:KEY with KIND one of {names}")
    return kind, key


def parse_item(text: str, reader: IdentityReader) -> tuple[str, str, dict[str, Any]]:
    """(kind, key, details) an ITEM names, for approve. ItemError when it names nothing."""
    if text.startswith(KEY_PREFIX):
        kind, key = _key_item(text)
        return kind.name, key, {}
    kind, rest = _item_kind(text)
    key, details = kind.items.parse(rest, reader)
    return kind.name, key, details


def forget_targets(text: str, store: BaselineStore, reader: IdentityReader) -> list[tuple[str, str]]:
    """The (kind, key) pairs ``forget ITEM`` removes: the key the ITEM names, and the entries made of it
    (for executables: every entry whose executable or script is that path or has that hash; for an
    endpoint address: the group holding it)."""
    if text.startswith(KEY_PREFIX):
        kind, key = _key_item(text)
        keys = [key, *kind.items.made_of(key, store.entries(kind.name))]
    else:
        kind, rest = _item_kind(text)
        keys = kind.items.forget(rest, reader, store.entries(kind.name))
    return [(kind.name, key) for key in dict.fromkeys(keys)]


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
        shown_details = BY_NAME[kind].items.shown_details
        for entry in entries:
            extra = " ".join(
                f"{name}={value}" for name, value in entry["details"].items() if name in shown_details
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
