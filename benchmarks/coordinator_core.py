"""Coordinator core: verify + classify + store heartbeats in-process, against raw ed25519 verify.

    .venv/bin/python benchmarks/coordinator_core.py [--messages N] [--devices D] [--rounds R] [--json]

No broker.  The same pre-signed heartbeats (``--devices`` enrolled devices, round-robin, each on
its own chain, each quoting a beacon the database holds) go through:

* ``raw_verify``: ``solders`` ``Signature.verify`` alone over the exact signed bytes of those
  messages (``DOMAIN + canonical(envelope without sig)``); one sample before and one after every
  core round, the median is the reference;
* ``core``: the real ingest path, :func:`agent.coordinator.batch.commit_batch` in batches of
  ``--batch`` messages (the coordinator's ``batch_max`` default): ``check_inbound`` (parse,
  signature, schema, registry, the stored chain), the coordinator's policy checks (clock skew,
  beacon freshness), the message row, the chain head, one signed verdict per message on the
  coordinator chain, one transaction per batch.  Once per round on each backend, each round on
  a fresh database: a SQLite WAL file (``--synchronous``, FULL by default as in the shipped
  config) and a schema of a real PostgreSQL server started on a free loopback port (the test
  server: ``fsync=off``, so its figures leave out the disk).

Goal: core / raw verify >= 0.6, per backend.  After the timed rounds one more, untimed-for-the-
ratio pass per backend runs with perf_counter sections around the path's functions (exclusive
time: a nested section pauses its parent) and prints where the time goes: parse (strict JSON,
envelope keys, base58 keys), verify (signed-bytes encoding, ``Signature.verify``, sha256),
schema (pydantic body), registry / chain / policy lookups, building the row, verdict signing,
row writes, BEGIN/COMMIT.  The bound is the phase that takes the most time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coordinator_load import (
    COORDINATOR_SEED,
    ROOT,
    Databases,
    Load,
    make_load,
    median_spread,
    prepare_store,
    raw_verify_rate,
)
from solders.keypair import Keypair

import agent.coordinator.chain_view as chain_view
import agent.coordinator.ingest as ingest
import agent.protocol.envelope as envelope
import agent.protocol.inbound as inbound
from agent.coordinator.batch import Inbound, commit_batch
from agent.coordinator.ingest import Policy
from agent.coordinator.registry import model_classes
from agent.coordinator.store import Store
from agent.profiles import load_profiles
from agent.protocol.chain import ChainSigner
from agent.protocol.topics import Topics

START_MS = 1_760_000_000_000
GOAL = 0.6


def make_policy(load: Load) -> Policy:
    """The shipped defaults, with ``beacon_max_age_slots`` covering the pre-signed load's span."""
    return Policy(
        clock_skew_ms=30_000,
        beacon_max_age_slots=max(2, len(load.slots) + 1),
        late_window_seqs=1024,
        profiles=load_profiles(),
        model_classes=model_classes(ROOT / "models"),
    )


def inbound_items(load: Load) -> list[Inbound]:
    """What the MQTT thread hands the batcher: topic, payload, the coordinator's receive time."""
    return [
        Inbound(topic, wire, ts + 5, mid=i + 1)
        for i, ((topic, wire), ts) in enumerate(zip(load.messages, load.ts, strict=True))
    ]


def open_fresh(databases: Databases, backend: str, load: Load, synchronous: str) -> Store:
    url, path = databases.url(backend)
    store = Store.open(database_url=url, sqlite_path=path, synchronous=synchronous)
    prepare_store(store, load, enrolled_ms=load.ts[0] - 1000)
    return store


def run_core(store: Store, load: Load, items: list[Inbound], policy: Policy, batch: int) -> tuple[float, int]:
    """``commit_batch`` over every item; (messages per second, accepted)."""
    keypair = Keypair.from_seed(COORDINATOR_SEED)
    topics = Topics()
    run_id = "bench-core"
    with store.transaction():
        store.start_run(run_id, str(keypair.pubkey()), "bench", 0, items[0].ingest_ms)
    accepted = 0
    start = time.perf_counter()
    for lo in range(0, len(items), batch):
        chunk = items[lo : lo + batch]
        result = commit_batch(
            store,
            chunk,
            policy=policy,
            keypair=keypair,
            topics=topics,
            now_ms=chunk[-1].ingest_ms,
            run_id=run_id,
        )
        accepted += sum(1 for o in result.outcomes if o.row.accepted)
    elapsed = time.perf_counter() - start
    return len(items) / elapsed, accepted


# ------------------------------------------------------------------ where the time goes


class Sections:
    """Exclusive wall time per named section of the path (a nested section pauses its parent)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []
        self._patched: list[tuple[Any, str, Any]] = []

    def _enter(self, name: str) -> None:
        now = time.perf_counter()
        if self._stack:
            top = self._stack[-1]
            self.totals[top[0]] += now - top[1]
        self._stack.append([name, now])
        self.calls[name] += 1

    def _exit(self) -> None:
        now = time.perf_counter()
        name, since = self._stack.pop()
        self.totals[name] += now - since
        if self._stack:
            self._stack[-1][1] = now

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._enter(name)
            try:
                return original(*args, **kwargs)
            finally:
                self._exit()

        setattr(owner, attr, timed)
        self._patched.append((owner, attr, original))

    def wrap_execute(self) -> None:
        """BEGIN / COMMIT statements of ``Store.execute`` as their own section."""
        original = Store.execute

        def execute(store: Store, sql: str, params: Any = ()) -> Any:
            if sql == "COMMIT" or sql == store.dialect.begin:
                self._enter("begin_commit")
                try:
                    return original(store, sql, params)
                finally:
                    self._exit()
            return original(store, sql, params)

        Store.execute = execute  # type: ignore[method-assign]
        self._patched.append((Store, "execute", original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._patched):
            setattr(owner, attr, original)
        self._patched.clear()


#: (section, what it covers) in report order.
SECTIONS: list[tuple[str, str]] = [
    ("parse", "strict JSON, envelope keys and types, canonical size, base58 key/sig decode"),
    ("verify", "signed-bytes encoding + Signature.verify + sha256 (verify_parsed minus schema)"),
    ("schema", "pydantic body validation"),
    ("prefetch", "registry rows + chain heads of the batch's devices (a few SELECTs per batch)"),
    ("registry", "device lookup (from the prefetch; SELECT devices when missed)"),
    ("chain", "stored chain: head (locked), seq lookup, ChainVerifier"),
    ("policy", "clock skew, beacon lookups (SELECT beacons)"),
    ("classify_other", "topic check, rows and verdict info, rest of classify"),
    ("verdict_sign", "verdict body + ChainSigner.next (encode, ed25519 sign, sha256)"),
    ("store_write", "INSERT message/verdicts, UPDATE heads, liveness, coordinator head (sending)"),
    ("db_wait", "fetching results: waiting for the database's replies (PostgreSQL: the pipeline)"),
    ("begin_commit", "BEGIN / COMMIT (SQLite: WAL append, fsync with FULL)"),
    ("batch_other", "commit_batch's own loop, unattributed"),
]

#: The brief's four groups (plus the verdicts the coordinator signs).
GROUPS = {
    "parse_validate": ("parse", "schema", "classify_other"),
    "verify": ("verify",),
    "chain_policy": ("prefetch", "registry", "chain", "policy"),
    "store": ("store_write", "db_wait", "begin_commit"),
    "verdict_sign": ("verdict_sign",),
    "other": ("batch_other",),
}


@contextmanager
def instrumented() -> Iterator[Sections]:
    sections = Sections()
    sections.wrap(inbound, "parse_envelope", "parse")
    sections.wrap(inbound, "verify_parsed", "verify")
    sections.wrap(envelope, "validate_body", "schema")
    sections.wrap(Store, "device", "registry")
    sections.wrap(chain_view.StoredChain, "observe", "chain")
    sections.wrap(ingest, "_policy_check", "policy")
    sections.wrap(ingest, "classify", "classify_other")
    sections.wrap(ChainSigner, "next", "verdict_sign")
    import agent.coordinator.batch as batch_module

    sections.wrap(batch_module, "_verdict_body", "verdict_sign")
    sections.wrap(batch_module, "classify", "classify_other")
    sections.wrap(Store, "prefetch", "prefetch")
    sections.wrap(Store, "_fetch", "db_wait")
    for name in (
        "insert_message_later",
        "insert_verdicts",
        "_flush_heads",
        "set_head",
        "insert_verdict",
        "set_coordinator_head",
        "coordinator_head",
        "touch_run",
        "mark_published",
    ):
        sections.wrap(Store, name, "store_write")
    sections.wrap_execute()
    sections.wrap(batch_module, "commit_batch", "batch_other")
    try:
        yield sections
    finally:
        sections.restore()


def profile_pass(
    store: Store, load: Load, items: list[Inbound], policy: Policy, batch: int
) -> dict[str, Any]:
    import agent.coordinator.batch as batch_module

    keypair = Keypair.from_seed(COORDINATOR_SEED)
    topics = Topics()
    with store.transaction():
        store.start_run("bench-profile", str(keypair.pubkey()), "bench", 0, items[0].ingest_ms)
    with instrumented() as sections:
        start = time.perf_counter()
        for lo in range(0, len(items), batch):
            chunk = items[lo : lo + batch]
            batch_module.commit_batch(
                store,
                chunk,
                policy=policy,
                keypair=keypair,
                topics=topics,
                now_ms=chunk[-1].ingest_ms,
                run_id="bench-profile",
            )
        wall = time.perf_counter() - start
    per_msg_us = {k: v / len(items) * 1e6 for k, v in sections.totals.items()}
    share = {k: v / wall for k, v in sections.totals.items()}
    groups = {g: sum(share.get(s, 0.0) for s in names) for g, names in GROUPS.items()}
    return {
        "wall_s": round(wall, 3),
        "rate_instrumented_per_s": round(len(items) / wall, 1),
        "us_per_message": {name: round(per_msg_us.get(name, 0.0), 1) for name, _ in SECTIONS},
        "share": {name: round(share.get(name, 0.0), 3) for name, _ in SECTIONS},
        "groups": {g: round(v, 3) for g, v in groups.items()},
        "calls_per_message": {k: round(v / len(items), 2) for k, v in sorted(sections.calls.items())},
    }


# ------------------------------------------------------------------ main


def bound_of(profile: dict[str, Any]) -> str:
    name, share = max(profile["share"].items(), key=lambda kv: kv[1])
    about = dict(SECTIONS)[name]
    return f"{name} ({share:.0%} of the path: {about})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3000, help="heartbeats per round (default 3000)")
    parser.add_argument(
        "--devices", type=int, default=1000, help="enrolled devices sending them (default 1000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="core rounds per backend (default 3)")
    parser.add_argument("--batch", type=int, default=200, help="messages per transaction (default 200)")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql (default both)"
    )
    parser.add_argument(
        "--synchronous", choices=("FULL", "NORMAL"), default="FULL", help="SQLite durability (default FULL)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the instrumented pass")
    parser.add_argument("--dir", default=None, help="folder for the database files (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in ("sqlite", "postgresql") for b in backends):
        parser.error("--backends takes sqlite and/or postgresql")
    if args.messages < 1 or args.devices < 1 or args.rounds < 1 or args.batch < 1:
        parser.error("--messages, --devices, --rounds and --batch must be at least 1")

    load = make_load(args.messages, args.devices, START_MS)
    items = inbound_items(load)
    policy = make_policy(load)
    workdir = Path(tempfile.mkdtemp(prefix="coordinator-core-", dir=args.dir))
    databases = Databases(workdir)
    raw: list[float] = [raw_verify_rate(load.verify_items)]
    results: dict[str, Any] = {}
    try:
        for backend in backends:
            rates: list[float] = []
            for _ in range(args.rounds):
                store = open_fresh(databases, backend, load, args.synchronous)
                try:
                    rate, accepted = run_core(store, load, items, policy, args.batch)
                finally:
                    store.close()
                if accepted != len(items):
                    sys.stderr.write(
                        f"error: {backend}: only {accepted} of {len(items)} heartbeats accepted\n"
                    )
                    return 1
                rates.append(rate)
                raw.append(raw_verify_rate(load.verify_items))
            entry: dict[str, Any] = {"core_per_s": median_spread(rates)}
            if not args.no_profile:
                store = open_fresh(databases, backend, load, args.synchronous)
                try:
                    entry["profile"] = profile_pass(store, load, items, policy, args.batch)
                finally:
                    store.close()
            results[backend] = entry
    finally:
        databases.close()
        shutil.rmtree(workdir, ignore_errors=True)

    raw_median = statistics.median(raw)
    report: dict[str, Any] = {
        "messages": args.messages,
        "devices": args.devices,
        "batch": args.batch,
        "rounds": args.rounds,
        "synchronous": args.synchronous,
        "postgres_fsync": "off (test server)",
        "mean_wire_bytes": round(load.wire_bytes / len(load.messages), 1),
        "raw_verify_per_s": median_spread(raw),
        "goal": GOAL,
        "backends": {},
    }
    for backend, entry in results.items():
        ratio = entry["core_per_s"]["median"] / raw_median
        entry["ratio_core_over_raw_verify"] = round(ratio, 4)
        entry["goal_met"] = ratio >= GOAL
        if "profile" in entry:
            entry["bound"] = bound_of(entry["profile"])
        report["backends"][backend] = entry
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    print_report(report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    raw = report["raw_verify_per_s"]
    print(
        f"Coordinator core, {report['messages']} heartbeats from {report['devices']} devices "
        f"(mean {report['mean_wire_bytes']} B), batches of {report['batch']}, SQLite synchronous="
        f"{report['synchronous']}, PostgreSQL fsync off"
    )
    print(f"  raw Signature.verify       {raw['median']:9,.0f} msg/s  (median of {raw['samples']})")
    for backend, entry in report["backends"].items():
        core = entry["core_per_s"]
        verdict = "met" if entry["goal_met"] else "MISSED"
        print(f"  core, {backend:<10}         {core['median']:9,.0f} msg/s  (median of {core['samples']})")
        print(
            f"  ratio core/raw, {backend:<10} {entry['ratio_core_over_raw_verify']:9.3f}   "
            f"(goal >= {report['goal']}: {verdict})"
        )
        profile = entry.get("profile")
        if profile is None:
            continue
        print(
            f"    where the time goes ({backend}, instrumented pass at "
            f"{profile['rate_instrumented_per_s']:,.0f} msg/s), us per message:"
        )
        for name, about in SECTIONS:
            print(
                f"      {name:<15} {profile['us_per_message'][name]:7.1f} us  {profile['share'][name]:5.1%}  {about}"
            )
        groups = ", ".join(f"{g} {v:.0%}" for g, v in profile["groups"].items())
        print(f"    groups: {groups}")
        print(f"    bound: {entry['bound']}")


if __name__ == "__main__":
    sys.exit(main())
