"""`edgeproof coordinator run`: MQTT v5 in, batched commits, verdicts out, ack after commit.

Threads: paho's network loop receives messages (``manual_ack=True``: paho sends no PUBACK
by itself) and puts them on a queue with the coordinator's receive time; the main thread
takes batches (up to ``batch_max`` messages or ``batch_ms``), commits each in one
transaction (:func:`agent.coordinator.batch.commit_batch`), publishes the verdicts and
only then acknowledges the batch's messages to the broker.  A crash before the commit
costs a redelivery, which the stored chain absorbs as ``duplicate``; a database outage
stops the loop before the ack, retrying with backoff, so the broker keeps the messages.

Once a second the main thread also runs the slot work (:func:`agent.coordinator.slots.tick`:
the slot's beacon and challenges when this process wins the slot, missed deadlines), and
scores the answers whose reference run finished: the runs themselves happen on the
:class:`~agent.coordinator.reference.ReferenceRunner` thread, so ingest and acks keep flowing.

With ``[http] listen`` set, a daemon thread serves the dashboard, ``/api/summary``,
``/metrics`` and ``/healthz`` (:mod:`agent.coordinator.http_app`) from a read-only connection
of its own; the main thread feeds :class:`~agent.coordinator.metrics.CoordinatorMetrics`
after each committed batch, tick and score.

SIGTERM (or SIGINT) drains: what was received is committed and acknowledged, the
liveness record is closed, the HTTP thread is stopped, and the process exits 0.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import random
import signal
import socket
import threading
import time
import uuid
from types import FrameType
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from solders.keypair import Keypair

from agent.coordinator import challenge_rows, slots
from agent.coordinator.batch import BatchResult, Inbound, SignedVerdict, commit_batch
from agent.coordinator.config import CoordinatorConfig
from agent.coordinator.ingest import Policy
from agent.coordinator.metrics import CoordinatorMetrics
from agent.coordinator.payouts import PayoutHook
from agent.coordinator.reference import ModelStore, ReferenceJob, ReferenceResult, ReferenceRunner
from agent.coordinator.registry import models_folder
from agent.coordinator.store import StorageUnavailableError, Store, now_ms
from agent.errors import TransportError
from agent.protocol.topics import Topics
from agent.transport.mqtt import tls_context

if TYPE_CHECKING:  # imported when serving: starlette and uvicorn stay unloaded with listen = ""
    from agent.coordinator.http_app import Dashboard
    from agent.coordinator.http_server import HttpServer

log = logging.getLogger("edgeproof.coordinator")


class CoordinatorService:
    def __init__(
        self,
        config: CoordinatorConfig,
        keypair: Keypair,
        store: Store,
        policy: Policy,
        models: ModelStore | None = None,
        payouts: PayoutHook | None = None,
    ) -> None:
        self.config = config
        self.payouts = payouts
        self._last_reconcile = 0.0
        self.keypair = keypair
        self.signer = str(keypair.pubkey())
        self.store = store
        self.policy = policy
        self.topics = Topics(config.mqtt.topic_prefix)
        self.run_id = uuid.uuid4().hex
        self._inbox: queue.Queue[Inbound] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._generation = 0
        # Verdict publishes acknowledged by the broker (paho's thread appends mids; no lock
        # is taken there: paho calls on_publish holding its own message mutex).
        self._acked_mids: collections.deque[int] = collections.deque()
        self._verdict_mids: dict[int, int] = {}  # mid -> verdict seq (main thread only)
        self._published: list[int] = []  # verdict seqs to mark in the next transaction
        self.counts: collections.Counter[str] = collections.Counter()
        self.models = models if models is not None else ModelStore(models_folder(config))
        self._reference: ReferenceRunner | None = None
        self._rng = random.SystemRandom()
        self._last_slot = -1
        self._client = self._make_client()
        self.metrics = CoordinatorMetrics()
        self.metrics.inbox(self._inbox.qsize)
        self._http: tuple[HttpServer, Dashboard] | None = None  # while [http] listen serves

    # --- MQTT ----------------------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        mqtt = self.config.mqtt
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        password = mqtt.resolve_password()
        if mqtt.username is not None:
            client.username_pw_set(mqtt.username, password)
        context = tls_context(mqtt)
        if context is not None:
            client.tls_set_context(context)
        client.reconnect_delay_set(int(max(1, mqtt.reconnect_min_s)), int(max(1, mqtt.reconnect_max_s)))
        client.max_inflight_messages_set(mqtt.max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.warning("mqtt_refused", extra={"reason": str(rc)})
            return
        self._generation += 1
        subs = self.topics.coordinator_subscriptions(self.config.coordinator.shared_group or None)
        client.subscribe(subs)
        self._connected.set()
        log.info(
            "mqtt_connected",
            extra={"generation": self._generation, "session_present": bool(flags.session_present)},
        )

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        failed = [str(rc) for rc in rcs if rc.is_failure]
        if failed:
            log.error("mqtt_subscribe_refused", extra={"reasons": failed})
        else:
            log.info("mqtt_subscribed", extra={"filters": len(rcs)})

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("mqtt_disconnected", extra={"reason": str(rc)})

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._inbox.put(Inbound(msg.topic, bytes(msg.payload), now_ms(), msg.mid, msg.qos, self._generation))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._acked_mids.append(mid)

    def _connect(self) -> None:
        mqtt = self.config.mqtt
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = mqtt.session_expiry_s
        props.ReceiveMaximum = self.config.coordinator.receive_maximum
        try:
            self._client.connect(mqtt.host, mqtt.port, mqtt.keepalive_s, clean_start=False, properties=props)
        except OSError as exc:
            raise TransportError(f"cannot connect to the broker at {mqtt.host}:{mqtt.port}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(mqtt.connect_timeout_s):
            self._client.loop_stop()
            raise TransportError(
                f"the broker at {mqtt.host}:{mqtt.port} did not accept the connection within "
                f"{mqtt.connect_timeout_s} s"
            )

    # --- the loop ------------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self._stop.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self._with_retry(lambda: self._start_run())
        try:
            self._start_http()
        except BaseException:
            self._abandon_run()
            raise
        try:
            self._connect()
        except BaseException:
            self._abandon_run()
            raise
        self._republish()
        self._reference = ReferenceRunner(self.models, self.config.challenges.reference_threads)
        self._with_retry(self._resume_pending)
        self._reconcile(resend=True)  # an earlier run's vouchers: closed from chain state, or sent again
        log.info(
            "coordinator_started",
            extra={"signer": self.signer, "storage": self.store.dialect.name, "run_id": self.run_id},
        )
        last_touch = time.monotonic()
        last_tick = 0.0
        while not self._stop.is_set():
            batch = self._collect(timeout=0.2)
            if batch:
                self._process(batch)
                last_touch = time.monotonic()
            elif time.monotonic() - last_touch >= self.config.ingest.liveness_s:
                self._touch()
                last_touch = time.monotonic()
            if time.monotonic() - last_tick >= 1.0 or self._slot_changed():
                self._tick()
                last_tick = time.monotonic()
            self._score_finished()
            if time.monotonic() - self._last_reconcile >= self.config.payout.reconcile_s:
                self._reconcile()
            self._take_published()  # counts verdicts the broker acknowledged, also when idle
        self._drain()
        return 0

    def _abandon_run(self) -> None:
        """Startup failed: close the liveness record and everything opened so far."""
        with contextlib.suppress(StorageUnavailableError), self.store.transaction():
            self.store.stop_run(self.run_id, now_ms())
        self.store.close()
        self._stop_http()

    def _start_http(self) -> None:
        if not self.config.http.listen:
            return
        from agent.coordinator.http_app import start_dashboard  # starlette/uvicorn only when serving

        self.metrics.info.info(
            {"signer": self.signer, "storage": self.store.dialect.name, "run_id": self.run_id}
        )
        self._http = start_dashboard(self.config, self.metrics.registry, mode="service")

    def _stop_http(self) -> None:
        if self._http is not None:
            server, dashboard = self._http
            server.stop()
            dashboard.close()
            self._http = None

    # --- payouts ----------------------------------------------------------------------------------

    def _reconcile(self, *, resend: bool = False) -> None:
        """Outstanding vouchers against the chain (at start, then every ``reconcile_s``); at start the
        ones still outstanding are sent again (a run killed between commit and publish sent none)."""
        self._last_reconcile = time.monotonic()
        payouts, found = self.payouts, list[tuple[str, bytes]]()
        if payouts is None:
            return
        self._with_retry(
            lambda: self.metrics.observe_reconcile(payouts.reconcile(self.store, now_ms=now_ms()))
        )
        if resend and self._with_retry(lambda: found.extend(payouts.outstanding(self.store))) and found:
            for topic, wire in found:
                self._client.publish(topic, wire, qos=1)
            self.counts["vouchers_sent"] += len(found)
            self.metrics.vouchers_sent.inc(len(found))
            log.info("vouchers_resent", extra={"count": len(found)})

    def _publish_vouchers(self, result: BatchResult) -> None:
        for topic, wire in result.vouchers:
            self._client.publish(topic, wire, qos=1)
            self.counts["vouchers_sent"] += 1
        if result.breaker_tripped:
            self.metrics.payout_breaker_open.set(1)

    # --- beacons, challenges, reference runs ------------------------------------------------------

    def _slot_changed(self) -> bool:
        return slots.slot_of(now_ms(), self.config.beacons.slot_ms) != self._last_slot

    def _tick(self) -> None:
        try:
            result = slots.tick(
                self.store,
                self.keypair,
                self.topics,
                now_ms=now_ms(),
                slot_ms=self.config.beacons.slot_ms,
                challenges=self.config.challenges,
                rng=self._rng,
                missed_before_ms=self._oldest_waiting_ms(),
            )
        except StorageUnavailableError as exc:
            self._unavailable(exc)
            return
        self._last_slot = result.slot
        self.metrics.observe_tick(result)
        if result.beacon is not None:
            self._client.publish(result.beacon.topic, result.beacon.wire, qos=1, retain=True)
            self.counts["beacons_issued"] += 1
            log.info("beacon_issued", extra={"slot": result.slot, "challenges": len(result.challenges)})
        for out in result.challenges:
            self._client.publish(out.topic, out.wire, qos=1)
            self.counts["challenges_issued"] += 1
        self._publish_verdicts(result.verdicts)
        self.counts["challenges_missed"] += len(result.verdicts)

    def _oldest_waiting_ms(self) -> int | None:
        """The ingest stamp of the oldest message received and not committed yet (the inbox is FIFO)."""
        with self._inbox.mutex:
            return self._inbox.queue[0].ingest_ms if self._inbox.queue else None

    def _publish_verdicts(self, verdicts: list[SignedVerdict]) -> None:
        for verdict in verdicts:
            info = self._client.publish(verdict.topic, verdict.wire, qos=1)
            self._verdict_mids[info.mid] = verdict.seq

    def _resume_pending(self) -> None:
        """Answers committed by an earlier run whose reference run never finished."""
        assert self._reference is not None
        for row in challenge_rows.pending(self.store):
            self._reference.submit(ReferenceJob(row.id, row.model_sha256, row.nonce))

    def _score_finished(self) -> None:
        if self._reference is None:
            return
        for result in self._reference.results():

            def attempt(result: ReferenceResult = result) -> None:
                verdict = slots.score(
                    self.store,
                    self.keypair,
                    self.topics,
                    challenge_id=result.challenge_id,
                    reference=result.sketch,
                    error=result.error,
                    tolerance_of=self.models.tolerance,
                    now_ms=now_ms(),
                )
                if verdict is not None:
                    self._publish_verdicts([verdict])
                    self.counts["challenges_scored"] += 1
                    self.metrics.observe_scored(verdict)

            self._with_retry(attempt)

    def _collect(self, timeout: float) -> list[Inbound]:
        try:
            first = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return []
        batch = [first]
        ingest = self.config.ingest
        deadline = time.monotonic() + ingest.batch_ms / 1000
        while len(batch) < ingest.batch_max:
            left = deadline - time.monotonic()
            try:
                batch.append(self._inbox.get(timeout=left) if left > 0 else self._inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _take_published(self) -> list[int]:
        while self._acked_mids:
            seq = self._verdict_mids.pop(self._acked_mids.popleft(), None)
            if seq is not None:
                self._published.append(seq)
                self.metrics.verdicts_published.inc()
        return list(self._published)

    def _process(self, batch: list[Inbound]) -> None:
        started = time.monotonic()
        result: BatchResult | None = None
        commit_s = 0.0  # the attempt that committed, not the retries before it

        def attempt() -> None:
            nonlocal result, commit_s
            published = self._take_published()
            tried = time.monotonic()
            result = commit_batch(
                self.store,
                batch,
                policy=self.policy,
                keypair=self.keypair,
                topics=self.topics,
                now_ms=now_ms(),
                published=published,
                run_id=self.run_id,
                payouts=self.payouts,
            )
            commit_s = time.monotonic() - tried
            del self._published[: len(published)]

        if not self._with_retry(attempt) or result is None:
            return  # stopped while the database was down: nothing acknowledged, the broker keeps it
        self.metrics.observe_batch(result, commit_s)
        self._publish_verdicts(result.verdicts)
        self._publish_vouchers(result)
        if self._reference is not None:
            for challenge_id, sha, nonce in result.references:
                self._reference.submit(ReferenceJob(challenge_id, sha, nonce))
        for item in batch:
            if item.qos > 0 and item.generation == self._generation:
                self._client.ack(item.mid, item.qos)
        accepted = sum(1 for o in result.outcomes if o.row.accepted)
        for outcome in result.outcomes:
            self.counts["accepted" if outcome.row.accepted else f"rejected.{outcome.row.reason}"] += 1
        log.info(
            "batch_committed",
            extra={
                "messages": len(batch),
                "accepted": accepted,
                "rejected": len(batch) - accepted,
                "verdicts": len(result.verdicts),
                "ms": round((time.monotonic() - started) * 1000, 1),
            },
        )

    def _with_retry(self, action: Any) -> bool:
        """Run ``action`` until the database takes it; False if asked to stop meanwhile."""
        ingest = self.config.ingest
        delay = ingest.retry_min_s
        while True:
            try:
                action()
                return True
            except StorageUnavailableError as exc:
                self.metrics.storage_unavailable.inc()
                log.warning("storage_unavailable", extra={"error": exc.message, "retry_s": delay})
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2, ingest.retry_max_s)
            with contextlib.suppress(StorageUnavailableError):
                self.store.reconnect()

    def _start_run(self) -> None:
        with self.store.transaction():
            self.store.start_run(self.run_id, self.signer, socket.gethostname(), os.getpid(), now_ms())

    def _touch(self) -> None:
        try:
            with self.store.transaction():
                self.store.touch_run(self.run_id, now_ms())
        except StorageUnavailableError as exc:
            self._unavailable(exc)

    def _unavailable(self, exc: StorageUnavailableError) -> None:
        self.metrics.storage_unavailable.inc()
        log.warning("storage_unavailable", extra={"error": exc.message})
        with contextlib.suppress(StorageUnavailableError):
            self.store.reconnect()

    def _republish(self) -> None:
        """Verdicts committed by an earlier run but never acknowledged by the broker."""
        pending = self.store.unpublished_verdicts(self.signer)
        for seq, topic, raw in pending:
            info = self._client.publish(topic, raw, qos=1)
            self._verdict_mids[info.mid] = seq
        if pending:
            log.info("verdicts_republished", extra={"count": len(pending)})

    def _drain(self) -> None:
        """After SIGTERM: commit and acknowledge what was received, close the liveness record."""
        self._stop.clear()  # let the retry loop work while draining; a second signal stops it
        signal.signal(signal.SIGTERM, self.request_stop)
        while True:
            batch = self._collect(timeout=0.05)
            if not batch:
                break
            self._process(batch)
        if self._reference is not None:
            # Answers whose reference run is under way are scored now if it ends soon; otherwise
            # they stay ``pending`` and the next start resumes them.
            wait_until = time.monotonic() + 10.0
            while not self._reference.idle() and time.monotonic() < wait_until:
                self._score_finished()
                time.sleep(0.05)
            self._reference.stop()
        deadline = time.monotonic() + 2.0
        while len(self._verdict_mids) > len(self._acked_mids) and time.monotonic() < deadline:
            time.sleep(0.02)
        published = self._take_published()

        def close_run() -> None:
            with self.store.transaction():
                self.store.mark_published(self.signer, published, now_ms())
                self.store.stop_run(self.run_id, now_ms())

        closed = self._with_retry(close_run)
        self._stop.set()
        self._client.disconnect()
        self._client.loop_stop()
        self.store.close()
        self._stop_http()
        if self.payouts is not None:
            self.payouts.close()
        log.info(
            "coordinator_stopped",
            extra={"run_id": self.run_id, "liveness_closed": closed, **dict(self.counts)},
        )
