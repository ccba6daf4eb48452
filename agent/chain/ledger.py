"""The local ledger: LiteSVM with a wall-time clock, a transaction record and snapshots.

One :class:`Ledger` is shared by every RPC request; callers hold :attr:`Ledger.lock` around
each call (LiteSVM is not thread-safe). LiteSVM's own blockhash check is off: it only knows
one current blockhash, while a validator accepts any of the last 150, so
:class:`~agent.chain.ledger_clock.LedgerClock` decides validity here, and refuses as a
validator refuses (preflight: ``BlockhashNotFound``; ``skipPreflight``: the transaction is
dropped and never lands).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from solders.account import Account
from solders.hash import Hash
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction, VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata

from agent.chain import spl
from agent.chain.encoding import inner_instructions_json, message_keys, mint_state, token_account, ui_amount
from agent.chain.ledger_clock import DEFAULT_VALIDITY_SLOTS, LedgerClock
from agent.chain.programs import (
    MEMO_V1_PROGRAM_ID,
    PACKET_DATA_SIZE,
    SYSTEM_PROGRAM_ID,
    SYSVAR_OWNER_ID,
    TOKEN_PROGRAM_ID,
)
from agent.chain.rpc_errors import (
    SEND_TRANSACTION_PREFLIGHT_FAILURE,
    TRANSACTION_SIGNATURE_VERIFICATION_FAILURE,
    RpcError,
    invalid_params,
)
from agent.chain.tx_errors import err_json, err_text, fieldless_text
from agent.errors import CorruptStateError

SNAPSHOT_FORMAT = "edgeproof-localnet-snapshot"
SNAPSHOT_VERSION = 1
#: The faucet behind ``requestAirdrop``: 500 million SOL, a deterministic key.
FAUCET = Keypair.from_seed(hashlib.sha256(b"edgeproof-localnet-faucet").digest())
FAUCET_LAMPORTS = 500_000_000 * 1_000_000_000
#: One ``requestAirdrop`` moves at most this many lamports (1000 SOL).
AIRDROP_CAP = 1_000 * 1_000_000_000
Record = dict[str, Any]


class Ledger:
    def __init__(
        self,
        *,
        slot_ms: int = 400,
        validity_slots: int = DEFAULT_VALIDITY_SLOTS,
        seed: bytes | None = None,
        start_slot: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.lock = threading.Lock()
        self._monotonic = monotonic
        self._wall = wall
        self.svm = LiteSVM().with_blockhash_check(False)
        self.clock = LedgerClock(
            seed=seed if seed is not None else os.urandom(16),
            start_slot=start_slot,
            start_mono=monotonic(),
            slot_ms=slot_ms,
            validity_slots=validity_slots,
        )
        self.history: dict[Signature, Record] = {}
        self.touched: set[Pubkey] = set()
        self.dirty = False
        self._airdrops = 0
        self._apply_clock()
        if self.svm.get_account(FAUCET.pubkey()) is None:
            self.svm.set_account(FAUCET.pubkey(), Account(FAUCET_LAMPORTS, b"", SYSTEM_PROGRAM_ID, False, 0))
            self.touched.add(FAUCET.pubkey())

    # --- time ---------------------------------------------------------------------------------
    def sync(self) -> None:
        """Catch the clock up with wall time (called before every request and on each tick)."""
        if self.clock.advance(self._monotonic()):
            self._apply_clock()

    def _apply_clock(self) -> None:
        self.svm.warp_to_slot(self.clock.slot)
        current = self.svm.get_clock()
        current.unix_timestamp = int(self._wall())
        self.svm.set_clock(current)

    # --- transactions -------------------------------------------------------------------------
    def check_wire(self, tx: VersionedTransaction, size: int, *, verify: bool = True) -> None:
        """What a validator checks before preflight: size, sanitization, signatures."""
        if size > PACKET_DATA_SIZE:
            raise invalid_params(f"transaction too large: {size} bytes (max: {PACKET_DATA_SIZE} bytes)")
        try:
            tx.sanitize()
        except Exception as exc:  # solders raises its own SanitizeError
            raise invalid_params(f"invalid transaction: {exc}") from None
        if verify and not all(tx.verify_with_results()):
            raise RpcError(
                TRANSACTION_SIGNATURE_VERIFICATION_FAILURE, "Transaction signature verification failure"
            )

    def send(self, tx: VersionedTransaction, *, skip_preflight: bool) -> Signature:
        signature = tx.signatures[0]
        if not skip_preflight:
            failure = self._preflight(tx)
            if failure is not None:
                raise failure
        if not self.clock.is_valid(tx.message.recent_blockhash) or signature in self.history:
            return signature  # a validator drops it: it never lands
        keys = message_keys(tx)
        pre_balances = self._balances(keys)
        pre_tokens = self._token_balances(keys)
        result = self.svm.send_transaction(tx)
        meta = result.meta() if isinstance(result, FailedTransactionMetadata) else result
        if meta.signature() != signature:
            return signature  # refused before execution (no fee payer funds, ...): never lands
        err = result.err() if isinstance(result, FailedTransactionMetadata) else None
        self.history[signature] = {
            "slot": self.clock.slot,
            "blockTime": int(self._wall()),
            "tx": base64.b64encode(bytes(tx)).decode(),
            "err": err_json(err) if err is not None else None,
            "fee": meta.fee(),
            "preBalances": pre_balances,
            "postBalances": self._balances(keys),
            "preTokenBalances": pre_tokens,
            "postTokenBalances": self._token_balances(keys),
            "logMessages": list(meta.logs()),
            "innerInstructions": inner_instructions_json(meta.inner_instructions()),
            "computeUnitsConsumed": meta.compute_units_consumed(),
        }
        self.touched.update(keys)
        self.dirty = True
        return signature

    def simulate(
        self, tx: VersionedTransaction, *, sig_verify: bool, replace_blockhash: bool
    ) -> dict[str, Any]:
        """The ``value`` of ``simulateTransaction``."""
        replacement = None
        if replace_blockhash:
            latest = self.clock.latest()
            replacement = {
                "blockhash": str(latest.blockhash),
                "lastValidBlockHeight": latest.last_valid_block_height,
            }
        elif not self.clock.is_valid(tx.message.recent_blockhash):
            return _simulation(err="BlockhashNotFound", logs=[], units=0)
        if tx.signatures[0] in self.history and sig_verify:
            return _simulation(err="AlreadyProcessed", logs=[], units=0)
        self.svm.with_sigverify(sig_verify)
        try:
            result = self.svm.simulate_transaction(tx)
        finally:
            self.svm.with_sigverify(True)
        if isinstance(result, FailedTransactionMetadata):
            meta = result.meta()
            doc = _simulation(
                err=err_json(result.err()), logs=list(meta.logs()), units=meta.compute_units_consumed()
            )
        else:
            meta = result.meta()
            doc = _simulation(err=None, logs=list(meta.logs()), units=meta.compute_units_consumed())
            doc["fee"] = meta.fee()
        doc["replacementBlockhash"] = replacement
        return doc

    def _preflight(self, tx: VersionedTransaction) -> RpcError | None:
        if not self.clock.is_valid(tx.message.recent_blockhash):
            return _preflight_error(
                "BlockhashNotFound", _simulation(err="BlockhashNotFound", logs=[], units=0)
            )
        if tx.signatures[0] in self.history:
            return _preflight_error("AlreadyProcessed", _simulation(err="AlreadyProcessed", logs=[], units=0))
        result = self.svm.simulate_transaction(tx)
        if not isinstance(result, FailedTransactionMetadata):
            return None
        meta = result.meta()
        data = _simulation(
            err=err_json(result.err()), logs=list(meta.logs()), units=meta.compute_units_consumed()
        )
        return RpcError(
            SEND_TRANSACTION_PREFLIGHT_FAILURE,
            f"Transaction simulation failed: {err_text(result.err())}",
            data,
        )

    def status(self, signature: Signature) -> dict[str, Any] | None:
        record = self.history.get(signature)
        if record is None:
            return None
        err = record["err"]
        return {
            "slot": record["slot"],
            "confirmations": None,
            "err": err,
            "status": {"Ok": None} if err is None else {"Err": err},
            "confirmationStatus": "finalized",
        }

    def airdrop(self, to: Pubkey, lamports: int) -> Signature:
        """A real transfer from the faucet (recorded like any transaction)."""
        if not 0 < lamports <= AIRDROP_CAP:
            raise invalid_params(f"airdrop lamports must be 1..{AIRDROP_CAP}, got {lamports}")
        self._airdrops += 1
        instructions = [
            transfer(TransferParams(from_pubkey=FAUCET.pubkey(), to_pubkey=to, lamports=lamports)),
            # A counter in a memo keeps two identical requests in one slot distinct transactions.
            spl.memo(f"airdrop {self._airdrops}", signers=[], program_id=MEMO_V1_PROGRAM_ID),
        ]
        tx = Transaction([FAUCET], Message(instructions, FAUCET.pubkey()), self.clock.latest().blockhash)
        return self.send(VersionedTransaction.from_legacy(tx), skip_preflight=False)

    # --- accounts -----------------------------------------------------------------------------
    def account(self, key: Pubkey) -> Account | None:
        account = self.svm.get_account(key)
        if account is None or (account.lamports == 0 and not account.data):
            return None
        return account

    def decimals_of(self, mint: Pubkey) -> int | None:
        state = mint_state(self.account(mint))
        return state.decimals if state is not None else None

    def _balances(self, keys: list[Pubkey]) -> list[int]:
        return [self.svm.get_balance(k) or 0 for k in keys]

    def _token_balances(self, keys: list[Pubkey]) -> list[dict[str, Any]]:
        out = []
        for index, key in enumerate(keys):
            token = token_account(self.account(key))
            if token is None:
                continue
            decimals = self.decimals_of(token.mint)
            if decimals is None:
                continue
            out.append(
                {
                    "accountIndex": index,
                    "mint": str(token.mint),
                    "owner": str(token.owner),
                    "programId": str(TOKEN_PROGRAM_ID),
                    "uiTokenAmount": ui_amount(token.amount, decimals),
                }
            )
        return out

    # --- snapshot -----------------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """Every account a transaction touched (programs and sysvars excluded), the record, the slot."""
        accounts = {}
        for key in sorted(self.touched, key=str):
            account = self.account(key)
            if account is None or account.executable or account.owner == SYSVAR_OWNER_ID:
                continue
            accounts[str(key)] = {
                "lamports": account.lamports,
                "data": base64.b64encode(bytes(account.data)).decode(),
                "owner": str(account.owner),
                "executable": account.executable,
                "rent_epoch": account.rent_epoch,
            }
        return {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "seed": self.clock.seed.hex(),
            "slot": self.clock.slot,
            "validity_slots": self.clock.validity_slots,
            "airdrops": self._airdrops,
            "accounts": accounts,
            "history": {str(sig): record for sig, record in self.history.items()},
        }

    @classmethod
    def from_state(cls, state: Any, *, slot_ms: int, validity_slots: int, source: str = "snapshot") -> Ledger:
        """Rebuild from :meth:`export_state`. The slot moves past every blockhash issued before."""
        try:
            if state.get("format") != SNAPSHOT_FORMAT or state.get("version") != SNAPSHOT_VERSION:
                raise ValueError("not an edgeproof localnet snapshot (format/version)")
            seed = bytes.fromhex(state["seed"])
            slot = int(state["slot"])
            old_validity = int(state.get("validity_slots", validity_slots))
            accounts = [
                (
                    Pubkey.from_string(key),
                    Account(
                        int(doc["lamports"]),
                        base64.b64decode(doc["data"], validate=True),
                        Pubkey.from_string(doc["owner"]),
                        bool(doc["executable"]),
                        int(doc["rent_epoch"]),
                    ),
                )
                for key, doc in state["accounts"].items()
            ]
            history = {Signature.from_string(sig): dict(rec) for sig, rec in state["history"].items()}
            airdrops = int(state.get("airdrops", 0))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(
                f"{source}: unreadable localnet snapshot: {exc}",
                hint="move the file away to start an empty ledger",
            ) from None
        ledger = cls(
            slot_ms=slot_ms,
            validity_slots=validity_slots,
            seed=seed,
            start_slot=slot + max(old_validity, validity_slots) + 1,
        )
        for key, account in accounts:
            ledger.svm.set_account(key, account)
            ledger.touched.add(key)
        ledger.history = history
        ledger._airdrops = airdrops
        return ledger


def _simulation(*, err: Any, logs: list[str], units: int) -> dict[str, Any]:
    return {
        "accounts": None,
        "err": err,
        "innerInstructions": None,
        "logs": logs,
        "replacementBlockhash": None,
        "returnData": None,
        "unitsConsumed": units,
    }


def _preflight_error(name: str, data: dict[str, Any]) -> RpcError:
    return RpcError(
        SEND_TRANSACTION_PREFLIGHT_FAILURE, f"Transaction simulation failed: {fieldless_text(name)}", data
    )


def blockhash_of(text: str) -> Hash:
    try:
        return Hash.from_string(text)
    except ValueError:
        raise invalid_params(f"invalid blockhash {text!r}") from None
