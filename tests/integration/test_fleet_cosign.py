"""k-of-n operator trust and the operator chain, end to end: a real daemon, Mosquitto, the fleet CLI.

The device trusts operators A, B and C with threshold 2.  Refused, each by name and counted in
``rejected_inbound``, with the device still on its configured model and no ``received`` deploy
for it: a manifest signed by A alone (k-1), one co-signed by an untrusted key, one co-signed by
A twice, one whose co-signature was made over other bytes.  Then the CLI way: ``fleet publish
--out --threshold 2`` (A), ``fleet publish --from`` refused with one signature, ``fleet sign``
(C; again: refused), ``fleet publish --from``: committed, proofs name the pushed model.  Then A's
state file is lost: the next manifest restarts A's chain at seq 1 and is refused as ``replay``
(A had reached seq 6); after a restart the floor still holds (kept in the device state store).
Every refusal is also reported to the operator as a signed deploy ``rejected`` with its reason.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from solders.keypair import Keypair

from agent.protocol.capture import verify_capture
from agent.protocol.cosign import add_cosignature, cosignature
from agent.protocol.envelope import GENESIS_PREV, Envelope, build_envelope, verify_envelope
from agent.protocol.messages import body_to_dict
from tests.support.artifact_server import ArtifactServer
from tests.support.daemon_rig import (
    OPERATOR,
    OPERATOR_SEED,
    PREFIX,
    ROGUE,
    DaemonProcess,
    Publisher,
    capture_of,
    collector_for,
    edgeproof,
    now_ms,
    wait_until,
    write_config,
    write_key,
)
from tests.support.mosquitto import Collector, MosquittoBroker
from tests.support.onnx_models import tiny_classifier, write_model_and_card
from tests.support.update_rig import deploy_states, own_status, rejected, tiny_manifest

pytestmark = pytest.mark.integration

MANIFEST_TOPIC = f"{PREFIX}/fleet/manifest/stable"
B_SEED, C_SEED = bytes([12] * 32), bytes([13] * 32)
A, B, C = OPERATOR, Keypair.from_seed(B_SEED), Keypair.from_seed(C_SEED)
SHIPPED = "efficientnet-lite0-int8"


def manifest_body(server: ArtifactServer, files: dict[str, bytes], version: int) -> dict[str, Any]:
    return body_to_dict(tiny_manifest(server, files, version))


def retained(broker: MosquittoBroker) -> bytes:
    reader = Collector(broker, MANIFEST_TOPIC, client_id="cosign-retained-reader")
    try:
        reader.wait_for(lambda messages: bool(messages), 10)
        return reader.payloads()[-1]
    finally:
        reader.close()


def signed(body: dict[str, Any], seq: int, *cosigners: Keypair) -> Envelope:
    env = build_envelope(
        A, "manifest", body, seq=seq, prev=GENESIS_PREV if seq == 1 else "ab" * 32, ts=now_ms()
    )
    for key in cosigners:
        env = add_cosignature(env, key)
    return env


def test_two_of_three_operators_commit_and_every_short_or_stale_signature_set_is_refused(
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    release.mkdir()
    card = write_model_and_card(release, tiny_classifier(seed=5), name="tiny", input_shape="[1, 3, 32, 32]")
    files = {name: (release / name).read_bytes() for name in ("tiny.onnx", "tiny.toml")}
    key_a, key_c = write_key(tmp_path / "a.json", OPERATOR_SEED), write_key(tmp_path / "c.json", C_SEED)
    assert key_a.pubkey() == A.pubkey() and key_c.pubkey() == C.pubkey()
    state_a = tmp_path / "a-state.json"
    # A's record as after five earlier manifests (on this and other channels): its next seq is 6.
    state_a.write_text(
        json.dumps(
            {
                "format": "edgeproof-operator-state/1",
                "operator": str(A.pubkey()),
                "seq": 5,
                "head": "cd" * 32,
                "channels": {},
            }
        ),
        encoding="utf-8",
    )
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "fleet-cosign")
    publisher = Publisher(broker)
    trusted = [str(k.pubkey()) for k in (A, B, C)]
    config = write_config(
        tmp_path / "device",
        broker,
        manifest_channel="stable",
        trial_s=2.0,
        operator_keys=trusted,
        operator_threshold=2,
    )
    daemons = [DaemonProcess(config, tmp_path / "daemon0.log")]
    try:
        with ArtifactServer(files) as server:
            daemon = daemons[0]
            daemon.start()
            wait_until(
                lambda: own_status(daemon).get("model", {}).get("id") == SHIPPED, 60, "the first model"
            )

            # --- refused by the device: each by name, counted, nothing installed -------------------
            body = manifest_body(server, files, 1)
            alone = signed(body, 2)
            untrusted = signed(body, 2, B, ROGUE)
            twice = {**alone.raw, "cosigs": [cosignature(alone, A).to_json()]}
            other_bytes = {
                **alone.raw,
                "cosigs": [cosignature(signed(manifest_body(server, files, 2), 2), B).to_json()],
            }
            cases = [
                (alone.wire, "below_threshold"),
                (untrusted.wire, "untrusted_signer"),
                (json.dumps(twice).encode(), "duplicate_signer"),
                (json.dumps(other_bytes).encode(), "bad_cosignature"),
            ]
            for payload, reason in cases:  # not retained: the slot stays for the real release
                publisher.publish(MANIFEST_TOPIC, payload)
                wait_until(lambda reason=reason: rejected(daemon, reason) == 1, 20, f"{reason} to be counted")
                # ... and reported to the operator as a signed deploy `rejected` naming the reason.
                wait_until(
                    lambda reason=reason: ("rejected", reason, 1) in deploy_states(collector),
                    20,
                    f"the {reason} report",
                )
            status = own_status(daemon)
            assert status["model"]["id"] == SHIPPED and "stable" not in status["manifests"]
            assert not [s for s in deploy_states(collector) if s[0] == "received"]

            # --- the CLI way: A writes a signing file, C co-signs, A publishes ---------------------
            signing = tmp_path / "v1.signing.json"
            out = edgeproof(
                "fleet", "publish", "--card", str(card), "--file", str(release / "tiny.onnx"),
                "--url", server.url("").rstrip("/"), "--channel", "stable", "--expires", "1h",
                "--key", str(tmp_path / "a.json"), "--state", str(state_a), "--config", str(config),
                "--out", str(signing), "--threshold", "2", "--json",
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            written = json.loads(out.stdout)
            assert (
                written["seq"] == 6 and written["signers"] == [str(A.pubkey())] and written["threshold"] == 2
            )
            assert written["ready"] is False
            publish_from = ("fleet", "publish", "--from", str(signing), "--key", str(tmp_path / "a.json"),
                            "--state", str(state_a), "--config", str(config), "--json")  # fmt: skip
            early = edgeproof(*publish_from)
            assert early.returncode == 17
            assert early.stderr.startswith(
                f"edgeproof: error: refused (below_threshold): {signing} carries 1 of the 2 signatures it needs"
            )
            sign = edgeproof("fleet", "sign", str(signing), "--key", str(tmp_path / "c.json"), "--json")
            assert sign.returncode == 0, sign.stderr
            signed_now = json.loads(sign.stdout)
            assert signed_now["signers"] == [str(A.pubkey()), str(C.pubkey())]
            assert signed_now["threshold"] == 2 and signed_now["ready"] is True
            again = edgeproof("fleet", "sign", str(signing), "--key", str(tmp_path / "c.json"))
            assert again.returncode == 17
            assert again.stderr.startswith("edgeproof: error: refused (duplicate_signer): signing file")
            published = edgeproof(*publish_from)
            assert published.returncode == 0, published.stderr
            report = json.loads(published.stdout)
            assert (
                report["manifest"]["version"] == 1 and report["seq"] == 6 and "retained_before" not in report
            )
            assert report["envelope"] == written["envelope"]
            wait_until(lambda: ("committed", None, 1) in deploy_states(collector), 90, "v1 to be committed")
            tiny_sha = hashlib.sha256(files["tiny.onnx"]).hexdigest()
            wait_until(
                lambda: own_status(daemon).get("model", {}).get("sha256") == tiny_sha, 30, "tiny active"
            )
            env = verify_envelope(retained(broker))
            assert env.hash == report["envelope"] and env.signers == (str(A.pubkey()), str(C.pubkey()))
            floor = f"{A.pubkey()}/manifest/stable"
            assert own_status(daemon)["state"]["signer_seqs"][floor] == 6

            # --- A's state file is lost: its chain restarts at seq 1, devices refuse it -------------
            fresh = tmp_path / "a-state-new.json"
            signing2 = tmp_path / "v2.signing.json"
            out2 = edgeproof(
                "fleet", "publish", "--card", str(card), "--file", str(release / "tiny.onnx"),
                "--url", server.url("").rstrip("/"), "--channel", "stable", "--version", "2",
                "--key", str(tmp_path / "a.json"), "--state", str(fresh), "--config", str(config),
                "--out", str(signing2), "--threshold", "2", "--json",
            )  # fmt: skip
            assert out2.returncode == 0, out2.stderr
            assert json.loads(out2.stdout)["seq"] == 1
            assert (
                edgeproof("fleet", "sign", str(signing2), "--key", str(tmp_path / "c.json")).returncode == 0
            )
            stale = edgeproof("fleet", "publish", "--from", str(signing2), "--key", str(tmp_path / "a.json"),
                              "--state", str(fresh), "--config", str(config))  # fmt: skip
            assert stale.returncode == 0, stale.stderr  # the operator side cannot know: the device does
            wait_until(lambda: rejected(daemon, "replay") == 1, 20, "the seq-1 manifest to be a replay")
            wait_until(lambda: ("rejected", "replay", 2) in deploy_states(collector), 20, "the replay report")
            assert own_status(daemon)["model"]["sha256"] == tiny_sha
            assert daemon.terminate() == 0, daemon.tail()

            # --- after a restart the floor still holds ------------------------------------------
            restarted = DaemonProcess(config, tmp_path / "daemon1.log")
            daemons.append(restarted)
            restarted.start()
            wait_until(lambda: own_status(restarted).get("manifests", {}).get("stable"), 60, "the stored v1")
            publisher.publish(MANIFEST_TOPIC, signed(manifest_body(server, files, 3), 4, B).wire)
            wait_until(lambda: rejected(restarted, "replay") >= 1, 20, "a seq-4 manifest to be a replay")
            wait_until(lambda: ("rejected", "replay", 3) in deploy_states(collector), 20, "its report")
            status = own_status(restarted)
            assert status["model"]["sha256"] == tiny_sha and status["manifests"]["stable"]["version"] == 1
            assert status["state"]["signer_seqs"][floor] == 6
            assert [s for s in deploy_states(collector) if s[0] == "received"] == [("received", None, 1)]
            assert restarted.terminate() == 0, restarted.tail()
    finally:
        publisher.close()
        for d in daemons:
            d.ensure_dead()
        cap = capture_of(collector)
        collector.close()
        broker.kill()
    check = verify_capture(cap.lines, prefix=PREFIX)
    assert check.ok, [p.to_dict() for p in check.problems]
