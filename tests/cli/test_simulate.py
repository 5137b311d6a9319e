"""``ddcustom simulate``: both feedback files or neither, and a clear message (exit 2) when it cannot.

Failures are forced with real paths that fail for root too (tests may run as root, where permissions
do not stop writes): a folder that does not exist, a regular file where a folder should be, a directory
where a file should be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddcustom.cli.main import main


def simulate(load: Path, time: Path, scenario: str = "mining") -> int:
    return main(["simulate", scenario, "--load-file", str(load), "--time-file", str(time)])


def test_both_files_are_written_readable_by_others(tmp_path: Path) -> None:
    assert simulate(tmp_path / "load", tmp_path / "time") == 0
    assert (tmp_path / "load").read_text() == "85\n" and (tmp_path / "time").read_text() == "180\n"
    assert (tmp_path / "load").stat().st_mode & 0o777 == 0o644
    assert sorted(os.listdir(tmp_path)) == ["load", "time"]


def test_a_missing_folder_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "load").write_text("20\n")
    assert simulate(tmp_path / "load", tmp_path / "missing" / "time") == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'missing' / 'time'}: No such file or directory" in err
    assert "neither file was changed" in err
    assert (tmp_path / "load").read_text() == "20\n"
    assert sorted(os.listdir(tmp_path)) == ["load"]


def test_a_parent_that_is_a_regular_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    assert simulate(tmp_path / "file" / "load", tmp_path / "time") == 2
    assert f"cannot write {tmp_path / 'file' / 'load'}: Not a directory" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_a_directory_in_place_of_the_first_file_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "load").mkdir()
    (tmp_path / "time").write_text("45\n")
    assert simulate(tmp_path / "load", tmp_path / "time") == 2
    assert f"cannot write {tmp_path / 'load'}: Is a directory" in capsys.readouterr().err
    assert (tmp_path / "time").read_text() == "45\n"
    assert sorted(os.listdir(tmp_path)) == ["load", "time"] and not os.listdir(tmp_path / "load")


def test_when_the_second_file_fails_the_first_gets_its_previous_content_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The load file is renamed into place first; the time file's rename then fails (a directory).
    (tmp_path / "load").write_text("20\n")
    before = (tmp_path / "load").stat()
    (tmp_path / "time").mkdir()
    assert simulate(tmp_path / "load", tmp_path / "time") == 2
    assert f"cannot write {tmp_path / 'time'}: Is a directory" in capsys.readouterr().err
    assert (tmp_path / "load").read_text() == "20\n"
    assert (tmp_path / "load").stat().st_ino == before.st_ino  # the very file, owner and mode too
    assert sorted(os.listdir(tmp_path)) == ["load", "time"]  # no temp file or backup left


def test_when_the_second_file_fails_a_first_file_that_was_new_is_removed(tmp_path: Path) -> None:
    (tmp_path / "time").mkdir()
    assert simulate(tmp_path / "load", tmp_path / "time") == 2
    assert sorted(os.listdir(tmp_path)) == ["time"]


def test_a_symbolic_link_in_place_of_the_first_file_is_put_back_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("20\n")
    (tmp_path / "load").symlink_to("real")
    (tmp_path / "time").mkdir()
    assert simulate(tmp_path / "load", tmp_path / "time") == 2
    assert os.readlink(tmp_path / "load") == "real" and (tmp_path / "real").read_text() == "20\n"


def test_the_same_file_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate(tmp_path / "fb", tmp_path / "." / "fb") == 2
    assert "are the same file" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_the_command_prints_no_traceback(tmp_path: Path) -> None:
    files = ["--load-file", str(tmp_path / "no" / "load"), "--time-file", str(tmp_path / "time")]
    done = subprocess.run(
        [sys.executable, "-m", "ddcustom", "simulate", "normal", *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"ddcustom simulate: cannot write {tmp_path / 'no' / 'load'}: ")
