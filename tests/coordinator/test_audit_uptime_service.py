"""The uptime audit of a real run: Mosquitto, `edgeproof coordinator run` (SIGKILLed and restarted).

Compressed time (1 s slots, 10-slot epochs), SQLite and PostgreSQL.  Three devices heartbeat on
a script, quoting the coordinator's retained signed beacon: ``a`` every slot (and one proof),
``b`` with a two-slot outage, ``c`` enrolled in the middle of the run.  The coordinator is
SIGKILLed late in one slot and restarted more than two whole slots later.  Devices send only
while the test has seen the coordinator up, so the slot a heartbeat lands in never depends on
how long the restart took.  The audit must count exactly the scripted up slots, exclude every
slot the coordinator was not up for entirely and the slots up to each device's enrolment, and
the CLI's JSON, CSV, table and a capture replay must all say the same.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from pathlib import Path

import matplotlib.image
import pytest

from agent.coordinator.audit import epoch_of, epoch_report, report_json
from agent.coordinator.store import DeviceRecord, Store
from agent.protocol.binding import sign_binding
from agent.protocol.envelope import verify_envelope
from agent.protocol.messages import Beacon
from agent.protocol.topics import Topics
from tests.support.coordinator import (
    COORD,
    OWNER,
    CoordinatorProcess,
    Device,
    Publisher,
    device_key,
    enroll_direct,
    run_cli,
    wait_until,
    write_config,
)
from tests.support.mosquitto import Collector, MosquittoBroker

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]  # 1 s slots: timing-sensitive
T = Topics()
SLOT = 1000
EPOCH_MS = 10 * SLOT
SIGNER = str(COORD.pubkey())
KILL_REL, RESTART_REL, SLOTS = 3, 6, 10
SCRIPT = {"a": set(range(SLOTS)), "b": {0, 3, 6, 7, 8, 9}, "c": {2, 3, 6, 7, 8, 9}}
C_ENROLLED_REL = 2


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def sleep_until(ms: int) -> None:
    left = ms - now_ms()
    if left > 0:
        time.sleep(left / 1000)


def newest_beacon(collector: Collector) -> tuple[int, str]:
    best: tuple[int, str] | None = None
    for payload in collector.payloads():
        body = verify_envelope(payload, expected_signer=SIGNER).body
        assert isinstance(body, Beacon)
        if best is None or body.slot > best[0]:
            best = (body.slot, body.nonce)
    assert best is not None, "no beacon received"
    return best


def accepted(store: Store) -> int:
    row = store.one("SELECT COUNT(*) FROM messages WHERE accepted = 1")
    assert row is not None
    return int(row[0])


def timeline(store: Store, first: int, last: int) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Each device's slot characters over absolute slots first..last, and its summed counters."""
    chars: dict[str, dict[int, str]] = {}
    sums: dict[str, dict[str, int]] = {}
    for epoch in range(epoch_of(first * SLOT, EPOCH_MS), epoch_of(last * SLOT, EPOCH_MS) + 1):
        report = epoch_report(store, epoch, slot_ms=SLOT, epoch_ms=EPOCH_MS)
        base = report.start_ms // SLOT
        for d in report.devices:
            for i, ch in enumerate(d.slots):
                chars.setdefault(d.dev, {})[base + i] = ch
            total = sums.setdefault(d.dev, {"heartbeats": 0, "proofs": 0, "inferences": 0})
            total["heartbeats"] += d.heartbeats_accepted
            total["proofs"] += d.proofs_accepted
            total["inferences"] += d.inferences_accepted
            for reason, n in d.rejections.items():
                total[f"rejected.{reason}"] = total.get(f"rejected.{reason}", 0) + n
    return {dev: "".join(c[s] for s in range(first, last + 1)) for dev, c in chars.items()}, sums


def test_the_audit_counts_exactly_the_scripted_slots_across_a_coordinator_kill(
    mosquitto: MosquittoBroker,
    database_url: str,
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "coord"
    config = write_config(
        folder,
        broker_port=mosquitto.port,
        database_url=database_url,
        slot_ms=SLOT,
        beacon_max_age_slots=2,
        liveness_s=0.2,
        epoch_ms=EPOCH_MS,
    )
    store = Store.open(database_url=database_url, sqlite_path=folder / "coordinator.sqlite3")
    devices = {name: Device(device_key(n)) for name, n in (("a", 91), ("b", 92), ("c", 93))}
    enroll_direct(store, devices["a"].keypair)
    enroll_direct(store, devices["b"].keypair)
    beacons = Collector(mosquitto, T.beacon(), client_id="beacons")
    coordinator = CoordinatorProcess(config, tmp_path / "coordinator.log")
    publisher = Publisher(mosquitto.host, mosquitto.port)
    sent: dict[str, set[int]] = {name: set() for name in devices}
    restarted = threading.Event()
    try:
        coordinator.start()
        s0 = now_ms() // SLOT + 1
        restart_at = kill_at = 0
        for rel in range(SLOTS):
            start = (s0 + rel) * SLOT
            if rel == C_ENROLLED_REL:
                sleep_until(start + 200)
                binding = sign_binding(devices["c"].keypair, OWNER, now_ms())
                with store.transaction():
                    store.enroll(
                        DeviceRecord(binding.device, OWNER, "rpi4", (), binding.ts, binding.sig, now_ms())
                    )
            sleep_until(start + 500)
            up = rel < KILL_REL or (rel >= RESTART_REL and restarted.is_set())
            if up:
                slot, nonce = newest_beacon(beacons)
                items = []
                for name, device in devices.items():
                    if rel in SCRIPT[name]:
                        items.append((T.hb(device.id), device.heartbeat(slot, now_ms(), nonce).wire))
                        sent[name].add(rel)
                if rel == 1:
                    a = devices["a"]
                    items.append((T.proof(a.id), a.proof(now_ms() - 10_000, now_ms(), 100, ts=now_ms()).wire))
                publisher.publish(items)
                assert now_ms() < start + SLOT - 200, "the harness fell behind its slot"
            if rel == KILL_REL:
                # Killed late in the slot, once this slot's heartbeats are committed (a backlog
                # redelivered after the restart would quote a stale beacon: not what is tested here).
                wait_until(lambda: accepted(store) == sum(map(len, sent.values())) + 1, 5, "the commit")
                sleep_until(start + 800)
                assert now_ms() < start + SLOT - 100, "the harness fell behind its slot"
                assert coordinator.proc is not None
                kill_at = now_ms()
                coordinator.proc.kill()  # SIGKILL: no liveness record closed
                coordinator.proc.wait(10)
            if rel == RESTART_REL - 1:
                sleep_until(start + SLOT + 50)
                restart_at = now_ms()

                def restart() -> None:
                    coordinator.start()
                    restarted.set()

                threading.Thread(target=restart, daemon=True).start()
        assert restarted.wait(60), coordinator.log()
        restarted_at = now_ms()
        sleep_until((s0 + SLOTS) * SLOT + 300)
        total = sum(len(v) for v in sent.values()) + 1
        wait_until(lambda: accepted(store) >= total, 30, "every scripted message", coordinator.log)
        assert coordinator.terminate() == 0
    finally:
        publisher.close()
        beacons.close()
        coordinator.kill()

    # The liveness record tells the truth about the kill and the restart (by the test's own clock).
    (_, started1, last1, stopped1), (_, started2, _, stopped2) = store.runs()
    assert stopped1 is None and (s0 + KILL_REL) * SLOT <= last1 <= kill_at
    assert restart_at <= started2 <= restarted_at and stopped2 is not None
    assert started1 < s0 * SLOT and stopped2 > (s0 + SLOTS) * SLOT
    back = started2 // SLOT  # the restart's own slot is partly down: excluded
    assert back >= s0 + RESTART_REL - 1 + 1 and back - (s0 + KILL_REL) >= 3  # >= 2 whole slots down

    enrolled = {name: store.device(d.id) for name, d in devices.items()}
    expected: dict[str, str] = {}
    for name, device in devices.items():
        record = enrolled[name]
        assert record is not None
        chars = []
        for rel in range(SLOTS):
            s = s0 + rel
            counted = (s < s0 + KILL_REL or s > back) and s > record.enrolled_ms // SLOT
            chars.append("X" if not counted else "U" if rel in sent[name] else "D")
        expected[device.id] = "".join(chars)
    got, sums = timeline(store, s0, s0 + SLOTS - 1)
    assert {d: got[d] for d in expected} == expected, coordinator.log()
    assert expected[devices["a"].id].startswith("UUUXXX") and expected[devices["b"].id].startswith("UDDXXX")
    assert expected[devices["c"].id].startswith("XXXXXX")
    for name, device in devices.items():
        mine = sums[device.id]
        assert mine["heartbeats"] == len(sent[name])  # every scripted heartbeat accepted, none twice
        assert set(mine) - {"heartbeats", "proofs", "inferences"} <= {"rejected.duplicate"}
    assert (sums[devices["a"].id]["proofs"], sums[devices["a"].id]["inferences"]) == (1, 100)

    # The CLI: JSON, CSV and table agree with the library's report of the kill's epoch, and so
    # does the report recomputed from an exported capture.  `python -m agent` spawned once (on
    # SQLite); the other calls run the CLI's parser and command functions in this process.
    epoch = epoch_of(kill_at, EPOCH_MS)
    want = report_json(epoch_report(store, epoch, slot_ms=SLOT, epoch_ms=EPOCH_MS))
    assert want["coordinator_down_slots"] >= 3
    store.close()
    cli = spawned if backend == "sqlite" else in_process(capsys)
    png = tmp_path / "uptime.png"
    common = ("--config", str(config), "--epoch", str(epoch))
    rc, out, err = cli("audit", "uptime", *common, "--json", "--plot", str(png))
    assert rc == 0 and json.loads(out) == want, err
    assert matplotlib.image.imread(str(png)).shape[0] > 100
    local = in_process(capsys)
    capture = tmp_path / "capture.jsonl"
    rc, out, err = local("audit", "export", *common, "--out", str(capture))
    assert rc == 0 and out.startswith(f"wrote {capture}: epoch {epoch}"), err
    rc, out, err = local("audit", "uptime", "--capture", str(capture), "--format", "json")
    assert rc == 0 and json.loads(out) == want, err  # recomputed from the capture alone
    assert " 0 judged differently than recorded" in err
    rc, out, err = local("audit", "uptime", *common, "--format", "csv")
    assert rc == 0, err
    rows = {r["dev"]: r for r in csv.DictReader(io.StringIO(out))}
    assert set(rows) == {d["dev"] for d in want["devices"]}
    for d in want["devices"]:
        row = rows[d["dev"]]
        assert (row["epoch"], row["slots"], row["up_slots"], row["counted_slots"]) == (
            str(epoch),
            d["slots"],
            str(d["up_slots"]),
            str(d["counted_slots"]),
        )
        assert row["uptime"] == ("" if d["uptime"] is None else str(d["uptime"]))
    rc, text, err = local("audit", "uptime", *common, "--format", "table")
    assert rc == 0, err
    assert f"epoch {epoch}" in text and f"coordinator up {want['coordinator_up_slots']}, down" in text
    for d in want["devices"]:
        line = next(li for li in text.splitlines() if f"{d['dev'][:8]}...{d['dev'][-4:]}" in li)
        assert f"{d['up_slots']}/{d['counted_slots']}" in line and d["slots"] in line, line


def spawned(*argv: str) -> tuple[int, str, str]:
    """``python -m agent ...`` as a child process: (exit code, stdout, stderr)."""
    done = run_cli(*argv)
    return done.returncode, done.stdout, done.stderr


def in_process(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """The CLI's parser and command function, run here: (exit code, stdout, stderr)."""
    from agent.cli import build_parser

    def call(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        args = build_parser().parse_args(list(argv))
        rc = int(args.func(args))
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return call
