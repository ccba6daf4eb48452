"""Program ids and account sizes the chain code uses, in one place."""

from __future__ import annotations

from solders.pubkey import Pubkey

SYSTEM_PROGRAM_ID = Pubkey.from_string("11111111111111111111111111111111")
TOKEN_PROGRAM_ID = Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA")
ASSOCIATED_TOKEN_PROGRAM_ID = Pubkey.from_string("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL")
#: SPL Memo v2 (checks its signers). LiteSVM in solders 0.29 ships it, and Memo v1 as well.
MEMO_PROGRAM_ID = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
MEMO_V1_PROGRAM_ID = Pubkey.from_string("Memo1UhkJRfHyvLMcVucJwxXeuD728EqVDDwQDxFMNo")
SYSVAR_OWNER_ID = Pubkey.from_string("Sysvar1111111111111111111111111111111111111")

#: Bytes of an SPL token mint and of a token account.
MINT_LEN = 82
TOKEN_ACCOUNT_LEN = 165
#: The largest serialized transaction a cluster accepts (a UDP packet's payload).
PACKET_DATA_SIZE = 1232
#: Lamports per SOL.
LAMPORTS_PER_SOL = 1_000_000_000
