"""The daemon's claimer: claims, vouchers, signing, submitting, confirming, receipts (ADR 0032).

It runs on a thread of its own, never on the inference/heartbeat loop: a hanging RPC endpoint
delays only the claim.  The flow (docs/rewards.md, "Claiming"):

1. :meth:`Claimer.request` (the ``claim`` control op, the ``claim_every_s`` schedule, or a claim
   whose voucher expired) persists a fresh random claim id, then emits the chained ``claim``
   through the daemon's one signer.
2. :meth:`Claimer.admit` (the inbound thread, after the shared inbound check) refuses a
   replayed voucher (``replay``; the same bytes again: ``duplicate``) and queues it (``busy``
   when the queue is full).
3. The thread checks the voucher (:mod:`agent.device.voucher_check`) against the device's own
   record, persists the signed message's hash, signs, submits through
   :class:`agent.chain.client.ChainClient` and confirms; each step publishes a ``receipt``.
   An expired blockhash with the signature not on chain: the claim is ``expired`` and a new
   one (new id) is made.  RPC failures (already translated into ChainError) are counted by
   reason and retried on the next tick.
"""

from __future__ import annotations

import base64
import logging
import queue
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction

from agent.chain.client import ChainClient
from agent.config import AgentConfig
from agent.device.claim_book import FINAL, OUTSTANDING, ClaimBook, ClaimRecord, book_summary
from agent.device.control_protocol import Op, Refusal, Result
from agent.device.voucher_check import Expect, check_voucher, sign_checked
from agent.errors import ChainError, ClaimError, ProtocolError, VoucherRefused
from agent.protocol.envelope import Envelope, parse_envelope, verify_parsed
from agent.protocol.messages import Claim, Receipt, RewardRoot, Verdict, Voucher

log = logging.getLogger("agent.device.daemon")

#: Vouchers waiting for the claimer thread; more are refused ``busy``.
QUEUE_SIZE = 8
#: How often an outstanding signed claim is looked up on chain (and re-sent).
TICK_S = 1.0
#: A claim no voucher answered within this long is given up (``unanswered``) when a new one is asked.
ANSWER_TIMEOUT_S = 120.0

Emit = Callable[[str, Any], Envelope | None]


def voucher_seq_key(coordinator: str) -> str:
    """The state store key of the highest voucher seq accepted from a coordinator key."""
    return f"voucher:{coordinator}"


class Claimer:
    def __init__(
        self,
        config: AgentConfig,
        book: ClaimBook,
        keypair: Keypair,
        emit: Emit,
        clock_ms: Callable[[], int],
        count_lock: threading.Lock,
    ) -> None:
        self.settings = config.rewards
        self.book = book
        self.keypair = keypair
        self.device = keypair.pubkey()
        self.owner = config.device.owner_wallet
        self.emit = emit
        self.clock_ms = clock_ms
        self.count_lock = count_lock
        self.counters: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.chain_errors: Counter[str] = Counter()
        self._queue: queue.Queue[Envelope] = queue.Queue(maxsize=QUEUE_SIZE)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: ChainClient | None = None
        self._last_voucher: tuple[int, str] = (0, "")

    # -- configuration

    def disabled_reason(self) -> str | None:
        if not self.settings.rpc_url:
            return "[rewards] rpc_url is empty: this device does not claim"
        if not self.owner:
            return "device.owner_wallet is empty: there is nobody to pay"
        return None

    def _count(self, counter: Counter[str], key: str) -> None:
        with self.count_lock:
            counter[key] += 1

    # -- lifecycle

    def start(self) -> None:
        if self.disabled_reason() is not None:
            return
        self._thread = threading.Thread(target=self._run, name="claimer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("claimer still in an RPC call at shutdown; its state is on disk")
                return
        if self._client is not None:
            self._client.close()

    def _chain(self) -> ChainClient:
        if self._client is None:
            s = self.settings
            self._client = ChainClient(s.rpc_url, timeout_s=s.rpc_timeout_s, retries=2, backoff_s=0.25)
        return self._client

    # -- claims (main loop: the claim op; the claimer thread: schedule and re-claims)

    def request(self, asked: int | None, why: str = "asked") -> ClaimRecord:
        """The outstanding claim, or a new one: persisted first, then the chained claim emitted."""
        problem = self.disabled_reason()
        if problem is not None:
            raise ClaimError(problem, reason="claims_disabled", hint="set them in the config and restart")
        now = self.clock_ms()
        with self.book.lock:
            current = self.book.current()
            if current is not None and current.state in OUTSTANDING:
                if current.state != "sent" or now - current.created_ms < ANSWER_TIMEOUT_S * 1000:
                    return current
                current.state, current.reason, current.updated_ms = "unanswered", None, now
                self.book.save(current)
            record = ClaimRecord(secrets.token_hex(16), "sent", now, now, asked=asked, why=why)
            self.book.save(record, current=True)  # before it is sent
            env = self.emit("claim", Claim(claim_id=record.claim_id, owner=self.owner, amount=asked))
            if env is None:
                record.state, record.reason = "failed", "not_stored"
                self.book.save(record)
                raise ClaimError("the claim could not be stored in the outbox", reason="not_stored")
            record.seq = env.seq
            self.book.save(record)
        self._count(self.counters, "claims_sent")
        log.info("claim sent", extra={"claim_id": record.claim_id, "seq": env.seq, "why": why})
        return record

    def on_verdict(self, verdict: Verdict) -> None:
        """A rejected claim (owner_mismatch, nothing_claimable, payout_paused, ...) ends it."""
        if verdict.ref_kind != "claim" or verdict.accepted:
            return
        with self.book.lock:
            current = self.book.current()
            if current is None or current.seq != verdict.ref_seq or current.state != "sent":
                return
            current.state, current.reason, current.updated_ms = "rejected", verdict.reason, self.clock_ms()
            self.book.save(current)
        self._count(self.counters, "claims_rejected")
        log.warning("claim rejected", extra={"claim_id": current.claim_id, "reason": verdict.reason})

    # -- inbound (the transport's inbound thread)

    def admit_root(self, env: Envelope) -> None:
        assert isinstance(env.body, RewardRoot)
        if self.book.accept_root(env.body):
            self._count(self.counters, "reward_roots_accepted")
            log.info("reward root accepted", extra={"epoch": env.body.epoch, "root": env.body.root[:16]})
            self._wake.set()

    def admit(self, env: Envelope) -> None:
        """Queue a verified voucher for the claimer thread; ProtocolError (replay, duplicate, busy)."""
        problem = self.disabled_reason()
        if problem is not None:
            raise ProtocolError(f"voucher refused: {problem}", reason="claims_disabled")
        key = voucher_seq_key(env.dev)
        highest = self.book.state.signer_seq(key)
        if env.seq <= highest:
            if (env.seq, env.hash) == self._last_voucher:
                raise ProtocolError(f"voucher seq {env.seq} again (redelivery)", reason="duplicate")
            raise ProtocolError(f"voucher seq {env.seq} is at or below {highest}", reason="replay")
        try:
            self._queue.put_nowait(env)
        except queue.Full:
            raise ProtocolError("the claimer's voucher queue is full", reason="busy") from None
        self.book.state.set_signer_seq(key, env.seq)
        self._last_voucher = (env.seq, env.hash)
        self._count(self.counters, "vouchers_admitted")
        self._wake.set()

    # -- the claimer thread

    def _run(self) -> None:
        every = self.settings.claim_every_s
        next_scheduled = time.monotonic() + every if every > 0 else None
        while not self._stop.is_set():
            try:
                env = self._queue.get(timeout=TICK_S)
            except queue.Empty:
                env = None
            if self._stop.is_set():
                return
            try:
                if env is not None:
                    self._on_voucher(env)
                self._tick()
                if next_scheduled is not None and time.monotonic() >= next_scheduled:
                    next_scheduled = time.monotonic() + every
                    self._scheduled()
            except ChainError as exc:
                self._chain_failed(exc)
            except Exception:  # a bug must not end the claimer: logged, retried next tick
                log.exception("claimer step failed")
                self._count(self.counters, "claimer_errors")

    def _chain_failed(self, exc: ChainError) -> None:
        self._count(self.chain_errors, exc.reason)
        log.warning(
            "rpc failed; the claim is retried", extra={"reason": exc.reason, "error": exc.message[:200]}
        )

    def _scheduled(self) -> None:
        current = self.book.current()
        if current is not None and current.state in OUTSTANDING:
            return
        root, earned, paid = self.book.root(), self.book.earned(), self.book.paid()
        if root is None:
            return
        if (
            earned is None
            or root.epoch > earned["epoch"]
            or earned["cumulative"] - paid >= self.settings.min_claim
        ):
            self.request(None, why="schedule")

    def _refuse(self, record: ClaimRecord | None, claim_id: str, exc: VoucherRefused) -> None:
        self._count(self.refused, exc.reason)
        log.warning(
            "voucher refused", extra={"claim_id": claim_id, "reason": exc.reason, "error": exc.message}
        )
        if record is not None and exc.reason not in ("voucher_conflict", "unknown_claim"):
            record.state, record.reason, record.voucher = "refused", exc.reason, None
            record.updated_ms = self.clock_ms()
            self.book.save(record)
        self._receipt(claim_id, "refused", reason=exc.reason)

    def _on_voucher(self, env: Envelope) -> None:
        voucher = env.body
        assert isinstance(voucher, Voucher)
        record = self.book.current()
        if record is None or record.claim_id != voucher.claim_id or record.state not in OUTSTANDING:
            self._refuse(
                None, voucher.claim_id, VoucherRefused("no such outstanding claim", reason="unknown_claim")
            )
            return
        if record.voucher is None and record.state == "sent":
            record.voucher = env.wire.decode()
            self.book.save(record)
        height = self._chain().block_height()  # a ChainError: the voucher on disk is retried next tick
        expect = Expect(
            device=self.device,
            owner=Pubkey.from_string(self.owner),
            mint=Pubkey.from_string(self.settings.mint),
            decimals=self.settings.decimals,
            memo_program=Pubkey.from_string(self.settings.memo_program),
            claim_id=record.claim_id,
            asked=record.asked,
            root=self.book.root(),
            own_paid=self.book.paid(),
            block_height=height,
            signed_hash=record.signed_hash,
        )
        try:
            checked = check_voucher(voucher, expect)
        except VoucherRefused as exc:
            self._refuse(record, voucher.claim_id, exc)
            if exc.reason == "blockhash_expired":
                self._expired(record)
            return
        if record.signed_hash is None:
            with self.book.lock:  # request() may have given the claim up meanwhile
                now = self.book.current()
                if now is None or now.claim_id != record.claim_id or now.state != "sent":
                    gone = VoucherRefused("the claim is no longer outstanding", reason="unknown_claim")
                    self._refuse(None, voucher.claim_id, gone)
                    return
                record.state, record.signed_hash, record.amount = (
                    "signed",
                    checked.message_hash,
                    voucher.amount,
                )
                record.epoch, record.last_valid_block_height = voucher.epoch, voucher.last_valid_block_height
                record.updated_ms = self.clock_ms()
                self.book.save(record)  # the hash before the signature: never a second transaction
            self.book.set_earned(voucher.epoch, voucher.epoch_amount, voucher.cumulative)
        signature = self.keypair.sign_message(checked.message)
        tx = sign_checked(checked, signature)
        # The transaction id is the fee payer's signature (index 0), known to the coordinator too.
        record.signature, record.transaction = str(tx.signatures[0]), base64.b64encode(bytes(tx)).decode()
        record.voucher = None
        self.book.save(record)
        self._count(self.counters, "vouchers_signed")
        self._submit(record, tx)

    def _submit(self, record: ClaimRecord, tx: Transaction) -> None:
        accepted = True
        try:
            self._chain().send(tx)
        except ChainError as exc:
            if exc.reason in ("simulation_failed", "signature_failure", "transaction_failed"):
                self._failed(record, exc.reason)
                return
            if exc.reason == "blockhash_not_found":
                # Not taken (the node does not know the blockhash, yet or any more): re-sent
                # every tick until it lands or the block height passes its last valid height.
                accepted = False
            elif exc.reason != "already_processed":
                raise
        if accepted and record.state == "signed":
            record.state, record.updated_ms = "submitted", self.clock_ms()
            self.book.save(record)
            self._receipt(record.claim_id, "submitted", signature=record.signature)
        self._settle(record)

    def _tick(self) -> None:
        record = self.book.current()
        if record is not None and record.state == "sent" and record.voucher is not None:
            # A voucher taken before an RPC failure or a restart: worked on again.
            self._on_voucher(verify_parsed(parse_envelope(record.voucher)))
            return
        if record is None or record.state not in ("signed", "submitted") or record.transaction is None:
            return
        if not self._settle(record):
            tx = Transaction.from_bytes(base64.b64decode(record.transaction))
            self._submit(record, tx)

    def _settle(self, record: ClaimRecord) -> bool:
        """Look the signature up once: confirmed, failed or expired end the claim (True)."""
        assert record.signature is not None and record.last_valid_block_height is not None
        client = self._chain()
        signature = Signature.from_string(record.signature)
        status = client.status(signature)
        if status is None:
            if (
                client.block_height() <= record.last_valid_block_height
                or client.status(signature) is not None
            ):
                return False
            self._receipt(record.claim_id, "failed", signature=record.signature, reason="blockhash_expired")
            self._expired(record)
            return True
        if status.err is not None:
            self._failed(record, "transaction_failed")
            return True
        record.slot, record.updated_ms = int(status.slot), self.clock_ms()
        self.book.confirm(record)
        self._count(self.counters, "claims_confirmed")
        log.info(
            "claim confirmed",
            extra={"claim_id": record.claim_id, "amount": record.amount, "signature": record.signature},
        )
        self._receipt(record.claim_id, "confirmed", signature=record.signature, slot=record.slot)
        return True

    def _failed(self, record: ClaimRecord, reason: str) -> None:
        record.state, record.reason, record.updated_ms = "failed", reason, self.clock_ms()
        self.book.save(record)
        self._count(self.counters, "claims_failed")
        self._receipt(record.claim_id, "failed", signature=record.signature, reason=reason)

    def _expired(self, record: ClaimRecord) -> None:
        record.state, record.reason, record.updated_ms = "expired", "blockhash_expired", self.clock_ms()
        self.book.save(record)
        self._count(self.counters, "claims_expired")
        fresh = self.request(record.asked, why="expired")
        record.next_claim = fresh.claim_id
        self.book.save(record)

    def _receipt(self, claim_id: str, status: str, **fields: Any) -> None:
        body = Receipt(claim_id=claim_id, status=status, **fields)  # type: ignore[arg-type]
        self.emit("receipt", body)
        self.book.add_receipt({**body.model_dump(mode="json", exclude_none=True), "ms": self.clock_ms()})

    # -- reporting

    def counts(self) -> dict[str, dict[str, int]]:
        with self.count_lock:
            return {
                "counters": dict(self.counters),
                "refused": dict(self.refused),
                "chain_errors": dict(self.chain_errors),
            }

    def snapshot(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            **book_summary(self.book),
            **counts,
            "enabled": self.disabled_reason() is None,
            "disabled": self.disabled_reason(),
        }


def claim_ops(claimer: Claimer) -> dict[str, Op]:
    """The control socket's reward ops: ``claim`` (main loop: it emits) and two read-only ones."""

    def claim(params: Mapping[str, Any]) -> Result:
        amount = params.get("amount")
        if amount is not None and (
            not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount < 2**64
        ):
            raise Refusal("bad_request", "'amount' must be an integer from 1 to 2**64-1 base units")
        before = claimer.book.current()
        try:
            record = claimer.request(amount)
        except ClaimError as exc:
            raise Refusal(exc.reason, exc.message) from None
        return {**record.public(), "new": before is None or before.claim_id != record.claim_id}

    def claim_status(params: Mapping[str, Any]) -> Result:
        claim_id = params.get("claim_id")
        if not isinstance(claim_id, str) or len(claim_id) != 32:
            raise Refusal("bad_request", "'claim_id' must be a 32-character hex claim id")
        record = claimer.book.get(claim_id)
        if record is None:
            raise Refusal("claim_not_found", f"no claim {claim_id[:32]} on this device")
        return {**record.public(), "final": record.state in FINAL}

    def rewards(_params: Mapping[str, Any]) -> Result:
        return claimer.snapshot()

    ops = (
        Op("claim", claim, main_loop=True, params=frozenset({"amount"}), help="send a reward claim"),
        Op("claim_status", claim_status, main_loop=False, params=frozenset({"claim_id"}), help="one claim"),
        Op("rewards", rewards, main_loop=False, help="earned, paid, outstanding, last receipts"),
    )
    return {op.name: op for op in ops}
