"""The shape every source has, and what of the settings the sources read.

A source reads one kind of measurement from the machine and fills one field of the Sample. It declares
the field it fills and the fields of earlier sources it reads (``needs``); the collector runs the
sources in the order of ``collect.SOURCES`` and refuses an order in which a source would read a field
no earlier source fills. ``read`` returns None for "not measured this cycle" (turned off, or nothing to
measure); an exception means the source failed, and the collector leaves its field out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Protocol

from ddcustom.device.sample import Sample
from ddcustom.device.sources.privileged.client import PrivilegedReader


@dataclass(frozen=True)
class Machine:
    """Where the sources read the machine. Tests give fixture trees and a fake NVML module."""

    proc_root: str = "/proc"
    sysfs_root: str = "/sys"
    nvml: Optional[Any] = None  # the pynvml module to use; None: import it
    # asked what this process may not read of other users' processes (ddcustom.device.run.privileges)
    privileged: Optional[PrivilegedReader] = None


THIS_MACHINE = Machine()


class SourceSettings(Protocol):
    """The configuration the sources read (``ddcustom.device.config.Settings`` has all of it)."""

    @property
    def include_loopback(self) -> bool: ...
    @property
    def watched_processes(self) -> tuple[str, ...]: ...
    @property
    def miner_process_names(self) -> tuple[str, ...]: ...
    @property
    def mining_pool_ports(self) -> frozenset[int]: ...
    @property
    def enable_gpu_metrics(self) -> bool: ...
    @property
    def allowed_gpu_processes(self) -> tuple[str, ...]: ...
    @property
    def gpu_load_feedback_file(self) -> str: ...
    @property
    def inference_time_feedback_file(self) -> str: ...
    @property
    def gpu_busy_outside_feedback_file(self) -> str: ...
    @property
    def meter_stale_seconds(self) -> int: ...


class Source(Protocol):
    name: ClassVar[str]  # in the logs and in Sample.errors when it fails
    fills: ClassVar[str]  # the Sample field it fills
    needs: ClassVar[tuple[str, ...]]  # the Sample fields of earlier sources it reads
    reads: ClassVar[str]  # what it reads of the machine, in words

    def configure(self, settings: SourceSettings) -> None:
        """Take new settings; called before the first read and on every configuration change."""

    def read(self, sample: Sample) -> Any:
        """This cycle's value for ``fills``, given what earlier sources put in ``sample``."""

    def close(self) -> None:
        """Release what the source holds (open files, NVML)."""


class FailureLog:
    """Logs each stage's failure once (again when its error changes) and its recovery, so that a source
    that fails every cycle does not fill the log."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._last_error: dict[str, str] = {}  # stage -> last error message logged

    def failed(self, name: str, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if self._last_error.get(name) != message:
            self._log.warning("source %s failed: %s (left out until it recovers)", name, message)
            self._last_error[name] = message

    def succeeded(self, name: str) -> None:
        if self._last_error.pop(name, None) is not None:
            self._log.info("source %s recovered", name)
