"""The component under the stand-in nucleus, in-process: the real awsiotsdk client, the project's recipe.

``InProcess`` runs what ``ddcustom run`` runs under Greengrass on a thread, on a connection the test
makes (its own timeouts and backoffs), so a test can read the component's counters and settings;
``Component`` also starts a nucleus serving the project's recipe for it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Optional, cast

from ddcustom.device.config import Settings
from ddcustom.device.outputs.greengrass.connection import GreengrassConnection
from ddcustom.device.outputs.greengrass.sink import GreengrassSink
from ddcustom.device.run.greengrass import GreengrassConfiguration
from ddcustom.device.run.runner import run
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


class InProcess:
    """The component on a thread, started at once, on ``connection``."""

    def __init__(self, connection: GreengrassConnection, thing_name: str = THING) -> None:
        self.connection = connection
        self.configuration = GreengrassConfiguration(connection)
        self.sink = GreengrassSink(connection, thing_name)
        self.stop = threading.Event()
        self.status: Optional[int] = None  # the runner's exit status, once it has returned
        self.thread = threading.Thread(target=self._run, args=(thing_name,), daemon=True)
        self.thread.start()

    def _run(self, thing_name: str) -> None:
        self.status = run(self.configuration, self.sink, thing_name, self.stop, self.connection.wake)

    @property
    def settings(self) -> Optional[Settings]:
        """The settings in use (None before the first): the sink is handed every change."""
        return cast(Optional[Settings], self.sink.settings)

    def halt(self) -> None:
        """Stop the component and wait (bounded) for its thread; ``close`` checks that it ended."""
        self.stop.set()
        self.connection.wake.set()
        self.thread.join(15)

    def close(self) -> None:
        self.halt()
        assert not self.thread.is_alive(), "the component did not stop"


class Component(InProcess):
    """The component and a nucleus of its own, configured with BASE, a state folder and ``merge``."""

    def __init__(self, tmp: Path, merge: dict[str, Any]) -> None:
        merge = {**BASE, "StateDirectory": str(tmp / "state"), **merge}
        self.nucleus = DevNucleus(ROOT / "recipe.yaml", THING, merge).start()
        connection = GreengrassConnection(
            timeout=3.0,
            socket_path=self.nucleus.socket_path,
            token=self.nucleus.token,
            reconnect_base=0.02,
            reconnect_cap=0.1,
        )
        super().__init__(connection)

    def close(self) -> None:
        self.halt()
        self.nucleus.stop()
        assert not self.thread.is_alive(), "the component did not stop"
