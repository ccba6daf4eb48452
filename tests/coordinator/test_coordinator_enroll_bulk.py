"""`edgeproof coordinator enroll --from FILE.jsonl`: every line verified, one transaction, refusals name the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.coordinator.config import load_coordinator_config
from agent.coordinator.registry import enroll_from, open_store
from agent.errors import ConfigError, ProtocolError
from agent.simulator.identities import identities, write_bindings
from tests.support.coordinator import run_cli, write_config

TS = 1_760_000_000_000


def _file(tmp_path: Path, lines: list[bytes], name: str = "bindings.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _good_lines(tmp_path: Path, n: int = 5) -> list[bytes]:
    path = tmp_path / "made.jsonl"
    write_bindings(path, identities(11, n, 2), TS)
    return path.read_bytes().splitlines()


def test_bulk_enrolment_verifies_every_line_and_stores_all_or_nothing(tmp_path: Path) -> None:
    config = load_coordinator_config(write_config(tmp_path / "coord", broker_port=1883))
    store = open_store(config)
    fleet = identities(11, 5, 2)
    lines = _good_lines(tmp_path)
    try:
        # a tampered line (another owner under the device's signature): the whole file is refused
        doc = json.loads(lines[2])
        forged = json.dumps(
            {**doc, "owner": fleet[0].owner if doc["owner"] != fleet[0].owner else fleet[1].owner}
        )
        bad = _file(tmp_path, [*lines[:2], forged.encode(), *lines[3:]], "forged.jsonl")
        with pytest.raises(ProtocolError) as err:
            enroll_from(store, config, path=bad, profile="rpi4", tags=[], now_ms=TS)
        assert err.value.reason == "bad_signature"
        assert err.value.message == (
            f"{bad} line 3 refused: binding signature does not verify for device {fleet[2].dev}"
        )
        assert store.devices() == []
        # a device on two lines
        twice = _file(tmp_path, [*lines, lines[1]], "twice.jsonl")
        with pytest.raises(ProtocolError) as err:
            enroll_from(store, config, path=twice, profile="rpi4", tags=[], now_ms=TS)
        assert err.value.message == f"{twice} line 6 refused: device {fleet[1].dev} is already on line 2"
        # garbage
        junk = _file(tmp_path, [lines[0], b"not json"], "junk.jsonl")
        with pytest.raises(ProtocolError) as err:
            enroll_from(store, config, path=junk, profile="rpi4", tags=[], now_ms=TS)
        assert err.value.reason == "malformed" and err.value.message.startswith(f"{junk} line 2 refused: ")
        with pytest.raises(ConfigError, match="holds no bindings"):
            enroll_from(
                store, config, path=_file(tmp_path, [b""], "empty.jsonl"), profile="rpi4", tags=[], now_ms=TS
            )
        with pytest.raises(ConfigError, match="unknown firmware profile 'rpi'"):
            enroll_from(store, config, path=junk, profile="rpi", tags=[], now_ms=TS)
        assert store.devices() == []
        # the good file (a blank line in it is skipped)
        good = _file(tmp_path, [*lines[:2], b"", *lines[2:]])
        records = enroll_from(store, config, path=good, profile="rpi5", tags=["sim"], now_ms=TS)
        assert [r.id for r in records] == [f.dev for f in fleet]
        stored = {d.id: d for d in store.devices()}
        assert {d: (r.owner, r.profile, r.tags) for d, r in stored.items()} == {
            f.dev: (f.owner, "rpi5", ("sim",)) for f in fleet
        }
    finally:
        store.close()


@pytest.mark.integration
def test_enroll_from_on_the_command_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "coord", broker_port=1883)
    good = _file(tmp_path, _good_lines(tmp_path, 3))
    ok = run_cli(
        "coordinator", "enroll", "--from", str(good), "--profile", "rpi4", "--config", str(config), "--json"
    )
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["enrolled"] == 3 and [d["id"] for d in out["devices"]] == [f.dev for f in identities(11, 3, 2)]
    assert [d["owner"] for d in out["devices"]] == [f.owner for f in identities(11, 3, 2)]


def test_enroll_usage_mistakes_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config(tmp_path / "coord", broker_port=1883))
    good = str(_file(tmp_path, _good_lines(tmp_path, 1)))
    assert (
        main(["coordinator", "enroll", "SomeDevice", "--from", good, "--profile", "rpi4", "--config", config])
        == 2
    )
    assert capsys.readouterr().err.startswith(
        "edgeproof: error: --from takes each device, owner and binding from the file; drop DEVICE_ID\n"
    )
    assert main(["coordinator", "enroll", "--profile", "rpi4", "--config", config]) == 2
    assert capsys.readouterr().err.startswith(
        "edgeproof: error: enroll needs DEVICE_ID, --owner, --binding (or --from FILE.jsonl for many devices)\n"
    )
    junk = str(_file(tmp_path, [b'{"device": 1}'], "junk.jsonl"))
    assert main(["coordinator", "enroll", "--from", junk, "--profile", "rpi4", "--config", config]) == 8
    assert capsys.readouterr().err.startswith(
        f"edgeproof: error: {junk} line 1 refused: binding: missing owner, sig, ts\n"
    )
