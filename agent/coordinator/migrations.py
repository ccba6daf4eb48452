"""The coordinator's one versioned schema, applied by numbered migrations.

Each :class:`Migration` is applied once, in order, in its own transaction, and recorded in
``schema_version``.  The SQL is written once for both engines; the few words that differ
(an auto-increment key, a binary column) are ``{id}`` and ``{blob}``, filled in by the
dialect (:mod:`agent.coordinator.dialect`).  Never edit a released migration: add the next one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "registry, messages, chain heads, beacons, coordinator chain, verdicts, liveness",
        (
            # The device registry: who may send, whose rewards go where, which bounds apply.
            """CREATE TABLE devices (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                profile TEXT NOT NULL,
                tags TEXT NOT NULL,
                binding_ts BIGINT NOT NULL,
                binding_sig TEXT NOT NULL,
                enrolled_ms BIGINT NOT NULL
            )""",
            # Each device's chain head as the coordinator accepted it; ``missing`` is a JSON list
            # of [lo, hi] seq ranges reported as gaps and not filled yet.
            """CREATE TABLE chain_heads (
                dev TEXT PRIMARY KEY REFERENCES devices(id),
                seq BIGINT NOT NULL,
                hash TEXT NOT NULL,
                missing TEXT NOT NULL,
                updated_ms BIGINT NOT NULL
            )""",
            # Every message received, accepted or not.  ``hash`` is the envelope hash when the
            # signature verified, else the SHA-256 of the raw bytes.  ``chain_seq`` is set only when the
            # envelope took its place in the device's chain, so the unique index makes a
            # redelivery of an accepted link impossible to store twice.
            """CREATE TABLE messages (
                id {id},
                dev TEXT,
                topic TEXT NOT NULL,
                kind TEXT,
                seq BIGINT,
                chain_seq BIGINT,
                hash TEXT NOT NULL,
                ts BIGINT,
                ingest_ms BIGINT NOT NULL,
                accepted INTEGER NOT NULL,
                reason TEXT,
                detail TEXT,
                raw {blob} NOT NULL,
                win_start_ms BIGINT,
                win_end_ms BIGINT,
                inferences BIGINT,
                beacon_slot BIGINT
            )""",
            "CREATE UNIQUE INDEX messages_chain ON messages (dev, chain_seq)",
            "CREATE INDEX messages_hash ON messages (dev, hash)",
            "CREATE INDEX messages_kind ON messages (dev, kind, accepted)",
            # Beacons this coordinator published (heartbeats must quote a recent one).
            """CREATE TABLE beacons (
                slot BIGINT PRIMARY KEY,
                nonce TEXT NOT NULL,
                time_ms BIGINT NOT NULL,
                slot_ms BIGINT NOT NULL,
                issued_ms BIGINT NOT NULL
            )""",
            # The coordinator key's own chain head (verdicts are chained on it); one row per key,
            # locked by the batch that signs, so several processes never fork it.
            """CREATE TABLE coordinator_chain (
                signer TEXT PRIMARY KEY,
                seq BIGINT NOT NULL,
                hash TEXT NOT NULL
            )""",
            # Signed verdicts: committed with the messages they judge, published afterwards
            # (``published_ms`` NULL until the broker acknowledged it; republished at start).
            """CREATE TABLE verdicts (
                signer TEXT NOT NULL,
                seq BIGINT NOT NULL,
                dev TEXT NOT NULL,
                message_id BIGINT NOT NULL,
                topic TEXT NOT NULL,
                raw {blob} NOT NULL,
                created_ms BIGINT NOT NULL,
                published_ms BIGINT,
                PRIMARY KEY (signer, seq)
            )""",
            "CREATE INDEX verdicts_unpublished ON verdicts (signer, published_ms)",
            # The coordinator's own up intervals (the uptime audit excludes the slots it was down).
            """CREATE TABLE liveness (
                run_id TEXT PRIMARY KEY,
                signer TEXT NOT NULL,
                host TEXT NOT NULL,
                pid INTEGER NOT NULL,
                started_ms BIGINT NOT NULL,
                last_ms BIGINT NOT NULL,
                stopped_ms BIGINT
            )""",
        ),
    ),
    Migration(
        2,
        "issued beacons keep their signed envelope; challenges and their outcomes",
        (
            # The signed beacon as published (its seq on the coordinator's chain).  The slot is the
            # primary key: with N processes the one whose insert wins issues the slot's beacon.
            "ALTER TABLE beacons ADD COLUMN signer TEXT",
            "ALTER TABLE beacons ADD COLUMN seq BIGINT",
            "ALTER TABLE beacons ADD COLUMN raw {blob}",
            # Challenges issued (one per device per slot at most) and how each ended: ``outcome`` is
            # NULL until answered or missed, ``pending`` while the reference run is due, then a
            # catalogued name (``passed``, ``challenge_failed``, ``wrong_model``, ``challenge_late``,
            # ``challenge_missed``, ``unknown_model``).  ``distance`` is the sketch distance scored.
            """CREATE TABLE challenges (
                id {id},
                dev TEXT NOT NULL,
                slot BIGINT NOT NULL,
                nonce TEXT NOT NULL UNIQUE,
                model_sha256 TEXT NOT NULL,
                signer TEXT NOT NULL,
                seq BIGINT NOT NULL,
                hash TEXT NOT NULL,
                issued_ms BIGINT NOT NULL,
                deadline_ms BIGINT NOT NULL,
                raw {blob} NOT NULL,
                outcome TEXT,
                distance DOUBLE PRECISION,
                tolerance DOUBLE PRECISION,
                response_id BIGINT,
                scored_ms BIGINT
            )""",
            "CREATE UNIQUE INDEX challenges_slot ON challenges (dev, slot)",
            "CREATE INDEX challenges_open ON challenges (outcome, deadline_ms)",
        ),
    ),
    Migration(
        3,
        "reward settlements and their allocations",
        (
            # One row per settled epoch (written once, never updated): the Merkle root over its
            # allocations (docs/rewards.md, "Settlement"), the pool, what was allocated, the policy.
            """CREATE TABLE settlements (
                epoch BIGINT PRIMARY KEY,
                root TEXT NOT NULL,
                pool BIGINT NOT NULL,
                total BIGINT NOT NULL,
                policy_hash TEXT NOT NULL,
                settled_ms BIGINT NOT NULL
            )""",
            # Each device's amount in the epoch and its cumulative earned total through it.
            """CREATE TABLE allocations (
                epoch BIGINT NOT NULL REFERENCES settlements(epoch),
                dev TEXT NOT NULL,
                owner TEXT NOT NULL,
                amount BIGINT NOT NULL,
                cumulative BIGINT NOT NULL,
                PRIMARY KEY (epoch, dev)
            )""",
        ),
    ),
    Migration(
        4,
        "indexes for the uptime audit's time ranges",
        (
            # The audit reads an epoch's messages by ingest time and its challenges by issue time.
            "CREATE INDEX messages_ingest ON messages (ingest_ms)",
            "CREATE INDEX challenges_issued ON challenges (issued_ms)",
        ),
    ),
    Migration(
        5,
        "claim vouchers, the payout breaker, published settlement roots",
        (
            # One row per claim answered with a voucher (docs/rewards.md, "Claims").  ``state`` is
            # ``outstanding`` until the signature is seen on chain (``paid``, or ``failed`` when it
            # landed with an error) or its blockhash expired with the signature absent
            # (``released``).  ``raw`` is the signed voucher envelope as published: a repeated claim
            # gets these same bytes.  ``signature`` is the treasury's (the transaction id).
            """CREATE TABLE vouchers (
                claim_id TEXT PRIMARY KEY,
                dev TEXT NOT NULL,
                owner TEXT NOT NULL,
                message_id BIGINT NOT NULL,
                epoch BIGINT NOT NULL,
                amount BIGINT NOT NULL,
                signature TEXT NOT NULL UNIQUE,
                blockhash TEXT NOT NULL,
                last_valid_block_height BIGINT NOT NULL,
                state TEXT NOT NULL,
                topic TEXT NOT NULL,
                raw {blob} NOT NULL,
                issued_ms BIGINT NOT NULL,
                closed_ms BIGINT,
                slot BIGINT,
                receipt_status TEXT,
                receipt_reason TEXT,
                receipt_ms BIGINT
            )""",
            # At most one outstanding voucher per device, whatever the number of processes.
            "CREATE UNIQUE INDEX vouchers_outstanding ON vouchers (dev) WHERE state = 'outstanding'",
            "CREATE INDEX vouchers_dev ON vouchers (dev, state)",
            "CREATE INDEX vouchers_issued ON vouchers (issued_ms)",
            # The payout circuit breaker: one row while tripped (cleared when it closes again).
            """CREATE TABLE payout_breaker (
                id INTEGER PRIMARY KEY,
                tripped_ms BIGINT NOT NULL,
                until_ms BIGINT NOT NULL,
                detail TEXT NOT NULL
            )""",
            # The signed reward_root envelope of each settled epoch as published (retained), and
            # the on-chain memo's signature when one was sent: a second settle re-sends the same.
            """CREATE TABLE settlement_roots (
                epoch BIGINT PRIMARY KEY REFERENCES settlements(epoch),
                raw {blob} NOT NULL,
                memo_signature TEXT,
                published_ms BIGINT NOT NULL
            )""",
        ),
    ),
    Migration(
        6,
        "fleet rollouts: one row per release, each device's newest deploy report, refusal counts",
        (
            # A release's rollout as the controller (edgeproof fleet rollout run) records it: the
            # newest manifest it published for it (``manifest`` is its body JSON), ``state``
            # running | halted | done, the abort rate, the stage timeout and each stage's start.
            """CREATE TABLE rollouts (
                id {id},
                channel TEXT NOT NULL,
                model_id TEXT NOT NULL,
                model_version TEXT NOT NULL,
                model_sha256 TEXT NOT NULL,
                manifest_version BIGINT NOT NULL,
                stage INTEGER NOT NULL,
                state TEXT NOT NULL,
                halt_reason TEXT,
                abort_failure_rate DOUBLE PRECISION NOT NULL,
                stage_timeout_ms BIGINT NOT NULL,
                stage_started TEXT NOT NULL,
                started_ms BIGINT NOT NULL,
                resumed_ms BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL,
                manifest TEXT NOT NULL
            )""",
            "CREATE UNIQUE INDEX rollouts_release ON rollouts (channel, model_id, model_version, model_sha256)",
            # The newest deploy report of each device about a rollout's release (``seq`` is the
            # device chain's seq of that report: a replay is at or below the highest one).
            """CREATE TABLE rollout_reports (
                rollout_id BIGINT NOT NULL REFERENCES rollouts(id),
                dev TEXT NOT NULL,
                state TEXT NOT NULL,
                reason TEXT,
                seq BIGINT NOT NULL,
                at_ms BIGINT NOT NULL,
                PRIMARY KEY (rollout_id, dev)
            )""",
            # Reports the controller refused, by reason (docs/fleet.md, "Status").
            """CREATE TABLE rollout_refusals (
                reason TEXT PRIMARY KEY,
                count BIGINT NOT NULL
            )""",
        ),
    ),
    Migration(
        7,
        "fleet rollouts: each device's newest online/offline status as the controller followed it",
        (
            # From dev/+/status (retained, the device's last will), newest taken: ``at_ms`` is that
            # status envelope's ts (the will's is its connect time, so it is not an order).
            """CREATE TABLE rollout_presence (
                dev TEXT PRIMARY KEY,
                online INTEGER NOT NULL,
                at_ms BIGINT NOT NULL
            )""",
        ),
    ),
)

#: The schema version this code writes and reads.
LATEST = MIGRATIONS[-1].version
