"""deploy/termux/install.sh in a temporary root: a fake Termux ``$PREFIX`` and ``$HOME``, run as an
unprivileged user (uid 65534 when the tests run as root), twice (idempotent), and its refusals.

Termux itself cannot run here, so ``pkg`` and the prefix's ``python`` are stand-ins that record
their arguments; the venv's ``edgeproof`` is the real CLI (it writes the real device key), and the
config the script writes is loaded with the real config loader.  The doctor's Termux platform
check is run against the same tree.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import load_config
from agent.device.doctor_checks import platform
from agent.profiles import load_profiles

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "termux" / "install.sh"
RUN = ROOT / "deploy" / "termux" / "run"
NOBODY = 65534
PKG_LINE = (
    "pkg install -y python python-numpy opencv-python python-onnxruntime termux-services termux-tools "
    "rust clang binutils"
)


@dataclass
class Tree:
    top: Path
    prefix: Path
    home: Path
    src: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PREFIX": str(self.prefix),
            "HOME": str(self.home),
            "PATH": f"{self.prefix}/bin:/usr/bin:/bin",
            "LOG": str(self.log),
            **extra,
        }


def write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def tree() -> Iterator[Tree]:
    # Not under pytest's tmp_path: that is 0700 root's, and the script runs as another user.
    top = Path(tempfile.mkdtemp(prefix="termux-"))
    prefix, home, src = top / "usr", top / "home", top / "src"
    for folder in (
        prefix / "bin",
        prefix / "share/termux-services",
        home,
        src / "deploy/termux",
        src / "models",
    ):
        folder.mkdir(parents=True)
    shutil.copytree(ROOT / "agent", src / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", src / "setup.cfg")
    shutil.copy(ROOT / "deploy/agent.example.toml", src / "deploy/agent.example.toml")
    shutil.copy(RUN, src / "deploy/termux/run")
    shutil.copy(ROOT / "models/efficientnet-lite0-int8.toml", src / "models/")
    log = top / "calls.log"
    (prefix / "bin/sh").symlink_to("/bin/sh")
    write_exec(prefix / "bin/pkg", '#!/bin/sh\necho "pkg $*" >>"$LOG"\n')
    write_exec(prefix / "bin/termux-wake-lock", '#!/bin/sh\necho "termux-wake-lock" >>"$LOG"\n')
    write_exec(prefix / "share/termux-services/svlogger", "#!/bin/sh\nexec cat\n")
    # The prefix's python: `-m venv` makes a venv whose pip records and whose edgeproof is the real CLI.
    write_exec(
        prefix / "bin/python",
        f"""#!/bin/sh
echo "python $*" >>"$LOG"
[ "$1 $2 $3" = "-m venv --system-site-packages" ] || exit 3
mkdir -p "$4/bin"
printf '#!/bin/sh\\necho "venv-python $*" >>"$LOG"\\n' >"$4/bin/python"
printf '#!/bin/sh\\nPYTHONPATH={src} exec {sys.executable} -m agent "$@"\\n' >"$4/bin/edgeproof"
chmod 755 "$4/bin/python" "$4/bin/edgeproof"
""",
    )
    if os.geteuid() == 0:
        for path in [top, *top.rglob("*")]:
            os.lchown(path, NOBODY, NOBODY)
    try:
        yield Tree(top, prefix, home, src, log)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def install(
    tree: Tree, *args: str, as_root: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    script = tree.src / "deploy/termux/install.sh"
    shutil.copy(SCRIPT, script)
    # As root, run it as uid 65534 with only CAP_DAC_READ_SEARCH (ambient), so that the real CLI in
    # the venv stand-in can read the interpreter and packages wherever they are (e.g. under a
    # 0700 /root): files it creates belong to 65534, and it can write nowhere root's modes forbid.
    user = (
        []
        if as_root or os.geteuid() != 0
        else [
            "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
        ]
    )  # fmt: skip
    return subprocess.run(
        [*user, "/bin/sh", str(script), *args],
        env=tree.env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.lstat().st_mode))


def test_install_writes_the_agent_the_config_the_key_and_the_runit_service(tree: Tree) -> None:
    done = install(tree)
    assert done.returncode == 0, done.stderr
    venv, conf, state = (
        tree.home / "edgeproof-venv",
        tree.home / ".config/edgeproof",
        tree.home / ".local/state/edgeproof",
    )
    assert tree.log.read_text().splitlines() == [
        PKG_LINE,
        f"python -m venv --system-site-packages {venv}",
        f"venv-python -m pip install --quiet --no-deps -e {tree.src}",
        "venv-python -m pip install --quiet paho-mqtt>=2,<3 psutil pydantic>=2.6,<3 solders solana rich",
    ]
    key, config = state / "device-key.json", conf / "agent.toml"
    assert (mode(conf), mode(state), mode(key), mode(config)) == ("0o700", "0o700", "0o600", "0o600")
    expected_uid = NOBODY if os.geteuid() == 0 else os.geteuid()
    assert {p.stat().st_uid for p in (conf, state, key, config)} == {expected_uid}
    loaded = load_config(config, env={})
    assert (loaded.device.key, loaded.device.state_dir, loaded.device.profile) == (
        str(key),
        str(state),
        "android-termux",
    )
    assert loaded.inference.model == str(tree.src / "models/efficientnet-lite0-int8.toml")
    service = tree.prefix / "var/service/edgeproof"
    run = service / "run"
    assert mode(run) == "0o755"
    assert run.read_text().splitlines()[0] == f"#!{tree.prefix}/bin/sh"
    assert run.read_text().splitlines()[1:] == RUN.read_text().splitlines()[1:]
    assert os.readlink(service / "log/run") == str(tree.prefix / "share/termux-services/svlogger")
    assert done.stdout.splitlines()[-2:] == [
        f"  {venv}/bin/edgeproof doctor --config {config}",
        "  sv-enable edgeproof",
    ]
    # The doctor's platform check is satisfied by what the script set up.
    profile = load_profiles(ROOT / "firmware_profiles")["android-termux"]
    assert platform(profile, loaded, tree.env()) == (
        "ok",
        f"state in {state}; termux-wake-lock found; service {run}",
        "",
    )


def test_a_second_run_keeps_the_key_and_the_config(tree: Tree) -> None:
    assert install(tree).returncode == 0
    key = tree.home / ".local/state/edgeproof/device-key.json"
    config = tree.home / ".config/edgeproof/agent.toml"
    first_key = key.read_bytes()
    config.write_text(config.read_text() + "\n# edited by the owner\n")
    edited = config.read_text()
    tree.log.write_text("")
    again = install(tree, "--no-pkg", "--boot")
    assert again.returncode == 0, again.stderr
    assert key.read_bytes() == first_key and config.read_text() == edited
    assert f"key: kept {key}" in again.stdout and f"config: kept {config}" in again.stdout
    # No pkg run, the venv is not made again; the agent itself is refreshed (an upgrade).
    assert tree.log.read_text().splitlines() == [
        f"venv-python -m pip install --quiet --no-deps -e {tree.src}",
        "venv-python -m pip install --quiet paho-mqtt>=2,<3 psutil pydantic>=2.6,<3 solders solana rich",
    ]
    boot = tree.home / ".termux/boot/edgeproof"
    assert mode(boot) == "0o755"
    assert boot.read_text().splitlines()[2:] == [
        "termux-wake-lock",
        f'. "{tree.prefix}/etc/profile.d/start-services.sh"',
    ]


def test_the_run_script_takes_the_wake_lock_and_execs_the_agent(tree: Tree) -> None:
    assert install(tree).returncode == 0
    venv_cli = tree.home / "edgeproof-venv/bin/edgeproof"
    write_exec(venv_cli, '#!/bin/sh\necho "edgeproof $*" >>"$LOG"\n')
    tree.log.write_text("")
    done = subprocess.run(
        [str(tree.prefix / "var/service/edgeproof/run")],
        env=tree.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert tree.log.read_text().splitlines() == [
        "termux-wake-lock",
        f"edgeproof --log-format text run --config {tree.home}/.config/edgeproof/agent.toml",
    ]


def test_refusals_are_named(tree: Tree) -> None:
    no_prefix = tree.env()
    del no_prefix["PREFIX"]
    cases = [
        (
            install(tree, env=no_prefix),
            "PREFIX is not a Termux prefix (run this inside Termux; on Linux use deploy/install.sh)",
        ),
        (install(tree, "--fast"), "unknown option --fast (see --help)"),
        (
            install(tree, "--source", str(tree.top)),
            f"{tree.top} is not an edgeproof checkout (no setup.cfg and agent/)",
        ),
    ]
    if os.geteuid() == 0:
        cases.append(
            (
                install(tree, as_root=True),
                "do not run this as root (tsu/su): Termux files must belong to the Termux user",
            )
        )
    for done, message in cases:
        assert (done.returncode, done.stderr) == (1, f"install.sh: error: {message}\n")
    assert not (tree.home / ".config").exists() and not tree.log.exists()
    helped = install(tree, "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: deploy/termux/install.sh")


def test_the_termux_platform_check_names_what_is_missing(tree: Tree) -> None:
    profile = load_profiles(ROOT / "firmware_profiles")["android-termux"]
    base = tree.top / "agent.toml"
    base.write_text(f'[device]\nstate_dir = "{tree.home}/state"\nprofile = "android-termux"\n')
    cfg = load_config(base, env={})
    bare = {"PREFIX": str(tree.prefix), "PATH": "/usr/bin:/bin"}
    assert platform(profile, cfg, bare)[:2] == (
        "warn",
        "termux-wake-lock is not on PATH: Android may suspend the CPU with the screen off",
    )
    status, detail, hint = platform(profile, cfg, tree.env())
    assert (status, detail) == (
        "warn",
        f"no runit service at {tree.prefix}/var/service/edgeproof/run: nothing restarts the agent",
    )
    assert hint == "run deploy/termux/install.sh (termux-services), then sv-enable edgeproof"
    base.write_text('[device]\nstate_dir = "/sdcard/edgeproof"\nprofile = "android-termux"\n')
    shared = platform(profile, load_config(base, env={}), tree.env())
    assert shared[0] == "fail" and shared[1].startswith(
        "device.state_dir /sdcard/edgeproof is on Android's shared storage"
    )


@pytest.mark.parametrize("script", [SCRIPT, RUN])
def test_the_termux_scripts_pass_shellcheck(script: Path) -> None:
    assert shutil.which("shellcheck"), "shellcheck is missing: apt-get install shellcheck (make test does)"
    done = subprocess.run(
        ["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout
