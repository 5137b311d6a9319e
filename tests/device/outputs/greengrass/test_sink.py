"""GreengrassSink: what it publishes where, following the settings it is handed; against the stand-in
nucleus and the real client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ddcustom.device.detect.events import ViolationEvent
from ddcustom.device.outputs.greengrass.connection import GreengrassConnection
from ddcustom.device.outputs.greengrass.sink import GreengrassSink
from ddcustom.tooling.devnucleus import DevNucleus
from support.helpers import settings

THING = "test-thing"  # the thing of the nucleus fixture
REPORT_TOPIC = f"$aws/things/{THING}/defender/metrics/json"
ALERT = ViolationEvent(
    violation_id="00000000-0000-4000-8000-000000000001",
    thing_name=THING,
    security_profile_name="crypto-mining",
    behavior={"name": "cpu-usage"},
    metric_value={"number": 95},
    event_type="in-alarm",
    event_time=1764650000,
)


@pytest.fixture
def sink(nucleus: DevNucleus) -> Iterator[GreengrassSink]:
    made = GreengrassSink(GreengrassConnection(timeout=5.0), THING)
    yield made
    made.close()


def test_reports_go_out_only_once_settings_turn_them_on(nucleus: DevNucleus, sink: GreengrassSink) -> None:
    report = {"header": {"report_id": 1, "version": "1.0"}}
    assert sink.publish_report(report) is False  # no settings yet
    sink.apply_settings(settings(EnableDeviceDefenderReport=False))
    assert sink.publish_report(report) is False
    sink.apply_settings(settings())
    assert sink.publish_report(report) is True
    assert [(p.topic, json.loads(p.payload)) for p in nucleus.published] == [(REPORT_TOPIC, report)]


def test_alerts_go_to_the_topics_of_the_settings_in_use(nucleus: DevNucleus, sink: GreengrassSink) -> None:
    sink.apply_settings(
        settings(AlertTopic="ddcustom/{thingName}/alerts", LocalAlertTopic="ddcustom/local/a")
    )
    sink.publish_alert(ALERT)
    sink.apply_settings(settings(LocalAlertTopic="ddcustom/local/b"))
    sink.publish_alert(ALERT)
    sent = [(p.service, p.topic) for p in nucleus.published]
    assert sent == [
        ("iot", f"ddcustom/{THING}/alerts"),
        ("local", "ddcustom/local/a"),
        ("iot", f"ddcustom/{THING}/alerts"),
        ("local", "ddcustom/local/b"),
    ]
    assert all(json.loads(p.payload)["violationId"] == ALERT.violation_id for p in nucleus.published)


def test_rejections_of_reports_are_counted(nucleus: DevNucleus, sink: GreengrassSink) -> None:
    sink.apply_settings(settings())
    sink.publish_report({"header": {"report_id": 1, "version": "1.0"}})  # the first call connects
    assert nucleus.deliver_iot(f"{REPORT_TOPIC}/rejected", b'{"reportId": 7}') == 1
    nucleus.wait_until(lambda: sink.rejected == 1)
