"""Claims through the real daemon, a real Mosquitto and the real localnet (LiteSVM behind JSON-RPC).

The test is the coordinator: it holds the coordinator key (also the treasury, bootstrapped on the
localnet with a real mint and vault), publishes the retained ``reward_root`` and answers the
daemon's ``claim`` with vouchers built by the coordinator's own builder (agent/rewards/voucher.py):

* a tampered voucher (the thief's ATA as destination) is refused ``wrong_destination`` with a
  ``refused`` receipt, and nothing moves on chain;
* the honest voucher is checked, signed, submitted and confirmed: the owner's ATA rises by
  exactly the amount, receipts ``submitted`` and ``confirmed`` name the transaction, and
  ``rewards claim --wait`` / ``rewards status`` report it (from the daemon, then from the state
  file once it stopped);
* a redelivered voucher is ``duplicate``, an older one ``replay``; a voucher that forgets a paid
  claim is refused ``amount_too_high`` (the agent's own record); an expired one, or one whose
  transaction never lands before its last valid block height, makes the daemon claim again with
  a new claim id;
* a daemon killed -9 after signing (every send failing at an RPC gateway) re-sends the same
  transaction after its restart, refuses another for that claim id (``voucher_conflict``) and
  is paid exactly once;
* the ``claim_every_s`` schedule claims unasked, and not again while its claim is outstanding;
  against a hostile RPC endpoint (stalls, garbage, oversized answers) and hostile MQTT (forged,
  oversized, malformed, a flood) every refusal is named and counted while heartbeats keep
  their schedule.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.signature import Signature

from agent.chain import spl
from agent.chain.bootstrap import bootstrap
from agent.chain.client import ChainClient
from agent.protocol.envelope import GENESIS_PREV, Envelope, build_envelope, verify_envelope
from agent.protocol.messages import Voucher
from agent.rewards.voucher import decode_tx
from tests.support.daemon_rig import (
    COORDINATOR,
    DEV,
    PREFIX,
    ROGUE,
    ROOT,
    DaemonProcess,
    Publisher,
    clean_env,
    now_ms,
    wait_until,
    write_config,
)
from tests.support.envelopes import coordinator_envelope, forged
from tests.support.hostile_rpc import HostileRpc
from tests.support.localnet import Localnet
from tests.support.mosquitto import Collector, MosquittoBroker
from tests.support.rpc_gate import RpcGate
from tests.support.vouchers import OWNER, THIEF, Settlement, build, settlement, terms, with_accounts

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]

SETTLED = settlement(epoch=3, amount=400_000, cumulative=1_000_000)
NEXT = settlement(epoch=4, amount=500_000, cumulative=1_500_000)
VOUCHER_TOPIC = f"{PREFIX}/dev/{DEV}/voucher"


def rewards_toml(rpc_url: str, mint: str, *, timeout_s: float = 5.0, every_s: float = 0) -> str:
    return "\n".join(
        [
            "[rewards]",
            f'rpc_url = "{rpc_url}"',
            f'mint = "{mint}"',
            "decimals = 6",
            f"claim_every_s = {every_s}",
            f"rpc_timeout_s = {timeout_s}",
        ]
    )


def cli(config: Path, *args: str, timeout: float = 90) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "rewards", *args, "--config", str(config), "--json"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    out = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, out, done.stderr.decode(errors="replace")


def device_bodies(collector: Collector, channel: str) -> list[Any]:
    """The verified bodies the daemon published on one of its channels, first delivery of each seq."""
    with collector._cond:
        messages = list(collector.messages)
    seen: dict[int, Any] = {}
    for topic, payload in messages:
        if topic == f"{PREFIX}/dev/{DEV}/{channel}":
            env = verify_envelope(payload)
            seen.setdefault(env.seq, env.body)
    return [seen[s] for s in sorted(seen)]


def receipts(collector: Collector, claim_id: str) -> list[Any]:
    return [r for r in device_bodies(collector, "receipt") if r.claim_id == claim_id]


def rewards_of(daemon: DaemonProcess) -> dict[str, Any]:
    return dict(daemon.status().get("rewards") or {})


def publish_root(publisher: Publisher, settled: Settlement = SETTLED) -> None:
    env = build_envelope(COORDINATOR, "reward_root", settled.body, seq=0, prev=GENESIS_PREV, ts=now_ms())
    publisher.publish(f"{PREFIX}/rewards/root", env.wire, retain=True)


def online_with_root(daemon: DaemonProcess, publisher: Publisher) -> None:
    """Wait for the started daemon's first heartbeat, then publish the settled root and wait
    until the daemon keeps it."""
    wait_until(lambda: daemon.status().get("counters", {}).get("heartbeat_emitted"), 90, "the daemon online")
    publish_root(publisher)
    wait_until(lambda: (rewards_of(daemon).get("root") or {}).get("epoch") == 3, 30, "the root kept")


def new_claim(collector: Collector, old: set[str]) -> Any:
    def fresh() -> Any:
        found = [c for c in device_bodies(collector, "claim") if c.claim_id not in old]
        return found[-1] if found else None

    return wait_until(fresh, 30, "a new chained claim from the daemon")


def voucher_env(body: Voucher, seq: int) -> Envelope:
    return coordinator_envelope("voucher", body, seq=seq)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Localnet, ChainClient, str]]:
    # 1200 slots of 100 ms: a blockhash lives 2 minutes (the restart in step 6 must fit in it).
    localnet = Localnet(slot_ms=100, validity_slots=1200, log_path=tmp_path / "localnet.log").start()
    client = ChainClient(localnet.url)
    try:
        result = bootstrap(client, COORDINATOR, state_path=tmp_path / "treasury.json", supply=10**12)
        yield localnet, client, result.mint
    finally:
        client.close()
        localnet.stop()


def test_the_daemon_refuses_a_tampered_voucher_and_pays_an_honest_one(
    tmp_path: Path, mosquitto: MosquittoBroker, chain: tuple[Localnet, ChainClient, str]
) -> None:
    _, client, mint = chain
    owner_ata = spl.associated_token_address(OWNER.pubkey(), spl_pubkey(mint))
    vault = spl.associated_token_address(COORDINATOR.pubkey(), spl_pubkey(mint))
    vault_before = client.token_amount(vault)
    gate = RpcGate(client.url).start()  # the daemon's RPC goes through it
    config = write_config(
        tmp_path / "device",
        mosquitto,
        coordinator=str(COORDINATOR.pubkey()),
        owner_wallet=str(OWNER.pubkey()),
        extra=rewards_toml(gate.url, mint),
    )
    collector = Collector(mosquitto, f"{PREFIX}/dev/{DEV}/+", client_id="claims-collector")
    publisher = Publisher(mosquitto)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        online_with_root(daemon, publisher)

        # 1. A tampered voucher: the thief's ATA as destination.
        code, first, err = cli(config, "claim")
        assert code == 0, err
        assert first["new"] is True and first["state"] == "sent"
        claim = new_claim(collector, set())
        assert (
            claim.claim_id == first["claim_id"]
            and claim.owner == str(OWNER.pubkey())
            and claim.amount is None
        )
        latest = client.latest_blockhash()
        thief_ata = spl.associated_token_address(THIEF.pubkey(), spl_pubkey(mint))

        def steal(ixs: list[Instruction]) -> list[Instruction]:
            accounts = list(ixs[1].accounts)
            accounts[2] = AccountMeta(thief_ata, is_signer=False, is_writable=True)
            return [ixs[0], with_accounts(ixs[1], accounts), ixs[2]]

        tampered = build(
            claim.claim_id,
            SETTLED,
            the_terms=terms(claim.claim_id, 1_000_000, mint=spl_pubkey(mint)),
            tamper=steal,
            blockhash=latest.blockhash,
            last_valid_block_height=latest.last_valid_block_height,
        )
        publisher.publish(VOUCHER_TOPIC, voucher_env(tampered, 1).wire)
        refused = wait_until(lambda: receipts(collector, claim.claim_id), 30, "the refused receipt")
        assert [(r.status, r.reason, r.signature) for r in refused] == [
            ("refused", "wrong_destination", None)
        ]
        assert client.token_amount(owner_ata) is None and client.token_amount(thief_ata) is None
        assert client.token_amount(vault) == vault_before

        # 2. The honest voucher, followed by `rewards claim --wait`.
        waiting = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "rewards",
                "claim",
                "--config",
                str(config),
                "--wait",
                "60",
                "--json",
            ],
            cwd=ROOT,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            second = new_claim(collector, {claim.claim_id})
            latest = client.latest_blockhash()
            honest = build(
                second.claim_id,
                SETTLED,
                the_terms=terms(second.claim_id, 1_000_000, mint=spl_pubkey(mint)),
                blockhash=latest.blockhash,
                last_valid_block_height=latest.last_valid_block_height,
            )
            honest_env = voucher_env(honest, 2)
            publisher.publish(VOUCHER_TOPIC, honest_env.wire)
            out, err_bytes = waiting.communicate(timeout=90)
        finally:
            if waiting.poll() is None:
                waiting.kill()
        assert waiting.returncode == 0, err_bytes.decode(errors="replace")
        done = json.loads(out)
        assert done["claim_id"] == second.claim_id and done["state"] == "confirmed"
        assert done["amount"] == 1_000_000 and done["receipt"]["status"] == "confirmed"
        assert client.token_amount(owner_ata) == 1_000_000
        assert client.token_amount(vault) == vault_before - 1_000_000
        tx_id = Signature.from_string(done["signature"])
        landed = client.transaction(tx_id)
        assert landed is not None and landed.transaction.meta.err is None
        keys = list(landed.transaction.transaction.message.account_keys)
        assert keys[:2] == [COORDINATOR.pubkey(), spl_pubkey(DEV)]
        assert tx_id == decode_tx(honest.transaction).signatures[0]  # the treasury's: known at issue
        statuses = [
            (r.status, r.signature)
            for r in wait_until(
                lambda: (
                    len(receipts(collector, second.claim_id)) >= 2 and receipts(collector, second.claim_id)
                ),
                30,
                "submitted and confirmed receipts",
            )
        ]
        assert statuses == [("submitted", str(tx_id)), ("confirmed", str(tx_id))]

        code, status, err = cli(config, "status")
        assert code == 0, err
        assert status["source"] == "daemon"
        assert (status["earned"], status["paid"], status["outstanding"], status["claimable"]) == (
            1_000_000,
            1_000_000,
            0,
            0,
        )
        assert status["claim"]["state"] == "confirmed" and status["refused"] == {"wrong_destination": 1}

        # 3. Replays, and a voucher that forgets the payment the agent itself confirmed.
        publisher.publish(VOUCHER_TOPIC, honest_env.wire)
        publisher.publish(VOUCHER_TOPIC, voucher_env(tampered, 1).wire)
        wait_until(
            lambda: daemon.status().get("rejected_inbound", {}) == {"duplicate": 1, "replay": 1},
            30,
            "the redelivered voucher duplicate, the older one replay",
        )
        code, third, err = cli(config, "claim")
        assert code == 0 and third["new"] is True, err
        latest = client.latest_blockhash()
        forgetful = build(
            third["claim_id"],
            SETTLED,
            the_terms=terms(third["claim_id"], 1_000_000, mint=spl_pubkey(mint)),
            blockhash=latest.blockhash,
            last_valid_block_height=latest.last_valid_block_height,
            paid=0,
        )
        publisher.publish(VOUCHER_TOPIC, voucher_env(forgetful, 3).wire)
        got = wait_until(lambda: receipts(collector, third["claim_id"]), 30, "the refused receipt")
        assert [(r.status, r.reason) for r in got] == [("refused", "amount_too_high")]
        assert client.token_amount(owner_ata) == 1_000_000

        # 4. The next epoch; its voucher arrives expired: refused blockhash_expired, and a new
        # claim (new id) in its place.
        publish_root(publisher, NEXT)
        wait_until(lambda: (rewards_of(daemon).get("root") or {}).get("epoch") == 4, 30, "epoch 4 kept")
        code, fourth, err = cli(config, "claim")
        assert code == 0 and fourth["new"] is True, err
        stale = build(
            fourth["claim_id"],
            NEXT,
            the_terms=terms(fourth["claim_id"], 500_000, mint=spl_pubkey(mint)),
            paid=1_000_000,
            blockhash=latest.blockhash,
            last_valid_block_height=client.block_height() - 1,
        )
        publisher.publish(VOUCHER_TOPIC, voucher_env(stale, 4).wire)
        got = wait_until(lambda: receipts(collector, fourth["claim_id"]), 30, "the expired voucher's receipt")
        assert [(r.status, r.reason) for r in got] == [("refused", "blockhash_expired")]
        fifth = new_claim(collector, {claim.claim_id, second.claim_id, third["claim_id"], fourth["claim_id"]})
        code, record, err = cli(config, "status")
        assert record["claim"]["claim_id"] == fifth.claim_id and record["claim"]["why"] == "expired"

        # 5. A voucher whose blockhash the node does not know: signed, never lands, expires at its
        # last valid block height; the signature is not on chain, so a new claim follows.
        unknown_hash = Hash(bytes([77] * 32))
        lost = build(
            fifth.claim_id,
            NEXT,
            the_terms=terms(fifth.claim_id, 500_000, mint=spl_pubkey(mint)),
            paid=1_000_000,
            blockhash=unknown_hash,
            last_valid_block_height=client.block_height() + 20,
        )
        publisher.publish(VOUCHER_TOPIC, voucher_env(lost, 5).wire)
        got = wait_until(lambda: receipts(collector, fifth.claim_id), 30, "the lost voucher's receipt")
        lost_id = decode_tx(lost.transaction).signatures[0]
        assert [(r.status, r.reason, r.signature) for r in got] == [
            ("failed", "blockhash_expired", str(lost_id))
        ]
        assert client.status(lost_id) is None and client.token_amount(owner_ata) == 1_000_000
        seen = {claim.claim_id, second.claim_id, third["claim_id"], fourth["claim_id"], fifth.claim_id}
        sixth = new_claim(collector, seen)
        code, record, err = cli(config, "status")
        assert record["claim"]["claim_id"] == sixth.claim_id and record["claim"]["state"] == "sent"
        assert record["chain_errors"] == {}

        # 6. Signed, then every send fails at the RPC gateway and the daemon is killed -9. After
        # the restart it re-sends the transaction it signed (the same tx id) and refuses another
        # transaction for the same claim id (voucher_conflict); the claim is paid once.
        gate.blocked.add("sendTransaction")
        latest = client.latest_blockhash()
        signed = build(
            sixth.claim_id,
            NEXT,
            the_terms=terms(sixth.claim_id, 500_000, mint=spl_pubkey(mint)),
            paid=1_000_000,
            blockhash=latest.blockhash,
            last_valid_block_height=latest.last_valid_block_height,
        )
        publisher.publish(VOUCHER_TOPIC, voucher_env(signed, 6).wire)
        wait_until(
            lambda: (
                (rewards_of(daemon).get("claim") or {}).get("state") == "signed"
                and rewards_of(daemon).get("chain_errors", {}).get("rpc_unreachable")
            ),
            30,
            "the claim signed and its send failing at the gateway",
        )
        daemon.kill9()
        daemon.start()
        wait_until(lambda: daemon.status().get("pid") == daemon.pid, 90, "the restarted daemon's status")
        fresh = wait_until(
            lambda: (b := client.latest_blockhash()).blockhash != latest.blockhash and b,
            10,
            "a new blockhash",
        )
        other = build(
            sixth.claim_id,
            NEXT,
            the_terms=terms(sixth.claim_id, 500_000, mint=spl_pubkey(mint)),
            paid=1_000_000,
            blockhash=fresh.blockhash,
            last_valid_block_height=fresh.last_valid_block_height,
        )
        publisher.publish(VOUCHER_TOPIC, voucher_env(other, 7).wire)
        wait_until(lambda: receipts(collector, sixth.claim_id), 30, "the conflicting voucher's receipt")
        gate.blocked.clear()
        signed_id = decode_tx(signed.transaction).signatures[0]
        got = wait_until(
            lambda: len(receipts(collector, sixth.claim_id)) >= 3 and receipts(collector, sixth.claim_id),
            30,
            "submitted and confirmed after the restart",
        )
        assert [(r.status, r.reason, r.signature) for r in got] == [
            ("refused", "voucher_conflict", None),
            ("submitted", None, str(signed_id)),
            ("confirmed", None, str(signed_id)),
        ]
        assert client.token_amount(owner_ata) == 1_500_000
        assert client.status(decode_tx(other.transaction).signatures[0]) is None
        assert gate.refused["sendTransaction"] >= 3  # one send and its two retries, at least

        assert daemon.terminate() == 0, daemon.tail()
        code, offline, err = cli(config, "status")
        assert code == 0, err
        assert offline["source"] == "state file (the daemon is not running)"
        assert (offline["earned"], offline["paid"], offline["claimable"]) == (1_500_000, 1_500_000, 0)
        assert [r["status"] for r in offline["receipts"]] == [
            "refused",
            "submitted",
            "confirmed",
            "refused",
            "refused",
            "failed",
            "refused",
            "submitted",
            "confirmed",
        ]
        text = subprocess.run(
            [sys.executable, "-m", "agent", "rewards", "status", "--config", str(config)],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout.decode()
        for words in (
            "state file (the daemon is not running)",
            "epoch 4",
            "wrong_destination",
            "voucher_conflict",
        ):
            assert words in text, text
    finally:
        daemon.ensure_dead()
        publisher.close()
        collector.close()
        gate.stop()


def spl_pubkey(text: str) -> Any:
    from solders.pubkey import Pubkey

    return Pubkey.from_string(text)


def test_hostile_rpc_and_hostile_mqtt_are_named_counted_and_off_the_heartbeat_path(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    hostile = HostileRpc("stall", stall_s=10.0, oversized_bytes=5 * 1024 * 1024).start()
    mint = str(spl_pubkey("So11111111111111111111111111111111111111112"))
    config = write_config(
        tmp_path / "device",
        mosquitto,
        coordinator=str(COORDINATOR.pubkey()),
        owner_wallet=str(OWNER.pubkey()),
        extra=rewards_toml(hostile.url, mint, timeout_s=0.5, every_s=2),
    )
    collector = Collector(mosquitto, f"{PREFIX}/dev/{DEV}/+", client_id="hostile-collector")
    publisher = Publisher(mosquitto)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        online_with_root(daemon, publisher)
        # Nobody asks: the schedule claims (a root is there and nothing is proven yet).
        claim = new_claim(collector, set())
        wait_until(
            lambda: (rewards_of(daemon).get("claim") or {}).get("why") == "schedule",
            10,
            "the scheduled claim in status.json (rewritten every 2 s)",
        )
        honest = build(
            claim.claim_id, SETTLED, the_terms=terms(claim.claim_id, 1_000_000, mint=spl_pubkey(mint))
        )
        beats_before = daemon.status()["counters"]["heartbeat_emitted"]
        started = time.monotonic()
        publisher.publish(VOUCHER_TOPIC, voucher_env(honest, 1).wire)
        for mode, reason in (
            ("stall", "rpc_unreachable"),
            ("garbage", "rpc_error"),
            ("oversized", "rpc_oversized"),
        ):
            hostile.mode = mode
            wait_until(
                lambda reason=reason: rewards_of(daemon).get("chain_errors", {}).get(reason),
                30,
                f"{reason} counted",
            )
        # Hostile MQTT while the claimer is busy with the endpoint.
        rogue = coordinator_envelope("voucher", honest, signer=ROGUE, seq=50)
        publisher.publish(VOUCHER_TOPIC, rogue.wire)
        publisher.publish(VOUCHER_TOPIC, forged(voucher_env(honest, 51)))
        publisher.publish(VOUCHER_TOPIC, b"{" + b" " * 70_000 + b"}")
        publisher.publish(VOUCHER_TOPIC, b'{"kind": "voucher", "nope"')
        flood = 200
        for seq in range(100, 100 + flood):
            publisher.publish(
                VOUCHER_TOPIC, coordinator_envelope("voucher", honest, signer=ROGUE, seq=seq).wire
            )
        expected = {"untrusted_coordinator": 1 + flood, "bad_signature": 1, "oversized": 1, "malformed": 1}
        wait_until(lambda: daemon.status().get("rejected_inbound") == expected, 60, f"refusals {expected}")
        hostile.mode = "stall"
        time.sleep(3)
        elapsed = time.monotonic() - started
        status = daemon.status()
        beats = status["counters"]["heartbeat_emitted"] - beats_before
        rewards = status["rewards"]
        assert rewards["claim"]["state"] == "sent" and rewards["paid"] == 0
        # The schedule made no second claim while this one was outstanding.
        assert [c.claim_id for c in device_bodies(collector, "claim")] == [claim.claim_id]
        assert set(rewards["chain_errors"]) >= {"rpc_unreachable", "rpc_error", "rpc_oversized"}
        assert rewards["refused"] == {}
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.ensure_dead()
        publisher.close()
        collector.close()
        hostile.stop()
    # 1 s heartbeats: the schedule held while every RPC call stalled or failed (status.json is
    # written every 2 s, so up to two beats may not be counted in it yet).
    assert beats >= int(elapsed) - 3, (beats, elapsed)
