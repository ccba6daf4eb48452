"""The systemd units of every role: exposure <= 2.0 and `systemd-analyze verify` clean (ADR 0028).

Both figures come from systemd-analyze's own output (systemd 252 here, no running systemd needed):
`security --offline=yes` prints one line per check (✓ passed, ✗ failed with its exposure) and
`→ Overall exposure level for NAME: X.Y`. Each unit quotes its figure in a comment, and the set of
failed checks is pinned per unit, so a weaker unit, a stale comment or a rejection that ADR 0028
does not explain fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
ADR = ROOT / "docs" / "decisions" / "0028-unit-hardening-for-every-role.md"
VENV_BIN = "/opt/edgeproof/venv/bin/edgeproof"
BOUND = 2.0

UNITS = ["edgeproof.service", "edgeproof-coordinator.service", "edgeproof-localnet.service"]

# The checks each unit fails on purpose; ADR 0028 gives the reason for each.
_EVERY_ROLE = {
    "SystemCallFilter=~@resources",
    "RootDirectory=/RootImage=",
    "RestrictAddressFamilies=~AF_UNIX",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
    "ProcSubset=",
    "PrivateNetwork=",
    "DeviceAllow=",
    "IPAddressDeny=",
}
ACCEPTED_FAILURES = {
    "edgeproof.service": _EVERY_ROLE
    | {
        "SupplementaryGroups=",
        "PrivateDevices=",
        "MemoryDenyWriteExecute=",
        "RestrictAddressFamilies=~AF_NETLINK",
        "PrivateUsers=",
    },
    "edgeproof-coordinator.service": _EVERY_ROLE | {"RestrictAddressFamilies=~AF_NETLINK"},
    "edgeproof-localnet.service": _EVERY_ROLE | {"MemoryDenyWriteExecute="},
}

OVERALL = re.compile(r"^→ Overall exposure level for (?P<unit>\S+): (?P<score>\d+\.\d) (?P<word>\w+)", re.M)
CHECK = re.compile(r"^(?P<mark>[✓✗]) (?P<name>\S+)\s+(?P<text>.*?)\s*(?P<exposure>\d+\.\d)?\s*$")


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: apt-get install systemd (make test does)"
    return found


def security(unit: Path) -> tuple[float, dict[str, float]]:
    """(overall exposure, {failed check: its exposure}) parsed from `security --offline=yes`."""
    result = subprocess.run(
        [analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    overall = OVERALL.search(output)
    assert overall is not None, output
    assert overall["unit"] == unit.name, output
    failed: dict[str, float] = {}
    for line in output.splitlines():
        match = CHECK.match(line)
        if match and match["mark"] == "✗":
            failed[match["name"]] = float(match["exposure"] or 0)
    assert failed, f"no check lines parsed from:\n{output}"
    return float(overall["score"]), failed


def quoted_score(unit: Path) -> float:
    quoted = re.findall(r"rates this unit (\d+\.\d)", unit.read_text(encoding="utf-8"))
    assert len(quoted) == 1, f"{unit.name} must quote its exposure once: 'rates this unit X.Y'"
    return float(quoted[0])


@pytest.mark.parametrize("name", UNITS)
def test_unit_exposure_is_at_most_2(name):
    unit = SYSTEMD / name
    score, failed = security(unit)
    assert score <= BOUND, f"{name}: exposure {score} > {BOUND}; failed checks: {failed}"
    assert score == quoted_score(unit), f"{name}: systemd-analyze says {score}, the comment says otherwise"
    assert set(failed) == ACCEPTED_FAILURES[name], (
        f"{name}: failed checks changed: new {sorted(set(failed) - ACCEPTED_FAILURES[name])}, "
        f"now passing {sorted(ACCEPTED_FAILURES[name] - set(failed))}: update the unit comment, "
        "ADR 0028 and ACCEPTED_FAILURES"
    )


def test_the_parser_sees_a_weaker_unit(tmp_path):
    # The same parser on the agent unit without its new hardening: it must see the old 2.4.
    text = (SYSTEMD / "edgeproof.service").read_text(encoding="utf-8")
    for line in ("DevicePolicy=closed", "ProtectClock=yes", "ProtectProc=invisible", "RemoveIPC=yes"):
        text = text.replace(line + "\n", "")
    text = text.replace("SystemCallFilter=~@privileged\n", "").replace("PrivateMounts=yes\n", "")
    text = re.sub(r"^DeviceAllow=.*\n", "", text, flags=re.M)
    weaker = tmp_path / "edgeproof.service"
    weaker.write_text(text, encoding="utf-8")
    score, failed = security(weaker)
    assert score == 2.4
    assert failed["ProtectProc="] == 0.2 and failed["DeviceAllow="] == 0.2
    assert "SystemCallFilter=~@privileged" in failed


@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify(tmp_path, name):
    # verify insists that ExecStart exists: point it at this checkout's console script.
    here = Path(sys.executable).parent / "edgeproof"
    found = str(here) if here.exists() else shutil.which("edgeproof")
    assert found, "no edgeproof console script next to this Python or on PATH: pip install -e . first"
    text = (SYSTEMD / name).read_text(encoding="utf-8")
    assert f"ExecStart={VENV_BIN} " in text
    unit = tmp_path / name
    unit.write_text(text.replace(VENV_BIN, found), encoding="utf-8")
    result = subprocess.run(
        [analyze(), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert str(unit) not in output and name not in output, output  # no warning about our file


def test_verify_catches_a_mistyped_setting(tmp_path):
    # The check above must be able to fail: verify exits 0 on an unknown key, but names the file
    # and line, which the check above refuses.
    text = (SYSTEMD / "edgeproof-localnet.service").read_text(encoding="utf-8")
    here = Path(sys.executable).parent / "edgeproof"
    unit = tmp_path / "edgeproof-localnet.service"
    unit.write_text(
        text.replace(VENV_BIN, str(here)).replace("ProtectProc=invisible", "ProtectProcs=invisible"),
        encoding="utf-8",
    )
    result = subprocess.run(
        [analyze(), "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert f"{unit}:" in output and "Unknown key 'ProtectProcs' in section [Service], ignoring." in output


def test_every_rejection_is_explained_in_the_adr():
    adr = ADR.read_text(encoding="utf-8")
    for name in sorted(set().union(*ACCEPTED_FAILURES.values())):
        setting = name.split("=")[0].split("/")[0]
        assert f"`{setting}=" in adr, f"ADR 0028 does not say why {name} is left out"
