"""The agent's TOML config, validated once into typed models.

Unknown keys are refused with the file, the key path, the line and the nearest
valid key.  Environment variables override single keys:
``EDGEPROOF_<SECTION>__<KEY>=value`` (value parsed as a TOML value when it
parses, else taken as a string), e.g. ``EDGEPROOF_MQTT__PORT=8883``.
Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from solders.pubkey import Pubkey

from agent.errors import ConfigError
from agent.transport.settings import MqttSettings, OutboxSettings
from agent.validation import Strict, parse_mapping, read_toml, suggest

ENV_PREFIX = "EDGEPROOF_"
# Source URLs are passed to OpenCV as they are, never resolved as paths (agent/inference/sources.py).
URL_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp")
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_models_dir() -> Path:
    here = REPO_ROOT / "models"
    return here if here.is_dir() else Path("/usr/share/edgeproof/models")


def _base58_pubkey(value: str) -> str:
    """Empty, or a base58 ed25519 public key / Solana address (32 bytes)."""
    if value:
        try:
            Pubkey.from_string(value)
        except ValueError as exc:
            raise ValueError(f"not a base58 Solana address ({exc}): {value!r}") from None
    return value


class DeviceSettings(Strict):
    key: str = "device-key.json"
    state_dir: str = "state"
    profile: str = "auto"  # a firmware profile id, or "auto" to detect
    owner_wallet: str = ""  # base58 Solana address that receives rewards

    _wallet = field_validator("owner_wallet")(_base58_pubkey)


SOURCE_NONE = "none"


class InferenceSettings(Strict):
    model: str = str(default_models_dir() / "efficientnet-lite0-int8.toml")
    # A camera index, URL, file, folder, "synthetic[:WxH[:seed]]", or "none": heartbeats-only
    # mode (no frames, no inference, no proofs; heartbeats, status and challenges still run).
    source: str = "synthetic:640x480"
    loop: bool = True  # loop video files and image folders
    backend: Literal["", "onnx", "litert"] = ""  # empty: follow the model card
    threads: Annotated[int, Field(ge=0, le=64)] = 0  # 0: from the profile
    onnx_providers: list[str] = Field(default_factory=list)  # empty: from the profile
    litert_delegates: list[str] = Field(default_factory=list)
    max_fps: Annotated[float, Field(ge=0)] = 5.0  # 0: as fast as the hardware allows
    # Folder for the TensorRT execution provider's engine and timing caches (Jetson,
    # deploy/jetson/README.md).  Empty: no cache, TensorRT builds its engine at every start.
    tensorrt_cache: str = ""


class ProofSettings(Strict):
    window_s: Annotated[int, Field(ge=5, le=86_400)] = 60
    heartbeat_s: Annotated[int, Field(ge=1, le=3_600)] = 30


class CoordinatorSettings(Strict):
    # base58 public key of the coordinator; beacons, challenges, verdicts and vouchers signed by
    # any other key are refused (untrusted_coordinator).  Empty: no coordinator is trusted, every
    # coordinator message is refused (unpinned_coordinator); the device keeps proving.
    pubkey: str = ""

    _pubkey = field_validator("pubkey")(_base58_pubkey)


class ChallengeSettings(Strict):
    # Token bucket: challenges taken on per minute on average, and at once after a quiet spell.
    # The excess is refused (rate_limited) before it costs an inference.
    rate_per_min: Annotated[float, Field(gt=0, le=6_000)] = 30.0
    burst: Annotated[int, Field(ge=1, le=1_000)] = 10
    # A deadline further ahead than this is refused (deadline_too_far); answered nonces are
    # remembered (durably) until their deadline, so this also bounds that memory.
    deadline_horizon_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    # Challenges answered per main-loop pass: heartbeats, windows and watchdog pings are checked
    # between them.
    per_pass: Annotated[int, Field(ge=1, le=100)] = 1


class BeaconSettings(Strict):
    # A beacon whose time, or whose slot's implied start, is further ahead of the device clock
    # than this is refused (beacon_from_future); see docs/protocol.md, "Beacons at the device".
    tolerance_s: Annotated[float, Field(ge=1, le=3_600)] = 120.0
    # Slots a beacon may be ahead of what the time since the last accepted beacon allows.
    tolerance_slots: Annotated[int, Field(ge=0, le=1_000)] = 3


_IDENT_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _idents(values: list[str]) -> list[str]:
    for value in values:
        if not _IDENT_RE.match(value):
            raise ValueError(f"{value!r} is not a lower-case identifier (a-z, 0-9, '.', '_', '-')")
    return values


def _pubkeys(values: list[str]) -> list[str]:
    for value in values:
        if not value:
            raise ValueError("an empty string is not a public key")
        _base58_pubkey(value)
    return values


class FleetSettings(Strict):
    # Manifest channels this device follows ({topic_prefix}/fleet/manifest/{channel}).
    # Empty: the device does not subscribe to any manifest.
    channels: Annotated[list[str], Field(max_length=8)] = Field(default_factory=list)
    # base58 public keys of the fleet operators whose signed manifests are accepted.
    operator_keys: Annotated[list[str], Field(max_length=8)] = Field(default_factory=list)
    # k of k-of-n: how many distinct operator_keys must have signed a manifest (ADR 0025).
    operator_threshold: Annotated[int, Field(ge=1, le=8)] = 1
    # This device's tags, matched against a manifest's targets.tags.
    tags: Annotated[list[str], Field(max_length=16)] = Field(default_factory=list)
    # A new model runs on trial this long; an inference error meanwhile rolls it back.
    trial_s: Annotated[float, Field(ge=1, le=86_400)] = 60.0
    # Socket timeout of artifact downloads (a stalled download is retried with HTTP Range).
    download_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    # Each artifact download must finish within max(download_deadline_floor_s,
    # length / download_min_rate_bps) seconds, retries included, or it fails (too_slow_download).
    download_min_rate_bps: Annotated[int, Field(ge=1, le=10**10)] = 16_384
    download_deadline_floor_s: Annotated[float, Field(ge=1, le=604_800)] = 120.0

    _channels = field_validator("channels", "tags")(_idents)
    _keys = field_validator("operator_keys")(_pubkeys)

    @model_validator(mode="after")
    def _trusted(self) -> FleetSettings:
        if self.channels and not self.operator_keys:
            raise ValueError("channels are set but operator_keys is empty: no manifest could be trusted")
        if len(set(self.operator_keys)) != len(self.operator_keys):
            raise ValueError("operator_keys lists a key twice")
        if self.operator_keys and self.operator_threshold > len(self.operator_keys):
            raise ValueError(
                f"operator_threshold {self.operator_threshold} is above the {len(self.operator_keys)} "
                "operator_keys: no manifest could ever be trusted"
            )
        return self


class RewardSettings(Strict):
    # Solana JSON-RPC endpoint the agent submits claim transactions to (localnet, devnet or
    # mainnet; the same client code).  Empty: the agent does not claim.
    rpc_url: str = ""
    # The reward token's mint and decimals: a voucher naming another mint or other decimals is
    # refused (wrong_mint, wrong_decimals).  Required when rpc_url is set.
    mint: str = ""
    decimals: Annotated[int, Field(ge=0, le=18)] = 6
    # The memo program the coordinator's vouchers use (SPL Memo v2 by default).
    memo_program: str = "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"
    # The daemon claims on this schedule (0: only when asked with `edgeproof rewards claim`).
    claim_every_s: Annotated[float, Field(ge=0, le=30 * 86_400)] = 86_400.0
    # Below this many base units the scheduled claim waits (an asked-for claim does not).
    min_claim: Annotated[int, Field(ge=1, le=2**64 - 1)] = 1
    # Per RPC request; retries with backoff stay within the voucher's blockhash lifetime.
    rpc_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0

    @field_validator("mint", "memo_program")
    @classmethod
    def _key(cls, value: str) -> str:
        if value:
            _base58_pubkey(value)
        return value

    @model_validator(mode="after")
    def _complete(self) -> RewardSettings:
        if self.rpc_url and not self.mint:
            raise ValueError("rpc_url is set but mint is empty: no voucher could be checked")
        return self


class MetricsSettings(Strict):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65_535)] = 9108


class AgentConfig(Strict):
    device: DeviceSettings = Field(default_factory=DeviceSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    proofs: ProofSettings = Field(default_factory=ProofSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    coordinator: CoordinatorSettings = Field(default_factory=CoordinatorSettings)
    challenges: ChallengeSettings = Field(default_factory=ChallengeSettings)
    beacons: BeaconSettings = Field(default_factory=BeaconSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    rewards: RewardSettings = Field(default_factory=RewardSettings)


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Merge EDGEPROOF_SECTION__KEY variables into ``data``; returns {key path: variable name}."""
    applied: dict[tuple[str, ...], str] = {}
    sections = list(AgentConfig.model_fields)
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        if "__" not in name:
            # EDGEPROOF_MQTT_PORT: a config override with a single underscore would be ignored
            # silently; other EDGEPROOF_* variables (e.g. EDGEPROOF_PROFILES_DIR) are not ours.
            head, _, rest = name[len(ENV_PREFIX) :].partition("_")
            if head.lower() in sections and rest:
                fixed = f"{ENV_PREFIX}{head}__{rest}"
                raise ConfigError(
                    f"environment variable {name}: section and key are separated by a double underscore",
                    hint=f"rename it to {fixed}",
                )
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] not in sections:
            near = suggest(parts[0], sections)
            raise ConfigError(
                f"environment variable {name}: unknown section '{parts[0]}'",
                hint=f"did you mean {ENV_PREFIX}{near.upper()}__...?"
                if near
                else f"sections: {', '.join(sections)}",
            )
        target = data
        for part in parts[:-1]:
            node = target.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name}: '{part}' is not a table")
            target = node
        target[parts[-1]] = _env_value(raw)
        applied[tuple(parts)] = name
    return applied


def _resolve(base: Path, value: str) -> str:
    if (
        not value
        or value == SOURCE_NONE
        or value.startswith(("synthetic", *(f"{scheme}://" for scheme in URL_SCHEMES)))
        or value.isdigit()
    ):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_paths(config: AgentConfig, base: Path) -> AgentConfig:
    device = config.device.model_copy(
        update={
            "key": _resolve(base, config.device.key),
            "state_dir": _resolve(base, config.device.state_dir),
        }
    )
    inference = config.inference.model_copy(
        update={
            "model": _resolve(base, config.inference.model),
            "source": _resolve(base, config.inference.source),
            "tensorrt_cache": _resolve(base, config.inference.tensorrt_cache),
        }
    )
    outbox_path = config.outbox.path
    outbox = config.outbox.model_copy(
        update={"path": _resolve(Path(device.state_dir), outbox_path) if outbox_path else ""}
    )
    return config.model_copy(update={"device": device, "inference": inference, "outbox": outbox})


def load_config(path: Path | str | None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, override from the environment, validate and resolve paths."""
    environ = os.environ if env is None else env
    if path is None:
        data: dict[str, Any] = {}
        text = None
        origin = "(defaults)"
        base = Path.cwd()
    else:
        config_path = Path(path)
        data, text = read_toml(config_path)
        origin = str(config_path)
        base = config_path.resolve().parent
    applied = apply_env(data, environ)
    # A problem with an overridden key is reported against its variable, not the file.
    overrides = {path: f"environment variable {name}" for path, name in applied.items()}
    config = parse_mapping(AgentConfig, data, origin=origin, source=text, overrides=overrides)
    return _resolve_paths(config, base)
