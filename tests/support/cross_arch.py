"""What the x86 reference (tests/arm64/reference.py) and the aarch64 tests share.

Plain functions over the shipped cards, so that both sides compute the same thing the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.challenge_run import challenge_tensor
from agent.inference.backends.base import BackendSettings
from agent.inference.pipeline import Pipeline
from agent.protocol.challenge import output_sketch, synthetic_input

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
SAMPLES = MODELS / "samples"
PERTURBED_SHARE = 0.25  # share of challenge pixels a "perturbed input" replaces (docs/models.md)


def card_paths() -> list[Path]:
    return sorted(MODELS.glob("*.toml"))


def nonces(count: int) -> list[str]:
    """Fixed nonces (32 bytes, hex), the same on both sides."""
    return [hashlib.sha256(f"edgeproof-arm64-nonce-{i}".encode()).hexdigest() for i in range(count)]


def open_pipeline(card: Path) -> Pipeline:
    return Pipeline.open(str(card), BackendSettings(threads=2))


def decode_samples(pipeline: Pipeline) -> dict[str, list[dict[str, Any]]]:
    """Decoded predictions for each sample photo: class id, score, box."""
    out: dict[str, list[dict[str, Any]]] = {}
    for photo in sorted(SAMPLES.glob("*.jpg")):
        frame = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        result = pipeline.step(frame)
        out[photo.name] = [
            {
                "class_id": p.class_id,
                "score": float(p.score),
                "box": None if p.box is None else [float(v) for v in p.box],
            }
            for p in result.predictions[:5]
        ]
    return out


def perturbed_tensor(pipeline: Pipeline, nonce: str) -> np.ndarray:
    """The challenge input of ``nonce`` with PERTURBED_SHARE of its pixels replaced (nonce-derived)."""
    spec = pipeline.loaded.card.input
    clean = challenge_tensor(spec, nonce)
    other = challenge_tensor(spec, hashlib.sha256(bytes.fromhex(nonce)).hexdigest())
    mask_bytes = synthetic_input(nonce[::-1], (spec.height, spec.width), np.uint8)
    mask = mask_bytes < round(256 * PERTURBED_SHARE)
    mask4 = mask[None, None, :, :] if spec.layout == "NCHW" else mask[None, :, :, None]
    return np.where(mask4, other, clean).astype(clean.dtype)


def sketch_of(pipeline: Pipeline, nonce: str, tensor: np.ndarray) -> list[int]:
    outputs = pipeline.backend.run(tensor)
    return output_sketch(nonce, [np.asarray(o, dtype=np.float64) for o in outputs])


def different_pipeline(card: Path, model: Path, directory: Path) -> Pipeline:
    """A pipeline for ``model`` (a different file) under a copy of ``card``'s description."""
    import re
    import shutil

    from agent.inference.cards import load_card

    loaded = load_card(card)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    text = card.read_text(encoding="utf-8")
    text = re.sub(r'(?m)^file = ".*"$', f'file = "{model.name}"', text)
    text = re.sub(r'(?m)^sha256 = ".*"$', f'sha256 = "{digest}"', text)
    directory.mkdir(parents=True, exist_ok=True)
    labels = getattr(loaded.card.decoder, "labels", None)
    if labels:
        shutil.copyfile(card.parent / labels, directory / Path(labels).name)
        text = text.replace(f'labels = "{labels}"', f'labels = "{Path(labels).name}"')
    if model.parent != directory:
        shutil.copyfile(model, directory / model.name)
    out = directory / f"different-{card.name}"
    out.write_text(text, encoding="utf-8")
    return open_pipeline(out)
