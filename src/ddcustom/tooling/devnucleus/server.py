"""A stand-in Greengrass nucleus: the IPC server side of event-stream RPC over a Unix socket.

It serves the unmodified ``awsiot.greengrasscoreipc`` client: connect (SVCUID check), ping, IoT Core and
local publish/subscribe, configuration and its updates, configuration validation, UpdateState. It
enforces the recipe's accessControl, records what is published, and injects faults on command (drop,
error, delay).

It also runs what the component depends on of the nucleus beyond IPC (docs/greengrass.md names the
nucleus's source for each): a deployment (``deploy``) asks the running component to validate the
configuration it proposes, fails without applying anything when the component refuses it or does not
answer in time, and otherwise applies it and waits for the component; ``run_component`` starts the
component's process under the lifecycle of service.py (restarts after errors, BROKEN), as the first
deployment of the component would.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ddcustom.tooling.build import get_nocase
from ddcustom.tooling.devnucleus import access
from ddcustom.tooling.devnucleus.codec import FrameError, Header, Message, encode, read_message
from ddcustom.tooling.devnucleus.lifecycle import select_manifest
from ddcustom.tooling.devnucleus.service import BROKEN, FINISHED, RUNNING, ComponentService, Transition

# message types and flags of the RPC layer (aws-c-event-stream event_stream_rpc.h)
APPLICATION_MESSAGE = 0
APPLICATION_ERROR = 1
PING = 2
PING_RESPONSE = 3
CONNECT = 4
CONNECT_ACK = 5
PROTOCOL_ERROR = 6
CONNECTION_ACCEPTED = 0x1
TERMINATE_STREAM = 0x2

RPC_VERSION = "0.1.0"
JSON = "application/json"
NS = "aws.greengrass#"

LIFECYCLE_STATES = ("RUNNING", "ERRORED")

# A deployment's configurationValidationPolicy.timeoutInSeconds when it gives none (CreateDeployment's
# default; a nucleus handed a deployment without the policy waits DynamicComponentConfigurationValidator's
# DEFAULT_TIMEOUT_SECOND, 20 s).
DEFAULT_VALIDATION_TIMEOUT = 30.0
ROLLBACK = "ROLLBACK"
DO_NOTHING = "DO_NOTHING"
# DeploymentResult.DeploymentStatus
SUCCESSFUL = "SUCCESSFUL"
FAILED_NO_STATE_CHANGE = "FAILED_NO_STATE_CHANGE"
FAILED_ROLLBACK_NOT_REQUESTED = "FAILED_ROLLBACK_NOT_REQUESTED"
FAILED_ROLLBACK_COMPLETE = "FAILED_ROLLBACK_COMPLETE"
FAILED_UNABLE_TO_ROLLBACK = "FAILED_UNABLE_TO_ROLLBACK"
# DynamicComponentConfigurationValidator's failure causes
REFUSED_CAUSE = "Components reported that their to-be-deployed configuration is invalid"
NO_REPORT_CAUSE = "Error while waiting for validation report for one or more components:"


@dataclass(frozen=True)
class Published:
    """One message a component published: to IoT Core (service "iot") or local pub/sub ("local")."""

    topic: str
    payload: bytes
    qos: Optional[int]  # None for local pub/sub
    time: float
    service: str


@dataclass(frozen=True)
class DeploymentResult:
    """How a deployment ended on this device, as the nucleus reports it to AWS IoT Greengrass (the job's
    status details: ``detailed-deployment-status``, ``deployment-failure-cause``, ``deployment-error-stack``,
    ``deployment-error-types``)."""

    deployment_id: str
    detailed_status: str  # SUCCESSFUL, FAILED_NO_STATE_CHANGE, FAILED_ROLLBACK_...
    failure_cause: str = ""
    error_stack: tuple[str, ...] = ()
    error_types: tuple[str, ...] = ()

    @property
    def succeeded(self) -> bool:
        return self.detailed_status == SUCCESSFUL

    @property
    def status(self) -> str:
        """The IoT job execution's status: SUCCEEDED or FAILED."""
        return "SUCCEEDED" if self.succeeded else "FAILED"

    def describe(self) -> str:
        """One line, as ``aws greengrassv2 list-effective-deployments`` would show it."""
        if self.succeeded:
            return f"deployment {self.deployment_id}: {self.status} ({self.detailed_status})"
        return (
            f"deployment {self.deployment_id}: {self.status} ({self.detailed_status}): {self.failure_cause} "
            f"[errorStack {', '.join(self.error_stack)}; errorTypes {', '.join(self.error_types) or '-'}]"
        )


@dataclass
class _Validation:
    """A validation request sent to the component, waiting for its report."""

    done: threading.Event
    report: Optional[dict[str, Any]] = None


class _Fault(Exception):
    """An IPC error answer: the error shape name (e.g. ServiceError) and its message."""

    def __init__(self, shape: str, message: str) -> None:
        super().__init__(message)
        self.shape = shape
        self.message = message


@dataclass
class _Subscription:
    conn: _Connection
    stream_id: int
    kind: str  # "iot" | "local" | "config" | "validate"
    topic: str = ""  # topic filter for "iot" / "local"
    key_path: tuple[str, ...] = ()  # for "config"
    from_others_only: bool = False


@dataclass
class _Answer:
    model: str
    body: dict[str, Any]
    subscription: Optional[_Subscription] = None  # made live as its response is sent


class _Connection:
    """One client socket; writes are serialised because events come from other threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.write_lock = threading.RLock()  # re-entrant: a subscription's response is sent while held
        self.component: Optional[str] = None  # set once the connect is accepted
        self.rejected = False
        self.thread: Optional[threading.Thread] = None

    def send(
        self,
        message_type: int,
        stream_id: int,
        flags: int = 0,
        headers: tuple[Header, ...] = (),
        payload: bytes = b"",
    ) -> None:
        rpc_headers = [
            Header.int32(":message-type", message_type),
            Header.int32(":message-flags", flags),
            Header.int32(":stream-id", stream_id),
        ]
        frame = encode(Message([*rpc_headers, *headers], payload))
        with self.write_lock:
            self.sock.sendall(frame)

    def send_json(self, message_type: int, stream_id: int, flags: int, model: str, body: Mapping) -> None:
        headers = (Header.string(":content-type", JSON), Header.string("service-model-type", model))
        # an empty payload makes the client fail to deserialise: always send a JSON object
        self.send(message_type, stream_id, flags, headers, json.dumps(body).encode("utf-8"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class DevNucleus:
    """The stand-in nucleus for one component, described by its recipe.

    ``merge`` is applied over the recipe's DefaultConfiguration as a deployment's merge would be.
    Use as a context manager, or call start() / stop().
    """

    def __init__(
        self,
        recipe: access.RecipeSource,
        thing_name: str = "ddcustom-dev-thing",
        merge: Optional[Mapping[str, Any]] = None,
        socket_path: Optional[str] = None,
        token: Optional[str] = None,
        on_publish: Optional[Callable[[Published], None]] = None,
    ) -> None:
        self._recipe = access.load_recipe(recipe)
        component = access.component_from_recipe(self._recipe, merge)
        self.component_name = component.name
        self.thing_name = thing_name
        self.token = token or secrets.token_hex(16)
        self._configuration = component.configuration
        self._policies = access.parse_policies(self._configuration, thing_name)
        self._on_publish = on_publish
        self._own_dir: Optional[str] = None
        if socket_path is None:
            # Unix socket paths are limited to ~108 bytes: keep it short, under /tmp
            self._own_dir = tempfile.mkdtemp(prefix="gg", dir="/tmp")
            socket_path = os.path.join(self._own_dir, "ipc.socket")
        self.socket_path = socket_path

        self._lock = threading.Condition()  # guards everything below; notified on every change
        self._published: list[Published] = []
        self._states: list[str] = []
        self._connections: list[_Connection] = []
        self._subscriptions: list[_Subscription] = []
        self._refuse_connects = 0
        self._failing_publishes: Optional[int] = 0  # None: all until cleared
        self._fail_message = ""
        self._delay = 0.0
        self._delay_operation: Optional[str] = None  # None: every operation is delayed
        self._stopping = threading.Event()
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self._validations: dict[str, _Validation] = {}  # deployment id -> the request waiting for a report
        self._deploying = threading.Lock()  # one deployment at a time, as the nucleus's deployment queue
        self.deployments: list[DeploymentResult] = []
        self.service: Optional[ComponentService] = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DevNucleus:
        if self._listener is not None:
            return self
        os.makedirs(os.path.dirname(self.socket_path) or ".", exist_ok=True)  # stop() removes our own dir
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        listener.listen(16)
        listener.settimeout(0.2)  # the accept loop checks for stop() this often
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="devnucleus-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the component's process if it runs one; close every connection and the socket; join the
        threads within ``timeout`` seconds."""
        if self.service is not None:
            self.service.close()
        self._stopping.set()
        deadline = time.monotonic() + timeout
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.close()
        for conn in connections:
            if conn.thread is not None:
                conn.thread.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def __enter__(self) -> DevNucleus:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The environment variables the nucleus gives a component it starts."""
        return {
            "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": self.socket_path,
            "SVCUID": self.token,
            "AWS_IOT_THING_NAME": self.thing_name,
        }

    # ------------------------------------------------------------------ what tests observe
    @property
    def published(self) -> list[Published]:
        with self._lock:
            return list(self._published)

    @property
    def states(self) -> list[str]:
        with self._lock:
            return list(self._states)

    @property
    def configuration(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._configuration)

    @property
    def connection_count(self) -> int:
        """Accepted, still open client connections."""
        with self._lock:
            return sum(1 for conn in self._connections if conn.component is not None)

    def subscriptions(self, kind: Optional[str] = None) -> list[str]:
        """Topics (or "/"-joined key paths for "config") currently subscribed, of one kind or all."""
        with self._lock:
            return [
                "/".join(sub.key_path) if sub.kind == "config" else sub.topic
                for sub in self._subscriptions
                if kind is None or sub.kind == kind
            ]

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``condition()`` holds (checked on every recorded change); TimeoutError if not."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met within {timeout} s")
                self._lock.wait(min(left, 0.1))

    def wait_for(self, predicate: Callable[[Published], bool], timeout: float = 5.0) -> Published:
        """The first published message matching ``predicate``, waiting up to ``timeout`` seconds."""
        found: list[Published] = []

        def matched() -> bool:
            found[:] = [p for p in self._published if predicate(p)][:1]
            return bool(found)

        try:
            self.wait_until(matched, timeout)
        except TimeoutError:
            topics = [p.topic for p in self.published]
            raise TimeoutError(
                f"no matching message within {timeout} s; published topics: {topics}"
            ) from None
        return found[0]

    # ------------------------------------------------------------------ what tests drive
    def deliver_iot(self, topic: str, payload: bytes) -> int:
        """Deliver an MQTT message from IoT Core to matching subscribers; returns how many got it."""
        body = {"message": {"topicName": topic, "payload": base64.b64encode(payload).decode("ascii")}}
        return self._push("iot", topic, NS + "IoTCoreMessage", body)

    def update_configuration(self, merge: Mapping[str, Any]) -> list[str]:
        """Merge into the component's configuration and notify subscribers; returns the changed paths.

        The accessControl policies are read again, as the nucleus does on a deployment; a malformed
        accessControl raises RecipeError and leaves the configuration as it was.
        """
        with self._lock:
            before = self._configuration
            after = access.merge_config(before, merge)
            self._policies = access.parse_policies(after, self.thing_name)
            self._configuration = after
            paths = access.changed_paths(before, after)
        self._notify_update(paths)
        return ["/".join(path) for path in paths]

    def _notify_update(self, paths: list[tuple[str, ...]]) -> None:
        with self._lock:
            subscribers = [sub for sub in self._subscriptions if sub.kind == "config"]
        for path in paths:
            for sub in subscribers:
                shorter = min(len(path), len(sub.key_path))
                if path[:shorter] != sub.key_path[:shorter]:
                    continue
                event = {
                    "configurationUpdateEvent": {"componentName": self.component_name, "keyPath": list(path)}
                }
                self._send_event(sub, NS + "ConfigurationUpdateEvents", event)

    def run_component(
        self,
        command: list[str],
        *,
        cwd: str,
        step: Optional[str] = None,
        failure_handling: str = ROLLBACK,
        wait_seconds: float = 60.0,
        env: Optional[Mapping[str, str]] = None,
        on_transition: Optional[Callable[[Transition], None]] = None,
        **lifecycle: Any,
    ) -> DeploymentResult:
        """The deployment that adds the component: start ``command`` in ``cwd`` with the nucleus's
        environment (plus ``env``) under the lifecycle of service.py, and wait (at most ``wait_seconds``) for
        the deployment's outcome: RUNNING (or FINISHED) succeeds, BROKEN fails. ``step``: "run" or
        "startup", by default the recipe's. ``lifecycle``: ComponentService's options (max_errors,
        error_reset_seconds, stdout, stderr, ...). A failed deployment with ROLLBACK removes the component
        (it was not there before): its process is stopped."""
        if self.service is not None:
            raise RuntimeError("the component already runs")
        deployment_id = str(uuid.uuid4())
        self.service = ComponentService(
            command,
            env={**os.environ, **(env or {}), **self.env()},
            cwd=cwd,
            step=step or self.lifecycle_step(),
            on_transition=on_transition,
            **lifecycle,
        )
        with self._deploying:
            self.service.start()
            failure = self._wait_for_component(wait_seconds)
            if failure is None:
                result = DeploymentResult(deployment_id, SUCCESSFUL)
            elif failure_handling == ROLLBACK:
                self.service.stop()  # the rollback removes what the deployment added
                result = self._broken(deployment_id, FAILED_ROLLBACK_COMPLETE, failure)
            else:
                result = self._broken(deployment_id, FAILED_ROLLBACK_NOT_REQUESTED, failure)
            self._finished(result)
        return result

    def lifecycle_step(self) -> str:
        """The recipe's step that starts the component: "startup" when its Linux manifest has one, else
        "run"."""
        lifecycle = get_nocase(select_manifest(self._recipe), "Lifecycle", {}) or {}
        return "startup" if get_nocase(lifecycle, "Startup") is not None else "run"

    def deploy(
        self,
        merge: Mapping[str, Any],
        *,
        validation_timeout: float = DEFAULT_VALIDATION_TIMEOUT,
        failure_handling: str = ROLLBACK,
        wait_seconds: float = 60.0,
    ) -> DeploymentResult:
        """A deployment that merges ``merge`` into the component's configuration, as the nucleus runs it.

        When the configuration would change and the component subscribed to validation requests, it is
        asked first and given ``validation_timeout`` seconds: a refusal or no report fails the deployment
        (FAILED_NO_STATE_CHANGE) and nothing is applied. Otherwise the configuration is applied (update
        events), a BROKEN component is reinstalled, and the deployment waits, at most ``wait_seconds``, for
        the component to be RUNNING (succeeded) or BROKEN (failed; with ROLLBACK the previous configuration
        is restored and the component reinstalled). A malformed accessControl raises RecipeError before
        anything is asked or applied.
        """
        deployment_id = str(uuid.uuid4())
        with self._deploying:
            before = self.configuration
            proposed = access.merge_config(before, merge)
            access.parse_policies(proposed, self.thing_name)
            if access.changed_paths(before, proposed):
                failure = self._validate(deployment_id, proposed, validation_timeout)
                if failure is not None:
                    result = DeploymentResult(
                        deployment_id,
                        FAILED_NO_STATE_CHANGE,
                        failure,
                        ("DEPLOYMENT_FAILURE", "COMPONENT_CONFIGURATION_NOT_VALID"),
                    )
                    self._finished(result)
                    return result
            self.update_configuration(merge)
            service = self.service
            if service is None:
                result = DeploymentResult(deployment_id, SUCCESSFUL)
            else:
                merged = len(service.transitions)
                if service.state == BROKEN:
                    service.reinstall()
                broken = self._wait_for_component(wait_seconds, since=merged)
                if broken is None:
                    result = DeploymentResult(deployment_id, SUCCESSFUL)
                elif failure_handling != ROLLBACK:
                    result = self._broken(deployment_id, FAILED_ROLLBACK_NOT_REQUESTED, broken)
                else:
                    self._replace_configuration(before)
                    rolled_back = len(service.transitions)
                    service.reinstall()
                    again = self._wait_for_component(wait_seconds, since=rolled_back)
                    status = FAILED_ROLLBACK_COMPLETE if again is None else FAILED_UNABLE_TO_ROLLBACK
                    result = self._broken(deployment_id, status, broken)
            self._finished(result)
            return result

    def drop_connections(self, refuse_next: int = 0) -> None:
        """Close every client connection now; also close the next ``refuse_next`` connects at once."""
        with self._lock:
            self._refuse_connects = refuse_next
            connections = list(self._connections)
        for conn in connections:
            conn.close()

    def fail_publishes(self, count: Optional[int] = None, message: str = "injected failure") -> None:
        """Answer the next ``count`` publishes (None: all, until ``fail_publishes(0)``) with ServiceError."""
        with self._lock:
            self._failing_publishes = count
            self._fail_message = message

    def delay(self, seconds: float, operation: Optional[str] = None) -> None:
        """Hold answers back by ``seconds`` (0 to stop): every answer, or only those to ``operation``
        (e.g. ``aws.greengrass#SubscribeToIoTCore``). The request itself is still processed."""
        with self._lock:
            self._delay = seconds
            self._delay_operation = operation

    # ------------------------------------------------------------------ deployments
    def _validate(self, deployment_id: str, proposed: dict[str, Any], timeout: float) -> Optional[str]:
        """Ask the component to validate ``proposed``; the failure cause, or None when it accepted (or was
        not asked: no validation subscription, as for a component that does not run)."""
        with self._lock:
            listeners = [sub for sub in self._subscriptions if sub.kind == "validate"]
            pending = _Validation(threading.Event())
            if self.service is not None and self.service.pid is None:
                # its process is gone (BROKEN, stopped): the nucleus dropped its listener with its stream,
                # even if this server has not read the end of its connection yet
                listeners = []
            if listeners:
                self._validations[deployment_id] = pending
        if not listeners:
            return None
        # the nucleus keeps one validation listener per component: the first subscription's
        request = {"configuration": proposed, "deploymentId": deployment_id}
        event = {"validateConfigurationUpdateEvent": request}
        self._send_event(listeners[0], NS + "ValidateConfigurationUpdateEvents", event)
        answered = pending.done.wait(timeout)
        with self._lock:
            self._validations.pop(deployment_id, None)  # a report after this is refused: timed out
        if not answered or pending.report is None:
            return f"{NO_REPORT_CAUSE} no report within {timeout:g} s"
        if pending.report.get("status") == "REJECTED":
            message = pending.report.get("message")
            return f"{REFUSED_CAUSE} {{ name = {self.component_name}, message = {message} }}"
        return None

    def _wait_for_component(self, seconds: float, since: int = 0) -> Optional[str]:
        """Wait for the component to be RUNNING or FINISHED (None) or BROKEN (the failure cause). Only a
        BROKEN reached after its first ``since`` transitions counts, as the nucleus counts only a BROKEN
        state changed after the deployment's merge (DeploymentConfigMerger.waitForServicesToStart)."""
        service = self.service
        if service is None:
            return None

        def settled(state: str) -> bool:
            return state in (RUNNING, FINISHED) or (state == BROKEN and len(service.transitions) > since)

        try:
            state = service.wait_for(settled, seconds)
        except TimeoutError as exc:
            return f"the component did not reach RUNNING: {exc}"
        if state == BROKEN:
            return f"Service {self.component_name} in broken state after deployment"
        return None

    @staticmethod
    def _broken(deployment_id: str, status: str, cause: str) -> DeploymentResult:
        stack = ("DEPLOYMENT_FAILURE", "COMPONENT_UPDATE_ERROR", "COMPONENT_BROKEN")
        return DeploymentResult(deployment_id, status, cause, stack, ("USER_COMPONENT_ERROR",))

    def _finished(self, result: DeploymentResult) -> None:
        with self._lock:
            self.deployments.append(result)
            self._lock.notify_all()

    def _replace_configuration(self, configuration: dict[str, Any]) -> None:
        """A rollback: the configuration as it was, with update events for what changes back."""
        with self._lock:
            before = self._configuration
            self._policies = access.parse_policies(configuration, self.thing_name)
            self._configuration = copy.deepcopy(configuration)
            paths = access.changed_paths(before, configuration)
        self._notify_update(paths)

    # ------------------------------------------------------------------ connections
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)  # reads wait for the client; stop() and drops shut the socket down
            conn = _Connection(sock)
            with self._lock:
                if self._refuse_connects > 0:
                    self._refuse_connects -= 1
                    conn.close()
                    continue
                self._connections.append(conn)
            conn.thread = threading.Thread(
                target=self._serve, args=(conn,), name="devnucleus-conn", daemon=True
            )
            conn.thread.start()

    def _serve(self, conn: _Connection) -> None:
        try:
            while not self._stopping.is_set():
                self._handle(conn, read_message(conn.sock))
        except (EOFError, OSError):
            pass  # the client went away, or we closed it
        except FrameError as exc:
            # a malformed frame ends this connection only
            with contextlib.suppress(OSError):
                conn.send(PROTOCOL_ERROR, 0, payload=json.dumps({"message": str(exc)}).encode("utf-8"))
        finally:
            conn.close()
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)
                self._subscriptions = [sub for sub in self._subscriptions if sub.conn is not conn]
                self._lock.notify_all()

    def _handle(self, conn: _Connection, message: Message) -> None:
        message_type = message.get(":message-type")
        stream_id = message.get(":stream-id")
        flags = message.get(":message-flags")
        if not isinstance(message_type, int) or not isinstance(stream_id, int) or not isinstance(flags, int):
            raise FrameError("message lacks :message-type, :message-flags or :stream-id")
        if conn.rejected:
            return  # wait for the client to close the connection
        if conn.component is None:
            if message_type != CONNECT:
                raise FrameError(f"expected CONNECT first, got message type {message_type}")
            self._connect(conn, message)
        elif message_type == PING:
            conn.send(PING_RESPONSE, 0, payload=message.payload)
        elif message_type == APPLICATION_MESSAGE and stream_id > 0:
            if flags & TERMINATE_STREAM:
                self._end_stream(conn, stream_id)
            elif message.get("operation") is not None:
                self._request(conn, stream_id, message)
        elif message_type not in (PING_RESPONSE, CONNECT_ACK):
            raise FrameError(f"unexpected message type {message_type} on stream {stream_id}")

    def _connect(self, conn: _Connection, message: Message) -> None:
        if message.get(":version") != RPC_VERSION:
            raise FrameError(f"unsupported :version {message.get(':version')!r}, expected {RPC_VERSION}")
        try:
            token = json.loads(message.payload.decode("utf-8") or "{}").get("authToken")
        except (ValueError, AttributeError):
            token = None
        if token == self.token:
            with self._lock:
                conn.component = self.component_name
                self._lock.notify_all()
            conn.send(CONNECT_ACK, 0, CONNECTION_ACCEPTED)
        else:
            # keep the socket open: the client closes it and raises AccessDeniedError
            conn.rejected = True
            conn.send(CONNECT_ACK, 0, 0)

    def _end_stream(self, conn: _Connection, stream_id: int) -> None:
        with self._lock:
            self._subscriptions = [
                sub for sub in self._subscriptions if not (sub.conn is conn and sub.stream_id == stream_id)
            ]
            self._lock.notify_all()

    def _request(self, conn: _Connection, stream_id: int, message: Message) -> None:
        operation = str(message.get("operation"))
        answer: Optional[_Answer] = None
        fault: Optional[_Fault] = None
        try:
            try:
                request = json.loads(message.payload.decode("utf-8") or "{}")
            except ValueError as exc:
                raise _Fault("InvalidArgumentsError", f"{operation}: request is not JSON: {exc}") from exc
            if not isinstance(request, dict):
                raise _Fault("InvalidArgumentsError", f"{operation}: request must be a JSON object")
            answer = self._dispatch(conn, stream_id, operation, request)
        except _Fault as exc:
            fault = exc
        with self._lock:
            delay = self._delay if self._delay_operation in (None, operation) else 0.0
        if delay <= 0:
            self._answer(conn, stream_id, answer, fault)
            return

        def answer_later() -> None:
            if not self._stopping.wait(delay):
                with contextlib.suppress(OSError):  # the client may be gone by now
                    self._answer(conn, stream_id, answer, fault)

        # a held answer must not hold back the connection's other requests
        threading.Thread(target=answer_later, daemon=True).start()

    def _answer(
        self, conn: _Connection, stream_id: int, answer: Optional[_Answer], fault: Optional[_Fault]
    ) -> None:
        if fault is not None:
            body = {"message": fault.message, "_message": fault.message, "_errorCode": fault.shape}
            conn.send_json(APPLICATION_ERROR, stream_id, TERMINATE_STREAM, NS + fault.shape, body)
            return
        assert answer is not None
        if answer.subscription is None:
            conn.send_json(APPLICATION_MESSAGE, stream_id, TERMINATE_STREAM, answer.model, answer.body)
            return
        # Live before the client sees the response (a message delivered right after it must arrive), and
        # under the connection's write lock so that no event on the new stream overtakes the response.
        with conn.write_lock:
            with self._lock:
                if conn not in self._connections:
                    return
                self._subscriptions.append(answer.subscription)
                self._lock.notify_all()
            conn.send_json(APPLICATION_MESSAGE, stream_id, 0, answer.model, answer.body)

    # ------------------------------------------------------------------ operations
    def _dispatch(self, conn: _Connection, stream_id: int, operation: str, request: dict) -> _Answer:
        handlers: dict[str, Callable[[_Connection, int, dict], _Answer]] = {
            NS + "PublishToIoTCore": self._publish_to_iot_core,
            NS + "SubscribeToIoTCore": self._subscribe_to_iot_core,
            NS + "PublishToTopic": self._publish_to_topic,
            NS + "SubscribeToTopic": self._subscribe_to_topic,
            NS + "GetConfiguration": self._get_configuration,
            NS + "SubscribeToConfigurationUpdate": self._subscribe_to_configuration_update,
            NS + "SubscribeToValidateConfigurationUpdates": self._subscribe_to_validate_configuration_updates,
            NS + "SendConfigurationValidityReport": self._send_configuration_validity_report,
            NS + "UpdateState": self._update_state,
        }
        handler = handlers.get(operation)
        if handler is None:
            raise _Fault("ServiceError", f"operation {operation} is not supported by the stand-in nucleus")
        return handler(conn, stream_id, request)

    def _authorized_topic(self, request: dict, key: str, operation: str) -> str:
        """The request's topic (under ``key``), once the accessControl policies grant ``operation`` on it."""
        topic = request.get(key)
        if not isinstance(topic, str) or not topic:
            raise _Fault("InvalidArgumentsError", f"{operation}: {key} is required")
        if not access.is_authorized(self._policies, operation, topic):
            raise _Fault(
                "UnauthorizedError",
                f"Principal {self.component_name} is not authorized to perform "
                f"{access.GRANTING_SERVICE[operation]}:{operation} on resource {topic}",
            )
        return topic

    def _maybe_fail_publish(self, operation: str) -> None:
        with self._lock:
            if self._failing_publishes == 0:
                return
            if self._failing_publishes is not None:
                self._failing_publishes -= 1
            message = self._fail_message
        raise _Fault("ServiceError", f"{operation}: {message}")

    def _record(self, published: Published) -> None:
        with self._lock:
            self._published.append(published)
            self._lock.notify_all()
        if self._on_publish is not None:
            self._on_publish(published)

    def _publish_to_iot_core(self, conn: _Connection, stream_id: int, request: dict) -> _Answer:
        operation = NS + "PublishToIoTCore"
        topic = self._authorized_topic(request, "topicName", operation)
        qos = str(request.get("qos", "0"))
        if qos not in ("0", "1"):
            raise _Fault("InvalidArgumentsError", f"{operation}: qos must be '0' or '1', got {qos!r}")
        self._maybe_fail_publish(operation)
        payload = _decode_b64(request.get("payload"), operation)
        self._record(Published(topic, payload, int(qos), time.time(), "iot"))
        return _Answer(NS + "PublishToIoTCoreResponse", {})

    def _subscribe_to_iot_core(self, conn: _Connection, stream_id: int, request: dict) -> _Answer:
        operation = NS + "SubscribeToIoTCore"
        topic = self._authorized_topic(request, "topicName", operation)
        return _Answer(NS + "SubscribeToIoTCoreResponse", {}, _Subscription(conn, stream_id, "iot", topic))

    def _publish_to_topic(self, conn: _Connection, stream_id: int, request: dict) -> _Answer:
        operation = NS + "PublishToTopic"
        topic = self._authorized_topic(request, "topic", operation)
        self._maybe_fail_publish(operation)
        message = request.get("publishMessage") or {}
        if isinstance(message.get("jsonMessage"), dict):
            body = message["jsonMessage"].get("message")
            payload = json.dumps(body).encode("utf-8")
            event = {"jsonMessage": {"message": body, "context": {"topic": topic}}}
        elif isinstance(message.get("binaryMessage"), dict):
            payload = _decode_b64(message["binaryMessage"].get("message"), operation)
            encoded = base64.b64encode(payload).decode("ascii")
            event = {"binaryMessage": {"message": encoded, "context": {"topic": topic}}}
        else:
            raise _Fault(
                "InvalidArgumentsError", f"{operation}: publishMessage needs jsonMessage or binaryMessage"
            )
        self._record(Published(topic, payload, None, time.time(), "local"))
        self._push("local", topic, NS + "SubscriptionResponseMessage", event, publisher=conn.component)
        return _Answer(NS + "PublishToTopicResponse", {})

    def _subscribe_to_topic(self, conn: _Connection, stream_id: int, request: dict) -> _Answer:
        operation = NS + "SubscribeToTopic"
        topic = self._authorized_topic(request, "topic", operation)
        others_only = request.get("receiveMode") == "RECEIVE_MESSAGES_FROM_OTHERS"
        subscription = _Subscription(conn, stream_id, "local", topic, from_others_only=others_only)
        return _Answer(NS + "SubscribeToTopicResponse", {"topicName": topic}, subscription)

    def _own_component(self, request: dict, operation: str) -> None:
        name = request.get("componentName")
        if name not in (None, "", self.component_name):
            raise _Fault("ResourceNotFoundError", f"{operation}: component {name} not found")

    def _get_configuration(self, conn: _Connection, stream_id: int, request: dict) -> _Answer:
        operation = NS + "GetConfiguration"
        self._own_component(request, operation)
        key_path = [str(key) for key in request.get("keyPath") or []]
        with self._lock:
            found, value = access.lookup(self._configuration, key_path)
        if not found:
            raise _Fault("ResourceNotFoundError", f"{operation}: key not found: /{'/'.join(key_path)}")
        if key_path and not isinstance(value, dict):
            value = {key_path[-1]: value}  # a leaf answers {leafKey: value}
        return _Answer(
            NS + "GetConfigurationResponse", {"componentName": self.component_name, "value": value}
        )

    def _subscribe_to_configuration_update(self, conn: _Connection, stream_id: int, request: dict) -> _Answer:
        self._own_component(request, NS + "SubscribeToConfigurationUpdate")
        key_path = tuple(str(key) for key in request.get("keyPath") or [])
        subscription = _Subscription(conn, stream_id, "config", key_path=key_path)
        return _Answer(NS + "SubscribeToConfigurationUpdateResponse", {}, subscription)

    def _subscribe_to_validate_configuration_updates(
        self, conn: _Connection, stream_id: int, request: dict
    ) -> _Answer:
        subscription = _Subscription(conn, stream_id, "validate")
        return _Answer(NS + "SubscribeToValidateConfigurationUpdatesResponse", {}, subscription)

    def _send_configuration_validity_report(
        self, conn: _Connection, stream_id: int, request: dict
    ) -> _Answer:
        # As ConfigStoreIPCEventStreamAgent's handler: the report names the deployment it answers, and
        # only a request still waiting takes it.
        report = request.get("configurationValidityReport")
        if not isinstance(report, dict) or report.get("deploymentId") is None:
            raise _Fault(
                "InvalidArgumentsError",
                "Cannot accept configuration validity report, the deployment ID provided was null",
            )
        with self._lock:
            pending = self._validations.pop(str(report["deploymentId"]), None)
        if pending is None:
            raise _Fault("InvalidArgumentsError", "Validation request either timed out or was never made")
        pending.report = report
        pending.done.set()
        return _Answer(NS + "SendConfigurationValidityReportResponse", {})

    def _update_state(self, conn: _Connection, stream_id: int, request: dict) -> _Answer:
        state = request.get("state")
        if state not in LIFECYCLE_STATES:
            raise _Fault("InvalidArgumentsError", f"UpdateState: state must be one of {LIFECYCLE_STATES}")
        with self._lock:
            self._states.append(str(state))
            self._lock.notify_all()
        if self.service is not None:
            self.service.report(str(state))
        return _Answer(NS + "UpdateStateResponse", {})

    # ------------------------------------------------------------------ events
    def _push(self, kind: str, topic: str, model: str, body: dict, publisher: Optional[str] = None) -> int:
        with self._lock:
            targets = [
                sub
                for sub in self._subscriptions
                if sub.kind == kind
                and access.mqtt_filter_matches(sub.topic, topic)
                and not (sub.from_others_only and publisher == sub.conn.component)
            ]
        return sum(1 for sub in targets if self._send_event(sub, model, body))

    def _send_event(self, sub: _Subscription, model: str, body: Mapping) -> bool:
        try:
            sub.conn.send_json(APPLICATION_MESSAGE, sub.stream_id, 0, model, body)
        except OSError:
            return False  # the connection is going away; its reader cleans up
        return True


def _decode_b64(value: Any, operation: str) -> bytes:
    if value is None:
        return b""
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Fault("InvalidArgumentsError", f"{operation}: payload is not base64: {exc}") from exc
