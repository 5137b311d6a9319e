"""The component's Greengrass IPC client: bounded calls, one error type, dropped-connection detection.

Wraps the unmodified ``awsiot.greengrasscoreipc`` V2 client. Every call waits at most ``timeout``
seconds. Subscriptions are remembered and made again by ``connect()`` after a reconnect.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from typing import Any, Callable, Optional

from awscrt.io import ClientBootstrap, SocketDomain, SocketOptions
from awsiot import eventstreamrpc
from awsiot.greengrasscoreipc import model
from awsiot.greengrasscoreipc.client import GreengrassCoreIPCClient
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

logger = logging.getLogger(__name__)

SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
TOKEN_ENV = "SVCUID"
LIFECYCLE_STATES = ("RUNNING", "ERRORED")
# The nucleus puts a refusal's message into the deployment's failure cause, and IoT Jobs keeps 1024 characters
# of each status detail (IotJobsHelper truncates there): a longer message would be cut in the cloud anyway.
MAX_VALIDITY_MESSAGE_CHARS = 800
# Timeouts in a row after which a connection counts as lost (a slow nucleus answers well before that).
UNANSWERED_CALLS_BEFORE_RECONNECT = 3


class IpcError(Exception):
    """An IPC call failed: not connected, timed out, refused or answered with an error."""


class UnauthorizedIpcError(IpcError):
    """The nucleus refused the call: the recipe's accessControl does not grant it."""


class IpcTimeoutError(IpcError):
    """The nucleus did not answer within the timeout."""


class _Lifecycle(eventstreamrpc.LifecycleHandler):
    """Reports the end of one connection (identified by its generation) to its owner."""

    def __init__(self, owner: GreengrassIpc, generation: int) -> None:
        self._owner = owner
        self._generation = generation

    def on_disconnect(self, reason: Optional[Exception]) -> None:
        self._owner._lost(self._generation, f"connection closed ({reason!r})")

    def on_error(self, error: Exception) -> bool:
        self._owner._lost(self._generation, f"protocol error ({error!r})")
        return True  # close the connection


class GreengrassIpc:
    """IPC to the Greengrass nucleus for the component.

    ``socket_path`` and ``token`` default to the environment the nucleus sets
    (AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT, SVCUID), read at connect().
    ``on_disconnect(reason)`` is called (from a client thread) when an open connection is lost.
    """

    def __init__(
        self,
        timeout: float = 10.0,
        socket_path: Optional[str] = None,
        token: Optional[str] = None,
        on_disconnect: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.timeout = timeout
        self._socket_path = socket_path
        self._token = token
        self._on_disconnect = on_disconnect
        self._lock = threading.Lock()
        self._client: Optional[GreengrassCoreIPCClientV2] = None
        self._generation = 0
        # (kind, topic) -> callback; kind "iot": callback(topic, payload), "config": callback(),
        # "validate": callback(deployment_id, configuration)
        self._subscriptions: dict[tuple[str, str], Callable[..., None]] = {}
        self._live: set[tuple[str, str]] = set()  # subscribed on the current connection
        self._unanswered = 0  # calls in a row the current connection left without an answer
        self.last_disconnect_reason = ""

    # ------------------------------------------------------------------ connection
    @property
    def connected(self) -> bool:
        with self._lock:
            return self._client is not None

    def connect(self) -> None:
        """Connect (no-op if connected) and make the remembered subscriptions again. Raises IpcError.

        A remembered subscription the nucleus now refuses (accessControl changed) is dropped with a warning.
        """
        if self.connected:
            return
        socket_path = self._socket_path or os.environ.get(SOCKET_ENV)
        token = self._token or os.environ.get(TOKEN_ENV)
        if not socket_path or not token:
            raise IpcError(f"not running under Greengrass: {SOCKET_ENV} and {TOKEN_ENV} must be set")
        with self._lock:
            self._generation += 1
            generation = self._generation
        options = SocketOptions()
        options.domain = SocketDomain.Local
        connection = eventstreamrpc.Connection(
            host_name=socket_path,
            port=0,  # unused for a Unix socket
            bootstrap=ClientBootstrap.get_or_create_static_default(),
            socket_options=options,
            connect_message_amender=eventstreamrpc.MessageAmendment.create_static_authtoken_amender(token),
        )
        try:
            connection.connect(_Lifecycle(self, generation)).result(self.timeout)
        except concurrent.futures.TimeoutError:
            connection.close()
            raise IpcError(f"connect to {socket_path}: no answer within {self.timeout} s") from None
        except eventstreamrpc.AccessDeniedError as exc:
            raise IpcError(f"connect to {socket_path}: the nucleus rejected the SVCUID token") from exc
        except Exception as exc:
            connection.close()
            raise IpcError(f"connect to {socket_path}: {exc!r}") from exc
        client = GreengrassCoreIPCClientV2(client=GreengrassCoreIPCClient(connection))
        with self._lock:
            self._client = client
            self._live.clear()
            self._unanswered = 0
            remembered = list(self._subscriptions)
        for key in remembered:
            try:
                self._subscribe(key)
            except UnauthorizedIpcError as exc:
                # A deployment changed accessControl: go on without it rather than never reconnect.
                with self._lock:
                    self._subscriptions.pop(key, None)
                logger.warning("%s; no longer subscribed", exc)
            except IpcError as exc:
                if key[0] == "config" or not self.connected:
                    self.close()
                    raise
                # An IoT Core subscription may wait on the cloud, validation requests are a refinement: the
                # connection is good without them.
                logger.warning("%s; subscribing again later", exc)

    def missing_subscriptions(self) -> list[str]:
        """Topics subscribed to before that the current connection does not have (yet)."""
        with self._lock:
            if self._client is None:
                return []
            return sorted(topic or kind for kind, topic in set(self._subscriptions) - self._live)

    def resubscribe(self) -> None:
        """Make the remembered subscriptions the current connection lacks. Raises IpcError."""
        with self._lock:
            missing = sorted(set(self._subscriptions) - self._live) if self._client is not None else []
        for key in missing:
            self._subscribe(key)

    def close(self) -> None:
        """Close the connection (bounded); remembered subscriptions are made again by connect()."""
        with self._lock:
            client, self._client = self._client, None
            self._generation += 1  # callbacks of the closed connection no longer count
            self._live.clear()
        if client is not None:
            _close_client(client, self.timeout)

    def _lost(self, generation: int, reason: str) -> None:
        with self._lock:
            if generation != self._generation or self._client is None:
                return
            client, self._client = self._client, None
            self._generation += 1
            self._live.clear()
        self.last_disconnect_reason = reason
        logger.warning("Greengrass IPC %s", reason)
        threading.Thread(target=_close_client, args=(client, self.timeout), daemon=True).start()
        if self._on_disconnect is not None:
            self._on_disconnect(reason)

    # ------------------------------------------------------------------ operations
    def publish_iot(self, topic: str, payload: bytes, qos: int = 1) -> None:
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos!r}")
        self._call(
            f"PublishToIoTCore {topic}",
            lambda c: c.publish_to_iot_core_async(topic_name=topic, qos=str(qos), payload=payload),
        )

    def publish_local(self, topic: str, payload: bytes) -> None:
        message = model.PublishMessage(binary_message=model.BinaryMessage(message=payload))
        self._call(
            f"PublishToTopic {topic}",
            lambda c: c.publish_to_topic_async(topic=topic, publish_message=message),
        )

    def get_configuration(self, key_path: Optional[list[str]] = None) -> Any:
        """The component's configuration (or the value at ``key_path``; a leaf comes as {key: value})."""
        what = " ".join(["GetConfiguration", *(["/".join(key_path)] if key_path else [])])
        response = self._call(what, lambda c: c.get_configuration_async(key_path=key_path or []))
        return response.value

    def update_state(self, state: str) -> None:
        if state not in LIFECYCLE_STATES:
            raise ValueError(f"state must be one of {LIFECYCLE_STATES}, got {state!r}")
        self._call(f"UpdateState {state}", lambda c: c.update_state_async(state=state))

    def subscribe_iot(self, topic: str, on_message: Callable[[str, bytes], None]) -> None:
        """Receive IoT Core messages on ``topic``; ``on_message(topic, payload)`` runs on a pool thread.

        Subscribing again to the same topic replaces the callback (no second subscription).
        """
        self._remember(("iot", topic), on_message)

    def subscribe_configuration(self, on_update: Callable[[], None]) -> None:
        """Call ``on_update()`` (on a pool thread) whenever the component's configuration changes."""
        self._remember(("config", ""), on_update)

    def subscribe_validation(self, on_request: Callable[[str, dict[str, Any]], None]) -> None:
        """Call ``on_request(deployment_id, configuration)`` (on a pool thread) when a deployment asks the
        component whether it accepts a configuration, before the deployment applies it
        (SubscribeToValidateConfigurationUpdates). Answer with ``send_validity_report``."""
        self._remember(("validate", ""), on_request)

    def send_validity_report(self, deployment_id: str, accepted: bool, message: str = "") -> None:
        """Answer a validation request (SendConfigurationValidityReport): ACCEPTED, or REJECTED with
        ``message`` (cut to MAX_VALIDITY_MESSAGE_CHARS characters)."""
        statuses = model.ConfigurationValidityStatus
        status = statuses.ACCEPTED if accepted else statuses.REJECTED
        if len(message) > MAX_VALIDITY_MESSAGE_CHARS:
            message = message[: MAX_VALIDITY_MESSAGE_CHARS - 3] + "..."
        report = model.ConfigurationValidityReport(
            status=status, deployment_id=deployment_id, message=message or None
        )
        self._call(
            f"SendConfigurationValidityReport {status}",
            lambda c: c.send_configuration_validity_report_async(configuration_validity_report=report),
        )

    # ------------------------------------------------------------------ internals
    def _remember(self, key: tuple[str, str], callback: Callable[..., None]) -> None:
        with self._lock:
            already_live = key in self._live
            previous = self._subscriptions.get(key)
            self._subscriptions[key] = callback  # events look the callback up, so this replaces it
        if already_live:
            return
        try:
            self._subscribe(key)
        except IpcTimeoutError:
            raise  # kept: connect() and resubscribe() make it again
        except IpcError:
            with self._lock:  # a refused subscription is not made again by connect()
                if previous is None:
                    self._subscriptions.pop(key, None)
                else:
                    self._subscriptions[key] = previous
            raise

    def _deliver(self, key: tuple[str, str], *args: Any) -> None:
        with self._lock:
            callback = self._subscriptions.get(key)
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("IPC subscription callback failed")

    def _subscribe(self, key: tuple[str, str]) -> None:
        kind, topic = key
        with self._lock:
            generation = self._generation
        established = threading.Event()  # a refused subscription also closes its stream: not a loss

        def closed() -> None:
            if established.is_set():
                self._lost(generation, f"the nucleus closed the {kind} subscription {topic}".rstrip())

        if kind == "iot":

            def on_iot(event: model.IoTCoreMessage) -> None:
                if event.message is not None:
                    self._deliver(key, event.message.topic_name or "", event.message.payload or b"")

            self._call(
                f"SubscribeToIoTCore {topic}",
                lambda c: c.subscribe_to_iot_core_async(
                    topic_name=topic,
                    qos=model.QOS.AT_LEAST_ONCE,
                    on_stream_event=on_iot,
                    on_stream_closed=closed,
                ),
            )
        elif kind == "validate":

            def on_validate(event: model.ValidateConfigurationUpdateEvents) -> None:
                request = event.validate_configuration_update_event
                if request is not None:
                    configuration = request.configuration if isinstance(request.configuration, dict) else {}
                    self._deliver(key, request.deployment_id or "", configuration)

            self._call(
                "SubscribeToValidateConfigurationUpdates",
                lambda c: c.subscribe_to_validate_configuration_updates_async(
                    on_stream_event=on_validate, on_stream_closed=closed
                ),
            )
        else:
            self._call(
                "SubscribeToConfigurationUpdate",
                lambda c: c.subscribe_to_configuration_update_async(
                    key_path=[],
                    on_stream_event=lambda _event: self._deliver(key),
                    on_stream_closed=closed,
                ),
            )
        established.set()
        with self._lock:
            if generation == self._generation:
                self._live.add(key)

    def _call(self, what: str, start: Callable[[GreengrassCoreIPCClientV2], Any]) -> Any:
        """Run one operation with a bounded wait; map every failure to IpcError."""
        with self._lock:
            client, generation = self._client, self._generation
        if client is None:
            raise IpcError(f"{what}: not connected to the Greengrass nucleus")
        operation = None
        try:
            started = start(client)
            if isinstance(started, tuple):  # streaming operations return (future, operation)
                started, operation = started
            result = started.result(self.timeout)
            self._answered(generation)
            return result
        except concurrent.futures.TimeoutError:
            if operation is not None:
                operation.close()
            self._unanswered_call(generation)
            raise IpcTimeoutError(f"{what}: no answer from the nucleus within {self.timeout} s") from None
        except model.GreengrassCoreIPCError as exc:
            self._answered(generation)  # an error answer is an answer: the connection works
            if isinstance(exc, model.UnauthorizedError):
                raise UnauthorizedIpcError(
                    f"{what}: unauthorized; the recipe's accessControl does not grant it ({exc.message})"
                ) from exc
            raise IpcError(f"{what}: {type(exc).__name__}: {getattr(exc, 'message', exc)}") from exc
        except Exception as exc:
            # anything else (closed connection or stream, protocol error) means the connection is unusable
            self._lost(generation, f"{what} failed: {exc!r}")
            raise IpcError(f"{what}: connection lost ({exc!r})") from exc

    def _answered(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._unanswered = 0

    def _unanswered_call(self, generation: int) -> None:
        """A nucleus that keeps the socket open but answers nothing is as good as gone: after
        UNANSWERED_CALLS_BEFORE_RECONNECT timeouts in a row, drop the connection so the owner reconnects."""
        with self._lock:
            if generation != self._generation:
                return
            self._unanswered += 1
            unanswered = self._unanswered
        if unanswered >= UNANSWERED_CALLS_BEFORE_RECONNECT:
            reason = f"connection dropped: the nucleus left {unanswered} calls in a row unanswered"
            self._lost(generation, reason)


def _close_client(client: GreengrassCoreIPCClientV2, timeout: float) -> None:
    # Close the connection before the V2 client's executor: V2.close() shuts the executor down first,
    # and the SDK then logs a traceback for every stream-closed callback it can no longer schedule.
    try:
        client.client.close().result(timeout)
    except Exception as exc:  # the connection is gone either way
        logger.debug("closing the IPC connection: %r", exc)
    client.executor.shutdown(wait=False)
