"""``python -m ddcustom.tooling.devnucleus --recipe recipe.yaml --thing NAME``: serve; print what is sent."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import threading
from typing import Optional

import yaml

from ddcustom.device.config import ConfigError, load_config_file
from ddcustom.tooling.devnucleus.access import RecipeError
from ddcustom.tooling.devnucleus.server import DevNucleus, Published


def _print_published(published: Published) -> None:
    try:
        body = {"payload": published.payload.decode("utf-8")}
    except UnicodeDecodeError:
        body = {"payload_base64": base64.b64encode(published.payload).decode("ascii")}
    line = {"service": published.service, "topic": published.topic, "qos": published.qos, **body}
    print(json.dumps(line), flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddcustom.tooling.devnucleus", description=__doc__)
    parser.add_argument("--recipe", required=True, help="recipe.yaml or recipe.json of the component")
    parser.add_argument("--thing", default="ddcustom-dev-thing", help="thing name ({iot:thingName})")
    parser.add_argument("--merge", help="merge configuration: a JSON/YAML file, or inline JSON")
    parser.add_argument("--socket", help="socket path (default: a new directory under /tmp)")
    args = parser.parse_args(argv)
    try:
        merge = None
        if args.merge:
            if args.merge.lstrip().startswith("{"):
                merge = yaml.safe_load(args.merge)
            else:
                merge = load_config_file(args.merge, what="--merge file")
            if not isinstance(merge, dict):
                raise RecipeError("--merge must be a mapping (JSON object)")
        nucleus = DevNucleus(args.recipe, args.thing, merge, args.socket, on_publish=_print_published)
    except (RecipeError, ConfigError, OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with nucleus:
        print("stand-in nucleus ready; run the component with:", file=sys.stderr)
        for name, value in nucleus.env().items():
            print(f"export {name}={value}", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
