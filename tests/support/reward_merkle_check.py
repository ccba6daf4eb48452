"""An independent check of reward inclusion proofs, written from docs/rewards.md ("Settlement").

It uses hashlib only and never imports agent.rewards, so a shared mistake cannot hide: the
tests compare its leaf hashes and roots with the ones the agent computes and publishes.
"""

from __future__ import annotations

import hashlib
from typing import Any


def _field(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def leaf_hash(dev: str, owner: str, epoch: int, amount: int, cumulative: int) -> bytes:
    data = b"edgeproof/v1:reward-leaf:" + _field(dev) + _field(owner)
    for number in (epoch, amount, cumulative):
        data += number.to_bytes(8, "big")
    return hashlib.sha256(data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"edgeproof/v1:reward-node:" + left + right).digest()


def root_of(leaves: list[dict[str, Any]]) -> bytes:
    """Leaves as dicts with dev, owner, epoch, amount, cumulative (any order)."""
    ordered = sorted(leaves, key=lambda d: d["dev"].encode("utf-8"))
    level = [leaf_hash(d["dev"], d["owner"], d["epoch"], d["amount"], d["cumulative"]) for d in ordered]
    if not level:
        return hashlib.sha256(b"edgeproof/v1:reward-empty").digest()
    while len(level) > 1:
        pairs = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def check_proof(root_hex: str, leaf: dict[str, Any], proof: list[dict[str, str]]) -> bool:
    """A proof as `edgeproof rewards proof --json` prints it: [{"sibling": hex, "side": left|right}]."""
    current = leaf_hash(leaf["dev"], leaf["owner"], leaf["epoch"], leaf["amount"], leaf["cumulative"])
    for step in proof:
        sibling = bytes.fromhex(step["sibling"])
        current = _node(sibling, current) if step["side"] == "left" else _node(current, sibling)
    return current.hex() == root_hex
