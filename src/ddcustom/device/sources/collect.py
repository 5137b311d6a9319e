"""The collector: one Sample per call, from every source of SOURCES in order.

A source that fails does not fail the cycle: its part of the Sample is None, its name goes into
``Sample.errors``, and the error is logged once (again when it changes, and when the source recovers).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable

from ddcustom.device.sample import Sample
from ddcustom.device.sources.feedback_files import FeedbackSource
from ddcustom.device.sources.gpu.source import GpuSource
from ddcustom.device.sources.identity import IdentityReader
from ddcustom.device.sources.network import NetworkSource
from ddcustom.device.sources.process_details import ProcessDetails
from ddcustom.device.sources.processes import ProcessSource
from ddcustom.device.sources.source import THIS_MACHINE, FailureLog, Machine, Source, SourceSettings
from ddcustom.device.sources.system import CpuSource, MemorySource

log = logging.getLogger(__name__)

# The sources in the order they run: a source may read the fields of the sources before it (``needs``).
SOURCES: tuple[Callable[[Machine], Source], ...] = (
    NetworkSource,
    ProcessSource,
    CpuSource,
    MemorySource,
    GpuSource,
    FeedbackSource,
)


class Collector:
    """Runs the sources in order, each filling its field of the Sample; keeps them across settings.

    It also offers the readers of single processes that later stages share (``identities``: what a
    process runs, hashed once; ``details``: owner, sockets, start time), so that a file is hashed once
    for the baseline and the evidence together.
    """

    def __init__(
        self,
        settings: SourceSettings,
        machine: Machine = THIS_MACHINE,
        sources: tuple[Callable[[Machine], Source], ...] = SOURCES,
    ) -> None:
        self.sources = tuple(make(machine) for make in sources)
        check_order(self.sources)
        self.identities = IdentityReader(machine.proc_root, privileged=machine.privileged)
        self.details = ProcessDetails(machine.proc_root, machine.privileged)
        self._failures = FailureLog(log)
        self.apply_settings(settings)

    def apply_settings(self, settings: SourceSettings) -> None:
        """Use new settings from the next sample on; the sources keep what they measure across."""
        for source in self.sources:
            source.configure(settings)

    def sample(self) -> Sample:
        sample = Sample(time=time.time(), monotonic=time.monotonic())
        errors: list[str] = []
        for source in self.sources:
            try:
                value = source.read(sample)
            except Exception as exc:  # a failing source must not fail the cycle
                self._failures.failed(source.name, exc)
                errors.append(source.name)
                continue
            self._failures.succeeded(source.name)
            if value is not None:
                sample = replace(sample, **{source.fills: value})
        return replace(sample, errors=tuple(errors)) if errors else sample

    def close(self) -> None:
        for source in self.sources:
            try:
                source.close()
            except Exception as exc:  # the others still close
                log.warning("source %s could not be closed: %s: %s", source.name, type(exc).__name__, exc)


def check_order(sources: tuple[Source, ...]) -> None:
    """ValueError when a source needs a field that no source before it fills."""
    filled = {"time", "monotonic"}
    for source in sources:
        missing = [field for field in source.needs if field not in filled]
        if missing:
            raise ValueError(
                f"source {source.name} needs {', '.join(missing)}, which no source before it fills"
            )
        filled.add(source.fills)
