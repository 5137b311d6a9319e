"""Reading the fleet index of the named shadow ``ddcustom`` (docs/fleet.md): the query helpers that
``cloud status`` and the silent-device function share. Standard library only, so that the function's
package can carry it; the caller passes an iot client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Optional

FLEET_SHADOW = "ddcustom"  # the named shadow the component keeps current (docs/fleet.md)
REPORTED = f"shadow.name.{FLEET_SHADOW}.reported."
INDEX = "AWS_Things"
QUERY_VERSION = "2017-09-30"
PAGE_SIZE = 500  # SearchIndex's largest page


def quoted(value: str) -> str:
    """A query value in double quotes (thing group names may hold ':')."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def search(iot: Any, query: str, page_size: int = PAGE_SIZE, limit: Optional[int] = None) -> Iterator[dict]:
    """The things of the index that match ``query``, page after page (at most ``limit``)."""
    token: Optional[str] = None
    found = 0
    while True:
        params: dict[str, Any] = {
            "indexName": INDEX,
            "queryString": query,
            "maxResults": page_size if limit is None else min(page_size, limit - found),
            "queryVersion": QUERY_VERSION,
        }
        if token:
            params["nextToken"] = token
        page = iot.search_index(**params)
        for thing in page.get("things", []):
            found += 1
            yield dict(thing)
        token = page.get("nextToken")
        if not token or (limit is not None and found >= limit):
            return


def reported(thing: dict[str, Any]) -> dict[str, Any]:
    """The reported document of the shadow ``ddcustom`` of a SearchIndex thing ({} when it has none):
    the thing's ``shadow`` is JSON text holding the named shadows under "name"."""
    try:
        shadow = json.loads(thing.get("shadow") or "{}")
    except ValueError:
        return {}
    if not isinstance(shadow, dict):
        return {}
    document = shadow.get("name", {}).get(FLEET_SHADOW, {}).get("reported", {})
    return document if isinstance(document, dict) else {}


def updated(thing: dict[str, Any]) -> Optional[int]:
    """The epoch seconds of the device's last shadow update, as it wrote them (None: not there)."""
    value = reported(thing).get("updated")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
