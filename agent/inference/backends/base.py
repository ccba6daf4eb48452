"""The one contract every inference backend implements.

A backend is created from a verified model card and the settings that came
from the firmware profile (and config overrides).  It reports the execution
provider or delegate that actually runs, and exposes the bare runtime call so
benchmarks can compare the agent's path against it on the same session.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from agent.errors import ModelError
from agent.inference.cards import LoadedCard, ModelCard, Quantization

Array = np.ndarray


@dataclass(frozen=True)
class BackendSettings:
    threads: int = 2
    onnx_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    litert_delegates: tuple[str, ...] = ("xnnpack",)
    # ONNX Runtime's intra-op workers spin after each run waiting for the next one.  That buys
    # throughput when inferences run back to back, and burns ~5x the CPU of the inference itself
    # when the daemon paces frames (max_fps > 0), so the daemon turns it off there.
    spin_wait: bool = True
    # TensorRT engine/timing cache folder; empty: TensorRT rebuilds its engine in every session.
    tensorrt_cache: str = ""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str | None, ...]
    dtype: str
    # (scale, zero_point) when the model file records per-tensor quantization (TFLite does;
    # ONNX graph inputs/outputs carry none).
    quantization: tuple[float, int] | None = None


@dataclass
class BackendInfo:
    backend: str
    runtime: str  # e.g. "onnxruntime 1.31.1"
    provider: str  # what actually runs, e.g. CPUExecutionProvider, xnnpack
    threads: int
    skipped: list[str] = field(default_factory=list)  # requested but unavailable, with reason


class Backend(abc.ABC):
    key: ClassVar[str]

    def __init__(self, loaded: LoadedCard, settings: BackendSettings) -> None:
        self.loaded = loaded
        self.settings = settings

    @property
    @abc.abstractmethod
    def info(self) -> BackendInfo: ...

    @abc.abstractmethod
    def inputs(self) -> list[TensorInfo]: ...

    @abc.abstractmethod
    def outputs(self) -> list[TensorInfo]: ...

    @abc.abstractmethod
    def run(self, tensor: Array) -> list[Array]:
        """Run one inference on a preprocessed input tensor; outputs in card order."""

    @abc.abstractmethod
    def bare_call(self) -> Callable[[Array], object]:
        """The plain runtime call (``session.run`` / ``invoke``) for the bare benchmark loop."""


def _dims_match(card_shape: Sequence[int], model_shape: Sequence[int | str | None]) -> bool:
    if len(card_shape) != len(model_shape):
        return False
    return all(
        not isinstance(m, int) or m <= 0 or m == c for c, m in zip(card_shape, model_shape, strict=True)
    )


def _quant_text(q: tuple[float, int] | None) -> str:
    return "none" if q is None else f"scale={q[0]:.8g}, zero_point={q[1]}"


def _quant_problem(what: str, card_q: Quantization | None, model: TensorInfo) -> str | None:
    """A difference between the card's and the model file's quantization parameters, if any."""
    if model.quantization is None:
        return None  # the model file records none: nothing to compare against
    card = None if card_q is None else (card_q.scale, card_q.zero_point)
    if (
        card is not None
        and card[1] == model.quantization[1]
        and math.isclose(card[0], model.quantization[0], rel_tol=1e-5)
    ):
        return None
    return f"{what} quantization: card says {_quant_text(card)}, model has {_quant_text(model.quantization)}"


def _is_identity(card: ModelCard) -> bool:
    """The card feeds raw pixels (no normalisation): the model's own quantization is not needed."""
    spec = card.input
    return spec.scale == 1.0 and not any(spec.mean) and all(s == 1 for s in spec.std)


def check_card_against(loaded: LoadedCard, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
    """Refuse a card that does not describe its model, listing every difference."""
    card = loaded.card
    problems: list[str] = []
    if len(inputs) != 1:
        problems.append(
            f"model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); cards describe 1"
        )
    else:
        model_in = inputs[0]
        if model_in.name != card.input.name:
            problems.append(f"input name: card says '{card.input.name}', model has '{model_in.name}'")
        if not _dims_match(card.input.shape, model_in.shape):
            problems.append(f"input shape: card says {card.input.shape}, model has {list(model_in.shape)}")
        if model_in.dtype != card.input.dtype:
            problems.append(f"input dtype: card says {card.input.dtype}, model has {model_in.dtype}")
        elif card.input.dtype in ("uint8", "int8"):
            problem = _quant_problem("input", card.input.quantization, model_in)
            if problem and not (card.input.quantization is None and _is_identity(card)):
                problems.append(problem)
    if len(outputs) != len(card.outputs):
        problems.append(
            f"outputs: card lists {len(card.outputs)}, model has {len(outputs)} "
            f"({', '.join(o.name for o in outputs)})"
        )
    else:
        by_name = {o.name: o for o in outputs}
        for index, spec in enumerate(card.outputs):
            model_out = by_name.get(spec.name)
            if model_out is None:
                problems.append(
                    f"outputs[{index}] name: card says '{spec.name}', model has "
                    f"{', '.join(repr(o.name) for o in outputs)}"
                )
                continue
            if not _dims_match(spec.shape, model_out.shape):
                problems.append(
                    f"output '{spec.name}' shape: card says {spec.shape}, model has {list(model_out.shape)}"
                )
            if model_out.dtype != spec.dtype:
                problems.append(
                    f"output '{spec.name}' dtype: card says {spec.dtype}, model has {model_out.dtype}"
                )
            elif spec.dtype in ("uint8", "int8") and spec.quantization is not None:
                problem = _quant_problem(f"output '{spec.name}'", spec.quantization, model_out)
                if problem:
                    problems.append(problem)
    if problems:
        raise ModelError(
            f"card {loaded.path} does not match model {loaded.model_path}:\n  - " + "\n  - ".join(problems),
            hint="fix the card to describe the model (every difference is listed above)",
        )
