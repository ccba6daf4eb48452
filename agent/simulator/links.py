"""Simulated devices multiplexed over a few real MQTT v5 connections.

A real fleet has one connection per device (and, with per-device ACLs, one broker user per
device).  A thousand paho clients in one process are mostly threads and sockets, so the
simulator spreads its devices over ``connections`` clients: device ``i`` uses connection
``i % connections``, publishes on its own topics (``{prefix}/dev/{dev}/hb``, ``proof``,
``response``) and that connection subscribes to the device's own ``challenge`` and
``verdict`` topics.  Connection 0 also subscribes to the retained beacon.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.errors import TransportError
from agent.protocol.topics import QOS, Topics

#: Filters per SUBSCRIBE packet.
SUBSCRIBE_CHUNK = 100

OnMessage = Callable[[str, bytes, int], None]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Links:
    """``connections`` paho clients carrying ``devices``; ``on_message(topic, payload, received_ms)``."""

    def __init__(
        self,
        host: str,
        port: int,
        devices: list[str],
        connections: int,
        topics: Topics,
        on_message: OnMessage,
        *,
        client_prefix: str = "edgeproof-sim",
        keepalive_s: int = 30,
    ) -> None:
        self.host = host
        self.port = port
        self.topics = topics
        self.keepalive_s = keepalive_s
        self._on_message = on_message
        self._clients = [self._client(f"{client_prefix}-{k}") for k in range(connections)]
        self._owner = {dev: i % connections for i, dev in enumerate(devices)}
        self._devices = devices
        self._lock = threading.Lock()
        self._connected: set[int] = set()
        self._pending_subs: set[tuple[int, int]] = set()
        self._refused: list[str] = []
        self._infos: list[paho.MQTTMessageInfo] = []
        self.published = 0

    def _client(self, client_id: str) -> paho.Client:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_message = lambda c, u, msg: self._on_message(msg.topic, bytes(msg.payload), now_ms())
        return client

    def _filters(self, k: int) -> list[tuple[str, int]]:
        subs = [(self.topics.beacon(), QOS)] if k == 0 else []
        for dev, owner in self._owner.items():
            if owner == k:
                subs += [
                    (self.topics.device(dev, "challenge"), QOS),
                    (self.topics.device(dev, "verdict"), QOS),
                ]
        return subs

    def connect(self, timeout_s: float = 30.0) -> None:
        """Connect every client and wait for every SUBACK; TransportError otherwise."""
        for k, client in enumerate(self._clients):
            client.on_connect = self._connected_cb(k)
            client.on_subscribe = self._subscribed_cb(k)
            try:
                client.connect(self.host, self.port, self.keepalive_s, clean_start=True)
            except OSError as exc:
                raise TransportError(
                    f"cannot connect to the broker at {self.host}:{self.port}: {exc}"
                ) from exc
            client.loop_start()
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                done = len(self._connected) == len(self._clients) and not self._pending_subs
                refused = list(self._refused)
            if refused:
                raise TransportError(f"the broker refused: {'; '.join(refused[:3])}")
            if done:
                return
            if time.monotonic() > deadline:
                raise TransportError(
                    f"{len(self._clients) - len(self._connected)} of {len(self._clients)} connections to "
                    f"{self.host}:{self.port} were not ready (connected and subscribed) within {timeout_s} s"
                )
            time.sleep(0.02)

    def _connected_cb(self, k: int) -> Callable[..., None]:
        def on_connect(client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            if rc.is_failure:
                with self._lock:
                    self._refused.append(f"connection {k}: {rc}")
                return
            filters = self._filters(k)
            with self._lock:
                self._connected.add(k)
                for start in range(0, len(filters), SUBSCRIBE_CHUNK):
                    rc, mid = client.subscribe(filters[start : start + SUBSCRIBE_CHUNK])
                    if mid is None:
                        self._refused.append(f"connection {k}: subscribe failed ({rc})")
                    else:
                        self._pending_subs.add((k, mid))

        return on_connect

    def _subscribed_cb(self, k: int) -> Callable[..., None]:
        def on_subscribe(client: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
            with self._lock:
                self._pending_subs.discard((k, mid))
                failed = [str(rc) for rc in rcs if rc.is_failure]
                if failed:
                    self._refused.append(f"connection {k} subscription: {failed[0]}")

        return on_subscribe

    def publish(self, dev: str, topic: str, payload: bytes) -> None:
        info = self._clients[self._owner[dev]].publish(topic, payload, qos=QOS)
        with self._lock:
            self._infos.append(info)
            self.published += 1
            if len(self._infos) > 20_000:
                self._infos = [i for i in self._infos if not i.is_published()]

    def unacknowledged(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every PUBACK; how many publishes are still unacknowledged."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                self._infos = [i for i in self._infos if not i.is_published()]
                left = len(self._infos)
            if left == 0 or time.monotonic() > deadline:
                return left
            time.sleep(0.02)

    def close(self) -> None:
        for client in self._clients:
            client.disconnect()
            client.loop_stop()
