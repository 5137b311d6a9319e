"""The stand-in nucleus against the unmodified awsiotsdk Greengrass IPC client."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import pytest
from awsiot.eventstreamrpc import AccessDeniedError, LifecycleHandler
from awsiot.greengrasscoreipc import connect as ipc_connect
from awsiot.greengrasscoreipc import model
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

from ddcustom.tooling.devnucleus import DevNucleus, RecipeError
from ddcustom.tooling.devnucleus.__main__ import main as devnucleus_main
from ddcustom.tooling.devnucleus.codec import Header, Message, encode, read_message
from ddcustom.tooling.devnucleus.server import CONNECT, CONNECT_ACK, PING, PING_RESPONSE, PROTOCOL_ERROR
from support.helpers import Lines, reap, start

REPORT_TOPIC = "$aws/things/test-thing/defender/metrics/json"  # the thing of the nucleus fixture
COMPONENT = "com.awsiotblog.DeviceDefenderCustom"
WAIT = 5.0


def result(future: Future) -> Any:
    return future.result(WAIT)


def error_of(future: Future) -> BaseException:
    """The exception a call ends with (error shapes keep their text in .message, not str())."""
    with pytest.raises(Exception) as info:
        result(future)
    return info.value


@pytest.fixture
def client(nucleus: DevNucleus) -> Iterator[GreengrassCoreIPCClientV2]:
    ipc = GreengrassCoreIPCClientV2()
    yield ipc
    ipc.close(executor_wait=False)


def _raw_connect(nucleus: DevNucleus, token: str) -> socket.socket:
    """A hand-made client speaking the protocol with our codec, to send what the SDK never would."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(nucleus.socket_path)
    sock.sendall(
        encode(
            Message(
                [
                    Header.int32(":message-type", CONNECT),
                    Header.int32(":message-flags", 0),
                    Header.int32(":stream-id", 0),
                    Header.string(":version", "0.1.0"),
                ],
                json.dumps({"authToken": token}).encode(),
            )
        )
    )
    return sock


def test_devnucleus_connect_and_publish_to_iot_core(
    nucleus: DevNucleus, client: GreengrassCoreIPCClientV2
) -> None:
    result(client.publish_to_iot_core_async(topic_name=REPORT_TOPIC, qos="1", payload=b'{"header": {}}'))
    published = nucleus.wait_for(lambda p: p.topic == REPORT_TOPIC)
    assert (published.payload, published.qos, published.service) == (b'{"header": {}}', 1, "iot")


def test_devnucleus_wrong_token_is_access_denied(nucleus: DevNucleus) -> None:
    with pytest.raises(AccessDeniedError):
        ipc_connect(ipc_socket=nucleus.socket_path, authtoken="not-the-token", timeout=WAIT)
    assert nucleus.connection_count == 0


def test_devnucleus_unauthorized_topics_and_operations(
    nucleus: DevNucleus, client: GreengrassCoreIPCClientV2
) -> None:
    refused = error_of(
        client.publish_to_iot_core_async(topic_name="$aws/things/other/defender/metrics/json", qos="0")
    )
    assert isinstance(refused, model.UnauthorizedError)
    assert "not authorized" in refused.message
    with pytest.raises(model.UnauthorizedError):
        result(client.subscribe_to_iot_core_async(topic_name="#", qos="0")[0])
    with pytest.raises(model.UnauthorizedError):
        result(client.publish_to_topic_async(topic="elsewhere", publish_message=model.PublishMessage()))
    assert nucleus.published == []


def test_devnucleus_recipe_without_grants_refuses_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = {"ComponentName": "com.example.NoGrants"}
    with DevNucleus(recipe) as bare:
        for name, value in bare.env().items():
            monkeypatch.setenv(name, value)
        ipc = GreengrassCoreIPCClientV2()
        try:
            with pytest.raises(model.UnauthorizedError):
                result(ipc.publish_to_iot_core_async(topic_name="t", qos="0", payload=b"x"))
            # own configuration and UpdateState need no grant
            assert result(ipc.get_configuration_async(key_path=[])).value == {}
            result(ipc.update_state_async(state="RUNNING"))
            assert bare.states == ["RUNNING"]
        finally:
            ipc.close(executor_wait=False)


def test_devnucleus_subscribe_to_iot_core_receives_delivered_messages(
    nucleus: DevNucleus, client: GreengrassCoreIPCClientV2
) -> None:
    received: list[model.IoTCoreMessage] = []
    arrived = threading.Event()

    def on_event(event: model.IoTCoreMessage) -> None:
        received.append(event)
        arrived.set()

    result(
        client.subscribe_to_iot_core_async(topic_name=REPORT_TOPIC + "/+", qos="1", on_stream_event=on_event)[
            0
        ]
    )
    nucleus.wait_until(lambda: nucleus.subscriptions("iot") == [REPORT_TOPIC + "/+"])
    assert nucleus.deliver_iot(REPORT_TOPIC + "/accepted", b'{"reportId": 1}') == 1
    assert nucleus.deliver_iot("some/other/topic", b"x") == 0
    assert arrived.wait(WAIT)
    message = received[0].message
    assert (message.topic_name, message.payload) == (REPORT_TOPIC + "/accepted", b'{"reportId": 1}')


def test_devnucleus_local_pubsub_reaches_subscribers(
    nucleus: DevNucleus, client: GreengrassCoreIPCClientV2
) -> None:
    received: list[model.SubscriptionResponseMessage] = []
    arrived = threading.Event()

    def on_event(event: model.SubscriptionResponseMessage) -> None:
        received.append(event)
        arrived.set()

    result(client.subscribe_to_topic_async(topic="ddcustom/local/alerts", on_stream_event=on_event)[0])
    message = model.PublishMessage(binary_message=model.BinaryMessage(message=b"alert!"))
    result(client.publish_to_topic_async(topic="ddcustom/local/alerts", publish_message=message))
    assert arrived.wait(WAIT)
    binary = received[0].binary_message
    assert (binary.message, binary.context.topic) == (b"alert!", "ddcustom/local/alerts")
    recorded = nucleus.wait_for(lambda p: p.service == "local")
    assert (recorded.topic, recorded.payload, recorded.qos) == ("ddcustom/local/alerts", b"alert!", None)

    arrived.clear()
    as_json = model.PublishMessage(json_message=model.JsonMessage(message={"level": "high"}))
    result(client.publish_to_topic_async(topic="ddcustom/local/alerts", publish_message=as_json))
    assert arrived.wait(WAIT)
    assert received[1].json_message.message == {"level": "high"}


def test_devnucleus_get_configuration(nucleus: DevNucleus, client: GreengrassCoreIPCClientV2) -> None:
    whole = result(client.get_configuration_async(key_path=[]))
    assert whole.component_name == COMPONENT
    assert whole.value["SampleIntervalSeconds"] == 300
    assert "accessControl" in whole.value
    leaf = result(client.get_configuration_async(key_path=["Gpu", "FeedbackFile"]))
    assert leaf.value == {"FeedbackFile": "/var/gpu_load_fb"}
    branch = result(client.get_configuration_async(key_path=["Gpu"]))
    assert branch.value == {"Enabled": True, "FeedbackFile": "/var/gpu_load_fb"}
    missing = error_of(client.get_configuration_async(key_path=["Missing"]))
    assert isinstance(missing, model.ResourceNotFoundError)
    assert "Missing" in missing.message
    other = error_of(client.get_configuration_async(component_name="com.example.Other", key_path=[]))
    assert isinstance(other, model.ResourceNotFoundError)
    assert "com.example.Other" in other.message


def test_devnucleus_merge_configuration_at_start(test_recipe: dict[str, Any]) -> None:
    with DevNucleus(test_recipe, merge={"SampleIntervalSeconds": 600, "Gpu": {"Enabled": False}}) as merged:
        assert merged.configuration["SampleIntervalSeconds"] == 600
        assert merged.configuration["Gpu"] == {"Enabled": False, "FeedbackFile": "/var/gpu_load_fb"}


def test_devnucleus_configuration_updates_reach_subscribers(
    nucleus: DevNucleus, client: GreengrassCoreIPCClientV2
) -> None:
    events: list[model.ConfigurationUpdateEvents] = []
    got_two = threading.Event()

    def on_event(event: model.ConfigurationUpdateEvents) -> None:
        events.append(event)
        if len(events) == 2:
            got_two.set()

    result(client.subscribe_to_configuration_update_async(key_path=[], on_stream_event=on_event)[0])
    nucleus.wait_until(lambda: len(nucleus.subscriptions("config")) == 1)
    changed = nucleus.update_configuration({"SampleIntervalSeconds": 900, "Gpu": {"Enabled": False}})
    assert changed == ["Gpu/Enabled", "SampleIntervalSeconds"]
    assert got_two.wait(WAIT)
    paths = sorted(e.configuration_update_event.key_path for e in events)
    assert paths == [["Gpu", "Enabled"], ["SampleIntervalSeconds"]]
    assert {e.configuration_update_event.component_name for e in events} == {COMPONENT}
    assert result(client.get_configuration_async(key_path=["SampleIntervalSeconds"])).value == {
        "SampleIntervalSeconds": 900
    }


def test_devnucleus_update_state_is_recorded(nucleus: DevNucleus, client: GreengrassCoreIPCClientV2) -> None:
    result(client.update_state_async(state="RUNNING"))
    result(client.update_state_async(state="ERRORED"))
    assert nucleus.states == ["RUNNING", "ERRORED"]
    with pytest.raises(model.InvalidArgumentsError):
        result(client.update_state_async(state="DANCING"))


def test_devnucleus_unknown_operation_is_a_service_error(client: GreengrassCoreIPCClientV2) -> None:
    unknown = error_of(client.get_secret_value_async(secret_id="x"))
    assert isinstance(unknown, model.ServiceError)
    assert "aws.greengrass#GetSecretValue" in unknown.message
    # the connection still serves other calls
    result(client.update_state_async(state="RUNNING"))


def test_devnucleus_ping_and_message_before_connect(nucleus: DevNucleus) -> None:
    zeros = [Header.int32(":message-flags", 0), Header.int32(":stream-id", 0)]
    with _raw_connect(nucleus, nucleus.token) as sock:
        ack = read_message(sock)
        assert (ack.get(":message-type"), ack.get(":message-flags")) == (CONNECT_ACK, 1)
        ping = [Header.int32(":message-type", PING), *zeros]
        sock.sendall(encode(Message(ping, b"are you there")))
        answer = read_message(sock)
        assert (answer.get(":message-type"), answer.payload) == (PING_RESPONSE, b"are you there")

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(nucleus.socket_path)
        sock.sendall(encode(Message([Header.int32(":message-type", 0), *zeros], b"{}")))
        assert read_message(sock).get(":message-type") == PROTOCOL_ERROR
        assert sock.recv(1) == b""  # closed


def test_devnucleus_malformed_frame_closes_only_that_connection(
    nucleus: DevNucleus, client: GreengrassCoreIPCClientV2
) -> None:
    with _raw_connect(nucleus, nucleus.token) as sock:
        assert read_message(sock).get(":message-type") == CONNECT_ACK
        frame = bytearray(encode(Message([Header.int32(":stream-id", 1)], b"{}")))
        frame[-1] ^= 0xFF  # bad message CRC
        sock.sendall(bytes(frame))
        error = read_message(sock)
        assert error.get(":message-type") == PROTOCOL_ERROR
        assert b"CRC" in error.payload
        assert sock.recv(1) == b""
    result(client.publish_to_iot_core_async(topic_name=REPORT_TOPIC, qos="0", payload=b"still fine"))
    assert nucleus.wait_for(lambda p: p.payload == b"still fine")


def test_devnucleus_drop_connections_and_refuse_next(nucleus: DevNucleus) -> None:
    disconnected = threading.Event()

    class Lifecycle(LifecycleHandler):
        def on_disconnect(self, reason: Exception | None) -> None:
            disconnected.set()

    first = ipc_connect(lifecycle_handler=Lifecycle(), timeout=WAIT)
    try:
        nucleus.wait_until(lambda: nucleus.connection_count == 1)
        nucleus.drop_connections(refuse_next=2)
        assert disconnected.wait(WAIT)
        for _ in range(2):
            with pytest.raises(Exception):  # noqa: B017  (the CRT reports a closed socket its own way)
                ipc_connect(timeout=WAIT)
        again = GreengrassCoreIPCClientV2()
        result(again.publish_to_iot_core_async(topic_name=REPORT_TOPIC, qos="0", payload=b"after drop"))
        again.close(executor_wait=False)
    finally:
        first.close()
    assert nucleus.wait_for(lambda p: p.payload == b"after drop")


def test_devnucleus_fail_publishes(nucleus: DevNucleus, client: GreengrassCoreIPCClientV2) -> None:
    nucleus.fail_publishes(2, message="broker unavailable")
    for _ in range(2):
        failed = error_of(client.publish_to_iot_core_async(topic_name=REPORT_TOPIC, qos="1", payload=b"lost"))
        assert isinstance(failed, model.ServiceError)
        assert "broker unavailable" in failed.message
    result(client.publish_to_iot_core_async(topic_name=REPORT_TOPIC, qos="1", payload=b"third"))
    nucleus.fail_publishes(None)
    for _ in range(3):
        with pytest.raises(model.ServiceError):
            result(client.publish_to_iot_core_async(topic_name=REPORT_TOPIC, qos="1", payload=b"lost"))
    nucleus.fail_publishes(0)
    result(client.publish_to_iot_core_async(topic_name=REPORT_TOPIC, qos="1", payload=b"fifth"))
    assert [p.payload for p in nucleus.published] == [b"third", b"fifth"]


def test_devnucleus_delay_holds_answers_back(nucleus: DevNucleus, client: GreengrassCoreIPCClientV2) -> None:
    nucleus.delay(1.5)
    future = client.update_state_async(state="RUNNING")
    with pytest.raises(FutureTimeout):
        future.result(0.2)
    nucleus.delay(0)
    future.result(WAIT)  # the held answer still arrives
    assert nucleus.states == ["RUNNING"]


def test_devnucleus_cli_serves_and_prints_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_recipe: dict[str, Any]
) -> None:
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(test_recipe))
    process = start(
        [
            sys.executable,
            "-m",
            "ddcustom.tooling.devnucleus",
            "--recipe",
            str(recipe),
            "--thing",
            "test-thing",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None and process.stdout is not None
        stdout, stderr = Lines(process.stdout), Lines(process.stderr)
        env: dict[str, str] = {}
        while len(env) < 3:
            line = stderr.next(WAIT)
            if line.startswith("export "):
                name, _, value = line[len("export ") :].strip().partition("=")
                env[name] = value
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        ipc = GreengrassCoreIPCClientV2()
        result(ipc.publish_to_iot_core_async(topic_name=REPORT_TOPIC, qos="1", payload=b'{"ok": true}'))
        ipc.close(executor_wait=False)
        printed = stdout.next_json(WAIT)
        assert printed == {"service": "iot", "topic": REPORT_TOPIC, "qos": 1, "payload": '{"ok": true}'}
    finally:
        reap(process)


def test_devnucleus_cli_rejects_a_bad_merge_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], test_recipe: dict[str, Any]
) -> None:
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(test_recipe))
    merge = tmp_path / "merge.yaml"
    for content, error in (
        (b"LogLevel: [unclosed\n", "--merge file '.*merge.yaml' does not parse"),
        (b"LogLevel: \xff\n", "--merge file '.*merge.yaml' is not UTF-8 text"),
        (b"- a list\n", "--merge file '.*merge.yaml' must hold a mapping"),
    ):
        merge.write_bytes(content)
        assert devnucleus_main(["--recipe", str(recipe), "--merge", str(merge)]) == 2
        assert re.search(error, capsys.readouterr().err), error
    assert devnucleus_main(["--recipe", str(recipe), "--merge", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read --merge file" in capsys.readouterr().err


def test_devnucleus_access_control_changes_apply_at_once(
    nucleus: DevNucleus, client: GreengrassCoreIPCClientV2
) -> None:
    # As the real nucleus reloads its policies when a deployment changes accessControl.
    resources_only = {"resources": ["extra/{iot:thingName}/topic"]}  # its operations stay as they were
    policies = {"com.awsiotblog.DeviceDefenderCustom:mqttproxy:1": resources_only}
    nucleus.update_configuration({"accessControl": {"aws.greengrass.ipc.mqttproxy": policies}})
    result(client.publish_to_iot_core_async(topic_name="extra/test-thing/topic", qos="0", payload=b"granted"))
    with pytest.raises(model.UnauthorizedError):  # the grant it replaced is gone
        result(client.publish_to_iot_core_async(topic_name=REPORT_TOPIC, qos="0", payload=b"revoked"))
    assert [p.payload for p in nucleus.published] == [b"granted"]


def test_devnucleus_malformed_access_control_update_is_refused(nucleus: DevNucleus) -> None:
    before = nucleus.configuration
    with pytest.raises(RecipeError, match="must be lists"):
        bad = {"aws.greengrass.ipc.pubsub": {"p": {"operations": "x"}}}
        nucleus.update_configuration({"accessControl": bad})
    assert nucleus.configuration == before


def test_devnucleus_a_subscription_is_live_once_its_response_arrives(
    nucleus: DevNucleus, client: GreengrassCoreIPCClientV2
) -> None:
    # Regression: the subscription was registered after its response went out, so a message delivered
    # right after the client saw the response could miss it (about 1 in 300 here).
    for i in range(500):
        topic = f"{REPORT_TOPIC}/{i}"
        operation = client.subscribe_to_iot_core_async(topic_name=topic, qos="0")
        result(operation[0])
        assert nucleus.deliver_iot(topic, b"x") == 1, f"subscription {i} was not live yet"
        operation[1].close()


# ---- a deployment's configuration validation (DynamicComponentConfigurationValidator) ----------------


class Validator:
    """A component that validates configurations with the unmodified client: it records each request and
    answers with ``answer(deployment_id, configuration)`` -> (status, message), or not at all (None)."""

    def __init__(self, client: GreengrassCoreIPCClientV2, answer: Any) -> None:
        self.requests: list[model.ValidateConfigurationUpdateEvent] = []
        self.reports: list[Future] = []
        self._client = client
        self._answer = answer
        result(client.subscribe_to_validate_configuration_updates_async(on_stream_event=self._on_event)[0])

    def _on_event(self, event: model.ValidateConfigurationUpdateEvents) -> None:
        request = event.validate_configuration_update_event
        self.requests.append(request)
        answer = self._answer(request.deployment_id, request.configuration)
        if answer is not None:
            status, message = answer
            report = model.ConfigurationValidityReport(
                status=status, deployment_id=request.deployment_id, message=message
            )
            self.reports.append(
                self._client.send_configuration_validity_report_async(configuration_validity_report=report)
            )


def updates(client: GreengrassCoreIPCClientV2) -> list[list[str]]:
    """The key paths of the configuration update events the client will receive."""
    paths: list[list[str]] = []
    result(
        client.subscribe_to_configuration_update_async(
            key_path=[], on_stream_event=lambda e: paths.append(e.configuration_update_event.key_path)
        )[0]
    )
    return paths


def test_devnucleus_a_deployment_the_component_accepts_applies(
    nucleus: DevNucleus, client: GreengrassCoreIPCClientV2
) -> None:
    validator = Validator(
        client, lambda _id, _configuration: (model.ConfigurationValidityStatus.ACCEPTED, None)
    )
    changed = updates(client)
    nucleus.wait_until(lambda: len(nucleus.subscriptions("validate")) == 1)

    outcome = nucleus.deploy({"SampleIntervalSeconds": 900})

    assert (outcome.status, outcome.detailed_status) == ("SUCCEEDED", "SUCCESSFUL")
    (request,) = validator.requests
    assert request.deployment_id == outcome.deployment_id
    # the whole configuration as it would be, not the merge alone
    assert request.configuration["SampleIntervalSeconds"] == 900
    assert request.configuration["Gpu"] == {"Enabled": True, "FeedbackFile": "/var/gpu_load_fb"}
    result(validator.reports[0])
    assert nucleus.configuration["SampleIntervalSeconds"] == 900
    nucleus.wait_until(lambda: changed == [["SampleIntervalSeconds"]])
    assert nucleus.deployments == [outcome]


def test_devnucleus_a_deployment_the_component_refuses_fails_and_applies_nothing(
    nucleus: DevNucleus, client: GreengrassCoreIPCClientV2
) -> None:
    refuse = (model.ConfigurationValidityStatus.REJECTED, "SampleIntervalSeconds: 1 is too often")
    validator = Validator(client, lambda _id, _configuration: refuse)
    changed = updates(client)
    nucleus.wait_until(lambda: len(nucleus.subscriptions("validate")) == 1)
    before = nucleus.configuration

    outcome = nucleus.deploy({"SampleIntervalSeconds": 1})

    assert (outcome.status, outcome.detailed_status) == ("FAILED", "FAILED_NO_STATE_CHANGE")
    assert outcome.failure_cause == (
        "Components reported that their to-be-deployed configuration is invalid "
        f"{{ name = {COMPONENT}, message = SampleIntervalSeconds: 1 is too often }}"
    )
    assert outcome.error_stack == ("DEPLOYMENT_FAILURE", "COMPONENT_CONFIGURATION_NOT_VALID")
    result(validator.reports[0])
    assert nucleus.configuration == before and changed == []
    # the answer was taken: the same report again is one for no request
    again = model.ConfigurationValidityReport(
        status=model.ConfigurationValidityStatus.REJECTED, deployment_id=outcome.deployment_id
    )
    late = error_of(client.send_configuration_validity_report_async(configuration_validity_report=again))
    assert isinstance(late, model.InvalidArgumentsError)


def test_devnucleus_a_deployment_without_an_answer_in_time_fails_and_applies_nothing(
    nucleus: DevNucleus, client: GreengrassCoreIPCClientV2
) -> None:
    silent = Validator(client, lambda _id, _configuration: None)
    changed = updates(client)
    nucleus.wait_until(lambda: len(nucleus.subscriptions("validate")) == 1)
    before = nucleus.configuration

    outcome = nucleus.deploy({"SampleIntervalSeconds": 900}, validation_timeout=0.2)

    assert (outcome.status, outcome.detailed_status) == ("FAILED", "FAILED_NO_STATE_CHANGE")
    assert outcome.failure_cause.startswith(
        "Error while waiting for validation report for one or more components:"
    )
    assert len(silent.requests) == 1
    assert nucleus.configuration == before and changed == []
    # a report after the deployment gave up is refused, as the nucleus refuses it
    late = model.ConfigurationValidityReport(
        status=model.ConfigurationValidityStatus.ACCEPTED, deployment_id=silent.requests[0].deployment_id
    )
    refused = error_of(client.send_configuration_validity_report_async(configuration_validity_report=late))
    assert isinstance(refused, model.InvalidArgumentsError)
    assert "timed out or was never made" in refused.message
    assert nucleus.configuration == before


def test_devnucleus_a_validity_report_must_name_its_deployment(client: GreengrassCoreIPCClientV2) -> None:
    report = model.ConfigurationValidityReport(status=model.ConfigurationValidityStatus.ACCEPTED)
    refused = error_of(client.send_configuration_validity_report_async(configuration_validity_report=report))
    assert isinstance(refused, model.InvalidArgumentsError)
    assert "deployment ID provided was null" in refused.message


def test_devnucleus_a_deployment_without_a_validating_component_applies_at_once(
    nucleus: DevNucleus, client: GreengrassCoreIPCClientV2
) -> None:
    changed = updates(client)
    outcome = nucleus.deploy({"SampleIntervalSeconds": 900}, validation_timeout=60)
    assert outcome.succeeded
    nucleus.wait_until(lambda: changed == [["SampleIntervalSeconds"]])
    # nor is anyone asked about a deployment that changes nothing
    validator = Validator(client, lambda _id, _configuration: None)
    nucleus.wait_until(lambda: len(nucleus.subscriptions("validate")) == 1)
    assert nucleus.deploy({"SampleIntervalSeconds": 900}, validation_timeout=60).succeeded
    assert validator.requests == []
