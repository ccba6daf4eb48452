"""``fleet publish``: build, sign (the operator chain's next link) and publish one manifest.

Order matters: the operator's state is checked (the version only goes up), the manifest built,
the channel's retained manifest read (the version must also be above it: the retained slot is
what a new device installs), the manifest signed, the state written, and only then is the
envelope published retained; a failed publish leaves a gap in the operator's seq, never two
envelopes under one seq or version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.errors import ConfigError, FleetError, ProtocolError
from agent.fleet.keys import load_operator_key
from agent.fleet.mqtt_publish import BrokerSession
from agent.fleet.reach import load_devices, stage_reach
from agent.fleet.release import build_manifest, parse_duration_ms, parse_stages, parse_targets
from agent.fleet.state import load_state, save_state
from agent.protocol.envelope import build_envelope, verify_envelope
from agent.protocol.messages import Manifest, body_to_dict
from agent.protocol.topics import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishRequest:
    card: Path
    model: Path
    base_url: str
    channel: str
    targets: str
    stages: str
    stage: int
    abort_failure_rate: float
    expires: str
    version: int | None
    key: Path
    state: Path
    config: str | None
    devices: Path | None
    dry_run: bool


def publish_manifest(request: PublishRequest, *, now_ms: int) -> dict[str, Any]:
    """Do what the request says; return the report ``fleet publish`` prints."""
    if not 0.0 < request.abort_failure_rate <= 1.0:
        raise ConfigError(f"--abort-failure-rate {request.abort_failure_rate} must be in (0, 1]")
    if request.devices is not None and not request.dry_run:
        raise ConfigError("--devices goes with --dry-run")
    keypair = load_operator_key(request.key)
    operator = str(keypair.pubkey())
    state = load_state(request.state, operator)
    version = state.next_version(request.channel, request.version)
    manifest = build_manifest(
        card_path=request.card,
        model_path=request.model,
        base_url=request.base_url,
        channel=request.channel,
        version=version,
        targets=parse_targets(request.targets),
        stages=parse_stages(request.stages),
        stage=request.stage,
        expires_ms=now_ms + parse_duration_ms(request.expires),
    )
    mqtt = load_config(request.config).mqtt
    topic = Topics(mqtt.topic_prefix).manifest(request.channel)
    report: dict[str, Any] = {
        "dry_run": request.dry_run,
        "operator": operator,
        "seq": state.seq + 1,
        "topic": topic,
        "abort_failure_rate": request.abort_failure_rate,
        "manifest": body_to_dict(manifest),
    }
    if request.dry_run:
        if request.devices is not None:
            report["reach"] = stage_reach(manifest, load_devices(request.devices))
        return report
    with BrokerSession(mqtt) as broker:
        current = retained_version(broker.retained(topic))
        if current is not None:
            check_above_retained(request.channel, version, current)
            report["retained_before"] = {"version": current[0], "operator": current[1]}
        env = build_envelope(
            keypair, "manifest", manifest, seq=state.seq + 1, prev=state.head, ts=now_ms, dev=operator
        )
        save_state(request.state, state.after(env, request.channel, version, request.abort_failure_rate))
        broker.publish_retained(topic, env.wire)
    log.info(
        "manifest_published",
        extra={"channel": request.channel, "version": version, "seq": env.seq, "envelope": env.hash},
    )
    report["envelope"] = env.hash
    report["bytes"] = len(env.wire)
    return report


def retained_version(payload: bytes | None) -> tuple[int, str] | None:
    """(version, operator) of a retained manifest envelope; None for none or one that does not verify."""
    if not payload:
        return None
    try:
        env = verify_envelope(payload)
    except ProtocolError:
        return None  # garbage in the slot: every device refuses it, a valid manifest replaces it
    return (env.body.version, env.dev) if isinstance(env.body, Manifest) else None


def check_above_retained(channel: str, version: int, current: tuple[int, str]) -> None:
    """Refuse to publish at or below the channel's retained manifest (it is what new devices get)."""
    held, by = current
    if version > held:
        return
    raise FleetError(
        f"the retained manifest on channel {channel!r} is version {held} (operator {by}); "
        f"version {version} would replace what new devices install with an older or reused version",
        reason="version_reused" if version == held else "stale_version",
        hint=f"publish with --version {held + 1} or higher",
    )
