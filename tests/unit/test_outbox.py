from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.device.state_store import StateStore
from agent.errors import ConfigError, CorruptStateError, StorageError
from agent.transport.outbox import PRIORITY_HIGH, Outbox
from agent.transport.settings import MqttSettings, OutboxSettings, OverflowPolicy
from agent.transport.sqlite_file import SqliteFile

H = "ab" * 32


def make(
    tmp_path: Path,
    *,
    max_bytes: int = 64 * 1024 * 1024,
    overflow: OverflowPolicy = "drop_oldest_heartbeats",
    **kwargs: Any,
) -> Outbox:
    return Outbox(
        OutboxSettings(path=str(tmp_path / "outbox.sqlite3"), max_bytes=max_bytes, overflow=overflow),
        **kwargs,
    )


def topics(outbox: Outbox) -> list[str]:
    return [row.topic for row in outbox.pending()]


def test_put_pending_ack_in_order(tmp_path: Path) -> None:
    with make(tmp_path) as ob:
        ids = [ob.put(f"t/{i}", f"p{i}".encode(), kind="proof") for i in range(5)]
        assert ids == sorted(ids) and None not in ids
        rows = ob.pending()
        assert [r.payload for r in rows] == [f"p{i}".encode() for i in range(5)]
        assert rows[0].qos == 1 and rows[0].retain is False and rows[0].priority == PRIORITY_HIGH
        assert rows[0].size == len(b"p0") + len("t/0")
        assert ob.ack(rows[1].id) is True
        assert ob.ack(rows[1].id) is False  # already gone
        assert topics(ob) == ["t/0", "t/2", "t/3", "t/4"]
        assert [r.topic for r in ob.pending(after_id=rows[2].id, limit=1)] == ["t/3"]
        assert ob.ack_many([rows[0].id, rows[2].id, 999]) == 2
        assert len(ob) == 2
        assert ob.stats().bytes == sum(r.size for r in ob.pending())


def test_wal_and_full_sync(tmp_path: Path) -> None:
    with make(tmp_path) as ob:
        assert ob._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_survives_restart_and_ids_never_reused(tmp_path: Path) -> None:
    ob = make(tmp_path)
    for i in range(3):
        ob.put(f"t/{i}", b"x", kind="heartbeat", seq=i + 1)
    ob.put("t/s", b"x", kind="status")
    last = ob.pending()[-1].id
    ob.close()
    ob = make(tmp_path)
    assert topics(ob) == ["t/0", "t/1", "t/2", "t/s"]
    assert [r.seq for r in ob.pending()] == [1, 2, 3, None]
    assert ob.oldest_seq() == 1
    ob.ack_many(r.id for r in ob.pending())
    ob.close()
    ob = make(tmp_path)
    new_id = ob.put("t/3", b"y")
    assert new_id is not None and new_id > last
    assert ob.stats().bytes == 4
    ob.close()


def shared(tmp_path: Path, *, max_page_count: int | None = None) -> tuple[SqliteFile, StateStore, Outbox]:
    """The daemon's arrangement: one SQLite file, the state store and the queue on it."""
    file = SqliteFile.open(tmp_path / "outbox.sqlite3")
    store = StateStore(file)
    outbox = Outbox(OutboxSettings(path=str(file.path)), file=file, max_page_count=max_page_count)
    return file, store, outbox


def test_chain_step_is_committed_with_the_message_atomically(tmp_path: Path) -> None:
    file, store, ob = shared(tmp_path)
    try:
        step = store.chain_step(1, H)

        def step_then_die(db: sqlite3.Connection) -> None:
            step(db)
            raise RuntimeError("kill -9 here")

        with pytest.raises(RuntimeError):
            ob.put("t", b"x", seq=1, in_transaction=step_then_die)
        # neither the message nor the head advance were committed to the database
        assert len(ob) == 0
        assert file.db.execute("SELECT COUNT(*) FROM chain_head").fetchone() == (0,)
        ob.put("t", b"x", seq=1, in_transaction=store.chain_step(1, H))
        assert len(ob) == 1 and file.db.execute("SELECT seq, prev FROM chain_head").fetchone() == (1, H)
        assert store.chain_head() == (1, H)
    finally:
        ob.close()
        file.close()


def test_default_policy_new_heartbeat_replaces_oldest_heartbeat(tmp_path: Path) -> None:
    # each message is 100 payload + 3 topic bytes
    with make(tmp_path, max_bytes=4096) as ob:
        for i in range(39):
            ob.put(f"h{i:02d}", b"h" * 100, kind="heartbeat")
        assert ob.stats().bytes == 39 * 103
        ob.put("h39", b"h" * 100, kind="heartbeat")
        assert topics(ob)[0] == "h01" and topics(ob)[-1] == "h39"
        assert ob.stats().drops == {"heartbeat": {"evicted_full": 1}}


def test_default_policy_keeps_proofs_and_refuses_low_priority(tmp_path: Path) -> None:
    with make(tmp_path, max_bytes=4096) as ob:
        for i in range(20):
            ob.put(f"h{i:02d}", b"h" * 100, kind="heartbeat")
        for i in range(19):
            ob.put(f"p{i:02d}", b"p" * 100, kind="proof")
        # proofs evict heartbeats, oldest first
        for i in range(19, 39):
            assert ob.put(f"p{i:02d}", b"p" * 100, kind="proof") is not None
        assert all(t.startswith("p") for t in topics(ob))
        assert len(ob) == 39
        # now only proofs: a new heartbeat, a status and even a proof are refused
        assert ob.put("hzz", b"h" * 100, kind="heartbeat") is None
        ran: list[int] = []
        assert ob.put("szz", b"s" * 100, kind="status", in_transaction=lambda db: ran.append(77)) is None
        assert ob.put("pzz", b"p" * 100, kind="proof") is None
        assert len(ob) == 39
        assert ran == [77]  # the transaction step (the chain head) ran with the (counted) drop
        drops = ob.stats().drops
        assert drops == {
            "heartbeat": {"evicted_full": 20, "refused_full": 1},
            "proof": {"refused_full": 1},
            "status": {"refused_full": 1},
        }
        assert ob.stats().dropped_total == 23


def test_default_policy_normal_evicts_heartbeats_not_normal(tmp_path: Path) -> None:
    with make(tmp_path, max_bytes=4096) as ob:
        for i in range(38):
            ob.put(f"s{i:02d}", b"s" * 100, kind="status")
        ob.put("h00", b"h" * 100, kind="heartbeat")
        ob.put("s38", b"s" * 100, kind="status")
        assert "h00" not in topics(ob)
        assert ob.put("s39", b"s" * 100, kind="status") is None


def test_drop_oldest_policy_evicts_anything(tmp_path: Path) -> None:
    with make(tmp_path, max_bytes=4096, overflow="drop_oldest") as ob:
        for i in range(39):
            ob.put(f"p{i:02d}", b"p" * 100, kind="proof")
        ob.put("h99", b"h" * 100, kind="heartbeat")
        assert topics(ob)[0] == "p01" and topics(ob)[-1] == "h99"
        assert ob.stats().drops == {"proof": {"evicted_full": 1}}


def test_refuse_new_policy(tmp_path: Path) -> None:
    with make(tmp_path, max_bytes=4096, overflow="refuse_new") as ob:
        for i in range(39):
            ob.put(f"h{i:02d}", b"h" * 100, kind="heartbeat")
        assert ob.put("p99", b"p" * 100, kind="proof") is None
        assert topics(ob)[0] == "h00"
        assert ob.stats().drops == {"proof": {"refused_full": 1}}


def test_too_large_is_refused_and_counted(tmp_path: Path) -> None:
    with make(tmp_path, max_bytes=4096) as ob:
        assert ob.put("big", b"x" * 5000, kind="proof") is None
        assert ob.stats().drops == {"proof": {"too_large": 1}}


def test_drop_counts_persist(tmp_path: Path) -> None:
    ob = make(tmp_path, max_bytes=4096)
    ob.put("big", b"x" * 5000, kind="heartbeat")
    ob.put("big", b"x" * 5000, kind="heartbeat")
    ob.close()
    with make(tmp_path, max_bytes=4096) as ob:
        assert ob.stats().drops == {"heartbeat": {"too_large": 2}}


def test_disk_full_evicts_heartbeats_then_refuses_then_keeps_running(tmp_path: Path) -> None:
    # A tiny database file (the hard cap on pages) stands in for a full disk.
    file, store, ob = shared(tmp_path, max_page_count=24)
    with ob:
        queued = 0
        for i in range(200):
            if ob.put(f"h/{i}", b"h" * 400, kind="heartbeat") is not None:
                queued += 1
        assert queued == 200  # heartbeats replace heartbeats
        stats = ob.stats()
        assert stats.drops["heartbeat"]["disk_full_evicted"] > 0
        assert stats.depth < 200
        # proofs displace heartbeats until only proofs are left, then are refused
        results = [
            ob.put(f"p/{i}", b"p" * 400, kind="proof", seq=i + 1, in_transaction=store.chain_step(i + 1, H))
            for i in range(200)
        ]
        assert results[0] is not None
        assert results[-1] is None
        kinds = {row.kind for row in ob.pending()}
        assert "proof" in kinds and kinds <= {"proof", "heartbeat"}
        # Heartbeats may be left only where evicting them frees no whole page for a proof (rows
        # are appended at the end of the b-tree): removing them must not make room either.
        ob.ack_many(row.id for row in ob.pending() if row.kind == "heartbeat")
        assert ob.put("p/probe", b"p" * 400, kind="proof") is None
        results.append(None)
        proofs = [row.topic for row in ob.pending()]
        assert proofs == [f"p/{i}" for i in range(len(proofs))]  # the oldest proofs are kept
        stats = ob.stats()
        assert stats.drops["proof"]["disk_full_refused"] == results.count(None)
        assert store.chain_head() == (200, H)  # the head advanced with every refused proof too
        assert file.db.execute("SELECT seq FROM chain_head").fetchone() == (200,)
        # acking frees room again (whole pages: rows are appended at the end of the b-tree)
        ob.ack_many(row.id for row in ob.pending()[:20])
        assert ob.put("p/new", b"p" * 400, kind="proof") is not None
    file.close()


def test_storage_error_when_nothing_can_be_written(tmp_path: Path) -> None:
    with make(tmp_path) as ob:
        ob.put("t/0", b"x", kind="proof")
        original = ob._commit_put

        def always_full(*args: Any, **kwargs: Any) -> int | None:
            raise sqlite3.OperationalError("database or disk is full")

        ob._commit_put = always_full  # type: ignore[method-assign]
        with pytest.raises(StorageError, match="free disk space") as info:
            ob.put("t/1", b"y", kind="proof", seq=1)
        assert "cannot queue a proof message" in str(info.value)
        ob._commit_put = original  # type: ignore[method-assign]
        # the caller keeps running: the outbox still works and the loss is counted
        assert ob.put("t/2", b"z", kind="proof") is not None
        assert topics(ob) == ["t/0", "t/2"]
        assert ob.oldest_seq() is None  # the refused seq=1 row was never written
        assert ob.stats().drops == {"proof": {"storage_error": 1}}
    with make(tmp_path) as ob:
        assert ob.stats().drops == {"proof": {"storage_error": 1}}


def test_park_requeue(tmp_path: Path) -> None:
    with make(tmp_path) as ob:
        a = ob.put("dev/other/proof", b"a", kind="proof")
        b = ob.put("dev/me/proof", b"b", kind="proof")
        assert a is not None and b is not None
        assert ob.park(a, "Not authorized") is True
        assert ob.park(a, "Not authorized") is False
        assert topics(ob) == ["dev/me/proof"]
        parked = ob.parked()
        assert len(parked) == 1 and parked[0].reason == "Not authorized" and parked[0].row.payload == b"a"
        stats = ob.stats()
        assert stats.parked == 1 and stats.drops == {"proof": {"rejected:Not authorized": 1}}
        assert stats.bytes == len(b"b") + len("dev/me/proof")
        assert ob.requeue_parked() == 1
        assert topics(ob) == ["dev/me/proof", "dev/other/proof"]
        assert ob.stats().parked == 0


def test_parked_is_bounded(tmp_path: Path) -> None:
    settings = OutboxSettings(path=str(tmp_path / "o.sqlite3"), max_parked=3)
    with Outbox(settings) as ob:
        ids = [ob.put("t", bytes([i])) for i in range(5)]
        for row_id in ids:
            assert row_id is not None
            ob.park(row_id, "Not authorized")
        assert [p.row.payload for p in ob.parked()] == [b"\x04", b"\x03", b"\x02"]


def test_oldest_age_uses_clock(tmp_path: Path) -> None:
    now = [1_000_000]
    with make(tmp_path, clock_ms=lambda: now[0]) as ob:
        assert ob.stats().oldest_age_ms is None
        ob.put("t", b"x")
        now[0] += 2500
        ob.put("t", b"y")
        stats = ob.stats()
        assert stats.oldest_age_ms == 2500 and stats.depth == 2
        assert stats.as_dict()["depth"] == 2


def test_concurrent_puts(tmp_path: Path) -> None:
    with make(tmp_path) as ob:

        def worker(n: int) -> None:
            for i in range(25):
                ob.put(f"w{n}/{i}", b"x", kind="heartbeat")

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(ob) == 100
        for n in range(4):
            mine = [t for t in topics(ob) if t.startswith(f"w{n}/")]
            assert mine == [f"w{n}/{i}" for i in range(25)]


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CorruptStateError) as info:
        make(tmp_path)
    assert info.value.message == f"state file {path} is unreadable: not a SQLite database (wrong header)"


def test_closed_outbox_refuses(tmp_path: Path) -> None:
    ob = make(tmp_path)
    ob.close()
    ob.close()
    with pytest.raises(StorageError, match="closed"):
        ob.put("t", b"x")


def test_bad_arguments(tmp_path: Path) -> None:
    with make(tmp_path) as ob:
        with pytest.raises(ValueError):
            ob.put("t", b"x", qos=3)
        with pytest.raises(TypeError):
            ob.put("t", "text")  # type: ignore[arg-type]


def test_settings_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        MqttSettings(password="a", password_file="b")
    with pytest.raises(ValueError, match="topic_prefix"):
        MqttSettings(topic_prefix="edgeproof/#")
    with pytest.raises(ValueError, match="reconnect_min_s"):
        MqttSettings(reconnect_min_s=10, reconnect_max_s=1)
    with pytest.raises(ValueError, match=r"unknown|extra"):
        MqttSettings.model_validate({"hots": "x"})
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    assert MqttSettings(password_file=str(secret)).resolve_password() == "s3cret"
    assert MqttSettings(password="p").resolve_password() == "p"
    with pytest.raises(ConfigError, match="cannot be read"):
        MqttSettings(password_file=str(tmp_path / "missing")).resolve_password()
    assert "s3cret" not in repr(MqttSettings(password="s3cret"))


V1_FILE = Path(__file__).resolve().parents[1] / "data" / "state" / "outbox-v1.sqlite3"
V1_HEAD = "5244b80d96d6bbe2217f566a2310fc4c9b0be3817bf54fb292c182dbdf209bbb"


def test_a_version_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    """outbox-v1.sqlite3 was written by the agent before the state store (tests/data/state/make_v1_outbox.py)."""
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(V1_FILE.read_bytes())
    file = SqliteFile.open(path)
    assert file.db.execute("PRAGMA user_version").fetchone() == (1,)
    store = StateStore(file)
    ob = Outbox(OutboxSettings(path=str(path)), file=file)
    try:
        assert file.db.execute("PRAGMA user_version").fetchone() == (2,)
        assert [(r.kind, r.seq) for r in ob.pending()] == [
            ("heartbeat", 3),
            ("heartbeat", 4),
            ("heartbeat", 5),
            ("status", None),
        ]
        assert ob.oldest_seq() == 3
        assert store.chain_head() == (5, V1_HEAD)
        assert store.manifest_version("stable") == 7
        assert store.manifest_envelope("stable") == '{"stored":1}'
        assert store.record("deploy.stable.failed_version") == 6
        assert "state" not in {r[0] for r in file.db.execute("SELECT name FROM sqlite_master")}
    finally:
        ob.close()
        file.close()
    # Reopened: nothing is migrated twice, the rows are unchanged.
    with Outbox(OutboxSettings(path=str(path))) as again:
        assert [r.seq for r in again.pending()] == [3, 4, 5, None]


def test_a_newer_schema_is_refused_not_called_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version=9")
    raw.close()
    with pytest.raises(StorageError) as info:
        make(tmp_path)
    assert not isinstance(info.value, CorruptStateError)
    assert info.value.message == f"state file {path} has schema version 9, newer than this agent's (2)"


def test_a_foreign_or_mangled_schema_is_corrupt_state(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE photos (id INTEGER)")
    raw.close()
    with pytest.raises(CorruptStateError) as info:
        make(tmp_path)
    assert info.value.message == f"state file {path} is unreadable: holds tables that are not ours (photos)"
    path.unlink()
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, topic TEXT)")
    raw.close()
    with pytest.raises(CorruptStateError) as info:
        make(tmp_path)
    assert info.value.message == (
        f"state file {path} is unreadable: table outbox lacks columns "
        "['attempts', 'created_ms', 'kind', 'payload', 'priority', 'qos', 'retain', 'size']: not an edgeproof state file"
    )
    assert info.value.exit_code == 12


def test_zero_length_file_is_corrupt_state_not_a_fresh_outbox(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"")
    with pytest.raises(CorruptStateError) as info:
        make(tmp_path)
    assert (
        info.value.message == f"state file {path} is unreadable: the file is empty (zero length): truncated"
    )
    assert path.read_bytes() == b""  # left as it was, for `state recover`
