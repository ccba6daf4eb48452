"""The device registry (enrolment with a verified binding) and what ingest judges against.

:func:`enroll` refuses a binding that does not verify, or that binds another device or
owner than the operator named; :func:`load_policy` reads the firmware profiles
(throughput bounds) and the model cards (model sha256 -> model class).
"""

from __future__ import annotations

from pathlib import Path

from agent.config import default_models_dir
from agent.coordinator.config import CoordinatorConfig
from agent.coordinator.ingest import Policy
from agent.coordinator.store import DeviceRecord, Store
from agent.errors import ConfigError, ProtocolError
from agent.inference.cards import ModelCard
from agent.profiles import get_profile, load_profiles
from agent.protocol.binding import verify_binding
from agent.validation import load_toml


def _idents(tags: list[str]) -> tuple[str, ...]:
    import re

    ident = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
    for tag in tags:
        if not ident.match(tag):
            raise ConfigError(f"tag {tag!r} is not a lower-case identifier (a-z, 0-9, '.', '_', '-')")
    return tuple(tags)


def enroll(
    store: Store,
    config: CoordinatorConfig,
    *,
    device_id: str,
    owner: str,
    profile: str,
    tags: list[str],
    binding_path: Path,
    now_ms: int,
) -> DeviceRecord:
    """Verify the binding file and add the device; ProtocolError / ConfigError on refusal."""
    profiles = load_profiles(Path(config.registry.profiles_dir) if config.registry.profiles_dir else None)
    get_profile(profiles, profile)  # an unknown profile name fails with suggestions
    checked_tags = _idents(tags)
    try:
        data = binding_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"binding file {binding_path} cannot be read: {exc}") from exc
    try:
        binding = verify_binding(data)
    except ProtocolError as exc:
        raise ProtocolError(
            f"binding {binding_path} refused: {exc.message}",
            reason=exc.reason,
            hint="create it on the device with: edgeproof keys bind --owner WALLET --key KEYFILE --out FILE",
        ) from exc
    if binding.device != device_id:
        raise ProtocolError(
            f"binding {binding_path} refused: it binds device {binding.device}, not {device_id}",
            reason="unknown_device",
        )
    if binding.owner != owner:
        raise ProtocolError(
            f"binding {binding_path} refused: it binds owner {binding.owner}, not {owner}", reason="malformed"
        )
    record = DeviceRecord(device_id, owner, profile, checked_tags, binding.ts, binding.sig, now_ms)
    with store.transaction():
        store.enroll(record)
    return record


def enroll_from(
    store: Store,
    config: CoordinatorConfig,
    *,
    path: Path,
    profile: str,
    tags: list[str],
    now_ms: int,
) -> list[DeviceRecord]:
    """Bulk enrolment: one binding document per line, every one verified, then one transaction.

    The owner of each device is the one its binding names.  A line that does not verify, or a
    device on two lines, refuses the whole file (ProtocolError naming the line): nothing is stored.
    """
    profiles = load_profiles(Path(config.registry.profiles_dir) if config.registry.profiles_dir else None)
    get_profile(profiles, profile)
    checked_tags = _idents(tags)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"binding file {path} cannot be read: {exc}") from exc
    records: list[DeviceRecord] = []
    lines: dict[str, int] = {}
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            binding = verify_binding(line)
        except ProtocolError as exc:
            raise ProtocolError(
                f"{path} line {number} refused: {exc.message}",
                reason=exc.reason,
                hint="nothing was enrolled; fix or remove that line",
            ) from exc
        if binding.device in lines:
            raise ProtocolError(
                f"{path} line {number} refused: device {binding.device} is already on line "
                f"{lines[binding.device]}",
                reason="malformed",
                hint="nothing was enrolled; keep one binding per device",
            )
        lines[binding.device] = number
        records.append(
            DeviceRecord(
                binding.device, binding.owner, profile, checked_tags, binding.ts, binding.sig, now_ms
            )
        )
    if not records:
        raise ConfigError(f"binding file {path} holds no bindings (one binding document per line)")
    with store.transaction():
        for record in records:
            store.enroll(record)
    return records


def model_classes(models_dir: Path) -> dict[str, str]:
    """sha256 -> model class of every model card (``*.toml``) in ``models_dir``."""
    classes: dict[str, str] = {}
    for path in sorted(models_dir.glob("*.toml")):
        card = load_toml(ModelCard, path)
        classes[card.sha256] = card.model_class
    return classes


def models_folder(config: CoordinatorConfig) -> Path:
    """The coordinator's model store: the configured folder, else the shipped models/."""
    return Path(config.registry.models_dir) if config.registry.models_dir else default_models_dir()


def load_policy(config: CoordinatorConfig) -> Policy:
    registry = config.registry
    profiles = load_profiles(Path(registry.profiles_dir) if registry.profiles_dir else None)
    models = models_folder(config)
    ingest = config.ingest
    return Policy(
        clock_skew_ms=ingest.clock_skew_ms,
        beacon_max_age_slots=ingest.beacon_max_age_slots,
        late_window_seqs=ingest.late_window_seqs,
        profiles=profiles,
        model_classes=model_classes(models) if models.is_dir() else {},
    )


def open_store(config: CoordinatorConfig) -> Store:
    storage = config.storage
    return Store.open(
        database_url=storage.database_url,
        sqlite_path=storage.sqlite_path,
        synchronous=storage.sqlite_synchronous,
    )
