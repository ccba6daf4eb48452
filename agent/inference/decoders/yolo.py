"""YOLO-style detections (v5/v8 heads exported without NMS): boxes + class scores, then NMS."""

from __future__ import annotations

import numpy as np

from agent.errors import ModelError
from agent.inference.cards import ModelCard
from agent.inference.cards import YoloDecoder as Spec
from agent.inference.decoders.base import Decoder, Prediction, label_for, nms, to_frame
from agent.inference.preprocess import Geometry


class YoloDecoder(Decoder):
    kind = "yolo"

    def __init__(self, card: ModelCard, labels: list[str] | None) -> None:
        super().__init__(card, labels)
        assert isinstance(card.decoder, Spec)
        self.spec: Spec = card.decoder

    def classes(self) -> int | None:
        shape = self.card.outputs[self.spec.output].shape
        if len(shape) < 2:
            return None
        return (shape[-1] if self.spec.transposed else shape[-2]) - 4

    def _decode(self, outputs: list[np.ndarray], geometry: Geometry) -> list[Prediction]:
        raw = self._output(outputs, self.spec.output).astype(np.float32)
        if raw.ndim == 3:
            raw = raw[0]
        if raw.ndim != 2:
            raise ModelError(f"yolo decoder expects a (1, 4+classes, N) output, got shape {raw.shape}")
        rows = raw if self.spec.transposed else raw.T  # (N, 4 + classes)
        if rows.shape[1] < 5:
            raise ModelError(f"yolo decoder expects at least 5 values per box, got {rows.shape[1]}")
        class_scores = rows[:, 4:]
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), class_ids]
        keep = scores >= self.card.thresholds.score
        if not keep.any():
            return []
        rows, class_ids, scores = rows[keep], class_ids[keep], scores[keep]
        cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        # Class-aware NMS: shift each class into its own coordinate range.
        offset = class_ids[:, None].astype(np.float32) * (boxes.max() + 1.0)
        chosen = nms(boxes + offset, scores, self.card.thresholds.iou, self.spec.max_detections)
        frame_boxes = to_frame(boxes[chosen], geometry)
        return [
            Prediction(
                int(class_ids[i]),
                label_for(self.labels, int(class_ids[i])),
                float(scores[i]),
                (float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            )
            for i, b in zip(chosen, frame_boxes, strict=True)
        ]
