"""Accounts, transactions and token amounts in the JSON shapes a validator's RPC returns (pure)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from solders.account import Account
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.token.state import Mint, TokenAccount, TokenAccountState
from solders.transaction import VersionedTransaction

from agent.chain import b58
from agent.chain.programs import MINT_LEN, PACKET_DATA_SIZE, TOKEN_ACCOUNT_LEN, TOKEN_PROGRAM_ID
from agent.chain.rpc_errors import INVALID_REQUEST, RpcError, invalid_params

#: A validator's ``rentEpoch`` for a rent-exempt account.
RENT_EXEMPT_EPOCH = 2**64 - 1
ACCOUNT_ENCODINGS = ("base64", "base58", "jsonParsed")
#: A validator refuses base58 for account data longer than this (base58 is quadratic).
MAX_BASE58_ACCOUNT_BYTES = 128
#: Encoded sizes of a 1232-byte transaction: checked before decoding, as a validator does.
MAX_BASE58_TX_CHARS = 1683
MAX_BASE64_TX_CHARS = 1644


def ui_amount(amount: int, decimals: int) -> dict[str, Any]:
    """``{"amount": "300", "decimals": 6, "uiAmount": 0.0003, "uiAmountString": "0.0003"}``."""
    scaled = Decimal(amount).scaleb(-decimals)
    text = format(scaled.normalize(), "f") if amount else "0"
    return {"amount": str(amount), "decimals": decimals, "uiAmount": float(scaled), "uiAmountString": text}


def token_account(account: Account | None) -> TokenAccount | None:
    """The token account in ``account``, or None when it is not one of the token program's."""
    if account is None or account.owner != TOKEN_PROGRAM_ID or len(account.data) != TOKEN_ACCOUNT_LEN:
        return None
    return TokenAccount.from_bytes(bytes(account.data))


def mint_state(account: Account | None) -> Mint | None:
    if account is None or account.owner != TOKEN_PROGRAM_ID or len(account.data) != MINT_LEN:
        return None
    return Mint.from_bytes(bytes(account.data))


def _state_name(state: TokenAccountState) -> str:
    if state == TokenAccountState.Initialized:
        return "initialized"
    if state == TokenAccountState.Frozen:
        return "frozen"
    return "uninitialized"


def _parsed(account: Account, decimals_of: Callable[[Pubkey], int | None]) -> dict[str, Any] | None:
    token = token_account(account)
    if token is not None:
        decimals = decimals_of(token.mint)
        if decimals is None:
            return None
        info: dict[str, Any] = {
            "isNative": token.is_native is not None,
            "mint": str(token.mint),
            "owner": str(token.owner),
            "state": _state_name(token.state),
            "tokenAmount": ui_amount(token.amount, decimals),
        }
        if token.delegate is not None:
            info["delegate"] = str(token.delegate)
            info["delegatedAmount"] = ui_amount(token.delegated_amount, decimals)
        if token.close_authority is not None:
            info["closeAuthority"] = str(token.close_authority)
        return {
            "program": "spl-token",
            "parsed": {"info": info, "type": "account"},
            "space": TOKEN_ACCOUNT_LEN,
        }
    mint = mint_state(account)
    if mint is not None:
        return {
            "program": "spl-token",
            "parsed": {
                "info": {
                    "decimals": mint.decimals,
                    "freezeAuthority": str(mint.freeze_authority) if mint.freeze_authority else None,
                    "isInitialized": mint.is_initialized,
                    "mintAuthority": str(mint.mint_authority) if mint.mint_authority else None,
                    "supply": str(mint.supply),
                },
                "type": "mint",
            },
            "space": MINT_LEN,
        }
    return None


def account_json(
    account: Account,
    encoding: str,
    *,
    decimals_of: Callable[[Pubkey], int | None],
    data_slice: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """``{"data": ..., "executable", "lamports", "owner", "rentEpoch", "space"}``.

    ``jsonParsed`` parses token accounts and mints and falls back to base64 as a validator does.
    """
    raw = bytes(account.data)
    data: Any
    if encoding == "jsonParsed":
        parsed = _parsed(account, decimals_of)
        data = parsed if parsed is not None else [base64.b64encode(raw).decode(), "base64"]
    else:
        if data_slice is not None:
            offset, length = data_slice
            raw = raw[offset : offset + length]
        if encoding == "base58":
            if len(raw) > MAX_BASE58_ACCOUNT_BYTES:
                raise RpcError(
                    INVALID_REQUEST,
                    f"Encoded binary (base 58) data should be less than {MAX_BASE58_ACCOUNT_BYTES} bytes, "
                    "please use Base64 encoding.",
                )
            data = [b58.encode(raw), "base58"]
        else:
            data = [base64.b64encode(raw).decode(), "base64"]
    return {
        "data": data,
        "executable": account.executable,
        "lamports": account.lamports,
        "owner": str(account.owner),
        "rentEpoch": RENT_EXEMPT_EPOCH,
        "space": len(account.data),
    }


def decode_wire_transaction(text: Any, encoding: str) -> VersionedTransaction:
    """A ``sendTransaction`` / ``simulateTransaction`` payload -> transaction, or -32602."""
    if not isinstance(text, str):
        raise invalid_params("the transaction must be an encoded string")
    limit = MAX_BASE64_TX_CHARS if encoding == "base64" else MAX_BASE58_TX_CHARS
    if len(text) > limit:
        raise invalid_params(
            f"{encoding} encoded transaction too large: {len(text)} bytes (max: encoded/raw {limit}/{PACKET_DATA_SIZE})"
        )
    try:
        if encoding == "base64":
            raw = base64.b64decode(text, validate=True)
        elif encoding == "base58":
            raw = b58.decode(text)
        else:
            raise invalid_params(f"unsupported encoding: {encoding}. Supported encodings: base58, base64")
    except ValueError as exc:
        raise invalid_params(f"invalid {encoding} encoding: {exc}") from None
    try:
        return VersionedTransaction.from_bytes(raw)
    except ValueError as exc:
        raise invalid_params(f"failed to deserialize VersionedTransaction: {exc}") from None


def transaction_version(tx: VersionedTransaction) -> str | int:
    return 0 if isinstance(tx.message, MessageV0) else "legacy"


def transaction_json(tx: VersionedTransaction) -> dict[str, Any]:
    """The ``json`` encoding of a transaction in ``getTransaction``."""
    message = tx.message
    header = message.header
    doc: dict[str, Any] = {
        "accountKeys": [str(k) for k in message.account_keys],
        "header": {
            "numReadonlySignedAccounts": header.num_readonly_signed_accounts,
            "numReadonlyUnsignedAccounts": header.num_readonly_unsigned_accounts,
            "numRequiredSignatures": header.num_required_signatures,
        },
        "instructions": [
            {
                "accounts": list(bytes(ix.accounts)),
                "data": b58.encode(bytes(ix.data)),
                "programIdIndex": ix.program_id_index,
                "stackHeight": None,
            }
            for ix in message.instructions
        ],
        "recentBlockhash": str(message.recent_blockhash),
    }
    if isinstance(message, MessageV0):
        doc["addressTableLookups"] = [
            {
                "accountKey": str(lookup.account_key),
                "readonlyIndexes": list(bytes(lookup.readonly_indexes)),
                "writableIndexes": list(bytes(lookup.writable_indexes)),
            }
            for lookup in message.address_table_lookups
        ]
    return {"message": doc, "signatures": [str(s) for s in tx.signatures]}


def inner_instructions_json(inner: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """LiteSVM's per-instruction inner instruction lists -> ``meta.innerInstructions``."""
    out = []
    for index, items in enumerate(inner):
        if not items:
            continue
        out.append(
            {
                "index": index,
                "instructions": [
                    {
                        "accounts": list(bytes(item.instruction().accounts)),
                        "data": b58.encode(bytes(item.instruction().data)),
                        "programIdIndex": item.instruction().program_id_index,
                        "stackHeight": item.stack_height(),
                    }
                    for item in items
                ],
            }
        )
    return out


def message_keys(tx: VersionedTransaction) -> list[Pubkey]:
    return list(tx.message.account_keys)
