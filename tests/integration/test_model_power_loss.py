"""Power loss during a model update: SIGKILL at each step, then the truth after the restart (issue 9).

A real daemon started with ``EDGEPROOF_TEST_HOLD=<step>`` (agent/device/holds.py) stops at a
known point between two durable writes and logs ``update held``; the test proves from the disk
that the step was reached (the staged files, the release folder, ``active.json``) and from the
deploy messages that the next report was not sent, then kills it with SIGKILL.  A daemon started
again on the same state, without the hold, must run a working model and report the truth:

* ``download`` (the model artifact complete, the card not fetched): the download resumes, the
  model artifact is not fetched again, the release commits;
* ``verify`` (the release folder installed, no smoke test yet): nothing is downloaded again, the
  release is smoke-tested, activated and committed;
* ``activate`` (``active.json`` points at the release on trial, ``activated`` not reported): the
  release counts as crashed on trial, ``rolled_back`` ``crashed_in_trial``, the configured model
  runs and the release is not tried again;
* ``commit`` (``active.json`` says committed, ``committed`` not reported): the release runs and
  ``committed`` is reported once, at the start.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.device.holds import ENV, STEPS
from tests.support.artifact_server import ArtifactServer
from tests.support.daemon_rig import DaemonProcess, wait_until
from tests.support.update_rig import (
    CONFIGURED_MODEL,
    deploy_states,
    own_status,
    release_files,
    rig,
    sha,
    staging_of,
    tiny_manifest,
)

pytestmark = pytest.mark.integration


def held_at(daemon: DaemonProcess, step: str) -> bool:
    return any(r.get("msg") == "update held" and r.get("step") == step for r in daemon.logs())


def pointer(tmp_path: Path) -> dict[str, Any] | None:
    path = tmp_path / "device" / "state" / "models" / "active.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_update_step_restarts_on_a_working_model_and_reports_the_truth(
    tmp_path: Path, step: str
) -> None:
    files = release_files(tmp_path / "release")
    key = f"tiny-1.0.0-{sha(files)[:12]}"
    models = tmp_path / "device" / "state" / "models"
    with rig(tmp_path, f"power-{step}") as r, ArtifactServer(files) as server:
        collector = r.collector
        daemon = r.daemon(trial_s=2.0, env={ENV: step})
        wait_until(lambda: own_status(daemon).get("model"), 90, "the daemon's first status")
        r.push(tiny_manifest(server, files, version=1))
        wait_until(lambda: held_at(daemon, step), 60, f"the daemon to hold at {step}")
        states = [s for s, _, _ in deploy_states(collector)]
        # The step was reached, and what follows it was not done.
        if step == "download":
            assert (staging_of(tmp_path) / key / "tiny.onnx").is_file()
            assert not (staging_of(tmp_path) / key / "tiny.toml").exists()
            assert server.paths == ["http /tiny.onnx"] and "staged" not in states
        elif step == "verify":
            assert (models / key / "tiny.toml").is_file() and states[-1] == "staged"
        elif step == "activate":
            assert (pointer(tmp_path) or {}).get("state") == "trial" and "activated" not in states
        else:
            assert (pointer(tmp_path) or {}).get("state") == "committed" and "committed" not in states
            assert states[-1] == "activated"
        assert daemon.kill9() == -9
        served = len(server.paths)

        restarted = r.daemon(trial_s=2.0)
        if step == "activate":
            wait_until(
                lambda: ("rolled_back", "crashed_in_trial", 1) in deploy_states(collector), 60, "the rollback"
            )
            expected = {"id": CONFIGURED_MODEL, "release": None, "trial": False}
        else:
            wait_until(lambda: ("committed", None, 1) in deploy_states(collector), 90, "the commit")
            expected = {"id": "tiny", "release": key, "trial": False}
        wait_until(
            lambda: {k: own_status(restarted).get("model", {}).get(k) for k in expected} == expected,
            30,
            f"the status to say {expected}",
        )
        time.sleep(1.0)  # nothing else follows: no second attempt, no second report
        after = [s for s, _, _ in deploy_states(collector)]
        assert after.count("committed") == (0 if step == "activate" else 1), after
        assert after.count("rolled_back") == (1 if step == "activate" else 0), after
        new_paths = server.paths[served:]
        if step == "download":
            assert new_paths == ["http /tiny.toml"]  # the complete model artifact is not fetched again
        else:
            assert new_paths == []
        if step == "verify":
            assert after[after.index("staged", len(states)) :] == [
                "staged",
                "smoke_test",
                "activated",
                "committed",
            ]
        assert (pointer(tmp_path) or {}).get("state") == (None if step == "activate" else "committed")
        assert restarted.terminate() == 0, restarted.tail()
