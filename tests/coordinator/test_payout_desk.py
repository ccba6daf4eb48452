"""The payout desk in process: real store, real batch path, real localnet through solana-py.

Claims go through :func:`agent.coordinator.batch.commit_batch` exactly as the service commits
them; the device side is the contract-built driver in tests/support/claims.py (the real daemon
runs in tests/integration/test_claims_e2e.py).  One module-wide ledger: 50 ms slots, blockhashes
valid 40 slots (2 s), so expiry is real and quick.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from solders.pubkey import Pubkey
from solders.signature import Signature

from agent.chain import spl
from agent.chain.bootstrap import bootstrap
from agent.chain.client import ChainClient
from agent.chain.programs import MEMO_PROGRAM_ID
from agent.coordinator.batch import BatchResult, Inbound, commit_batch
from agent.coordinator.payouts import PayoutAnswer, ReconcileResult
from agent.coordinator.store import Store
from agent.errors import ChainError
from agent.protocol.topics import Topics
from agent.rewards import vouchers
from agent.rewards.desk import DeskSettings, PayoutDesk
from agent.rewards.merkle import Leaf
from agent.rewards.voucher import claim_memo
from tests.support.claims import DeviceDriver, body_of, memo_and_signers, new_claim_id, settle_direct
from tests.support.coordinator import COORD, OWNER, Device, device_key, enroll_direct, ingest_policy
from tests.support.localnet import Localnet
from tests.support.reward_merkle_check import check_proof
from tests.support.rpc_gate import RpcGate

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]

T = Topics()
INGEST = ingest_policy(late_window_seqs=64)
SIGNER = str(COORD.pubkey())
DECIMALS = 6


@pytest.fixture(scope="module")
def localnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Localnet]:
    log = tmp_path_factory.mktemp("localnet") / "localnet.log"
    net = Localnet(slot_ms=50, validity_slots=40, log_path=log).start()
    try:
        yield net
    finally:
        assert net.stop() == 0


@pytest.fixture(scope="module")
def chain(
    localnet: Localnet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ChainClient, Pubkey]]:
    client = ChainClient(localnet.url, poll_s=0.05, confirm_timeout_s=30)
    state = tmp_path_factory.mktemp("bootstrap") / "treasury.bootstrap.json"
    result = bootstrap(client, COORD, state_path=state, decimals=DECIMALS, supply=10**12)
    try:
        yield client, Pubkey.from_string(result.mint)
    finally:
        client.close()


class Rig:
    def __init__(
        self,
        store: Store,
        client: ChainClient,
        mint: Pubkey,
        cap: int | None = None,
        desk_chain: ChainClient | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.mint = mint
        settings = DeskSettings(
            treasury=COORD,
            vault=spl.associated_token_address(COORD.pubkey(), mint),
            mint=mint,
            decimals=DECIMALS,
            memo_program=MEMO_PROGRAM_ID,
            breaker_cap=cap,
            breaker_window_ms=60_000,
        )
        # The desk's own client (``desk_chain``: e.g. one through a gate); sends go through ``client``.
        self.desk = PayoutDesk(settings, desk_chain or ChainClient(client.url, poll_s=0.05), T)

    def send(self, *envs: bytes, dev: str, channel: str) -> BatchResult:
        now = time.time_ns() // 1_000_000
        items = [Inbound(T.device(dev, channel), wire, now) for wire in envs]
        return commit_batch(
            self.store, items, policy=INGEST, keypair=COORD, topics=T, now_ms=now, payouts=self.desk
        )

    def balance(self, owner: str) -> int:
        return (
            self.client.token_amount(spl.associated_token_address(Pubkey.from_string(owner), self.mint)) or 0
        )


def _gated(
    tmp_path: Path, chain: tuple[ChainClient, Pubkey], *, retries: int = 3, backoff_s: float = 0.25
) -> tuple[Store, RpcGate, Rig]:
    """A store and a rig whose desk reads the chain through an :class:`RpcGate` (sends go direct)."""
    client, mint = chain
    store = Store.open(sqlite_path=tmp_path / "c.sqlite3")
    gate = RpcGate(client.url).start()
    desk_chain = ChainClient(gate.url, timeout_s=2, retries=retries, backoff_s=backoff_s, poll_s=0.05)
    return store, gate, Rig(store, client, mint, desk_chain=desk_chain)


def _now() -> int:
    return time.time_ns() // 1_000_000


def _setup(store: Store, n: int, amounts: dict[int, int]) -> tuple[list[Device], str]:
    """Enroll devices ``device_key(n + i)``; settle epoch 3 with ``amounts`` (index -> cumulative)."""
    devices = [Device(device_key(n + i)) for i in range(len(amounts))]
    for d in devices:
        enroll_direct(store, d.keypair)
    leaves = [Leaf(d.id, OWNER, 3, amounts[i], amounts[i]) for i, d in enumerate(devices)]
    settlement = settle_direct(store, 3, leaves, _now())
    return devices, settlement.root


def _claim(device: Device, claim_id: str, owner: str = OWNER, amount: int | None = None) -> bytes:
    body: dict[str, object] = {"claim_id": claim_id, "owner": owner}
    if amount is not None:
        body["amount"] = amount
    return device.chain.next("claim", body, _now()).wire


def _verdicts(result: BatchResult) -> list[dict[str, object]]:
    return [body_of(v.wire) for v in result.verdicts]


def test_a_claim_pays_exactly_the_settled_amount_once(
    tmp_path: Path, chain: tuple[ChainClient, Pubkey]
) -> None:
    client, mint = chain
    store = Store.open(sqlite_path=tmp_path / "c.sqlite3")
    rig = Rig(store, client, mint)
    (dev, _other), root = _setup(store, 120, {0: 677_777, 1: 250_000})
    driver = DeviceDriver(dev.keypair, OWNER, mint, DECIMALS, SIGNER)
    before = rig.balance(OWNER)
    claim_id = new_claim_id()
    result = rig.send(_claim(dev, claim_id), dev=dev.id, channel="claim")
    assert [v["accepted"] for v in _verdicts(result)] == [True]
    assert len(result.vouchers) == 1
    topic, wire = result.vouchers[0]
    assert topic == T.device(dev.id, "voucher")
    checked = driver.check(wire, root)
    assert checked.voucher.amount == 677_777 and checked.voucher.paid == 0
    # The same claim again (a new envelope, same claim id): the same voucher bytes.
    again = rig.send(_claim(dev, claim_id), dev=dev.id, channel="claim")
    assert again.vouchers == [(topic, wire)]
    signature = driver.pay(client, checked)
    assert str(signature) == str(checked.tx.signatures[0])
    receipt = dev.chain.next(
        "receipt", {"claim_id": claim_id, "signature": str(signature), "status": "confirmed"}, _now()
    ).wire
    assert [v["accepted"] for v in _verdicts(rig.send(receipt, dev=dev.id, channel="receipt"))] == [True]
    row = vouchers.by_claim(store, claim_id)
    assert row is not None and row.state == "paid" and row.receipt_status == "confirmed"
    assert rig.balance(OWNER) - before == 677_777
    memo, signers, logs = memo_and_signers(client, signature)
    assert signers == [SIGNER, dev.id]
    assert memo == claim_memo(claim_id)
    assert any(str(MEMO_PROGRAM_ID) in line for line in logs), logs
    # Replaying the confirmed transaction pays nothing.
    with pytest.raises(ChainError) as replayed:
        client.send(checked.tx)
    assert replayed.value.reason == "already_processed"
    assert rig.balance(OWNER) - before == 677_777
    # Nothing left to claim.
    empty = rig.send(_claim(dev, new_claim_id()), dev=dev.id, channel="claim")
    assert empty.vouchers == []
    assert _verdicts(empty)[0]["reason"] == "nothing_claimable"
    rig.desk.close()
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_concurrent_claims_pay_once(
    database_url: str, tmp_path: Path, chain: tuple[ChainClient, Pubkey]
) -> None:
    client, mint = chain
    store = Store.open(database_url=database_url, sqlite_path=tmp_path / "c.sqlite3")
    rig = Rig(store, client, mint)
    (dev,), root = _setup(store, 130 if not database_url else 131, {0: 5_000})
    driver = DeviceDriver(dev.keypair, OWNER, mint, DECIMALS, SIGNER)
    before = rig.balance(OWNER)
    first, second = new_claim_id(), new_claim_id()
    result = rig.send(_claim(dev, first), _claim(dev, second), dev=dev.id, channel="claim")
    verdicts = _verdicts(result)
    assert [v["accepted"] for v in verdicts] == [True, False]
    assert verdicts[1]["reason"] == "voucher_outstanding"
    assert len(result.vouchers) == 1
    checked = driver.check(result.vouchers[0][1], root)
    driver.pay(client, checked)
    # The second claim again, after the first landed: the first is marked paid, nothing is left.
    late = rig.send(_claim(dev, second), dev=dev.id, channel="claim")
    assert _verdicts(late)[0]["reason"] == "nothing_claimable"
    assert vouchers.by_claim(store, first).state == "paid"  # type: ignore[union-attr]
    assert rig.balance(OWNER) - before == 5_000
    rig.desk.close()
    store.close()


def test_an_expired_voucher_is_released_and_reissued(
    tmp_path: Path, chain: tuple[ChainClient, Pubkey]
) -> None:
    client, mint = chain
    store = Store.open(sqlite_path=tmp_path / "c.sqlite3")
    rig = Rig(store, client, mint)
    (dev,), root = _setup(store, 140, {0: 9_000})
    driver = DeviceDriver(dev.keypair, OWNER, mint, DECIMALS, SIGNER)
    before = rig.balance(OWNER)
    stale_id = new_claim_id()
    stale = driver.check(rig.send(_claim(dev, stale_id), dev=dev.id, channel="claim").vouchers[0][1], root)
    # Before expiry a new claim is refused: the voucher may still land.
    early = rig.send(_claim(dev, new_claim_id()), dev=dev.id, channel="claim")
    assert _verdicts(early)[0]["reason"] == "voucher_outstanding"
    deadline = time.monotonic() + 20
    while client.block_height() <= stale.voucher.last_valid_block_height:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    fresh_id = new_claim_id()
    result = rig.send(_claim(dev, fresh_id), dev=dev.id, channel="claim")
    assert vouchers.by_claim(store, stale_id).state == "released"  # type: ignore[union-attr]
    fresh = driver.check(result.vouchers[0][1], root)
    assert fresh.voucher.amount == 9_000 and fresh.voucher.blockhash != stale.voucher.blockhash
    driver.pay(client, fresh)
    # The stale transaction, signed and sent late, can never land: its blockhash is gone.
    with pytest.raises(ChainError) as late:
        client.send(driver.sign(stale))
    assert late.value.reason == "blockhash_not_found"
    assert rig.desk.reconcile(store, now_ms=_now()).paid == 1
    assert rig.balance(OWNER) - before == 9_000
    rig.desk.close()
    store.close()


def test_refusals_are_named_and_the_breaker_trips(tmp_path: Path, chain: tuple[ChainClient, Pubkey]) -> None:
    client, mint = chain
    store = Store.open(sqlite_path=tmp_path / "c.sqlite3")
    rig = Rig(store, client, mint, cap=10_000)
    (small, big, late), _ = _setup(store, 150, {0: 4_000, 1: 7_001, 2: 1})
    stranger = str(device_key(159).pubkey())
    wrong = rig.send(_claim(small, new_claim_id(), owner=stranger), dev=small.id, channel="claim")
    assert _verdicts(wrong)[0]["reason"] == "owner_mismatch"
    ok = rig.send(_claim(small, new_claim_id(), amount=3_000), dev=small.id, channel="claim")
    assert body_of(ok.vouchers[0][1])["amount"] == 3_000  # a smaller amount asked is what is issued
    # A device with no settled leaf has nothing to claim.
    newcomer = Device(device_key(158))
    enroll_direct(store, newcomer.keypair)
    none = rig.send(_claim(newcomer, new_claim_id()), dev=newcomer.id, channel="claim")
    assert _verdicts(none)[0]["reason"] == "nothing_claimable"
    over = rig.send(_claim(big, new_claim_id()), dev=big.id, channel="claim")
    assert _verdicts(over)[0]["reason"] == "payout_paused" and over.breaker_tripped
    paused = rig.send(_claim(late, new_claim_id()), dev=late.id, channel="claim")
    assert _verdicts(paused)[0]["reason"] == "payout_paused"  # open for the whole window
    state = vouchers.breaker(store)
    assert state is not None and "would pass the cap of 10000" in state[2]
    # Receipts are checked against the desk's record, never trusted alone.
    unknown = small.chain.next("receipt", {"claim_id": new_claim_id(), "status": "confirmed"}, _now()).wire
    assert _verdicts(rig.send(unknown, dev=small.id, channel="receipt"))[0]["reason"] == "unknown_voucher"
    claim_id = body_of(ok.vouchers[0][1])["claim_id"]
    forged = small.chain.next(
        "receipt",
        {"claim_id": claim_id, "status": "confirmed", "signature": str(Signature.default())},
        _now(),
    ).wire
    assert _verdicts(rig.send(forged, dev=small.id, channel="receipt"))[0]["reason"] == "receipt_mismatch"
    bare = small.chain.next("receipt", {"claim_id": claim_id, "status": "confirmed"}, _now()).wire
    assert _verdicts(rig.send(bare, dev=small.id, channel="receipt"))[0]["accepted"] is True
    assert vouchers.by_claim(store, str(claim_id)).state == "outstanding"  # type: ignore[union-attr]
    rows = store.rows("SELECT reason FROM messages WHERE kind = 'claim' AND accepted = 0 ORDER BY id")
    assert [r[0] for r in rows] == ["owner_mismatch", "nothing_claimable", "payout_paused", "payout_paused"]
    rig.desk.close()
    store.close()


def test_every_proof_checks_against_the_root_and_a_changed_amount_fails(
    tmp_path: Path, chain: tuple[ChainClient, Pubkey]
) -> None:
    client, mint = chain
    store = Store.open(sqlite_path=tmp_path / "c.sqlite3")
    rig = Rig(store, client, mint)
    amounts = {i: 1_000 + 17 * i for i in range(7)}
    devices, root = _setup(store, 160, amounts)
    for i, dev in enumerate(devices):
        wire = rig.send(_claim(dev, new_claim_id()), dev=dev.id, channel="claim").vouchers[0][1]
        body = body_of(wire)
        leaf = {"dev": dev.id, "owner": OWNER, "epoch": 3, "amount": amounts[i], "cumulative": amounts[i]}
        steps = [{"sibling": s["sibling"], "side": "left" if s["left"] else "right"} for s in body["proof"]]
        assert check_proof(root, leaf, steps)
        assert not check_proof(root, {**leaf, "cumulative": amounts[i] + 1}, steps)
        assert not check_proof(root, {**leaf, "amount": amounts[i] - 1}, steps)
    rig.desk.close()
    store.close()


def test_a_flood_of_claims_and_a_replayed_claim_get_one_voucher(
    tmp_path: Path, chain: tuple[ChainClient, Pubkey]
) -> None:
    client, mint = chain
    store = Store.open(sqlite_path=tmp_path / "c.sqlite3")
    rig = Rig(store, client, mint)
    (dev,), _ = _setup(store, 170, {0: 50})
    first = _claim(dev, new_claim_id())
    flood = [_claim(dev, new_claim_id()) for _ in range(40)]
    result = rig.send(first, *flood, dev=dev.id, channel="claim")
    reasons = [v.get("reason") for v in _verdicts(result)]
    assert reasons == [None] + ["voucher_outstanding"] * 40
    assert len(result.vouchers) == 1
    replayed = rig.send(first, dev=dev.id, channel="claim")  # the same envelope again: a redelivery
    assert replayed.vouchers == [] and replayed.verdicts == []
    assert replayed.outcomes[0].row.reason == "duplicate"
    assert store.one("SELECT COUNT(*) FROM vouchers")[0] == 1  # type: ignore[index]
    rig.desk.close()
    store.close()


def test_an_unreachable_rpc_refuses_the_claim_by_name_and_stores_nothing(
    tmp_path: Path, chain: tuple[ChainClient, Pubkey]
) -> None:
    client, mint = chain
    store = Store.open(sqlite_path=tmp_path / "c.sqlite3")
    rig = Rig(store, client, mint)
    dead = ChainClient("http://127.0.0.1:9", timeout_s=0.5, retries=1, backoff_s=0.01)
    rig.desk.close()
    rig.desk = PayoutDesk(rig.desk.settings, dead, T)
    (dev,), _ = _setup(store, 175, {0: 50})
    result = rig.send(_claim(dev, new_claim_id()), dev=dev.id, channel="claim")
    verdict = _verdicts(result)[0]
    assert (verdict["reason"], verdict["detail"]) == (
        "payout_unavailable",
        "the chain could not be read: rpc_unreachable",
    )
    assert result.vouchers == [] and store.one("SELECT COUNT(*) FROM vouchers")[0] == 0  # type: ignore[index]
    assert dead.retried == 1  # retried with backoff once, then translated into ChainUnavailableError
    assert rig.desk.reconcile(store, now_ms=_now()) == ReconcileResult()
    rig.desk.close()
    store.close()


class _BrokenDesk:
    """A desk with a bug: every call raises."""

    def claim(self, *args: object, **kwargs: object) -> PayoutAnswer:
        raise RuntimeError("bug")

    def receipt(self, *args: object, **kwargs: object) -> PayoutAnswer:
        raise KeyError("bug")

    def reconcile(self, *args: object, **kwargs: object) -> ReconcileResult:
        return ReconcileResult()

    def close(self) -> None:
        pass


def test_a_desk_bug_rejects_the_message_as_ingest_failed_and_ingest_goes_on(tmp_path: Path) -> None:
    store = Store.open(sqlite_path=tmp_path / "c.sqlite3")
    dev = Device(device_key(180))
    enroll_direct(store, dev.keypair)
    now = _now()
    items = [
        Inbound(T.device(dev.id, "claim"), _claim(dev, new_claim_id()), now),
        Inbound(
            T.device(dev.id, "receipt"),
            dev.chain.next("receipt", {"claim_id": "a" * 32, "status": "submitted"}, now).wire,
            now,
        ),
    ]
    result = commit_batch(
        store, items, policy=INGEST, keypair=COORD, topics=T, now_ms=now, payouts=_BrokenDesk()
    )
    assert [(o.row.kind, o.row.reason) for o in result.outcomes] == [
        ("claim", "ingest_failed"),
        ("receipt", "ingest_failed"),
    ]
    assert [v.get("reason") for v in _verdicts(result)] == ["ingest_failed", "ingest_failed"]
    head = store.head(dev.id)
    assert head is not None and head.seq == 2  # both still took their place in the device's chain
    store.close()


def test_a_failing_rpc_gateway_is_retried_with_backoff_then_refused_by_name_and_recovered(
    tmp_path: Path, chain: tuple[ChainClient, Pubkey]
) -> None:
    client, mint = chain
    store, gate, rig = _gated(tmp_path, chain, retries=2, backoff_s=0.01)
    (dev,), root = _setup(store, 185, {0: 321})
    driver = DeviceDriver(dev.keypair, OWNER, mint, DECIMALS, SIGNER)
    try:
        gate.blocked = {"getLatestBlockhash"}
        refused = rig.send(_claim(dev, new_claim_id()), dev=dev.id, channel="claim")
        assert _verdicts(refused)[0]["detail"] == "the chain could not be read: rpc_unreachable"
        assert gate.refused["getLatestBlockhash"] == 3  # the call and its two retries, all HTTP 503
        gate.blocked = set()
        claim_id = new_claim_id()
        checked = driver.check(
            rig.send(_claim(dev, claim_id), dev=dev.id, channel="claim").vouchers[0][1], root
        )
        driver.pay(client, checked)
        gate.blocked = {"getSignatureStatuses"}  # the schedule's look-up fails: nothing changes
        assert rig.desk.reconcile(store, now_ms=_now()) == ReconcileResult()
        assert vouchers.by_claim(store, claim_id).state == "outstanding"  # type: ignore[union-attr]
        gate.blocked = set()
        assert rig.desk.reconcile(store, now_ms=_now()).paid == 1
        assert vouchers.by_claim(store, claim_id).state == "paid"  # type: ignore[union-attr]
    finally:
        rig.desk.close()
        gate.stop()
        store.close()


def test_reconcile_reads_every_outstanding_voucher_with_one_status_call(
    tmp_path: Path, chain: tuple[ChainClient, Pubkey]
) -> None:
    client, mint = chain
    store, gate, rig = _gated(tmp_path, chain)
    devices, root = _setup(store, 200, {i: 1_000 + i for i in range(4)})
    try:
        issued = []
        for d in devices:
            driver = DeviceDriver(d.keypair, OWNER, mint, DECIMALS, SIGNER)
            wire = rig.send(_claim(d, new_claim_id()), dev=d.id, channel="claim").vouchers[0][1]
            issued.append((driver, driver.check(wire, root)))
        for driver, checked in issued[:3]:
            driver.pay(client, checked)  # the fourth device never signs its voucher
        gate.calls.clear()
        # Three landed, one may still land: one status call for all four, one block height.
        assert rig.desk.reconcile(store, now_ms=_now()) == ReconcileResult(paid=3)
        assert gate.calls == {"getSignatureStatuses": 1, "getBlockHeight": 1}
        last = issued[3][1].voucher.last_valid_block_height
        deadline = time.monotonic() + 20
        while client.block_height() <= last:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        gate.calls.clear()
        # Expired: a last look at its signature, then released.
        assert rig.desk.reconcile(store, now_ms=_now()) == ReconcileResult(released=1)
        assert gate.calls == {"getSignatureStatuses": 2, "getBlockHeight": 1}
        # More than a node answers at once (256) goes in chunks, each answer checked.
        gate.calls.clear()
        many = [Signature(bytes([i % 256, i // 256]) + bytes(62)) for i in range(300)]
        reader = ChainClient(gate.url)
        assert reader.statuses(many) == [None] * 300
        reader.close()
        assert gate.calls == {"getSignatureStatuses": 2}
    finally:
        rig.desk.close()
        gate.stop()
        store.close()
