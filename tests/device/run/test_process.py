"""The stop signals and who sent them (run/process.py), and which stops the nucleus cannot have sent
(run/greengrass.py): real signals to a child process, whose sender the kernel names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any, Optional

import pytest

from ddcustom.device.run.greengrass import stop_not_from_the_nucleus
from ddcustom.device.run.process import StopSignal, StopSignals, boot_id
from support.helpers import ROOT, WAIT

NOBODY = 65534

# Installs the stop handlers, says it is ready, waits to be stopped, prints what it received. With an
# argument, it first becomes that user (after the handlers are installed, as the component drops its
# privileges after it started as root).
CHILD = """
    import json, os, sys, threading
    from ddcustom.device.run.process import install_stop_handlers
    stop, wake = threading.Event(), threading.Event()
    received = install_stop_handlers(stop, wake)
    if len(sys.argv) > 1:
        os.setgid(int(sys.argv[1]))
        os.setuid(int(sys.argv[1]))
    print("ready", flush=True)
    stop.wait(60)
    got = received.received
    print(json.dumps({"name": got.name, "pid": got.sender_pid, "uid": got.sender_uid}), flush=True)
    """


def child(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), *args], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def received(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=WAIT)
    assert process.returncode == 0
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_a_stop_signal_names_its_sender() -> None:
    process = child()
    process.send_signal(signal.SIGTERM)
    assert received(process) == {"name": "SIGTERM", "pid": os.getpid(), "uid": os.getuid()}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play the component and another user")
def test_a_stop_signal_from_another_user_names_that_user() -> None:
    process = child(str(NOBODY))  # the component, dropped to its user (nobody here)
    killer = textwrap.dedent(
        f"""
        import os, signal
        os.setgid({NOBODY})
        os.setuid({NOBODY})
        os.kill({process.pid}, signal.SIGTERM)
        print(os.getpid())
        """
    )
    sender = subprocess.run([sys.executable, "-c", killer], capture_output=True, text=True, timeout=WAIT)
    assert sender.returncode == 0, sender.stderr
    assert received(process) == {"name": "SIGTERM", "pid": int(sender.stdout), "uid": NOBODY}


def signals(uid: Optional[int], pid: Optional[int] = 4242) -> StopSignals:
    stops = StopSignals()
    stops.received = None if uid is None and pid is None else StopSignal(signal.SIGTERM, pid, uid, 0.0)
    return stops


@pytest.mark.parametrize(
    ("sender_uid", "sender_pid", "nucleus_uid", "foreign"),
    [
        (1001, 4242, 0, True),  # started as root: the nucleus's kill is root's; another user's is not
        (0, 4242, 0, False),  # root: the nucleus, systemd, an administrator
        (1001, 0, 0, False),  # the kernel (a terminal's Ctrl-C)
        (1001, 4242, None, False),  # started unprivileged: the nucleus's kill is the component user's too
        (None, None, 0, False),  # no signal at all: the loop ended otherwise
        (None, 4242, 0, False),  # a signal whose sender could not be read
    ],
)
def test_which_stops_the_nucleus_cannot_have_sent(
    sender_uid: Optional[int], sender_pid: Optional[int], nucleus_uid: Optional[int], foreign: bool
) -> None:
    stops = signals(sender_uid, sender_pid)
    assert (stop_not_from_the_nucleus(stops, nucleus_uid) is not None) is foreign


def test_the_boot_id_is_read_and_stable() -> None:
    first = boot_id()
    if first is None:
        pytest.skip("no /proc/sys/kernel/random/boot_id here")
    assert first == boot_id() and len(first) >= 32
