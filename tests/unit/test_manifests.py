"""Fleet manifests: the schema, and the device's decision on a validly signed one."""

from __future__ import annotations

from typing import Any

import pytest
from solders.keypair import Keypair

from agent.device.manifests import (
    HEADROOM_BYTES,
    DeviceFacts,
    Installed,
    check_manifest,
    numeric_version,
    rollout_bucket,
    stored_manifest,
)
from agent.device.model_store import release_key
from agent.errors import ProtocolError
from agent.protocol.envelope import GENESIS_PREV, build_envelope, validate_body, verify_envelope
from agent.protocol.messages import Manifest
from agent.protocol.topics import Topics
from tests.support.manifests import NOW, manifest_body

OPERATOR = Keypair.from_seed(bytes([21]) * 32)
ROGUE = Keypair.from_seed(bytes([22]) * 32)
DEV = str(Keypair.from_seed(bytes([23]) * 32).pubkey())
OTHER_DEV = str(Keypair.from_seed(bytes([24]) * 32).pubkey())
FACTS = DeviceFacts(DEV, "rpi4", frozenset({"lobby"}))
PLENTY = 10**12


def signed(body: dict[str, Any], signer: Keypair = OPERATOR, ts: int = NOW):
    env = build_envelope(signer, "manifest", body, seq=1, prev=GENESIS_PREV, ts=ts)
    return verify_envelope(env.wire)  # what the daemon hands to check_manifest


def accepted(**change: Any) -> Manifest:
    """The manifest accepted earlier (as the daemon reads it back from its stored envelope)."""
    body = signed(manifest_body(**change)).body
    assert isinstance(body, Manifest)
    return body


#: The release key of manifest_body()'s model.
RELEASE = release_key("efficientnet-lite0-int8", "1.1.0", "ab" * 32)


def decide(body: dict[str, Any], signer: Keypair = OPERATOR, **kw: Any):
    args: dict[str, Any] = {
        "topic_channel": "stable",
        "operators": [str(OPERATOR.pubkey())],
        "facts": FACTS,
        "now_ms": NOW,
        "accepted_version": 0,
        "accepted_manifest": None,
        "committed_release": None,
        "free_bytes": PLENTY,
        **kw,
    }
    return check_manifest(signed(body, signer), **args)


def refusal(body: dict[str, Any], signer: Keypair = OPERATOR, **kw: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decide(body, signer, **kw)
    return info.value


# ---------------------------------------------------------------------------------------- schema


def test_a_manifest_round_trips_and_derives_model_hash_rollout_and_size() -> None:
    env = signed(manifest_body())
    assert env.origin == "operator"
    m = env.body
    assert isinstance(m, Manifest)
    assert (m.model_sha256, m.rollout_bp, m.total_bytes) == ("ab" * 32, 10_000, 5_002_000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"card": "labels.txt"},
            "manifest: body: Value error, card 'labels.txt' is not one of the artifacts",
        ),
        ({"card": "model.onnx"}, "manifest: body: Value error, model and card must be different artifacts"),
        (
            {"stages": [500, 500, 10_000]},
            "manifest: body: Value error, stages must increase (got [500, 500, 10000])",
        ),
        (
            {"stages": [500, 2500]},
            "manifest: body: Value error, the last stage must be 10000 (every targeted device)",
        ),
        ({"stage": 3}, "manifest: body: Value error, stage 3 is not an index into 3 stages"),
        ({"version": 0}, "manifest: body.version: Input should be greater than or equal to 1"),
        ({"sha256": "x"}, "manifest: body.sha256: unknown key"),
    ],
)
def test_schema_refusals_name_the_problem(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_body("manifest", manifest_body(**change))
    assert info.value.reason == "schema"
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("artifact_change", "field"),
    [
        ({"name": "../etc/passwd"}, "name"),
        ({"name": ".hidden"}, "name"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "https://example/caf\u00e9"}, "url"),  # non-ASCII must be percent-encoded
        ({"length": 0}, "length"),
        ({"length": 2**32 + 1}, "length"),
    ],
)
def test_artifact_fields_are_refused_when_unsafe(artifact_change: dict[str, Any], field: str) -> None:
    body = manifest_body()
    body["artifacts"][0] = {**body["artifacts"][0], **artifact_change}
    with pytest.raises(ProtocolError) as info:
        validate_body("manifest", body)
    assert f"body.artifacts.0.{field}:" in str(info.value)


def test_duplicate_artifact_names_are_refused() -> None:
    body = manifest_body()
    body["artifacts"].append(dict(body["artifacts"][0]))
    with pytest.raises(ProtocolError, match="artifact names must be unique"):
        validate_body("manifest", body)


def test_manifest_topic_carries_the_manifest_kind() -> None:
    topics = Topics()
    info = topics.parse(topics.manifest("stable"))
    assert (info.scope, info.channel, info.kind, info.retain) == ("manifest", "stable", "manifest", True)


# ---------------------------------------------------------------------------------------- decision


def test_rollout_bucket_is_a_fixed_function_of_device_and_release() -> None:
    # A fixed vector, so an operator's rollout controller in any language computes the same set.
    # sha256(b"stable\0m\01\011111111111111111111111111111111")[:8] as a big-endian integer mod 10000
    assert rollout_bucket("11111111111111111111111111111111", "stable", "m", "1") == 8193
    buckets = [
        rollout_bucket(str(Keypair.from_seed(bytes([i]) * 32).pubkey()), "c", "m", "1") for i in range(200)
    ]
    assert all(0 <= b < 10_000 for b in buckets)
    assert 40 <= sum(b < 5000 for b in buckets) <= 160  # spread over the range, not clumped


def test_accepted_targeted_manifest_in_the_last_stage_is_eligible() -> None:
    decision = decide(manifest_body())
    assert not decision.duplicate and decision.targeted and decision.in_rollout and decision.eligible
    summary = decision.summary(NOW)
    assert summary["model_sha256"] == "ab" * 32 and summary["operator"] == str(OPERATOR.pubkey())


def test_rollout_stage_decides_participation_by_bucket() -> None:
    bucket = rollout_bucket(DEV, "stable", "efficientnet-lite0-int8", "1.1.0")
    below = decide(manifest_body(stages=[bucket + 1, 10_000], stage=0))
    assert below.in_rollout and below.eligible
    if bucket > 0:
        above = decide(manifest_body(stages=[bucket, 10_000], stage=0))
        assert above.targeted and not above.in_rollout and not above.eligible


@pytest.mark.parametrize(
    ("targets", "targeted"),
    [
        ({}, True),
        ({"profiles": ["jetson-orin"], "tags": ["garage"]}, False),  # other devices: accepted, silent
        ({"tags": ["lobby", "garage"]}, True),
        ({"tags": ["garage"]}, False),
        ({"devices": [DEV]}, True),
        ({"devices": [OTHER_DEV]}, False),
        ({"profiles": ["rpi4"], "tags": ["lobby"], "devices": [OTHER_DEV]}, False),  # all lists must match
    ],
)
def test_targets(targets: dict[str, Any], targeted: bool) -> None:
    assert decide(manifest_body(targets=targets)).targeted is targeted


def test_untrusted_operator_is_refused() -> None:
    exc = refusal(manifest_body(), ROGUE)
    assert exc.reason == "untrusted_operator"
    assert str(exc) == f"manifest signed by {ROGUE.pubkey()}, which is not one of the 1 trusted operator keys"


def test_manifest_on_another_channel_is_refused() -> None:
    exc = refusal(manifest_body(channel="beta"))
    assert exc.reason == "wrong_channel"
    assert str(exc) == "manifest for channel 'beta' arrived on channel 'stable'"


def test_older_version_is_refused_and_the_same_content_again_is_a_quiet_duplicate() -> None:
    exc = refusal(manifest_body(version=2), accepted_version=3, accepted_manifest=accepted())
    assert exc.reason == "stale_version"
    assert str(exc) == "manifest version 2 on 'stable' is older than the accepted version 3"
    # The broker re-delivers the retained manifest on every reconnect; re-signed content is the same.
    again = check_manifest(
        signed(manifest_body(), ts=NOW + 60_000),
        topic_channel="stable",
        operators=[str(OPERATOR.pubkey())],
        facts=FACTS,
        now_ms=NOW,
        accepted_version=3,
        accepted_manifest=accepted(),
        committed_release=None,
        free_bytes=PLENTY,
    )
    assert again.duplicate and again.eligible


def test_the_accepted_version_with_other_content_is_refused_by_name() -> None:
    other = manifest_body(model_version="1.6.0")
    exc = refusal(other, accepted_version=3, accepted_manifest=accepted())
    assert exc.reason == "version_reused"
    assert str(exc) == (
        "manifest version 3 on 'stable' was already accepted with other content (model efficientnet-lite0-int8 "
        "1.1.0 sha256 abababababab); this one names model efficientnet-lite0-int8 1.6.0 sha256 abababababab\n"
        "  fix: an operator publishes every change under a new, higher version"
    )
    # Any change counts, also one that names the same model (here: a later expiry).
    later = refusal(manifest_body(expires_ms=NOW + 10**9), accepted_version=3, accepted_manifest=accepted())
    assert later.reason == "version_reused"
    # Expired or not: a reused version is named as such, before its expiry is looked at.
    expired = refusal(
        manifest_body(model_version="1.6.0", expires_ms=NOW - 1),
        accepted_version=3,
        accepted_manifest=accepted(),
    )
    assert expired.reason == "version_reused"


def test_the_accepted_version_is_refused_when_its_content_is_unknown() -> None:
    exc = refusal(manifest_body(), accepted_version=3, accepted_manifest=None)
    assert exc.reason == "version_reused"
    assert "already accepted with other content (model unknown (not stored))" in str(exc)


def test_an_expired_duplicate_is_refused_unless_its_release_runs_committed() -> None:
    expired_body = manifest_body(expires_ms=NOW - 1)
    stored = accepted(expires_ms=NOW - 1)
    exc = refusal(expired_body, accepted_version=3, accepted_manifest=stored)
    assert exc.reason == "expired"
    assert str(exc) == f"manifest version 3 on 'stable' expired at {NOW - 1} ms (now {NOW} ms)"
    # Another release runs committed: still expired.
    other = release_key("efficientnet-lite0-int8", "1.0.0", "ab" * 32)
    assert refusal(
        expired_body, accepted_version=3, accepted_manifest=stored, committed_release=other
    ).reason == ("expired")
    # Its own release runs committed: it stays the accepted manifest (nothing is uninstalled).
    kept = decide(expired_body, accepted_version=3, accepted_manifest=stored, committed_release=RELEASE)
    assert kept.duplicate and kept.summary(NOW)["expires_ms"] == NOW - 1


def test_a_new_expired_version_is_refused_even_for_the_committed_release() -> None:
    exc = refusal(
        manifest_body(version=4, expires_ms=NOW),
        accepted_version=3,
        accepted_manifest=accepted(),
        committed_release=RELEASE,
    )
    assert exc.reason == "expired"


def test_stored_manifest_reads_back_the_envelope_or_nothing() -> None:
    env = build_envelope(OPERATOR, "manifest", manifest_body(), seq=1, prev=GENESIS_PREV, ts=NOW)
    assert stored_manifest(env.wire.decode()) == accepted()
    assert stored_manifest(None) is None
    assert stored_manifest("{not json") is None
    assert stored_manifest(env.wire.decode().replace('"version":3', '"version":4')) is None  # signature


def test_expired_manifest_is_refused() -> None:
    exc = refusal(manifest_body(expires_ms=NOW))
    assert exc.reason == "expired"
    assert str(exc) == f"manifest version 3 on 'stable' expired at {NOW} ms (now {NOW} ms)"


def test_no_space_only_matters_when_the_device_would_install() -> None:
    needed = 5_002_000 + HEADROOM_BYTES
    exc = refusal(manifest_body(), free_bytes=needed - 1)
    assert exc.reason == "no_space"
    assert str(exc) == "manifest version 3 needs 5.0 MB of downloads plus 16.8 MB headroom; 21.8 MB free"
    assert decide(manifest_body(), free_bytes=needed).eligible
    not_for_us = decide(manifest_body(targets={"devices": [OTHER_DEV]}), free_bytes=0)
    assert not not_for_us.targeted


# ----------------------------------------------------------------- wrong profile, downgrades


@pytest.mark.parametrize(
    "targets",
    [
        {"profiles": ["jetson-orin"]},
        {"profiles": ["jetson-orin", "rpi5"], "tags": ["lobby"], "devices": [DEV]},
    ],
)
def test_a_manifest_naming_this_device_but_another_profile_is_refused_wrong_profile(
    targets: dict[str, Any],
) -> None:
    exc = refusal(manifest_body(targets=targets))
    assert exc.reason == "wrong_profile"
    profiles = ", ".join(targets["profiles"])
    assert exc.message == f"manifest version 3 on 'stable' targets profiles {profiles}; this device is 'rpi4'"


RUNS_120 = Installed("efficientnet-lite0-int8", "1.2.0", "11" * 32, previous_sha256="ab" * 32)


def test_numeric_versions_compare_part_by_part_and_others_do_not_parse() -> None:
    assert numeric_version("1.10.0") == (1, 10, 0) and numeric_version("2") == (2,)
    assert [numeric_version(v) for v in ("1.0.0-rc1", "1..0", "v1", "1.0+x", "\u0661.\u0662")] == [None] * 5


def test_the_release_kept_as_previous_is_a_downgrade_whatever_its_version() -> None:
    exc = refusal(manifest_body(model_version="9.0.0"), installed=RUNS_120)
    assert exc.reason == "downgrade"
    assert exc.message == (
        "manifest version 3 names model efficientnet-lite0-int8 9.0.0, the release this device kept as "
        "previous; the device runs efficientnet-lite0-int8 1.2.0"
    )


def test_a_lower_model_version_is_a_downgrade_unless_the_manifest_says_rollback() -> None:
    runs = Installed("efficientnet-lite0-int8", "1.2.0", "11" * 32)
    exc = refusal(manifest_body(model_version="1.1.9"), installed=runs)
    assert exc.reason == "downgrade"
    assert exc.message == (
        "manifest version 3 names model efficientnet-lite0-int8 1.1.9, older than the model it runs; "
        "the device runs efficientnet-lite0-int8 1.2.0"
    )
    assert decide(manifest_body(model_version="1.1.9", rollback=True), installed=runs).eligible
    assert decide(manifest_body(rollback=True), installed=RUNS_120).eligible


@pytest.mark.parametrize(
    ("change", "installed"),
    [
        ({"model_version": "1.10.0"}, Installed("efficientnet-lite0-int8", "1.9.0", "11" * 32)),  # newer
        ({"model_version": "1.0.0"}, Installed("other-model", "2.0.0", "11" * 32)),  # another model
        ({"model_version": "1.0.0-rc1"}, Installed("efficientnet-lite0-int8", "1.2.0", "11" * 32)),
        ({"model_version": "1.0.0"}, Installed("efficientnet-lite0-int8", "2.0.0", "ab" * 32)),  # runs it
        ({"model_version": "1.0.0"}, None),  # the configured model
    ],
)
def test_no_downgrade_when_newer_unrelated_unparsable_the_same_or_nothing_installed(
    change: dict[str, Any], installed: Installed | None
) -> None:
    assert decide(manifest_body(**change), installed=installed).eligible


def test_a_downgrade_is_only_judged_when_the_device_would_install() -> None:
    bucket = rollout_bucket(DEV, "stable", "efficientnet-lite0-int8", "1.1.0")
    if bucket > 0:  # outside the current stage: accepted, judged again when a later stage includes it
        assert not decide(manifest_body(stages=[bucket, 10_000], stage=0), installed=RUNS_120).eligible
    halted = decide(manifest_body(halted=True), installed=RUNS_120)
    assert halted.eligible and halted.manifest.halted


@pytest.mark.parametrize("flag", ["halted", "rollback"])
def test_false_flags_are_refused_so_older_hashes_stay(flag: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_body("manifest", manifest_body(**{flag: False}))
    assert info.value.reason == "schema"
    assert flag not in signed(manifest_body()).raw["body"]
