"""bench/evasion.py in its own PID and network namespaces: the component under test sees the benchmark's
processes and connections only, not whatever else runs on the host (other benchmarks' or tests' miners
and watched applications would raise alarms that are none of the scenario's doing, or hold them raised;
a host's pip reaching its package index would be a new endpoint held by a process the component cannot
see).

``enter`` runs the benchmark again under ``unshare --pid --net --mount-proc --kill-child=SIGTERM`` (root
only) and waits for it, passing SIGINT, SIGTERM and SIGHUP on (unshare itself ignores them). There the
benchmark is pid 1, and ``run_as_init`` makes it an init: it forks the benchmark proper, reaps every
orphan while it runs (killed shells leave their children to pid 1), passes the signals on, and returns
its exit status; before that it brings the namespace's loopback up (a new network namespace has it
down). The pool's namespace and its veth pair are then made from inside and go with it. When pid 1
ends, the kernel kills whatever is left in the namespace; if unshare is killed, pid 1 gets SIGTERM
(--kill-child).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from typing import Any, Optional

MARK = "DDC_EVASION_PID_NAMESPACE"  # in the re-executed benchmark's environment: unshare's pid on the host
UNSHARE = ["unshare", "--pid", "--net", "--mount-proc", "--kill-child=SIGTERM", "--"]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def inside() -> bool:
    return MARK in os.environ and os.getpid() == 1


def host_pid() -> int:
    """This benchmark's pid as the host sees it (inside the namespace: the pid of unshare), to name
    what it creates on the host uniquely."""
    return int(os.environ.get(MARK) or os.getpid())


def enter(script: str, argv: list[str]) -> tuple[Optional[int], str]:
    """Run ``script argv`` in new PID and network namespaces and wait for it: (its exit status, ""), or
    (None, why) when that cannot be done."""
    if os.geteuid() != 0:
        return None, "not root"
    if shutil.which("unshare") is None:
        return None, "no unshare command"
    try:
        probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"unshare failed: {exc}"
    if probe.returncode != 0:
        return None, f"unshare failed: {probe.stderr.strip()}"
    env = {**os.environ, MARK: str(os.getpid())}
    process = subprocess.Popen([*UNSHARE, sys.executable, script, *argv], env=env)

    def forward(signum: int, _frame: Any) -> None:
        for pid in children(process.pid):  # pid 1 of the namespace, as the host numbers it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    return process.wait(), ""


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(word) for word in listing.read().split()]
    except OSError:
        return []


def loopback_up() -> str:
    """Bring the namespace's loopback up: "" when done, else why not (the pool's fallback on loopback
    then cannot listen; the namespace pool does not need it)."""
    try:
        done = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ip link set lo up: {exc}"
    return "" if done.returncode == 0 else f"ip link set lo up: {done.stderr.strip()}"


def run_as_init() -> Optional[int]:
    """As pid 1: fork; the child returns None and runs the benchmark; pid 1 reaps and forwards signals
    until the child ends, then returns the child's exit status (128 + signal if a signal ended it)."""
    why_not = loopback_up()
    if why_not:
        print(f"evasion.py: the namespace's loopback stays down: {why_not}", file=sys.stderr, flush=True)
    child = os.fork()
    if child == 0:
        return None

    def forward(signum: int, _frame: Any) -> None:
        os.kill(child, signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code
