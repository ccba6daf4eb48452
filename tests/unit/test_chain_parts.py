"""The local ledger's parts without HTTP: clock, JSON-RPC framing, error shapes, builders, snapshots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.rpc.responses import GetBalanceResp, SendTransactionResp
from solders.transaction import Transaction, VersionedTransaction

from agent.chain import b58, spl
from agent.chain.client import translate_rpc_error
from agent.chain.encoding import token_account, ui_amount
from agent.chain.jsonrpc import MAX_BATCH, handle_body
from agent.chain.ledger import Ledger
from agent.chain.ledger_clock import LedgerClock
from agent.chain.programs import MEMO_PROGRAM_ID, MINT_LEN, TOKEN_PROGRAM_ID
from agent.chain.rpc_errors import RpcError
from agent.chain.rpc_server import LocalnetServer, is_loopback, open_ledger
from agent.chain.tx_errors import err_json, err_text
from agent.errors import ChainError, ConfigError, CorruptStateError


def key(n: int) -> Keypair:
    return Keypair.from_seed(bytes([n]) * 32)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- clock -------------------------------------------------------------------------------------
def test_clock_moves_with_time_and_blockhashes_expire() -> None:
    clock = LedgerClock(seed=b"s", start_slot=10, start_mono=0.0, slot_ms=100, validity_slots=5)
    first = clock.latest()
    assert (first.slot, first.last_valid_block_height) == (10, 15)
    assert not clock.advance(0.099) and clock.slot == 10
    assert clock.advance(0.35) and clock.slot == 13  # 3 slots later, in one step
    second = clock.latest()
    assert second.blockhash != first.blockhash and second.blockhash == clock.blockhash_for(13)
    assert clock.is_valid(first.blockhash) and clock.is_valid(second.blockhash)
    clock.advance(1.5)  # slot 25 > 15: the first expired (and was pruned)
    assert clock.slot == 25 and not clock.is_valid(first.blockhash)
    clock.advance(1.8)  # slot 28 == 13 + 5 + 10: the second expired too
    assert not clock.is_valid(second.blockhash) and clock.is_valid(clock.latest().blockhash)
    other = LedgerClock(seed=b"t", start_slot=10, start_mono=0.0, slot_ms=100)
    assert other.blockhash_for(13) != clock.blockhash_for(13)
    with pytest.raises(ValueError):
        LedgerClock(seed=b"s", start_slot=0, start_mono=0.0, slot_ms=0)


# --- JSON-RPC framing ---------------------------------------------------------------------------
def _echo(method: str, params: list[Any]) -> Any:
    if method == "boom":
        raise RuntimeError("bug")
    if method == "refuse":
        raise RpcError(-32602, "Invalid params: no", {"x": 1})
    return [method, params]


def test_framing_answers_hostile_bodies_with_their_codes() -> None:
    codes: list[int] = []
    assert handle_body(b"{", _echo, codes.append)["error"]["code"] == -32700
    assert handle_body(b"1e999999", _echo, codes.append)["error"]["code"] == -32600  # a number, not a request
    assert handle_body(b"[" * 100_000, _echo, codes.append)["error"]["code"] == -32700  # deep nesting
    assert handle_body(b'{"jsonrpc":"2.0","id":true,"method":"m"}', _echo, codes.append)["error"] == {
        "code": -32600,
        "message": "Invalid request",
    }
    assert handle_body(b'{"jsonrpc":"2.0","id":1,"method":3}', _echo, codes.append)["error"]["code"] == -32600
    answer = handle_body(b'{"jsonrpc":"2.0","id":1,"method":"refuse"}', _echo, codes.append)
    assert answer == {
        "jsonrpc": "2.0",
        "error": {"code": -32602, "message": "Invalid params: no", "data": {"x": 1}},
        "id": 1,
    }
    assert handle_body(b'{"jsonrpc":"2.0","id":2,"method":"boom"}', _echo, codes.append)["error"] == {
        "code": -32603,
        "message": "Internal error",
    }
    assert handle_body(b'{"jsonrpc":"2.0","method":"m"}', _echo, codes.append) is None  # notification
    ok = handle_body(b'{"jsonrpc":"2.0","id":"a","method":"m","params":[1]}', _echo, codes.append)
    assert ok == {"jsonrpc": "2.0", "result": ["m", [1]], "id": "a"}
    big = json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "m"}] * (MAX_BATCH + 1)).encode()
    assert handle_body(big, _echo, codes.append)["error"]["message"].startswith(
        "Invalid request: a batch of 101"
    )
    assert codes.count(-32700) == 2 and codes.count(-32600) == 4 and -32603 in codes and -32602 in codes


# --- error shapes -------------------------------------------------------------------------------
def _ledger_with_mint() -> tuple[Ledger, Keypair, Pubkey, Pubkey]:
    ledger = Ledger(slot_ms=1000, seed=b"unit")
    payer, mint = key(1), key(2)
    ledger.airdrop(payer.pubkey(), 10**10)
    ixs = spl.create_mint(
        payer=payer.pubkey(),
        mint=mint.pubkey(),
        authority=payer.pubkey(),
        decimals=2,
        rent_lamports=ledger.svm.minimum_balance_for_rent_exemption(MINT_LEN),
    )
    ata = spl.associated_token_address(payer.pubkey(), mint.pubkey())
    ixs += [
        spl.create_ata_idempotent(payer=payer.pubkey(), owner=payer.pubkey(), mint=mint.pubkey()),
        spl.mint_to(mint=mint.pubkey(), destination=ata, authority=payer.pubkey(), amount=12345, decimals=2),
    ]
    tx = Transaction([payer, mint], Message(ixs, payer.pubkey()), ledger.clock.latest().blockhash)
    ledger.send(VersionedTransaction.from_legacy(tx), skip_preflight=False)
    return ledger, payer, mint.pubkey(), ata


def test_transaction_errors_in_the_rpc_shape() -> None:
    ledger, payer, mint, ata = _ledger_with_mint()
    assert token_account(ledger.account(ata)).amount == 12345  # type: ignore[union-attr]
    bad = spl.transfer_checked(
        source=ata, mint=mint, destination=ata, owner=payer.pubkey(), amount=99999, decimals=2
    )
    tx = Transaction([payer], Message([bad], payer.pubkey()), ledger.clock.latest().blockhash)
    result = ledger.svm.simulate_transaction(tx)
    err = result.err()  # type: ignore[union-attr]
    assert err_json(err) == {"InstructionError": [0, {"Custom": 1}]}
    assert err_text(err) == "Error processing Instruction 0: custom program error: 0x1"
    wrong_decimals = spl.transfer_checked(
        source=ata, mint=mint, destination=ata, owner=payer.pubkey(), amount=1, decimals=3
    )
    tx = Transaction([payer], Message([wrong_decimals], payer.pubkey()), ledger.clock.latest().blockhash)
    assert err_json(ledger.svm.simulate_transaction(tx).err()) == {"InstructionError": [0, {"Custom": 18}]}  # type: ignore[union-attr]
    with pytest.raises(RpcError) as caught:
        ledger.send(VersionedTransaction.from_legacy(tx), skip_preflight=False)
    assert caught.value.code == -32002 and caught.value.data["err"] == {
        "InstructionError": [0, {"Custom": 18}]
    }


def test_node_errors_translate_once_into_chain_errors() -> None:
    preflight = SendTransactionResp.from_json(
        '{"jsonrpc":"2.0","error":{"code":-32002,"message":"Transaction simulation failed: Blockhash not found",'
        '"data":{"accounts":null,"err":"BlockhashNotFound","innerInstructions":null,"logs":[],'
        '"returnData":null,"unitsConsumed":0}},"id":1}'
    )
    error = translate_rpc_error(preflight, "sendTransaction")
    assert (
        isinstance(error, ChainError)
        and error.reason == "blockhash_not_found"
        and error.err == "BlockhashNotFound"
    )
    assert error.exit_code == 15
    failed = SendTransactionResp.from_json(
        '{"jsonrpc":"2.0","error":{"code":-32002,"message":"Transaction simulation failed: x","data":{"accounts":null,'
        '"err":{"InstructionError":[1,{"Custom":6}]},"innerInstructions":null,"logs":["a","b"],"returnData":null,'
        '"unitsConsumed":7}},"id":1}'
    )
    error = translate_rpc_error(failed, "sendTransaction")
    assert error.reason == "simulation_failed" and error.err == {"InstructionError": [1, {"Custom": 6}]}
    assert error.logs == ["a", "b"]
    forged = GetBalanceResp.from_json(
        '{"jsonrpc":"2.0","error":{"code":-32003,"message":"Transaction signature verification failure"},"id":1}'
    )
    assert translate_rpc_error(forged, "sendTransaction").reason == "signature_failure"
    params = GetBalanceResp.from_json(
        '{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid param: Invalid"},"id":1}'
    )
    error = translate_rpc_error(params, "getBalance")
    assert (
        error.reason == "rpc_error"
        and error.message == "getBalance: the RPC node answered: Invalid param: Invalid"
    )


# --- snapshots ----------------------------------------------------------------------------------
def test_snapshot_round_trip_keeps_accounts_history_and_moves_the_clock(tmp_path: Path) -> None:
    ledger, payer, mint, ata = _ledger_with_mint()
    state = json.loads(json.dumps(ledger.export_state()))  # what the file holds
    assert str(TOKEN_PROGRAM_ID) not in state["accounts"]  # programs are not saved
    restored = Ledger.from_state(state, slot_ms=1000, validity_slots=150)
    assert token_account(restored.account(ata)).amount == 12345  # type: ignore[union-attr]
    assert restored.decimals_of(mint) == 2
    assert restored.svm.get_balance(payer.pubkey()) == ledger.svm.get_balance(payer.pubkey())
    assert restored.history.keys() == ledger.history.keys()
    assert restored.clock.slot == ledger.clock.slot + 151
    assert not restored.clock.is_valid(ledger.clock.latest().blockhash)
    for broken in ({"format": "x"}, {**state, "accounts": {"nope": {}}}, {**state, "seed": "zz"}, [1]):
        with pytest.raises(CorruptStateError):
            Ledger.from_state(broken, slot_ms=1000, validity_slots=150)
    path = tmp_path / "ledger.json"
    path.write_text('{"format": ')
    with pytest.raises(CorruptStateError) as caught:
        open_ledger(path, slot_ms=100, validity_slots=150)
    assert caught.value.exit_code == 12 and "the localnet snapshot is not JSON" in caught.value.message
    assert open_ledger(tmp_path / "absent.json", slot_ms=100, validity_slots=150).history == {}


def test_preflight_and_drop_rules_without_http() -> None:
    now = FakeTime()
    ledger = Ledger(slot_ms=100, validity_slots=3, seed=b"drop", monotonic=now)
    payer = key(3)
    ledger.airdrop(payer.pubkey(), 10**9)
    old = ledger.clock.latest().blockhash
    memo = spl.memo("hello", signers=[payer.pubkey()])
    tx = VersionedTransaction.from_legacy(Transaction([payer], Message([memo], payer.pubkey()), old))
    now.now += 0.5  # 5 slots: past the 3-slot validity
    ledger.sync()
    with pytest.raises(RpcError) as caught:
        ledger.send(tx, skip_preflight=False)
    assert caught.value.message == "Transaction simulation failed: Blockhash not found"
    assert ledger.send(tx, skip_preflight=True) == tx.signatures[0]
    assert ledger.status(tx.signatures[0]) is None  # dropped: it never lands
    assert ledger.simulate(tx, sig_verify=False, replace_blockhash=False)["err"] == "BlockhashNotFound"
    assert ledger.simulate(tx, sig_verify=False, replace_blockhash=True)["err"] is None
    with pytest.raises(RpcError):
        ledger.airdrop(payer.pubkey(), 0)


# --- pure pieces ----------------------------------------------------------------------------------
def test_builders_are_pure_and_checked() -> None:
    owner, mint = key(4).pubkey(), key(5).pubkey()
    memo = spl.memo("claim 7", signers=[owner, mint])
    assert memo.program_id == MEMO_PROGRAM_ID and bytes(memo.data) == b"claim 7"
    assert [(m.pubkey, m.is_signer, m.is_writable) for m in memo.accounts] == [
        (owner, True, False),
        (mint, True, False),
    ]
    transfer = spl.transfer_checked(
        source=owner, mint=mint, destination=owner, owner=owner, amount=5, decimals=6
    )
    assert transfer.program_id == TOKEN_PROGRAM_ID and bytes(transfer.data) == bytes([12]) + (5).to_bytes(
        8, "little"
    ) + bytes([6])
    assert spl.create_ata_idempotent(payer=owner, owner=owner, mint=mint).data == bytes([1])
    for bad in (0, 2**64):
        with pytest.raises(ValueError):
            spl.mint_to(mint=mint, destination=owner, authority=owner, amount=bad, decimals=6)
    with pytest.raises(ValueError):
        spl.create_mint(payer=owner, mint=mint, authority=owner, decimals=10, rent_lamports=1)
    with pytest.raises(ValueError):
        spl.memo("x" * 257, signers=[])
    assert ui_amount(1_250_000, 6) == {
        "amount": "1250000",
        "decimals": 6,
        "uiAmount": 1.25,
        "uiAmountString": "1.25",
    }
    assert ui_amount(0, 6)["uiAmountString"] == "0"


def test_base58_matches_solders() -> None:
    for raw in (b"", b"\0", b"\0\0\1", bytes(range(32)), bytes(key(6).pubkey())):
        assert b58.decode(b58.encode(raw)) == raw
    assert b58.encode(bytes(key(6).pubkey())) == str(key(6).pubkey())
    assert b58.encode(bytes(Hash.default())) == str(Hash.default())
    with pytest.raises(ValueError):
        b58.decode("0OIl")


def test_non_loopback_bind_is_refused_unless_asked() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with pytest.raises(ConfigError) as caught:
        LocalnetServer(Ledger(seed=b"x"), host="0.0.0.0", port=0)
    assert "not a loopback address" in caught.value.message


def test_client_and_bootstrap_refuse_user_mistakes_before_any_network() -> None:
    from agent.chain.bootstrap import bootstrap
    from agent.chain.client import ChainClient

    with pytest.raises(ConfigError) as caught:
        ChainClient("localhost:8899")
    assert caught.value.message == "RPC URL 'localhost:8899' must start with http:// or https://"
    with ChainClient("http://127.0.0.1:9") as client:  # never contacted: the checks come first
        for kwargs, text in (
            ({"supply": 0}, "--supply must be 1..2**64-1 base units, got 0"),
            ({"supply": 1, "decimals": 10}, "--decimals must be 0..9, got 10"),
        ):
            with pytest.raises(ConfigError) as refused:
                bootstrap(client, key(7), state_path=Path("/nonexistent/state.json"), **kwargs)  # type: ignore[arg-type]
            assert refused.value.message == text
