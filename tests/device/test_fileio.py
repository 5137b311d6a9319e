"""Bounded reads and atomic writes (fileio); the feedback, spool and source tests use them in place."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddcustom.device.fileio import NotRegularFile, read_bounded, read_regular, write_atomic


def test_a_bounded_read_goes_on_to_the_limit_or_the_end(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 12_000)  # 3 MB: several reads of at most 1 MB
    assert read_bounded(big, 2_500_001) == big.read_bytes()[:2_500_001]
    assert read_bounded(big, 10**8) == big.read_bytes()
    # /proc answers a page per read: a table longer than a page is read to its end
    maps = read_bounded("/proc/self/maps", 1 << 24)
    assert len(maps) > 4096 and maps.endswith(b"\n")


def test_a_process_s_stat_and_command_line_come_whole_in_one_read() -> None:
    argv = ["x" * 3000, "y" * 500]  # longer than /proc's usual page-sized answers to stat
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", *argv], stdin=subprocess.PIPE
    )
    try:
        wanted = [sys.executable, "-c", "import sys; sys.stdin.read()", *argv]
        expected = b"".join(arg.encode() + b"\0" for arg in wanted)
        deadline = time.monotonic() + 30
        while read_bounded(f"/proc/{child.pid}/cmdline", 1 << 16) != expected:  # until the child has exec'd
            assert time.monotonic() < deadline, "the child did not start"
            time.sleep(0.02)
        assert read_bounded(f"/proc/{child.pid}/cmdline", 4096, one_read=True) == expected[:4096]
        stat_line = read_bounded(f"/proc/{child.pid}/stat", 4096, one_read=True)
        assert stat_line.startswith(f"{child.pid} (".encode()) and stat_line.endswith(b"\n")
    finally:
        child.kill()
        child.wait(30)


def test_only_regular_files_are_read_when_asked(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # opened without O_NONBLOCK, this read would wait for a writer
    with pytest.raises(NotRegularFile, match="a FIFO"):
        read_regular(tmp_path / "fifo", 10)
    (tmp_path / "file").write_bytes(b"12\n")
    data, info = read_regular(tmp_path / "file", 10)
    assert data == b"12\n" and info.st_ino == (tmp_path / "file").stat().st_ino


@pytest.mark.parametrize("durable", [True, False])
def test_an_atomic_write_replaces_the_file_with_the_mode_asked(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"old")
    write_atomic(path, b"new", durable=durable, mode=0o640)
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_a_failed_atomic_write_leaves_the_old_content_and_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "taken", b"data", durable=True)
    assert [p.name for p in tmp_path.iterdir()] == ["taken"] and (tmp_path / "taken").is_dir()
