"""Publish one retained QoS 1 message through the agent's ``[mqtt]`` settings and wait for PUBACK.

A throw-away client under its own id and a clean, non-persistent session (it must never take
over a daemon's or the coordinator's session).
"""

from __future__ import annotations

import secrets
import ssl
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import TransportError
from agent.transport.mqtt import tls_context, tls_failure
from agent.transport.settings import MqttSettings


def publish_retained(
    settings: MqttSettings, topic: str, payload: bytes, *, timeout_s: float | None = None
) -> None:
    """Connect, publish ``payload`` retained with QoS 1, wait for the broker's PUBACK, disconnect."""
    timeout = settings.connect_timeout_s if timeout_s is None else timeout_s
    where = f"{settings.host}:{settings.port}"
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"edgeproof-fleet-{secrets.token_hex(6)}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.connect_timeout = timeout
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.resolve_password())
    context = tls_context(settings)
    if context is not None:
        client.tls_set_context(context)
    connected = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(
        c: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Properties | None
    ) -> None:
        outcome["connect"] = rc
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(settings.host, settings.port, keepalive=max(5, int(timeout) + 5), clean_start=True)
    except ssl.SSLError as exc:
        raise tls_failure(settings, exc) from exc
    except (OSError, ValueError) as exc:
        raise TransportError(
            f"cannot connect to broker {where}: {exc}", hint="check [mqtt] host and port in the config"
        ) from exc
    try:
        if client.loop_start() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError("paho network loop could not be started")
        if not connected.wait(timeout):
            raise TransportError(f"broker {where} did not answer the MQTT CONNECT within {timeout:g} s")
        reason: ReasonCode = outcome["connect"]
        if reason.is_failure:
            raise TransportError(
                f"broker {where} refused the connection: {reason} (user {settings.username!r})"
            )
        info = client.publish(topic, payload, qos=1, retain=True)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise TransportError(f"broker {where} did not take the publish on {topic}: {exc}") from exc
        if not info.is_published():
            raise TransportError(
                f"broker {where} did not acknowledge the publish on {topic} within {timeout:g} s"
            )
    finally:
        client.disconnect()
        client.loop_stop()
