"""The Merkle commitment over an epoch's allocations (pure; docs/rewards.md, "Settlement").

* A leaf is ``sha256(b"edgeproof/v1:reward-leaf:" || str(dev) || str(owner) || u64(epoch) ||
  u64(amount) || u64(cumulative))``: ``str(x)`` is a 2-byte big-endian length then the UTF-8
  bytes of the base58 key, ``u64(n)`` 8 bytes big-endian.
* Leaves are ordered by ``dev`` (the UTF-8 bytes, ascending); devs are unique.
* An interior node is ``sha256(b"edgeproof/v1:reward-node:" || left || right)``.  A level with an
  odd count promotes its last node unchanged to the next level (never duplicated).
* One leaf: the root is that leaf's hash.  No leaf: ``sha256(b"edgeproof/v1:reward-empty")``.
* A proof is the list of siblings from the leaf up, each with its side; a promoted node adds
  no step.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

LEAF_TAG = b"edgeproof/v1:reward-leaf:"
NODE_TAG = b"edgeproof/v1:reward-node:"
EMPTY_TAG = b"edgeproof/v1:reward-empty"
U64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Leaf:
    dev: str
    owner: str
    epoch: int
    amount: int
    cumulative: int


@dataclass(frozen=True)
class Step:
    """One proof step: the sibling's hash and whether it is the left operand."""

    sibling: bytes
    left: bool


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"a leaf field is {len(raw)} bytes; at most 65535")
    return len(raw).to_bytes(2, "big") + raw


def _u64(value: int) -> bytes:
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{value} does not fit an unsigned 64-bit field")
    return value.to_bytes(8, "big")


def leaf_bytes(leaf: Leaf) -> bytes:
    """The exact bytes hashed for a leaf (tag included)."""
    return (
        LEAF_TAG
        + _text(leaf.dev)
        + _text(leaf.owner)
        + _u64(leaf.epoch)
        + _u64(leaf.amount)
        + _u64(leaf.cumulative)
    )


def leaf_hash(leaf: Leaf) -> bytes:
    return hashlib.sha256(leaf_bytes(leaf)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_TAG + left + right).digest()


def ordered(leaves: Sequence[Leaf]) -> list[Leaf]:
    """The leaves in tree order (by dev's UTF-8 bytes); ValueError on a repeated dev."""
    out = sorted(leaves, key=lambda leaf: leaf.dev.encode("utf-8"))
    for a, b in itertools.pairwise(out):
        if a.dev == b.dev:
            raise ValueError(f"device {a.dev} has two leaves")
    return out


def _levels(hashes: list[bytes]) -> list[list[bytes]]:
    levels = [hashes]
    while len(levels[-1]) > 1:
        level = levels[-1]
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        levels.append(nxt)
    return levels


def root(leaves: Sequence[Leaf]) -> bytes:
    """The Merkle root of the leaves (any input order: they are sorted first)."""
    hashes = [leaf_hash(leaf) for leaf in ordered(leaves)]
    if not hashes:
        return hashlib.sha256(EMPTY_TAG).digest()
    return _levels(hashes)[-1][0]


def proof(leaves: Sequence[Leaf], index: int) -> list[Step]:
    """The inclusion proof of ``ordered(leaves)[index]``."""
    hashes = [leaf_hash(leaf) for leaf in ordered(leaves)]
    if not 0 <= index < len(hashes):
        raise IndexError(f"leaf index {index} outside 0..{len(hashes) - 1}")
    steps: list[Step] = []
    for level in _levels(hashes)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            steps.append(Step(level[sibling], left=sibling < index))
        index //= 2
    return steps


def verify(root_hash: bytes, leaf: Leaf, steps: Sequence[Step]) -> bool:
    """True when the steps lead from the leaf's hash to ``root_hash``."""
    current = leaf_hash(leaf)
    for step in steps:
        current = node_hash(step.sibling, current) if step.left else node_hash(current, step.sibling)
    return current == root_hash
