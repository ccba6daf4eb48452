"""The rollout bucket and target matching: the same pure functions for devices and operators.

A device takes part in a manifest's current stage when the manifest's targets name it and its
bucket is below ``stages[stage]`` (basis points).  The operator's ``fleet publish --dry-run``
computes the same two facts for enrolled devices, so both sides must share this one module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

from agent.protocol.messages import Targets


def rollout_bucket(dev: str, channel: str, model_id: str, model_version: str) -> int:
    """The device's place (0..9999) in a release's rollout.

    Stable per (device, channel, model release): advancing a stage (a new manifest version
    with the same model) keeps every device that was already in, and adds more.
    """
    key = "\x00".join((channel, model_id, model_version, dev)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 10_000


def matches_targets(targets: Targets, *, dev: str, profile: str, tags: Collection[str]) -> bool:
    """The targets name this device: profile, tag and device lists all match (empty = any)."""
    return (
        (not targets.profiles or profile in targets.profiles)
        and (not targets.tags or bool(set(tags).intersection(targets.tags)))
        and (not targets.devices or dev in targets.devices)
    )
