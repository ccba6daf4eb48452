"""The demo's parts that need no network: option checks, the step record, the live table, stages."""

from __future__ import annotations

import io
import json
import signal
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.demo.live import LiveTable
from agent.demo.network import Layout, Timing, check_epoch_s
from agent.demo.observe import DeviceView, View
from agent.demo.processes import Supervisor
from agent.demo.rollout import first_stage
from agent.demo.steps import DemoStepError, Steps
from agent.errors import ConfigError, EdgeproofError
from agent.protocol.rollout import rollout_bucket


@pytest.mark.parametrize("epoch_s", [0, 9, 13, 601, -3])
def test_epoch_length_outside_whole_slots_is_refused(epoch_s: int) -> None:
    with pytest.raises(ConfigError) as err:
        check_epoch_s(epoch_s)
    assert err.value.message == (
        f"--epoch-s {epoch_s}: expected a multiple of 3 between 12 and 600 (12 slots of whole "
        "milliseconds, at least 1 s each)"
    )


def test_timing_scales_slots_challenges_and_heartbeats() -> None:
    default = Timing()
    assert (
        default.slot_ms,
        default.challenge_probability,
        default.heartbeat_s,
        default.active_within_slots,
    ) == (
        5_000,
        0.5,
        2,
        2,
    )
    short = check_epoch_s(24)
    assert (short.slot_ms, short.challenge_probability, short.heartbeat_s, short.active_within_slots) == (
        2_000,
        0.5,
        1,
        4,
    )
    assert short.min_epoch_left_s == pytest.approx(14.4)


def test_cli_refuses_a_non_empty_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "left-over").write_text("x")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is not empty" in capsys.readouterr().err


def test_cli_refuses_a_bad_epoch_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out", str(tmp_path / "new"), "--epoch-s", "10"]) == 2
    assert "--epoch-s 10: expected a multiple of 3" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_failing_step_is_named_and_recorded() -> None:
    seen: list[tuple[str, str | None]] = []
    steps = Steps(on_change=lambda name, step: seen.append((name, step.status if step else None)))
    with steps.step("first") as note:
        note["detail"] = "fine"
    with pytest.raises(DemoStepError) as err, steps.step("second"):
        raise EdgeproofError("the broker said no", hint="look")
    assert err.value.message == "demo step 'second' failed: the broker said no"
    assert err.value.hint == "look" and err.value.exit_code == 1
    with pytest.raises(DemoStepError) as err, steps.step("third"):
        raise ValueError("bad value")
    assert err.value.message == "demo step 'third' failed: ValueError: bad value"
    assert [(s.name, s.status, s.detail) for s in steps.done] == [
        ("first", "passed", "fine"),
        ("second", "failed", "the broker said no"),
        ("third", "failed", "ValueError: bad value"),
    ]
    assert seen == [
        ("first", None),
        ("first", "passed"),
        ("second", None),
        ("second", "failed"),
        ("third", None),
        ("third", "failed"),
    ]


def _view(heartbeats: int) -> View:
    device = DeviceView("cam-1", "F5qbP7sN3B1NswPY3yq3nif6pPDuSrKULfc1enN4bcrG", "owner", "m", "1.0.0")
    device.heartbeats = heartbeats
    device.challenges["passed"] = 2
    device.challenges["challenge_missed"] = 1
    device.balance = 5
    return View(60_000 * 10 + 30_000, [device], 60_000, "1.1.0 stage 0")


def test_live_table_prints_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    table = LiveTable(out, tty=False, plain_every_s=0.0)
    table.step_changed("start", None)
    table.show(_view(1))
    table.show(_view(1))  # unchanged: no second line
    table.show(_view(2))
    lines = out.getvalue().splitlines()
    assert lines == [
        "step  start ...",
        "live  device=cam-1 F5qbP7sN  model=m  version=1.0.0  heartbeats=1  accepted=0  rejected=0  "
        "challenges=2 passed, 1 not  balance=5",
        "live  device=cam-1 F5qbP7sN  model=m  version=1.0.0  heartbeats=2  accepted=0  rejected=0  "
        "challenges=2 passed, 1 not  balance=5",
    ]
    assert "\x1b" not in out.getvalue()


def test_live_table_redraws_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    table = LiveTable(out, tty=True)
    table.show(_view(1))
    first = out.getvalue()
    assert first.startswith("epoch 10 (30.0 s left)  rollout: 1.1.0 stage 0  step: -\n")
    table.show(_view(2))
    # The second draw moves up over the three lines of the first and clears them.
    assert out.getvalue()[len(first) :].startswith("\x1b[3F\x1b[J")


def test_first_stage_reaches_exactly_the_lowest_bucket(tmp_path: Path) -> None:
    devices = [d for d in Layout(tmp_path).devices() if "classifier" in d.tags]
    stages, reached = first_stage(devices, "demo", "efficientnet-lite0-int8", "1.1.0")
    percent = float(stages.split(",")[0])
    assert stages.endswith(",100")
    inside = [
        d.name for d in devices if rollout_bucket(d.dev, "demo", d.model_id, "1.1.0") < round(percent * 100)
    ]
    assert inside == [d.name for d in reached] and len(reached) == 1


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_supervisor_refuses_a_ready_line_that_is_not_json(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs", cwd=tmp_path)
    child = sup.spawn(
        "liar", _python("print('ready!', flush=True); import time; time.sleep(30)"), stdout_pipe=True
    )
    try:
        with pytest.raises(EdgeproofError) as err:
            sup.ready_line(child, 10)
        assert err.value.message == "liar printed 'ready!' instead of a JSON ready line"
        assert err.value.hint == f"see {tmp_path / 'logs' / 'liar.log'}"
    finally:
        sup.stop_all(grace_s=5)
    assert child.process.returncode == -signal.SIGTERM


def test_supervisor_names_a_child_that_exits_before_its_ready_line(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs", cwd=tmp_path)
    child = sup.spawn("quitter", _python("import sys; sys.exit(3)"), stdout_pipe=True)
    try:
        with pytest.raises(EdgeproofError) as err:
            sup.ready_line(child, 10)
        assert err.value.message == "quitter printed no ready line within 10 s (exit code 3)"
    finally:
        sup.stop_all(grace_s=5)


def test_supervisor_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs", cwd=tmp_path)
    stubborn = sup.spawn(
        "stubborn",
        _python(
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ignoring', file=sys.stderr, flush=True)\n"
            "time.sleep(60)"
        ),
    )
    sup.wait_for_log(stubborn, "ignoring", 10)
    stopped: list[tuple[str, int | None]] = []
    sup.stop_all(grace_s=0.5, on_stop=lambda child, code: stopped.append((child.name, code)))
    assert stopped == [("stubborn", -signal.SIGKILL)]
    assert json.loads((tmp_path / "logs" / "pids.json").read_text()) == {"stubborn": stubborn.pid}


def test_supervisor_names_a_failed_command_and_its_error_line(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs", cwd=tmp_path)
    with pytest.raises(EdgeproofError) as err:
        sup.run(
            "settle",
            ["rewards", "settle", "--epoch", "3", "--config", str(tmp_path / "missing.toml"), "--json"],
        )
    assert err.value.message.startswith("`edgeproof rewards settle` exited with 2: edgeproof: error: ")
    assert "missing.toml" in err.value.message
    log = (tmp_path / "logs" / "settle.log").read_text()
    assert log.startswith(
        f"$ edgeproof rewards settle --epoch 3 --config {tmp_path / 'missing.toml'} --json\n"
    )
