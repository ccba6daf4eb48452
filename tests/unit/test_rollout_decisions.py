"""The rollout controller's pure decisions: stage membership, tallies, halt/advance/done, next manifests."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from solders.keypair import Keypair

from agent.cli import main
from agent.coordinator.store import Store
from agent.errors import FleetError
from agent.fleet import rollout as plan
from agent.fleet.rollout import Member, Report, Rollout
from agent.fleet.rollout_inbox import DeployInbox, TokenBucket
from agent.fleet.rollout_sign import publish_next, sign_manifest
from agent.fleet.signing import load_signing_file
from agent.protocol.chain import ChainSigner
from agent.protocol.envelope import validate_body
from agent.protocol.messages import Manifest
from agent.protocol.rollout import rollout_bucket
from agent.protocol.topics import Topics
from tests.support.manifests import NOW, manifest_body

KEYS = [Keypair.from_seed(bytes([i]) * 32) for i in range(1, 101)]
DEVICES = [Member(str(k.pubkey()), "rpi4") for k in KEYS]


def manifest(**change: object) -> Manifest:
    body = validate_body("manifest", manifest_body(**{"stage": 0, **change}))
    assert isinstance(body, Manifest)
    return body


def rollout(m: Manifest, **change: object) -> Rollout:
    base = Rollout(
        manifest=m,
        state="running",
        abort_failure_rate=0.1,
        stage_timeout_ms=60_000,
        stage_started_ms=tuple([NOW] * (m.stage + 1)),
        started_ms=NOW,
    )
    return replace(base, **change) if change else base  # type: ignore[arg-type]


def test_entry_stage_is_the_protocol_bucket_and_stages_are_cumulative() -> None:
    m = manifest()
    for d in DEVICES:
        bucket = rollout_bucket(d.dev, "stable", m.model_id, m.model_version)
        expected = 0 if bucket < 500 else 1 if bucket < 2500 else 2
        assert plan.entry_stage(m, d) == expected
    assert plan.entry_stage(m, Member(DEVICES[0].dev, "jetson")) is None  # not targeted
    s0 = plan.stage_members(m, DEVICES)
    s1 = plan.stage_members(manifest(version=4, stage=1), DEVICES)
    assert set(s0) < set(s1) and all(s1[d] == 0 for d in s0)
    assert len(plan.stage_members(manifest(version=5, stage=2), DEVICES)) == 100


def test_tally_and_decide_halt_when_failures_pass_the_rate() -> None:
    m = manifest(version=4, stage=1)
    members = plan.stage_members(m, DEVICES)
    r = rollout(m)
    devs = sorted(members)
    reports = {d: Report("committed", None, NOW + 1) for d in devs}
    assert plan.decide(r, plan.tally(r, DEVICES, reports, now_ms=NOW + 10)).action == "advance"
    failed = max(1, int(len(devs) * 0.1))
    for d in devs[: failed + 1]:
        reports[d] = Report("failed", "hash_mismatch", NOW + 2)
    stages = plan.tally(r, DEVICES, reports, now_ms=NOW + 10)
    assert sum(s.failed.get("hash_mismatch", 0) for s in stages) == failed + 1
    decision = plan.decide(r, stages)
    assert decision.action == "halt" and decision.why.endswith("above the abort failure rate 10.0%")
    # Accepted by a resume: the same failures no longer count, the stage is done.
    resumed = replace(r, resumed_ms=NOW + 5)
    assert plan.decide(resumed, plan.tally(resumed, DEVICES, reports, now_ms=NOW + 10)).action == "advance"


def test_timeout_counts_as_failure_and_halted_devices_wait() -> None:
    m = manifest()
    members = sorted(plan.stage_members(m, DEVICES))
    r = rollout(m, abort_failure_rate=1.0)
    reports = {d: Report("downloading", None, NOW + 1) for d in members}
    before = plan.tally(r, DEVICES, reports, now_ms=NOW + 59_999)
    assert before[0].in_flight == len(members) and plan.decide(r, before).action == "wait"
    after = plan.tally(r, DEVICES, reports, now_ms=NOW + 60_000)
    assert after[0].failed == {"timed_out": len(members)}
    stopped = {d: Report("failed", "halted", NOW + 1) for d in members}
    assert plan.tally(r, DEVICES, stopped, now_ms=NOW + 1)[0].waiting == len(members)


def test_an_offline_device_is_counted_and_its_timeout_is_named_offline() -> None:
    m = manifest()
    members = sorted(plan.stage_members(m, DEVICES))
    away, rest = members[:2], members[2:]
    r = rollout(m, abort_failure_rate=1.0)
    reports = {d: Report("downloading", None, NOW + 1) for d in rest}
    before = plan.tally(r, DEVICES, reports, now_ms=NOW + 59_999, offline=set(away))
    assert (before[0].waiting, before[0].in_flight, before[0].offline) == (2, len(rest), 2)
    assert before[0].as_json()["offline"] == 2
    after = plan.tally(r, DEVICES, reports, now_ms=NOW + 60_000, offline=set(away))
    # Still failures (the stage timed out for them), named by why; the abort rate counts both.
    assert after[0].failed == {"offline": 2, "timed_out": len(rest)}
    assert after[0].counted_failures == len(members) and after[0].offline == 0


def test_last_stage_done_and_next_manifest_keeps_the_artifacts() -> None:
    last = manifest(version=6, stage=2)
    r = rollout(last)
    reports = {d: Report("committed", None, NOW) for d in plan.stage_members(last, DEVICES)}
    assert plan.decide(r, plan.tally(r, DEVICES, reports, now_ms=NOW)).action == "done"
    m = manifest()
    halt = plan.next_manifest(m, version=4, halted=True)
    assert (halt.version, halt.stage, halt.halted, halt.artifacts) == (4, 0, True, m.artifacts)
    resume = plan.next_manifest(halt, version=5)
    assert resume.halted is None and "halted" not in resume.model_dump(exclude_none=True)
    assert plan.next_manifest(m, version=4, stage=1).stage == 1
    with pytest.raises(ValueError, match="version 3 must be above the current 3"):
        plan.next_manifest(m, version=3)
    with pytest.raises(Exception, match="halted"):
        validate_body("manifest", manifest_body(halted=False))


def test_inbox_refuses_replay_forgery_and_flood_by_name() -> None:
    topics = Topics()
    key = KEYS[0]
    dev = str(key.pubkey())
    inbox = DeployInbox(topics, burst=3, rate_per_s=1.0)
    body = {
        "channel": "stable",
        "manifest_version": 3,
        "model_id": "m",
        "model_sha256": "ab" * 32,
        "state": "received",
    }
    signer = ChainSigner(key)
    first = signer.next("deploy", body, NOW).wire
    topic = topics.for_kind("deploy", dev)
    assert not hasattr(inbox.judge(topic, first, enrolled={dev}, now_s=0.0), "reason")
    assert inbox.judge(topic, first, enrolled={dev}, now_s=0.0).reason == "replay"  # type: ignore[union-attr]
    other = str(KEYS[1].pubkey())
    refused = inbox.judge(topics.for_kind("deploy", other), first, enrolled={dev, other}, now_s=0.0)
    assert refused.reason == "topic"  # type: ignore[union-attr]
    assert inbox.judge(topic, b"{", enrolled={dev}, now_s=0.0).reason == "malformed"  # type: ignore[union-attr]
    assert inbox.judge(topic, b"{", enrolled={dev}, now_s=0.0).reason == "flooded"  # type: ignore[union-attr]
    assert inbox.judge(topic, b"{", enrolled={dev}, now_s=5.0).reason == "malformed"  # type: ignore[union-attr]
    stranger = ChainSigner(KEYS[2]).next("deploy", body, NOW).wire
    s_topic = topics.for_kind("deploy", str(KEYS[2].pubkey()))
    assert inbox.judge(s_topic, stranger, enrolled={dev}, now_s=5.0).reason == "unknown_device"  # type: ignore[union-attr]
    assert inbox.counters == {
        "deploy_taken": 1,
        "replay": 1,
        "topic": 1,
        "flooded": 1,
        "malformed": 2,
        "unknown_device": 1,
    }


def test_token_bucket_refills() -> None:
    bucket = TokenBucket(burst=2, rate_per_s=1.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(1.0) and not bucket.take(1.0)


def test_propose_signs_the_next_manifest_into_a_signing_file_and_publishes_nothing(tmp_path: Path) -> None:
    key = Keypair.from_seed(bytes([11]) * 32)
    state_path = tmp_path / "state.json"
    m = manifest()
    proposed = publish_next(
        None,  # type: ignore[arg-type]  # a proposal never touches the broker
        Topics(),
        state_path,
        key,
        m,
        stage=1,
        now_ms=NOW,
        abort_failure_rate=0.1,
        propose=tmp_path / "proposals",
        threshold=2,
    )
    assert (proposed.version, proposed.stage) == (4, 1)
    signing = load_signing_file(tmp_path / "proposals" / "stable-v4.json")
    assert signing.manifest == proposed and signing.threshold == 2 and not signing.ready
    assert signing.envelope.signers == (str(key.pubkey()),) and signing.envelope.seq == 1
    state = json.loads(state_path.read_text(encoding="utf-8"))  # written before the file
    assert (state["seq"], state["channels"]["stable"]["version"]) == (1, 4)
    assert state["head"] == signing.envelope.hash
    with pytest.raises(
        FleetError, match="version 4 on channel 'stable' is not above this operator's highest 4"
    ):
        sign_manifest(state_path, key, proposed, now_ms=NOW, abort_failure_rate=0.1)


def test_status_halt_and_resume_refuse_a_channel_without_a_rollout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(
        '[storage]\nsqlite_path = "c.sqlite3"\n[mqtt]\nhost = "127.0.0.1"\nport = 1\n', encoding="utf-8"
    )
    Store.open(sqlite_path=tmp_path / "c.sqlite3").close()
    key = tmp_path / "op.json"
    key.write_text(json.dumps(list(bytes(Keypair.from_seed(bytes([11]) * 32)))), encoding="utf-8")
    key.chmod(0o600)
    assert main(["fleet", "status", "--coordinator-config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"rollouts": [], "refusals": {}}
    assert main(["fleet", "status", "--coordinator-config", str(config), "--channel", "beta"]) == 17
    assert "refused (no_rollout): no rollout is recorded for channel 'beta'" in capsys.readouterr().err
    for verb in ("halt", "resume"):
        args = ["fleet", verb, "--coordinator-config", str(config), "--channel", "beta", "--key", str(key)]
        assert main([*args, "--state", str(tmp_path / "s.json")]) == 17
        assert "refused (no_rollout)" in capsys.readouterr().err


class RecordingBroker:
    """Stands in for the broker session in this one-component test: keeps what is published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish_retained(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))


def test_the_controller_advances_on_a_real_store_and_a_restart_keeps_the_replay_floor(tmp_path: Path) -> None:
    from agent.commands.fleet_rollout import CoordinatorRollouts
    from agent.coordinator.store import DeviceRecord
    from agent.fleet.rollout_run import ControllerSettings, RolloutController
    from agent.protocol.envelope import build_envelope, verify_envelope

    operator = Keypair.from_seed(bytes([11]) * 32)
    store = Store.open(sqlite_path=tmp_path / "c.sqlite3")
    with store.transaction():
        for k in KEYS[:20]:
            store.enroll(DeviceRecord(str(k.pubkey()), "owner", "rpi4", (), NOW, "sig", NOW))
    m = manifest(stages=[5000, 10_000], targets={"profiles": ["rpi4"]})
    settings = ControllerSettings(
        channel="stable",
        key=operator,
        state=tmp_path / "state.json",
        operators=frozenset({str(operator.pubkey())}),
        abort_failure_rate=0.2,
        stage_timeout_ms=600_000,
    )
    topics = Topics()
    broker = RecordingBroker()
    controller = RolloutController(CoordinatorRollouts(store), broker, topics, settings)  # type: ignore[arg-type]
    first = build_envelope(operator, "manifest", m, seq=1, prev="0" * 64, ts=NOW, dev=str(operator.pubkey()))
    controller.handle(topics.manifest("stable"), first.wire)
    members = plan.stage_members(m, [Member(str(k.pubkey()), "rpi4") for k in KEYS[:20]])
    assert 3 <= len(members) <= 17
    body = {
        "channel": "stable",
        "manifest_version": 3,
        "model_id": m.model_id,
        "model_sha256": m.model_sha256,
    }
    signers = {str(k.pubkey()): ChainSigner(k) for k in KEYS[:20]}
    wires = {dev: signers[dev].next("deploy", {**body, "state": "committed"}, NOW).wire for dev in members}
    for dev, wire in wires.items():
        controller.handle(topics.for_kind("deploy", dev), wire)
    outsider = next(d for d in signers if d not in members)
    controller.handle(
        topics.for_kind("deploy", outsider),
        signers[outsider].next("deploy", {**body, "state": "received"}, NOW).wire,
    )
    decision = controller.tick()
    assert decision is not None and decision.action == "advance"
    ((topic, payload),) = broker.published
    env = verify_envelope(payload)
    assert topic == topics.manifest("stable") and env.dev == str(operator.pubkey()) and env.seq == 1
    assert isinstance(env.body, Manifest) and (env.body.version, env.body.stage) == (4, 1)
    assert controller.inbox.counters["not_in_stage"] == 1
    # A new controller on the same database: the stored reports set each device's replay floor.
    again = RolloutController(CoordinatorRollouts(store), broker, topics, settings)  # type: ignore[arg-type]
    dev, wire = next(iter(wires.items()))
    again.handle(topics.for_kind("deploy", dev), wire)
    assert again.inbox.counters["replay"] == 1
    rollout = CoordinatorRollouts(store).load("stable")
    assert rollout is not None and rollout.stage == 1 and rollout.manifest.version == 4
    store.close()
