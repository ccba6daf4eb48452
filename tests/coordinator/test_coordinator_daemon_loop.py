"""The whole loop: the real device daemon against the real coordinator, over a real broker.

`python -m agent run` (the shipped efficientnet model, `[coordinator] pubkey` pinned to the
coordinator's key) and `python -m agent coordinator run` (3-second slots, the device
challenged every slot): the daemon quotes the coordinator's beacons in its heartbeats, answers
its challenges, and the coordinator scores every answer by reference execution as passed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.coordinator import challenge_rows
from agent.coordinator.store import Store
from tests.support import daemon_rig
from tests.support.coordinator import COORD, EFFICIENTNET_SHA, CoordinatorProcess, enroll_direct, write_config
from tests.support.mosquitto import MosquittoBroker

pytestmark = pytest.mark.integration
SLOT_MS = 3000
NO_BEACON = "0" * 64


def test_the_device_daemon_quotes_beacons_and_passes_the_coordinators_challenges(
    mosquitto: MosquittoBroker, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "coord"
    config = write_config(
        folder,
        broker_port=mosquitto.port,
        database_url=database_url,
        slot_ms=SLOT_MS,
        beacon_max_age_slots=2,
        challenge_probability=1.0,
        deadline_ms=20_000,
        active_within_slots=3,
    )
    store = Store.open(database_url=database_url, sqlite_path=folder / "coordinator.sqlite3")
    enroll_direct(store, daemon_rig.DEVICE, profile="generic-x86_64")
    dev = daemon_rig.DEV
    coordinator = CoordinatorProcess(config, tmp_path / "coordinator.log")
    daemon = daemon_rig.DaemonProcess(
        daemon_rig.write_config(tmp_path / "device", mosquitto, coordinator=str(COORD.pubkey())),
        tmp_path / "daemon.log",
    )

    def passed() -> int:
        return sum(1 for r in challenge_rows.challenges(store, dev) if r.outcome == "passed")

    def context() -> str:
        return f"coordinator:\n{coordinator.log()[-4000:]}\ndaemon:\n{daemon.tail(40)}"

    try:
        coordinator.start()
        daemon.start()
        deadline = time.monotonic() + 240
        while passed() < 3:
            assert daemon.alive(), context()
            assert time.monotonic() < deadline, f"fewer than 3 challenges passed\n{context()}"
            time.sleep(0.5)
        assert coordinator.terminate() == 0, context()
        assert daemon.terminate() == 0, context()
    finally:
        daemon.ensure_dead()
        coordinator.kill()

    rows = challenge_rows.challenges(store, dev)
    final = [r for r in rows if r.outcome is not None]
    # Every challenge settled so far passed (the last ones may still be open when we stopped).
    assert {r.outcome for r in final} == {"passed"}, [(r.outcome, r.distance) for r in rows]
    assert all(r.model_sha256 == EFFICIENTNET_SHA and r.distance == 0.0 for r in final)
    issued = {int(r[0]): str(r[1]) for r in store.rows("SELECT slot, nonce FROM beacons")}
    messages = store.messages(dev)
    heartbeats = [m for m in messages if m.kind == "heartbeat"]
    quoting = [m for m in heartbeats if m.beacon_slot in issued]
    # The daemon quotes the coordinator's real beacons, and those heartbeats are accepted.
    assert len(quoting) >= 3 and all(m.accepted for m in quoting), [(m.reason, m.detail) for m in quoting]
    for m in quoting:
        assert json.loads(m.raw)["body"]["beacon_nonce"] == issued[m.beacon_slot]  # type: ignore[index]
    # Only a heartbeat sent before the first beacon reached the daemon may be refused.
    refused = [m for m in heartbeats if not m.accepted]
    assert all(
        m.reason == "unknown_beacon" and json.loads(m.raw)["body"]["beacon_nonce"] == NO_BEACON
        for m in refused
    )
    answers = [m for m in messages if m.kind == "challenge_response"]
    assert len(answers) >= 3 and all(m.accepted and m.reason is None for m in answers)
    rate = challenge_rows.pass_rate(store, dev, 0, 2**62)
    assert rate.passed == len(final) and rate.rate == 1.0
    store.close()
