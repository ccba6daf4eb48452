"""Envelopes: sign/verify round trip, tampering, wrong key, size bounds, kinds."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from solders.keypair import Keypair

from agent.errors import ProtocolError
from agent.protocol.canonical import DOMAIN, canonical
from agent.protocol.envelope import (
    GENESIS_PREV,
    MAX_BYTES,
    MAX_WIRE_BYTES,
    build_envelope,
    envelope_hash,
    signed_bytes,
    verify_envelope,
)
from agent.protocol.vectors import TS, heartbeat_body, proof_body

KP = Keypair.from_seed(bytes([7]) * 32)
OTHER = Keypair.from_seed(bytes([8]) * 32)


def _proof(**kw: Any) -> dict[str, Any]:
    env = build_envelope(
        KP, "proof", proof_body(), seq=kw.get("seq", 1), prev=kw.get("prev", GENESIS_PREV), ts=TS
    )
    return copy.deepcopy(env.raw)


def test_round_trip_bytes_and_dict() -> None:
    env = build_envelope(KP, "proof", proof_body(), seq=1, prev=GENESIS_PREV, ts=TS)
    for data in (env.wire, env.wire.decode(), env.raw):
        got = verify_envelope(data)
        assert got.hash == env.hash == envelope_hash(env.raw)
        assert got.body == env.body
        assert got.dev == str(KP.pubkey())
        assert got.seq == 1 and got.prev == GENESIS_PREV and got.ts == TS


def test_signed_bytes_are_domain_plus_canonical_without_sig() -> None:
    env = build_envelope(KP, "heartbeat", heartbeat_body(), seq=1, prev=GENESIS_PREV, ts=TS)
    unsigned = {k: v for k, v in env.raw.items() if k != "sig"}
    assert signed_bytes(env.raw) == DOMAIN + canonical(unsigned)
    assert env.wire == canonical(env.raw)
    assert list(json.loads(env.wire)) == ["body", "dev", "kind", "prev", "seq", "sig", "ts", "v"]


def test_non_canonical_whitespace_still_verifies() -> None:
    env = build_envelope(KP, "heartbeat", heartbeat_body(), seq=1, prev=GENESIS_PREV, ts=TS)
    pretty = json.dumps(env.raw, indent=2)
    assert verify_envelope(pretty).hash == env.hash


def _mutations() -> list[tuple[str, Any]]:
    return [
        ("kind", "heartbeat"),
        ("dev", str(OTHER.pubkey())),
        ("seq", 2),
        ("ts", TS + 1),
        ("prev", "1" * 64),
        ("body.inferences", 1801),
        ("body.model_id", "other-model"),
        ("body.summary.person", 13),
        ("body.latency_us.p99", 11021),
        ("body.health.throttled", True),
    ]


@pytest.mark.parametrize(("path", "value"), _mutations())
def test_tampering_any_field_breaks_the_signature(path: str, value: Any) -> None:
    raw = _proof()
    target = raw
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    target[last] = value
    with pytest.raises(ProtocolError) as info:
        verify_envelope(canonical(raw))
    assert info.value.reason == "bad_signature", str(info.value)


def test_tampered_signature() -> None:
    raw = _proof()
    raw["sig"] = str(OTHER.sign_message(signed_bytes(raw)))
    with pytest.raises(ProtocolError) as info:
        verify_envelope(raw)
    assert info.value.reason == "bad_signature"
    assert str(info.value) == f"proof seq 1: signature does not verify for {KP.pubkey()}"


def test_wrong_key_claimed() -> None:
    """Signed by OTHER but claims KP's id: only the key in dev is used, so it fails."""
    raw = _proof()
    raw["sig"] = str(OTHER.sign_message(signed_bytes(raw)))
    with pytest.raises(ProtocolError, match=r"signature does not verify"):
        verify_envelope(raw)


def test_signature_without_domain_is_refused() -> None:
    raw = _proof()
    unsigned = {k: v for k, v in raw.items() if k != "sig"}
    raw["sig"] = str(KP.sign_message(canonical(unsigned)))
    with pytest.raises(ProtocolError, match=r"signature does not verify"):
        verify_envelope(raw)


def test_expected_signer() -> None:
    env = build_envelope(KP, "heartbeat", heartbeat_body(), seq=1, prev=GENESIS_PREV, ts=TS)
    assert verify_envelope(env.wire, expected_signer=str(KP.pubkey())).dev == str(KP.pubkey())
    with pytest.raises(ProtocolError) as info:
        verify_envelope(env.wire, expected_signer=str(OTHER.pubkey()))
    assert info.value.reason == "unknown_device"


def test_unknown_kind() -> None:
    raw = _proof()
    raw["kind"] = "selfie"
    with pytest.raises(ProtocolError) as info:
        verify_envelope(raw)
    assert info.value.reason == "unknown_kind"
    assert str(info.value) == "unknown kind 'selfie'"
    with pytest.raises(ProtocolError, match=r"^unknown kind 'selfie' \(known: beacon, heartbeat"):
        build_envelope(KP, "selfie", {}, seq=1, prev=GENESIS_PREV, ts=TS)


def test_oversized_raw_refused_before_parsing() -> None:
    data = b'{"pad":"' + b"x" * MAX_WIRE_BYTES + b'"}'
    with pytest.raises(ProtocolError) as info:
        verify_envelope(data)
    assert info.value.reason == "oversized"
    assert str(info.value) == f"message is {len(data)} bytes, over the 8192-byte limit"


def test_oversized_per_kind() -> None:
    """A heartbeat padded with whitespace-free extra data beyond its 2 KiB bound."""
    env = build_envelope(KP, "heartbeat", heartbeat_body(), seq=1, prev=GENESIS_PREV, ts=TS)
    raw = copy.deepcopy(env.raw)
    raw["body"]["padding"] = "x" * 3000
    with pytest.raises(ProtocolError) as info:
        verify_envelope(canonical(raw))
    assert info.value.reason == "oversized"
    assert "over the 2048-byte bound" in str(info.value)


def test_build_refuses_oversized() -> None:
    body = proof_body()
    # Bodies at the schema maximum fit (see test_protocol_messages); force a tiny bound here.
    MAX_BYTES["proof"], saved = 500, MAX_BYTES["proof"]
    try:
        with pytest.raises(ProtocolError) as info:
            build_envelope(KP, "proof", body, seq=1, prev=GENESIS_PREV, ts=TS)
        assert info.value.reason == "oversized"
    finally:
        MAX_BYTES["proof"] = saved


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, "unsupported protocol version 2 (this agent speaks v1)"),
        ({"v": True}, "v: expected int, got bool"),
        ({"seq": "1"}, "seq: expected int, got str"),
        ({"prev": "AB" * 32}, "prev must be 64 lower-case hex characters"),
        ({"dev": "not-base58!"}, "dev is not a base58 public key: Invalid Base58 string"),
        ({"sig": "abc"}, "sig is not a base58 signature: string decoded to wrong size for signature"),
        ({"extra": 1}, "envelope has unknown keys extra"),
    ],
)
def test_malformed_envelopes(change: dict[str, Any], message: str) -> None:
    raw = _proof()
    raw.update(change)
    with pytest.raises(ProtocolError) as info:
        verify_envelope(raw)
    assert info.value.reason == "malformed"
    assert str(info.value) == message


def test_missing_keys_and_non_object() -> None:
    raw = _proof()
    del raw["prev"], raw["ts"]
    with pytest.raises(ProtocolError, match=r"^envelope is missing prev, ts$"):
        verify_envelope(raw)
    with pytest.raises(ProtocolError, match=r"^envelope must be a JSON object, got list$"):
        verify_envelope(b"[1]")


def test_schema_error_after_valid_signature() -> None:
    """A correctly signed body that breaks the schema is a schema error, not a signature error."""
    from agent.protocol.canonical import canonical as canon

    raw = _proof()
    raw["body"]["inferences"] = -1
    raw["sig"] = str(KP.sign_message(signed_bytes(raw)))
    with pytest.raises(ProtocolError) as info:
        verify_envelope(canon(raw))
    assert info.value.reason == "schema"
    assert str(info.value) == "proof: body.inferences: Input should be greater than or equal to 0"


def test_genesis_rule() -> None:
    with pytest.raises(ProtocolError, match=r"seq 1 and prev of 64 zeros go together"):
        build_envelope(KP, "proof", proof_body(), seq=1, prev="a" * 64, ts=TS)
    with pytest.raises(ProtocolError, match=r"seq 1 and prev of 64 zeros go together"):
        build_envelope(KP, "proof", proof_body(), seq=5, prev=GENESIS_PREV, ts=TS)
    with pytest.raises(ProtocolError, match=r"seq must be >= 1 \(got 0\)"):
        build_envelope(KP, "proof", proof_body(), seq=0, prev=GENESIS_PREV, ts=TS)
    status = {"state": "online", "agent_version": "0.1.0"}
    assert build_envelope(KP, "status", status, seq=0, prev=GENESIS_PREV, ts=TS).seq == 0
    with pytest.raises(ProtocolError, match=r"side-band"):
        build_envelope(KP, "status", status, seq=0, prev="a" * 64, ts=TS)


def test_build_refuses_bad_ts_and_bool_seq() -> None:
    with pytest.raises(ProtocolError, match=r"^ts must be an integer number of ms \(got 1\.5\)$"):
        build_envelope(KP, "proof", proof_body(), seq=1, prev=GENESIS_PREV, ts=1.5)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"^seq must be an integer"):
        build_envelope(KP, "proof", proof_body(), seq=True, prev=GENESIS_PREV, ts=TS)


def test_hash_is_of_signed_bytes() -> None:
    import hashlib

    env = build_envelope(KP, "proof", proof_body(), seq=1, prev=GENESIS_PREV, ts=TS)
    assert env.hash == hashlib.sha256(signed_bytes(env.raw)).hexdigest()
    assert env.hash == envelope_hash(env)
