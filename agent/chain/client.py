"""The one way edgeproof talks to a Solana cluster: solana-py's real client behind a small,
synchronous facade chosen by an RPC URL (localnet, devnet and mainnet run the same code).

Every failure is translated here, once, into :class:`~agent.errors.ChainError` (or its
subclasses) with a catalogued reason: transport errors and HTTP 429/5xx are retried with
exponential backoff, then become ``rpc_unreachable``; the node's errors keep their meaning
(``simulation_failed`` with the err and logs, ``blockhash_not_found``, ``already_processed``, ...).
solana-py 0.41 ships only the asyncio client, so this facade owns a private event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment, Confirmed
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solders.account import Account
from solders.errors import SerdeJSONError
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.rpc.requests import IsBlockhashValid
from solders.rpc.responses import IsBlockhashValidResp
from solders.signature import Signature
from solders.transaction import Transaction, VersionedTransaction
from solders.transaction_status import EncodedConfirmedTransactionWithStatusMeta

from agent.chain.encoding import token_account
from agent.chain.tx_errors import err_json, err_text
from agent.errors import BlockhashExpiredError, ChainError, ChainUnavailableError, ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")
#: HTTP statuses worth retrying (rate limit, gateway trouble).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: The largest answer read from a node (a full getTransaction is a few KiB; a block is not asked).
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: Signatures per getSignatureStatuses call (a node refuses more).
STATUSES_PER_CALL = 256
#: Fieldless transaction errors (by their RPC name) with a reason of their own.
_FIELDLESS_REASONS = {
    "BlockhashNotFound": "blockhash_not_found",
    "AlreadyProcessed": "already_processed",
    "SignatureFailure": "signature_failure",
}


class AnswerTooLarge(httpx2.HTTPError):
    """The node's answer is over :data:`MAX_ANSWER_BYTES` (raised while it is read, so never held)."""


async def _read_bounded(response: httpx2.Response) -> None:
    """A response hook: read the body, at most ``MAX_ANSWER_BYTES`` of it (declared or streamed)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        await response.aclose()
        raise AnswerTooLarge(f"the answer declares {declared} bytes")
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_bytes():
        size += len(part)
        if size > MAX_ANSWER_BYTES:
            await response.aclose()
            raise AnswerTooLarge(f"the answer is over {MAX_ANSWER_BYTES} bytes")
        parts.append(part)
    # httpx's own read (Response.aread) then finds the body already there.
    response._content = b"".join(parts)


@dataclass(frozen=True)
class LatestBlockhash:
    blockhash: Hash
    last_valid_block_height: int


def translate_rpc_error(error: Any, what: str) -> ChainError:
    """A node's JSON-RPC error (solders' parsed form) -> ChainError with a reason."""
    data = getattr(error, "data", None)
    message = getattr(error, "message", None) or str(error)
    if data is not None and hasattr(data, "err") and data.err is not None:
        err = err_json(data.err)
        reason = (
            _FIELDLESS_REASONS.get(err, "simulation_failed") if isinstance(err, str) else "simulation_failed"
        )
        return ChainError(
            f"{what}: {message}",
            reason=reason,
            err=err,
            logs=list(data.logs or []),
        )
    if "TransactionSignatureVerificationFailure" in repr(error):
        return ChainError(f"{what}: transaction signature verification failure", reason="signature_failure")
    return ChainError(f"{what}: the RPC node answered: {message}", reason="rpc_error")


class ChainClient:
    """Synchronous and thread-safe (calls are serialised); use as a context manager."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.25,
        poll_s: float = 0.2,
        confirm_timeout_s: float = 90.0,
        commitment: Commitment = Confirmed,
    ) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise ConfigError(f"RPC URL {url!r} must start with http:// or https://")
        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.poll_s = poll_s
        self.confirm_timeout_s = confirm_timeout_s
        self.commitment = commitment
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        # Retries are ours (with backoff, counted); solana-py's own immediate retry is off.
        self._rpc = AsyncClient(url, commitment=commitment, timeout=timeout_s, max_transport_retries=0)
        self._rpc._provider.session.event_hooks = {"request": [], "response": [_read_bounded]}
        self.retried = 0
        self._last_call_retried = False

    def __enter__(self) -> ChainClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._loop.is_closed():
                return
            self._loop.run_until_complete(self._rpc.close())
            self._loop.close()

    # --- the one translation point -------------------------------------------------------------
    def _call(self, what: str, factory: Callable[[], Awaitable[T]]) -> T:
        with self._lock:
            attempt = 0
            self._last_call_retried = False
            while True:
                try:
                    return self._loop.run_until_complete(_awaited(factory))
                except RPCException as exc:
                    raise translate_rpc_error(exc.args[0] if exc.args else exc, what) from None
                except SolanaRpcException as exc:
                    cause = exc.__cause__
                    if isinstance(cause, AnswerTooLarge):
                        raise ChainError(
                            f"{what}: {self.url} answered over {MAX_ANSWER_BYTES} bytes; not read further",
                            reason="rpc_oversized",
                        ) from None
                    if _retryable(cause) and attempt < self.retries:
                        delay = self.backoff_s * 2**attempt
                        log.info(
                            "rpc_retry",
                            extra={
                                "what": what,
                                "attempt": attempt + 1,
                                "delay_s": delay,
                                "error": _describe(cause),
                            },
                        )
                        time.sleep(delay)
                        attempt += 1
                        self.retried += 1
                        self._last_call_retried = True
                        continue
                    if isinstance(cause, httpx2.HTTPStatusError) and not _retryable(cause):
                        raise ChainError(
                            f"{what}: {self.url} answered {_describe(cause)}", reason="rpc_error"
                        ) from None
                    raise ChainUnavailableError(
                        f"{what}: {self.url} is unreachable after {attempt + 1} attempt(s): {_describe(cause)}",
                        reason="rpc_unreachable",
                        hint="check the RPC URL and that the node (or `edgeproof chain localnet`) is running",
                    ) from None
                except (ValueError, SerdeJSONError) as exc:  # solders could not parse the answer
                    raise ChainError(
                        f"{what}: malformed answer from {self.url}: {exc}", reason="rpc_error"
                    ) from None

    # --- reads ---------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """``getHealth`` answered ``ok``."""
        return bool(self._call("getHealth", lambda: self._rpc.is_connected()))

    def slot(self) -> int:
        return self._call("getSlot", lambda: self._rpc.get_slot()).value

    def block_height(self) -> int:
        return self._call("getBlockHeight", lambda: self._rpc.get_block_height()).value

    def latest_blockhash(self) -> LatestBlockhash:
        value = self._call("getLatestBlockhash", lambda: self._rpc.get_latest_blockhash()).value
        return LatestBlockhash(value.blockhash, value.last_valid_block_height)

    def is_blockhash_valid(self, blockhash: Hash) -> bool:
        # solana-py has no method for it; its provider sends solders' request and parses the answer.
        request = IsBlockhashValid(blockhash)
        return bool(
            self._call(
                "isBlockhashValid", lambda: self._rpc._provider.make_request(request, IsBlockhashValidResp)
            ).value
        )

    def balance(self, key: Pubkey) -> int:
        return self._call("getBalance", lambda: self._rpc.get_balance(key)).value

    def account(self, key: Pubkey) -> Account | None:
        return self._call("getAccountInfo", lambda: self._rpc.get_account_info(key)).value

    def token_amount(self, key: Pubkey) -> int | None:
        """Base units in token account ``key``; None when there is no such token account."""
        token = token_account(self.account(key))
        return token.amount if token is not None else None

    def token_accounts(self, owner: Pubkey, mint: Pubkey) -> list[Pubkey]:
        from solana.rpc.models import TokenAccountOpts

        resp = self._call(
            "getTokenAccountsByOwner",
            lambda: self._rpc.get_token_accounts_by_owner(owner, TokenAccountOpts(mint=mint)),
        )
        return [item.pubkey for item in resp.value]

    def owned_token_accounts(self, owner: Pubkey) -> list[Pubkey]:
        """Every classic-token-program account ``owner`` owns."""
        from solana.rpc.models import TokenAccountOpts

        from agent.chain.programs import TOKEN_PROGRAM_ID

        resp = self._call(
            "getTokenAccountsByOwner",
            lambda: self._rpc.get_token_accounts_by_owner(
                owner, TokenAccountOpts(program_id=TOKEN_PROGRAM_ID)
            ),
        )
        return [item.pubkey for item in resp.value]

    def rent_exempt_minimum(self, size: int) -> int:
        return self._call(
            "getMinimumBalanceForRentExemption",
            lambda: self._rpc.get_minimum_balance_for_rent_exemption(size),
        ).value

    def status(self, signature: Signature) -> Any | None:
        """The signature's status (solders ``TransactionStatus``) or None when not on chain."""
        return self.statuses([signature])[0]

    def statuses(self, signatures: Sequence[Signature]) -> list[Any | None]:
        """Each signature's status (or None), in order: one call per 256, a node's limit."""
        found: list[Any | None] = []
        for start in range(0, len(signatures), STATUSES_PER_CALL):
            found.extend(self._statuses(list(signatures[start : start + STATUSES_PER_CALL])))
        return found

    def _statuses(self, chunk: list[Signature]) -> list[Any | None]:
        resp = self._call(
            "getSignatureStatuses",
            lambda: self._rpc.get_signature_statuses(chunk, search_transaction_history=True),
        )
        if len(resp.value) != len(chunk):
            raise ChainError(
                f"getSignatureStatuses: {self.url} answered {len(resp.value)} statuses for {len(chunk)}",
                reason="rpc_error",
            )
        return list(resp.value)

    def transaction(self, signature: Signature) -> EncodedConfirmedTransactionWithStatusMeta | None:
        """The landed transaction (base64, any version) with its meta, or None."""
        return self._call(
            "getTransaction",
            lambda: self._rpc.get_transaction(
                signature, encoding="base64", max_supported_transaction_version=0
            ),
        ).value

    # --- writes --------------------------------------------------------------------------------
    def airdrop(self, key: Pubkey, lamports: int) -> Signature:
        return self._call("requestAirdrop", lambda: self._rpc.request_airdrop(key, lamports)).value

    def simulate(self, tx: VersionedTransaction, *, sig_verify: bool = False) -> Any:
        """The simulation value (err, logs, unitsConsumed); never raises for a failing transaction."""
        return self._call(
            "simulateTransaction", lambda: self._rpc.simulate_transaction(tx, sig_verify=sig_verify)
        ).value

    def send(self, tx: VersionedTransaction | Transaction, *, skip_preflight: bool = False) -> Signature:
        wire = bytes(tx)
        signature = tx.signatures[0]
        opts = TxOpts(
            skip_preflight=skip_preflight, skip_confirmation=True, preflight_commitment=self.commitment
        )
        try:
            return self._call(
                "sendTransaction", lambda: self._rpc.send_raw_transaction(wire, opts=opts)
            ).value
        except ChainError as exc:
            # A retry after a lost answer meets its own first attempt: that is success, not a failure.
            if exc.reason == "already_processed" and self._last_call_retried:
                return signature
            raise

    def confirm(self, signature: Signature, last_valid_block_height: int) -> None:
        """Wait until the transaction is confirmed; raise when it failed, expired or took too long."""
        deadline = time.monotonic() + self.confirm_timeout_s
        while True:
            status = self.status(signature)
            if status is not None:
                if status.err is not None:
                    raise ChainError(
                        f"transaction {signature} failed: {err_text(status.err)}",
                        reason="transaction_failed",
                        err=err_json(status.err),
                    )
                return
            if self.block_height() > last_valid_block_height:
                if self.status(signature) is None:  # a last look: it may have landed in the last slot
                    raise BlockhashExpiredError(
                        f"transaction {signature} expired: block height passed {last_valid_block_height}",
                        reason="blockhash_expired",
                        hint="build the transaction again with a fresh blockhash",
                    )
                continue
            if time.monotonic() > deadline:
                raise ChainError(
                    f"transaction {signature} not confirmed within {self.confirm_timeout_s:g} s",
                    reason="not_confirmed",
                )
            time.sleep(self.poll_s)

    def send_and_confirm(
        self, instructions: Sequence[Instruction], signers: Sequence[Keypair], *, payer: Pubkey | None = None
    ) -> Signature:
        """Build with a fresh blockhash, sign, send with preflight, confirm."""
        latest = self.latest_blockhash()
        fee_payer = payer or signers[0].pubkey()
        message = Message.new_with_blockhash(list(instructions), fee_payer, latest.blockhash)
        tx = Transaction(list(signers), message, latest.blockhash)
        signature = self.send(tx)
        self.confirm(signature, latest.last_valid_block_height)
        return signature


async def _awaited(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


def _retryable(cause: BaseException | None) -> bool:
    if isinstance(cause, httpx2.HTTPStatusError):
        return cause.response.status_code in RETRY_STATUSES
    return isinstance(cause, httpx2.TransportError)


def _describe(cause: BaseException | None) -> str:
    if isinstance(cause, httpx2.HTTPStatusError):
        return f"HTTP {cause.response.status_code}"
    if cause is None:
        return "unknown error"
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
