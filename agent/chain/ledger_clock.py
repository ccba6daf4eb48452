"""Slots, block heights and recent blockhashes that advance with wall time.

Pure bookkeeping (no LiteSVM, no threads): the ledger asks :meth:`LedgerClock.advance` with the
current monotonic time, and the clock moves one slot per ``slot_ms``. Every slot has its own
blockhash; a blockhash is valid while the block height is at most the height it was issued at plus
``validity_slots`` (a validator's ``MAX_PROCESSING_AGE``, 150), so expiry is real: after
``validity_slots * slot_ms`` of wall time a transaction built on it is refused.
There are no skipped slots here, so the block height equals the slot.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from solders.hash import Hash

DEFAULT_VALIDITY_SLOTS = 150


@dataclass(frozen=True)
class IssuedBlockhash:
    blockhash: Hash
    slot: int
    last_valid_block_height: int


class LedgerClock:
    def __init__(
        self,
        *,
        seed: bytes,
        start_slot: int,
        start_mono: float,
        slot_ms: int,
        validity_slots: int = DEFAULT_VALIDITY_SLOTS,
    ) -> None:
        if slot_ms <= 0:
            raise ValueError("slot_ms must be positive")
        if validity_slots <= 0:
            raise ValueError("validity_slots must be positive")
        self.seed = seed
        self.slot_ms = slot_ms
        self.validity_slots = validity_slots
        self._start_slot = start_slot
        self._start_mono = start_mono
        self.slot = start_slot
        self._recent: OrderedDict[Hash, IssuedBlockhash] = OrderedDict()
        self._issue(start_slot)

    @property
    def block_height(self) -> int:
        return self.slot

    def advance(self, now_mono: float) -> bool:
        """Move to the slot wall time has reached; True when the slot changed."""
        target = self._start_slot + int((now_mono - self._start_mono) * 1000) // self.slot_ms
        if target <= self.slot:
            return False
        self.slot = target
        self._issue(target)
        self._prune()
        return True

    def latest(self) -> IssuedBlockhash:
        return next(reversed(self._recent.values()))

    def is_valid(self, blockhash: Hash) -> bool:
        issued = self._recent.get(blockhash)
        return issued is not None and self.block_height <= issued.last_valid_block_height

    def blockhash_for(self, slot: int) -> Hash:
        """Deterministic per ledger (its seed) and slot, different across ledgers."""
        digest = hashlib.sha256(b"edgeproof-localnet-blockhash:" + self.seed + slot.to_bytes(8, "little"))
        return Hash(digest.digest())

    def _issue(self, slot: int) -> None:
        blockhash = self.blockhash_for(slot)
        self._recent[blockhash] = IssuedBlockhash(blockhash, slot, slot + self.validity_slots)

    def _prune(self) -> None:
        while self._recent:
            oldest = next(iter(self._recent.values()))
            if oldest.last_valid_block_height >= self.block_height:
                break
            self._recent.popitem(last=False)
