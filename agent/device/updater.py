"""The model updater: an accepted manifest becomes the running model, or is rolled back.

Stages, each reported to the operator as a ``deploy`` message on ``dev/{dev}/deploy``::

    received -> downloading (progress) -> staged -> smoke_test -> activated -> committed
                      \\-> failed (reason)          \\-> failed     \\-> rolled_back (reason)

* A worker thread downloads the artifacts into the store's staging folder (HTTP Range resume,
  SHA-256 and length checked, agent/device/download.py), installs them as an immutable release
  folder and smoke-tests the new model (agent/device/smoke.py).  Inference, heartbeats and
  proofs go on meanwhile with the current model.
* The main loop takes the smoke-tested pipeline (:meth:`ModelUpdater.poll`), closes the work
  window of the old model and swaps; the store's pointer flips atomically and keeps the
  previous committed release.  The new model is on *trial* for ``trial_s``: an inference
  error during the trial rolls back to the previous release (or the configured model).  A
  daemon that dies during a trial (e.g. the new model crashes the runtime) rolls back when it
  starts again.  After a clean trial the release is committed and older ones are pruned.
* A failed release version is remembered per channel (a record in the device state store), so the
  broker re-delivering the retained manifest does not start the same failing download again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.device.download import fetch_artifact
from agent.device.model_store import Active, ModelStore, Release
from agent.device.smoke import SmokeResult, smoke_test
from agent.device.state_store import StateStore
from agent.errors import DeployError, EdgeproofError, StorageError
from agent.inference.backends.base import BackendSettings
from agent.inference.cards import load_card
from agent.inference.pipeline import Pipeline
from agent.profiles import Profile
from agent.protocol.messages import Deploy, DeployState, Manifest

log = logging.getLogger(__name__)

#: Report download progress at most every this many basis points.
PROGRESS_STEP_BP = 2_500

Report = Callable[[Deploy], None]


def failed_key(channel: str) -> str:
    """The state store record naming the last failed manifest version of ``channel``."""
    return f"deploy.{channel}.failed_version"


@dataclass(frozen=True)
class Swap:
    """What the main loop must run from now on."""

    pipeline: Pipeline
    release: Release | None  # None: the configured model


@dataclass(frozen=True)
class _Ready:
    manifest: Manifest
    release: Release
    pipeline: Pipeline
    smoke: SmokeResult


def deploy_body(
    release: Release, state: DeployState, *, reason: str | None = None, progress_bp: int | None = None
) -> Deploy:
    return Deploy(
        channel=release.channel,
        manifest_version=release.manifest_version,
        model_id=release.model_id,
        model_sha256=release.model_sha256,
        state=state,
        reason=reason,
        progress_bp=progress_bp,
    )


class ModelUpdater:
    def __init__(
        self,
        store: ModelStore,
        profile: Profile,
        settings: BackendSettings,
        report: Report,
        state: StateStore,
        *,
        fallback_card: Path,
        open_pipeline: Callable[[Path], Pipeline],
        trial_s: float = 60.0,
        download_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.profile = profile
        self.settings = settings
        self.report = report
        self.state = state
        self.fallback_card = fallback_card
        self.open_pipeline = open_pipeline
        self.trial_s = trial_s
        self.download_timeout_s = download_timeout_s
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict[str, Manifest] = {}
        self._busy: str | None = None  # release key being prepared
        self._ready: _Ready | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trial_until: float | None = None

    # ------------------------------------------------------------------ startup (main thread)

    def startup_card(self) -> tuple[Path, Release | None]:
        """The card to run at start: the active release, unless it died on trial or is unusable."""
        try:
            active = self.store.active()
        except StorageError as exc:
            log.error("model pointer unreadable; running the configured model", extra={"error": exc.message})
            return self.fallback_card, None
        if active is None:
            return self.fallback_card, None
        if active.state == "trial":
            # The last run stopped while this release was on trial: it may have crashed us.
            active = self._roll_back(active, "crashed_in_trial")
        while active is not None:
            card = self.store.card_path(active.current)
            try:
                load_card(card).verify_model()
                return card, active.current
            except EdgeproofError as exc:
                log.error("active model unusable", extra={"card": str(card), "error": exc.message})
                active = self._roll_back(active, "unusable")
        return self.fallback_card, None

    # ------------------------------------------------------------------ offers (transport thread)

    def offer(self, manifest: Manifest) -> None:
        """An accepted, eligible manifest: prepare it unless it runs already or failed before."""
        release = Release.from_manifest(manifest)
        if self.state.record(failed_key(manifest.channel)) == manifest.version:
            return
        try:
            active = self.store.active()
        except StorageError:
            active = None
        if active is not None and active.current.key == release.key:
            return
        with self._wake:
            if self._busy == release.key or (self._ready and self._ready.release.key == release.key):
                return
            self._pending[manifest.channel] = manifest
            self._wake.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._worker, name="model-updater", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker thread

    def _worker(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                while not self._pending and not self._stop.is_set():
                    self._wake.wait(1.0)
                if self._stop.is_set():
                    return
                channel = next(iter(self._pending))
                manifest = self._pending.pop(channel)
                self._busy = Release.from_manifest(manifest).key
            try:
                ready = self._prepare(manifest)
            except DeployError as exc:
                self._failed(manifest, exc.reason, exc.message)
            except EdgeproofError as exc:
                self._failed(manifest, "failed", exc.message)
            except Exception as exc:  # a bug must not kill the updater thread silently
                log.exception("model updater crashed on a release")
                self._failed(manifest, "internal_error", str(exc))
            else:
                with self._lock:
                    self._ready = ready
            finally:
                with self._lock:
                    self._busy = None

    def _prepare(self, manifest: Manifest) -> _Ready:
        release = Release.from_manifest(manifest)
        self.report(deploy_body(release, "received"))
        if not self.store.is_installed(release):
            staging = self.store.staging_dir(release)
            total = manifest.total_bytes
            done = 0
            reported = -PROGRESS_STEP_BP
            for artifact in manifest.artifacts:

                def progress(got: int, _length: int, base: int = done) -> None:
                    nonlocal reported
                    bp = min(10_000, (base + got) * 10_000 // total)
                    if bp - reported >= PROGRESS_STEP_BP or (bp == 10_000 and reported < 10_000):
                        reported = bp
                        self.report(deploy_body(release, "downloading", progress_bp=bp))

                fetch_artifact(
                    artifact,
                    staging,
                    timeout_s=self.download_timeout_s,
                    on_progress=progress,
                    stop=self._stop,
                )
                done += artifact.length
            self.store.install(release)
        self.report(deploy_body(release, "staged"))
        card_path = self.store.card_path(release)
        loaded = load_card(card_path)
        if loaded.card.file != manifest.model or loaded.card.sha256 != manifest.model_sha256:
            raise DeployError(
                f"card {manifest.card} names {loaded.card.file} (sha256 {loaded.card.sha256[:12]}...), not the "
                f"manifest's model {manifest.model} (sha256 {manifest.model_sha256[:12]}...)",
                reason="card_mismatch",
            )
        self.report(deploy_body(release, "smoke_test"))
        pipeline, smoke = smoke_test(card_path, self.profile, self.settings)
        log.info("model release ready", extra={"release": release.key, **smoke.to_dict()})
        return _Ready(manifest, release, pipeline, smoke)

    def _failed(self, manifest: Manifest, reason: str, message: str) -> None:
        release = Release.from_manifest(manifest)
        log.error(
            "model release failed", extra={"release": release.key, "reason": reason, "error": message[:300]}
        )
        try:
            self.state.set_record(failed_key(manifest.channel), manifest.version)
        except EdgeproofError as exc:
            log.warning("failed release version not stored", extra={"error": exc.message})
        self.report(deploy_body(release, "failed", reason=reason))

    # ------------------------------------------------------------------ main loop

    @property
    def in_trial(self) -> bool:
        return self._trial_until is not None

    def poll(self) -> Swap | None:
        """Commit a finished trial; hand over a smoke-tested release (the caller swaps to it)."""
        if self._trial_until is not None and self.clock() >= self._trial_until:
            self._trial_until = None
            active = self.store.commit()
            self.report(deploy_body(active.current, "committed"))
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is None:
            return None
        self.store.activate(ready.release)
        self._trial_until = self.clock() + self.trial_s
        self.report(deploy_body(ready.release, "activated"))
        return Swap(ready.pipeline, ready.release)

    def trial_failed(self, error: str) -> Swap:
        """The model on trial failed: roll back and return what to run instead."""
        self._trial_until = None
        log.error("model on trial failed; rolling back", extra={"error": error[:300]})
        try:
            active = self.store.active()
        except StorageError:
            active = None
        restored = self._roll_back(active, "trial_failed") if active is not None else None
        card = self.store.card_path(restored.current) if restored is not None else self.fallback_card
        pipeline = self.open_pipeline(card)
        return Swap(pipeline, restored.current if restored is not None else None)

    def _roll_back(self, active: Active, reason: str) -> Active | None:
        failed = active.current
        restored = self.store.rollback()
        try:
            self.state.set_record(failed_key(failed.channel), failed.manifest_version)
        except EdgeproofError as exc:
            log.warning("failed release version not stored", extra={"error": exc.message})
        self.report(deploy_body(failed, "rolled_back", reason=reason))
        return restored
