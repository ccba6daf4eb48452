"""Settlement time and claim throughput for N devices (default 1,000) on the localnet.

    .venv/bin/python benchmarks/rewards_claims.py [--devices 1000] [--json]

* ``settle``: N enrolled devices heartbeat through the coordinator's batch path for one 5-slot
  epoch (every device up 1..5 slots, some proofs); then :func:`agent.rewards.settle.settle_epoch`
  runs on the SQLite store: the uptime audit, the allocation, the Merkle root, the write.
  Timed: the settle call alone (median of 5; the first writes, the others recompute and compare).
* ``claims``: every device claims once.  The claims go through
  :func:`agent.coordinator.batch.commit_batch` with the payout desk, 100 per batch as the service
  takes them (``issue``: vouchers built, partially signed, stored, chained); the device side runs
  the agent's own checks (:func:`agent.device.voucher_check.check_voucher`) and signs
  (``verify_sign``); each signed transaction is sent with preflight to a real
  ``python -m agent chain localnet`` through solana-py (``send``), then confirmed by its status
  (``confirm``); the receipts go back through the batch path, where the desk looks every
  signature up on chain before it marks it paid (``receipts``).  Rates are per second of each
  phase from one run; ``rpc_share`` is the part of the claim phases' time spent waiting on RPC.
  All N vouchers are issued before the first is signed, so blockhashes live 3000 slots (5 min)
  here, not a validator's 150.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from solders.keypair import Keypair  # noqa: E402
from solders.pubkey import Pubkey  # noqa: E402

from agent.chain import spl  # noqa: E402
from agent.chain.bootstrap import bootstrap  # noqa: E402
from agent.chain.client import ChainClient  # noqa: E402
from agent.chain.programs import MEMO_PROGRAM_ID  # noqa: E402
from agent.coordinator import slots  # noqa: E402
from agent.coordinator.batch import Inbound, commit_batch  # noqa: E402
from agent.coordinator.config import ChallengeSection  # noqa: E402
from agent.coordinator.store import DeviceRecord, Store  # noqa: E402
from agent.device.voucher_check import Expect, check_voucher, sign_checked  # noqa: E402
from agent.protocol.binding import sign_binding  # noqa: E402
from agent.protocol.envelope import verify_envelope  # noqa: E402
from agent.protocol.messages import Voucher  # noqa: E402
from agent.protocol.topics import Topics  # noqa: E402
from agent.rewards.desk import DeskSettings, PayoutDesk  # noqa: E402
from agent.rewards.policy import RewardPolicy  # noqa: E402
from agent.rewards.roots import root_body  # noqa: E402
from agent.rewards.settle import settle_epoch  # noqa: E402
from tests.support.coordinator import COORD, OWNER, Device, ingest_policy  # noqa: E402
from tests.support.localnet import Localnet  # noqa: E402

T = Topics()
SLOT_MS = 60_000
EPOCH_MS = 5 * SLOT_MS
BATCH = 100
POLICY = RewardPolicy(pool_per_epoch=10**12, min_uptime_bp=2_000, device_cap=None)
NO_CHALLENGE = ChallengeSection(probability_per_slot=0.0)


class Timed:
    """Wraps a chain client: the seconds spent in its calls."""

    def __init__(self, client: ChainClient) -> None:
        self.client = client
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def _ingest(store: Store, items: list[Inbound], now: int, desk: PayoutDesk | None = None) -> list[Any]:
    results = []
    policy = ingest_policy(late_window_seqs=64, beacon_max_age_slots=1_000_000)
    for i in range(0, len(items), BATCH):
        results.append(
            commit_batch(
                store, items[i : i + BATCH], policy=policy, keypair=COORD, topics=T, now_ms=now, payouts=desk
            )
        )
    return results


def settle_phase(store: Store, devices: list[Device], epoch: int) -> dict[str, Any]:
    first = epoch * EPOCH_MS // SLOT_MS
    with store.transaction():
        for d in devices:
            binding = sign_binding(d.keypair, OWNER, 1000)
            store.enroll(DeviceRecord(d.id, OWNER, "rpi4", (), binding.ts, binding.sig, 1000))
        store.start_run("bench", str(COORD.pubkey()), "h", 1, first * SLOT_MS - 500)
        store.stop_run("bench", (first + 5) * SLOT_MS + 1)
    import random

    rng = random.Random(7)
    started = time.perf_counter()
    for i in range(5):
        at = (first + i) * SLOT_MS
        slots.tick(store, COORD, T, now_ms=at + 5, slot_ms=SLOT_MS, challenges=NO_CHALLENGE, rng=rng)
        nonce = store.beacon_nonce(first + i)
        assert nonce is not None
        items = [
            Inbound(T.hb(d.id), d.heartbeat(first + i, at + 2000, nonce).wire, at + 2000)
            for n, d in enumerate(devices)
            if i <= n % 5
        ]
        _ingest(store, items, at + 2000)
    ingest_s = time.perf_counter() - started
    now = (epoch + 1) * EPOCH_MS + 10
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        outcome = settle_epoch(store, epoch, POLICY, slot_ms=SLOT_MS, epoch_ms=EPOCH_MS, now_ms=now)
        runs.append(time.perf_counter() - t0)
    return {
        "heartbeats_ingested_s": round(ingest_s, 2),
        "settle_first_s": round(runs[0], 3),
        "settle_again_median_s": round(statistics.median(runs[1:]), 3),
        "leaves": len(outcome.stored.leaves),
        "allocated": outcome.stored.total,
        "stored": outcome.stored,
    }


def claims_phase(store: Store, devices: list[Device], stored: Any, url: str, mint: Pubkey) -> dict[str, Any]:
    desk_chain = Timed(ChainClient(url, poll_s=0.02))
    device_chain = Timed(ChainClient(url, poll_s=0.02))
    vault = spl.associated_token_address(COORD.pubkey(), mint)
    settings = DeskSettings(treasury=COORD, vault=vault, mint=mint, decimals=6, memo_program=MEMO_PROGRAM_ID)
    desk = PayoutDesk(settings, desk_chain, T)  # type: ignore[arg-type]
    root = root_body(stored)
    destination = spl.associated_token_address(Pubkey.from_string(OWNER), mint)
    before = device_chain.token_amount(destination) or 0
    now = int(time.time() * 1000)
    ids = {d.id: f"{n:032x}" for n, d in enumerate(devices)}
    claims = [
        Inbound(
            T.device(d.id, "claim"),
            d.chain.next("claim", {"claim_id": ids[d.id], "owner": OWNER}, now).wire,
            now,
        )
        for d in devices
    ]
    phases: dict[str, float] = {}
    rpc_of: dict[str, float] = {}

    def rpc_now() -> float:
        return desk_chain.seconds + device_chain.seconds

    mark = rpc_now()
    t0 = time.perf_counter()
    results = _ingest(store, claims, now, desk)
    phases["issue"] = time.perf_counter() - t0
    rpc_of["issue"], mark = rpc_now() - mark, rpc_now()
    wires = [wire for r in results for _, wire in r.vouchers]
    assert len(wires) == len(devices), f"{len(wires)} vouchers for {len(devices)} claims"
    t0 = time.perf_counter()
    height = device_chain.block_height()
    signed = []
    by_key = {d.id: d for d in devices}
    for wire in wires:
        voucher = verify_envelope(wire, expected_signer=str(COORD.pubkey())).body
        assert isinstance(voucher, Voucher)
        d = by_key[voucher.device]
        expect = Expect(
            device=d.keypair.pubkey(),
            owner=Pubkey.from_string(OWNER),
            mint=mint,
            decimals=6,
            memo_program=MEMO_PROGRAM_ID,
            claim_id=voucher.claim_id,
            asked=None,
            root=root,
            own_paid=0,
            block_height=height,
            signed_hash=None,
        )
        checked = check_voucher(voucher, expect)
        signed.append((d, voucher, sign_checked(checked, d.keypair.sign_message(checked.message))))
    phases["verify_sign"] = time.perf_counter() - t0
    rpc_of["verify_sign"], mark = rpc_now() - mark, rpc_now()
    t0 = time.perf_counter()
    sigs = [device_chain.send(tx) for _, _, tx in signed]
    phases["send"] = time.perf_counter() - t0
    rpc_of["send"], mark = rpc_now() - mark, rpc_now()
    t0 = time.perf_counter()
    for (_, voucher, _), sig in zip(signed, sigs, strict=True):
        device_chain.confirm(sig, voucher.last_valid_block_height)
    phases["confirm"] = time.perf_counter() - t0
    rpc_of["confirm"], mark = rpc_now() - mark, rpc_now()
    receipts = [
        Inbound(
            T.device(d.id, "receipt"),
            d.chain.next(
                "receipt", {"claim_id": v.claim_id, "signature": str(s), "status": "confirmed"}, now
            ).wire,
            now,
        )
        for (d, v, _), s in zip(signed, sigs, strict=True)
    ]
    t0 = time.perf_counter()
    _ingest(store, receipts, now, desk)
    phases["receipts"] = time.perf_counter() - t0
    rpc_of["receipts"], mark = rpc_now() - mark, rpc_now()
    paid = store.one("SELECT COUNT(*), SUM(amount) FROM vouchers WHERE state = 'paid'")
    arrived = (device_chain.token_amount(destination) or 0) - before
    assert paid is not None and int(paid[0]) == len(devices) and int(paid[1]) == arrived == stored.total
    total = sum(phases.values())
    n = len(devices)
    slowest = max(phases, key=lambda k: phases[k])
    share = rpc_of[slowest] / phases[slowest]
    return {
        "rates_per_s": {k: round(n / v, 1) for k, v in phases.items()},
        "phase_s": {k: round(v, 4) for k, v in phases.items()},
        "rpc_share_by_phase": {k: round(rpc_of[k] / phases[k], 2) for k in phases},
        "end_to_end_per_s": round(n / total, 1),
        "rpc_share": round(sum(rpc_of.values()) / total, 2),
        "bound": f"{slowest}: {share:.0%} of it waiting on JSON-RPC round trips to the localnet"
        if share >= 0.5
        else f"{slowest}: in-process CPU (signing, checks, store), {share:.0%} RPC",
        "paid": int(paid[0]),
        "tokens_arrived": arrived,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    devices = [Device(Keypair.from_seed(n.to_bytes(4, "big") * 8)) for n in range(1, args.devices + 1)]
    epoch = int(time.time() * 1000) // EPOCH_MS - 10
    with tempfile.TemporaryDirectory() as folder:
        net = Localnet(slot_ms=100, validity_slots=3000, log_path=Path(folder) / "localnet.log").start()
        try:
            with ChainClient(net.url) as client:
                minted = bootstrap(
                    client, COORD, state_path=Path(folder) / "b.json", decimals=6, supply=10**13
                )
            store = Store.open(sqlite_path=Path(folder) / "c.sqlite3")
            settled = settle_phase(store, devices, epoch)
            stored = settled.pop("stored")
            claimed = claims_phase(store, devices, stored, net.url, Pubkey.from_string(minted.mint))
            store.close()
        finally:
            net.stop()
    doc = {"devices": args.devices, "settlement": settled, "claims": claimed}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    c = claimed
    print(
        f"{args.devices} devices: settle {settled['settle_first_s']} s (again {settled['settle_again_median_s']} s, "
        f"{settled['leaves']} leaves); claims per s: issue {c['rates_per_s']['issue']}, verify+sign "
        f"{c['rates_per_s']['verify_sign']}, send {c['rates_per_s']['send']}, confirm {c['rates_per_s']['confirm']}, "
        f"receipts {c['rates_per_s']['receipts']}; end to end {c['end_to_end_per_s']}/s, "
        f"rpc share {c['rpc_share']}; bound: {c['bound']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
