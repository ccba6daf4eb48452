"""The store's per-transaction reads and deferred writes (the ingest hot path), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from agent.coordinator.batch import Inbound, commit_batch
from agent.coordinator.store import Head, MessageRow, StorageUnavailableError, Store
from agent.protocol.envelope import verify_envelope
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
SLOT = NOW // SLOT_MS
POLICY = ingest_policy()


def _plain_newest(store: Store, at_ms: int) -> int | None:
    row = store.one("SELECT MAX(slot) FROM beacons WHERE issued_ms <= ?", (at_ms,))
    return None if row is None or row[0] is None else int(row[0])


def test_newest_beacon_inside_a_transaction_equals_the_full_query_for_every_time(store: Store) -> None:
    # 20 beacons, issued at their slot's start: more than the few the transaction reads at once.
    add_beacons(store, range(SLOT - 19, SLOT + 1))
    times = [(SLOT - 25) * SLOT_MS, (SLOT - 19) * SLOT_MS - 1]
    times += [(SLOT + d) * SLOT_MS + off for d in range(-19, 2) for off in (-1, 0, 1)]
    expected = [_plain_newest(store, at) for at in times]
    assert expected[0] is None and expected[-1] == SLOT and expected[3] == SLOT - 19
    with store.transaction():
        assert [store.newest_beacon_slot(at) for at in times] == expected
    assert [store.newest_beacon_slot(at) for at in times] == expected  # outside a transaction too


def test_prefetched_heads_and_devices_and_heads_written_at_commit(store: Store) -> None:
    devices = [Device(device_key(n)) for n in range(1, 6)]
    for d in devices:
        enroll_direct(store, d.keypair)
    stranger = Device(device_key(9)).id
    with store.transaction():
        store.prefetch([d.id for d in devices] + [stranger])
        assert store.device(stranger) is None
        assert [store.device(d.id).id for d in devices] == [d.id for d in devices]  # type: ignore[union-attr]
        assert store.head(devices[0].id, lock=True) == Head(0, "0" * 64)
        store.set_head(devices[0].id, Head(3, "ab" * 32, ((1, 2),)), NOW)
        assert store.head(devices[0].id, lock=True) == Head(3, "ab" * 32, ((1, 2),))  # this transaction's
    assert store.head(devices[0].id) == Head(3, "ab" * 32, ((1, 2),))  # written when it committed
    with pytest.raises(RuntimeError), store.transaction():
        store.set_head(devices[1].id, Head(7, "cd" * 32), NOW)
        raise RuntimeError("rolled back")
    assert store.head(devices[1].id) == Head(0, "0" * 64)


def test_every_verdict_names_the_message_it_judges(store: Store) -> None:
    """Message ids come back late (pipelined on PostgreSQL): each verdict still points at its own row."""
    add_beacons(store, range(SLOT - 2, SLOT + 1))
    devices = [Device(device_key(n)) for n in range(1, 9)]
    for d in devices:
        enroll_direct(store, d.keypair)
    items = []
    for round_ in range(3):
        for d in devices:
            env = d.heartbeat(SLOT, NOW + round_)
            items.append(Inbound(T.hb(d.id), env.wire, NOW + 10))
    items.append(items[3])  # a redelivery inside the batch: duplicate, no verdict
    result = commit_batch(store, items, policy=POLICY, keypair=COORD, topics=T, now_ms=NOW + 10)
    assert [o.row.reason for o in result.outcomes].count("duplicate") == 1
    assert sum(o.row.accepted for o in result.outcomes) == 24
    rows = store.rows(
        "SELECT v.raw, m.hash, m.dev, m.seq FROM verdicts v JOIN messages m ON m.id = v.message_id ORDER BY v.seq"
    )
    assert len(rows) == 24
    for raw, digest, dev, seq in rows:
        verdict = verify_envelope(bytes(raw)).body
        assert (verdict.ref_hash, verdict.device, verdict.ref_seq) == (digest, dev, seq)  # type: ignore[attr-defined]
    assert [store.head(d.id).seq for d in devices] == [3] * 8  # type: ignore[union-attr]


def test_a_failing_statement_in_a_batch_is_storage_unavailable_and_rolls_everything_back(
    store: Store,
) -> None:
    device = Device(device_key(1))
    enroll_direct(store, device.keypair)
    row = MessageRow(
        dev=device.id,
        topic=T.hb(device.id),
        kind="heartbeat",
        seq=1,
        chain_seq=1,
        hash="ab" * 32,
        ts=NOW,
        ingest_ms=NOW,
        accepted=True,
        reason=None,
        detail=None,
        raw=b"{}",
    )
    # The second row breaks the unique (dev, chain_seq) index: on PostgreSQL the error comes back
    # with the pipeline's replies, after the statement was sent; either way the batch is retried.
    with pytest.raises(StorageUnavailableError), store.transaction():
        store.insert_message_later(row)
        store.insert_message_later(row)
    assert store.messages() == []
    assert store.insert_message(row) > 0  # the connection is usable again
