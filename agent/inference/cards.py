"""Model cards: one TOML file per model, describing how to feed and read it.

A card names the model file and its sha256 (checked at load), its license and
provenance, the input tensor (shape, layout, dtype, quantization, colour
order, resize mode, normalisation) and how to decode the outputs.  A card that
does not fit its model file is refused by the backend with a message saying
what differs (see :func:`agent.inference.backends.base.check_card_against`).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import Field, model_validator

from agent.errors import ConfigError, ModelError
from agent.validation import Strict, load_toml

T = TypeVar("T")

Dtype = Literal["float32", "float16", "uint8", "int8"]
Layout = Literal["NCHW", "NHWC"]


class Quantization(Strict):
    """Affine quantization of a tensor: real = scale * (q - zero_point)."""

    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    zero_point: int


_INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}


def check_quantization(dtype: str, quantization: Quantization | None) -> None:
    """Quantization parameters only for integer tensors, zero_point within the dtype's range."""
    if quantization is None:
        return
    limits = _INT_RANGES.get(dtype)
    if limits is None:
        raise ValueError(f"quantization parameters apply to int8/uint8 tensors, but dtype is {dtype}")
    low, high = limits
    if not low <= quantization.zero_point <= high:
        raise ValueError(
            f"quantization zero_point {quantization.zero_point} is outside the {dtype} range {low}..{high}"
        )


class InputSpec(Strict):
    name: str
    shape: list[Annotated[int, Field(ge=1)]]
    layout: Layout = "NCHW"
    dtype: Dtype = "float32"
    color: Literal["RGB", "BGR", "GRAY"] = "RGB"
    resize: Literal["letterbox", "stretch"] = "stretch"
    # x = (pixel * scale - mean) / std, per channel, before quantization.
    scale: float = 1.0
    mean: list[float] = Field(default_factory=lambda: [0.0])  # one value applies to every channel
    std: list[float] = Field(default_factory=lambda: [1.0])
    quantization: Quantization | None = None

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if len(self.shape) != 4:
            raise ValueError(f"input shape must have 4 dimensions (batch first), got {self.shape}")
        channels = self.channels
        if channels not in (1, 3):
            raise ValueError(f"input has {channels} channels for layout {self.layout}; expected 1 or 3")
        if (channels == 1) != (self.color == "GRAY"):
            raise ValueError(
                f"color {self.color} does not fit {channels} channel(s): "
                'use color = "GRAY" for 1 channel, RGB or BGR for 3'
            )
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise ValueError(f"{name} needs 1 or {channels} values, got {len(values)}")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        check_quantization(self.dtype, self.quantization)
        if (
            self.dtype in ("uint8", "int8")
            and self.quantization is None
            and (self.scale != 1.0 or any(self.mean) or any(s != 1 for s in self.std))
        ):
            raise ValueError(
                f"a {self.dtype} input with normalisation needs [input.quantization] scale and zero_point"
            )
        return self

    @property
    def channels(self) -> int:
        return self.shape[1] if self.layout == "NCHW" else self.shape[3]

    @property
    def height(self) -> int:
        return self.shape[2] if self.layout == "NCHW" else self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[3] if self.layout == "NCHW" else self.shape[2]


class OutputSpec(Strict):
    name: str
    shape: list[Annotated[int, Field(ge=1)]]
    dtype: Dtype = "float32"
    quantization: Quantization | None = None

    @model_validator(mode="after")
    def _check(self) -> OutputSpec:
        check_quantization(self.dtype, self.quantization)
        return self


class ClassificationDecoder(Strict):
    kind: Literal["classification"]
    top_k: Annotated[int, Field(ge=1, le=100)] = 5
    labels: str | None = None  # file beside the card, one label per line
    softmax: bool = True  # apply softmax to logits before scoring
    output: Annotated[int, Field(ge=0)] = 0


class YoloDecoder(Strict):
    """YOLO-style detections: (1, 4 + classes, N) or (1, N, 4 + classes), cx/cy/w/h in input pixels."""

    kind: Literal["yolo"]
    labels: str | None = None
    output: Annotated[int, Field(ge=0)] = 0
    transposed: bool = False  # True when the tensor is (1, N, 4 + classes)
    max_detections: Annotated[int, Field(ge=1)] = 100


class AnchorsDecoder(Strict):
    """SSD/BlazeFace anchor boxes: a regressor and a score output per anchor."""

    kind: Literal["anchors"]
    labels: str | None = None
    boxes_output: Annotated[int, Field(ge=0)] = 0
    scores_output: Annotated[int, Field(ge=0)] = 1
    strides: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [8, 16, 16, 16])
    anchor_offset: float = 0.5
    box_scale: Annotated[float, Field(gt=0)] = 128.0
    sigmoid: bool = True
    max_detections: Annotated[int, Field(ge=1)] = 100


class RawDecoder(Strict):
    """Any other model: report output shapes and summary statistics."""

    kind: Literal["raw"]


DecoderSpec = Annotated[
    ClassificationDecoder | YoloDecoder | AnchorsDecoder | RawDecoder, Field(discriminator="kind")
]


class Thresholds(Strict):
    score: Annotated[float, Field(ge=0, le=1)] = 0.25
    iou: Annotated[float, Field(ge=0, le=1)] = 0.45


class Measurement(Strict):
    """One accuracy figure of a quantized model, on the CPU class it was measured on.

    int8 kernels differ by CPU class (agent/inference/cpu_class.py), so a figure without its
    class says nothing about another one.
    """

    cpu: str  # a cpu_class name, e.g. x86_64-avx2, aarch64-neon (qemu-user)
    eval_set: str  # which images, and how many
    images: Annotated[int, Field(ge=1)]
    confident: Annotated[int, Field(ge=0)]  # images with fp32 softmax >= 0.5
    top1_confident: Annotated[float, Field(ge=0, le=1)]
    top1_confident_ci95: list[Annotated[float, Field(ge=0, le=1)]] = Field(min_length=2, max_length=2)
    top1_all: Annotated[float, Field(ge=0, le=1)]
    top5_contains: Annotated[float, Field(ge=0, le=1)]
    speedup: Annotated[float, Field(gt=0)] | None = None  # int8 vs fp32 latency on this class


class ChallengeSpec(Strict):
    """How a proof-of-inference challenge on this model is scored (read by the coordinator).

    ``tolerance`` is the relative sketch distance accepted as the same model on the same input
    (agent/protocol/challenge.py: sketch_matches); it is derived from ``spread``, the largest
    distance measured between CPU classes over ``nonces`` challenges, with a margin.
    """

    tolerance: Annotated[float, Field(gt=0, lt=1)]
    spread: Annotated[float, Field(ge=0)] | None = None
    nonces: Annotated[int, Field(ge=1)] | None = None
    measured_on: list[str] = Field(default_factory=list)
    derivation: str = ""


class ModelCard(Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    version: str
    format: Literal["onnx", "tflite"]
    file: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    license: str
    source: str
    produced_by: str = ""  # the exact command that produced the file
    description: str = ""
    model_class: str = "classifier-small"  # key into a profile's throughput bounds
    backend: Literal["onnx", "litert"] | None = None  # default follows format
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1)
    decoder: DecoderSpec
    thresholds: Thresholds = Field(default_factory=Thresholds)
    challenge: ChallengeSpec | None = None  # None: the protocol default tolerance
    measured: list[Measurement] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ModelCard:
        fits = {"onnx": "onnx", "litert": "tflite"}
        if self.backend is not None and fits[self.backend] != self.format:
            raise ValueError(f"backend '{self.backend}' cannot run a {self.format} model")
        names = [o.name for o in self.outputs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"outputs: duplicate name(s) {', '.join(duplicates)}")
        decoder = self.decoder
        indices: dict[str, int] = {}
        if isinstance(decoder, ClassificationDecoder | YoloDecoder):
            indices["output"] = decoder.output
        elif isinstance(decoder, AnchorsDecoder):
            indices["boxes_output"] = decoder.boxes_output
            indices["scores_output"] = decoder.scores_output
        for key, index in indices.items():
            if index >= len(self.outputs):
                raise ValueError(
                    f"decoder.{key} = {index}, but the card lists {len(self.outputs)} output(s) "
                    f"(indices 0..{len(self.outputs) - 1})"
                )
        return self

    @property
    def backend_key(self) -> str:
        if self.backend is not None:
            return self.backend
        return "onnx" if self.format == "onnx" else "litert"


class LoadedCard:
    """A validated card together with where it lives on disk."""

    def __init__(self, card: ModelCard, path: Path) -> None:
        self.card = card
        self.path = path

    @property
    def model_path(self) -> Path:
        return (self.path.parent / self.card.file).resolve()

    def labels(self) -> list[str] | None:
        name = getattr(self.card.decoder, "labels", None)
        if not name:
            return None
        label_path = self.path.parent / name
        try:
            lines = label_path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"{self.path}: decoder.labels file {label_path} cannot be read: {exc}") from exc
        return [line.strip() for line in lines if line.strip()]

    def read_verified_model(self) -> bytes:
        """The model bytes, after checking they exist and match the card's sha256."""
        data = self._read(lambda f: f.read())
        self._check_digest(hashlib.sha256(data).hexdigest())
        return data

    def verify_model(self) -> Path:
        """Check the model file against the card's sha256 without keeping it in memory."""
        self._check_digest(self._read(lambda f: hashlib.file_digest(f, "sha256").hexdigest()))
        return self.model_path

    def _read(self, consume: Callable[[io.BufferedReader], T]) -> T:
        path = self.model_path
        try:
            with path.open("rb") as handle:
                return consume(handle)
        except FileNotFoundError as exc:
            raise ModelError(
                f"model file {path} named by card {self.path} does not exist",
                hint="check 'file' in the card, or restore the model file",
            ) from exc
        except OSError as exc:
            raise ModelError(f"model file {path} cannot be read: {exc}") from exc

    def _check_digest(self, digest: str) -> None:
        if digest != self.card.sha256:
            raise ModelError(
                f"model file {self.model_path} has sha256 {digest}, but card {self.path} expects "
                f"{self.card.sha256}",
                hint="the file is corrupt or was replaced; restore it, or update sha256 in the card "
                "if the change is intended",
            )


def load_card(path: Path | str) -> LoadedCard:
    """Read and validate a model card file."""
    card_path = Path(path)
    if card_path.is_dir():
        raise ConfigError(f"{card_path} is a directory; pass a model card file (models/*.toml)")
    return LoadedCard(load_toml(ModelCard, card_path), card_path)
