"""Answering a deployment's validation request (run/validation.py), without a nucleus: the answers are
sent to a recording function. The exchange with the nucleus itself is in test_greengrass.py."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from ddcustom.device.config import DEFAULTS
from ddcustom.device.outputs.greengrass.ipc import MAX_VALIDITY_MESSAGE_CHARS
from ddcustom.device.outputs.sink import SinkError
from ddcustom.device.run import validation
from ddcustom.device.run.validation import MAX_PENDING, ValidationRequests, judge
from support.helpers import poll

WAIT = 10.0


class Answers:
    """Records the answers; ``fail`` makes sending fail; ``gate`` holds the answers back."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bool, str]] = []
        self.arrived = threading.Condition()
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, deployment_id: str, accepted: bool, message: str) -> None:
        self.gate.wait(WAIT)
        if self.fail:
            raise SinkError("not connected to the nucleus")
        with self.arrived:
            self.sent.append((deployment_id, accepted, message))
            self.arrived.notify_all()

    def wait_for(self, count: int) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.sent) >= count, WAIT), self.sent


def test_the_judgement_is_the_components_own_check() -> None:
    assert judge({**DEFAULTS, "accessControl": {"any": "thing"}}) == (True, "")  # the whole configuration
    accepted, message = judge({"EnableGPUMetrics": "yes"})
    assert not accepted and message.startswith("configuration key 'EnableGPUMetrics'")
    accepted, message = judge({**{f"Unknown{i}": "x" * 500 for i in range(50)}, "LogLevel": "LOUD"})
    assert (
        not accepted and len(message) <= MAX_VALIDITY_MESSAGE_CHARS and "2 configuration problems" in message
    )
    assert judge(["not", "a", "mapping"]) == (False, "the proposed configuration is not a mapping but list")


def test_requests_are_answered_in_order_off_the_callers_thread() -> None:
    answers = Answers()
    requests = ValidationRequests(answers)
    answers.gate.clear()
    requests.on_request("d-1", {"EnableGPUMetrics": "yes"})  # returns at once, the answer held back
    requests.on_request("d-2", {"EnableGPUMetrics": True})
    assert answers.sent == []
    answers.gate.set()
    answers.wait_for(2)
    assert [(d, ok) for d, ok, _ in answers.sent] == [("d-1", False), ("d-2", True)]
    assert requests.answered == 2


def test_nothing_stops_the_answering_thread(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    answers = Answers()
    requests = ValidationRequests(answers)
    with caplog.at_level(logging.ERROR):
        answers.fail = True  # the answer cannot be sent: logged, the deployment will time out
        requests.on_request("d-1", {})
        poll(lambda: "did not reach the nucleus" in caplog.text, what="the failed answer logged")
        answers.fail = False
        requests.on_request("", {})  # no deployment id: nothing to answer to
        poll(lambda: "without a deployment id" in caplog.text, what="the request without an id logged")

        def broken(_configuration: Any) -> tuple[bool, str]:
            raise RuntimeError("a bug in a check")

        monkeypatch.setattr(validation, "judge", broken)
        requests.on_request("d-2", {})  # a check that crashes refuses: nothing goes through unchecked
        answers.wait_for(1)
    assert answers.sent == [
        ("d-2", False, "the component could not check this configuration: RuntimeError('a bug in a check')")
    ]
    assert requests.answered == 1


def test_a_flood_of_requests_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    answers = Answers()
    answers.gate.clear()
    requests = ValidationRequests(answers)
    with caplog.at_level(logging.ERROR):
        for n in range(MAX_PENDING + 5):
            requests.on_request(f"d-{n}", {})
    assert "validation requests are already waiting" in caplog.text
    answers.gate.set()
    answers.wait_for(MAX_PENDING)
    assert MAX_PENDING <= len(answers.sent) <= MAX_PENDING + 1  # the one in hand, and those queued
