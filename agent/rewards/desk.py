"""The payout desk: answers ``claim`` envelopes with vouchers and closes them from chain state.

It implements :class:`agent.coordinator.payouts.PayoutHook`; every call runs inside the
coordinator's batch transaction (docs/rewards.md, "Claims"; ADR 0031).

* claimable = cumulative (the device's leaf in the newest settled epoch) - paid - outstanding;
* one outstanding voucher per device: a new claim while one is outstanding first looks its
  signature up on chain (confirmed: paid; landed with an error: failed) and releases it when its
  blockhash has expired and the signature is absent; otherwise the claim is refused
  ``voucher_outstanding``;
* a repeated claim id gets the stored voucher envelope again, byte for byte;
* a receipt is never trusted alone: the signature is looked up on chain;
* the breaker caps the base units in vouchers issued per window; a claim over the cap trips it,
  and every claim is refused ``payout_paused`` for one window (log line, metric, dashboard).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature

from agent.chain import spl
from agent.chain.client import LatestBlockhash
from agent.coordinator.payouts import ChainSign, ClaimRequest, PayoutAnswer, ReconcileResult
from agent.errors import ChainError, ConfigError
from agent.protocol.messages import Receipt
from agent.protocol.topics import Topics
from agent.rewards import merkle, vouchers
from agent.rewards.ledger import StoredSettlement, load_settlement
from agent.rewards.voucher import VoucherTerms, partially_signed, tx_id, voucher_body

if TYPE_CHECKING:
    from agent.coordinator.config import PayoutSection
    from agent.coordinator.store import Store

log = logging.getLogger("edgeproof.payouts")
#: Confirmation levels at which a landed voucher counts as paid.
_CONFIRMED = ("confirmed", "finalized")
#: A blockhash fetched this recently is reused for the next voucher (one RPC round trip per
#: second, not per claim, under a burst of claims; the lifetime it costs is at most this).
BLOCKHASH_REUSE_S = 1.0


class ChainReads(Protocol):
    """What the desk asks a cluster (:class:`agent.chain.client.ChainClient`)."""

    def latest_blockhash(self) -> LatestBlockhash: ...
    def block_height(self) -> int: ...
    def statuses(self, signatures: Sequence[Signature]) -> list[Any | None]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class DeskSettings:
    treasury: Keypair
    vault: Pubkey
    mint: Pubkey
    decimals: int
    memo_program: Pubkey
    breaker_cap: int | None = None
    breaker_window_ms: int = 3_600_000


def _pubkey(text: str, what: str) -> Pubkey:
    try:
        return Pubkey.from_string(text)
    except ValueError:
        raise ConfigError(f"[payout] {what} {text!r} is not a base58 public key") from None


def desk_settings(section: PayoutSection, treasury: Keypair) -> DeskSettings:
    """The desk's settings from ``[payout]`` (and the bootstrap file it names)."""
    doc: dict[str, Any] = {}
    if section.bootstrap:
        try:
            doc = json.loads(Path(section.bootstrap).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[payout] bootstrap {section.bootstrap}: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"[payout] bootstrap {section.bootstrap} is not a JSON object")
        recorded = doc.get("treasury")
        if recorded is not None and recorded != str(treasury.pubkey()):
            raise ConfigError(
                f"[payout] bootstrap {section.bootstrap} is for treasury {recorded}, "
                f"the treasury key is {treasury.pubkey()}"
            )
    mint_text = section.mint or str(doc.get("mint", ""))
    if not mint_text:
        raise ConfigError("[payout] needs the reward mint: set mint or bootstrap")
    mint = _pubkey(mint_text, "mint")
    vault_text = section.vault or str(doc.get("vault", ""))
    vault = (
        _pubkey(vault_text, "vault") if vault_text else spl.associated_token_address(treasury.pubkey(), mint)
    )
    decimals = section.decimals if section.decimals is not None else doc.get("decimals")
    if not isinstance(decimals, int):
        raise ConfigError("[payout] needs the mint's decimals: set decimals or bootstrap")
    return DeskSettings(
        treasury=treasury,
        vault=vault,
        mint=mint,
        decimals=decimals,
        memo_program=_pubkey(section.memo_program, "memo_program"),
        breaker_cap=section.breaker_cap,
        breaker_window_ms=section.breaker_window_s * 1000,
    )


def _reject(reason: str, detail: str, *, tripped: bool = False) -> PayoutAnswer:
    return PayoutAnswer(reason=reason, detail=detail, tripped=tripped)


class PayoutDesk:
    def __init__(self, settings: DeskSettings, chain: ChainReads, topics: Topics) -> None:
        self.settings = settings
        self.chain = chain
        self.topics = topics
        self._settled: dict[int, tuple[StoredSettlement, dict[str, int]]] = {}
        self._latest: tuple[float, LatestBlockhash] | None = None

    def close(self) -> None:
        self.chain.close()

    # --- claims --------------------------------------------------------------------------------

    def claim(self, store: Store, request: ClaimRequest, *, now_ms: int, sign: ChainSign) -> PayoutAnswer:
        claim = request.claim
        known = vouchers.by_claim(store, claim.claim_id)
        if known is not None:
            if known.dev != request.dev:
                return _reject("claim_id_reused", f"claim {claim.claim_id} belongs to another device")
            return PayoutAnswer(outgoing=[(known.topic, known.raw)])  # the same bytes again
        if claim.owner != request.registry_owner:
            return _reject(
                "owner_mismatch",
                f"the claim names owner {claim.owner}, the device's is {request.registry_owner}",
            )
        try:
            return self._new_voucher(store, request, now_ms, sign)
        except ChainError as exc:
            log.warning("payout_rpc_failed", extra={"dev": request.dev, "reason": exc.reason})
            return _reject("payout_unavailable", f"the chain could not be read: {exc.reason}")

    def _new_voucher(self, store: Store, request: ClaimRequest, now_ms: int, sign: ChainSign) -> PayoutAnswer:
        claim, dev = request.claim, request.dev
        old = vouchers.outstanding_of(store, dev)
        if old is not None and self._close_from_chain(store, old, now_ms) is None:
            return _reject(
                "voucher_outstanding",
                f"claim {old.claim_id} is outstanding until block height {old.last_valid_block_height}",
            )
        if self.breaker_open(store, now_ms=now_ms):
            return _reject("payout_paused", "the payout breaker is open")
        found = self._leaf(store, dev)
        if found is None:
            return _reject("nothing_claimable", "no settled epoch has a leaf for this device")
        stored, index = found
        leaf = stored.leaves[index]
        if leaf.owner != claim.owner:
            return _reject("owner_mismatch", f"epoch {leaf.epoch} settled to owner {leaf.owner}")
        paid = vouchers.paid_total(store, dev)
        claimable = leaf.cumulative - paid
        amount = claimable if claim.amount is None else min(claim.amount, claimable)
        if amount <= 0:
            return _reject(
                "nothing_claimable", f"cumulative {leaf.cumulative} through epoch {leaf.epoch}, paid {paid}"
            )
        tripped = self._trip_if_over(store, amount, now_ms)
        if tripped is not None:
            return _reject("payout_paused", tripped, tripped=True)
        latest = self._blockhash()
        s = self.settings
        terms = VoucherTerms(
            treasury=s.treasury.pubkey(),
            vault=s.vault,
            mint=s.mint,
            decimals=s.decimals,
            device=Pubkey.from_string(dev),
            owner=Pubkey.from_string(claim.owner),
            claim_id=claim.claim_id,
            amount=amount,
            memo_program=s.memo_program,
        )
        tx = partially_signed(terms, latest.blockhash, s.treasury)
        body = voucher_body(
            terms,
            tx,
            last_valid_block_height=latest.last_valid_block_height,
            leaf=leaf,
            proof=merkle.proof(stored.leaves, index),
            paid=paid,
        )
        env = sign("voucher", body)
        topic = self.topics.for_kind("voucher", dev)
        vouchers.insert(
            store,
            vouchers.VoucherRow(
                claim_id=claim.claim_id,
                dev=dev,
                owner=claim.owner,
                message_id=request.message_id(),
                epoch=leaf.epoch,
                amount=amount,
                signature=str(tx_id(tx)),
                blockhash=str(latest.blockhash),
                last_valid_block_height=latest.last_valid_block_height,
                state=vouchers.OUTSTANDING,
                topic=topic,
                raw=env.wire,
                issued_ms=now_ms,
            ),
        )
        log.info(
            "voucher_issued",
            extra={"dev": dev, "claim_id": claim.claim_id, "amount": amount, "signature": str(tx_id(tx))},
        )
        return PayoutAnswer(outgoing=[(topic, env.wire)])

    def _blockhash(self) -> LatestBlockhash:
        now = time.monotonic()
        if self._latest is None or now - self._latest[0] > BLOCKHASH_REUSE_S:
            self._latest = (now, self.chain.latest_blockhash())
        return self._latest[1]

    def _leaf(self, store: Store, dev: str) -> tuple[StoredSettlement, int] | None:
        row = store.one("SELECT MAX(epoch) FROM allocations WHERE dev = ?", (dev,))
        if row is None or row[0] is None:
            return None
        epoch = int(row[0])
        if epoch not in self._settled:  # a settlement is written once and never updated
            stored = load_settlement(store, epoch)
            if stored is None:
                return None
            if len(self._settled) >= 2:  # devices claim from the newest epoch or the one before
                del self._settled[min(self._settled)]
            self._settled[epoch] = (stored, {leaf.dev: i for i, leaf in enumerate(stored.leaves)})
        stored, index = self._settled[epoch]
        return stored, index[dev]

    # --- the breaker ---------------------------------------------------------------------------

    def breaker_open(self, store: Store, *, now_ms: int) -> bool:
        state = vouchers.breaker(store)
        if state is None:
            return False
        if now_ms < state[1]:
            return True
        vouchers.reset_breaker(store)
        log.info("payout_breaker_closed", extra={"tripped_ms": state[0]})
        return False

    def _trip_if_over(self, store: Store, amount: int, now_ms: int) -> str | None:
        cap = self.settings.breaker_cap
        if cap is None:
            return None
        window = self.settings.breaker_window_ms
        issued = vouchers.issued_since(store, now_ms - window)
        if issued + amount <= cap:
            return None
        detail = f"{issued} + {amount} base units in {window // 1000} s would pass the cap of {cap}"
        vouchers.trip(store, now_ms, now_ms + window, detail)
        log.warning(
            "payout_breaker_tripped",
            extra={"issued": issued, "amount": amount, "cap": cap, "window_s": window // 1000},
        )
        return detail

    # --- chain state ---------------------------------------------------------------------------

    def _close_from_chain(self, store: Store, v: vouchers.VoucherRow, now_ms: int) -> str | None:
        """Paid, failed or released per the chain (recorded); None while it may still land."""
        found = self._chain_state(v)
        return None if found is None else self._close(store, v, found[0], now_ms, found[1])

    def _chain_state(self, v: vouchers.VoucherRow) -> tuple[str, int | None] | None:
        """(state, slot) the chain says the voucher ends in; None while it may still land (RPC only)."""
        return self._chain_states([v])[0]

    def _chain_states(self, found: Sequence[vouchers.VoucherRow]) -> list[tuple[str, int | None] | None]:
        """:meth:`_chain_state` of each voucher, with one status call per 256 and one block height."""
        signatures = [Signature.from_string(v.signature) for v in found]
        statuses = self.chain.statuses(signatures) if signatures else []
        missing = [i for i, s in enumerate(statuses) if s is None]
        if missing:
            height = self.chain.block_height()
            expired = [i for i in missing if height > found[i].last_valid_block_height]
            # A last look at the expired ones: they may have landed in the last slot.
            again = self.chain.statuses([signatures[i] for i in expired]) if expired else []
            for i, status in zip(expired, again, strict=True):
                statuses[i] = status if status is not None else _RELEASED
        return [_ending(s) for s in statuses]

    def _close(self, store: Store, v: vouchers.VoucherRow, state: str, now_ms: int, slot: int | None) -> str:
        if vouchers.close(store, v.claim_id, state, now_ms, slot):
            log.info(
                f"voucher_{state}",
                extra={"dev": v.dev, "claim_id": v.claim_id, "amount": v.amount, "signature": v.signature},
            )
        return state

    def receipt(self, store: Store, dev: str, receipt: Receipt, *, now_ms: int) -> PayoutAnswer:
        known = vouchers.by_claim(store, receipt.claim_id)
        if known is None or known.dev != dev:
            return _reject("unknown_voucher", f"no voucher was issued to this device for {receipt.claim_id}")
        if receipt.signature is not None and receipt.signature != known.signature:
            return _reject(
                "receipt_mismatch",
                f"the receipt names {receipt.signature[:16]}..., the voucher's tx id differs",
            )
        vouchers.record_receipt(store, known.claim_id, receipt.status, receipt.reason, now_ms)
        if known.state == vouchers.OUTSTANDING:
            try:
                self._close_from_chain(store, known, now_ms)
            except ChainError as exc:  # the schedule looks again
                log.warning("payout_rpc_failed", extra={"dev": dev, "reason": exc.reason})
        return PayoutAnswer()

    def outstanding(self, store: Store) -> list[tuple[str, bytes]]:
        """The envelopes of the outstanding vouchers, byte for byte as first published."""
        return [(v.topic, v.raw) for v in vouchers.all_outstanding(store)]

    def reconcile(self, store: Store, *, now_ms: int) -> ReconcileResult:
        """Every outstanding voucher against the chain: the RPC calls outside any transaction (one
        status call per 256 vouchers and one block height, not one call per voucher), each close
        in a short one of its own (ingest is not held up by a slow node)."""
        counts = {vouchers.PAID: 0, vouchers.RELEASED: 0, vouchers.FAILED: 0}
        outstanding = vouchers.all_outstanding(store)
        try:
            endings = self._chain_states(outstanding)
        except ChainError as exc:
            log.warning("payout_rpc_failed", extra={"outstanding": len(outstanding), "reason": exc.reason})
            endings = []
        for v, found in zip(outstanding, endings, strict=False):
            if found is not None:
                with store.transaction():
                    counts[self._close(store, v, found[0], now_ms, found[1])] += 1
        with store.transaction():
            paused = self.breaker_open(store, now_ms=now_ms)
        if any(counts.values()):
            log.info("vouchers_reconciled", extra=dict(counts))
        return ReconcileResult(
            counts[vouchers.PAID], counts[vouchers.RELEASED], counts[vouchers.FAILED], breaker_open=paused
        )


#: Stands for "expired and not on chain" among the statuses.
_RELEASED = object()


def _ending(status: Any | None) -> tuple[str, int | None] | None:
    """(state, slot) a voucher ends in by its signature's status; None while it may still land."""
    if status is None:
        return None
    if status is _RELEASED:
        return vouchers.RELEASED, None
    if status.err is not None:
        return vouchers.FAILED, int(status.slot)
    level = str(status.confirmation_status).rsplit(".", 1)[-1].lower() if status.confirmation_status else ""
    if level not in _CONFIRMED:
        return None
    return vouchers.PAID, int(status.slot)


def open_desk(section: PayoutSection, coordinator_key: str, topics: Topics) -> PayoutDesk:
    """The desk for ``[payout]`` (``rpc_url`` set), with its own chain client."""
    from agent.chain.client import ChainClient
    from agent.identity import load_keypair

    treasury = load_keypair(section.treasury_key or coordinator_key)
    settings = desk_settings(section, treasury)
    chain = ChainClient(
        section.rpc_url,
        timeout_s=section.rpc_timeout_s,
        retries=section.rpc_retries,
        backoff_s=section.rpc_backoff_s,
    )
    return PayoutDesk(settings, chain, topics)
