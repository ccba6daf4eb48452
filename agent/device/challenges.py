"""Proof of inference: answer a coordinator challenge with an output sketch.

The synthetic input is derived from the nonce (so it cannot be precomputed),
run through the active model, and the outputs are projected to 32 integers.
The coordinator runs the same model on the same input and compares.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from agent.errors import ProtocolError
from agent.inference.cards import InputSpec
from agent.inference.pipeline import Pipeline
from agent.protocol.challenge import output_sketch, synthetic_input
from agent.protocol.messages import Challenge, ChallengeResponse


def challenge_tensor(spec: InputSpec, nonce: str) -> np.ndarray:
    """The model input for a challenge: nonce-derived uint8 pixels, preprocessed like a frame.

    Deriving pixels (not raw tensors) keeps the input inside the model's real
    input distribution and works for every card dtype and layout alike.
    """
    pixels = synthetic_input(nonce, (spec.height, spec.width, 3), np.uint8)
    from agent.inference.preprocess import Preprocessor

    return Preprocessor(spec.model_copy(update={"resize": "stretch"}))(np.ascontiguousarray(pixels)).tensor


def expected_sketch(pipeline: Pipeline, nonce: str) -> tuple[list[int], int]:
    """(sketch, latency µs) for ``nonce`` on this pipeline's model; used by both roles."""
    tensor = challenge_tensor(pipeline.loaded.card.input, nonce)
    start = time.perf_counter_ns()
    outputs = pipeline.backend.run(tensor)
    latency_us = (time.perf_counter_ns() - start) // 1000
    floats = [np.asarray(o, dtype=np.float64) for o in outputs]
    return output_sketch(nonce, floats), latency_us


class ChallengeResponder:
    def __init__(self, pipeline: Pipeline, device_id: str, clock_ms: Callable[[], int]) -> None:
        self.pipeline = pipeline
        self.device_id = device_id
        self.clock_ms = clock_ms

    def answer(self, challenge: Challenge) -> ChallengeResponse:
        """Raise ProtocolError (named reason) for a challenge we must not answer."""
        if challenge.device != self.device_id:
            raise ProtocolError(
                f"challenge is for device {challenge.device}, not us", reason="unknown_device"
            )
        active = self.pipeline.loaded.card.sha256
        if challenge.model_sha256 != active:
            raise ProtocolError(
                f"challenge names model {challenge.model_sha256[:12]}..., active model is {active[:12]}...",
                reason="wrong_model",
            )
        if self.clock_ms() > challenge.deadline_ms:
            raise ProtocolError("challenge deadline already passed", reason="expired")
        sketch, latency_us = expected_sketch(self.pipeline, challenge.nonce)
        return ChallengeResponse(
            nonce=challenge.nonce, model_sha256=active, sketch=sketch, latency_us=min(latency_us, 2**32 - 1)
        )
