"""Nothing but an explicit, signed rollback makes a device go back (issue 9, docs/fleet.md "Rollbacks").

One real daemon (Mosquitto, loopback artifact servers, real tiny ONNX models) commits release A
(model 1.0.0), then B (1.1.0).  A again under a new manifest version, without ``rollback``, is
the release it kept as previous: refused ``downgrade``, reported ``rejected``, nothing
downloaded, still on B.  C (1.0.5, never installed) is older by its version: refused the same
way.  A with ``rollback: true`` goes the normal path (received, staged, smoke test, activated,
committed) and the device runs A.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.artifact_server import ArtifactServer
from tests.support.daemon_rig import wait_until
from tests.support.update_rig import (
    assert_running,
    deploy_states,
    own_status,
    rejected,
    release_files,
    rig,
    sha,
    tiny_manifest,
)

pytestmark = pytest.mark.integration


def versioned(folder: Path, seed: int, version: str) -> dict[str, bytes]:
    return release_files(folder, seed=seed, card_edit=('version = "1.0.0"', f'version = "{version}"'))


def test_a_downgrade_is_refused_unless_the_manifest_says_rollback(tmp_path: Path) -> None:
    files_a = release_files(tmp_path / "a")
    files_b = versioned(tmp_path / "b", 1, "1.1.0")
    files_c = versioned(tmp_path / "c", 2, "1.0.5")
    with (
        rig(tmp_path, "rollback") as r,
        ArtifactServer(files_a) as server_a,
        ArtifactServer(files_b) as server_b,
        ArtifactServer(files_c) as server_c,
    ):
        daemon = r.daemon(trial_s=1.0)
        wait_until(lambda: own_status(daemon).get("model"), 90, "the daemon's first status")

        def runs(files: dict[str, bytes], version: str) -> None:
            assert_running(daemon, sha(files), version)

        def reported(state: str, reason: str | None, version: int, what: str) -> None:
            r.reported(daemon, state, reason, version, what)

        r.push(tiny_manifest(server_a, files_a, version=1))
        reported("committed", None, 1, "release A to be committed")
        r.push(tiny_manifest(server_b, files_b, version=2, model_version="1.1.0"))
        reported("committed", None, 2, "release B to be committed")
        runs(files_b, "1.1.0")
        served_a = len(server_a.paths)

        # The release kept as previous, under a new version: refused, reported, not downloaded.
        r.push(tiny_manifest(server_a, files_a, version=3))
        reported("rejected", "downgrade", 3, "A again without rollback to be refused")
        # An older model version the device never ran: refused the same way.
        r.push(tiny_manifest(server_c, files_c, version=4, model_version="1.0.5"))
        reported("rejected", "downgrade", 4, "an older model version to be refused")
        wait_until(lambda: rejected(daemon, "downgrade") == 2, 30, "both downgrades counted")
        assert len(server_a.paths) == served_a and server_c.paths == []
        assert own_status(daemon)["manifests"]["stable"]["version"] == 2
        runs(files_b, "1.1.0")

        # The explicit rollback: the normal install path, then the device runs A.
        r.push(tiny_manifest(server_a, files_a, version=5, rollback=True))
        reported("committed", None, 5, "the rollback to A to be committed")
        steps = [s for s, _, v in deploy_states(r.collector) if v == 5]
        assert steps[0] == "received" and steps[-1] == "committed"
        assert {"staged", "smoke_test", "activated"} <= set(steps) and "rejected" not in steps
        runs(files_a, "1.0.0")
        assert own_status(daemon)["manifests"]["stable"]["version"] == 5
        assert daemon.terminate() == 0, daemon.tail()
