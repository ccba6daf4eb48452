"""JSON-RPC 2.0 framing for the local ledger: one request or a batch in, the response(s) out.

Pure over a ``call(method, params)`` function, so hostile input (bad JSON, wrong envelope,
huge batches) is handled here and never reaches the ledger.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from agent.chain.rpc_errors import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, RpcError

log = logging.getLogger(__name__)

#: A validator's ``MAX_REQUEST_BODY_SIZE`` (50 KiB).
MAX_BODY_BYTES = 50 * 1024
#: Requests in one batch.
MAX_BATCH = 100
Call = Callable[[str, list[Any]], Any]


def _error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": RpcError(code, message, data).as_json(), "id": request_id}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_error() -> dict[str, Any]:
    return _error(None, PARSE_ERROR, "Parse error")


def handle_body(body: bytes, call: Call, on_error: Callable[[int], None] | None = None) -> Any:
    """The response document (an object or a list), or None when nothing is to be answered."""
    note = on_error or (lambda code: None)
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        note(PARSE_ERROR)
        return parse_error()
    if isinstance(doc, list):
        if not doc or len(doc) > MAX_BATCH:
            note(INVALID_REQUEST)
            detail = "empty batch" if not doc else f"a batch of {len(doc)} exceeds {MAX_BATCH} requests"
            return _error(None, INVALID_REQUEST, f"Invalid request: {detail}")
        answers = [handle_one(item, call, note) for item in doc]
        kept = [a for a in answers if a is not None]
        return kept or None
    return handle_one(doc, call, note)


def handle_one(doc: Any, call: Call, note: Callable[[int], None]) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        note(INVALID_REQUEST)
        return _error(None, INVALID_REQUEST, "Invalid request")
    request_id = doc.get("id")
    id_ok = request_id is None or (isinstance(request_id, (str, int)) and not isinstance(request_id, bool))
    method = doc.get("method")
    if doc.get("jsonrpc") != "2.0" or not isinstance(method, str) or not id_ok:
        note(INVALID_REQUEST)
        return _error(request_id if id_ok else None, INVALID_REQUEST, "Invalid request")
    params = doc.get("params", [])
    notification = "id" not in doc
    if params is None:
        params = []
    if not isinstance(params, list):
        note(INVALID_PARAMS)
        answer = _error(request_id, INVALID_PARAMS, "Invalid params: params must be an array")
        return None if notification else answer
    try:
        answer = {"jsonrpc": "2.0", "result": call(method, params), "id": request_id}
    except RpcError as exc:
        note(exc.code)
        answer = _error(request_id, exc.code, exc.message, exc.data)
    except Exception:  # a bug in a handler must not kill the server; the record says which
        log.exception("rpc_internal_error", extra={"method": method})
        note(INTERNAL_ERROR)
        answer = _error(request_id, INTERNAL_ERROR, "Internal error")
    return None if notification else answer
