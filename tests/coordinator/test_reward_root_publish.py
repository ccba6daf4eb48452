"""`rewards settle`'s publication of the signed reward_root on a real Mosquitto: retained, the same
bytes every time, never over a newer epoch, and a slot holding garbage is taken back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.commands.rewards_root import publish_root
from agent.coordinator.config import load_coordinator_config
from agent.coordinator.store import Store
from agent.fleet.mqtt_publish import BrokerSession
from agent.protocol.envelope import verify_envelope
from agent.protocol.messages import RewardRoot
from agent.protocol.topics import Topics
from agent.rewards.ledger import load_settlement
from agent.rewards.merkle import Leaf
from agent.rewards.roots import recorded, root_envelope
from tests.support.claims import settle_direct
from tests.support.coordinator import COORD, OWNER, device_key, write_config
from tests.support.mosquitto import MosquittoBroker
from tests.support.reward_merkle_check import root_of

pytestmark = pytest.mark.integration
TOPIC = Topics().reward_root()


def test_the_root_is_published_retained_once_never_over_a_newer_epoch(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    config = load_coordinator_config(write_config(tmp_path / "coord", broker_port=mosquitto.port))
    store = Store.open(sqlite_path=tmp_path / "coord" / "coordinator.sqlite3")
    devs = [str(device_key(210 + i).pubkey()) for i in range(3)]
    now = time.time_ns() // 1_000_000
    settle_direct(store, 3, [Leaf(d, OWNER, 3, 10 * i, 10 * i) for i, d in enumerate(devs)], now)
    settle_direct(store, 4, [Leaf(d, OWNER, 4, 5, 10 * i + 5) for i, d in enumerate(devs)], now + 1)
    three, four = load_settlement(store, 3), load_settlement(store, 4)
    assert three is not None and four is not None

    def held() -> bytes | None:
        with BrokerSession(config.mqtt) as session:
            return session.retained(TOPIC)

    def publish(stored: object) -> str:
        return str(publish_root(config, store, stored, mqtt=True, memo=False, now_ms=now)["mqtt"])  # type: ignore[arg-type]

    assert publish(four) == "published"
    raw = held()
    assert raw is not None and raw == root_envelope(four, COORD).wire
    env = verify_envelope(raw, expected_signer=str(COORD.pubkey()))
    body = env.body
    assert isinstance(body, RewardRoot) and (env.kind, env.seq, env.ts) == ("reward_root", 0, four.settled_ms)
    leaves = [
        {"dev": x.dev, "owner": x.owner, "epoch": 4, "amount": x.amount, "cumulative": x.cumulative}
        for x in four.leaves
    ]
    assert body.root == root_of(leaves).hex() and (body.epoch, body.devices, body.total) == (4, 3, 15)
    assert publish(four) == "unchanged"
    assert publish(three) == "newer_retained"  # an older epoch never replaces the retained root
    assert held() == raw
    record = recorded(store, 4)
    assert record is not None and record.raw == raw
    with BrokerSession(config.mqtt) as session:
        session.publish_retained(TOPIC, b"not an envelope")
    assert publish(four) == "published" and held() == raw
    skipped = publish_root(config, store, four, mqtt=False, memo=False, now_ms=now)
    assert skipped == {"mqtt": "skipped", "memo": "skipped", "memo_signature": None}
    store.close()
