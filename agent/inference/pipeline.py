"""The agent's inference path: frame -> preprocess -> backend -> commitments -> decode.

Each step returns what the model saw (the resized uint8 image, the smallest
tensor that binds the input) and what it produced (the raw output tensors);
the daemon hands both to :mod:`agent.device.commitments`, whose SHA-256
digests become the leaves of a work proof's Merkle roots.  The frame itself
never leaves the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.inference.backends import create_backend
from agent.inference.backends.base import Backend, BackendSettings
from agent.inference.cards import LoadedCard, load_card
from agent.inference.decoders import Decoder, Prediction, create_decoder
from agent.inference.preprocess import Preprocessor


@dataclass(frozen=True)
class StepResult:
    latency_us: int  # backend.run only
    predictions: list[Prediction]
    resized: np.ndarray  # what the model saw, uint8: the input commitment's preimage
    outputs: list[np.ndarray]


def percentiles_us(latencies: list[int]) -> dict[str, int]:
    if not latencies:
        return {"p50": 0, "p95": 0, "p99": 0}
    values = np.asarray(latencies, dtype=np.int64)
    p50, p95, p99 = np.percentile(values, [50, 95, 99], method="nearest")
    return {"p50": int(p50), "p95": int(p95), "p99": int(p99)}


@dataclass
class LatencyStats:
    samples: list[int] = field(default_factory=list)

    def add(self, latency_us: int) -> None:
        self.samples.append(latency_us)

    def summary(self) -> dict[str, int]:
        return percentiles_us(self.samples)

    def reset(self) -> None:
        self.samples.clear()


class Pipeline:
    def __init__(self, loaded: LoadedCard, backend: Backend, decoder: Decoder) -> None:
        self.loaded = loaded
        self.backend = backend
        self.decoder = decoder
        self.preprocess = Preprocessor(loaded.card.input)

    @classmethod
    def open(cls, card_path: str, settings: BackendSettings, backend_key: str | None = None) -> Pipeline:
        loaded = load_card(card_path)
        backend = create_backend(loaded, settings, backend_key)
        return cls(loaded, backend, create_decoder(loaded))

    def infer_tensor(self, tensor: np.ndarray) -> tuple[list[np.ndarray], int]:
        start = time.perf_counter_ns()
        outputs = self.backend.run(tensor)
        return outputs, (time.perf_counter_ns() - start) // 1000

    def step(self, frame_bgr: np.ndarray) -> StepResult:
        prepared = self.preprocess(frame_bgr)
        outputs, latency_us = self.infer_tensor(prepared.tensor)
        predictions = self.decoder.decode(outputs, prepared.geometry)
        return StepResult(latency_us, predictions, prepared.resized, outputs)

    def describe(self) -> dict[str, Any]:
        info = self.backend.info
        card = self.loaded.card
        return {
            "model": card.id,
            "model_version": card.version,
            "model_sha256": card.sha256,
            "backend": info.backend,
            "runtime": info.runtime,
            "provider": info.provider,
            "providers_skipped": info.skipped,
            "threads": info.threads,
        }
