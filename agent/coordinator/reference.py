"""Reference execution: the coordinator runs the challenged model itself, off the ingest thread.

:class:`ModelStore` maps a model's sha256 to its card in the configured models folder (the
shipped ``models/`` and whatever fleet operators publish there).  :class:`ReferenceRunner`
is one worker thread: it takes ``(challenge id, sha256, nonce)`` jobs, opens the model once
(cached per sha256), computes :func:`agent.challenge_run.expected_sketch` -- the very
function a device answers with -- and hands ``(challenge id, sketch or error)`` back to the
service's main thread, which scores and commits.  Ingest never waits for a model run.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.challenge_run import card_tolerance, expected_sketch
from agent.inference.backends.base import BackendSettings
from agent.inference.cards import LoadedCard, load_card
from agent.inference.pipeline import Pipeline
from agent.protocol.challenge import REL_TOL

log = logging.getLogger("edgeproof.coordinator")


class ModelStore:
    """sha256 -> model card of every ``*.toml`` card in a folder (a card that fails to load is skipped)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cards: dict[str, LoadedCard] = {}
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            try:
                loaded = load_card(path)
            except Exception as exc:  # a broken card must not stop the coordinator
                log.warning("model_card_skipped", extra={"card": str(path), "error": str(exc)[:200]})
                continue
            self.cards[loaded.card.sha256] = loaded

    def has(self, sha256: str) -> bool:
        return sha256 in self.cards

    def tolerance(self, sha256: str) -> float:
        """The model's challenge tolerance: its card's ``[challenge]`` one, else REL_TOL."""
        loaded = self.cards.get(sha256)
        return card_tolerance(loaded.card) if loaded is not None else REL_TOL


@dataclass(frozen=True)
class ReferenceJob:
    challenge_id: int
    model_sha256: str
    nonce: str


@dataclass(frozen=True)
class ReferenceResult:
    challenge_id: int
    sketch: list[int] | None
    error: str | None = None


class ReferenceRunner:
    """One worker thread running reference sketches; results are polled by the main thread."""

    def __init__(self, models: ModelStore, threads: int = 1) -> None:
        self.models = models
        self._settings = BackendSettings(threads=threads, spin_wait=False)
        self._jobs: queue.Queue[ReferenceJob | None] = queue.Queue()
        self._results: queue.Queue[ReferenceResult] = queue.Queue()
        self._pipelines: dict[str, Pipeline] = {}
        self._queued: set[int] = set()
        self._thread = threading.Thread(target=self._work, name="reference-runner", daemon=True)
        self._thread.start()

    def submit(self, job: ReferenceJob) -> None:
        """Queue a job (a challenge already queued is not queued twice)."""
        if job.challenge_id in self._queued:
            return
        self._queued.add(job.challenge_id)
        self._jobs.put(job)

    def results(self) -> list[ReferenceResult]:
        out: list[ReferenceResult] = []
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return out
            self._queued.discard(result.challenge_id)
            out.append(result)

    def idle(self) -> bool:
        return not self._queued

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _pipeline(self, sha256: str) -> Pipeline:
        pipeline = self._pipelines.get(sha256)
        if pipeline is None:
            loaded = self.models.cards[sha256]
            pipeline = Pipeline.open(str(loaded.path), self._settings)
            self._pipelines[sha256] = pipeline
        return pipeline

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                sketch, _ = expected_sketch(self._pipeline(job.model_sha256), job.nonce)
                self._results.put(ReferenceResult(job.challenge_id, sketch))
            except Exception as exc:  # reported as a result: the challenge is not scored
                log.exception("reference_run_failed", extra={"challenge": job.challenge_id})
                self._results.put(
                    ReferenceResult(job.challenge_id, None, f"{type(exc).__name__}: {exc}"[:200])
                )
