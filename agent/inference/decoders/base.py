"""The decoder contract: model outputs -> predictions -> aggregate summary.

Per-frame predictions stay on the device.  What leaves it (in a work proof) is
only :meth:`Decoder.counts`: integers per label over a window.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from agent.errors import ModelError
from agent.inference.cards import ModelCard, OutputSpec
from agent.inference.preprocess import Geometry

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Prediction:
    class_id: int
    label: str
    score: float
    box: Box | None = None  # x1, y1, x2, y2 in frame pixels


def dequantize(outputs: Sequence[np.ndarray], specs: Sequence[OutputSpec]) -> list[np.ndarray]:
    """Integer outputs with quantization parameters become float32 real values."""
    result = []
    for array, spec in zip(outputs, specs, strict=False):
        if spec.quantization is not None and array.dtype.kind in "iu":
            q = spec.quantization
            result.append((array.astype(np.float32) - q.zero_point) * np.float32(q.scale))
        else:
            result.append(array)
    return result


def label_for(labels: Sequence[str] | None, class_id: int) -> str:
    if labels is not None and 0 <= class_id < len(labels):
        return labels[class_id]
    return f"class_{class_id}"


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> list[int]:
    """Greedy non-maximum suppression over x1,y1,x2,y2 boxes; indices by falling score."""
    order = np.argsort(-scores, kind="stable")
    areas = np.maximum(0.0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0.0, boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size and len(keep) < limit:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        xx1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.maximum(0.0, xx2 - xx1) * np.maximum(0.0, yy2 - yy1)
        union = areas[best] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        order = rest[iou <= iou_threshold]
    return keep


def to_frame(boxes: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Model-input pixel boxes -> frame pixel boxes, clipped to the frame."""
    out = boxes.astype(np.float64).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - geometry.pad_x) / geometry.scale_x
    out[:, [1, 3]] = (out[:, [1, 3]] - geometry.pad_y) / geometry.scale_y
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, geometry.frame_w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, geometry.frame_h)
    return out


class Decoder(abc.ABC):
    kind: ClassVar[str]

    def __init__(self, card: ModelCard, labels: list[str] | None) -> None:
        self.card = card
        self.labels = labels
        self.frames = 0
        self._counts: Counter[str] = Counter()

    @abc.abstractmethod
    def _decode(self, outputs: list[np.ndarray], geometry: Geometry) -> list[Prediction]: ...

    def classes(self) -> int | None:
        """How many classes the card's output shape holds, when the decoder indexes labels by class."""
        return None

    def decode(self, outputs: Sequence[np.ndarray], geometry: Geometry) -> list[Prediction]:
        """Decode one inference and add it to the running summary."""
        predictions = self._decode(dequantize(outputs, self.card.outputs), geometry)
        self.frames += 1
        self._counts.update(p.label for p in predictions)
        return predictions

    def counts(self) -> dict[str, int]:
        """Predictions per label since the last reset (what a work proof carries)."""
        return dict(sorted(self._counts.items()))

    def summary(self) -> dict[str, Any]:
        return {"decoder": self.kind, "frames": self.frames, "counts": self.counts()}

    def reset(self) -> None:
        self.frames = 0
        self._counts.clear()

    def _output(self, outputs: list[np.ndarray], index: int) -> np.ndarray:
        if index >= len(outputs):
            raise ModelError(
                f"decoder '{self.kind}' wants output {index}, but the model has {len(outputs)} outputs"
            )
        return outputs[index]
