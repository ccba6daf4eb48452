"""One short broker session for ``fleet publish``: read a channel's retained manifest, publish one.

A throw-away client under its own id and a clean, non-persistent session (it must never take
over a daemon's or the coordinator's session), with the agent's ``[mqtt]`` settings.  The
retained message of a topic arrives right after the SUBACK; ``retained`` waits a short grace
after it for a topic that holds none.
"""

from __future__ import annotations

import secrets
import ssl
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import TransportError
from agent.transport.mqtt import tls_context, tls_failure
from agent.transport.settings import MqttSettings

#: How long after the SUBACK a topic without a retained message is taken to hold none.
RETAINED_GRACE_S = 0.5


class BrokerSession:
    """``with BrokerSession(settings) as s: s.retained(topic); s.publish_retained(topic, payload)``."""

    def __init__(self, settings: MqttSettings, *, timeout_s: float | None = None) -> None:
        self.settings = settings
        self.timeout = settings.connect_timeout_s if timeout_s is None else timeout_s
        self.where = f"{settings.host}:{settings.port}"
        self._cond = threading.Condition()
        self._connect: ReasonCode | None = None
        self._subacks: set[int] = set()
        self._messages: dict[str, bytes] = {}
        self._sink: Callable[[str, bytes], None] | None = None
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"edgeproof-fleet-{secrets.token_hex(6)}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.connect_timeout = self.timeout
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.resolve_password())
        context = tls_context(settings)
        if context is not None:
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

    def _on_connect(
        self, c: paho.Client, u: Any, flags: Any, rc: ReasonCode, props: Properties | None
    ) -> None:
        with self._cond:
            self._connect = rc
            self._cond.notify_all()

    def _on_subscribe(self, c: paho.Client, u: Any, mid: int, rcs: Any, props: Properties | None) -> None:
        with self._cond:
            self._subacks.add(mid)
            self._cond.notify_all()

    def _on_message(self, c: paho.Client, u: Any, message: paho.MQTTMessage) -> None:
        sink = self._sink
        if sink is not None:
            sink(message.topic, bytes(message.payload))
        if message.retain:
            with self._cond:
                self._messages[message.topic] = bytes(message.payload)
                self._cond.notify_all()

    def __enter__(self) -> BrokerSession:
        settings = self.settings
        try:
            self._client.connect(
                settings.host, settings.port, keepalive=max(5, int(self.timeout) + 5), clean_start=True
            )
        except ssl.SSLError as exc:
            raise tls_failure(settings, exc) from exc
        except (OSError, ValueError) as exc:
            raise TransportError(
                f"cannot connect to broker {self.where}: {exc}",
                hint="check [mqtt] host and port in the config",
            ) from exc
        if self._client.loop_start() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError("paho network loop could not be started")
        try:
            with self._cond:
                if not self._cond.wait_for(lambda: self._connect is not None, self.timeout):
                    raise TransportError(
                        f"broker {self.where} did not answer the MQTT CONNECT within {self.timeout:g} s"
                    )
            assert self._connect is not None
            if self._connect.is_failure:
                raise TransportError(
                    f"broker {self.where} refused the connection: {self._connect} (user {settings.username!r})"
                )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def retained(self, topic: str) -> bytes | None:
        """The retained message of ``topic`` (None when it holds none)."""
        result, mid = self._client.subscribe(topic, qos=1)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"cannot subscribe to {topic} on {self.where}: {result}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, self.timeout):
                raise TransportError(f"broker {self.where} did not acknowledge the subscription to {topic}")
            self._cond.wait_for(lambda: topic in self._messages, RETAINED_GRACE_S)
            payload = self._messages.get(topic)
        self._client.unsubscribe(topic)
        return payload

    def follow(self, filters: Sequence[str], sink: Callable[[str, bytes], None]) -> None:
        """Hand every message on ``filters`` (QoS 1) to ``sink`` (on paho's network thread)."""
        self._sink = sink
        for topic_filter in filters:
            self._subscribe(topic_filter)

    def _subscribe(self, topic_filter: str) -> None:
        result, mid = self._client.subscribe(topic_filter, qos=1)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"cannot subscribe to {topic_filter} on {self.where}: {result}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, self.timeout):
                raise TransportError(
                    f"broker {self.where} did not acknowledge the subscription to {topic_filter}"
                )

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """Publish ``payload`` retained with QoS 1 and wait for the broker's PUBACK."""
        info = self._client.publish(topic, payload, qos=1, retain=True)
        try:
            info.wait_for_publish(self.timeout)
        except (RuntimeError, ValueError) as exc:
            raise TransportError(f"broker {self.where} did not take the publish on {topic}: {exc}") from exc
        if not info.is_published():
            raise TransportError(
                f"broker {self.where} did not acknowledge the publish on {topic} within {self.timeout:g} s"
            )
