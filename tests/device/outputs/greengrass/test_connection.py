"""GreengrassConnection: the connection kept up, against the stand-in nucleus and the real client.

The backoff's clock and jitter are fixed by the test (support.fakes): the draws are their ceilings, and
time moves only when the test moves it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from ddcustom.device.outputs.greengrass.connection import GreengrassConnection
from ddcustom.device.outputs.sink import SinkError
from ddcustom.tooling.devnucleus import DevNucleus
from support.fakes import Clock, Highest

REPORT_TOPIC = "$aws/things/test-thing/defender/metrics/json"  # the thing of the nucleus fixture
WAIT = 5.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def connection(nucleus: DevNucleus, clock: Clock) -> Iterator[GreengrassConnection]:
    made = GreengrassConnection(
        timeout=WAIT, reconnect_base=1.0, reconnect_cap=8.0, clock=clock, rng=Highest()
    )
    yield made
    made.close()


def connect(connection: GreengrassConnection) -> None:
    """Any call connects first; this one asks nothing of the nucleus."""
    connection.call("nothing", lambda ipc: None)


def test_refused_connects_back_off_doubling_to_the_cap_and_start_over_after_a_connect(
    nucleus: DevNucleus, connection: GreengrassConnection, clock: Clock
) -> None:
    assert connection.seconds_to_next_attempt() == 0.0  # never tried: due at once
    nucleus.drop_connections(refuse_next=5)
    waits = []
    for _ in range(5):
        with pytest.raises(SinkError, match="cannot connect to the nucleus"):
            connect(connection)
        wait = connection.seconds_to_next_attempt()
        assert wait is not None
        waits.append(wait)
        clock.advance(wait / 2)
        with pytest.raises(SinkError, match="not connected to the nucleus; next attempt in"):
            connect(connection)  # not due yet: not tried (a try would have used up a refusal)
        clock.advance(wait / 2)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]

    connect(connection)
    assert connection.connected and connection.connects == 1
    assert connection.seconds_to_next_attempt() is None

    nucleus.drop_connections(refuse_next=1)
    assert connection.wake.wait(WAIT), "a dropped connection wakes the loop"
    with pytest.raises(SinkError, match="cannot connect to the nucleus"):
        connect(connection)
    assert connection.seconds_to_next_attempt() == 1.0  # the backoff started over


def test_keep_connected_reconnects_when_due_and_never_raises(
    nucleus: DevNucleus, connection: GreengrassConnection, clock: Clock
) -> None:
    nucleus.drop_connections(refuse_next=1)
    connection.keep_connected()  # refused: logged at debug level only
    assert not connection.connected
    connection.keep_connected()  # the backoff holds it back
    assert not connection.connected
    clock.advance(1.0)
    connection.keep_connected()
    assert connection.connected and connection.connects == 1


def test_the_first_connect_fails_without_the_configuration_subscription(
    nucleus: DevNucleus, clock: Clock
) -> None:
    connection = GreengrassConnection(timeout=0.5, clock=clock, rng=Highest())
    updates = threading.Event()
    connection.subscribe_configuration(updates.set)
    nucleus.delay(5.0, "aws.greengrass#SubscribeToConfigurationUpdate")
    try:
        with pytest.raises(SinkError, match="cannot connect to the nucleus: SubscribeToConfigurationUpdate"):
            connect(connection)
        assert not connection.connected and connection.connects == 0
        nucleus.delay(0)
        clock.advance(connection.seconds_to_next_attempt() or 0.0)
        connect(connection)
        assert connection.connects == 1
        nucleus.wait_until(lambda: nucleus.subscriptions("config") == [""])  # the first connection's gone
        nucleus.update_configuration({"SampleIntervalSeconds": 600})
        assert updates.wait(WAIT)
    finally:
        connection.close()


def test_an_iot_subscription_refused_at_the_first_connect_is_logged_and_the_connection_is_good(
    nucleus: DevNucleus, connection: GreengrassConnection, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[bytes] = []
    connection.subscribe_iot("not/granted", lambda topic, payload: None, "nothing will arrive")
    connection.subscribe_iot(f"{REPORT_TOPIC}/rejected", lambda topic, payload: received.append(payload), "-")
    with caplog.at_level(logging.WARNING):
        connect(connection)
    assert connection.connected
    assert "cannot subscribe to not/granted, nothing will arrive" in caplog.text
    assert nucleus.deliver_iot(f"{REPORT_TOPIC}/rejected", b"answer") == 1
    nucleus.wait_until(lambda: received == [b"answer"])


def test_subscriptions_are_registered_before_the_first_connection(connection: GreengrassConnection) -> None:
    connect(connection)
    with pytest.raises(RuntimeError, match="before the first connection"):
        connection.subscribe_iot(f"{REPORT_TOPIC}/rejected", lambda topic, payload: None, "-")
    with pytest.raises(RuntimeError, match="before the first connection"):
        connection.subscribe_configuration(lambda: None)


def test_a_reconnect_runs_the_callbacks_and_reports_the_state_again(
    nucleus: DevNucleus, connection: GreengrassConnection
) -> None:
    reconnects: list[int] = []
    connection.on_reconnect(lambda: reconnects.append(connection.connects))
    connection.update_state("RUNNING")
    connection.update_state("RUNNING")  # once per connection
    assert nucleus.states == ["RUNNING"] and reconnects == []  # the first connection is no reconnect

    nucleus.drop_connections()
    assert connection.wake.wait(WAIT)
    assert not connection.connected and connection.seconds_to_next_attempt() == 0.0
    connection.keep_connected()
    assert connection.connects == 2 and reconnects == [2]
    connection.update_state("RUNNING")
    assert nucleus.states == ["RUNNING", "RUNNING"]


def test_a_refused_call_names_the_grant_and_keeps_the_connection(
    nucleus: DevNucleus, connection: GreengrassConnection
) -> None:
    with pytest.raises(SinkError, match="alert: the recipe's accessControl does not grant it"):
        connection.call("alert", lambda ipc: ipc.publish_iot("not/granted", b"x"))
    assert connection.connected and connection.seconds_to_next_attempt() is None
    with pytest.raises(SinkError, match=r"^GetConfiguration Nope: .*ResourceNotFoundError"):
        connection.call("GetConfiguration Nope", lambda ipc: ipc.get_configuration(["Nope"]))
    configuration = connection.call("GetConfiguration", lambda ipc: ipc.get_configuration())
    assert configuration["SampleIntervalSeconds"] == 300
