"""Frame -> input tensor, exactly as a model card describes.

``preprocess`` returns the resized uint8 image (what the model saw, before
normalisation: the smallest tensor that binds the input, used for the input
commitment) together with the model tensor and the letterbox geometry the
decoders need to map boxes back to the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from agent.inference.cards import InputSpec


@dataclass(frozen=True)
class Geometry:
    """How the frame was mapped onto the model input (for box decoding)."""

    frame_w: int
    frame_h: int
    scale_x: float  # model pixels per frame pixel
    scale_y: float
    pad_x: int
    pad_y: int


@dataclass(frozen=True)
class Prepared:
    resized: np.ndarray  # HxWxC (or HxW) uint8, after colour conversion and resize
    tensor: np.ndarray  # model input, batch first, card dtype and layout
    geometry: Geometry


class Preprocessor:
    """Precomputes the per-channel affine map once per card."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        channels = spec.channels
        mean = np.array(spec.mean * (channels if len(spec.mean) == 1 else 1), dtype=np.float32)
        std = np.array(spec.std * (channels if len(spec.std) == 1 else 1), dtype=np.float32)
        # x = (pixel * scale - mean) / std  ==  pixel * a + b
        self._a = (spec.scale / std).astype(np.float32)
        self._b = (-mean / std).astype(np.float32)
        q = spec.quantization
        if spec.dtype in ("uint8", "int8") and q is not None:
            self._a = self._a / np.float32(q.scale)
            self._b = self._b / np.float32(q.scale) + np.float32(q.zero_point)
        self._identity = bool(np.all(self._a == 1) and np.all(self._b == 0))

    def __call__(self, frame_bgr: np.ndarray) -> Prepared:
        spec = self.spec
        if frame_bgr.ndim == 2:
            frame_bgr = cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
        if spec.color == "RGB":
            image = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        elif spec.color == "GRAY":
            image = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        else:
            image = frame_bgr
        resized, geometry = _resize(image, spec.width, spec.height, spec.resize)
        pixels = resized if resized.ndim == 3 else resized[:, :, None]
        if spec.dtype == "uint8" and self._identity:
            values = pixels
        else:
            values = pixels.astype(np.float32) * self._a + self._b
            if spec.dtype in ("uint8", "int8"):
                info = np.iinfo(spec.dtype)
                values = np.clip(np.rint(values), info.min, info.max).astype(spec.dtype)
            elif spec.dtype == "float16":
                values = values.astype(np.float16)
        if spec.layout == "NCHW":
            values = values.transpose(2, 0, 1)
        tensor = np.ascontiguousarray(values[None, ...])
        return Prepared(resized=resized, tensor=tensor, geometry=geometry)


def _resize(image: np.ndarray, width: int, height: int, mode: str) -> tuple[np.ndarray, Geometry]:
    h, w = image.shape[:2]
    if mode == "stretch":
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        return resized, Geometry(w, h, width / w, height / h, 0, 0)
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    inner = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
    shape = (height, width, *image.shape[2:])
    canvas = np.full(shape, 114, dtype=np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = inner
    return canvas, Geometry(w, h, scale, scale, pad_x, pad_y)


def preprocess(frame_bgr: np.ndarray, spec: InputSpec) -> Prepared:
    """One-off convenience wrapper; build a Preprocessor for repeated use."""
    return Preprocessor(spec)(frame_bgr)
