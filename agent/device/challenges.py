"""Proof of inference: answer a coordinator challenge with an output sketch.

The synthetic input is derived from the nonce (so it cannot be precomputed),
run through the active model, and the outputs are projected to 32 integers.
The coordinator runs the same model on the same input and compares
(:mod:`agent.challenge_run`, shared by both roles).
"""

from __future__ import annotations

from collections.abc import Callable

from agent.challenge_run import expected_sketch
from agent.errors import ProtocolError
from agent.inference.pipeline import Pipeline
from agent.protocol.messages import Challenge, ChallengeResponse


class ChallengeResponder:
    def __init__(self, pipeline: Pipeline, device_id: str, clock_ms: Callable[[], int]) -> None:
        self.pipeline = pipeline
        self.device_id = device_id
        self.clock_ms = clock_ms

    def answer(self, challenge: Challenge) -> ChallengeResponse:
        """Raise ProtocolError (named reason) for a challenge we must not answer."""
        if challenge.device != self.device_id:
            raise ProtocolError(f"challenge is for device {challenge.device}, not us", reason="wrong_device")
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
