"""`edgeproof audit`: epoch words, the CSV layout, and refusals as a message and an exit code."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from agent.commands.audit import report_csv, resolve_epoch, short_id
from agent.coordinator.audit import DeviceFact, MessageFact, compute_report, report_json
from agent.errors import ConfigError
from tests.support.coordinator import run_cli


def test_epoch_words_and_numbers() -> None:
    assert resolve_epoch("current", 10_000, 123_456) == 12
    assert resolve_epoch("previous", 10_000, 123_456) == 11
    assert resolve_epoch(None, 10_000, 123_456) == 11  # the default: the last complete epoch
    assert resolve_epoch(" 7 ", 10_000, 123_456) == 7
    with pytest.raises(ConfigError, match=r"^--epoch 'last': expected a number, 'current' or 'previous'$"):
        resolve_epoch("last", 10_000, 0)
    with pytest.raises(ConfigError, match=r"^--epoch -1: epochs are numbered from 0$"):
        resolve_epoch("-1", 10_000, 0)
    assert short_id("4Mz4Y6iXdBdAbPMv874YWPgH2oy6QKARovMt2pNurh6e") == "4Mz4Y6iX...rh6e"
    assert short_id("dev001") == "dev001"


def test_csv_has_one_row_per_device_with_every_field() -> None:
    report = compute_report(
        2,
        slot_ms=1000,
        epoch_ms=4000,
        devices=[DeviceFact("b", "o", "rpi4", 0), DeviceFact("a", "o", "jetson", 0)],
        messages=[
            MessageFact("a", "heartbeat", 8100, True, None, None),
            MessageFact("a", "heartbeat", 9100, False, "stale_beacon", None),
            MessageFact("a", "heartbeat", 9200, False, "duplicate", None),
        ],
        liveness=[(7000, 12_000)],
        challenges=[],
    )
    rows = list(csv.DictReader(io.StringIO(report_csv(report_json(report)))))
    assert [r["dev"] for r in rows] == ["a", "b"]
    a = rows[0]
    assert (a["epoch"], a["slots"], a["up_slots"], a["counted_slots"], a["excluded_slots"]) == (
        "2",
        "UDDD",
        "1",
        "4",
        "0",
    )
    assert (a["uptime"], a["pass_rate"], a["rejections"], a["challenges"]) == (
        "0.25",
        "",
        "duplicate=1;stale_beacon=1",
        "",
    )


@pytest.mark.integration  # a `python -m agent` process
def test_refusals_are_a_message_and_an_exit_code(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    out = run_cli("audit", "uptime", "--capture", str(missing))
    assert out.returncode == 12 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"edgeproof: error: cannot read the capture {missing}: ")


def test_uptime_needs_a_database_or_a_capture(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["audit", "uptime", "--epoch", "3"])
    assert exit_info.value.code == 2
    assert "one of the arguments --config --capture is required" in capsys.readouterr().err
