"""SSD anchor boxes (MediaPipe BlazeFace style): per-anchor regressors + scores, then NMS.

Anchors: for each run of equal strides, a grid of ceil(input/stride) cells with
two anchors per layer in the run, centred at (cell + anchor_offset) / grid, of
fixed unit size.  A regressor row starts with dx, dy, w, h in input pixels
(divided by ``box_scale``) relative to its anchor; keypoints follow and are
ignored here.
"""

from __future__ import annotations

import math
from itertools import groupby

import numpy as np

from agent.errors import ModelError
from agent.inference.cards import AnchorsDecoder as Spec
from agent.inference.cards import ModelCard
from agent.inference.decoders.base import Decoder, Prediction, label_for, nms, to_frame
from agent.inference.preprocess import Geometry


def ssd_anchors(input_w: int, input_h: int, strides: list[int], offset: float) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1] (x, y)."""
    centres: list[tuple[float, float]] = []
    for stride, run in groupby(strides):
        per_cell = 2 * len(list(run))
        grid_h, grid_w = math.ceil(input_h / stride), math.ceil(input_w / stride)
        for y in range(grid_h):
            for x in range(grid_w):
                centre = ((x + offset) / grid_w, (y + offset) / grid_h)
                centres.extend([centre] * per_cell)
    return np.array(centres, dtype=np.float32)


class AnchorsDecoder(Decoder):
    kind = "anchors"

    def __init__(self, card: ModelCard, labels: list[str] | None) -> None:
        super().__init__(card, labels)
        assert isinstance(card.decoder, Spec)
        self.spec: Spec = card.decoder
        self.anchors = ssd_anchors(
            card.input.width, card.input.height, self.spec.strides, self.spec.anchor_offset
        )

    def _decode(self, outputs: list[np.ndarray], geometry: Geometry) -> list[Prediction]:
        regs = self._output(outputs, self.spec.boxes_output).astype(np.float32).reshape(-1, 1)
        raw_scores = self._output(outputs, self.spec.scores_output).astype(np.float32).reshape(-1)
        count = len(self.anchors)
        if raw_scores.size != count or regs.size % count:
            raise ModelError(
                f"anchors decoder: model gives {raw_scores.size} scores and {regs.size} regressor values, "
                f"but the card's strides make {count} anchors"
            )
        regs = regs.reshape(count, -1)
        scores: np.ndarray = raw_scores
        if self.spec.sigmoid:
            scores = (1.0 / (1.0 + np.exp(-np.clip(raw_scores, -80.0, 80.0)))).astype(np.float32)
        keep = scores >= self.card.thresholds.score
        if not keep.any():
            return []
        regs, scores, anchors = regs[keep], scores[keep], self.anchors[keep]
        size = np.array([self.card.input.width, self.card.input.height], dtype=np.float32)
        centre = (regs[:, 0:2] / self.spec.box_scale + anchors) * size
        half = regs[:, 2:4] / self.spec.box_scale * size / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        chosen = nms(boxes, scores, self.card.thresholds.iou, self.spec.max_detections)
        frame_boxes = to_frame(boxes[chosen], geometry)
        label = label_for(self.labels, 0) if self.labels else "face"
        return [
            Prediction(0, label, float(scores[i]), (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
            for i, b in zip(chosen, frame_boxes, strict=True)
        ]
