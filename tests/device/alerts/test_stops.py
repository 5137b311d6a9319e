"""The run marker and the unclean-stop alert it leads to (alerts/stops.py), on the clocks the test sets."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ddcustom.device.alerts.stops import RunMarker, unclean_stop_event
from ddcustom.device.detect.events import UncleanStopEvent
from support.helpers import ROOT

BOOT = "5f2d7d4e-aaaa-4bbb-8ccc-000000000001"


class Clocks:
    """The wall clock and the monotonic clock, moved together by the test."""

    def __init__(self) -> None:
        self.wall = 1_764_650_000.0
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def marker(path: Path, clocks: Clocks, pid: int = 4242, boot: str | None = BOOT) -> RunMarker:
    return RunMarker(
        str(path),
        pid=pid,
        version="1.0.0",
        boot_id=boot,
        heartbeat_seconds=60,
        clock=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
    )


def test_a_clean_stop_leaves_nothing_for_the_next_start(tmp_path: Path) -> None:
    clocks, path = Clocks(), tmp_path / "state" / "running.json"
    run = marker(path, clocks)
    assert run.previous() is None  # the first start ever
    run.start()
    assert path.exists() and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    run.stopped_cleanly()
    assert not path.exists()
    assert marker(path, clocks, pid=5000).previous() is None


def test_the_heartbeat_is_written_when_due_only(tmp_path: Path) -> None:
    clocks, path = Clocks(), tmp_path / "running.json"
    run = marker(path, clocks)
    run.start()
    started = json.loads(path.read_text())
    assert started["startedAt"] == started["lastSeenAt"] == clocks.wall
    clocks.advance(59)
    run.beat()
    assert json.loads(path.read_text())["lastSeenAt"] == started["lastSeenAt"]  # not due yet
    clocks.advance(1)
    run.beat()
    assert json.loads(path.read_text())["lastSeenAt"] == clocks.wall


def test_a_kill_leaves_the_marker_and_the_next_start_says_how_long_detection_was_down(tmp_path: Path) -> None:
    clocks, path = Clocks(), tmp_path / "running.json"
    run = marker(path, clocks)
    run.start()
    clocks.advance(120)
    run.beat()
    last_seen = clocks.wall
    clocks.advance(45)  # ... killed somewhere in here, started again now
    previous = marker(path, clocks, pid=5000).previous()
    assert previous is not None and previous.pid == 4242

    event = unclean_stop_event(previous, "cam-42", BOOT, now=clocks.wall)

    assert event.cause == "killed-or-crashed"
    assert event.stopped == {
        "pid": 4242,
        "version": "1.0.0",
        "startedAt": 1_764_650_000,
        "lastSeenAt": 1_764_650_120,
    }
    assert event.detection_down == {
        "since": int(last_seen),
        "seconds": 45,
        "exact": False,
        "heartbeatSeconds": 60,
    }
    assert event.thing_name == "cam-42" and event.event_time == int(clocks.wall)
    # the same marker found again (a start that died before replacing it) is the same alert
    again = marker(path, clocks).previous()
    assert again is not None and unclean_stop_event(again, "cam-42", BOOT, now=clocks.wall + 9).identity == (
        event.identity
    )
    assert UncleanStopEvent.from_json(event.to_json()) == event


def test_a_new_boot_under_the_running_component_is_a_device_restart(tmp_path: Path) -> None:
    clocks, path = Clocks(), tmp_path / "running.json"
    marker(path, clocks).start()
    previous = marker(path, clocks).previous()
    assert previous is not None
    assert unclean_stop_event(previous, "t", "another-boot").cause == "device-restarted"
    assert unclean_stop_event(previous, "t", None).cause == "unknown"  # this boot's id unreadable


def test_a_stop_signal_the_nucleus_did_not_send_is_kept_with_its_sender(tmp_path: Path) -> None:
    clocks, path = Clocks(), tmp_path / "running.json"
    run = marker(path, clocks)
    run.start()
    clocks.advance(30)
    run.stopped_by("SIGTERM", 777, 1001, clocks.wall)
    stopped_at = clocks.wall
    clocks.advance(5)
    previous = marker(path, clocks).previous()
    assert previous is not None

    event = unclean_stop_event(previous, "t", BOOT, now=clocks.wall)

    assert event.cause == "stopped-by-signal"
    assert event.stopped["signal"] == {
        "name": "SIGTERM",
        "senderPid": 777,
        "senderUid": 1001,
        "at": stopped_at,
    }
    assert event.detection_down["exact"] is True and event.detection_down["seconds"] == 5


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b"x" * 10_000, b'{"lastSeenAt": NaN, "pid": "x", "signal": 3}'],
)
def test_an_unreadable_or_strange_marker_still_tells_an_unclean_stop(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "running.json"
    path.write_bytes(content)
    previous = marker(path, Clocks()).previous()
    assert previous is not None
    event = unclean_stop_event(previous, "t", BOOT, now=1_764_650_000)
    assert event.cause in ("unknown", "killed-or-crashed")
    assert event.detection_down["seconds"] is None or event.detection_down["seconds"] >= 0
    json.dumps(event.to_json(), allow_nan=False)  # publishable whatever the marker held


def test_the_marker_follows_the_state_folder_and_a_write_failure_is_only_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clocks = Clocks()
    run = marker(tmp_path / "a" / "running.json", clocks)
    run.start()
    run.move(str(tmp_path / "b" / "running.json"))
    assert not (tmp_path / "a" / "running.json").exists() and (tmp_path / "b" / "running.json").exists()
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with caplog.at_level(logging.WARNING):
        run.move(str(tmp_path / "blocker" / "running.json"))
    assert "cannot write run marker" in caplog.text


def test_a_real_kill_leaves_a_marker_the_next_process_reads(tmp_path: Path) -> None:
    path = tmp_path / "running.json"
    code = f"""
        import os, signal
        from ddcustom.device.alerts.stops import RunMarker
        RunMarker({str(path)!r}, pid=os.getpid(), version="1.0.0", boot_id="b").start()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    env: dict[str, Any] = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, timeout=30)
    assert child.returncode == -9
    previous = marker(path, Clocks()).previous()
    assert previous is not None and previous.boot_id == "b"
    assert unclean_stop_event(previous, "t", "b").cause == "killed-or-crashed"
