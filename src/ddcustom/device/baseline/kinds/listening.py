"""Listening ports (kind ``listening``): ``tcp:22``, ``udp:53`` (keys.py), whatever address they listen
on. A port is known when it is in the baseline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ddcustom.device.baseline.cycle import CycleBaseline
from ddcustom.device.baseline.keys import listening_key, parse_port
from ddcustom.device.baseline.kinds.kind import Context, ItemError, Items, Kind
from ddcustom.device.sample import Sample
from ddcustom.device.sources.identity import IdentityReader


class ListeningWatch:
    """The listening TCP and UDP ports; fills ``new_listening``."""

    def __init__(self, context: Context) -> None:
        self._kind = LISTENING.name

    def observe(self, sample: Sample, baseline: CycleBaseline, now: float) -> Mapping[str, Any]:
        network = sample.network
        if network is None:
            return {"new_listening": ()}
        new = []
        for protocol, ports in (("tcp", network.listening_tcp), ("udp", network.listening_udp)):
            for port in sorted({p.port for p in ports}):
                if not self.observe_listening(baseline, protocol, port, now):
                    new.append(listening_key(protocol, port))
        return {"new_listening": tuple(new)}

    def observe_listening(self, baseline: CycleBaseline, protocol: str, port: int, now: float) -> bool:
        """Whether listening on ``protocol`` (tcp/udp) ``port`` is known; learned while learning."""
        details = {"protocol": protocol, "port": port}
        return baseline.observe(self._kind, listening_key(protocol, port), details, now)


class ListeningItems(Items):
    """``listen:PROTOCOL:PORT``."""

    def parse(self, text: str, reader: IdentityReader) -> tuple[str, dict[str, Any]]:
        protocol, _, port_text = text.partition(":")
        try:
            port = parse_port(port_text, repr(self.prefix + text))
            return listening_key(protocol, port), {"protocol": protocol, "port": port}
        except ValueError as exc:
            raise ItemError(str(exc)) from None


LISTENING = Kind(
    name="listening",
    key=listening_key,
    items=ListeningItems("listen:", [("listen:tcp:PORT", "a listening port (listen:udp:PORT for UDP)")]),
    watch=ListeningWatch,
    fields=("new_listening",),
    metrics=("new_listening_ports",),
)
