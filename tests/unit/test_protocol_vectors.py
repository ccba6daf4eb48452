"""Test vectors: recomputed from code, equal to the stored file, quoted verbatim in docs/protocol.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from solders.pubkey import Pubkey
from solders.signature import Signature

from agent.errors import ProtocolError
from agent.protocol.canonical import DOMAIN
from agent.protocol.envelope import verify_envelope
from agent.protocol.vectors import generate, sample_capture

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "protocol"
DOC = ROOT / "docs" / "protocol.md"


def test_vectors_recompute_exactly() -> None:
    stored = json.loads((DATA / "vectors.json").read_text(encoding="utf-8"))
    assert generate() == stored


def test_sample_capture_recomputes_exactly() -> None:
    stored = (DATA / "capture_sample.txt").read_text(encoding="utf-8").splitlines()
    assert sample_capture() == stored


def test_vector_is_independently_checkable() -> None:
    """Verify with raw solders calls only: pubkey from dev, sig over DOMAIN + canonical bytes."""
    v = generate()
    env = v["envelope"]
    signed = DOMAIN + env["canonical_unsigned"].encode("utf-8")
    pubkey = Pubkey.from_string(v["key"]["pubkey_b58"])
    assert (
        bytes(pubkey).hex()
        == v["key"]["pubkey_hex"]
        == (
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"  # RFC 8032 TEST 1 public key
        )
    )
    assert Signature.from_string(env["sig_b58"]).verify(pubkey, signed)
    first = verify_envelope(env["wire"].encode())
    second = verify_envelope(v["next_envelope"]["wire"].encode())
    assert first.hash == env["envelope_hash"] == second.prev
    assert len(env["wire"].encode()) == env["wire_bytes"]


def test_doc_quotes_the_vectors() -> None:
    doc = DOC.read_text(encoding="utf-8")
    v = generate()
    quoted = [
        v["key"]["seed_hex"],
        v["key"]["pubkey_hex"],
        v["key"]["pubkey_b58"],
        v["envelope"]["canonical_unsigned"],
        v["envelope"]["envelope_hash"],
        v["envelope"]["sig_b58"],
        v["envelope"]["wire"],
        f"Wire form ({v['envelope']['wire_bytes']} bytes)",
        v["next_envelope"]["wire"],
        v["next_envelope"]["envelope_hash"],
        v["merkle"]["leaf_0"],
        *(v["merkle"]["roots"][n] for n in ("0", "2", "3", "5", "7")),
        *(v["leaf_items"][item][h] for item in ("input_item", "output_item") for h in ("blake3", "sha256")),
        v["challenge"]["nonce_hex"],
        v["challenge"]["uint8_first16_hex"],
        v["challenge"]["uint8_sha256"],
        v["challenge"]["float32_sha256"],
        json.dumps(v["challenge"]["sketch"], separators=(",", ":")),
        v["halted_manifest"]["canonical_body"],
        v["halted_manifest"]["envelope_hash"],
        *(op[k] for op in v["cosign"]["operators"] for k in ("seed_hex", "pubkey_b58")),
        v["cosign"]["envelope_hash"],
        v["cosign"]["sig_b58"],
        v["cosign"]["cosig_b58"],
        v["cosign"]["wire"],
        v["cosign"]["other_bytes_cosig_b58"],
    ]
    missing = [value for value in quoted if value not in doc]
    assert missing == []


def test_leaf_items_match_the_agents_commitments() -> None:
    """The documented items are exactly what agent/protocol/leaf.py computes."""
    import numpy as np

    from agent.protocol.leaf import input_digest, output_digest

    v = generate()["leaf_items"]
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    outputs = [np.array([[0.5, -1.25]], dtype=np.float32), np.array([[7]], dtype=np.int64)]
    for h in ("blake3", "sha256"):
        assert input_digest(image, h).hex() == v["input_item"][h]
        assert output_digest(outputs, h).hex() == v["output_item"][h]


def test_doc_states_the_size_bounds() -> None:
    from agent.protocol.envelope import MAX_BYTES

    doc = DOC.read_text(encoding="utf-8")
    for kind, bound in MAX_BYTES.items():
        assert f"| `{kind}` | {bound} |" in doc


def test_cosign_vector_is_independently_checkable() -> None:
    """Both signatures verify with raw solders calls over the same bytes; k-1 and other bytes are refused."""
    from agent.protocol.canonical import canonical, parse_json
    from agent.protocol.cosign import check_signers

    v = generate()["cosign"]
    wire = parse_json(v["wire"].encode())
    unsigned = {k: val for k, val in wire.items() if k not in ("sig", "cosigs")}
    signed = DOMAIN + canonical(unsigned)
    a, b, c = (Pubkey.from_string(op["pubkey_b58"]) for op in v["operators"])
    assert Signature.from_string(v["sig_b58"]).verify(a, signed)
    assert Signature.from_string(v["cosig_b58"]).verify(c, signed)
    assert not Signature.from_string(v["other_bytes_cosig_b58"]).verify(b, signed)
    assert wire["cosigs"] == [{"key": str(c), "sig": v["cosig_b58"]}]
    env = verify_envelope(v["wire"].encode())
    assert env.hash == v["envelope_hash"] == verify_envelope(v["wire_signed_once"].encode()).hash
    trusted = {str(a), str(b), str(c)}
    check_signers("manifest", env.signers, trusted, v["threshold"])  # 2 of 3: counts
    alone = verify_envelope(v["wire_signed_once"].encode())
    with pytest.raises(ProtocolError) as below:
        check_signers("manifest", alone.signers, trusted, v["threshold"])
    assert below.value.reason == "below_threshold"
    forged = {**wire, "cosigs": [{"key": str(b), "sig": v["other_bytes_cosig_b58"]}]}
    with pytest.raises(ProtocolError) as other:
        verify_envelope(forged)
    assert other.value.reason == "bad_cosignature"
