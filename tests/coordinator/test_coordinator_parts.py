"""Coordinator parts without a broker: binding vector, schema migrations, config validation, import boundary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from solders.keypair import Keypair

from agent.coordinator.config import load_coordinator_config
from agent.coordinator.migrations import LATEST
from agent.coordinator.store import Store
from agent.errors import ConfigError, ProtocolError, StorageError
from agent.protocol.binding import binding_bytes, sign_binding, verify_binding
from agent.protocol.vectors import vector_keypair
from tests.support.coordinator import ROOT

OWNER = str(Keypair.from_seed(bytes([2]) * 32).pubkey())
VECTOR_SIG = "5rWfuHxVdsKNgnfMyx3X9ZAhJjd7GEcdMyUUjpZqPGjvaPoWNd6vvp8gQKddryw4x2Agoro2jBRsykEgdnypSYRZ"


def test_binding_matches_the_documented_vector() -> None:
    binding = sign_binding(vector_keypair(), OWNER, 1_700_000_000_000)
    assert binding.device == "FVen3X669xLzsi6N2V91DoiyzHzg1uAgqiT8jZ9nS96Z"
    assert binding.sig == VECTOR_SIG
    docs = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert binding_bytes(binding.device, OWNER, binding.ts).decode() in docs and VECTOR_SIG in docs
    assert verify_binding(binding.document()) == binding


@pytest.mark.parametrize(
    ("mutate", "reason", "text"),
    [
        (
            lambda d: {**d, "owner": str(Keypair.from_seed(bytes([3]) * 32).pubkey())},
            "bad_signature",
            "does not verify",
        ),
        (lambda d: {**d, "ts": d["ts"] + 1}, "bad_signature", "does not verify"),
        (lambda d: {**d, "extra": 1}, "malformed", "unknown keys extra"),
        (lambda d: {k: v for k, v in d.items() if k != "sig"}, "malformed", "missing sig"),
        (lambda d: {**d, "device": "not-a-key"}, "malformed", "binding device: not a base58 public key"),
        (lambda d: {**d, "ts": 1.5}, "malformed", "float"),
    ],
)
def test_a_binding_that_does_not_verify_is_refused(mutate, reason: str, text: str) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(sign_binding(vector_keypair(), OWNER, 1_700_000_000_000).document())
    with pytest.raises(ProtocolError) as info:
        verify_binding(json.dumps(mutate(doc)).encode())
    assert info.value.reason == reason and text in info.value.message


def test_migrations_are_recorded_and_idempotent_and_a_newer_schema_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    store = Store.open(database_url=database_url, sqlite_path=tmp_path / "c.sqlite3")
    assert store.schema_version() == LATEST == 7
    assert store.migrate() == LATEST  # a second start changes nothing
    assert store.rows("SELECT version FROM schema_version ORDER BY version") == [
        (1,),
        (2,),
        (3,),
        (4,),
        (5,),
        (6,),
        (7,),
    ]
    with store.transaction():
        store.execute("INSERT INTO schema_version (version, name, applied_ms) VALUES (99, 'future', 0)")
    with pytest.raises(StorageError) as info:
        store.migrate()
    assert "has schema version 99, newer than this coordinator understands (7)" in info.value.message
    store.close()


def test_a_migration_numbered_below_one_already_applied_is_still_applied(
    database_url: str, tmp_path: Path
) -> None:
    """A database that ran migration 6 before 5 existed (two branches, 6 released first)."""
    store = Store.open(database_url=database_url, sqlite_path=tmp_path / "c.sqlite3")
    with store.transaction():
        for table in ("settlement_roots", "payout_breaker", "vouchers"):
            store.execute(f"DROP TABLE {table}")
        store.execute("DELETE FROM schema_version WHERE version = 5")
    assert store.schema_version() == 7
    assert store.migrate() == LATEST
    assert store.rows("SELECT version FROM schema_version ORDER BY version") == [(v,) for v in range(1, 8)]
    assert store.one("SELECT COUNT(*) FROM vouchers") == (0,)
    store.close()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = Store.open(sqlite_path=tmp_path / "c.sqlite3")
    assert store.one("PRAGMA journal_mode") == ("wal",)
    store.close()


def test_liveness_records_each_run(database_url: str, tmp_path: Path) -> None:
    store = Store.open(database_url=database_url, sqlite_path=tmp_path / "c.sqlite3")
    with store.transaction():
        store.start_run("a", "signer", "host", 1, 1000)
        store.touch_run("a", 1500)
        store.start_run("b", "signer", "host", 2, 3000)
        store.stop_run("b", 3500)
    assert store.runs() == [("a", 1000, 1500, None), ("b", 3000, 3500, 3500)]
    store.close()


def test_config_unknown_key_names_file_line_and_the_near_miss(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[coordinator]\nkey = "k.json"\n\n[ingest]\nbatch_mx = 10\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_coordinator_config(config)
    assert str(info.value).startswith(
        f"{config}:5: ingest.batch_mx: unknown key 'batch_mx'; did you mean 'batch_max'?"
    )


def test_config_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[storage]\ndatabase_url = ""\nsqlite_path = "db/c.sqlite3"\n', encoding="utf-8")
    loaded = load_coordinator_config(config)
    assert loaded.storage.sqlite_path == str(tmp_path / "db" / "c.sqlite3")
    assert loaded.coordinator.key == str(tmp_path / "coordinator-key.json")
    bad = tmp_path / "bad.toml"
    bad.write_text('[storage]\ndatabase_url = "mysql://x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="database_url must start with postgresql://"):
        load_coordinator_config(bad)


def test_the_coordinator_never_imports_device_code() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import agent.coordinator as pkg\n"
        "names = [m.name for m in pkgutil.iter_modules(pkg.__path__, 'agent.coordinator.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "import agent.commands.coordinator\n"
        "print(len(names), sorted(m for m in sys.modules if m.startswith('agent.device')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    count, device = out.stdout.strip().split(" ", 1)
    assert int(count) >= 8 and device == "[]"


def test_the_coordinator_reasons_are_catalogued_once_each() -> None:
    from agent.protocol.reasons import _TABLE, REASONS

    names = [r.name for r in _TABLE]
    assert len(names) == len(set(names))  # one meaning per name
    ours = (
        "stale_beacon",
        "unknown_beacon",
        "clock_skew",
        "implausible_throughput",
        "window_overlap",
        "ingest_failed",
    )
    assert all(REASONS[name].scope == "message" for name in ours)
