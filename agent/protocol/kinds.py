"""One table per fact: every message kind's schema, origin, chaining, bound, topic and priority.

Adding a kind means adding one :class:`KindSpec` row here (and its body model in
:mod:`agent.protocol.messages`).  Everything else -- the envelope's size bounds,
the topic layout, what a device or a coordinator subscribes to, the outbox's
drop priority, the capture verifier's topic check -- is derived from this table.

Columns:

* ``body``: the strict pydantic model of the envelope's ``body``.
* ``origin``: who signs it: ``device``, ``coordinator`` or ``operator`` (fleet manifests).
* ``chained``: advances the signer's hash chain (``status`` is side-band: it carries the
  chain head and does not advance it, so it can be the MQTT last will).
* ``max_bytes``: bound on the canonical wire encoding, ``sig`` included.
* ``scope`` / ``channel``: the topic: ``device`` kinds live on
  ``{prefix}/dev/{dev}/{channel}``; ``beacon`` on ``{prefix}/beacon``; ``manifest`` on
  ``{prefix}/fleet/manifest/{channel}`` (the channel is the manifest's own).
* ``retained``: published with the MQTT retain flag.
* ``priority``: the device outbox's drop order when it is full (``low`` goes first).
* ``cosigned``: the envelope may carry co-signatures of other keys over its signed bytes
  (``cosigs``, k-of-n operator trust, ADR 0025); every other kind refuses the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.protocol.messages import (
    Beacon,
    Challenge,
    ChallengeResponse,
    Claim,
    Deploy,
    Heartbeat,
    Manifest,
    Proof,
    Receipt,
    RewardRoot,
    Status,
    Verdict,
    Voucher,
)
from agent.validation import Strict

Origin = Literal["device", "coordinator", "operator"]
Scope = Literal["device", "beacon", "manifest", "rewards"]
Priority = Literal["low", "normal", "high"]


@dataclass(frozen=True)
class KindSpec:
    kind: str
    body: type[Strict]
    origin: Origin
    chained: bool
    max_bytes: int
    scope: Scope
    #: Device topic channel (``scope == "device"``); None for beacon, manifest and rewards.
    channel: str | None
    retained: bool
    priority: Priority
    cosigned: bool = False


_TABLE: tuple[KindSpec, ...] = (
    #        kind                  body               origin         chained bytes scope      channel      retain priority
    KindSpec("beacon", Beacon, "coordinator", True, 1024, "beacon", None, True, "normal"),
    KindSpec("heartbeat", Heartbeat, "device", True, 2048, "device", "hb", False, "low"),
    KindSpec("proof", Proof, "device", True, 8192, "device", "proof", False, "high"),
    KindSpec("challenge", Challenge, "coordinator", True, 1024, "device", "challenge", False, "normal"),
    KindSpec(
        "challenge_response", ChallengeResponse, "device", True, 2048, "device", "response", False, "high"
    ),
    KindSpec("verdict", Verdict, "coordinator", True, 2048, "device", "verdict", False, "normal"),
    KindSpec("claim", Claim, "device", True, 1024, "device", "claim", False, "high"),
    KindSpec("voucher", Voucher, "coordinator", True, 6144, "device", "voucher", False, "normal"),
    KindSpec("receipt", Receipt, "device", True, 1024, "device", "receipt", False, "high"),
    KindSpec("reward_root", RewardRoot, "coordinator", False, 1024, "rewards", None, True, "normal"),
    KindSpec("status", Status, "device", False, 1024, "device", "status", True, "normal"),
    KindSpec("deploy", Deploy, "device", True, 1024, "device", "deploy", False, "normal"),
    KindSpec("manifest", Manifest, "operator", True, 6144, "manifest", None, True, "normal", cosigned=True),
)

#: kind -> its row.
SPECS: dict[str, KindSpec] = {spec.kind: spec for spec in _TABLE}

# --- views derived from the table (never edit these by hand) ------------------------------------

KINDS: tuple[str, ...] = tuple(SPECS)
BODIES: dict[str, type[Strict]] = {s.kind: s.body for s in _TABLE}
ORIGIN: dict[str, Origin] = {s.kind: s.origin for s in _TABLE}
SIDEBAND_KINDS: frozenset[str] = frozenset(s.kind for s in _TABLE if not s.chained)
#: Kinds whose envelope may carry co-signatures (``cosigs``).
COSIGNED_KINDS: frozenset[str] = frozenset(s.kind for s in _TABLE if s.cosigned)
#: Maximum size in bytes of the canonical wire encoding (envelope with ``sig``) per kind.
MAX_BYTES: dict[str, int] = {s.kind: s.max_bytes for s in _TABLE}
#: device topic channel -> kind, and back.
CHANNEL_KIND: dict[str, str] = {s.channel: s.kind for s in _TABLE if s.channel is not None}
KIND_CHANNEL: dict[str, str] = {kind: channel for channel, kind in CHANNEL_KIND.items()}
#: Device channels each side publishes on (the other side subscribes to them).
DEVICE_PUBLISHES: tuple[str, ...] = tuple(
    s.channel for s in _TABLE if s.channel is not None and s.origin == "device"
)
COORDINATOR_PUBLISHES: tuple[str, ...] = tuple(
    s.channel for s in _TABLE if s.channel is not None and s.origin == "coordinator"
)
RETAINED_CHANNELS: frozenset[str] = frozenset(s.channel for s in _TABLE if s.channel and s.retained)
#: Kinds a device accepts from the network (everything not signed by a device).
DEVICE_INBOUND: frozenset[str] = frozenset(s.kind for s in _TABLE if s.origin != "device")
#: Kinds a coordinator ingests (everything a device signs).
COORDINATOR_INBOUND: frozenset[str] = frozenset(s.kind for s in _TABLE if s.origin == "device")


def priority_of(kind: str) -> Priority:
    """The outbox priority of ``kind`` (``normal`` for anything the table does not know)."""
    spec = SPECS.get(kind)
    return spec.priority if spec is not None else "normal"
