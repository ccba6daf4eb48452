"""The production broker configuration (deploy/mosquitto/): TLS, password file, per-device pattern ACL."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import TransportError
from agent.transport.mqtt import MqttTransport
from agent.transport.outbox import Outbox
from agent.transport.settings import OutboxSettings
from tests.support.mosquitto import Collector
from tests.support.tls_broker import DEV_A, DEV_B, PASSWORDS, SecureBroker, start_secure_broker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    secure = start_secure_broker(tmp_path_factory.mktemp("etc"), tmp_path_factory.mktemp("broker"))
    try:
        yield secure
    finally:
        secure.broker.kill()


def coordinator(secure: SecureBroker, topic_filter: str = "edgeproof/v1/#") -> Collector:
    return Collector(
        secure.broker,
        topic_filter,
        client_id="coordinator",
        username="coordinator",
        password=PASSWORDS["coordinator"],
        tls_ca=str(secure.etc / "ca.crt"),
    )


def test_device_connects_with_ca_verification_and_acl_confines_it(
    secure_broker: SecureBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(OutboxSettings(path=str(tmp_path / "outbox.sqlite3")))
    transport = MqttTransport(secure_broker.settings(DEV_A), outbox, client_id=DEV_A)
    own = transport.topic("dev", DEV_A, "proof")
    foreign = transport.topic("dev", DEV_B, "proof")
    inbound: list[tuple[str, bytes]] = []
    got = threading.Event()

    def on_inbound(topic: str, payload: bytes) -> None:
        inbound.append((topic, payload))
        got.set()

    transport.subscribe(transport.topic("dev", DEV_A, "challenge"), on_inbound)
    transport.subscribe(transport.topic("dev", DEV_B, "challenge"), on_inbound)  # not allowed to read
    coord = coordinator(secure_broker)
    try:
        transport.start()
        transport.wait_connected(10)
        transport.enqueue(own, b"1:mine", kind="proof")
        transport.enqueue(foreign, b"2:forged", kind="proof")
        transport.enqueue(own, b"3:mine", kind="proof")
        assert transport.flush(10), outbox.stats()
        assert coord.wait_for(lambda msgs: len(msgs) >= 2, 10)
        time.sleep(0.5)
        assert coord.messages == [(own, b"1:mine"), (own, b"3:mine")]
        # The broker answered the forged publish with a PUBACK "Not authorized": parked, not retried.
        status = transport.status()
        assert status.rejected == 1 and status.acked == 2
        parked = outbox.parked()
        assert [(p.row.topic, p.reason) for p in parked] == [(foreign, "Not authorized")]
        assert outbox.stats().drops == {"proof": {"rejected:Not authorized": 1}}
        assert "broker refused a message" in caplog.text
        # Inbound: its own challenge arrives, another device's does not.
        coord.client.publish(transport.topic("dev", DEV_B, "challenge"), b"for-b", qos=1).wait_for_publish(5)
        coord.client.publish(transport.topic("dev", DEV_A, "challenge"), b"for-a", qos=1).wait_for_publish(5)
        assert got.wait(10)
        time.sleep(0.3)
        assert inbound == [(transport.topic("dev", DEV_A, "challenge"), b"for-a")]
    finally:
        transport.stop()
        coord.close()
        outbox.close()


def test_client_certificate_is_accepted(secure_broker: SecureBroker, tmp_path: Path) -> None:
    etc = secure_broker.etc
    tls = {"cert_file": str(etc / "device.crt"), "key_file": str(etc / "device.key")}
    outbox = Outbox(OutboxSettings(path=str(tmp_path / "outbox.sqlite3")))
    transport = MqttTransport(secure_broker.settings(DEV_A, tls=tls), outbox, client_id=DEV_A + "-cert")
    try:
        transport.start()
        transport.wait_connected(10)
    finally:
        transport.stop()
        outbox.close()


def test_wrong_password_is_refused_with_a_clear_error(secure_broker: SecureBroker, tmp_path: Path) -> None:
    outbox = Outbox(OutboxSettings(path=str(tmp_path / "outbox.sqlite3")))
    transport = MqttTransport(secure_broker.settings(DEV_A, password="wrong"), outbox, client_id=DEV_A)
    try:
        transport.start()
        with pytest.raises(TransportError) as info:
            transport.wait_connected(10)
        text = str(info.value)
        # mosquitto 2.0 answers a wrong password with CONNACK 0x87 "Not authorized" (not 0x86)
        assert "refused the connection" in text
        assert "Not authorized" in text or "Bad user name or password" in text
        assert repr(DEV_A) in text
        assert "mqtt.username" in text  # the fix is named
        assert not transport.connected
    finally:
        transport.stop()
        outbox.close()


def test_wrong_ca_fails_verification(secure_broker: SecureBroker, tmp_path: Path) -> None:
    outbox = Outbox(OutboxSettings(path=str(tmp_path / "outbox.sqlite3")))
    other = {"ca_file": str(secure_broker.etc / "other-ca.crt")}
    transport = MqttTransport(secure_broker.settings(DEV_A, tls=other), outbox, client_id=DEV_A)
    try:
        with pytest.raises(TransportError) as info:
            transport.start()
        text = str(info.value)
        assert "TLS verification of the broker" in text and "certificate verify failed" in text
        assert "tls.ca_file" in text
    finally:
        transport.stop()
        outbox.close()


def test_host_name_must_match_the_certificate(secure_broker: SecureBroker, tmp_path: Path) -> None:
    # The server certificate names only IP:127.0.0.1, so "localhost" does not match it.
    outbox = Outbox(OutboxSettings(path=str(tmp_path / "outbox.sqlite3")))
    settings = secure_broker.settings(DEV_A).model_copy(update={"host": "localhost"})
    transport = MqttTransport(settings, outbox, client_id=DEV_A)
    try:
        with pytest.raises(TransportError, match="TLS verification") as info:
            transport.start()
        assert "mismatch" in str(info.value) or "match" in str(info.value)
    finally:
        transport.stop()
    # tls.insecure skips only the host name check; the chain is still verified against the CA.
    insecure = secure_broker.settings(DEV_A, host="localhost", tls={"insecure": True})
    transport = MqttTransport(insecure, outbox, client_id=DEV_A)
    try:
        transport.start()
        transport.wait_connected(10)
    finally:
        transport.stop()
        outbox.close()


def test_plain_mqtt_is_not_accepted_on_the_tls_port(secure_broker: SecureBroker, tmp_path: Path) -> None:
    outbox = Outbox(OutboxSettings(path=str(tmp_path / "outbox.sqlite3")))
    settings = secure_broker.settings(DEV_A).model_copy(update={"tls": None})
    transport = MqttTransport(settings, outbox, client_id=DEV_A)
    try:
        transport.start()
        with pytest.raises(TransportError):
            transport.wait_connected(2)
    finally:
        transport.stop()
        outbox.close()


def test_message_above_broker_max_packet_size_is_parked_not_looped(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    # deploy/mosquitto/mosquitto.conf sets max_packet_size 262144; the broker announces it in CONNACK.
    outbox = Outbox(OutboxSettings(path=str(tmp_path / "outbox.sqlite3")))
    transport = MqttTransport(secure_broker.settings(DEV_A), outbox, client_id=DEV_A)
    own = transport.topic("dev", DEV_A, "proof")
    coord = coordinator(secure_broker)
    try:
        transport.start()
        transport.wait_connected(10)
        transport.enqueue(own, b"1:" + b"x" * 300_000, kind="proof")
        transport.enqueue(own, b"2:small", kind="proof")
        assert transport.flush(10)
        assert coord.wait_for(lambda msgs: len(msgs) >= 1, 10)
        time.sleep(0.3)
        assert coord.payloads() == [b"2:small"]
        assert transport.status().reconnects == 0  # the broker never had to drop us
        assert "maximum packet size" in outbox.parked()[0].reason
    finally:
        transport.stop()
        coord.close()
        outbox.close()


def test_probe_connects_with_tls_and_names_each_refusal(secure_broker: SecureBroker) -> None:
    """`edgeproof doctor`'s broker check: one clean connection under its own client id."""
    from agent.transport.probe import probe_broker

    result = probe_broker(secure_broker.settings(DEV_A), "edgeproof-doctor-test", timeout_s=10)
    assert (result.tls, result.username, result.port) == (True, DEV_A, secure_broker.broker.port)
    assert result.describe().startswith(
        f"127.0.0.1:{secure_broker.broker.port} accepted a connection (TLS, broker certificate verified, "
        f"user {DEV_A}) in "
    )
    with pytest.raises(TransportError) as refused:
        probe_broker(secure_broker.settings(DEV_A, password="wrong"), "edgeproof-doctor-test", timeout_s=10)
    assert str(refused.value).startswith(
        f"broker 127.0.0.1:{secure_broker.broker.port} refused the connection: "
    ) and repr(DEV_A) in str(refused.value)
    other = {"ca_file": str(secure_broker.etc / "other-ca.crt")}
    with pytest.raises(TransportError) as unverified:
        probe_broker(secure_broker.settings(DEV_A, tls=other), "edgeproof-doctor-test", timeout_s=10)
    assert "TLS verification of the broker" in str(unverified.value)
    assert "certificate verify failed" in str(unverified.value)


def test_the_broker_listens_only_on_the_tls_port(secure_broker: SecureBroker) -> None:
    # A listener option (e.g. use_username_as_clientid) above the first `listener` line makes
    # Mosquitto open an extra default listener on 1883: plain MQTT on every address.
    opened = re.findall(r"Opening ipv[46] listen socket on port (\d+)\.", secure_broker.broker.log_text())
    assert opened == [str(secure_broker.broker.port)], opened
