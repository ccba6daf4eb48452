"""Signed coordinator-side messages for the daemon rig's tests (tests/support/daemon_rig.py).

* ``coordinator_envelope`` signs a body as the pinned coordinator (or any other signer);
* ``bodies`` is one valid body of each coordinator kind (beacon, challenge, verdict, voucher)
  addressed to a device;
* ``manifest`` is a release of the shipped model on a channel, for every device;
* ``forged`` re-serialises an envelope with a valid-looking signature over other bytes.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from solders.keypair import Keypair

from agent.inference.cards import load_card
from agent.protocol.envelope import GENESIS_PREV, Envelope, build_envelope
from agent.protocol.messages import Beacon, Challenge, Manifest, Verdict, Voucher
from tests.support.daemon_rig import COORDINATOR, MODEL, ROGUE, now_ms


def coordinator_envelope(kind: str, body: Any, signer: Keypair = COORDINATOR, seq: int = 1) -> Envelope:
    prev = GENESIS_PREV if seq == 1 else "ab" * 32
    return build_envelope(signer, kind, body, seq=seq, prev=prev, ts=now_ms())


def bodies(dev: str, model_sha: str) -> dict[str, Any]:
    """A valid body of each coordinator kind addressed to ``dev``."""
    now = now_ms()
    return {
        "beacon": Beacon(slot=5, nonce="11" * 32, time_ms=now, slot_ms=30_000),
        "challenge": Challenge(
            device=dev, nonce="22" * 32, model_sha256=model_sha, deadline_ms=now + 120_000
        ),
        "verdict": Verdict(device=dev, ref_kind="proof", ref_seq=1, ref_hash="33" * 32, accepted=True),
        "voucher": Voucher(
            device=dev,
            claim_id="44" * 16,
            owner=str(ROGUE.pubkey()),
            mint=str(COORDINATOR.pubkey()),
            amount=1,
            decimals=6,
            transaction=base64.b64encode(b"\x01" * 64).decode(),
            blockhash=str(ROGUE.pubkey()),
            last_valid_block_height=1,
            epoch=1,
            epoch_amount=1,
            cumulative=1,
            paid=0,
            proof=[],
        ),
    }


def manifest(version: int, *, channel: str = "stable", expires_ms: int | None = None) -> Manifest:
    """A release of the shipped model on ``channel``, for every device (not installed: no updater yet)."""
    card = load_card(str(MODEL)).card
    return Manifest.model_validate(
        {
            "channel": channel,
            "version": version,
            "model_id": card.id,
            "model_version": card.version,
            "model": "model.onnx",
            "card": "model.toml",
            "artifacts": [
                {
                    "name": "model.onnx",
                    "url": "https://127.0.0.1/m.onnx",
                    "sha256": card.sha256,
                    "length": 10,
                },
                {"name": "model.toml", "url": "https://127.0.0.1/m.toml", "sha256": "cd" * 32, "length": 10},
            ],
            "expires_ms": now_ms() + 3_600_000 if expires_ms is None else expires_ms,
            "stages": [10_000],
            "stage": 0,
        }
    )


def forged(env: Envelope) -> bytes:
    """The envelope with a valid-looking signature over other bytes."""
    raw = dict(env.raw)
    raw["sig"] = str(COORDINATOR.sign_message(b"something else"))
    return json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
