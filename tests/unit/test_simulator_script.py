"""The fleet simulator's pure parts: the script parser (exact errors), the plan, identities, truth, compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.protocol.binding import verify_binding
from agent.simulator import plan
from agent.simulator.compare import compare
from agent.simulator.identities import device_keypair, identities, write_bindings
from agent.simulator.script import Script, default_script, load_script, script_from
from agent.simulator.truth import Truth, pass_rate

GOOD = """seed = 7
devices = 10
connections = 2
slot_ms = 2000
epoch_slots = 4
epochs = 2
challenge_deadline_ms = 3000

[[groups]]
name = "outage"
devices = [0, 2]
outages = [[1, 2], [6, 6]]

[[groups]]
name = "wrong"
devices = [3, 3]
challenges = "wrong_model"
overclaim = [[0, 0]]
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_good_toml_script_and_the_same_as_json(tmp_path: Path) -> None:
    script = load_script(_write(tmp_path, "s.toml", GOOD))
    assert (script.devices, script.links, script.total_slots, script.epoch_ms) == (10, 2, 8, 8000)
    assert script.group_of(1) is not None and script.group_of(1).name == "outage"
    assert script.group_of(4) is None
    as_json = load_script(_write(tmp_path, "s.json", json.dumps(script.model_dump())))
    assert as_json == script


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "devices = 10\nslot_msec = 2000\n",
            "S:2: slot_msec: unknown key 'slot_msec'; did you mean 'slot_ms'?",
        ),
        (
            'devices = 10\n[[groups]]\nname = "a"\ndevices = [0, 1]\noutage = [[1, 2]]\n',
            "S:5: groups.0.outage: unknown key 'outage'; did you mean 'outages'?",
        ),
        (
            'devices = 10\n[[groups]]\nname = "a"\ndevices = [0, 5]\nchallenges = "lazy"\n',
            "S:5: groups.0.challenges: Input should be 'honest', 'wrong_model' or 'ignore' (got 'lazy')",
        ),
        ("devices = 10.5\n", "S:1: devices: Input should be a valid integer (got 10.5)"),
        (
            'devices = 10\n[[groups]]\nname = "a"\ndevices = [5, 12]\n',
            "S: group 'a' names device 12 but the fleet has 10 (indexes 0..9)",
        ),
        (
            'devices = 10\n[[groups]]\nname = "a"\ndevices = [0, 5]\n[[groups]]\nname = "b"\ndevices = [5, 6]\n',
            "S: device 5 is in group 'a' and 'b'",
        ),
        (
            'devices = 10\nepoch_slots = 4\n[[groups]]\nname = "a"\ndevices = [0, 5]\noutages = [[3, 4]]\n',
            "S: group 'a' names slot 4 but the run has 4 slots (0..3)",
        ),
        (
            'devices = 10\n[[groups]]\nname = "a"\ndevices = [3, 1]\n',
            "S:2: groups.0: devices [3, 1] must not go down",
        ),
        (
            "heartbeat_at = [0.5, 0.6]\n",
            "S: heartbeat_at [0.5, 0.6] must end before proof_at [0.5, 0.8] begins",
        ),
        (
            '[[groups]]\nname = "a"\ndevices = [0, 1]\n[[groups]]\nname = "a"\ndevices = [2, 3]\n',
            "S: group name 'a' is used twice",
        ),
    ],
)
def test_a_bad_script_is_refused_with_the_exact_error(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, "script.toml", text)
    with pytest.raises(ConfigError) as err:
        load_script(path)
    assert str(err.value).split("\n")[0] == message.replace("S", str(path), 1)


def test_json_scripts_refuse_unknown_keys_and_other_suffixes_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "s.json", '{"devices": 10, "colour": 1}')
    with pytest.raises(
        ConfigError, match=r"s\.json: colour: unknown key 'colour' \(allowed: challenge_deadline_ms, "
    ):
        load_script(path)
    with pytest.raises(ConfigError, match=r"a script is a \.toml or \.json file \(got '\.yaml'\)"):
        load_script(_write(tmp_path, "s.yaml", "devices: 1"))
    with pytest.raises(ConfigError, match=r"a script must be a JSON object, got list"):
        load_script(_write(tmp_path, "l.json", "[1]"))
    with pytest.raises(ConfigError, match=r"missing\.toml: file not found"):
        load_script(tmp_path / "missing.toml")


def test_the_default_script_scales_and_has_every_behaviour() -> None:
    script = default_script(devices=50, epoch_slots=8)
    groups = {g.name: g for g in script.groups}
    assert list(groups) == ["outage-short", "outage-long", "overclaim", "wrong-model", "silent", "flaky"]
    assert groups["outage-short"].devices == [0, 4] and groups["outage-short"].outages == [[2, 3]]
    assert groups["outage-long"].outages == [[4, 6]]
    assert {g.challenges for g in script.groups} == {"honest", "wrong_model", "ignore"}
    assert script.connections == 20 and script.links == 20
    small = default_script(devices=5, epoch_slots=4)
    assert [g.name for g in small.groups] == [] and small.links == 5
    assert len(default_script().groups) == 6 and default_script().devices == 1000


def test_plan_offsets_inferences_and_the_bound() -> None:
    script = load_script_text(GOOD)
    assert plan.offset_ms(script, 0, script.heartbeat_at) == 200  # 10 % of 2000
    assert plan.offset_ms(script, 9, script.heartbeat_at) == 830  # 10 % + 35 % * 9/10
    values = [plan.inferences(script, i, s) for i in range(10) for s in range(8)]
    assert values == [plan.inferences(script, i, s) for i in range(10) for s in range(8)]
    assert min(values) >= 10 and max(values) <= 40 and len(set(values)) > 5
    assert plan.proof_bound(60, 1100) == 66 and plan.proof_bound(60, 1101) == 67
    plans = plan.device_plans(script)
    assert [p.up(1) for p in plans[:4]] == [False, False, False, True]
    assert plans[3].overclaims(0) and not plans[3].overclaims(1) and plans[3].behaviour == "wrong_model"
    assert plans[5].group_name == "honest" and plans[5].up(6)
    assert [plans[0].proves(s, 2) for s in range(4)] == [True, False, True, False]
    assert [plans[1].proves(s, 2) for s in range(4)] == [False, True, False, True]  # staggered
    assert all(plans[1].proves(s, 1) for s in range(4))
    assert plan.slot_of_issue(10_000 + 3000, 3000, 2000) == 5
    plan.check_inferences(script, 60, "x")  # 40 <= floor(60 * 1.0)
    greedy = script_from({**script.model_dump(), "inferences": [10, 61]})
    with pytest.raises(ConfigError) as err:
        plan.check_inferences(greedy, 60, "classifier-small on rpi4")
    assert str(err.value) == (
        "script inferences [10, 61] goes over the bound for classifier-small on rpi4 in the shortest "
        "proof window (1000 ms at proof_at 0.5): at most 60"
    )


def load_script_text(text: str) -> Script:
    import tomllib

    return script_from(tomllib.loads(text))


def test_identities_are_deterministic_and_bindings_verify(tmp_path: Path) -> None:
    fleet = identities(7, 5, 2)
    assert [f.dev for f in fleet] == [f.dev for f in identities(7, 5, 2)]
    assert fleet[0].dev != identities(8, 5, 2)[0].dev
    assert str(device_keypair(7, 3).pubkey()) == fleet[3].dev
    assert len({f.owner for f in fleet}) == 2 and fleet[0].owner == fleet[2].owner
    out = tmp_path / "b.jsonl"
    assert write_bindings(out, fleet, 1_700_000_000_000) == 5
    lines = out.read_bytes().splitlines()
    bound = [verify_binding(line) for line in lines]
    assert [(b.device, b.owner, b.ts) for b in bound] == [(f.dev, f.owner, 1_700_000_000_000) for f in fleet]


def _truth() -> Truth:
    truth = Truth(slot_ms=1000, epoch_slots=4, first_epoch=10, epochs=1)
    truth.add_device("devA", 0, "ownerA", "rpi4", "honest", "honest")
    for slot in (40, 41, 43):
        truth.heartbeat("devA", slot)
    truth.proof("devA", 40, 12)
    truth.proof("devA", 41, 30)
    truth.rejection("devA", 42, "implausible_throughput")
    assert truth.challenge("devA", 41, "passed")
    assert truth.challenge("devA", 42, "challenge_missed")
    assert not truth.challenge("devA", 44, "passed")  # issued after the run: not this truth's
    assert truth.in_run(40) and truth.in_run(43) and not truth.in_run(44) and not truth.in_run(39)
    return truth


def test_truth_per_epoch_uses_the_audit_names() -> None:
    doc = _truth().as_json({"seed": 1})
    assert doc["epochs"] == [10] and doc["first_slot"] == 40 and doc["seed"] == 1
    assert doc["devices"][0]["epochs"]["10"] == {
        "up_slots": 3,
        "counted_slots": 4,
        "slots": "UUDU",
        "heartbeats_accepted": 3,
        "proofs_accepted": 2,
        "inferences_accepted": 42,
        "rejections": {"implausible_throughput": 1},
        "challenges": {"challenge_missed": 1, "passed": 1},
        "pass_rate": 0.5,
    }
    assert pass_rate({"unknown_model": 3}) is None
    assert pass_rate({"passed": 3, "wrong_model": 1}) == 0.75


def test_compare_is_exact_and_names_every_difference() -> None:
    doc = _truth().as_json()
    row = {"dev": "devA", "owner": "ownerA", "profile": "rpi4", **doc["devices"][0]["epochs"]["10"]}
    assert compare(doc, [{"epoch": 10, "devices": [row]}]) == []
    off = {**row, "up_slots": 2, "slots": "UDDU", "challenges": {"passed": 1}}
    assert compare(doc, [{"epoch": 10, "devices": [off]}]) == [
        "epoch 10: device #0 devA (honest) up_slots: audit 2, truth 3",
        "epoch 10: device #0 devA (honest) slots: audit 'UDDU', truth 'UUDU'",
        "epoch 10: device #0 devA (honest) challenges: audit {'passed': 1}, truth {'challenge_missed': 1, 'passed': 1}",
    ]
    extra = {**row, "dev": "devB"}
    assert compare(doc, [{"epoch": 10, "devices": [extra]}]) == [
        "epoch 10: device devA (#0) is not in the audit",
        "epoch 10: the audit lists device devB, which the simulator did not run",
    ]
    assert compare(doc, []) == ["epoch 10: no audit report"]


def test_simulate_cli_refusals_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    truth = str(tmp_path / "truth.json")
    assert main(["simulate", "fleet", "--coordinator-key", "nope", "--truth", truth]) == 2
    assert capsys.readouterr().err == (
        "edgeproof: error: --coordinator-key 'nope' is neither a key file nor a base58 public key\n"
    )
    script = _write(tmp_path, "s.toml", GOOD)
    assert main(["simulate", "bindings", "--script", str(script), "--devices", "3", "--out", truth]) == 2
    assert capsys.readouterr().err == (
        f"edgeproof: error: {script} with command-line overrides: group 'wrong' names device 3 but the "
        "fleet has 3 (indexes 0..2)\n"
    )
    assert main(["simulate", "compare", "--truth", truth, "--audit", truth]) == 2
    assert capsys.readouterr().err == f"edgeproof: error: {truth}: file not found\n"
    out = tmp_path / "b.jsonl"
    assert (
        main(["simulate", "bindings", "--script", str(script), "--seed", "8", "--out", str(out), "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == {"bindings": 10, "out": str(out), "seed": 8, "owners": 10}
