"""The open alarms, kept on disk so that a restarted component ends the alarms its last run raised.

Written (durably, like the spool) whenever an alarm opens, closes or is invalidated, before the event
is spooled: after a crash the file never lacks an alarm whose in-alarm event may have gone out. A file
that is missing or does not parse means no open alarms (logged); it never stops the component.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ddcustom.device.detect.events import OpenAlarm
from ddcustom.device.fileio import read_bounded, write_atomic

log = logging.getLogger(__name__)

MAX_BYTES = 4 * 1024 * 1024  # 100 behaviors with list values stay far below


def load_open_alarms(path: str) -> list[OpenAlarm]:
    try:
        data = json.loads(read_bounded(path, MAX_BYTES))
        return [
            OpenAlarm(a["profile"], a["behavior"], a["violationId"], float(a["since"]), a["metricValue"])
            for a in data["alarms"]
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("open alarms in %s cannot be read (%s); alarms of the last run stay open", path, exc)
        return []


def save_open_alarms(path: str, alarms: list[OpenAlarm]) -> None:
    document: dict[str, Any] = {
        "alarms": [
            {
                "profile": a.profile,
                "behavior": a.behavior,
                "violationId": a.violation_id,
                "since": a.since,
                "metricValue": a.metric_value,
            }
            for a in alarms
        ]
    }
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomic(path, json.dumps(document, sort_keys=True).encode(), durable=True)
    except OSError as exc:
        log.warning("cannot persist the open alarms in %s: %s", path, exc)
