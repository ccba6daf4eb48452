"""``edgeproof state recover``: put a device whose state file is unreadable back on its chain.

1. Refuse while the daemon runs (its status file names its pid).
2. If the state file opens cleanly there is nothing to recover; nothing is moved.
3. Otherwise move it (and its ``-wal``/``-shm``) aside under a timestamped name: kept, never
   deleted.
4. Salvage every queued row still readable (:mod:`agent.device.salvage`); each payload is
   re-verified (:func:`agent.protocol.envelope.verify_envelope`, signed by this device's key)
   before it is queued again, in its old order; what fails is counted as lost, by reason.
5. Restore the chain head, manifest versions and signer seqs: the state copy, what the damaged
   file still holds and the newest salvaged envelope, whichever is highest (never backwards).
   So the daemon's next envelope is the old head's successor, or a gap: never seq 1.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.device.salvage import Salvage, salvage
from agent.device.state_copy import copy_path
from agent.device.state_store import StateStore
from agent.device.status import pid_alive, read_status
from agent.errors import CorruptStateError, EdgeproofError, ProtocolError, StorageError
from agent.identity import device_id, load_keypair
from agent.protocol.envelope import Envelope, verify_envelope
from agent.transport.outbox import Outbox
from agent.transport.sqlite_file import SqliteFile

log = logging.getLogger(__name__)

_SIDE_FILES = ("-wal", "-shm")


@dataclass
class Recovery:
    state_file: str
    healthy: bool = False
    problem: str | None = None
    moved_to: list[str] = field(default_factory=list)
    #: kind -> envelopes queued again.
    kept: Counter[str] = field(default_factory=Counter)
    #: reason (agent/protocol/reasons.py) -> rows not queued again: the verifier's reason
    #: (``bad_signature``, ``unknown_device``, ...), ``wrong_kind``, ``malformed`` (a row whose
    #: columns are not a queued row's), ``not_requeued`` (the outbox bound), ``unreadable_state``.
    lost: Counter[str] = field(default_factory=Counter)
    read_errors: int = 0
    #: Where a chain head was found: ``copy``, ``damaged_file``, ``newest_salvaged`` -> seq.
    head_sources: dict[str, int] = field(default_factory=dict)
    restored: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state_file": self.state_file,
            "healthy": self.healthy,
            "problem": self.problem,
            "moved_to": list(self.moved_to),
            "kept": dict(sorted(self.kept.items())),
            "kept_total": sum(self.kept.values()),
            "lost": dict(sorted(self.lost.items())),
            "lost_total": sum(self.lost.values()),
            "read_errors": self.read_errors,
            "head_sources": dict(self.head_sources),
            "restored": self.restored,
            "warnings": list(self.warnings),
        }


def refuse_if_running(state_dir: Path) -> None:
    try:
        status = read_status(state_dir)
    except StorageError:
        status = None  # an unreadable status file names no pid
    if status is None or not status.get("running"):
        return
    pid = int(status.get("pid") or 0)
    if pid > 0 and pid != os.getpid() and pid_alive(pid):
        raise EdgeproofError(
            f"the daemon is running (pid {pid}, per {state_dir / 'status.json'}); refusing to touch its state",
            hint="stop it first (systemctl stop edgeproof, or SIGTERM that pid), then run state recover again",
        )


def _healthy(config: AgentConfig) -> str | None:
    """None if the state file opens cleanly as the daemon opens it; else why not."""
    path = Path(config.outbox.path)
    if not path.exists():
        return None
    try:
        file = SqliteFile.open(path, synchronous=config.outbox.synchronous)
    except CorruptStateError as exc:
        return exc.message
    try:
        StateStore(file, copy_path=copy_path(Path(config.device.state_dir)))
        Outbox(config.outbox, file=file, reserve_bytes=0).close()
    except CorruptStateError as exc:
        return exc.message
    finally:
        file.close()
    return None


def _move_aside(path: Path, stamp: str) -> list[str]:
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    moved = []
    for suffix in ("", *_SIDE_FILES):
        source = path.with_name(path.name + suffix)
        if source.exists():
            dest = target.with_name(target.name + suffix)
            os.replace(source, dest)
            moved.append(str(dest))
    return moved


def _verified(found: Salvage, dev: str, out: Recovery) -> list[tuple[Envelope, int, bool, int, str]]:
    kept: list[tuple[Envelope, int, bool, int, str]] = []
    for row in found.rows:
        try:
            env = verify_envelope(row.payload, expected_signer=dev)
        except ProtocolError as exc:
            out.lost[exc.reason] += 1
            continue
        if env.kind != row.kind:
            out.lost["wrong_kind"] += 1
            continue
        kept.append((env, row.qos, row.retain, row.priority, row.topic))
    return kept


def recover_state(config: AgentConfig) -> Recovery:
    state_dir = Path(config.device.state_dir)
    path = Path(config.outbox.path)
    out = Recovery(state_file=str(path))
    refuse_if_running(state_dir)
    problem = _healthy(config)
    if problem is None:
        out.healthy = True
        return out
    out.problem = problem
    dev = device_id(load_keypair(config.device.key))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out.moved_to = _move_aside(path, stamp)
    log.warning("state file moved aside", extra={"from": str(path), "to": out.moved_to})
    found = salvage(Path(out.moved_to[0]))
    out.read_errors = found.read_errors
    if found.unreadable is not None:
        out.lost["unreadable_state"] += 1
    if found.malformed_ids:
        out.lost["malformed"] += len(found.malformed_ids)
    kept = _verified(found, dev, out)
    file = SqliteFile.open(path, synchronous=config.outbox.synchronous)
    try:
        store = StateStore(file, copy_path=copy_path(state_dir))
        copy_seq, _ = store.chain_head()
        if copy_path(state_dir).exists():
            out.head_sources["copy"] = copy_seq
        if found.chain_head is not None:
            out.head_sources["damaged_file"] = found.chain_head[0]
        chained = [env.seq for env, *_ in kept if not env.sideband]
        if chained:
            out.head_sources["newest_salvaged"] = max(chained)
        _restore(store, found, kept)
        outbox = Outbox(config.outbox, file=file)
        for env, qos, retain, priority, topic in kept:
            row = outbox.put(
                topic,
                env.wire,
                qos=qos,
                retain=retain,
                kind=env.kind,
                priority=priority,
                seq=None if env.sideband else env.seq,
            )
            if row is None:
                out.lost["not_requeued"] += 1
            else:
                out.kept[env.kind] += 1
        outbox.close()
        snap = store.snapshot()
        out.restored = {
            "chain": snap["chain"],
            "manifest_versions": snap["manifest_versions"],
            "signer_seqs": snap["signer_seqs"],
            "nonces": snap["nonces"],
            "copy": snap["copy"],
        }
        if snap["chain"]["seq"] == 0:
            out.warnings.append(
                "no chain head was found (no state copy, none in the damaged file, no salvaged envelope): the "
                "next envelope has seq 1; if this device ever sent envelopes the coordinator will see a fork"
            )
    finally:
        file.close()
    return out


def _restore(store: StateStore, found: Salvage, kept: list[tuple[Envelope, int, bool, int, str]]) -> None:
    """Raise the store to what the damaged file still shows (the store never moves backwards)."""
    if found.chain_head is not None:
        store.set_chain_head(*found.chain_head)
    chained = [env for env, *_ in kept if not env.sideband]
    if chained:
        newest = max(chained, key=lambda env: env.seq)
        store.set_chain_head(newest.seq, newest.hash)
    for channel, (version, envelope) in found.manifests.items():
        store.accept_manifest(channel, version, envelope)
    for signer, seq in found.signers.items():
        store.set_signer_seq(signer, seq)
    for nonce, until_ms in found.nonces.items():
        store.remember_nonce(nonce, until_ms)
    for key, value in found.records.items():
        if store.record(key) is None:
            store.set_record(key, value)
