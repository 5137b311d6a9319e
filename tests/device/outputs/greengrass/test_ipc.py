"""GreengrassIpc (the component's IPC wrapper) against the stand-in nucleus and the real client."""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Iterator

import pytest

from ddcustom.device.backoff import backoff_delays
from ddcustom.device.outputs.greengrass.ipc import (
    MAX_VALIDITY_MESSAGE_CHARS,
    UNANSWERED_CALLS_BEFORE_RECONNECT,
    GreengrassIpc,
    IpcError,
    IpcTimeoutError,
    UnauthorizedIpcError,
)
from ddcustom.tooling.devnucleus import DevNucleus
from support.fakes import Highest
from support.helpers import poll

REPORT_TOPIC = "$aws/things/test-thing/defender/metrics/json"  # the thing of the nucleus fixture
WAIT = 5.0


class Disconnects:
    """Collects on_disconnect reasons; lets a test wait for the next one."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.event = threading.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.event.set()

    def wait(self) -> None:
        assert self.event.wait(WAIT), "the drop was not detected"
        self.event.clear()


@pytest.fixture
def disconnects() -> Disconnects:
    return Disconnects()


@pytest.fixture
def ipc(nucleus: DevNucleus, disconnects: Disconnects) -> Iterator[GreengrassIpc]:
    wrapper = GreengrassIpc(timeout=WAIT, on_disconnect=disconnects)
    wrapper.connect()
    yield wrapper
    wrapper.close()


def test_ipc_publish_iot_and_local(nucleus: DevNucleus, ipc: GreengrassIpc) -> None:
    assert ipc.connected
    ipc.publish_iot(REPORT_TOPIC, b'{"report": 1}')
    ipc.publish_iot(REPORT_TOPIC, b"qos0", qos=0)
    ipc.publish_local("ddcustom/local/alerts", b"alert")
    recorded = [(p.service, p.topic, p.payload, p.qos) for p in nucleus.published]
    assert recorded == [
        ("iot", REPORT_TOPIC, b'{"report": 1}', 1),
        ("iot", REPORT_TOPIC, b"qos0", 0),
        ("local", "ddcustom/local/alerts", b"alert", None),
    ]
    with pytest.raises(ValueError, match="qos"):
        ipc.publish_iot(REPORT_TOPIC, b"x", qos=2)


def test_ipc_connect_needs_greengrass_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SVCUID", raising=False)
    monkeypatch.delenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", raising=False)
    wrapper = GreengrassIpc(timeout=WAIT)
    with pytest.raises(IpcError, match="not running under Greengrass"):
        wrapper.connect()
    with pytest.raises(IpcError, match="not connected"):
        wrapper.publish_iot(REPORT_TOPIC, b"x")


def test_ipc_wrong_token_and_refused_connect(nucleus: DevNucleus) -> None:
    with pytest.raises(IpcError, match="rejected the SVCUID"):
        GreengrassIpc(timeout=WAIT, token="wrong").connect()
    nucleus.drop_connections(refuse_next=1)
    wrapper = GreengrassIpc(timeout=WAIT)
    with pytest.raises(IpcError, match="connect to"):
        wrapper.connect()
    assert not wrapper.connected
    wrapper.connect()
    assert wrapper.connected
    wrapper.close()
    assert not wrapper.connected


def test_ipc_get_configuration(ipc: GreengrassIpc) -> None:
    config = ipc.get_configuration()
    assert config["SampleIntervalSeconds"] == 300
    assert ipc.get_configuration(["Gpu", "Enabled"]) == {"Enabled": True}
    with pytest.raises(IpcError, match=r"ResourceNotFoundError: .*Nope") as info:
        ipc.get_configuration(["Nope"])
    assert not isinstance(info.value, UnauthorizedIpcError)


def test_ipc_configuration_updates_call_back(nucleus: DevNucleus, ipc: GreengrassIpc) -> None:
    updated = threading.Event()
    seen: list[int] = []

    def on_update() -> None:
        # a callback may call back into IPC: it runs off the network thread
        seen.append(ipc.get_configuration()["SampleIntervalSeconds"])
        updated.set()

    ipc.subscribe_configuration(on_update)
    nucleus.update_configuration({"SampleIntervalSeconds": 600})
    assert updated.wait(WAIT)
    assert seen[0] == 600


def test_ipc_subscribe_iot_receives_messages(nucleus: DevNucleus, ipc: GreengrassIpc) -> None:
    received: list[tuple[str, bytes]] = []
    arrived = threading.Event()

    def on_message(topic: str, payload: bytes) -> None:
        received.append((topic, payload))
        arrived.set()

    ipc.subscribe_iot(REPORT_TOPIC + "/rejected", on_message)
    assert nucleus.deliver_iot(REPORT_TOPIC + "/rejected", b'{"reportId": 7}') == 1
    assert arrived.wait(WAIT)
    assert received == [(REPORT_TOPIC + "/rejected", b'{"reportId": 7}')]

    # subscribing again to the same topic replaces the callback; it does not subscribe twice
    replaced: list[bytes] = []
    ipc.subscribe_iot(REPORT_TOPIC + "/rejected", lambda topic, payload: replaced.append(payload))
    assert nucleus.subscriptions("iot") == [REPORT_TOPIC + "/rejected"]
    assert nucleus.deliver_iot(REPORT_TOPIC + "/rejected", b"again") == 1
    nucleus.wait_until(lambda: replaced == [b"again"])
    assert len(received) == 1


def test_ipc_unauthorized_is_a_distinct_error(nucleus: DevNucleus, ipc: GreengrassIpc) -> None:
    with pytest.raises(
        UnauthorizedIpcError, match=r"PublishToIoTCore not/granted: unauthorized.*accessControl"
    ):
        ipc.publish_iot("not/granted", b"x")
    with pytest.raises(UnauthorizedIpcError, match="SubscribeToIoTCore #"):
        ipc.subscribe_iot("#", lambda topic, payload: None)
    with pytest.raises(UnauthorizedIpcError, match="PublishToTopic other"):
        ipc.publish_local("other", b"x")
    assert ipc.connected  # a refusal is not a lost connection
    ipc.publish_iot(REPORT_TOPIC, b"ok")
    # the refused subscription is not remembered: reconnecting does not fail on it
    ipc.close()
    ipc.connect()
    assert nucleus.subscriptions() == []


def test_ipc_update_state(nucleus: DevNucleus, ipc: GreengrassIpc) -> None:
    ipc.update_state("RUNNING")
    ipc.update_state("ERRORED")
    assert nucleus.states == ["RUNNING", "ERRORED"]
    with pytest.raises(ValueError, match="state must be one of"):
        ipc.update_state("BROKEN")


def test_ipc_publish_error_is_reported(nucleus: DevNucleus, ipc: GreengrassIpc) -> None:
    nucleus.fail_publishes(1, message="throttled")
    with pytest.raises(
        IpcError, match=re.escape(f"PublishToIoTCore {REPORT_TOPIC}: ServiceError: ") + ".*throttled"
    ):
        ipc.publish_iot(REPORT_TOPIC, b"first")
    assert ipc.connected
    ipc.publish_iot(REPORT_TOPIC, b"second")
    assert [p.payload for p in nucleus.published] == [b"second"]


def test_ipc_delayed_answer_hits_the_timeout(nucleus: DevNucleus) -> None:
    wrapper = GreengrassIpc(timeout=0.3)
    wrapper.connect()
    try:
        nucleus.delay(1.0)
        with pytest.raises(IpcError, match=re.escape("no answer from the nucleus within 0.3 s")):
            wrapper.update_state("RUNNING")
        nucleus.delay(0)
        wrapper.publish_iot(REPORT_TOPIC, b"after the delay")
        assert nucleus.wait_for(lambda p: p.payload == b"after the delay")
    finally:
        wrapper.close()


def test_a_nucleus_that_stops_answering_is_taken_as_lost_after_three_calls(
    nucleus: DevNucleus, disconnects: Disconnects
) -> None:
    # The socket stays open, nothing answers: without this the component would wait out every call
    # forever after, one timeout each, and never reconnect.
    wrapper = GreengrassIpc(timeout=0.3, on_disconnect=disconnects)
    wrapper.connect()
    try:
        nucleus.delay(2.0)
        for _ in range(UNANSWERED_CALLS_BEFORE_RECONNECT - 1):
            with pytest.raises(IpcError, match="no answer"):
                wrapper.publish_iot(REPORT_TOPIC, b"unanswered")
        assert wrapper.connected and disconnects.reasons == []
        with pytest.raises(IpcError, match="no answer"):
            wrapper.publish_iot(REPORT_TOPIC, b"unanswered")
        disconnects.wait()
        assert not wrapper.connected
        assert "3 calls in a row unanswered" in disconnects.reasons[0]

        nucleus.delay(0)
        wrapper.connect()
        wrapper.publish_iot(REPORT_TOPIC, b"after reconnecting")
        assert nucleus.wait_for(lambda p: p.payload == b"after reconnecting")
    finally:
        wrapper.close()


def test_an_answer_between_timeouts_keeps_the_connection(
    nucleus: DevNucleus, disconnects: Disconnects
) -> None:
    # A slow nucleus that still answers now and then (an error answer counts) is not dropped.
    wrapper = GreengrassIpc(timeout=0.3, on_disconnect=disconnects)
    wrapper.connect()
    try:
        for _ in range(3):
            nucleus.delay(2.0)
            for _ in range(UNANSWERED_CALLS_BEFORE_RECONNECT - 1):
                with pytest.raises(IpcError, match="no answer"):
                    wrapper.publish_iot(REPORT_TOPIC, b"slow")
            nucleus.delay(0)
            nucleus.fail_publishes(1)
            with pytest.raises(IpcError, match="ServiceError"):
                wrapper.publish_iot(REPORT_TOPIC, b"answered with an error")
        assert wrapper.connected and disconnects.reasons == []
    finally:
        wrapper.close()


def test_a_reconnect_goes_on_without_an_iot_core_subscription_that_gets_no_answer(
    nucleus: DevNucleus, disconnects: Disconnects
) -> None:
    # SubscribeToIoTCore may wait on the cloud; the connection (local alerts, configuration) must not.
    wrapper = GreengrassIpc(timeout=0.3, on_disconnect=disconnects)
    wrapper.connect()
    try:
        received: list[bytes] = []
        updates: list[None] = []
        wrapper.subscribe_iot(REPORT_TOPIC + "/rejected", lambda _topic, payload: received.append(payload))
        wrapper.subscribe_configuration(lambda: updates.append(None))
        nucleus.drop_connections()
        disconnects.wait()
        nucleus.delay(2.0, "aws.greengrass#SubscribeToIoTCore")

        wrapper.connect()

        assert wrapper.connected
        assert wrapper.missing_subscriptions() == [REPORT_TOPIC + "/rejected"]
        wrapper.publish_local("ddcustom/local/alerts", b"still works")
        nucleus.update_configuration({"LogLevel": "DEBUG"})
        nucleus.wait_until(lambda: updates != [], WAIT)
        with pytest.raises(IpcTimeoutError):
            wrapper.resubscribe()  # still no answer: kept for the next try
        assert wrapper.missing_subscriptions() == [REPORT_TOPIC + "/rejected"]

        nucleus.delay(0)
        wrapper.resubscribe()
        assert wrapper.missing_subscriptions() == []
        assert nucleus.deliver_iot(REPORT_TOPIC + "/rejected", b"answer") == 1
        nucleus.wait_until(lambda: received == [b"answer"], WAIT)
    finally:
        wrapper.close()


def test_a_first_iot_core_subscription_without_an_answer_is_kept_for_later(nucleus: DevNucleus) -> None:
    wrapper = GreengrassIpc(timeout=0.3)
    wrapper.connect()
    try:
        nucleus.delay(2.0, "aws.greengrass#SubscribeToIoTCore")
        with pytest.raises(IpcTimeoutError):
            wrapper.subscribe_iot(REPORT_TOPIC + "/accepted", lambda _topic, _payload: None)
        assert wrapper.missing_subscriptions() == [REPORT_TOPIC + "/accepted"]
        nucleus.delay(0)
        wrapper.resubscribe()
        assert nucleus.deliver_iot(REPORT_TOPIC + "/accepted", b"{}") == 1
    finally:
        wrapper.close()


def test_ipc_drop_and_reconnect_20_times(
    nucleus: DevNucleus, ipc: GreengrassIpc, disconnects: Disconnects
) -> None:
    messages: list[bytes] = []
    updates: list[None] = []
    ipc.subscribe_iot(REPORT_TOPIC + "/accepted", lambda topic, payload: messages.append(payload))
    ipc.subscribe_configuration(lambda: updates.append(None))
    for round_ in range(20):
        nucleus.drop_connections()
        disconnects.wait()
        assert not ipc.connected
        with pytest.raises(IpcError, match="not connected"):
            ipc.publish_iot(REPORT_TOPIC, b"while down")
        ipc.connect()
        if round_ % 2:  # callers may also subscribe again after connecting, as the agent does
            ipc.subscribe_iot(REPORT_TOPIC + "/accepted", lambda topic, payload: messages.append(payload))
        ipc.publish_iot(REPORT_TOPIC, str(round_).encode())
    assert len(disconnects.reasons) == 20
    assert [p.payload for p in nucleus.published] == [str(i).encode() for i in range(20)]
    # the subscriptions were made again on the last connection, once each
    assert sorted(nucleus.subscriptions()) == ["", REPORT_TOPIC + "/accepted"]
    assert nucleus.deliver_iot(REPORT_TOPIC + "/accepted", b"answer") == 1
    nucleus.update_configuration({"SampleIntervalSeconds": 1200})
    nucleus.wait_until(lambda: messages == [b"answer"] and len(updates) == 1)


def test_ipc_call_on_a_dropped_connection_is_detected(nucleus: DevNucleus) -> None:
    wrapper = GreengrassIpc(timeout=WAIT)  # no on_disconnect callback: the next call must notice
    wrapper.connect()
    nucleus.stop()
    nucleus.wait_until(lambda: not wrapper.connected)
    with pytest.raises(IpcError):
        wrapper.publish_iot(REPORT_TOPIC, b"x")
    assert wrapper.last_disconnect_reason
    wrapper.close()


def test_backoff_delays_full_jitter() -> None:
    delays = backoff_delays(1.0, 30.0, random.Random(42))
    values = [next(delays) for _ in range(12)]
    ceilings = [min(30.0, 2.0**n) for n in range(12)]
    assert all(0.0 <= value <= ceiling for value, ceiling in zip(values, ceilings))
    assert len(set(values)) == len(values)  # jittered, not a fixed schedule
    # with the draws fixed at their maximum, the ceiling doubles up to the cap
    capped = backoff_delays(0.5, 5.0, Highest())
    assert [next(capped) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    with pytest.raises(ValueError):
        next(backoff_delays(0.0, 1.0))
    with pytest.raises(ValueError):
        next(backoff_delays(2.0, 1.0))


def test_ipc_reconnect_drops_a_subscription_the_nucleus_no_longer_grants(
    nucleus: DevNucleus, ipc: GreengrassIpc, disconnects: Disconnects, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: a remembered subscription refused on reconnect made every reconnect fail, for good.
    ipc.subscribe_iot(REPORT_TOPIC + "/accepted", lambda topic, payload: None)
    ipc.subscribe_configuration(lambda: None)
    publish_only = {"operations": ["aws.greengrass#PublishToIoTCore"]}  # SubscribeToIoTCore revoked
    policies = {"com.awsiotblog.DeviceDefenderCustom:mqttproxy:1": publish_only}
    nucleus.update_configuration({"accessControl": {"aws.greengrass.ipc.mqttproxy": policies}})
    nucleus.drop_connections()
    disconnects.wait()
    ipc.connect()
    assert ipc.connected
    ipc.publish_iot(REPORT_TOPIC, b"still publishing")
    assert nucleus.subscriptions() == [""]  # the configuration subscription is back, the refused one is not
    assert "no longer subscribed" in caplog.text
    ipc.close()
    nucleus.wait_until(lambda: nucleus.connection_count == 0)  # its subscriptions gone with it
    ipc.connect()  # and it is not tried again
    assert nucleus.subscriptions() == [""]


def test_ipc_answers_a_validation_request_within_the_message_bound(
    nucleus: DevNucleus, ipc: GreengrassIpc
) -> None:
    asked: list[tuple[str, dict]] = []

    def on_request(deployment_id: str, configuration: dict) -> None:
        asked.append((deployment_id, configuration))
        ipc.send_validity_report(deployment_id, False, "too long: " + "x" * 5000)

    ipc.subscribe_validation(on_request)
    nucleus.wait_until(lambda: nucleus.subscriptions("validate") == [""])
    result = nucleus.deploy({"SampleIntervalSeconds": 600})
    ((deployment_id, configuration),) = asked
    assert deployment_id == result.deployment_id and configuration["SampleIntervalSeconds"] == 600
    assert result.detailed_status == "FAILED_NO_STATE_CHANGE"
    message = result.failure_cause.split("message = ", 1)[1].rstrip(" }")
    assert message.startswith("too long: xxx") and len(message) == MAX_VALIDITY_MESSAGE_CHARS
    assert nucleus.configuration["SampleIntervalSeconds"] == 300

    # after a reconnect the subscription is made again, and an accepted configuration applies
    accept: list[str] = []

    def on_accept(deployment_id: str, _configuration: dict) -> None:
        accept.append(deployment_id)
        ipc.send_validity_report(deployment_id, True)

    ipc.subscribe_validation(on_accept)
    nucleus.drop_connections()
    poll(lambda: not ipc.connected, what="the drop seen")
    ipc.connect()
    nucleus.wait_until(lambda: nucleus.subscriptions("validate") == [""])
    assert nucleus.deploy({"SampleIntervalSeconds": 600}).succeeded and len(accept) == 1
    assert nucleus.configuration["SampleIntervalSeconds"] == 600


def test_a_reconnect_goes_on_without_a_validation_subscription_the_nucleus_does_not_answer(
    nucleus: DevNucleus, disconnects: Disconnects
) -> None:
    # An older nucleus, or one that does not answer it: updates are then checked once applied.
    ipc = GreengrassIpc(timeout=0.5, on_disconnect=disconnects)
    ipc.connect()
    try:
        ipc.subscribe_validation(lambda _deployment, _configuration: None)
        nucleus.delay(5.0, "aws.greengrass#SubscribeToValidateConfigurationUpdates")
        nucleus.drop_connections()
        disconnects.wait()
        ipc.connect()  # does not fail for want of it
        assert ipc.connected and ipc.missing_subscriptions() == ["validate"]
    finally:
        nucleus.delay(0)
        ipc.close()
