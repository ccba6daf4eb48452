"""Shared parts of the coordinator benchmarks: pre-signed heartbeat load, registry, databases.

Not a benchmark itself.  ``coordinator_core.py`` and ``coordinator_mqtt.py`` import it:

* :func:`make_load`: ``devices`` enrolled device keys (fixed seeds), each with its own chain of
  heartbeats (round-robin, so consecutive messages belong to different devices, as on a real
  broker), every heartbeat quoting a beacon the coordinator database holds;
* :func:`prepare_store`: enroll the devices and insert those beacons into a fresh database;
* :class:`Databases`: a fresh SQLite file or a fresh schema of one real PostgreSQL server
  (``tests/support/postgres.py``, on a free loopback port), started on first use and stopped
  (only that server) by :meth:`Databases.close`.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from solders.keypair import Keypair  # noqa: E402
from solders.pubkey import Pubkey  # noqa: E402
from solders.signature import Signature  # noqa: E402

from agent.coordinator.store import DeviceRecord, Store  # noqa: E402
from agent.protocol.binding import sign_binding  # noqa: E402
from agent.protocol.chain import ChainSigner  # noqa: E402
from agent.protocol.envelope import signed_bytes  # noqa: E402
from agent.protocol.topics import Topics  # noqa: E402

OWNER = str(Keypair.from_seed(bytes([201]) * 32).pubkey())
COORDINATOR_SEED = bytes([202]) * 32
SLOT_MS = 60_000
#: Heartbeat period of a device (the agent's default).
HEARTBEAT_MS = 30_000


def device_key(n: int) -> Keypair:
    """Device ``n``'s key (a fixed seed: the same load in every run)."""
    return Keypair.from_seed(hashlib.sha256(b"edgeproof-bench-device-%d" % n).digest())


def beacon_nonce(slot: int) -> str:
    return hashlib.sha256(b"bench-beacon-%d" % slot).hexdigest()


@dataclass(frozen=True)
class Load:
    """Pre-signed heartbeats: ``(topic, wire)`` in publish order, with what verifies them."""

    messages: list[tuple[str, bytes]]
    devices: list[Keypair]
    #: ``(pubkey, signature, signed bytes)`` of each message, for the raw verify rate.
    verify_items: list[tuple[Pubkey, Signature, bytes]]
    #: Beacon slots the heartbeats quote (the database must hold them).
    slots: range
    #: Each message's ``ts`` (device time).
    ts: list[int]

    @property
    def wire_bytes(self) -> int:
        return sum(len(w) for _, w in self.messages)


def make_load(count: int, devices: int, start_ms: int, topics: Topics | None = None) -> Load:
    """``count`` heartbeats from ``devices`` devices, device ``i % devices`` at position ``i``.

    Device time runs from ``start_ms`` at the agent's heartbeat period, each heartbeat quoting
    the beacon of its slot, so every one is accepted by a coordinator whose clock is at or after
    the last ``ts`` (clock skew) and whose ``beacon_max_age_slots`` covers the run.
    """
    topics = topics or Topics()
    keys = [device_key(n) for n in range(devices)]
    signers = [ChainSigner(k) for k in keys]
    messages: list[tuple[str, bytes]] = []
    stamps: list[int] = []
    items: list[tuple[Pubkey, Signature, bytes]] = []
    first_slot = start_ms // SLOT_MS
    last_slot = first_slot
    for i in range(count):
        d = i % devices
        ts = start_ms + (i // devices) * HEARTBEAT_MS
        slot = ts // SLOT_MS
        last_slot = max(last_slot, slot)
        body = {
            "beacon_slot": slot,
            "beacon_nonce": beacon_nonce(slot),
            "uptime_s": (i // devices) * HEARTBEAT_MS // 1000,
            "health": {"cpu_bp": 1000 + d, "mem_bp": 3000, "temp_mc": 51_000, "throttled": False},
        }
        env = signers[d].next("heartbeat", body, ts)
        messages.append((topics.for_kind("heartbeat", env.dev), env.wire))
        stamps.append(ts)
        items.append((env.pubkey, Signature.from_string(env.sig), signed_bytes(env.raw)))
    return Load(messages, keys, items, range(first_slot, last_slot + 1), stamps)


def prepare_store(store: Store, load: Load, enrolled_ms: int, profile: str = "rpi4") -> None:
    """Enroll the load's devices and insert the beacons its heartbeats quote."""
    with store.transaction():
        for key in load.devices:
            binding = sign_binding(key, OWNER, enrolled_ms)
            store.enroll(
                DeviceRecord(binding.device, OWNER, profile, ("bench",), binding.ts, binding.sig, enrolled_ms)
            )
        for slot in load.slots:
            store.add_beacon(slot, beacon_nonce(slot), slot * SLOT_MS, SLOT_MS, slot * SLOT_MS)


def raw_verify_rate(items: Sequence[tuple[Pubkey, Signature, bytes]]) -> float:
    """``Signature.verify`` alone over the exact signed bytes: messages per second (all must verify)."""
    import time

    start = time.perf_counter()
    ok = 0
    for pubkey, sig, data in items:
        ok += sig.verify(pubkey, data)
    elapsed = time.perf_counter() - start
    if ok != len(items):
        raise RuntimeError(f"only {ok} of {len(items)} signatures verified")
    return len(items) / elapsed


def median_spread(samples: Sequence[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(samples), 1),
        "samples": [round(s, 1) for s in samples],
        "min": round(min(samples), 1),
        "max": round(max(samples), 1),
    }


class Databases:
    """Fresh databases for one benchmark run: SQLite files under ``workdir``, PostgreSQL schemas."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._pg: Any = None

    def url(self, backend: str) -> tuple[str, Path]:
        """``(database_url, sqlite_path)`` of a fresh database (url "" for SQLite)."""
        name = uuid.uuid4().hex[:12]
        sqlite_path = self.workdir / f"bench-{name}.sqlite3"
        if backend == "sqlite":
            return "", sqlite_path
        if self._pg is None:
            from tests.support.postgres import PostgresServer

            server = PostgresServer()
            self._pg = server
            server.start()
        return str(self._pg.create_schema(f"b_{name}")), sqlite_path

    @property
    def postgres_pid(self) -> int | None:
        return None if self._pg is None else int(self._pg.pid)

    def close(self) -> None:
        if self._pg is not None:
            self._pg.cleanup()
            self._pg = None


if __name__ == "__main__":
    print("coordinator_load.py is the shared part of coordinator_core.py and coordinator_mqtt.py; run those")
