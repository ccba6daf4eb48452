"""The smoke test a new model release must pass before it is activated.

:func:`smoke_test` opens the release's pipeline exactly as the daemon would (card validated,
model file checked against the card's sha256, card checked against the model's tensors),
runs one warm-up inference and then ``runs`` more on deterministic synthetic frames, and checks:

* every run returns as many outputs as the card lists, each with the card's shape
  (``output_shape``; a model with dynamic dimensions can disagree only at run time);
* float outputs are finite (``not_finite``);
* the median latency is within the firmware profile's budget for the card's model class
  (``too_slow``), when the profile has one.

A card or model that cannot be loaded fails with ``load_failed``, and any other error while
running with ``inference_failed``.  Every failure is a :class:`DeployError` with that reason.
On success the open pipeline is returned with the result, so the daemon activates the very
pipeline that was tested, without loading the model a second time.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ConfigError, DeployError, EdgeproofError
from agent.inference.backends.base import BackendSettings
from agent.inference.cards import ModelCard
from agent.inference.pipeline import Pipeline
from agent.inference.sources import synthetic_frame
from agent.profiles import Profile

log = logging.getLogger(__name__)

FRAME_WIDTH = 640
FRAME_HEIGHT = 480
FRAME_SEED = 0


@dataclass(frozen=True)
class SmokeResult:
    runs: int
    latency_ms_p50: float
    budget_ms: int | None  # None when the profile has no bound for the card's model_class
    provider: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "latency_ms_p50": round(self.latency_ms_p50, 3),
            "budget_ms": self.budget_ms,
            "provider": self.provider,
        }


def _check_outputs(card_path: Path, card: ModelCard, outputs: list[np.ndarray], index: int) -> None:
    where = f"model of card {card_path} on synthetic frame {index}"
    if len(outputs) != len(card.outputs):
        raise DeployError(
            f"{where}: {len(outputs)} output(s), the card lists {len(card.outputs)}", reason="output_shape"
        )
    for spec, output in zip(card.outputs, outputs, strict=True):
        got = list(np.shape(output))
        if got != spec.shape:
            raise DeployError(
                f"{where}: output '{spec.name}' has shape {got}, the card says {spec.shape}",
                reason="output_shape",
            )
        array = np.asarray(output)
        if np.issubdtype(array.dtype, np.floating):
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                raise DeployError(
                    f"{where}: output '{spec.name}' has {bad} non-finite value(s) (NaN or inf) "
                    f"of {array.size}",
                    reason="not_finite",
                )


def _run(pipeline: Pipeline, card_path: Path, index: int) -> tuple[list[np.ndarray], int]:
    frame = synthetic_frame(FRAME_WIDTH, FRAME_HEIGHT, FRAME_SEED, index)
    try:
        result = pipeline.step(frame)
    except Exception as exc:  # any runtime or decoder failure is the release's fault
        text = exc.message if isinstance(exc, EdgeproofError) else f"{type(exc).__name__}: {exc}"
        raise DeployError(
            f"model of card {card_path} failed on synthetic frame {index}: {text[:300]}",
            reason="inference_failed",
        ) from exc
    return result.outputs, result.latency_us


def smoke_test(
    card_path: Path,
    profile: Profile,
    settings: BackendSettings,
    *,
    runs: int = 5,
    backend_key: str | None = None,
) -> tuple[Pipeline, SmokeResult]:
    """Load and exercise a model; (the open pipeline, the result) or DeployError with a reason."""
    if runs < 1:
        raise ConfigError(f"a smoke test needs at least 1 run, got {runs}")
    try:
        pipeline = Pipeline.open(str(card_path), settings, backend_key)
    except EdgeproofError as exc:
        raise DeployError(
            f"model card {card_path} cannot be loaded: {exc.message}", reason="load_failed", hint=exc.hint
        ) from exc
    except Exception as exc:  # a runtime's own error types, for a file no check caught
        raise DeployError(
            f"model card {card_path} cannot be loaded: {type(exc).__name__}: {str(exc)[:300]}",
            reason="load_failed",
        ) from exc
    card = pipeline.loaded.card

    outputs, _ = _run(pipeline, card_path, 0)  # warm-up: first-run allocations are not timed
    _check_outputs(card_path, card, outputs, 0)
    latencies: list[int] = []
    for index in range(1, runs + 1):
        outputs, latency_us = _run(pipeline, card_path, index)
        _check_outputs(card_path, card, outputs, index)
        latencies.append(latency_us)

    p50_ms = statistics.median(latencies) / 1000
    bounds = profile.throughput.get(card.model_class)
    budget = bounds.latency_budget_ms if bounds is not None else None
    if budget is not None and p50_ms > budget:
        raise DeployError(
            f"model of card {card_path} is too slow: median latency {p50_ms:.2f} ms over {runs} runs, "
            f"the budget of profile {profile.id} for model class {card.model_class} is {budget} ms",
            reason="too_slow",
        )
    result = SmokeResult(runs, p50_ms, budget, pipeline.backend.info.provider)
    log.info("model smoke test passed", extra={"card": str(card_path), **result.to_dict()})
    return pipeline, result
