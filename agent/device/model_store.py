"""The device's versioned model store: installed releases, one active pointer, rollback.

Layout under ``root``: ``.staging/<key>/`` (files being downloaded), ``<key>/`` (an installed
release, never modified) and ``active.json`` (the pointer), ``key`` being
``{model_id}-{model_version}-{model_sha256[:12]}``.  Every step survives a crash: installing
fsyncs the staged files and renames the staging folder into place; the pointer is written to
``.active.json.tmp``, fsynced and renamed over ``active.json``, then ``root`` is fsynced.

A newly activated release is on ``trial``; :meth:`ModelStore.commit` marks it ``committed``
and deletes every release folder that is neither current nor previous.  Only a committed
release becomes the fallback (``previous``) of the next activation: a release that never
passed its trial is never rolled back to.  :meth:`ModelStore.rollback` returns to the previous
release or, without one, removes the pointer (the daemon then runs its configured model).
Releases this store object installed and has not yet activated survive commit's pruning: the
updater prepares the next release while the current one is on trial.

Nothing is left behind: :meth:`ModelStore.discard` removes a failed or superseded release's
staging folder (and its installed folder, unless it is the current or previous release), and
:meth:`ModelStore.clean_staging` removes every staging folder that belongs to no release still
being prepared (the updater calls it at start, once the stored manifests are offered again, so a
partial download of the pending release is kept for its Range resume).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from agent.errors import ConfigError, DeployError, StorageError
from agent.protocol.messages import SAFE_MAX, ArtifactName, Hex64, Ident, Manifest, Ms, Version
from agent.validation import Strict, parse_mapping

log = logging.getLogger(__name__)

STAGING = ".staging"
ACTIVE_FILE = "active.json"
_TMP_FILE = ".active.json.tmp"  # one writer (the lock), so one fixed name

State = Literal["trial", "committed"]


def release_key(model_id: str, model_version: str, model_sha256: str) -> str:
    return f"{model_id}-{model_version}-{model_sha256[:12]}"


@dataclass(frozen=True)
class Release:
    key: str
    model_id: str
    model_version: str
    model_sha256: str
    card: str  # card file name inside the release folder
    channel: str
    manifest_version: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Release:
        m = manifest
        key = release_key(m.model_id, m.model_version, m.model_sha256)
        return cls(key, m.model_id, m.model_version, m.model_sha256, m.card, m.channel, m.version)


@dataclass(frozen=True)
class Active:
    current: Release
    state: State
    previous: Release | None
    activated_ms: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReleaseRecord(Strict):
    """A release as stored in ``active.json``; also checks a :class:`Release` before its paths are used."""

    key: str
    model_id: Ident
    model_version: Version
    model_sha256: Hex64
    card: ArtifactName
    channel: Ident
    manifest_version: Annotated[int, Field(ge=1, le=SAFE_MAX)]

    @model_validator(mode="after")
    def _key(self) -> ReleaseRecord:
        expected = release_key(self.model_id, self.model_version, self.model_sha256)
        if self.key != expected:
            raise ValueError(f"key '{self.key}' does not fit the release (expected '{expected}')")
        return self


class PointerRecord(Strict):
    """The content of ``active.json``."""

    current: ReleaseRecord
    state: State
    previous: ReleaseRecord | None
    activated_ms: Ms

    @model_validator(mode="after")
    def _distinct(self) -> PointerRecord:
        if self.previous is not None and self.previous.key == self.current.key:
            raise ValueError(f"previous and current are the same release '{self.current.key}'")
        return self


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except OSError as exc:
        if path.exists():
            log.warning("model folder not deleted", extra={"path": str(path), "error": str(exc)})


class ModelStore:
    def __init__(
        self, root: Path, *, clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
    ) -> None:
        self.root = root
        self.pointer_path = root / ACTIVE_FILE
        self.clock_ms = clock_ms
        self._lock = threading.RLock()  # the updater installs on its thread, the main loop activates
        self._fresh: set[str] = set()  # installed here, not yet activated: kept by commit's pruning

    def release_dir(self, release: Release) -> Path:
        """``root / key``, once the release is checked (so its key is a safe folder name)."""
        try:
            parse_mapping(ReleaseRecord, release.to_dict(), origin=f"release {release.key!r}")
        except ConfigError as exc:
            raise DeployError(exc.message, reason="bad_release") from exc
        return self.root / release.key

    def staging_dir(self, release: Release) -> Path:
        path = self.root / STAGING / self.release_dir(release).name
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeployError(f"cannot create staging folder {path}: {exc}", reason="install_failed") from exc
        return path

    def card_path(self, release: Release) -> Path:
        return self.release_dir(release) / release.card

    def is_installed(self, release: Release) -> bool:
        return self.release_dir(release).is_dir()

    def install(self, release: Release) -> Path:
        """Move the staged files into place (fsynced, one atomic rename); idempotent."""
        target = self.release_dir(release)
        staging = self.root / STAGING / release.key
        with self._lock:
            if target.is_dir():
                _remove_tree(staging)
                return target
            if not (staging / release.card).is_file():
                raise DeployError(
                    f"cannot install release {release.key}: card {release.card} is not in {staging}",
                    reason="install_failed",
                )
            try:
                for folder, _dirs, files in os.walk(staging):
                    for name in files:
                        _fsync(Path(folder) / name)
                    _fsync(Path(folder), directory=True)
                os.rename(staging, target)
                _fsync(self.root, directory=True)
                _fsync(staging.parent, directory=True)
            except OSError as exc:
                raise DeployError(f"cannot install {staging}: {exc}", reason="install_failed") from exc
            self._fresh.add(release.key)
        log.info("model release installed", extra={"key": release.key})
        return target

    def active(self) -> Active | None:
        """The pointer, or None without one; StorageError when it is unreadable or invalid."""
        path = self.pointer_path
        hint = f"the daemon runs its configured model; delete {path} to clear this"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise StorageError(f"{path}: not valid JSON: {exc}", hint=hint) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise StorageError(f"cannot read {path}: {exc}", hint=hint) from exc
        try:
            record = parse_mapping(PointerRecord, data, origin=str(path))
        except ConfigError as exc:
            raise StorageError(exc.message, hint=hint) from exc
        previous = None if record.previous is None else Release(**record.previous.model_dump())
        return Active(Release(**record.current.model_dump()), record.state, previous, record.activated_ms)

    def _write(self, active: Active | None, reason: str) -> None:
        """Replace the pointer atomically (None: delete it), durable once this returns."""
        tmp = self.root / _TMP_FILE
        try:
            if active is None:
                self.pointer_path.unlink(missing_ok=True)
            else:
                with tmp.open("w", encoding="utf-8") as handle:
                    json.dump(active.to_dict(), handle, sort_keys=True, indent=2)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.pointer_path)
            _fsync(self.root, directory=True)
        except OSError as exc:
            raise DeployError(f"cannot write {self.pointer_path}: {exc}", reason=reason) from exc

    def activate(self, release: Release) -> Active:
        """Point at an installed release, on trial; the old current becomes previous if committed."""
        with self._lock:
            if not self.is_installed(release):
                raise DeployError(
                    f"release {release.key} is not installed in {self.root}", reason="not_installed"
                )
            try:
                old = self.active()
            except StorageError as exc:  # replaced by a valid pointer, without a fallback
                log.warning("model pointer unreadable; replaced", extra={"error": exc.message})
                old = None
            # a committed current is the fallback; a release still on trial never is
            fallbacks = (
                [] if old is None else [old.current if old.state == "committed" else None, old.previous]
            )
            previous = next((r for r in fallbacks if r is not None and r.key != release.key), None)
            new = Active(release, "trial", previous, self.clock_ms())
            self._write(new, "activate_failed")
            self._fresh.discard(release.key)
        log.info("model release activated", extra={"key": release.key, "previous": _key(previous)})
        return new

    def commit(self) -> Active:
        """The current release passed its trial: mark it committed and prune old releases."""
        with self._lock:
            old = self.active()
            if old is None:
                raise DeployError(f"nothing to commit: no {self.pointer_path}", reason="not_active")
            new = Active(old.current, "committed", old.previous, old.activated_ms)
            if old.state != "committed":
                self._write(new, "commit_failed")
            self._prune({new.current.key, _key(new.previous), *self._fresh})
        log.info("model release committed", extra={"key": new.current.key, "previous": _key(new.previous)})
        return new

    def discard(self, release: Release) -> None:
        """Remove what a failed or superseded release left: its staging folder, and its installed
        folder unless the pointer names it (current or previous)."""
        with self._lock:
            _remove_tree(self.root / STAGING / release.key)
            try:
                active = self.active()
                in_use = active is not None and release.key in (active.current.key, _key(active.previous))
            except StorageError:
                in_use = True  # an unreadable pointer: keep every installed release
            target = self.root / release.key
            if not in_use and target.is_dir() and not target.is_symlink():
                _remove_tree(target)
                log.info("model release deleted", extra={"key": release.key})
            self._fresh.discard(release.key)

    def clean_staging(self, keep: set[str]) -> list[str]:
        """Delete every entry of the staging folder not named in ``keep``; return the names deleted."""
        staging = self.root / STAGING
        removed: list[str] = []
        with self._lock:
            try:
                entries = sorted(staging.iterdir())
            except FileNotFoundError:
                return removed
            except OSError as exc:
                log.warning("staging folder not cleaned", extra={"path": str(staging), "error": str(exc)})
                return removed
            for entry in entries:
                if entry.name in keep:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    _remove_tree(entry)
                else:
                    try:
                        entry.unlink()
                    except OSError as exc:
                        log.warning("staging file not deleted", extra={"path": str(entry), "error": str(exc)})
                        continue
                removed.append(entry.name)
        if removed:
            log.info("stale staging files deleted", extra={"entries": removed})
        return removed

    def _prune(self, keep: set[str | None]) -> None:
        try:
            entries = list(self.root.iterdir())
        except OSError as exc:
            log.warning("model folder not pruned", extra={"path": str(self.root), "error": str(exc)})
            return
        for entry in entries:
            if entry.name == STAGING or entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                _remove_tree(entry)
                log.info("model release deleted", extra={"key": entry.name})

    def rollback(self) -> Active | None:
        """Back to the previous release (committed) or to no pointer; deletes the failed release.

        Without a pointer there is nothing to roll back: None (the configured model runs).
        """
        with self._lock:
            old = self.active()
            if old is None:
                return None
            failed, previous = old.current, old.previous
            if previous is not None and not self.is_installed(previous):
                log.warning("previous model release missing", extra={"key": previous.key})
                previous = None
            new = None if previous is None else Active(previous, "committed", None, self.clock_ms())
            self._write(new, "rollback_failed")
            _remove_tree(self.root / failed.key)
            self._fresh.discard(failed.key)
        log.warning("model release rolled back", extra={"key": failed.key, "restored": _key(previous)})
        return new


def _key(release: Release | None) -> str | None:
    return None if release is None else release.key
