"""Body schemas: bounds per kind, strictness, the privacy property, size bounds at the maximum."""

from __future__ import annotations

from typing import Any

import pytest
from solders.keypair import Keypair

from agent.errors import ProtocolError
from agent.protocol.envelope import MAX_BYTES, build_envelope, validate_body
from agent.protocol.kinds import BODIES, ORIGIN, SIDEBAND_KINDS
from agent.protocol.vectors import heartbeat_body, proof_body

KP = Keypair.from_seed(bytes([9]) * 32)
PK = str(Keypair.from_seed(bytes([10]) * 32).pubkey())
SIG = str(KP.sign_message(b"x"))
H = "f" * 64
U64 = 2**64 - 1
U32 = 2**32 - 1
SAFE = 2**53 - 1
LABEL = "😀" * 32  # 32 code points of 4 UTF-8 bytes: the widest label
IDENT = "a" * 64
VERSION = "9" * 32
NAME = "n" * 63


def _health_max() -> dict[str, Any]:
    return {
        "cpu_bp": 10_000,
        "mem_bp": 10_000,
        "temp_mc": -55_000,
        "throttled": True,
        "rate_limited": True,
        "throttle_reason": IDENT,
    }


def max_bodies() -> dict[str, dict[str, Any]]:
    """The largest encodable body of each kind (every field at its bound)."""
    return {
        "beacon": {"slot": SAFE, "nonce": H, "time_ms": SAFE, "slot_ms": 3_600_000},
        "heartbeat": {"beacon_slot": SAFE, "beacon_nonce": H, "uptime_s": U32, "health": _health_max()},
        "proof": {
            "window_start_ms": SAFE - 86_400_000,
            "window_end_ms": SAFE,
            "model_id": IDENT,
            "model_sha256": H,
            "inferences": U32,
            "leaf_hash": "sha256",
            "input_root": H,
            "output_root": H,
            "summary": {LABEL[: 32 - len(str(i))] + str(i): U32 for i in range(32)},
            "latency_us": {"p50": U32, "p95": U32, "p99": U32},
            "health": _health_max(),
            "agent_version": VERSION,
        },
        "challenge": {"device": PK, "nonce": H, "model_sha256": H, "deadline_ms": SAFE},
        "challenge_response": {"nonce": H, "model_sha256": H, "sketch": [-SAFE] * 32, "latency_us": U32},
        "verdict": {
            "device": PK,
            "ref_kind": IDENT,
            "ref_seq": U64,
            "ref_hash": H,
            "accepted": False,
            "reason": IDENT,
            "detail": "é" * 200,
        },
        "claim": {"claim_id": "f" * 32, "owner": PK, "amount": U64},
        "voucher": {
            "device": PK,
            "claim_id": "f" * 32,
            "owner": PK,
            "mint": PK,
            "amount": U64,
            "decimals": 18,
            "transaction": "A" * 1644,
            "blockhash": PK,
            "last_valid_block_height": U64,
            "epoch": U64,
            "epoch_amount": U64,
            "cumulative": U64,
            "paid": U64,
            "proof": [{"sibling": H, "left": True}] * 24,
        },
        "reward_root": {
            "epoch": U64,
            "root": H,
            "devices": 2**32 - 1,
            "pool": U64,
            "total": U64,
            "policy_hash": H,
            "settled_ms": SAFE,
        },
        "receipt": {
            "claim_id": "f" * 32,
            "signature": SIG,
            "status": "confirmed",
            "slot": U64,
            "reason": IDENT,
        },
        "status": {
            "state": "offline",
            "model_id": IDENT,
            "model_sha256": H,
            "agent_version": VERSION,
            "profile": IDENT,
        },
        "deploy": {
            "channel": IDENT,
            "manifest_version": U64,
            "model_id": IDENT,
            "model_sha256": H,
            "state": "rolled_back",
            "reason": IDENT,
            "progress_bp": 10_000,
        },
        "manifest": {
            "channel": IDENT,
            "version": SAFE,
            "model_id": IDENT,
            "model_version": VERSION,
            "model": NAME + "0",
            "card": NAME + "1",
            "artifacts": [
                {"name": NAME + str(i), "url": "https://" + "u" * 248, "sha256": H, "length": 2**32}
                for i in range(3)
            ],
            "targets": {
                "profiles": [IDENT] * 8,
                "tags": [IDENT] * 8,
                "devices": [PK] * 16,
            },
            "expires_ms": SAFE,
            "stages": [1, 2, 3, 4, 5, 6, 7, 10_000],
            "stage": 7,
        },
    }


def test_every_kind_has_a_max_body_origin_and_bound() -> None:
    assert set(max_bodies()) == set(BODIES) == set(ORIGIN) == set(MAX_BYTES)


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_largest_body_fits_the_kind_bound(kind: str) -> None:
    seq = 0 if kind in SIDEBAND_KINDS else 2**63 - 1
    env = build_envelope(KP, kind, max_bodies()[kind], seq=seq, prev="e" * 64 if seq else "0" * 64, ts=SAFE)
    assert len(env.wire) <= MAX_BYTES[kind]


def _walk(schema: dict[str, Any], defs: dict[str, Any], path: str, out: list[str]) -> None:
    if "$ref" in schema:
        _walk(defs[schema["$ref"].split("/")[-1]], defs, path, out)
        return
    for key in ("anyOf", "allOf", "oneOf"):
        for sub in schema.get(key, []):
            _walk(sub, defs, path, out)
    kind = schema.get("type")
    if kind == "string" and "maxLength" not in schema and "enum" not in schema and "const" not in schema:
        out.append(f"{path}: unbounded string")
    if kind == "array":
        if "maxItems" not in schema:
            out.append(f"{path}: unbounded list")
        _walk(schema.get("items", {}), defs, f"{path}[]", out)
    if kind == "integer" and ("maximum" not in schema or "minimum" not in schema):
        out.append(f"{path}: unbounded integer")
    if kind == "number":
        out.append(f"{path}: float field")
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            if "maxProperties" not in schema:
                out.append(f"{path}: unbounded mapping")
            names = schema.get("propertyNames", {})
            if "maxLength" not in names:
                out.append(f"{path}: unbounded mapping keys")
            _walk(extra, defs, f"{path}.*", out)
        elif extra is not False and "properties" in schema:
            out.append(f"{path}: accepts unknown keys")
        for name, sub in schema.get("properties", {}).items():
            _walk(sub, defs, f"{path}.{name}", out)


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_privacy_every_field_is_bounded(kind: str) -> None:
    """No field can carry a raw frame, crop, embedding or per-frame output: all bounded, no floats."""
    schema = BODIES[kind].model_json_schema()
    problems: list[str] = []
    _walk(schema, schema.get("$defs", {}), kind, problems)
    assert problems == []


@pytest.mark.parametrize("kind", sorted(k for k, o in ORIGIN.items() if o == "device"))
def test_privacy_device_messages_have_no_blob_fields(kind: str) -> None:
    """Device-sent strings are identifiers, digests, keys or labels: at most 64 characters each."""
    schema = BODIES[kind].model_json_schema()
    text = str(schema)
    longest = [int(part.split(",")[0].split("}")[0]) for part in text.split("'maxLength': ")[1:]]
    assert max(longest) <= 88  # a base58 signature is the longest device-sent string


def test_summary_bounded_to_32_labels() -> None:
    body = proof_body()
    body["summary"] = {f"c{i}": 1 for i in range(33)}
    with pytest.raises(ProtocolError) as info:
        validate_body("proof", body)
    assert info.value.reason == "schema"
    assert (
        str(info.value)
        == "proof: body.summary: Dictionary should have at most 32 items after validation, not more"
    )


@pytest.mark.parametrize(
    ("kind", "change", "message"),
    [
        ("proof", {"inferences": True}, "proof: body.inferences: Input should be a valid integer"),
        (
            "proof",
            {"inferences": 2**32},
            "proof: body.inferences: Input should be less than or equal to 4294967295",
        ),
        (
            "proof",
            {"model_sha256": "F" * 64},
            "proof: body.model_sha256: String should match pattern '^[0-9a-f]{64}$'",
        ),
        (
            "proof",
            {"window_end_ms": 1},
            "proof: body: Value error, window_end_ms must be after window_start_ms",
        ),
        ("proof", {"frame": "AAAA"}, "proof: body.frame: unknown key"),
        (
            "proof",
            {"summary": {"x" * 33: 1}},
            "proof: body.summary.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.[key]: "
            "String should have at most 32 characters",
        ),
        (
            "proof",
            {"summary": {"a\nb": 1}},
            "proof: body.summary.a\nb.[key]: String should match pattern '^[^\\x00-\\x1f\\x7f]{1,32}$'",
        ),
        (
            "proof",
            {"latency_us": {"p50": 3, "p95": 2, "p99": 4}},
            "proof: body.latency_us: Value error, percentiles must satisfy p50 <= p95 <= p99 (got 3, 2, 4)",
        ),
        (
            "proof",
            {"latency_us": {"p50": 1.0, "p95": 2, "p99": 4}},
            "proof: body.latency_us.p50: Input should be a valid integer",
        ),
        (
            "heartbeat",
            {"health": {"cpu_bp": 10_001, "mem_bp": 0}},
            "heartbeat: body.health.cpu_bp: Input should be less than or equal to 10000",
        ),
        (
            "heartbeat",
            {"health": {"cpu_bp": 1, "mem_bp": 0, "rate_limited": True}},
            "heartbeat: body.health: Value error, throttle_reason must be set exactly when rate_limited is true",
        ),
        (
            "heartbeat",
            {"health": {"cpu_bp": 1, "mem_bp": 0, "throttled": 1}},
            "heartbeat: body.health.throttled: Input should be a valid boolean",
        ),
        ("heartbeat", {"uptime_s": None}, "heartbeat: body.uptime_s: Input should be a valid integer"),
    ],
)
def test_schema_bounds(kind: str, change: dict[str, Any], message: str) -> None:
    body = proof_body() if kind == "proof" else heartbeat_body()
    body.update(change)
    with pytest.raises(ProtocolError) as info:
        validate_body(kind, body)
    assert info.value.reason == "schema"
    assert str(info.value) == message


def test_missing_key_named() -> None:
    body = heartbeat_body()
    del body["uptime_s"]
    with pytest.raises(ProtocolError, match=r"^heartbeat: body.uptime_s: required key is missing$"):
        validate_body("heartbeat", body)


def test_challenge_response_needs_exactly_32_ints() -> None:
    body = {"nonce": H, "model_sha256": H, "sketch": [0] * 31, "latency_us": 5}
    with pytest.raises(ProtocolError, match=r"List should have at least 32 items"):
        validate_body("challenge_response", body)
    body["sketch"] = [0] * 33
    with pytest.raises(ProtocolError, match=r"List should have at most 32 items"):
        validate_body("challenge_response", body)
    body["sketch"] = [2**53] + [0] * 31
    with pytest.raises(
        ProtocolError, match=r"body.sketch.0: Input should be less than or equal to 9007199254740991"
    ):
        validate_body("challenge_response", body)


def test_pubkeys_and_signatures_checked() -> None:
    claim = {"claim_id": "a" * 32, "owner": "1" * 44}
    with pytest.raises(ProtocolError, match=r"body.owner: Value error, not a base58 public key"):
        validate_body("claim", claim)
    receipt = {"claim_id": "a" * 32, "status": "confirmed", "signature": "1" * 80}
    with pytest.raises(ProtocolError, match=r"body.signature: Value error, not a base58 signature"):
        validate_body("receipt", receipt)
    assert validate_body("claim", {"claim_id": "a" * 32, "owner": PK}).model_dump()["amount"] is None


def test_verdict_rejection_needs_reason() -> None:
    body = {"device": PK, "ref_kind": "proof", "ref_seq": 3, "ref_hash": H, "accepted": False}
    with pytest.raises(ProtocolError, match=r"a rejection needs a reason"):
        validate_body("verdict", body)
    validate_body("verdict", {**body, "reason": "stale_beacon"})


def test_deploy_state_enumerated() -> None:
    body = max_bodies()["deploy"]
    with pytest.raises(ProtocolError, match=r"body.state: Input should be 'received'"):
        validate_body("deploy", {**body, "state": "exploded"})
