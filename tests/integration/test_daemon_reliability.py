"""The device daemon's reliability, proven against a real Mosquitto.

Every test runs the real daemon (``python -m agent run`` in a subprocess) with the shipped
EfficientNet-Lite0 int8 model, a synthetic source, 5 s windows and 1 s heartbeats, and a
device key made from a fixed seed.  A persistent-session subscriber records what the broker
delivers on the device's topics; the capture is checked with the protocol's own verifier.
The daemon's own account (its outbox state, ``status.json``, ``edgeproof status --json``,
its log lines, ``/metrics``) is compared with what arrived.

* outage: the broker is down for 30 s; nothing is lost, nothing forks, order is kept;
* kill -9 mid-window and restart: the chain continues from the last committed envelope;
  only rows that were still unacknowledged in the outbox may arrive twice (same bytes);
* hostile inbound: garbage, oversized, forged, misrouted and foreign-key envelopes on every
  inbound topic are rejected one by one, counted by reason, and the daemon keeps working;
* full outbox: the byte bound and a real ENOSPC on a small tmpfs apply the overflow policy;
  every gap in the chain is a heartbeat the policy dropped and counted;
* heartbeats-only mode and the Prometheus endpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.device.state_store import StateStore
from agent.device.status import read_status
from agent.inference.cards import load_card
from agent.protocol.capture import verify_capture
from agent.protocol.envelope import GENESIS_PREV, Envelope, build_envelope, envelope_hash
from agent.protocol.messages import Beacon, Challenge, Heartbeat
from agent.transport.outbox import RESERVE_BYTES
from tests.support.daemon_rig import (
    COORDINATOR,
    DEV,
    MODEL,
    OPERATOR,
    PREFIX,
    ROGUE,
    ROOT,
    DaemonProcess,
    Publisher,
    capture_of,
    chained_emitted,
    clean_env,
    collector_for,
    edgeproof_status,
    final_chain,
    now_ms,
    outbox_facts,
    wait_until,
    write_config,
)
from tests.support.envelopes import bodies, coordinator_envelope, forged, manifest
from tests.support.mosquitto import Collector, MosquittoBroker, free_port

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs file systems; unmounted in teardown.  Failing to mount FAILS the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"cannot mount a {size} tmpfs on {target} (needs root or CAP_SYS_ADMIN): "
                f"{done.stderr.decode(errors='replace').strip()}; the full-disk test needs a real small file system",
                pytrace=False,
            )
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        if subprocess.run(["umount", str(target)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


# ---------------------------------------------------------------------------------------- 1. outage


def test_broker_outage_30s_every_envelope_arrives_once_in_order_and_verifies(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)  # sessions survive the restart
    broker.start()
    collector = collector_for(broker, "outage")
    config = write_config(tmp_path / "device", broker)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        wait_until(
            lambda: (
                capture_of(collector).kinds()["proof"] >= 1
                and capture_of(collector).kinds()["heartbeat"] >= 3
            ),
            90,
            "a first proof and three heartbeats through the broker",
        )
        broker.stop()
        down_at, down_ms = time.monotonic(), now_ms()
        wait_until(
            lambda: (
                (s := daemon.status()).get("outbox", {}).get("depth", 0) >= 5
                and not s["transport"]["connected"]
            ),
            OUTAGE_S,
            "the daemon to queue messages in its outbox while the broker is down",
        )
        assert daemon.alive(), daemon.tail()
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the outage itself, not a check
        up_ms = now_ms()
        broker.start()  # same port, same persistence file
        wait_until(
            lambda: (
                (s := daemon.status()).get("transport", {}).get("connected")
                and s["transport"]["reconnects"] >= 1
                and s["outbox"]["depth"] == 0
            ),
            60,
            "the daemon to reconnect and drain its outbox",
        )
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.ensure_dead()

    try:
        status = read_status(daemon.state_dir)
        assert status is not None
        seq, head = final_chain(daemon.state_dir / "outbox.sqlite3")
        facts = outbox_facts(daemon.state_dir / "outbox.sqlite3")
        assert facts["integrity"] == "ok"
        assert facts["pending_seqs"] == set(), "SIGTERM flushed everything to the broker"
        # The daemon's own count: every chained envelope it made is in its chain (fresh state).
        assert chained_emitted(status["counters"]) == seq, status["counters"]
        assert status["outbox"]["dropped_total"] == 0

        wait_until(
            lambda: capture_of(collector).seqs >= set(range(1, seq + 1)),
            30,
            f"seq 1..{seq} at the subscriber",
        )
        cap = capture_of(collector)
    finally:
        collector.close()
        broker.kill()

    assert cap.seqs == set(range(1, seq + 1)), f"missing {sorted(set(range(1, seq + 1)) - cap.seqs)}"
    assert cap.forks == []
    assert cap.arrival == sorted(cap.arrival), "first deliveries out of seq order"
    assert cap.first[seq].hash == head
    during = [e for e in cap.first.values() if down_ms < e.ts < up_ms]
    kinds_during = Counter(e.kind for e in during)
    assert kinds_during["heartbeat"] >= 20 and kinds_during["proof"] >= 4, (
        f"envelopes made during the {OUTAGE_S:g}s outage: {dict(kinds_during)}"
    )
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]
    signer = report.signers[DEV]
    assert signer.first_seq == 1 and signer.last_seq == seq and signer.missing == []
    assert signer.counts["duplicates"] == sum(cap.duplicates.values())


# ---------------------------------------------------------------------------------------- 2. kill -9


def test_sigkill_mid_window_then_restart_continues_the_chain_without_fork(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "sigkill")
    config = write_config(tmp_path / "device", broker)
    outbox_path = tmp_path / "device" / "state" / "outbox.sqlite3"
    first = DaemonProcess(config, tmp_path / "daemon1.log")
    second = DaemonProcess(config, tmp_path / "daemon2.log")
    first.start()
    try:
        wait_until(lambda: capture_of(collector).kinds()["proof"] >= 1, 90, "a first proof")
        proofs_before = first.status().get("counters", {}).get("proof_emitted", 0)
        # Mid-window: the open window already holds inferences, and no proof closed it since.
        wait_until(
            lambda: (
                (s := first.status()).get("window", {}).get("inferences", 0) >= 2
                and s["counters"].get("proof_emitted", 0) == proofs_before
            ),
            20,
            "inferences in the open window",
            every=0.1,
        )
        killed_status = first.status()
        assert first.kill9() == -signal.SIGKILL
        delivered_at_kill = capture_of(collector).seqs

        facts = outbox_facts(outbox_path)
        assert facts["integrity"] == "ok", "the outbox survived kill -9 intact"
        kill_seq, kill_head = int(facts["state"]["seq"]), str(facts["state"]["prev"])
        unacked_at_kill = facts["pending_seqs"]
        assert kill_seq >= killed_status["chain"]["seq"]  # nothing the daemon reported was lost
        assert delivered_at_kill <= set(range(1, kill_seq + 1)), "the broker saw no seq the outbox forgot"
        assert unacked_at_kill <= set(range(1, kill_seq + 1))

        second.start()
        wait_until(
            lambda: (
                any(e.seq > kill_seq for e in capture_of(collector).of_kind("proof"))
                and max(capture_of(collector).seqs) >= kill_seq + 4
            ),
            90,
            "new proofs and heartbeats from the restarted daemon",
        )
        assert second.terminate() == 0, second.tail()
    finally:
        first.ensure_dead()
        second.ensure_dead()

    try:
        seq, head = final_chain(outbox_path)
        wait_until(lambda: capture_of(collector).seqs >= set(range(1, seq + 1)), 30, f"seq 1..{seq}")
        cap = capture_of(collector)
    finally:
        collector.close()
        broker.kill()

    assert cap.seqs == set(range(1, seq + 1)), f"missing {sorted(set(range(1, seq + 1)) - cap.seqs)}"
    assert cap.forks == [], f"seqs delivered twice with different content: {cap.forks}"
    # The restarted daemon chained onto the last committed envelope: same seq, same hash.
    assert cap.first[kill_seq].hash == kill_head
    assert cap.first[kill_seq + 1].prev == envelope_hash(cap.first[kill_seq])
    assert cap.first[seq].hash == head
    # Re-sent after the restart: only rows still unacknowledged in the outbox at the kill,
    # byte for byte (a PUBACK lost with the process); never an acknowledged one, never new content.
    resent = set(cap.duplicates)
    assert resent <= unacked_at_kill, (
        f"re-sent seqs {sorted(resent)} not all among the unacknowledged rows {sorted(unacked_at_kill)}"
    )
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]
    signer = report.signers[DEV]
    assert signer.counts["forks"] == 0 and signer.counts["replays"] == 0 and signer.missing == []
    assert signer.counts["duplicates"] == sum(cap.duplicates.values())
    logs = second.logs()
    configured = [r for r in logs if r.get("msg") == "daemon configured"]
    assert configured and configured[0]["chain_seq"] == kill_seq


# ---------------------------------------------------------------------------------------- 3. hostile


def test_hostile_inbound_is_rejected_by_reason_and_the_daemon_keeps_working(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "hostile")
    metrics_port = free_port()
    config = write_config(
        tmp_path / "device",
        broker,
        max_fps=1.0,
        coordinator=str(COORDINATOR.pubkey()),
        metrics_port=metrics_port,
        manifest_channel="stable",
    )
    card = load_card(str(MODEL)).card
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    publisher = Publisher(broker)
    daemon.start()
    topics = {
        "beacon": f"{PREFIX}/beacon",
        "challenge": f"{PREFIX}/dev/{DEV}/challenge",
        "verdict": f"{PREFIX}/dev/{DEV}/verdict",
        "voucher": f"{PREFIX}/dev/{DEV}/voucher",
    }
    try:
        # Subscribed (one SUBSCRIBE carries all filters): a heartbeat quotes our beacon's nonce.
        beacon = coordinator_envelope(
            "beacon", Beacon(slot=3, nonce="aa" * 32, time_ms=now_ms(), slot_ms=30_000)
        )
        publisher.publish(topics["beacon"], beacon.wire, retain=True)  # as a coordinator does
        wait_until(
            lambda: any(
                e.raw["body"]["beacon_nonce"] == "aa" * 32 for e in capture_of(collector).of_kind("heartbeat")
            ),
            90,
            "a heartbeat quoting the coordinator's beacon",
        )

        good = bodies(DEV, card.sha256)
        other = bodies(str(ROGUE.pubkey()), card.sha256)
        wrong_kind_for = {
            "beacon": "verdict",
            "challenge": "beacon",
            "verdict": "voucher",
            "voucher": "challenge",
        }
        device_heartbeat = build_envelope(
            ROGUE,
            "heartbeat",
            Heartbeat.model_validate(
                {
                    "beacon_slot": 1,
                    "beacon_nonce": "00" * 32,
                    "uptime_s": 1,
                    "health": {"cpu_bp": 1, "mem_bp": 1},
                }
            ),
            seq=1,
            prev=GENESIS_PREV,
            ts=now_ms(),
        )
        hostile: list[tuple[str, bytes, str]] = []
        for kind, topic in topics.items():
            hostile += [
                (topic, b'{"v":1,"kind":', "malformed"),
                (topic, b"\xff\xfe\x00 not utf-8", "malformed"),
                (topic, b"[]", "malformed"),
                (topic, b'{"v":1.5}', "malformed"),
                (topic, b"[" * 5000 + b"]" * 5000, "oversized"),  # 10000 bytes: over every bound
                (topic, b"{" + b" " * 8200 + b"}", "oversized"),  # just above the 8192-byte bound
                (topic, forged(coordinator_envelope(kind, good[kind])), "bad_signature"),
                (
                    topic,
                    coordinator_envelope(wrong_kind_for[kind], good[wrong_kind_for[kind]]).wire,
                    "wrong_kind",
                ),
                (topic, device_heartbeat.wire, "wrong_kind"),
                # Another key than the pinned coordinator (was `unknown_device` before issue 6).
                (topic, coordinator_envelope(kind, good[kind], signer=ROGUE).wire, "untrusted_coordinator"),
            ]
            if kind != "beacon":
                # Addressed to another device, on ours: refused by the topic check, before the signature.
                hostile.append((topic, coordinator_envelope(kind, other[kind]).wire, "topic"))
        hostile.append((topics["challenge"], b"\x00" * 1_000_000, "oversized"))
        # Fleet manifests: v5 is accepted first (retained, as an operator publishes it), then
        # everything that must not replace it.
        manifest_topic = f"{PREFIX}/fleet/manifest/stable"
        publisher.publish(
            manifest_topic, coordinator_envelope("manifest", manifest(5), OPERATOR).wire, retain=True
        )
        wait_until(
            lambda: daemon.status().get("manifests", {}).get("stable", {}).get("version") == 5,
            30,
            "the daemon to accept manifest v5",
        )
        hostile += [
            (manifest_topic, b'{"v":1,"kind":', "malformed"),
            (manifest_topic, b"{" + b" " * 8200 + b"}", "oversized"),
            (
                manifest_topic,
                forged(coordinator_envelope("manifest", manifest(6), OPERATOR)),
                "bad_signature",
            ),
            (manifest_topic, coordinator_envelope("beacon", good["beacon"]).wire, "wrong_kind"),
            (manifest_topic, coordinator_envelope("manifest", manifest(6), ROGUE).wire, "untrusted_operator"),
            # The coordinator's key is trusted for beacons and challenges, not for models.
            (manifest_topic, coordinator_envelope("manifest", manifest(6)).wire, "untrusted_operator"),
            (
                manifest_topic,
                coordinator_envelope("manifest", manifest(6, channel="beta"), OPERATOR).wire,
                "wrong_channel",
            ),
            (manifest_topic, coordinator_envelope("manifest", manifest(4), OPERATOR).wire, "stale_version"),
            (
                manifest_topic,
                coordinator_envelope("manifest", manifest(6, expires_ms=now_ms() - 1), OPERATOR).wire,
                "expired",
            ),
        ]
        # A genuine but older beacon (a replay) must not roll the heartbeats' beacon back.
        old_beacon = Beacon(slot=2, nonce="bb" * 32, time_ms=now_ms(), slot_ms=30_000)
        hostile.append((topics["beacon"], coordinator_envelope("beacon", old_beacon).wire, "replay"))
        # Valid envelopes the daemon must still refuse to act on (answer_challenges):
        expired = Challenge(device=DEV, nonce="55" * 32, model_sha256=card.sha256, deadline_ms=now_ms() - 1)
        wrong_model = Challenge(
            device=DEV, nonce="66" * 32, model_sha256="77" * 32, deadline_ms=now_ms() + 60_000
        )
        refused = [
            (topics["challenge"], coordinator_envelope("challenge", expired).wire, "expired"),
            (topics["challenge"], coordinator_envelope("challenge", wrong_model).wire, "wrong_model"),
        ]
        # Nothing the daemon can act on may be in the hostile list (a regression guard on this test).
        assert all(reason != "ok" for _, _, reason in hostile)

        for topic, payload, _ in hostile + refused:
            publisher.publish(topic, payload)
        after_garbage_ms = now_ms()

        nonce = os.urandom(32).hex()
        challenge = Challenge(
            device=DEV, nonce=nonce, model_sha256=card.sha256, deadline_ms=now_ms() + 60_000
        )
        publisher.publish(topics["challenge"], coordinator_envelope("challenge", challenge, seq=9).wire)
        responses = wait_until(
            lambda: [
                e
                for e in capture_of(collector).of_kind("challenge_response")
                if e.raw["body"]["nonce"] == nonce
            ],
            60,
            "the answer to the valid challenge sent after the garbage",
        )
        wait_until(
            lambda: any(e.ts > after_garbage_ms + 1500 for e in capture_of(collector).of_kind("heartbeat")),
            30,
            "heartbeats after the garbage",
        )
        late = [e for e in capture_of(collector).of_kind("heartbeat") if e.ts > after_garbage_ms]
        assert {e.raw["body"]["beacon_nonce"] for e in late} == {"aa" * 32}, (
            "the beacon replay rolled it back"
        )
        assert daemon.alive(), daemon.tail()

        expected = Counter(reason for _, _, reason in hostile + refused)
        wait_until(
            lambda: daemon.status().get("rejected_inbound") == dict(expected),
            15,
            f"status.json to count the rejections {dict(expected)}",
        )
        owner_view = edgeproof_status(config)
        scraped = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        )
    finally:
        publisher.close()
        code = daemon.terminate() if daemon.alive() else None
        daemon.ensure_dead()
        cap = capture_of(collector)
        collector.close()
        broker.kill()

    assert code == 0, daemon.tail()
    assert owner_view["running"] is True
    assert owner_view["rejected_inbound"] == dict(expected)
    assert owner_view["counters"]["challenges_answered"] == 1
    # Only v5 was accepted; nothing hostile replaced it.
    assert owner_view["counters"]["manifests_accepted"] == 1
    stable = owner_view["manifests"]["stable"]
    assert (stable["version"], stable["operator"], stable["eligible"]) == (5, str(OPERATOR.pubkey()), True)
    # The accepted version is kept beside the chain head (and in the state copy), so a restart
    # still refuses v4.
    state_dir = tmp_path / "device" / "state"
    with StateStore.open(state_dir / "outbox.sqlite3") as kept:
        assert kept.manifest_version("stable") == 5
    assert json.loads((state_dir / "state-copy.json").read_text())["manifests"] == {"stable": 5}

    # Every rejection is logged naming its reason: one line each, up to 5 per reason per 10 s;
    # beyond that one summary line per reason carries the count (a flood does not flood journald).
    logs = daemon.logs()
    logged = Counter(
        r["reason"] for r in logs if r.get("msg") in ("inbound message rejected", "challenge refused")
    )
    assert all(n <= 5 * 3 for n in logged.values()), logged
    held: Counter[str] = Counter()
    for r in logs:
        if r.get("msg") == "inbound rejections not logged one by one":
            held[r["reason"]] += r["count"]
    assert logged + held == expected
    assert not [r for r in logs if r.get("msg", "").startswith("inbound handler failed")]

    # The answer is right: the same sketch as the model run here on the nonce's synthetic input.
    from agent.challenge_run import expected_sketch
    from agent.inference.pipeline import Pipeline
    from agent.inference.runtime import backend_settings, resolve_profile
    from agent.protocol.challenge import sketch_matches

    local = Pipeline.open(
        str(MODEL), backend_settings(resolve_profile("generic-x86_64", Path("/")), threads=1)
    )
    want, _ = expected_sketch(local, nonce)
    assert len(responses) == 1
    assert sketch_matches(responses[0].raw["body"]["sketch"], want)

    # Still a clean chain, and no answer to any of the refused challenges.
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]
    answered = {e.raw["body"]["nonce"] for e in cap.of_kind("challenge_response")}
    assert answered == {nonce}

    # /metrics counts the same rejections.
    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    by_reason = {
        s.labels["reason"]: s.value
        for s in families["edgeproof_inbound_rejected"].samples
        if s.name.endswith("_total")
    }
    assert by_reason == {k: float(v) for k, v in expected.items()}
    inferences = [s.value for s in families["edgeproof_inferences"].samples if s.name.endswith("_total")]
    assert inferences and inferences[0] > 0
    accepted = [
        s.value for s in families["edgeproof_manifests_accepted"].samples if s.name.endswith("_total")
    ]
    assert accepted == [1.0]


def heartbeats_quoting(collector: Collector, nonce: str) -> list[Envelope]:
    return [e for e in capture_of(collector).of_kind("heartbeat") if e.raw["body"]["beacon_nonce"] == nonce]


def test_a_beacon_from_the_future_is_refused_and_the_next_genuine_beacon_is_quoted(tmp_path: Path) -> None:
    """Issue 6, beacon lockout: on main a signed beacon with a huge slot was taken, and every
    genuine beacon after it was refused as a replay until a restart."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "beacons")
    config = write_config(
        tmp_path / "device",
        broker,
        coordinator=str(COORDINATOR.pubkey()),
        extra="[beacons]\ntolerance_s = 60",
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    publisher = Publisher(broker)
    topic = f"{PREFIX}/beacon"
    daemon.start()
    try:
        wait_until(lambda: capture_of(collector).kinds()["heartbeat"] >= 2, 90, "the daemon online")
        now = now_ms()
        # First beacon after the start: its time is an hour ahead (no earlier beacon to compare with).
        ahead = Beacon(slot=100, nonce="a1" * 32, time_ms=now + 3_600_000, slot_ms=30_000)
        publisher.publish(topic, coordinator_envelope("beacon", ahead, seq=10).wire)
        genuine = Beacon(slot=100, nonce="a2" * 32, time_ms=now - 10_000, slot_ms=30_000)
        publisher.publish(topic, coordinator_envelope("beacon", genuine, seq=11).wire)
        wait_until(lambda: heartbeats_quoting(collector, "a2" * 32), 30, "a heartbeat quoting slot 100")
        # A genuinely signed beacon with a huge slot and a plausible time: the lockout attempt.
        huge = Beacon(slot=10**12, nonce="a3" * 32, time_ms=now_ms(), slot_ms=30_000)
        publisher.publish(topic, coordinator_envelope("beacon", huge, seq=12).wire)
        following = Beacon(slot=101, nonce="a4" * 32, time_ms=now_ms(), slot_ms=30_000)
        publisher.publish(topic, coordinator_envelope("beacon", following, seq=13).wire)
        quoted = wait_until(
            lambda: heartbeats_quoting(collector, "a4" * 32), 30, "a heartbeat quoting slot 101"
        )
        wait_until(
            lambda: daemon.status().get("rejected_inbound") == {"beacon_from_future": 2},
            15,
            "both future beacons counted",
        )
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        publisher.close()
        daemon.ensure_dead()
        cap = capture_of(collector)
        collector.close()
        broker.kill()
    assert quoted[0].raw["body"]["beacon_slot"] == 101
    quoted_nonces = {e.raw["body"]["beacon_nonce"] for e in cap.of_kind("heartbeat")}
    assert "a1" * 32 not in quoted_nonces and "a3" * 32 not in quoted_nonces
    # Once slot 101 was quoted, no later heartbeat quotes anything else.
    after = [e for e in cap.of_kind("heartbeat") if e.seq >= quoted[0].seq]
    assert {e.raw["body"]["beacon_slot"] for e in after} == {101}
    refused = [r for r in daemon.logs() if r.get("msg") == "inbound message rejected"]
    assert [r["reason"] for r in refused] == ["beacon_from_future", "beacon_from_future"]
    assert re.fullmatch(
        r"beacon time is 3[0-6]\d{5} ms ahead of the device clock \(tolerance 60000 ms\)", refused[0]["error"]
    ), refused[0]["error"]
    assert re.fullmatch(
        rf"beacon slot {10**12} is {10**12 - 100} slots past slot 100; at most [5-9] can have started since "
        r"\(slot 30000 ms\)",
        refused[1]["error"],
    ), refused[1]["error"]


def test_without_a_coordinator_pin_every_coordinator_message_is_refused_and_proofs_continue(
    tmp_path: Path,
) -> None:
    """Issue 6, unpinned coordinator: on main an empty pin trusted whoever signed."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "unpinned")
    metrics_port = free_port()
    config = write_config(tmp_path / "device", broker, coordinator="", metrics_port=metrics_port)
    card = load_card(str(MODEL)).card
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    publisher = Publisher(broker)
    daemon.start()
    try:
        wait_until(lambda: capture_of(collector).kinds()["heartbeat"] >= 2, 90, "the daemon online")
        good = bodies(DEV, card.sha256)
        topics = {
            "beacon": f"{PREFIX}/beacon",
            "challenge": f"{PREFIX}/dev/{DEV}/challenge",
            "verdict": f"{PREFIX}/dev/{DEV}/verdict",
            "voucher": f"{PREFIX}/dev/{DEV}/voucher",
        }
        for seq, (kind, topic) in enumerate(topics.items(), start=1):
            publisher.publish(topic, coordinator_envelope(kind, good[kind], seq=seq).wire)
        sent_ms = now_ms()
        wait_until(
            lambda: daemon.status().get("rejected_inbound") == {"unpinned_coordinator": 4},
            30,
            "four coordinator messages refused as unpinned",
        )
        wait_until(
            lambda: (
                any(e.ts > sent_ms for e in capture_of(collector).of_kind("proof"))
                and sum(e.ts > sent_ms for e in capture_of(collector).of_kind("heartbeat")) >= 3
            ),
            60,
            "proofs and heartbeats after the refusals",
        )
        owner_json = edgeproof_status(config)
        owner_text = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--config", str(config)],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout.decode()
        scraped = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        )
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        publisher.close()
        daemon.ensure_dead()
        cap = capture_of(collector)
        collector.close()
        broker.kill()
    assert owner_json["coordinator"] == {
        "pinned": False,
        "pubkey": None,
        "notice": "coordinator: not pinned, every coordinator message is refused",
    }
    assert owner_json["rejected_inbound"] == {"unpinned_coordinator": 4}
    assert owner_json["beacon_slot"] == 0 and "challenges_answered" not in owner_json["counters"]
    assert "vouchers_seen" not in owner_json["counters"]
    assert "not pinned, every coordinator message is refused (set coordinator.pubkey)" in owner_text
    assert owner_json["verdicts"] == []
    # Heartbeats quote no beacon; proofs and heartbeats kept flowing; nothing was answered.
    assert {
        (e.raw["body"]["beacon_slot"], e.raw["body"]["beacon_nonce"]) for e in cap.of_kind("heartbeat")
    } == {(0, "0" * 64)}
    assert cap.kinds()["proof"] >= 1 and cap.kinds()["challenge_response"] == 0
    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    by_reason = {
        s.labels["reason"]: s.value
        for s in families["edgeproof_inbound_rejected"].samples
        if s.name.endswith("_total")
    }
    assert by_reason == {"unpinned_coordinator": 4.0}
    assert [s.value for s in families["edgeproof_coordinator_pinned"].samples] == [0.0]
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]


# ---------------------------------------------------------------------------------------- 4. full outbox


@pytest.mark.parametrize("limit", ["byte_bound", "enospc"])
def test_full_outbox_keeps_proofs_drops_oldest_heartbeats_and_explains_every_gap(
    tmp_path: Path, tmpfs: Callable[[str], Path], limit: str
) -> None:
    """Broker down, outbox on a small tmpfs.  ``byte_bound``: the configured 6144-byte bound
    fills.  ``enospc``: the bound is far away but the file system fills up (a filler file takes
    every free block), so SQLite itself answers SQLITE_FULL."""
    disk = tmpfs("1m")
    outbox_path = disk / "outbox.sqlite3"
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    collector = collector_for(broker, f"disk-{limit}")
    config = write_config(
        tmp_path / "device",
        broker,
        outbox_path=outbox_path,
        max_bytes=6144 if limit == "byte_bound" else None,
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        wait_until(lambda: capture_of(collector).kinds()["heartbeat"] >= 2, 90, "the daemon online")
        broker.stop()
        assert Path(str(outbox_path) + "-reserve").stat().st_size == RESERVE_BYTES
        if limit == "enospc":
            with open(disk / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
                while True:
                    filler.write(b"\0" * 4096)
                    filler.flush()
            with pytest.raises(OSError) as full:
                (disk / "probe").write_bytes(b"\0" * 8192)
            assert full.value.errno == errno.ENOSPC
            reasons = {"disk_full_evicted"}
        else:
            reasons = {"evicted_full"}
        proofs_at_full = daemon.status().get("counters", {}).get("proof_emitted", 0)

        def heartbeats_dropped() -> int:
            drops = daemon.status().get("outbox", {}).get("drops", {}).get("heartbeat", {})
            return sum(drops.get(r, 0) for r in reasons)

        wait_until(
            lambda: (
                heartbeats_dropped() >= 3
                and daemon.status()["counters"].get("proof_emitted", 0) >= proofs_at_full + 2
            ),
            60,
            f"heartbeats dropped by the policy ({limit}) while proofs keep being made",
        )
        assert daemon.alive(), daemon.tail()
        broker.start()
        wait_until(
            lambda: (
                (s := daemon.status()).get("transport", {}).get("connected") and s["outbox"]["depth"] == 0
            ),
            60,
            "the kept messages to drain once the broker is back",
        )
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.ensure_dead()

    try:
        status = read_status(daemon.state_dir)
        assert status is not None
        facts = outbox_facts(outbox_path)
        seq = int(facts["state"]["seq"])
        wait_until(lambda: max(capture_of(collector).seqs) >= seq, 30, f"seq {seq} at the subscriber")
        cap = capture_of(collector)
    finally:
        collector.close()
        broker.kill()

    assert facts["integrity"] == "ok", "the outbox database is intact"
    counters = status["counters"]
    drops = status["outbox"]["drops"]
    assert "proof" not in drops, f"proofs are never dropped: {drops}"
    assert set(drops["heartbeat"]) <= {"evicted_full", "disk_full_evicted"}, drops
    assert counters.get("heartbeat_lost", 0) == 0 and counters.get("proof_lost", 0) == 0, counters
    chained_drops = sum(n for kind, reasons_ in drops.items() if kind != "status" for n in reasons_.values())
    assert chained_emitted(counters) == seq

    missing = set(range(1, seq + 1)) - cap.seqs
    assert len(missing) == chained_drops, f"gaps {sorted(missing)} vs drops {drops}"
    assert cap.forks == [] and cap.arrival == sorted(cap.arrival)
    assert len(cap.of_kind("proof")) == counters["proof_emitted"], "every proof arrived"
    # The oldest heartbeats went: no kept heartbeat is older than a dropped one it outlived.
    kept_heartbeats = [e.seq for e in cap.of_kind("heartbeat")]
    assert not [s for s in kept_heartbeats if min(missing) < s < max(missing)], (
        f"kept heartbeats inside the dropped range {min(missing)}..{max(missing)}"
    )
    report = verify_capture(cap.lines, prefix=PREFIX)
    gaps = {s for lo, hi in report.signers[DEV].missing for s in range(lo, hi + 1)}
    assert gaps == missing
    assert {p.reason for p in report.problems} == {"chain_gap"}, [p.to_dict() for p in report.problems]
    signer = report.signers[DEV]
    assert signer.counts["bad_signature"] == signer.counts["forks"] == signer.counts["schema"] == 0

    logs = daemon.logs()
    assert not [r for r in logs if r.get("level") == "critical" or "Traceback" in json.dumps(r)]
    assert not [r for r in logs if r.get("msg") == "message not stored"], "nothing lost outside the policy"
    overflow = [r for r in logs if r.get("msg") == "outbox overflow"]
    assert overflow and all(r["policy"] == "drop_oldest_heartbeats" for r in overflow)
    if limit == "enospc":
        disk_lines = [r["msg"] for r in logs if str(r.get("msg", "")).startswith("outbox disk full")]
        assert disk_lines, "a clear log line about the full disk"
        assert drops["heartbeat"].get("disk_full_evicted", 0) >= 3


# ---------------------------------------------------------------------------------------- 5. heartbeats-only + metrics


def test_heartbeats_only_mode_and_prometheus_endpoint(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "metrics")
    port = free_port()
    config = write_config(
        tmp_path / "device", broker, source="none", coordinator=str(COORDINATOR.pubkey()), metrics_port=port
    )
    card = load_card(str(MODEL)).card
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    publisher = Publisher(broker)
    daemon.start()

    def scrape() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return values

    try:
        wait_until(lambda: capture_of(collector).kinds()["heartbeat"] >= 3, 90, "three heartbeats")
        nonce = os.urandom(32).hex()
        challenge = Challenge(
            device=DEV, nonce=nonce, model_sha256=card.sha256, deadline_ms=now_ms() + 60_000
        )
        publisher.publish(f"{PREFIX}/dev/{DEV}/challenge", coordinator_envelope("challenge", challenge).wire)
        wait_until(
            lambda: capture_of(collector).kinds()["challenge_response"] == 1, 30, "the challenge answered"
        )
        # Past at least two 5 s windows: still no proof, no inference.
        wait_until(lambda: capture_of(collector).kinds()["heartbeat"] >= 11, 30, "eleven heartbeats")
        first = scrape()
        wait_until(
            lambda: scrape()["edgeproof_heartbeats_total"] > first["edgeproof_heartbeats_total"],
            10,
            "a heartbeat more",
        )
        second = scrape()
        status = daemon.status()
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.ensure_dead()
        publisher.close()
        cap = capture_of(collector)
        collector.close()
        broker.kill()

    assert cap.kinds()["proof"] == 0
    assert status["counters"].get("inferences", 0) == 0 and status["inference"]["mode"] == "heartbeats-only"
    assert second["edgeproof_inferences_total"] == 0
    assert second["edgeproof_proofs_total"] == 0
    assert second["edgeproof_challenges_answered_total"] == 1
    assert second["edgeproof_heartbeats_total"] >= 11
    assert second["edgeproof_envelopes_emitted_total{kind=heartbeat}"] == second["edgeproof_heartbeats_total"]
    assert second["edgeproof_chain_seq"] >= second["edgeproof_heartbeats_total"] + 1
    assert second["edgeproof_outbox_depth"] >= 0 and second["edgeproof_mqtt_connected"] == 1
    info = [k for k in second if k.startswith("edgeproof_device_info")]
    assert len(info) == 1 and "mode=heartbeats-only" in info[0] and f"device={DEV}" in info[0]
    assert not any(k.startswith("edgeproof_inbound_rejected_total") for k in second)
    assert second["edgeproof_coordinator_pinned"] == 1
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]
    # It listens where configured (loopback).
    for line in daemon.logs():
        if line.get("msg") == "metrics endpoint listening":
            assert line["host"] == "127.0.0.1" and line["port"] == port
            break
    else:
        raise AssertionError("no 'metrics endpoint listening' log line")


def test_missing_source_is_retried_from_the_main_loop_while_heartbeats_continue(tmp_path: Path) -> None:
    """A source that is not there yet never blocks the loop: heartbeats flow, then proofs once it appears."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "late-source")
    folder = tmp_path / "frames"  # does not exist when the daemon starts
    config = write_config(tmp_path / "device", broker, source=str(folder), max_fps=5.0)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        wait_until(lambda: capture_of(collector).kinds()["heartbeat"] >= 4, 60, "heartbeats without a source")
        assert daemon.status()["counters"].get("inferences", 0) == 0
        folder.mkdir()
        for i in range(3):
            assert cv2.imwrite(str(folder / f"{i}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
        wait_until(lambda: capture_of(collector).kinds()["proof"] >= 1, 90, "a proof once the folder exists")
        assert daemon.terminate() == 0, daemon.tail()
    finally:
        daemon.ensure_dead()
        cap = capture_of(collector)
        collector.close()
        broker.kill()
    retries = [r for r in daemon.logs() if r.get("msg") == "source unavailable"]
    # Backoff from 1 s doubling: a handful of attempts, each logged with its next delay, never a flood.
    assert 2 <= len(retries) <= 8, [r.get("retry_s") for r in retries]
    delays = [r["retry_s"] for r in retries]
    assert delays == sorted(delays) and delays[0] == 1.0
    assert any(r.get("msg") == "source opened" for r in daemon.logs())
    report = verify_capture(cap.lines, prefix=PREFIX)
    assert report.ok, [p.to_dict() for p in report.problems]
