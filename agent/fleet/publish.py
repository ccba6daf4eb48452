"""``fleet publish``: build, sign (the operator chain's next link) and publish one manifest.

Order matters: the operator's state is checked (the version only goes up), the manifest built
and signed, the state written, and only then is the envelope published retained; a failed
publish leaves a gap in the operator's seq, never two envelopes under one seq or version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.errors import ConfigError
from agent.fleet.keys import load_operator_key
from agent.fleet.mqtt_publish import publish_retained
from agent.fleet.reach import load_devices, stage_reach
from agent.fleet.release import build_manifest, parse_duration_ms, parse_stages, parse_targets
from agent.fleet.state import load_state, save_state
from agent.protocol.envelope import build_envelope
from agent.protocol.messages import body_to_dict
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
    env = build_envelope(
        keypair, "manifest", manifest, seq=state.seq + 1, prev=state.head, ts=now_ms, dev=operator
    )
    save_state(request.state, state.after(env, request.channel, version, request.abort_failure_rate))
    publish_retained(mqtt, topic, env.wire)
    log.info(
        "manifest_published",
        extra={"channel": request.channel, "version": version, "seq": env.seq, "envelope": env.hash},
    )
    report["envelope"] = env.hash
    report["bytes"] = len(env.wire)
    return report
