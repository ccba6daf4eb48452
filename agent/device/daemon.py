"""`edgeproof run`: the device daemon.

One main thread runs the inference loop and everything that touches the model
(work windows, challenges), so single-threaded runtimes (LiteRT) stay safe.
paho's network thread and the transport's publisher/inbound threads never run
inference; inbound challenges are queued for the main loop.

Every outgoing message is signed, chained and committed to the SQLite outbox
together with the chain head (the device state store: same SQLite file, same
transaction; its second copy is written just before) before it is published,
so SIGKILL at any point neither loses an envelope nor forks the chain (ADR
0012).  SIGTERM closes the current window, emits its proof and flushes what the
broker will take.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import SOURCE_NONE, AgentConfig
from agent.device.beacon_guard import BeaconTolerance
from agent.device.challenge_guard import ChallengeGuard, ChallengeLimits
from agent.device.challenges import ChallengeResponder
from agent.device.claim_book import ClaimBook
from agent.device.claimer import Claimer, claim_ops
from agent.device.commitments import CommitmentHasher
from agent.device.control import ControlServer, daemon_ops
from agent.device.control_protocol import socket_path
from agent.device.coordinator_pin import UNPINNED_NOTICE
from agent.device.health import HealthProbe
from agent.device.inbound_handlers import InboundHandlers
from agent.device.manifest_refusals import RefusalReports
from agent.device.manifests import DeviceFacts
from agent.device.metrics import MetricsServer, Snapshot
from agent.device.model_store import ModelStore
from agent.device.rejection_log import RejectionLog
from agent.device.state_copy import copy_path
from agent.device.state_store import StateStore
from agent.device.status import write_status
from agent.device.systemd import Notifier
from agent.device.thermal import ThermalGovernor, ThermalState
from agent.device.updater import ModelUpdater, Swap
from agent.device.window import WorkWindow
from agent.errors import CorruptStateError, EdgeproofError, ProtocolError, SourceError, StorageError
from agent.identity import device_id, load_keypair
from agent.inference.pipeline import Pipeline
from agent.inference.runtime import backend_settings, resolve_profile
from agent.inference.sources import FrameSource, open_source
from agent.protocol.chain import ChainSigner
from agent.protocol.envelope import Envelope
from agent.protocol.inbound import Trust
from agent.protocol.kinds import DEVICE_INBOUND
from agent.protocol.leaf import default_leaf_hash
from agent.protocol.messages import Beacon, Challenge, Deploy, Health, Heartbeat, Status
from agent.protocol.topics import Topics
from agent.transport.mqtt import MqttTransport
from agent.transport.outbox import Outbox
from agent.transport.sqlite_file import SqliteFile

log = logging.getLogger(__name__)

NO_BEACON = "0" * 64
THERMAL_CHECK_S = 5.0
STATUS_EVERY_S = 2.0
#: How often answered nonces past their deadline are forgotten.
NONCE_SWEEP_S = 60.0
#: How often the refusals whose log lines were held back (a flood) are summed up, one line per reason.
REJECTION_LOG_S = 10.0
# A lost source is reopened by the main loop with capped exponential backoff, never by
# sleeping inside read(): heartbeats, windows, watchdog pings and SIGTERM keep running.
SOURCE_RETRY_MIN_S = 1.0
SOURCE_RETRY_MAX_S = 30.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Daemon(InboundHandlers):
    #: The local control socket (started in start(); see agent/device/control.py).
    control: ControlServer | None = None

    def __init__(self, config: AgentConfig, *, root: Path = Path("/"), clock_ms: Callable[[], int] = now_ms):
        self.config = config
        self.clock_ms = clock_ms
        self.state_dir = Path(config.device.state_dir)
        keypair = load_keypair(config.device.key)
        self.dev = device_id(keypair)
        self.profile = resolve_profile(config.device.profile, root)
        inf = config.inference
        self.backend_settings = backend_settings(
            self.profile,
            threads=inf.threads,
            onnx_providers=inf.onnx_providers or None,
            litert_delegates=inf.litert_delegates or None,
            spin_wait=inf.max_fps == 0,  # paced frames: idle workers sleep instead of spinning
            tensorrt_cache=inf.tensorrt_cache,
        )
        # One SQLite file, two owners: the device state store and the message queue.
        self.db = SqliteFile.open(config.outbox.path, synchronous=config.outbox.synchronous)
        try:
            self.state = StateStore(self.db, copy_path=copy_path(self.state_dir))
            self.outbox = Outbox(config.outbox, file=self.db)
        except BaseException:
            self.db.close()
            raise
        seq, prev = self.state.chain_head()
        self.signer = ChainSigner(keypair, seq=seq, prev=prev)
        self.topics = Topics(config.mqtt.topic_prefix)
        pin = config.coordinator.pubkey
        #: Whom this device believes: only its pinned coordinator (no pin: nobody) and its operators.
        self.trust = Trust(
            coordinators=frozenset({pin}) if pin else frozenset(),
            operators=frozenset(config.fleet.operator_keys),
            operator_threshold=config.fleet.operator_threshold,
            kinds=DEVICE_INBOUND,
            audience=self.dev,
        )
        self._emit_lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.transport = MqttTransport(config.mqtt, self.outbox, client_id=self.dev)
        self.updater = ModelUpdater(
            ModelStore(self.state_dir / "models"),
            self.profile,
            self.backend_settings,
            self._report_deploy,
            self.state,
            fallback_card=Path(inf.model),
            open_pipeline=self._open_pipeline,
            trial_s=config.fleet.trial_s,
            download_timeout_s=config.fleet.download_timeout_s,
            download_min_rate_bps=config.fleet.download_min_rate_bps,
            download_deadline_floor_s=config.fleet.download_deadline_floor_s,
        )
        card_path, self.release = self.updater.startup_card()
        self.pipeline = self._open_pipeline(card_path)
        self.card = self.pipeline.loaded.card
        thermal = self.profile.thermal
        self.health_probe = HealthProbe(root, thermal.zone_glob, thermal.ignore_zone_types)
        self.thermal = ThermalGovernor(self.profile.thermal)
        self.thermal_state: ThermalState = self.thermal.state
        self.responder = ChallengeResponder(self.pipeline, self.dev, clock_ms)
        self.notifier = Notifier()
        self.stop_event = threading.Event()
        self._challenges: queue.Queue[Challenge] = queue.Queue(maxsize=16)
        self.fleet = DeviceFacts(self.dev, self.profile.id, frozenset(config.fleet.tags))
        self._init_guards(config)
        self.beacon: tuple[int, str] = (0, NO_BEACON)
        self.verdicts: deque[dict[str, Any]] = deque(maxlen=20)
        #: channel -> the latest accepted manifest (see agent/device/manifests.py).
        self.manifests: dict[str, dict[str, Any]] = {}
        self.rejected_inbound: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self.claimer = Claimer(config, ClaimBook(self.state), keypair, self.emit, clock_ms, self._count_lock)
        self.metrics_server: MetricsServer | None = None
        self.started_ms = clock_ms()
        self._started_mono = time.monotonic()
        self.source: FrameSource | None = None
        self._source_retry_s = SOURCE_RETRY_MIN_S
        # Heartbeats-only mode: the model stays loaded (challenges are still answered) but no
        # source is opened, so no frames, no inference and no proofs.
        self.inference_enabled = config.inference.source != SOURCE_NONE
        self.hasher = CommitmentHasher()
        self.leaf_hash = default_leaf_hash()
        self.window = self._new_window()
        log.info(
            "daemon configured",
            extra={
                "device": self.dev,
                "profile": self.profile.id,
                "chain_seq": seq,
                "mode": "inference" if self.inference_enabled else "heartbeats-only",
                "leaf_hash": self.leaf_hash,
                **self.pipeline.describe(),
            },
        )

    def _init_guards(self, config: AgentConfig) -> None:
        """Inbound guards: challenge admission (durable nonce/seq memory), beacon plausibility, log thinning."""
        ch = config.challenges
        limits = ChallengeLimits(
            rate_per_min=ch.rate_per_min, burst=ch.burst, horizon_ms=int(ch.deadline_horizon_s * 1000)
        )
        self.challenge_guard = ChallengeGuard(self.state, limits, time.monotonic())
        self.beacon_tolerance = BeaconTolerance(
            tolerance_ms=int(config.beacons.tolerance_s * 1000),
            tolerance_slots=config.beacons.tolerance_slots,
        )
        self._last_beacon: Beacon | None = None
        self.beacon_seen: tuple[str, int] | None = None
        self.rejection_log = RejectionLog(interval_s=REJECTION_LOG_S, now_s=time.monotonic())
        self.refusal_reports = RefusalReports(
            self.state, self._report_deploy, self.fleet, now_s=time.monotonic()
        )

    def _open_pipeline(self, card: Path) -> Pipeline:
        # The configured backend override applies to the configured model only; a fleet release's
        # card says which backend runs it.
        configured = card == Path(self.config.inference.model)
        return Pipeline.open(
            str(card), self.backend_settings, (self.config.inference.backend or None) if configured else None
        )

    def _report_deploy(self, body: Deploy) -> None:
        env = self.emit("deploy", body)
        log.log(
            logging.WARNING if body.state in ("failed", "rolled_back", "rejected") else logging.INFO,
            "deploy state",
            extra={
                "state": body.state,
                "reason": body.reason,
                "model": body.model_id,
                "seq": getattr(env, "seq", None),
            },
        )

    def _swap(self, swap: Swap) -> None:
        """Run another model from now on: the old model's window is closed (and proven) first."""
        self.close_window()
        self.pipeline, self.release = swap.pipeline, swap.release
        self.card = swap.pipeline.loaded.card
        self.responder = ChallengeResponder(self.pipeline, self.dev, self.clock_ms)
        self.window = self._new_window()
        self.emit("status", self.status_body("online"), retain=True)
        log.info(
            "model swapped", extra={**self.pipeline.describe(), "release": getattr(swap.release, "key", None)}
        )

    # ------------------------------------------------------------------ emitting

    def _new_window(self, start_ms: int | None = None) -> WorkWindow:
        start = self.clock_ms() if start_ms is None else start_ms
        return WorkWindow(start, self.card.id, self.card.sha256, self.hasher, self.leaf_hash)

    def emit(self, kind: str, body: Any, *, retain: bool = False) -> Envelope | None:
        """Sign, chain and queue one message.  Returns None if nothing could be stored."""
        with self._emit_lock:
            env = self.signer.prepare(kind, body, self.clock_ms())
            topic = self.topics.for_kind(kind, self.dev)
            chained = not env.sideband
            try:
                row = self.transport.enqueue(
                    topic,
                    env.wire,
                    kind=kind,
                    retain=retain,
                    seq=env.seq if chained else None,
                    in_transaction=self.state.chain_step(env.seq, env.hash) if chained else None,
                )
            except StorageError as exc:
                self.counters[f"{kind}_lost"] += 1
                log.error("message not stored", extra={"kind": kind, "error": str(exc)})
                return None
            self.signer.commit(env)
        self.counters[f"{kind}_emitted"] += 1
        if row is None:
            self.counters[f"{kind}_dropped"] += 1
            log.warning("outbox full: message dropped by policy", extra={"kind": kind, "seq": env.seq})
        return env

    def health(self) -> Health:
        reading = self.health_probe.read()
        limited = self.thermal_state.limited
        return Health(
            cpu_bp=reading.cpu_bp,
            mem_bp=reading.mem_bp,
            temp_mc=reading.temp_mc,
            throttled=reading.throttled,
            rate_limited=limited,
            throttle_reason="thermal" if limited else None,
        )

    def status_body(self, state: str) -> Status:
        return Status(
            state="online" if state == "online" else "offline",
            model_id=self.card.id,
            model_sha256=self.card.sha256,
            agent_version=__version__,
            profile=self.profile.id,
        )

    def send_heartbeat(self) -> None:
        slot, nonce = self.beacon
        uptime = int(time.monotonic() - self._started_mono)
        self.emit(
            "heartbeat",
            Heartbeat(
                beacon_slot=slot, beacon_nonce=nonce, uptime_s=min(uptime, 2**32 - 1), health=self.health()
            ),
        )

    def close_window(self) -> None:
        # One clock reading ends this window and starts the next: two readings let the closed
        # window end after the next one began, and the coordinator refuses that proof
        # (window_overlap).  Windows are half-open, so end == next start does not overlap.
        end_ms = max(self.clock_ms(), self.window.start_ms + 1)
        window, self.window = self.window, self._new_window(end_ms)
        if window.inferences == 0:
            return
        proof = window.close(end_ms, self.health())
        env = self.emit("proof", proof)
        if env is not None:
            log.info(
                "proof emitted",
                extra={"seq": env.seq, "inferences": proof.inferences, "input_root": proof.input_root[:16]},
            )

    def answer_challenges(self, limit: int) -> int:
        """Answer at most ``limit`` queued challenges (the main loop's timers run between calls)."""
        done = 0
        while done < limit:
            try:
                challenge = self._challenges.get_nowait()
            except queue.Empty:
                break
            done += 1
            try:
                response = self.responder.answer(challenge)
            except ProtocolError as exc:
                self._reject(exc.reason)
                if self.rejection_log.should_log(exc.reason, time.monotonic()):
                    log.warning("challenge refused", extra={"reason": exc.reason, "error": exc.message})
                continue
            self.emit("challenge_response", response)
            self.counters["challenges_answered"] += 1
        return done

    # ------------------------------------------------------------------ status

    def status_snapshot(self) -> dict[str, Any]:
        outbox = self.outbox.stats().as_dict()
        seq, head = self.signer.state()
        return {
            "device_id": self.dev,
            "pid": os.getpid(),
            "running": not self.stop_event.is_set(),
            "agent_version": __version__,
            "profile": self.profile.id,
            "started_ms": self.started_ms,
            "updated_ms": self.clock_ms(),
            "model": {
                "id": self.card.id,
                "version": self.card.version,
                "sha256": self.card.sha256,
                "release": self.release.key if self.release is not None else None,
                "trial": self.updater.in_trial,
            },
            "inference": {
                **self.pipeline.describe(),
                "mode": "inference" if self.inference_enabled else "heartbeats-only",
                "leaf_hash": self.leaf_hash,
            },
            "chain": {"seq": seq, "head": head, "last_acked_seq": self.last_acked_seq()},
            "outbox": outbox,
            "state": self.state.snapshot(),
            "transport": self.transport.status().as_dict(),
            "window": {"start_ms": self.window.start_ms, "inferences": self.window.inferences},
            "thermal": {"level": self.thermal_state.level, "rate_bp": self.thermal_state.rate_bp},
            "beacon_slot": self.beacon[0],
            "beacon_seen": (
                None
                if self.beacon_seen is None
                else {"payload": self.beacon_seen[0], "received_ms": self.beacon_seen[1]}
            ),
            "coordinator": self._coordinator_status(),
            "verdicts": list(self.verdicts),
            "manifests": self._manifests_copy(),
            "rejected_inbound": self._rejected_copy(),
            "counters": dict(self.counters),
            "control": self.control.stats() if self.control is not None else None,
            "rewards": self.claimer.snapshot(),
        }

    def _rejected_copy(self) -> dict[str, int]:
        # The inbound thread may add a reason while the status or a scrape reads.
        with self._count_lock:
            return dict(self.rejected_inbound)

    def _coordinator_status(self) -> dict[str, Any]:
        pinned = self.config.coordinator.pubkey
        return {
            "pinned": bool(pinned),
            "pubkey": pinned or None,
            "notice": None if pinned else UNPINNED_NOTICE,
        }

    def _manifests_copy(self) -> dict[str, dict[str, Any]]:
        with self._count_lock:
            return {channel: dict(summary) for channel, summary in self.manifests.items()}

    def last_acked_seq(self) -> int:
        """Highest seq with nothing older still waiting in the outbox."""
        seq, _ = self.signer.state()
        oldest = self.outbox.oldest_seq()  # the seq column: chained envelopes only
        return seq if oldest is None else max(0, oldest - 1)

    def metrics_snapshot(self) -> Snapshot:
        """What ``/metrics`` reports (read on the metrics server's thread)."""
        # Counters first: they are bumped after the chain head advances, so seq >= their sum.
        counters = dict(self.counters)
        seq, _ = self.signer.state()
        return Snapshot(
            device=self.dev,
            model_id=self.card.id,
            model_sha256=self.card.sha256,
            agent_version=__version__,
            mode="inference" if self.inference_enabled else "heartbeats-only",
            counters=counters,
            rejected_inbound=self._rejected_copy(),
            chain_seq=seq,
            outbox=self.outbox.stats().as_dict(),
            transport=self.transport.status().as_dict(),
            coordinator_pinned=bool(self.config.coordinator.pubkey),
            claims=self.claimer.counts(),
        )

    def _start_metrics(self) -> None:
        m = self.config.metrics
        if not m.enabled:
            return
        server = MetricsServer(self.metrics_snapshot, m.host, m.port)
        try:
            server.start()
        except EdgeproofError as exc:
            # Metrics are optional: the device keeps earning without them.
            log.error("metrics endpoint not started", extra={"error": exc.message})
            return
        self.metrics_server = server

    def write_status(self) -> None:
        try:
            write_status(self.state_dir, self.status_snapshot())
        except StorageError as exc:
            log.warning("status file not written", extra={"error": str(exc)})

    # ------------------------------------------------------------------ main loop

    def _open_source(self) -> None:
        if not self.inference_enabled:
            log.info("heartbeats-only mode: inference.source is 'none', no frames are read")
            return
        try:
            # One quick in-place reopen for a live camera/stream; longer outages go back to the loop.
            self.source = open_source(
                self.config.inference.source,
                loop=self.config.inference.loop,
                max_reopen_attempts=1,
                backoff_s=(0.5, 0.5),
            )
            self._source_retry_s = SOURCE_RETRY_MIN_S
            log.info("source opened", extra={"source": self.source.description})
        except SourceError as exc:
            self.source = None
            log.error("source unavailable", extra={"error": exc.message, "retry_s": self._source_retry_s})

    def install_signals(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            log.info("signal received, stopping", extra={"signal": signal.Signals(signum).name})
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def chain_head(self) -> tuple[int, str]:
        """(seq, hash) of the last chained envelope this daemon signed."""
        return self.signer.state()

    def start(self) -> None:
        # First: a second daemon on this state dir stops here, before it touches the broker.
        ops = {**daemon_ops(self), **claim_ops(self.claimer)}
        self.control = ControlServer(socket_path(self.state_dir), ops)
        self.control.start()
        will = self.signer.sideband("status", self.status_body("offline"), self.clock_ms())
        self.transport.set_will(self.topics.status(self.dev), will.wire, retain=True)
        self.transport.subscribe(self.topics.beacon(), self.on_beacon)
        self.transport.subscribe(self.topics.device(self.dev, "challenge"), self.on_challenge)
        self.transport.subscribe(self.topics.device(self.dev, "verdict"), self.on_verdict)
        self.transport.subscribe(self.topics.device(self.dev, "voucher"), self.on_voucher)
        self.transport.subscribe(self.topics.reward_root(), self.on_reward_root)
        for channel in self.config.fleet.channels:
            self.transport.subscribe(self.topics.manifest(channel), self.on_manifest)
        if self.config.fleet.channels:
            self.updater.start()
            self._restore_manifests()  # before the broker can deliver a manifest concurrently
        self.transport.start()
        self._start_metrics()
        self.emit("status", self.status_body("online"), retain=True)
        self.claimer.start()  # its own thread: RPC calls never block this loop
        self._open_source()

    def run(self, *, duration_s: float | None = None) -> int:
        cfg = self.config
        self.start()
        self.notifier.ready(f"device {self.dev[:8]} model {self.card.id}")
        mono = time.monotonic
        start = mono()
        next_hb = start
        next_window = start + cfg.proofs.window_s
        next_thermal = start
        next_status = start
        next_source_retry = start + self._source_retry_s
        watchdog_every = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else None
        next_watchdog = start
        next_frame = start
        next_sweep = start + NONCE_SWEEP_S
        next_log_summary = start + REJECTION_LOG_S
        per_pass = cfg.challenges.per_pass
        try:
            while not self.stop_event.is_set():
                now = mono()
                if duration_s is not None and now - start >= duration_s:
                    break
                if now >= next_thermal:
                    reading = self.health_probe.read()
                    before = self.thermal_state.level
                    self.thermal_state = self.thermal.update(reading.temp_mc, reading.throttled)
                    if self.thermal_state.level != before:
                        log.warning(
                            "thermal state changed",
                            extra={
                                "from": before,
                                "to": self.thermal_state.level,
                                "temp_mc": reading.temp_mc,
                            },
                        )
                    next_thermal = now + THERMAL_CHECK_S
                if now >= next_hb:
                    self.send_heartbeat()
                    next_hb = now + cfg.proofs.heartbeat_s
                if now >= next_window:
                    self.close_window()
                    next_window = now + cfg.proofs.window_s
                self.answer_challenges(per_pass)
                if self.control is not None:
                    self.control.run_main_loop_ops()
                swap = self.updater.poll()
                if swap is not None:
                    self._swap(swap)
                if watchdog_every is not None and now >= next_watchdog:
                    self.notifier.watchdog()
                    next_watchdog = now + watchdog_every
                if now >= next_status:
                    self.write_status()
                    next_status = now + STATUS_EVERY_S
                if now >= next_sweep:
                    self._forget_expired_nonces()
                    next_sweep = now + NONCE_SWEEP_S
                if now >= next_log_summary:
                    self._log_held_rejections()
                    next_log_summary = now + REJECTION_LOG_S
                if self.inference_enabled and self.source is None and now >= next_source_retry:
                    self._open_source()
                    next_source_retry = mono() + self._source_retry_s
                    if self.source is None:
                        self._source_retry_s = min(self._source_retry_s * 2, SOURCE_RETRY_MAX_S)
                if now >= next_frame and self.source is not None and self.thermal_state.rate_bp > 0:
                    self.infer_once()
                    rate = cfg.inference.max_fps * self.thermal_state.rate_bp / 10_000
                    next_frame = max(next_frame + (1 / rate if rate > 0 else 0), mono() - 1.0)
                wake_at = min(next_hb, next_window, next_thermal, next_status, next_log_summary)
                if watchdog_every is not None:
                    wake_at = min(wake_at, next_watchdog)
                if self.source is not None and self.thermal_state.rate_bp > 0:
                    wake_at = min(wake_at, next_frame)
                if not self._challenges.empty():
                    continue  # more to answer: the timers above are checked between answers
                delay = wake_at - mono()
                if delay > 0:
                    self.stop_event.wait(min(delay, 1.0))
        finally:
            self.shutdown()
        return 0

    def _forget_expired_nonces(self) -> None:
        try:
            self.challenge_guard.forget_expired(self.clock_ms())
        except StorageError as exc:
            log.warning("expired challenge nonces not forgotten", extra={"error": str(exc)})

    def infer_once(self) -> None:
        assert self.source is not None
        try:
            frame = self.source.read()
        except SourceError as exc:
            log.error("source lost", extra={"error": exc.message})
            self.source.close()
            self.source = None
            return
        if frame is None:
            log.info("source ended", extra={"source": self.source.description})
            self.source.close()
            self.source = None
            return
        try:
            result = self.pipeline.step(frame)
        except Exception as exc:
            if not self.updater.in_trial:
                raise
            self._swap(self.updater.trial_failed(f"{type(exc).__name__}: {exc}"))
            return
        self.window.add(
            result.resized, result.outputs, result.latency_us, [p.label for p in result.predictions]
        )
        self.counters["inferences"] += 1

    def shutdown(self) -> None:
        log.info("shutting down: closing the window and flushing")
        self.notifier.stopping()
        try:
            self.claimer.stop()
            self.close_window()
            self.emit("status", self.status_body("offline"), retain=True)
            flushed = self.transport.flush(timeout=5.0)
            if not flushed:
                log.warning(
                    "outbox not empty at shutdown; it is kept and re-sent next start",
                    extra={"depth": len(self.outbox)},
                )
        finally:
            self.stop_event.set()
            if self.control is not None:
                self.control.stop()
            self.updater.stop()
            self.transport.stop()
            self._log_held_rejections()
            self.write_status()
            if self.metrics_server is not None:
                self.metrics_server.stop()
            if self.source is not None:
                self.source.close()
            self.outbox.close()
            self.db.close()


def run_daemon(config: AgentConfig, *, duration_s: float | None = None) -> int:
    try:
        daemon = Daemon(config)
    except CorruptStateError as exc:
        # Exit code 12 (RestartPreventExitStatus): no restart loop; `edgeproof state recover`.
        log.critical("state unreadable", extra={"reason": "unreadable_state", "error": exc.message})
        raise
    except EdgeproofError:
        raise
    daemon.install_signals()
    return daemon.run(duration_s=duration_s)
