"""The baseline store: learning, forgetting, bounds, restarts, the file format, and two writers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from ddcustom.device.baseline.cycle import SEEN_RESOLUTION, CycleBaseline
from ddcustom.device.baseline.file import (
    APPROVED,
    LEARNED,
    BaselineCorrupt,
    BaselineError,
    BaselineFull,
    Entry,
    compact_json,
)
from ddcustom.device.baseline.kinds import KINDS
from ddcustom.device.baseline.kinds.kind import Context, Items, Kind, MergeRule
from ddcustom.device.baseline.store import BaselineStore
from ddcustom.device.baseline.sync import TOMBSTONE_SECONDS
from ddcustom.device.sample import Sample
from ddcustom.device.sources.identity import ExecutableIdentity
from support.baseline import ENDPOINT, EXECUTABLE, KIND_NAMES, LISTENING, Observing
from support.procfs import read_baseline_file

T0 = 1_800_000_000.0
DAY = 86400.0
PYTHON = ExecutableIdentity(path="/usr/bin/python3.11", sha256="a" * 64)
APP = ExecutableIdentity(path="/opt/app/bin/server", sha256="b" * 64)
MINER = ExecutableIdentity(path="/tmp/.x/kworker", sha256="c" * 64)
SCRIPT = ExecutableIdentity(
    path="/usr/bin/python3.11", sha256="a" * 64, script="/dev/shm/x.py", script_sha256="d" * 64
)


def component(path: Path, now: float = T0, **kwargs: Any) -> BaselineStore:
    kwargs.setdefault("learning_seconds", DAY)
    return BaselineStore(path, now=now, **kwargs)


def operator(path: Path, now: float) -> BaselineStore:
    """The store as the command line opens it."""
    return BaselineStore(path, now=now, operator=True)


def on_disk(path: Path) -> dict[str, Any]:
    return read_baseline_file(path)


def disk_keys(path: Path, kind: str) -> set[str]:
    return set(on_disk(path)["entries"][kind])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "baseline.json"


# ---- learning ------------------------------------------------------------------------------------


def test_learning_adds_and_afterwards_new_items_stay_new(path: Path) -> None:
    store = component(path)
    seen = Observing(store)
    assert store.learning(T0) and store.learning(T0 + DAY - 1) and not store.learning(T0 + DAY)
    assert seen.executable(PYTHON, T0 + 10)
    assert seen.endpoint("203.0.113.7", 443, T0 + 10)
    assert seen.listening("tcp", 22, T0 + 10)

    after = T0 + DAY + 5
    assert seen.executable(PYTHON, after)
    assert seen.endpoint("203.0.113.200", 443, after)  # the same /24
    assert seen.listening("tcp", 22, after)
    assert not seen.executable(MINER, after)
    assert not seen.executable(SCRIPT, after)  # python3 running another script
    assert not seen.endpoint("198.51.100.9", 443, after)
    assert not seen.endpoint("203.0.113.7", 3333, after)
    assert not seen.listening("udp", 22, after)
    # new items are not added: still new at the next cycle
    assert not seen.executable(MINER, after + 10)
    assert set(store.entries(EXECUTABLE)) == {PYTHON.key}
    assert store.entries(EXECUTABLE)[PYTHON.key].last_seen == after
    assert set(store.entries(ENDPOINT)) == {"203.0.113.0/24:443"}
    assert store.entries(ENDPOINT)["203.0.113.0/24:443"].details == {"address": "203.0.113.7", "port": 443}


def test_no_learning_period_means_everything_is_new(path: Path) -> None:
    store = component(path, learning_seconds=0)
    seen = Observing(store)
    assert not store.learning(T0)
    assert not seen.executable(PYTHON, T0)
    assert not seen.listening("tcp", 22, T0)


# ---- persistence ---------------------------------------------------------------------------------


def test_the_baseline_survives_a_restart_and_the_learning_period_continues(path: Path) -> None:
    store = component(path)
    seen = Observing(store)
    seen.executable(APP, T0 + 5)
    seen.endpoint("203.0.113.7", 443, T0 + 5)
    store.close(T0 + 6)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    restarted = component(path, now=T0 + 100)
    seen_restarted = Observing(restarted)
    assert restarted.learning_started == T0
    assert restarted.learning(T0 + DAY - 1) and not restarted.learning(T0 + DAY)
    assert seen_restarted.executable(APP, T0 + DAY)
    assert seen_restarted.endpoint("203.0.113.8", 443, T0 + DAY)
    assert not seen_restarted.executable(MINER, T0 + DAY)
    assert on_disk(path)["format"] == 1


def test_changes_are_written_at_most_every_flush_seconds(path: Path) -> None:
    store = component(path, flush_seconds=60)
    seen = Observing(store)
    seen.executable(APP, T0 + 1)
    store.tick(T0 + 30)
    assert disk_keys(path, EXECUTABLE) == set()
    store.tick(T0 + 61)
    assert disk_keys(path, EXECUTABLE) == {APP.key}


def test_last_seen_moves_are_written_only_when_they_matter(path: Path) -> None:
    store = component(path, learning_seconds=0, flush_seconds=60)
    seen = Observing(store)
    cli = operator(path, T0)
    cli.approve(LISTENING, "tcp:22", {"protocol": "tcp", "port": 22}, T0)
    store.tick(T0)
    revision = on_disk(path)["revision"]
    for step in range(1, 30):
        assert seen.listening("tcp", 22, T0 + step * 100)
        store.tick(T0 + step * 100)
    assert on_disk(path)["revision"] == revision  # 2900 s of refreshes: nothing worth a write
    later = T0 + SEEN_RESOLUTION + 10
    seen.listening("tcp", 22, later)
    store.tick(later + 60)
    assert on_disk(path)["entries"][LISTENING]["tcp:22"]["last_seen"] == int(later)


def test_entries_not_seen_for_forget_seconds_are_forgotten_but_approvals_stay(path: Path) -> None:
    store = component(path, forget_seconds=10 * DAY)
    seen = Observing(store)
    seen.executable(APP, T0 + 1)
    seen.executable(PYTHON, T0 + 1)
    store.flush(T0 + 2)
    operator(path, T0 + 3).approve(LISTENING, "tcp:22", {}, T0 + 3)
    store.tick(T0 + 4)
    seen.executable(PYTHON, T0 + 9 * DAY)  # seen again: kept
    store.tick(T0 + 11 * DAY)
    assert set(store.entries(EXECUTABLE)) == {PYTHON.key}
    assert disk_keys(path, EXECUTABLE) == {PYTHON.key}
    assert disk_keys(path, LISTENING) == {"tcp:22"}
    assert not seen.executable(APP, T0 + 11 * DAY)


def test_entries_are_bounded_per_kind_keeping_the_recently_seen(path: Path) -> None:
    store = component(path, max_entries=100)
    seen = Observing(store)
    for i in range(250):
        seen.endpoint(f"10.{i}.0.1", 443, T0 + i)
    store.flush(T0 + 300)
    keys = disk_keys(path, ENDPOINT)
    assert len(keys) <= 100 and len(store.entries(ENDPOINT)) <= 100
    assert "10.249.0.0/24:443" in keys and "10.0.0.0/24:443" not in keys


def test_the_file_is_bounded_in_bytes_and_approvals_survive(path: Path) -> None:
    store = component(path, max_bytes=20_000)
    seen = Observing(store)
    operator(path, T0).approve(LISTENING, "tcp:22", {}, T0)
    store.tick(T0)
    for i in range(500):
        seen.executable(ExecutableIdentity(path=f"/usr/lib/tool{i}", sha256=f"{i:064x}"), T0 + i)
    store.flush(T0 + 600)
    assert path.stat().st_size <= 20_000
    kept = disk_keys(path, EXECUTABLE)
    assert 10 < len(kept) < 500
    assert ExecutableIdentity(path="/usr/lib/tool499", sha256=f"{499:064x}").key in kept  # the latest
    assert disk_keys(path, LISTENING) == {"tcp:22"}


def test_approvals_beyond_the_bounds_are_refused(path: Path) -> None:
    cli = operator(path, T0)
    cli.max_entries = 3
    for port in (1, 2, 3):
        cli.approve(LISTENING, f"tcp:{port}", {}, T0)
    with pytest.raises(BaselineFull):
        cli.approve(LISTENING, "tcp:4", {}, T0)
    assert disk_keys(path, LISTENING) == {"tcp:1", "tcp:2", "tcp:3"}
    tiny = BaselineStore(path, now=T0, max_bytes=path.stat().st_size + 40)
    with pytest.raises(BaselineFull):
        tiny.approve(LISTENING, "tcp:5", {}, T0)
    assert disk_keys(path, LISTENING) == {"tcp:1", "tcp:2", "tcp:3"}


def test_the_operator_view_leaves_forgetting_and_bounds_to_the_component(path: Path) -> None:
    store = component(path, max_entries=50, forget_seconds=DAY)
    seen = Observing(store)
    for i in range(40):
        seen.listening("tcp", 1000 + i, T0 + 1)
    store.flush(T0 + 1)
    revision = on_disk(path)["revision"]
    late = T0 + 100 * DAY  # every learned entry is past the component's forget_seconds
    cli = BaselineStore(path, now=late, operator=True, max_entries=10)
    assert len(cli.entries(LISTENING)) == 40 and on_disk(path)["revision"] == revision  # nothing written
    cli.approve(LISTENING, "tcp:22", {}, late)
    assert len(disk_keys(path, LISTENING)) == 41
    store.tick(late + 1)  # the component applies its own configuration
    assert disk_keys(path, LISTENING) == {"tcp:22"}


def test_overlong_keys_are_not_kept(path: Path) -> None:
    store = component(path)
    seen = Observing(store)
    bloated = ExecutableIdentity(path="/tmp/" + "x" * 5000, sha256="e" * 64)
    assert seen.executable(bloated, T0 + 1)  # learning: counts as known this once
    assert not store.entries(EXECUTABLE)


def test_observing_needs_no_disk_and_tick_never_raises(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = component(path, flush_seconds=0)
    seen = Observing(store)
    seen.executable(APP, T0 + 1)
    store.flush(T0 + 1)
    shutil.rmtree(path.parent)
    path.parent.write_text("a file where the state directory was")  # the directory cannot come back
    assert seen.executable(APP, T0 + DAY)
    assert seen.executable(PYTHON, T0 + 2)
    with caplog.at_level(logging.ERROR):
        for step in range(3):
            store.tick(T0 + 10 + step)
    assert sum("baseline" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR) == 1
    assert set(store.entries(EXECUTABLE)) == {APP.key, PYTHON.key}
    with pytest.raises(BaselineError):
        store.flush(T0 + 20)


# ---- the file format -----------------------------------------------------------------------------


def test_a_newer_format_is_refused_and_left_alone(path: Path) -> None:
    path.parent.mkdir()
    text = json.dumps({"format": 2, "entries": {}})
    path.write_text(text)
    for open_store in (lambda: component(path), lambda: operator(path, T0)):
        with pytest.raises(BaselineError, match="format 2"):
            open_store()
    assert path.read_text() == text


def test_a_corrupt_file_is_moved_aside_by_the_component_and_refused_by_the_operator(path: Path) -> None:
    path.parent.mkdir()
    path.write_text('{"format": 1, "entries": {"executable": {"x": ')  # not what we write
    with pytest.raises(BaselineCorrupt):
        operator(path, T0)
    assert path.read_text().startswith('{"format": 1')
    store = component(path, now=T0)
    assert store.learning_started == T0
    aside = path.with_name(f"baseline.json.corrupt-{int(T0)}")
    assert aside.read_text().startswith('{"format": 1')
    assert on_disk(path)["learning_started"] == T0


def test_entries_that_do_not_fit_the_format_are_dropped_and_the_rest_kept(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path.parent.mkdir()
    good = [EXECUTABLE, "good", T0, T0, "learned", {"path": "/x"}]
    lines = [
        {"format": 1, "learning_started": T0, "epoch": 0, "entries": 6, "forgotten": 2},
        good,
        [EXECUTABLE, "bad-origin", T0, T0, "trusted", {}],
        [EXECUTABLE, "bad-time", T0, "yesterday", "learned", {}],
        [EXECUTABLE, "bad-details", T0, T0, "learned", {"path": ["/x"]}],
        ["unknown-kind", "k", T0, T0, "learned", {}],
        [EXECUTABLE, "too-short"],
        ["forgotten", EXECUTABLE, "gone", T0],
        ["forgotten", "unknown-kind", "gone", T0],
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with caplog.at_level(logging.WARNING):
        store = operator(path, T0)
    assert set(store.entries(EXECUTABLE)) == {"good"}
    assert any("5 entries" in record.getMessage() for record in caplog.records)


def test_a_file_cut_short_is_corrupt(path: Path) -> None:
    store = component(path)
    seen = Observing(store)
    seen.listening("tcp", 22, T0 + 1)
    seen.listening("tcp", 23, T0 + 1)
    store.flush(T0 + 1)
    whole = path.read_text()
    path.write_text(whole[: whole.rindex("[")])  # the last entry lost
    with pytest.raises(BaselineCorrupt, match="cut short: 1 entries"):
        operator(path, T0 + 2)


def test_paths_that_are_not_utf8_are_kept(path: Path) -> None:
    odd = os.fsdecode(b"/opt/\xff\xfe name/bin")
    identity = ExecutableIdentity(path=odd, sha256="e" * 64)
    assert identity.key == "e" * 64 + " /opt/%FF%FE%20name/bin"
    store = component(path)
    seen = Observing(store)
    seen.executable(identity, T0 + 1)
    store.close(T0 + 2)
    restarted = component(path, now=T0 + 3)
    seen_restarted = Observing(restarted)
    assert restarted.entries(EXECUTABLE)[identity.key].details["path"] == odd
    assert seen_restarted.executable(identity, T0 + DAY)


# ---- the component and the command line writing together -----------------------------------------


def test_an_approval_reaches_the_running_component_at_its_next_tick(path: Path) -> None:
    store = component(path, learning_seconds=0)
    seen = Observing(store)
    assert not seen.executable(MINER, T0 + 1)
    operator(path, T0 + 2).approve(EXECUTABLE, MINER.key, MINER.details(), T0 + 2)
    store.tick(T0 + 3)
    assert seen.executable(MINER, T0 + 4)


def test_a_forgotten_entry_stays_forgotten_when_the_component_flushes(path: Path) -> None:
    store = component(path, flush_seconds=0)
    seen = Observing(store)
    seen.executable(MINER, T0 + 1)
    store.flush(T0 + 2)
    assert operator(path, T0 + 3).forget([(EXECUTABLE, MINER.key)], T0 + 3) == [(EXECUTABLE, MINER.key)]
    seen.executable(MINER, T0 + DAY + 1)  # before it reloaded: still known in memory
    store.tick(T0 + DAY + 2)
    assert MINER.key not in disk_keys(path, EXECUTABLE)
    assert not seen.executable(MINER, T0 + DAY + 3)
    store.tick(T0 + DAY + 4)
    assert MINER.key not in disk_keys(path, EXECUTABLE)


def test_an_entry_learned_but_not_yet_written_when_forgotten_is_dropped(path: Path) -> None:
    store = component(path, flush_seconds=3600)
    seen = Observing(store)
    seen.executable(PYTHON, T0 + 1)
    store.flush(T0 + 1)
    seen.executable(MINER, T0 + 5)  # learned, waiting for the next flush
    cli = operator(path, T0 + 6)
    assert cli.forget([(EXECUTABLE, MINER.key)], T0 + 6) == []  # not on disk yet
    store.tick(T0 + 7)  # the file changed: merge
    assert MINER.key not in store.entries(EXECUTABLE)
    assert disk_keys(path, EXECUTABLE) == {PYTHON.key}
    # observed again during learning, after the forget was seen: learned again
    assert seen.executable(MINER, T0 + 8)
    store.flush(T0 + 9)
    assert disk_keys(path, EXECUTABLE) == {PYTHON.key, MINER.key}


def test_no_update_is_lost_when_both_write(path: Path) -> None:
    store = component(path, flush_seconds=3600)
    seen = Observing(store)
    seen.executable(APP, T0 + 1)  # pending in the component
    cli = operator(path, T0 + 2)
    cli.approve(LISTENING, "tcp:22", {}, T0 + 2)
    cli.approve(EXECUTABLE, APP.key, APP.details(), T0 + 2)  # the same key, approved meanwhile
    seen.endpoint("203.0.113.7", 443, T0 + 3)
    store.close(T0 + 4)
    saved = on_disk(path)["entries"]
    assert set(saved[EXECUTABLE]) == {APP.key}
    assert saved[EXECUTABLE][APP.key]["origin"] == APPROVED
    assert saved[EXECUTABLE][APP.key]["first_seen"] == int(T0 + 1)
    assert set(saved[LISTENING]) == {"tcp:22"}
    assert set(saved[ENDPOINT]) == {"203.0.113.0/24:443"}


def test_relearn_voids_what_the_component_learned_before_it(path: Path) -> None:
    store = component(path, flush_seconds=3600)
    seen = Observing(store)
    seen.executable(APP, T0 + 1)
    store.flush(T0 + 1)
    seen.executable(PYTHON, T0 + 2)  # pending, learned before the relearn
    cli = operator(path, T0 + 3)
    cli.approve(LISTENING, "tcp:22", {}, T0 + 3)
    assert cli.relearn(T0 + 2 * DAY) == 1
    store.tick(T0 + 2 * DAY + 1)
    assert store.learning_started == T0 + 2 * DAY
    assert store.learning(T0 + 2 * DAY + 1)
    assert set(store.entries(EXECUTABLE)) == set()
    assert disk_keys(path, EXECUTABLE) == set() and disk_keys(path, LISTENING) == {"tcp:22"}
    assert on_disk(path)["epoch"] == 1


def test_tombstones_expire(path: Path) -> None:
    cli = operator(path, T0)
    cli.forget([(EXECUTABLE, MINER.key)], T0)
    assert MINER.key in on_disk(path)["forgotten"][EXECUTABLE]
    cli.approve(LISTENING, "tcp:22", {}, T0 + TOMBSTONE_SECONDS + 1)
    assert on_disk(path)["forgotten"][EXECUTABLE] == {}


def test_the_operator_view_does_not_start_learning_or_create_the_file(path: Path) -> None:
    cli = operator(path, T0)
    assert cli.learning_started is None and not cli.learning(T0)
    assert not path.exists()
    shown = cli.show(T0)
    assert shown["learning_started"] is None
    assert shown["entries"] == {kind: [] for kind in KIND_NAMES}
    store = component(path, now=T0 + 5)
    assert store.learning_started == T0 + 5
    assert os.path.exists(path)


def test_show_lists_entries_with_their_origin(path: Path) -> None:
    store = component(path)
    seen = Observing(store)
    seen.executable(APP, T0 + 1)
    store.flush(T0 + 1)
    shown = operator(path, T0 + 2).show(T0 + 2)
    assert shown["learning"] is True and shown["learning_started"] == T0
    assert shown["entries"][EXECUTABLE] == [
        {
            "key": APP.key,
            "first_seen": int(T0 + 1),
            "last_seen": int(T0 + 1),
            "origin": LEARNED,
            "details": APP.details(),
        }
    ]


# ---- a kind whose entries carry a number -----------------------------------------------------------


class ByMaximum(MergeRule):
    """A level merged by maximum, as a learned CPU level would be."""

    def added(self, kept: Entry, ours: Entry) -> None:
        super().added(kept, ours)
        self._level(kept, ours)

    def seen(self, kept: Entry, ours: Entry) -> None:
        super().seen(kept, ours)
        self._level(kept, ours)

    @staticmethod
    def _level(kept: Entry, ours: Entry) -> None:
        kept.details_text = compact_json({"level": max(kept.details["level"], ours.details["level"])})


class NoWatch:
    def __init__(self, context: Context) -> None:
        pass

    def observe(self, sample: Sample, baseline: CycleBaseline, now: float) -> dict[str, Any]:
        return {}


LEVEL = Kind("level", str, Items("level:", []), NoWatch, fields=(), metrics=(), merge=ByMaximum())


def test_a_kind_merges_the_details_two_writers_hold_by_its_own_rule(path: Path) -> None:
    first, second = (component(path, flush_seconds=3600, kinds=(*KINDS, LEVEL)) for _ in range(2))
    assert first.observe("level", "app", {"level": 30.0}, T0 + 1)  # both learn it, neither wrote it yet
    assert second.observe("level", "app", {"level": 50.0}, T0 + 2)
    first.flush(T0 + 3)
    second.flush(T0 + 4)
    assert on_disk(path)["entries"]["level"]["app"]["details"] == {"level": 50.0}

    first.tick(T0 + 5)  # reloads what the second wrote
    first.revise("level", "app", {"level": 60.0}, T0 + DAY + 10)  # after learning, the level moves
    second.revise("level", "app", {"level": 70.0}, T0 + DAY + 11)
    first.flush(T0 + DAY + 12)
    second.flush(T0 + DAY + 13)
    saved = on_disk(path)["entries"]["level"]["app"]
    assert saved["details"] == {"level": 70.0} and saved["last_seen"] == int(T0 + DAY + 11)

    # the kinds given make the file's kind column: a store without this kind drops its lines
    assert "level" not in operator(path, T0 + DAY + 14).show(T0 + DAY + 14)["entries"]
