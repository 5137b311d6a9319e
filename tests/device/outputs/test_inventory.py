"""The fleet inventory: what of the baseline it names, when it publishes, in messages the cloud's schema
and prevalence function take, through failures and restarts; and under the stand-in nucleus, through the
recipe's grant."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import jsonschema
import pytest

from ddcustom.device.baseline.file import APPROVED, DEPLOYMENT, LEARNED, Entry
from ddcustom.device.baseline.observer import BaselineObserver
from ddcustom.device.outputs import inventory
from ddcustom.device.outputs.inventory import (
    DAY,
    MAX_MESSAGE_BYTES,
    InventoryPublisher,
    day_slot,
    identities,
    inventory_topic,
)
from ddcustom.device.sample import ProcessInfo, ProcessStats, Sample
from ddcustom.device.sources.identity import IdentityReader, identity_key
from ddcustom.device.sources.process_details import ProcessDetails
from ddcustom.tooling.cloud.inventory import parse
from support.fakes import RecordingSink
from support.greengrass import THING, Component
from support.helpers import ROOT, poll
from support.procfs import FixtureHost, deny_exe_links, fake_process, sha256_of

SCHEMA = json.loads((ROOT / "src/ddcustom/schemas/inventory.schema.json").read_text())
T0 = 1_800_000_000.0  # a wall-clock time; the publisher's monotonic times start at 0


def valid(message: dict[str, Any]) -> dict[str, Any]:
    """``message``, checked against the schema and read by the cloud's prevalence function as it is."""
    jsonschema.validate(message, SCHEMA)
    read = parse(message)
    assert (read.thing, read.seq, len(read.identities)) == (
        message["thingName"],
        message["seq"],
        len(message["identities"]),
    )
    return message


def sha(n: int) -> str:
    return f"{n:064x}"


class Baseline:
    """What the publisher reads of a baseline: entries by kind, as the test puts them."""

    def __init__(self) -> None:
        self.kinds: dict[str, dict[str, Entry]] = {"executable": {}, "gpu_executable": {}, "program_cpu": {}}

    def live(self, kind: str) -> Mapping[str, Entry]:
        return self.kinds[kind]

    def learn(self, n: int, path: Optional[str] = None, first_seen: float = T0, **details: Any) -> str:
        """An executable entry of content ``sha(n)``; returns its key."""
        path = path or f"/opt/app/bin/tool-{n}"
        key = identity_key(path, sha(n))
        origin = details.pop("origin", LEARNED)
        self.kinds["executable"][key] = Entry(
            first_seen, first_seen, origin, {"path": path, "sha256": sha(n), **details}
        )
        return key


class WallClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "inventory.json")


# ---- what it names ---------------------------------------------------------------------------------------


def test_it_names_each_learned_program_by_the_hash_of_what_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Learned from a fixture /proc: a program by its own hash, an interpreter's script file by the
    script's, a module by the hash of "<interpreter's SHA-256> -m NAME"; an unreadable process (a weak
    identity) is left out."""
    host = FixtureHost(tmp_path / "host")
    tool, python, other = host.program("tool"), host.program("python3"), host.program("daemon")
    script = host.bin / "serve.py"
    script.write_text("print('serving')\n")
    host.start(100, tool)
    host.start(300, other)
    for pid, args in ((200, [str(script)]), (201, ["-m", "worker"])):
        fake_process(host.proc, pid, str(python), [str(python), *args])
        host.table[pid] = ProcessInfo(pid, 1, "python3", "python3", " ".join([str(python), *args]))
    deny_exe_links(monkeypatch, host.proc, [300])
    observer = BaselineObserver(
        IdentityReader(str(host.proc)), ProcessDetails(str(host.proc)), clock=lambda: T0
    )
    settings = type(
        "S",
        (),
        {
            "baseline_file": str(tmp_path / "baseline.json"),
            "baseline_learning_seconds": 3600,
            "baseline_forget_seconds": 90 * 86400,
            "approved_executables": (),
            "approved_endpoints": (),
            "approved_libraries": (),
            "approved_cpu_levels": (),
            "fleet_known_executables": (),
            "allowed_gpu_processes": (),
        },
    )()
    observer.configure(settings, enabled=True)
    observer.observe(
        Sample(time=T0, monotonic=0.0, processes=ProcessStats(0, (), (), table=dict(host.table)))
    )
    assert observer.store is not None

    found = identities(observer.store)

    module = hashlib.sha256(f"{sha256_of(python)} -m worker".encode()).hexdigest()
    assert {s: (i["path"], i.get("script")) for s, i in found.items()} == {
        sha256_of(tool): (str(tool), None),
        sha256_of(script): (str(python), str(script)),
        module: (str(python), "-m worker"),
    }
    assert {(i["origin"], i["firstSeen"]) for i in found.values()} == {("learned", int(T0))}
    observer.close()


def test_origins_components_levels_and_duplicates() -> None:
    baseline = Baseline()
    app = baseline.learn(
        1,
        "/greengrass/v2/packages/artifacts/com.example.App/1.2.0/app",
        origin=DEPLOYMENT,
        component="com.example.App@1.2.0",
    )
    baseline.learn(2, origin=APPROVED)
    baseline.learn(3, origin=DEPLOYMENT)  # a deployment it cannot name: not vouched for
    baseline.learn(4, "/usr/bin/a", first_seen=T0 + 50)
    baseline.learn(4, "/usr/local/bin/a-copy", first_seen=T0 + 10)  # the same content elsewhere
    baseline.kinds["gpu_executable"][identity_key("/opt/gpu", sha(5))] = Entry(
        T0, T0, LEARNED, {"path": "/opt/gpu", "sha256": sha(5)}
    )
    baseline.kinds["executable"]["sha256:" + sha(6)] = Entry(
        T0, T0, APPROVED, {"sha256": sha(6)}
    )  # a pattern
    baseline.kinds["executable"]["unreadable uid=0 name=x argv0=x exe_kb=12"] = Entry(T0, T0, LEARNED, {})
    baseline.kinds["program_cpu"][app] = Entry(T0, T0, LEARNED, {"path": "/x", "process": 40.0, "all": 85.25})

    found = identities(baseline)

    assert sorted(found) == [sha(1), sha(2), sha(3), sha(4), sha(5)]
    assert found[sha(1)]["origin"] == "deployment" and found[sha(1)]["component"] == "com.example.App@1.2.0"
    assert found[sha(1)]["cpuLevel"] == 85.2
    assert found[sha(2)]["origin"] == "approved"
    assert found[sha(3)]["origin"] == "learned" and "component" not in found[sha(3)]
    assert found[sha(4)]["firstSeen"] == int(T0 + 10)
    message = {"schema": 1, "thingName": THING, "seq": 1, "kind": "full", "identities": list(found.values())}
    valid(message)


# ---- when it publishes -----------------------------------------------------------------------------------


def test_a_full_inventory_at_start_then_only_what_changed_every_five_minutes(state: str) -> None:
    baseline, sink, wall = Baseline(), RecordingSink(), WallClock()
    for n in range(3):
        baseline.learn(n)
    publisher = InventoryPublisher(THING, state, wall)

    publisher.run(sink, baseline, False, 0.0)
    assert [valid(m)["kind"] for m in sink.inventories] == ["full"]
    assert sorted(i["sha256"] for i in sink.inventories[0]["identities"]) == [sha(0), sha(1), sha(2)]
    assert sink.inventories[0]["seq"] >= int(T0 * 1000)

    baseline.learn(7)
    wall.now += 200
    publisher.run(sink, baseline, False, 200.0)
    assert len(sink.inventories) == 1  # batched: not before five minutes
    del baseline.kinds["executable"][identity_key("/opt/app/bin/tool-0", sha(0))]
    wall.now += 100
    publisher.run(sink, baseline, False, 300.0)
    change = valid(sink.inventories[1])
    assert (change["kind"], [i["sha256"] for i in change["identities"]], change["removed"]) == (
        "changes",
        [sha(7)],
        [sha(0)],
    )
    assert change["seq"] > sink.inventories[0]["seq"]
    wall.now += 300
    publisher.run(sink, baseline, False, 600.0)
    assert len(sink.inventories) == 2  # nothing changed


def test_a_failure_loses_nothing_and_is_logged_once(state: str, caplog: pytest.LogCaptureFixture) -> None:
    baseline, sink, wall = Baseline(), RecordingSink(), WallClock()
    baseline.learn(1)
    publisher = InventoryPublisher(THING, state, wall)
    publisher.run(sink, baseline, False, 0.0)

    baseline.learn(2)
    sink.refuse = "UnauthorizedError: not granted"
    with caplog.at_level(logging.WARNING, logger=inventory.__name__):
        for minute in range(5, 60, 5):
            publisher.run(sink, baseline, False, minute * 60.0)
            baseline.learn(100 + minute)
    assert len(sink.inventories) == 1
    assert caplog.text.count("fleet inventory not sent") == 1 and "not granted" in caplog.text

    sink.refuse = None
    publisher.run(sink, baseline, False, 2 * 3600.0)  # past the longest backoff
    sent = {i["sha256"] for m in sink.inventories[1:] for i in valid(m)["identities"]}
    assert sent == {sha(2)} | {sha(100 + minute) for minute in range(5, 60, 5)}


def test_a_restart_goes_on_from_what_was_acknowledged(state: str) -> None:
    baseline, sink, wall = Baseline(), RecordingSink(), WallClock()
    baseline.learn(1)
    InventoryPublisher(THING, state, wall).run(sink, baseline, False, 0.0)
    first_seq = sink.inventories[0]["seq"]

    baseline.learn(2)
    wall.now = T0 - 5  # the clock stepped back over the restart: seq still rises
    InventoryPublisher(THING, state, wall).run(sink, baseline, False, 0.0)
    assert [m["kind"] for m in sink.inventories] == ["full", "changes"]
    assert [i["sha256"] for i in sink.inventories[1]["identities"]] == [sha(2)]
    assert sink.inventories[1]["seq"] > first_seq


def test_a_full_inventory_daily_at_the_devices_time_of_day_and_when_learning_ends(state: str) -> None:
    baseline, sink, wall = Baseline(), RecordingSink(), WallClock()
    baseline.learn(1)
    wall.now = (T0 // DAY) * DAY + day_slot(THING) + 10  # just after this device's time of day
    publisher = InventoryPublisher(THING, state, wall)
    publisher.run(sink, baseline, True, 0.0)
    wall.now += DAY - 20
    publisher.run(sink, baseline, True, 1000.0)
    assert [m["kind"] for m in sink.inventories] == ["full"]
    wall.now += 20
    publisher.run(sink, baseline, True, 2000.0)
    assert [m["kind"] for m in sink.inventories] == ["full", "full"]
    wall.now += 1
    publisher.run(sink, baseline, False, 2001.0)  # the learning period ended: at once
    assert [m["kind"] for m in sink.inventories] == ["full", "full", "full"]
    assert day_slot(THING) != day_slot("cam-43")  # devices do not send at the same time


def test_a_large_inventory_goes_in_parts_each_under_the_limit_and_covering_a_range(state: str) -> None:
    baseline, sink = Baseline(), RecordingSink()
    for n in range(3000):
        baseline.learn(n * 7919, "/opt/vendor/" + "deep/" * 100 + f"tool-{n}")
    InventoryPublisher(THING, state, WallClock()).run(sink, baseline, False, 0.0)

    parts = sink.inventories
    assert len(parts) > 1 and {m["parts"] for m in parts} == {len(parts)}
    for number, message in enumerate(parts, 1):
        valid(message)
        assert len(json.dumps(message, separators=(",", ":"))) <= MAX_MESSAGE_BYTES
        assert message["part"] == number and len({m["seq"] for m in parts}) == 1
        low, high = message.get("from", ""), message.get("to", "g")
        assert all(low <= i["sha256"] < high for i in message["identities"])
    assert [m.get("to") for m in parts[:-1]] == [m.get("from") for m in parts[1:]]
    assert "from" not in parts[0] and "to" not in parts[-1]
    assert sorted(i["sha256"] for m in parts for i in m["identities"]) == sorted(
        sha(n * 7919) for n in range(3000)
    )


def test_an_unusable_state_file_means_a_full_inventory(state: str, caplog: pytest.LogCaptureFixture) -> None:
    Path(state).parent.mkdir(parents=True)
    Path(state).write_text('{"seq": "x"')
    baseline, sink = Baseline(), RecordingSink()
    baseline.learn(1)
    with caplog.at_level(logging.WARNING, logger=inventory.__name__):
        InventoryPublisher(THING, state, WallClock()).run(sink, baseline, False, 0.0)
    assert [m["kind"] for m in sink.inventories] == ["full"] and "unusable" in caplog.text


# ---- under the stand-in nucleus ----------------------------------------------------------------------


NEW_EXECUTABLES = {
    "name": "new-executables",
    "metric": "new_executables",
    "criteria": {"comparisonOperator": "greater-than", "value": {"number": 0}},
}


@pytest.fixture
def program(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A program of the test's own (sleep with a few bytes more: its own path and hash), running."""
    copy = tmp_path / "bin" / "fleet-probe"
    copy.parent.mkdir()
    copy.write_bytes(
        Path(shutil.which("sleep") or "/bin/sleep").read_bytes() + b"\0fleet-probe"
    )  # its own hash
    copy.chmod(0o755)
    process = subprocess.Popen([str(copy), "60"])
    yield copy, process
    process.kill()
    process.wait()


def inventories(c: Component) -> list[dict[str, Any]]:
    return [json.loads(p.payload) for p in c.nucleus.published if p.topic == inventory_topic(THING)]


def start(tmp_path: Path, **merge: Any) -> Component:
    return Component(
        tmp_path,
        {
            "SecurityProfile": {"name": "p", "behaviors": [NEW_EXECUTABLES]},
            "BaselineLearningSeconds": 3600,
            **merge,
        },
    )


def test_published_through_the_recipes_grant_when_on(
    tmp_path: Path,
    program: tuple[Path, subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The full inventory names the running program; a program started while the connection is down
    is sent once it is back."""
    monkeypatch.setattr(inventory, "CHANGES_EVERY_SECONDS", 0.5)
    monkeypatch.setattr(inventory, "RETRY_FIRST_SECONDS", 0.2)
    monkeypatch.setattr(inventory, "RETRY_CAP_SECONDS", 0.5)
    path, _ = program
    c = start(tmp_path, FleetInventory=True)
    try:
        poll(lambda: inventories(c), what="the first inventory")
        full = valid(inventories(c)[0])
        assert full["kind"] == "full" and full["thingName"] == THING
        mine = [i for i in full["identities"] if i["path"] == str(path)]
        assert [(i["sha256"], i["origin"]) for i in mine] == [(sha256_of(path), "learned")]

        with caplog.at_level(logging.WARNING, logger=inventory.__name__):
            c.nucleus.drop_connections(refuse_next=10**6)  # down until told otherwise
            second = tmp_path / "bin" / "fleet-probe-2"
            second.write_bytes(path.read_bytes() + b"-2")
            second.chmod(0o755)
            later = subprocess.Popen([str(second), "60"])
            try:
                poll(lambda: "fleet inventory not sent" in caplog.text, what="a failed publish while down")
                c.nucleus.drop_connections(refuse_next=0)
                poll(
                    lambda: any(
                        i["path"] == str(second) for m in inventories(c)[1:] for i in m["identities"]
                    ),
                    what="the change, sent once the connection is back",
                )
            finally:
                later.kill()
                later.wait()
        assert all(valid(m)["kind"] == "changes" for m in inventories(c)[1:])
    finally:
        c.close()


def test_nothing_is_published_by_default(
    tmp_path: Path, program: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    c = start(tmp_path)
    try:
        poll(lambda: any(p.topic.startswith("$aws/things/") for p in c.nucleus.published), what="a report")
        assert inventories(c) == []
    finally:
        c.close()


def test_the_local_sink_prints_it_with_its_topic(tmp_path: Path) -> None:
    import io

    from ddcustom.device.outputs.stdout import JsonLinesSink

    stream = io.StringIO()
    baseline = Baseline()
    baseline.learn(1)
    InventoryPublisher(THING, str(tmp_path / "i.json"), WallClock()).run(
        JsonLinesSink(stream, THING, "a"), baseline, False, 0.0
    )
    line = json.loads(stream.getvalue())
    assert line["kind"] == "inventory" and line["topic"] == f"ddcustom/{THING}/inventory"
    valid(line["inventory"])
