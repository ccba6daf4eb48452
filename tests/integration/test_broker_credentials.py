"""`edgeproof broker credentials` against the real Mosquitto with the shipped conf and ACL.

The password file the command writes is the broker's ``password_file``; the CA it creates signs
the broker's certificate and the device's client certificate.  The device logs in with the
password from the secret file, publishes on its own topics and is refused on another device's;
a wrong password is refused; a second run replaces the entry (after SIGHUP the old password no
longer works); with ``require_certificate true`` only the issued certificate gets in.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.cli import main
from tests.support.mosquitto import Collector
from tests.support.tls_broker import DEPLOY, DEV_A, DEV_B, SecureBroker, start_broker_with_ca

pytestmark = pytest.mark.integration
COORDINATOR_PW = "pw-coordinator"


def credentials(capsys: pytest.CaptureFixture[str], etc: Path, dev: str, *extra: str) -> dict[str, Any]:
    code = main(["broker", "credentials", dev, "--password-file", str(etc / "passwd"), "--json", *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    result: dict[str, Any] = json.loads(out.out)
    return result


@dataclass
class Session:
    client: paho.Client
    connack: str
    pubacks: dict[int, str]
    lock: threading.Condition

    def publish(self, topic: str, payload: bytes) -> str:
        """QoS 1 publish; the PUBACK's reason code as text."""
        info = self.client.publish(topic, payload, qos=1)
        with self.lock:
            assert self.lock.wait_for(lambda: info.mid in self.pubacks, 10), topic
            return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(secure: SecureBroker, user: str, password: str, cert: tuple[str, str] | None = None) -> Session:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=user, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.username_pw_set(user, password)
    context = ssl.create_default_context(cafile=secure.ca_file)
    if cert is not None:
        context.load_cert_chain(*cert)
    client.tls_set_context(context)
    lock = threading.Condition()
    session = Session(client, "", {}, lock)

    def on_connect(c: paho.Client, u: object, flags: object, rc: Any, props: object) -> None:
        with lock:
            session.connack = str(rc)
            lock.notify_all()

    def on_publish(c: paho.Client, u: object, mid: int, rc: Any, props: object) -> None:
        with lock:
            session.pubacks[mid] = str(rc)
            lock.notify_all()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("127.0.0.1", secure.broker.port)
    client.loop_start()
    with lock:
        assert lock.wait_for(lambda: session.connack != "", 10), "no CONNACK"
    return session


def handshake(secure: SecureBroker, cert: tuple[str, str] | None = None) -> str:
    """A bare TLS connection to the broker: "accepted" when the broker keeps it open waiting for an
    MQTT CONNECT; the broker's refusal (an alert, under TLS 1.3 after the handshake) raises SSLError."""
    context = ssl.create_default_context(cafile=secure.ca_file)
    if cert is not None:
        context.load_cert_chain(*cert)
    raw = socket.create_connection(("127.0.0.1", secure.broker.port), timeout=10)
    with raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.settimeout(1.0)
        try:
            tls.recv(1)
        except TimeoutError:
            return f"accepted ({tls.version()})"
        return "closed"


def secret(result: dict[str, Any]) -> str:
    return Path(result["device_secret_file"]).read_text().strip()


@pytest.fixture(scope="module")
def etc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("etc")


@pytest.fixture(scope="module")
def first(etc: Path) -> dict[str, Any]:
    """The first run: a new password file and a new CA in the broker's folder."""
    capsys_free = subprocess.run(
        [sys.executable, "-m", "agent", "broker", "credentials", DEV_A, "--password-file", str(etc / "passwd"),
         "--ca", str(etc), "--acl", str(DEPLOY / "acl"), "--json"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    result: dict[str, Any] = json.loads(capsys_free.stdout)
    # The coordinator's line is added by Mosquitto's own tool, into the file we wrote.
    subprocess.run(
        ["mosquitto_passwd", "-b", str(etc / "passwd"), "coordinator", COORDINATOR_PW],
        check=True,
        capture_output=True,
    )
    return result


@pytest.fixture(scope="module")
def broker(
    etc: Path, first: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureBroker]:
    secure = start_broker_with_ca(etc, tmp_path_factory.mktemp("broker"))
    try:
        yield secure
    finally:
        secure.broker.kill()


def test_the_device_logs_in_and_the_shipped_acl_confines_it(
    broker: SecureBroker, first: dict[str, Any]
) -> None:
    assert first["entry"] == "added" and first["users_in_file"] == 1
    assert first["acl"].endswith("deploy/mosquitto/acl") and first["acl_topics_checked"] == 12
    assert oct(Path(first["device_secret_file"]).stat().st_mode & 0o777) == "0o600"
    coordinator = Collector(
        broker.broker, "edgeproof/v1/dev/#", client_id="coordinator", username="coordinator",
        password=COORDINATOR_PW, tls_ca=broker.ca_file,
    )  # fmt: skip
    device = connect(broker, DEV_A, secret(first))
    try:
        assert device.connack == "Success"
        own = f"edgeproof/v1/dev/{DEV_A}/proof"
        assert device.publish(own, b"mine") == "Success"
        assert device.publish(f"edgeproof/v1/dev/{DEV_B}/proof", b"forged") == "Not authorized"
        assert device.publish(f"edgeproof/v1/dev/{DEV_A}/voucher", b"self-voucher") == "Not authorized"
        assert device.publish(f"edgeproof/v1/dev/{DEV_A}/hb", b"beat") == "Success"
        assert coordinator.wait_for(lambda msgs: len(msgs) >= 2, 10)
        time.sleep(0.3)
        assert coordinator.messages == [(own, b"mine"), (f"edgeproof/v1/dev/{DEV_A}/hb", b"beat")]
    finally:
        device.close()
        coordinator.close()


def test_a_wrong_password_is_refused(broker: SecureBroker, first: dict[str, Any]) -> None:
    session = connect(broker, DEV_A, secret(first) + "x")
    try:
        assert session.connack == "Not authorized"
    finally:
        session.close()
    stranger = connect(broker, DEV_B, secret(first))  # DEV_B has no entry at all
    try:
        assert stranger.connack == "Not authorized"
    finally:
        stranger.close()


def test_a_second_run_replaces_the_entry_and_the_old_password_stops_working(
    broker: SecureBroker, etc: Path, first: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    old = secret(first)
    again = credentials(capsys, etc, DEV_A)
    assert again["entry"] == "replaced"
    assert again["users_in_file"] == 2  # DEV_A and coordinator: replaced, not duplicated
    lines = (etc / "passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == [DEV_A, "coordinator"]
    assert secret(again) != old
    assert broker.broker.process is not None
    broker.broker.process.send_signal(signal.SIGHUP)  # Mosquitto reloads password_file
    deadline = time.monotonic() + 10
    while True:
        session = connect(broker, DEV_A, old)
        refused = session.connack == "Not authorized"
        session.close()
        if refused or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert refused, "the old password still works after SIGHUP"
    fresh = connect(broker, DEV_A, secret(again))
    try:
        assert fresh.connack == "Success"
    finally:
        fresh.close()


def test_with_require_certificate_only_the_issued_client_certificate_gets_in(
    etc: Path, first: dict[str, Any], tmp_path: Path
) -> None:
    cert = first["certificate"]
    assert cert["ca_created"] is True and cert["ca_file"] == str(etc / "ca.crt")
    for key in (etc / "ca.key", Path(cert["key_file"])):
        assert oct(key.stat().st_mode & 0o777) == "0o600"
    subject = subprocess.run(
        ["openssl", "x509", "-in", cert["cert_file"], "-noout", "-subject", "-ext", "extendedKeyUsage"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"CN = {DEV_A}" in subject and "TLS Web Client Authentication" in subject
    strict = start_broker_with_ca(etc, tmp_path / "strict", require_certificate=True)
    try:
        password = Path(first["device_secret_file"]).read_text().strip()
        with_cert = connect(strict, DEV_A, password, (cert["cert_file"], cert["key_file"]))
        try:
            assert with_cert.connack == "Success"
            # Accepted: nobody subscribes here, so Mosquitto answers 0x10 (a success code).
            assert with_cert.publish(f"edgeproof/v1/dev/{DEV_A}/status", b"up") == "No matching subscribers"
        finally:
            with_cert.close()
        # Without a certificate the broker ends the TLS handshake (it asks for one and gets none).
        with pytest.raises(ssl.SSLError) as refused:
            handshake(strict)
        assert refused.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
        assert handshake(strict, (cert["cert_file"], cert["key_file"])).startswith("accepted (TLSv1.")
    finally:
        strict.broker.kill()


def test_the_doctor_sees_the_device_connected_over_tls_and_the_coordinator_beacon(
    broker: SecureBroker, etc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operations guide's last step: with the written credentials and the CA, doctor's broker,
    beacon and clock checks pass against the production broker (the device reads the beacon the
    coordinator retained, under the shipped ACL)."""
    from agent.identity import init_keypair
    from agent.protocol.envelope import GENESIS_PREV, build_envelope
    from agent.protocol.messages import Beacon
    from tests.support.daemon_rig import COORDINATOR, now_ms
    from tests.support.doctor_rig import fake_root

    key = tmp_path / "device-key.json"
    dev = str(init_keypair(key, seed=bytes([31]) * 32).pubkey())
    issued = credentials(capsys, etc, dev, "--acl", str(DEPLOY / "acl"))
    assert broker.broker.process is not None
    broker.broker.process.send_signal(signal.SIGHUP)
    beacon = Beacon(slot=9, nonce="7e" * 32, time_ms=now_ms() - 2_000, slot_ms=30_000)
    wire = build_envelope(COORDINATOR, "beacon", beacon, seq=1, prev=GENESIS_PREV, ts=now_ms()).wire
    coordinator = connect(broker, "coordinator", COORDINATOR_PW)
    try:
        info = coordinator.client.publish("edgeproof/v1/beacon", wire, qos=1, retain=True)
        info.wait_for_publish(5)
    finally:
        coordinator.close()
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""[device]
key = "{key}"
state_dir = "{tmp_path / "state"}"
profile = "generic-x86_64"
[inference]
source = "none"
[mqtt]
host = "127.0.0.1"
port = {broker.broker.port}
username = "{dev}"
password_file = "{issued["device_secret_file"]}"
[mqtt.tls]
ca_file = "{broker.ca_file}"
[coordinator]
pubkey = "{COORDINATOR.pubkey()}"
"""
    )
    deadline = time.monotonic() + 10
    while True:  # until the broker has re-read its password file
        code = main(
            [
                "doctor",
                "--config",
                str(config),
                "--root",
                str(fake_root(tmp_path / str(time.monotonic_ns()))),
                "--json",
            ]
        )
        report = json.loads(capsys.readouterr().out)
        checks = {c["name"]: c for c in report["checks"]}
        if checks["broker"]["status"] == "ok" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert checks["broker"]["detail"].startswith(
        f"127.0.0.1:{broker.broker.port} accepted a connection (TLS, broker certificate verified, user {dev}) in "
    )
    assert checks["beacon"] == {
        "name": "beacon",
        "status": "ok",
        "detail": f"beacon slot 9 is signed by the pinned coordinator {COORDINATOR.pubkey()}",
        "hint": "",
    }
    assert checks["clock"]["status"] == "ok", checks["clock"]
    assert (code, report["failed"]) == (0, []), report
