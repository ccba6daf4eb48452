"""The dashboard's parts, fast: the summary from a real store (both backends), the metrics fed
from real batch results, the HTTP refusal table, [http] config checks, a port in use, the
read-only store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.coordinator import challenge_rows
from agent.coordinator.audit import epoch_report
from agent.coordinator.batch import Inbound, SignedVerdict, commit_batch
from agent.coordinator.config import StorageSection, load_coordinator_config
from agent.coordinator.http_app import Dashboard, make_app, static_file
from agent.coordinator.http_guard import MAX_HEADERS, MAX_TARGET, host_name, refusal
from agent.coordinator.http_server import bind
from agent.coordinator.metrics import (
    CoordinatorMetrics,
    DatabaseGauges,
    kind_label,
    reason_label,
    verdict_outcome,
)
from agent.coordinator.read_store import open_read_store
from agent.coordinator.slots import Outgoing, TickResult
from agent.coordinator.store import StorageUnavailableError, Store
from agent.coordinator.summary import NO_ROLLOUTS, summary
from agent.errors import ConfigError, StorageError
from agent.protocol.chain import ChainSigner
from agent.protocol.envelope import Envelope
from agent.protocol.messages import Verdict
from agent.protocol.topics import Topics
from tests.support.coordinator import (
    COORD,
    NOW,
    SLOT_MS,
    Device,
    add_beacons,
    device_key,
    enroll_direct,
    ingest_policy,
)

T = Topics()
POLICY = ingest_policy(late_window_seqs=64, beacon_max_age_slots=1_000_000)
E = 10 * SLOT_MS  # ten slots an epoch
EPOCH = NOW // E + 1  # the devices are enrolled before it
T0 = EPOCH * E
SLOT0 = T0 // SLOT_MS
AT = T0 + 3 * SLOT_MS + 30_000  # "now": half-way through slot 3
WINDOW = 90_000  # online: an accepted heartbeat at or after T0 + 2 slots


def forged(env: Envelope) -> bytes:
    raw = {**env.raw, "body": {**env.raw["body"], "uptime_s": 999}}
    return Envelope(**{**env.__dict__, "raw": raw}).wire


def _challenge(store: Store, dev: str, slot: int, outcome: str) -> None:
    nonce = hashlib.sha256(f"{dev}/{slot}".encode()).hexdigest()
    challenge_rows.insert_challenge(
        store,
        dev=dev,
        slot=slot,
        nonce=nonce,
        model_sha256="00" * 32,
        signer=str(COORD.pubkey()),
        seq=slot,
        digest="cd" * 32,
        issued_ms=slot * SLOT_MS + 10,
        deadline_ms=slot * SLOT_MS + 20_000,
        raw=b"{}",
    )
    row = challenge_rows.challenge_by_nonce(store, dev, nonce)
    assert row is not None
    challenge_rows.set_outcome(store, row.id, outcome, slot * SLOT_MS + 15_000)


def fill(store: Store) -> tuple[Device, Device, Device]:
    """a: up in slots 0-2 and a proof; b: up in slot 1, one forgery, one made-up beacon; c: silent."""
    a, b, c = (Device(device_key(n)) for n in (31, 32, 33))
    for device in (a, b, c):
        enroll_direct(store, device.keypair)
    add_beacons(store, range(SLOT0 - 2, SLOT0 + 4))
    with store.transaction():
        store.start_run("run", str(COORD.pubkey()), "host", 1, T0 - 5)
        store.touch_run("run", AT)

    def send(at: int, topic: str, wire: bytes) -> None:
        commit_batch(store, [Inbound(topic, wire, at)], policy=POLICY, keypair=COORD, topics=T, now_ms=at)

    send(T0 - 30_000, T.hb(c.id), forged(c.heartbeat(SLOT0 - 1, T0 - 30_000)))  # the epoch before
    for i in range(3):
        at = T0 + i * SLOT_MS + 50
        send(at, T.hb(a.id), a.heartbeat(SLOT0 + i, at).wire)
    send(T0 + 2 * SLOT_MS + 60, T.proof(a.id), a.proof(T0, T0 + 60_000, 600, ts=T0 + 2 * SLOT_MS).wire)
    send(T0 + SLOT_MS + 50, T.hb(b.id), b.heartbeat(SLOT0 + 1, T0 + SLOT_MS).wire)
    send(T0 + SLOT_MS + 70, T.hb(b.id), forged(b.heartbeat(SLOT0 + 1, T0 + SLOT_MS)))
    send(T0 + 2 * SLOT_MS + 70, T.hb(b.id), b.heartbeat(SLOT0 + 2, T0 + 2 * SLOT_MS, nonce="ee" * 32).wire)
    with store.transaction():
        _challenge(store, a.id, SLOT0 + 1, "passed")
        _challenge(store, b.id, SLOT0 + 1, "challenge_failed")
        _challenge(store, b.id, SLOT0 + 2, "challenge_missed")
    return a, b, c


def test_the_summary_is_the_databases_numbers(store: Store) -> None:
    a, b, c = fill(store)
    with store.transaction():
        doc = summary(store, now_ms=AT, slot_ms=SLOT_MS, epoch_ms=E, online_window_ms=WINDOW)
    assert doc["epoch"] == {
        "epoch": EPOCH,
        "start_ms": T0,
        "end_ms": T0 + E,
        "coordinator_up_slots": 3,  # slots 0-2 covered; 3 only partly (the run was last seen at AT)
        "coordinator_down_slots": 7,
        "slots_elapsed": 3,
    }
    assert (doc["devices_registered"], doc["devices_online"]) == (3, 1)
    assert doc["messages"] == {"accepted": 5, "rejected": 3}
    rows = {d["dev"]: d for d in doc["devices"]}
    assert [d["dev"] for d in doc["devices"]] == sorted([a.id, b.id, c.id])
    pick = ("online", "uptime", "up_slots", "counted_slots", "heartbeats_accepted", "proofs_accepted")
    assert {k: rows[a.id][k] for k in pick} == dict(zip(pick, (True, 1.0, 3, 3, 3, 1), strict=True))
    assert {k: rows[b.id][k] for k in pick} == dict(zip(pick, (False, 1 / 3, 1, 3, 1, 0), strict=True))
    assert {k: rows[c.id][k] for k in pick} == dict(zip(pick, (False, 0.0, 0, 3, 0, 0), strict=True))
    assert (
        rows[a.id]["last_heartbeat_ms"] == T0 + 2 * SLOT_MS + 50 and rows[b.id]["last_heartbeat_ms"] is None
    )
    assert [(rows[d.id]["challenges_passed"], rows[d.id]["challenges_scored"]) for d in (a, b, c)] == [
        (1, 1),
        (0, 2),
        (0, 0),
    ]
    assert [rows[d.id]["pass_rate"] for d in (a, b, c)] == [1.0, 0.0, None]
    assert [rows[d.id]["rejections"] for d in (a, b, c)] == [0, 2, 0]  # c's forgery was the epoch before
    assert doc["rejections"] == [
        {"reason": "bad_signature", "total": 2, "epoch": 1},
        {"reason": "unknown_beacon", "total": 1, "epoch": 1},
    ]
    assert doc["challenges"] == {
        "passed": 1,
        "scored": 3,
        "pass_rate": 1 / 3,
        "outcomes": {"challenge_failed": 1, "challenge_missed": 1, "passed": 1},
    }
    assert doc["rollouts"] == {"items": [], "note": NO_ROLLOUTS}
    # The same numbers as the audit and as plain SQL over the tables.
    report = epoch_report(store, EPOCH, slot_ms=SLOT_MS, epoch_ms=E)
    assert [(d.dev, d.uptime, d.pass_rate) for d in report.devices] == [
        (d["dev"], d["uptime"], d["pass_rate"]) for d in doc["devices"]
    ]
    by_reason = store.rows("SELECT reason, COUNT(*) FROM messages WHERE accepted = 0 GROUP BY reason")
    assert sorted((r["reason"], r["total"]) for r in doc["rejections"]) == sorted(
        (str(r), int(n)) for r, n in by_reason
    )


def test_the_read_only_store_reads_the_same_and_refuses_writes(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    fill(store)
    reader = open_read_store(
        StorageSection(database_url=database_url, sqlite_path=str(tmp_path / "coordinator.sqlite3"))
    )
    try:
        with reader.transaction():
            seen = summary(reader, now_ms=AT, slot_ms=SLOT_MS, epoch_ms=E, online_window_ms=WINDOW)
        with store.transaction():
            assert seen == summary(store, now_ms=AT, slot_ms=SLOT_MS, epoch_ms=E, online_window_ms=WINDOW)
        # The database refuses the write (SQLite: mode=ro; PostgreSQL: a read-only transaction).
        with pytest.raises(Exception, match=r"readonly|read-only"), reader.transaction():
            reader.execute("DELETE FROM messages")
    finally:
        reader.close()
    assert len(store.messages()) == 8
    with pytest.raises(StorageError) as err:
        open_read_store(StorageSection(sqlite_path=str(tmp_path / "absent.sqlite3")))
    assert err.value.message == f"database {tmp_path / 'absent.sqlite3'} does not exist"
    assert err.value.hint == "run `edgeproof coordinator run` once (it creates and migrates the database)"


def _samples(metrics: CoordinatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_are_fed_from_committed_batches_ticks_and_scores(tmp_path: Path) -> None:
    store = Store.open(sqlite_path=tmp_path / "m.sqlite3")
    device = Device(device_key(41))
    enroll_direct(store, device.keypair)
    add_beacons(store, range(SLOT0 - 1, SLOT0 + 1))
    good = device.heartbeat(SLOT0, T0)
    batch = [
        Inbound(T.hb(device.id), good.wire, T0 + 10),
        Inbound(T.hb(device.id), good.wire, T0 + 11),  # redelivery: duplicate
        Inbound(T.hb(device.id), forged(device.heartbeat(SLOT0, T0)), T0 + 12),
        Inbound(T.hb(device.id), b"\xff not json", T0 + 13),
    ]
    result = commit_batch(store, batch, policy=POLICY, keypair=COORD, topics=T, now_ms=T0 + 20)
    store.close()
    assert len(result.judge_seconds) == 4 and all(s > 0 for s in result.judge_seconds)
    metrics = CoordinatorMetrics()
    metrics.observe_batch(result, 0.004)
    signer = ChainSigner(COORD)

    def verdict(reason: str | None) -> SignedVerdict:
        body = Verdict(
            device=device.id,
            ref_kind="challenge_response",
            ref_seq=1,
            ref_hash="ab" * 32,
            accepted=True,
            reason=reason,
        )
        env = signer.next("verdict", body, T0)
        return SignedVerdict(env.seq, "t", env.wire)

    assert [verdict_outcome(verdict(r)) for r in (None, "challenge_failed")] == ["passed", "challenge_failed"]
    metrics.observe_scored(verdict(None))
    metrics.observe_scored(verdict("reference_failed"))
    metrics.observe_tick(
        TickResult(
            SLOT0, Outgoing("b", b"x", True), [Outgoing("c", b"y")] * 3, [verdict("challenge_missed")] * 2
        )
    )
    metrics.storage_unavailable.inc()
    metrics.inbox(lambda: 7)
    got = _samples(metrics)
    p = "edgeproof_coordinator_"
    assert got[(p + "messages_total", (("kind", "heartbeat"), ("result", "accepted")))] == 1
    assert got[(p + "messages_total", (("kind", "heartbeat"), ("result", "rejected")))] == 2
    assert got[(p + "messages_total", (("kind", "unparsed"), ("result", "rejected")))] == 1
    rejections = {k[1][0][1]: v for k, v in got.items() if k[0] == p + "rejections_total"}
    assert rejections == {"duplicate": 1, "bad_signature": 1, "malformed": 1}
    outcomes = {k[1][0][1]: v for k, v in got.items() if k[0] == p + "challenges_total"}
    assert outcomes == {
        "passed": 1,
        "challenge_failed": 0,
        "wrong_model": 0,
        "challenge_late": 0,
        "challenge_missed": 2,
        "unknown_model": 0,
        "reference_failed": 1,
    }
    assert got[(p + "judge_seconds_count", ())] == 4
    assert (
        got[(p + "batch_commit_seconds_count", ())] == 1
        and got[(p + "batch_commit_seconds_sum", ())] == 0.004
    )
    assert got[(p + "beacons_issued_total", ())] == 1 and got[(p + "challenges_issued_total", ())] == 3
    assert got[(p + "storage_unavailable_total", ())] == 1 and got[(p + "inbox_messages", ())] == 7
    assert got[(p + "verdicts_published_total", ())] == 0
    # Database gauges: the value read at scrape time, or only database_readable 0 when unreadable.
    values: list[tuple[int, int] | None] = [(2, 5), None]
    metrics.registry.register(DatabaseGauges(lambda: values[0]))
    got = _samples(metrics)
    assert (got[(p + "devices_online", ())], got[(p + "devices_registered", ())]) == (2, 5)
    assert got[(p + "database_readable", ())] == 1
    values[0] = None
    got = _samples(metrics)
    assert got[(p + "database_readable", ())] == 0 and (p + "devices_online", ()) not in got


PATHS = frozenset({"/", "/metrics"})
HOST = [(b"host", b"127.0.0.1:8480")]


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "check_host", "expected"),
    [
        ("GET", "/", b"", HOST, True, None),
        ("HEAD", "/metrics", b"a=1", [(b"Host", b"localhost")], True, None),
        ("GET", "/", b"", [(b"host", b"[::1]:8480")], True, None),
        ("GET", "/", b"", [(b"host", b"127.3.4.5")], True, None),
        ("GET", "/", b"", [(b"host", b"evil.example:8480")], True, (400, "untrusted_host")),
        ("GET", "/", b"", [(b"host", b"127.0.0.1.evil.example")], True, (400, "untrusted_host")),
        ("GET", "/", b"", [], True, (400, "untrusted_host")),
        ("GET", "/", b"", [(b"host", b"dash.example")], False, None),
        ("POST", "/", b"", HOST, True, (405, "method_not_allowed")),
        ("DELETE", "/nope", b"", HOST, True, (405, "method_not_allowed")),
        ("GET", "/nope", b"", HOST, True, (404, "unknown_path")),
        ("GET", "/../etc/passwd", b"", HOST, True, (404, "unknown_path")),
        ("GET", "/", b"", [*HOST, (b"content-length", b"10")], True, (413, "oversized")),
        ("GET", "/", b"", [*HOST, (b"content-length", b"0")], True, None),
        ("GET", "/", b"", [*HOST, (b"transfer-encoding", b"chunked")], True, (413, "oversized")),
        ("GET", "/", b"q" * MAX_TARGET, HOST, True, (414, "oversized")),
        ("GET", "/", b"", [*HOST, (b"x-big", b"x" * MAX_HEADERS)], True, (431, "oversized")),
    ],
)
def test_what_the_http_guard_refuses(
    method: str,
    path: str,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    check_host: bool,
    expected: tuple[int, str] | None,
) -> None:
    assert refusal(method, path, query, headers, paths=PATHS, check_host=check_host) == expected


def test_metric_labels_stay_a_bounded_set() -> None:
    assert [kind_label(k) for k in ("heartbeat", None, "", "x" * 99)] == [
        "heartbeat",
        "unparsed",
        "unparsed",
        "other",
    ]
    assert [reason_label(r) for r in ("replay", None, "made_up")] == [
        "replay",
        "uncatalogued",
        "uncatalogued",
    ]


def test_host_name() -> None:
    assert [host_name(h) for h in ("[::1]:80", "LocalHost:1", "a.b", "[::1]")] == [
        "::1",
        "localhost",
        "a.b",
        "::1",
    ]


def test_http_config_refuses_a_remote_listen_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[http]\nlisten = "0.0.0.0:8480"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'0\.0\.0\.0:8480' is not a loopback address") as err:
        load_coordinator_config(path)
    assert "allow_remote = true" in str(err.value)
    path.write_text('[http]\nlisten = "0.0.0.0:8480"\nallow_remote = true\n', encoding="utf-8")
    assert load_coordinator_config(path).http.allow_remote is True
    for ok in ("[::1]:8481", "localhost:0", ""):
        path.write_text(f'[http]\nlisten = "{ok}"\n', encoding="utf-8")
        assert load_coordinator_config(path).http.listen == ok
    for bad, why in (
        ("8480", "is not host:port"),
        ("::1:8480", "in brackets"),
        ("h:99999", "is not host:port"),
    ):
        path.write_text(f'[http]\nlisten = "{bad}"\n', encoding="utf-8")
        with pytest.raises(ConfigError, match=why):
            load_coordinator_config(path)
    path.write_text("", encoding="utf-8")
    defaults = load_coordinator_config(path).http
    assert (defaults.listen, defaults.online_window_s, defaults.allow_remote) == ("127.0.0.1:8480", 60, False)


def test_a_port_in_use_is_a_config_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConfigError) as err:
            bind("127.0.0.1", port)
        assert str(err.value).startswith(
            f"[http] listen 127.0.0.1:{port} cannot be used: Address already in use"
        )
        assert 'set [http] listen to a free port, or "" to serve no dashboard' in str(err.value)
        assert err.value.exit_code == 2
    finally:
        taken.close()


def asgi(app: Any, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI app itself (no server, no client library)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8480")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8480),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, body


def test_the_app_answers_503_with_a_named_reason_while_the_database_is_unreadable(tmp_path: Path) -> None:
    state = {"up": False}
    path = tmp_path / "d.sqlite3"
    Store.open(sqlite_path=path).close()

    def open_store() -> Store:
        if not state["up"]:
            raise StorageUnavailableError("database d is unavailable: connection refused")
        return open_read_store(StorageSection(sqlite_path=str(path)))

    registry = CollectorRegistry()
    dashboard = Dashboard(
        open_store,
        slot_ms=SLOT_MS,
        epoch_ms=E,
        online_window_ms=WINDOW,
        refresh_s=5,
        mode="service",
        registry=registry,
    )
    app = make_app(dashboard)
    for _ in range(2):  # every attempt tries to reconnect, and is refused and counted
        status, _, body = asgi(app, "/api/summary")
        assert (status, body) == (503, b'{"error":"storage_unavailable"}')
    status, _, body = asgi(app, "/healthz")
    assert (status, json.loads(body)) == (503, {"status": "storage_unavailable", "mode": "service"})
    text = asgi(app, "/metrics")[2].decode()
    assert "edgeproof_coordinator_database_readable 0.0" in text and "devices_online" not in text
    assert 'edgeproof_coordinator_http_refused_total{reason="storage_unavailable"} 2.0' in text
    state["up"] = True  # the database is back: the next request reconnects
    status, headers, body = asgi(app, "/api/summary")
    assert status == 200 and json.loads(body)["devices_registered"] == 0
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert asgi(app, "/healthz")[0] == 200
    status, headers, body = asgi(app, "/", method="HEAD")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert asgi(app, "/dashboard.css")[2] == static_file("dashboard.css")
    dashboard.close()
