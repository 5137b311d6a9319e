"""What a declaration of a kind of baseline item holds (``Kind``), and the parts it is made of.

A kind says everything that is specific to it; the store (cycle.py, sync.py, store.py), the file's kind
column (file.py), the observer (observer.py) and the command line (``ddcustom baseline``) take the kinds
from the registry (``kinds/__init__.py``) and name none:

- ``name``: the file's kind column, and how ``show`` and ``key:KIND:KEY`` name it;
- ``key``: how the key of an observed item is made;
- ``merge``: how two writers' entries of one key merge (``MergeRule``);
- ``items``: how the command line names its items (``Items``: the ITEM form, its help, the parsing into
  key and details, what ``forget`` also removes, the details ``show`` prints);
- ``watch``: the part of the observer specific to it (``Watch``), and ``fields``, the fields of
  ``BaselineStats`` it fills;
- ``metrics``: the metrics (metrics.py) it produces, read from those fields.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from ddcustom.device.baseline.approvals import Approvals
from ddcustom.device.baseline.cycle import CycleBaseline
from ddcustom.device.baseline.deployment import DeploymentTrust
from ddcustom.device.baseline.file import RANK, Entry
from ddcustom.device.sample import ProcessInfo, Sample
from ddcustom.device.sources.identity import IdentityReader
from ddcustom.device.sources.process_details import ProcessDetails
from ddcustom.device.sources.procfs import STAT_BYTES, parse_stat


class ItemError(ValueError):
    """An ITEM the command line cannot use; the message says why."""


class MergeRule:
    """How the file's entry of a key (``kept``) takes in this process's entry of it (``ours``) when
    this process writes (sync.py). This rule, for every kind so far: the earliest first_seen, the latest
    last_seen, and the details of the higher origin (approved over deployment over learned; the file's on a
    tie). A kind whose entries carry a number (a level merged by maximum) subclasses it and merges its
    number in both methods."""

    def added(self, kept: Entry, ours: Entry) -> None:
        """``ours`` was added here since the last write, and the file has the key too."""
        kept.first_seen = min(kept.first_seen, ours.first_seen)
        kept.last_seen = max(kept.last_seen, ours.last_seen)
        if RANK[ours.origin] > RANK[kept.origin]:
            kept.origin = ours.origin
            kept.details_text = ours.details_text

    def seen(self, kept: Entry, ours: Entry) -> None:
        """``ours`` was read from the file and seen again here (or revised: ``CycleBaseline.revise``)."""
        kept.last_seen = max(kept.last_seen, ours.last_seen)


BY_ORIGIN = MergeRule()


@dataclass(frozen=True)
class Program:
    """A program as the baseline knows it: what a process of it runs (kinds/executables.py)."""

    key: str  # the executable kind's key of it: its identity, or the weak identity of an unreadable one
    path: str  # what runs, for people: an interpreter's script file, else the executable
    sha256: str = ""  # of that file ("" for a weak identity)


@dataclass
class Context:
    """What the watches share: the sources' readers, and the configuration the observer keeps current."""

    identities: IdentityReader = field(default_factory=IdentityReader)
    details: ProcessDetails = field(default_factory=ProcessDetails)
    approvals: Approvals = field(default_factory=Approvals)  # the fleet configuration's
    deployment: Optional[DeploymentTrust] = None  # executables a deployment placed: known after learning
    allowed_gpu_processes: frozenset[str] = frozenset()  # names the busiest new process may have unflagged
    # when this component started, in clock ticks after boot: processes running before may be vouched for
    started_ticks: int = field(default_factory=lambda: own_start_ticks())
    # the programs of this cycle's processes whose executable is known (pid -> program), which the
    # executable kind finds first and the kinds about what programs do read
    programs: dict[int, Program] = field(default_factory=dict)
    own_pid: int = field(default_factory=os.getpid)  # this component's process

    def is_component(self, info: ProcessInfo) -> bool:
        """Whether ``info`` is this component's process or its child (the privileged reader): they are
        left out of what programs do. The component loads code as its work needs it (the first lookup
        of a user's name loads the system's NSS modules, a Python module loads when first used), which
        after learning would be a new library; its executable is still learned and judged."""
        return self.own_pid in (info.pid, info.ppid)


def own_start_ticks() -> int:
    """This process's start time in clock ticks after boot (field 22 of /proc/self/stat)."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            return parse_stat(stat.read(STAT_BYTES).decode("utf-8", "replace"))[3]
    except (OSError, ValueError, IndexError):
        return 0  # nothing is older: nothing is vouched for


class Watch(Protocol):
    """The part of the observer specific to a kind; one per observer, it may keep caches."""

    def observe(self, sample: Sample, baseline: CycleBaseline, now: float) -> Mapping[str, Any]:
        """Look up (and while learning, learn) what ``sample`` holds of this kind in ``baseline``;
        returns the ``BaselineStats`` fields the kind fills (``Kind.fields``) by name."""
        ...


class Items:
    """How the command line names items of a kind (``ddcustom baseline approve|forget ITEM``)."""

    def __init__(
        self, prefix: str, help: Sequence[tuple[str, str]], shown_details: Sequence[str] = ()
    ) -> None:
        self.prefix = prefix  # "endpoint:"; "" for the forms without a prefix (one kind at most)
        # (form, description) rows of the ITEM help; a description's "\n" goes on to the next line
        self.help = tuple(help)
        self.shown_details = tuple(shown_details)  # details ``show`` prints next to the key

    def parse(self, text: str, reader: IdentityReader) -> tuple[str, dict[str, Any]]:
        """(key, details) of ``text``, the ITEM after the prefix. ItemError when it names nothing."""
        raise NotImplementedError

    def forget(self, text: str, reader: IdentityReader, entries: Mapping[str, Entry]) -> list[str]:
        """The keys ``forget`` removes for ``text`` (the ITEM after the prefix), given the kind's
        ``entries``: the key it names and the entries made of it."""
        key, _ = self.parse(text, reader)
        return [key, *self.made_of(key, entries)]

    def made_of(self, key: str, entries: Mapping[str, Entry]) -> list[str]:
        """The other keys among ``entries`` that ``forget`` of ``key`` also removes: none here."""
        return []


@dataclass(frozen=True)
class Kind:
    """One kind of baseline item (the module docstring says what each part is for)."""

    name: str
    key: Callable[..., str]
    items: Items
    watch: Callable[[Context], Watch]
    fields: tuple[str, ...]
    metrics: tuple[str, ...]
    merge: MergeRule = BY_ORIGIN
