"""Writes outbox-v1.sqlite3: a schema 1 outbox as the agent before the state store wrote it.

Run once with the *old* code first on the path (the commit before the state store, dbd3e8b):

    git worktree add /tmp/v1 dbd3e8b
    PYTHONPATH=/tmp/v1 python tests/data/state/make_v1_outbox.py tests/data/state/outbox-v1.sqlite3

It queues 5 chained heartbeats (seq 1-5) and a side-band status, acknowledges seq 1-2, and
stores what the daemon stored in the key/value ``state`` table: the chain head, a manifest
version and envelope, and an updater record.  The device key is derived from SEED.
"""

from __future__ import annotations

import sys
from pathlib import Path

from solders.keypair import Keypair

from agent.protocol.chain import ChainSigner
from agent.protocol.messages import Health, Heartbeat, Status
from agent.transport.outbox import Outbox
from agent.transport.settings import OutboxSettings

SEED = bytes(range(32))


def main(target: Path) -> None:
    target.unlink(missing_ok=True)
    signer = ChainSigner(Keypair.from_seed(SEED))
    outbox = Outbox(OutboxSettings(path=str(target)), reserve_bytes=0)
    for i in range(5):
        body = Heartbeat(beacon_slot=0, beacon_nonce="0" * 64, uptime_s=i, health=Health(cpu_bp=1, mem_bp=2))
        env = signer.next("heartbeat", body, 1_700_000_000_000 + i)
        outbox.put(
            f"edgeproof/v1/dev/{signer.dev}/hb",
            env.wire,
            kind="heartbeat",
            state={"seq": env.seq, "prev": env.hash},
        )
    status = Status(state="online", model_id="m", model_sha256="a" * 64, agent_version="0.1.0", profile="p")
    side = signer.sideband("status", status, 1_700_000_000_100)
    outbox.put(f"edgeproof/v1/dev/{signer.dev}/status", side.wire, kind="status", retain=True)
    outbox.ack_many(row.id for row in outbox.pending()[:2])
    outbox.set_state({"manifest.stable.version": 7, "manifest.stable.envelope": '{"stored":1}'})
    outbox.set_state({"deploy.stable.failed_version": 6})
    outbox.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
