"""Pure builders for the SPL instructions edgeproof sends: no I/O, no keys, only addresses.

Token instructions come from solana-py's ``spl.token.instructions`` (they return solders
``Instruction`` objects); the memo is built here so it can carry any number of required
signers and a configurable memo program id.
"""

from __future__ import annotations

from collections.abc import Sequence

from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account
from spl.token import instructions as token_ix
from spl.token.models import InitializeMint2Params, MintToCheckedParams, TransferCheckedParams

from agent.chain.programs import MEMO_PROGRAM_ID, MINT_LEN, TOKEN_PROGRAM_ID

#: A memo longer than this is refused here: it would crowd a claim transaction past 1232 bytes.
MAX_MEMO_BYTES = 256


def associated_token_address(owner: Pubkey, mint: Pubkey) -> Pubkey:
    """The associated token account (ATA) of ``owner`` for ``mint`` (classic token program)."""
    return token_ix.get_associated_token_address(owner, mint, TOKEN_PROGRAM_ID)


def create_mint(
    *, payer: Pubkey, mint: Pubkey, authority: Pubkey, decimals: int, rent_lamports: int
) -> list[Instruction]:
    """Allocate a mint account (``mint`` must sign) and initialise it with ``authority``, no freeze."""
    if not 0 <= decimals <= 9:
        raise ValueError(f"decimals must be 0..9, got {decimals}")
    return [
        create_account(
            CreateAccountParams(
                from_pubkey=payer,
                to_pubkey=mint,
                lamports=rent_lamports,
                space=MINT_LEN,
                owner=TOKEN_PROGRAM_ID,
            )
        ),
        token_ix.initialize_mint2(
            InitializeMint2Params(
                program_id=TOKEN_PROGRAM_ID,
                mint=mint,
                decimals=decimals,
                mint_authority=authority,
                freeze_authority=None,
            )
        ),
    ]


def create_ata_idempotent(*, payer: Pubkey, owner: Pubkey, mint: Pubkey) -> Instruction:
    """Create ``owner``'s ATA for ``mint`` unless it exists (the ATA program's ``CreateIdempotent``)."""
    return token_ix.create_idempotent_associated_token_account(payer, owner, mint, TOKEN_PROGRAM_ID)


def mint_to(
    *, mint: Pubkey, destination: Pubkey, authority: Pubkey, amount: int, decimals: int
) -> Instruction:
    """``MintToChecked``: ``amount`` base units into ``destination``; the program checks ``decimals``."""
    _check_amount(amount)
    return token_ix.mint_to_checked(
        MintToCheckedParams(
            program_id=TOKEN_PROGRAM_ID,
            mint=mint,
            dest=destination,
            mint_authority=authority,
            amount=amount,
            decimals=decimals,
        )
    )


def transfer_checked(
    *, source: Pubkey, mint: Pubkey, destination: Pubkey, owner: Pubkey, amount: int, decimals: int
) -> Instruction:
    """``TransferChecked``: move ``amount`` base units; the program checks the mint and ``decimals``."""
    _check_amount(amount)
    return token_ix.transfer_checked(
        TransferCheckedParams(
            program_id=TOKEN_PROGRAM_ID,
            source=source,
            mint=mint,
            dest=destination,
            owner=owner,
            amount=amount,
            decimals=decimals,
        )
    )


def memo(text: str, *, signers: Sequence[Pubkey], program_id: Pubkey = MEMO_PROGRAM_ID) -> Instruction:
    """A memo; every key in ``signers`` becomes a required signer of the transaction."""
    data = text.encode("utf-8")
    if not data or len(data) > MAX_MEMO_BYTES:
        raise ValueError(f"a memo must be 1..{MAX_MEMO_BYTES} UTF-8 bytes, got {len(data)}")
    accounts = [AccountMeta(pubkey=key, is_signer=True, is_writable=False) for key in signers]
    return Instruction(program_id, data, accounts)


def _check_amount(amount: int) -> None:
    if not 0 < amount < 2**64:
        raise ValueError(f"a token amount must be 1..2**64-1 base units, got {amount}")
