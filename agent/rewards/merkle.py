"""The reward Merkle commitment: it lives in :mod:`agent.protocol.reward_merkle` (pure protocol,
so the device checks a voucher's proof with the same code that settles); re-exported here."""

from __future__ import annotations

from agent.protocol.reward_merkle import (
    EMPTY_TAG,
    LEAF_TAG,
    NODE_TAG,
    U64_MAX,
    Leaf,
    Step,
    leaf_bytes,
    leaf_hash,
    node_hash,
    ordered,
    proof,
    root,
    verify,
)

__all__ = [
    "EMPTY_TAG",
    "LEAF_TAG",
    "NODE_TAG",
    "U64_MAX",
    "Leaf",
    "Step",
    "leaf_bytes",
    "leaf_hash",
    "node_hash",
    "ordered",
    "proof",
    "root",
    "verify",
]
