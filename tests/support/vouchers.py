"""Honest and tampered claim vouchers, built as the coordinator builds them (agent/rewards/voucher.py).

Fixed-seed keys: the device is tests/support/daemon_rig.DEVICE, the treasury is the rig's
COORDINATOR key (the coordinator key is the treasury), the owner's wallet ``OWNER``, a
``THIEF`` wallet.  ``settlement`` makes a three-leaf epoch with the device's leaf and the
``RewardRoot`` body; ``build`` returns a ``Voucher`` body whose transaction is signed by the
treasury, after an optional ``tamper`` of the instruction list, the fee payer or the terms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from agent.chain import spl
from agent.chain.programs import PACKET_DATA_SIZE
from agent.protocol.messages import RewardRoot, Voucher
from agent.rewards.merkle import Leaf, Step, ordered, proof, root
from agent.rewards.voucher import VoucherTerms, claim_instructions, voucher_body
from tests.support.daemon_rig import COORDINATOR, DEVICE

OWNER = Keypair.from_seed(bytes([3] * 32))
THIEF = Keypair.from_seed(bytes([4] * 32))
MINT_KEY = Keypair.from_seed(bytes([5] * 32))
OTHER_MINT_KEY = Keypair.from_seed(bytes([6] * 32))
TREASURY = COORDINATOR
DECIMALS = 6
BLOCKHASH = Hash(bytes([1] * 32))


@dataclass(frozen=True)
class Settlement:
    leaf: Leaf
    steps: list[Step]
    body: RewardRoot


def settlement(
    *, epoch: int = 3, amount: int = 400_000, cumulative: int = 1_000_000, device: Pubkey | None = None
) -> Settlement:
    """A settled epoch of three leaves: this device's and two others."""
    dev = str(device or DEVICE.pubkey())
    others = [Keypair.from_seed(bytes([40 + i] * 32)).pubkey() for i in range(2)]
    mine = Leaf(dev, str(OWNER.pubkey()), epoch, amount, cumulative)
    leaves = ordered([mine, *(Leaf(str(o), str(THIEF.pubkey()), epoch, 5, 5) for o in others)])
    body = RewardRoot(
        epoch=epoch,
        root=root(leaves).hex(),
        devices=len(leaves),
        pool=10_000_000,
        total=amount + 10,
        policy_hash="ab" * 32,
        settled_ms=1_700_000_000_000,
    )
    return Settlement(mine, proof(leaves, leaves.index(mine)), body)


def terms(
    claim_id: str, amount: int, *, mint: Pubkey | None = None, decimals: int = DECIMALS
) -> VoucherTerms:
    mint = mint or MINT_KEY.pubkey()
    return VoucherTerms(
        treasury=TREASURY.pubkey(),
        vault=spl.associated_token_address(TREASURY.pubkey(), mint),
        mint=mint,
        decimals=decimals,
        device=DEVICE.pubkey(),
        owner=OWNER.pubkey(),
        claim_id=claim_id,
        amount=amount,
    )


Tamper = Callable[[list[Instruction]], list[Instruction]]


def build(
    claim_id: str,
    settled: Settlement,
    *,
    amount: int | None = None,
    paid: int = 0,
    the_terms: VoucherTerms | None = None,
    tamper: Tamper | None = None,
    payer: Pubkey | None = None,
    blockhash: Hash = BLOCKHASH,
    last_valid_block_height: int = 10_000,
    signers: tuple[Keypair, ...] = (TREASURY,),
    **fields: object,
) -> Voucher:
    """A voucher signed by the treasury (and ``signers``); ``fields`` override the voucher body."""
    amount = settled.leaf.cumulative - paid if amount is None else amount
    t = the_terms or terms(claim_id, amount)
    instructions = claim_instructions(t)
    if tamper is not None:
        instructions = tamper(instructions)
    message = Message.new_with_blockhash(instructions, payer or t.treasury, blockhash)
    tx = Transaction.new_unsigned(message)
    tx.partial_sign(list(signers), blockhash)
    assert len(bytes(tx)) <= PACKET_DATA_SIZE, len(bytes(tx))
    body = voucher_body(
        t,
        tx,
        last_valid_block_height=last_valid_block_height,
        leaf=settled.leaf,
        proof=settled.steps,
        paid=paid,
    )
    return body.model_copy(update=fields) if fields else body


def with_accounts(ix: Instruction, accounts: list[AccountMeta]) -> Instruction:
    return Instruction(ix.program_id, bytes(ix.data), accounts)


def with_data(ix: Instruction, data: bytes) -> Instruction:
    return Instruction(ix.program_id, data, list(ix.accounts))


def replace(terms_: VoucherTerms, **changes: object) -> VoucherTerms:
    return dataclasses.replace(terms_, **changes)  # type: ignore[arg-type]
