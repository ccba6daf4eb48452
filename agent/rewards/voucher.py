"""The claim voucher transaction (docs/rewards.md, "Claims"; the claim contract): pure builders.

A voucher is a legacy transaction with exactly two signers, the coordinator treasury ``T`` (fee
payer and vault authority, signature index 0: the transaction id) and the device key, and
exactly three instructions, in this order:

0. the ATA program's ``CreateIdempotent`` (payer ``T``) of the owner's ATA for the mint;
1. SPL ``TransferChecked`` of ``amount`` base units from the vault to that ATA, authority ``T``;
2. a memo ``edgeproof:claim:<claim_id>`` with the device as its one required signer.

Writable accounts are exactly ``T``, the vault and the owner's ATA.  Nothing here does I/O: the
blockhash comes from the caller, and the coordinator's signature is the only one added
(:func:`partially_signed`); the device adds its own after its checks.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction

from agent.chain import spl
from agent.chain.programs import MEMO_PROGRAM_ID, PACKET_DATA_SIZE
from agent.protocol.messages import ProofStep, Voucher
from agent.rewards.merkle import Leaf, Step

#: The memo text of a claim transaction is this prefix followed by the claim id (32 hex digits).
MEMO_PREFIX = "edgeproof:claim:"


@dataclass(frozen=True)
class VoucherTerms:
    """Everything a claim transaction is made of, apart from the blockhash."""

    treasury: Pubkey
    vault: Pubkey
    mint: Pubkey
    decimals: int
    device: Pubkey
    owner: Pubkey
    claim_id: str
    amount: int
    memo_program: Pubkey = MEMO_PROGRAM_ID

    @property
    def destination(self) -> Pubkey:
        """The owner's associated token account for the mint."""
        return spl.associated_token_address(self.owner, self.mint)


def claim_memo(claim_id: str) -> str:
    """The memo text that names a claim: ``edgeproof:claim:<claim_id>``."""
    return f"{MEMO_PREFIX}{claim_id}"


def claim_instructions(terms: VoucherTerms) -> list[Instruction]:
    """The three instructions of a claim transaction, in contract order."""
    return [
        spl.create_ata_idempotent(payer=terms.treasury, owner=terms.owner, mint=terms.mint),
        spl.transfer_checked(
            source=terms.vault,
            mint=terms.mint,
            destination=terms.destination,
            owner=terms.treasury,
            amount=terms.amount,
            decimals=terms.decimals,
        ),
        spl.memo(claim_memo(terms.claim_id), signers=[terms.device], program_id=terms.memo_program),
    ]


def claim_message(terms: VoucherTerms, blockhash: Hash) -> Message:
    """The legacy message, fee payer ``T``."""
    return Message.new_with_blockhash(claim_instructions(terms), terms.treasury, blockhash)


def partially_signed(terms: VoucherTerms, blockhash: Hash, treasury: Keypair) -> Transaction:
    """The claim transaction with the treasury's signature (index 0) and the device's left blank.

    ValueError when ``treasury`` is not ``terms.treasury`` or the transaction would not fit a
    packet (it always does for a 32-hex-digit claim id).
    """
    if treasury.pubkey() != terms.treasury:
        raise ValueError(f"the signing key {treasury.pubkey()} is not the treasury {terms.treasury}")
    message = claim_message(terms, blockhash)
    tx = Transaction.new_unsigned(message)
    tx.partial_sign([treasury], blockhash)
    size = len(bytes(tx))
    if size > PACKET_DATA_SIZE:
        raise ValueError(f"the claim transaction is {size} bytes; a packet holds {PACKET_DATA_SIZE}")
    return tx


def writable_accounts(message: Message) -> list[Pubkey]:
    """The accounts a legacy message marks writable (from its header), in account order."""
    header = message.header
    keys = message.account_keys
    signed = header.num_required_signatures
    writable_signed = signed - header.num_readonly_signed_accounts
    writable_unsigned_end = len(keys) - header.num_readonly_unsigned_accounts
    return [key for i, key in enumerate(keys) if i < writable_signed or signed <= i < writable_unsigned_end]


def tx_id(tx: Transaction) -> Signature:
    """The transaction id: the first (treasury) signature."""
    return tx.signatures[0]


def encode_tx(tx: Transaction) -> str:
    """The wire bytes as standard, padded base64 (the voucher's ``transaction`` field)."""
    return base64.b64encode(bytes(tx)).decode("ascii")


def decode_tx(text: str) -> Transaction:
    """The transaction of a voucher's ``transaction`` field; ValueError when it is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ValueError(f"the voucher transaction is not base64: {exc}") from None
    try:
        return Transaction.from_bytes(raw)
    except Exception as exc:  # solders raises its own error types for malformed bytes
        raise ValueError(f"the voucher transaction does not parse: {exc}") from None


def proof_steps(steps: list[Step]) -> list[ProofStep]:
    """Merkle proof steps in the voucher's wire form."""
    return [ProofStep(sibling=step.sibling.hex(), left=step.left) for step in steps]


def voucher_body(
    terms: VoucherTerms,
    tx: Transaction,
    *,
    last_valid_block_height: int,
    leaf: Leaf,
    proof: list[Step],
    paid: int,
) -> Voucher:
    """The ``voucher`` envelope body for a partially signed claim transaction.

    ``leaf`` is the device's leaf in the newest settled epoch, ``proof`` its inclusion proof and
    ``paid`` what the coordinator recorded as paid to the device before this voucher.
    """
    return Voucher(
        device=str(terms.device),
        claim_id=terms.claim_id,
        owner=str(terms.owner),
        mint=str(terms.mint),
        amount=terms.amount,
        decimals=terms.decimals,
        transaction=encode_tx(tx),
        blockhash=str(tx.message.recent_blockhash),
        last_valid_block_height=last_valid_block_height,
        epoch=leaf.epoch,
        epoch_amount=leaf.amount,
        cumulative=leaf.cumulative,
        paid=paid,
        proof=proof_steps(proof),
    )
