"""Write README.md's metric and configuration tables from the code's declarations: ``make docs``.

Each table sits between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` lines; the text around them is
left as it is. A test fails when the committed README differs from what this writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from ddcustom.device.config import SCHEMA
from ddcustom.device.metrics import METRICS

README = Path(__file__).resolve().parents[1] / "README.md"


def tables() -> dict[str, str]:
    metrics = [f"| `{m.name}` | {m.kind} | {m.unit} | {m.description} |" for m in METRICS.values()]
    keys = [
        f"| `{key}` | `{json.dumps(default)}` | {meaning} |" for key, (default, *_, meaning) in SCHEMA.items()
    ]
    return {
        "metrics": "\n".join(["| metric | type | unit | description |", "|---|---|---|---|", *metrics]),
        "configuration": "\n".join(["| key | default | meaning |", "|---|---|---|", *keys]),
    }


def generated(readme: str) -> str:
    """``readme`` with each table between its markers replaced by the one the code declares."""
    for name, table in tables().items():
        begin, end = f"<!-- {name}:begin -->\n", f"<!-- {name}:end -->"
        head, found, rest = readme.partition(begin)
        if not found or end not in rest or begin in rest:
            raise SystemExit(f"README.md needs one {begin.strip()} ... {end} pair")
        readme = f"{head}{begin}{table}\n{end}{rest.split(end, 1)[1]}"
    return readme


if __name__ == "__main__":
    README.write_text(generated(README.read_text(encoding="utf-8")), encoding="utf-8")
