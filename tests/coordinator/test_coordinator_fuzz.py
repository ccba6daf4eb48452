"""Fuzz the coordinator's ingest path: generated and mutated envelopes and raw bytes through commit_batch.

Every input -- arbitrary bytes, valid envelopes of every device kind from a registered device
with bytes flipped, cut or values replaced, on the right, another or a random topic -- must be
recorded as exactly one row, accepted or rejected with a catalogued reason, with a verdict that
verifies whenever one is sent.  Nothing may raise.  Derandomized, so a failure reproduces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.coordinator.batch import Inbound, commit_batch
from agent.coordinator.store import Store
from agent.protocol.envelope import verify_envelope
from agent.protocol.reasons import is_reason
from agent.protocol.topics import Topics
from tests.support.coordinator import (
    COORD,
    NOW,
    SLOT_MS,
    Device,
    add_beacons,
    dev_id,
    device_key,
    enroll_direct,
    ingest_policy,
)

# CPU-bound: runs on the one xdist worker that takes the "cpu" group, never beside another of them.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]
T = Topics()
SLOT = NOW // SLOT_MS
#: 1,000 examples of 10 inputs each, judged as one batch: the issue's 10,000 inputs, with the
#: batch path (several messages per transaction) exercised as the service runs it.
EXAMPLES = 1_000
PER_BATCH = 10
POLICY = ingest_policy(late_window_seqs=64)
DEVICE = Device(device_key(91))


def _seeds() -> list[tuple[str, bytes]]:
    d = DEVICE
    out = [(T.hb(d.id), d.heartbeat(SLOT, NOW).wire) for _ in range(3)]
    out.append((T.proof(d.id), d.proof(NOW - 60_000, NOW, 600).wire))
    out.append(
        (T.status(d.id), d.chain.sideband("status", {"state": "online", "agent_version": "1.0"}, NOW).wire)
    )
    response = {"nonce": "ab" * 32, "model_sha256": "cd" * 32, "sketch": list(range(32)), "latency_us": 5}
    out.append((T.device(d.id, "response"), d.chain.next("challenge_response", response, NOW).wire))
    out.append(
        (T.device(d.id, "claim"), d.chain.next("claim", {"claim_id": "0" * 32, "owner": d.id}, NOW).wire)
    )
    return out


SEEDS = _seeds()
_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=80),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=4),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
)


@st.composite
def _inputs(draw: Any) -> tuple[str, bytes]:
    topic, payload = draw(st.sampled_from(SEEDS))
    how = draw(st.sampled_from(["raw", "flip", "cut", "replace", "body", "topic", "as_is"]))
    if how == "raw":
        payload = draw(st.binary(max_size=600))
    elif how == "flip":
        data = bytearray(payload)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        payload = bytes(data)
    elif how == "cut":
        payload = payload[: draw(st.integers(0, len(payload) - 1))]
    elif how in ("replace", "body"):
        doc = json.loads(payload)
        target = doc["body"] if how == "body" else doc
        key = draw(st.sampled_from(sorted(target)))
        target[key] = draw(_VALUES)
        payload = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    elif how == "topic":
        topic = draw(
            st.one_of(st.text(max_size=60), st.sampled_from([T.hb(dev_id(device_key(92))), T.beacon()]))
        )
    return topic, payload


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    opened = Store.open(sqlite_path=folder / "c.sqlite3", synchronous="NORMAL")
    enroll_direct(opened, DEVICE.keypair)
    add_beacons(opened, range(SLOT - 3, SLOT + 1))
    return opened


def test_every_input_is_recorded_once_with_a_catalogued_reason(store: Store) -> None:
    judged: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cases=st.lists(_inputs(), min_size=PER_BATCH, max_size=PER_BATCH))
    def judge(cases: list[tuple[str, bytes]]) -> None:
        before = store.one("SELECT COUNT(*) FROM messages")
        batch = [Inbound(topic, payload, NOW) for topic, payload in cases]
        result = commit_batch(store, batch, policy=POLICY, keypair=COORD, topics=T, now_ms=NOW)
        after = store.one("SELECT COUNT(*) FROM messages")
        assert before is not None and after is not None and after[0] == before[0] + len(cases)
        assert len(result.outcomes) == len(cases)
        for outcome in result.outcomes:
            row = outcome.row
            assert row.accepted or (row.reason is not None and is_reason(row.reason)), row
            if row.accepted and row.reason is not None:
                assert row.reason == "chain_gap"
        for verdict in result.verdicts:
            assert verify_envelope(verdict.wire, expected_signer=str(COORD.pubkey())).kind == "verdict"
        judged.append(len(cases))

    judge()
    # Every generated input went through ingest: at least the 10,000.
    assert sum(judged) >= 10_000, sum(judged)
