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

from ddcustom.device.baseline.approvals import Approvals
from ddcustom.device.baseline.deployment import DeploymentTrust
from ddcustom.device.baseline.file import (
    APPROVED,
    DEPLOYMENT,
    LEARNED,
    BaselineCorrupt,
    BaselineError,
    BaselineFull,
)
from ddcustom.device.baseline.keys import ENDPOINT, EXECUTABLE, GPU_EXECUTABLE, LISTENING
from ddcustom.device.baseline.store import SEEN_RESOLUTION, TOMBSTONE_SECONDS, BaselineStore
from ddcustom.device.sources.identity import DELETED, MEMFD, ExecutableIdentity
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
    assert store.learning(T0) and store.learning(T0 + DAY - 1) and not store.learning(T0 + DAY)
    assert store.observe_executable(PYTHON, T0 + 10)
    assert store.observe_endpoint("203.0.113.7", 443, T0 + 10)
    assert store.observe_listening("tcp", 22, T0 + 10)

    after = T0 + DAY + 5
    assert store.observe_executable(PYTHON, after)
    assert store.observe_endpoint("203.0.113.200", 443, after)  # the same /24
    assert store.observe_listening("tcp", 22, after)
    assert not store.observe_executable(MINER, after)
    assert not store.observe_executable(SCRIPT, after)  # python3 running another script
    assert not store.observe_endpoint("198.51.100.9", 443, after)
    assert not store.observe_endpoint("203.0.113.7", 3333, after)
    assert not store.observe_listening("udp", 22, after)
    # new items are not added: still new at the next cycle
    assert not store.observe_executable(MINER, after + 10)
    assert set(store.entries(EXECUTABLE)) == {PYTHON.key}
    assert store.entries(EXECUTABLE)[PYTHON.key].last_seen == after
    assert set(store.entries(ENDPOINT)) == {"203.0.113.0/24:443"}
    assert store.entries(ENDPOINT)["203.0.113.0/24:443"].details == {"address": "203.0.113.7", "port": 443}


def test_no_learning_period_means_everything_is_new(path: Path) -> None:
    store = component(path, learning_seconds=0)
    assert not store.learning(T0)
    assert not store.observe_executable(PYTHON, T0)
    assert not store.observe_listening("tcp", 22, T0)


def test_unknowable_executables_are_never_known_nor_learned(path: Path) -> None:
    store = component(path)
    for reason in (DELETED, MEMFD):
        identity = ExecutableIdentity(path="/tmp/x", sha256="", reason_unknowable=reason)
        assert not store.observe_executable(identity, T0 + 1)
    assert not store.entries(EXECUTABLE)


def test_gpu_executables_are_their_own_kind(path: Path) -> None:
    store = component(path)
    assert store.observe_executable(APP, T0 + 1, kind=GPU_EXECUTABLE)
    assert not store.observe_executable(APP, T0 + DAY, kind=EXECUTABLE)
    assert store.observe_executable(APP, T0 + DAY, kind=GPU_EXECUTABLE)


def test_endpoint_groups_ipv6_by_64_and_mapped_ipv4_as_ipv4(path: Path) -> None:
    store = component(path)
    assert store.observe_endpoint("2001:db8:1:2::5", 443, T0 + 1)
    assert store.observe_endpoint("::ffff:192.0.2.9", 8883, T0 + 1)
    assert set(store.entries(ENDPOINT)) == {"[2001:db8:1:2::/64]:443", "192.0.2.0/24:8883"}
    after = T0 + DAY
    assert store.observe_endpoint("2001:db8:1:2:ffff::1", 443, after)
    assert not store.observe_endpoint("2001:db8:1:3::5", 443, after)
    assert store.observe_endpoint("192.0.2.77", 8883, after)
    assert not store.observe_endpoint("not-an-ip", 443, after)


# ---- approvals and deployments -------------------------------------------------------------------


def test_fleet_approvals_are_known_without_being_stored(path: Path) -> None:
    approvals = Approvals.parse(["c" * 64, "/opt/app/bin/server"], ["198.51.100.0/24:3333", "2001:db8::/32"])
    store = component(path, learning_seconds=0, approvals=approvals)
    assert store.observe_executable(MINER, T0)  # by hash
    assert store.observe_executable(ExecutableIdentity(path="/opt/app/bin/server", sha256="e" * 64), T0)
    assert store.observe_endpoint("198.51.100.4", 3333, T0)
    assert not store.observe_endpoint("198.51.100.4", 3334, T0)
    assert store.observe_endpoint("2001:db8:ffff::1", 22, T0)
    assert not store.entries(EXECUTABLE) and not store.entries(ENDPOINT)
    store.approvals = Approvals()  # a configuration update removed them
    assert not store.observe_executable(MINER, T0)


def test_operator_approvals_by_hash_path_and_cidr(path: Path) -> None:
    store = component(path, learning_seconds=0)
    cli = operator(path, T0)
    cli.approve(EXECUTABLE, "sha256:" + "d" * 64, {"sha256": "d" * 64}, T0)
    cli.approve(EXECUTABLE, "path:/opt/app/bin/server", {"path": "/opt/app/bin/server"}, T0)
    cli.approve(ENDPOINT, "10.0.0.0/8:443", {"pattern": "10.0.0.0/8:443"}, T0)
    cli.approve(ENDPOINT, "192.0.2.5/32", {"pattern": "192.0.2.5"}, T0)
    store.tick(T0 + 1)
    assert store.observe_executable(SCRIPT, T0 + 2)  # the script's hash is approved
    assert not store.observe_executable(PYTHON, T0 + 2)  # not the interpreter itself
    assert store.observe_executable(ExecutableIdentity(path="/opt/app/bin/server", sha256="9" * 64), T0 + 2)
    assert store.observe_endpoint("10.200.3.4", 443, T0 + 2)
    assert not store.observe_endpoint("10.200.3.4", 80, T0 + 2)
    assert store.observe_endpoint("192.0.2.5", 80, T0 + 2)
    assert not store.observe_endpoint("192.0.2.6", 80, T0 + 2)


def test_executables_a_deployment_placed_are_known_after_learning(path: Path) -> None:
    root = "/greengrass/v2"
    store = component(path, learning_seconds=0, deployment=DeploymentTrust(root))
    deployed = ExecutableIdentity(
        path=f"{root}/packages/artifacts-unarchived/com.example.App/2.0.0/app/bin/server", sha256="e" * 64
    )
    script = ExecutableIdentity(
        path="/usr/bin/python3.11",
        sha256="a" * 64,
        script=f"{root}/packages/artifacts/com.example.App/2.0.0/main.py",
        script_sha256="f" * 64,
    )
    in_work = ExecutableIdentity(path=f"{root}/work/com.example.App/miner", sha256="1" * 64)
    outside = ExecutableIdentity(path=f"{root}/packages/artifacts/com.example.App/2.0.0", sha256="2" * 64)
    assert store.observe_executable(deployed, T0)
    assert store.observe_executable(script, T0)
    assert not store.observe_executable(in_work, T0)
    assert not store.observe_executable(outside, T0)  # the version folder itself is no artifact
    assert not store.observe_executable(
        ExecutableIdentity(path=deployed.path, sha256="", reason_unknowable=DELETED), T0
    )
    entry = store.entries(EXECUTABLE)[deployed.key]
    assert entry.origin == DEPLOYMENT
    assert entry.details["component"] == "com.example.App@2.0.0"
    assert store.entries(EXECUTABLE)[script.key].details["component"] == "com.example.App@2.0.0"


# ---- persistence ---------------------------------------------------------------------------------


def test_the_baseline_survives_a_restart_and_the_learning_period_continues(path: Path) -> None:
    store = component(path)
    store.observe_executable(APP, T0 + 5)
    store.observe_endpoint("203.0.113.7", 443, T0 + 5)
    store.close(T0 + 6)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    restarted = component(path, now=T0 + 100)
    assert restarted.learning_started == T0
    assert restarted.learning(T0 + DAY - 1) and not restarted.learning(T0 + DAY)
    assert restarted.observe_executable(APP, T0 + DAY)
    assert restarted.observe_endpoint("203.0.113.8", 443, T0 + DAY)
    assert not restarted.observe_executable(MINER, T0 + DAY)
    assert on_disk(path)["format"] == 1


def test_changes_are_written_at_most_every_flush_seconds(path: Path) -> None:
    store = component(path, flush_seconds=60)
    store.observe_executable(APP, T0 + 1)
    store.tick(T0 + 30)
    assert disk_keys(path, EXECUTABLE) == set()
    store.tick(T0 + 61)
    assert disk_keys(path, EXECUTABLE) == {APP.key}


def test_last_seen_moves_are_written_only_when_they_matter(path: Path) -> None:
    store = component(path, learning_seconds=0, flush_seconds=60)
    cli = operator(path, T0)
    cli.approve(LISTENING, "tcp:22", {"protocol": "tcp", "port": 22}, T0)
    store.tick(T0)
    revision = on_disk(path)["revision"]
    for step in range(1, 30):
        assert store.observe_listening("tcp", 22, T0 + step * 100)
        store.tick(T0 + step * 100)
    assert on_disk(path)["revision"] == revision  # 2900 s of refreshes: nothing worth a write
    later = T0 + SEEN_RESOLUTION + 10
    store.observe_listening("tcp", 22, later)
    store.tick(later + 60)
    assert on_disk(path)["entries"][LISTENING]["tcp:22"]["last_seen"] == int(later)


def test_entries_not_seen_for_forget_seconds_are_forgotten_but_approvals_stay(path: Path) -> None:
    store = component(path, forget_seconds=10 * DAY)
    store.observe_executable(APP, T0 + 1)
    store.observe_executable(PYTHON, T0 + 1)
    store.flush(T0 + 2)
    operator(path, T0 + 3).approve(LISTENING, "tcp:22", {}, T0 + 3)
    store.tick(T0 + 4)
    store.observe_executable(PYTHON, T0 + 9 * DAY)  # seen again: kept
    store.tick(T0 + 11 * DAY)
    assert set(store.entries(EXECUTABLE)) == {PYTHON.key}
    assert disk_keys(path, EXECUTABLE) == {PYTHON.key}
    assert disk_keys(path, LISTENING) == {"tcp:22"}
    assert not store.observe_executable(APP, T0 + 11 * DAY)


def test_entries_are_bounded_per_kind_keeping_the_recently_seen(path: Path) -> None:
    store = component(path, max_entries=100)
    for i in range(250):
        store.observe_endpoint(f"10.{i}.0.1", 443, T0 + i)
    store.flush(T0 + 300)
    keys = disk_keys(path, ENDPOINT)
    assert len(keys) <= 100 and len(store.entries(ENDPOINT)) <= 100
    assert "10.249.0.0/24:443" in keys and "10.0.0.0/24:443" not in keys


def test_the_file_is_bounded_in_bytes_and_approvals_survive(path: Path) -> None:
    store = component(path, max_bytes=20_000)
    operator(path, T0).approve(LISTENING, "tcp:22", {}, T0)
    store.tick(T0)
    for i in range(500):
        store.observe_executable(ExecutableIdentity(path=f"/usr/lib/tool{i}", sha256=f"{i:064x}"), T0 + i)
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
    for i in range(40):
        store.observe_listening("tcp", 1000 + i, T0 + 1)
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
    bloated = ExecutableIdentity(path="/tmp/" + "x" * 5000, sha256="e" * 64)
    assert store.observe_executable(bloated, T0 + 1)  # learning: counts as known this once
    assert not store.entries(EXECUTABLE)


def test_observing_needs_no_disk_and_tick_never_raises(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = component(path, flush_seconds=0)
    store.observe_executable(APP, T0 + 1)
    store.flush(T0 + 1)
    shutil.rmtree(path.parent)
    path.parent.write_text("a file where the state directory was")  # the directory cannot come back
    assert store.observe_executable(APP, T0 + DAY)
    assert store.observe_executable(PYTHON, T0 + 2)
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
    store.observe_listening("tcp", 22, T0 + 1)
    store.observe_listening("tcp", 23, T0 + 1)
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
    store.observe_executable(identity, T0 + 1)
    store.close(T0 + 2)
    restarted = component(path, now=T0 + 3)
    assert restarted.entries(EXECUTABLE)[identity.key].details["path"] == odd
    assert restarted.observe_executable(identity, T0 + DAY)


# ---- the component and the command line writing together -----------------------------------------


def test_an_approval_reaches_the_running_component_at_its_next_tick(path: Path) -> None:
    store = component(path, learning_seconds=0)
    assert not store.observe_executable(MINER, T0 + 1)
    operator(path, T0 + 2).approve(EXECUTABLE, MINER.key, MINER.details(), T0 + 2)
    store.tick(T0 + 3)
    assert store.observe_executable(MINER, T0 + 4)


def test_a_forgotten_entry_stays_forgotten_when_the_component_flushes(path: Path) -> None:
    store = component(path, flush_seconds=0)
    store.observe_executable(MINER, T0 + 1)
    store.flush(T0 + 2)
    assert operator(path, T0 + 3).forget([(EXECUTABLE, MINER.key)], T0 + 3) == [(EXECUTABLE, MINER.key)]
    store.observe_executable(MINER, T0 + DAY + 1)  # before it reloaded: still known in memory
    store.tick(T0 + DAY + 2)
    assert MINER.key not in disk_keys(path, EXECUTABLE)
    assert not store.observe_executable(MINER, T0 + DAY + 3)
    store.tick(T0 + DAY + 4)
    assert MINER.key not in disk_keys(path, EXECUTABLE)


def test_an_entry_learned_but_not_yet_written_when_forgotten_is_dropped(path: Path) -> None:
    store = component(path, flush_seconds=3600)
    store.observe_executable(PYTHON, T0 + 1)
    store.flush(T0 + 1)
    store.observe_executable(MINER, T0 + 5)  # learned, waiting for the next flush
    cli = operator(path, T0 + 6)
    assert cli.forget([(EXECUTABLE, MINER.key)], T0 + 6) == []  # not on disk yet
    store.tick(T0 + 7)  # the file changed: merge
    assert MINER.key not in store.entries(EXECUTABLE)
    assert disk_keys(path, EXECUTABLE) == {PYTHON.key}
    # observed again during learning, after the forget was seen: learned again
    assert store.observe_executable(MINER, T0 + 8)
    store.flush(T0 + 9)
    assert disk_keys(path, EXECUTABLE) == {PYTHON.key, MINER.key}


def test_no_update_is_lost_when_both_write(path: Path) -> None:
    store = component(path, flush_seconds=3600)
    store.observe_executable(APP, T0 + 1)  # pending in the component
    cli = operator(path, T0 + 2)
    cli.approve(LISTENING, "tcp:22", {}, T0 + 2)
    cli.approve(EXECUTABLE, APP.key, APP.details(), T0 + 2)  # the same key, approved meanwhile
    store.observe_endpoint("203.0.113.7", 443, T0 + 3)
    store.close(T0 + 4)
    saved = on_disk(path)["entries"]
    assert set(saved[EXECUTABLE]) == {APP.key}
    assert saved[EXECUTABLE][APP.key]["origin"] == APPROVED
    assert saved[EXECUTABLE][APP.key]["first_seen"] == int(T0 + 1)
    assert set(saved[LISTENING]) == {"tcp:22"}
    assert set(saved[ENDPOINT]) == {"203.0.113.0/24:443"}


def test_relearn_voids_what_the_component_learned_before_it(path: Path) -> None:
    store = component(path, flush_seconds=3600)
    store.observe_executable(APP, T0 + 1)
    store.flush(T0 + 1)
    store.observe_executable(PYTHON, T0 + 2)  # pending, learned before the relearn
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
    assert shown["entries"] == {EXECUTABLE: [], GPU_EXECUTABLE: [], ENDPOINT: [], LISTENING: []}
    store = component(path, now=T0 + 5)
    assert store.learning_started == T0 + 5
    assert os.path.exists(path)


def test_show_lists_entries_with_their_origin(path: Path) -> None:
    store = component(path)
    store.observe_executable(APP, T0 + 1)
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
