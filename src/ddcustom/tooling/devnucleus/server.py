"""A stand-in Greengrass nucleus: the IPC server side of event-stream RPC over a Unix socket.

It serves the unmodified ``awsiot.greengrasscoreipc`` client: connect (SVCUID check), ping, IoT Core and
local publish/subscribe, configuration and its updates, UpdateState. It enforces the recipe's
accessControl, records what is published, and injects faults on command (drop, error, delay).
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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ddcustom.tooling.devnucleus import access
from ddcustom.tooling.devnucleus.codec import FrameError, Header, Message, encode, read_message

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


@dataclass(frozen=True)
class Published:
    """One message a component published: to IoT Core (service "iot") or local pub/sub ("local")."""

    topic: str
    payload: bytes
    qos: Optional[int]  # None for local pub/sub
    time: float
    service: str


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
    kind: str  # "iot" | "local" | "config"
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
        component = access.component_from_recipe(access.load_recipe(recipe), merge)
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
        """Close every connection and the socket; join the threads within ``timeout`` seconds."""
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
        return ["/".join(path) for path in paths]

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

    def _update_state(self, conn: _Connection, stream_id: int, request: dict) -> _Answer:
        state = request.get("state")
        if state not in LIFECYCLE_STATES:
            raise _Fault("InvalidArgumentsError", f"UpdateState: state must be one of {LIFECYCLE_STATES}")
        with self._lock:
            self._states.append(str(state))
            self._lock.notify_all()
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
