"""Feedback files: valid numbers, every kind of bad file (made for real), logging once per problem."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from ddcustom.device.sample import Feedback
from ddcustom.device.sources.feedback_files import (
    MAX_FEEDBACK_BYTES,
    FeedbackProblem,
    FeedbackReader,
    parse_feedback_number,
    read_feedback_file,
)

T = TypeVar("T")
GUARD_SECONDS = 10  # generous: a regression that blocks fails here instead of hanging the suite


def promptly(call: Callable[[], T]) -> T:
    """Run ``call`` in a thread; fail the test if it has not returned within GUARD_SECONDS."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(GUARD_SECONDS)
    if worker.is_alive():
        pytest.fail("the feedback read blocked")
    if errors:
        raise errors[0]
    return result[0]


def problem_of(path: Path) -> str:
    with pytest.raises(FeedbackProblem) as exc:
        promptly(lambda: read_feedback_file(str(path)))
    return exc.value.kind


@pytest.mark.parametrize(
    "text, value", [("85", 85.0), ("180.5\n", 180.5), (" 0 ", 0.0), ("1e2", 100.0), ("42\r\n", 42.0)]
)
def test_valid_numbers(text: str, value: float) -> None:
    assert parse_feedback_number(text) == value


@pytest.mark.parametrize(
    "text, kind",
    [
        ("", "empty"),
        ("  \n", "empty"),
        ("nan", "not a finite number"),
        ("NaN", "not a finite number"),
        ("inf", "not a finite number"),
        ("-Infinity", "not a finite number"),
        ("-1", "negative"),
        ("-0.5", "negative"),
        ("abc", "not a number"),
        ("12 13", "not a number"),
        ("1_000", "not a number"),
        ("0x10", "not a number"),
    ],
)
def test_invalid_numbers(text: str, kind: str) -> None:
    with pytest.raises(FeedbackProblem) as exc:
        parse_feedback_number(text)
    assert exc.value.kind == kind


def test_regular_file_and_symlink_to_regular_file(tmp_path: Path) -> None:
    target = tmp_path / "load"
    target.write_text("85\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_feedback_file(str(target)).value == 85.0
    assert read_feedback_file(str(link)).value == 85.0  # followed, documented


def test_missing_file(tmp_path: Path) -> None:
    assert problem_of(tmp_path / "absent") == "missing"


def test_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: a blocking open would wait forever
    assert problem_of(fifo) == "not a regular file"


def test_symlink_to_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to(fifo)
    assert problem_of(tmp_path / "link") == "not a regular file"


def test_symlink_to_dev_zero_does_not_hang(tmp_path: Path) -> None:
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert problem_of(tmp_path / "zero") == "not a regular file"


def test_directory(tmp_path: Path) -> None:
    assert problem_of(tmp_path) == "not a regular file"


def test_huge_file(tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    with huge.open("wb") as f:
        f.truncate(10 * 1024 * 1024 * 1024)  # sparse 10 GiB
    assert problem_of(huge) == "too large"
    just_too_big = tmp_path / "65"
    just_too_big.write_text("1" * (MAX_FEEDBACK_BYTES + 1))
    assert problem_of(just_too_big) == "too large"


def test_binary_garbage(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\xff\xfe12")
    assert problem_of(garbage) == "not a number"


def test_unreadable(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root reads any file; a dangling permission test would pass without checking anything
        secret = tmp_path / "loop"
        secret.symlink_to(secret)  # ELOOP: an OS error other than "missing"
    else:
        secret = tmp_path / "secret"
        secret.write_text("1")
        secret.chmod(0)
    assert problem_of(secret) == "unreadable"


def test_reader_logs_each_problem_once_and_recovery(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    load, inference, outside = tmp_path / "load", tmp_path / "inference", tmp_path / "outside"
    inference.write_text("180")
    outside.write_text("0")
    reader = FeedbackReader(str(load), str(inference), str(outside))
    caplog.set_level(logging.INFO, logger="ddcustom.device.sources.feedback_files")

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records]

    assert reader.read() == Feedback(None, 180.0, 0.0)
    assert reader.read() == Feedback(None, 180.0, 0.0)
    assert len(messages()) == 1
    assert "GpuLoadFeedbackFile" in messages()[0] and "missing" in messages()[0]
    assert caplog.records[0].levelno == logging.WARNING

    load.write_text("nan")
    assert reader.read().gpu_load_per_inference is None
    assert reader.read().gpu_load_per_inference is None
    assert len(messages()) == 2 and "not a finite number" in messages()[1]

    load.write_text("85")
    assert reader.read() == Feedback(85.0, 180.0, 0.0)
    assert reader.read().gpu_load_per_inference == 85.0
    assert len(messages()) == 3 and "valid number again" in messages()[2]
    assert caplog.records[2].levelno == logging.INFO

    load.write_text("nan")
    reader.read()
    assert len(messages()) == 4  # the same problem after a recovery is news again


def test_a_missing_busy_outside_file_is_normal_without_the_meter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Applications that write the two article files themselves have no third file: not a warning.
    load, inference, outside = tmp_path / "load", tmp_path / "inference", tmp_path / "outside"
    load.write_text("20")
    inference.write_text("45")
    reader = FeedbackReader(str(load), str(inference), str(outside))
    caplog.set_level(logging.INFO, logger="ddcustom.device.sources.feedback_files")

    assert reader.read() == Feedback(20.0, 45.0, None)
    assert reader.read() == Feedback(20.0, 45.0, None)
    [missing] = caplog.records
    assert missing.levelno == logging.INFO and "GpuBusyOutsideFeedbackFile" in missing.getMessage()

    outside.write_text("garbage")  # a garbled file is a problem, whichever file it is
    assert reader.read().gpu_busy_outside_inference is None
    assert caplog.records[-1].levelno == logging.WARNING and "not a number" in caplog.records[-1].getMessage()

    outside.write_text("17.5\n")
    assert reader.read() == Feedback(20.0, 45.0, 17.5)


def test_a_busy_outside_file_no_longer_rewritten_means_the_meter_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The application was killed (and a miner may run under its name): nothing explains GPU work any
    # more, so the busiest GPU's busy % measured by the component takes the meter's place.
    load, inference, outside = meter_files(tmp_path)
    now = [100.0]  # the monotonic clock
    reader = FeedbackReader(str(load), str(inference), str(outside), 30, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="ddcustom.device.sources.feedback_files")

    assert reader.read(gpu_busiest_percent=3.0).gpu_busy_outside_inference == 0.0  # the meter's value
    now[0] += 25
    assert reader.read(gpu_busiest_percent=27.0).gpu_busy_outside_inference == 0.0  # not yet stale
    now[0] += 6
    assert reader.read(gpu_busiest_percent=27.0) == Feedback(0.1, 0.8, 27.0)
    assert reader.read(gpu_busiest_percent=None).gpu_busy_outside_inference is None  # no GPU reading
    [stopped] = caplog.records
    assert stopped.levelno == logging.WARNING and "inference meter has stopped" in stopped.getMessage()
    assert "not rewritten for 31 s" in stopped.getMessage()

    replace_atomically(outside, "1.5")  # the application is back; the meter's writes are replaces
    assert reader.read(gpu_busiest_percent=27.0).gpu_busy_outside_inference == 1.5
    assert caplog.records[-1].levelno == logging.INFO and "writes again" in caplog.records[-1].getMessage()
    assert len(caplog.records) == 2

    reader.meter_stale_seconds = 0  # turned off: an unchanged file is taken as it is
    now[0] += 3600
    assert reader.read(gpu_busiest_percent=27.0).gpu_busy_outside_inference == 1.5


@pytest.mark.parametrize("silence", ["delete", "garble", "directory"])
def test_a_busy_outside_file_silenced_after_it_was_seen_means_the_meter_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, silence: str
) -> None:
    # Deleting or spoiling the file is the easiest way to silence it: once seen, any problem is a stop.
    load, inference, outside = meter_files(tmp_path)
    reader = FeedbackReader(str(load), str(inference), str(outside), 30)
    assert reader.read(gpu_busiest_percent=40.0).gpu_busy_outside_inference == 0.0

    outside.unlink()
    if silence == "garble":
        outside.write_text("x")
    elif silence == "directory":
        outside.mkdir()

    assert reader.read(gpu_busiest_percent=40.0).gpu_busy_outside_inference == 40.0
    assert any("meter has stopped" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    reader.meter_stale_seconds = 0
    assert reader.read(gpu_busiest_percent=40.0).gpu_busy_outside_inference is None


def test_clock_steps_neither_hide_nor_fake_a_stopped_meter(tmp_path: Path) -> None:
    # File times are wall-clock times; a device's clock jumps (NTP at boot, no RTC). Only changes count.
    load, inference, outside = meter_files(tmp_path)
    future = time.time() + 86400
    os.utime(outside, (future, future))  # written "tomorrow": an hour-long freeze must still show
    now = [0.0]
    reader = FeedbackReader(str(load), str(inference), str(outside), 30, clock=lambda: now[0])
    assert reader.read(gpu_busiest_percent=50.0).gpu_busy_outside_inference == 0.0
    now[0] += 3600
    assert reader.read(gpu_busiest_percent=50.0).gpu_busy_outside_inference == 50.0

    ancient = time.time() - 86400
    replace_atomically(outside, "2")
    os.utime(outside, (ancient, ancient))  # written "yesterday" but just now: a live meter
    assert reader.read(gpu_busiest_percent=50.0).gpu_busy_outside_inference == 2.0


def meter_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The three files as a running meter leaves them: load 0.1, 0.8 ms, 0 points outside inference."""
    files = tmp_path / "load", tmp_path / "inference", tmp_path / "outside"
    for path, text in zip(files, ("0.1", "0.8", "0")):
        path.write_text(text)
    return files


def replace_atomically(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)
