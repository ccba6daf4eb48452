"""JSON-RPC error codes and the one exception the ledger's methods raise.

Codes and messages follow what a Solana validator's RPC answers (``solana-rpc-client-api``
``custom_error.rs`` and the JSON-RPC 2.0 spec), so the same client code reacts the same way to the
local ledger and to a real cluster.
"""

from __future__ import annotations

from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: ``sendTransaction`` preflight simulation failed (data: the simulation result).
SEND_TRANSACTION_PREFLIGHT_FAILURE = -32002
#: A signature does not verify.
TRANSACTION_SIGNATURE_VERIFICATION_FAILURE = -32003
#: ``getTransaction`` of a v0 transaction without ``maxSupportedTransactionVersion``.
UNSUPPORTED_TRANSACTION_VERSION = -32015


class RpcError(Exception):
    """A JSON-RPC error object: ``{"code": ..., "message": ..., "data"?: ...}``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            doc["data"] = self.data
        return doc


def invalid_params(detail: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"Invalid params: {detail}")


def invalid_param(detail: str) -> RpcError:
    """A validator's wording for one bad value (``Invalid param: Invalid``, ``... not a Token account``)."""
    return RpcError(INVALID_PARAMS, f"Invalid param: {detail}")
