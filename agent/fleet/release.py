"""Build a manifest body from a model card and its files, exactly as a device checks it.

Pure apart from reading the files: the card must name the model file (``file``) and its
``sha256``; the manifest's ``model_id``/``model_version`` are the card's ``id``/``version``; a
labels file the card's decoder refers to ships as the third artifact.  Every artifact's URL is
``BASE/NAME``.  The result is validated by the protocol's own ``manifest`` schema.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConfigError, FleetError
from agent.inference.cards import load_card
from agent.protocol.envelope import validate_body
from agent.protocol.messages import Manifest, Targets

_DURATION = re.compile(r"^([0-9]+)([smhd])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_TARGET_KEYS = {"profile": "profiles", "tag": "tags", "device": "devices"}


@dataclass(frozen=True)
class ReleaseFile:
    name: str
    path: Path
    sha256: str
    length: int


def file_facts(path: Path) -> ReleaseFile:
    try:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        length = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"cannot read release file {path}: {exc}") from exc
    return ReleaseFile(path.name, path, digest, length)


def parse_duration_ms(text: str) -> int:
    """``90s``, ``30m``, ``12h``, ``7d`` -> milliseconds."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(f"--expires {text!r}: expected a positive number with s, m, h or d (e.g. 7d)")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_stages(text: str) -> list[int]:
    """Percent of the targeted devices per stage (``5,25,100``) -> basis points (500, 2500, 10000)."""
    try:
        percents = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigError(f"--stages {text!r}: expected comma-separated percentages, e.g. 5,25,100") from exc
    stages = [round(p * 100) for p in percents]
    if not stages or any(not 1 <= s <= 10_000 for s in stages) or stages[-1] != 10_000:
        raise ConfigError(f"--stages {text!r}: percentages in (0, 100], the last one 100")
    if any(b <= a for a, b in itertools.pairwise(stages)):
        raise ConfigError(f"--stages {text!r}: each stage must reach more devices than the one before")
    return stages


def parse_targets(text: str) -> Targets:
    """``profile:rpi5,tag:lobby,device:ID`` -> Targets (empty text: every device on the channel)."""
    lists: dict[str, list[str]] = {"profiles": [], "tags": [], "devices": []}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition(":")
        if not sep or key not in _TARGET_KEYS or not value:
            raise ConfigError(
                f"--targets: {part!r} is not profile:ID, tag:NAME or device:PUBKEY",
                hint="e.g. --targets profile:rpi5,tag:lobby",
            )
        lists[_TARGET_KEYS[key]].append(value)
    try:
        return Targets.model_validate(lists)
    except ValueError as exc:
        raise ConfigError(f"--targets {text!r}: {exc}") from exc


def release_files(card_path: Path, model_path: Path) -> tuple[str, str, list[ReleaseFile]]:
    """(model_id, model_version, [model, card, labels?]) once the card is checked against the model."""
    loaded = load_card(card_path)
    card = loaded.card
    model = file_facts(model_path)
    if card.file != model.name or card.sha256 != model.sha256:
        raise FleetError(
            f"card {card_path} names file {card.file!r} with sha256 {card.sha256[:12]}..., but the model "
            f"artifact is {model.name!r} with sha256 {model.sha256[:12]}...",
            reason="card_mismatch",
            hint="devices refuse a card whose file and sha256 are not the model artifact's; fix the card",
        )
    files = [model, file_facts(card_path)]
    labels = getattr(card.decoder, "labels", None)
    if isinstance(labels, str):
        files.append(file_facts(card_path.parent / labels))
    return card.id, card.version, files


def build_manifest(
    *,
    card_path: Path,
    model_path: Path,
    base_url: str,
    channel: str,
    version: int,
    targets: Targets,
    stages: list[int],
    stage: int,
    expires_ms: int,
    rollback: bool = False,
) -> Manifest:
    model_id, model_version, files = release_files(card_path, model_path)
    base = base_url.rstrip("/")
    body = {
        "channel": channel,
        "version": version,
        "model_id": model_id,
        "model_version": model_version,
        "model": files[0].name,
        "card": files[1].name,
        "artifacts": [
            {"name": f.name, "url": f"{base}/{f.name}", "sha256": f.sha256, "length": f.length} for f in files
        ],
        "targets": targets.model_dump(),
        "expires_ms": expires_ms,
        "stages": stages,
        "stage": stage,
        **({"rollback": True} if rollback else {}),
    }
    model = validate_body("manifest", body)
    assert isinstance(model, Manifest)
    return model
