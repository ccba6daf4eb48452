"""Merkle: RFC 6962 vectors, promotion (not duplication), incremental == batch, inclusion proofs."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ProtocolError
from agent.protocol.merkle import (
    EMPTY_ROOT,
    MerkleBuilder,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_inclusion,
)

ITEMS = [hashlib.sha256(str(i).encode()).digest() for i in range(8)]


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_empty_and_single() -> None:
    assert merkle_root([]) == EMPTY_ROOT == _h(b"")
    assert merkle_root(ITEMS[:1]) == _h(b"\x00" + ITEMS[0])


def test_domain_separated_nodes() -> None:
    l0, l1, l2 = (leaf_hash(d) for d in ITEMS[:3])
    assert merkle_root(ITEMS[:2]) == _h(b"\x01" + l0 + l1)
    # three items: the odd third leaf is promoted, not duplicated
    assert merkle_root(ITEMS[:3]) == node_hash(node_hash(l0, l1), l2)
    assert merkle_root(ITEMS[:3]) != merkle_root([*ITEMS[:3], ITEMS[2]])


def test_five_items_rfc6962_split() -> None:
    leaves = [leaf_hash(d) for d in ITEMS[:5]]
    left = node_hash(node_hash(leaves[0], leaves[1]), node_hash(leaves[2], leaves[3]))
    assert merkle_root(ITEMS[:5]) == node_hash(left, leaves[4])


def test_known_vector() -> None:
    # RFC 6962 root over the 32-byte digests of "0".."6" (also in tests/data/protocol/vectors.json)
    assert merkle_root(ITEMS[:7]).hex() == "5653c4ab2514ccd6ea4f0159702d2aba901f2562aa75abcff5a19e344bee038f"


def test_items_must_be_digests() -> None:
    with pytest.raises(ProtocolError, match=r"^a Merkle item must be a 32-byte SHA-256 digest$"):
        merkle_root([b"short"])


def test_leaf_items_are_digests_of_c_order_bytes() -> None:
    from agent.protocol.leaf import input_digest, output_digest

    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert input_digest(a, "sha256") == _h(a.tobytes())
    assert input_digest(a.T, "sha256") == _h(np.ascontiguousarray(a.T).tobytes())
    f = np.arange(6, dtype=np.float32)
    assert output_digest([a, f], "sha256") == _h(a.tobytes() + f.tobytes())
    builder = MerkleBuilder()
    builder.add(input_digest(a, "sha256"))
    assert builder.root() == merkle_root([_h(a.tobytes())])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=70))
def test_incremental_equals_batch(items: list[bytes]) -> None:
    builder = MerkleBuilder()
    for i, item in enumerate(items):
        builder.add(item)
        if i % 7 == 0:
            assert builder.root() == merkle_root(items[: i + 1])
    assert builder.root() == merkle_root(items)
    assert builder.count == len(builder) == len(items)
    assert len(builder._stack) <= max(1, len(items).bit_length())


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=40), st.data())
def test_inclusion_proofs(n: int, data: st.DataObject) -> None:
    items = [_h(i.to_bytes(4, "big")) for i in range(n)]
    root = merkle_root(items)
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    proof = inclusion_proof(items, index)
    assert verify_inclusion(items[index], index, n, proof, root)
    assert not verify_inclusion(_h(b"other"), index, n, proof, root)
    if n > 1:
        assert not verify_inclusion(items[index], (index + 1) % n, n, proof, root)


def test_inclusion_bad_index() -> None:
    with pytest.raises(ProtocolError, match=r"^index 3 outside 0\.\.2$"):
        inclusion_proof(ITEMS[:3], 3)
    assert not verify_inclusion(ITEMS[0], 5, 3, [], merkle_root(ITEMS[:3]))
