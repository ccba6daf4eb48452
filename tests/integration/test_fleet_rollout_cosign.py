"""A k > 1 rollout end to end: the controller proposes, a second operator co-signs, the stage advances.

Real parts: Mosquitto, the coordinator's SQLite database with 24 enrolled devices, ``fleet serve``'s
artifact server (in process), ``edgeproof fleet publish/sign`` and ``fleet rollout run --propose``
as child processes, and 24 simulated devices (tests/support/rollout_fleet.py) that trust operators
A and B with threshold 2, judging every manifest with the daemon's own check and running the
daemon's real smoke test on the model they downloaded.

A publishes stage 0 with ``--out --threshold 2``, B signs, A publishes ``--from``.  Once stage 0
committed, the controller (key A) writes the next-stage manifest as a signing file signed by A
alone: published as it is it would be refused (``below_threshold``), and no device of stage 1
starts.  The controller restarts while the proposal waits: it finds its own signing file and
does not sign the step again.  B signs it, A publishes it ``--from``; the controller adopts it,
stage 1's devices commit and the rollout is done.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from solders.keypair import Keypair

from agent.coordinator.store import Store
from agent.fleet.rollout import Member, entry_stage
from agent.protocol.messages import Manifest
from tests.support.daemon_rig import (
    OPERATOR,
    OPERATOR_SEED,
    ROOT,
    clean_env,
    edgeproof,
    wait_until,
    write_key,
)
from tests.support.mosquitto import MosquittoBroker
from tests.support.onnx_models import tiny_classifier, write_model_and_card
from tests.support.rollout_fleet import PROFILE, RolloutFleet, device_keys, enroll_fleet, serving

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]

B_SEED = bytes([14] * 32)
B = Keypair.from_seed(B_SEED)


def ok(*args: str) -> dict[str, object]:
    done = edgeproof(*args, "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_a_two_of_two_rollout_advances_once_the_proposal_is_co_signed(tmp_path: Path) -> None:
    keys = device_keys(24, base=7300)
    release = tmp_path / "release"
    release.mkdir()
    card = write_model_and_card(release, tiny_classifier(seed=6), name="tiny", input_shape="[1, 3, 32, 32]")
    key_a, key_b, state = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "a-state.json"
    write_key(key_a, OPERATOR_SEED)
    write_key(key_b, B_SEED)
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    mqtt = f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
    agent_toml, coord_toml = tmp_path / "agent.toml", tmp_path / "coordinator.toml"
    agent_toml.write_text(mqtt, encoding="utf-8")
    coord_toml.write_text(f'[storage]\nsqlite_path = "coordinator.sqlite3"\n{mqtt}', encoding="utf-8")
    store = Store.open(sqlite_path=tmp_path / "coordinator.sqlite3")
    enroll_fleet(store, keys, str(OPERATOR.pubkey()))
    server = serving(release)
    fleet = RolloutFleet(
        broker.host,
        broker.port,
        keys,
        set(),
        operator=str(OPERATOR.pubkey()),
        operators=(str(B.pubkey()),),
        threshold=2,
        smoke_every=1,
        folder=tmp_path / "devices",
    )
    controller: subprocess.Popen[str] | None = None
    proposals = tmp_path / "proposals"

    def start_controller(log: Path) -> subprocess.Popen[str]:
        started = subprocess.Popen(
            [
                sys.executable, "-m", "agent", "--log-level", "info", "fleet", "rollout", "run",
                "--coordinator-config", str(coord_toml),
                "--channel", "stable", "--key", str(key_a), "--state", str(state), "--operator-keys",
                str(B.pubkey()), "--propose", str(proposals), "--threshold", "2", "--stage-timeout", "2m",
                "--tick", "0.3", "--exit-when-settled", "--json",
            ],
            cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
        )  # fmt: skip
        assert started.stdout is not None
        assert json.loads(started.stdout.readline())["controller"] == "running"
        return started

    try:
        fleet.start()
        controller = start_controller(tmp_path / "controller.log")

        first = tmp_path / "stage0.json"
        ok(
            "fleet", "publish", "--card", str(card), "--file", str(release / "tiny.onnx"),
            "--url", f"http://127.0.0.1:{server.server_port}", "--channel", "stable",
            "--targets", f"profile:{PROFILE}", "--stages", "40,100", "--expires", "1h",
            "--key", str(key_a), "--state", str(state), "--out", str(first), "--threshold", "2",
        )  # fmt: skip
        ok("fleet", "sign", str(first), "--key", str(key_b))
        published = ok("fleet", "publish", "--from", str(first), "--key", str(key_a), "--state", str(state),
                       "--config", str(agent_toml))  # fmt: skip
        manifest = Manifest.model_validate(published["manifest"])
        stage_of = {
            str(k.pubkey()): entry_stage(manifest, Member(str(k.pubkey()), PROFILE, ("lobby",))) for k in keys
        }
        stage0 = sum(1 for s in stage_of.values() if s == 0)
        assert 3 <= stage0 <= 18, stage0
        # The controller adopts the co-signed stage 0 (it is on the channel), then proposes stage 1.
        proposal = proposals / "stable-v2.json"
        wait_until(lambda: fleet.counters["committed"] == stage0 and proposal.is_file(), 60, "the proposal")
        signing = json.loads(proposal.read_text(encoding="utf-8"))
        assert signing["threshold"] == 2 and signing["envelope"]["dev"] == str(OPERATOR.pubkey())
        assert signing["envelope"]["body"]["stage"] == 1 and "cosigs" not in signing["envelope"]
        early = edgeproof("fleet", "publish", "--from", str(proposal), "--key", str(key_a), "--state", str(state),
                          "--config", str(agent_toml))  # fmt: skip
        assert early.returncode != 0 and f"{proposal} carries 1 of the 2 signatures it needs" in early.stderr
        assert fleet.counters["committed"] == stage0  # nobody of stage 1 started

        # A restart while the proposal waits: the new controller finds it and signs nothing again.
        head = json.loads(state.read_text(encoding="utf-8"))
        controller.terminate()
        assert controller.wait(30) == 0, (tmp_path / "controller.log").read_text()
        controller = start_controller(tmp_path / "controller-2.log")
        wait_until(
            lambda: "rollout_proposal_waiting" in (tmp_path / "controller-2.log").read_text(),
            30,
            "the restarted controller to find its proposal",
        )
        assert sorted(p.name for p in proposals.iterdir()) == ["stable-v2.json"]
        assert json.loads(state.read_text(encoding="utf-8")) == head  # no new seq, no new version

        signed = ok("fleet", "sign", str(proposal), "--key", str(key_b))
        assert signed["ready"] is True and signed["signers"] == [str(OPERATOR.pubkey()), str(B.pubkey())]
        ok("fleet", "publish", "--from", str(proposal), "--key", str(key_a), "--state", str(state),
           "--config", str(agent_toml))  # fmt: skip
        wait_until(lambda: fleet.counters["committed"] == len(keys), 60, "stage 1 to commit")
        assert fleet.counters["smoke_tests"] == len(
            keys
        )  # each ran the real smoke test of what it downloaded
        out, _ = controller.communicate(timeout=60)
        assert controller.returncode == 0, (tmp_path / "controller-2.log").read_text()
        result = json.loads(out)
        # The restarted controller made one decision; the advance was its predecessor's proposal.
        assert [d["action"] for d in result["decisions"]] == ["done"]
        assert result["refusals"] == {}
        assert sorted(p.name for p in proposals.iterdir()) == ["stable-v2.json"]  # done needs no manifest
        status = ok("fleet", "status", "--coordinator-config", str(coord_toml))
        (rollout,) = status["rollouts"]  # type: ignore[misc]
        assert (rollout["state"], rollout["stage"], rollout["manifest_version"]) == ("done", 1, 2)
        assert not any(k.startswith("refused_below") for k in fleet.counters), fleet.counters
    finally:
        if controller is not None and controller.poll() is None:
            controller.terminate()
            controller.wait(10)
        fleet.stop()
        server.shutdown()
        server.server_close()
        store.close()
        broker.kill()
