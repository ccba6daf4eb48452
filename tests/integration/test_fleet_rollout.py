"""A staged rollout to 200 simulated devices, 10% of them failing, halts itself at the first stage.

Real parts: Mosquitto, the coordinator's SQLite database (migrated, 200 enrolled devices with
signed bindings), ``fleet serve``'s artifact server (in process, so its download counts can be
read), ``edgeproof fleet publish`` and ``edgeproof fleet rollout run`` as child processes with an
operator key file, and 200 simulated devices that judge each manifest with the daemon's
``check_manifest`` and download with its ``fetch_artifact`` (tests/support/rollout_fleet.py).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from solders.keypair import Keypair

from agent.coordinator.store import Store
from agent.fleet.rollout import Member, entry_stage
from agent.fleet.serve import ArtifactHTTPServer
from agent.protocol.chain import ChainSigner
from agent.protocol.envelope import build_envelope, verify_envelope
from agent.protocol.messages import Manifest
from agent.protocol.rollout import rollout_bucket
from tests.support.daemon_rig import (
    OPERATOR,
    OPERATOR_SEED,
    ROOT,
    clean_env,
    edgeproof,
    wait_until,
    write_key,
)
from tests.support.mosquitto import Collector, MosquittoBroker, publisher
from tests.support.onnx_models import tiny_classifier, write_model_and_card
from tests.support.rollout_fleet import PROFILE, RolloutFleet, device_keys, enroll_fleet, serving

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]

DEVICES = 200
TOPIC = "edgeproof/v1/fleet/manifest/stable"


def retained(broker: MosquittoBroker) -> Manifest:
    reader = Collector(broker, TOPIC, client_id="rollout-retained-reader")
    try:
        assert reader.wait_for(lambda m: bool(m), 10)
        body = verify_envelope(reader.payloads()[-1]).body
        assert isinstance(body, Manifest)
        return body
    finally:
        reader.close()


def hostile_reports(broker: MosquittoBroker, outsider: Keypair, member: Keypair, manifest: Manifest) -> None:
    """A forged, a malformed, a replayed report, one from a device outside stage 0, and a flood."""
    client = publisher(broker, "hostile")
    body = {
        "channel": "stable",
        "manifest_version": manifest.version,
        "model_id": manifest.model_id,
        "model_sha256": manifest.model_sha256,
        "state": "committed",
    }
    topic = f"edgeproof/v1/dev/{outsider.pubkey()}/deploy"
    # Not in the stage: a valid, signed report from an enrolled device whose bucket is above stage 0.
    client.publish(topic, ChainSigner(outsider).next("deploy", body, 1).wire, qos=1).wait_for_publish(5)
    # Forged: signed by a key that is not the member's, published on the member's topic.
    forged = build_envelope(Keypair.from_seed(bytes([42] * 32)), "deploy", body, seq=9, prev="cd" * 32, ts=1)
    raw = json.loads(forged.wire)
    raw["dev"] = str(member.pubkey())
    client.publish(f"edgeproof/v1/dev/{member.pubkey()}/deploy", json.dumps(raw), qos=1).wait_for_publish(5)
    client.publish(f"edgeproof/v1/dev/{member.pubkey()}/deploy", b"{not json", qos=1).wait_for_publish(5)
    # Replayed: the same valid envelope twice (seq 1 again).
    once = ChainSigner(outsider).next("deploy", body, 2).wire
    client.publish(topic, once, qos=1).wait_for_publish(5)
    # Flood from the outsider: far more than a burst.
    signer = ChainSigner(outsider, seq=100, prev="ab" * 32)
    for n in range(80):
        client.publish(topic, signer.next("deploy", body, 3 + n).wire, qos=1)
    time.sleep(1.0)
    client.disconnect()
    client.loop_stop()


@dataclass
class Rig:
    """Broker, enrolled store, artifact server, operator key and configs for one rollout run."""

    tmp: Path
    keys: list[Keypair]
    broker: MosquittoBroker = field(init=False)
    store: Store = field(init=False)
    server: ArtifactHTTPServer = field(init=False)
    fleet: RolloutFleet | None = None
    controller: subprocess.Popen[str] | None = None

    def __post_init__(self) -> None:
        self.release = self.tmp / "release"
        self.release.mkdir()
        self.card = write_model_and_card(
            self.release, tiny_classifier(seed=5), name="tiny", input_shape="[1, 3, 32, 32]"
        )
        self.key, self.state = self.tmp / "operator.json", self.tmp / "operator-state.json"
        write_key(self.key, OPERATOR_SEED)
        self.broker = MosquittoBroker(self.tmp / "broker")
        self.broker.start()
        mqtt = f'[mqtt]\nhost = "{self.broker.host}"\nport = {self.broker.port}\n'
        self.agent_toml, self.coord_toml = self.tmp / "agent.toml", self.tmp / "coordinator.toml"
        self.agent_toml.write_text(mqtt, encoding="utf-8")
        self.coord_toml.write_text(
            f'[storage]\nsqlite_path = "coordinator.sqlite3"\n{mqtt}', encoding="utf-8"
        )
        self.store = Store.open(sqlite_path=self.tmp / "coordinator.sqlite3")
        enroll_fleet(self.store, self.keys, str(OPERATOR.pubkey()))
        self.server = serving(self.release)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def publish(self, stages: str, *, dry_run: bool = False) -> dict[str, Any]:
        done = edgeproof(
            "fleet", "publish", "--card", str(self.card), "--file", str(self.release / "tiny.onnx"),
            "--url", self.url, "--channel", "stable", "--targets", f"profile:{PROFILE}", "--stages", stages,
            "--abort-failure-rate", "0.05", "--expires", "1h", "--key", str(self.key), "--state",
            str(self.state), "--config", str(self.agent_toml), "--json", *(["--dry-run"] if dry_run else []),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def start(
        self,
        failing: set[str],
        *,
        exit_when_settled: bool = True,
        stage_timeout: str = "2m",
        silent: frozenset[str] = frozenset(),
    ) -> RolloutFleet:
        self.fleet = RolloutFleet(
            self.broker.host,
            self.broker.port,
            self.keys,
            failing,
            operator=str(OPERATOR.pubkey()),
            folder=self.tmp / "devices",
            silent=silent,
        )
        self.fleet.start()
        log = (self.tmp / "controller.log").open("w")
        args = ["--coordinator-config", str(self.coord_toml), "--channel", "stable", "--key", str(self.key)]
        args += ["--state", str(self.state), "--stage-timeout", stage_timeout, "--tick", "0.5"]
        self.controller = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "fleet",
                "rollout",
                "run",
                *args,
                *(["--exit-when-settled"] if exit_when_settled else []),
                "--json",
            ],
            cwd=ROOT,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert self.controller.stdout is not None
        assert json.loads(self.controller.stdout.readline())["controller"] == "running"
        return self.fleet

    def rollout_state(self) -> str | None:
        row = self.store.one("SELECT state FROM rollouts WHERE channel = 'stable'")
        return None if row is None else str(row[0])

    def refusals(self) -> dict[str, int]:
        return {str(r): int(n) for r, n in self.store.rows("SELECT reason, count FROM rollout_refusals")}

    def settled(self, *, stop: bool = False) -> dict[str, Any]:
        """The controller's report once it exits (the rollout halted or done; ``stop``: SIGTERM it)."""
        assert self.controller is not None
        if stop:
            self.controller.terminate()
        out, _ = self.controller.communicate(timeout=60)
        assert self.controller.returncode == 0, (self.tmp / "controller.log").read_text()
        return dict(json.loads(out))

    def close(self) -> None:
        if self.controller is not None and self.controller.poll() is None:
            self.controller.terminate()
            self.controller.wait(10)
        if self.fleet is not None:
            self.fleet.stop()
        self.server.shutdown()
        self.server.server_close()
        self.store.close()
        self.broker.kill()


@contextlib.contextmanager
def rollout_rig(tmp_path: Path, devices: int) -> Iterator[Rig]:
    rig = Rig(tmp_path, device_keys(devices))
    try:
        yield rig
    finally:
        rig.close()


def test_rollout_with_ten_percent_failing_devices_halts_at_the_first_stage(tmp_path: Path) -> None:
    with rollout_rig(tmp_path, DEVICES) as r:
        # Learn the release from a dry run, then pick the failing 10%: every tenth device in
        # bucket order, so each stage holds its share of them.
        first = Manifest.model_validate(r.publish("10,50,100", dry_run=True)["manifest"])
        stage_of = {
            str(k.pubkey()): entry_stage(first, Member(str(k.pubkey()), PROFILE, ("lobby",))) for k in r.keys
        }
        ordered = sorted(
            stage_of, key=lambda d: rollout_bucket(d, "stable", first.model_id, first.model_version)
        )
        failing = set(ordered[::10])
        stage0 = {d for d, s in stage_of.items() if s == 0}
        assert 10 <= len(stage0) <= 35 and len(failing & stage0) >= 2
        fleet = r.start(failing, exit_when_settled=False)
        outsider = next(k for k in r.keys if stage_of[str(k.pubkey())] == 2)
        member = next(k for k in r.keys if str(k.pubkey()) in stage0)
        r.publish("10,50,100")
        wait_until(lambda: r.rollout_state() == "halted", 60, "the rollout to halt by itself")
        # Hostile reports while it is halted (its stage is still 0): each refused and counted by name.
        hostile_reports(r.broker, outsider, member, first)
        expected = ("not_in_stage", "bad_signature", "malformed", "replay", "flooded")
        wait_until(lambda: all(r.refusals().get(x) for x in expected), 30, "the refusals to be counted")
        result = r.settled(stop=True)
        broker, server, coord_toml, key, state = r.broker, r.server, r.coord_toml, r.key, r.state

        # It halted by itself at stage 0 and published the halt: v2, stage 0, halted.
        assert [d["action"] for d in result["decisions"]] == ["halt"]
        halt = retained(broker)
        assert (halt.version, halt.stage, halt.halted) == (2, 0, True)
        assert halt.artifacts == first.artifacts
        # Devices of later stages never downloaded: only stage-0 devices fetched, each file once.
        wait_until(lambda: not any(d.busy for d in fleet.devices), 30, "stage-0 devices to finish or stop")
        downloads = dict(server.downloads)
        assert set(downloads) <= {"tiny.onnx", "tiny.toml"}
        assert max(downloads.values()) <= len(stage0)
        later = [d for d in fleet.devices if d.dev not in stage0]
        assert later and all(d.states == [] for d in later)
        # They saw the halt and did not start.
        wait_until(lambda: all(d.accepted_version == 2 for d in later), 30, "every device to see the halt")
        assert all(d.states == [] for d in later)

        status = edgeproof("fleet", "status", "--coordinator-config", str(coord_toml), "--json")
        assert status.returncode == 0, status.stderr
        (rollout,) = json.loads(status.stdout)["rollouts"]
        assert rollout["state"] == "halted" and rollout["stage"] == 0
        assert rollout["halt_reason"].endswith("above the abort failure rate 5.0%")
        s0 = rollout["stages"][0]
        assert s0["devices"] == len(stage0)
        assert s0["failed_reasons"]["inference_failed"] >= 1  # it halts at the first failure past 5%
        assert s0["committed"] + s0["failed"] + s0["in_flight"] + s0["waiting"] == len(stage0)
        refusals = json.loads(status.stdout)["refusals"]
        assert refusals["not_in_stage"] >= 1 and refusals["bad_signature"] == 1
        assert refusals["malformed"] == 1 and refusals["replay"] >= 1 and refusals["flooded"] >= 1
        table = edgeproof("fleet", "status", "--coordinator-config", str(coord_toml), "--channel", "stable")
        assert "halted" in table.stdout and "inference_failed" in table.stdout

        # Resume publishes v3 without halted; halting twice is refused by name.
        resumed = edgeproof(
            "fleet", "resume", "--coordinator-config", str(coord_toml), "--channel", "stable",
            "--key", str(key), "--state", str(state), "--json",
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout) == {"channel": "stable", "version": 3, "stage": 0, "halted": False}
        again = edgeproof(
            "fleet", "resume", "--coordinator-config", str(coord_toml), "--channel", "stable",
            "--key", str(key), "--state", str(state),
        )  # fmt: skip
        assert again.returncode == 17
        assert again.stderr.startswith(
            "edgeproof: error: refused (not_halted): the rollout on 'stable' is running"
        )
        assert retained(broker).halted is None


def test_a_healthy_rollout_advances_stage_by_stage_and_no_device_downloads_twice(tmp_path: Path) -> None:
    with rollout_rig(tmp_path, 40) as r:
        fleet = r.start(set())
        r.publish("25,100")
        result = r.settled()
        assert [d["action"] for d in result["decisions"]] == ["advance", "done"]
        assert result["refusals"] == {}
        final = retained(r.broker)
        assert (final.version, final.stage, final.halted) == (2, 1, None)
        wait_until(lambda: fleet.counters["committed"] == 40, 30, "every device to commit")
        # Stage-0 devices saw version 2 (the next stage) and did not fetch their release again.
        assert dict(r.server.downloads) == {"tiny.onnx": 40, "tiny.toml": 40}
        status = edgeproof("fleet", "status", "--coordinator-config", str(r.coord_toml), "--json")
        (rollout,) = json.loads(status.stdout)["rollouts"]
        assert rollout["state"] == "done" and rollout["failure_rate"] == 0.0
        assert sum(s["committed"] for s in rollout["stages"]) == 40
        assert [s["devices"] for s in rollout["stages"]] == [
            sum(1 for d in fleet.devices if entry_stage(final, Member(d.dev, PROFILE, ("lobby",))) == i)
            for i in (0, 1)
        ]


def publish_statuses(broker: MosquittoBroker, states: dict[Keypair, str]) -> None:
    """Each device's signed, retained status (side-band), as its daemon or its last will sends it."""
    client = publisher(broker, "statuses")
    for key, state in states.items():
        body = {"state": state, "agent_version": "0.1.0", "profile": PROFILE}
        wire = ChainSigner(key).sideband("status", body, 1_800_000_000_000).wire
        client.publish(f"edgeproof/v1/dev/{key.pubkey()}/status", wire, qos=1, retain=True).wait_for_publish(
            5
        )
    client.disconnect()
    client.loop_stop()


def test_devices_that_went_offline_are_named_offline_when_their_stage_times_out(tmp_path: Path) -> None:
    with rollout_rig(tmp_path, 20) as r:
        # Three devices never act on the manifest: two whose last will said offline, one that
        # still says online (stuck).  Every other device says online and commits.
        away, stuck = r.keys[:2], r.keys[2]
        publish_statuses(r.broker, {k: ("offline" if k in away else "online") for k in r.keys})
        silent = frozenset(str(k.pubkey()) for k in (*away, stuck))
        fleet = r.start(set(), stage_timeout="20s", silent=silent)
        r.publish("100")
        wait_until(lambda: fleet.counters["committed"] == 17, 60, "every other device to commit")

        def stage0() -> dict[str, Any]:
            status = edgeproof("fleet", "status", "--coordinator-config", str(r.coord_toml), "--json")
            assert status.returncode == 0, status.stderr
            (rollout,) = json.loads(status.stdout)["rollouts"]
            return dict(rollout["stages"][0])

        # Before the timeout: the three wait, two of them offline (the table says so too).
        before = stage0()
        if before["failed"] == 0:  # the 20 s may already be over on a loaded machine
            assert (before["committed"], before["waiting"], before["offline"]) == (17, 3, 2)
            table = edgeproof("fleet", "status", "--coordinator-config", str(r.coord_toml))
            assert "┃ offline ┃" in table.stdout, table.stdout
        result = r.settled()  # 3 of 20 failed is past the 5% abort rate: it halts by itself
        assert [d["action"] for d in result["decisions"]] == ["halt"]
        why = "3 of 20 devices failed (15.0%; offline 2, timed_out 1), above the abort failure rate 5.0%"
        assert result["decisions"][0]["why"] == why
        status = edgeproof("fleet", "status", "--coordinator-config", str(r.coord_toml), "--json")
        assert json.loads(status.stdout)["rollouts"][0]["halt_reason"] == why
        # Halted, the three wait again (a resume gives them a new stage timeout), two offline.
        after = stage0()
        assert (after["committed"], after["waiting"], after["offline"], after["failed"]) == (17, 3, 2, 0)
        stored = r.store.rows("SELECT online, COUNT(*) FROM rollout_presence GROUP BY online ORDER BY online")
        assert stored == [(0, 2), (1, 18)]
