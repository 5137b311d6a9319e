"""``ddcustom dev``: the component under the stand-in nucleus, showing what it publishes.

The nucleus serves the recipe's configuration (with ``--merge`` applied as a deployment would) and
enforces its accessControl, so a topic the recipe does not grant fails here as it would on a device.
The component runs as a child process in a temporary work folder, as Greengrass runs it. Each line of
JSON typed on stdin is merged into the configuration while it runs, as a new deployment would be.
Each state the component reports is printed when it arrives. The exit status is 1 when the component
reported ERRORED (as a device's deployment would fail) or exited with a non-zero status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional, TextIO

from ddcustom.tooling.child import stop_child
from ddcustom.tooling.devnucleus import DevNucleus, Published, RecipeError

POLL = 0.2  # seconds between looks at the component and the states it reported


def _show(published: Published) -> None:
    try:
        body: Any = json.loads(published.payload)
    except ValueError:
        body = published.payload[:200].decode("utf-8", errors="replace")
    where = "IoT Core" if published.service == "iot" else "local pub/sub"
    print(f"--> {where} {published.topic}\n{json.dumps(body, indent=2)}", flush=True)


def _parse_merge(text: str) -> dict[str, Any]:
    merge = json.loads(text)
    if not isinstance(merge, dict):
        raise ValueError("a merge must be a JSON object")
    return merge


def _apply_typed_merges(lines: TextIO, nucleus: DevNucleus) -> None:
    """Merge each JSON line read from ``lines`` into the configuration, until end of file."""
    for line in lines:
        if not line.strip():
            continue
        try:
            changed = nucleus.update_configuration(_parse_merge(line))
        except (ValueError, RecipeError) as exc:
            print(f"ddcustom dev: merge refused: {exc}", file=sys.stderr, flush=True)
            continue
        print(f"ddcustom dev: configuration changed: {changed or 'nothing'}", file=sys.stderr, flush=True)


def _stdin_is_ours() -> bool:
    """False in the background of a terminal, where reading stdin would stop the process (SIGTTIN)."""
    try:
        return not sys.stdin.isatty() or os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (AttributeError, OSError, ValueError):  # no stdin, closed or detached
        return False


def _raise_keyboard_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _print_new_states(nucleus: DevNucleus, shown: int) -> int:
    """Print the states reported since the first ``shown``; how many are shown now."""
    states = nucleus.states
    for state in states[shown:]:
        print(f"ddcustom dev: the component reported {state}", file=sys.stderr, flush=True)
    return len(states)


def _wait(child: subprocess.Popen[bytes], nucleus: DevNucleus, seconds: Optional[float]) -> int:
    """Wait for the component for ``seconds`` (None: until it ends or Ctrl-C), printing the states it
    reports, then stop it; its exit status."""
    deadline = None if seconds is None else time.monotonic() + seconds
    shown = 0
    with contextlib.suppress(KeyboardInterrupt):
        while child.poll() is None and (deadline is None or time.monotonic() < deadline):
            shown = _print_new_states(nucleus, shown)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=POLL)
    _print_new_states(nucleus, shown)
    return stop_child(child)


def run_dev(args: argparse.Namespace) -> int:
    try:
        merge = _parse_merge(args.merge) if args.merge else None
        nucleus = DevNucleus(args.recipe, args.thing, merge, on_publish=_show)
    except (ValueError, RecipeError, OSError) as exc:
        print(f"ddcustom dev: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (`timeout`, `kill`) stops the component too, as Ctrl-C does, instead of orphaning it.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with nucleus, tempfile.TemporaryDirectory(prefix="ddcustom-work-") as work:
        print(
            f"stand-in nucleus for {nucleus.component_name} as thing {args.thing!r}; type a JSON merge "
            'such as {"EnableGPUMetrics": true} and Enter to change the configuration',
            file=sys.stderr,
        )
        child = subprocess.Popen(
            [sys.executable, "-m", "ddcustom", "run"],
            env={**os.environ, **nucleus.env()},
            cwd=work,
            stdin=subprocess.DEVNULL,  # stdin is for the merges
        )
        if _stdin_is_ours():
            threading.Thread(target=_apply_typed_merges, args=(sys.stdin, nucleus), daemon=True).start()
        status = _wait(child, nucleus, args.seconds if args.seconds > 0 else None)
        states = nucleus.states
        print(f"states reported: {states}; {len(nucleus.published)} messages published", file=sys.stderr)
    if status != 0:
        print(f"ddcustom dev: the component exited with status {status}", file=sys.stderr)
        return 1
    if "ERRORED" in states:
        print("ddcustom dev: the component reported ERRORED: exit 1", file=sys.stderr)
        return 1
    return 0
