"""Settlement over a real store (both backends): settle twice = same, replay from capture = same root.

Two scripted epochs of 5 slots through the coordinator's own code paths (``slots.tick`` issues the
signed beacons and a challenge, ``commit_batch`` ingests the signed device messages, ``slots.score``
scores the answer).  Epoch E: ``a`` up 5/5 with 600 inferences and a passed challenge, ``b`` up 4/5
with 300 inferences and no challenge, ``c`` up 1/5 (below the minimum).  Epoch E+1: only ``a``.
The CLI (settle, proof) runs in process on the same database; every proof it prints is checked
with the independent implementation in tests/support/reward_merkle_check.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agent.cli import main
from agent.coordinator import challenge_rows, slots
from agent.coordinator.audit_capture import export_capture, read_capture
from agent.coordinator.batch import Inbound, commit_batch
from agent.coordinator.config import ChallengeSection
from agent.coordinator.store import Store
from agent.errors import SettlementError
from agent.protocol.topics import Topics
from agent.rewards import settle as settle_module
from agent.rewards.ledger import load_settlement
from agent.rewards.policy import RewardPolicy
from agent.rewards.settle import replay_settlements, settle_epoch
from tests.support.coordinator import (
    COORD,
    EFFICIENTNET_SHA,
    NOW,
    SLOT_MS,
    Device,
    device_key,
    enroll_direct,
    ingest_policy,
)
from tests.support.reward_merkle_check import check_proof, root_of

T = Topics()
INGEST = ingest_policy(late_window_seqs=64)
EPOCH_MS = 5 * SLOT_MS
EPOCH = NOW // EPOCH_MS + 1
FIRST = EPOCH * EPOCH_MS // SLOT_MS
SIGNER = str(COORD.pubkey())
NO_CHALLENGE = ChallengeSection(probability_per_slot=0.0, deadline_ms=20_000, active_within_slots=1)
CHALLENGE = ChallengeSection(probability_per_slot=1.0, deadline_ms=20_000, active_within_slots=1)
POLICY = RewardPolicy(
    pool_per_epoch=1_000_000,
    uptime_weight_bp=5_000,
    work_weight_bp=3_000,
    challenge_weight_bp=2_000,
    min_uptime_bp=5_000,
    device_cap=700_000,
    unscored_pass_bp=0,
)
AFTER = (EPOCH + 2) * EPOCH_MS + 10


def at(slot_index: int, offset: int) -> int:
    return (FIRST + slot_index) * SLOT_MS + offset


def scripted(store: Store) -> tuple[Device, Device, Device]:
    a, b, c = (Device(device_key(n)) for n in (11, 12, 13))
    for d in (a, b, c):
        enroll_direct(store, d.keypair)
    with store.transaction():
        store.start_run("run-1", SIGNER, "h", 1, at(0, -500))
        store.stop_run("run-1", at(10, 1))
    rng = random.Random(3)

    def ingest(topic: str, wire: bytes, when: int) -> None:
        commit_batch(store, [Inbound(topic, wire, when)], policy=INGEST, keypair=COORD, topics=T, now_ms=when)

    def heartbeat(device: Device, i: int) -> None:
        nonce = store.beacon_nonce(FIRST + i)
        assert nonce is not None
        ingest(T.hb(device.id), device.heartbeat(FIRST + i, at(i, 2000), nonce).wire, at(i, 2000))

    status = {
        "state": "online",
        "model_id": "efficientnet-lite0-int8",
        "model_sha256": EFFICIENTNET_SHA,
        "agent_version": "0.1.0",
        "profile": "rpi4",
    }
    for i in range(10):
        section = CHALLENGE if i == 1 else NO_CHALLENGE
        slots.tick(store, COORD, T, now_ms=at(i, 5), slot_ms=SLOT_MS, challenges=section, rng=rng)
        heartbeat(a, i)
        if i < 4:
            heartbeat(b, i)
        if i == 0:
            heartbeat(c, i)
            ingest(T.status(a.id), a.chain.sideband("status", status, at(0, 9000)).wire, at(0, 9000))
            ingest(T.proof(a.id), a.proof(at(0, 10_000), at(0, 40_000), 600).wire, at(0, 40_000))
            ingest(T.proof(b.id), b.proof(at(0, 10_000), at(0, 40_000), 300).wire, at(0, 40_000))
        if i == 1:  # a (the only active device) was challenged by this slot's tick; it answers well
            row = [r for r in challenge_rows.challenges(store, a.id) if r.outcome is None][-1]
            body = {
                "nonce": row.nonce,
                "model_sha256": EFFICIENTNET_SHA,
                "sketch": [5] * 32,
                "latency_us": 900,
            }
            ingest(
                T.device(a.id, "response"),
                a.chain.next("challenge_response", body, at(1, 4000)).wire,
                at(1, 4000),
            )
            slots.score(
                store,
                COORD,
                T,
                challenge_id=row.id,
                reference=[5] * 32,
                error=None,
                tolerance_of=lambda sha: 0.05,
                now_ms=at(1, 6000),
            )
    return a, b, c


def write_config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(
        f'[storage]\ndatabase_url = "{database_url}"\nsqlite_path = "coordinator.sqlite3"\n'
        f"[beacons]\nslot_ms = {SLOT_MS}\n[epochs]\nepoch_ms = {EPOCH_MS}\n"
        "[rewards]\npool_per_epoch = 1000000\nuptime_weight_bp = 5000\nwork_weight_bp = 3000\n"
        "challenge_weight_bp = 2000\nmin_uptime_bp = 5000\ndevice_cap = 700000\n",
        encoding="utf-8",
    )
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.integration
def test_settle_is_idempotent_replayable_and_every_proof_checks(
    store: Store,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, c = scripted(store)
    with pytest.raises(SettlementError, match=f"epoch {EPOCH} ends at") as early:
        settle_epoch(store, EPOCH, POLICY, slot_ms=SLOT_MS, epoch_ms=EPOCH_MS, now_ms=at(4, 0))
    assert early.value.reason == "epoch_not_final"

    # The CLI on the same database (the config names it); the store fixture migrated it already.
    config = write_config(tmp_path, database_url)
    code, out, _ = cli(
        capsys, "rewards", "settle", "--no-publish", "--epoch", str(EPOCH), "--config", str(config), "--json"
    )
    assert code == 0
    first = json.loads(out)
    assert first["created"] is True
    by_dev = {d["dev"]: d for d in first["devices"]}
    # a: uptime 5/9 of 500000, all 300000 of work at 2:1, the whole 200000 of challenges.
    # exact a = 277777.7 + 200000 + 200000 = 677777.7 -> 677777; b = 222222.2 + 100000 -> 322222.
    assert (by_dev[a.id]["amount"], by_dev[b.id]["amount"], by_dev[c.id]["amount"]) == (677_777, 322_222, 0)
    assert (by_dev[c.id]["reason"], by_dev[a.id]["pass_bp"], by_dev[b.id]["pass_bp"]) == (
        "below_min_uptime",
        10_000,
        0,
    )
    assert first["total"] == 999_999 and first["unallocated"] == 1
    assert [d["cumulative"] for d in first["devices"]] == [d["amount"] for d in first["devices"]]
    assert root_of([{**d, "epoch": EPOCH} for d in first["devices"]]).hex() == first["root"]

    # Settling again changes nothing: the stored root and time are reported, exit 0.
    code, out, _ = cli(
        capsys, "rewards", "settle", "--no-publish", "--epoch", str(EPOCH), "--config", str(config), "--json"
    )
    again = json.loads(out)
    assert code == 0 and again["created"] is False
    assert (again["root"], again["settled_ms"]) == (first["root"], first["settled_ms"])
    assert store.one("SELECT COUNT(*) FROM allocations")[0] == 3  # type: ignore[index]
    code, out, _ = cli(
        capsys, "rewards", "settle", "--no-publish", "--epoch", str(EPOCH), "--config", str(config)
    )
    assert code == 0 and f"epoch {EPOCH}: already settled at {first['settled_ms']} ms" in out
    assert "below_min_uptime" in out and "677777" in out
    code, out, _ = cli(capsys, "rewards", "proof", a.id, "--epoch", str(EPOCH), "--config", str(config))
    assert code == 0 and first["root"] in out and "step 0" in out

    # Another policy for the settled epoch: refused by name, the stored record stands.
    other = POLICY.model_copy(update={"device_cap": 500_000})
    other_config = tmp_path / "other.toml"
    other_config.write_text(
        config.read_text(encoding="utf-8").replace("device_cap = 700000", "device_cap = 500000"),
        encoding="utf-8",
    )
    code, out, err = cli(
        capsys, "rewards", "settle", "--no-publish", "--epoch", str(EPOCH), "--config", str(other_config)
    )
    assert (code, out) == (16, "")
    assert (
        f"edgeproof: error: epoch {EPOCH} is settled with root {first['root']}; recomputing it gives" in err
    )
    with pytest.raises(SettlementError, match=f"epoch {EPOCH} is settled with root {first['root']}") as clash:
        settle_epoch(store, EPOCH, other, slot_ms=SLOT_MS, epoch_ms=EPOCH_MS, now_ms=AFTER)
    assert clash.value.reason == "settlement_conflict"
    stored = load_settlement(store, EPOCH)
    assert stored is not None and stored.root == first["root"]

    # Every device's proof, printed by the CLI, checks against the root with the independent code;
    # a changed amount does not.
    for device in (a, b, c):
        code, out, _ = cli(
            capsys, "rewards", "proof", device.id, "--epoch", str(EPOCH), "--config", str(config), "--json"
        )
        assert code == 0
        printed = json.loads(out)
        assert printed["root"] == first["root"] and printed["leaf"]["amount"] == by_dev[device.id]["amount"]
        assert check_proof(first["root"], printed["leaf"], printed["proof"])
        forged = {**printed["leaf"], "amount": printed["leaf"]["amount"] + 1}
        assert not check_proof(first["root"], forged, printed["proof"])
    code, _, err = cli(capsys, "rewards", "proof", SIGNER, "--epoch", str(EPOCH), "--config", str(config))
    assert code == 16 and f"device {SIGNER} has no leaf in the settlement of epoch {EPOCH}" in err

    # A race: another run commits E between this run's read and its insert (injected by hiding
    # the stored record from the first read and skipping the order check). The real primary key
    # refuses the second insert; the run re-reads and reports the stored record.
    hidden = iter([None])
    monkeypatch.setattr(
        settle_module, "load_settlement", lambda st, e: next(hidden, None) or load_settlement(st, e)
    )
    monkeypatch.setattr(settle_module, "check_order", lambda st, e: None)
    raced = settle_epoch(store, EPOCH, POLICY, slot_ms=SLOT_MS, epoch_ms=EPOCH_MS, now_ms=AFTER)
    assert (raced.created, raced.stored.root, raced.stored.settled_ms) == (
        False,
        first["root"],
        first["settled_ms"],
    )
    monkeypatch.undo()
    assert store.one("SELECT COUNT(*) FROM allocations")[0] == 3  # type: ignore[index]

    # Epoch E+1 adds to the cumulative totals; E+3 (a gap) is refused by name.
    nxt = settle_epoch(store, EPOCH + 1, POLICY, slot_ms=SLOT_MS, epoch_ms=EPOCH_MS, now_ms=AFTER)
    leaves = {leaf.dev: leaf for leaf in nxt.stored.leaves}
    # a: the whole uptime part; no work and no scored challenge: those parts stay in the pool.
    assert (leaves[a.id].amount, nxt.settlement.total) == (500_000, 500_000)
    assert leaves[a.id].cumulative == 677_777 + 500_000
    assert (leaves[b.id].amount, leaves[b.id].cumulative) == (0, 322_222)
    with pytest.raises(
        SettlementError, match=f"epochs {EPOCH}..{EPOCH + 1} are settled and the next is"
    ) as order:
        settle_epoch(
            store, EPOCH + 3, POLICY, slot_ms=SLOT_MS, epoch_ms=EPOCH_MS, now_ms=AFTER + 2 * EPOCH_MS
        )
    assert order.value.reason == "settlement_order"

    # Replay from a capture (its own store, signatures re-verified) gives the same roots.
    capture_path = tmp_path / "capture.jsonl"
    export_capture(
        store,
        EPOCH + 1,
        capture_path,
        slot_ms=SLOT_MS,
        epoch_ms=EPOCH_MS,
        coordinator_key=SIGNER,
        policy=INGEST,
        topic_prefix=T.prefix,
    )
    capture = read_capture(capture_path)
    assert replay_settlements(capture, EPOCH, POLICY).root == first["root"]
    assert replay_settlements(capture, EPOCH + 1, POLICY, first_epoch=EPOCH).root == nxt.stored.root
    assert replay_settlements(capture, EPOCH + 1, POLICY).root != nxt.stored.root  # no E: other totals
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(
        config.read_text(encoding="utf-8").split("[rewards]")[1].join(["[rewards]", ""]), encoding="utf-8"
    )
    code, out, _ = cli(
        capsys,
        "rewards",
        "replay",
        "--epoch",
        str(EPOCH),
        "--capture",
        str(capture_path),
        "--policy",
        str(policy_file),
        "--json",
    )
    assert code == 0 and json.loads(out)["root"] == first["root"]
