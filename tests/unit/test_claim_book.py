"""The device's reward record and the claimer's inbound admission, on a real SQLite state store.

* roots only go forward (``stale_root``), one root per epoch (``root_conflict``), the same root
  again is taken quietly;
* a claim id is stored before the claim is emitted, a confirmation adds to the paid total in one
  transaction, and the read-only summary of a stopped daemon's file says the same as the live one;
* vouchers: a redelivery is ``duplicate``, an older seq ``replay``, a full queue ``busy``, a
  device that does not claim ``claims_disabled``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.device.claim_book import ClaimBook, book_summary, read_summary
from agent.device.claimer import QUEUE_SIZE, Claimer
from agent.device.state_store import StateStore
from agent.errors import ClaimError, ProtocolError
from agent.protocol.envelope import Envelope
from tests.support.daemon_rig import DEVICE
from tests.support.envelopes import coordinator_envelope
from tests.support.vouchers import MINT_KEY, OWNER, build, settlement

SETTLED = settlement()


class Emitted:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.seq = 0

    def __call__(self, kind: str, body: Any) -> Envelope:
        self.seq += 1
        self.sent.append((kind, body))
        return coordinator_envelope("voucher", build("0" * 32, SETTLED), seq=self.seq)


def claimer_on(
    path: Path, *, rpc_url: str = "http://127.0.0.1:9", owner: str = str(OWNER.pubkey())
) -> Claimer:
    config = AgentConfig.model_validate(
        {
            "device": {"owner_wallet": owner},
            "rewards": {"rpc_url": rpc_url, "mint": str(MINT_KEY.pubkey()) if rpc_url else ""},
        }
    )
    store = StateStore.open(path)
    return Claimer(config, ClaimBook(store), DEVICE, Emitted(), lambda: 1_000, threading.Lock())


def test_roots_only_go_forward_and_one_root_per_epoch(tmp_path: Path) -> None:
    book = ClaimBook(StateStore.open(tmp_path / "state.db"))
    assert book.root() is None
    assert book.accept_root(SETTLED.body) is True
    assert book.accept_root(SETTLED.body) is False  # the retained message again
    other = SETTLED.body.model_copy(update={"root": "ee" * 32})
    with pytest.raises(ProtocolError) as info:
        book.accept_root(other)
    assert info.value.reason == "root_conflict"
    newer = settlement(epoch=SETTLED.body.epoch + 1).body
    assert book.accept_root(newer) is True
    with pytest.raises(ProtocolError) as info:
        book.accept_root(SETTLED.body)
    assert info.value.reason == "stale_root"
    assert book.root() == newer


def test_a_claim_is_stored_before_it_is_sent_and_confirmation_is_one_step(tmp_path: Path) -> None:
    claimer = claimer_on(tmp_path / "state.db")
    emitted = claimer.emit
    assert isinstance(emitted, Emitted)
    seen_before_emit: list[Any] = []
    original = emitted.__call__

    def spy(kind: str, body: Any) -> Envelope:
        seen_before_emit.append(claimer.book.current())
        return original(kind, body)

    claimer.emit = spy
    record = claimer.request(None)
    assert [(r.claim_id, r.state) for r in seen_before_emit] == [(record.claim_id, "sent")]
    assert emitted.sent[0][0] == "claim" and emitted.sent[0][1].claim_id == record.claim_id
    # Asked again while it is outstanding: the same claim, nothing sent.
    assert claimer.request(None).claim_id == record.claim_id and len(emitted.sent) == 1
    record.amount = 250
    claimer.book.confirm(record)
    claimer.book.set_earned(3, 400_000, 1_000_000)
    claimer.book.add_receipt({"claim_id": record.claim_id, "status": "confirmed"})
    live = book_summary(claimer.book)
    assert (live["paid"], live["earned"], live["claimable"], live["outstanding"]) == (
        250,
        1_000_000,
        999_750,
        0,
    )
    claimer.book.state.close()
    assert read_summary(tmp_path / "state.db") == live
    # A new claim after the confirmed one gets a new id.
    again = claimer_on(tmp_path / "state.db")
    assert again.request(5).claim_id != record.claim_id


def test_voucher_admission_duplicate_replay_busy_disabled(tmp_path: Path) -> None:
    claimer = claimer_on(tmp_path / "state.db")
    voucher = build("1" * 32, SETTLED)
    first = coordinator_envelope("voucher", voucher, seq=10)
    claimer.admit(first)
    reasons = []
    for env in (first, coordinator_envelope("voucher", voucher, seq=9)):
        with pytest.raises(ProtocolError) as info:
            claimer.admit(env)
        reasons.append(info.value.reason)
    assert reasons == ["duplicate", "replay"]
    for seq in range(11, 11 + QUEUE_SIZE - 1):
        claimer.admit(coordinator_envelope("voucher", voucher, seq=seq))
    with pytest.raises(ProtocolError) as info:
        claimer.admit(coordinator_envelope("voucher", voucher, seq=100))
    assert info.value.reason == "busy"
    # Not taken, so not remembered: the same seq is admitted once there is room.
    assert claimer.book.state.signer_seq(f"voucher:{first.dev}") == 10 + QUEUE_SIZE - 1
    assert claimer.counters["vouchers_admitted"] == QUEUE_SIZE

    off = claimer_on(tmp_path / "off.db", rpc_url="")
    with pytest.raises(ProtocolError) as info:
        off.admit(first)
    assert info.value.reason == "claims_disabled"
    with pytest.raises(ClaimError) as claim_info:
        off.request(None)
    assert claim_info.value.reason == "claims_disabled" and claim_info.value.exit_code == 21
    nobody = claimer_on(tmp_path / "nobody.db", owner="")
    assert nobody.disabled_reason() == "device.owner_wallet is empty: there is nobody to pay"


def test_the_schedule_claims_when_something_new_or_enough_is_waiting(tmp_path: Path) -> None:
    claimer = claimer_on(tmp_path / "state.db")
    claimer.settings = claimer.settings.model_copy(update={"min_claim": 100})
    emitted = claimer.emit
    assert isinstance(emitted, Emitted)
    claimer._scheduled()
    assert emitted.sent == []  # no root: nothing to claim
    claimer.book.accept_root(SETTLED.body)
    claimer._scheduled()
    assert len(emitted.sent) == 1  # a root, nothing proven yet
    claimer._scheduled()
    assert len(emitted.sent) == 1  # outstanding: not again
    record = claimer.book.current()
    assert record is not None and record.why == "schedule"
    record.amount = SETTLED.leaf.cumulative - 50
    claimer.book.confirm(record)
    claimer.book.set_earned(SETTLED.body.epoch, SETTLED.leaf.amount, SETTLED.leaf.cumulative)
    claimer._scheduled()
    assert len(emitted.sent) == 1  # 50 waiting, min_claim 100
    claimer.book.accept_root(settlement(epoch=SETTLED.body.epoch + 1).body)
    claimer._scheduled()
    assert len(emitted.sent) == 2  # a newer epoch


def test_the_claim_ops_refuse_by_name(tmp_path: Path) -> None:
    from agent.device.claimer import claim_ops
    from agent.device.control_protocol import Refusal

    ops = claim_ops(claimer_on(tmp_path / "off.db", rpc_url=""))
    assert (ops["claim"].main_loop, ops["claim_status"].main_loop, ops["rewards"].main_loop) == (
        True,
        False,
        False,
    )
    cases = [
        ("claim", {}, "claims_disabled"),
        ("claim", {"amount": 0}, "bad_request"),
        ("claim", {"amount": True}, "bad_request"),
        ("claim", {"amount": 2**64}, "bad_request"),
        ("claim_status", {"claim_id": "x"}, "bad_request"),
        ("claim_status", {"claim_id": "a" * 32}, "claim_not_found"),
    ]
    for op, params, reason in cases:
        with pytest.raises(Refusal) as info:
            ops[op].run(params)
        assert info.value.reason == reason, (op, params)
    live = claim_ops(claimer_on(tmp_path / "on.db"))
    made = live["claim"].run({"amount": 7})
    assert made["new"] is True and made["asked"] == 7 and made["state"] == "sent"
    again = live["claim"].run({})
    assert again["new"] is False and again["claim_id"] == made["claim_id"]
    assert live["claim_status"].run({"claim_id": made["claim_id"]})["final"] is False
    assert live["rewards"].run({})["claim"]["claim_id"] == made["claim_id"]


def test_the_claimer_counts_reach_metrics() -> None:
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    from agent.device.metrics import DaemonCollector, Snapshot

    snap = Snapshot(
        device="d",
        model_id="m",
        model_sha256="0" * 64,
        agent_version="v",
        mode="inference",
        counters={},
        rejected_inbound={},
        chain_seq=1,
        outbox={},
        transport={},
        claims={
            "counters": {"claims_sent": 3, "claims_confirmed": 1},
            "refused": {"wrong_mint": 2},
            "chain_errors": {"rpc_unreachable": 4},
        },
    )
    registry = CollectorRegistry()
    registry.register(DaemonCollector(lambda: snap))
    text = generate_latest(registry).decode()
    for line in (
        "edgeproof_claims_sent_total 3.0",
        "edgeproof_claims_confirmed_total 1.0",
        "edgeproof_vouchers_signed_total 0.0",
        'edgeproof_vouchers_refused_total{reason="wrong_mint"} 2.0',
        'edgeproof_claim_rpc_errors_total{reason="rpc_unreachable"} 4.0',
    ):
        assert line in text.splitlines(), line
