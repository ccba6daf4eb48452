"""Optional Prometheus endpoint of the device daemon (``[metrics] enabled/host/port``).

Nothing is counted twice: a collector reads the daemon's own counters, the outbox statistics
and the transport status at scrape time, so ``/metrics``, ``status.json`` and ``edgeproof
status`` always agree.  The endpoint listens on loopback by default; it exposes no key
material and no data (counts, sizes and the model id only).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from agent.errors import ConfigError

log = logging.getLogger(__name__)

#: Chained kinds a device emits, exposed even when their count is still zero.
EMITTED_KINDS = ("heartbeat", "proof", "challenge_response", "status")


@dataclass(frozen=True)
class Snapshot:
    """What one scrape reports (taken from the daemon under no lock of ours)."""

    device: str
    model_id: str
    model_sha256: str
    agent_version: str
    mode: str
    counters: Mapping[str, int]
    rejected_inbound: Mapping[str, int]
    chain_seq: int
    outbox: Mapping[str, Any]
    transport: Mapping[str, Any]
    #: False when no coordinator key is pinned: every coordinator message is then refused.
    coordinator_pinned: bool = True
    #: The claimer's counts (agent/device/claimer.py): ``counters``, ``refused`` and
    #: ``chain_errors``, each name -> count.
    claims: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


class DaemonCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        try:
            snap = self._snapshot()
        except Exception:  # a failing scrape must never reach the daemon
            log.exception("metrics snapshot failed")
            return []
        return list(_families(snap))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _families(snap: Snapshot) -> Iterable[Metric]:
    c = snap.counters
    info = InfoMetricFamily("edgeproof_device", "Device identity and active model")
    info.add_metric(
        [],
        {
            "device": snap.device,
            "model": snap.model_id,
            "model_sha256": snap.model_sha256,
            "agent_version": snap.agent_version,
            "mode": snap.mode,
        },
    )
    yield info
    yield _counter("edgeproof_inferences", "Inferences run on source frames", c.get("inferences", 0))
    yield _counter("edgeproof_proofs", "Work proofs emitted (signed and queued)", c.get("proof_emitted", 0))
    yield _counter(
        "edgeproof_heartbeats", "Heartbeats emitted (signed and queued)", c.get("heartbeat_emitted", 0)
    )
    yield _counter("edgeproof_challenges_answered", "Challenges answered", c.get("challenges_answered", 0))
    yield _counter(
        "edgeproof_manifests_accepted",
        "Fleet manifests accepted (new versions)",
        c.get("manifests_accepted", 0),
    )
    emitted = CounterMetricFamily(
        "edgeproof_envelopes_emitted", "Envelopes signed and queued, by kind", labels=["kind"]
    )
    lost = CounterMetricFamily(
        "edgeproof_envelopes_lost",
        "Envelopes that could not be stored at all (storage error; the chain did not advance)",
        labels=["kind"],
    )
    kinds = set(EMITTED_KINDS) | {k.rsplit("_", 1)[0] for k in c if k.endswith(("_emitted", "_lost"))}
    for kind in sorted(kinds):
        emitted.add_metric([kind], c.get(f"{kind}_emitted", 0))
        lost.add_metric([kind], c.get(f"{kind}_lost", 0))
    yield emitted
    yield lost
    yield GaugeMetricFamily(
        "edgeproof_chain_seq", "Sequence number of the last chained envelope", snap.chain_seq
    )

    ob = snap.outbox
    yield GaugeMetricFamily("edgeproof_outbox_depth", "Messages waiting in the outbox", ob.get("depth", 0))
    yield GaugeMetricFamily("edgeproof_outbox_bytes", "Bytes waiting in the outbox", ob.get("bytes", 0))
    yield GaugeMetricFamily("edgeproof_outbox_max_bytes", "Configured outbox bound", ob.get("max_bytes", 0))
    yield GaugeMetricFamily(
        "edgeproof_outbox_parked", "Messages the broker refused (parked)", ob.get("parked", 0)
    )
    age = ob.get("oldest_age_ms")
    yield GaugeMetricFamily(
        "edgeproof_outbox_oldest_age_seconds", "Age of the oldest queued message", (age or 0) / 1000
    )
    drops = CounterMetricFamily(
        "edgeproof_outbox_dropped",
        "Messages dropped by the overflow policy or refused, by kind and reason (persistent)",
        labels=["kind", "reason"],
    )
    for kind, reasons in sorted(dict(ob.get("drops", {})).items()):
        for reason, count in sorted(dict(reasons).items()):
            drops.add_metric([kind, reason], count)
    yield drops

    rejected = CounterMetricFamily(
        "edgeproof_inbound_rejected", "Inbound messages rejected, by reason", labels=["reason"]
    )
    for reason, count in sorted(snap.rejected_inbound.items()):
        rejected.add_metric([reason], count)
    yield rejected
    yield from _claim_families(snap.claims)
    yield GaugeMetricFamily(
        "edgeproof_coordinator_pinned",
        "1 when a coordinator key is pinned; 0: every coordinator message is refused (unpinned_coordinator)",
        int(snap.coordinator_pinned),
    )

    tr = snap.transport
    yield GaugeMetricFamily(
        "edgeproof_mqtt_connected", "1 when connected to the broker", int(bool(tr.get("connected")))
    )
    yield _counter(
        "edgeproof_mqtt_published", "PUBLISH packets sent (re-sends included)", tr.get("published", 0)
    )
    yield _counter("edgeproof_mqtt_acked", "Messages acknowledged by the broker", tr.get("acked", 0))
    yield _counter("edgeproof_mqtt_reconnects", "Reconnections to the broker", tr.get("reconnects", 0))
    yield _counter("edgeproof_mqtt_inbound", "Inbound messages received", tr.get("inbound", 0))


class MetricsServer:
    """``/metrics`` over HTTP on ``host:port``, served by a daemon thread."""

    def __init__(self, snapshot: Callable[[], Snapshot], host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(snapshot))
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"metrics endpoint cannot listen on {self.host}:{self.port}: {exc}",
                hint="pick a free [metrics] port, or set [metrics] enabled = false",
            ) from exc
        self.port = int(self._server.server_address[1])
        log.info("metrics endpoint listening", extra={"host": self.host, "port": self.port})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _claim_families(claims: Mapping[str, Mapping[str, int]]) -> Iterable[Metric]:
    counts = claims.get("counters", {})
    for name, doc in (
        ("claims_sent", "Reward claims sent (chained)"),
        ("vouchers_signed", "Vouchers that passed every check and were signed"),
        ("claims_confirmed", "Claims confirmed on chain"),
        ("claims_expired", "Claims whose transaction expired unlanded (a new claim followed)"),
    ):
        yield _counter(f"edgeproof_{name}", doc, counts.get(name, 0))
    refused = CounterMetricFamily(
        "edgeproof_vouchers_refused", "Vouchers refused before signing, by reason", labels=["reason"]
    )
    for reason, count in sorted(claims.get("refused", {}).items()):
        refused.add_metric([reason], count)
    yield refused
    errors = CounterMetricFamily(
        "edgeproof_claim_rpc_errors", "RPC failures met by the claimer, by reason", labels=["reason"]
    )
    for reason, count in sorted(claims.get("chain_errors", {}).items()):
        errors.add_metric([reason], count)
    yield errors
