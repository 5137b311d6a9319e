"""The component under the stand-in nucleus, with the real awsiotsdk client and the project's recipe.

The component runs in-process (support.greengrass: the Greengrass entry's loop on a thread) so tests can
read its counters and use short reconnect backoffs; the wire, the client and the recipe's access control
are the real ones.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest

from ddcustom.cli.main import main
from ddcustom.device.outputs.greengrass.connection import GreengrassConnection
from ddcustom.device.run.runner import EXIT_INVALID_CONFIGURATION
from ddcustom.tooling.devnucleus import DevNucleus
from support.greengrass import (
    ALERT_TOPIC,
    BASE,
    REPORT_TOPIC,
    THING,
    Component,
    InProcess,
    is_report,
    reports,
)
from support.helpers import REPORT_SCHEMA, ROOT, WAIT, poll


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Component]]:
    started: list[Component] = []

    def _start(**merge: Any) -> Component:
        started.append(Component(tmp_path, merge))
        return started[-1]

    yield _start
    for component in started:
        component.close()


@pytest.fixture
def feedback(tmp_path: Path) -> Callable[[float, float], dict[str, Any]]:
    def write(load: float, latency: float) -> dict[str, Any]:
        (tmp_path / "load").write_text(f"{load}\n")
        (tmp_path / "time").write_text(f"{latency}\n")
        return {
            "GpuLoadFeedbackFile": str(tmp_path / "load"),
            "InferenceTimeFeedbackFile": str(tmp_path / "time"),
            "GpuBusyOutsideFeedbackFile": str(tmp_path / "outside"),
        }

    return write


def test_first_report_goes_out_at_start_without_network_stats(start: Callable[..., Component]) -> None:
    c = start()
    first = json.loads(c.nucleus.wait_for(is_report, timeout=15).payload)
    jsonschema.validate(first, REPORT_SCHEMA)
    assert "network_stats" not in first.get("metrics", {})  # deltas need two samples
    assert 0 < first["custom_metrics"]["memory_usage"][0]["number"] <= 100
    assert "cpu_usage" not in first["custom_metrics"]  # CPU use needs two readings, too
    poll(lambda: "RUNNING" in c.nucleus.states, what="UpdateState RUNNING")


def test_rejected_reports_are_logged_with_code_and_counted(
    start: Callable[..., Component], caplog: pytest.LogCaptureFixture
) -> None:
    c = start()
    c.nucleus.wait_for(is_report, timeout=15)
    poll(lambda: f"{REPORT_TOPIC}/rejected" in c.nucleus.subscriptions("iot"), what="subscription")
    answer = {
        "thingName": THING,
        "reportId": 1,
        "status": "REJECTED",
        "statusDetails": {"ErrorCode": "InvalidPayload", "ErrorMessage": "Malformed metrics report"},
    }
    with caplog.at_level(logging.ERROR):
        assert c.nucleus.deliver_iot(f"{REPORT_TOPIC}/rejected", json.dumps(answer).encode()) == 1
        c.nucleus.deliver_iot(f"{REPORT_TOPIC}/rejected", b"not json")
        poll(lambda: c.sink.rejected == 2, what="two rejections counted")
    assert "InvalidPayload: Malformed metrics report" in caplog.text
    assert "unparseable answer" in caplog.text


def test_configuration_update_applies_without_restart_and_reports_at_once(
    start: Callable[..., Component], feedback: Callable[[float, float], dict[str, Any]]
) -> None:
    c = start()
    c.nucleus.wait_for(is_report, timeout=15)
    assert "gpu_load_per_inference" not in reports(c.nucleus)[0]["custom_metrics"]

    c.nucleus.update_configuration({"EnableGPUMetrics": True, **feedback(85, 180)})
    with_gpu = c.nucleus.wait_for(
        lambda p: is_report(p) and "gpu_load_per_inference" in json.loads(p.payload)["custom_metrics"],
        timeout=15,
    )
    custom = json.loads(with_gpu.payload)["custom_metrics"]
    assert custom["gpu_load_per_inference"] == [{"number": 85}]
    assert custom["avg_inference_time"] == [{"number": 180}]
    # 85 / 180 break the article's two rules: alerts on IoT Core and on local pub/sub
    alert = json.loads(c.nucleus.wait_for(lambda p: p.topic == ALERT_TOPIC, timeout=15).payload)
    assert alert["violationEventType"] == "in-alarm" and alert["thingName"] == THING
    local = c.nucleus.wait_for(lambda p: p.service == "local" and p.topic == "ddcustom/alerts", timeout=15)
    assert json.loads(local.payload)["violationId"]


def test_bad_update_is_refused_and_the_old_settings_stay(
    start: Callable[..., Component],
    feedback: Callable[[float, float], dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = start()
    c.nucleus.wait_for(is_report, timeout=15)
    before = c.settings
    with caplog.at_level(logging.ERROR):
        c.nucleus.update_configuration({"EnableGPUMetrics": "maybe"})
        poll(lambda: "configuration update refused" in caplog.text, what="refusal logged")
    assert "'EnableGPUMetrics'" in caplog.text and '"maybe"' in caplog.text
    assert c.settings is before
    # the deployment is fixed: the component takes it
    c.nucleus.update_configuration({"EnableGPUMetrics": True, **feedback(10, 20)})
    poll(
        lambda: c.settings is not None and c.settings.enable_gpu_metrics,
        what="fixed update applied",
    )


def test_invalid_initial_configuration_reports_errored_and_the_component_exits(
    start: Callable[..., Component],
) -> None:
    # Not "waiting for a corrected configuration": the nucleus would stop it and start it again anyway
    # (tests/device/run/test_lifecycle.py follows that through to BROKEN).
    c = start(MaxReportListSize=0)
    c.thread.join(WAIT)
    assert not c.thread.is_alive()
    assert c.status == EXIT_INVALID_CONFIGURATION != 0
    assert c.nucleus.states == ["ERRORED"]
    assert reports(c.nucleus) == [] and c.settings is None


def test_a_merge_the_component_refuses_fails_the_deployment_before_anything_applies(
    start: Callable[..., Component], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = start()
    c.nucleus.wait_for(is_report, timeout=15)
    poll(lambda: c.nucleus.subscriptions("validate") == [""], what="the validation subscription")
    before, configuration = c.settings, c.nucleus.configuration

    result = c.nucleus.deploy({"EnableGPUMetrics": "yes"})

    assert (result.status, result.detailed_status) == ("FAILED", "FAILED_NO_STATE_CHANGE")
    assert "COMPONENT_CONFIGURATION_NOT_VALID" in result.error_stack
    assert f"name = {c.nucleus.component_name}" in result.failure_cause
    # the refusal says what `ddcustom check` says of the same configuration
    proposed = tmp_path / "proposed.json"
    proposed.write_text(json.dumps({**configuration, "EnableGPUMetrics": "yes"}))
    capsys.readouterr()
    assert main(["check", "--config", str(proposed)]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "configuration error:" in line]
    problem = line.split("ddcustom: configuration error: ", 1)[1]
    assert "'EnableGPUMetrics'" in problem and problem in result.failure_cause
    # nothing applied: the nucleus keeps the configuration, the component its settings, and it runs on
    assert c.nucleus.configuration == configuration
    assert c.settings is before
    count = len(reports(c.nucleus))
    assert c.nucleus.deploy({"MaxReportListSize": 99}).succeeded  # a valid one goes through, and applies
    poll(lambda: c.settings is not None and c.settings.max_report_list_size == 99, what="the update applied")
    poll(lambda: len(reports(c.nucleus)) > count, what="a report with the new settings")
    assert c.thread.is_alive()


def test_a_refusal_of_many_problems_fits_the_deployment_status(start: Callable[..., Component]) -> None:
    # IoT Jobs keeps 1024 characters of each status detail, the failure cause among them.
    c = start()
    c.nucleus.wait_for(is_report, timeout=15)
    poll(lambda: c.nucleus.subscriptions("validate") == [""], what="the validation subscription")
    merge: dict[str, Any] = {f"Unknown{i}": "x" * 300 for i in range(40)}
    merge.update(DetectIntervalSeconds=-1, LogLevel="LOUD", MiningPoolPorts=["x" * 5000])
    result = c.nucleus.deploy(merge)
    assert result.detailed_status == "FAILED_NO_STATE_CHANGE"
    assert len(result.failure_cause) <= 1024
    assert "4 configuration problems" in result.failure_cause and "more" in result.failure_cause
    assert c.thread.is_alive()


def test_twenty_dropped_connections_in_a_row_then_publishing_again(start: Callable[..., Component]) -> None:
    c = start()
    c.nucleus.wait_for(is_report, timeout=15)
    for i in range(20):
        connects = c.connection.connects
        c.nucleus.drop_connections()
        poll(lambda n=connects: c.connection.connects > n, what=f"reconnect after drop {i + 1}")  # type: ignore[misc]
    # and the next 20 connection attempts refused at once, in a row
    connects = c.connection.connects
    c.nucleus.drop_connections(refuse_next=20)
    poll(lambda: c.connection.connects > connects, timeout=30, what="reconnect after 20 refused connects")

    count = len(reports(c.nucleus))
    c.nucleus.update_configuration({"MaxReportListSize": 99})  # a change publishes a report right away
    poll(lambda: len(reports(c.nucleus)) > count, what="a report after the drops")
    ids = [r["header"]["report_id"] for r in reports(c.nucleus)]
    assert ids == sorted(set(ids)), f"report_id went backwards or repeated: {ids}"
    assert c.thread.is_alive()


def test_an_alert_the_recipe_does_not_grant_stays_spooled_until_it_can_go(
    start: Callable[..., Component],
    feedback: Callable[[float, float], dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Another thing's topic: the recipe grants alerts for the component's own thing only.
    c = start(AlertTopic="ddcustom/other-thing/alerts")
    c.nucleus.wait_for(is_report, timeout=15)
    with caplog.at_level(logging.WARNING):
        c.nucleus.update_configuration({"EnableGPUMetrics": True, **feedback(85, 180)})
        poll(lambda: "does not grant" in caplog.text, what="authorization refusal logged")
    assert not [p for p in c.nucleus.published if "other-thing" in p.topic]
    assert c.thread.is_alive()

    c.nucleus.update_configuration({"AlertTopic": "ddcustom/{thingName}/alerts"})
    delivered = c.nucleus.wait_for(lambda p: p.topic == ALERT_TOPIC, timeout=15)
    assert json.loads(delivered.payload)["violationEventType"] == "in-alarm"


def test_failed_publishes_lose_no_alert(
    start: Callable[..., Component], feedback: Callable[[float, float], dict[str, Any]]
) -> None:
    c = start()
    c.nucleus.wait_for(is_report, timeout=15)
    c.nucleus.fail_publishes(None)  # every publish fails until cleared
    c.nucleus.update_configuration({"EnableGPUMetrics": True, **feedback(85, 180)})
    poll(lambda: c.settings is not None and c.settings.enable_gpu_metrics, what="update applied")
    assert c.settings is not None
    spool = Path(c.settings.alert_spool_dir)
    # both alarms raised while every publish fails: they wait in the spool, none went out
    poll(lambda: len(list(spool.glob("*.alert.json"))) == 2, what="both alerts spooled")
    assert not [p for p in c.nucleus.published if p.topic == ALERT_TOPIC]
    c.nucleus.fail_publishes(0)
    first = c.nucleus.wait_for(lambda p: p.topic == ALERT_TOPIC, timeout=15)
    poll(
        lambda: (
            len(
                {
                    json.loads(p.payload)["behavior"]["name"]
                    for p in c.nucleus.published
                    if p.topic == ALERT_TOPIC
                }
            )
            >= 2
        ),
        what="both GPU alerts delivered",
    )
    assert json.loads(first.payload)["violationEventType"] == "in-alarm"


def test_running_is_reported_even_when_device_defender_reports_are_off(
    start: Callable[..., Component],
) -> None:
    # Regression: RUNNING was only reported after a published report, so never with reports off.
    c = start(EnableDeviceDefenderReport=False)
    poll(lambda: "RUNNING" in c.nucleus.states, what="UpdateState RUNNING")
    assert reports(c.nucleus) == []


def test_waiting_for_the_nucleus_logs_each_failed_attempt_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: while the reconnect backoff ran, a "not connected; next attempt in" warning every second.
    connection = GreengrassConnection(
        timeout=1.0,
        socket_path=str(tmp_path / "no.socket"),
        token="t",
        reconnect_base=60.0,
        reconnect_cap=60.0,
    )
    with caplog.at_level(logging.WARNING):
        c = InProcess(connection)
        poll(lambda: "cannot connect to the nucleus" in caplog.text, what="the first attempt")
        time.sleep(2.5)
        c.stop.set()
        c.thread.join(10)
    assert not c.thread.is_alive()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings and all("cannot connect to the nucleus" in message for message in warnings), warnings


def test_short_names_report_once_and_persist_its_id(start: Callable[..., Component], tmp_path: Path) -> None:
    # Regression: the sink read report["header"] after publishing; with short names ("hed") that raised,
    # the cycle failed, and the same report was published again on every retry.
    c = start(UseShortNames=True)
    first = json.loads(c.nucleus.wait_for(is_report, timeout=15).payload)
    assert "hed" in first
    id_file = tmp_path / "state" / "report_id"
    poll(id_file.exists, what="the report id persisted after a successful report")
    assert int(id_file.read_text()) == first["hed"]["rid"]
    assert len(reports(c.nucleus)) == 1


def test_answer_subscriptions_without_an_answer_are_made_again_later(tmp_path: Path) -> None:
    # SubscribeToIoTCore can wait on the cloud: the component starts and reports without it, and
    # subscribes to Device Defender's answers once the nucleus answers.
    nucleus = DevNucleus(ROOT / "recipe.yaml", THING, {**BASE, "StateDirectory": str(tmp_path)})
    nucleus.start()
    nucleus.delay(5.0, "aws.greengrass#SubscribeToIoTCore")
    c = InProcess(
        GreengrassConnection(
            timeout=0.5, socket_path=nucleus.socket_path, token=nucleus.token, resubscribe_seconds=0.2
        )
    )
    try:
        nucleus.wait_for(is_report, timeout=15)
        poll(lambda: "RUNNING" in nucleus.states, what="UpdateState RUNNING")
        assert nucleus.deliver_iot(REPORT_TOPIC + "/rejected", b"{}") == 0  # nobody subscribed yet

        nucleus.delay(0)
        poll(
            lambda: nucleus.deliver_iot(REPORT_TOPIC + "/rejected", b'{"reportId": 1}') == 1,
            what="resubscribed",
        )
        poll(lambda: c.sink.rejected >= 1, what="the rejection counted")
    finally:
        c.halt()
        nucleus.stop()
    assert not c.thread.is_alive(), "the component did not stop"
