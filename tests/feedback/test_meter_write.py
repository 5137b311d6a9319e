from __future__ import annotations

import math
import os
import stat
import threading
from pathlib import Path

import pytest

from ddcustom.device.sources.feedback_files import parse_feedback_number
from ddcustom.feedback import write_feedback_value


@pytest.mark.parametrize(
    "value, text",
    [(85, "85\n"), (180.0, "180\n"), (12.5, "12.5\n"), (0, "0\n"), (0.1234, "0.123\n"), (99.9996, "100\n")],
)
def test_values_are_written_as_plain_numbers(tmp_path: Path, value: float, text: str) -> None:
    path = tmp_path / "gpu_load_fb"

    write_feedback_value(str(path), value)

    assert path.read_text() == text
    assert parse_feedback_number(path.read_text()) == pytest.approx(float(text))  # what the component reads


def test_file_mode_is_0644_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "fb"
    old = os.umask(0o077)
    try:
        write_feedback_value(str(path), 20)
    finally:
        os.umask(old)

    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, 1e16])
def test_bad_values_are_refused_and_the_old_file_is_kept(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "fb"
    write_feedback_value(str(path), 45)

    with pytest.raises(ValueError, match="feedback value"):
        write_feedback_value(str(path), bad)

    assert path.read_text() == "45\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fb"]


def test_a_missing_directory_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_feedback_value(str(tmp_path / "no-such-dir" / "fb"), 1)
    assert list(tmp_path.iterdir()) == []


def test_replacing_a_file_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "fb"
    for value in range(20):
        write_feedback_value(str(path), value)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["fb"]
    assert path.read_text() == "19\n"


def test_a_concurrent_reader_never_sees_a_partial_or_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "gpu_inference_fb"
    values = ["85\n", "123456.789\n"]
    write_feedback_value(str(path), 85)
    seen: set[str] = set()
    stop = threading.Event()

    def read_all_the_time() -> None:
        while not stop.is_set():
            with open(path) as f:
                seen.add(f.read())

    reader = threading.Thread(target=read_all_the_time, daemon=True)
    reader.start()
    try:
        for i in range(1500):
            write_feedback_value(str(path), float(values[i % 2]))
    finally:
        stop.set()
        reader.join(30)
    assert not reader.is_alive()

    assert seen <= set(values)
    assert seen == set(values)  # the reader did run while the values changed
