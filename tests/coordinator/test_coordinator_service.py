"""The coordinator as a real process: devices -> Mosquitto -> `python -m agent coordinator run` -> database.

Every test here runs a real broker, the real coordinator process and a real database
(SQLite file or the PostgreSQL server of the session), publishes signed envelopes like a
device would and checks the stored rows and the verdicts a subscriber receives.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from agent.challenge_run import expected_sketch
from agent.cli import build_parser
from agent.coordinator import challenge_rows
from agent.coordinator.audit import epoch_report
from agent.coordinator.store import Store
from agent.inference.backends.base import BackendSettings
from agent.inference.pipeline import Pipeline
from agent.protocol.chain import ChainVerifier, Link
from agent.protocol.envelope import Envelope, verify_envelope
from agent.protocol.messages import Challenge, Verdict
from agent.protocol.topics import Topics
from tests.support.coordinator import (
    COORD,
    EFFICIENTNET_SHA,
    ROOT,
    SLOT_MS,
    CoordinatorProcess,
    Device,
    Publisher,
    beacon_nonce,
    device_key,
    enroll_direct,
    run_cli,
    wait_until,
    write_config,
)
from tests.support.mosquitto import Collector, MosquittoBroker
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration
T = Topics()
SIGNER = str(COORD.pubkey())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def issue_beacons(store: Store, back: int = 0) -> int:
    """Issue the current slot's beacon (and ``back`` older ones); returns the current slot."""
    at = now_ms()
    slot = at // SLOT_MS
    with store.transaction():
        for s in range(slot - back, slot + 1):
            store.add_beacon(s, beacon_nonce(s), s * SLOT_MS, SLOT_MS, min(at, s * SLOT_MS + SLOT_MS) - 1)
    return slot


def count(store: Store, where: str = "accepted = 1") -> int:
    row = store.one(f"SELECT COUNT(*) FROM messages WHERE {where}")
    assert row is not None
    return int(row[0])


def verdicts(collector: Collector) -> list[Envelope]:
    return [verify_envelope(p, expected_signer=SIGNER) for p in collector.payloads()]


def open_store(folder: Path, database_url: str) -> Store:
    return Store.open(database_url=database_url, sqlite_path=folder / "coordinator.sqlite3")


def test_devices_to_broker_to_coordinator_to_database_and_verdicts(
    mosquitto: MosquittoBroker, database_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "coord", broker_port=mosquitto.port, database_url=database_url)
    store = open_store(tmp_path / "coord", database_url)
    devices = [Device(device_key(n)) for n in (11, 12)]
    for device in devices:
        enroll_direct(store, device.keypair)
    slot = issue_beacons(store)
    collector = Collector(mosquitto, T.prefix + "/dev/+/verdict", client_id="verdicts")
    coordinator = CoordinatorProcess(config, tmp_path / "coordinator.log")
    coordinator.start()
    publisher = Publisher(mosquitto.host, mosquitto.port)
    try:
        items: list[tuple[str, bytes]] = []
        start = now_ms() - 60_000
        for device in devices:
            items += [(T.hb(device.id), device.heartbeat(slot, now_ms()).wire) for _ in range(10)]
            items.append((T.proof(device.id), device.proof(start, start + 30_000, 900, ts=now_ms()).wire))
            items.append(
                (T.proof(device.id), device.proof(start + 30_000, start + 60_000, 900, ts=now_ms()).wire)
            )
        publisher.publish(items)
        wait_until(lambda: len(collector.payloads()) >= len(items), 60, "every verdict", coordinator.log)
        assert coordinator.terminate() == 0
    finally:
        publisher.close()
        collector.close()
        coordinator.kill()
    assert count(store) == len(items) == 24
    received = verdicts(collector)
    # One chain, no seq twice: the verdicts and any beacon a slot that began meanwhile took on it.
    beacon_seqs = [int(r[0]) for r in store.rows("SELECT seq FROM beacons WHERE seq IS NOT NULL")]
    assert sorted([v.seq for v in received] + beacon_seqs) == list(range(1, 25 + len(beacon_seqs)))
    bodies = [v.body for v in received]
    assert all(isinstance(b, Verdict) and b.accepted and b.reason is None for b in bodies)
    by_device = {d.id: sum(1 for b in bodies if isinstance(b, Verdict) and b.device == d.id) for d in devices}
    assert by_device == {d.id: 12 for d in devices}
    assert store.unpublished_verdicts(SIGNER) == []  # every verdict acknowledged by the broker and marked
    [(_, started, last, stopped)] = store.runs()
    assert stopped is not None and started <= last == stopped
    log = coordinator.log()
    assert "coordinator_started" in log and "coordinator_stopped" in log
    assert re.search(r"batch_committed messages=\d+ accepted=\d+ rejected=0", log)


def test_every_attack_is_rejected_with_its_own_reason_and_earns_nothing(
    mosquitto: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One case per attack, the three challenge cases included, against the real coordinator.

    2-second slots: the coordinator issues its own signed beacons and challenges the devices that
    reported a model in the last slot (only the three challenge-case devices do).  Every case is
    refused with its own reason, the audit report shows no credit from any of them (no up slot,
    no proof, no passed challenge), and ``audit device`` lists each with its reason.
    """
    slot_ms, deadline_ms = 2000, 4000
    config = write_config(
        tmp_path / "coord",
        broker_port=mosquitto.port,
        beacon_max_age_slots=2,
        late_window_seqs=2,
        slot_ms=slot_ms,
        challenge_probability=1.0,
        deadline_ms=deadline_ms,
        active_within_slots=1,
    )
    store = open_store(tmp_path / "coord", "")
    honest = Device(device_key(21))
    stranger = Device(device_key(22))  # never enrolled
    challenged = {
        name: Device(device_key(n)) for name, n in (("wrong_hash", 23), ("other_model", 24), ("late", 25))
    }
    for device in (honest, *challenged.values()):
        enroll_direct(store, device.keypair)
    first = now_ms() // slot_ms
    with store.transaction():  # older beacons, so that a stale one can be quoted
        for s in range(first - 6, first):
            store.add_beacon(s, beacon_nonce(s), s * slot_ms, slot_ms, s * slot_ms)
    blaze = Pipeline.open(str(ROOT / "models" / "blazeface-short-range.toml"), BackendSettings(threads=1))
    collector = Collector(mosquitto, T.prefix + "/dev/+/verdict", client_id="verdicts")
    challenges = Collector(mosquitto, T.prefix + "/dev/+/challenge", client_id="challenges")
    coordinator = CoordinatorProcess(config, tmp_path / "coordinator.log")
    coordinator.start()
    publisher = Publisher(mosquitto.host, mosquitto.port)

    def newest() -> tuple[int, str]:
        row = store.one("SELECT slot, nonce FROM beacons ORDER BY slot DESC LIMIT 1")
        assert row is not None
        return int(row[0]), str(row[1])

    def send(topic: str, payload: bytes) -> tuple[bool, str | None]:
        before = count(store, "1 = 1")
        publisher.publish([(topic, payload)])
        wait_until(lambda: count(store, "1 = 1") > before, 30, f"the row of {topic}", coordinator.log)
        row = store.one("SELECT accepted, reason FROM messages ORDER BY id DESC LIMIT 1")
        assert row is not None
        return bool(row[0]), row[1]

    def answer(name: str, nonce: str, sketch: list[int], sha: str) -> tuple[str, bytes]:
        device = challenged[name]
        body = {"nonce": nonce, "model_sha256": sha, "sketch": sketch, "latency_us": 1000}
        return T.device(device.id, "response"), device.chain.next("challenge_response", body, now_ms()).wire

    try:
        # The challenge-case devices report their model: each is challenged at the next slot.
        status = {
            "state": "online",
            "model_id": "efficientnet-lite0-int8",
            "model_sha256": EFFICIENTNET_SHA,
            "agent_version": "0.1.0",
            "profile": "rpi4",
        }
        publisher.publish(
            [(T.status(d.id), d.chain.sideband("status", status, now_ms()).wire) for d in challenged.values()]
        )
        # The honest chain so far: seq 1, then seq 6 (a gap of 2-5, accepted and named), quoting
        # the coordinator's own newest beacon.
        wait_until(
            lambda: store.one("SELECT 1 FROM beacons WHERE raw IS NOT NULL") is not None,
            30,
            "the coordinator's first beacon",
            coordinator.log,
        )
        slot, nonce = newest()
        chain = [honest.heartbeat(slot, now_ms(), nonce) for _ in range(6)]
        assert send(T.hb(honest.id), chain[0].wire) == (True, None)
        assert send(T.hb(honest.id), chain[5].wire) == (True, "chain_gap")
        forged = {**chain[1].raw, "body": {**chain[1].raw["body"], "uptime_s": 123_456}}
        twin = Device(honest.keypair)  # a second signer on the same key: its seq 1 forks
        found = store.one(
            "SELECT slot, nonce FROM beacons WHERE slot <= ? ORDER BY slot DESC LIMIT 1", (newest()[0] - 3,)
        )
        assert found is not None
        stale, stale_nonce = int(found[0]), str(found[1])
        cases: list[tuple[str, str, bytes, str]] = [
            (
                "forged signature",
                T.hb(honest.id),
                Envelope(**{**chain[1].__dict__, "raw": forged}).wire,
                "bad_signature",
            ),
            ("replayed envelope", T.hb(honest.id), chain[0].wire, "duplicate"),
            ("reordered seq", T.hb(honest.id), chain[1].wire, "replay"),  # 4 below the head, window 2
            ("forked chain", T.hb(honest.id), twin.heartbeat(slot, now_ms(), nonce).wire, "fork"),
            (
                "future timestamp",
                T.hb(honest.id),
                honest.heartbeat(slot, now_ms() + 120_000, nonce).wire,
                "clock_skew",
            ),
            (
                "stale beacon",
                T.hb(honest.id),
                honest.heartbeat(stale, now_ms(), stale_nonce).wire,
                "stale_beacon",
            ),
            (
                "unknown device",
                T.hb(stranger.id),
                stranger.heartbeat(slot, now_ms(), nonce).wire,
                "unknown_device",
            ),
            (
                "throughput above the profile's bound",
                T.proof(honest.id),
                honest.proof(now_ms() - 10_000, now_ms(), 10 * 60 + 1, ts=now_ms()).wire,
                "implausible_throughput",
            ),
        ]
        outcome = {name: send(topic, payload) for name, topic, payload, _ in cases}
        # The challenge cases, answering the challenge each device received.
        assert challenges.wait_for(lambda m: len(m) >= 3, 30), coordinator.log()
        issued: dict[str, Challenge] = {}
        for payload in challenges.payloads():
            body = verify_envelope(payload, expected_signer=SIGNER).body
            assert isinstance(body, Challenge)
            issued.setdefault(body.device, body)  # the first one (a loaded tick may add a second)
        assert set(issued) == {d.id for d in challenged.values()}
        blaze_sha = blaze.loaded.card.sha256
        by_name = {name: issued[d.id] for name, d in challenged.items()}
        some_sketch = [3] * 32
        wrong = answer("wrong_hash", by_name["wrong_hash"].nonce, some_sketch, blaze_sha)
        other = by_name["other_model"]
        different = answer(
            "other_model", other.nonce, expected_sketch(blaze, other.nonce)[0], other.model_sha256
        )
        outcome["wrong model hash in a challenge answer"] = send(*wrong)
        outcome["a sketch from a different model"] = send(*different)  # accepted for scoring ...
        late = by_name["late"]
        time.sleep(max(0.0, (late.deadline_ms - now_ms()) / 1000 + 1.0))
        outcome["a late answer"] = send(*answer("late", late.nonce, some_sketch, late.model_sha256))
        cases += [
            ("wrong model hash in a challenge answer", *wrong, "wrong_model"),
            ("a sketch from a different model", *different, "challenge_failed"),
            ("a late answer", "", b"", "challenge_late"),
        ]
        # ... and scored by reference execution: challenge_failed.
        wait_until(
            lambda: (
                "challenge_failed"
                in {r.outcome for r in challenge_rows.challenges(store, challenged["other_model"].id)}
            ),
            60,
            "the reference run to score the other model's sketch",
            lambda: f"{challenge_rows.challenges(store)}\n{coordinator.log()}",
        )
        expect = {name: (False, reason) for name, _, _, reason in cases}
        expect["a sketch from a different model"] = (True, None)  # the message is fine; its score is not
        assert outcome == expect
        answered = {c[3] for c in cases} - {"duplicate", "unknown_device"}
        wait_until(
            lambda: {getattr(v.body, "reason", None) for v in verdicts(collector)} >= answered,
            30,
            "a verdict for every refusal of a registered device",
            coordinator.log,
        )
        assert coordinator.terminate() == 0
        finished = now_ms()
    finally:
        publisher.close()
        collector.close()
        challenges.close()
        coordinator.kill()
    refused = {
        v.body.reason for v in verdicts(collector) if isinstance(v.body, Verdict) and not v.body.accepted
    }
    assert refused == answered | {"challenge_missed"}  # the late device's challenge was missed first
    recorded = {r[0] for r in store.rows("SELECT reason FROM messages WHERE accepted = 0")}
    assert recorded == {reason for *_, reason in cases} - {"challenge_failed"}

    # Earned nothing: the audit over the whole run credits only the two honest heartbeats.
    totals: dict[str, dict[str, int]] = {}
    up: dict[str, list[int]] = {}
    epoch_ms = 3_600_000
    for epoch in range(first * slot_ms // epoch_ms, finished // epoch_ms + 1):
        report = epoch_report(store, epoch, slot_ms=slot_ms, epoch_ms=epoch_ms)
        for d in report.devices:
            t = totals.setdefault(d.dev, {"heartbeats": 0, "proofs": 0, "inferences": 0, "passed": 0})
            t["heartbeats"] += d.heartbeats_accepted
            t["proofs"] += d.proofs_accepted
            t["inferences"] += d.inferences_accepted
            t["passed"] += d.challenges.get("passed", 0)
            base = report.start_ms // slot_ms
            up.setdefault(d.dev, []).extend(base + i for i, ch in enumerate(d.slots) if ch == "U")
    assert stranger.id not in totals  # never registered: no report row, nothing to credit
    assert totals[honest.id] == {"heartbeats": 2, "proofs": 0, "inferences": 0, "passed": 0}
    honest_slots = {
        int(r[0]) // slot_ms
        for r in store.rows("SELECT ingest_ms FROM messages WHERE dev = ? AND accepted = 1", (honest.id,))
    }
    assert set(up[honest.id]) <= honest_slots  # up slots come only from its two accepted heartbeats
    for device in challenged.values():
        assert totals[device.id] == {"heartbeats": 0, "proofs": 0, "inferences": 0, "passed": 0}
        assert up[device.id] == []

    # Every case appears in `audit device` with its reason.
    def audit_device(dev: str) -> dict[str, Any]:
        capsys.readouterr()
        args = build_parser().parse_args(["audit", "device", dev, "--config", str(config), "--json"])
        assert args.func(args) == 0
        return dict(json.loads(capsys.readouterr().out))

    listed = {d.id: audit_device(d.id) for d in (honest, stranger, *challenged.values())}
    honest_reasons = sorted(m["reason"] for m in listed[honest.id]["messages"] if not m["accepted"])
    assert honest_reasons == sorted(r for *_, r in cases[:8] if r != "unknown_device")
    assert [(m["accepted"], m["reason"]) for m in listed[stranger.id]["messages"]] == [
        (False, "unknown_device")
    ]
    assert listed[stranger.id]["enrolled"] is False
    for name, reason in (
        ("wrong_hash", "wrong_model"),
        ("other_model", "challenge_failed"),
        ("late", "challenge_late"),
    ):
        mine = listed[challenged[name].id]
        [c] = [c for c in mine["challenges"] if c["response_id"] is not None]
        assert c["outcome"] == reason
        # A challenge issued late in a slot can be followed by a second one (the device still
        # counts as active); unanswered, it is missed or still open: no credit either way.
        assert all(o["outcome"] in ("challenge_missed", None) for o in mine["challenges"] if o is not c)
        answers = [m for m in mine["messages"] if m["kind"] == "challenge_response"]
        assert len(answers) == 1 and answers[0]["id"] == c["response_id"]
        if name == "other_model":
            assert c["distance"] > c["tolerance"]  # scored, and far off
        else:
            assert (answers[0]["accepted"], answers[0]["reason"]) == (False, reason)
    table = run_cli("audit", "device", challenged["late"].id, "--config", str(config))
    assert table.returncode == 0, table.stderr
    assert "challenge_late" in table.stdout and "challenge(s) issued to" in table.stdout, table.stdout


def test_sigkill_mid_ingest_loses_nothing_and_counts_nothing_twice(
    mosquitto: MosquittoBroker, database_url: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "coord", broker_port=mosquitto.port, database_url=database_url, batch_max=10
    )
    store = open_store(tmp_path / "coord", database_url)
    devices = [Device(device_key(n)) for n in (31, 32, 33)]
    for device in devices:
        enroll_direct(store, device.keypair)
    slot = issue_beacons(store)
    coordinator = CoordinatorProcess(config, tmp_path / "coordinator.log")
    coordinator.start()  # creates the persistent session and its shared subscription
    assert coordinator.terminate() == 0
    per_device = 200
    items = [(T.hb(d.id), d.heartbeat(slot, now_ms()).wire) for _ in range(per_device) for d in devices]
    publisher = Publisher(mosquitto.host, mosquitto.port)
    publisher.publish(items)  # queued by the broker for the coordinator's session
    publisher.close()
    total = len(items)
    try:
        coordinator.start()
        wait_until(lambda: count(store) >= 60, 60, "the first committed batches", coordinator.log)
        assert coordinator.proc is not None
        coordinator.proc.kill()  # SIGKILL while it ingests
        coordinator.proc.wait(10)
        at_kill = count(store)
        assert 0 < at_kill < total, f"the kill was not mid-ingest ({at_kill} of {total} stored)"
        coordinator.start()
        wait_until(lambda: count(store) >= total, 90, "every message after the restart", coordinator.log)
        time.sleep(0.5)  # anything the broker still redelivers is absorbed, never counted
        assert coordinator.terminate() == 0
    finally:
        coordinator.kill()
    assert count(store) == total
    for device in devices:
        seqs = [
            r[0]
            for r in store.rows(
                "SELECT chain_seq FROM messages WHERE dev = ? AND accepted = 1 ORDER BY chain_seq",
                (device.id,),
            )
        ]
        assert seqs == list(range(1, per_device + 1))
    redelivered = count(store, "reason = 'duplicate'")
    # The coordinator's own chain did not fork across the crash: one verdict per accepted message,
    # and with the beacons (and challenges) issued meanwhile on the same chain, every link in order.
    verdict_raws = store.rows("SELECT seq, raw FROM verdicts")
    assert len(verdict_raws) == total
    shared = store.rows("SELECT seq, raw FROM beacons WHERE seq IS NOT NULL") + store.rows(
        "SELECT seq, raw FROM challenges"
    )
    chain = ChainVerifier()
    links = [chain.observe(verify_envelope(bytes(raw))).link for _, raw in sorted(verdict_raws + shared)]
    assert links[0] is Link.START and all(link is Link.OK for link in links[1:])
    print(f"killed at {at_kill}/{total} stored; {redelivered} redeliveries absorbed as duplicate")


def test_database_unavailable_pauses_ingest_without_acking_and_loses_nothing(
    mosquitto: MosquittoBroker, pg_server: PostgresServer, pg_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "coord", broker_port=mosquitto.port, database_url=pg_url)
    store = open_store(tmp_path / "coord", pg_url)
    device = Device(device_key(41))
    enroll_direct(store, device.keypair)
    slot = issue_beacons(store)
    store.close()
    collector = Collector(mosquitto, T.prefix + "/dev/+/verdict", client_id="verdicts")
    coordinator = CoordinatorProcess(config, tmp_path / "coordinator.log")
    coordinator.start()
    publisher = Publisher(mosquitto.host, mosquitto.port)
    acks = re.compile(r"Received PUBACK from coord-test")
    try:
        publisher.publish([(T.hb(device.id), device.heartbeat(slot, now_ms()).wire) for _ in range(10)])
        wait_until(lambda: len(collector.payloads()) >= 10, 30, "the first verdicts", coordinator.log)
        pg_server.stop()
        outage = time.monotonic()
        acked_before = len(acks.findall(mosquitto.log_text()))
        publisher.publish([(T.hb(device.id), device.heartbeat(slot, now_ms()).wire) for _ in range(20)])
        wait_until(
            lambda: "storage_unavailable" in coordinator.log(),
            30,
            "the outage to be noticed",
            coordinator.log,
        )
        time.sleep(max(0.0, 20 - (time.monotonic() - outage)))
        # 20 s without the database: nothing acknowledged to the broker, no verdict published
        assert len(acks.findall(mosquitto.log_text())) == acked_before
        assert len(collector.payloads()) == 10
        assert coordinator.running()
        pg_server.start()
        wait_until(
            lambda: len(collector.payloads()) >= 30, 60, "the verdicts after the outage", coordinator.log
        )
        assert coordinator.terminate() == 0
    finally:
        if pg_server.pid is None:
            pg_server.start()
        publisher.close()
        collector.close()
        coordinator.kill()
    assert len(acks.findall(mosquitto.log_text())) >= acked_before + 20  # acknowledged after the commit
    store = open_store(tmp_path / "coord", pg_url)
    assert count(store) == 30 and count(store, "accepted = 0") == 0
    assert [r[0] for r in store.rows("SELECT chain_seq FROM messages ORDER BY chain_seq")] == list(
        range(1, 31)
    )


def test_two_processes_on_one_shared_subscription_split_the_load_exactly_once(
    mosquitto: MosquittoBroker, pg_url: str, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "a", pg_url)
    devices = [Device(device_key(n)) for n in (51, 52, 53)]
    for device in devices:
        enroll_direct(store, device.keypair)
    slot = issue_beacons(store)
    workers = []
    for name in ("a", "b"):
        config = write_config(
            tmp_path / name, broker_port=mosquitto.port, database_url=pg_url, client_id=f"coord-{name}"
        )
        workers.append(CoordinatorProcess(config, tmp_path / f"coordinator-{name}.log"))
    collector = Collector(mosquitto, T.prefix + "/dev/+/verdict", client_id="verdicts")
    publisher = Publisher(mosquitto.host, mosquitto.port)
    per_device = 60
    try:
        for worker in workers:
            worker.start()
        items = [(T.hb(d.id), d.heartbeat(slot, now_ms()).wire) for _ in range(per_device) for d in devices]
        publisher.publish(items)
        wait_until(lambda: count(store, "1 = 1") >= len(items), 90, "every row", workers[0].log)
        wait_until(lambda: len(collector.payloads()) >= len(items), 30, "every verdict", workers[1].log)
        assert [w.terminate() for w in workers] == [0, 0]
    finally:
        publisher.close()
        collector.close()
        for worker in workers:
            worker.kill()
    # Both processes took part, and every message was accepted once, in chain order per device.
    committed = [sum(int(n) for n in re.findall(r"batch_committed messages=(\d+)", w.log())) for w in workers]
    assert all(n > 0 for n in committed) and sum(committed) == len(items), committed
    assert count(store) == len(items) and count(store, "accepted = 0") == 0
    for device in devices:
        seqs = [
            r[0]
            for r in store.rows(
                "SELECT chain_seq FROM messages WHERE dev = ? ORDER BY chain_seq", (device.id,)
            )
        ]
        assert seqs == list(range(1, per_device + 1))
    # One coordinator chain, signed by two processes, never forked: the verdicts and the
    # beacons the processes issued meanwhile (they share the chain) fill seq 1.. without a hole.
    received = sorted(verdicts(collector), key=lambda v: v.seq)
    assert len({v.seq for v in received}) == len(items)
    beacon_seqs = [int(r[0]) for r in store.rows("SELECT seq FROM beacons WHERE seq IS NOT NULL")]
    assert sorted([v.seq for v in received] + beacon_seqs) == list(
        range(1, len(items) + len(beacon_seqs) + 1)
    )
    chain = ChainVerifier()
    links = [chain.observe(v).link for v in received]
    assert all(link in (Link.START, Link.OK, Link.GAP) for link in links)
    assert links.count(Link.GAP) <= len(beacon_seqs)


def test_verdicts_committed_but_never_acknowledged_are_republished_at_start(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    from agent.coordinator.batch import Inbound, commit_batch
    from agent.coordinator.ingest import Policy
    from agent.profiles import load_profiles

    config = write_config(tmp_path / "coord", broker_port=mosquitto.port)
    store = open_store(tmp_path / "coord", "")
    device = Device(device_key(61))
    enroll_direct(store, device.keypair)
    slot = issue_beacons(store)
    # What a run killed after its commit and before the broker acknowledged its verdicts leaves.
    policy = Policy(
        clock_skew_ms=30_000, beacon_max_age_slots=2, late_window_seqs=8, profiles=load_profiles()
    )
    items = [Inbound(T.hb(device.id), device.heartbeat(slot, now_ms()).wire, now_ms()) for _ in range(3)]
    commit_batch(store, items, policy=policy, keypair=COORD, topics=T, now_ms=now_ms())
    assert [seq for seq, _, _ in store.unpublished_verdicts(SIGNER)] == [1, 2, 3]
    collector = Collector(mosquitto, T.prefix + "/dev/+/verdict", client_id="verdicts")
    coordinator = CoordinatorProcess(config, tmp_path / "coordinator.log")
    try:
        coordinator.start()
        wait_until(lambda: len(collector.payloads()) >= 3, 30, "the republished verdicts", coordinator.log)
        assert coordinator.terminate() == 0
    finally:
        collector.close()
        coordinator.kill()
    assert sorted(v.seq for v in verdicts(collector)) == [1, 2, 3]
    assert store.unpublished_verdicts(SIGNER) == []
    assert "verdicts_republished count=3" in coordinator.log()
