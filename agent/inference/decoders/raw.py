"""Raw: any model.  Reports output shapes and running summary statistics, no labels."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.inference.cards import ModelCard
from agent.inference.decoders.base import Decoder, Prediction
from agent.inference.preprocess import Geometry


class RawDecoder(Decoder):
    kind = "raw"

    def __init__(self, card: ModelCard, labels: list[str] | None) -> None:
        super().__init__(card, labels)
        self._stats: list[dict[str, Any]] = []

    def _decode(self, outputs: list[np.ndarray], geometry: Geometry) -> list[Prediction]:
        if not self._stats:
            self._stats = [
                {
                    "shape": list(o.shape),
                    "dtype": str(o.dtype),
                    "min": np.inf,
                    "max": -np.inf,
                    "sum": 0.0,
                    "n": 0,
                }
                for o in outputs
            ]
        for stats, output in zip(self._stats, outputs, strict=False):
            values = output.astype(np.float64, copy=False)
            finite = values[np.isfinite(values)]
            if finite.size:
                stats["min"] = min(stats["min"], float(finite.min()))
                stats["max"] = max(stats["max"], float(finite.max()))
                stats["sum"] += float(finite.sum())
            stats["n"] += int(values.size)
            stats["nonfinite"] = stats.get("nonfinite", 0) + int(values.size - finite.size)
        return []

    def summary(self) -> dict[str, Any]:
        outputs = []
        for spec, stats in zip(self.card.outputs, self._stats, strict=False):
            n = max(stats["n"], 1)
            outputs.append(
                {
                    "name": spec.name,
                    "shape": stats["shape"],
                    "dtype": stats["dtype"],
                    "min": stats["min"],
                    "max": stats["max"],
                    "mean": stats["sum"] / n,
                    "nonfinite": stats.get("nonfinite", 0),
                }
            )
        return {"decoder": self.kind, "frames": self.frames, "outputs": outputs}

    def reset(self) -> None:
        super().reset()
        self._stats = []
