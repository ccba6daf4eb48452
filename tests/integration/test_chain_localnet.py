"""The local ledger through solana-py's real client: a `python -m agent chain localnet` subprocess.

One module-wide ledger (50 ms slots, blockhashes valid 60 slots = 3 s) serves most tests; the
snapshot test runs its own. Keys are deterministic (``Keypair.from_seed``).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from solana.rpc.async_api import AsyncClient
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message, MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.token.state import TokenAccount
from solders.transaction import Transaction, VersionedTransaction

from agent.chain import b58, spl
from agent.chain.bootstrap import bootstrap
from agent.chain.client import ChainClient
from agent.chain.programs import MINT_LEN, PACKET_DATA_SIZE, TOKEN_ACCOUNT_LEN, TOKEN_PROGRAM_ID
from agent.errors import BlockhashExpiredError, ChainError, ChainUnavailableError
from tests.support.localnet import ROOT, Localnet

pytestmark = pytest.mark.integration

SLOT_MS = 50
VALIDITY_SLOTS = 60
SOL = 1_000_000_000


def key(n: int) -> Keypair:
    return Keypair.from_seed(bytes([n]) * 32)


@pytest.fixture(scope="module")
def localnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Localnet]:
    log = tmp_path_factory.mktemp("localnet") / "localnet.log"
    net = Localnet(slot_ms=SLOT_MS, validity_slots=VALIDITY_SLOTS, log_path=log).start()
    try:
        yield net
    finally:
        assert net.stop() == 0
        assert "localnet_stopped" in log.read_text()


@pytest.fixture
def client(localnet: Localnet) -> Iterator[ChainClient]:
    with ChainClient(localnet.url, poll_s=0.05, confirm_timeout_s=30) as chain:
        yield chain


def rpc(url: str, body: bytes | Any, *, method: str = "POST") -> tuple[int, Any]:
    """One raw HTTP request; (status, parsed JSON or text)."""
    parts = urllib.parse.urlsplit(url)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        if method == "POST":
            conn.request("POST", "/", body=data, headers={"Content-Type": "application/json"})
        else:
            conn.request(method, "/health")
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw) if raw else None
    except ValueError:
        return resp.status, raw.decode()


def call(url: str, method: str, *params: Any) -> Any:
    return rpc(url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})[1]


def funded(client: ChainClient, n: int, sol: int = 5) -> Keypair:
    account = key(n)
    signature = client.airdrop(account.pubkey(), sol * SOL)
    client.confirm(signature, client.latest_blockhash().last_valid_block_height)
    return account


def make_mint(
    client: ChainClient, payer: Keypair, mint: Keypair, *, holders: list[Pubkey], supply: int
) -> None:
    """A 6-decimal mint with ``payer`` as authority, ATAs for ``holders``, ``supply`` in the first one."""
    rent = client.rent_exempt_minimum(MINT_LEN)
    ixs = spl.create_mint(
        payer=payer.pubkey(), mint=mint.pubkey(), authority=payer.pubkey(), decimals=6, rent_lamports=rent
    )
    ixs += [spl.create_ata_idempotent(payer=payer.pubkey(), owner=h, mint=mint.pubkey()) for h in holders]
    first = spl.associated_token_address(holders[0], mint.pubkey())
    ixs.append(
        spl.mint_to(
            mint=mint.pubkey(), destination=first, authority=payer.pubkey(), amount=supply, decimals=6
        )
    )
    client.send_and_confirm(ixs, [payer, mint])


def test_reads_and_airdrop_through_solana_py(client: ChainClient, localnet: Localnet) -> None:
    assert client.healthy()
    first = client.slot()
    time.sleep(6 * SLOT_MS / 1000)
    later = client.slot()
    assert later >= first + 3  # slots move with wall time
    assert abs(client.block_height() - later) <= 2  # no skipped slots: height follows the slot
    latest = client.latest_blockhash()
    assert latest.last_valid_block_height - client.block_height() in range(
        VALIDITY_SLOTS - 5, VALIDITY_SLOTS + 1
    )
    assert client.is_blockhash_valid(latest.blockhash)
    assert not client.is_blockhash_valid(Hash.default())
    assert client.rent_exempt_minimum(TOKEN_ACCOUNT_LEN) == 2_039_280
    assert client.rent_exempt_minimum(0) == 890_880

    nobody = key(200).pubkey()
    assert client.balance(nobody) == 0
    assert client.account(nobody) is None
    signature = client.airdrop(nobody, 2 * SOL)
    client.confirm(signature, latest.last_valid_block_height + 100)
    status = client.status(signature)
    assert status is not None and status.err is None and status.slot >= later
    assert str(status.confirmation_status) == "TransactionConfirmationStatus.Finalized"
    assert client.balance(nobody) == 2 * SOL
    account = client.account(nobody)
    assert (
        account is not None
        and account.lamports == 2 * SOL
        and str(account.owner) == "11111111111111111111111111111111"
    )
    # A second identical request is another transaction (the faucet numbers them).
    assert client.airdrop(nobody, 2 * SOL) != signature
    # Every answer carries context.slot.
    doc = call(localnet.url, "getBalance", str(nobody))
    assert (
        set(doc["result"]["context"]) == {"apiVersion", "slot"} and doc["result"]["context"]["slot"] >= later
    )
    assert call(localnet.url, "getHealth") == {"jsonrpc": "2.0", "result": "ok", "id": 1}


def test_spl_transfer_checked_between_two_atas(client: ChainClient, localnet: Localnet) -> None:
    payer, mint, other = funded(client, 1), key(2), key(3)
    make_mint(client, payer, mint, holders=[payer.pubkey(), other.pubkey()], supply=1_000_000)
    source = spl.associated_token_address(payer.pubkey(), mint.pubkey())
    destination = spl.associated_token_address(other.pubkey(), mint.pubkey())
    before = client.balance(payer.pubkey())

    ixs = [
        spl.transfer_checked(
            source=source,
            mint=mint.pubkey(),
            destination=destination,
            owner=payer.pubkey(),
            amount=250_000,
            decimals=6,
        ),
        spl.memo("claim test-1", signers=[payer.pubkey()]),
    ]
    signature = client.send_and_confirm(ixs, [payer])
    assert client.token_amount(source) == 750_000
    assert client.token_amount(destination) == 250_000
    assert client.balance(payer.pubkey()) == before - 5_000  # one signature's fee
    assert client.token_accounts(other.pubkey(), mint.pubkey()) == [destination]
    assert client.owned_token_accounts(payer.pubkey()) == [source]

    landed = client.transaction(signature)
    assert landed is not None and landed.slot > 0 and landed.block_time is not None
    meta = landed.transaction.meta
    assert meta is not None and meta.err is None and meta.fee == 5_000
    post = {str(b.owner): b.ui_token_amount.amount for b in meta.post_token_balances or []}
    pre = {str(b.owner): b.ui_token_amount.amount for b in meta.pre_token_balances or []}
    assert pre == {str(payer.pubkey()): "1000000", str(other.pubkey()): "0"}
    assert post == {str(payer.pubkey()): "750000", str(other.pubkey()): "250000"}
    assert 'Program log: Memo (len 12): "claim test-1"' in (meta.log_messages or []) or any(
        "claim test-1" in line for line in meta.log_messages or []
    )
    tx = landed.transaction.transaction
    assert isinstance(tx, VersionedTransaction) and tx.signatures[0] == signature
    assert len(bytes(tx)) <= PACKET_DATA_SIZE

    async def through_solana_py() -> tuple[Any, Any, Any]:
        async with AsyncClient(localnet.url) as raw:
            as_json = await raw.get_transaction(signature)  # the default "json" encoding
            balance = await raw.get_token_account_balance(destination)
            parsed = await raw.get_account_info_json_parsed(destination)
            return as_json.value, balance.value, parsed.value

    as_json, balance, parsed = asyncio.run(through_solana_py())
    assert as_json.slot == landed.slot
    assert balance.amount == "250000" and balance.decimals == 6 and balance.ui_amount_string == "0.25"
    info = parsed.data.parsed["info"]
    assert info["owner"] == str(other.pubkey()) and info["mint"] == str(mint.pubkey())
    assert info["tokenAmount"]["amount"] == "250000" and info["state"] == "initialized"
    # base58 (the method's default encoding) only for short data, as a validator; base64 always.
    assert call(localnet.url, "getAccountInfo", str(destination))["error"]["message"] == (
        "Encoded binary (base 58) data should be less than 128 bytes, please use Base64 encoding."
    )
    raw = call(localnet.url, "getAccountInfo", str(destination), {"encoding": "base64"})["result"]["value"]
    assert raw["owner"] == str(TOKEN_PROGRAM_ID) and raw["space"] == TOKEN_ACCOUNT_LEN
    assert len(base64.b64decode(raw["data"][0])) == TOKEN_ACCOUNT_LEN
    # Not a token account / no account: the validator's -32602 texts.
    assert call(localnet.url, "getTokenAccountBalance", str(payer.pubkey()))["error"] == {
        "code": -32602,
        "message": "Invalid param: not a Token account",
    }
    assert call(localnet.url, "getTokenAccountBalance", str(key(201).pubkey()))["error"]["message"] == (
        "Invalid param: could not find account"
    )


def _signed(payer: Keypair, ixs: list[Any], blockhash: Hash) -> Transaction:
    return Transaction([payer], Message(ixs, payer.pubkey()), blockhash)


def test_transaction_errors_are_shaped_as_a_node_shapes_them(client: ChainClient, localnet: Localnet) -> None:
    payer, mint, other = funded(client, 4), key(5), key(6)
    make_mint(client, payer, mint, holders=[payer.pubkey(), other.pubkey()], supply=100)
    source = spl.associated_token_address(payer.pubkey(), mint.pubkey())
    destination = spl.associated_token_address(other.pubkey(), mint.pubkey())
    too_much = spl.transfer_checked(
        source=source,
        mint=mint.pubkey(),
        destination=destination,
        owner=payer.pubkey(),
        amount=101,
        decimals=6,
    )
    latest = client.latest_blockhash()
    failing = _signed(payer, [too_much], latest.blockhash)

    # Preflight: -32002 with the simulation's err and logs.
    with pytest.raises(ChainError) as caught:
        client.send(failing)
    assert caught.value.reason == "simulation_failed"
    assert caught.value.err == {"InstructionError": [0, {"Custom": 1}]}
    assert "Program log: Error: insufficient funds" in caught.value.logs
    wire = base64.b64encode(bytes(failing)).decode()
    error = call(localnet.url, "sendTransaction", wire, {"encoding": "base64"})["error"]
    assert error["code"] == -32002
    assert (
        error["message"]
        == "Transaction simulation failed: Error processing Instruction 0: custom program error: 0x1"
    )
    assert error["data"]["err"] == {"InstructionError": [0, {"Custom": 1}]}
    assert error["data"]["unitsConsumed"] > 0 and error["data"]["logs"][-1].endswith(
        "custom program error: 0x1"
    )
    # simulateTransaction reports the same without raising; nothing landed.
    simulated = client.simulate(VersionedTransaction.from_legacy(failing))
    assert simulated.err is not None and "insufficient funds" in " ".join(simulated.logs or [])
    assert client.status(failing.signatures[0]) is None

    # skipPreflight: it lands, fails, and the fee is charged.
    before = client.balance(payer.pubkey())
    signature = client.send(failing, skip_preflight=True)
    with pytest.raises(ChainError) as failed:
        client.confirm(signature, latest.last_valid_block_height)
    assert failed.value.reason == "transaction_failed"
    assert failed.value.err == {"InstructionError": [0, {"Custom": 1}]}
    assert client.balance(payer.pubkey()) == before - 5_000
    assert client.token_amount(destination) == 0

    # The same signed transaction again: already processed.
    ok = _signed(payer, [spl.memo("once", signers=[payer.pubkey()])], latest.blockhash)
    client.confirm(client.send(ok), latest.last_valid_block_height)
    with pytest.raises(ChainError) as again:
        client.send(ok)
    assert again.value.reason == "already_processed"

    # A signature that does not verify: -32003.
    forged = Transaction.populate(ok.message, [Signature(bytes(64))])
    with pytest.raises(ChainError) as forged_error:
        client.send(forged)
    assert forged_error.value.reason == "signature_failure"
    assert call(
        localnet.url, "sendTransaction", base64.b64encode(bytes(forged)).decode(), {"encoding": "base64"}
    )["error"] == {"code": -32003, "message": "Transaction signature verification failure"}

    # base58 wire encoding is the default: a good one lands, a garbled one is -32602.
    plain = _signed(payer, [spl.memo("base58", signers=[payer.pubkey()])], latest.blockhash)
    assert call(localnet.url, "sendTransaction", b58.encode(bytes(plain)))["result"] == str(
        plain.signatures[0]
    )
    client.confirm(plain.signatures[0], latest.last_valid_block_height)
    assert call(localnet.url, "sendTransaction", "0OIl")["error"]["code"] == -32602

    # Over 1232 bytes: refused before anything runs.
    big = _signed(payer, [spl.memo("x" * 200, signers=[]) for _ in range(6)], latest.blockhash)
    error = call(
        localnet.url, "sendTransaction", base64.b64encode(bytes(big)).decode(), {"encoding": "base64"}
    )["error"]
    assert error["code"] == -32602 and "too large" in error["message"]

    # A v0 transaction: getTransaction wants maxSupportedTransactionVersion, as a validator does.
    message = MessageV0.try_compile(
        payer.pubkey(), [spl.memo("v0", signers=[payer.pubkey()])], [], latest.blockhash
    )
    v0 = VersionedTransaction(message, [payer])
    client.confirm(client.send(v0), latest.last_valid_block_height)
    error = call(localnet.url, "getTransaction", str(v0.signatures[0]), {"encoding": "json"})["error"]
    assert error["code"] == -32015 and '"maxSupportedTransactionVersion": 0' in error["message"]
    landed = client.transaction(v0.signatures[0])
    assert landed is not None and landed.transaction.version == 0
    assert call(localnet.url, "getTransaction", str(Signature(bytes(64))))["result"] is None


def test_blockhash_expiry_is_real(client: ChainClient, localnet: Localnet) -> None:
    payer = funded(client, 7)
    latest = client.latest_blockhash()
    stale = _signed(
        payer,
        [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=key(8).pubkey(), lamports=SOL))],
        latest.blockhash,
    )
    deadline = time.monotonic() + 30
    while client.is_blockhash_valid(latest.blockhash):
        assert time.monotonic() < deadline, "the blockhash never expired"
        time.sleep(0.1)
    assert client.block_height() > latest.last_valid_block_height
    # Preflight refuses it as a validator does ...
    with pytest.raises(ChainError) as caught:
        client.send(stale)
    assert caught.value.reason == "blockhash_not_found"
    error = call(
        localnet.url, "sendTransaction", base64.b64encode(bytes(stale)).decode(), {"encoding": "base64"}
    )["error"]
    assert (
        error["code"] == -32002 and error["message"] == "Transaction simulation failed: Blockhash not found"
    )
    assert error["data"]["err"] == "BlockhashNotFound"
    simulated = call(
        localnet.url, "simulateTransaction", base64.b64encode(bytes(stale)).decode(), {"encoding": "base64"}
    )
    assert simulated["result"]["value"]["err"] == "BlockhashNotFound"
    # ... and without preflight it is accepted for sending but never lands.
    signature = client.send(stale, skip_preflight=True)
    assert signature == stale.signatures[0]
    with pytest.raises(BlockhashExpiredError) as expired:
        client.confirm(signature, latest.last_valid_block_height)
    assert expired.value.reason == "blockhash_expired"
    assert client.status(signature) is None and client.balance(key(8).pubkey()) == 0
    # replaceRecentBlockhash simulates it against the current one.
    replaced = call(
        localnet.url,
        "simulateTransaction",
        base64.b64encode(bytes(stale)).decode(),
        {"encoding": "base64", "replaceRecentBlockhash": True},
    )["result"]["value"]
    assert replaced["err"] is None and replaced["replacementBlockhash"]["blockhash"] != str(latest.blockhash)


def test_hostile_requests_get_json_rpc_errors(localnet: Localnet, client: ChainClient) -> None:
    url = localnet.url
    assert rpc(url, b"{not json") == (
        200,
        {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
    )
    assert rpc(url, b"\xff\xfe")[1]["error"]["code"] == -32700
    assert rpc(url, b'{"jsonrpc":"2.0","id":1,"method":"getSlot","x":NaN}')[1]["error"]["code"] == -32700
    status, doc = rpc(url, b'{"jsonrpc":"2.0","id":1,"method":"getSlot","params":["' + b"a" * 60_000 + b'"]}')
    assert status == 413 and doc["error"] == {
        "code": -32600,
        "message": "Invalid request: body of 60057 bytes exceeds 51200",
    }
    assert call(url, "getBlockProduction")["error"] == {"code": -32601, "message": "Method not found"}
    assert call(url, "getBalance", "not-a-key")["error"] == {
        "code": -32602,
        "message": "Invalid param: Invalid",
    }
    assert call(url, "getBalance")["error"]["message"] == "Invalid params: expected 1 to 2 parameters, got 0"
    assert call(url, "getMinimumBalanceForRentExemption", -1)["error"]["code"] == -32602
    assert call(url, "getSlot", {"commitment": "sometime"})["error"]["code"] == -32602
    assert (
        rpc(url, {"jsonrpc": "2.0", "id": 1, "method": "getSlot", "params": {"a": 1}})[1]["error"]["code"]
        == -32602
    )
    assert rpc(url, {"jsonrpc": "1.0", "id": 7, "method": "getSlot"})[1]["error"] == {
        "code": -32600,
        "message": "Invalid request",
    }
    assert rpc(url, [1])[1] == [
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid request"}, "id": None}
    ]
    assert rpc(url, [])[1]["error"]["code"] == -32600
    assert (
        rpc(url, [{"jsonrpc": "2.0", "id": i, "method": "getSlot"} for i in range(101)])[1]["error"]["code"]
        == -32600
    )
    status, batch = rpc(
        url,
        [
            {"jsonrpc": "2.0", "id": 1, "method": "getHealth"},
            {"jsonrpc": "2.0", "id": "b", "method": "nope"},
            {"jsonrpc": "2.0", "method": "getSlot"},  # a notification: no answer
        ],
    )
    assert status == 200 and [item["id"] for item in batch] == [1, "b"]
    assert batch[0]["result"] == "ok" and batch[1]["error"]["code"] == -32601
    # A long base58 payload is refused by its length before any (quadratic) decoding.
    started = time.monotonic()
    error = call(url, "sendTransaction", "2" * 40_000)["error"]
    assert (
        error["code"] == -32602 and "too large: 40000 bytes (max: encoded/raw 1683/1232)" in error["message"]
    )
    assert time.monotonic() - started < 2
    assert rpc(url, b"", method="GET") == (200, "ok")
    # Still serving, through solana-py too.
    assert client.healthy() and client.slot() > 0


class _Flaky(ThreadingHTTPServer):
    """A proxy in front of the ledger that fails on purpose: 503s, lost answers, stalls."""

    daemon_threads = True
    failures_left = 0  # answer 503 without forwarding
    lost_answers = 0  # forward, then answer 503 (the node acted, the client never heard)
    stall_s = 0.0
    target = ""


class _FlakyHandler(BaseHTTPRequestHandler):
    server: _Flaky

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.server.stall_s)
        if self.server.failures_left > 0:
            self.server.failures_left -= 1
            status, data = 503, b"busy"
        elif self.server.lost_answers > 0:
            self.server.lost_answers -= 1
            rpc(self.server.target, body)
            status, data = 503, b"lost"
        else:
            status, doc = rpc(self.server.target, body)
            data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_client_retries_with_backoff_then_reports_unreachable(localnet: Localnet) -> None:
    flaky = _Flaky(("127.0.0.1", 0), _FlakyHandler)
    flaky.target = localnet.url
    flaky.failures_left = 2
    thread = threading.Thread(target=flaky.serve_forever, daemon=True)
    thread.start()
    try:
        with ChainClient(f"http://127.0.0.1:{flaky.server_address[1]}", retries=3, backoff_s=0.05) as chain:
            started = time.monotonic()
            assert chain.slot() > 0
            assert chain.retried == 2 and time.monotonic() - started >= 0.05 + 0.1  # 0.05 s, then 0.1 s
            flaky.failures_left = 10
            with pytest.raises(ChainUnavailableError) as caught:
                chain.slot()
            assert (
                caught.value.reason == "rpc_unreachable"
                and "after 4 attempt(s): HTTP 503" in caught.value.message
            )
    finally:
        flaky.shutdown()
        flaky.server_close()
    port = flaky.server_address[1]  # closed now: connection refused
    with (
        ChainClient(f"http://127.0.0.1:{port}", retries=1, backoff_s=0.01) as chain,
        pytest.raises(ChainUnavailableError) as down,
    ):
        chain.balance(key(9).pubkey())
    assert down.value.exit_code == 15 and "ConnectError" in down.value.message


def test_snapshot_restart_keeps_token_balance(tmp_path: Path) -> None:
    snapshot = tmp_path / "ledger.json"
    log = tmp_path / "localnet.log"
    payer, mint, other = key(10), key(11), key(12)
    # The first ledger writes its snapshot every 0.2 s and dies by SIGKILL: the periodic copy counts.
    net = Localnet(
        slot_ms=SLOT_MS, validity_slots=VALIDITY_SLOTS, snapshot=snapshot, snapshot_every=0.2, log_path=log
    ).start()
    try:
        with ChainClient(net.url, poll_s=0.05) as chain:
            chain.confirm(
                chain.airdrop(payer.pubkey(), 5 * SOL), chain.latest_blockhash().last_valid_block_height
            )
            make_mint(chain, payer, mint, holders=[payer.pubkey(), other.pubkey()], supply=900)
            source = spl.associated_token_address(payer.pubkey(), mint.pubkey())
            destination = spl.associated_token_address(other.pubkey(), mint.pubkey())
            signature = chain.send_and_confirm(
                [
                    spl.transfer_checked(
                        source=source,
                        mint=mint.pubkey(),
                        destination=destination,
                        owner=payer.pubkey(),
                        amount=321,
                        decimals=6,
                    )
                ],
                [payer],
            )
            lamports = chain.balance(payer.pubkey())
            old = chain.latest_blockhash()
            slot_before = chain.slot()
        deadline = time.monotonic() + 20
        while not (snapshot.exists() and str(signature) in snapshot.read_text()):
            assert time.monotonic() < deadline, "no periodic snapshot with the transfer"
            time.sleep(0.1)
    finally:
        net.kill()
    saved = json.loads(snapshot.read_text())
    assert saved["format"] == "edgeproof-localnet-snapshot" and saved["slot"] >= slot_before - 10
    assert str(destination) in saved["accounts"] and str(signature) in saved["history"]
    assert not list(tmp_path.glob(".ledger.json.*"))  # no temp file left behind

    again = Localnet(slot_ms=SLOT_MS, validity_slots=VALIDITY_SLOTS, snapshot=snapshot, log_path=log).start()
    try:
        with ChainClient(again.url, poll_s=0.05) as chain:
            assert chain.token_amount(destination) == 321
            assert chain.token_amount(source) == 900 - 321
            assert chain.balance(payer.pubkey()) == lamports
            status = chain.status(signature)
            assert status is not None and status.err is None
            # The clock moved past every blockhash issued before the restart.
            assert chain.slot() > saved["slot"] + VALIDITY_SLOTS
            assert not chain.is_blockhash_valid(old.blockhash)
            # And the restored accounts work: tokens move again.
            chain.send_and_confirm(
                [
                    spl.transfer_checked(
                        source=destination,
                        mint=mint.pubkey(),
                        destination=source,
                        owner=other.pubkey(),
                        amount=21,
                        decimals=6,
                    )
                ],
                [payer, other],
            )
            assert chain.token_amount(destination) == 300
            last = chain.latest_blockhash()
    finally:
        assert again.stop() == 0  # SIGTERM: a clean stop writes the snapshot a last time
    final = json.loads(snapshot.read_text())
    assert final["slot"] >= last.last_valid_block_height - VALIDITY_SLOTS
    stored = base64.b64decode(final["accounts"][str(destination)]["data"])
    assert TokenAccount.from_bytes(stored).amount == 300  # the last transfer is in the file
    assert len(final["history"]) == len(saved["history"]) + 1


def _bootstrap(url: str, key_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "chain",
            "bootstrap",
            "--rpc",
            url,
            "--key",
            str(key_path),
            "--supply",
            "5000000",
            "--json",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bootstrap_twice_adopts(localnet: Localnet, tmp_path: Path) -> None:
    from agent.identity import init_keypair

    key_path = tmp_path / "treasury.json"
    treasury = init_keypair(key_path, seed=bytes([13]) * 32)
    first = _bootstrap(localnet.url, key_path)
    assert first.returncode == 0, first.stderr
    created = json.loads(first.stdout)
    assert created["outcome"] == "created" and created["treasury"] == str(treasury.pubkey())
    assert sorted(created["actions"]) == ["airdrop", "mint", "state", "supply", "vault"]
    assert created["vault"] == str(
        spl.associated_token_address(treasury.pubkey(), Pubkey.from_string(created["mint"]))
    )
    assert created["supply"] == created["vault_balance"] == 5_000_000 and created["decimals"] == 6
    assert len(created["signatures"]) == 1

    second = _bootstrap(localnet.url, key_path)
    assert second.returncode == 0, second.stderr
    adopted = json.loads(second.stdout)
    assert adopted["outcome"] == "adopted" and adopted["actions"] == [] and adopted["signatures"] == []
    for field in ("mint", "vault", "supply", "vault_balance", "treasury_lamports"):
        assert adopted[field] == created[field]

    # Without the state file the mint is found on chain (the treasury's ATA, its authority);
    # the same code in-process, to keep the suite lean.
    Path(created["state"]).unlink()
    with ChainClient(localnet.url, poll_s=0.05) as chain:
        found = bootstrap(chain, treasury, state_path=Path(created["state"]), supply=5_000_000)
        assert found.outcome == "adopted" and found.mint == created["mint"] and found.actions == ["state"]
        # Another key with this state file: refused with a named reason.
        with pytest.raises(ChainError) as wrong:
            bootstrap(chain, key(14), state_path=Path(created["state"]), supply=1)
    assert wrong.value.reason == "state_mismatch" and "belongs to treasury" in wrong.value.message
