"""Claims end to end: the real daemon, the real coordinator, Mosquitto and the localnet.

`python -m agent run` (owner wallet and ``[rewards]`` set, claims only when asked over the control
socket) heartbeats against `python -m agent coordinator run` (1 s slots, 5 s epochs, a ``[payout]``
desk on the localnet).  Epoch E is settled with the real CLI, which publishes the signed
``reward_root`` retained; the daemon follows it, claims, checks the voucher, signs, submits,
confirms and sends its receipt; the coordinator looks the signature up on chain and marks it paid.
Then epoch E+1: the daemon's RPC goes through a gate held closed, the coordinator is SIGKILLed
(by pid) once the daemon holds the voucher (held at the gate), the gate opens, the daemon pays,
and the restarted coordinator reconciles from chain state.  Then epoch E+2: the coordinator's
connection to the broker (through a relay) is held, so the voucher it commits never reaches the
broker; it is SIGKILLed, and the restarted coordinator sends the stored voucher again, byte for
byte, and the daemon pays it.  Nothing is ever paid twice, nothing is lost.

Every step waits for an event (a row, a counter, a log line, a chain status), never for a fixed
time, and a voucher's blockhash lives 60 s (1200 slots of 50 ms): the claim path of a loaded
2-core machine stays well inside it, so the replay below meets ``already_processed``, not expiry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from solders.pubkey import Pubkey
from solders.signature import Signature

from agent.chain import spl
from agent.chain.bootstrap import bootstrap
from agent.chain.client import ChainClient
from agent.chain.programs import PACKET_DATA_SIZE
from agent.coordinator.store import Store
from agent.device.control_client import ControlClient
from agent.device.control_protocol import socket_path
from agent.errors import ChainError
from agent.fleet.mqtt_publish import BrokerSession
from agent.protocol.envelope import verify_envelope
from agent.protocol.topics import Topics
from agent.rewards import vouchers
from agent.rewards.ledger import load_settlement
from agent.rewards.roots import recorded
from agent.rewards.voucher import claim_memo, decode_tx
from agent.transport.settings import MqttSettings
from tests.support import daemon_rig
from tests.support.claims import GatedRpc, memo_and_signers
from tests.support.coordinator import COORD, OWNER, CoordinatorProcess, enroll_direct, run_cli, write_config
from tests.support.localnet import Localnet
from tests.support.mosquitto import MosquittoBroker
from tests.support.tcp_relay import TcpRelay

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]  # 1 s slots: timing-sensitive
SLOT_MS = 1000
EPOCH_MS = 5 * SLOT_MS
SIGNER = str(COORD.pubkey())
POOL = 1_000_000
VALIDITY_SLOTS = 1200  # 60 s of 50 ms slots


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def wait(predicate: Callable[[], object], timeout: float, what: str, context: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{context()}"
        time.sleep(0.05)


def _coordinator_config(folder: Path, broker_port: int, rpc: str, bootstrap_state: Path) -> Path:
    config = write_config(folder, broker_port=broker_port, slot_ms=SLOT_MS, epoch_ms=EPOCH_MS, liveness_s=1.0)
    text = config.read_text(encoding="utf-8")
    text += f"""
[rewards]
pool_per_epoch = {POOL}
uptime_weight_bp = 10000
work_weight_bp = 0
challenge_weight_bp = 0
min_uptime_bp = 0

[payout]
rpc_url = "{rpc}"
bootstrap = "{bootstrap_state}"
reconcile_s = 0.5
"""
    config.write_text(text, encoding="utf-8")
    return config


def _daemon_config(folder: Path, broker: MosquittoBroker, rpc: str, mint: str) -> Path:
    extra = f'[rewards]\nrpc_url = "{rpc}"\nmint = "{mint}"\ndecimals = 6\nclaim_every_s = 0\n'
    return daemon_rig.write_config(folder, broker, coordinator=SIGNER, owner_wallet=OWNER, extra=extra)


def _settle(config: Path, epoch: int, *flags: str) -> dict[str, object]:
    done = run_cli("rewards", "settle", "--epoch", str(epoch), "--config", str(config), "--json", *flags)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_a_device_claims_its_settled_reward_and_is_never_paid_twice(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    net = Localnet(slot_ms=50, validity_slots=VALIDITY_SLOTS, log_path=tmp_path / "localnet.log").start()
    gate = GatedRpc(net.url)
    relay = TcpRelay(mosquitto.host, mosquitto.port)  # the coordinator's way to the broker
    client = ChainClient(net.url, poll_s=0.05, confirm_timeout_s=30)
    state = tmp_path / "coord" / "treasury.bootstrap.json"
    state.parent.mkdir(parents=True)
    minted = bootstrap(client, COORD, state_path=state, decimals=6, supply=10**12)
    mint = Pubkey.from_string(minted.mint)
    destination = spl.associated_token_address(Pubkey.from_string(OWNER), mint)
    config = _coordinator_config(tmp_path / "coord", relay.port, net.url, state)
    store = Store.open(sqlite_path=tmp_path / "coord" / "coordinator.sqlite3")
    enroll_direct(store, daemon_rig.DEVICE, profile="generic-x86_64")
    dev = daemon_rig.DEV
    coordinator = CoordinatorProcess(config, tmp_path / "coordinator.log")
    device_config = _daemon_config(tmp_path / "device", mosquitto, gate.url, minted.mint)
    daemon = daemon_rig.DaemonProcess(device_config, tmp_path / "daemon.log")
    control = ControlClient(socket_path(tmp_path / "device" / "state"), timeout_s=10)

    def context() -> str:
        return f"coordinator:\n{coordinator.log()[-5000:]}\ndaemon:\n{daemon.tail(60)}"

    def balance() -> int:
        return client.token_amount(destination) or 0

    def roots_seen() -> int:
        return int(control.call("rewards")["counters"].get("reward_roots_accepted", 0))

    def vouchers_admitted() -> int:
        return int(control.call("rewards")["counters"].get("vouchers_admitted", 0))

    def claim_until_final() -> dict[str, object]:
        claim_id = str(control.call("claim")["claim_id"])
        final: dict[str, object] = {}

        def done() -> bool:
            final.update(control.call("claim_status", claim_id=claim_id))
            return bool(final["final"])

        wait(done, 60, f"claim {claim_id} to end", context)
        return final

    try:
        coordinator.start()
        daemon.start()
        wait(
            lambda: store.one(
                "SELECT COUNT(*) FROM messages WHERE dev = ? AND kind = 'heartbeat' AND accepted = 1", (dev,)
            )[0],  # type: ignore[index]
            60,
            "an accepted heartbeat",
            context,
        )
        epoch = now_ms() // EPOCH_MS + 1  # a whole epoch with both up
        wait(lambda: now_ms() > (epoch + 1) * EPOCH_MS + 500, 20, f"the end of epoch {epoch}", context)

        # --- phase 1: settle (root published, retained, same bytes twice), claim, paid once -------
        first = _settle(config, epoch)
        leaf = next(d for d in first["devices"] if d["dev"] == dev)  # type: ignore[attr-defined]
        assert leaf["amount"] == POOL and first["published"]["mqtt"] == "published"  # type: ignore[index]
        again = _settle(config, epoch, "--memo")
        assert again["created"] is False and again["published"]["mqtt"] == "unchanged"  # type: ignore[index]
        memo_sig = str(again["published"]["memo_signature"])  # type: ignore[index]
        assert again["published"]["memo"] == "sent"  # type: ignore[index]
        root_memo, root_signers, _ = memo_and_signers(client, Signature.from_string(memo_sig))
        assert (root_memo, root_signers) == (f"edgeproof:root:{epoch}:{first['root']}", [SIGNER])
        third = _settle(config, epoch, "--memo")
        assert third["published"] == {"mqtt": "unchanged", "memo": "unchanged", "memo_signature": memo_sig}
        held = recorded(store, epoch)
        assert held is not None
        with BrokerSession(MqttSettings(host=mosquitto.host, port=mosquitto.port)) as session:
            assert session.retained(Topics().reward_root()) == held.raw
        env = verify_envelope(held.raw, expected_signer=SIGNER)
        assert (env.kind, env.body.root, env.seq) == ("reward_root", first["root"], 0)  # type: ignore[attr-defined]
        wait(lambda: roots_seen() >= 1, 30, "the daemon to accept the root", context)
        before = balance()
        paid = claim_until_final()
        assert paid["state"] == "confirmed", paid
        claim_id = str(paid["claim_id"])
        wait(
            lambda: (row := vouchers.by_claim(store, claim_id)) is not None and row.state == "paid",
            30,
            "the coordinator to mark the voucher paid",
            context,
        )
        row = vouchers.by_claim(store, claim_id)
        assert row is not None and row.amount == POOL
        assert balance() - before == POOL
        signature = Signature.from_string(row.signature)
        memo, signers, _ = memo_and_signers(client, signature)
        assert (memo, signers) == (claim_memo(claim_id), [SIGNER, dev])
        landed = client.transaction(signature)
        assert landed is not None
        tx = landed.transaction.transaction
        assert len(bytes(tx)) <= PACKET_DATA_SIZE
        voucher_env = verify_envelope(row.raw, expected_signer=SIGNER)
        assert len(bytes(decode_tx(voucher_env.body.transaction))) <= PACKET_DATA_SIZE  # type: ignore[attr-defined]
        # Replaying the confirmed transaction pays nothing (its blockhash still valid: refused as
        # already processed, not as expired).
        assert client.block_height() <= row.last_valid_block_height
        with pytest.raises(ChainError) as replay:
            client.send(tx)  # type: ignore[arg-type]
        assert replay.value.reason == "already_processed"
        assert balance() - before == POOL
        # Claiming again: nothing is left, said by name.
        empty = claim_until_final()
        assert (empty["state"], empty["reason"]) == ("rejected", "nothing_claimable"), empty

        # --- phase 2: epoch E+1, coordinator SIGKILLed between voucher and receipt --------------
        wait(lambda: now_ms() > (epoch + 2) * EPOCH_MS + 500, 20, f"the end of epoch {epoch + 1}", context)
        second = _settle(config, epoch + 1)
        leaf2 = next(d for d in second["devices"] if d["dev"] == dev)  # type: ignore[attr-defined]
        assert leaf2["cumulative"] == 2 * POOL
        wait(lambda: roots_seen() >= 2, 30, "the daemon to accept the second root", context)
        gate.open.clear()
        claim_id2 = str(control.call("claim")["claim_id"])
        wait(lambda: vouchers.by_claim(store, claim_id2) is not None, 30, "the second voucher", context)
        # The row commits before the coordinator publishes the voucher: a kill right now could land
        # before the publish, and the daemon would get the voucher only from the restarted
        # coordinator.  So the kill waits until the daemon holds the voucher and is held at the gate.
        wait(lambda: vouchers_admitted() >= 2, 30, "the daemon to admit the second voucher", context)
        wait(lambda: gate.held >= 1, 30, "the daemon to reach for the chain (held at the gate)", context)
        coordinator.kill()  # SIGKILL by pid, before any receipt can exist: the daemon cannot submit
        issued = vouchers.by_claim(store, claim_id2)
        assert issued is not None and issued.state == "outstanding" and issued.amount == POOL
        assert balance() - before == POOL
        gate.open.set()
        sig2 = Signature.from_string(issued.signature)
        wait(lambda: client.status(sig2) is not None, 60, "the daemon to land the second claim", context)
        logged = len(coordinator.log())
        coordinator.start()
        wait(
            lambda: (r := vouchers.by_claim(store, claim_id2)) is not None and r.state == "paid",
            30,
            "the restarted coordinator to reconcile the voucher as paid",
            context,
        )
        restarted = coordinator.log()[logged:]
        assert "voucher_paid" in restarted and claim_id2 in restarted, restarted[-3000:]
        wait(lambda: control.call("claim_status", claim_id=claim_id2)["final"], 60, "claim 2 final", context)
        assert balance() - before == 2 * POOL
        third = claim_until_final()
        assert (third["state"], third["reason"]) == ("rejected", "nothing_claimable"), third
        assert balance() - before == 2 * POOL
        paid_rows = store.rows("SELECT amount FROM vouchers WHERE dev = ? AND state = 'paid'", (dev,))
        assert sorted(int(r[0]) for r in paid_rows) == [POOL, POOL]
        stored = load_settlement(store, epoch + 1)
        assert stored is not None and stored.root == second["root"]

        # --- phase 3: through a whole epoch with the restarted coordinator; its voucher never published
        epoch3 = now_ms() // EPOCH_MS + 1
        wait(lambda: now_ms() > (epoch3 + 1) * EPOCH_MS + 500, 20, f"the end of epoch {epoch3}", context)
        settled = [_settle(config, e) for e in range(epoch + 2, epoch3 + 1)]  # in order, each once
        leaf3 = next(d for d in settled[-1]["devices"] if d["dev"] == dev)  # type: ignore[attr-defined]
        owed = int(leaf3["cumulative"]) - 2 * POOL
        assert owed >= POOL and leaf3["amount"] == POOL, leaf3
        wait(lambda: roots_seen() >= 2 + len(settled), 30, "the daemon to accept the newest root", context)
        admitted = vouchers_admitted()
        relay.hold.set()  # from now on nothing the coordinator writes reaches the broker
        claim_id3 = str(control.call("claim")["claim_id"])
        wait(lambda: vouchers.by_claim(store, claim_id3) is not None, 30, "the third voucher", context)
        wait(lambda: relay.withheld > 0, 30, "the coordinator's publish (withheld by the relay)", context)
        coordinator.kill()
        relay.sever()  # what was withheld (the voucher, the claim's PUBACK) is gone with the process
        relay.hold.clear()
        issued3 = vouchers.by_claim(store, claim_id3)
        assert issued3 is not None and issued3.state == "outstanding" and issued3.amount == owed
        # The broker never had the voucher: the daemon has not got it and is still asking.
        assert vouchers_admitted() == admitted
        assert control.call("claim_status", claim_id=claim_id3)["state"] == "sent"
        logged = len(coordinator.log())
        coordinator.start()
        wait(lambda: control.call("claim_status", claim_id=claim_id3)["final"], 60, "claim 3 final", context)
        done3 = control.call("claim_status", claim_id=claim_id3)
        assert (done3["state"], done3["signature"]) == ("confirmed", issued3.signature), done3
        assert vouchers_admitted() == admitted + 1
        wait(
            lambda: (r := vouchers.by_claim(store, claim_id3)) is not None and r.state == "paid",
            30,
            "the restarted coordinator to mark the resent voucher paid",
            context,
        )
        restarted = coordinator.log()[logged:]
        assert "vouchers_resent count=1" in restarted, restarted[-3000:]
        assert balance() - before == 2 * POOL + owed
        paid_rows = store.rows("SELECT amount FROM vouchers WHERE dev = ? AND state = 'paid'", (dev,))
        assert sorted(int(r[0]) for r in paid_rows) == sorted([POOL, POOL, owed])
        assert coordinator.terminate() == 0, context()
        assert daemon.terminate() == 0, context()
    finally:
        daemon.ensure_dead()
        coordinator.kill()
        gate.close()
        relay.close()
        client.close()
        store.close()
        net.stop()
