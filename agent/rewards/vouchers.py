"""Voucher records in the coordinator's store (migration 5: ``vouchers``, ``payout_breaker``).

A device has at most one ``outstanding`` voucher (a unique partial index, so several coordinator
processes cannot issue two).  A voucher leaves ``outstanding`` once, from chain state only:
``paid`` (its signature confirmed without error), ``failed`` (it landed with an error: the fee
was charged, no token moved) or ``released`` (its blockhash expired and its signature is absent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.coordinator.store import Store

OUTSTANDING = "outstanding"
PAID = "paid"
RELEASED = "released"
FAILED = "failed"

_COLUMNS = (
    "claim_id, dev, owner, message_id, epoch, amount, signature, blockhash, last_valid_block_height, "
    "state, topic, raw, issued_ms, closed_ms, slot, receipt_status, receipt_reason, receipt_ms"
)


@dataclass(frozen=True)
class VoucherRow:
    claim_id: str
    dev: str
    owner: str
    message_id: int
    epoch: int
    amount: int
    signature: str
    blockhash: str
    last_valid_block_height: int
    state: str
    topic: str
    raw: bytes
    issued_ms: int
    closed_ms: int | None = None
    slot: int | None = None
    receipt_status: str | None = None
    receipt_reason: str | None = None
    receipt_ms: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "claim_id": self.claim_id,
            "dev": self.dev,
            "owner": self.owner,
            "epoch": self.epoch,
            "amount": self.amount,
            "signature": self.signature,
            "state": self.state,
            "issued_ms": self.issued_ms,
            "closed_ms": self.closed_ms,
            "slot": self.slot,
            "last_valid_block_height": self.last_valid_block_height,
            "receipt_status": self.receipt_status,
            "receipt_reason": self.receipt_reason,
        }


def _row(values: tuple[Any, ...]) -> VoucherRow:
    (claim_id, dev, owner, message_id, epoch, amount, signature, blockhash, lvbh, state, topic, raw) = values[
        :12
    ]
    issued, closed, slot, r_status, r_reason, r_ms = values[12:]
    return VoucherRow(
        str(claim_id),
        str(dev),
        str(owner),
        int(message_id),
        int(epoch),
        int(amount),
        str(signature),
        str(blockhash),
        int(lvbh),
        str(state),
        str(topic),
        bytes(raw),
        int(issued),
        None if closed is None else int(closed),
        None if slot is None else int(slot),
        None if r_status is None else str(r_status),
        None if r_reason is None else str(r_reason),
        None if r_ms is None else int(r_ms),
    )


def by_claim(store: Store, claim_id: str) -> VoucherRow | None:
    row = store.one(f"SELECT {_COLUMNS} FROM vouchers WHERE claim_id = ?", (claim_id,))
    return None if row is None else _row(row)


def outstanding_of(store: Store, dev: str) -> VoucherRow | None:
    row = store.one(f"SELECT {_COLUMNS} FROM vouchers WHERE dev = ? AND state = ?", (dev, OUTSTANDING))
    return None if row is None else _row(row)


def all_outstanding(store: Store) -> list[VoucherRow]:
    return [
        _row(r)
        for r in store.rows(
            f"SELECT {_COLUMNS} FROM vouchers WHERE state = ? ORDER BY issued_ms", (OUTSTANDING,)
        )
    ]


def of_device(store: Store, dev: str, limit: int = 20) -> list[VoucherRow]:
    """The device's newest vouchers first."""
    return [
        _row(r)
        for r in store.rows(
            f"SELECT {_COLUMNS} FROM vouchers WHERE dev = ? ORDER BY issued_ms DESC LIMIT ?", (dev, limit)
        )
    ]


def paid_total(store: Store, dev: str) -> int:
    row = store.one("SELECT SUM(amount) FROM vouchers WHERE dev = ? AND state = ?", (dev, PAID))
    return 0 if row is None or row[0] is None else int(row[0])


def issued_since(store: Store, since_ms: int) -> int:
    """Base units in vouchers issued at or after ``since_ms`` and not released or failed."""
    row = store.one(
        "SELECT SUM(amount) FROM vouchers WHERE issued_ms >= ? AND state IN (?, ?)",
        (since_ms, OUTSTANDING, PAID),
    )
    return 0 if row is None or row[0] is None else int(row[0])


def insert(store: Store, v: VoucherRow) -> None:
    store.execute(
        f"INSERT INTO vouchers ({_COLUMNS}) VALUES ({', '.join('?' * 18)})",
        (
            v.claim_id,
            v.dev,
            v.owner,
            v.message_id,
            v.epoch,
            v.amount,
            v.signature,
            v.blockhash,
            v.last_valid_block_height,
            v.state,
            v.topic,
            v.raw,
            v.issued_ms,
            v.closed_ms,
            v.slot,
            v.receipt_status,
            v.receipt_reason,
            v.receipt_ms,
        ),
    )


def close(store: Store, claim_id: str, state: str, at_ms: int, slot: int | None = None) -> bool:
    """``outstanding`` -> ``state``; False when it was not outstanding any more (another process)."""
    cur = store.execute(
        "UPDATE vouchers SET state = ?, closed_ms = ?, slot = ? WHERE claim_id = ? AND state = ?",
        (state, at_ms, slot, claim_id, OUTSTANDING),
    )
    return bool(cur.rowcount)


def record_receipt(store: Store, claim_id: str, status: str, reason: str | None, at_ms: int) -> None:
    store.execute(
        "UPDATE vouchers SET receipt_status = ?, receipt_reason = ?, receipt_ms = ? WHERE claim_id = ?",
        (status, reason, at_ms, claim_id),
    )


def breaker(store: Store) -> tuple[int, int, str] | None:
    """(tripped_ms, until_ms, detail) while a trip is recorded."""
    row = store.one("SELECT tripped_ms, until_ms, detail FROM payout_breaker WHERE id = 1")
    return None if row is None else (int(row[0]), int(row[1]), str(row[2]))


def trip(store: Store, tripped_ms: int, until_ms: int, detail: str) -> None:
    store.execute("DELETE FROM payout_breaker WHERE id = 1")
    store.execute(
        "INSERT INTO payout_breaker (id, tripped_ms, until_ms, detail) VALUES (1, ?, ?, ?)",
        (tripped_ms, until_ms, detail),
    )


def reset_breaker(store: Store) -> None:
    store.execute("DELETE FROM payout_breaker WHERE id = 1")
