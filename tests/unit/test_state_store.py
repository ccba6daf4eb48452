"""The device state store: nonce memory, signer seqs, chain head, manifests, records, second copy."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from agent.device.state_copy import read_copy
from agent.device.state_store import StateStore
from agent.errors import CorruptStateError, StorageError
from agent.protocol.envelope import GENESIS_PREV

H1, H2, H3 = "1" * 64, "2" * 64, "3" * 64


def test_nonce_memory_survives_reopen_and_is_pruned_by_deadline(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite3"
    with StateStore.open(db) as store:
        assert store.nonce_seen("n1") is False
        store.remember_nonce("n1", 1_000)
        store.remember_nonce("n2", 2_000)
        store.remember_nonce("n3", 3_000)
        assert store.nonce_seen("n1") is True
    with StateStore.open(db) as store:
        assert [store.nonce_seen(n) for n in ("n1", "n2", "n3", "n4")] == [True, True, True, False]
        assert store.forget_nonces(2_000) == 1  # only until_ms < before_ms
        assert [store.nonce_seen(n) for n in ("n1", "n2", "n3")] == [False, True, True]
        assert store.forget_nonces(2_000) == 0
        assert store.forget_nonces(10_000) == 2
        assert store.snapshot()["nonces"] == 0


def test_remember_nonce_twice_keeps_the_later_deadline(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "s.sqlite3") as store:
        store.remember_nonce("n", 5_000)
        store.remember_nonce("n", 1_000)
        assert store.forget_nonces(4_000) == 0
        assert store.nonce_seen("n") is True


def test_signer_seq_never_lowers_and_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    with StateStore.open(db) as store:
        assert store.signer_seq("Coord1") == 0
        store.set_signer_seq("Coord1", 7)
        store.set_signer_seq("Coord1", 3)
        store.set_signer_seq("Op2", 1)
        assert (store.signer_seq("Coord1"), store.signer_seq("Op2")) == (7, 1)
    with StateStore.open(db) as store:
        assert (store.signer_seq("Coord1"), store.signer_seq("Op2"), store.signer_seq("x")) == (7, 1, 0)


def test_concurrent_use_from_two_threads(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "s.sqlite3") as store:
        errors: list[BaseException] = []

        def work(prefix: str) -> None:
            try:
                for i in range(200):
                    store.remember_nonce(f"{prefix}{i}", i)
                    store.set_signer_seq(prefix, i + 1)
                    assert store.nonce_seen(f"{prefix}{i}")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(p,)) for p in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.signer_seq("a") == store.signer_seq("b") == 200
        assert store.snapshot()["nonces"] == 400


def test_chain_head_and_manifests_are_mirrored_in_the_copy(tmp_path: Path) -> None:
    db, copy = tmp_path / "s.sqlite3", tmp_path / "copy.json"
    with StateStore.open(db, copy_path=copy) as store:
        assert store.chain_head() == (0, GENESIS_PREV)
        store.set_chain_head(1, H1)
        store.set_chain_head(2, H2)
        store.accept_manifest("stable", 4, "envelope-text")
        store.set_signer_seq("Coord", 9)
        assert store.chain_head() == (2, H2)
        assert store.manifest_envelope("stable") == "envelope-text"
    data, problem = read_copy(copy)
    assert problem is None and data is not None
    assert (data.seq, data.prev, data.manifests, data.signers) == (2, H2, {"stable": 4}, {"Coord": 9})


def test_losing_the_database_rolls_nothing_back(tmp_path: Path) -> None:
    db, copy = tmp_path / "s.sqlite3", tmp_path / "copy.json"
    with StateStore.open(db, copy_path=copy) as store:
        store.set_chain_head(5, H1)
        store.accept_manifest("stable", 3, "env")
        store.set_signer_seq("Coord", 11)
    db.unlink()
    with StateStore.open(db, copy_path=copy) as store:
        assert store.chain_head() == (5, H1)
        assert store.manifest_version("stable") == 3
        assert store.manifest_envelope("stable") is None  # the envelope lived in the lost file only
        assert store.signer_seq("Coord") == 11
        assert "chain head taken from the state copy (seq 5; the database had seq 0)" in store.notes
    # ... and the new database now holds them too (copy lost next: still no rollback).
    copy.unlink()
    with StateStore.open(db, copy_path=copy) as store:
        assert store.chain_head() == (5, H1) and store.manifest_version("stable") == 3


def test_a_copy_ahead_of_the_database_wins_a_head_that_would_go_backwards_is_never_used(
    tmp_path: Path,
) -> None:
    """The crash window: the copy was written, the SQLite commit did not happen."""
    db, copy = tmp_path / "s.sqlite3", tmp_path / "copy.json"
    with StateStore.open(db, copy_path=copy) as store:
        store.set_chain_head(3, H1)
        conn = store.file.db
        conn.execute("BEGIN IMMEDIATE")
        store.chain_step(4, H2)(conn)  # the copy is written first ...
        conn.execute("ROLLBACK")  # ... and the commit never happens (a crash)
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT seq FROM chain_head").fetchone() == (3,)
    raw.close()
    with StateStore.open(db, copy_path=copy) as store:
        assert store.chain_head() == (4, H2)  # a gap at seq 4 next time, never a reused seq
        with pytest.raises(StorageError, match=r"chain head would go backwards \(seq 3 after seq 4\)"):
            store.chain_step(3, H3)(store.file.db)
        store.set_chain_head(2, H3)  # ignored: never backwards
        assert store.chain_head() == (4, H2)


def test_manifest_version_never_lowers(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "s.sqlite3") as store:
        store.accept_manifest("stable", 5, "five")
        store.accept_manifest("stable", 4, "four")
        assert store.manifest_version("stable") == 5
        assert store.manifest_envelope("stable") == "five"
        assert store.manifest_versions() == {"stable": 5}


def test_records_roundtrip_and_delete(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "s.sqlite3") as store:
        assert store.record("deploy.stable.failed_version") is None
        store.set_record("deploy.stable.failed_version", 3)
        assert store.record("deploy.stable.failed_version") == 3
        assert store.records() == {"deploy.stable.failed_version": 3}
        store.set_record("deploy.stable.failed_version", None)
        assert store.record("deploy.stable.failed_version", "none") == "none"


def test_an_unusable_copy_is_reported_and_rewritten(tmp_path: Path) -> None:
    db, copy = tmp_path / "s.sqlite3", tmp_path / "copy.json"
    with StateStore.open(db, copy_path=copy) as store:
        store.set_chain_head(2, H2)
    copy.write_text("{not json", encoding="utf-8")
    with StateStore.open(db, copy_path=copy) as store:
        assert store.chain_head() == (2, H2)
        assert len(store.notes) == 1 and store.notes[0].startswith(f"{copy} is not a usable state copy:")
    assert json.loads(copy.read_text(encoding="utf-8"))["seq"] == 2


def test_garbage_file_is_corrupt_state(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    db.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(CorruptStateError) as info:
        StateStore.open(db)
    assert info.value.message == f"state file {db} is unreadable: not a SQLite database (wrong header)"
    assert "edgeproof state recover --config FILE" in str(info.value)
    assert info.value.exit_code == 12


def test_an_unusable_copy_with_no_head_in_the_database_refuses_to_start_at_seq_1(tmp_path: Path) -> None:
    db, copy = tmp_path / "s.sqlite3", tmp_path / "copy.json"
    with StateStore.open(db, copy_path=copy) as store:
        store.set_chain_head(7, H1)
    db.unlink()  # the queue file is lost ...
    copy.write_text('{"format": 1, "seq": "seven"}', encoding="utf-8")  # ... and the copy is damaged
    with pytest.raises(CorruptStateError) as info:
        StateStore.open(db, copy_path=copy)
    assert info.value.message == (
        f"{copy} is not a usable state copy: seq is not a non-negative integer, and the state file {db} "
        "holds no chain head"
    )
    assert info.value.exit_code == 12
