"""Corrupt state (issue 6 item 8) and a read-only `edgeproof status` (item 10), on real daemons.

* An unreadable state file (garbage, truncated, zero length, a mangled page) stops
  `python -m agent run` with exit code 12 and a message naming the file and the recovery
  command, instead of a restart loop.
* `edgeproof state recover` moves it aside, re-queues what it can still read (re-verified),
  restores the chain head and manifest versions; the restarted daemon continues the chain:
  seq = old head + 1 with prev = the old head's hash (or a gap), never seq 1.
* Deleting the queue file rolls back neither the chain head nor the manifest versions.
* `edgeproof status` creates, migrates and writes nothing, and turns locked and corrupt
  databases into one message.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.device.state_store import StateStore
from agent.protocol.chain import ChainSigner
from agent.protocol.envelope import Envelope, verify_envelope
from agent.protocol.messages import Health, Heartbeat
from agent.transport.outbox import Outbox
from agent.transport.settings import OutboxSettings
from agent.transport.sqlite_file import SqliteFile
from tests.support.daemon_rig import (
    DEVICE,
    OPERATOR,
    ROOT,
    DaemonProcess,
    Publisher,
    capture_of,
    clean_env,
    collector_for,
    edgeproof,
    outbox_facts,
    wait_until,
    write_config,
)
from tests.support.envelopes import coordinator_envelope, manifest
from tests.support.mosquitto import MosquittoBroker, free_port

pytestmark = pytest.mark.integration

V1_FILE = ROOT / "tests" / "data" / "state" / "outbox-v1.sqlite3"
V1_HEAD = "5244b80d96d6bbe2217f566a2310fc4c9b0be3817bf54fb292c182dbdf209bbb"
RECOVER_HINT = (
    "  fix: stop the agent and run `edgeproof state recover --config FILE`: it moves the file aside (kept, "
    "never deleted), re-queues every envelope it can still read and restores the chain head and manifest "
    "versions from their second copy. Do not delete the file: a fresh one would restart the hash chain at seq 1\n"
)


cli = edgeproof  # ``python -m agent ARGS`` from the checkout, output captured


def no_broker() -> Any:
    """A config target with nothing listening (the daemon must fail before it connects)."""
    return SimpleNamespace(host="127.0.0.1", port=free_port())


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def heartbeat(i: int) -> Heartbeat:
    return Heartbeat(beacon_slot=0, beacon_nonce="0" * 64, uptime_s=i, health=Health(cpu_bp=1, mem_bp=2))


def queued_state(path: Path, count: int) -> list[Envelope]:
    """A state file as the daemon leaves it: ``count`` chained heartbeats queued (real envelopes)."""
    signer = ChainSigner(DEVICE)
    file = SqliteFile.open(path)
    store = StateStore(file, copy_path=path.parent / "state-copy.json")
    outbox = Outbox(OutboxSettings(path=str(path)), file=file, reserve_bytes=0)
    envs = []
    for i in range(count):
        env = signer.prepare("heartbeat", heartbeat(i), 1_800_000_000_000 + i)
        outbox.put(
            f"edgeproof/v1/dev/{signer.dev}/hb",
            env.wire,
            kind="heartbeat",
            seq=env.seq,
            in_transaction=store.chain_step(env.seq, env.hash),
        )
        signer.commit(env)
        envs.append(env)
    outbox.close()
    file.close()
    return envs


def mangle_page_holding(path: Path, needle: bytes, seed: int = 6) -> int:
    """Overwrite the b-tree header of the page holding ``needle`` with seeded random bytes."""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for page in range(1, len(data) // page_size):
        start = page * page_size
        if needle in data[start : start + page_size]:
            data[start : start + 64] = random.Random(seed).randbytes(64)
            path.write_bytes(bytes(data))
            return page
    raise AssertionError(f"no page holds {needle!r}")


def damage(kind: str, path: Path) -> None:
    if kind == "garbage":
        path.write_bytes(random.Random(1).randbytes(50_000))
    elif kind == "zero_length":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2 + 100])
    elif kind == "mangled_page":
        mangle_page_holding(path, b'"seq":20,')
    else:
        raise AssertionError(kind)


EXPECTED_DETAIL = {
    "garbage": "not a SQLite database (wrong header)",
    "zero_length": "the file is empty (zero length): truncated",
    "truncated": "opening: database disk image is malformed",
}


@pytest.mark.parametrize("kind", ["garbage", "truncated", "zero_length", "mangled_page"])
def test_unreadable_state_stops_the_daemon_with_exit_code_12(tmp_path: Path, kind: str) -> None:
    config = write_config(tmp_path / "device", no_broker())
    state = tmp_path / "device" / "state"
    state.mkdir()
    db = state / "outbox.sqlite3"
    queued_state(db, 40)
    damage(kind, db)
    started = time.monotonic()
    done = cli("run", "--config", str(config))
    took = time.monotonic() - started
    assert done.returncode == 12, done.stderr
    (first,) = [line for line in done.stderr.splitlines() if line.startswith("edgeproof: error: ")]
    # One structured log line names the reason from the catalogue.
    assert [line for line in done.stderr.splitlines() if 'reason="unreadable_state"' in line] != []
    assert first.startswith(f"edgeproof: error: state file {db} is unreadable: ")
    if kind in EXPECTED_DETAIL:
        assert first == f"edgeproof: error: state file {db} is unreadable: {EXPECTED_DETAIL[kind]}"
    else:
        assert "integrity check failed" in first or "malformed" in first, first
    assert done.stderr.endswith(RECOVER_HINT)
    assert "Traceback" not in done.stderr
    assert took < 30, f"exit 12 took {took:.1f}s"
    # Nothing was replaced: the damaged file is still there for `state recover`.
    assert db.exists()


@pytest.mark.parametrize("kind", ["garbage", "truncated", "zero_length", "mangled_page"])
def test_state_recover_keeps_what_verifies_and_never_rolls_the_chain_back(tmp_path: Path, kind: str) -> None:
    config = write_config(tmp_path / "device", no_broker())
    state = tmp_path / "device" / "state"
    state.mkdir()
    db = state / "outbox.sqlite3"
    envs = queued_state(db, 40)
    head = envs[-1]
    damage(kind, db)
    done = cli("state", "recover", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["healthy"] is False and report["problem"].startswith(f"state file {db} is unreadable")
    (moved,) = [Path(p) for p in report["moved_to"] if not p.endswith(("-wal", "-shm"))]
    assert moved.name.startswith("outbox.sqlite3.corrupt-") and moved.exists()  # kept, never deleted
    # The chain head comes back from the copy, whatever the damage.
    assert report["restored"]["chain"] == {"seq": 40, "head": head.hash}
    assert report["head_sources"]["copy"] == 40 and report["warnings"] == []
    with Outbox(OutboxSettings(path=str(db))) as outbox:
        rows = outbox.pending()
    requeued = [verify_envelope(r.payload) for r in rows]
    assert [e.seq for e in requeued] == sorted(e.seq for e in requeued)
    assert {e.hash for e in requeued} <= {e.hash for e in envs}
    assert [r.seq for r in rows] == [e.seq for e in requeued]
    assert report["kept_total"] == len(rows)
    if kind == "mangled_page":
        # The rows on the mangled page are lost; the others on both sides of it are kept.
        assert 0 < len(rows) < 40
        assert min(r.seq or 0 for r in rows) < 20 < max(r.seq or 0 for r in rows)
    elif kind in ("garbage", "zero_length"):
        assert rows == []
    # Running again on the now healthy file moves nothing.
    again = cli("state", "recover", "--config", str(config), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["healthy"] is True


def test_recover_re_verifies_every_payload(tmp_path: Path) -> None:
    """A row whose payload was altered (still a readable row) is lost, not re-queued."""
    config = write_config(tmp_path / "device", no_broker())
    state = tmp_path / "device" / "state"
    state.mkdir()
    db = state / "outbox.sqlite3"
    queued_state(db, 30)
    raw = sqlite3.connect(db)
    raw.execute(
        "UPDATE outbox SET payload = CAST(replace(CAST(payload AS TEXT), '\"uptime_s\":3', '\"uptime_s\":4') AS BLOB) "
        "WHERE seq = 4"
    )
    assert raw.total_changes == 1
    raw.commit()
    raw.close()
    mangle_page_holding(db, b'"seq":15,')
    report = json.loads(cli("state", "recover", "--config", str(config), "--json").stdout)
    assert report["lost"].get("bad_signature") == 1
    with Outbox(OutboxSettings(path=str(db))) as outbox:
        assert 4 not in {r.seq for r in outbox.pending()}


def test_recover_refuses_while_the_daemon_runs(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    config = write_config(tmp_path / "device", broker, source="none")
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        daemon.start()
        wait_until(lambda: daemon.status().get("running"), 60, "the daemon to write its status")
        done = cli("state", "recover", "--config", str(config))
        assert done.returncode == 1
        assert done.stderr == (
            f"edgeproof: error: the daemon is running (pid {daemon.pid}, per {daemon.state_dir / 'status.json'}); "
            "refusing to touch its state\n"
            "  fix: stop it first (systemctl stop edgeproof, or SIGTERM that pid), then run state recover again\n"
        )
        assert not list(daemon.state_dir.glob("*.corrupt-*"))
        # status while it runs: from its status file, no error.
        status = cli("status", "--config", str(config), "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["running"] is True and data["chain"]["seq"] >= 1
    finally:
        code = daemon.terminate() if daemon.alive() else None
        daemon.ensure_dead()
        broker.kill()
    assert code == 0, daemon.tail()


def test_mangled_state_then_recover_then_the_daemon_continues_its_chain(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    collector = collector_for(broker, "corrupt")
    config = write_config(tmp_path / "device", broker)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    db = tmp_path / "device" / "state" / "outbox.sqlite3"
    try:
        # First life: a few envelopes delivered, then the broker goes away and envelopes queue up.
        daemon.start()
        wait_until(lambda: (daemon.status().get("chain") or {}).get("last_acked_seq", 0) >= 3, 60, "3 acked")
        broker.stop()
        wait_until(lambda: (daemon.status().get("outbox") or {}).get("depth", 0) >= 12, 60, "12 queued")
        assert daemon.terminate() == 0, daemon.tail()
        facts = outbox_facts(db)
        head_seq, head_hash = int(facts["state"]["seq"]), str(facts["state"]["prev"])
        queued = sorted(facts["pending_seqs"])
        assert len(queued) >= 12
        middle = queued[len(queued) // 2]
        mangle_page_holding(db, f'"seq":{middle},'.encode())

        # The damaged file stops the daemon with exit code 12 (no restart loop).
        assert cli("run", "--config", str(config)).returncode == 12

        done = cli("state", "recover", "--config", str(config), "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["restored"]["chain"] == {"seq": head_seq, "head": head_hash}
        assert 0 < report["kept_total"] < len(queued) + 1  # the mangled page's rows are lost

        # Second life: the chain goes on from the old head.
        broker.start()
        daemon = DaemonProcess(config, tmp_path / "daemon2.log")
        daemon.start()

        def next_envelope() -> Envelope | None:
            fresh = [verify_envelope(p) for p in collector.payloads()]
            later = sorted((e for e in fresh if not e.sideband and e.seq > head_seq), key=lambda e: e.seq)
            return later[0] if later else None

        first_new = wait_until(next_envelope, 60, "an envelope after the old head")
        assert (first_new.seq, first_new.prev) == (head_seq + 1, head_hash)
        # No seq was ever delivered with two different envelopes (no fork), salvaged rows included.
        assert capture_of(collector).forks == []
    finally:
        code = daemon.terminate() if daemon.alive() else None
        daemon.ensure_dead()
        collector.close()
        broker.kill()
    assert code == 0, daemon.tail()


def test_deleting_the_queue_file_rolls_back_neither_chain_nor_manifest_versions(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    collector = collector_for(broker, "deleted")
    publisher = Publisher(broker)
    config = write_config(tmp_path / "device", broker, source="none", manifest_channel="stable")
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    db = tmp_path / "device" / "state" / "outbox.sqlite3"
    topic = "edgeproof/v1/fleet/manifest/stable"
    try:
        daemon.start()
        publisher.publish(topic, coordinator_envelope("manifest", manifest(5), OPERATOR).wire, retain=True)
        wait_until(
            lambda: (daemon.status().get("manifests") or {}).get("stable", {}).get("version") == 5,
            60,
            "v5 accepted",
        )
        assert daemon.terminate() == 0, daemon.tail()
        # The retained v5 is cleared, so nothing but the device's own state can remember it.
        publisher.publish(topic, b"", retain=True)
        chain = outbox_facts(db)["state"]
        head_seq, head_hash = int(chain["seq"]), str(chain["prev"])
        assert head_seq >= 2
        for path in db.parent.glob("outbox.sqlite3*"):
            path.unlink()  # the old hint: "move the file away"

        daemon = DaemonProcess(config, tmp_path / "daemon2.log")
        daemon.start()
        wait_until(lambda: daemon.status().get("running"), 60, "the daemon to start again")
        publisher.publish(topic, coordinator_envelope("manifest", manifest(4), OPERATOR).wire)
        wait_until(
            lambda: (daemon.status().get("rejected_inbound") or {}).get("stale_version") == 1,
            30,
            "v4 refused",
        )

        def next_envelope() -> Envelope | None:
            later = [
                e for e in map(verify_envelope, collector.payloads()) if not e.sideband and e.seq > head_seq
            ]
            return min(later, key=lambda e: e.seq) if later else None

        first_new = wait_until(next_envelope, 30, "an envelope after the old head")
        assert (first_new.seq, first_new.prev) == (head_seq + 1, head_hash)
    finally:
        publisher.close()
        code = daemon.terminate() if daemon.alive() else None
        daemon.ensure_dead()
        collector.close()
        broker.kill()
    assert code == 0, daemon.tail()


# ---------------------------------------------------------------------------------------- status


def stopped_daemon_state(tmp_path: Path) -> tuple[Path, Path]:
    """A config and its state dir as a stopped daemon leaves them (a v1 outbox, a status file)."""
    config = write_config(tmp_path / "device", no_broker())
    state = tmp_path / "device" / "state"
    state.mkdir()
    shutil.copyfile(V1_FILE, state / "outbox.sqlite3")
    status = {
        "device_id": str(DEVICE.pubkey()),
        "pid": 2**22 + 1,  # no such process
        "running": True,  # as after a crash: the pid decides
        "model": {"id": "m", "sha256": "ab" * 32},
        "chain": {"seq": 5, "last_acked_seq": 2},
    }
    (state / "status.json").write_text(json.dumps(status), encoding="utf-8")
    return config, state


def test_status_creates_migrates_and_writes_nothing(tmp_path: Path) -> None:
    config, state = stopped_daemon_state(tmp_path)
    before = listing(state)
    content = (state / "outbox.sqlite3").read_bytes()
    done = cli("status", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["running"] is False
    assert data["outbox"]["depth"] == 4 and data["outbox"]["dropped_total"] == 0
    assert listing(state) == before  # no reserve file, no -wal/-shm, nothing touched
    assert (state / "outbox.sqlite3").read_bytes() == content  # not migrated to schema 2


def test_status_on_a_locked_database_is_one_clear_message(tmp_path: Path) -> None:
    config, state = stopped_daemon_state(tmp_path)
    db = state / "outbox.sqlite3"
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("INSERT INTO drops (kind, reason, count) VALUES ('x', 'y', 1)")
        done = cli("status", "--config", str(config))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert done.returncode == 10, done.stderr
    assert done.stderr == (
        f"edgeproof: error: state file {db} is locked by another process (opening): database is locked\n"
        "  fix: another agent (or `edgeproof state recover`) holds it; wait, or stop that process\n"
    )


def test_status_on_a_corrupt_database_is_exit_12_with_the_recovery_hint(tmp_path: Path) -> None:
    config, state = stopped_daemon_state(tmp_path)
    db = state / "outbox.sqlite3"
    db.write_bytes(b"\x00garbage" * 1000)
    before = listing(state)
    done = cli("status", "--config", str(config))
    assert done.returncode == 12
    assert done.stderr == (
        f"edgeproof: error: state file {db} is unreadable: not a SQLite database (wrong header)\n"
        + RECOVER_HINT
    )
    assert listing(state) == before


def test_status_with_a_mangled_page_is_exit_12(tmp_path: Path) -> None:
    config, state = stopped_daemon_state(tmp_path)
    db = state / "outbox.sqlite3"
    queued_db = tmp_path / "q" / "outbox.sqlite3"
    queued_db.parent.mkdir()
    queued_state(queued_db, 40)
    os.replace(queued_db, db)
    mangle_page_holding(db, b'"seq":20,')
    done = cli("status", "--config", str(config))
    assert done.returncode == 12, done.stderr
    assert done.stderr.startswith(f"edgeproof: error: state file {db} is unreadable: ")
    assert "Traceback" not in done.stderr


def test_recover_a_damaged_version_1_file_takes_the_head_from_what_is_left_of_it(tmp_path: Path) -> None:
    """A device upgraded from schema 1 has no state copy yet: the damaged file's own state table counts."""
    config = write_config(tmp_path / "device", no_broker())
    state = tmp_path / "device" / "state"
    state.mkdir()
    db = state / "outbox.sqlite3"
    shutil.copyfile(V1_FILE, db)
    mangle_page_holding(db, b'"seq":4,')  # the page of the queued rows
    assert cli("run", "--config", str(config)).returncode == 12
    report = json.loads(cli("state", "recover", "--config", str(config), "--json").stdout)
    assert report["head_sources"] == {"damaged_file": 5}
    assert report["restored"]["chain"] == {"seq": 5, "head": V1_HEAD}
    assert report["restored"]["manifest_versions"] == {"stable": 7}
    assert report["warnings"] == []
    with StateStore.open(db, copy_path=state / "state-copy.json") as store:
        assert store.record("deploy.stable.failed_version") == 6
        assert store.manifest_envelope("stable") == '{"stored":1}'


def test_recover_with_no_head_anywhere_warns_that_the_chain_restarts(tmp_path: Path) -> None:
    config = write_config(tmp_path / "device", no_broker())
    state = tmp_path / "device" / "state"
    state.mkdir()
    (state / "outbox.sqlite3").write_bytes(b"")
    done = cli("state", "recover", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(
        "warning: no chain head was found (no state copy, none in the damaged file, no salvaged envelope): the "
        "next envelope has seq 1; if this device ever sent envelopes the coordinator will see a fork\n"
    )


# ---------------------------------------------------------------------------------------- crash window

CRASHING_WRITER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from solders.keypair import Keypair
from agent.device.state_store import StateStore
from agent.protocol.chain import ChainSigner
from agent.protocol.messages import Health, Heartbeat
from agent.transport.outbox import Outbox
from agent.transport.settings import OutboxSettings
from agent.transport.sqlite_file import SqliteFile

db = Path({db!r})
file = SqliteFile.open(db)
store = StateStore(file, copy_path=db.parent / "state-copy.json")
outbox = Outbox(OutboxSettings(path=str(db)), file=file, reserve_bytes=0)
signer = ChainSigner(Keypair.from_seed(bytes(range(32))), seq=store.chain_head()[0], prev=store.chain_head()[1])

def emit(i, die=None):
    body = Heartbeat(beacon_slot=0, beacon_nonce="0" * 64, uptime_s=i, health=Health(cpu_bp=1, mem_bp=2))
    env = signer.prepare("heartbeat", body, 1_800_000_000_000 + i)
    step = store.chain_step(env.seq, env.hash)
    def run(conn):
        step(conn)
        if die == "before_commit":
            os.kill(os.getpid(), signal.SIGKILL)  # the copy is written, the commit never happens
    outbox.put("t/hb", env.wire, kind="heartbeat", seq=env.seq, in_transaction=run)
    signer.commit(env)
    if die == "after_commit":
        os.kill(os.getpid(), signal.SIGKILL)
    return env

for i in range({count}):
    emit(i)
print(signer.state()[1], flush=True)
emit({count}, die={die!r})
"""


@pytest.mark.parametrize("die", ["before_commit", "after_commit"])
def test_sigkill_around_the_commit_leaves_a_gap_or_nothing_never_a_reused_seq(
    tmp_path: Path, die: str
) -> None:
    db = tmp_path / "outbox.sqlite3"
    script = CRASHING_WRITER.format(root=str(ROOT), db=str(db), count=3, die=die)
    child = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_env(),
    )
    assert child.returncode == -9, child.stderr
    head3 = child.stdout.strip()
    raw = sqlite3.connect(db)
    committed = raw.execute("SELECT seq, prev FROM chain_head").fetchone()
    queued = [seq for (seq,) in raw.execute("SELECT seq FROM outbox ORDER BY id")]
    raw.close()
    copy = json.loads((tmp_path / "state-copy.json").read_text())
    assert copy["seq"] == 4  # the copy is always written first
    if die == "before_commit":
        assert committed == (3, head3) and queued == [1, 2, 3]  # seq 4 was never queued, never sent
    else:
        assert committed[0] == 4 and queued == [1, 2, 3, 4]
    # The next life signs seq 5 on top of the copy's head: a gap at 4 (before_commit) or the
    # plain successor (after_commit); seq 4 is never signed twice.
    with StateStore.open(db, copy_path=tmp_path / "state-copy.json") as store:
        seq, prev = store.chain_head()
        assert (seq, prev) == (4, copy["prev"])
        signer = ChainSigner(DEVICE, seq=seq, prev=prev)
        env = signer.next("heartbeat", heartbeat(9), 1_800_000_000_009)
        assert (env.seq, env.prev) == (5, copy["prev"])
