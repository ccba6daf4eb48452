"""`rewards settle`'s publication step: the epoch's signed ``reward_root``, retained on MQTT, and
optionally a memo on chain (docs/rewards.md, "Publishing the root")."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from solders.keypair import Keypair

if TYPE_CHECKING:
    from agent.coordinator.config import CoordinatorConfig
    from agent.coordinator.store import Store
    from agent.rewards.ledger import StoredSettlement

log = logging.getLogger(__name__)


def _retained_epoch(payload: bytes | None) -> tuple[int, bytes] | None:
    from agent.errors import ProtocolError
    from agent.protocol.envelope import parse_envelope

    if payload is None:
        return None
    try:
        parsed = parse_envelope(payload)
        epoch = int(parsed.raw["body"]["epoch"]) if parsed.kind == "reward_root" else -1
    except (ProtocolError, KeyError, TypeError, ValueError):
        return None  # whatever holds the slot is not a root: ours replaces it
    return epoch, payload


def publish_mqtt(config: CoordinatorConfig, epoch: int, raw: bytes) -> str:
    """Publish retained unless the slot already holds these bytes or a newer epoch."""
    from agent.fleet.mqtt_publish import BrokerSession
    from agent.protocol.topics import Topics

    topic = Topics(config.mqtt.topic_prefix).reward_root()
    with BrokerSession(config.mqtt) as session:
        held = _retained_epoch(session.retained(topic))
        if held is not None and held[1] == raw:
            return "unchanged"
        if held is not None and held[0] > epoch:
            return "newer_retained"
        session.publish_retained(topic, raw)
    log.info("reward_root_published", extra={"epoch": epoch, "topic": topic})
    return "published"


def send_memo(
    config: CoordinatorConfig, store: Store, stored: StoredSettlement, known: str | None
) -> tuple[str, str]:
    """(outcome, signature) of the root's memo: sent once, confirmed; ``unchanged`` when on chain."""
    from solders.pubkey import Pubkey
    from solders.signature import Signature

    from agent.chain import spl
    from agent.chain.client import ChainClient
    from agent.errors import ConfigError
    from agent.identity import load_keypair
    from agent.rewards.roots import memo_text, record_memo

    payout = config.payout
    if not payout.rpc_url:
        raise ConfigError("--memo needs [payout] rpc_url in the coordinator config")
    treasury: Keypair = load_keypair(payout.treasury_key or config.coordinator.key)
    with ChainClient(payout.rpc_url, timeout_s=payout.rpc_timeout_s, retries=payout.rpc_retries) as client:
        if known is not None and client.status(Signature.from_string(known)) is not None:
            return "unchanged", known
        memo = spl.memo(
            memo_text(stored.epoch, stored.root),
            signers=[treasury.pubkey()],
            program_id=Pubkey.from_string(payout.memo_program),
        )
        signature = str(client.send_and_confirm([memo], [treasury]))
    record_memo(store, stored.epoch, signature)
    log.info("reward_root_memo", extra={"epoch": stored.epoch, "signature": signature})
    return "sent", signature


def publish_root(
    config: CoordinatorConfig, store: Store, stored: StoredSettlement, *, mqtt: bool, memo: bool, now_ms: int
) -> dict[str, Any]:
    """Record (once) and publish the settlement's root; what happened, for the command's output."""
    from agent.identity import load_keypair
    from agent.rewards.roots import record

    if not mqtt and not memo:
        return {"mqtt": "skipped", "memo": "skipped", "memo_signature": None}
    keypair = load_keypair(config.coordinator.key)
    known = record(store, stored, keypair, now_ms)
    out: dict[str, Any] = {"mqtt": "skipped", "memo": "skipped", "memo_signature": known.memo_signature}
    if mqtt:
        out["mqtt"] = publish_mqtt(config, stored.epoch, known.raw)
    if memo:
        out["memo"], out["memo_signature"] = send_memo(config, store, stored, known.memo_signature)
    return out
