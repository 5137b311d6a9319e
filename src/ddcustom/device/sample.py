"""The one typed, immutable snapshot that sources produce and report/detect consume.

A field set to ``None`` means "not measured this cycle" (source disabled or failed); the report and
the detection engine leave such metrics out instead of inventing a zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class ListeningPort:
    port: int
    interface: Optional[str]  # None when the socket listens on all interfaces / cannot be mapped
    inode: int = field(default=0, compare=False)  # of one socket listening so: finds its process (0: unknown)
    uid: int = field(default=-1, compare=False)  # that socket owner's user (-1: unknown)


@dataclass(frozen=True)
class Connection:
    remote_ip: str  # textual IPv4 or IPv6 address, no brackets
    remote_port: int
    local_port: int
    local_interface: Optional[str]
    inode: int = field(default=0, compare=False)  # the socket's: finds the process holding it (0: unknown)
    uid: int = field(default=-1, compare=False)  # the socket owner's user (-1: unknown)

    @property
    def remote_addr(self) -> str:
        """Device Defender form: ``1.2.3.4:443`` or ``[2001:db8::1]:443``."""
        if ":" in self.remote_ip:
            return f"[{self.remote_ip}]:{self.remote_port}"
        return f"{self.remote_ip}:{self.remote_port}"


@dataclass(frozen=True)
class NetCounters:
    """Interface counters summed over the counted interfaces.

    The total since boot at the source's first reading, then growing by each interface's own traffic:
    it never decreases when an interface goes away or restarts its counters.
    """

    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int

    def grown_since(self, before: NetCounters) -> NetCounters:
        """Each counter's growth since ``before``; a reset (interface re-created, reboot) counts from 0."""
        return NetCounters(
            bytes_in=_growth(before.bytes_in, self.bytes_in),
            bytes_out=_growth(before.bytes_out, self.bytes_out),
            packets_in=_growth(before.packets_in, self.packets_in),
            packets_out=_growth(before.packets_out, self.packets_out),
        )

    def __add__(self, other: NetCounters) -> NetCounters:
        return NetCounters(
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
            self.packets_in + other.packets_in,
            self.packets_out + other.packets_out,
        )


def _growth(before: int, now: int) -> int:
    return now - before if now >= before else now


@dataclass(frozen=True)
class NetworkStats:
    listening_tcp: tuple[ListeningPort, ...]
    listening_udp: tuple[ListeningPort, ...]
    established_tcp: tuple[Connection, ...]
    counters: NetCounters


@dataclass(frozen=True)
class MinerProcess:
    pid: int
    name: str
    reason: str  # "name" (known miner executable), "stratum" (pool URL on the command line), "flag"


@dataclass(frozen=True)
class ProcessInfo:
    """One process as the process source read it from /proc."""

    pid: int
    ppid: int
    comm: str
    argv0_name: str  # basename of argv[0]; "" for kernel threads
    cmdline: str  # arguments joined with spaces (possibly cut at CMDLINE_BYTES)
    cpu_ticks: int = 0  # user + system CPU time, in clock ticks
    start_ticks: int = 0  # start time after boot, in clock ticks: tells a reused pid apart


@dataclass(frozen=True)
class ProcessStats:
    child_processes: int  # descendants of all WatchedProcesses, recursively
    miners: tuple[MinerProcess, ...]
    pool_connections: tuple[Connection, ...]  # established connections to MiningPoolPorts
    # Top-level instances of the most-started WatchedProcesses name (a watched process with no watched
    # ancestor): a miner renamed like the application is a second one. None when nothing is watched.
    watched_instances: Optional[int] = None
    child_pids: tuple[int, ...] = ()  # the descendants counted in child_processes
    instance_pids: tuple[int, ...] = ()  # the top-level instances counted in watched_instances
    # what later stages look at (the GPU source, the baseline, the evidence); not compared, not shown
    table: Mapping[int, ProcessInfo] = field(default_factory=dict, compare=False, repr=False)
    watched_pids: frozenset[int] = field(
        default=frozenset(), compare=False, repr=False
    )  # apps and descendants
    cpu_percent: Mapping[int, float] = field(
        default_factory=dict, compare=False, repr=False
    )  # of one core, per pid


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    gpu_index: int
    used_memory_bytes: Optional[int]
    sm_percent: Optional[float]
    attribution: str  # "watched" (in a watched app's tree), "allowed" (AllowedGpuProcesses), "unknown"


@dataclass(frozen=True)
class GpuStats:
    utilization_percent: Optional[float]  # mean over the device's GPUs
    power_watts: Optional[float]  # sum over the device's GPUs
    sm_clock_mhz: Optional[float]
    memory_used_percent: Optional[float]
    processes: tuple[GpuProcess, ...] = ()
    # False when the compute processes could not be listed (a GPU's list failed, or the GPU cannot list
    # them, as Jetson): the process metrics are then left out, not 0
    processes_measured: bool = True
    busiest_utilization_percent: Optional[float] = None  # the highest over the device's GPUs


@dataclass(frozen=True)
class Feedback:
    """Values the device's application writes into the feedback files (None: missing or invalid)."""

    gpu_load_per_inference: Optional[float]
    avg_inference_time_ms: Optional[float]
    # GPU busy % beyond the share of time the application spent in inferences (the inference meter's)
    gpu_busy_outside_inference: Optional[float] = None


@dataclass(frozen=True)
class NewProcess:
    """A process whose executable the baseline does not know (or can never know: ``unknowable``)."""

    pid: int
    name: str  # comm
    path: str  # what runs: the script of an interpreter running a file, else the executable
    sha256: str  # of that file; "" when it cannot be read
    unknowable: str = ""  # why it can never be known (deleted, memfd, ...); "" for a new executable


@dataclass(frozen=True)
class LevelExcess:
    """A process above what its program used while learning (baseline/kinds/levels.py)."""

    pid: int  # the process (for the program's processes together: the busiest of them)
    program: str  # what it runs
    level: str  # "process": this process; "all": the program's processes together
    allowed: float  # what it may use: its learned level, the floor or an approval (% of one core or GPU)
    now: float  # what it used over the last window
    excess: float  # now - allowed


@dataclass(frozen=True)
class NewLibrary:
    """Code a process maps that its program never mapped while learning."""

    pid: int
    program: str  # what the process runs
    path: str  # the library; "" for executable memory no file backs
    sha256: str  # of the library, "" when it cannot be known
    preload: str = ""  # LD_PRELOAD and the like in its environment, and /etc/ld.so.preload, when set


@dataclass(frozen=True)
class NewNetworkUse:
    """A process of a program that never held this kind of socket while learning."""

    pid: int
    program: str
    use: str  # "outbound" (an established connection it opened) or "listening"


@dataclass(frozen=True)
class BaselineStats:
    """What the learned baseline of the device does not know. Nothing is new while it learns."""

    learning: bool
    new_processes: tuple[NewProcess, ...] = ()
    new_endpoints: tuple[Connection, ...] = ()  # connections the device opened to endpoints not known
    new_listening: tuple[str, ...] = ()  # "tcp:8080"
    new_gpu_processes: tuple[NewProcess, ...] = ()
    # the busiest new process that is neither watched nor allowed: (pid, % of one core); None: none
    busiest_new: Optional[tuple[int, float]] = None
    cpu_above_level: Optional[LevelExcess] = None  # the process furthest above its program's CPU level
    new_libraries: tuple[NewLibrary, ...] = ()
    new_anonymous_code: tuple[NewLibrary, ...] = ()  # executable memory no file backs (path "")
    new_network_use: tuple[NewNetworkUse, ...] = ()
    gpu_above_level: Optional[LevelExcess] = None  # the same for the GPU (GPU metrics on)


@dataclass(frozen=True)
class Sample:
    time: float  # wall clock, seconds since the epoch
    monotonic: float  # time.monotonic() when taken: use for intervals, never `time`
    network: Optional[NetworkStats] = None
    cpu_percent: Optional[float] = None
    memory_percent: Optional[float] = None
    feedback: Optional[Feedback] = None
    processes: Optional[ProcessStats] = None
    gpu: Optional[GpuStats] = None
    baseline: Optional[BaselineStats] = None
    errors: tuple[str, ...] = field(default=())  # sources that failed this cycle, for the logs/state
