"""The demo network's folder, keys and config files: one coordinator, three devices, one operator.

Keys come from fixed seeds (the same device ids on every run, so the rollout's stages reach
the same devices); the operator key is made by ``edgeproof fleet keys init``.  Time is
compressed (:class:`Timing`): 60 s epochs of 12 slots by default, 5 s proof windows, 2 s
heartbeats, a 10 s trial.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from solders.keypair import Keypair

from agent.config import default_models_dir
from agent.errors import ConfigError
from agent.identity import write_keypair
from agent.inference.cards import load_card
from agent.protocol.binding import sign_binding

SLOTS_PER_EPOCH = 12
CHALLENGE_DEADLINE_MS = 8_000
POOL_PER_EPOCH = 1_000_000  # base units (6 decimals: one token per epoch)
WINDOW_S = 5
TRIAL_S = 10
CHANNEL = "demo"
ROLLOUT_TAG = "classifier"
#: The version the rollout ships: the same EfficientNet weights under a new card version.
NEW_VERSION = "1.1.0"


@dataclass(frozen=True)
class Timing:
    """Compressed time: ``epoch_ms`` split into 12 slots; about six challenges per device per epoch."""

    epoch_ms: int = 60_000

    @property
    def slot_ms(self) -> int:
        return self.epoch_ms // SLOTS_PER_EPOCH

    @property
    def challenge_probability(self) -> float:
        """Half the slots of an active device: a settled epoch without a challenge is ~0.1% likely."""
        return 0.5

    @property
    def active_within_slots(self) -> int:
        """A device is active for the coordinator while its last proof (every WINDOW_S) is this recent."""
        return -(-WINDOW_S * 1000 // self.slot_ms) + 1

    @property
    def heartbeat_s(self) -> int:
        return 1 if self.slot_ms < 4_000 else 2

    @property
    def min_epoch_left_s(self) -> float:
        """The epoch the devices come up in is settled if this much of it is left, else the next."""
        return 0.6 * self.epoch_ms / 1000


def check_epoch_s(epoch_s: int) -> Timing:
    if not 12 <= epoch_s <= 600 or epoch_s % 3:
        raise ConfigError(
            f"--epoch-s {epoch_s}: expected a multiple of 3 between 12 and 600 (12 slots of whole milliseconds, "
            "at least 1 s each)"
        )
    return Timing(epoch_s * 1000)


def seeded(name: str) -> Keypair:
    return Keypair.from_seed(hashlib.sha256(f"edgeproof-demo/{name}".encode()).digest())


@dataclass(frozen=True)
class DemoDevice:
    name: str
    card: Path
    clip: Path
    tags: tuple[str, ...]
    folder: Path

    @property
    def keypair(self) -> Keypair:
        return seeded(f"device/{self.name}")

    @property
    def dev(self) -> str:
        return str(self.keypair.pubkey())

    @property
    def owner(self) -> str:
        return str(seeded(f"owner/{self.name}").pubkey())

    @property
    def config(self) -> Path:
        return self.folder / "agent.toml"

    @property
    def state_dir(self) -> Path:
        return self.folder / "state"

    @property
    def model_id(self) -> str:
        return load_card(self.card).card.id


@dataclass(frozen=True)
class Layout:
    out: Path

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def coordinator(self) -> Path:
        return self.out / "coordinator"

    @property
    def coordinator_config(self) -> Path:
        return self.coordinator / "coordinator.toml"

    @property
    def coordinator_key(self) -> Path:
        return self.coordinator / "coordinator-key.json"

    @property
    def bootstrap_state(self) -> Path:
        return self.coordinator / "bootstrap.json"

    @property
    def database(self) -> Path:
        return self.coordinator / "coordinator.sqlite3"

    @property
    def fleet(self) -> Path:
        return self.out / "fleet"

    @property
    def release(self) -> Path:
        return self.fleet / "release"

    @property
    def operator_key(self) -> Path:
        return self.fleet / "operator-key.json"

    @property
    def operator_state(self) -> Path:
        return self.fleet / "operator-state.json"

    def devices(self) -> list[DemoDevice]:
        models = default_models_dir()
        efficientnet = models / "efficientnet-lite0-int8.toml"
        blazeface = models / "blazeface-short-range.toml"
        return [
            DemoDevice(
                "cam-1", efficientnet, self.out / "clips" / "cam-1.avi", (ROLLOUT_TAG,), self.out / "cam-1"
            ),
            DemoDevice(
                "cam-2", efficientnet, self.out / "clips" / "cam-2.avi", (ROLLOUT_TAG,), self.out / "cam-2"
            ),
            DemoDevice("cam-3", blazeface, self.out / "clips" / "cam-3.avi", ("faces",), self.out / "cam-3"),
        ]


def write_coordinator(layout: Layout, broker_port: int, timing: Timing, rpc: str) -> Keypair:
    """The coordinator's key (also the reward treasury) and its config; returns the key.

    ``[payout]`` points it at the local ledger and at the ``chain bootstrap`` state (mint, vault,
    decimals), so it answers claims with vouchers.
    """
    layout.coordinator.mkdir(parents=True, exist_ok=True)
    keypair = seeded("coordinator")
    if not layout.coordinator_key.exists():
        write_keypair(layout.coordinator_key, keypair)
    layout.coordinator_config.write_text(
        f"""# written by `edgeproof demo`: 12 slots per epoch, about six challenges per device per epoch
[coordinator]
key = "coordinator-key.json"
shared_group = "coord"

[storage]
sqlite_path = "coordinator.sqlite3"
sqlite_synchronous = "NORMAL"

[ingest]
liveness_s = 1.0

[beacons]
slot_ms = {timing.slot_ms}

[epochs]
epoch_ms = {timing.epoch_ms}

[challenges]
probability_per_slot = {timing.challenge_probability}
deadline_ms = {CHALLENGE_DEADLINE_MS}
active_within_slots = {timing.active_within_slots}

[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "demo-coordinator"

[http]
listen = "127.0.0.1:0"
online_window_s = 10
refresh_s = 2

[rewards]
pool_per_epoch = {POOL_PER_EPOCH}
min_uptime_bp = 5000
"""
        + f"""
[payout]
rpc_url = "{rpc}"
bootstrap = "{layout.bootstrap_state.name}"
""",
        encoding="utf-8",
    )
    return keypair


def write_bindings(path: Path, devices: list[DemoDevice], now_ms: int) -> Path:
    """Each device's key (0600) and its signed owner binding, one document per line in ``path``."""
    documents = []
    for device in devices:
        device.folder.mkdir(parents=True, exist_ok=True)
        key = device.folder / "device-key.json"
        if not key.exists():
            write_keypair(key, device.keypair)
        documents.append(sign_binding(device.keypair, device.owner, now_ms).document())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(documents))
    return path


def write_device(
    device: DemoDevice,
    *,
    broker_port: int,
    coordinator: str,
    operator: str,
    profile: str,
    timing: Timing,
    rpc: str,
    mint: str,
) -> Path:
    device.folder.mkdir(parents=True, exist_ok=True)
    tags = json.dumps(list(device.tags))
    device.config.write_text(
        f"""# written by `edgeproof demo`
[device]
key = "{device.folder / "device-key.json"}"
state_dir = "{device.state_dir}"
profile = "{profile}"
owner_wallet = "{device.owner}"

[inference]
model = "{device.card}"
source = "{device.clip}"
max_fps = 2
threads = 1

[proofs]
window_s = {WINDOW_S}
heartbeat_s = {timing.heartbeat_s}

[mqtt]
host = "127.0.0.1"
port = {broker_port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[coordinator]
pubkey = "{coordinator}"

[fleet]
channels = ["{CHANNEL}"]
operator_keys = ["{operator}"]
tags = {tags}
trial_s = {TRIAL_S}

[rewards]
rpc_url = "{rpc}"
mint = "{mint}"
claim_every_s = 0
""",
        encoding="utf-8",
    )
    return device.config


def write_release(layout: Layout, card: Path) -> tuple[Path, Path]:
    """The release folder ``fleet serve`` serves: the model, its labels, and the card at NEW_VERSION."""
    loaded = load_card(card)
    layout.release.mkdir(parents=True, exist_ok=True)
    model = layout.release / loaded.card.file
    shutil.copyfile(loaded.model_path, model)
    labels = getattr(loaded.card.decoder, "labels", None)
    if isinstance(labels, str):
        shutil.copyfile(card.parent / labels, layout.release / labels)
    text = card.read_text(encoding="utf-8")
    old = f'version = "{loaded.card.version}"'
    if old not in text:
        raise ValueError(f"{card} has no line {old}")
    new_card = layout.release / card.name
    new_card.write_text(text.replace(old, f'version = "{NEW_VERSION}"', 1), encoding="utf-8")
    return new_card, model
