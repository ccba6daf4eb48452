"""The JSON-RPC methods of the local ledger: ``params`` in, a validator-shaped ``result`` out.

Each handler runs with the ledger's lock held and raises :class:`RpcError` for anything a
validator would refuse. :data:`METHODS` is the whole table; an unknown name is ``-32601``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from solders.pubkey import Pubkey
from solders.signature import Signature

from agent.chain import b58
from agent.chain.encoding import (
    ACCOUNT_ENCODINGS,
    account_json,
    decode_wire_transaction,
    token_account,
    transaction_json,
    transaction_version,
    ui_amount,
)
from agent.chain.ledger import Ledger, blockhash_of
from agent.chain.programs import TOKEN_PROGRAM_ID
from agent.chain.rpc_errors import UNSUPPORTED_TRANSACTION_VERSION, RpcError, invalid_param, invalid_params

API_VERSION = "2.2.0"
#: A validator's cap on ``getSignatureStatuses`` inputs.
MAX_SIGNATURE_STATUSES = 256
_COMMITMENTS = (None, "processed", "confirmed", "finalized")
Handler = Callable[[Ledger, list[Any]], Any]


# --- parameter helpers ------------------------------------------------------------------------
def _arity(params: list[Any], low: int, high: int) -> None:
    if not low <= len(params) <= high:
        want = f"{low}" if low == high else f"{low} to {high}"
        raise invalid_params(f"expected {want} parameters, got {len(params)}")


def _pubkey(value: Any) -> Pubkey:
    if not isinstance(value, str):
        raise invalid_param("Invalid")
    try:
        return Pubkey.from_string(value)
    except ValueError:
        raise invalid_param("Invalid") from None


def _signature(value: Any) -> Signature:
    if not isinstance(value, str):
        raise invalid_param("Invalid")
    try:
        return Signature.from_string(value)
    except ValueError:
        raise invalid_param("Invalid") from None


def _config(params: list[Any], index: int) -> dict[str, Any]:
    if len(params) <= index or params[index] is None:
        return {}
    config = params[index]
    if not isinstance(config, dict):
        raise invalid_params(f"parameter {index} must be a configuration object")
    if config.get("commitment") not in _COMMITMENTS:
        raise invalid_params(f"unknown commitment {config.get('commitment')!r}")
    return config


def _uint(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise invalid_params(f"{what} must be an unsigned 64-bit integer")
    return value


def _flag(config: dict[str, Any], key: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise invalid_params(f"{key} must be true or false")
    return value


def _with_context(ledger: Ledger, value: Any) -> dict[str, Any]:
    return {"context": {"apiVersion": API_VERSION, "slot": ledger.clock.slot}, "value": value}


def _account_encoding(config: dict[str, Any], default: str = "base64") -> str:
    encoding = config.get("encoding", default)
    if encoding not in ACCOUNT_ENCODINGS:
        raise invalid_params(
            f"unsupported account encoding {encoding!r}; use one of {', '.join(ACCOUNT_ENCODINGS)}"
        )
    return str(encoding)


def _data_slice(config: dict[str, Any]) -> tuple[int, int] | None:
    spec = config.get("dataSlice")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise invalid_params("dataSlice must be {offset, length}")
    return _uint(spec.get("offset"), "dataSlice.offset"), _uint(spec.get("length"), "dataSlice.length")


def _wire(ledger: Ledger, params: list[Any], config: dict[str, Any], *, verify: bool) -> Any:
    encoding = config.get("encoding", "base58")
    tx = decode_wire_transaction(params[0], str(encoding))
    ledger.check_wire(tx, len(bytes(tx)), verify=verify)
    return tx


# --- methods ----------------------------------------------------------------------------------
def get_health(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 0, 0)
    return "ok"


def get_version(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 0, 0)
    return {"solana-core": f"{API_VERSION}-edgeproof-localnet", "feature-set": 0}


def get_slot(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 0, 1)
    _config(params, 0)
    return ledger.clock.slot


def get_block_height(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 0, 1)
    _config(params, 0)
    return ledger.clock.block_height


def get_latest_blockhash(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 0, 1)
    _config(params, 0)
    latest = ledger.clock.latest()
    return _with_context(
        ledger, {"blockhash": str(latest.blockhash), "lastValidBlockHeight": latest.last_valid_block_height}
    )


def is_blockhash_valid(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 1, 2)
    _config(params, 1)
    if not isinstance(params[0], str):
        raise invalid_params("the blockhash must be a base58 string")
    return _with_context(ledger, ledger.clock.is_valid(blockhash_of(params[0])))


def get_minimum_balance_for_rent_exemption(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 1, 2)
    _config(params, 1)
    size = _uint(params[0], "the data length")
    if size > 10 * 1024 * 1024:
        raise invalid_params("the data length exceeds the 10 MiB account limit")
    return ledger.svm.minimum_balance_for_rent_exemption(size)


def get_balance(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 1, 2)
    _config(params, 1)
    account = ledger.account(_pubkey(params[0]))
    return _with_context(ledger, account.lamports if account is not None else 0)


def get_account_info(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 1, 2)
    config = _config(params, 1)
    key = _pubkey(params[0])
    encoding = _account_encoding(config, default="base58")
    account = ledger.account(key)
    if account is None:
        return _with_context(ledger, None)
    doc = account_json(account, encoding, decimals_of=ledger.decimals_of, data_slice=_data_slice(config))
    return _with_context(ledger, doc)


def get_token_account_balance(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 1, 2)
    _config(params, 1)
    account = ledger.account(_pubkey(params[0]))
    if account is None:
        raise invalid_param("could not find account")
    token = token_account(account)
    decimals = ledger.decimals_of(token.mint) if token is not None else None
    if token is None or decimals is None:
        raise invalid_param("not a Token account")
    return _with_context(ledger, ui_amount(token.amount, decimals))


def get_token_accounts_by_owner(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 2, 3)
    owner = _pubkey(params[0])
    account_filter = params[1]
    config = _config(params, 2)
    encoding = _account_encoding(config)
    if not isinstance(account_filter, dict) or len(account_filter) != 1:
        raise invalid_params('the filter must be {"mint": ...} or {"programId": ...}')
    mint: Pubkey | None = None
    if "mint" in account_filter:
        mint = _pubkey(account_filter["mint"])
    elif "programId" in account_filter:
        if _pubkey(account_filter["programId"]) != TOKEN_PROGRAM_ID:
            raise invalid_param("unrecognized Token program id")
    else:
        raise invalid_params('the filter must be {"mint": ...} or {"programId": ...}')
    found = []
    for key, account in ledger.svm.get_program_accounts(TOKEN_PROGRAM_ID):
        token = token_account(account)
        if token is None or token.owner != owner or (mint is not None and token.mint != mint):
            continue
        doc = account_json(account, encoding, decimals_of=ledger.decimals_of, data_slice=_data_slice(config))
        found.append({"pubkey": str(key), "account": doc})
    found.sort(key=lambda item: str(item["pubkey"]))
    return _with_context(ledger, found)


def request_airdrop(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 2, 3)
    _config(params, 2)
    key = _pubkey(params[0])
    return str(ledger.airdrop(key, _uint(params[1], "lamports")))


def send_transaction(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 1, 2)
    config = _config(params, 1)
    if config.get("preflightCommitment") not in _COMMITMENTS:
        raise invalid_params(f"unknown preflightCommitment {config.get('preflightCommitment')!r}")
    skip = _flag(config, "skipPreflight")
    tx = _wire(ledger, params, config, verify=True)
    return str(ledger.send(tx, skip_preflight=skip))


def simulate_transaction(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 1, 2)
    config = _config(params, 1)
    sig_verify = _flag(config, "sigVerify")
    replace = _flag(config, "replaceRecentBlockhash")
    if sig_verify and replace:
        raise invalid_params("sigVerify may not be used with replaceRecentBlockhash")
    tx = _wire(ledger, params, config, verify=sig_verify)
    return _with_context(ledger, ledger.simulate(tx, sig_verify=sig_verify, replace_blockhash=replace))


def get_signature_statuses(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 1, 2)
    if len(params) > 1 and params[1] is not None and not isinstance(params[1], dict):
        raise invalid_params("parameter 1 must be a configuration object")
    if not isinstance(params[0], list):
        raise invalid_params("parameter 0 must be a list of signatures")
    if len(params[0]) > MAX_SIGNATURE_STATUSES:
        raise invalid_params(f"Too many inputs provided; max {MAX_SIGNATURE_STATUSES}")
    signatures = [_signature(s) for s in params[0]]
    return _with_context(ledger, [ledger.status(s) for s in signatures])


def get_transaction(ledger: Ledger, params: list[Any]) -> Any:
    _arity(params, 1, 2)
    if len(params) > 1 and isinstance(params[1], str):  # the deprecated positional encoding
        config: dict[str, Any] = {"encoding": params[1]}
    else:
        config = _config(params, 1)
    signature = _signature(params[0])
    encoding = config.get("encoding", "json")
    if encoding not in ("json", "base64", "base58"):
        raise invalid_params(f"unsupported transaction encoding {encoding!r}; use json, base64 or base58")
    max_version = config.get("maxSupportedTransactionVersion")
    if max_version is not None and max_version != 0:
        raise invalid_params("maxSupportedTransactionVersion must be 0")
    record = ledger.history.get(signature)
    if record is None:
        return None
    raw = base64.b64decode(record["tx"])
    tx = decode_wire_transaction(record["tx"], "base64")
    version = transaction_version(tx)
    if version != "legacy" and max_version is None:
        raise RpcError(
            UNSUPPORTED_TRANSACTION_VERSION,
            f"Transaction version ({version}) is not supported by the requesting client. Please try the "
            'request again with the following configuration parameter: "maxSupportedTransactionVersion": 0',
        )
    if encoding == "json":
        transaction: Any = transaction_json(tx)
    elif encoding == "base64":
        transaction = [record["tx"], "base64"]
    else:
        transaction = [b58.encode(raw), "base58"]
    err = record["err"]
    meta = {
        "computeUnitsConsumed": record["computeUnitsConsumed"],
        "err": err,
        "fee": record["fee"],
        "innerInstructions": record["innerInstructions"],
        "loadedAddresses": {"readonly": [], "writable": []},
        "logMessages": record["logMessages"],
        "postBalances": record["postBalances"],
        "postTokenBalances": record["postTokenBalances"],
        "preBalances": record["preBalances"],
        "preTokenBalances": record["preTokenBalances"],
        "rewards": [],
        "status": {"Ok": None} if err is None else {"Err": err},
    }
    doc: dict[str, Any] = {
        "blockTime": record["blockTime"],
        "meta": meta,
        "slot": record["slot"],
        "transaction": transaction,
    }
    if max_version is not None:
        doc["version"] = version
    return doc


METHODS: dict[str, Handler] = {
    "getAccountInfo": get_account_info,
    "getBalance": get_balance,
    "getBlockHeight": get_block_height,
    "getHealth": get_health,
    "getLatestBlockhash": get_latest_blockhash,
    "getMinimumBalanceForRentExemption": get_minimum_balance_for_rent_exemption,
    "getSignatureStatuses": get_signature_statuses,
    "getSlot": get_slot,
    "getTokenAccountBalance": get_token_account_balance,
    "getTokenAccountsByOwner": get_token_accounts_by_owner,
    "getTransaction": get_transaction,
    "getVersion": get_version,
    "isBlockhashValid": is_blockhash_valid,
    "requestAirdrop": request_airdrop,
    "sendTransaction": send_transaction,
    "simulateTransaction": simulate_transaction,
}
