"""The agent's checks before it signs a voucher: the honest one passes, each tampering is named.

The honest voucher is built with the coordinator's pure builder (agent/rewards/voucher.py) and
every tampered one from the same instructions, re-signed by the treasury, so only the tampering
differs.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer

from agent.chain import spl
from agent.chain.programs import MEMO_PROGRAM_ID, PACKET_DATA_SIZE
from agent.device.voucher_check import Expect, check_voucher, sign_checked, writable_keys
from agent.errors import VoucherRefused
from agent.protocol.messages import Voucher
from agent.rewards.voucher import writable_accounts
from tests.support.daemon_rig import DEVICE
from tests.support.vouchers import (
    DECIMALS,
    MINT_KEY,
    OTHER_MINT_KEY,
    OWNER,
    THIEF,
    TREASURY,
    Settlement,
    build,
    replace,
    settlement,
    terms,
    with_accounts,
    with_data,
)

CLAIM = "0123456789abcdef0123456789abcdef"
SETTLED = settlement()


def expect(settled: Settlement = SETTLED, **changes: object) -> Expect:
    base = Expect(
        device=DEVICE.pubkey(),
        owner=OWNER.pubkey(),
        mint=MINT_KEY.pubkey(),
        decimals=DECIMALS,
        memo_program=MEMO_PROGRAM_ID,
        claim_id=CLAIM,
        asked=None,
        root=settled.body,
        own_paid=0,
        block_height=100,
        signed_hash=None,
    )
    return Expect(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def refused(voucher: Voucher, e: Expect | None = None) -> str:
    with pytest.raises(VoucherRefused) as info:
        check_voucher(voucher, e or expect())
    assert info.value.exit_code == 21
    return info.value.reason


def test_the_honest_voucher_passes_and_its_signed_transaction_verifies() -> None:
    voucher = build(CLAIM, SETTLED)
    checked = check_voucher(voucher, expect())
    raw = base64.b64decode(voucher.transaction)
    assert len(raw) <= PACKET_DATA_SIZE
    assert checked.message_hash == hashlib.sha256(bytes(checked.transaction.message)).hexdigest()
    assert checked.device_index == 1
    tx = sign_checked(checked, DEVICE.sign_message(checked.message))
    tx.verify()  # both signatures: the treasury's (the tx id) and the device's
    assert tx.signatures[0] == checked.transaction.signatures[0]
    assert len(bytes(tx)) <= PACKET_DATA_SIZE
    # The device's own writable-set reading agrees with the coordinator's builder.
    assert writable_keys(tx.message) == set(writable_accounts(tx.message))
    # The same voucher again, once its hash is stored, is the same transaction: no conflict.
    assert check_voucher(voucher, expect(signed_hash=checked.message_hash)).message == checked.message


# --- the eight tampered vouchers ---------------------------------------------------------


def test_another_destination_is_refused() -> None:
    thief_ata = spl.associated_token_address(THIEF.pubkey(), MINT_KEY.pubkey())

    def steal(ixs: list[Instruction]) -> list[Instruction]:
        accounts = list(ixs[1].accounts)
        accounts[2] = AccountMeta(thief_ata, is_signer=False, is_writable=True)
        return [ixs[0], with_accounts(ixs[1], accounts), ixs[2]]

    assert refused(build(CLAIM, SETTLED, tamper=steal)) == "wrong_destination"
    # The owner swapped everywhere (ATA created and paid for the thief, voucher says so too).
    thief_terms = replace(terms(CLAIM, SETTLED.leaf.cumulative), owner=THIEF.pubkey())
    assert refused(build(CLAIM, SETTLED, the_terms=thief_terms)) == "wrong_destination"


def test_another_mint_is_refused() -> None:
    other = terms(CLAIM, SETTLED.leaf.cumulative, mint=OTHER_MINT_KEY.pubkey())
    assert refused(build(CLAIM, SETTLED, the_terms=other)) == "wrong_mint"


def test_other_decimals_are_refused() -> None:
    other = terms(CLAIM, SETTLED.leaf.cumulative, decimals=9)
    assert refused(build(CLAIM, SETTLED, the_terms=other)) == "wrong_decimals"


def test_a_higher_amount_is_refused() -> None:
    high = terms(CLAIM, SETTLED.leaf.cumulative + 1)
    # The transaction moves more than the voucher's amount says.
    assert refused(build(CLAIM, SETTLED, the_terms=high)) == "amount_too_high"
    # Transaction and voucher agree, but exceed cumulative - paid.
    assert refused(build(CLAIM, SETTLED, the_terms=high, amount=high.amount)) == "amount_too_high"
    # The coordinator forgot a payment the agent itself confirmed: its own record caps it.
    honest = build(CLAIM, SETTLED)
    assert refused(honest, expect(own_paid=1)) == "amount_too_high"
    # More than the claim asked for.
    assert refused(honest, expect(asked=10)) == "amount_too_high"


def test_a_voucher_of_no_tokens_is_refused() -> None:
    # Everything else is honest: the leaf proves, the memo names the claim, the treasury signed.
    # The pure builder refuses amount 0, so the transfer's amount is rewritten to 0 (its opcode and
    # decimals kept) and the voucher body says 0 too.
    def nothing(ixs: list[Instruction]) -> list[Instruction]:
        data = bytes(ixs[1].data)
        return [ixs[0], with_data(ixs[1], data[:1] + (0).to_bytes(8, "little") + data[9:]), ixs[2]]

    assert refused(build(CLAIM, SETTLED, tamper=nothing).model_copy(update={"amount": 0})) == "zero_amount"


def test_an_extra_instruction_is_refused() -> None:
    def again(ixs: list[Instruction]) -> list[Instruction]:
        return [*ixs, ixs[1]]

    assert refused(build(CLAIM, SETTLED, tamper=again)) == "extra_instruction"

    def approve(ixs: list[Instruction]) -> list[Instruction]:
        # Right program, another opcode: SPL Token Approve (4) instead of TransferChecked (12).
        return [ixs[0], with_data(ixs[1], bytes([4]) + bytes(ixs[1].data)[1:9]), ixs[2]]

    assert refused(build(CLAIM, SETTLED, tamper=approve)) == "extra_instruction"


def test_an_unknown_program_is_refused() -> None:
    def drain(ixs: list[Instruction]) -> list[Instruction]:
        lamports = transfer(TransferParams(from_pubkey=DEVICE.pubkey(), to_pubkey=THIEF.pubkey(), lamports=1))
        return [*ixs, lamports]

    assert refused(build(CLAIM, SETTLED, tamper=drain)) == "wrong_program"
    unknown = Pubkey.from_string("Stake11111111111111111111111111111111111111")

    def memo_elsewhere(ixs: list[Instruction]) -> list[Instruction]:
        return [ixs[0], ixs[1], Instruction(unknown, bytes(ixs[2].data), list(ixs[2].accounts))]

    assert refused(build(CLAIM, SETTLED, tamper=memo_elsewhere)) == "wrong_program"


def test_an_extra_writable_account_is_refused() -> None:
    def writable(ixs: list[Instruction]) -> list[Instruction]:
        accounts = [*ixs[2].accounts, AccountMeta(THIEF.pubkey(), is_signer=False, is_writable=True)]
        return [ixs[0], ixs[1], with_accounts(ixs[2], accounts)]

    assert refused(build(CLAIM, SETTLED, tamper=writable)) == "extra_writable"

    def device_writable(ixs: list[Instruction]) -> list[Instruction]:
        return [ixs[0], ixs[1], with_accounts(ixs[2], [AccountMeta(DEVICE.pubkey(), True, True)])]

    assert refused(build(CLAIM, SETTLED, tamper=device_writable)) == "extra_writable"


def test_a_fee_payer_that_is_the_device_is_refused() -> None:
    voucher = build(CLAIM, SETTLED, payer=DEVICE.pubkey(), signers=(DEVICE, TREASURY))
    assert refused(voucher) == "fee_payer_is_device"


# --- the other checks ----------------------------------------------------------------------------


def test_a_bad_memo_is_refused() -> None:
    def other_claim(ixs: list[Instruction]) -> list[Instruction]:
        return [ixs[0], ixs[1], with_data(ixs[2], b"edgeproof:claim:" + b"f" * 32)]

    assert refused(build(CLAIM, SETTLED, tamper=other_claim)) == "bad_memo"

    def unsigned(ixs: list[Instruction]) -> list[Instruction]:
        return [ixs[0], ixs[1], spl.memo(f"edgeproof:claim:{CLAIM}", signers=[])]

    assert refused(build(CLAIM, SETTLED, tamper=unsigned)) == "bad_memo"


def test_a_bad_proof_and_an_unknown_epoch_are_refused() -> None:
    # A higher cumulative than the settlement proves (and an amount to match it).
    inflated_terms = terms(CLAIM, SETTLED.leaf.cumulative + 5)
    inflated = build(
        CLAIM,
        SETTLED,
        the_terms=inflated_terms,
        amount=inflated_terms.amount,
        cumulative=inflated_terms.amount,
    )
    assert refused(inflated) == "bad_proof"
    flipped = [step.model_copy(update={"left": not step.left}) for step in build(CLAIM, SETTLED).proof]
    assert refused(build(CLAIM, SETTLED, proof=flipped)) == "bad_proof"
    assert refused(build(CLAIM, SETTLED), expect(root=None)) == "unknown_epoch"
    newer = settlement(epoch=4)
    assert refused(build(CLAIM, SETTLED), expect(root=newer.body)) == "unknown_epoch"


def test_voucher_conflict_an_expired_blockhash_and_mismatches_are_refused() -> None:
    voucher = build(CLAIM, SETTLED)
    assert refused(voucher, expect(signed_hash="00" * 32)) == "voucher_conflict"
    assert refused(voucher, expect(block_height=10_001)) == "blockhash_expired"
    assert check_voucher(voucher, expect(block_height=10_000)).device_index == 1  # the last valid height
    assert refused(voucher.model_copy(update={"blockhash": str(Hash(bytes([2] * 32)))})) == "voucher_mismatch"
    unsigned = build(CLAIM, SETTLED, signers=())
    assert refused(unsigned) == "voucher_mismatch"
    assert refused(voucher.model_copy(update={"transaction": "AAAA"})) == "malformed"
    assert refused(voucher.model_copy(update={"transaction": "!!!!"})) == "malformed"


def test_a_voucher_for_another_claim_id_is_a_bad_memo() -> None:
    # The caller looks the claim up by the voucher's claim id; a voucher whose id differs from
    # the memo's names another claim than the one checked.
    other = build("f" * 32, SETTLED)
    assert refused(other) == "bad_memo"


def test_the_message_layout_is_the_contracts() -> None:
    voucher = build(CLAIM, SETTLED)
    tx = check_voucher(voucher, expect()).transaction
    message: Message = tx.message
    assert message.header.num_required_signatures == 2
    assert list(message.account_keys[:2]) == [TREASURY.pubkey(), DEVICE.pubkey()]
