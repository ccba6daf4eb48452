"""The coordinator's TOML config, validated like the agent's.

Strict models (unknown keys refused with the file, key path, line and the nearest valid
key: :mod:`agent.validation`); relative paths resolved against the config file's folder.
See docs/coordinator.md for every key.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from agent.transport.settings import MqttSettings
from agent.validation import Strict, parse_mapping, read_toml


class CoordinatorSection(Strict):
    # The coordinator's ed25519 key (Solana CLI keypair JSON, mode 0600): signs verdicts.
    key: str = "coordinator-key.json"
    # MQTT v5 shared subscription group ($share/<group>/...): N processes split the load.
    # Empty: plain subscriptions (every process gets every message).
    shared_group: str = "coord"
    # How many unacknowledged messages the broker may have in flight to us (MQTT v5
    # Receive Maximum): bounds what waits for a commit, and so the batch size reached.
    receive_maximum: Annotated[int, Field(ge=1, le=65_535)] = 1000


class StorageSection(Strict):
    # postgresql://user@host:port/db (psycopg 3); empty: the embedded SQLite file below.
    database_url: str = ""
    sqlite_path: str = "coordinator.sqlite3"
    # FULL survives power loss; NORMAL survives a crash of the coordinator process.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"

    @model_validator(mode="after")
    def _url(self) -> StorageSection:
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("database_url must start with postgresql:// (or be empty for SQLite)")
        return self


class IngestSection(Strict):
    # A batch is committed when it holds batch_max messages or its oldest waited batch_ms.
    batch_max: Annotated[int, Field(ge=1, le=10_000)] = 200
    batch_ms: Annotated[int, Field(ge=1, le=10_000)] = 50
    # An envelope ts further ahead of the coordinator's clock than this is clock_skew.
    clock_skew_ms: Annotated[int, Field(ge=0, le=86_400_000)] = 30_000
    # A heartbeat must quote a beacon at most this many slots older than the newest one.
    beacon_max_age_slots: Annotated[int, Field(ge=0, le=1_000_000)] = 2
    # A gap in a device's chain can be filled this many seqs below its head; older: replay.
    late_window_seqs: Annotated[int, Field(ge=0, le=1_000_000)] = 1024
    # Backoff while the database is unavailable (nothing is acknowledged meanwhile).
    retry_min_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    retry_max_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    # How often the liveness record is refreshed when no message arrives.
    liveness_s: Annotated[float, Field(gt=0, le=3_600)] = 5.0

    @model_validator(mode="after")
    def _retry(self) -> IngestSection:
        if self.retry_min_s > self.retry_max_s:
            raise ValueError(
                f"retry_min_s ({self.retry_min_s}) must not exceed retry_max_s ({self.retry_max_s})"
            )
        return self


class RegistrySection(Strict):
    # Firmware profiles (throughput bounds); empty: the shipped firmware_profiles/.
    profiles_dir: str = ""
    # Model cards (*.toml): a proof's model_sha256 -> its model class; empty: the shipped models/.
    models_dir: str = ""


class BeaconSection(Strict):
    # Slot length: one signed, retained beacon per slot (``{prefix}/beacon``); the slot number is
    # the coordinator's clock divided by slot_ms.  Heartbeats must quote a recent one.
    slot_ms: Annotated[int, Field(ge=1_000, le=3_600_000)] = 60_000


class EpochSection(Strict):
    # Epoch length for the uptime audit (and rewards): a whole number of [beacons] slot_ms.
    epoch_ms: Annotated[int, Field(ge=1_000, le=31_622_400_000)] = 3_600_000


class ChallengeSection(Strict):
    # Chance per slot that an active device is challenged (0: never; 1: every slot).
    probability_per_slot: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    # Time the device has to answer (from issue); a later answer is challenge_late, none is
    # challenge_missed.  Keep it under the devices' [challenges] horizon.
    deadline_ms: Annotated[int, Field(ge=1_000, le=3_600_000)] = 30_000
    # A device is challenged only if it reported a model (proof or status) in the last N slots.
    active_within_slots: Annotated[int, Field(ge=1, le=1_000_000)] = 3
    # Threads the reference runner gives a model (one runner thread per process).
    reference_threads: Annotated[int, Field(ge=1, le=64)] = 1


class HttpSection(Strict):
    # The dashboard, /api/summary, /metrics and /healthz: "host:port" ("[::1]:8480" for IPv6);
    # empty: no HTTP server.  Port 0 picks a free port (logged as http_listening).
    listen: str = "127.0.0.1:8480"
    # A listen address that is not loopback is refused unless this is true (the page shows
    # device ids, owners and counts; put a TLS proxy with authentication in front of it).
    allow_remote: bool = False
    # A device is online when its last accepted heartbeat is at most this old (default: twice
    # the devices' default heartbeat_s of 30 s).
    online_window_s: Annotated[int, Field(ge=1, le=86_400)] = 60
    # How often the page fetches /api/summary again.
    refresh_s: Annotated[int, Field(ge=1, le=3_600)] = 5

    @model_validator(mode="after")
    def _listen(self) -> HttpSection:
        address = parse_listen(self.listen)
        if address is not None and not self.allow_remote and not is_loopback(address[0]):
            raise ValueError(
                f"listen {self.listen!r} is not a loopback address; the dashboard is for localhost "
                "(set allow_remote = true to serve it on another interface)"
            )
        return self


def parse_listen(text: str) -> tuple[str, int] | None:
    """``"host:port"`` -> (host, port); ``""`` -> None (no HTTP server); ValueError otherwise."""
    if text == "":
        return None
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"listen {text!r}: write an IPv6 address in brackets, e.g. [::1]:8480")
    if not sep or not host or not port.isdigit() or int(port) > 65_535:
        raise ValueError(f"listen {text!r} is not host:port (e.g. 127.0.0.1:8480, or empty to disable)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or the name localhost (any other name may resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RewardsSection(Strict):
    """The reward policy (docs/rewards.md, "Settlement"): integers only, no floats in money."""

    # Token base units shared out per settled epoch.
    pool_per_epoch: Annotated[int, Field(ge=0, le=10**18)] = 0
    # How the pool splits between the three measures, in basis points: must sum to 10000.
    uptime_weight_bp: Annotated[int, Field(ge=0, le=10_000)] = 5_000
    # Verified work = accepted inferences (the sum over accepted proofs, bounded at ingest).
    work_weight_bp: Annotated[int, Field(ge=0, le=10_000)] = 3_000
    challenge_weight_bp: Annotated[int, Field(ge=0, le=10_000)] = 2_000
    # A device earns nothing unless up_slots / counted_slots >= min_uptime_bp / 10000.
    min_uptime_bp: Annotated[int, Field(ge=0, le=10_000)] = 5_000
    # At most this many base units per device per epoch (omitted: no cap); the excess stays unpaid.
    device_cap: Annotated[int, Field(ge=1, le=10**18)] | None = None
    # Pass rate (bp) credited to a device with no scored challenge in the epoch (none issued,
    # only open ones, or only unknown_model): 0 = no challenge credit without a checked answer.
    unscored_pass_bp: Annotated[int, Field(ge=0, le=10_000)] = 0

    @model_validator(mode="after")
    def _weights(self) -> RewardsSection:
        total = self.uptime_weight_bp + self.work_weight_bp + self.challenge_weight_bp
        if total != 10_000:
            raise ValueError(
                f"uptime_weight_bp + work_weight_bp + challenge_weight_bp must be 10000 (is {total})"
            )
        return self


#: SPL Memo v2 (it checks its signers); LiteSVM in solders 0.29 ships v1 and v2.
MEMO_V2 = "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"


class PayoutSection(Strict):
    """Claims and vouchers (docs/rewards.md, "Claims"): empty ``rpc_url`` = no payout desk."""

    # Solana JSON-RPC URL (localnet, devnet, mainnet); empty: claims are recorded, not answered.
    rpc_url: str = ""
    # The treasury keypair (fee payer, vault authority); empty: the [coordinator] key.
    treasury_key: str = ""
    # `edgeproof chain bootstrap` state file (or its saved --json output): treasury, mint, vault
    # and decimals are read from it; mint, vault and decimals below override it.
    bootstrap: str = ""
    mint: str = ""
    # The vault token account; empty: the treasury's associated token account for the mint.
    vault: str = ""
    decimals: Annotated[int, Field(ge=0, le=9)] | None = None
    memo_program: str = MEMO_V2
    # RPC robustness: per-call timeout, retries with exponential backoff from backoff_s.
    rpc_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    rpc_retries: Annotated[int, Field(ge=0, le=10)] = 3
    rpc_backoff_s: Annotated[float, Field(gt=0, le=30)] = 0.25
    # The payout circuit breaker: at most breaker_cap base units in vouchers issued (not
    # released) per breaker_window_s; a claim over it trips the breaker, which refuses every
    # claim (payout_paused) for one window.  Omitted cap: no breaker.
    breaker_cap: Annotated[int, Field(ge=1, le=10**18)] | None = None
    breaker_window_s: Annotated[int, Field(ge=1, le=31_622_400)] = 3_600
    # How often outstanding vouchers are looked up on chain (also at every start).
    reconcile_s: Annotated[float, Field(gt=0, le=3_600)] = 5.0


class RolloutSection(Strict):
    """The rollout controller inside ``coordinator run`` (docs/fleet.md, "Rollouts"): empty
    ``channel`` = none here (``edgeproof fleet rollout run`` runs it as its own process)."""

    # The channel whose rollouts this process controls, as `fleet rollout run --channel`.
    channel: Annotated[str, Field(pattern=r"^([a-z0-9][a-z0-9._-]{0,63})?$")] = ""
    # The operator key that signs each next stage and halt, and its state file (`fleet publish`'s
    # --key and --state: the controller's manifests are the next links of that key's chain).
    key: str = ""
    state: str = ""
    # More operator public keys whose manifests on the channel start or update a rollout.
    operator_keys: list[str] = Field(default_factory=list)
    # Halt above this failure rate; unset: what `fleet publish --abort-failure-rate` recorded.
    abort_failure_rate: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    # A device not done this long after its stage started has failed (timed_out or offline).
    stage_timeout_s: Annotated[int, Field(ge=1, le=31_622_400)] = 1_800
    tick_s: Annotated[float, Field(gt=0, le=3_600)] = 1.0

    @model_validator(mode="after")
    def _key_and_state(self) -> RolloutSection:
        missing = [name for name in ("key", "state") if self.channel and not getattr(self, name)]
        if missing:
            raise ValueError(
                f"channel {self.channel!r} needs {' and '.join(missing)} (the operator key that signs)"
            )
        return self


def _default_mqtt() -> MqttSettings:
    return MqttSettings(client_id="edgeproof-coordinator")


class CoordinatorConfig(Strict):
    coordinator: CoordinatorSection = Field(default_factory=CoordinatorSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    beacons: BeaconSection = Field(default_factory=BeaconSection)
    challenges: ChallengeSection = Field(default_factory=ChallengeSection)
    epochs: EpochSection = Field(default_factory=EpochSection)
    mqtt: MqttSettings = Field(default_factory=_default_mqtt)
    http: HttpSection = Field(default_factory=HttpSection)
    rewards: RewardsSection = Field(default_factory=RewardsSection)
    payout: PayoutSection = Field(default_factory=PayoutSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)

    @model_validator(mode="after")
    def _epoch_is_whole_slots(self) -> CoordinatorConfig:
        slot_ms, epoch_ms = self.beacons.slot_ms, self.epochs.epoch_ms
        if epoch_ms % slot_ms:
            raise ValueError(
                f"[epochs] epoch_ms ({epoch_ms}) must be a multiple of [beacons] slot_ms ({slot_ms})"
            )
        return self

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or "edgeproof-coordinator"


def _resolve(base: Path, value: str) -> str:
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def load_coordinator_config(path: Path | str) -> CoordinatorConfig:
    """Read and validate the config; relative paths are resolved against its folder."""
    config_path = Path(path)
    data, text = read_toml(config_path)
    config = parse_mapping(CoordinatorConfig, data, origin=str(config_path), source=text)
    base = config_path.resolve().parent
    mqtt = config.mqtt
    if mqtt.password_file:
        mqtt = mqtt.model_copy(update={"password_file": _resolve(base, mqtt.password_file)})
    return config.model_copy(
        update={
            "coordinator": config.coordinator.model_copy(
                update={"key": _resolve(base, config.coordinator.key)}
            ),
            "storage": config.storage.model_copy(
                update={"sqlite_path": _resolve(base, config.storage.sqlite_path)}
            ),
            "registry": config.registry.model_copy(
                update={
                    "profiles_dir": _resolve(base, config.registry.profiles_dir),
                    "models_dir": _resolve(base, config.registry.models_dir),
                }
            ),
            "mqtt": mqtt,
            "payout": config.payout.model_copy(
                update={
                    "treasury_key": _resolve(base, config.payout.treasury_key),
                    "bootstrap": _resolve(base, config.payout.bootstrap),
                }
            ),
            "rollout": config.rollout.model_copy(
                update={
                    "key": _resolve(base, config.rollout.key),
                    "state": _resolve(base, config.rollout.state),
                }
            ),
        }
    )
