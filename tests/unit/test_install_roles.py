"""deploy/install.sh --role agent|coordinator|localnet into a temporary root file system, twice.

`--root DIR` installs into DIR as if it were `/`: the role's user goes into DIR/etc/passwd (the
real `useradd --prefix`), owners and modes are set as on a live system (numeric ids from the
image's files), the unit is enabled with `systemctl --root`. Each role is installed twice (with
--no-venv: no network); the test reads every file, mode and owner it wrote, and the second run
must leave every file as it was, time stamps included. Refusals (a bad role, a URL that is not
PostgreSQL, options of another role, a planted link) are checked by their exact words, before
anything is written. The PostgreSQL case runs against a real server (tests/support/postgres.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.coordinator.store import LATEST, Store
from agent.identity import load_keypair

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
INSTALL = DEPLOY / "install.sh"

AS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="--root sets owners from the image's passwd, which needs root; as another user it "
    "refuses to run (and --prefix, tested in test_deploy.py, stages without owners)",
)


def edgeproof_bin() -> str:
    here = Path(sys.executable).parent / "edgeproof"
    assert here.exists(), "no edgeproof console script next to this Python: pip install -e . first"
    return str(here)


def install(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EDGEPROOF_") and k not in ("TERMUX_VERSION", "COORDINATOR_KEY")
    }
    env.update(PYTHON=sys.executable, EDGEPROOF_BIN=edgeproof_bin())
    return subprocess.run(
        ["bash", str(INSTALL), "--no-venv", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def installed(image: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = install("--root", str(image), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def refused(*args: str) -> str:
    result = install(*args)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "fix:" in result.stderr
    return result.stderr


def make_image(path: Path) -> Path:
    """The /etc of a fresh root file system: root alone."""
    etc = path / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o600)
    return path


def accounts(image: Path, name: str) -> dict[str, list[str]]:
    rows = (image / "etc" / name).read_text().splitlines()
    return {row.split(":")[0]: row.split(":") for row in rows}


def snapshot(image: Path) -> dict[str, tuple[Any, ...]]:
    """path -> (kind, mode, uid, gid, then sha256 + mtime for files, target for links)."""
    found: dict[str, tuple[Any, ...]] = {}
    for path in sorted(image.rglob("*")):
        info = path.lstat()
        rel = "/" + str(path.relative_to(image))
        head = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
        if stat.S_ISLNK(info.st_mode):
            found[rel] = ("link", *head, os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            found[rel] = ("dir", *head)
        else:
            found[rel] = ("file", *head, hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mtime_ns)
    return found


def owned(image: Path, path: str, mode: int, owner: str, group: str) -> None:
    users, groups = accounts(image, "passwd"), accounts(image, "group")
    info = (image / path.lstrip("/")).lstat()
    assert stat.S_IMODE(info.st_mode) == mode, f"{path}: mode {stat.S_IMODE(info.st_mode):o}, not {mode:o}"
    assert info.st_uid == int(users[owner][2]), f"{path}: uid {info.st_uid}, not {owner}"
    assert info.st_gid == int(groups[group][2]), f"{path}: gid {info.st_gid}, not {group}"


UNIT_DIR = "/etc/systemd/system"
WANTS = UNIT_DIR + "/multi-user.target.wants"

# What each role writes: path -> (mode, owner, group), and the role's user.
LAYOUT: dict[str, dict[str, tuple[int, str, str]]] = {
    "agent": {
        "/opt/edgeproof": (0o755, "root", "root"),
        "/etc/edgeproof": (0o750, "root", "edgeproof"),
        "/etc/edgeproof/agent.toml": (0o640, "root", "edgeproof"),
        "/var/lib/edgeproof": (0o750, "edgeproof", "edgeproof"),
        "/var/lib/edgeproof/device-key.json": (0o600, "edgeproof", "edgeproof"),
        "/usr/share/edgeproof/models/efficientnet-lite0-int8.toml": (0o644, "root", "root"),
        "/usr/share/edgeproof/firmware_profiles/rpi4.toml": (0o644, "root", "root"),
        "/usr/share/doc/edgeproof/operations.md": (0o644, "root", "root"),
        f"{UNIT_DIR}/edgeproof.service": (0o644, "root", "root"),
    },
    "coordinator": {
        "/opt/edgeproof": (0o755, "root", "root"),
        "/etc/edgeproof-coordinator": (0o750, "root", "edgeproof-coordinator"),
        "/etc/edgeproof-coordinator/coordinator.toml": (0o640, "root", "edgeproof-coordinator"),
        "/var/lib/edgeproof-coordinator": (0o750, "edgeproof-coordinator", "edgeproof-coordinator"),
        "/var/lib/edgeproof-coordinator/coordinator-key.json": (
            0o600,
            "edgeproof-coordinator",
            "edgeproof-coordinator",
        ),
        "/var/lib/edgeproof-coordinator/coordinator.sqlite3": (
            0o600,
            "edgeproof-coordinator",
            "edgeproof-coordinator",
        ),
        "/usr/share/edgeproof/models/efficientnet-lite0-int8.toml": (0o644, "root", "root"),
        "/usr/share/edgeproof/coordinator.example.toml": (0o644, "root", "root"),
        f"{UNIT_DIR}/edgeproof-coordinator.service": (0o644, "root", "root"),
    },
    "localnet": {
        "/var/lib/edgeproof-localnet": (0o750, "edgeproof-localnet", "edgeproof-localnet"),
        "/usr/share/doc/edgeproof/operations.md": (0o644, "root", "root"),
        f"{UNIT_DIR}/edgeproof-localnet.service": (0o644, "root", "root"),
    },
}
UNITS = {
    "agent": "edgeproof.service",
    "coordinator": "edgeproof-coordinator.service",
    "localnet": "edgeproof-localnet.service",
}
USERS = {"agent": "edgeproof", "coordinator": "edgeproof-coordinator", "localnet": "edgeproof-localnet"}


def host_state() -> tuple[Any, ...]:
    """What an install would change on this machine: its users and groups, the roles' folders."""
    folders = [Path(f"/var/lib/{u}") for u in USERS.values()] + [
        Path(f"{UNIT_DIR}/{u}") for u in UNITS.values()
    ]
    return (
        Path("/etc/passwd").read_bytes(),
        Path("/etc/group").read_bytes(),
        [(str(p), p.exists()) for p in folders],
    )


@AS_ROOT
@pytest.mark.parametrize("role", ["agent", "coordinator", "localnet"])
def test_install_a_role_into_a_root_twice(tmp_path, role):
    image = make_image(tmp_path / "image")
    user = USERS[role]
    host_before = host_state()
    first = installed(image, "--role", role)

    # The role's user, in the image only, as a system user that cannot log in.
    row = accounts(image, "passwd")[user]
    assert row[5:] == [f"/var/lib/{user}", "/usr/sbin/nologin"]
    assert int(row[2]) < 1000
    if role == "agent":
        assert accounts(image, "group")["video"][3].split(",") == ["edgeproof"]
    assert host_state() == host_before  # nothing added to this machine

    for path, (mode, owner, group) in LAYOUT[role].items():
        owned(image, path, mode, owner, group)
    unit = image / UNIT_DIR.lstrip("/") / UNITS[role]
    assert unit.read_bytes() == (DEPLOY / "systemd" / UNITS[role]).read_bytes()
    assert os.readlink(image / WANTS.lstrip("/") / UNITS[role]) == f"{UNIT_DIR}/{UNITS[role]}"
    shipped = {
        "/usr/share/edgeproof/models": role != "localnet",
        "/etc/edgeproof": role == "agent",
        "/etc/edgeproof-coordinator": role == "coordinator",
    }
    for path, present in shipped.items():
        assert (image / path.lstrip("/")).exists() == present, path

    if role == "agent":
        config = image / "etc/edgeproof/agent.toml"
        assert config.read_bytes() == (DEPLOY / "agent.example.toml").read_bytes()
        device = load_keypair(image / "var/lib/edgeproof/device-key.json")
        assert "device key" in first.stdout and str(device.pubkey()) in first.stdout
    if role == "coordinator":
        config = image / "etc/edgeproof-coordinator/coordinator.toml"
        assert config.read_bytes() == (DEPLOY / "coordinator.example.toml").read_bytes()
        key = load_keypair(image / "var/lib/edgeproof-coordinator/coordinator-key.json")
        assert f"devices pin it with: deploy/install.sh --coordinator-key {key.pubkey()}" in first.stdout
        database = image / "var/lib/edgeproof-coordinator/coordinator.sqlite3"
        assert f"database {database} migrated from schema version 0 to {LATEST}" in first.stdout
        with contextlib.closing(sqlite3.connect(database)) as conn:
            assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone() == (LATEST,)
            assert conn.execute("SELECT COUNT(*) FROM devices").fetchone() == (0,)

    before = snapshot(image)
    second = installed(image, "--role", role)
    after = snapshot(image)
    if role == "coordinator":
        # Opening the database makes and removes its -wal/-shm files: the folder's mtime moves
        # (the snapshot holds no directory times), the database file itself must not.
        assert f"is at schema version {LATEST} (unchanged)" in second.stdout
    assert after == before, {
        k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)
    }
    assert "already up to date: left alone" in second.stdout
    assert "==> system user " + user + "\n    exists" in second.stdout
    if role in ("agent", "coordinator"):
        assert second.stdout.count("exists: kept") == 2  # the config and the key
    assert f"enabled in {image} (multi-user.target.wants)" in second.stdout


@AS_ROOT
def test_an_existing_image_user_keeps_its_ids_and_gains_the_video_group(tmp_path):
    image = make_image(tmp_path / "image")
    with (image / "etc/passwd").open("a") as handle:
        handle.write("edgeproof:x:901:901:old:/var/lib/edgeproof:/usr/sbin/nologin\n")
    with (image / "etc/group").open("a") as handle:
        handle.write("edgeproof:x:901:\nvideo:x:44:\n")
    result = installed(image)
    assert "would run" not in result.stdout
    assert accounts(image, "passwd")["edgeproof"][2:4] == ["901", "901"]
    assert accounts(image, "group")["video"] == ["video", "x", "44", "edgeproof"]
    owned(image, "/var/lib/edgeproof/device-key.json", 0o600, "edgeproof", "edgeproof")


def test_a_live_coordinator_install_makes_key_and_database_as_its_user_and_never_chowns():
    # A dry run of a real install (no --root) shows the commands without running them.
    result = install("--role", "coordinator", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    user, agent = "edgeproof-coordinator", edgeproof_bin()  # --no-venv: EDGEPROOF_BIN
    as_user = f"would run: runuser -u {user} -- env -C / {agent}"
    assert f"{as_user} keys init --key /var/lib/{user}/coordinator-key.json" in out
    assert f"{as_user} coordinator migrate --config /etc/{user}/coordinator.toml" in out
    assert f"would run: useradd --system --user-group --home-dir /var/lib/{user} --no-create-home" in out
    assert f"would run: install -d -m 0750 -o {user} -g {user} /var/lib/{user}" in out
    assert f"would run: install -d -m 0750 -o root -g {user} /etc/{user}" in out
    assert "chown" not in out, out
    assert not Path(f"/etc/{user}").exists() and not Path(f"/var/lib/{user}").exists()


# ---------------------------------------------------------------------- refusals


def test_an_unknown_role_is_refused_by_name(tmp_path):
    error = refused("--role", "coord", "--root", str(tmp_path))
    assert "install.sh: error: unknown role 'coord' (roles: agent, coordinator, localnet)" in error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--role", "coordinator", "--coordinator-key", "1" * 32), "--coordinator-key is for --role agent"),
        (
            ("--role", "localnet", "--database-url", "postgresql://u@h/d"),
            "--database-url is for --role coordinator",
        ),
        (("--database-url", "postgresql://u@h/d"), "--database-url is for --role coordinator"),
        (
            ("--role", "coordinator", "--database-url", "mysql://u:hunter2@h/d"),
            "--database-url 'mysql://u:***@h/d' is not a postgresql:// URL",
        ),
        (
            ("--role", "coordinator", "--database-url", 'postgresql://u@h/d"x'),
            "--database-url must not hold quotes, backslashes or spaces",
        ),
        (
            ("--role", "coordinator", "--database-url", "postgresql://"),
            "--database-url 'postgresql://' is not a postgresql:// URL",
        ),
    ],
)
def test_options_of_another_role_and_bad_urls_are_refused(tmp_path, args, message):
    image = make_image(tmp_path / "image")
    before = snapshot(image)
    error = refused("--prefix", str(image), *args)
    assert f"install.sh: error: {message}" in error
    assert "hunter2" not in error
    assert snapshot(image) == before  # refused before anything was written


@AS_ROOT
def test_root_needs_a_root_file_system(tmp_path):
    error = refused("--role", "localnet", "--root", str(tmp_path))
    assert f"install.sh: error: {tmp_path} is not a root file system (no {tmp_path}/etc/passwd" in error
    assert list(tmp_path.iterdir()) == []


def test_root_and_prefix_are_exclusive(tmp_path):
    error = refused("--root", str(tmp_path / "a"), "--prefix", str(tmp_path / "b"))
    assert "install.sh: error: --root and --prefix do not go together" in error


@AS_ROOT
def test_a_link_planted_in_the_coordinators_folder_is_refused(tmp_path):
    image = make_image(tmp_path / "image")
    installed(image, "--role", "coordinator")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o640)
    # The database first (checked at the database step), then the key (checked up front).
    for planted in ("coordinator.sqlite3", "coordinator-key.json"):
        path = image / "var/lib/edgeproof-coordinator" / planted
        real = path.with_name(planted + ".moved")
        path.rename(real)
        path.symlink_to(victim)
        before = snapshot(image)
        error = refused("--root", str(image), "--role", "coordinator")
        assert f"{path} is a symbolic link (to {victim}); install.sh never follows one" in error, planted
        assert f"rm -- '{path}'" in error
        assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o640
        assert victim.stat().st_uid == 0
        assert snapshot(image) == before, planted
        path.unlink()
        real.rename(path)


# ---------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Any]:
    from tests.support.postgres import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@AS_ROOT
@pytest.mark.integration
def test_coordinator_on_postgresql_url_set_kept_and_schema_migrated(tmp_path, pg_server):
    image = make_image(tmp_path / "image")
    schema_url = pg_server.create_schema("install_roles")
    # A password in the URL (the test server trusts everyone) is written, never printed.
    url = schema_url.replace("postgresql://edgeproof@", "postgresql://edgeproof:s3cret@")
    config = image / "etc/edgeproof-coordinator/coordinator.toml"
    key = image / "var/lib/edgeproof-coordinator/coordinator-key.json"

    first = installed(image, "--role", "coordinator", "--database-url", url)
    out = first.stdout + first.stderr
    assert "s3cret" not in out and "database: postgresql://edgeproof:***@127.0.0.1:" in out
    assert f'database_url = "{url}"' in config.read_text()
    assert "migrated from schema version 0 to" in first.stdout
    store = Store.open(database_url=url, migrate=False)
    try:
        assert store.schema_version() == LATEST
    finally:
        store.close()
    assert not (image / "var/lib/edgeproof-coordinator/coordinator.sqlite3").exists()
    owned(image, config.as_posix().removeprefix(str(image)), 0o640, "root", "edgeproof-coordinator")
    key_bytes = key.read_bytes()

    key.chmod(0o640)  # someone loosened it: a re-run says so, and leaves the key alone
    kept = installed(image, "--role", "coordinator")
    assert (
        f"install.sh: warning: {key} has mode 640: the daemon refuses a key others can read; "
        f"fix: chmod 600 {key}"
    ) in kept.stderr
    assert "(kept; --database-url changes it)" in kept.stdout and "s3cret" not in kept.stdout
    assert f"is at schema version {LATEST} (unchanged)" in kept.stdout
    assert key.read_bytes() == key_bytes  # the key is never overwritten

    assert not [p.name for p in config.parent.iterdir() if p.name != "coordinator.toml"]  # no temp left


def test_help_explains_the_roles_and_their_options():
    result = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for word in (
        "--role ROLE",
        "agent (default), coordinator or localnet",
        "--root DIR",
        "useradd",
        "--database-url URL",
        "/etc/edgeproof-coordinator/coordinator.toml",
        "/var/lib/edgeproof-coordinator/coordinator-key.json",
        "edgeproof-localnet.service",
        "coordinator migrate",
    ):
        assert word in result.stdout, word
