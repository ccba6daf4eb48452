"""The fleet simulator against the real coordinator: the audit equals the ground truth exactly.

Real Mosquitto, `python -m agent coordinator run` (2 s slots, a 6-slot epoch, challenges
at 30 % per slot with a 3 s deadline), 50 simulated devices enrolled in bulk from the
bindings `simulate bindings` wrote, and `python -m agent simulate fleet` as its own process:
scripted outages, a slot over the throughput bound, and all three challenge behaviours
(honest answers by the real efficientnet model, answers naming the wrong model, silence).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.simulator.compare import compare
from agent.simulator.truth import totals
from tests.support.fleet_sim import FleetRig, write_script
from tests.support.mosquitto import MosquittoBroker

# Three processes (coordinator, simulator with a model, broker) on compressed slots: not beside
# the other CPU-bound modules.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]

SCRIPT = """seed = 11
devices = 50
connections = 5
slot_ms = 2000
epoch_slots = 6
epochs = 1
challenge_deadline_ms = 3000
inferences = [5, 40]

[[groups]]
name = "outage"
devices = [0, 5]
outages = [[2, 3]]

[[groups]]
name = "wrong"
devices = [6, 11]
challenges = "wrong_model"

[[groups]]
name = "silent"
devices = [12, 17]
challenges = "ignore"

[[groups]]
name = "over"
devices = [18, 21]
overclaim = [[1, 1], [5, 5]]

[[groups]]
name = "flaky"
devices = [22, 25]
outages = [[0, 0], [5, 5]]
challenges = "ignore"
"""


def test_fifty_devices_audit_equals_ground_truth(
    mosquitto: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = FleetRig(tmp_path / "coord", mosquitto.port, slot_ms=2000, epoch_slots=6, challenge_probability=0.3)
    script = write_script(tmp_path / "script.toml", SCRIPT)
    try:
        rig.start_coordinator()
        bindings = tmp_path / "bindings.jsonl"
        assert main(["simulate", "bindings", "--script", str(script), "--out", str(bindings)]) == 0
        assert capsys.readouterr().out == f"wrote 50 bindings to {bindings}\n"
        args = [
            "coordinator",
            "enroll",
            "--from",
            str(bindings),
            "--profile",
            "rpi4",
            "--config",
            str(rig.config),
        ]
        assert main(args) == 0
        assert capsys.readouterr().out == f"enrolled 50 devices from {bindings} (profile rpi4)\n"

        summary = rig.simulate(script, tmp_path / "truth.json")
        truth = json.loads((tmp_path / "truth.json").read_text())
        rig.wait_settled(truth)
        rig.stop_coordinator()
        [epoch] = truth["epochs"]
    finally:
        rig.kill()
    capsys.readouterr()
    assert main(["audit", "uptime", "--epoch", str(epoch), "--json", "--config", str(rig.config)]) == 0
    report = json.loads(capsys.readouterr().out)

    # the run went to plan: everything acknowledged, nothing sent late or skipped, nothing refused
    observed = summary["observed"]
    assert summary["unacknowledged"] == 0 and summary["published"] >= 2 * 280
    assert not [
        k
        for k in observed
        if k.startswith(
            (
                "skipped",
                "sent_",
                "refused",
                "answer_near",
                "answers_late",
                "answer_failed",
                "inbox_error",
                "verdicts_not",
            )
        )
    ]
    assert observed.get("challenge_deadline_mismatch") is None and observed["beacons"] >= 6
    assert 0 <= observed["challenge_delivery_ms_max"] < 3000 and 0 <= observed["answer_ms_max"] < 3000
    sums = totals(truth)
    assert sums["counted_slots"] == 50 * 6
    # scripted down slots: 6 devices x 2 + 4 flaky x 2
    assert sums["up_slots"] == 50 * 6 - 6 * 2 - 4 * 2 == sums["heartbeats_accepted"]
    assert sums["rejections"]["implausible_throughput"] == 4 * 2
    challenges = sums["challenges"]
    assert (
        challenges["passed"] >= 1 and challenges["wrong_model"] >= 1 and challenges["challenge_missed"] >= 1
    )
    assert set(challenges) == {"passed", "wrong_model", "challenge_missed"}
    assert sums["rejections"].get("wrong_model", 0) == challenges["wrong_model"]
    # the coordinator's verdicts as the devices saw them agree with the truth
    assert observed["verdict.heartbeat.accepted"] == sums["heartbeats_accepted"]
    assert observed["verdict.proof.implausible_throughput"] == 8
    assert observed["verdict.challenge_response.accepted"] == challenges["passed"]
    assert observed["verdict.challenge.challenge_missed"] == challenges["challenge_missed"]
    # and the audit equals the truth exactly, device by device
    assert compare(truth, [report]) == []
    by_index = {d["index"]: d["dev"] for d in truth["devices"]}
    rows = {row["dev"]: row for row in report["devices"]}
    assert rows[by_index[0]]["slots"] == "UUDDUU" and rows[by_index[22]]["slots"] == "DUUUUD"
    assert rows[by_index[30]]["uptime"] == 1.0 and rows[by_index[30]]["rejections"] == {}

    # `simulate compare` says so too, and names a difference when there is one
    audit_file = tmp_path / "audit.json"
    audit_file.write_text(json.dumps(report))
    truth_file = str(tmp_path / "truth.json")
    assert main(["simulate", "compare", "--truth", truth_file, "--audit", str(audit_file)]) == 0
    assert capsys.readouterr().out == f"the audit equals the ground truth for 50 devices, epochs [{epoch}]\n"
    tampered = {**report, "devices": [{**report["devices"][0], "up_slots": -1}, *report["devices"][1:]]}
    audit_file.write_text(json.dumps(tampered))
    assert main(["simulate", "compare", "--truth", truth_file, "--audit", str(audit_file), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert (
        out["equal"] is False
        and len(out["differences"]) == 1
        and "up_slots: audit -1" in out["differences"][0]
    )
