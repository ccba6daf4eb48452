"""The real daemons run under the syscall filters of their own systemd units (ADR 0028).

systemd is not PID 1 here, so the units cannot be started. tests/support/unit_sandbox.py builds
the seccomp filters systemd 252 would load for each unit (its SystemCallFilter= allow-list with
the ~@privileged removal, RestrictAddressFamilies=, MemoryDenyWriteExecute=, no_new_privs) from
the unit file itself and systemd-analyze's tables, and execs the real command under them:

* a probe shows the filters bite (setgroups/chown refused, W+X memory refused where the unit
  says so, only the unit's socket families);
* the device daemon and the coordinator, each under its unit, run the whole loop over a real
  Mosquitto: the daemon quotes beacons, answers challenges that the coordinator scores by
  reference execution (onnxruntime under MemoryDenyWriteExecute=), answers `status --live` on
  its control socket, and both stop cleanly on SIGTERM; the daemon runs under strace, which
  shows that none of its calls is refused and that it writes only under its state folder;
* the localnet ledger under its unit runs the SPL token program (bootstrap: mint, vault, supply)
  and saves its snapshot on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.coordinator import challenge_rows
from agent.coordinator.store import Store
from agent.identity import init_keypair
from tests.support import daemon_rig
from tests.support.coordinator import COORD, CoordinatorProcess, enroll_direct, write_config
from tests.support.localnet import Localnet
from tests.support.mosquitto import MosquittoBroker
from tests.support.unit_sandbox import allowed_syscalls, prefix

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
AGENT_UNIT = SYSTEMD / "edgeproof.service"
COORDINATOR_UNIT = SYSTEMD / "edgeproof-coordinator.service"
LOCALNET_UNIT = SYSTEMD / "edgeproof-localnet.service"
# What a blocked call looks like in a log: our refusals, onnxruntime's failed thread pinning.
BOOTSTRAP = (sys.executable, "-m", "agent", "chain", "bootstrap")
BLOCKED = ("Operation not permitted", "Address family not supported", "pthread_setaffinity_np failed")

PROBE = """
import errno, mmap, os, socket
def attempt(name, call):
    try:
        call()
        print(name, "ok")
    except OSError as exc:
        print(name, errno.errorcode[exc.errno])
attempt("setgroups", lambda: os.setgroups([]))
attempt("chown", lambda: os.chown(".", os.getuid(), os.getgid()))
attempt("wx_memory", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
attempt("af_packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close())
attempt("af_netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
attempt("af_inet", lambda: socket.socket().close())
attempt("sched_setaffinity", lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)))
"""


WRITABLE_DEVICES = {"/dev/null"}
_WRITE_CALL = re.compile(
    r"^(?P<call>openat|open|creat|mkdir|mkdirat|rename|renameat2?|link|linkat|unlink|unlinkat|rmdir|bind)"
    r"\((?P<args>.*)\) = (?P<ret>.*)$"
)
_WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC")
# SQLite gives a new -wal/-shm/journal file its database's owner with fchown(fd, uid, gid), but
# only when it runs as root (os_unix.c, robustFchown: a no-op for any other euid). The tests run
# as root; the unit runs the agent as "edgeproof", which never makes that call. Seen refused here:
# fchown(4, 0, 0) = -1 EPERM.
_ROOT_ONLY = re.compile(r"^fchown\(\d+(?:<[^>]*>)?, 0, 0\) += -1 EPERM" if os.geteuid() == 0 else r"(?!)")


_AT_PATH = re.compile(r'(?:AT_FDCWD|\d+)(?:<(?P<dir>[^>]*)>)?,\s*"(?P<name>[^"]*)"')


def _paths(call: str, args: str) -> set[str]:
    """The paths a call names; relative ones against its directory fd (strace -y) or the cwd."""
    if call.endswith("at") or call.startswith("renameat"):
        pairs = [(m["dir"], m["name"]) for m in _AT_PATH.finditer(args)]
    else:
        pairs = [(None, name) for name in re.findall(r'"([^"]*)"', args)]
    return {name if name.startswith("/") else str(Path(folder or ROOT) / name) for folder, name in pairs}


def traced(trace: Path) -> tuple[list[str], set[str]]:
    """(calls refused with EPERM/EAFNOSUPPORT, paths written) by the daemon and its threads.

    strace -ff writes one file per process or thread (trace.PID), so no call is split in two
    lines. The main process's file starts with the sandbox's own set-up: it counts from the
    daemon's execve. A file with another execve (systemd-analyze, run by the sandbox) is not
    the daemon's.
    """
    refused: list[str] = []
    writes: set[str] = set()
    for part in sorted(trace.parent.glob(trace.name + ".*")):
        lines = part.read_text(encoding="utf-8", errors="replace").splitlines()
        execs = [i for i, line in enumerate(lines) if line.startswith("execve(") and "= 0" in line]
        agent = [i for i in execs if '"-m", "agent"' in lines[i]]
        if execs and not agent:
            continue
        for line in lines[agent[-1] if agent else 0 :]:
            if ("= -1 EPERM" in line or "= -1 EAFNOSUPPORT" in line) and not _ROOT_ONLY.search(line):
                refused.append(f"{part.name}: {line}")
            match = _WRITE_CALL.match(line)
            if match is None or match["ret"].startswith("-1"):
                continue
            if match["call"] in ("openat", "open") and not _WRITE_FLAGS.search(match["args"]):
                continue
            if match["call"] == "bind" and "AF_UNIX" not in match["args"]:
                continue
            writes |= _paths(match["call"], match["args"])
    return refused, writes


def probe(unit: Path | None, tmp_path: Path) -> dict[str, str]:
    argv = [sys.executable, "-c", PROBE]
    done = subprocess.run(
        [*(prefix(unit) if unit else ()), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return dict(line.split() for line in done.stdout.splitlines())


def test_the_filters_are_systemds_allow_list():
    allowed = allowed_syscalls(AGENT_UNIT)
    # @system-service minus @privileged: the daemon's calls are in, root's are out.
    assert {"openat", "connect", "clone3", "sched_setaffinity", "epoll_wait", "ioctl"} <= allowed
    assert not {"setuid", "setgroups", "chown", "fchown", "settimeofday", "mount", "ptrace"} & allowed


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        (AGENT_UNIT, {"wx_memory": "ok", "af_netlink": "ok"}),
        (COORDINATOR_UNIT, {"wx_memory": "EPERM", "af_netlink": "ok"}),
        (LOCALNET_UNIT, {"wx_memory": "ok", "af_netlink": "EAFNOSUPPORT"}),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else "",
)
def test_the_sandbox_refuses_what_the_unit_refuses(tmp_path, unit, expected):
    unfiltered = probe(None, tmp_path)
    assert set(unfiltered.values()) == {"ok"}, unfiltered  # tests run as root: all of it works bare
    filtered = probe(unit, tmp_path)
    assert filtered == {
        "setgroups": "EPERM",
        "chown": "EPERM",
        "af_packet": "EAFNOSUPPORT",
        "af_inet": "ok",
        "sched_setaffinity": "ok",
        **expected,
    }


def test_device_daemon_and_coordinator_run_the_loop_under_their_units(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    folder = tmp_path / "coord"
    config = write_config(
        folder,
        broker_port=mosquitto.port,
        database_url="",
        slot_ms=3000,
        beacon_max_age_slots=2,
        challenge_probability=1.0,
        deadline_ms=20_000,
        active_within_slots=3,
    )
    store = Store.open(sqlite_path=folder / "coordinator.sqlite3")
    enroll_direct(store, daemon_rig.DEVICE, profile="generic-x86_64")
    dev = daemon_rig.DEV
    coordinator = CoordinatorProcess(
        config, tmp_path / "coordinator.log", command_prefix=prefix(COORDINATOR_UNIT)
    )
    device_config = daemon_rig.write_config(tmp_path / "device", mosquitto, coordinator=str(COORD.pubkey()))
    # strace records what the daemon does under its filters: no call may be refused, and every
    # file it writes (opens for writing, creates, renames, removes, binds) is under its state folder.
    trace = tmp_path / "daemon.strace"
    daemon = daemon_rig.DaemonProcess(
        device_config,
        tmp_path / "daemon.log",
        # The unit's venv is read-only (no .pyc writes there), and systemd sets HOME to the user's
        # home, which install.sh makes the state folder: onnxruntime may write
        # ~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db there.
        env={"PYTHONDONTWRITEBYTECODE": "1", "HOME": str(device_config.parent / "state")},
        command_prefix=(
            "strace",
            "-ff",
            "-y",
            "-qq",
            "-e",
            "trace=!futex",
            "-o",
            str(trace),
            *prefix(AGENT_UNIT),
        ),
    )

    def passed() -> int:
        return sum(1 for r in challenge_rows.challenges(store, dev) if r.outcome == "passed")

    def context() -> str:
        return f"coordinator:\n{coordinator.log()[-4000:]}\ndaemon:\n{daemon.tail(40)}"

    try:
        coordinator.start()
        daemon.start()
        deadline = time.monotonic() + 120
        while passed() < 1:
            assert daemon.alive() and coordinator.running(), context()
            assert time.monotonic() < deadline, f"no challenge passed under the unit filters\n{context()}"
            time.sleep(0.5)
        live = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--live", "--json", "--config", str(device_config)],
            cwd=ROOT,
            env=daemon_rig.clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert live.returncode == 0, live.stderr + context()
        # The daemon is strace's child (the sandbox execs into it): SIGTERM goes to it, by its pid.
        agent_pid = int(json.loads(live.stdout)["pid"])
        status = Path(f"/proc/{agent_pid}/status").read_text()
        assert f"\nPPid:\t{daemon.pid}\n" in status, status
        assert coordinator.terminate() == 0, context()
        os.kill(agent_pid, signal.SIGTERM)
        assert daemon.proc is not None and daemon.proc.wait(60) == 0, context()  # strace passes it on
    finally:
        daemon.ensure_dead()
        coordinator.kill()

    messages = store.messages(dev)
    assert any(m.kind == "heartbeat" and m.accepted for m in messages)
    assert any(m.kind == "challenge_response" and m.accepted for m in messages)
    store.close()
    logs = coordinator.log() + daemon.tail(100_000)
    assert not [word for word in BLOCKED if word in logs], context()
    refused, writes = traced(trace)
    assert refused == [], refused[:20]
    # The state folder itself counts (the unit's StateDirectory= makes it; here the daemon does).
    state = str(daemon.state_dir) + "/"
    writable = (state, str(daemon.state_dir), *WRITABLE_DEVICES)
    outside = sorted({path for path in writes if not (path.startswith(state) or path in writable)})
    assert outside == [], outside
    # onnxruntime may also write its cache db under $HOME (the state folder) or not, depending on
    # the machine; "outside" above already refuses it anywhere else.
    assert state + "control.sock" in writes and state + "status.json" in writes


def test_localnet_runs_the_token_program_under_its_unit(tmp_path: Path) -> None:
    snapshot = tmp_path / "ledger.json"
    ledger = Localnet(
        snapshot=snapshot, log_path=tmp_path / "localnet.log", command_prefix=prefix(LOCALNET_UNIT)
    )
    ledger.start()
    try:
        key = tmp_path / "treasury.json"
        init_keypair(key, seed=bytes([21]) * 32)
        done = subprocess.run(
            [*BOOTSTRAP, "--rpc", ledger.url, "--key", str(key), "--supply", "5000", "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        created = json.loads(done.stdout)
        assert created["outcome"] == "created" and created["vault_balance"] == 5000
    finally:
        code = ledger.stop()
    assert code == 0, (tmp_path / "localnet.log").read_text()
    saved = json.loads(snapshot.read_text())
    assert created["vault"] in saved["accounts"]
    log = (tmp_path / "localnet.log").read_text()
    assert not [word for word in BLOCKED if word in log], log
