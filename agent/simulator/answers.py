"""Challenge answers: honest ones run the real model on a worker thread.

An honest answer is :func:`agent.challenge_run.expected_sketch` on the devices' model
(one pipeline, opened once and shared: every simulated device runs the same card), the
very function a real device answers with.  Runs happen on one worker thread so neither
the timing thread nor the inbox waits for a model.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from agent.challenge_run import expected_sketch
from agent.inference.backends.base import BackendSettings
from agent.inference.pipeline import Pipeline
from agent.protocol.messages import SKETCH_SIZE, Challenge


@dataclass(frozen=True)
class Job:
    dev: str
    challenge: Challenge
    received_ms: int


#: ``send(dev, body)`` signs and publishes a challenge_response; returns its send time (ms).
Send = Callable[[str, dict[str, object]], int]
Done = Callable[[Job, int, int], None]
Failed = Callable[[Job, Exception], None]


def response(
    challenge: Challenge, sketch: list[int], latency_us: int, model_sha256: str | None = None
) -> dict[str, object]:
    return {
        "nonce": challenge.nonce,
        "model_sha256": model_sha256 or challenge.model_sha256,
        "sketch": sketch,
        "latency_us": latency_us,
    }


def wrong_model_response(challenge: Challenge, wrong_sha256: str) -> dict[str, object]:
    """An answer naming another model than the one challenged (no model run needed)."""
    return response(challenge, [0] * SKETCH_SIZE, 0, model_sha256=wrong_sha256)


class HonestAnswerer:
    """One worker thread: ``submit(job)``; ``done(job, sent_ms, latency_us)`` after publishing."""

    def __init__(self, card_path: str, send: Send, done: Done, failed: Failed) -> None:
        self._card_path = card_path
        self._send = send
        self._done = done
        self._failed = failed
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._busy = 0
        self._lock = threading.Lock()
        self.pipeline = Pipeline.open(card_path, BackendSettings(threads=1, spin_wait=False))
        self._thread = threading.Thread(target=self._work, name="sim-answers", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            self._busy += 1
        self._jobs.put(job)

    def idle(self) -> bool:
        with self._lock:
            return self._busy == 0

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                sketch, latency_us = expected_sketch(self.pipeline, job.challenge.nonce)
                sent = self._send(job.dev, response(job.challenge, sketch, latency_us))
                self._done(job, sent, latency_us)
            except Exception as exc:  # reported, so the run's summary names it; the worker goes on
                self._failed(job, exc)
            finally:
                with self._lock:
                    self._busy -= 1
