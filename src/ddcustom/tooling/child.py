"""The component as a child process of a command (``ddcustom dev``, the demo): stopping it."""

from __future__ import annotations

import subprocess
from typing import Any

STOP_TIMEOUT = 10.0  # seconds a child component gets to stop on SIGTERM before it is killed


def stop_child(child: subprocess.Popen[Any]) -> int:
    """SIGTERM (unless it has ended), SIGKILL after STOP_TIMEOUT; its exit status."""
    child.terminate()
    try:
        return child.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()
