"""``fleet publish``: build, sign (the operator chain's next link) and publish one manifest.

With ``--out FILE`` the signed envelope goes to a signing file instead of the broker (k-of-n:
other operators add their signatures with ``fleet sign``, :mod:`agent.fleet.signing`), and
``--from FILE`` publishes such a file once it carries its threshold of signatures.

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
from agent.fleet.signing import (
    SigningFile,
    check_not_expired,
    check_threshold,
    load_signing_file,
    new_signing_file,
    write_signing_file,
)
from agent.fleet.state import OperatorState, load_state, save_state
from agent.protocol.cosign import check_signers
from agent.protocol.envelope import Envelope, build_envelope, verify_envelope
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
    #: Write the signed manifest to this signing file instead of publishing it (k-of-n).
    out: Path | None = None
    #: k: distinct operator signatures the signing file needs before ``--from`` publishes it.
    threshold: int = 1


@dataclass(frozen=True)
class PublishFromRequest:
    signing_file: Path
    key: Path
    state: Path
    config: str | None


def publish_manifest(request: PublishRequest, *, now_ms: int) -> dict[str, Any]:
    """Do what the request says; return the report ``fleet publish`` prints."""
    if not 0.0 < request.abort_failure_rate <= 1.0:
        raise ConfigError(f"--abort-failure-rate {request.abort_failure_rate} must be in (0, 1]")
    if request.devices is not None and not request.dry_run:
        raise ConfigError("--devices goes with --dry-run")
    if request.threshold != 1 and request.out is None:
        raise ConfigError(
            f"--threshold {request.threshold} goes with --out: a manifest that needs {request.threshold} "
            "signatures is written to a signing file, co-signed with `fleet sign`, then published with --from"
        )
    if request.out is not None and request.dry_run:
        raise ConfigError("--out and --dry-run exclude each other (--dry-run writes nothing)")
    if request.out is not None:
        check_threshold(request.threshold)
        if request.out.exists() or request.out.is_symlink():
            raise FleetError(
                f"{request.out} already exists; refusing to overwrite it",
                reason="signing_file",
                hint="choose another --out",
            )
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
    if request.out is not None:
        env = build_envelope(
            keypair, "manifest", manifest, seq=state.seq + 1, prev=state.head, ts=now_ms, dev=operator
        )
        signing = new_signing_file(env, request.threshold)
        save_state(request.state, state.after(env, request.channel, version, request.abort_failure_rate))
        write_signing_file(request.out, signing, replace=False)
        log.info(
            "manifest_written_for_signing",
            extra={"channel": request.channel, "version": version, "seq": env.seq, "envelope": env.hash},
        )
        return {**report, "out": str(request.out), "envelope": env.hash, **_signers(signing)}
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


def publish_from_file(request: PublishFromRequest, *, now_ms: int) -> dict[str, Any]:
    """Publish a co-signed signing file: it must carry its threshold and be this operator's record."""
    signing = load_signing_file(request.signing_file)
    check_not_expired(signing, request.signing_file, now_ms)
    env, manifest = signing.envelope, signing.manifest
    keypair = load_operator_key(request.key)
    operator = str(keypair.pubkey())
    if env.dev != operator:
        raise FleetError(
            f"{request.signing_file} was signed on the chain of operator {env.dev}, not {operator}",
            reason="operator_state",
            hint="the operator who wrote it with --out publishes it, with its own --key and --state",
        )
    state = load_state(request.state, operator)
    check_recorded(state, env, manifest)
    if not signing.ready:
        raise FleetError(
            f"{request.signing_file} carries {len(env.signers)} of the {signing.threshold} signatures it needs",
            reason="below_threshold",
            hint=f"collect more with: edgeproof fleet sign {request.signing_file} --key KEY",
        )
    config = load_config(request.config)
    if config.fleet.operator_keys:  # the config names the devices' trust: check it here too
        threshold = max(signing.threshold, config.fleet.operator_threshold)
        try:
            check_signers("manifest", env.signers, frozenset(config.fleet.operator_keys), threshold)
        except ProtocolError as exc:
            raise FleetError(
                f"{request.signing_file}: {exc.message}", reason=exc.reason, hint=exc.hint
            ) from exc
    topic = Topics(config.mqtt.topic_prefix).manifest(manifest.channel)
    report: dict[str, Any] = {
        "dry_run": False,
        "operator": operator,
        "seq": env.seq,
        "topic": topic,
        "manifest": body_to_dict(manifest),
        "from": str(request.signing_file),
        **_signers(signing),
    }
    with BrokerSession(config.mqtt) as broker:
        current = retained_version(broker.retained(topic))
        if current is not None:
            check_above_retained(manifest.channel, manifest.version, current)
            report["retained_before"] = {"version": current[0], "operator": current[1]}
        broker.publish_retained(topic, env.wire)
    log.info(
        "manifest_published",
        extra={
            "channel": manifest.channel,
            "version": manifest.version,
            "seq": env.seq,
            "envelope": env.hash,
        },
    )
    report["envelope"] = env.hash
    report["bytes"] = len(env.wire)
    return report


def check_recorded(state: OperatorState, env: Envelope, manifest: Manifest) -> None:
    """The file's envelope must be the one the operator's record holds for its channel and version."""
    record = state.channels.get(manifest.channel)
    highest = record.version if record is not None else 0
    if manifest.version < highest:
        raise FleetError(
            f"the signing file holds version {manifest.version} on channel {manifest.channel!r}; this operator "
            f"has signed version {highest} since",
            reason="stale_version",
            hint="devices would refuse it; write a new one with fleet publish --out",
        )
    if record is None or manifest.version > highest or record.envelope != env.hash:
        raise FleetError(
            f"the signing file's envelope {env.hash[:16]} (version {manifest.version} on {manifest.channel!r}) "
            "is not the one this operator's state file recorded",
            reason="version_reused" if manifest.version == highest else "operator_state",
            hint="publish the signing file fleet publish --out wrote with this --state",
        )


def _signers(signing: SigningFile) -> dict[str, Any]:
    return {"signers": list(signing.envelope.signers), "threshold": signing.threshold, "ready": signing.ready}


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
