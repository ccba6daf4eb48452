"""The dashboard and /metrics of a real coordinator, read back against the database.

One scenario per backend: a real Mosquitto, `python -m agent coordinator run` with ``[http]
listen = "127.0.0.1:0"`` (1-second slots), devices that send heartbeats, proofs and challenge
answers (some forged, one never enrolled, garbage bytes), answers scored by the coordinator's
reference run on the shipped efficientnet.  Then, while it runs: ``/metrics`` parsed with
prometheus_client equals the database's counts; hostile HTTP input is refused with named,
counted reasons and ingest goes on.  After SIGTERM: ``coordinator dashboard`` (read-only) serves
the page and headless Chromium renders it; every number in the DOM equals the database's.

The challenges are inserted into the database as the coordinator would issue them (the test
chooses their nonces and deadlines); the answers, their reference runs and the missed deadline
go through the running process.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.challenge_run import expected_sketch
from agent.cli import main
from agent.coordinator import challenge_rows, rollout_rows
from agent.coordinator.audit import epoch_report
from agent.coordinator.challenge_rows import FINAL_OUTCOMES
from agent.coordinator.config import load_coordinator_config
from agent.coordinator.http_app import start_dashboard
from agent.coordinator.metrics import CHALLENGE_OUTCOMES
from agent.coordinator.store import Store
from agent.coordinator.summary import NO_ROLLOUTS
from agent.errors import ConfigError
from agent.inference.backends.base import BackendSettings
from agent.inference.pipeline import Pipeline
from agent.protocol.envelope import Envelope
from agent.protocol.topics import Topics
from tests.support.chromium import DomReader, dump_dom
from tests.support.coordinator import (
    COORD,
    EFFICIENTNET_SHA,
    ROOT,
    CoordinatorProcess,
    Device,
    Publisher,
    agent_cmd,
    device_key,
    enroll_direct,
    run_cli,
    wait_until,
    write_config,
)
from tests.support.mosquitto import MosquittoBroker

pytestmark = pytest.mark.integration
T = Topics()
SLOT_MS = 1000
EPOCH_MS = 86_400_000  # one epoch a day: the scenario never straddles two
WINDOW_S = 600
P = "edgeproof_coordinator_"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(scope="module")
def efficientnet() -> Pipeline:
    return Pipeline.open(str(ROOT / "models" / "efficientnet-lite0-int8.toml"), BackendSettings(threads=1))


def config_with_http(folder: Path, port: int, database_url: str) -> Path:
    config = write_config(
        folder,
        broker_port=port,
        database_url=database_url,
        slot_ms=SLOT_MS,
        epoch_ms=EPOCH_MS,
        http_listen="127.0.0.1:0",
    )
    with config.open("a", encoding="utf-8") as out:  # [http] is the file's last table
        out.write(f"online_window_s = {WINDOW_S}\nrefresh_s = 1\n")
    return config


def listening_port(log: str) -> int:
    for line in log.splitlines():
        if "http_listening" in line:
            return int(line.split("port=")[1].split()[0])
    raise AssertionError(f"no http_listening line:\n{log}")


def http(port: int, raw: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(raw)
        data = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                headers = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:])
                )
                if len(body) >= int(headers.get("content-length", "-1")) >= 0:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    return http(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def by_label(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
) -> dict[tuple[str, ...], int]:
    return {tuple(v for _, v in labels): int(value) for (n, labels), value in samples.items() if n == name}


def forged(env: Envelope) -> bytes:
    raw = {**env.raw, "body": {**env.raw["body"], "uptime_s": 4242}}
    return Envelope(**{**env.__dict__, "raw": raw}).wire


def newest_beacon(store: Store) -> tuple[int, str]:
    row = store.one("SELECT slot, nonce FROM beacons ORDER BY slot DESC LIMIT 1")
    assert row is not None
    return int(row[0]), str(row[1])


def add_challenge(store: Store, dev: str, name: str, deadline_ms: int) -> str:
    """A challenge row as the coordinator records one it issued; returns its nonce."""
    nonce = hashlib.sha256(f"dashboard/{name}".encode()).hexdigest()
    at = now_ms()
    with store.transaction():
        challenge_rows.insert_challenge(
            store,
            dev=dev,
            slot=at // SLOT_MS - 1_000_000 - len(name),  # slots of their own: the coordinator's never collide
            nonce=nonce,
            model_sha256=EFFICIENTNET_SHA,
            signer=str(COORD.pubkey()),
            seq=0,
            digest="00" * 32,
            issued_ms=at,
            deadline_ms=deadline_ms,
            raw=b"{}",
        )
    return nonce


def answer(device: Device, nonce: str, sketch: list[int], sha: str = EFFICIENTNET_SHA) -> tuple[str, bytes]:
    body = {"nonce": nonce, "model_sha256": sha, "sketch": sketch, "latency_us": 900}
    return T.device(device.id, "response"), device.chain.next("challenge_response", body, now_ms()).wire


def db_counts(store: Store) -> dict[str, object]:
    return {
        "messages": {
            (str(kind) if kind else "unparsed", "accepted" if accepted else "rejected"): int(n)
            for kind, accepted, n in store.rows(
                "SELECT kind, accepted, COUNT(*) FROM messages GROUP BY kind, accepted"
            )
        },
        "rejections": {
            (str(r),): int(n)
            for r, n in store.rows("SELECT reason, COUNT(*) FROM messages WHERE accepted = 0 GROUP BY reason")
        },
        "outcomes": {
            (str(o),): int(n)
            for o, n in store.rows("SELECT outcome, COUNT(*) FROM challenges GROUP BY outcome")
        },
    }


def online_in_db(store: Store, at_ms: int) -> set[str]:
    rows = store.rows(
        "SELECT DISTINCT dev FROM messages WHERE kind = 'heartbeat' AND accepted = 1 AND ingest_ms >= ?",
        (at_ms - WINDOW_S * 1000,),
    )
    return {str(r[0]) for r in rows}


class ReadOnlyDashboard:
    """``python -m agent coordinator dashboard`` as a child process (stopped by its pid)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                agent_cmd("--log-level", "info", "coordinator", "dashboard", "--config", str(config)),
                cwd=ROOT,
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def port(self) -> int:
        wait_until(
            lambda: "http_listening" in self.log() or self.proc.poll() is not None,
            60,
            "the dashboard",
            self.log,
        )
        return listening_port(self.log())

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def rig(
    mosquitto: MosquittoBroker, database_url: str, tmp_path: Path
) -> Iterator[tuple[Path, Store, CoordinatorProcess]]:
    folder = tmp_path / "coord"
    config = config_with_http(folder, mosquitto.port, database_url)
    store = Store.open(database_url=database_url, sqlite_path=folder / "coordinator.sqlite3")
    coordinator = CoordinatorProcess(config, tmp_path / "coordinator.log")
    try:
        yield config, store, coordinator
    finally:
        coordinator.kill()
        store.close()


def test_metrics_and_the_rendered_dashboard_equal_the_database(
    rig: tuple[Path, Store, CoordinatorProcess],
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    efficientnet: Pipeline,
) -> None:
    config, store, coordinator = rig
    a, b, c = (Device(device_key(n)) for n in (91, 92, 93))
    stranger = Device(device_key(94))
    for device in (a, b, c):
        enroll_direct(store, device.keypair)
    coordinator.start()
    port = listening_port(coordinator.log())
    publisher = Publisher(mosquitto.host, mosquitto.port, client_id="dashboard-devices")
    try:
        wait_until(lambda: store.one("SELECT 1 FROM beacons") is not None, 30, "a beacon", coordinator.log)
        # Heartbeats in four consecutive slots from a, two from b; forgeries, a made-up beacon,
        # a stranger, a redelivery, garbage bytes, a proof over the profile's bound.
        first = None
        for i in range(4):
            slot, nonce = newest_beacon(store)
            items = [(T.hb(a.id), a.heartbeat(slot, now_ms(), nonce=nonce).wire)]
            if i < 2:
                items.append((T.hb(b.id), b.heartbeat(slot, now_ms(), nonce=nonce).wire))
            first = first or items[0]
            publisher.publish(items)
            time.sleep(SLOT_MS / 1000 + 0.1)
        slot, nonce = newest_beacon(store)
        start = now_ms() - 60_000
        assert first is not None
        publisher.publish(
            [
                first,  # the same envelope again: duplicate
                (T.hb(b.id), forged(b.heartbeat(slot, now_ms(), nonce=nonce))),
                (T.hb(c.id), forged(c.heartbeat(slot, now_ms(), nonce=nonce))),
                (T.hb(c.id), c.heartbeat(slot, now_ms(), nonce="ee" * 32).wire),
                (T.hb(stranger.id), stranger.heartbeat(slot, now_ms(), nonce=nonce).wire),
                (T.hb(a.id), b"\x00garbage{"),
                (T.proof(a.id), a.proof(start, start + 30_000, 900, ts=now_ms()).wire),
                (T.proof(b.id), b.proof(start, start + 1_000, 100_000, ts=now_ms()).wire),
            ]
        )
        # Challenges: a answers honestly, b with a made-up sketch, c names another model; one
        # of c's is past its deadline and never answered.
        later = now_ms() + 60_000
        nonces = {n: add_challenge(store, d.id, n, later) for n, d in (("a", a), ("b", b), ("c", c))}
        add_challenge(store, c.id, "missed-challenge", now_ms() - 1)
        publisher.publish(
            [
                answer(a, nonces["a"], expected_sketch(efficientnet, nonces["a"])[0]),
                answer(b, nonces["b"], [7] * 32),
                answer(c, nonces["c"], [1] * 32, sha="ab" * 32),
            ]
        )
        wait_until(
            lambda: (
                {r.outcome for r in challenge_rows.challenges(store)} <= set(FINAL_OUTCOMES)
                and store.one("SELECT COUNT(*) FROM messages") == (17,)
            ),
            90,
            "every message and challenge settled",
            coordinator.log,
        )
        verdicts = store.one("SELECT COUNT(*) FROM verdicts")
        assert verdicts is not None
        wait_until(
            lambda: scrape(port).get((P + "verdicts_published_total", ())) == verdicts[0],
            30,
            "every verdict acknowledged",
        )

        # --- /metrics equals the database --------------------------------------------------------
        got = scrape(port)
        want = db_counts(store)
        assert want["outcomes"] == {
            ("passed",): 1,
            ("challenge_failed",): 1,
            ("wrong_model",): 1,
            ("challenge_missed",): 1,
        }
        assert by_label(got, P + "messages_total") == want["messages"]
        assert by_label(got, P + "rejections_total") == want["rejections"]
        assert want["rejections"] == {
            ("duplicate",): 1,
            ("bad_signature",): 2,
            ("unknown_beacon",): 1,
            ("unknown_device",): 1,
            ("malformed",): 1,
            ("implausible_throughput",): 1,
            ("wrong_model",): 1,  # the answer naming another model is a rejected message too
        }
        outcomes = by_label(got, P + "challenges_total")
        assert outcomes == {(o,): want["outcomes"].get((o,), 0) for o in CHALLENGE_OUTCOMES}  # type: ignore[attr-defined]
        assert got[(P + "judge_seconds_count", ())] == 17
        assert 1 <= got[(P + "batch_commit_seconds_count", ())] <= 17
        beacons = store.one("SELECT COUNT(*) FROM beacons")
        assert beacons is not None and got[(P + "beacons_issued_total", ())] >= 1
        assert (
            got[(P + "beacons_issued_total", ())] <= beacons[0]
        )  # a beacon may be committed, not yet counted
        assert (
            got[(P + "storage_unavailable_total", ())] == 0 and got[(P + "challenges_issued_total", ())] == 0
        )
        online = online_in_db(store, now_ms())
        assert online == {a.id, b.id}
        assert (got[(P + "devices_online", ())], got[(P + "devices_registered", ())]) == (2, 3)
        assert got[(P + "database_readable", ())] == 1
        live = json.loads(get(port, "/api/summary")[2])  # the service's own summary: the database's
        assert (live["mode"], live["devices_online"], live["devices_registered"]) == ("service", 2, 3)
        assert live["messages"] == {"accepted": 9, "rejected": 8}
        assert {(r["reason"],): r["total"] for r in live["rejections"]} == want["rejections"]
        assert (live["challenges"]["passed"], live["challenges"]["scored"]) == (1, 4)

        # --- hostile input on the HTTP port: refused, named, counted; ingest goes on ------------
        assert get(port, "/nope")[:1] == (404,) and json.loads(get(port, "/nope")[2]) == {
            "error": "unknown_path"
        }
        status, headers, _ = http(
            port, b"POST /api/summary HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"
        )
        assert (status, headers["allow"]) == (405, "GET, HEAD")
        assert get(port, "/api/summary", host="rebind.example:8480")[0] == 400
        assert get(port, "/?" + "a" * 5000)[0] == 414
        assert http(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello")[0] == 413
        tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64)
        assert http(port, tls_hello)[0] == 400  # rejected by uvicorn's HTTP parser, before the app
        big = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"x" * 40_000 + b"\r\n\r\n"
        assert http(port, big)[0] == 431
        assert http(port, b"GET  /metrics  HTTP/1.1 junk\r\n\r\n")[0] == 400  # a malformed request line
        refused = by_label(scrape(port), P + "http_refused_total")
        assert refused == {
            ("unknown_path",): 2,
            ("method_not_allowed",): 1,
            ("untrusted_host",): 1,
            ("oversized",): 3,
        }
        slot, nonce = newest_beacon(store)
        publisher.publish([(T.hb(a.id), a.heartbeat(slot, now_ms(), nonce=nonce).wire)])
        wait_until(
            lambda: store.one("SELECT COUNT(*) FROM messages") == (18,),
            30,
            "ingest after the abuse",
            coordinator.log,
        )
        status, headers, body = get(port, "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "mode": "service"})
        status, headers, body = get(port, "/")
        assert status == 200 and b'<script src="/dashboard.js"' in body
        assert headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
        assert get(port, "/dashboard.js")[1]["content-type"].startswith("text/javascript")
        assert coordinator.terminate() == 0
    finally:
        publisher.close()
    log = coordinator.log()
    assert "http_listening" in log and "http_stopped" in log and "coordinator_stopped" in log

    # --- the page, rendered by Chromium from the read-only dashboard, equals the database ------
    dashboard = ReadOnlyDashboard(config, tmp_path / "dashboard.log")
    try:
        dport = dashboard.port()
        dom = DomReader(dump_dom(f"http://127.0.0.1:{dport}/", tmp_path / "chromium"))
        assert get(dport, "/healthz")[2] == b'{"status":"ok","mode":"read-only"}'
        assert dashboard.stop() == 0
    finally:
        dashboard.kill()
    assert dom.body["data-state"] == "ready", dom.text("status")
    assert int(dom.body["data-loads"]) >= 3  # it fetched /api/summary again every refresh_s = 1 s
    epoch = int(dom.value("epoch"))
    report = epoch_report(store, epoch, slot_ms=SLOT_MS, epoch_ms=EPOCH_MS)
    assert epoch == now_ms() // EPOCH_MS
    assert dom.text("mode") == "read-only view"
    assert (dom.value("devices-online"), dom.value("devices-registered")) == ("2", "3")
    assert online_in_db(store, int(dom.body["data-generated-ms"])) == {a.id, b.id}
    totals = store.one("SELECT COUNT(*), SUM(accepted) FROM messages")
    assert totals is not None
    assert (int(dom.value("messages-accepted")), int(dom.value("messages-rejected"))) == (
        int(totals[1]),
        int(totals[0]) - int(totals[1]),
    )
    assert (int(dom.value("coordinator-up-slots")), int(dom.value("coordinator-down-slots"))) == (
        report.coordinator_up_slots,
        report.coordinator_down_slots,
    )
    assert (
        int(dom.value("slots-elapsed")) == (int(dom.body["data-generated-ms"]) - report.start_ms) // SLOT_MS
    )
    rows = dom.rows["dev"]
    assert sorted(rows) == [d.dev for d in report.devices] == sorted([a.id, b.id, c.id])
    for d in report.devices:
        cells = rows[d.dev].cells
        shown = cells["uptime"].attrs["data-value"]
        assert (float(shown) if shown else None) == d.uptime
        assert cells["slots"].text == f"{d.up_slots}/{d.counted_slots}"
        assert int(cells["heartbeats_accepted"].text) == d.heartbeats_accepted
        assert int(cells["proofs_accepted"].text) == d.proofs_accepted
        assert int(cells["rejections"].text) == sum(d.rejections.values())
        rate = cells["pass_rate"].attrs["data-value"]
        assert (float(rate) if rate else None) == d.pass_rate
        assert cells["online"].text == ("online" if d.dev in (a.id, b.id) else "offline")
    ups = {d.dev: d.up_slots for d in report.devices}
    assert ups[a.id] >= 3 and 1 <= ups[b.id] <= 2 and ups[c.id] == 0  # four slots, two slots, none
    assert rows[a.id].cells["uptime"].text.endswith(" %")
    assert [rows[x.id].cells["pass_rate"].text for x in (a, b, c)] == ["100.0 %", "0.0 %", "0.0 %"]
    assert (dom.value("challenges-passed"), dom.value("challenges-scored")) == ("1", "4")
    assert (float(dom.value("pass-rate")), dom.text("pass-rate")) == (0.25, "25.0 %")
    shown_rejections = {
        key: (int(row.cells["epoch"].text), int(row.cells["total"].text))
        for key, row in dom.rows["reason"].items()
    }
    in_epoch: dict[str, int] = {}
    for d in report.devices:
        for reason, n in d.rejections.items():
            in_epoch[reason] = in_epoch.get(reason, 0) + n
    assert shown_rejections == {
        reason: (in_epoch.get(reason, 0), n)
        for (reason,), n in db_counts(store)["rejections"].items()  # type: ignore[attr-defined]
    }
    assert dom.text("rollouts-note") == NO_ROLLOUTS and "hidden" in dom.by_id["rollouts"].attrs


def test_the_cli_refuses_a_port_in_use_a_remote_listen_and_a_missing_database(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    folder = tmp_path / "coord"
    try:
        missing = write_config(folder, broker_port=1, http_listen="127.0.0.1:0")
        done = run_cli("coordinator", "dashboard", "--config", str(missing))
        assert done.returncode == 10 and "Traceback" not in done.stderr
        assert done.stderr.startswith(
            f"edgeproof: error: database {folder / 'coordinator.sqlite3'} does not exist\n"
        )
        config = write_config(folder, broker_port=1, http_listen=f"127.0.0.1:{port}")
        done = run_cli("coordinator", "run", "--config", str(config))
        assert (done.returncode, "Traceback" in done.stderr) == (2, False)
        assert done.stderr == (
            f"edgeproof: error: [http] listen 127.0.0.1:{port} cannot be used: Address already in use\n"
            '  fix: another process listens there: set [http] listen to a free port, or "" to serve no dashboard\n'
        )
    finally:
        taken.close()
    store = Store.open(sqlite_path=folder / "coordinator.sqlite3")
    try:
        [(_, started, _, stopped)] = store.runs()  # the run that could not serve was closed
        assert stopped is not None and stopped >= started
    finally:
        store.close()
    # In-process (no interpreter start): a remote --listen is refused before anything binds.
    with pytest.raises(ConfigError) as err:
        start_dashboard(
            load_coordinator_config(config), CollectorRegistry(), mode="read-only", listen="0.0.0.0:0"
        )
    assert err.value.message == "listen '0.0.0.0:0' is not a loopback address"
    assert err.value.hint is not None and "allow_remote = true" in err.value.hint


def test_the_dashboard_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["coordinator", "dashboard", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and "read-only" in out and "--listen HOST:PORT" in out


def test_the_rendered_dashboard_shows_the_newest_rollout_of_each_channel(
    database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "coord"
    config = config_with_http(folder, 1, database_url)  # the read-only dashboard needs no broker
    store = Store.open(database_url=database_url, sqlite_path=folder / "coordinator.sqlite3")
    body = {
        "channel": "stable",
        "version": 7,
        "model_id": "tiny",
        "model_version": "1.2.0",
        "model": "tiny.onnx",
        "card": "tiny.toml",
        "artifacts": [
            {"name": "tiny.onnx", "url": "http://127.0.0.1:1/tiny.onnx", "sha256": "ab" * 32, "length": 10},
            {"name": "tiny.toml", "url": "http://127.0.0.1:1/tiny.toml", "sha256": "cd" * 32, "length": 10},
        ],
        "expires_ms": now_ms() + 3_600_000,
        "stages": [1000, 5000, 10_000],
        "stage": 1,
    }

    def row(version: int, model_version: str, state: str, halt: str | None) -> rollout_rows.RolloutRow:
        manifest = {**body, "version": version, "model_version": model_version}
        return rollout_rows.RolloutRow(
            None, "stable", "tiny", model_version, "ab" * 32, version, 1, state, halt, 0.05, 60_000,
            (1, 2), version, 0, version, json.dumps(manifest),
        )  # fmt: skip

    try:
        rollout_rows.save_rollout(store, row(3, "1.1.0", "done", None))  # older: not shown
        rid = rollout_rows.save_rollout(store, row(7, "1.2.0", "halted", "2 of 20 devices failed (10.0%)"))
        reports = [rollout_rows.ReportRow(f"d{i}", "committed", None, 5, 1) for i in range(4)]
        reports += [
            rollout_rows.ReportRow("f1", "failed", "inference_failed", 5, 1),
            rollout_rows.ReportRow("f2", "rolled_back", "trial_failed", 5, 1),
            rollout_rows.ReportRow("f3", "failed", "halted", 5, 1),
            rollout_rows.ReportRow("w1", "downloading", None, 5, 1),
        ]
        rollout_rows.put_reports(store, rid, reports)
        dashboard = ReadOnlyDashboard(config, tmp_path / "dashboard.log")
        try:
            dport = dashboard.port()
            dom = DomReader(dump_dom(f"http://127.0.0.1:{dport}/", tmp_path / "chromium"))
            assert dashboard.stop() == 0
        finally:
            dashboard.kill()
    finally:
        store.close()
    assert "hidden" not in dom.by_id["rollouts"].attrs and "hidden" in dom.by_id["rollouts-note"].attrs
    assert list(dom.rows["rollout"]) == ["stable"]
    cells = {k: v.text for k, v in dom.rows["rollout"]["stable"].cells.items()}
    assert cells == {
        "channel": "stable",
        "release": "tiny 1.2.0",
        "manifest_version": "7",
        "stage": "2 of 3 (50%)",
        "state": "halted",
        "committed": "4",
        "failed": "3",
        "reasons": "halted 1, inference_failed 1, trial_failed 1",
        "in_flight": "1",
        "halt_reason": "2 of 20 devices failed (10.0%)",
    }
