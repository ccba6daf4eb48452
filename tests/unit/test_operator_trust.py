"""k-of-n operator trust (co-signatures, refused by name) and the operator chain's seq floor (ADR 0025)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from solders.keypair import Keypair

from agent.device.manifests import DeviceFacts, check_manifest
from agent.errors import ProtocolError
from agent.protocol.canonical import canonical
from agent.protocol.cosign import add_cosignature, check_signers, cosignature
from agent.protocol.envelope import (
    GENESIS_PREV,
    MAX_BYTES,
    MAX_COSIGS,
    Envelope,
    build_envelope,
    verify_envelope,
)
from agent.protocol.inbound import Accepted, Rejection, Trust, check_inbound
from agent.protocol.kinds import DEVICE_INBOUND
from agent.protocol.topics import Topics
from agent.protocol.vectors import TS, heartbeat_body
from tests.support.manifests import NOW, manifest_body

A, B, C = (Keypair.from_seed(bytes([40 + i]) * 32) for i in range(3))
ROGUE = Keypair.from_seed(bytes([49]) * 32)
TRUSTED = frozenset(str(k.pubkey()) for k in (A, B, C))
TOPIC = Topics().manifest("stable")
FACTS = DeviceFacts(str(Keypair.from_seed(bytes([50]) * 32).pubkey()), "rpi4")


def manifest(signer: Keypair = A, *cosigners: Keypair, **change: Any) -> Envelope:
    env = build_envelope(signer, "manifest", manifest_body(**change), seq=1, prev=GENESIS_PREV, ts=NOW)
    for key in cosigners:
        env = add_cosignature(env, key)
    return env


def with_cosigs(env: Envelope, cosigs: Any) -> dict[str, Any]:
    raw = {k: v for k, v in env.raw.items() if k != "cosigs"}
    return {**raw, "cosigs": cosigs}


def judged(payload: bytes | dict[str, Any], threshold: int = 2) -> Accepted | Rejection:
    data = canonical(payload) if isinstance(payload, dict) else payload
    trust = Trust(
        coordinators=frozenset(), operators=TRUSTED, operator_threshold=threshold, kinds=DEVICE_INBOUND
    )
    return check_inbound(TOPIC, data, trust)


def reason_of(result: Accepted | Rejection) -> str:
    return "accepted" if isinstance(result, Accepted) else result.reason


def test_cosigning_keeps_the_hash_and_sorts_by_key() -> None:
    once = manifest()
    twice = manifest(A, C, B)
    assert twice.hash == once.hash  # co-signatures are outside the signed bytes
    assert [c.key for c in twice.cosigs] == sorted(str(k.pubkey()) for k in (B, C))
    assert twice.signers[0] == str(A.pubkey())
    assert verify_envelope(twice.wire).cosigs == twice.cosigs


def test_two_of_three_counts_and_one_of_three_is_below_threshold() -> None:
    assert reason_of(judged(manifest(A, B).wire)) == "accepted"
    assert reason_of(judged(manifest(A, B, C).wire, threshold=3)) == "accepted"
    below = judged(manifest().wire)
    assert isinstance(below, Rejection) and below.reason == "below_threshold"
    assert below.message == "manifest carries 1 of the 2 operator signatures this device requires"
    assert reason_of(judged(manifest(A, B).wire, threshold=3)) == "below_threshold"


def test_an_untrusted_cosigner_is_refused_even_with_enough_trusted_ones() -> None:
    result = judged(manifest(A, B, ROGUE).wire)
    assert isinstance(result, Rejection) and result.reason == "untrusted_signer"
    assert result.message == (
        f"manifest co-signed by {ROGUE.pubkey()}, which is not one of the 3 trusted operator keys"
    )
    assert reason_of(judged(manifest(ROGUE, A, B).wire)) == "untrusted_operator"


def test_the_same_key_twice_is_a_duplicate_signer() -> None:
    env = manifest(A, B)
    with pytest.raises(ProtocolError) as again:
        add_cosignature(env, B)
    assert again.value.reason == "duplicate_signer"
    with pytest.raises(ProtocolError) as own:
        add_cosignature(env, A)
    assert own.value.reason == "duplicate_signer"
    # Forged wires: B's co-signature twice (2 "signers" at k = 2), A's own key as a co-signer.
    b = cosignature(env, B).to_json()
    assert reason_of(judged(with_cosigs(env, [b, b]))) == "duplicate_signer"
    a = cosignature(env, A).to_json()
    assert reason_of(judged(with_cosigs(env, [a]))) == "duplicate_signer"


def test_a_cosignature_over_other_bytes_is_refused() -> None:
    env = manifest()
    other = manifest(version=4)  # the same operator's manifest at another version
    forged = with_cosigs(env, [cosignature(other, B).to_json()])
    result = judged(forged)
    assert isinstance(result, Rejection) and result.reason == "bad_cosignature"
    assert result.message == (
        f"manifest seq 1: co-signature 0 does not verify for {B.pubkey()} over this envelope's signed bytes"
    )
    # A body changed after co-signing breaks the envelope's own signature first.
    tampered = {**manifest(A, B).raw, "body": {**manifest_body(), "version": 9}}
    assert reason_of(judged(tampered)) == "bad_signature"


def test_more_cosignatures_than_the_bound_are_refused_before_any_signature() -> None:
    keys = [Keypair.from_seed(bytes([60 + i]) * 32) for i in range(MAX_COSIGS + 1)]
    env = manifest()
    full = manifest(A, *keys[:MAX_COSIGS])
    assert len(full.wire) <= MAX_BYTES["manifest"]
    with pytest.raises(ProtocolError) as more:
        add_cosignature(full, keys[-1])
    assert more.value.reason == "too_many_signatures"
    # Garbage signatures: refused by count, so no signature is ever checked.
    junk = [{"key": str(k.pubkey()), "sig": env.sig} for k in keys]
    result = judged(with_cosigs(env, junk))
    assert isinstance(result, Rejection) and result.reason == "too_many_signatures"
    assert result.message == f"cosigs: {MAX_COSIGS + 1} co-signatures, over the bound of {MAX_COSIGS}"


@pytest.mark.parametrize(
    "cosigs",
    [
        [],
        {"key": "x"},
        [{"key": "x", "sig": "y"}],
        [{"key": str(B.pubkey())}],
        [{"key": str(B.pubkey()), "sig": "1" * 88, "extra": 1}],
        [{"key": 7, "sig": "y"}],
        ["not an object"],
    ],
)
def test_malformed_cosigs(cosigs: Any) -> None:
    assert reason_of(judged(with_cosigs(manifest(), cosigs))) == "malformed"


def test_cosigs_on_another_kind_are_malformed() -> None:
    hb = build_envelope(A, "heartbeat", heartbeat_body(), seq=1, prev=GENESIS_PREV, ts=TS)
    raw = {**hb.raw, "cosigs": [cosignature(hb, B).to_json()]}
    with pytest.raises(ProtocolError) as info:
        verify_envelope(raw)
    assert info.value.reason == "malformed"
    assert info.value.message == "envelope has unknown keys cosigs (a heartbeat is not co-signed)"
    with pytest.raises(ProtocolError) as add:
        add_cosignature(hb, B)
    assert add.value.reason == "wrong_kind"


def test_check_signers_alone() -> None:
    trusted = {str(A.pubkey()), str(B.pubkey())}
    check_signers("manifest", (str(A.pubkey()), str(B.pubkey())), trusted, 2)
    with pytest.raises(ProtocolError) as info:
        check_signers("manifest", (str(A.pubkey()),), trusted, 2)
    assert info.value.reason == "below_threshold"


def test_the_device_decision_applies_the_threshold_too() -> None:
    """check_manifest re-checks trust on the verified envelope (defence in depth, same function)."""
    args: dict[str, Any] = {
        "topic_channel": "stable",
        "operators": TRUSTED,
        "facts": FACTS,
        "now_ms": NOW,
        "accepted_version": 0,
        "accepted_manifest": None,
        "committed_release": None,
        "free_bytes": 10**12,
        "threshold": 2,
    }
    assert check_manifest(verify_envelope(manifest(A, C).wire), **args).manifest.version == 3
    for env, want in ((manifest(), "below_threshold"), (manifest(A, ROGUE), "untrusted_signer")):
        with pytest.raises(ProtocolError) as info:
            check_manifest(verify_envelope(env.wire), **args)
        assert info.value.reason == want


# --------------------------------------------------------------- the operator chain (seq floor)


def decide_seq(seq: int, version: int, floor: int, **kw: Any) -> Any:
    prev = GENESIS_PREV if seq == 1 else "ab" * 32
    env = build_envelope(A, "manifest", manifest_body(version=version), seq=seq, prev=prev, ts=NOW)
    args: dict[str, Any] = {
        "topic_channel": "stable",
        "operators": TRUSTED,
        "facts": FACTS,
        "now_ms": NOW,
        "accepted_version": 6,
        "accepted_manifest": verify_envelope(manifest(version=6).wire).body,
        "committed_release": None,
        "free_bytes": 10**12,
        "operator_seq": floor,
        **kw,
    }
    return check_manifest(verify_envelope(env.wire), **args)


def test_a_new_version_at_an_old_seq_is_a_replay() -> None:
    with pytest.raises(ProtocolError) as info:
        decide_seq(seq=1, version=7, floor=6)
    assert info.value.reason == "replay"
    assert info.value.message == (
        f"manifest version 7 on 'stable' is seq 1 of operator {A.pubkey()}, at or below the seq 6 "
        "already accepted from it on this channel"
    )
    with pytest.raises(ProtocolError) as same:
        decide_seq(seq=6, version=7, floor=6)
    assert same.value.reason == "replay"
    assert decide_seq(seq=7, version=7, floor=6).manifest.version == 7
    assert decide_seq(seq=9, version=7, floor=6).manifest.version == 7  # a gap: other channels


def test_the_duplicate_of_the_accepted_manifest_is_not_a_replay() -> None:
    """The retained re-delivery (or the stored envelope at a restart) has the floor's seq."""
    decision = decide_seq(seq=6, version=6, floor=6)
    assert decision.duplicate


def test_a_schema_maximum_manifest_with_every_cosignature_fits_the_bound() -> None:
    ident, pk, safe, name = "a" * 64, str(ROGUE.pubkey()), 2**53 - 1, "n" * 63
    body = {  # every field at its schema bound (as tests/unit/test_protocol_messages.py's)
        "channel": ident,
        "version": safe,
        "model_id": ident,
        "model_version": "9" * 32,
        "model": name + "0",
        "card": name + "1",
        "artifacts": [
            {"name": name + str(i), "url": "https://" + "u" * 248, "sha256": "f" * 64, "length": 2**32}
            for i in range(3)
        ],
        "targets": {"profiles": [ident] * 8, "tags": [ident] * 8, "devices": [pk] * 16},
        "expires_ms": safe,
        "stages": [1, 2, 3, 4, 5, 6, 7, 10_000],
        "stage": 7,
    }
    env = build_envelope(A, "manifest", body, seq=2**63 - 1, prev="e" * 64, ts=2**53 - 1)
    for i in range(MAX_COSIGS):
        env = add_cosignature(env, Keypair.from_seed(bytes([90 + i]) * 32))
    assert len(env.cosigs) == MAX_COSIGS
    assert len(env.wire) <= MAX_BYTES["manifest"]


def test_a_capture_counts_a_bad_cosignature_as_a_bad_signature_and_verifies_a_good_one() -> None:
    from agent.protocol.capture import verify_capture

    good = manifest(A, B, version=3)
    bad = with_cosigs(manifest(A, version=4), [cosignature(manifest(version=5), C).to_json()])
    lines = [f"{TOPIC} {good.wire.decode()}", f"{TOPIC} {canonical(bad).decode()}"]
    report = verify_capture(lines)
    assert [(p.line, p.reason) for p in report.problems] == [(2, "bad_cosignature")]
    assert report.signers[str(A.pubkey())].counts["bad_signature"] == 1
    assert report.signers[str(A.pubkey())].counts["valid"] == 1


def test_the_device_config_bounds_the_threshold_by_its_keys(tmp_path: Any) -> None:
    from agent.config import load_config
    from agent.errors import ConfigError

    keys = json.dumps(sorted(TRUSTED))

    def fleet(text: str) -> Any:
        path = tmp_path / "agent.toml"
        path.write_text(f'[fleet]\nchannels = ["stable"]\n{text}\n', encoding="utf-8")
        return load_config(path, env={}).fleet

    assert fleet(f"operator_keys = {keys}").operator_threshold == 1
    assert fleet(f"operator_keys = {keys}\noperator_threshold = 3").operator_threshold == 3
    with pytest.raises(ConfigError) as above:
        fleet(f"operator_keys = {keys}\noperator_threshold = 4")
    assert "operator_threshold 4 is above the 3 operator_keys: no manifest could ever be trusted" in str(
        above.value
    )
    twice = json.dumps([str(A.pubkey()), str(A.pubkey())])
    with pytest.raises(ConfigError) as dup:
        fleet(f"operator_keys = {twice}\noperator_threshold = 2")
    assert "operator_keys lists a key twice" in str(dup.value)
    with pytest.raises(ConfigError):
        fleet(f"operator_keys = {keys}\noperator_threshold = 0")
