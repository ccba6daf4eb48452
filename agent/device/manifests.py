"""Fleet manifests at the device's edge: trust, channel, version, expiry, targeting, disk.

The protocol layer has already checked the envelope (size, signature, schema).  This module
decides what a validly signed manifest means for *this* device, as a pure function: the
caller passes the clock, the highest manifest version accepted so far on the channel and that
manifest, the release the device runs committed, and the free bytes of the state volume.
Refusals raise :class:`ProtocolError` with a named reason (``untrusted_operator``,
``untrusted_signer``, ``below_threshold``, ``wrong_channel``, ``stale_version``,
``version_reused``, ``replay``, ``expired``, ``no_space``), the daemon counts and logs them like
any other rejected inbound message.

Trust is k-of-n (ADR 0025): the envelope's signer and every co-signer must be trusted operator
keys, and at least ``threshold`` distinct ones.  The operator chain is followed per operator key
and channel (defect 5 of issue 9): a new manifest whose ``seq`` is at or below the highest seq
accepted from its signer on that channel is a ``replay`` (a lost operator state file restarting
at seq 1, or an old envelope).  Per channel, because retained manifests of different channels
arrive in subscription order, not signing order; the floor is kept in the device state store.

The accepted version again is a *duplicate* (the broker re-delivers the retained manifest on
every reconnect; the daemon re-judges its stored one at start) only when its content is the
accepted manifest's; other content under a used version is ``version_reused``.  Expired is
expired, for a duplicate too, so a stored manifest never resumes a download after it expired;
the one exception is the duplicate of the release the device already runs committed, which
stays accepted (nothing would be installed, and it keeps being reported in ``status``).

Installing an eligible manifest's model (download with resume, smoke test, atomic activation,
trial, rollback) is the model updater's job (agent/device/updater.py).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from agent.device.model_store import release_key
from agent.errors import ProtocolError
from agent.protocol.cosign import check_signers
from agent.protocol.envelope import Envelope, verify_envelope
from agent.protocol.messages import Manifest
from agent.protocol.rollout import matches_targets
from agent.protocol.rollout import rollout_bucket as rollout_bucket  # re-exported (it lives in protocol)

#: Free space kept on the state volume beyond a manifest's downloads.
HEADROOM_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class DeviceFacts:
    """What targeting looks at: the device id, its firmware profile and its configured tags."""

    dev: str
    profile: str
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ManifestDecision:
    manifest: Manifest
    operator: str
    #: Already accepted (the broker re-delivers the retained manifest on every reconnect).
    duplicate: bool
    #: The manifest's targets name this device (profile, tag and device lists all match).
    targeted: bool
    bucket: int

    @property
    def in_rollout(self) -> bool:
        return self.bucket < self.manifest.rollout_bp

    @property
    def eligible(self) -> bool:
        """Targeted and inside the current rollout stage: the updater would install it."""
        return self.targeted and self.in_rollout

    def summary(self, received_ms: int) -> dict[str, object]:
        m = self.manifest
        return {
            "version": m.version,
            "operator": self.operator,
            "model_id": m.model_id,
            "model_version": m.model_version,
            "model_sha256": m.model_sha256,
            "expires_ms": m.expires_ms,
            "rollout_bp": m.rollout_bp,
            "bucket": self.bucket,
            "targeted": self.targeted,
            "eligible": self.eligible,
            "received_ms": received_ms,
        }


def manifest_seq_key(operator: str, channel: str) -> str:
    """The state store's signer-seq key of ``operator``'s manifests on ``channel``."""
    return f"{operator}/manifest/{channel}"


def targets_device(manifest: Manifest, facts: DeviceFacts) -> bool:
    return matches_targets(manifest.targets, dev=facts.dev, profile=facts.profile, tags=facts.tags)


def expiry_problem(manifest: Manifest, now_ms: int) -> str | None:
    """Why ``manifest`` is expired at ``now_ms``, or None while it is valid."""
    if manifest.expires_ms > now_ms:
        return None
    return (
        f"manifest version {manifest.version} on {manifest.channel!r} expired at {manifest.expires_ms} ms "
        f"(now {now_ms} ms)"
    )


def stored_manifest(wire: object) -> Manifest | None:
    """The manifest inside a stored envelope (as the daemon keeps it), None if there is none."""
    if not isinstance(wire, str):
        return None
    try:
        body = verify_envelope(wire.encode()).body
    except ProtocolError:
        return None
    return body if isinstance(body, Manifest) else None


def check_manifest(
    env: Envelope,
    *,
    topic_channel: str,
    operators: Collection[str],
    facts: DeviceFacts,
    now_ms: int,
    accepted_version: int,
    accepted_manifest: Manifest | None,
    committed_release: str | None,
    free_bytes: int,
    threshold: int = 1,
    operator_seq: int = 0,
) -> ManifestDecision:
    """Decide on one verified manifest envelope; ProtocolError names why it is refused.

    ``accepted_manifest`` is the manifest accepted at ``accepted_version`` (None if unknown: a
    manifest at that version is then refused, its content cannot be confirmed);
    ``committed_release`` the key of the release the device runs committed, if any;
    ``threshold`` the k of k-of-n; ``operator_seq`` the highest seq accepted from ``env.dev`` on
    this channel (:func:`manifest_seq_key`, 0 if none).
    """
    manifest = env.body
    if not isinstance(manifest, Manifest):
        raise ProtocolError(f"expected a manifest, got {env.kind}", reason="wrong_kind")
    check_signers("manifest", env.signers, operators, threshold)
    if manifest.channel != topic_channel:
        raise ProtocolError(
            f"manifest for channel {manifest.channel!r} arrived on channel {topic_channel!r}",
            reason="wrong_channel",
        )
    if manifest.version < accepted_version:
        raise ProtocolError(
            f"manifest version {manifest.version} on {topic_channel!r} is older than the accepted "
            f"version {accepted_version}",
            reason="stale_version",
        )
    duplicate = manifest.version == accepted_version
    if duplicate and manifest != accepted_manifest:
        raise ProtocolError(
            f"manifest version {manifest.version} on {topic_channel!r} was already accepted with other "
            f"content (model {_names(accepted_manifest)}); this one names model {_names(manifest)}",
            reason="version_reused",
            hint="an operator publishes every change under a new, higher version",
        )
    bucket = rollout_bucket(facts.dev, manifest.channel, manifest.model_id, manifest.model_version)
    targeted = targets_device(manifest, facts)
    expired = expiry_problem(manifest, now_ms)
    runs_committed = committed_release == release_key(
        manifest.model_id, manifest.model_version, manifest.model_sha256
    )
    if expired is not None and not (duplicate and runs_committed):
        raise ProtocolError(expired, reason="expired")
    if not duplicate and env.seq <= operator_seq:
        raise ProtocolError(
            f"manifest version {manifest.version} on {topic_channel!r} is seq {env.seq} of operator "
            f"{env.dev}, at or below the seq {operator_seq} already accepted from it on this channel",
            reason="replay",
            hint="the operator's chain restarted or went back: restore its --state file from the backup",
        )
    if duplicate:
        return ManifestDecision(manifest, env.dev, duplicate=True, targeted=targeted, bucket=bucket)
    decision = ManifestDecision(manifest, env.dev, duplicate=False, targeted=targeted, bucket=bucket)
    needed = manifest.total_bytes + HEADROOM_BYTES
    if decision.eligible and not manifest.halted and free_bytes < needed:
        raise ProtocolError(
            f"manifest version {manifest.version} needs {manifest.total_bytes / 1e6:.1f} MB of downloads "
            f"plus {HEADROOM_BYTES / 1e6:.1f} MB headroom; {free_bytes / 1e6:.1f} MB free",
            reason="no_space",
        )
    return decision


def _names(manifest: Manifest | None) -> str:
    if manifest is None:
        return "unknown (not stored)"
    return f"{manifest.model_id} {manifest.model_version} sha256 {manifest.model_sha256[:12]}"
