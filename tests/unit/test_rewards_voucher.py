"""The pure claim voucher builder (agent/rewards/voucher.py) against the claim contract."""

from __future__ import annotations

import hashlib

import pytest
from solders.hash import Hash
from solders.keypair import Keypair

from agent.chain import spl
from agent.chain.programs import (
    ASSOCIATED_TOKEN_PROGRAM_ID,
    MEMO_PROGRAM_ID,
    MEMO_V1_PROGRAM_ID,
    PACKET_DATA_SIZE,
    TOKEN_PROGRAM_ID,
)
from agent.protocol.messages import Voucher
from agent.rewards import merkle
from agent.rewards.voucher import (
    VoucherTerms,
    claim_memo,
    decode_tx,
    encode_tx,
    partially_signed,
    tx_id,
    voucher_body,
    writable_accounts,
)

TREASURY = Keypair.from_seed(bytes([1]) * 32)
DEVICE = Keypair.from_seed(bytes([2]) * 32)
OWNER = Keypair.from_seed(bytes([3]) * 32).pubkey()
MINT = Keypair.from_seed(bytes([4]) * 32).pubkey()
VAULT = spl.associated_token_address(TREASURY.pubkey(), MINT)
BLOCKHASH = Hash(hashlib.sha256(b"blockhash").digest())
CLAIM_ID = "0123456789abcdef0123456789abcdef"


def _terms(**over: object) -> VoucherTerms:
    fields: dict[str, object] = {
        "treasury": TREASURY.pubkey(),
        "vault": VAULT,
        "mint": MINT,
        "decimals": 6,
        "device": DEVICE.pubkey(),
        "owner": OWNER,
        "claim_id": CLAIM_ID,
        "amount": 677_777,
    }
    fields.update(over)
    return VoucherTerms(**fields)  # type: ignore[arg-type]


def test_claim_transaction_has_the_contract_shape() -> None:
    tx = partially_signed(_terms(), BLOCKHASH, TREASURY)
    message = tx.message
    keys = message.account_keys
    assert keys[0] == TREASURY.pubkey()  # fee payer, signature index 0
    assert message.header.num_required_signatures == 2
    assert keys[1] == DEVICE.pubkey()
    programs = [keys[ix.program_id_index] for ix in message.instructions]
    assert programs == [ASSOCIATED_TOKEN_PROGRAM_ID, TOKEN_PROGRAM_ID, MEMO_PROGRAM_ID]
    assert sorted(map(str, writable_accounts(message))) == sorted(
        map(str, [TREASURY.pubkey(), VAULT, spl.associated_token_address(OWNER, MINT)])
    )
    transfer = message.instructions[1]
    assert transfer.data[0] == 12  # TransferChecked
    assert int.from_bytes(bytes(transfer.data[1:9]), "little") == 677_777
    assert transfer.data[9] == 6
    assert bytes(message.instructions[2].data) == claim_memo(CLAIM_ID).encode()
    assert claim_memo(CLAIM_ID) == "edgeproof:claim:0123456789abcdef0123456789abcdef"
    assert len(bytes(tx)) <= PACKET_DATA_SIZE


def test_only_the_treasury_signs_and_the_device_completes_it() -> None:
    tx = partially_signed(_terms(), BLOCKHASH, TREASURY)
    assert tx_id(tx) == TREASURY.sign_message(bytes(tx.message))
    assert tx.signatures[1] == tx.signatures[1].default()
    assert not tx.is_signed()
    tx.partial_sign([DEVICE], BLOCKHASH)
    assert tx.is_signed()
    tx.verify()
    assert tx_id(tx) == TREASURY.sign_message(bytes(tx.message))


def test_same_terms_and_blockhash_give_the_same_bytes_and_the_wire_form_round_trips() -> None:
    a = partially_signed(_terms(), BLOCKHASH, TREASURY)
    b = partially_signed(_terms(), BLOCKHASH, TREASURY)
    assert bytes(a) == bytes(b)
    assert bytes(decode_tx(encode_tx(a))) == bytes(a)
    other = partially_signed(_terms(amount=1), BLOCKHASH, TREASURY)
    assert tx_id(other) != tx_id(a)


def test_the_memo_program_is_configurable_and_the_largest_amount_fits_a_packet() -> None:
    tx = partially_signed(_terms(memo_program=MEMO_V1_PROGRAM_ID, amount=2**64 - 1), BLOCKHASH, TREASURY)
    keys = tx.message.account_keys
    assert keys[tx.message.instructions[2].program_id_index] == MEMO_V1_PROGRAM_ID
    assert len(bytes(tx)) <= PACKET_DATA_SIZE


def test_a_key_other_than_the_treasury_is_refused() -> None:
    with pytest.raises(ValueError, match="is not the treasury"):
        partially_signed(_terms(), BLOCKHASH, DEVICE)


@pytest.mark.parametrize("text", ["not base64!", "AAAA"])
def test_decode_refuses_what_is_not_a_transaction(text: str) -> None:
    with pytest.raises(ValueError, match="the voucher transaction"):
        decode_tx(text)


def test_voucher_body_carries_the_leaf_proof_and_transaction() -> None:
    leaves = [
        merkle.Leaf(str(DEVICE.pubkey()), str(OWNER), 7, 250, 677_777),
        merkle.Leaf(str(TREASURY.pubkey()), str(OWNER), 7, 1, 1),
    ]
    ordered = merkle.ordered(leaves)
    index = next(i for i, leaf in enumerate(ordered) if leaf.dev == str(DEVICE.pubkey()))
    steps = merkle.proof(ordered, index)
    tx = partially_signed(_terms(), BLOCKHASH, TREASURY)
    body = voucher_body(_terms(), tx, last_valid_block_height=150, leaf=ordered[index], proof=steps, paid=0)
    again = Voucher.model_validate(body.model_dump())
    assert again == body
    assert body.blockhash == str(BLOCKHASH)
    assert body.cumulative == 677_777 and body.epoch_amount == 250 and body.epoch == 7
    assert [bytes.fromhex(s.sibling) for s in body.proof] == [s.sibling for s in steps]
    assert merkle.verify(
        merkle.root(leaves),
        ordered[index],
        [merkle.Step(bytes.fromhex(s.sibling), s.left) for s in body.proof],
    )
    assert bytes(decode_tx(body.transaction)) == bytes(tx)
