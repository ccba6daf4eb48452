"""Raw: any model.  Reports output shapes and running summary statistics, no labels.

Per output tensor, over every frame since the last reset: shape and dtype (as
the decoder received them, i.e. after dequantization when the card gives
quantization parameters), min, max, mean and standard deviation of the finite
values, and how many values were not finite (NaN or infinity).  Statistics of
an output that never had a finite value are ``None``, so the summary is always
valid JSON.  Like every summary, this is aggregate data: no per-frame outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.inference.cards import ModelCard
from agent.inference.decoders.base import Decoder, Prediction
from agent.inference.preprocess import Geometry


@dataclass
class _Running:
    shape: list[int]
    dtype: str
    minimum: float = math.inf
    maximum: float = -math.inf
    total: float = 0.0
    squares: float = 0.0
    finite: int = 0
    nonfinite: int = 0

    def add(self, output: np.ndarray) -> None:
        values = np.asarray(output, dtype=np.float64).reshape(-1)
        mask = np.isfinite(values)
        finite = values if mask.all() else values[mask]
        if finite.size:
            self.minimum = min(self.minimum, float(finite.min()))
            self.maximum = max(self.maximum, float(finite.max()))
            self.total += float(finite.sum())
            self.squares += float(np.dot(finite, finite))
        self.finite += int(finite.size)
        self.nonfinite += int(values.size - finite.size)

    def report(self, name: str) -> dict[str, Any]:
        n = self.finite
        mean = self.total / n if n else None
        std = math.sqrt(max(self.squares / n - (self.total / n) ** 2, 0.0)) if n else None
        return {
            "name": name,
            "shape": self.shape,
            "dtype": self.dtype,
            "min": self.minimum if n else None,
            "max": self.maximum if n else None,
            "mean": mean,
            "std": std,
            "finite": n,
            "nonfinite": self.nonfinite,
        }


class RawDecoder(Decoder):
    kind = "raw"

    def __init__(self, card: ModelCard, labels: list[str] | None) -> None:
        super().__init__(card, labels)
        self._stats: list[_Running] = []

    def _decode(self, outputs: list[np.ndarray], geometry: Geometry) -> list[Prediction]:
        if not self._stats:
            self._stats = [_Running(list(o.shape), str(o.dtype)) for o in outputs]
        for stats, output in zip(self._stats, outputs, strict=False):
            stats.add(output)
        return []

    def summary(self) -> dict[str, Any]:
        outputs = [
            stats.report(spec.name) for spec, stats in zip(self.card.outputs, self._stats, strict=False)
        ]
        return {"decoder": self.kind, "frames": self.frames, "outputs": outputs}

    def reset(self) -> None:
        super().reset()
        self._stats = []
