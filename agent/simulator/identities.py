"""Deterministic device and owner keys from a seed, and the devices' signed bindings (JSONL).

Device ``i`` of seed ``s`` has the ed25519 seed ``SHA-256("edgeproof-sim:device:" || s || i)``
(``s`` 8 bytes, ``i`` 4 bytes, big-endian), so a run and its enrolment file always agree
and nothing secret has to be stored.  Owners are derived the same way (``owner:``) and
assigned round-robin.  These keys are for simulation only: anyone can derive them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from solders.keypair import Keypair

from agent.protocol.binding import Binding, sign_binding


def _derive(label: bytes, seed: int, index: int) -> Keypair:
    material = b"edgeproof-sim:" + label + b":" + seed.to_bytes(8, "big") + index.to_bytes(4, "big")
    return Keypair.from_seed(hashlib.sha256(material).digest())


def device_keypair(seed: int, index: int) -> Keypair:
    return _derive(b"device", seed, index)


def owner_wallet(seed: int, index: int) -> str:
    return str(_derive(b"owner", seed, index).pubkey())


@dataclass(frozen=True)
class Identity:
    index: int
    keypair: Keypair
    owner: str

    @property
    def dev(self) -> str:
        return str(self.keypair.pubkey())


def identities(seed: int, devices: int, owners: int) -> list[Identity]:
    wallets = [owner_wallet(seed, o) for o in range(min(owners, devices))]
    return [Identity(i, device_keypair(seed, i), wallets[i % len(wallets)]) for i in range(devices)]


def bindings(fleet: list[Identity], ts_ms: int) -> list[Binding]:
    """Each device's binding to its owner, signed by the device key at ``ts_ms``."""
    return [sign_binding(ident.keypair, ident.owner, ts_ms) for ident in fleet]


def write_bindings(path: Path, fleet: list[Identity], ts_ms: int) -> int:
    """One binding document per line (``edgeproof coordinator enroll --from FILE``); the count."""
    docs = bindings(fleet, ts_ms)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(b.document() for b in docs))
    return len(docs)
