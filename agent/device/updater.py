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
  What a failed release left (staging files, an installed folder that is not the current or
  previous release) is deleted.  A newer release offered on the same channel supersedes one
  that is waiting or downloading (``failed``, reason ``superseded``; its files are deleted).
  A stop (shutdown) is not a failure: the partial download stays for the next start, where
  :meth:`ModelUpdater.clean_staging` deletes only what no offered release needs.
* An expired manifest never starts or resumes a download or an install: the expiry is checked
  when the release is offered, when its preparation starts and again before it is installed.
* A committed release's manifest version is remembered per channel too (a state store record,
  written once ``committed`` is reported): the broker re-delivering, or a restart re-judging, a
  manifest at or below it never installs anything again, so a stored older release can never
  replace a newer active one (issue 9, defect 2).  A daemon that lost power after the pointer
  said committed but before ``committed`` was reported reports it at its next start.
* The card in the release must name the manifest's model: its ``id``, ``version``, ``file`` and
  ``sha256`` equal the manifest's ``model_id``, ``model_version``, ``model`` and model artifact's
  sha256, else ``card_mismatch``.
* A halted manifest (``halted: true``, the rollout controller's stop, docs/fleet.md) is never
  offered: :meth:`ModelUpdater.halt` drops its release if it is waiting, stops it if it is
  downloading or being smoke-tested, and drops it if it is smoke-tested but not yet activated
  (``failed``, reason ``halted``; its files are deleted).  An active release (on trial or
  committed) stays: a halt stops a rollout, only a rollback manifest takes a model back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.device.download import DEFAULT_DEADLINE_FLOOR_S, DEFAULT_MIN_RATE_BPS, fetch_artifact
from agent.device.holds import hold
from agent.device.manifests import expiry_problem
from agent.device.model_store import Active, ModelStore, Release
from agent.device.smoke import SmokeResult, smoke_test
from agent.device.state_store import StateStore
from agent.errors import DeployError, EdgeproofError, StorageError
from agent.inference.backends.base import BackendSettings
from agent.inference.cards import ModelCard, load_card
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


def committed_version_key(channel: str) -> str:
    """The state store record naming the manifest version of ``channel`` last reported committed."""
    return f"deploy.{channel}.committed_version"


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
        download_min_rate_bps: int = DEFAULT_MIN_RATE_BPS,
        download_deadline_floor_s: float = DEFAULT_DEADLINE_FLOOR_S,
        clock: Callable[[], float] = time.monotonic,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
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
        self.download_limits = (download_min_rate_bps, download_deadline_floor_s)
        self.clock = clock
        self.clock_ms = clock_ms
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict[str, Manifest] = {}
        self._busy: Manifest | None = None  # the manifest being prepared
        self._job_stop = threading.Event()  # stops the release being prepared (stop, supersede)
        self._superseded = False
        self._halted = False
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
            except EdgeproofError as exc:
                log.error("active model unusable", extra={"card": str(card), "error": exc.message})
                active = self._roll_back(active, "unusable")
                continue
            if active.state == "committed":
                self._report_committed_once(active.current)
            return card, active.current
        return self.fallback_card, None

    # ------------------------------------------------------------------ offers (transport thread)

    def offer(self, manifest: Manifest) -> None:
        """An accepted, eligible manifest: prepare it unless it runs already, failed or expired.

        A different release on a channel whose release is waiting or being prepared supersedes it.
        """
        release = Release.from_manifest(manifest)
        expired = expiry_problem(manifest, self.clock_ms())
        if expired is not None:
            log.info("expired manifest not prepared", extra={"release": release.key, "error": expired})
            return
        if self.state.record(failed_key(manifest.channel)) == manifest.version:
            return
        committed = self.state.record(committed_version_key(manifest.channel))
        if isinstance(committed, int) and manifest.version <= committed:
            # Already committed at or after this version on the channel (defect 2: no silent downgrade).
            return
        if self._active_key() == release.key:
            return
        with self._wake:
            if self._busy_key() == release.key or (self._ready and self._ready.release.key == release.key):
                return
            replaced = self._pending.get(manifest.channel)
            self._pending[manifest.channel] = manifest
            busy = self._busy
            if busy is not None and busy.channel == manifest.channel:
                self._superseded = True
                self._job_stop.set()
            self._wake.notify()
        if replaced is not None and Release.from_manifest(replaced).key != release.key:
            self._superseded_release(replaced)

    def committed_key(self) -> str | None:
        """The key of the release the device runs committed (None: none, or on trial)."""
        try:
            active = self.store.active()
        except StorageError:
            return None
        return active.current.key if active is not None and active.state == "committed" else None

    def _active_key(self) -> str | None:
        try:
            active = self.store.active()
        except StorageError:
            return None
        return None if active is None else active.current.key

    def _busy_key(self) -> str | None:
        return None if self._busy is None else Release.from_manifest(self._busy).key

    def _needed_keys(self) -> set[str]:
        """Release keys still waiting or being prepared (call with the lock held)."""
        keys = {Release.from_manifest(m).key for m in self._pending.values()}
        busy = self._busy_key()
        return keys | ({busy} if busy is not None else set())

    def clean_staging(self) -> list[str]:
        """Delete staging files no waiting or running release needs (at start, after the offers)."""
        with self._lock:
            return self.store.clean_staging(self._needed_keys())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._worker, name="model-updater", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._wake:
            self._job_stop.set()  # under the lock: the job the worker may just have started
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
                self._busy, self._superseded, self._halted = manifest, False, False
                self._job_stop = threading.Event()
            error: tuple[str, str] | None = None
            try:
                ready = self._prepare(manifest)
            except DeployError as exc:
                error = (exc.reason, exc.message)
            except EdgeproofError as exc:
                error = ("failed", exc.message)
            except Exception as exc:  # a bug must not kill the updater thread silently
                log.exception("model updater crashed on a release")
                error = ("internal_error", str(exc))
            with self._lock:
                self._busy = None
                if error is None:
                    self._ready = ready
                superseded, halted = self._superseded, self._halted
            if error is None:
                if halted:  # the halt came as the smoke test finished
                    self._drop_ready(Release.from_manifest(manifest).key)
                continue
            if halted:
                self._halted_release(manifest)
            elif error[0] != "cancelled":
                self._failed(manifest, *error)
            elif superseded:
                self._superseded_release(manifest)
            else:  # shutdown: the partial download is kept for the next start
                log.info("model release paused", extra={"release": Release.from_manifest(manifest).key})

    def _check_expiry(self, manifest: Manifest) -> None:
        problem = expiry_problem(manifest, self.clock_ms())
        if problem is not None:
            raise DeployError(problem, reason="expired")

    def _prepare(self, manifest: Manifest) -> _Ready:
        release = Release.from_manifest(manifest)
        self._check_expiry(manifest)
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
                    stop=self._job_stop,
                    min_rate_bps=self.download_limits[0],
                    deadline_floor_s=self.download_limits[1],
                )
                done += artifact.length
                if done < total:
                    hold("download")
            self._check_expiry(manifest)
            self.store.install(release)
        self.report(deploy_body(release, "staged"))
        hold("verify")
        card_path = self.store.card_path(release)
        _check_card(manifest, load_card(card_path).card)
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
        self._discard(release)
        self.report(deploy_body(release, "failed", reason=reason))

    def halt(self, manifest: Manifest) -> bool:
        """The rollout of ``manifest``'s release is halted: stop it unless it is already active.

        Returns True when something was stopped or dropped (waiting, downloading, smoke-tested).
        """
        key = Release.from_manifest(manifest).key
        with self._wake:
            pending = self._pending.get(manifest.channel)
            dropped = pending if pending is not None and Release.from_manifest(pending).key == key else None
            if dropped is not None:
                del self._pending[manifest.channel]
            busy = self._busy is not None and self._busy_key() == key
            if busy:
                self._halted = True
                self._job_stop.set()
        if dropped is not None:
            self._halted_release(dropped)
        return self._drop_ready(key) or busy or dropped is not None

    def _drop_ready(self, key: str) -> bool:
        with self._lock:
            ready = self._ready if self._ready is not None and self._ready.release.key == key else None
            if ready is not None:
                self._ready = None
        if ready is not None:
            self._halted_release(ready.manifest)
        return ready is not None

    def _halted_release(self, manifest: Manifest) -> None:
        release = Release.from_manifest(manifest)
        log.info("model release halted", extra={"release": release.key})
        self._discard(release)
        self.report(deploy_body(release, "failed", reason="halted"))

    def _superseded_release(self, manifest: Manifest) -> None:
        """A newer release on the channel replaced this one before it was ready."""
        release = Release.from_manifest(manifest)
        log.info("model release superseded", extra={"release": release.key})
        self._discard(release)
        self.report(deploy_body(release, "failed", reason="superseded"))

    def _discard(self, release: Release) -> None:
        with self._lock:
            if release.key in self._needed_keys():
                return  # the same release is offered again (another channel or manifest version)
            self.store.discard(release)

    # ------------------------------------------------------------------ main loop

    @property
    def in_trial(self) -> bool:
        return self._trial_until is not None

    def poll(self) -> Swap | None:
        """Commit a finished trial; hand over a smoke-tested release (the caller swaps to it)."""
        if self._trial_until is not None and self.clock() >= self._trial_until:
            self._trial_until = None
            active = self.store.commit()
            hold("commit")
            self._report_committed_once(active.current)
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is None:
            return None
        self.store.activate(ready.release)
        hold("activate")
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

    def _report_committed_once(self, release: Release) -> None:
        """Report ``committed`` unless the record says it was (at commit, or at the start after a crash)."""
        key = committed_version_key(release.channel)
        try:
            done = self.state.record(key)
        except EdgeproofError as exc:  # reported again rather than not at all
            log.warning("committed release version unreadable", extra={"error": exc.message})
            done = None
        if isinstance(done, int) and done >= release.manifest_version:
            return
        self.report(deploy_body(release, "committed"))
        try:
            self.state.set_record(key, release.manifest_version)
        except EdgeproofError as exc:
            log.warning("committed release version not stored", extra={"error": exc.message})

    def _roll_back(self, active: Active, reason: str) -> Active | None:
        failed = active.current
        restored = self.store.rollback()
        try:
            self.state.set_record(failed_key(failed.channel), failed.manifest_version)
        except EdgeproofError as exc:
            log.warning("failed release version not stored", extra={"error": exc.message})
        self.report(deploy_body(failed, "rolled_back", reason=reason))
        return restored


def _check_card(manifest: Manifest, card: ModelCard) -> None:
    """The card must name the manifest's model: id, version, file and sha256 (``card_mismatch``)."""
    pairs = (
        ("id", card.id, "model_id", manifest.model_id),
        ("version", card.version, "model_version", manifest.model_version),
        ("file", card.file, "model", manifest.model),
        ("sha256", card.sha256, "model artifact sha256", manifest.model_sha256),
    )
    wrong = [f"card {a} {x!r} != manifest {b} {y!r}" for a, x, b, y in pairs if x != y]
    if wrong:
        raise DeployError(
            f"card {manifest.card} does not describe the manifest's model: {'; '.join(wrong)}",
            reason="card_mismatch",
            hint="publish the card that describes the model artifact (fleet publish builds it from the card)",
        )
