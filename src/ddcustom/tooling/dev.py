"""``ddcustom dev``: the component under the stand-in nucleus, showing what it publishes.

The nucleus serves the recipe's configuration (with ``--merge`` applied, as the deployment that adds the
component would) and enforces its accessControl, so a topic the recipe does not grant fails here as it
would on a device. It runs the component as a child process in a temporary work folder under the
nucleus's lifecycle (devnucleus/service.py): restarted after an error, BROKEN at the third error within
the error reset time. Each line of JSON typed on stdin is a new deployment merging into the
configuration: the running component is asked to validate it first, and a refusal is shown as the
deployment failure it would be, with nothing applied. Every state change and deployment outcome is
printed as it happens. The exit status is 1 when a deployment failed or the component ended BROKEN.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Optional, TextIO

from ddcustom.tooling.devnucleus import DevNucleus, Published, RecipeError
from ddcustom.tooling.devnucleus.server import DeploymentResult
from ddcustom.tooling.devnucleus.service import BROKEN, FINISHED, Transition

POLL = 0.2  # seconds between looks at the component
NOT_CHANGED = {
    "FAILED_NO_STATE_CHANGE": "nothing was applied: the component keeps its configuration",
    "FAILED_ROLLBACK_COMPLETE": "rolled back: the previous configuration is restored and the component "
    "started again with it",
}
REMOVED = "rolled back: the component is removed, as it was not on the device before this deployment"


def _show(published: Published) -> None:
    try:
        body: Any = json.loads(published.payload)
    except ValueError:
        body = published.payload[:200].decode("utf-8", errors="replace")
    where = "IoT Core" if published.service == "iot" else "local pub/sub"
    print(f"--> {where} {published.topic}\n{json.dumps(body, indent=2)}", flush=True)


def _say(text: str) -> None:
    print(f"ddcustom dev: {text}", file=sys.stderr, flush=True)


def _show_transition(transition: Transition) -> None:
    _say(f"the component is {transition.state} ({transition.reason})")


def _show_deployment(result: DeploymentResult, what: str, first: bool = False) -> None:
    _say(f"{what}: {result.describe()}")
    if first and result.detailed_status == "FAILED_ROLLBACK_COMPLETE":
        _say(REMOVED)
    elif not result.succeeded and result.detailed_status in NOT_CHANGED:
        _say(NOT_CHANGED[result.detailed_status])


def _parse_merge(text: str) -> dict[str, Any]:
    merge = json.loads(text)
    if not isinstance(merge, dict):
        raise ValueError("a merge must be a JSON object")
    return merge


def _apply_typed_merges(lines: TextIO, nucleus: DevNucleus) -> None:
    """Deploy each JSON line read from ``lines`` as a merge, until end of file."""
    for line in lines:
        if not line.strip():
            continue
        try:
            merge = _parse_merge(line)
        except ValueError as exc:
            _say(f"not a merge: {exc}")
            continue
        try:
            result = nucleus.deploy(merge)
        except RecipeError as exc:
            _say(f"deployment refused before it started: {exc}")
            continue
        _show_deployment(result, "deployment of the typed merge")


def _stdin_is_ours() -> bool:
    """False in the background of a terminal, where reading stdin would stop the process (SIGTTIN)."""
    try:
        return not sys.stdin.isatty() or os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (AttributeError, OSError, ValueError):  # no stdin, closed or detached
        return False


def _raise_keyboard_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _wait(nucleus: DevNucleus, deadline: Optional[float]) -> None:
    """Until ``deadline`` (None: Ctrl-C), or until the component is down for good (BROKEN, FINISHED)."""
    service = nucleus.service
    with contextlib.suppress(KeyboardInterrupt):
        while deadline is None or time.monotonic() < deadline:
            if service is None or service.state in (BROKEN, FINISHED):
                return
            time.sleep(POLL)


def run_dev(args: argparse.Namespace) -> int:
    try:
        merge = _parse_merge(args.merge) if args.merge else None
        nucleus = DevNucleus(args.recipe, args.thing, merge, on_publish=_show)
    except (ValueError, RecipeError, OSError) as exc:
        print(f"ddcustom dev: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (`timeout`, `kill`) stops the component too, as Ctrl-C does, instead of orphaning it.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    deadline = time.monotonic() + args.seconds if args.seconds > 0 else None
    # the nucleus stops the component before its work folder goes
    with tempfile.TemporaryDirectory(prefix="ddcustom-work-") as work, nucleus:
        _say(
            f"stand-in nucleus for {nucleus.component_name} as thing {args.thing!r} (lifecycle step "
            f'{nucleus.lifecycle_step()!r}); type a JSON merge such as {{"EnableGPUMetrics": true}} and '
            "Enter to deploy it"
        )
        try:
            first = nucleus.run_component(
                [sys.executable, "-m", "ddcustom", "run"],
                cwd=work,
                on_transition=_show_transition,
                wait_seconds=max(1.0, deadline - time.monotonic()) if deadline is not None else 3600.0,
            )
            what = "the deployment that adds the component" + (" with --merge" if merge else "")
            _show_deployment(first, what, first=True)
            if first.succeeded:
                if _stdin_is_ours():
                    threading.Thread(
                        target=_apply_typed_merges, args=(sys.stdin, nucleus), daemon=True
                    ).start()
                _wait(nucleus, deadline)
        except KeyboardInterrupt:
            pass
        states = nucleus.states
        service = nucleus.service
        final = service.state if service is not None else "not installed"
        published = len(nucleus.published)
        print(
            f"states reported: {states}; {published} messages published; the component is {final}",
            file=sys.stderr,
        )
        failed = [result for result in nucleus.deployments if not result.succeeded]
    if failed:
        _say(f"{len(failed)} deployment(s) failed: exit 1")
        return 1
    if final == BROKEN:
        _say("the component is BROKEN: exit 1")
        return 1
    return 0
