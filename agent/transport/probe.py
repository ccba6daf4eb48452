"""One throw-away connection to the broker, to check settings (``edgeproof doctor``).

The probe never uses the daemon's client id: connecting with it would take over the running
daemon's session (the broker disconnects the older client) and a clean start would discard the
messages the broker holds for it.  It connects with a clean, non-persistent session under its
own client id, waits for CONNACK, and disconnects.  It publishes nothing; with ``retained`` it
subscribes to that one topic and waits (within the same timeout) for the broker's retained
message, e.g. the coordinator's beacon for ``edgeproof doctor``'s clock and pin checks.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import TransportError
from agent.transport.mqtt import tls_context, tls_failure
from agent.transport.settings import MqttSettings

#: How long after the SUBACK a retained message may still be on its way.
RETAINED_GRACE_S = 1.0


@dataclass(frozen=True)
class ProbeResult:
    host: str
    port: int
    tls: bool
    username: str | None
    connect_ms: int
    #: The retained message on the asked-for topic, None if none arrived in time (or none asked).
    retained: bytes | None = None
    #: Device clock (ms since the epoch) when the retained message arrived.
    retained_at_ms: int = 0

    def describe(self) -> str:
        user = f", user {self.username}" if self.username else ""
        return (
            f"{self.host}:{self.port} accepted a connection "
            f"({'TLS, broker certificate verified' if self.tls else 'plain TCP'}{user}) in {self.connect_ms} ms"
        )


def probe_broker(
    settings: MqttSettings, client_id: str, timeout_s: float | None = None, *, retained: str | None = None
) -> ProbeResult:
    """Connect once and wait for CONNACK (and the retained message on ``retained``); TransportError
    names what failed."""
    timeout = settings.connect_timeout_s if timeout_s is None else timeout_s
    where = f"{settings.host}:{settings.port}"
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.connect_timeout = timeout
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.resolve_password())
    context = tls_context(settings)
    if context is not None:
        client.tls_set_context(context)
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(
        c: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode, props: Properties | None
    ) -> None:
        outcome["reason"] = reason_code
        done.set()

    got = threading.Event()

    def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain and "payload" not in outcome:
            outcome["payload"] = bytes(msg.payload)
            outcome["at_ms"] = time.time_ns() // 1_000_000
            got.set()

    subscribed = threading.Event()

    def on_subscribe(c: paho.Client, userdata: Any, mid: int, codes: Any, props: Properties | None) -> None:
        subscribed.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    started = time.monotonic()
    try:
        client.connect(settings.host, settings.port, keepalive=max(5, int(timeout) + 5), clean_start=True)
    except ssl.SSLError as exc:
        raise tls_failure(settings, exc) from exc
    except (OSError, ValueError) as exc:
        raise TransportError(
            f"cannot connect to broker {where}: {exc}",
            hint="check mqtt.host and mqtt.port, that the broker runs, and that no firewall blocks the port",
        ) from exc
    try:
        if client.loop_start() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError("paho network loop could not be started")
        if not done.wait(timeout):
            raise TransportError(
                f"broker {where} did not answer the MQTT CONNECT within {timeout:g} s",
                hint="is this port an MQTT listener (TLS on a TLS port, plain TCP on a plain one)?",
            )
        reason: ReasonCode = outcome["reason"]
        if reason.is_failure:
            raise TransportError(
                f"broker {where} refused the connection: {reason} (user {settings.username!r})",
                hint="check mqtt.username (the device id) and the password, and the broker's password file",
            )
        connect_ms = round((time.monotonic() - started) * 1000)
        if retained is not None:
            client.subscribe(retained, qos=1)
            # The broker sends a retained message right behind its SUBACK: a short grace after it.
            if subscribed.wait(max(0.0, timeout - (time.monotonic() - started))):
                got.wait(RETAINED_GRACE_S)
        return ProbeResult(
            host=settings.host,
            port=settings.port,
            tls=context is not None,
            username=settings.username,
            connect_ms=connect_ms,
            retained=outcome.get("payload"),
            retained_at_ms=int(outcome.get("at_ms", 0)),
        )
    finally:
        client.disconnect()
        client.loop_stop()
