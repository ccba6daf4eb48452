"""The rollout controller inside ``coordinator run`` (``[rollout]``): a staged rollout runs to done.

Real parts: Mosquitto, a real ``edgeproof coordinator run`` child process whose config has a
``[rollout]`` section, its SQLite database with 24 enrolled devices, ``fleet serve``'s artifact
server (in process), ``edgeproof fleet publish`` and ``fleet status`` as child processes, and 24
simulated devices (tests/support/rollout_fleet.py) judging each manifest with the daemon's own
check.  A second controller on the same operator state is refused ``controller_running``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.coordinator.store import Store
from tests.support.coordinator import CoordinatorProcess, write_config
from tests.support.daemon_rig import OPERATOR, OPERATOR_SEED, edgeproof, wait_until, write_key
from tests.support.mosquitto import MosquittoBroker
from tests.support.onnx_models import tiny_classifier, write_model_and_card
from tests.support.rollout_fleet import PROFILE, RolloutFleet, device_keys, enroll_fleet, serving

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]


def test_a_coordinator_with_a_rollout_section_runs_the_rollout_to_done(tmp_path: Path) -> None:
    keys = device_keys(24, base=7500)
    release = tmp_path / "release"
    release.mkdir()
    card = write_model_and_card(release, tiny_classifier(seed=8), name="tiny", input_shape="[1, 3, 32, 32]")
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    folder = tmp_path / "coord"
    config = write_config(folder, broker_port=broker.port)
    write_key(folder / "operator.json", OPERATOR_SEED)
    with config.open("a", encoding="utf-8") as out:
        out.write(
            '\n[rollout]\nchannel = "stable"\nkey = "operator.json"\nstate = "operator-state.json"\n'
            "stage_timeout_s = 120\ntick_s = 0.3\n"
        )
    agent_toml = tmp_path / "agent.toml"
    agent_toml.write_text(f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n', encoding="utf-8")
    store = Store.open(sqlite_path=folder / "coordinator.sqlite3")
    enroll_fleet(store, keys, str(OPERATOR.pubkey()))
    server = serving(release)
    fleet = RolloutFleet(
        broker.host, broker.port, keys, set(), operator=str(OPERATOR.pubkey()), folder=tmp_path / "dev"
    )
    coordinator = CoordinatorProcess(config, tmp_path / "coordinator.log")
    try:
        fleet.start()
        coordinator.start()
        assert "rollout_controller_started" in coordinator.log()
        # One controller per operator state: a second one (here a process of its own) is refused.
        second = edgeproof(
            "fleet", "rollout", "run", "--coordinator-config", str(config), "--channel", "stable",
            "--key", str(folder / "operator.json"), "--state", str(folder / "operator-state.json"),
        )  # fmt: skip
        assert second.returncode == 17, second.stderr
        assert second.stderr.startswith(
            "edgeproof: error: refused (controller_running): another rollout controller runs with the "
            f"operator state {folder / 'operator-state.json'}"
        ), second.stderr

        published = edgeproof(
            "fleet", "publish", "--card", str(card), "--file", str(release / "tiny.onnx"),
            "--url", f"http://127.0.0.1:{server.server_port}", "--channel", "stable",
            "--targets", f"profile:{PROFILE}", "--stages", "25,100", "--expires", "1h",
            "--key", str(folder / "operator.json"), "--state", str(folder / "operator-state.json"),
            "--config", str(agent_toml), "--json",
        )  # fmt: skip
        assert published.returncode == 0, published.stderr

        def state() -> str | None:
            row = store.one("SELECT state FROM rollouts WHERE channel = 'stable'")
            return None if row is None else str(row[0])

        wait_until(lambda: state() == "done", 90, "the coordinator's controller to finish the rollout")
        wait_until(lambda: fleet.counters["committed"] == len(keys), 30, "every device to commit")
        status = edgeproof("fleet", "status", "--coordinator-config", str(config), "--json")
        assert status.returncode == 0, status.stderr
        (rollout,) = json.loads(status.stdout)["rollouts"]
        # Stage 1 was published by the controller in the coordinator: manifest version 2.
        assert (rollout["state"], rollout["stage"], rollout["manifest_version"]) == ("done", 1, 2)
        assert sum(s["committed"] for s in rollout["stages"]) == len(keys)
        assert dict(server.downloads) == {"tiny.onnx": len(keys), "tiny.toml": len(keys)}
        assert coordinator.terminate() == 0, coordinator.log()
        assert "rollout_controller_stopped" in coordinator.log()
    finally:
        coordinator.kill()
        fleet.stop()
        server.shutdown()
        server.server_close()
        store.close()
        broker.kill()


def test_a_rollout_section_that_cannot_start_stops_the_coordinator_by_name(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        folder = tmp_path / "coord"
        config = write_config(folder, broker_port=broker.port)
        with config.open("a", encoding="utf-8") as out:
            out.write('\n[rollout]\nchannel = "stable"\nkey = "missing.json"\nstate = "state.json"\n')
        done = edgeproof("coordinator", "run", "--config", str(config), timeout=60)
        assert done.returncode != 0
        assert "missing.json" in done.stderr and "Traceback" not in done.stderr, done.stderr
    finally:
        broker.kill()
