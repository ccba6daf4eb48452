"""The dashboard's rewards section in headless Chromium: earned, paid, outstanding, receipts, breaker.

A real SQLite store holds two settled epochs and vouchers in every state (written with the desk's
own record functions); the read-only dashboard serves it in process and Chromium renders the page.
Every rewards number in the DOM equals :func:`payout_summary` and the hand-computed figures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.cli import main
from agent.coordinator.config import load_coordinator_config
from agent.coordinator.http_app import start_dashboard
from agent.coordinator.payout_summary import payout_summary
from agent.coordinator.store import Store
from agent.rewards import vouchers
from agent.rewards.merkle import Leaf
from tests.support.chromium import DomReader, dump_dom
from tests.support.claims import settle_direct
from tests.support.coordinator import OWNER, device_key, enroll_direct, write_config

pytestmark = pytest.mark.integration


def _voucher(
    dev: str, n: int, amount: int, state: str, at: int, receipt: str | None = None
) -> vouchers.VoucherRow:
    return vouchers.VoucherRow(
        claim_id=f"{n:032x}",
        dev=dev,
        owner=OWNER,
        message_id=n,
        epoch=4,
        amount=amount,
        signature=f"sig{n}",
        blockhash="1" * 32,
        last_valid_block_height=100,
        state=state,
        topic="t",
        raw=b"{}",
        issued_ms=at,
        receipt_status=receipt,
        receipt_ms=at + 5 if receipt else None,
    )


def test_the_rewards_section_shows_each_devices_earned_paid_outstanding_and_the_breaker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "coord"
    config_path = write_config(folder, broker_port=1, http_listen="127.0.0.1:0")
    store = Store.open(sqlite_path=folder / "coordinator.sqlite3")
    a, b, c = (device_key(200 + i) for i in range(3))
    for key in (a, b, c):
        enroll_direct(store, key)
    da, db, dc = (str(k.pubkey()) for k in (a, b, c))
    now = time.time_ns() // 1_000_000
    settle_direct(
        store, 3, [Leaf(da, OWNER, 3, 400, 400), Leaf(db, OWNER, 3, 0, 0), Leaf(dc, OWNER, 3, 7, 7)], now
    )
    settle_direct(
        store, 4, [Leaf(da, OWNER, 4, 600, 1000), Leaf(db, OWNER, 4, 90, 90), Leaf(dc, OWNER, 4, 0, 7)], now
    )
    with store.transaction():
        vouchers.insert(store, _voucher(da, 1, 400, "paid", now - 9000, "confirmed"))
        vouchers.insert(store, _voucher(da, 2, 500, "released", now - 8000, "failed"))
        vouchers.insert(store, _voucher(da, 3, 600, "outstanding", now - 7000, "submitted"))
        vouchers.insert(store, _voucher(db, 4, 90, "paid", now - 6000, "confirmed"))
        vouchers.trip(
            store, now - 1000, now + 3_600_000, "900 + 600 base units in 3600 s would pass the cap of 1000"
        )
    expected = payout_summary(store, now_ms=now)
    assert [
        (d["dev"], d["earned"], d["paid"], d["outstanding"], d["claimable"]) for d in expected["devices"]
    ] == sorted([(da, 1000, 400, 600, 0), (db, 90, 90, 0, 0), (dc, 7, 0, 0, 7)])
    store.close()
    # The same figures from the CLI (read-only).
    assert main(["rewards", "payouts", "--config", str(config_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["devices"] == expected["devices"] and listed["breaker"]["open"] is True
    assert main(["rewards", "payouts", "--config", str(config_path)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("payout breaker OPEN until ") and "would pass the cap of 1000" in table
    assert da in table and "submitted" in table
    served = start_dashboard(load_coordinator_config(config_path), CollectorRegistry(), mode="read-only")
    assert served is not None
    server, dashboard = served
    try:
        dom = DomReader(dump_dom(server.url, tmp_path / "chromium"))
    finally:
        server.stop()
        dashboard.close()
    assert dom.body["data-state"] == "ready", dom.text("status")
    assert dom.by_id["breaker"].attrs["data-open"] == "1"
    assert "payout breaker OPEN until" in dom.text("breaker") and "would pass the cap of 1000" in dom.text(
        "breaker"
    )
    rows = dom.rows["payee"]
    assert sorted(rows) == sorted([da, db, dc])
    for d in expected["devices"]:
        cells = rows[d["dev"]].cells
        for field in ("epoch", "earned", "paid", "outstanding", "claimable"):
            assert cells[field].attrs["data-value"] == str(d[field]), (d["dev"], field)
        assert cells["receipts"].attrs["data-value"] == str(len(d["receipts"]))
    receipts = rows[da].cells["receipts"].text
    assert (
        receipts.startswith("submitted 600 @ ") and "failed 500" in receipts and "confirmed 400" in receipts
    )
    assert rows[dc].cells["receipts"].text == "\u2013"  # an en dash: none yet
    assert dom.rows["dev"] and all(key in dom.rows["dev"] for key in (da, db, dc))  # the devices table too
