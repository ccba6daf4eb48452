"""The daemon's inbound handlers take any payload on any topic: refused by name and counted, or taken.

A real in-process Daemon (real model, real state store; not started, so no broker and no
threads) is fed hostile payloads derived from messages it would accept (signed by its pinned
coordinator and its trusted operator, addressed to it) on each of its five inbound handlers.
Nothing may escape a handler, and every payload the shared check refuses is counted once under
its reason in ``rejected_inbound`` (what ``status`` and ``/metrics`` report).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from solders.keypair import Keypair

from agent.config import load_config
from agent.device.daemon import Daemon
from agent.protocol.inbound import Rejection, check_inbound
from agent.protocol.reasons import is_reason
from tests.support.fuzz import envelope_seeds, payloads
from tests.support.mosquitto import free_port

# CPU-bound: runs on the one xdist worker that takes the "cpu" group, never beside another of them.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "efficientnet-lite0-int8.toml"
DEVICE = Keypair.from_seed(bytes([51]) * 32)
COORD = Keypair.from_seed(bytes([52]) * 32)
OPERATOR = Keypair.from_seed(bytes([53]) * 32)
COSIGNER = Keypair.from_seed(bytes([54]) * 32)
#: Payloads; each goes to all five handlers (5 x 2,500 handler calls).
EXAMPLES = 2_500


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("fuzz-daemon")
    key = tmp / "device-key.json"
    key.write_text(json.dumps(list(bytes(DEVICE))), encoding="utf-8")
    os.chmod(key, 0o600)
    config = tmp / "agent.toml"
    config.write_text(
        f"""
[device]
key = "{key}"
state_dir = "{tmp / "state"}"
profile = "generic-x86_64"
[inference]
model = "{MODEL}"
source = "none"
threads = 1
[coordinator]
pubkey = "{COORD.pubkey()}"
[fleet]
channels = ["stable"]
operator_keys = ["{OPERATOR.pubkey()}", "{COSIGNER.pubkey()}"]
operator_threshold = 2
[mqtt]
host = "127.0.0.1"
port = {free_port()}
""",
        encoding="utf-8",
    )
    d = Daemon(load_config(config, env={}))
    try:
        yield d
    finally:
        d.state.close()
        d.outbox.close()


SEEDS = envelope_seeds(DEVICE, COORD, OPERATOR, model_sha256="cd" * 32, cosigner=COSIGNER)
DEV = str(DEVICE.pubkey())


def _handlers(d: Daemon) -> list[tuple[str, Callable[[str, bytes], None]]]:
    t = d.topics
    return [
        (t.beacon(), d.on_beacon),
        (t.device(DEV, "challenge"), d.on_challenge),
        (t.device(DEV, "verdict"), d.on_verdict),
        (t.device(DEV, "voucher"), d.on_voucher),
        (t.reward_root(), d.on_reward_root),
        (t.manifest("stable"), d.on_manifest),
    ]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=payloads(SEEDS))
def test_every_handler_refuses_by_name_or_takes_it(daemon: Daemon, case: tuple[str | None, bytes]) -> None:
    topic, payload = case
    for own_topic, handler in _handlers(daemon):
        where = topic if topic else own_topic
        before = dict(daemon.rejected_inbound)
        handler(where, payload)  # must not raise
        after = dict(daemon.rejected_inbound)
        grown = {r: after[r] - before.get(r, 0) for r in after if after[r] != before.get(r, 0)}
        assert sum(grown.values()) <= 1, grown
        assert all(is_reason(r) for r in grown), grown
        shared = check_inbound(where, payload, daemon.trust, topics=daemon.topics)
        if isinstance(shared, Rejection):
            assert grown == {shared.reason: 1}
    # Answered challenges are never left to pile up: drain what was taken (answers are real runs).
    daemon._challenges.queue.clear()
