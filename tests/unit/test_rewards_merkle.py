"""The reward Merkle tree: docs/rewards.md's test vectors, proofs for every size, an independent check."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.rewards.merkle import Leaf, Step, leaf_hash, node_hash, ordered, proof, root, verify
from tests.support.reward_merkle_check import check_proof, root_of

DOC = Path(__file__).resolve().parents[2] / "docs" / "rewards.md"


def vectors() -> dict:  # type: ignore[type-arg]
    text = DOC.read_text(encoding="utf-8")
    found = re.search(
        r"<!-- reward-vectors:begin -->\n```json\n(.*?)\n```\n<!-- reward-vectors:end -->", text, re.S
    )
    assert found, "docs/rewards.md has no reward-vectors block"
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def as_leaf(d: dict) -> Leaf:  # type: ignore[type-arg]
    return Leaf(d["dev"], d["owner"], d["epoch"], d["amount"], d["cumulative"])


def test_the_documented_vectors_hold_for_the_agent_and_the_independent_code() -> None:
    v = vectors()
    leaves = [as_leaf(d) for d in v["leaves"]]
    assert [leaf_hash(leaf).hex() for leaf in leaves] == [d["leaf_hash"] for d in v["leaves"]]
    assert node_hash(leaf_hash(leaves[0]), leaf_hash(leaves[1])).hex() == v["node_0_1"]
    assert root(list(reversed(leaves))).hex() == root_of(v["leaves"]).hex() == v["root"]
    assert root([]).hex() == root_of([]).hex() == v["empty_root"]
    assert (
        len(v["leaves"]) == 3
        and v["root"] == node_hash(bytes.fromhex(v["node_0_1"]), leaf_hash(leaves[2])).hex()
    )
    for i, leaf in enumerate(leaves):
        steps = proof(leaves, i)
        assert [{"sibling": s.sibling.hex(), "side": "left" if s.left else "right"} for s in steps] == v[
            "proofs"
        ][i]
        assert verify(bytes.fromhex(v["root"]), leaf, steps)
        assert check_proof(v["root"], v["leaves"][i], v["proofs"][i])
        assert not check_proof(
            v["root"], {**v["leaves"][i], "cumulative": v["leaves"][i]["cumulative"] + 1}, v["proofs"][i]
        )


@pytest.mark.parametrize("count", range(1, 10))
def test_every_proof_of_every_tree_size_checks_and_a_changed_amount_fails(count: int) -> None:
    leaves = [
        Leaf(f"dev{(i * 5 + 3) % 11:02d}", f"owner{i % 3}", 41, 1000 * i, 5000 + i) for i in range(count)
    ]
    top = root(leaves)
    assert top.hex() == root_of([vars(leaf) for leaf in leaves]).hex()
    for i, leaf in enumerate(ordered(leaves)):
        steps = proof(leaves, i)
        assert verify(top, leaf, steps)
        printed = [{"sibling": s.sibling.hex(), "side": "left" if s.left else "right"} for s in steps]
        assert check_proof(top.hex(), vars(leaf), printed)
        changed = Leaf(leaf.dev, leaf.owner, leaf.epoch, leaf.amount + 1, leaf.cumulative)
        assert not verify(top, changed, steps)
        assert not check_proof(top.hex(), vars(changed), printed)
        if steps:  # a flipped side fails too
            flipped = [Step(steps[0].sibling, not steps[0].left), *steps[1:]]
            assert not verify(top, leaf, flipped)


def test_the_encoding_separates_fields_and_refuses_what_does_not_fit() -> None:
    # Moving a character from dev to owner changes the leaf (length prefixes).
    assert leaf_hash(Leaf("ab", "c", 1, 2, 3)) != leaf_hash(Leaf("a", "bc", 1, 2, 3))
    # A one-leaf tree's root is the leaf; the odd node is promoted, not paired with itself.
    one = Leaf("a", "o", 1, 2, 3)
    assert root([one]) == leaf_hash(one)
    two, three = Leaf("b", "o", 1, 2, 3), Leaf("c", "o", 1, 2, 3)
    assert root([one, two, three]) == node_hash(node_hash(leaf_hash(one), leaf_hash(two)), leaf_hash(three))
    with pytest.raises(ValueError, match="does not fit an unsigned 64-bit field"):
        leaf_hash(Leaf("a", "o", 1, 2**64, 0))
    with pytest.raises(ValueError, match="device a has two leaves"):
        root([one, Leaf("a", "p", 1, 0, 0)])
    with pytest.raises(IndexError, match=r"leaf index 3 outside 0\.\.2"):
        proof([one, two, three], 3)
