"""Helpers for the claim tests: a settled epoch written straight into a store, and a device-side
driver built from the claim contract (it checks what the contract says a device checks, signs with
the device key and submits through the real chain client)."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction

from agent.chain import spl
from agent.chain.client import ChainClient
from agent.chain.programs import (
    ASSOCIATED_TOKEN_PROGRAM_ID,
    MEMO_PROGRAM_ID,
    PACKET_DATA_SIZE,
    TOKEN_PROGRAM_ID,
)
from agent.coordinator.store import Store
from agent.protocol.envelope import verify_envelope
from agent.protocol.messages import Voucher
from agent.rewards.ledger import write_settlement
from agent.rewards.merkle import Leaf, ordered, root
from agent.rewards.settlement import Settlement
from agent.rewards.voucher import claim_memo, decode_tx, writable_accounts
from tests.support import reward_merkle_check


def settle_direct(store: Store, epoch: int, leaves: list[Leaf], settled_ms: int) -> Settlement:
    """Record a settlement of ``leaves`` (the allocation step is tested elsewhere)."""
    tree = ordered(leaves)
    total = sum(leaf.amount for leaf in tree)
    settlement = Settlement(epoch, root(tree).hex(), total, total, "0" * 64, tuple(tree), ())
    write_settlement(store, settlement, settled_ms)
    return settlement


def new_claim_id() -> str:
    return secrets.token_hex(16)


@dataclass
class Checked:
    voucher: Voucher
    tx: Transaction


class DeviceDriver:
    """Checks a voucher the way the contract says the agent does, then signs and submits it."""

    def __init__(self, keypair: Keypair, owner: str, mint: Pubkey, decimals: int, coordinator: str) -> None:
        self.keypair = keypair
        self.owner = owner
        self.mint = mint
        self.decimals = decimals
        self.coordinator = coordinator
        self.signed: dict[str, bytes] = {}  # claim id -> signed message bytes (one per claim id)

    def check(self, wire: bytes, root_hex: str) -> Checked:
        env = verify_envelope(wire, expected_signer=self.coordinator)
        assert env.kind == "voucher"
        voucher = env.body
        assert isinstance(voucher, Voucher)
        assert voucher.device == str(self.keypair.pubkey())
        tx = decode_tx(voucher.transaction)
        message = tx.message
        keys = message.account_keys
        programs = [keys[ix.program_id_index] for ix in message.instructions]
        assert programs == [ASSOCIATED_TOKEN_PROGRAM_ID, TOKEN_PROGRAM_ID, MEMO_PROGRAM_ID]
        assert keys[0] != self.keypair.pubkey()  # the device never pays the fee
        destination = spl.associated_token_address(Pubkey.from_string(self.owner), self.mint)
        transfer = message.instructions[1]
        data = bytes(transfer.data)
        assert data[0] == 12 and int.from_bytes(data[1:9], "little") == voucher.amount
        assert data[9] == self.decimals == voucher.decimals
        assert keys[transfer.accounts[1]] == self.mint and keys[transfer.accounts[2]] == destination
        assert bytes(message.instructions[2].data) == claim_memo(voucher.claim_id).encode()
        assert sorted(map(str, writable_accounts(message))) == sorted(
            map(str, [keys[0], keys[transfer.accounts[0]], destination])
        )
        assert voucher.amount <= voucher.cumulative - voucher.paid
        leaf = {
            "dev": voucher.device,
            "owner": voucher.owner,
            "epoch": voucher.epoch,
            "amount": voucher.epoch_amount,
            "cumulative": voucher.cumulative,
        }
        steps = [{"sibling": s.sibling, "side": "left" if s.left else "right"} for s in voucher.proof]
        assert reward_merkle_check.check_proof(root_hex, leaf, steps)
        assert len(bytes(tx)) <= PACKET_DATA_SIZE
        return Checked(voucher, tx)

    def sign(self, checked: Checked) -> Transaction:
        tx = checked.tx
        message = bytes(tx.message)
        seen = self.signed.setdefault(checked.voucher.claim_id, message)
        assert seen == message, "two different transactions for one claim id"
        tx.partial_sign([self.keypair], tx.message.recent_blockhash)
        tx.verify()
        return tx

    def pay(self, client: ChainClient, checked: Checked) -> Signature:
        tx = self.sign(checked)
        signature = client.send(tx)
        client.confirm(signature, checked.voucher.last_valid_block_height)
        return signature


def memo_and_signers(client: ChainClient, signature: Signature) -> tuple[str, list[str], list[str]]:
    """The landed transaction's memo text, its signer keys and its log lines (getTransaction)."""
    landed = client.transaction(signature)
    assert landed is not None
    tx = landed.transaction.transaction
    message = tx.message  # type: ignore[union-attr]
    keys = message.account_keys
    signers = [str(k) for k in keys[: message.header.num_required_signatures]]
    memos = [
        bytes(ix.data).decode() for ix in message.instructions if keys[ix.program_id_index] == MEMO_PROGRAM_ID
    ]
    assert len(memos) == 1
    meta = landed.transaction.meta
    assert meta is not None and meta.err is None
    return memos[0], signers, list(meta.log_messages or [])


def body_of(wire: bytes) -> dict[str, Any]:
    return dict(json.loads(wire)["body"])


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class GatedRpc:
    """A loopback HTTP proxy in front of a JSON-RPC endpoint that holds every request while closed.

    The kill test closes it so the daemon cannot submit its signed voucher until the coordinator
    that issued it has been SIGKILLed: the order of events is fixed, not raced.
    """

    def __init__(self, upstream: str) -> None:
        import http.server
        import threading
        import urllib.request

        self.upstream = upstream
        self.open = threading.Event()
        self.open.set()
        self.held = 0
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not gate.open.is_set():
                    gate.held += 1
                    gate.open.wait(60)
                request = urllib.request.Request(
                    gate.upstream, data=body, headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=30) as answer:
                    data = answer.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.open.set()
        self.server.shutdown()
        self.server.server_close()
