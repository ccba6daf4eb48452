"""Reference execution of a proof-of-inference challenge, shared by every role.

The device answers a challenge with :func:`expected_sketch` on its active
pipeline; a coordinator runs the very same function on its own copy of the
model (found by sha256) to score the answer.  It sits beside the role
packages, not in ``agent/device``, so that a coordinator never imports device
code; it joins :mod:`agent.inference` (run a model) with
:mod:`agent.protocol.challenge` (the pure input and sketch definitions), which
know nothing of each other.
"""

from __future__ import annotations

import time

import numpy as np

from agent.inference.cards import InputSpec, ModelCard
from agent.inference.pipeline import Pipeline
from agent.inference.preprocess import Preprocessor
from agent.protocol.challenge import REL_TOL, output_sketch, sketch_matches, synthetic_input


def challenge_tensor(spec: InputSpec, nonce: str) -> np.ndarray:
    """The model input for a challenge: nonce-derived uint8 pixels, preprocessed like a frame.

    Deriving pixels (not raw tensors) keeps the input inside the model's real
    input distribution and works for every card dtype and layout alike.
    """
    pixels = synthetic_input(nonce, (spec.height, spec.width, 3), np.uint8)
    return Preprocessor(spec.model_copy(update={"resize": "stretch"}))(np.ascontiguousarray(pixels)).tensor


def expected_sketch(pipeline: Pipeline, nonce: str) -> tuple[list[int], int]:
    """(sketch, latency µs) for ``nonce`` on this pipeline's model."""
    tensor = challenge_tensor(pipeline.loaded.card.input, nonce)
    start = time.perf_counter_ns()
    outputs = pipeline.backend.run(tensor)
    latency_us = (time.perf_counter_ns() - start) // 1000
    floats = [np.asarray(o, dtype=np.float64) for o in outputs]
    return output_sketch(nonce, floats), latency_us


def card_tolerance(card: ModelCard) -> float:
    """The relative sketch tolerance a challenge on this model is scored with.

    The card's ``[challenge] tolerance`` (measured across CPU classes, see docs/models.md),
    or the protocol default :data:`~agent.protocol.challenge.REL_TOL` for a card without one.
    """
    return card.challenge.tolerance if card.challenge is not None else REL_TOL


def answer_matches(card: ModelCard, expected: list[int], answered: list[int]) -> bool:
    """Score a challenge answer against the reference sketch with the card's tolerance."""
    return sketch_matches(expected, answered, card_tolerance(card))
