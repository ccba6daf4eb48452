"""Refused manifests become bounded ``rejected`` deploy reports (agent/device/manifest_refusals.py).

A real state store (SQLite in tmp_path); the reports are collected as the daemon would sign them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from solders.keypair import Keypair

from agent.device.manifest_refusals import BURST, RECORD, REMEMBERED, RefusalReports, refused_manifest
from agent.device.manifests import DeviceFacts
from agent.device.state_store import StateStore
from agent.protocol.canonical import canonical
from agent.protocol.envelope import GENESIS_PREV, build_envelope
from agent.protocol.messages import Deploy, Manifest
from tests.support.manifests import NOW, manifest_body

OPERATOR = Keypair.from_seed(bytes([31]) * 32)
DEV = str(Keypair.from_seed(bytes([32]) * 32).pubkey())
FACTS = DeviceFacts(DEV, "rpi5")


def wire(signer: Keypair = OPERATOR, seq: int = 1, **change: Any) -> bytes:
    body = Manifest.model_validate(manifest_body(**change))
    prev = GENESIS_PREV if seq == 1 else "ab" * 32
    return build_envelope(signer, "manifest", body, seq=seq, prev=prev, ts=NOW).wire


def reporter(tmp_path: Path, now_s: float = 0.0) -> tuple[RefusalReports, list[Deploy], StateStore]:
    state = StateStore.open(tmp_path / "state.sqlite3")
    sent: list[Deploy] = []
    return RefusalReports(state, sent.append, FACTS, now_s=now_s), sent, state


def test_a_refused_manifest_for_this_device_is_reported_once_with_its_reason(tmp_path: Path) -> None:
    reports, sent, _ = reporter(tmp_path)
    payload = wire(version=7, model_version="2.0.0")
    assert reports.consider(payload, "expired", 1.0) == "sent"
    assert reports.consider(payload, "expired", 2.0) == "repeated"
    assert reports.consider(payload, "stale_version", 3.0) == "sent"  # another reason: its own report
    assert [d.model_dump() for d in sent] == [
        {
            "channel": "stable",
            "manifest_version": 7,
            "model_id": "efficientnet-lite0-int8",
            "model_sha256": "ab" * 32,
            "state": "rejected",
            "reason": reason,
            "progress_bp": None,
        }
        for reason in ("expired", "stale_version")
    ]


def test_what_names_no_manifest_or_another_device_is_not_reported(tmp_path: Path) -> None:
    reports, sent, _ = reporter(tmp_path)
    assert reports.consider(b"{not json", "malformed", 0.0) == "unreadable"
    assert reports.consider(b"x" * 100_000, "oversized", 0.0) == "unreadable"
    bad_body = json.loads(wire())
    bad_body["body"]["version"] = 0
    assert reports.consider(json.dumps(bad_body).encode(), "schema", 0.0) == "unreadable"
    other = wire(targets={"profiles": ["rpi4"]})
    assert reports.consider(other, "expired", 0.0) == "not_targeted"
    assert refused_manifest(other) is not None and refused_manifest(b"[]") is None
    assert sent == []


def test_a_flood_of_ten_thousand_forged_versions_yields_a_bounded_number_of_reports(tmp_path: Path) -> None:
    forged = json.loads(wire(Keypair.from_seed(bytes([33]) * 32)))
    reports, sent, state = reporter(tmp_path)
    outcomes: dict[str, int] = {}
    for i in range(10_000):
        # 10,000 manifests in 100 s of the device's clock, each under a new version (the signature
        # does not matter: the payload was refused already, it is only read).
        forged["body"]["version"] = i + 1
        outcome = reports.consider(canonical(forged), "untrusted_operator", i / 100)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # BURST at once, then one per minute: 100 s refill one more.
    assert outcomes == {"sent": BURST + 1, "rate_limited": 10_000 - BURST - 1}
    assert len(sent) == BURST + 1
    remembered = json.loads(str(state.record(RECORD)))
    assert len(remembered) == BURST + 1 <= REMEMBERED


def test_reported_refusals_are_remembered_across_a_restart_and_the_memory_is_bounded(tmp_path: Path) -> None:
    reports, _sent, state = reporter(tmp_path)
    first = wire(version=5)
    assert reports.consider(first, "expired", 0.0) == "sent"
    state.close()
    again, sent_again, state = reporter(tmp_path)
    assert again.consider(first, "expired", 0.0) == "repeated"  # the stored manifest judged again
    assert sent_again == []
    # The memory keeps the newest REMEMBERED keys (time enough for the bucket to refill).
    for i in range(REMEMBERED):
        assert again.consider(wire(version=100 + i), "expired", 60.0 * (i + 1)) == "sent"
    assert len(json.loads(str(state.record(RECORD)))) == REMEMBERED
    assert again.consider(first, "expired", 1e6) == "sent"  # forgotten: the oldest went first
    state.close()


def test_an_unreadable_memory_is_empty(tmp_path: Path) -> None:
    state = StateStore.open(tmp_path / "state.sqlite3")
    for junk in ("not json", json.dumps({"a": 1}), json.dumps([["stable", "7", "expired"], [1, 2]])):
        state.set_record(RECORD, junk)
        sent: list[Deploy] = []
        reports = RefusalReports(state, sent.append, FACTS, now_s=0.0)
        assert reports.consider(wire(version=7), "expired", 0.0) == "sent"
    state.close()
