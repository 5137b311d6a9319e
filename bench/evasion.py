"""Evasion benchmark: does the component catch a CPU miner that hides, and does it stay quiet otherwise?

The device
  A Greengrass core device in a temporary folder, laid out as the nucleus lays it out (packages/,
  work/): the stand-in nucleus (src/ddcustom/devnucleus) serves this repository's recipe.yaml with a
  deployment's merge configuration; the component runs as the nucleus runs its recipe's Startup step (the
  step's script with the configuration substituted, ``sh -c`` in work/com.awsiotblog.DeviceDefenderCustom,
  as root since the step RequiresPrivilege): ``{kernel:rootPath}/ddcustom/venv/bin/python -m ddcustom run
  --privileged-reader <PrivilegedReader>``. That venv is made as the recipe's Install leaves it (root's,
  mode 0755), with a ``.pth`` putting this repository's src/ and the running environment's site-packages
  (the dependencies) on its path instead of an installed wheel. The watched application is a Greengrass
  component too, com.example.InferApp (bench/evasion_app.py, named ``infer-app``, 10 % of one core),
  started by its own recipe's Run step from packages/artifacts/com.example.InferApp/1.0.0/. Alerts are
  what the component publishes to IoT Core through the nucleus. The configuration: SecurityProfile
  (--profile, default crypto-mining), DetectIntervalSeconds 5, EnableDeviceDefenderReport false,
  WatchedProcesses [infer-app], BaselineLearningSeconds (the learning period), IncludeLoopback true when
  the pool is on loopback, and PrivilegedReader false in the fallback mode.

  The device's own programs, running as root from before learning to the end: a daemon named ``sshd``
  (a copy of sleep(1) started with argv[0] /usr/sbin/sshd), the root daemon a miner may name itself
  after; and an egress client (bench/evasion_pool.py --egress) that always holds a connection through
  the HTTP CONNECT proxy, 30 s each, so that the proxy's address is an endpoint the device is known to
  use (its usual egress proxy: what a miner reaching its pool through it hides behind).

Modes (--mode): how the component runs
  deployed (default): as the recipe deploys it. Its work folder belongs to a component user of its own
  (a free uid without passwd entry, as ggc_user is to Greengrass: the nucleus makes the work folder the
  runWith user's), so ``ddcustom run``, started as root, forks the privileged reader and drops to that
  user. fallback: the same with PrivilegedReader false (no reader: other users' processes are known by
  what anyone may read). privileged: the work folder root's, so the component stays root (every figure
  of this benchmark before the modes). The benchmark checks what the component logged at its start
  ("other users' processes: ..."), its uid, and whether it has a child running as root (the reader), and
  fails the run (status 1) when they are not those of the mode asked for.

  What the component's user must reach, and does: the temporary folder and the device's root (0755),
  its own work folder (its state folder is work/.../state, which it makes there), the venv (root's,
  0755), this repository's src/ and the site-packages it runs from (world-readable where the benchmark
  runs; checked at the start by loading the component as that user, which fails the run with the reason
  otherwise), and the nucleus's IPC socket (opened to every user, 0666 in a 0711 folder, as Greengrass
  leaves its ipc.socket; the SVCUID token identifies the component). Nothing else needs to change: the
  component reads its configuration and publishes through that socket, reads /proc and the kernel's
  socket tables (sock_diag) as any user may, and asks the privileged reader for what only root may read
  of other users' processes; GPU metrics are off, and it writes nowhere but its state folder. The
  interpreter of that venv must be one both users may run with its standard library (after dropping its
  privileges the component still imports modules lazily): the running one when they may, else the
  system's python3 of the same version (the dependencies are compiled for it); none is a failure.

Users and attackers
  The watched application runs as an application user of its own (another free uid), as a nucleus runs
  a component whose Run step does not RequiresPrivilege, in a work folder of that user's. Every attack
  has an attacker: root, or the application's user (the miner started as that uid, its files that
  user's). The choice follows who would plausibly run it, so that both are covered where it matters:
  - the application's user: what a compromised application can do: its child (child-of-app, necessarily),
    its namesake (app-namesake), a downloaded `xmrig` (xmrig-stratum), `python3` (python3-nice), an
    interpreter running a script dropped in world-writable /dev/shm (shm-interpreter), code it is made
    to load (app-library);
  - root: names of the kernel's threads and of root daemons, which only root's processes plausibly bear
    (kworker-443, kworker-proxy, on-off as `kswapd0`, sshd-443, sshd-proxy), pool-1-in-7, and the root
    daemon started again with a preloaded library (preload-daemon).
  Where the attacker changes what the component can know, the scenario runs for both: the daemon's
  namesake reaching its pool through the usual proxy (sshd-proxy as root, sshd-proxy-app as the
  application's user): without the privileged reader the component knows other users' processes only
  by user, name and argv[0], which match the daemon's for root's miner and not for the application
  user's. To the component (its own user), root's and the application user's processes are alike other
  users' otherwise: both need the reader for their executable's path and SHA-256.

Evidence
  For every caught attack, the in-alarm alerts of the first detection cycle that raised any (those
  arriving within half an interval of the first: their order within a cycle is the order of the rules)
  are checked for the miner: "path + SHA-256" when one of them describes a process with the path of the
  file the benchmark started (the copied binary; for the interpreted miner, its script) and that file's
  SHA-256; "path, no SHA-256"; "no path" when it describes the miner's process (by pid) without its path
  (``"unknowable": "no access"``); "process not named" when none describes it (an alert naming only an
  address). The best of them is shown, with the behaviors giving it; the JSON also has, per behavior,
  the best any of its alerts reached, and the first cycle's alerts in full. Target: every attack caught
  with the miner's path and SHA-256 in the first alert's evidence.

  Processes: as root, the benchmark runs in PID and network namespaces of its own
  (bench/evasion_pidns.py; not with --share-pids), so the component sees the benchmark's processes and
  connections only, not the host's other ones (other tests' miners would raise alarms that are no
  scenario's doing, and a host's pip reaching its package index a new endpoint). CPU use (cpu_usage, from
  /proc/stat) is the host's either way: on a busy host, cpu-usage alarms are the host's load.

  Learning: the device runs for --learning-seconds plus one interval its ordinary work: the application,
  and a short run of each benign activity below but the update (builds, pip installs, a burst, a fork
  storm; the benign runs later do them again in new folders, with new processes). Then each
  attack runs --attack-seconds (longer where a scenario needs it: see the list below), and after it
  stops the benchmark waits up to --clear-seconds for its alarms to clear (one interval at least: an
  alarm raised by the last sample counts). Then the benign runs, --benign-seconds each, the same way.

Without a baseline
  When the component does not know BaselineLearningSeconds (``ddcustom check`` answers "unknown
  configuration key"), or with --without-baseline, the key is left out and the learning period shrinks
  to two detection intervals: the table then shows what the profile catches without a baseline.

The "remote" pool
  As root: a network namespace ddc-evasion-<pid> joined by a veth pair in a /30 picked unused in
  10.200.0.0/16 (checked against ``ip -4 addr`` and the routes); only that /30 is routed. The pool
  (ports 3333 and 443) and the HTTP CONNECT proxy (port 80) run inside it (bench/evasion_pool.py).
  Namespace and veth are deleted at the end, also on Ctrl-C, SIGTERM or an error. Otherwise (``ip
  netns`` failing, or --loopback) they listen on 127.0.0.1 (ports 3333, 443 and 80) and IncludeLoopback
  is true; the output says which and why. Every address
  handed to a miner, the proxy or the pool is checked to be inside the /30 or loopback, by the benchmark
  and again by the miners and the proxy, before anything connects; nothing is sent anywhere else (pip
  runs with --no-index). Before the component starts, the benchmark checks once that the pool answers.

Miners
  bench/miner.c, compiled with cc at start into the temporary folder and copied under each scenario's
  name: it burns CPU at a set duty cycle and keeps a stratum-like connection (mining.subscribe, then a
  mining.submit JSON line every 3 s). The /dev/shm scenario runs bench/miner.py, copied there, with the
  Python interpreter the application runs with. Seconds to the first in-alarm count from the miner's
  start to the alert's arrival; seconds to clear from its stop (0 or less: cleared before it stopped).
  Target: caught within 2 detection intervals, that is by the first or second detection cycle after the
  miner started ("by cycle"). The component samples on a fixed grid; the grid's phase is inferred from
  when all its alerts arrived (see cycle_phase), so the count leaves out the alert's delivery after its
  cycle: a rule that needs two datapoints alarms at the second cycle, up to two intervals plus that
  delay after the start.

  Known programs doing unknown things: bench/miner_lib.c, compiled at start as a shared object, mines
  on a thread of whatever process loads it (no new process, no new executable, no connection): the
  watched application loads it at run time (app-library, 100 % of a core, through the application's
  "load-library" command: ctypes, as a compromised application would) or the device's root daemon is
  started again with it in LD_PRELOAD (preload-daemon, 50 %). Each scenario gets a copy with bytes of
  its own (its own SHA-256). The evidence is checked for the library's path and SHA-256 with a process
  that maps it (library_evidence_class). Targets: within 2 intervals by the new library, and within
  60 s by the CPU above the program's learned level (known-process-cpu, a 30 s window: shown in the
  targets lines).

Benign runs
  In-alarms are counted from the run's start to one interval after its end. Target: none. Three are
  known programs doing what they did while learning, which the learning period therefore runs together
  for its first half (KNOWN_PROGRAMS_AT_WORK): the application bursting (app-bursty), a batch job whose
  CPU steps through a fixed pattern (batch-varies, bench/evasion_batch.py) and the application loading
  a plug-in it loaded while learning (app-plugin: miner_lib.c's code with bytes of its own, which does
  nothing without DDC_LIB_DUTY).

Editing the project during a run
  Processes of the run execute files of this repository: the pool and the proxy run
  bench/evasion_pool.py, the benchmark itself bench/evasion.py. A script that changes under a running
  interpreter is a new executable to the baseline (a changed script is another program), so an edit
  during a run raises new-executables alarms that are the edit's, not a scenario's. The benchmark
  hashes the files under bench/ and src/ at its start and end, and names those that changed.

Output
  A Markdown table on stdout, and JSON (--out, default bench/results/evasion.json). Exit status 0 when
  everything ran (targets met or not: the table says), 1 when the component, the pool or a scenario
  failed to run, 2 for bad options, 130 when interrupted. Every process started is in its own process
  group, killed at the end, and ends by itself a little after its run in any case.

  --compare A.json B.json ... runs nothing: it prints one table of the attacks of those results, a column
  per result (headed by its mode), and one of the benign runs' in-alarms. The benchmark needs root (the
  component is started as root, the application and the attackers as users of their own): otherwise it
  exits with status 2.

    .venv/bin/python bench/evasion.py --quick
    .venv/bin/python bench/evasion.py --mode privileged --scenarios attacks
    .venv/bin/python bench/evasion.py --mode fallback --scenarios sshd-443,sshd-proxy,kworker-443
    .venv/bin/python bench/evasion.py --quick --without-baseline --scenarios attacks
    .venv/bin/python bench/evasion.py --compare privileged.json deployed.json fallback.json
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import hashlib
import ipaddress
import json
import math
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

import yaml

import evasion_pidns
from ddcustom.device.run import privileges
from ddcustom.tooling.devnucleus import DevNucleus, Published
from ddcustom.tooling.devnucleus.lifecycle import lifecycle_steps
from evasion_pool import LOOPBACK, Namespace, NamespaceError, require_allowed
from gpu_scenarios import child_env

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
DEFAULT_OUT = BENCH / "results" / "evasion.json"
INTERVAL = 5  # DetectIntervalSeconds
THING = "evasion-bench"
ALERT_TOPIC = f"ddcustom/{THING}/alerts"  # the recipe's AlertTopic for this thing
APP_NAME = "infer-app"  # the watched application's process name
APP_COMPONENT = "com.example.InferApp"
BASELINE_KEY = "BaselineLearningSeconds"
LIFETIME_MARGIN = 120.0  # seconds every started process outlives its run by at most, even if we die
STOP_GRACE = 5.0


class BenchError(RuntimeError):
    """The benchmark cannot go on: the component, the pool or a process it needs failed."""


# ---- how the component runs, and as whom the other processes run -------------------------------------

DEPLOYED, FALLBACK, PRIVILEGED = "deployed", "fallback", "privileged"
MODES = (DEPLOYED, FALLBACK, PRIVILEGED)
# What the component logs at its start ("other users' processes: ...") in each mode.
LOGGED_MODE = {
    DEPLOYED: privileges.PRIVILEGED_READER,
    FALLBACK: privileges.UNPRIVILEGED,
    PRIVILEGED: privileges.ROOT,
}
MODE_LOG_PREFIX = "other users' processes: "
ROOT, APP = "root", "app"  # attackers: root, or the watched application's user
FIRST_FREE_UID = 61000  # where the search for the component's and the application's uids starts
# The device's own root daemon, as a miner would name itself after it (argv[0] and process name).
DAEMON_ARGV0 = "/usr/sbin/sshd"
DAEMON_NAME = "sshd"
EGRESS_HOLD = 30.0  # seconds the device's egress client keeps each connection through the proxy open
# Evidence of a caught attack, best first (see evidence_class).
EVIDENCE_FULL = "path + SHA-256"
EVIDENCE_PATH_ONLY = "path, no SHA-256"
EVIDENCE_NO_PATH = "no path"
EVIDENCE_NOT_NAMED = "process not named"
EVIDENCE_ORDER = (EVIDENCE_FULL, EVIDENCE_PATH_ONLY, EVIDENCE_NO_PATH, EVIDENCE_NOT_NAMED)


# ---- scenarios -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    name: str
    description: str
    process_name: str  # prctl name and argv[0]; its part before any "/" names the copied binary
    options: tuple[str, ...]  # miner options besides the pool's, --allow, --seconds and --name
    # How the pool is given: "stratum" (-o stratum+tcp://...), "cmdline" (-o host:port), "config" (-c file).
    pool: str = "config"
    port: str = "tls"  # "pool" (3333) or "tls" (443)
    via_proxy: bool = False
    # "benchmark", "app" (a child of the watched application), "interpreter", "app-library", "preload"
    launcher: str = "benchmark"
    min_seconds: float = 0.0
    attacker: str = ROOT  # who runs the miner: ROOT, or APP (the watched application's user)
    argv0: str = ""  # argv[0] when not process_name (a daemon's full path)
    # A miner that comes as a shared object (bench/miner_lib.c, mining on a thread at this % of a core):
    # launcher "app-library" (the watched application loads it) or "preload" (LD_PRELOAD of the daemon).
    library_duty: int = 0

    @property
    def shown_argv0(self) -> str:
        return self.argv0 or self.process_name

    @property
    def library(self) -> bool:
        return self.launcher in ("app-library", "preload")


@dataclass(frozen=True)
class Benign:
    name: str
    description: str


ATTACKS = (
    Attack("xmrig-stratum", "`xmrig` with a stratum URL on the command line, pool port 3333, 2 cores busy",
           "xmrig", ("-t", "2", "--duty", "100"), pool="stratum", port="pool", attacker=APP),
    Attack("child-of-app", "miner started as a child of the watched application (45 % of a core, port 443)",
           "infer-worker", ("--duty", "45"), launcher="app", attacker=APP),
    Attack("app-namesake", "miner started elsewhere under the watched application's name (45 %, port 443)",
           APP_NAME, ("--duty", "45"), attacker=APP),
    Attack("pool-1-in-7", "pool port 3333 connected only 1 s out of every 7 s (45 %, at least 21 s)",
           "sync-agent", ("--duty", "45", "--connect", "1", "--every", "7"), pool="cmdline", port="pool",
           min_seconds=21),
    Attack("kworker-443", "binary renamed `kworker/0:2` (prctl + argv[0]), 45 % of one core, pool on port "
           "443, pool address in a config file", "kworker/0:2", ("--duty", "45")),
    Attack("kworker-proxy", "the same, reaching its pool through the device's usual HTTP CONNECT proxy "
           "(port 80)", "kworker/0:2", ("--duty", "45"), via_proxy=True),
    Attack("python3-nice", "named `python3`, nice 19, 25 % of one core, port 443", "python3",
           ("--duty", "25", "--nice", "19"), attacker=APP),
    Attack("on-off", "`kswapd0` mining 20 s on / 20 s off (100 % of a core and connected while on, port "
           "443, at least 45 s)", "kswapd0", ("--duty", "100", "--on", "20", "--off", "20"), min_seconds=45),
    Attack("shm-interpreter", "miner run by an interpreter from /dev/shm (`python3 /dev/shm/.../x.py`), "
           "45 %, port 443", "python3", ("--duty", "45"), pool="cmdline", launcher="interpreter",
           attacker=APP),
    Attack("sshd-443", f"named like the device's root daemon (`{DAEMON_NAME}`, argv[0] `{DAEMON_ARGV0}`), "
           "45 %, pool on port 443, pool address in a config file", DAEMON_NAME, ("--duty", "45"),
           argv0=DAEMON_ARGV0),
    Attack("sshd-proxy", "the same, reaching its pool through the device's usual HTTP CONNECT proxy "
           "(port 80)", DAEMON_NAME, ("--duty", "45"), via_proxy=True, argv0=DAEMON_ARGV0),
    Attack("sshd-proxy-app", "the same as the application's user (the daemon's name and argv[0], another "
           "user)", DAEMON_NAME, ("--duty", "45"), via_proxy=True, argv0=DAEMON_ARGV0, attacker=APP),
    Attack("app-library", "the watched application made to load a shared object at run time (ctypes: "
           "dlopen) whose thread mines at 100 % of a core: no new process, no new executable, no "
           "connection (at least 50 s)", APP_NAME, (), launcher="app-library", attacker=APP,
           library_duty=100, min_seconds=50),
    Attack("preload-daemon", f"the device's root daemon (`{DAEMON_NAME}`, a known program) started again "
           "with LD_PRELOAD of a shared object mining at 50 % of a core on a thread of the daemon; no "
           "connection (at least 50 s)", DAEMON_NAME, (), launcher="preload", argv0=DAEMON_ARGV0,
           library_duty=50, min_seconds=50),
)  # fmt: skip

BENIGN = (
    Benign("build", "CPU-heavy build: cc -O2 of a generated C file, one job per CPU, over and over"),
    Benign("pip-install", "pip install of this project's wheel (pip wheel --no-deps, built at the start of "
           "the run) into a new venv, over and over; --no-index --find-links"),
    Benign("app-bursty", "the watched application bursting to 100 % of a core for 2-6 s, 5-15 s apart, "
           "as it did while learning"),
    Benign("fork-storm", "an unrelated shell starting and reaping true(1), 50 at a time, non-stop"),
    Benign("batch-varies", "a batch job of the device (bench/evasion_batch.py, a known program) whose CPU "
           "steps through 20, 50, 30 and 60 % of a core, 10 s each, as it did while learning"),
    Benign("app-plugin", "the watched application loading a plug-in (a shared object, ctypes) it loaded "
           "while learning, and unloading it at the end"),
    Benign("app-update", f"deployment of {APP_COMPONENT} 1.1.0: new artifact folder and script; the nucleus "
           "stops 1.0.0 and runs 1.1.0's Run step (last: later runs would see 1.1.0)"),
)  # fmt: skip


# The default profile's behavior on a known program's CPU above its learned level.
CPU_LEVEL_BEHAVIOR = "known-process-cpu"
# The benign activities of known programs, which the learning period runs together (Bench.rehearse).
KNOWN_PROGRAMS_AT_WORK = ("app-bursty", "batch-varies", "app-plugin")


@dataclass(frozen=True)
class Timing:
    learning: float
    attack: float
    clear: float
    benign: float


@dataclass(frozen=True)
class Network:
    mode: str  # "namespace" or "loopback"
    note: str  # why loopback, when it is
    allowed: ipaddress.IPv4Network  # the private /30, or 127.0.0.0/8
    pool_host: str
    pool_port: int
    tls_port: int
    proxy_port: int


# ---- processes and alerts --------------------------------------------------------------------------


@dataclass
class Started:
    """A started process and, when its stdout is watched, its lines with the monotonic time seen."""

    process: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    reader: Optional[threading.Thread] = None

    def first_line(self, text: str, after: float = 0.0, timeout: float = 0.0) -> Optional[float]:
        """When ``text`` was first printed (at or after ``after``), waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for at, line in list(self.lines):
                if at >= after and line == text:
                    return at
            ended = self.reader is None or not self.reader.is_alive()
            if ended or time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def line_with(self, text: str, timeout: float = 0.0) -> Optional[str]:
        """The first line holding ``text`` (anywhere), waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for _, line in list(self.lines):
                if text in line:
                    return line
            ended = self.reader is None or not self.reader.is_alive()
            if ended or time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


class Processes:
    """Every process the benchmark starts, each in its own session (so its own process group); stop()
    ends the whole group: SIGTERM, then SIGKILL after STOP_GRACE seconds."""

    def __init__(self, log: IO[str]) -> None:
        self.log = log
        self.started: list[Started] = []
        self._log_lock = threading.Lock()

    def start(
        self,
        argv: list[str],
        *,
        executable: Optional[str] = None,
        cwd: Optional[Path] = None,
        env: Optional[dict[str, str]] = None,
        stdin: Optional[int] = None,
        watch: bool = False,
        user: Optional[int] = None,
        watch_stderr: bool = False,
    ) -> Started:
        """Start ``argv``; ``user``: as that uid (its own group, no other), as a nucleus runs a
        component's step; ``watch_stderr``: stderr watched with stdout (``watch``)."""
        self.write_log(f"starting {argv}" + ("" if user is None else f" as uid {user}") + "\n")
        as_user: dict[str, Any] = {} if user is None else {"user": user, "group": user, "extra_groups": []}
        process = subprocess.Popen(
            argv,
            executable=executable,
            cwd=cwd,
            env=env,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if watch else self.log,
            stderr=subprocess.STDOUT if watch and watch_stderr else self.log,
            text=True,
            start_new_session=True,
            **as_user,
        )
        started = Started(process)
        if watch:
            started.reader = threading.Thread(target=self._read, args=(started, argv[0]), daemon=True)
            started.reader.start()
        self.started.append(started)
        return started

    def _read(self, started: Started, name: str) -> None:
        assert started.process.stdout is not None
        for line in started.process.stdout:
            started.lines.append((time.monotonic(), line.strip()))
            self.write_log(f"[{name} {started.process.pid}] {line}")

    def write_log(self, text: str) -> None:
        with self._log_lock:
            self.log.write(text)
            self.log.flush()

    def stop(self, started: Started) -> None:
        process = started.process
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            try:
                process.wait(STOP_GRACE)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for started in reversed(self.started):
            self.stop(started)


class Alarms:
    """The component's alerts on its IoT Core alert topic: (monotonic time, behavior, event type), and
    what the in-alarm ones point at (their evidence: processes and connections)."""

    def __init__(self) -> None:
        self._events: list[tuple[float, str, str]] = []
        self._evidence: list[tuple[float, str, Any]] = []  # every in-alarm alert's (None: none given)
        self._lock = threading.Lock()

    def record(self, published: Published) -> None:
        if published.topic != ALERT_TOPIC:
            return
        try:
            alert = json.loads(published.payload)
            event = (time.monotonic(), str(alert["behavior"]["name"]), str(alert["violationEventType"]))
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self._events.append(event)
            if event[2] == "in-alarm":
                self._evidence.append((event[0], event[1], alert.get("evidence")))

    def evidence(self, start: float, end: float) -> list[tuple[str, Any]]:
        """(behavior, evidence) of the in-alarm events between ``start`` and ``end`` that carry evidence."""
        with self._lock:
            return [(b, e) for t, b, e in self._evidence if start <= t <= end and e is not None]

    def in_alarm_alerts(self, start: float, end: float) -> list[tuple[float, str, Any]]:
        """(time, behavior, evidence or None) of every in-alarm alert between ``start`` and ``end``."""
        with self._lock:
            return [(t, b, e) for t, b, e in self._evidence if start <= t <= end]

    def raised(self, start: float, end: float) -> list[tuple[float, str]]:
        """In-alarm events between ``start`` and ``end``: (time, behavior), in order."""
        with self._lock:
            return [(t, b) for t, b, kind in self._events if start <= t <= end and kind == "in-alarm"]

    def active(self) -> dict[str, float]:
        """Behaviors in alarm now, with the time their alarm was raised."""
        state: dict[str, float] = {}
        with self._lock:
            for t, behavior, kind in self._events:
                if kind == "in-alarm":
                    state[behavior] = t
                else:
                    state.pop(behavior, None)
        return state

    def cycle_phase(self, interval: float) -> Optional[float]:
        """Where the component's detection cycles fall, as monotonic time modulo ``interval``, inferred
        from when its alerts arrived; None before any. See cycle_phase()."""
        with self._lock:
            return cycle_phase([t for t, _, _ in self._events], interval)

    def last_clear(self, behavior: str) -> Optional[float]:
        with self._lock:
            times = [t for t, b, kind in self._events if b == behavior and kind != "in-alarm"]
        return times[-1] if times else None

    def wait_quiet(self, behaviors: Optional[set[str]], limit: float) -> set[str]:
        """Wait up to ``limit`` s until none of ``behaviors`` (None: any) is in alarm; those still are."""
        deadline = time.monotonic() + limit
        while True:
            still = {b for b in self.active() if behaviors is None or b in behaviors}
            if not still or time.monotonic() >= deadline:
                return still
            time.sleep(0.2)


def cycle_phase(arrivals: list[float], interval: float, window: float = 0.5) -> Optional[float]:
    """The phase (time modulo ``interval``) of the detection cycles that sent alerts arriving at
    ``arrivals`` (monotonic seconds), None for no arrival.

    The component samples on a fixed grid (agent._next_tick), and each alert arrives a little after its
    cycle's tick (collection, evaluation, delivery). Taken modulo the interval, arrivals cluster just
    after the grid's phase: the phase is the earliest arrival of the densest ``window``. Estimated that
    way it is at most the smallest delay late, so a cycle is never counted before it happened.
    """
    if not arrivals:
        return None
    residues = sorted(t % interval for t in arrivals)
    best, best_count = residues[0], 0
    for candidate in residues:
        count = sum(1 for r in residues if (r - candidate) % interval <= window)
        if count > best_count:
            best, best_count = candidate, count
    return best


def cycles_between(phase: float, interval: float, start: float, end: float) -> int:
    """How many detection cycles (ticks at ``phase`` + k * ``interval``) fall in (start, end]."""
    return math.floor((end - phase) / interval) - math.floor((start - phase) / interval)


# ---- what the alerts say about the miner -------------------------------------------------------------


def evidence_class(evidence: Any, path: str, sha256: str, pids: set[int], script: bool = False) -> str:
    """How an alert's evidence names the miner started from the file ``path`` (SHA-256 ``sha256``) as
    the processes ``pids``: EVIDENCE_FULL when a process it describes shows that path and that SHA-256
    (``script``: an interpreter's script and its SHA-256, for the interpreted miner), EVIDENCE_PATH_ONLY
    when the path without the SHA-256, EVIDENCE_NO_PATH when it describes the miner's process (by pid)
    without its path, EVIDENCE_NOT_NAMED when it describes no process of the miner (or has no evidence:
    an alert that names only addresses, or nothing)."""
    best = EVIDENCE_NOT_NAMED
    processes = evidence.get("processes") if isinstance(evidence, dict) else None
    for described in processes if isinstance(processes, list) else []:
        if not isinstance(described, dict):
            continue
        shown_path = described.get("script" if script else "exe") or ""
        shown_sha256 = described.get("script_sha256" if script else "sha256") or ""
        if shown_path == path and shown_sha256 == sha256:
            return EVIDENCE_FULL
        if shown_path == path:
            found = EVIDENCE_PATH_ONLY
        elif described.get("pid") in pids:
            found = EVIDENCE_NO_PATH
        else:
            continue
        best = min(best, found, key=EVIDENCE_ORDER.index)
    return best


def library_evidence_class(evidence: Any, path: str, sha256: str, pids: set[int]) -> str:
    """How an alert's evidence names a miner that came as the shared object ``path`` (SHA-256 ``sha256``)
    mapped by the processes ``pids``: EVIDENCE_FULL when it names the library by path and SHA-256 (the new
    code a process maps: its ``items``) and describes a process that maps it, EVIDENCE_PATH_ONLY when it
    names the library without its SHA-256, EVIDENCE_NO_PATH when it describes such a process (by pid: its
    program, as a CPU level alert does) without the library, EVIDENCE_NOT_NAMED otherwise."""
    if not isinstance(evidence, dict):
        return EVIDENCE_NOT_NAMED
    processes = evidence.get("processes")
    processes = processes if isinstance(processes, list) else []
    described = any(isinstance(p, dict) and p.get("pid") in pids for p in processes)
    items = [i for i in evidence.get("items", []) if isinstance(i, str)]
    if described and any(f"{path} (sha256 {sha256})" in i for i in items):
        return EVIDENCE_FULL
    if described and any(path in i for i in items):
        return EVIDENCE_PATH_ONLY
    return EVIDENCE_NO_PATH if described else EVIDENCE_NOT_NAMED


def first_alert_evidence(
    alerts: list[tuple[float, str, Any]], classify: Any, same_cycle: float = INTERVAL / 2
) -> dict[str, Any]:
    """The evidence of the first in-alarm alert(s) of a run: those arriving within ``same_cycle`` s of the
    first, that is raised by the same detection cycle (their order within a cycle is the component's
    order of rules, not a matter of detection), as the best class (``classify``: evidence -> class) among
    them and the behaviors giving it; and the best class each behavior reached during the run."""
    if not alerts:
        return {"evidence": None, "evidence_by": [], "evidence_by_behavior": {}, "first_evidence": []}
    first_at = min(t for t, _, _ in alerts)
    first = [(b, classify(e), e) for t, b, e in alerts if t - first_at <= same_cycle]
    best = min((c for _, c, _ in first), key=EVIDENCE_ORDER.index)
    by_behavior: dict[str, str] = {}
    for _, behavior, evidence in alerts:
        found = classify(evidence)
        by_behavior[behavior] = min(by_behavior.get(behavior, found), found, key=EVIDENCE_ORDER.index)
    return {
        "evidence": best,
        "evidence_by": sorted({b for b, c, _ in first if c == best}),
        "evidence_by_behavior": dict(sorted(by_behavior.items())),
        "first_evidence": [{"behavior": b, "class": c, "evidence": e} for b, c, e in first],
    }


def mode_problem(
    asked: str, logged_mode: Optional[str], uid: Optional[int], component_uid: int, root_children: list[int]
) -> Optional[str]:
    """Why the component did not run in the mode ``asked`` (None: it did): what it logged at its start
    (``logged_mode``, a key of privileges.MODES, None when it logged none we know), the uid it runs as,
    and its children running as root (the privileged reader)."""
    problems = []
    wanted = LOGGED_MODE[asked]
    if logged_mode != wanted:
        problems.append(
            f'it logged "{MODE_LOG_PREFIX}{privileges.MODES.get(logged_mode or "", "(nothing known)")}", '
            f'not "{MODE_LOG_PREFIX}{privileges.MODES[wanted]}"'
        )
    wanted_uid = 0 if asked == PRIVILEGED else component_uid
    if uid != wanted_uid:
        problems.append(f"it runs as uid {uid}, not {wanted_uid}")
    if asked == DEPLOYED and not root_children:
        problems.append("it has no privileged reader (no child running as root)")
    if asked == FALLBACK and root_children:
        problems.append(f"it has children running as root: {root_children}")
    if not problems:
        return None
    return f"the component did not run in the {asked} mode: " + "; ".join(problems)


def process_uid(pid: int) -> Optional[int]:
    """The real uid of process ``pid``; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for child in all_pids():
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(child)
    return found


def pids_running(path: str, script: bool) -> set[int]:
    """The processes running the executable ``path`` (``script``: an interpreter running the script
    ``path``), as root sees them."""
    found = set()
    for pid in all_pids():
        try:
            if script:
                running = path in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split(
                    "\0"
                )
            else:
                running = os.readlink(f"/proc/{pid}/exe") == path
        except OSError:
            continue
        if running:
            found.add(pid)
    return found


def pids_mapping(path: str) -> set[int]:
    """The processes that map the file ``path`` (a shared object), as root sees them."""
    found = set()
    for pid in all_pids():
        try:
            maps = Path(f"/proc/{pid}/maps").read_text(errors="replace")
        except OSError:
            continue
        if any(line.endswith(" " + path) for line in maps.splitlines()):
            found.add(pid)
    return found


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the device: nucleus, component, watched application ------------------------------------------


def app_recipe(version: str, lifetime: float, interpreter: str) -> dict[str, Any]:
    run = f'exec "{interpreter}" -u "{{artifacts:path}}/infer_app.py" --seconds {lifetime:.0f}'
    return {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": APP_COMPONENT,
        "ComponentVersion": version,
        "ComponentDescription": "The watched ML application of bench/evasion.py.",
        "ComponentPublisher": "ddcustom bench",
        "Manifests": [
            {
                "Platform": {"os": "linux"},
                "Lifecycle": {"Run": {"Script": run}},
                "Artifacts": [{"URI": f"s3://bench/{APP_COMPONENT}/{version}/infer_app.py"}],
            }
        ],
    }


@dataclass(frozen=True)
class Users:
    """The uids of the device's users besides root, each without a passwd entry (a user of its own, as
    ggc_user is) and with a group of the same number."""

    component: int  # the component's user in the deployed and fallback modes: its work folder's owner
    app: int  # the watched application's user, and the APP attacker


def free_uids(count: int, start: int = FIRST_FREE_UID) -> list[int]:
    """``count`` uids from ``start`` on with no passwd or group entry that no process runs as."""
    busy: set[int] = set()
    for pid in all_pids():
        uid = process_uid(pid)
        if uid is not None:
            busy.add(uid)
    found: list[int] = []
    uid = start
    while len(found) < count:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            try:
                grp.getgrgid(uid)
            except KeyError:
                if uid not in busy:
                    found.append(uid)
        uid += 1
    return found


def run_as(uid: int, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``argv`` run as ``uid`` (its own group, no other) from /, with this environment but PYTHONPATH; a
    program it may not run gives status 126 and the error."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd="/", env=env, user=uid, group=uid,
            extra_groups=[], start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        return subprocess.CompletedProcess(argv, 126, "", str(exc))


# What an unprivileged user must be able to load from an interpreter: the standard library, lazily
# imported modules included (after dropping its privileges, the component still imports some).
STDLIB_PROBE = "import os, concurrent.futures.thread; os.listdir(os.path.dirname(os.__file__)); print('ok')"
COMPONENT_PROBE = (
    "import ddcustom.cli.main, ddcustom.device.run.greengrass, awsiot.greengrasscoreipc.clientv2; "
    + STDLIB_PROBE
)


def shared_interpreter(uids: list[int]) -> str:
    """A Python interpreter that every user of ``uids`` may run, standard library included, of the
    running interpreter's version (the component loads this environment's compiled dependencies): the
    running one (resolved) when they may, else the system's python3."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(sys.executable)]
    for name in (f"python{version}", "python3"):
        found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        if found is not None:
            candidates.append(os.path.realpath(found))
    problems = []
    for candidate in dict.fromkeys(candidates):
        check = [candidate, "-c", f"import sys; sys.exit(sys.version_info[:2] != {sys.version_info[:2]})"]
        if subprocess.run(check, capture_output=True, timeout=60).returncode != 0:
            problems.append(f"{candidate}: not Python {version}")
            continue
        failed = [run_as(uid, [candidate, "-c", STDLIB_PROBE]) for uid in uids]
        refused = [
            f"uid {uid}: {done.stderr.strip()[-300:]}" for uid, done in zip(uids, failed) if done.returncode
        ]
        if not refused:
            return candidate
        problems.append(f"{candidate}: " + "; ".join(refused))
    raise BenchError(
        f"no Python {version} that the component's and the application's users may run: "
        + " | ".join(problems)
    )


def share_ipc_socket(socket_path: str) -> None:
    """The nucleus's IPC socket open to every component's user, as Greengrass leaves its ipc.socket (any
    user may connect; the SVCUID token says which component it is)."""
    os.chmod(os.path.dirname(socket_path), 0o711)
    os.chmod(socket_path, 0o666)


class Device:
    """A Greengrass core device in ``root``: the stand-in nucleus, the component, the watched app, and
    the device's own programs (a root daemon, an egress client through the proxy)."""

    def __init__(
        self,
        root: Path,
        processes: Processes,
        alarms: Alarms,
        lifetime: float,
        users: Users,
        interpreter: str,
    ) -> None:
        self.root = root
        self.processes = processes
        self.alarms = alarms
        self.lifetime = lifetime
        self.users = users
        self.interpreter = interpreter
        self.nucleus: Optional[DevNucleus] = None
        self.component: Optional[Started] = None
        self.component_mode: dict[str, Any] = {}
        self.app: Optional[Started] = None
        self.daemon: Optional[Path] = None  # the root daemon's program (start_daemons)

    def install_component(self) -> Path:
        """``{kernel:rootPath}/ddcustom/venv``, which the recipe's Startup step starts, as its Install step
        leaves it (root's, mode 0755), made with ``interpreter`` and with this repository's src/ and the
        dependencies of the running environment on its path instead of an installed wheel; checked to
        load as the component's user."""
        home = self.root / "ddcustom"
        home.mkdir(mode=0o755, parents=True)
        venv = home / "venv"
        made = subprocess.run(
            [self.interpreter, "-m", "venv", "--without-pip", str(venv)],
            capture_output=True, text=True, timeout=120, start_new_session=True,
        )  # fmt: skip
        if made.returncode != 0:
            raise BenchError(f"cannot make the component's venv: {made.stderr.strip()[-1000:]}")
        python = venv / "bin" / "python"
        where = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        ours = sysconfig.get_paths()
        paths = [str(REPO / "src"), *dict.fromkeys([ours["purelib"], ours["platlib"]])]
        (Path(where.stdout.strip()) / "ddcustom-bench.pth").write_text("\n".join(paths) + "\n")
        probe = run_as(self.users.component, [str(python), "-c", COMPONENT_PROBE])
        if probe.returncode != 0:
            raise BenchError(
                f"the component's user (uid {self.users.component}) cannot load the component from "
                f"{python} ({', '.join(paths)}): {probe.stderr.strip()[-1000:]}"
            )
        return python

    def start_daemons(self, network: Network) -> None:
        """The device's own programs, running from before learning to the end: a root daemon named
        DAEMON_NAME (a copy of sleep(1) started as DAEMON_ARGV0), and a root client holding a connection
        through the HTTP CONNECT proxy (the device's usual egress: the proxy's address is a known
        endpoint)."""
        sleep = shutil.which("sleep")
        if sleep is None:
            raise BenchError("no sleep(1) to stand in for the device's daemon")
        sbin = self.root.parent / "usr" / "sbin"
        sbin.mkdir(parents=True)
        daemon = self.daemon = sbin / DAEMON_NAME
        shutil.copy2(sleep, daemon)
        self.processes.start([DAEMON_ARGV0, f"{self.lifetime:.0f}"], executable=str(daemon))
        host = str(require_allowed(network.pool_host, network.allowed))
        argv = [
            sys.executable, str(BENCH / "evasion_pool.py"), "--allow", str(network.allowed),
            "--egress", f"{host}:{network.proxy_port}", "--target", f"{host}:{network.tls_port}",
            "--hold", f"{EGRESS_HOLD:g}", "--seconds", f"{self.lifetime:.0f}",
        ]  # fmt: skip
        client = self.processes.start(argv, watch=True)
        if client.first_line("egress connected", timeout=30) is None:
            raise BenchError("the device's egress client did not get through the proxy (see the log)")

    def start_component(self, configuration: dict[str, Any], mode: str) -> None:
        """The component started as the nucleus starts it: its recipe's Startup step, with the configuration
        substituted, ``sh -c`` in its work folder, as root when the step RequiresPrivilege (else as the
        work folder's owner); the work folder the component user's (deployed, fallback) or root's
        (privileged). Then checked to run in ``mode`` (BenchError if not)."""
        self.nucleus = DevNucleus(REPO / "recipe.yaml", THING, configuration, on_publish=self.alarms.record)
        self.nucleus.start()
        share_ipc_socket(self.nucleus.socket_path)
        self.install_component()
        name = self.nucleus.component_name
        work = self.root / "work" / name
        work.mkdir(parents=True)
        owner = 0 if mode == PRIVILEGED else self.users.component
        os.chown(work, owner, owner)
        packages = self.root / "packages"
        recipe = yaml.safe_load((REPO / "recipe.yaml").read_text(encoding="utf-8"))
        steps = lifecycle_steps(
            recipe,
            artifacts_path=str(packages / "artifacts" / name / "1.0.0"),
            decompressed_path=str(packages / "artifacts-unarchived" / name / "1.0.0"),
            work_path=str(work),
            thing_name=THING,
            kernel_root=str(self.root),
            configuration=self.nucleus.configuration,
        )
        step = steps.get("startup") or steps["run"]  # the recipe starts the component with one of them
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env = {**env, **step.setenv, **self.nucleus.env()}
        self.component = self.processes.start(
            ["sh", "-c", step.script], cwd=work, env=env, watch=True, watch_stderr=True,
            user=None if step.requires_privilege else owner,
        )  # fmt: skip
        self.component_mode = {"asked": mode, "run_step": step.script, "as_root": step.requires_privilege}
        nucleus, process = self.nucleus, self.component.process
        try:
            nucleus.wait_until(lambda: bool(nucleus.states) or process.poll() is not None, 60)
        except TimeoutError:
            raise BenchError("the component reported no state within 60 s") from None
        if nucleus.states[-1:] != ["RUNNING"]:
            raise BenchError(f"the component did not run: states {nucleus.states}, exit {process.poll()}")
        self.check_mode(mode)

    def check_mode(self, mode: str) -> None:
        """BenchError unless the component runs in ``mode``: what it logged at its start, its uid, and
        whether a child of it runs as root (the privileged reader)."""
        assert self.component is not None
        line = self.component.line_with(MODE_LOG_PREFIX, timeout=30)
        logged = line.split(MODE_LOG_PREFIX, 1)[1].strip() if line is not None else None
        logged_mode = next((key for key, text in privileges.MODES.items() if text == logged), None)
        pid = self.component.process.pid  # sh exec'd the interpreter: the same process
        uid = process_uid(pid)
        root_children = [child for child in children_of(pid) if process_uid(child) == 0]
        self.component_mode.update(
            logged=logged, logged_mode=logged_mode, uid=uid, privileged_reader_pids=root_children
        )
        problem = mode_problem(mode, logged_mode, uid, self.users.component, root_children)
        self.component_mode["problem"] = problem
        if problem is not None:
            raise BenchError(problem)

    def component_errors(self) -> list[str]:
        """The component's lines that tell of an error (a traceback, an ERROR or CRITICAL log line)."""
        if self.component is None:
            return []
        marks = ("Traceback", " ERROR ", " CRITICAL ")
        return [line for _, line in list(self.component.lines) if any(m in line for m in marks)][:20]

    def component_alive(self) -> None:
        if self.component is not None and self.component.process.poll() is not None:
            raise BenchError(f"the component exited with status {self.component.process.returncode}")

    def deploy_app(self, version: str) -> None:
        """As a deployment does: the version's artifact and recipe are placed, the running version is
        stopped, the new one's Run step started (``sh -c`` in the component's work folder, which belongs
        to the application's user, as that user: the step does not RequiresPrivilege)."""
        packages = self.root / "packages"
        artifacts = packages / "artifacts" / APP_COMPONENT / version
        artifacts.mkdir(parents=True)
        source = (BENCH / "evasion_app.py").read_text(encoding="utf-8")
        (artifacts / "infer_app.py").write_text(source.replace('VERSION = "1.0.0"', f'VERSION = "{version}"'))
        recipe = app_recipe(version, self.lifetime, self.interpreter)
        (packages / "recipes").mkdir(exist_ok=True)
        (packages / "recipes" / f"{APP_COMPONENT}-{version}.yaml").write_text(yaml.safe_dump(recipe))
        work = self.root / "work" / APP_COMPONENT
        work.mkdir(parents=True, exist_ok=True)
        os.chown(work, self.users.app, self.users.app)
        run = lifecycle_steps(
            recipe,
            artifacts_path=str(artifacts),
            decompressed_path=str(packages / "artifacts-unarchived" / APP_COMPONENT / version),
            work_path=str(work),
            thing_name=THING,
            kernel_root=str(self.root),
        )["run"]
        if self.app is not None:
            self.processes.stop(self.app)
        self.app = self.processes.start(
            ["sh", "-c", run.script],
            cwd=work,
            env={**os.environ, **run.setenv},
            stdin=subprocess.PIPE,
            watch=True,
            user=None if run.requires_privilege else self.users.app,
        )
        if self.app.first_line(f"infer-app {version} started", timeout=30) is None:
            raise BenchError(f"{APP_COMPONENT} {version} did not start (see the log)")

    def app_command(self, command: dict[str, Any]) -> None:
        stdin = self.app.process.stdin if self.app is not None else None
        if stdin is None:
            raise BenchError("the watched application was not started")
        try:
            stdin.write(json.dumps(command) + "\n")
            stdin.flush()
        except OSError:
            raise BenchError("the watched application is gone") from None

    def close(self) -> None:
        if self.nucleus is not None:
            self.nucleus.stop()


# ---- network ---------------------------------------------------------------------------------------


def open_network(
    want_namespace: bool, processes: Processes, lifetime: float
) -> tuple[Network, Optional[Namespace]]:
    """The pool and proxy running, in a namespace when wanted and possible, else on loopback."""
    root = os.geteuid() == 0
    if not root:
        note = "not root: pool and proxy on loopback (ports 3333, 8443, 8080), IncludeLoopback true"
    elif not want_namespace:
        note = "--loopback: pool and proxy on loopback, IncludeLoopback true"
    else:
        namespace: Optional[Namespace] = None
        try:
            namespace = Namespace.create(evasion_pidns.host_pid())
            network = Network("namespace", "", namespace.subnet, namespace.pool_address, 3333, 443, 80)
            start_pool(network, processes, namespace.exec_prefix(), lifetime)
            return network, namespace
        except (NamespaceError, BenchError) as exc:
            if namespace is not None:
                namespace.delete()
            note = f"network namespace not usable ({exc}): pool and proxy on loopback, IncludeLoopback true"
    network = Network(
        "loopback", note, LOOPBACK, "127.0.0.1", 3333, 443 if root else 8443, 80 if root else 8080
    )
    start_pool(network, processes, [], lifetime)
    return network, None


def start_pool(network: Network, processes: Processes, prefix: list[str], lifetime: float) -> None:
    host = str(require_allowed(network.pool_host, network.allowed))
    argv = [
        *prefix, sys.executable, str(BENCH / "evasion_pool.py"), "--allow", str(network.allowed),
        "--pool", f"{host}:{network.pool_port}", "--pool", f"{host}:{network.tls_port}",
        "--proxy", f"{host}:{network.proxy_port}", "--seconds", f"{lifetime:.0f}",
    ]  # fmt: skip
    helper = processes.start(argv, watch=True)
    if helper.first_line("ready", timeout=30) is None:
        processes.stop(helper)
        raise BenchError(f"the pool on {host} did not start (see the log)")
    # Once, before the component runs: a probe it saw would be part of what it learned.
    try:
        with socket.create_connection((host, network.pool_port), timeout=5) as probe:
            probe.sendall(b'{"id":0,"method":"mining.subscribe","params":[]}\n')
            if b'"result": true' not in probe.recv(4096):
                raise OSError("no answer")
    except OSError as exc:
        processes.stop(helper)
        raise BenchError(f"the pool at {host}:{network.pool_port} does not answer: {exc}") from exc


# ---- the benchmark ---------------------------------------------------------------------------------


def compile_miner(folder: Path) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        raise BenchError("no C compiler (cc) to build bench/miner.c")
    miner = folder / "miner"
    done = subprocess.run(
        [cc, "-O2", "-pthread", "-o", str(miner), str(BENCH / "miner.c")],
        capture_output=True, text=True, timeout=120, start_new_session=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"cc failed to build bench/miner.c:\n{done.stderr[-2000:]}")
    return miner


def compile_library(folder: Path) -> tuple[Path, Path]:
    """bench/miner_lib.c as a shared object, and the application's plug-in: the same code with bytes of
    its own (another SHA-256), loaded without DDC_LIB_DUTY, so it does nothing."""
    cc = shutil.which("cc")
    if cc is None:
        raise BenchError("no C compiler (cc) to build bench/miner_lib.c")
    library = folder / "miner_lib.so"
    done = subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-pthread", "-o", str(library), str(BENCH / "miner_lib.c")],
        capture_output=True, text=True, timeout=120, start_new_session=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"cc failed to build bench/miner_lib.c:\n{done.stderr[-2000:]}")
    plugin = folder / "plugins" / "libframefilter.so"
    plugin.parent.mkdir()
    plugin.write_bytes(library.read_bytes() + b"\0plug-in")  # trailing bytes: the loader ignores them
    plugin.chmod(0o755)
    return library, plugin


def check_configuration(configuration: dict[str, Any], folder: Path) -> Optional[str]:
    """What ``ddcustom check`` says is wrong with the configuration, or None."""
    path = folder / "configuration.json"
    path.write_text(json.dumps(configuration, indent=2))
    done = subprocess.run(
        [sys.executable, "-m", "ddcustom", "check", "--config", str(path)],
        capture_output=True, text=True, env=child_env(), timeout=120, start_new_session=True,
    )  # fmt: skip
    return None if done.returncode == 0 else (done.stderr + done.stdout).strip()


def component_configuration(
    args: argparse.Namespace, network: Network, timing: Timing, folder: Path
) -> tuple[dict[str, Any], str]:
    """The merge configuration, and why there is no baseline ("" when there is one)."""
    configuration: dict[str, Any] = {
        "SecurityProfile": args.profile,
        "DetectIntervalSeconds": INTERVAL,
        "EnableDeviceDefenderReport": False,
        "WatchedProcesses": [APP_NAME],
        "IncludeLoopback": network.mode == "loopback",
        "LogLevel": "INFO",
    }
    if args.mode == FALLBACK:
        configuration["PrivilegedReader"] = False
    if args.without_baseline:
        why = "--without-baseline"
    else:
        with_baseline = {**configuration, BASELINE_KEY: timing.learning}
        problem = check_configuration(with_baseline, folder)
        if problem is None:
            return with_baseline, ""
        if "unknown configuration key" not in problem or BASELINE_KEY not in problem:
            raise BenchError(f"the component refuses the configuration: {problem}")
        why = f"this component does not know {BASELINE_KEY}"
    problem = check_configuration(configuration, folder)
    if problem is not None:
        raise BenchError(f"the component refuses the configuration: {problem}")
    return configuration, why


def miner_command(
    attack: Attack,
    network: Network,
    miner: Path,
    shm_script: Path,
    folder: Path,
    seconds: float,
    interpreter: Optional[str] = None,
) -> tuple[str, list[str]]:
    """(executable, argv) of the attack's miner, its files placed in ``folder`` (``interpreter``: the
    interpreted miner's, default the running one); every address in it checked to be allowed."""
    host = str(require_allowed(network.pool_host, network.allowed))
    port = network.pool_port if attack.port == "pool" else network.tls_port
    common = ["--allow", str(network.allowed), "--seconds", f"{seconds + LIFETIME_MARGIN:.0f}"]
    if attack.launcher == "interpreter":
        argv = [attack.shown_argv0, str(shm_script), "--pool", f"{host}:{port}", *attack.options, *common]
        return interpreter or os.path.realpath(sys.executable), argv
    binary = folder / attack.process_name.split("/")[0]
    shutil.copy2(miner, binary)
    if attack.pool == "stratum":
        pool = ["-o", f"stratum+tcp://{host}:{port}", "-u", "wallet", "-p", "x"]
    elif attack.pool == "cmdline":
        pool = ["-o", f"{host}:{port}"]
    else:
        config = folder / "config.json"
        config.write_text(json.dumps({"pools": [{"url": f"{host}:{port}", "user": "wallet", "pass": "x"}]}))
        pool = ["-c", str(config)]
    if attack.via_proxy:
        pool += ["-x", f"{host}:{network.proxy_port}"]
    argv = [attack.shown_argv0, *pool, *attack.options, "--name", attack.process_name, *common]
    return str(binary), argv


BUILD_SCRIPT = """
end=$(( $(date +%s) + {seconds} ))
while [ "$(date +%s)" -lt "$end" ]; do
  i=0
  while [ "$i" -lt {jobs} ]; do "{cc}" -O2 -c big.c -o "big$i.o" & i=$((i + 1)); done
  wait
done
"""

PIP_SCRIPT = """
set -e
"{python}" -m pip wheel --isolated --no-index --no-deps --no-build-isolation -q -w wheels ./project
end=$(( $(date +%s) + {seconds} ))
while [ "$(date +%s)" -lt "$end" ]; do
  rm -rf venv
  "{python}" -m venv venv
  venv/bin/python -m pip install --isolated --no-index --find-links wheels --no-deps -q ddcustom
done
"""

FORK_SCRIPT = """
end=$(( $(date +%s) + {seconds} ))
while [ "$(date +%s)" -lt "$end" ]; do
  i=0
  while [ "$i" -lt 50 ]; do "{true}" & i=$((i + 1)); done
  wait
done
"""


def build_source(functions: int = 400) -> str:
    """A C file that takes cc -O2 a second or two."""
    lines = ["#include <stdint.h>"]
    for i in range(functions):
        lines.append(
            f"uint64_t f{i}(uint64_t x, int n) {{ for (int j = 0; j < n; j++) {{"
            f" switch ((x >> {i % 11}) & 7) {{ case 0: x = x * {2 * i + 3}u + j; break;"
            f" case 1: x ^= x >> {i % 13 + 1}; break;"
            f" case 2: x -= {i * 7 + 1}u; break; default: x = (x << 1) | (x >> 63); }} }} return x; }}"
        )
    return "\n".join(lines) + "\n"


class Bench:
    def __init__(
        self, device: Device, processes: Processes, alarms: Alarms, network: Network, timing: Timing,
        folder: Path, miner: Path, shm_script: Path, library: Path, plugin: Path,
    ) -> None:  # fmt: skip
        """``folder`` (the run's temporary folder, which every user may enter) holds the scenarios' files;
        ``shm_script`` the interpreted miner, placed by its attacker; ``library`` the miner as a shared
        object, ``plugin`` the application's plug-in (compile_library)."""
        self.device = device
        self.processes = processes
        self.alarms = alarms
        self.network = network
        self.timing = timing
        self.folder = folder
        self.miner = miner
        self.shm_script = shm_script
        self.library = library
        self.plugin = plugin

    def sleep_until(self, end: float) -> None:
        while time.monotonic() < end:
            self.device.component_alive()
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))

    def settle(
        self, started: float, stopped: float
    ) -> tuple[list[tuple[float, str]], dict[str, Optional[float]]]:
        """After a run: its in-alarms (up to one interval after its end: the last sample may raise one)
        and, per behavior raised, seconds from ``stopped`` to its clear (None: not within --clear-seconds)."""
        self.sleep_until(stopped + INTERVAL)
        raised = self.alarms.raised(started, time.monotonic())
        behaviors = {b for _, b in raised}
        still = self.alarms.wait_quiet(behaviors, max(0.0, self.timing.clear - INTERVAL))
        clears: dict[str, Optional[float]] = {}
        for behavior in sorted(behaviors):
            cleared = self.alarms.last_clear(behavior)
            clears[behavior] = None if behavior in still or cleared is None else round(cleared - stopped, 1)
        return raised, clears

    def attacker_uid(self, attack: Attack) -> Optional[int]:
        """The uid the attack's miner runs as (None: root, the benchmark's own)."""
        return self.device.users.app if attack.attacker == APP else None

    def start_library_miner(
        self, attack: Attack, folder: Path, seconds: float
    ) -> tuple[Path, Optional[Started]]:
        """A library attack's shared object (bytes of its own: its own SHA-256), loaded as the attack
        says; the file, and the process started for it (None: the application loaded it)."""
        library = folder / f"lib{attack.name}.so"
        library.write_bytes(self.library.read_bytes() + b"\0" + attack.name.encode())
        library.chmod(0o755)
        uid = self.attacker_uid(attack)
        if uid is not None:
            for path in (folder, library):
                os.chown(path, uid, uid)
        lifetime = f"{seconds + LIFETIME_MARGIN:.0f}"
        env = {"DDC_LIB_DUTY": str(attack.library_duty), "DDC_LIB_SECONDS": lifetime}
        if attack.launcher == "app-library":
            self.device.app_command({"load-library": {"path": str(library), "env": env}})
            return library, None
        if self.device.daemon is None:
            raise BenchError("the device's daemon was not started")
        argv = [attack.shown_argv0, lifetime]
        env = {**os.environ, **env, "LD_PRELOAD": str(library)}
        return library, self.processes.start(argv, executable=str(self.device.daemon), env=env, user=uid)

    def run_library_attack(self, attack: Attack, already: list[str]) -> dict[str, Any]:
        """A miner that comes as a shared object: loaded into a known program's process (see Attack)."""
        seconds = max(self.timing.attack, attack.min_seconds)
        folder = self.folder / "scenarios" / attack.name
        folder.mkdir(parents=True)
        started = time.monotonic()
        library, process = self.start_library_miner(attack, folder, seconds)
        self.sleep_until(started + min(2.0, seconds))
        pids = pids_mapping(str(library))
        self.sleep_until(started + seconds)
        pids |= pids_mapping(str(library))
        host_uids = sorted({u for u in map(process_uid, pids) if u is not None})
        stopped = time.monotonic()
        exited = process.process.poll() if process is not None else None
        if process is not None:
            self.processes.stop(process)
        else:
            self.device.app_command({"unload-libraries": True})
        raised, clears = self.settle(started, stopped)
        uid = self.attacker_uid(attack)
        status = "ran"
        if exited is not None:
            status = f"failed: the process exited early with status {exited}"
        elif not pids:
            status = f"failed: no process mapped {library}"
        elif host_uids != [0 if uid is None else uid]:
            status = f"failed: the library was mapped by uid(s) {host_uids}, not by its attacker's"
        sha256 = sha256_of(library)

        def classify(evidence: Any) -> str:
            return library_evidence_class(evidence, str(library), sha256, pids)

        alerts = self.alarms.in_alarm_alerts(started, time.monotonic())
        return self.attack_result(attack, seconds, started, raised, clears, already, status, {
            "command": [f"LD_PRELOAD={library}", attack.shown_argv0] if process is not None
            else ["load-library", str(library)],
            "miner_file": str(library), "miner_sha256": sha256, "miner_pids": sorted(pids),
            "miner_uids": host_uids, **first_alert_evidence(alerts, classify),
        })  # fmt: skip

    def attack_result(
        self, attack: Attack, seconds: float, started: float, raised: list[tuple[float, str]],
        clears: dict[str, Optional[float]], already: list[str], status: str, specific: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        """The result document of an attack: what every attack has, and ``specific``."""
        first: dict[str, float] = {}
        for t, behavior in raised:
            first.setdefault(behavior, round(t - started, 1))
        known_clears = [v for v in clears.values() if v is not None]
        uid = self.attacker_uid(attack)
        alerts = self.alarms.in_alarm_alerts(started, time.monotonic())
        return {
            "scenario": attack.name,
            "description": attack.description,
            "attacker": attack.attacker,
            "attacker_uid": 0 if uid is None else uid,
            "library": attack.library,
            "status": status,
            "seconds": seconds,
            "caught": bool(raised),
            "behaviors": sorted(first),
            "first_alarm_s": min(first.values()) if first else None,
            "first_alarm_by_behavior_s": first,
            "in_alarm_events": len(raised),
            "within_two_intervals": None,  # count_cycles sets these two once every run is done
            "first_alarm_cycle": None,
            "started_monotonic": started,
            "first_alarm_monotonic": min((t for t, _ in raised), default=None),
            "clear_s": max(known_clears) if known_clears and len(known_clears) == len(clears) else None,
            "clear_by_behavior_s": clears,
            "already_in_alarm": already,
            # every in-alarm alert of the run, to tell what an alarm that is not about the miner was about
            "alerts": [{"at_s": round(t - started, 1), "behavior": b, "evidence": e} for t, b, e in alerts],
            **specific,
        }

    def run_attack(self, attack: Attack) -> dict[str, Any]:
        already = sorted(self.alarms.wait_quiet(None, self.timing.clear))
        if attack.library:
            return self.run_library_attack(attack, already)
        seconds = max(self.timing.attack, attack.min_seconds)
        folder = self.folder / "scenarios" / attack.name
        folder.mkdir(parents=True)
        executable, argv = miner_command(
            attack, self.network, self.miner, self.shm_script, folder, seconds, self.device.interpreter
        )
        uid = self.attacker_uid(attack)
        if uid is not None:  # the attacker's own files
            for path in (folder, *folder.rglob("*")):
                os.chown(path, uid, uid)
        script = attack.launcher == "interpreter"
        started_file = self.shm_script if script else Path(executable)
        started = time.monotonic()
        miner: Optional[Started] = None
        if attack.launcher == "app":
            self.device.app_command({"start-child": {"executable": executable, "argv": argv}})
        else:
            miner = self.processes.start(argv, executable=executable, watch=True, user=uid)
        self.sleep_until(started + min(2.0, seconds))
        pids = pids_running(str(started_file), script)
        self.sleep_until(started + seconds)
        pids |= pids_running(str(started_file), script)
        miner_uids = sorted({u for u in map(process_uid, pids) if u is not None})
        stopped = time.monotonic()
        exited = miner.process.poll() if miner is not None else None
        if miner is not None:
            self.processes.stop(miner)
        else:
            self.device.app_command({"stop-child": True})
        output = miner if miner is not None else self.device.app
        assert output is not None
        connected = output.first_line("connected", after=started) is not None
        raised, clears = self.settle(started, stopped)
        status = "ran"
        if exited is not None:
            status = f"failed: the miner exited early with status {exited}"
        elif not connected:
            status = "failed: the miner never reached its pool"
        elif not pids:
            status = f"failed: no process ran {started_file}"
        elif miner_uids != [0 if uid is None else uid]:
            status = f"failed: the miner ran as uid(s) {miner_uids}, not as its attacker"
        sha256 = sha256_of(started_file)

        def classify(evidence: Any) -> str:
            return evidence_class(evidence, str(started_file), sha256, pids, script)

        alerts = self.alarms.in_alarm_alerts(started, time.monotonic())
        return self.attack_result(attack, seconds, started, raised, clears, already, status, {
            "command": argv, "miner_file": str(started_file), "miner_sha256": sha256,
            "miner_pids": sorted(pids), "miner_uids": miner_uids, **first_alert_evidence(alerts, classify),
        })  # fmt: skip

    def start_benign(self, benign: Benign, seconds: float, learning: bool = False) -> Optional[Started]:
        folder = self.folder / ("learning" if learning else "benign") / benign.name
        folder.mkdir(parents=True)
        end = f"{seconds:.0f}"
        if benign.name == "build":
            (folder / "big.c").write_text(build_source())
            cc = shutil.which("cc") or "cc"
            script = BUILD_SCRIPT.format(seconds=end, jobs=os.cpu_count() or 2, cc=cc)
        elif benign.name == "pip-install":
            project = folder / "project"
            project.mkdir()
            for name in ("pyproject.toml", "README.md"):
                shutil.copy2(REPO / name, project / name)
            shutil.copytree(
                REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
            script = PIP_SCRIPT.format(python=sys.executable, seconds=end)
        elif benign.name == "fork-storm":
            script = FORK_SCRIPT.format(seconds=end, true=shutil.which("true") or "/bin/true")
        elif benign.name == "batch-varies":
            return self.processes.start(
                [sys.executable, str(BENCH / "evasion_batch.py"), "--seconds", end], cwd=folder
            )
        elif benign.name == "app-bursty":
            self.device.app_command({"load": "bursty"})
            return None
        elif benign.name == "app-plugin":
            plugin = {"path": str(self.plugin), "env": {"DDC_LIB_DUTY": "0"}}
            self.device.app_command({"load-library": plugin})
            return None
        else:  # app-update
            self.device.deploy_app("1.1.0")
            return None
        return self.processes.start(["sh", "-c", script], cwd=folder)

    def stop_benign(self, benign: Benign, running: Optional[Started]) -> None:
        if running is not None:
            self.processes.stop(running)
        elif benign.name == "app-bursty":
            self.device.app_command({"load": "steady"})
        elif benign.name == "app-plugin":
            self.device.app_command({"unload-libraries": True})

    def rehearse(self, benign: list[Benign], until: float) -> None:
        """The learning period is the device's ordinary work: the application, and a short run of each
        benign activity but the update (a deployment is trusted by where it puts its files, not learned).
        What the known programs do (KNOWN_PROGRAMS_AT_WORK: the application bursting, its plug-in, the
        batch job) runs together for the first half, long enough for their levels' windows; the others
        one after the other in the second half."""
        together = [b for b in benign if b.name in KNOWN_PROGRAMS_AT_WORK]
        one_by_one = [b for b in benign if b.name not in KNOWN_PROGRAMS_AT_WORK and b.name != "app-update"]
        if together:
            seconds = (until - time.monotonic() - INTERVAL) / (2 if one_by_one else 1)
            started = time.monotonic()
            running = [(b, self.start_benign(b, seconds, learning=True)) for b in together]
            self.sleep_until(started + seconds)
            for activity, process in running:
                self.stop_benign(activity, process)
        for index, activity in enumerate(one_by_one):
            seconds = (until - time.monotonic() - INTERVAL) / (len(one_by_one) - index)
            if seconds < 1:
                break
            started = time.monotonic()
            process = self.start_benign(activity, seconds, learning=True)
            self.sleep_until(started + seconds)
            self.stop_benign(activity, process)
        self.sleep_until(until)

    def run_benign(self, benign: Benign) -> dict[str, Any]:
        already = sorted(self.alarms.wait_quiet(None, self.timing.clear))
        seconds = self.timing.benign
        started = time.monotonic()
        activity = self.start_benign(benign, seconds)
        self.sleep_until(started + seconds)
        stopped = time.monotonic()
        exited = activity.process.poll() if activity is not None else None
        self.stop_benign(benign, activity)
        raised, clears = self.settle(started, stopped)
        return {
            "scenario": benign.name,
            "description": benign.description,
            "status": "ran" if not exited else f"failed: exited early with status {exited} (see the log)",
            "seconds": seconds,
            "in_alarms": len(raised),
            "behaviors": sorted({b for _, b in raised}),
            "in_alarm_at_s": [(round(t - started, 1), b) for t, b in raised],
            "evidence": self.alarms.evidence(started, time.monotonic()),
            "clear_by_behavior_s": clears,
            "already_in_alarm": already,
        }


def source_hashes() -> dict[str, str]:
    """SHA-256 of every file under bench/ and src/ by path relative to the repository (caches, results and
    the install's egg-info left out)."""
    hashes: dict[str, str] = {}
    for top in (BENCH, REPO / "src"):
        for path in sorted(top.rglob("*")):
            skipped = "__pycache__" in path.parts or path.parent == BENCH / "results"
            if path.is_file() and not skipped and not any(p.endswith(".egg-info") for p in path.parts):
                hashes[str(path.relative_to(REPO))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Paths added, removed or changed between two source_hashes()."""
    return sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))


def run(
    args: argparse.Namespace, timing: Timing, attacks: list[Attack], benign: list[Benign], processes_seen: str
) -> dict[str, Any]:
    """Set everything up, run the scenarios, tear everything down; the results document."""
    # The application and the pool end by themselves after this.
    lifetime = (
        estimate_seconds(timing, attacks, benign, not args.without_baseline, worst=True) + LIFETIME_MARGIN
    )
    document: dict[str, Any] = {
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": f"{platform.machine()} {os.cpu_count()} cpu(s), {platform.platform()}, Python "
        f"{platform.python_version()}",
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "load_average_at_start": os.getloadavg(),
        "detect_interval_s": INTERVAL,
        "mode": args.mode,
        "profile": args.profile,
        "processes_seen": processes_seen,
        "timing": asdict(timing),
        "attacks": [],
        "benign": [],
        "failure": None,
    }
    sources = source_hashes()
    os.umask(0o022)  # what the benchmark makes is readable by the device's other users, as it says
    users = Users(*free_uids(2))
    document["users"] = {"component": users.component, "app": users.app}
    with tempfile.TemporaryDirectory(prefix="ddc-evasion-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)  # the device's root and the scenarios' files lie here: every user enters it
        log_path = folder / "processes.log"
        with open(log_path, "w") as log:
            processes = Processes(log)
            alarms = Alarms()
            device = Device(folder / "greengrass", processes, alarms, lifetime, users, interpreter="")
            namespace: Optional[Namespace] = None
            shm: Optional[Path] = None
            try:
                device.interpreter = shared_interpreter([users.component, users.app])
                document["interpreter"] = device.interpreter
                miner = compile_miner(folder)
                library, plugin = compile_library(folder)
                network, namespace = open_network(not args.loopback, processes, lifetime)
                document["network"] = {**asdict(network), "allowed": str(network.allowed)}
                print(
                    f"pool: {network.mode} {network.pool_host} ({network.allowed}) {network.note}", flush=True
                )
                shm, shm_script = place_shm_miner(folder, users.app)
                document["shm_miner"] = str(shm_script)
                configuration, why_no_baseline = component_configuration(args, network, timing, folder)
                document["configuration"] = configuration
                document["baseline"] = {"used": not why_no_baseline, "why_not": why_no_baseline}
                device.start_daemons(network)
                device.deploy_app("1.0.0")
                try:
                    device.start_component(configuration, args.mode)
                finally:
                    document["component"] = device.component_mode
                print(f"component: {args.mode} mode, {MODE_LOG_PREFIX}{device.component_mode['logged']}")
                learn = timing.learning + INTERVAL if not why_no_baseline else 2 * INTERVAL
                print(
                    f"baseline: learning for {learn:g} s" if not why_no_baseline
                    else f"no baseline ({why_no_baseline}): settling for {learn:g} s", flush=True,
                )  # fmt: skip
                bench = Bench(
                    device, processes, alarms, network, timing, folder, miner, shm_script, library, plugin
                )
                learning_started = time.monotonic()
                if why_no_baseline:
                    bench.sleep_until(learning_started + learn)
                else:
                    bench.rehearse(list(BENIGN), learning_started + learn)
                document["alarms_while_learning"] = [
                    (round(t - learning_started, 1), b)
                    for t, b in alarms.raised(learning_started, time.monotonic())
                ]
                for attack in attacks:
                    print(f"attack {attack.name} ...", flush=True)
                    result = bench.run_attack(attack)
                    document["attacks"].append(result)
                    print(f"  {summary(result)}", flush=True)
                for run_ in benign:
                    print(f"benign {run_.name} ({timing.benign:g} s) ...", flush=True)
                    result = bench.run_benign(run_)
                    document["benign"].append(result)
                    print(
                        f"  {result['status']}: {result['in_alarms']} in-alarm(s) {result['behaviors']}",
                        flush=True,
                    )
            except BenchError as exc:
                document["failure"] = str(exc)
                print(f"\nfailed: {exc}", flush=True)
                print(f"\nfailed: {exc}\nlast lines of the log ({log_path}):", file=sys.stderr)
                log.flush()
                print("\n".join(log_path.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
            finally:
                with signals_ignored():
                    document["component_errors"] = device.component_errors()
                    processes.stop_all()
                    device.close()
                    if namespace is not None:
                        namespace.delete()
                    if shm is not None:
                        shutil.rmtree(shm, ignore_errors=True)
    count_cycles(document, alarms.cycle_phase(INTERVAL))
    document["load_average_at_end"] = os.getloadavg()
    document["files_changed_during_run"] = changed_files(sources, source_hashes())
    return document


def count_cycles(document: dict[str, Any], phase: Optional[float]) -> None:
    """Each caught attack's first in-alarm as the detection cycle that raised it (1: the first cycle after
    the miner started), and "within two intervals" as raised by the first or second: the target is about
    the component's cycles, not the alert's delivery after them. ``phase`` is None only when no alert
    arrived at all."""
    document["cycle_phase"] = phase
    for result in document["attacks"]:
        arrival = result["first_alarm_monotonic"]
        cycle = None
        if phase is not None and arrival is not None:
            cycle = cycles_between(phase, INTERVAL, result["started_monotonic"], arrival)
        result["first_alarm_cycle"] = cycle
        result["within_two_intervals"] = cycle is not None and cycle <= 2


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """The clean-up runs to its end: a second Ctrl-C or SIGTERM does not cut it short."""
    previous = {
        sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def place_shm_miner(folder: Path, owner: int) -> tuple[Optional[Path], Path]:
    """bench/miner.py as x.py in a new folder under /dev/shm (or ``folder`` without /dev/shm), folder and
    file belonging to ``owner`` (the attacker who dropped it), readable by all."""
    try:
        shm: Optional[Path] = Path(tempfile.mkdtemp(prefix="ddc-evasion-", dir="/dev/shm"))
    except OSError:
        print("no writable /dev/shm: the interpreted miner runs from the temporary folder", flush=True)
        shm = None
    script = (shm or folder) / "x.py"
    shutil.copy2(BENCH / "miner.py", script)
    script.chmod(0o644)
    if shm is not None:
        shm.chmod(0o755)
        os.chown(shm, owner, owner)
    os.chown(script, owner, owner)
    return shm, script


def estimate_seconds(
    timing: Timing, attacks: list[Attack], benign: list[Benign], baseline: bool, worst: bool = False
) -> float:
    """How long the benchmark takes: roughly (each run, one interval after it and half the clear limit),
    or at most (``worst``: each run may wait the clear limit before it starts and after it ends)."""
    learning = timing.learning + INTERVAL if baseline else 2 * INTERVAL
    per_run = 2 * timing.clear + INTERVAL if worst else INTERVAL + timing.clear / 2
    return (
        learning
        + sum(max(timing.attack, a.min_seconds) + per_run for a in attacks)
        + len(benign) * (timing.benign + per_run)
    )


def summary(result: dict[str, Any]) -> str:
    if not result["caught"]:
        return f"{result['status']}: not caught"
    return (
        f"{result['status']}: caught after {result['first_alarm_s']:g} s by "
        f"{', '.join(result['behaviors'])}; first alert's evidence: {evidence_text(result)}"
    )


def evidence_text(result: dict[str, Any]) -> str:
    """The first in-alarm alert's evidence of the miner, and by which behaviors ("-": not caught)."""
    if not result.get("evidence"):
        return "-"
    by = result.get("evidence_by") or []
    return f"{result['evidence']} ({', '.join(by)})" if by else str(result["evidence"])


def attacker_text(result: dict[str, Any]) -> str:
    return "root" if result.get("attacker", ROOT) == ROOT else f"app user ({result.get('attacker_uid')})"


def evidence_misses(result: dict[str, Any]) -> Optional[str]:
    """What the evidence of a caught attack showed when its first alert did not name the miner by path
    and SHA-256; None when it did (or the attack was not caught)."""
    if not result["caught"] or result.get("evidence") == EVIDENCE_FULL:
        return None
    described = []
    for first in result.get("first_evidence", []):
        evidence = first.get("evidence") or {}
        shown = [
            f"pid {p.get('pid')} {p.get('name')!r} exe {p.get('exe') or '-'}"
            + (f" unknowable: {p['unknowable']}" if p.get("unknowable") else "")
            for p in evidence.get("processes", [])
        ]
        shown += [f"address {a}" for a in evidence.get("connections", [])]
        shown += [f"item {i}" for i in evidence.get("items", [])]
        described.append(f"{first['behavior']}: {first['class']} ({'; '.join(shown) or 'no evidence'})")
    later = ", ".join(f"{b}: {c}" for b, c in result.get("evidence_by_behavior", {}).items())
    return (
        f"{result['scenario']} ({attacker_text(result)}): first alert(s): {' | '.join(described)}; "
        f"best over the run: {later}"
    )


def cleared_text(result: dict[str, Any], limit: float) -> str:
    if not result["caught"]:
        return "-"
    if result["clear_s"] is None:
        return f"not within {limit:g}"
    return f"{result['clear_s']:g}" if result["clear_s"] > 0 else "before the stop"


def markdown(document: dict[str, Any]) -> str:
    lines: list[str] = []
    baseline = document.get("baseline", {})
    network = document.get("network", {})
    if baseline:
        learned = (
            f"learned for {document['timing']['learning']:g} s"
            if baseline["used"]
            else f"none ({baseline['why_not']})"
        )
        lines.append(
            f"DetectIntervalSeconds {INTERVAL}, profile {document['profile']}, baseline {learned}; pool: "
            f"{network.get('mode')} {network.get('allowed')} {network.get('note', '')}\n"
        )
    if document.get("mode"):
        component = document.get("component") or {}
        users = document.get("users") or {}
        lines.append(
            f'component: {document["mode"]} mode, logged "{MODE_LOG_PREFIX}{component.get("logged")}", '
            f"uid {component.get('uid')}; the application and the app-user attacker: uid {users.get('app')}; "
            f"interpreter {document.get('interpreter')}\n"
        )
    if document["attacks"]:
        lines.append(
            "| scenario | attacker | what | caught | by | first alert's evidence | 1st in-alarm (s) "
            "| by cycle | within 2 intervals | clear after stop (s) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in document["attacks"]:
            caught = ("yes" if r["caught"] else "**no**") + (
                "" if r["status"] == "ran" else f" ({r['status']})"
            )
            first = "-" if r["first_alarm_s"] is None else f"{r['first_alarm_s']:g}"
            cycle = "-" if r.get("first_alarm_cycle") is None else str(r["first_alarm_cycle"])
            within = "yes" if r["within_two_intervals"] else "**no**"
            clear = cleared_text(r, document["timing"]["clear"])
            cells = [
                r["scenario"],
                attacker_text(r),
                r["description"],
                caught,
                ", ".join(r["behaviors"]) or "-",
                evidence_text(r),
                first,
                cycle,
                within,
                clear,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if document["benign"]:
        lines += ["| benign run | what | seconds | in-alarms | by |", "|---|---|---|---|---|"]
        for r in document["benign"]:
            count = str(r["in_alarms"]) + ("" if r["status"] == "ran" else f" ({r['status']})")
            cells = [
                r["scenario"],
                r["description"],
                f"{r['seconds']:g}",
                count,
                ", ".join(r["behaviors"]) or "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for r in document["benign"]:
            for behavior, evidence in r.get("evidence", []):
                lines.append(f"benign {r['scenario']}: {behavior} pointed at {pointed_at(evidence)}")
    for r in document["attacks"]:
        unnamed = {b for b, c in r.get("evidence_by_behavior", {}).items() if c == EVIDENCE_NOT_NAMED}
        for alert in r.get("alerts", []):
            if alert["behavior"] in unnamed and isinstance(alert.get("evidence"), dict):
                unnamed.discard(alert["behavior"])
                lines.append(
                    f"{r['scenario']}: {alert['behavior']} (not about the miner) pointed at "
                    f"{pointed_at(alert['evidence'])}"
                )
    for r in document["attacks"] + document["benign"]:
        if r["already_in_alarm"]:
            still = ", ".join(r["already_in_alarm"])
            lines.append(f"{r['scenario']}: in alarm at its start, so not raised again: {still}")
    if document.get("alarms_while_learning"):
        lines.append(f"in-alarms while learning: {document['alarms_while_learning']}")
    attacks = document["attacks"]
    if attacks:
        met = sum(1 for r in attacks if r["within_two_intervals"])
        lines.append(f"targets: {met} of {len(attacks)} attacks caught within 2 intervals")
        named = sum(1 for r in attacks if r.get("evidence") == EVIDENCE_FULL)
        lines.append(
            f"targets: {named} of {len(attacks)} attacks caught with the miner's path and SHA-256 in the "
            "first alert's evidence"
        )
        lines += [miss for miss in map(evidence_misses, attacks) if miss is not None]
        for r in attacks:
            if r.get("library"):
                cpu = r["first_alarm_by_behavior_s"].get(CPU_LEVEL_BEHAVIOR)
                seen = f"after {cpu:g} s" if cpu is not None else "**not raised**"
                lines.append(
                    f"targets: {r['scenario']}: the CPU of its known program raised {CPU_LEVEL_BEHAVIOR} "
                    f"{seen} (target 60 s)"
                )
    if document["benign"]:
        count = sum(r["in_alarms"] for r in document["benign"])
        lines.append(f"targets: {count} in-alarm(s) in the benign runs (target 0)")
    if document.get("files_changed_during_run"):
        lines.append(
            "WARNING: files of the project changed during the run (a script changed under a running "
            "process is a new executable: alarms may be the edit's): "
            + ", ".join(document["files_changed_during_run"])
        )
    if document.get("component_errors"):
        lines.append("WARNING: the component logged errors: " + " / ".join(document["component_errors"]))
    if document["failure"]:
        lines.append(f"FAILED: {document['failure']}")
    return "\n".join(lines)


def pointed_at(evidence: dict[str, Any]) -> str:
    """What an alert's evidence names, in one line: its processes' programs, connections and items."""
    processes = [p.get("script") or p.get("exe") or p.get("name") for p in evidence.get("processes", [])]
    pointed = ", ".join(map(str, processes + evidence.get("connections", []) + evidence.get("items", [])))
    return pointed or "nothing"


def compare_cell(result: Optional[dict[str, Any]]) -> str:
    if result is None:
        return "not run"
    if result["status"] != "ran":
        return result["status"]
    if not result["caught"]:
        return "**not caught**"
    cycle = result.get("first_alarm_cycle")
    when = f"cycle {cycle}" if cycle is not None and cycle <= 2 else f"**cycle {cycle or '?'}**"
    evidence = evidence_text(result)
    return f"{when}; " + (evidence if result.get("evidence") == EVIDENCE_FULL else f"**{evidence}**")


def compare_markdown(documents: list[dict[str, Any]], names: list[str]) -> str:
    """One table of the attacks of several results (a column each, headed by its mode), and one of
    their benign runs' in-alarms; in bold what misses a target (caught after the second cycle, without
    the miner's path and SHA-256 in the first alert's evidence, not caught)."""
    heads = [f"{d.get('mode', 'privileged (before modes)')}" for d in documents]
    lines = [
        f"{head}: {name}, started {d.get('started_at', '?')}"
        for head, name, d in zip(heads, names, documents)
    ]
    lines.append("")
    scenarios: dict[str, str] = {}
    for document in documents:
        for r in document["attacks"]:
            scenarios.setdefault(r["scenario"], attacker_text(r))
    if scenarios:
        lines.append("| scenario | attacker | " + " | ".join(heads) + " |")
        lines.append("|---|---|" + "---|" * len(heads))
        for name, attacker in scenarios.items():
            cells = [
                compare_cell(next((r for r in d["attacks"] if r["scenario"] == name), None))
                for d in documents
            ]
            lines.append(f"| {name} | {attacker} | " + " | ".join(cells) + " |")
        lines.append("")
    benign = list(dict.fromkeys(r["scenario"] for d in documents for r in d["benign"]))
    if benign:
        lines.append("| benign run | " + " | ".join(f"{head}: in-alarms" for head in heads) + " |")
        lines.append("|---|" + "---|" * len(heads))
        for name in benign:
            cells = []
            for document in documents:
                r = next((r for r in document["benign"] if r["scenario"] == name), None)
                cells.append(
                    "not run" if r is None else f"{r['in_alarms']} {', '.join(r['behaviors'])}".strip()
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- command line ----------------------------------------------------------------------------------


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    width = max(len(s.name) for s in (*ATTACKS, *BENIGN))
    epilog = "attack scenarios:\n" + "\n".join(f"  {a.name:{width}}  {a.description}" for a in ATTACKS)
    epilog += "\n\nbenign runs:\n" + "\n".join(f"  {b.name:{width}}  {b.description}" for b in BENIGN)
    parser = argparse.ArgumentParser(
        prog="evasion.py",
        description=__doc__,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="short runs, a few minutes in all: learning 30 s, attacks 20 s, clear wait 30 s, benign 30 s",
    )
    add(
        "--scenarios",
        default="all",
        help="comma-separated scenario names, or the groups attacks, benign, all (default all)",
    )
    add(
        "--learning-seconds",
        type=positive,
        help=f"learning period: {BASELINE_KEY}, and how long the device runs before the first scenario "
        "(default 180, quick 30)",
    )
    add("--attack-seconds", type=positive, help="how long each miner runs, at least (default 60, quick 20)")
    add(
        "--clear-seconds",
        type=positive,
        help="how long to wait after a run for its alarms to clear (default 60, quick 30)",
    )
    add("--benign-seconds", type=positive, help="length of each benign run (default 300, quick 30)")
    add(
        "--mode",
        choices=MODES,
        default=DEPLOYED,
        help="how the component runs (default deployed): deployed, as the recipe deploys it (started as "
        "root, its own user with the privileged reader); fallback, the same with PrivilegedReader false (no "
        "reader); privileged, staying root (its work folder root's)",
    )
    add(
        "--compare",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="run nothing: print one table of the attacks (and benign runs) of these results, a column each",
    )
    add("--profile", default="crypto-mining", help="SecurityProfile: a built-in name or a JSON file")
    add(
        "--without-baseline",
        action="store_true",
        help=f"leave {BASELINE_KEY} out (what the profile catches without a baseline)",
    )
    add("--loopback", action="store_true", help="pool and proxy on loopback even as root (no namespace)")
    add(
        "--share-pids",
        action="store_true",
        help="as root, stay in the host's PID and network namespaces (default: its own, see above)",
    )
    add(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"JSON results (default {DEFAULT_OUT.relative_to(REPO)})",
    )
    return parser.parse_args(argv)  # fmt: skip


def timing_of(args: argparse.Namespace) -> Timing:
    def pick(given: Optional[float], full: float, quick: float) -> float:
        return given if given is not None else (quick if args.quick else full)

    return Timing(
        learning=pick(args.learning_seconds, 180.0, 30.0),
        attack=pick(args.attack_seconds, 60.0, 20.0),
        clear=max(pick(args.clear_seconds, 60.0, 30.0), float(INTERVAL)),
        benign=pick(args.benign_seconds, 300.0, 30.0),
    )


def select_scenarios(text: str) -> tuple[list[Attack], list[Benign]]:
    """The attacks and benign runs named (in the benchmark's order); ValueError for an unknown name."""
    groups = {"all": {s.name for s in (*ATTACKS, *BENIGN)}, "attacks": {a.name for a in ATTACKS},
              "benign": {b.name for b in BENIGN}}  # fmt: skip
    names: set[str] = set()
    for name in (part.strip() for part in text.split(",") if part.strip()):
        if name in groups:
            names |= groups[name]
        elif name in groups["all"]:
            names.add(name)
        else:
            known = ", ".join(s.name for s in (*ATTACKS, *BENIGN))
            raise ValueError(f"unknown scenario {name!r}; known: {known} (or attacks, benign, all)")
    if not names:
        raise ValueError("no scenario chosen")
    return [a for a in ATTACKS if a.name in names], [b for b in BENIGN if b.name in names]


def _interrupt(signum: int, _frame: Any) -> None:
    for sig in evasion_pidns.STOP_SIGNALS:  # the first one starts the clean-up: no other cuts it short
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.compare:
        try:
            documents = [json.loads(path.read_text()) for path in args.compare]
        except (OSError, ValueError) as exc:
            print(f"evasion.py: --compare: {exc}", file=sys.stderr)
            return 2
        print(compare_markdown(documents, [str(path) for path in args.compare]))
        return 0
    try:
        attacks, benign = select_scenarios(args.scenarios)
    except ValueError as exc:
        print(f"evasion.py: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print(
            "evasion.py: needs root: the component is started as root as its recipe's Startup step does, and "
            "the application and the attackers run as users of their own",
            file=sys.stderr,
        )
        return 2
    timing = timing_of(args)
    if evasion_pidns.inside():
        status = evasion_pidns.run_as_init()
        if status is not None:
            return status
        processes_seen = "the benchmark's only (own PID and network namespaces)"
    elif args.share_pids:
        processes_seen = "all the host's (--share-pids)"
    else:
        status, why_not = evasion_pidns.enter(str(Path(__file__).resolve()), argv)
        if status is not None:
            return status
        processes_seen = f"all the host's (no PID and network namespaces: {why_not})"
    minutes = estimate_seconds(timing, attacks, benign, baseline=not args.without_baseline) / 60
    print(f"{len(attacks)} attack(s), {len(benign)} benign run(s): about {minutes:.0f} min", flush=True)
    print(f"processes the component sees: {processes_seen}", flush=True)
    for sig in evasion_pidns.STOP_SIGNALS:  # SIGTERM and SIGHUP clean up as Ctrl-C does
        signal.signal(sig, _interrupt)
    try:
        document = run(args, timing, attacks, benign, processes_seen)
    except KeyboardInterrupt:
        print("\ninterrupted: every process stopped, namespace deleted", file=sys.stderr)
        return 130
    print("\n" + markdown(document))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults written to {args.out}")
    failed = document["failure"] or any(
        r["status"] != "ran" for r in document["attacks"] + document["benign"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
