"""Merkle commitments over tensor digests (RFC 6962 / RFC 9162 Merkle Tree Hash).

Each item is a 32-byte tensor digest of one input or output (the leaf digest the
proof names, :mod:`agent.protocol.leaf`).  Tree hashing is SHA-256, domain separated:

* leaf  = SHA-256(0x00 || item digest)
* node  = SHA-256(0x01 || left || right)
* root of an empty list = SHA-256("") (``e3b0c442...``)

The tree is the left-balanced tree of RFC 6962: for ``n > 1`` items the left
subtree holds the largest power of two ``k < n`` items.  Built level by level,
this is "an odd node at the end of a level is promoted unchanged to the next
level" -- never duplicated, so ``[a, b, c]`` and ``[a, b, c, c]`` have
different roots (no CVE-2012-2459 style ambiguity).  Any RFC 6962 library
reproduces these roots when fed the 32-byte item digests as leaf data.

:class:`MerkleBuilder` adds items one at a time and keeps only O(log n)
subtree roots, so a window with many inferences keeps no list of leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from agent.errors import ProtocolError

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def _item(digest: bytes) -> bytes:
    if not isinstance(digest, bytes | bytearray) or len(digest) != 32:
        raise ProtocolError("a Merkle item must be a 32-byte SHA-256 digest", reason="malformed")
    return bytes(digest)


def leaf_hash(digest: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + _item(digest)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly less than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _root(leaves: Sequence[bytes]) -> bytes:
    level = list(leaves)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])  # odd node promoted
        level = nxt
    return level[0]


def merkle_root(digests: Iterable[bytes]) -> bytes:
    """Root over item digests (batch form)."""
    leaves = [leaf_hash(d) for d in digests]
    if not leaves:
        return EMPTY_ROOT
    return _root(leaves)


class MerkleBuilder:
    """Incremental root: ``add()`` items, read ``root()`` at any time.  O(log n) memory."""

    def __init__(self) -> None:
        # (subtree size, subtree root), sizes strictly decreasing powers of two
        self._stack: list[tuple[int, bytes]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def count(self) -> int:
        return self._count

    def add(self, digest: bytes) -> None:
        size, node = 1, leaf_hash(digest)
        while self._stack and self._stack[-1][0] == size:
            _, left = self._stack.pop()
            node = node_hash(left, node)
            size *= 2
        self._stack.append((size, node))
        self._count += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node

    def root_hex(self) -> str:
        return self.root().hex()


def inclusion_proof(digests: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 audit path for item ``index`` (bottom-up sibling hashes)."""
    if not 0 <= index < len(digests):
        raise ProtocolError(f"index {index} outside 0..{len(digests) - 1}", reason="malformed")
    leaves = [leaf_hash(d) for d in digests]

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*path(m, lo, lo + k), _root(leaves[lo + k : hi])]
        return [*path(m - k, lo + k, hi), _root(leaves[lo : lo + k])]

    return path(index, 0, len(leaves))


def verify_inclusion(digest: bytes, index: int, count: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2 verification of an audit path."""
    if not 0 <= index < count:
        return False
    fn, sn = index, count - 1
    node = leaf_hash(digest)
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and node == root
