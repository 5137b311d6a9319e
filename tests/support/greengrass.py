"""The component under the stand-in nucleus, in-process: the real awsiotsdk client, the project's recipe."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from ddcustom.device.outputs.greengrass.sink import GreengrassSink
from ddcustom.device.run.greengrass import serve
from ddcustom.tooling.devnucleus import DevNucleus, Published
from support.helpers import MINING_RULES, ROOT, profile

THING = "cam-42"
REPORT_TOPIC = f"$aws/things/{THING}/defender/metrics/json"
ALERT_TOPIC = f"ddcustom/{THING}/alerts"
# The article's two rules only: the host's load and processes raise no alert here.
BASE = {"DetectIntervalSeconds": 0.5, "SecurityProfile": profile(*MINING_RULES)}


def reports(nucleus: DevNucleus) -> list[dict[str, Any]]:
    return [json.loads(p.payload) for p in nucleus.published if p.topic == REPORT_TOPIC]


def is_report(p: Published) -> bool:
    return p.topic == REPORT_TOPIC


class Component:
    def __init__(self, tmp: Path, merge: dict[str, Any]) -> None:
        merge = {**BASE, "StateDirectory": str(tmp / "state"), **merge}
        self.nucleus = DevNucleus(ROOT / "recipe.yaml", THING, merge).start()
        self.conn = GreengrassSink(
            THING,
            timeout=3.0,
            socket_path=self.nucleus.socket_path,
            token=self.nucleus.token,
            reconnect_base=0.02,
            reconnect_cap=0.1,
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=serve, args=(self.conn, self.stop), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.conn.wake.set()
        self.thread.join(15)
        self.nucleus.stop()
        assert not self.thread.is_alive(), "the component did not stop"
