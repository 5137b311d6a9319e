"""``ddcustom dev``: the component under the stand-in nucleus, showing what it publishes.

The nucleus serves the recipe's configuration (with ``--merge`` applied as a deployment would) and
enforces its accessControl, so a topic the recipe does not grant fails here as it would on a device.
The component runs as a child process in a temporary work folder, as Greengrass runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from typing import Any

from ddcustom.devnucleus import DevNucleus, Published, RecipeError


def _show(published: Published) -> None:
    try:
        body: Any = json.loads(published.payload)
    except ValueError:
        body = published.payload[:200].decode("utf-8", errors="replace")
    where = "IoT Core" if published.service == "iot" else "local pub/sub"
    print(f"--> {where} {published.topic}\n{json.dumps(body, indent=2)}", flush=True)


def run_dev(args: argparse.Namespace) -> int:
    try:
        merge = json.loads(args.merge) if args.merge else None
        if merge is not None and not isinstance(merge, dict):
            raise ValueError("--merge must be a JSON object")
        nucleus = DevNucleus(args.recipe, args.thing, merge, on_publish=_show)
    except (ValueError, RecipeError, OSError) as exc:
        print(f"ddcustom dev: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    with nucleus, tempfile.TemporaryDirectory(prefix="ddcustom-work-") as work:
        print(f"stand-in nucleus for {nucleus.component_name} as thing {args.thing!r}", file=sys.stderr)
        child = subprocess.Popen(
            [sys.executable, "-m", "ddcustom", "run"], env={**os.environ, **nucleus.env()}, cwd=work
        )
        try:
            if args.seconds > 0:
                stop.wait(args.seconds)
                child.terminate()
            child.wait()
        except KeyboardInterrupt:
            child.terminate()
        finally:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        print(
            f"states reported: {nucleus.states}; {len(nucleus.published)} messages published", file=sys.stderr
        )
    return 0
