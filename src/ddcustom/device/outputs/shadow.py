"""The device's state for the fleet: the named shadow ``ddcustom`` of its thing.

Fleet indexing indexes this shadow, so the cloud can answer "which devices are in alarm now, for what,
since when" without reading any alert. The reported document (contract with ``ddcustom cloud status``,
docs/fleet.md):

    {"state": {"reported": {"schema": 1, "componentVersion": "1.0.0", "profile": "crypto-mining",
      "inAlarm": true, "alarmCount": 1, "behaviorsInAlarm": ["miner-processes"],
      "alarms": [{"behavior": "miner-processes", "metric": "miner_processes", "since": 1764650000,
                  "violationId": "...", "metricValue": {"number": 1}}],
      "baseline": "active", "updated": 1764650000}}}

It is published when it changes (``updated`` aside) and at least once an hour as a heartbeat, never more
often than it changes; a publish that fails is tried again every cycle, so the shadow is right again
soon after a dropped connection comes back. Suppressed behaviors raise no alerts and are not shown.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ddcustom import __version__
from ddcustom.device.detect.events import OpenAlarm

SHADOW_NAME = "ddcustom"
SCHEMA = 1
HEARTBEAT_SECONDS = 3600.0
# AWS IoT's limit for a shadow state document is 8 KB; keep well under it with room for metadata.
MAX_DOCUMENT_BYTES = 6000
MAX_LIST_VALUES = 10  # of a list datapoint (names, addresses) shown per alarm


def shadow_update_topic(thing_name: str) -> str:
    return f"$aws/things/{thing_name}/shadow/name/{SHADOW_NAME}/update"


def reported_state(alarms: list[OpenAlarm], profile: str, baseline: str = "off") -> dict[str, Any]:
    """The reported state without its time, bounded to MAX_DOCUMENT_BYTES. ``baseline``: "learning",
    "active", or "off" (the profile uses no baseline metric, or its store cannot be used)."""
    shown = [a for a in alarms if not a.behavior.get("suppressAlerts", False)]
    entries = [
        {
            "behavior": a.behavior_name,
            "metric": a.behavior.get("metric"),
            "since": int(a.since),
            "violationId": a.violation_id,
            "metricValue": {
                k: v[:MAX_LIST_VALUES] if isinstance(v, list) else v for k, v in a.metric_value.items()
            },
        }
        for a in shown
    ]
    state: dict[str, Any] = {
        "schema": SCHEMA,
        "componentVersion": __version__,
        "profile": profile,
        "inAlarm": bool(shown),
        "alarmCount": len(shown),
        "behaviorsInAlarm": sorted(a.behavior_name for a in shown),
        "alarms": entries,
        "baseline": baseline,
    }
    while entries and len(json.dumps(state)) > MAX_DOCUMENT_BYTES - 100:  # room for updated, truncated
        entries.pop()  # the names and the count stay complete; details of the last alarms go
        state["alarmsTruncated"] = True
    return state


class FleetShadow:
    """Decides when the shadow is due and builds the update document."""

    def __init__(self, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> None:
        self._heartbeat = heartbeat_seconds
        self._sent: Optional[dict[str, Any]] = None
        self._sent_at = 0.0  # monotonic time of the last publish that went out

    def due(self, state: dict[str, Any], now: float) -> bool:
        return state != self._sent or now - self._sent_at >= self._heartbeat

    def update_document(self, state: dict[str, Any], wall_time: float) -> dict[str, Any]:
        return {"state": {"reported": {**state, "updated": int(wall_time)}}}

    def sent(self, state: dict[str, Any], now: float) -> None:
        self._sent, self._sent_at = state, now
