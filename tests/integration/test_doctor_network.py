"""`edgeproof doctor`'s checks past the device, against the real parts: a retained beacon on a real
Mosquitto (signer against the pin, clock offset), the reward wallet, and the RPC endpoint on the
real localnet ledger (getHealth and the reward mint)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from agent.chain.bootstrap import bootstrap
from agent.chain.client import ChainClient
from agent.device.control_client import ControlClient, socket_path
from agent.errors import EdgeproofError
from agent.protocol.envelope import GENESIS_PREV, build_envelope
from agent.protocol.messages import Beacon, Challenge
from tests.support.daemon_rig import COORDINATOR, ROGUE, DaemonProcess, now_ms, wait_until
from tests.support.doctor_rig import details, doctor, fake_root, statuses, write_config
from tests.support.localnet import Localnet
from tests.support.mosquitto import MosquittoBroker, free_port

pytestmark = pytest.mark.integration
PIN = str(COORDINATOR.pubkey())
ROGUE_DEV = str(ROGUE.pubkey())
PREFIX = "doctortest/v1"
SLOT_MS = 30_000
NTP = "sync the clock with NTP: timedatectl set-ntp true (timedatectl status then shows 'System clock synchronized: yes')"


def retain(broker: MosquittoBroker, payload: bytes) -> None:
    """Publish ``payload`` as the retained beacon (what the coordinator's service does)."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(f"{PREFIX}/beacon", payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def beacon_wire(time_ms: int, signer: Keypair = COORDINATOR, slot: int = 41) -> bytes:
    body = Beacon(slot=slot, nonce="5a" * 32, time_ms=time_ms, slot_ms=SLOT_MS)
    return build_envelope(signer, "beacon", body, seq=1, prev=GENESIS_PREV, ts=time_ms).wire


def check(report: dict[str, Any], name: str) -> dict[str, str]:
    found: dict[str, str] = next(c for c in report["checks"] if c["name"] == name)
    return found


def run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broker: MosquittoBroker, extra: str = ""
) -> tuple[int, dict[str, Any]]:
    config = write_config(tmp_path, broker.port, coordinator=PIN, extra=f"{extra}\n")
    text = config.read_text().replace("[mqtt]\n", f'[mqtt]\ntopic_prefix = "{PREFIX}"\n')
    config.write_text(text)
    return doctor(capsys, config, fake_root(tmp_path / str(len(list(tmp_path.iterdir())))))


def test_a_beacon_from_the_pinned_coordinator_with_a_synced_clock_passes(
    mosquitto: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    retain(mosquitto, beacon_wire(now_ms() - 1_000))
    code, report = run(capsys, tmp_path, mosquitto)
    assert code == 0, report
    s, d = statuses(report), details(report)
    assert (s["beacon"], d["beacon"]) == ("ok", f"beacon slot 41 is signed by the pinned coordinator {PIN}")
    assert s["clock"] == "ok"
    assert re.fullmatch(
        r"within 2 s of the coordinator's clock \(beacon slot 41 started \d+\.\d s ago, 30 s slots\)",
        d["clock"],
    ), d["clock"]


def test_a_device_clock_behind_or_ahead_is_named_with_the_ntp_fix(
    mosquitto: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The coordinator's clock is 5 minutes ahead of the device's: the device is behind.
    retain(mosquitto, beacon_wire(now_ms() + 300_000))
    code, report = run(capsys, tmp_path, mosquitto)
    clock = check(report, "clock")
    assert code == 1 and report["failed"] == ["clock"]
    assert re.fullmatch(
        r"the device clock is 2\d\d\.\d s behind the coordinator's \(beacon slot 41\); beyond "
        r"beacons\.tolerance_s 120: beacons are refused \(beacon_from_future\)",
        clock["detail"],
    ), clock["detail"]
    assert clock["hint"] == NTP
    # 30 s behind (less the doctor's own run time): within the daemon's tolerance, worth fixing.
    retain(mosquitto, beacon_wire(now_ms() + 30_000))
    code, report = run(capsys, tmp_path, mosquitto)
    clock = check(report, "clock")
    assert (code, clock["status"], clock["hint"]) == (0, "warn", NTP)
    assert re.fullmatch(
        r"the device clock is \d+\.\d s behind the coordinator's \(beacon slot 41\)", clock["detail"]
    )
    # A slot that started 40 s ago in 30 s slots: the device is ~10 s ahead (or the coordinator stopped).
    retain(mosquitto, beacon_wire(now_ms() - SLOT_MS - 10_000))
    code, report = run(capsys, tmp_path, mosquitto)
    clock = check(report, "clock")
    assert (code, clock["status"]) == (0, "warn")
    assert re.fullmatch(
        r"beacon slot 41 started \d+\.\d s ago, longer than its 30 s slot: the device clock is \d+\.\d s ahead "
        r"of the coordinator's, or the coordinator stopped publishing beacons",
        clock["detail"],
    ), clock["detail"]
    assert clock["hint"] == NTP + "; otherwise check that the coordinator runs"


def test_a_beacon_from_another_signer_or_forged_fails_the_pin(
    mosquitto: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    retain(mosquitto, beacon_wire(now_ms(), signer=ROGUE))
    code, report = run(capsys, tmp_path, mosquitto)
    beacon = check(report, "beacon")
    assert code == 1 and report["failed"] == ["beacon"]
    assert beacon["detail"] == (
        f"beacon slot 41 is signed by {ROGUE.pubkey()}, not by the pinned coordinator {PIN}: "
        "the daemon refuses it (untrusted_coordinator)"
    )
    assert (
        beacon["hint"]
        == "compare coordinator.pubkey with `edgeproof keys show --key <its coordinator key>` on the coordinator"
    )
    # The pinned key's envelope with its body altered after signing.
    forged = beacon_wire(now_ms()).replace(b'"slot":41', b'"slot":42')
    # A validly signed envelope of another kind (a challenge) retained on the beacon topic.
    challenge = Challenge(
        device=ROGUE_DEV, nonce="22" * 32, model_sha256="33" * 32, deadline_ms=now_ms() + 60_000
    )
    other_kind = build_envelope(
        COORDINATOR, "challenge", challenge, seq=1, prev=GENESIS_PREV, ts=now_ms()
    ).wire
    hostile = {
        forged: "bad_signature",
        other_kind: "wrong_kind",
        b"not json at all": "malformed",
        b"{" * 70_000: "oversized",
    }
    for payload, reason in hostile.items():
        retain(mosquitto, payload)
        code, report = run(capsys, tmp_path, mosquitto)
        beacon = check(report, "beacon")
        assert code == 1 and report["failed"] == ["beacon"], report
        assert beacon["detail"].startswith(f"the retained message on {PREFIX}/beacon is refused ({reason}): ")
        assert check(report, "clock") == {
            "name": "clock",
            "status": "skip",
            "detail": "not checked: no verified beacon to compare with",
            "hint": "",
        }


def test_while_the_daemon_runs_the_beacon_and_clock_are_checked_as_it_received_them(
    mosquitto: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon holds the device's broker session, so doctor reads the newest beacon the
    daemon received (and when, by the device clock) over its control socket, refused or not."""
    retain(mosquitto, beacon_wire(now_ms(), signer=ROGUE))
    config = write_config(tmp_path, mosquitto.port, coordinator=PIN)
    config.write_text(config.read_text().replace("[mqtt]\n", f'[mqtt]\ntopic_prefix = "{PREFIX}"\n'))
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon.start()
    control = ControlClient(socket_path(tmp_path / "state"))

    def seen(slot: int) -> bool:
        try:
            beacon = control.call("status").get("beacon_seen")
        except EdgeproofError:  # the control socket is not up yet
            return False
        return beacon is not None and f'"slot":{slot}' in beacon["payload"]

    try:
        wait_until(lambda: seen(41), 60, "the daemon to receive the rogue beacon")
        code, report = doctor(capsys, config, fake_root(tmp_path / "root1"))
        assert code == 1 and report["failed"] == ["beacon"], report
        assert check(report, "beacon")["detail"] == (
            f"beacon slot 41 is signed by {ROGUE.pubkey()}, not by the pinned coordinator {PIN}: "
            "the daemon refuses it (untrusted_coordinator)"
        )
        retain(mosquitto, beacon_wire(now_ms() - 1_000, slot=42))
        wait_until(lambda: seen(42), 60, "the daemon to receive the pinned beacon")
        code, report = doctor(capsys, config, fake_root(tmp_path / "root2"))
        s, d = statuses(report), details(report)
        assert (s["beacon"], d["beacon"]) == (
            "ok",
            f"beacon slot 42 is signed by the pinned coordinator {PIN}",
        )
        assert s["clock"] == "ok" and d["clock"].startswith(
            "within 2 s of the coordinator's clock (beacon slot 42"
        )
        assert code == 0, report
        assert control.call("status")["transport"]["reconnects"] == 0  # doctor never took its session
    finally:
        daemon.terminate()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The real localnet with a reward mint: (rpc url, mint)."""
    work = tmp_path_factory.mktemp("ledger")
    net = Localnet(log_path=work / "localnet.log").start()
    try:
        with ChainClient(net.url) as client:
            made = bootstrap(
                client, Keypair.from_seed(bytes([21]) * 32), state_path=work / "state.json", supply=10**9
            )
        yield net.url, made.mint
    finally:
        net.stop()


def test_the_rpc_endpoint_and_its_mint_are_checked_on_the_real_ledger(
    mosquitto: MosquittoBroker, ledger: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, mint = ledger
    code, report = run(capsys, tmp_path, mosquitto, f'[rewards]\nrpc_url = "{url}"\nmint = "{mint}"')
    rpc = check(report, "rpc")
    assert rpc["status"] == "ok", report
    assert re.fullmatch(rf"{re.escape(url)}: getHealth ok, slot \d+; reward mint {mint} found", rpc["detail"])
    # A mint this ledger does not have: another cluster.
    other = str(Keypair.from_seed(bytes([22]) * 32).pubkey())
    code, report = run(capsys, tmp_path, mosquitto, f'[rewards]\nrpc_url = "{url}"\nmint = "{other}"')
    rpc = check(report, "rpc")
    assert code == 1 and "rpc" in report["failed"]
    assert re.fullmatch(
        rf"{re.escape(url)} is healthy \(slot \d+\) but has no account for the reward mint {other}",
        rpc["detail"],
    )
    # Nothing listens: named, with the fix.
    dead = f"http://127.0.0.1:{free_port()}"
    code, report = run(capsys, tmp_path, mosquitto, f'[rewards]\nrpc_url = "{dead}"\nmint = "{mint}"')
    rpc = check(report, "rpc")
    assert code == 1 and rpc["status"] == "fail"
    assert rpc["detail"].startswith(f"{dead}: "), rpc


def test_the_reward_wallet_is_checked(
    mosquitto: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pda, _ = Pubkey.find_program_address(
        [b"rewards"], Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
    )
    config = write_config(tmp_path, mosquitto.port, coordinator=PIN)
    config.write_text(re.sub(r'owner_wallet = "\w+"', f'owner_wallet = "{pda}"', config.read_text()))
    code, report = doctor(capsys, config, fake_root(tmp_path))
    wallet = check(report, "wallet")
    assert (code, wallet["status"]) == (0, "warn")
    assert wallet["detail"] == (
        f"{pda} is off the ed25519 curve (a program-derived address): no private key exists for it"
    )
    config.write_text(re.sub(r'owner_wallet = "\w+"', 'owner_wallet = ""', config.read_text()))
    code, report = doctor(capsys, config, fake_root(tmp_path / "b"))
    assert check(report, "wallet") == {
        "name": "wallet",
        "status": "warn",
        "detail": "no owner wallet: this device's rewards cannot be claimed",
        "hint": "set device.owner_wallet to the Solana address that should receive rewards",
    }


def test_a_flood_on_the_beacon_topic_does_not_hide_the_retained_beacon(mosquitto: MosquittoBroker) -> None:
    """The probe takes the broker's retained message, not whatever else arrives on the topic."""
    from agent.transport.probe import probe_broker
    from agent.transport.settings import MqttSettings

    wire = beacon_wire(now_ms())
    retain(mosquitto, wire)
    flooder = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    flooder.connect("127.0.0.1", mosquitto.port)
    flooder.loop_start()
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            flooder.publish(f"{PREFIX}/beacon", b"x" * 512, qos=0)
            time.sleep(0.0005)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        settings = MqttSettings(host="127.0.0.1", port=mosquitto.port, topic_prefix=PREFIX)
        for attempt in range(3):
            result = probe_broker(
                settings, f"doctor-flood-{attempt}", timeout_s=5, retained=f"{PREFIX}/beacon"
            )
            assert result.retained == wire
    finally:
        stop.set()
        thread.join(5)
        flooder.disconnect()
        flooder.loop_stop()
