"""Hostile peers on the production broker (deploy/mosquitto/mosquitto.conf + the shipped acl).

Device ids are public (they are in every topic), so another broker user can present a device's id
as its MQTT client id.  With ``use_username_as_clientid true`` the broker replaces every client id
by the authenticated user name: the peer gets its own session, the device is not disconnected, and
the QoS 1 messages queued for the device while it was away are still delivered to it.

The ACL lets a device publish only on its own outbound channels, never on the inbound ones the
coordinator uses to address it (challenge, verdict, voucher), and read nothing of another device.

Each test starts its own broker: sessions are the state under test.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.protocol.topics import COORDINATOR_PUBLISHES, DEVICE_PUBLISHES
from agent.transport.mqtt import MqttTransport
from agent.transport.outbox import Outbox
from agent.transport.settings import OutboxSettings
from tests.support.tls_broker import DEV_A, DEV_B, PASSWORDS, SecureBroker, start_secure_broker

pytestmark = pytest.mark.integration

PREFIX = "edgeproof/v1"
QUIET_S = 2.0  # how long "nothing more happens" is watched; generous for a loaded machine


def dev_topic(dev: str, channel: str) -> str:
    return f"{PREFIX}/dev/{dev}/{channel}"


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    secure = start_secure_broker(tmp_path / "etc", tmp_path / "broker")
    try:
        yield secure
    finally:
        secure.broker.kill()


class Peer:
    """A plain paho MQTT v5 client over TLS that records what happens to it (no agent code)."""

    def __init__(
        self,
        secure: SecureBroker,
        user: str,
        client_id: str,
        *,
        clean_start: bool,
        subscribe: tuple[str, ...] = (),
        session_expiry_s: int = 3600,
    ) -> None:
        self._cond = threading.Condition()
        self.connacks: list[tuple[ReasonCode, bool]] = []
        self.disconnects: list[str] = []
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: list[list[ReasonCode]] = []
        self.pubacks: dict[int, ReasonCode] = {}
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.username_pw_set(user, PASSWORDS[user])
        client.tls_set_context(ssl.create_default_context(cafile=secure.ca_file))
        client.reconnect_delay_set(30, 30)  # an automatic reconnect would blur what the test watches

        def on_connect(
            c: paho.Client, u: object, flags: paho.ConnectFlags, rc: ReasonCode, p: object
        ) -> None:
            if not rc.is_failure and subscribe:
                c.subscribe([(f, 1) for f in subscribe])
            self._note(lambda: self.connacks.append((rc, flags.session_present)))

        def on_disconnect(c: paho.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
            self._note(lambda: self.disconnects.append(str(rc)))

        def on_subscribe(c: paho.Client, u: object, mid: int, rcs: list[ReasonCode], p: object) -> None:
            self._note(lambda: self.subacks.append(list(rcs)))

        def on_publish(c: paho.Client, u: object, mid: int, rc: ReasonCode, p: object) -> None:
            self._note(lambda: self.pubacks.__setitem__(mid, rc))

        def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
            self._note(lambda: self.messages.append((msg.topic, bytes(msg.payload))))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_subscribe = on_subscribe
        client.on_publish = on_publish
        client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s
        client.connect(secure.broker.host, secure.broker.port, 30, clean_start=clean_start, properties=props)
        client.loop_start()
        self.client = client
        assert self.wait(lambda: bool(self.connacks), 10), f"{user} as {client_id!r}: no CONNACK"
        if subscribe and not self.connacks[0][0].is_failure:
            assert self.wait(lambda: bool(self.subacks), 10), f"{user}: no SUBACK"

    def _note(self, change: Callable[[], None]) -> None:
        with self._cond:
            change()
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert self.wait(lambda: info.mid in self.pubacks, 10), f"no PUBACK for {topic}"
        with self._cond:
            return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def coordinator(secure: SecureBroker, subscribe: tuple[str, ...] = ()) -> Peer:
    return Peer(secure, "coordinator", "coordinator", clean_start=True, subscribe=subscribe)


def device_transport(secure: SecureBroker, tmp_path: Path, name: str) -> tuple[MqttTransport, Outbox]:
    """Device A as the agent connects: its own MqttTransport, client id = its device id."""
    outbox = Outbox(OutboxSettings(path=str(tmp_path / f"{name}.sqlite3")))
    return MqttTransport(secure.settings(DEV_A, session_expiry_s=3600), outbox, client_id=DEV_A), outbox


PROBE = b"probe"


class Inbox:
    """What device A's transport dispatched to its handlers, in order (subscription probes apart)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.probes = 0
        self._cond = threading.Condition()

    def handler(self, topic: str, payload: bytes) -> None:
        with self._cond:
            if payload == PROBE:
                self.probes += 1
            else:
                self.items.append((topic, payload))
            self._cond.notify_all()

    def wait(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.items) >= count, timeout)

    def wait_probe(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.probes > 0, timeout)


def connect_device(
    secure: SecureBroker, tmp_path: Path, name: str, inbox: Inbox
) -> tuple[MqttTransport, Outbox]:
    transport, outbox = device_transport(secure, tmp_path, name)
    for channel in COORDINATOR_PUBLISHES:
        transport.subscribe(dev_topic(DEV_A, channel), inbox.handler)
    transport.start()
    transport.wait_connected(10)
    return transport, outbox


def wait_subscribed(coord: Peer, inbox: Inbox) -> None:
    """Until A's subscriptions are in place (one SUBSCRIBE after CONNACK): a probe gets through."""
    deadline = time.monotonic() + 10
    while not inbox.wait_probe(0.5):
        assert time.monotonic() < deadline, "device A's subscriptions never became active"
        assert not coord.publish(dev_topic(DEV_A, "challenge"), PROBE).is_failure


def assert_b_only_ever_was_b(secure: SecureBroker) -> None:
    log = secure.broker.log_text()
    assert "already connected, closing old connection" not in log, log[-3000:]
    # The broker gave B's connections B's own client id (its user name), never A's.
    assert f"as {DEV_B} (p5, c1, k30, u'{DEV_B}')" in log, log[-3000:]
    assert f"as {DEV_A} (p5, c1, k30, u'{DEV_B}')" not in log, log[-3000:]


def test_a_peer_presenting_a_device_id_as_client_id_leaves_its_queued_messages_alone(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    inbox = Inbox()
    coord = coordinator(secure_broker, subscribe=(dev_topic(DEV_B, "hb"),))
    # 1. Device A connects as the agent does (clean_start=False, session expiry), subscribes to its
    #    inbound channels, and goes offline with a clean DISCONNECT: the broker keeps its session.
    transport, outbox = connect_device(secure_broker, tmp_path, "outbox-1", inbox)
    wait_subscribed(coord, inbox)
    transport.stop()
    outbox.close()

    # 2. While A is away the coordinator addresses it: these QoS 1 messages are queued for A.
    queued = [
        (dev_topic(DEV_A, "challenge"), b"challenge-1"),
        (dev_topic(DEV_A, "verdict"), b"verdict-1"),
        (dev_topic(DEV_A, "challenge"), b"challenge-2"),
        (dev_topic(DEV_A, "voucher"), b"voucher-1"),
    ]
    for topic, payload in queued:
        assert not coord.publish(topic, payload).is_failure

    # 3. Broker user B presents A's device id as client id, with a clean start: a broker that
    #    honours the client id discards A's session and everything queued in it.
    intruder = Peer(secure_broker, DEV_B, DEV_A, clean_start=True)
    transport = None
    try:
        reason, session_present = intruder.connacks[0]
        # B is let in, but only as itself: it works on its own topics and got no session of A's.
        assert not reason.is_failure and session_present is False
        assert not intruder.publish(dev_topic(DEV_B, "hb"), b"b-is-b").is_failure
        assert coord.wait(lambda: coord.messages == [(dev_topic(DEV_B, "hb"), b"b-is-b")], 10), coord.messages

        # 4. A comes back (a new process, same client id) and receives what was queued, in order,
        #    while B stays connected as itself.
        transport, outbox = connect_device(secure_broker, tmp_path, "outbox-2", inbox)
        assert inbox.wait(len(queued), 10), f"A received {inbox.items} of its queued {queued}"
        time.sleep(QUIET_S)
        assert inbox.items == queued
        assert transport.status().reconnects == 0 and intruder.disconnects == []
    finally:
        intruder.close()
        if transport is not None:
            transport.stop()
            outbox.close()
        coord.close()
    assert_b_only_ever_was_b(secure_broker)


def test_a_peer_presenting_a_device_id_as_client_id_does_not_disconnect_the_device(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    inbox = Inbox()
    coord = coordinator(secure_broker)
    transport, outbox = connect_device(secure_broker, tmp_path, "outbox", inbox)
    try:
        wait_subscribed(coord, inbox)
        assert not coord.publish(dev_topic(DEV_A, "challenge"), b"challenge-1").is_failure
        assert inbox.wait(1, 10), inbox.items  # A is online and subscribed
        # B connects with A's client id, twice (a clean start, then a resumed session), while A is
        # online: a broker that honours the client id closes A's connection each time.
        for clean_start in (True, False):
            intruder = Peer(secure_broker, DEV_B, DEV_A, clean_start=clean_start, subscribe=(f"{PREFIX}/#",))
            try:
                assert not intruder.connacks[0][0].is_failure
                time.sleep(QUIET_S)
                status = transport.status()
                assert status.connected and status.reconnects == 0, status
                assert intruder.disconnects == []
            finally:
                intruder.close()
        # A's session is untouched: a fresh challenge reaches A, and only A.
        assert not coord.publish(dev_topic(DEV_A, "challenge"), b"challenge-2").is_failure
        assert inbox.wait(2, 10), inbox.items
        time.sleep(QUIET_S)
        assert inbox.items == [
            (dev_topic(DEV_A, "challenge"), b"challenge-1"),
            (dev_topic(DEV_A, "challenge"), b"challenge-2"),
        ]
        assert transport.status().reconnects == 0
    finally:
        transport.stop()
        outbox.close()
        coord.close()
    assert_b_only_ever_was_b(secure_broker)


def test_a_device_cannot_publish_on_its_own_inbound_channels(secure_broker: SecureBroker) -> None:
    coord = coordinator(secure_broker, subscribe=(f"{PREFIX}/#",))
    device = Peer(secure_broker, DEV_A, DEV_A, clean_start=True)
    try:
        # The coordinator's channels: refused with PUBACK 0x87 and never delivered.
        for channel in COORDINATOR_PUBLISHES:
            reason = device.publish(dev_topic(DEV_A, channel), f"self-{channel}".encode())
            assert str(reason) == "Not authorized", (channel, reason)
        # Another device's channels, inbound or outbound: refused as well.
        for channel in (*COORDINATOR_PUBLISHES, *DEVICE_PUBLISHES):
            reason = device.publish(dev_topic(DEV_B, channel), f"forged-{channel}".encode())
            assert str(reason) == "Not authorized", (channel, reason)
        # Every channel the device does publish still goes through (status is retained).
        expected = []
        for channel in DEVICE_PUBLISHES:
            topic, payload = dev_topic(DEV_A, channel), f"own-{channel}".encode()
            reason = device.publish(topic, payload, retain=channel == "status")
            assert not reason.is_failure, (channel, reason)
            expected.append((topic, payload))
        assert coord.wait(lambda: len(coord.messages) >= len(expected), 10), coord.messages
        time.sleep(QUIET_S)
        assert coord.messages == expected
    finally:
        device.close()
        coord.close()


def test_a_device_reads_nothing_of_another_device(secure_broker: SecureBroker) -> None:
    own = tuple(dev_topic(DEV_A, channel) for channel in COORDINATOR_PUBLISHES)
    spy = Peer(secure_broker, DEV_A, DEV_A, clean_start=True, subscribe=(f"{PREFIX}/#", *own))
    other = Peer(secure_broker, DEV_B, DEV_B, clean_start=True)
    coord = coordinator(secure_broker, subscribe=(f"{PREFIX}/dev/{DEV_B}/#",))
    try:
        for channel in COORDINATOR_PUBLISHES:
            assert not coord.publish(dev_topic(DEV_B, channel), f"for-b-{channel}".encode()).is_failure
        for channel in DEVICE_PUBLISHES:
            assert not other.publish(dev_topic(DEV_B, channel), f"from-b-{channel}".encode()).is_failure
        # All of that reached the coordinator, so the broker has routed it by now.
        total = len(COORDINATOR_PUBLISHES) + len(DEVICE_PUBLISHES)
        assert coord.wait(lambda: len(coord.messages) >= total, 10), coord.messages
        # A sentinel on A's own challenge arrives; nothing of B's ever does.
        assert not coord.publish(own[0], b"sentinel").is_failure
        assert spy.wait(lambda: (own[0], b"sentinel") in spy.messages, 10), spy.messages
        time.sleep(QUIET_S)
        assert {topic for topic, _ in spy.messages} == {own[0]}, spy.messages
    finally:
        spy.close()
        other.close()
        coord.close()
