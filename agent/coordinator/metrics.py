"""The coordinator's Prometheus metrics, on a registry of its own (never the global one).

The service feeds them after the fact, from what it already holds: a committed
:class:`~agent.coordinator.batch.BatchResult` (outcomes and per-message judge times), a slot
tick's result, a scored challenge's verdict, a storage outage.  Nothing in the pure ingest
path knows about metrics.  Fleet-wide gauges (devices online, devices registered) are read
from the database at scrape time by :class:`DatabaseGauges`, so every coordinator process of
a shared group and the read-only dashboard report the same value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from agent.coordinator.batch import BatchResult, SignedVerdict
from agent.coordinator.payouts import ReconcileResult
from agent.coordinator.slots import TickResult
from agent.protocol.kinds import SPECS
from agent.protocol.reasons import is_reason

PREFIX = "edgeproof_coordinator"
#: Judge time of one message: microseconds (a heartbeat) to tens of milliseconds (a slow disk).
JUDGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: Commit time of one batch (classify + write + sign verdicts + COMMIT).
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: Challenge outcomes exported even while their count is zero.
CHALLENGE_OUTCOMES = (
    "passed",
    "challenge_failed",
    "wrong_model",
    "challenge_late",
    "challenge_missed",
    "unknown_model",
    "reference_failed",
)


def kind_label(kind: str | None) -> str:
    """The ``kind`` label: the envelope kind, ``unparsed`` for bytes that never parsed.

    Labels stay a bounded set whatever a sender writes: a kind outside the protocol is ``other``.
    """
    if not kind:
        return "unparsed"
    return kind if kind in SPECS else "other"


def reason_label(reason: str | None) -> str:
    """A catalogued reason name, or ``uncatalogued`` (a bug: every refusal has a named reason)."""
    return reason if reason is not None and is_reason(reason) else "uncatalogued"


def verdict_outcome(verdict: SignedVerdict) -> str:
    """The challenge outcome a scoring verdict announces: ``passed`` or its reason."""
    body = json.loads(verdict.wire)["body"]
    reason = body.get("reason")
    return str(reason) if reason else "passed"


class CoordinatorMetrics:
    """Counters, histograms and gauges of one coordinator process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            f"{PREFIX}_messages",
            "Messages committed, by envelope kind and result (accepted or rejected)",
            ["kind", "result"],
            registry=r,
        )
        self.rejections = Counter(
            f"{PREFIX}_rejections", "Messages rejected, by named reason", ["reason"], registry=r
        )
        self.judge_seconds = Histogram(
            f"{PREFIX}_judge_seconds",
            "Time to judge one message (checks, chain, coordinator rules, its row)",
            buckets=JUDGE_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            f"{PREFIX}_batch_commit_seconds",
            "Time to commit one batch (judge every message, sign verdicts, COMMIT)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.challenges = Counter(
            f"{PREFIX}_challenges", "Challenge outcomes recorded by this process", ["outcome"], registry=r
        )
        self.challenges_issued = Counter(
            f"{PREFIX}_challenges_issued", "Challenges issued by this process", registry=r
        )
        self.beacons = Counter(f"{PREFIX}_beacons_issued", "Beacons issued by this process", registry=r)
        self.verdicts_published = Counter(
            f"{PREFIX}_verdicts_published", "Verdicts the broker acknowledged (PUBACK)", registry=r
        )
        self.storage_unavailable = Counter(
            f"{PREFIX}_storage_unavailable",
            "Times the database could not take a transaction (each retry counts)",
            registry=r,
        )
        self.vouchers_sent = Counter(
            f"{PREFIX}_vouchers_sent", "Voucher envelopes published (new or re-sent)", registry=r
        )
        self.vouchers_closed = Counter(
            f"{PREFIX}_vouchers_closed",
            "Outstanding vouchers closed from chain state, by outcome (paid, released, failed)",
            ["outcome"],
            registry=r,
        )
        self.payout_breaker_open = Gauge(
            f"{PREFIX}_payout_breaker_open",
            "1 while the payout circuit breaker refuses claims (payout_paused), else 0",
            registry=r,
        )
        self.info = Info(f"{PREFIX}_build", "This coordinator process", registry=r)
        for closed in ("paid", "released", "failed"):
            self.vouchers_closed.labels(outcome=closed)
        for outcome in CHALLENGE_OUTCOMES:
            self.challenges.labels(outcome=outcome)

    def inbox(self, size: Callable[[], int]) -> None:
        """Export the receive queue's length (messages received, not yet committed)."""
        gauge = Gauge(
            f"{PREFIX}_inbox_messages", "Messages received and not yet committed", registry=self.registry
        )
        gauge.set_function(lambda: float(size()))

    # --- fed by the service ---------------------------------------------------------------------

    def observe_batch(self, result: BatchResult, seconds: float) -> None:
        self.batch_seconds.observe(seconds)
        for outcome, judged in zip(result.outcomes, result.judge_seconds, strict=False):
            self.judge_seconds.observe(judged)
            row = outcome.row
            self.messages.labels(
                kind=kind_label(row.kind), result="accepted" if row.accepted else "rejected"
            ).inc()
            if not row.accepted:
                self.rejections.labels(reason=reason_label(row.reason)).inc()
            if outcome.challenge is not None and outcome.challenge[1] != "pending":
                self.challenges.labels(outcome=outcome.challenge[1]).inc()
        self.vouchers_sent.inc(len(result.vouchers))

    def observe_reconcile(self, result: ReconcileResult) -> None:
        self.payout_breaker_open.set(1 if result.breaker_open else 0)
        self.vouchers_closed.labels(outcome="paid").inc(result.paid)
        self.vouchers_closed.labels(outcome="released").inc(result.released)
        self.vouchers_closed.labels(outcome="failed").inc(result.failed)

    def observe_tick(self, result: TickResult) -> None:
        if result.beacon is not None:
            self.beacons.inc()
        self.challenges_issued.inc(len(result.challenges))
        if result.verdicts:
            self.challenges.labels(outcome="challenge_missed").inc(len(result.verdicts))

    def observe_scored(self, verdict: SignedVerdict) -> None:
        self.challenges.labels(outcome=verdict_outcome(verdict)).inc()


class DatabaseGauges(Collector):
    """Fleet-wide gauges read from the database when scraped.

    ``read`` returns (devices online now, devices registered), or None when the database
    cannot be read: then only ``..._database_readable 0`` is exported (no stale value).
    """

    def __init__(self, read: Callable[[], tuple[int, int] | None]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        values = self._read()
        yield GaugeMetricFamily(
            f"{PREFIX}_database_readable",
            "1 when the last scrape could read the database, else 0",
            value=0 if values is None else 1,
        )
        if values is None:
            return
        online, registered = values
        yield GaugeMetricFamily(
            f"{PREFIX}_devices_online",
            "Registered devices with an accepted heartbeat within [http] online_window_s",
            value=online,
        )
        yield GaugeMetricFamily(f"{PREFIX}_devices_registered", "Devices in the registry", value=registered)

    def describe(self) -> Sequence[Metric]:
        return []
