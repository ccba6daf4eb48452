"""Test helpers around the real Mosquitto broker.

The broker itself (a free 127.0.0.1 port, start/stop/kill by pid, persistence, extra
config) lives in :mod:`agent.localnet.mosquitto`, shared with ``make demo``; it is
re-exported here so tests import everything broker-related from one place.  This
module adds :class:`Collector`, a plain paho subscriber that records deliveries.
"""

from __future__ import annotations

from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.localnet.mosquitto import (
    CANDIDATES,
    BrokerError,
    MosquittoBroker,
    free_port,
    mosquitto_binary,
    port_accepts,
)

__all__ = [
    "CANDIDATES",
    "BrokerError",
    "Collector",
    "MosquittoBroker",
    "free_port",
    "mosquitto_binary",
    "port_accepts",
    "publisher",
]


def publisher(broker: MosquittoBroker, client_id: str) -> paho.Client:
    """A plain paho MQTT v5 client connected to ``broker``, its loop running (``disconnect()``
    and ``loop_stop()`` it when done)."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.connect(broker.host, broker.port, 30)
    client.loop_start()
    return client


class Collector:
    """A plain paho subscriber (MQTT v5, QoS 1) that records what the broker delivers."""

    def __init__(
        self,
        broker: MosquittoBroker,
        topic_filter: str,
        *,
        client_id: str = "test-collector",
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        import threading

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.topic_filter = topic_filter
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if username is not None:
            client.username_pw_set(username, password)
        if tls_ca is not None:
            import ssl

            client.tls_set_context(ssl.create_default_context(cafile=tls_ca))

        def on_connect(c: paho.Client, userdata: object, flags: object, rc: object, props: object) -> None:
            c.subscribe(topic_filter, qos=1)

        def on_subscribe(c: paho.Client, userdata: object, mid: int, rcs: object, props: object) -> None:
            self._subscribed.set()

        def on_message(c: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
            with self._cond:
                self.messages.append((msg.topic, bytes(msg.payload)))
                self._cond.notify_all()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600  # keep our queue while the broker runs
        client.connect(broker.host, broker.port, 30, clean_start=False, properties=props)
        client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"collector could not subscribe to {topic_filter}")
        self.client = client

    def payloads(self) -> list[bytes]:
        with self._cond:
            return [p for _, p in self.messages]

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
