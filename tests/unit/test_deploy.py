"""deploy/: the example config, the systemd unit and install.sh agree with each other and the agent.

install.sh really runs here, staged under a temp --prefix with --no-venv (no network, no
useradd, no systemctl); the unit is parsed, and checked with `systemd-analyze verify` where
that exists (systemd need not be running).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import build_parser, main
from agent.config import load_config
from agent.device.systemd import Notifier
from agent.identity import load_keypair
from agent.inference.cards import load_card
from agent.profiles import load_profiles

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "agent.example.toml"
UNIT = DEPLOY / "systemd" / "edgeproof.service"
INSTALL = DEPLOY / "install.sh"
TERMUX_RUN = DEPLOY / "termux" / "run"
DOCS = ROOT / "docs"

STATE_DIR = "/var/lib/edgeproof"
CONF = "/etc/edgeproof/agent.toml"
KEY = f"{STATE_DIR}/device-key.json"
SHARE = "/usr/share/edgeproof"

# Daemon.shutdown(): transport.flush(timeout=5.0), then transport.stop() joins two threads
# with 5 s each; plus up to 1 s for the main loop to notice SIGTERM.
SHUTDOWN_BUDGET_S = 5 + 5 + 5 + 1


# ---------------------------------------------------------------------- helpers


def read_unit(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as section -> key -> every value given (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: key outside a section: {line!r}"
        assert "=" in line, f"{path}: not a key=value line: {line!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def setting(section: str, key: str, default: str | None = None) -> str | None:
    """The effective (last) value of one setting."""
    values = read_unit().get(section, {}).get(key)
    return values[-1] if values else default


def seconds(span: str) -> float:
    """A systemd time span ("30", "30s", "2min", "1min 30s", "500ms") in seconds."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span.strip())
    assert parts, f"not a time span: {span!r}"
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def exec_start() -> list[str]:
    value = setting("Service", "ExecStart")
    assert value is not None
    return shlex.split(value)


def edgeproof_bin() -> str:
    here = Path(sys.executable).parent / "edgeproof"
    found = str(here) if here.exists() else shutil.which("edgeproof")
    assert found, "no edgeproof console script next to this Python or on PATH: pip install -e . first"
    return found


def installer_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EDGEPROOF_") and k not in ("TERMUX_VERSION", "COORDINATOR_KEY")
    }
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


def install(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        env=installer_env(**env),
        timeout=120,
        check=False,
    )


def staged_install(prefix: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = install("--prefix", str(prefix), "--no-venv", *args, EDGEPROOF_BIN=edgeproof_bin(), **env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def refused_install(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = install("--prefix", str(prefix), "--no-venv", *args, EDGEPROOF_BIN=edgeproof_bin())
    assert result.returncode != 0, result.stdout + result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------- example config


def test_example_config_validates_with_the_real_schema():
    config = load_config(EXAMPLE, env={})
    assert config.device.key == KEY
    assert config.device.state_dir == STATE_DIR
    # Everything the agent writes lives in the unit's only writable path.
    assert config.outbox.path == f"{STATE_DIR}/outbox.sqlite3"
    assert config.inference.model == f"{SHARE}/models/efficientnet-lite0-int8.toml"
    assert config.device.profile == "auto"


def test_example_config_passes_config_check(capsys):
    assert main(["config", "check", str(EXAMPLE)]) == 0
    assert "ok" in capsys.readouterr().out


# ---------------------------------------------------------------------- systemd unit


def test_unit_has_the_required_settings():
    unit = read_unit()
    assert set(unit) == {"Unit", "Service", "Install"}
    required = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "User": "edgeproof",
        "StateDirectory": "edgeproof",
        "ConfigurationDirectory": "edgeproof",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ReadWritePaths": STATE_DIR,
    }
    for key, value in required.items():
        assert setting("Service", key) == value, key
    assert "video" in (setting("Service", "SupplementaryGroups") or "").split()
    assert setting("Install", "WantedBy") == "multi-user.target"
    assert 1 <= seconds(setting("Service", "RestartSec") or "") <= 120
    assert seconds(setting("Service", "TimeoutStopSec") or "") > SHUTDOWN_BUDGET_S
    # Settings that would hide the camera (/dev/video*) or the video group from the agent.
    for forbidden in ("PrivateDevices", "PrivateUsers"):
        assert setting("Service", forbidden, "no") in ("no", "false", "0"), forbidden
    # The device allow-list (ADR 0028) lets cameras and GPU nodes through.
    assert setting("Service", "DevicePolicy") == "closed"
    allowed = unit["Service"]["DeviceAllow"]
    for device in ("char-video4linux rw", "char-drm rw", "char-nvhost* rw", "/dev/nvmap rw"):
        assert device in allowed, device
    # Every setting appears once (a repeated one would silently override the first), except the
    # ones systemd adds up.
    for section in unit.values():
        repeated = [
            k
            for k, v in section.items()
            if len(v) > 1 and k not in ("Environment", "DeviceAllow", "SystemCallFilter")
        ]
        assert not repeated, repeated


def test_unit_does_not_restart_on_exit_codes_a_restart_cannot_fix():
    from agent.errors import (
        BackendUnavailableError,
        ConfigError,
        CorruptStateError,
        KeyFileError,
        ModelError,
    )

    listed = (setting("Service", "RestartPreventExitStatus") or "").split()
    assert all(code.isdigit() for code in listed), listed
    needs_a_human = (ConfigError, KeyFileError, ModelError, BackendUnavailableError, CorruptStateError)
    assert sorted(int(code) for code in listed) == sorted(e.exit_code for e in needs_a_human)
    assert CorruptStateError.exit_code == 12 and "12" in listed
    # operations.md tells the owner what each of them means; 12 names the recovery command.
    ops = (DOCS / "operations.md").read_text(encoding="utf-8")
    for error in needs_a_human:
        assert f"\n| {error.exit_code} |" in ops, error
    assert "| 12 | local state is corrupt: run `edgeproof state recover --config FILE`" in ops


def test_unit_watchdog_matches_the_daemon_ping_interval():
    watchdog_s = seconds(setting("Service", "WatchdogSec") or "")
    notifier = Notifier({"NOTIFY_SOCKET": "/run/none", "WATCHDOG_USEC": str(int(watchdog_s * 1_000_000))})
    assert notifier.watchdog_s == watchdog_s
    # The daemon pings at half the interval from a loop that wakes at least once a second.
    assert watchdog_s / 2 >= 5


def test_unit_exec_start_is_accepted_by_the_cli():
    argv = exec_start()
    assert argv[0] == "/opt/edgeproof/venv/bin/edgeproof"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert args.log_format == "text"
    assert args.config == CONF


def test_unit_passes_systemd_analyze_verify(tmp_path):
    assert shutil.which("systemd-analyze"), (
        "systemd-analyze is missing: apt-get install systemd (make test does)"
    )
    # verify insists that ExecStart exists: point it at this checkout's console script.
    text = UNIT.read_text(encoding="utf-8").replace("/opt/edgeproof/venv/bin/edgeproof", edgeproof_bin())
    unit = tmp_path / "edgeproof.service"
    unit.write_text(text, encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert str(unit) not in output, output  # no warning about our file (unknown keys, bad values)


# ---------------------------------------------------------------------- install.sh


def test_install_sh_parses():
    result = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_termux_run_script_parses():
    result = subprocess.run(["sh", "-n", str(TERMUX_RUN)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert os.access(TERMUX_RUN, os.X_OK)


@pytest.mark.parametrize(("script", "shell"), [(INSTALL, "bash"), (TERMUX_RUN, "sh")])
def test_scripts_pass_shellcheck(script, shell):
    assert shutil.which("shellcheck"), "shellcheck is missing: apt-get install shellcheck (make test does)"
    result = subprocess.run(
        ["shellcheck", "-s", shell, str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_install_help_explains():
    result = install("--help")
    assert result.returncode == 0, result.stderr
    words = (
        "Usage",
        "--prefix",
        "--no-venv",
        "--no-start",
        "--dry-run",
        "--coordinator-key",
        "COORDINATOR_KEY",
    )
    for word in (*words, "python3-venv", "symbolic link", CONF, KEY):
        assert word in result.stdout, word


def test_install_unknown_option_names_the_fix():
    result = install("--frobnicate")
    assert result.returncode != 0
    assert "unknown option '--frobnicate'" in result.stderr
    assert "fix:" in result.stderr and "--help" in result.stderr


def test_install_refuses_old_python(tmp_path):
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\necho 3.9\n")
    fake.chmod(0o755)
    result = install("--prefix", str(tmp_path / "stage"), "--dry-run", PYTHON=str(fake))
    assert result.returncode != 0
    assert "Python >= 3.11" in result.stderr and "3.9" in result.stderr
    assert "fix:" in result.stderr


def test_install_names_python3_venv_when_missing(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text('#!/bin/sh\ncase "$*" in *ensurepip*) exit 1;; esac\necho 3.11\n')
    fake.chmod(0o755)
    result = install("--prefix", str(tmp_path / "stage"), "--dry-run", PYTHON=str(fake))
    assert result.returncode != 0
    assert "python3-venv" in result.stderr
    assert "apt-get install python3-venv" in result.stderr


def test_install_no_venv_without_edgeproof_says_how(tmp_path):
    result = install("--prefix", str(tmp_path / "stage"), "--no-venv", EDGEPROOF_BIN=str(tmp_path / "none"))
    assert result.returncode != 0
    assert "EDGEPROOF_BIN" in result.stderr
    assert not (tmp_path / "stage").exists()


def test_install_dry_run_changes_nothing(tmp_path):
    stage = tmp_path / "stage"
    result = install("--prefix", str(stage), "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not stage.exists()
    out = result.stdout
    venv = f"{stage}/opt/edgeproof/venv"
    assert f"would run: {sys.executable} -m venv {venv}" in out
    assert f"{venv}/bin/python -m pip install" in out
    assert f"{venv}/bin/edgeproof keys init --key {stage}{KEY}" in out
    assert "would run: useradd" not in out and "would run: systemctl" not in out


def test_install_into_prefix_creates_the_expected_files(tmp_path):
    stage = tmp_path / "stage"
    result = staged_install(stage)

    # The unit runs the agent the installer puts in place, with the config it writes.
    argv = exec_start()
    assert f"agent:  {stage}{argv[0]}" in result.stdout
    config_path = stage / argv[argv.index("--config") + 1].lstrip("/")
    assert config_path == stage / CONF.lstrip("/")

    assert config_path.read_text() == EXAMPLE.read_text()
    assert mode(config_path) == 0o640
    assert mode(config_path.parent) == 0o750
    config = load_config(config_path, env={})
    assert config.device.key == KEY

    key = stage / KEY.lstrip("/")
    assert mode(key) == 0o600
    load_keypair(key)  # refuses a key others can read
    assert mode(key.parent) == 0o750

    installed_unit = stage / "etc/systemd/system/edgeproof.service"
    assert installed_unit.read_text() == UNIT.read_text()

    # The model the example config names is there and matches its card's sha256.
    card = load_card(stage / config.inference.model.lstrip("/"))
    card.read_verified_model()
    assert card.labels()
    profiles = load_profiles(stage / SHARE.lstrip("/") / "firmware_profiles")
    assert {"rpi4", "rpi5", "jetson-nano", "jetson-orin", "android-termux"} <= set(profiles)
    assert f"EDGEPROOF_PROFILES_DIR={SHARE}/firmware_profiles" in read_unit()["Service"]["Environment"]

    assert not (stage / "opt/edgeproof/venv").exists()  # --no-venv


def test_install_twice_keeps_key_and_config(tmp_path):
    stage = tmp_path / "stage"
    staged_install(stage)
    key = stage / KEY.lstrip("/")
    config_path = stage / CONF.lstrip("/")
    key_bytes = key.read_bytes()
    edited = config_path.read_text().replace('host = "127.0.0.1"', 'host = "mqtt.example.org"')
    config_path.write_text(edited)

    result = staged_install(stage)
    assert key.read_bytes() == key_bytes
    assert mode(key) == 0o600
    assert config_path.read_text() == edited
    assert result.stdout.count("exists: kept") == 2
    device_id = str(load_keypair(key).pubkey())
    assert f"device id: {device_id}" in result.stdout


# ---------------------------------------------------------------------- install.sh: hostile state folder

# The agent owns /var/lib/edgeproof: it can plant a link there that a root installer would follow
# (`chown` and `install -d` follow links; `[ -e ]` too). install.sh refuses every link it meets
# where it expects its own file or folder, before it changes anything, and leaves the target alone.


def plant_victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim" / "shadow"
    victim.parent.mkdir()
    victim.write_text("root:$6$secret:19000:0:99999:7:::\n")
    victim.chmod(0o640)
    return victim


@pytest.mark.parametrize("target", ["existing file", "dangling"])
def test_install_refuses_a_symlink_planted_at_the_key_path(tmp_path, target):
    stage = tmp_path / "stage"
    staged_install(stage)
    key = stage / KEY.lstrip("/")
    key.unlink()  # e.g. the agent moved its key away ...
    victim = plant_victim(tmp_path)
    link_to = victim if target == "existing file" else victim.parent / "new-file"
    key.symlink_to(link_to)  # ... and put a link in its place
    config_before = (stage / CONF.lstrip("/")).read_bytes()

    result = refused_install(stage)
    assert f"install.sh: error: {key} is a symbolic link (to {link_to}); install.sh never follows one" in (
        result.stderr
    )
    assert f"rm -- '{key}'" in result.stderr  # the fix
    assert "==> directories" not in result.stdout  # refused before anything was changed
    assert key.is_symlink() and os.readlink(key) == str(link_to)
    assert victim.read_text() == "root:$6$secret:19000:0:99999:7:::\n" and mode(victim) == 0o640
    assert sorted(p.name for p in victim.parent.iterdir()) == ["shadow"]  # nothing created there
    assert (stage / CONF.lstrip("/")).read_bytes() == config_before


def test_install_refuses_a_symlinked_state_folder(tmp_path):
    stage = tmp_path / "stage"
    victim = plant_victim(tmp_path)
    victim.parent.chmod(0o755)
    state = stage / STATE_DIR.lstrip("/")
    state.parent.mkdir(parents=True)
    state.symlink_to(victim.parent)

    result = refused_install(stage)
    assert f"{state} is a symbolic link (to {victim.parent}); install.sh never follows one" in result.stderr
    assert not (stage / "etc").exists() and not (stage / "opt").exists()  # nothing staged
    assert mode(victim.parent) == 0o755  # `install -d -m 0750` through the link would chmod it
    assert sorted(p.name for p in victim.parent.iterdir()) == ["shadow"]  # no key written there
    assert victim.read_text().startswith("root:") and mode(victim) == 0o640


def test_install_refuses_a_symlinked_config(tmp_path):
    stage = tmp_path / "stage"
    staged_install(stage)
    config_path = stage / CONF.lstrip("/")
    victim = plant_victim(tmp_path)
    config_path.unlink()
    config_path.symlink_to(victim)
    result = refused_install(stage, "--coordinator-key", COORD_1)
    assert f"{config_path} is a symbolic link (to {victim})" in result.stderr
    assert victim.read_text().startswith("root:") and mode(victim) == 0o640


def test_real_install_creates_the_key_as_the_agent_user_and_never_chowns(tmp_path):
    # A dry run of a real install (no --prefix) shows the commands without running them.
    result = install("--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    agent = "/opt/edgeproof/venv/bin/edgeproof"
    assert f"would run: runuser -u edgeproof -- env -C / {agent} keys init --key {KEY}" in out
    assert "chown" not in out, out
    assert f"would run: install -d -m 0750 -o edgeproof -g edgeproof {STATE_DIR}" in out


# ---------------------------------------------------------------------- install.sh: coordinator pin

COORD_1 = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU"
COORD_2 = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM"


def pinned_example(key: str) -> str:
    text = EXAMPLE.read_text()
    assert text.count('pubkey = ""') == 1
    return text.replace('pubkey = ""', f'pubkey = "{key}"')


def test_install_without_coordinator_key_warns_that_coordinator_messages_are_refused(tmp_path):
    stage = tmp_path / "stage"
    result = staged_install(stage)
    assert (stage / CONF.lstrip("/")).read_text() == EXAMPLE.read_text()  # installed unpinned
    warning = result.stderr
    assert "install.sh: warning: no coordinator key is pinned" in warning
    assert "refuses EVERY coordinator-signed message" in warning
    assert "unpinned_coordinator" in warning
    assert "--coordinator-key" in warning


def test_install_pins_the_coordinator_key_and_reruns_keep_or_change_it(tmp_path):
    stage = tmp_path / "stage"
    config_path = stage / CONF.lstrip("/")

    first = staged_install(stage, "--coordinator-key", COORD_1)
    assert config_path.read_text() == pinned_example(COORD_1)
    assert mode(config_path) == 0o640
    assert load_config(config_path, env={}).coordinator.pubkey == COORD_1
    assert f"coordinator key pinned: {COORD_1}" in first.stdout
    assert "warning" not in first.stderr

    # The owner edits the config; a re-run without a key keeps both the edit and the pin.
    edited = config_path.read_text().replace('host = "127.0.0.1"', 'host = "mqtt.example.org"')
    config_path.write_text(edited)
    kept = staged_install(stage)
    assert config_path.read_text() == edited
    assert f"coordinator key pinned: {COORD_1} (kept; --coordinator-key changes it)" in kept.stdout
    assert "warning" not in kept.stderr

    # The same key again changes nothing, byte for byte.
    same = staged_install(stage, f"--coordinator-key={COORD_1}")
    assert config_path.read_text() == edited
    assert f"coordinator key pinned: {COORD_1} (unchanged)" in same.stdout

    # Another key (here from the environment) replaces the pin and only the pin.
    changed = staged_install(stage, COORDINATOR_KEY=COORD_2)
    assert f"coordinator key changes from {COORD_1}" in changed.stdout
    assert config_path.read_text() == edited.replace(COORD_1, COORD_2)
    assert mode(config_path) == 0o640
    assert not [p.name for p in config_path.parent.iterdir() if p.name != "agent.toml"]  # no temp left

    # The option wins over the environment.
    staged_install(stage, "--coordinator-key", COORD_1, COORDINATOR_KEY=COORD_2)
    assert load_config(config_path, env={}).coordinator.pubkey == COORD_1


@pytest.mark.parametrize("layout", ["no pubkey line", "no coordinator section"])
def test_install_adds_a_missing_pin(tmp_path, layout):
    stage = tmp_path / "stage"
    staged_install(stage)
    config_path = stage / CONF.lstrip("/")
    text = config_path.read_text()
    if layout == "no pubkey line":
        text = text.replace('pubkey = ""\n', "")
    else:
        head, _, tail = text.partition("[coordinator]")
        text = head + tail[tail.index("\n[") + 1 :]
        assert "[coordinator]" not in text
    config_path.write_text(text)
    staged_install(stage, "--coordinator-key", COORD_2)
    config = load_config(config_path, env={})
    assert config.coordinator.pubkey == COORD_2
    assert config_path.read_text().count(f'pubkey = "{COORD_2}"') == 1


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (COORD_1[:-1] + "0", "is not base58"),
        ("l" + COORD_1[1:], "is not base58"),
        ("1" * 31, "decodes to 31 bytes, not the 32 of an ed25519 public key"),
        (COORD_1 + "1", "decodes to 33 bytes, not the 32 of an ed25519 public key"),
    ],
)
def test_install_refuses_a_malformed_coordinator_key(tmp_path, key, message):
    stage = tmp_path / "stage"
    result = refused_install(stage, "--coordinator-key", key)
    assert f"install.sh: error: --coordinator-key '{key}' {message}" in result.stderr
    assert "fix:" in result.stderr
    assert not stage.exists()


def test_all_ones_is_the_32_zero_byte_key(tmp_path):
    # Leading '1's are zero bytes in base58: 32 of them are a (useless, but well-formed) key.
    stage = tmp_path / "stage"
    staged_install(stage, "--coordinator-key", "1" * 32)
    assert load_config(stage / CONF.lstrip("/"), env={}).coordinator.pubkey == "1" * 32


# ---------------------------------------------------------------------- docs


@pytest.mark.parametrize(
    "doc",
    [
        DOCS / "operations.md",
        DOCS / "decisions" / "README.md",
        DEPLOY / "termux" / "README.md",
        DEPLOY / "jetson" / "README.md",
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_relative_links_in_deploy_docs_resolve(doc):
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8"))
    missing = [link for link in links if not (doc.parent / link).exists()]
    assert not missing, missing


def test_every_decision_record_is_indexed():
    index = (DOCS / "decisions" / "README.md").read_text(encoding="utf-8")
    records = sorted(p.name for p in (DOCS / "decisions").glob("[0-9][0-9][0-9][0-9]-*.md"))
    assert records
    for name in records:
        assert f"({name})" in index, name
        assert (DOCS / "decisions" / name).read_text(encoding="utf-8").startswith(f"# {name[:4]}. ")


# ---------------------------------------------------------------------- broker (deploy/mosquitto)

MOSQUITTO = DEPLOY / "mosquitto"


def acl_lines(kind: str) -> list[str]:
    """The topics of every `pattern <kind>` line of the shipped ACL."""
    lines = (MOSQUITTO / "acl").read_text(encoding="utf-8").splitlines()
    return [line.split(None, 2)[2] for line in lines if line.split()[:2] == ["pattern", kind]]


def test_acl_lets_a_device_write_exactly_its_outbound_channels():
    from agent.protocol.topics import COORDINATOR_PUBLISHES, DEVICE_PUBLISHES

    written = acl_lines("write")
    assert sorted(written) == sorted(f"edgeproof/v1/dev/%u/{c}" for c in DEVICE_PUBLISHES)
    assert not any("#" in topic or "+" in topic for topic in written), written
    assert not set(DEVICE_PUBLISHES) & set(COORDINATOR_PUBLISHES)
    device_reads = [t for t in acl_lines("read") if t.startswith("edgeproof/v1/dev/")]
    assert sorted(device_reads) == sorted(f"edgeproof/v1/dev/%u/{c}" for c in COORDINATOR_PUBLISHES)


def test_broker_ties_client_id_to_user_name_on_its_listener():
    lines = [
        line.strip()
        for line in (MOSQUITTO / "mosquitto.conf").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "use_username_as_clientid true" in lines
    assert lines.count("listener 8883") == 1
    # A listener option above the first listener would open an extra default listener on 1883.
    assert lines.index("use_username_as_clientid true") > lines.index("listener 8883")
    dev = (MOSQUITTO / "mosquitto.dev.conf").read_text(encoding="utf-8")
    # The anonymous dev broker must not force client ids: clients without a user name are refused.
    assert "\nuse_username_as_clientid" not in dev and "allow_anonymous true" in dev
