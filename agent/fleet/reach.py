"""Which devices each rollout stage of a manifest reaches (``fleet publish --dry-run``).

The same bucket and target functions a device applies (agent.protocol.rollout).  The device
list is a JSON file: ``[{"dev": "<base58>", "profile": "rpi5", "tags": ["lobby"]}, ...]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.protocol.messages import Manifest
from agent.protocol.rollout import matches_targets, rollout_bucket


@dataclass(frozen=True)
class Device:
    dev: str
    profile: str
    tags: tuple[str, ...] = ()


def load_devices(path: Path) -> list[Device]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--devices {path}: cannot read a JSON list of devices: {exc}") from exc
    if not isinstance(data, list):
        raise ConfigError(f"--devices {path}: expected a JSON list of {{dev, profile, tags}} objects")
    devices = []
    for number, item in enumerate(data):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("dev"), str)
            and isinstance(item.get("profile"), str)
        ):
            raise ConfigError(f"--devices {path}: entry {number} needs string keys dev and profile")
        tags = item.get("tags", [])
        if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
            raise ConfigError(f"--devices {path}: entry {number}: tags must be a list of strings")
        devices.append(Device(item["dev"], item["profile"], tuple(tags)))
    return devices


def stage_reach(manifest: Manifest, devices: list[Device]) -> list[dict[str, Any]]:
    """Per stage: its basis points and the targeted devices inside it (cumulative), sorted."""
    targeted = [
        (rollout_bucket(d.dev, manifest.channel, manifest.model_id, manifest.model_version), d.dev)
        for d in devices
        if matches_targets(manifest.targets, dev=d.dev, profile=d.profile, tags=d.tags)
    ]
    return [
        {
            "stage": index,
            "bp": bp,
            "current": index == manifest.stage,
            "devices": sorted(dev for bucket, dev in targeted if bucket < bp),
            "targeted": len(targeted),
        }
        for index, bp in enumerate(manifest.stages)
    ]
