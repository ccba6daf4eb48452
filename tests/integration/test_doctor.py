"""`edgeproof doctor` against the real parts: a Mosquitto broker, the shipped model, a key file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.cli import main
from tests.support.daemon_rig import DaemonProcess, wait_until
from tests.support.doctor_rig import (
    MODEL,
    details,
    doctor,
    fake_root,
    statuses,
    write_config,
)
from tests.support.mosquitto import MosquittoBroker, free_port

pytestmark = pytest.mark.integration


def test_a_ready_device_passes_every_check(
    mosquitto: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = doctor(capsys, write_config(tmp_path, mosquitto.port), fake_root(tmp_path))
    assert code == 0, report
    assert report["ok"] is True and report["failed"] == []
    assert statuses(report) == {
        "config": "ok",
        "daemon": "warn",  # not started in this test
        "key": "ok",
        "wallet": "ok",
        "profile": "ok",
        "platform": "ok",
        "model": "ok",
        "thermal": "ok",
        "source": "ok",
        "storage": "ok",
        "broker": "ok",
        "beacon": "warn",  # no coordinator publishes one here (test_doctor_network.py has them)
        "clock": "skip",
        "coordinator": "ok",
        "rpc": "skip",  # no [rewards] rpc_url
    }
    d = details(report)
    assert d["model"].startswith(
        "efficientnet-lite0-int8 1.0.0 (sha256 1582aeb20a34... verified) on onnx CPUExecutionProvider, 1 threads"
    )
    assert d["thermal"] == "45.0 °C; throttle at 90 °C, pause at 100 °C"
    assert d["source"] == "synthetic:320x240:0: a 320x240 frame"
    assert d["broker"].startswith(f"127.0.0.1:{mosquitto.port} accepted a connection (plain TCP) in ")
    assert not (tmp_path / "state").exists()  # doctor creates nothing


def test_each_broken_part_is_named_with_its_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead_port = free_port()  # nothing listens here
    card = tmp_path / "tampered.toml"
    card.write_text(
        MODEL.read_text().replace("efficientnet-lite0-int8.onnx", str(MODEL.with_suffix(".onnx")))
    )
    text = card.read_text()
    sha_line = next(line for line in text.splitlines() if line.startswith("sha256"))
    card.write_text(text.replace(sha_line, 'sha256 = "' + "0" * 64 + '"'))
    config = write_config(tmp_path, dead_port, model=str(card), source=str(tmp_path / "missing.mp4"))
    code, report = doctor(capsys, config, fake_root(tmp_path, temp_mc=95_000))
    assert code == 1
    assert report["failed"] == ["model", "source", "broker"]
    s, d = statuses(report), details(report)
    assert s["thermal"] == "warn" and d["thermal"] == "95.0 °C; throttle at 90 °C, pause at 100 °C"
    assert "sha256" in d["model"] and "0" * 12 in d["model"]
    assert d["source"] == (
        f"source '{tmp_path / 'missing.mp4'}' is not a camera index, URL, folder or existing file"
    )
    assert d["broker"].startswith(f"cannot connect to broker 127.0.0.1:{dead_port}: ")
    hints = {c["name"]: c["hint"] for c in report["checks"]}
    assert hints["broker"].startswith("check mqtt.host and mqtt.port")


def test_an_invalid_config_stops_the_other_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[mqtt]\nhots = 1\n")
    code, report = doctor(capsys, config, fake_root(tmp_path))
    assert code == 1 and report["failed"] == ["config"]
    assert details(report)["config"] == f"{config}:2: mqtt.hots: unknown key 'hots'; did you mean 'host'?"
    assert set(statuses(report).values()) == {"fail", "skip"}
    assert details(report)["broker"] == "not checked: the config is not valid"


def test_a_camera_held_by_the_running_daemon_is_not_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, free_port(), source="0")
    state = tmp_path / "state"
    state.mkdir()
    status = {"pid": os.getpid(), "running": True, "chain": {"seq": 12, "last_acked_seq": 11}}
    (state / "status.json").write_text(json.dumps({**status, "transport": {"connected": True}}))
    code, report = doctor(capsys, config, fake_root(tmp_path))
    s, d = statuses(report), details(report)
    assert s["daemon"] == "ok"
    assert d["daemon"] == f"running, pid {os.getpid()}; chain seq 12, last acked 11; broker connected"
    assert (s["source"], d["source"]) == ("skip", f"0 is in use by the running daemon (pid {os.getpid()})")
    # A running daemon is asked over its control socket, never probed with its own broker user
    # (the broker would hand that second connection the daemon's session); this one has none.
    assert s["broker"] == "warn"
    assert d["broker"].startswith("the daemon runs but did not answer on its control socket: ")
    assert code == 0 and report["failed"] == []


def test_while_the_daemon_runs_the_broker_is_checked_through_it(
    mosquitto: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, mosquitto.port)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        status = tmp_path / "state" / "status.json"

        def connected() -> bool:
            return status.exists() and bool(json.loads(status.read_text())["transport"]["connected"])

        wait_until(connected, 60, "the daemon connected")
        _code, report = doctor(capsys, config, fake_root(tmp_path))
        s, d = statuses(report), details(report)
        assert s["daemon"] == "ok" and s["broker"] == "ok" and "broker" not in report["failed"]
        assert d["broker"] == (
            f"the running daemon is connected to 127.0.0.1:{mosquitto.port} (asked over its control socket)"
        )
        live = json.loads(status.read_text())["transport"]
        assert live["reconnects"] == 0  # the doctor did not knock the daemon off
    finally:
        daemon.terminate()


def test_an_unpinned_coordinator_fails_with_the_fix(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shipped example's ``pubkey = ""``: the daemon refuses every coordinator message, so the
    device cannot earn; doctor says so and how to fix it (issue 6; it was a warning that any key
    was trusted)."""
    config = write_config(tmp_path, mosquitto.port, coordinator="")
    code, report = doctor(capsys, config, fake_root(tmp_path))
    assert code == 1 and report["failed"] == ["coordinator"]
    check = next(c for c in report["checks"] if c["name"] == "coordinator")
    assert check == {
        "name": "coordinator",
        "status": "fail",
        "detail": "coordinator: not pinned, every coordinator message is refused "
        "(no beacon is quoted, no challenge answered)",
        "hint": "set coordinator.pubkey to your coordinator's base58 public key",
    }
    # The table a person reads names it too (wide enough that no cell wraps).
    monkeypatch.setenv("COLUMNS", "400")
    assert (
        main(
            [
                "doctor",
                "--config",
                str(config),
                "--root",
                str(fake_root(tmp_path / "t")),
                "--broker-timeout",
                "5",
            ]
        )
        == 1
    )
    text = capsys.readouterr().out
    assert "edgeproof doctor: 1 failed: coordinator" in text
    assert "coordinator: not pinned, every coordinator message is refused" in text
    assert "set coordinator.pubkey to your coordinator's base58 public key" in text
