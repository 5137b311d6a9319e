"""The durable alert spool: real crashes, ordering, bound, corrupt files, permissions."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ddcustom.device.alerts.spool import AlertSpool, SpoolError
from ddcustom.device.detect.events import ViolationEvent
from support.helpers import ROOT

SRC = str(ROOT / "src")


def alert(n: int, kind: str = "in-alarm") -> ViolationEvent:
    return ViolationEvent(
        violation_id=f"00000000-0000-4000-8000-{n:012d}",
        thing_name="thing-1",
        security_profile_name="crypto-mining",
        behavior={"name": "cpu-usage"},
        metric_value={"number": 90.0 + n},
        event_type=kind,
        event_time=1764650000 + n,
    )


def child(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE, text=True
    )


def test_alert_written_before_a_crash_is_replayed_by_the_next_process(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    proc = child(
        f"""
        import os
        from ddcustom.device.detect.events import ViolationEvent
        from ddcustom.device.alerts.spool import AlertSpool
        spool = AlertSpool({str(spool_dir)!r}, 1_000_000)
        spool.append(ViolationEvent.from_json({alert(1).to_json()!r}))
        spool.append(ViolationEvent.from_json({alert(2).to_json()!r}))
        os._exit(1)  # dies before any send or ack
        """
    )
    assert proc.wait(timeout=30) == 1
    replayed = list(AlertSpool(spool_dir, 1_000_000).pending())
    assert [event for _, event in replayed] == [alert(1), alert(2)]


def test_kill_9_after_append_loses_nothing(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    proc = child(
        f"""
        import sys, time
        from ddcustom.device.detect.events import ViolationEvent
        from ddcustom.device.alerts.spool import AlertSpool
        spool = AlertSpool({str(spool_dir)!r}, 1_000_000)
        key = spool.append(ViolationEvent.from_json({alert(7).to_json()!r}))
        print(key, flush=True)
        time.sleep(60)  # "sending": killed here
        """
    )
    assert proc.stdout is not None
    try:
        # bounded: the child writes its one line in a single flushed write, so readable means a whole line
        assert select.select([proc.stdout], [], [], 30)[0], "the child printed no key within 30 s"
        key = proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    spool = AlertSpool(spool_dir, 1_000_000)
    assert list(spool.pending()) == [(key, alert(7))]
    spool.ack(key)
    assert list(AlertSpool(spool_dir, 1_000_000).pending()) == []


def test_order_ack_and_sequence_across_restarts(tmp_path: Path) -> None:
    spool = AlertSpool(tmp_path, 1_000_000)
    keys = [spool.append(alert(n)) for n in range(1, 6)]
    spool.ack(keys[1])
    spool.ack(keys[1])  # twice: harmless
    assert [e for _, e in spool.pending()] == [alert(1), alert(3), alert(4), alert(5)]
    again = AlertSpool(tmp_path, 1_000_000)
    later = again.append(alert(6))
    assert [e for _, e in again.pending()] == [alert(1), alert(3), alert(4), alert(5), alert(6)]
    assert later > keys[-1]  # sequence continues after a restart, so order holds


def test_the_same_alert_appended_twice_is_stored_once(tmp_path: Path) -> None:
    spool = AlertSpool(tmp_path, 1_000_000)
    first = spool.append(alert(1))
    assert spool.append(alert(1)) == first
    cleared = spool.append(alert(1, "alarm-cleared"))
    assert cleared != first
    assert AlertSpool(tmp_path, 1_000_000).append(alert(1)) == first  # also across restarts
    assert len(list(spool.pending())) == 2


def test_full_spool_drops_the_oldest_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    size = len(json.dumps(alert(1).to_json(), separators=(",", ":"), sort_keys=True))
    spool = AlertSpool(tmp_path, size * 3)
    for n in range(1, 6):
        spool.append(alert(n))
    assert [e for _, e in spool.pending()] == [alert(3), alert(4), alert(5)]
    assert spool.size_bytes <= size * 3
    assert sum(1 for r in caplog.records if r.levelno == logging.ERROR and "SPOOL FULL" in r.message) == 2
    with pytest.raises(SpoolError):
        AlertSpool(tmp_path / "tiny", 10).append(alert(1))


def test_corrupt_and_truncated_files_are_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = AlertSpool(tmp_path, 1_000_000)
    keys = [spool.append(alert(n)) for n in range(1, 4)]
    whole = (tmp_path / keys[1]).read_bytes()
    (tmp_path / keys[1]).write_bytes(whole[: len(whole) // 2])  # truncated
    (tmp_path / keys[2]).write_bytes(b"\x00\xff garbage")
    (tmp_path / f".{9:016d}.alert.json.tmp").write_bytes(b'{"violationId": ')  # interrupted write
    caplog.set_level(logging.WARNING)
    restarted = AlertSpool(tmp_path, 1_000_000)
    assert list(restarted.pending()) == [(keys[0], alert(1))]
    aside = sorted(p.name for p in (tmp_path / "corrupt").iterdir())
    assert aside == sorted([keys[1], keys[2], f".{9:016d}.alert.json.tmp"])
    assert sum("moved" in r.message for r in caplog.records) == 3


def test_file_corrupted_while_running_is_set_aside_at_replay(tmp_path: Path) -> None:
    spool = AlertSpool(tmp_path, 1_000_000)
    good, bad = spool.append(alert(1)), spool.append(alert(2))
    (tmp_path / bad).write_text("[1, 2")
    assert list(spool.pending()) == [(good, alert(1))]
    assert (tmp_path / "corrupt" / bad).exists()
    assert len(spool) == 1


@pytest.mark.parametrize("temp", [".{key}.k2x_9q.tmp", ".{key}.tmp"])  # fileio's name; earlier versions'
def test_complete_interrupted_write_is_kept(tmp_path: Path, temp: str) -> None:
    # The process died between fsync of the temporary file and its rename.
    tmp_path.joinpath(temp.format(key=f"{4:016d}.alert.json")).write_text(json.dumps(alert(4).to_json()))
    spool = AlertSpool(tmp_path, 1_000_000)
    assert list(spool.pending()) == [(f"{4:016d}.alert.json", alert(4))]
    assert spool.append(alert(5)) == f"{5:016d}.alert.json"


def test_directory_and_files_are_private(tmp_path: Path) -> None:
    spool_dir = tmp_path / "a" / "spool"
    spool = AlertSpool(spool_dir, 1_000_000)
    key = spool.append(alert(1))
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((spool_dir / key).stat().st_mode) == 0o600
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    AlertSpool(loose, 1_000_000)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def test_alerts_are_kept_in_memory_while_the_disk_fails_and_written_once_it_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    spool = AlertSpool(spool_dir, 1_000_000)
    spool_dir.rmdir()
    spool_dir.write_text("not a directory")  # every write into it fails, even as root (like a full disk)
    with caplog.at_level(logging.ERROR):
        second = spool.append(alert(2))
    assert "kept in memory" in caplog.text
    assert list(spool.pending()) == [(second, alert(2))]  # not lost, still sendable
    spool_dir.unlink()
    spool_dir.mkdir()
    third = spool.append(alert(3))  # the disk works again: the kept alert is written first
    assert sorted(p.name for p in spool_dir.iterdir()) == [second, third]
    assert list(AlertSpool(spool_dir, 1_000_000).pending()) == [(second, alert(2)), (third, alert(3))]


def test_an_unusable_directory_at_start_does_not_stop_the_spool(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")  # read-only disk alike: mkdir fails
    spool = AlertSpool(blocker / "alerts", 1_000_000)
    key = spool.append(alert(1))
    assert list(spool.pending()) == [(key, alert(1))]
    spool.ack(key)
    assert list(spool.pending()) == [] and len(spool) == 0
