"""Beacons from the real coordinator process: signed, retained, one per slot, recorded first.

A real broker, `python -m agent coordinator run` with 1-second slots, SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from agent.coordinator import challenge_rows
from agent.coordinator.store import Store
from agent.protocol.chain import ChainVerifier, Link
from agent.protocol.envelope import Envelope, verify_envelope
from agent.protocol.messages import Beacon, Verdict
from agent.protocol.topics import Topics
from tests.support.coordinator import (
    COORD,
    CoordinatorProcess,
    Device,
    Publisher,
    device_key,
    enroll_direct,
    wait_until,
    write_config,
)
from tests.support.mosquitto import Collector, MosquittoBroker

pytestmark = pytest.mark.integration
T = Topics()
SIGNER = str(COORD.pubkey())
SLOT_MS = 1000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def beacons_of(collector: Collector) -> list[Envelope]:
    return [verify_envelope(p, expected_signer=SIGNER) for p in collector.payloads()]


def open_store(folder: Path, database_url: str) -> Store:
    return Store.open(database_url=database_url, sqlite_path=folder / "coordinator.sqlite3")


def test_a_signed_retained_beacon_every_slot_recorded_and_heartbeats_quoting_it_are_accepted(
    mosquitto: MosquittoBroker, database_url: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "coord",
        broker_port=mosquitto.port,
        database_url=database_url,
        slot_ms=SLOT_MS,
        beacon_max_age_slots=2,
    )
    store = open_store(tmp_path / "coord", database_url)
    device = Device(device_key(61))
    enroll_direct(store, device.keypair)
    coordinator = CoordinatorProcess(config, tmp_path / "coordinator.log")
    live = Collector(mosquitto, T.beacon(), client_id="beacons-live")
    verdict_sub = Collector(mosquitto, T.device(device.id, "verdict"), client_id="verdicts")
    publisher = Publisher(mosquitto.host, mosquitto.port)
    try:
        coordinator.start()
        wait_until(lambda: len(live.payloads()) >= 4, 60, "four beacons", coordinator.log)
        received = beacons_of(live)
        # A late subscriber gets the newest beacon at once: it is retained.
        late = Collector(mosquitto, T.beacon(), client_id="beacons-late")
        try:
            assert late.wait_for(lambda m: len(m) >= 1, 10)
            retained = verify_envelope(late.payloads()[0], expected_signer=SIGNER)
        finally:
            late.close()
        assert retained.kind == "beacon" and isinstance(retained.body, Beacon)
        assert retained.body.slot >= received[3].body.slot  # type: ignore[union-attr]
        # A heartbeat quoting the newest real beacon is accepted (no unknown_beacon).
        newest = beacons_of(live)[-1].body
        assert isinstance(newest, Beacon)
        hb = device.heartbeat(newest.slot, now_ms(), newest.nonce)
        forged = device.heartbeat(newest.slot, now_ms(), "ab" * 32)
        publisher.publish([(T.hb(device.id), hb.wire), (T.hb(device.id), forged.wire)])
        wait_until(lambda: len(verdict_sub.payloads()) >= 2, 60, "two verdicts", coordinator.log)
        assert coordinator.terminate() == 0
    finally:
        publisher.close()
        live.close()
        verdict_sub.close()
        coordinator.kill()
    slots = [b.body.slot for b in received]  # type: ignore[union-attr]
    # One beacon per slot, consecutive slots, each slot's time and length as configured.
    assert slots == list(range(slots[0], slots[0] + len(slots)))
    for env in received:
        body = env.body
        assert isinstance(body, Beacon) and body.slot_ms == SLOT_MS and body.time_ms == body.slot * SLOT_MS
        assert re.fullmatch(r"[0-9a-f]{64}", body.nonce)
    assert len({b.body.nonce for b in received}) == len(received)  # type: ignore[union-attr]
    # Signed on the coordinator's own chain, recorded (with the very envelope) before publishing.
    stored = {slot: (nonce, raw) for slot, nonce, _t, _s, _i, raw in challenge_rows.beacons(store)}
    for env in received:
        body = env.body
        assert isinstance(body, Beacon)
        assert stored[body.slot] == (body.nonce, env.wire)
    chain = ChainVerifier()
    assert [chain.observe(e).link for e in received] == [Link.START] + [Link.OK] * (len(received) - 1)
    judged = {
        v.body.ref_hash: v.body
        for v in (verify_envelope(p, expected_signer=SIGNER) for p in verdict_sub.payloads())
    }  # type: ignore[union-attr]
    ok, bad = judged[hb.hash], judged[forged.hash]
    assert isinstance(ok, Verdict) and ok.accepted and ok.reason is None
    assert isinstance(bad, Verdict) and not bad.accepted and bad.reason == "unknown_beacon"
    rows = {m.hash: m for m in store.messages(device.id)}
    assert rows[hb.hash].accepted and rows[hb.hash].beacon_slot == newest.slot
    assert rows[forged.hash].reason == "unknown_beacon"
    store.close()


def test_two_processes_issue_exactly_one_beacon_per_slot_between_them(
    mosquitto: MosquittoBroker, database_url: str, tmp_path: Path
) -> None:
    workers = []
    for name in ("a", "b"):
        config = write_config(
            tmp_path / "shared" if database_url == "" else tmp_path / name,
            broker_port=mosquitto.port,
            database_url=database_url,
            client_id=f"coord-{name}",
            slot_ms=SLOT_MS,
        )
        if database_url == "":  # SQLite: both processes on one database file, each its own config
            config = config.rename(config.with_name(f"coordinator-{name}.toml"))
        workers.append(CoordinatorProcess(config, tmp_path / f"coordinator-{name}.log"))
    live = Collector(mosquitto, T.beacon(), client_id="beacons-live")
    try:
        for worker in workers:
            worker.start()
        wait_until(lambda: len(live.payloads()) >= 8, 90, "eight beacons", workers[0].log)
        assert [w.terminate() for w in workers] == [0, 0]
    finally:
        live.close()
        for worker in workers:
            worker.kill()
    received = beacons_of(live)
    slots = [e.body.slot for e in received]  # type: ignore[union-attr]
    assert len(slots) == len(set(slots)), "a slot's beacon was published twice"
    issued = [len(re.findall(r"beacon_issued", w.log())) for w in workers]
    store = open_store(tmp_path / ("shared" if database_url == "" else "a"), database_url)
    try:
        recorded = challenge_rows.beacons(store)
    finally:
        store.close()
    # Every published beacon is a recorded one, and the processes' issues add up to the rows.
    assert sum(issued) == len(recorded) >= len(received)
    assert {e.body.slot for e in received} <= {r[0] for r in recorded}  # type: ignore[union-attr]
    # Both processes ran the slot work (each tried every slot); one chain, never forked.
    assert all("coordinator_started" in w.log() for w in workers)
    chain = ChainVerifier()
    links = [chain.observe(e).link for e in sorted(received, key=lambda e: e.seq)]
    assert all(link in (Link.START, Link.OK) for link in links)
