"""The device's own record of its rewards, kept in the device state store (ADR 0012, 0032).

Records (the state store's ``records`` table, JSON values):

* ``rewards.root``: the newest verified ``reward_root`` body (its epoch only goes up; the same
  epoch with another root is refused ``root_conflict``, an older one ``stale_root``);
* ``rewards.earned``: the leaf last proven against that root (epoch, epoch amount, cumulative);
* ``rewards.paid``: base units this agent has itself confirmed on chain as paid;
* ``claims.current``: the claim id of the newest claim; ``claim.<id>``: each claim's record
  (state, the signed message hash, the signed transaction, the receipt facts);
* ``claims.receipts``: the last receipts published.

A claim id is persisted before the claim is sent, and the signed message's hash before the
device signs: after a crash the agent never signs a second transaction for one claim id.
A confirmation moves the claim to ``confirmed`` and adds to ``rewards.paid`` in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.device.state_store import RecordValue, StateStore
from agent.errors import CorruptStateError, ProtocolError, StorageError
from agent.protocol.messages import RewardRoot

#: A claim in one of these states is outstanding: no new claim is made while it is.
OUTSTANDING = frozenset({"sent", "signed", "submitted"})
#: Final states (the claim's story is over).
FINAL = frozenset({"confirmed", "refused", "rejected", "expired", "failed", "unanswered"})
RECEIPTS_KEPT = 10

ROOT_KEY = "rewards.root"
EARNED_KEY = "rewards.earned"
PAID_KEY = "rewards.paid"
CURRENT_KEY = "claims.current"
RECEIPTS_KEY = "claims.receipts"


def claim_key(claim_id: str) -> str:
    return f"claim.{claim_id}"


@dataclass
class ClaimRecord:
    claim_id: str
    state: str
    created_ms: int
    updated_ms: int
    #: The amount the claim asked for (None: everything claimable).
    asked: int | None = None
    #: The claim envelope's seq (a rejecting verdict names it).
    seq: int | None = None
    amount: int | None = None
    epoch: int | None = None
    signed_hash: str | None = None
    signature: str | None = None
    #: The signed transaction (base64), re-sent until it lands or expires.
    transaction: str | None = None
    last_valid_block_height: int | None = None
    slot: int | None = None
    reason: str | None = None
    #: The voucher envelope being worked on (wire text), so a restart resumes it.
    voucher: str | None = None
    #: The claim made in its place after it expired.
    next_claim: str | None = None
    why: str = "asked"
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("voucher")
        doc.pop("transaction")
        doc["outstanding"] = self.state in OUTSTANDING
        return doc


def _text(value: RecordValue) -> Any:
    return json.loads(value) if isinstance(value, str) else None


def _claim(doc: Any) -> ClaimRecord | None:
    if not isinstance(doc, dict):
        return None
    try:
        return ClaimRecord(**doc)
    except TypeError as exc:
        raise CorruptStateError(f"a stored claim record does not read: {exc}") from None


class ClaimBook:
    """Thread-safe (one lock; the state store is thread-safe underneath)."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.lock = threading.RLock()

    # -- roots and the own record

    def root(self) -> RewardRoot | None:
        doc = _text(self.state.record(ROOT_KEY))
        return RewardRoot.model_validate(doc) if isinstance(doc, dict) else None

    def accept_root(self, body: RewardRoot) -> bool:
        """Keep ``body`` as the newest root; False for the one already kept; ProtocolError otherwise."""
        with self.lock:
            current = self.root()
            if current is not None:
                if body.epoch < current.epoch:
                    raise ProtocolError(
                        f"reward_root epoch {body.epoch} is older than the kept epoch {current.epoch}",
                        reason="stale_root",
                    )
                if body.epoch == current.epoch:
                    if body.root != current.root:
                        raise ProtocolError(
                            f"reward_root epoch {body.epoch} with another root than the kept one",
                            reason="root_conflict",
                        )
                    return False
            self.state.set_record(ROOT_KEY, body.model_dump_json())
            return True

    def earned(self) -> dict[str, int] | None:
        doc = _text(self.state.record(EARNED_KEY))
        return doc if isinstance(doc, dict) else None

    def set_earned(self, epoch: int, epoch_amount: int, cumulative: int) -> None:
        doc = {"epoch": epoch, "epoch_amount": epoch_amount, "cumulative": cumulative}
        self.state.set_record(EARNED_KEY, json.dumps(doc, sort_keys=True))

    def paid(self) -> int:
        value = self.state.record(PAID_KEY, 0)
        return value if isinstance(value, int) else 0

    # -- claims

    def get(self, claim_id: str) -> ClaimRecord | None:
        return _claim(_text(self.state.record(claim_key(claim_id))))

    def current(self) -> ClaimRecord | None:
        claim_id = self.state.record(CURRENT_KEY)
        return self.get(claim_id) if isinstance(claim_id, str) else None

    def save(self, record: ClaimRecord, *, current: bool = False) -> None:
        values: dict[str, RecordValue] = {claim_key(record.claim_id): json.dumps(asdict(record))}
        if current:
            values[CURRENT_KEY] = record.claim_id
        self.state.set_records(values)

    def confirm(self, record: ClaimRecord) -> None:
        """The claim confirmed on chain and its amount added to the own paid total, atomically."""
        with self.lock:
            record.state = "confirmed"
            self.state.set_records(
                {
                    claim_key(record.claim_id): json.dumps(asdict(record)),
                    PAID_KEY: self.paid() + (record.amount or 0),
                }
            )

    def receipts(self) -> list[dict[str, Any]]:
        doc = _text(self.state.record(RECEIPTS_KEY))
        return doc if isinstance(doc, list) else []

    def add_receipt(self, receipt: dict[str, Any]) -> None:
        with self.lock:
            kept = [*self.receipts(), receipt][-RECEIPTS_KEPT:]
            self.state.set_record(RECEIPTS_KEY, json.dumps(kept, sort_keys=True))


def summary(
    root: RewardRoot | None,
    earned: dict[str, int] | None,
    paid: int,
    current: ClaimRecord | None,
    receipts: list[dict[str, Any]],
) -> dict[str, Any]:
    """What ``edgeproof rewards status`` shows (the same from the daemon and from the file)."""
    outstanding = current.amount or 0 if current is not None and current.state in OUTSTANDING else 0
    cumulative = earned["cumulative"] if earned else None
    return {
        "root": None
        if root is None
        else {"epoch": root.epoch, "root": root.root, "settled_ms": root.settled_ms},
        "earned": cumulative,
        "earned_epoch": earned["epoch"] if earned else None,
        "paid": paid,
        "outstanding": outstanding,
        "claimable": None if cumulative is None else max(0, cumulative - paid - outstanding),
        "claim": None if current is None else current.public(),
        "receipts": receipts,
    }


def book_summary(book: ClaimBook) -> dict[str, Any]:
    with book.lock:
        return summary(book.root(), book.earned(), book.paid(), book.current(), book.receipts())


def read_summary(path: Path) -> dict[str, Any]:
    """The same summary from a stopped daemon's state file, opened read-only (nothing is written)."""
    if not path.exists():
        raise StorageError(
            f"state file {path} does not exist", hint="the daemon has not run with this config"
        )
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = dict(db.execute("SELECT key, value FROM records").fetchall())
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read the state file {path}: {exc}") from None

    def value(key: str) -> Any:
        raw = rows.get(key)
        return json.loads(raw) if isinstance(raw, str) else None

    def text(key: str) -> Any:
        inner = value(key)
        return json.loads(inner) if isinstance(inner, str) else None

    root_doc = text(ROOT_KEY)
    current_id = value(CURRENT_KEY)
    current = _claim(text(claim_key(current_id))) if isinstance(current_id, str) else None
    paid = value(PAID_KEY)
    receipts = text(RECEIPTS_KEY)
    earned = text(EARNED_KEY)
    return summary(
        RewardRoot.model_validate(root_doc) if isinstance(root_doc, dict) else None,
        earned if isinstance(earned, dict) else None,
        paid if isinstance(paid, int) else 0,
        current,
        receipts if isinstance(receipts, list) else [],
    )
