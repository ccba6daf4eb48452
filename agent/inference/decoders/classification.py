"""Classification: top-k labels with (softmax) scores; the summary counts top-1 labels."""

from __future__ import annotations

import math

import numpy as np

from agent.inference.cards import ClassificationDecoder as Spec
from agent.inference.cards import ModelCard
from agent.inference.decoders.base import Decoder, Prediction, label_for
from agent.inference.preprocess import Geometry


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - np.max(logits)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum()
    return result


class ClassificationDecoder(Decoder):
    kind = "classification"

    def __init__(self, card: ModelCard, labels: list[str] | None) -> None:
        super().__init__(card, labels)
        assert isinstance(card.decoder, Spec)
        self.spec: Spec = card.decoder

    def classes(self) -> int | None:
        return math.prod(self.card.outputs[self.spec.output].shape)

    def top_k(self, outputs: list[np.ndarray]) -> list[Prediction]:
        scores = self._output(outputs, self.spec.output).astype(np.float32).reshape(-1)
        if self.spec.softmax:
            scores = softmax(scores)
        k = min(self.spec.top_k, scores.size)
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [Prediction(int(i), label_for(self.labels, int(i)), float(scores[i])) for i in best]

    def _decode(self, outputs: list[np.ndarray], geometry: Geometry) -> list[Prediction]:
        ranked = self.top_k(outputs)
        self.last_top_k = ranked
        # Only the top-1 label counts towards the summary.
        return ranked[:1]
