"""What the agent checks in a voucher before it signs (pure: no I/O, no clock, no keys).

A voucher (docs/protocol.md section 6) carries a legacy Solana transaction the coordinator built
and signed as fee payer and vault authority.  The agent signs it only when every check below
holds; the first that fails names the refusal (docs/rewards.md, "Claiming: what the agent
checks").  The checks run in this order, so that one tampering is named by what it changes
first (a foreign destination also changes the writable set; it is named ``wrong_destination``):

1. ``malformed``: the transaction does not decode, or is over 1232 bytes;
2. ``wrong_program``: an instruction of a program other than ATA, SPL Token, the configured memo;
3. ``extra_instruction``: not exactly CreateIdempotent, TransferChecked, memo in that order;
4. ``fee_payer_is_device``: the device would pay the fees;
5. ``wrong_mint`` / ``wrong_decimals``: against the device's ``[rewards]`` config;
6. ``wrong_destination``: not the ATA of the device's own ``owner_wallet`` for the mint;
7. ``amount_too_high``: the transfer's amount is not the voucher's, or the voucher's exceeds its
   own ``cumulative - paid``, the claim's asked amount, or the agent's own record
   (cumulative proven against the newest verified ``reward_root`` minus what it has itself
   confirmed as paid); ``zero_amount``: it moves no tokens (the coordinator answers
   ``nothing_claimable`` instead, so a zero voucher only spends the device's claim);
8. ``extra_writable``: a writable account other than the fee payer, the vault and the ATA;
9. ``bad_memo``: the memo is not ``edgeproof:claim:<claim_id>`` signed by this device alone, or
   the signers are not exactly (fee payer, device);
10. ``voucher_mismatch``: the voucher's fields disagree with the transaction (blockhash, fee
    payer's signature, authority);
11. ``unknown_epoch`` / ``bad_proof``: the leaf and proof against that epoch's verified root;
12. ``blockhash_expired``: the block height is past the voucher's last valid block height;
13. ``voucher_conflict``: another transaction was already signed for this claim id.

``unknown_claim`` (the voucher answers no outstanding claim of this device) is judged by the
caller, which holds the claim records (:mod:`agent.device.claim_book`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from solders.hash import Hash
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction

from agent.chain.programs import ASSOCIATED_TOKEN_PROGRAM_ID, PACKET_DATA_SIZE, TOKEN_PROGRAM_ID
from agent.chain.spl import associated_token_address
from agent.errors import VoucherRefused
from agent.protocol.messages import RewardRoot, Voucher
from agent.protocol.reward_merkle import Leaf, Step, verify

#: The ATA program's CreateIdempotent, SPL Token's TransferChecked (opcode, u64 amount, u8 decimals).
ATA_CREATE_IDEMPOTENT = b"\x01"
TRANSFER_CHECKED = 12
_TRANSFER_LEN = 10
MEMO_PREFIX = "edgeproof:claim:"


@dataclass(frozen=True)
class Expect:
    """What the agent itself knows: its identity, its config and its own record."""

    device: Pubkey
    owner: Pubkey
    mint: Pubkey
    decimals: int
    memo_program: Pubkey
    #: The claim this voucher answers (its id) and the amount it asked for (None: everything).
    claim_id: str
    asked: int | None
    #: The newest ``reward_root`` the agent has verified (None: none yet).
    root: RewardRoot | None
    #: What the agent has itself confirmed as paid to this device.
    own_paid: int
    #: The current block height (None: not known; the expiry check is skipped).
    block_height: int | None
    #: sha256 of the message already signed for this claim id (None: none yet).
    signed_hash: str | None


@dataclass(frozen=True)
class Checked:
    """A voucher that passed: its transaction, the bytes the device signs and their hash."""

    transaction: Transaction
    message: bytes
    message_hash: str
    #: The device's signature slot in the transaction.
    device_index: int


def _refuse(reason: str, message: str) -> VoucherRefused:
    return VoucherRefused(message, reason=reason)


def decode_transaction(text: str) -> Transaction:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _refuse("malformed", f"the voucher's transaction is not base64: {exc}") from None
    if len(raw) > PACKET_DATA_SIZE:
        raise _refuse("malformed", f"the voucher's transaction is {len(raw)} bytes, over {PACKET_DATA_SIZE}")
    try:
        tx = Transaction.from_bytes(raw)
    except Exception as exc:  # solders raises its own error types for malformed bytes
        raise _refuse("malformed", f"the voucher's transaction does not decode: {exc}") from None
    if bytes(tx) != raw:
        raise _refuse("malformed", "the voucher's transaction has trailing or non-canonical bytes")
    return tx


def writable_keys(message: Message) -> set[Pubkey]:
    """The accounts a legacy message may write (from its header)."""
    header = message.header
    keys = list(message.account_keys)
    signed = header.num_required_signatures
    out = set(keys[: signed - header.num_readonly_signed_accounts])
    out.update(keys[signed : len(keys) - header.num_readonly_unsigned_accounts])
    return out


def _programs(message: Message, e: Expect) -> list[Pubkey]:
    keys = list(message.account_keys)
    allowed = {ASSOCIATED_TOKEN_PROGRAM_ID, TOKEN_PROGRAM_ID, e.memo_program}
    programs = []
    for number, ix in enumerate(message.instructions):
        if ix.program_id_index >= len(keys):
            raise _refuse("malformed", f"instruction {number} names account {ix.program_id_index}")
        program = keys[ix.program_id_index]
        if program not in allowed:
            raise _refuse("wrong_program", f"instruction {number} runs program {program}, not ATA/Token/memo")
        programs.append(program)
    return programs


def _accounts(message: Message, number: int) -> list[Pubkey]:
    keys = list(message.account_keys)
    ix = message.instructions[number]
    if any(i >= len(keys) for i in ix.accounts):
        raise _refuse("malformed", f"instruction {number} names an account the message does not list")
    return [keys[i] for i in ix.accounts]


def _shape(message: Message, programs: list[Pubkey], e: Expect) -> None:
    expected = [ASSOCIATED_TOKEN_PROGRAM_ID, TOKEN_PROGRAM_ID, e.memo_program]
    if programs != expected:
        raise _refuse(
            "extra_instruction",
            f"{len(programs)} instruction(s) of programs {[str(p) for p in programs]}; "
            "exactly CreateIdempotent, TransferChecked, memo are signed",
        )
    ata, transfer = message.instructions[0], message.instructions[1]
    if bytes(ata.data) != ATA_CREATE_IDEMPOTENT:
        raise _refuse("extra_instruction", "instruction 0 is not the ATA program's CreateIdempotent")
    if len(transfer.data) != _TRANSFER_LEN or transfer.data[0] != TRANSFER_CHECKED:
        raise _refuse("extra_instruction", "instruction 1 is not SPL Token's TransferChecked")
    if len(_accounts(message, 0)) != 6 or len(_accounts(message, 1)) != 4:
        raise _refuse("extra_instruction", "CreateIdempotent takes 6 accounts and TransferChecked 4")


def _leaf_ok(voucher: Voucher, e: Expect) -> None:
    if e.root is None or e.root.epoch != voucher.epoch:
        have = "none" if e.root is None else str(e.root.epoch)
        raise _refuse(
            "unknown_epoch", f"voucher epoch {voucher.epoch}: the newest verified reward_root is epoch {have}"
        )
    leaf = Leaf(str(e.device), voucher.owner, voucher.epoch, voucher.epoch_amount, voucher.cumulative)
    steps = [Step(bytes.fromhex(s.sibling), s.left) for s in voucher.proof]
    if not verify(bytes.fromhex(e.root.root), leaf, steps):
        raise _refuse("bad_proof", f"the leaf and proof do not give epoch {voucher.epoch}'s root")


def check_voucher(voucher: Voucher, e: Expect) -> Checked:
    """The checked voucher, or :class:`VoucherRefused` with the first failing check's reason."""
    tx = decode_transaction(voucher.transaction)
    message = tx.message
    keys = list(message.account_keys)
    programs = _programs(message, e)
    _shape(message, programs, e)
    payer = keys[0]
    if payer == e.device:
        raise _refuse("fee_payer_is_device", "the transaction's fee payer is this device")
    _, create_owner_ata, create_owner, create_mint = _accounts(message, 0)[:4]
    source, mint, destination, authority = _accounts(message, 1)
    transfer = bytes(message.instructions[1].data)
    amount = int.from_bytes(transfer[1:9], "little")
    decimals = transfer[9]
    # 5. mint and decimals
    mints = {voucher.mint, str(mint), str(create_mint)}
    if mints != {str(e.mint)}:
        raise _refuse("wrong_mint", f"mint {sorted(mints - {str(e.mint)})} is not the configured {e.mint}")
    if decimals != e.decimals or voucher.decimals != e.decimals:
        raise _refuse(
            "wrong_decimals", f"decimals {decimals} (voucher {voucher.decimals}), configured {e.decimals}"
        )
    # 6. destination
    ata = associated_token_address(e.owner, e.mint)
    if voucher.owner != str(e.owner) or create_owner != e.owner:
        raise _refuse("wrong_destination", f"the owner is not this device's owner_wallet {e.owner}")
    if destination != ata or create_owner_ata != ata:
        raise _refuse("wrong_destination", f"destination {destination} is not {ata}, the owner's ATA")
    # 7. amount
    _amount_ok(voucher, amount, e)
    # 8. writable accounts
    extra = writable_keys(message) - {payer, source, ata}
    if extra:
        raise _refuse("extra_writable", f"writable account(s) {sorted(str(k) for k in extra)}")
    # 9. signers and memo
    if message.header.num_required_signatures != 2 or e.device not in keys[:2]:
        raise _refuse("bad_memo", "the signers are not exactly the fee payer and this device")
    memo = message.instructions[2]
    text = f"{MEMO_PREFIX}{e.claim_id}".encode()
    if voucher.claim_id != e.claim_id or bytes(memo.data) != text or _accounts(message, 2) != [e.device]:
        raise _refuse("bad_memo", f"the memo is not {text.decode()!r} signed by this device alone")
    # 10. the voucher's fields against the transaction
    raw = bytes(message)
    _fields_ok(voucher, tx, raw, payer, authority)
    # 11. the leaf against the newest verified root
    _leaf_ok(voucher, e)
    # 12. expiry, 13. one transaction per claim id
    if e.block_height is not None and e.block_height > voucher.last_valid_block_height:
        raise _refuse(
            "blockhash_expired",
            f"block height {e.block_height} is past the voucher's {voucher.last_valid_block_height}",
        )
    digest = hashlib.sha256(raw).hexdigest()
    if e.signed_hash is not None and e.signed_hash != digest:
        raise _refuse("voucher_conflict", f"another transaction was already signed for claim {e.claim_id}")
    return Checked(tx, raw, digest, keys.index(e.device))


def _amount_ok(voucher: Voucher, amount: int, e: Expect) -> None:
    own = voucher.cumulative - e.own_paid
    limits = {
        "the voucher's amount": voucher.amount,
        "the voucher's cumulative - paid": voucher.cumulative - voucher.paid,
        "the agent's own record (proven cumulative - confirmed paid)": own,
    }
    if e.asked is not None:
        limits["the claim's amount"] = e.asked
    if amount != voucher.amount:
        raise _refuse("amount_too_high", f"the transfer moves {amount}, the voucher says {voucher.amount}")
    if amount <= 0:
        raise _refuse("zero_amount", "the voucher moves no tokens: there is nothing to sign")
    for what, limit in limits.items():
        if amount > limit:
            raise _refuse("amount_too_high", f"amount {amount} is over {what} ({limit})")


def _fields_ok(voucher: Voucher, tx: Transaction, raw: bytes, payer: Pubkey, authority: Pubkey) -> None:
    if message_blockhash(tx) != voucher.blockhash:
        raise _refuse("voucher_mismatch", "the voucher's blockhash is not the transaction's")
    if authority != payer:
        raise _refuse("voucher_mismatch", "the vault authority is not the fee payer")
    first = tx.signatures[0]
    if first == Signature.default() or not first.verify(payer, raw):
        raise _refuse("voucher_mismatch", "the fee payer's signature does not verify")


def message_blockhash(tx: Transaction) -> str:
    blockhash: Hash = tx.message.recent_blockhash
    return str(blockhash)


def sign_checked(checked: Checked, signature: Signature) -> Transaction:
    """The transaction with the device's signature in its slot (the fee payer's kept)."""
    signatures = list(checked.transaction.signatures)
    signatures[checked.device_index] = signature
    return Transaction.populate(checked.transaction.message, signatures)
