"""Fleet manifests at the device's edge: trust, channel, version, expiry, targeting, disk.

The protocol layer has already checked the envelope (size, signature, schema).  This module
decides what a validly signed manifest means for *this* device, as a pure function: the
caller passes the clock, the highest manifest version accepted so far on the channel and the
free bytes of the state volume.  Refusals raise :class:`ProtocolError` with a named reason
(``untrusted_operator``, ``wrong_channel``, ``stale_version``, ``expired``, ``no_space``), the
daemon counts and logs them like any other rejected inbound message.

Installing an eligible manifest's model (download with resume, smoke test, atomic activation,
trial, rollback) is the model updater's job (agent/device/updater.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from agent.errors import ProtocolError
from agent.protocol.envelope import Envelope
from agent.protocol.messages import Manifest

#: Free space kept on the state volume beyond a manifest's downloads.
HEADROOM_BYTES = 16 * 1024 * 1024


def rollout_bucket(dev: str, channel: str, model_id: str, model_version: str) -> int:
    """The device's place (0..9999) in a release's rollout.

    Stable per (device, channel, model release): advancing a stage (a new manifest version
    with the same model) keeps every device that was already in, and adds more.
    """
    key = "\x00".join((channel, model_id, model_version, dev)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 10_000


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


def targets_device(manifest: Manifest, facts: DeviceFacts) -> bool:
    t = manifest.targets
    return (
        (not t.profiles or facts.profile in t.profiles)
        and (not t.tags or bool(facts.tags.intersection(t.tags)))
        and (not t.devices or facts.dev in t.devices)
    )


def check_manifest(
    env: Envelope,
    *,
    topic_channel: str,
    operators: Collection[str],
    facts: DeviceFacts,
    now_ms: int,
    accepted_version: int,
    free_bytes: int,
) -> ManifestDecision:
    """Decide on one verified manifest envelope; ProtocolError names why it is refused."""
    manifest = env.body
    if not isinstance(manifest, Manifest):
        raise ProtocolError(f"expected a manifest, got {env.kind}", reason="wrong_kind")
    if env.dev not in operators:
        raise ProtocolError(
            f"manifest signed by {env.dev}, which is not one of the {len(operators)} trusted operator keys",
            reason="untrusted_operator",
        )
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
    bucket = rollout_bucket(facts.dev, manifest.channel, manifest.model_id, manifest.model_version)
    targeted = targets_device(manifest, facts)
    if manifest.version == accepted_version:
        return ManifestDecision(manifest, env.dev, duplicate=True, targeted=targeted, bucket=bucket)
    if manifest.expires_ms <= now_ms:
        raise ProtocolError(
            f"manifest version {manifest.version} on {topic_channel!r} expired at {manifest.expires_ms} ms "
            f"(now {now_ms} ms)",
            reason="expired",
        )
    decision = ManifestDecision(manifest, env.dev, duplicate=False, targeted=targeted, bucket=bucket)
    needed = manifest.total_bytes + HEADROOM_BYTES
    if decision.eligible and free_bytes < needed:
        raise ProtocolError(
            f"manifest version {manifest.version} needs {manifest.total_bytes / 1e6:.1f} MB of downloads "
            f"plus {HEADROOM_BYTES / 1e6:.1f} MB headroom; {free_bytes / 1e6:.1f} MB free",
            reason="no_space",
        )
    return decision
