"""The kinds of baseline items: the registry agrees with the metrics and ``BaselineStats``, and each
kind's own rules of what is known (executables: patterns, fleet approvals, deployments, unknowable
identities; endpoints: groups and CIDR approvals)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from ddcustom.device.baseline.approvals import Approvals
from ddcustom.device.baseline.deployment import DeploymentTrust
from ddcustom.device.baseline.file import DEPLOYMENT
from ddcustom.device.baseline.kinds import BY_NAME, KINDS
from ddcustom.device.baseline.store import BaselineStore
from ddcustom.device.metrics import BASELINE_METRICS, METRICS
from ddcustom.device.sample import (
    BaselineStats,
    Connection,
    LevelExcess,
    NewLibrary,
    NewNetworkUse,
    NewProcess,
    Sample,
)
from ddcustom.device.sources.identity import DELETED, MEMFD, ExecutableIdentity
from support.baseline import ENDPOINT, EXECUTABLE, KIND_NAMES, Observing

T0 = 1_800_000_000.0
DAY = 86400.0
PYTHON = ExecutableIdentity(path="/usr/bin/python3.11", sha256="a" * 64)
APP = ExecutableIdentity(path="/opt/app/bin/server", sha256="b" * 64)
MINER = ExecutableIdentity(path="/tmp/.x/kworker", sha256="c" * 64)
SCRIPT = ExecutableIdentity(
    path="/usr/bin/python3.11", sha256="a" * 64, script="/dev/shm/x.py", script_sha256="d" * 64
)

# Something new for each field of BaselineStats, to tell which metrics read it.
NEW: dict[str, Any] = {
    "new_processes": (NewProcess(7, "kworker", "/tmp/.x/kworker", "c" * 64),),
    "busiest_new": (7, 55.0),
    "new_endpoints": (Connection("198.51.100.9", 3333, 40000, "eth0"),),
    "new_listening": ("tcp:4444",),
    "new_gpu_processes": (NewProcess(8, "python3", "/dev/shm/x.py", "d" * 64),),
    "cpu_above_level": LevelExcess(9, "/usr/bin/sleep", "process", 25.0, 55.0, 30.0),
    "new_libraries": (NewLibrary(10, "/usr/bin/sleep", "/tmp/libx.so", "e" * 64, "LD_PRELOAD=/tmp/libx.so"),),
    "new_anonymous_code": (NewLibrary(11, "/usr/bin/sleep", "", ""),),
    "new_network_use": (NewNetworkUse(12, "/usr/bin/sleep", "outbound"),),
    "gpu_above_level": LevelExcess(13, "/opt/app/infer", "process", 25.0, 90.0, 65.0),
}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "baseline.json"


def component(path: Path, **kwargs: Any) -> BaselineStore:
    kwargs.setdefault("learning_seconds", DAY)
    return BaselineStore(path, now=T0, **kwargs)


# ---- the registry --------------------------------------------------------------------------------


def test_the_kinds_are_those_of_the_file_in_its_order() -> None:
    assert tuple(kind.name for kind in KINDS) == KIND_NAMES
    assert all(BY_NAME[kind.name] is kind for kind in KINDS)


def test_the_kinds_produce_exactly_the_baseline_metrics_each_once() -> None:
    produced = [name for kind in KINDS for name in kind.metrics]
    assert len(produced) == len(set(produced))
    assert set(produced) == BASELINE_METRICS
    assert set(METRICS) >= BASELINE_METRICS


def test_the_kinds_fill_every_field_of_baseline_stats_once() -> None:
    filled = [name for kind in KINDS for name in kind.fields]
    stats_fields = [f.name for f in dataclasses.fields(BaselineStats) if f.name != "learning"]
    assert sorted(filled) == sorted(stats_fields) == sorted(NEW)


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_a_kinds_metrics_are_those_its_fields_move(kind: Any) -> None:
    """With only this kind's fields holding something new, exactly its metrics read otherwise than with
    nothing new."""
    nothing = Sample(time=T0, monotonic=T0, baseline=BaselineStats(learning=False))
    found = BaselineStats(learning=False, **{name: NEW[name] for name in kind.fields})
    something = Sample(time=T0, monotonic=T0, baseline=found)
    moved = {
        name
        for name in BASELINE_METRICS
        if METRICS[name].read(something, None) != METRICS[name].read(nothing, None)
    }
    assert moved == set(kind.metrics)


def test_baseline_metrics_have_no_value_while_learning_and_the_others_do_not_read_the_baseline() -> None:
    plain = Sample(time=T0, monotonic=T0)
    learning = Sample(time=T0, monotonic=T0, baseline=BaselineStats(learning=True))
    learned = Sample(time=T0, monotonic=T0, baseline=BaselineStats(learning=False, **NEW))
    for name, metric in METRICS.items():
        if name in BASELINE_METRICS:
            assert metric.read(learning, None) is None and metric.read(learned, None) is not None, name
        else:
            assert metric.read(learned, None) == metric.read(plain, None), name


def test_item_forms_tell_the_kinds_apart() -> None:
    prefixes = [kind.items.prefix for kind in KINDS]
    assert prefixes.count("") == 1  # the executables' forms, without a prefix
    named = [prefix for prefix in prefixes if prefix]
    assert len(set(named)) == len(named)
    assert not any(a != b and b.startswith(a) for a in named for b in named)
    assert "key:" not in named  # key:KIND:KEY names any kind's entry


# ---- executables ---------------------------------------------------------------------------------


def test_unknowable_executables_are_never_known_nor_learned(path: Path) -> None:
    store = component(path)
    seen = Observing(store)
    for reason in (DELETED, MEMFD):
        identity = ExecutableIdentity(path="/tmp/x", sha256="", reason_unknowable=reason)
        assert not seen.executable(identity, T0 + 1)
    assert not store.entries(EXECUTABLE)


def test_gpu_executables_are_their_own_kind(path: Path) -> None:
    seen = Observing(component(path))
    assert seen.executable(APP, T0 + 1, gpu=True)
    assert not seen.executable(APP, T0 + DAY)
    assert seen.executable(APP, T0 + DAY, gpu=True)


def test_fleet_approvals_are_known_without_being_stored(path: Path) -> None:
    approvals = Approvals.parse(["c" * 64, "/opt/app/bin/server"], ["198.51.100.0/24:3333", "2001:db8::/32"])
    store = component(path, learning_seconds=0)
    seen = Observing(store, approvals=approvals)
    assert seen.executable(MINER, T0)  # by hash
    assert seen.executable(ExecutableIdentity(path="/opt/app/bin/server", sha256="e" * 64), T0)
    assert seen.endpoint("198.51.100.4", 3333, T0)
    assert not seen.endpoint("198.51.100.4", 3334, T0)
    assert seen.endpoint("2001:db8:ffff::1", 22, T0)
    assert not store.entries(EXECUTABLE) and not store.entries(ENDPOINT)
    seen.context.approvals = Approvals()  # a configuration update removed them
    assert not seen.executable(MINER, T0)


def test_operator_approvals_by_hash_path_and_cidr(path: Path) -> None:
    store = component(path, learning_seconds=0)
    seen = Observing(store)
    cli = BaselineStore(path, now=T0, operator=True)
    cli.approve(EXECUTABLE, "sha256:" + "d" * 64, {"sha256": "d" * 64}, T0)
    cli.approve(EXECUTABLE, "path:/opt/app/bin/server", {"path": "/opt/app/bin/server"}, T0)
    cli.approve(ENDPOINT, "10.0.0.0/8:443", {"pattern": "10.0.0.0/8:443"}, T0)
    cli.approve(ENDPOINT, "192.0.2.5/32", {"pattern": "192.0.2.5"}, T0)
    store.tick(T0 + 1)
    assert seen.executable(SCRIPT, T0 + 2)  # the script's hash is approved
    assert not seen.executable(PYTHON, T0 + 2)  # not the interpreter itself
    assert seen.executable(ExecutableIdentity(path="/opt/app/bin/server", sha256="9" * 64), T0 + 2)
    assert seen.endpoint("10.200.3.4", 443, T0 + 2)
    assert not seen.endpoint("10.200.3.4", 80, T0 + 2)
    assert seen.endpoint("192.0.2.5", 80, T0 + 2)
    assert not seen.endpoint("192.0.2.6", 80, T0 + 2)
    cli.forget([(ENDPOINT, "10.0.0.0/8:443")], T0 + 3)
    store.tick(T0 + 4)  # the forget reaches the component: the pattern no longer approves
    assert not seen.endpoint("10.200.3.4", 443, T0 + 5)


def test_executables_a_deployment_placed_are_known_after_learning(path: Path) -> None:
    root = "/greengrass/v2"
    store = component(path, learning_seconds=0)
    seen = Observing(store, deployment=DeploymentTrust(root))
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
    assert seen.executable(deployed, T0)
    assert seen.executable(script, T0)
    assert not seen.executable(in_work, T0)
    assert not seen.executable(outside, T0)  # the version folder itself is no artifact
    assert not seen.executable(
        ExecutableIdentity(path=deployed.path, sha256="", reason_unknowable=DELETED), T0
    )
    entry = store.entries(EXECUTABLE)[deployed.key]
    assert entry.origin == DEPLOYMENT
    assert entry.details["component"] == "com.example.App@2.0.0"
    assert store.entries(EXECUTABLE)[script.key].details["component"] == "com.example.App@2.0.0"


# ---- endpoints -----------------------------------------------------------------------------------


def test_endpoint_groups_ipv6_by_64_and_mapped_ipv4_as_ipv4(path: Path) -> None:
    store = component(path)
    seen = Observing(store)
    assert seen.endpoint("2001:db8:1:2::5", 443, T0 + 1)
    assert seen.endpoint("::ffff:192.0.2.9", 8883, T0 + 1)
    assert set(store.entries(ENDPOINT)) == {"[2001:db8:1:2::/64]:443", "192.0.2.0/24:8883"}
    after = T0 + DAY
    assert seen.endpoint("2001:db8:1:2:ffff::1", 443, after)
    assert not seen.endpoint("2001:db8:1:3::5", 443, after)
    assert seen.endpoint("192.0.2.77", 8883, after)
    assert not seen.endpoint("not-an-ip", 443, after)
