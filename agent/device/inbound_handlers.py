"""The daemon's inbound side: what it does with each message the broker delivers.

Runs on the transport's inbound thread, never on the inference thread.  Every payload first
goes through the shared :func:`agent.protocol.inbound.check_inbound` (size, JSON, kind on its
topic, the coordinator pin or operator trust, signature, schema, addressee); then the
device-specific checks: beacon plausibility (:mod:`agent.device.beacon_guard`), challenge
admission (:mod:`agent.device.challenge_guard`; admitted challenges are queued for the main
loop), manifest eligibility (:mod:`agent.device.manifests`).  Every refusal is counted by reason
in ``rejected_inbound`` and logged, thinned under a flood (:mod:`agent.device.rejection_log`).
A refused manifest that targets this device is also reported to its operator as a ``deploy``
message with state ``rejected``, a bounded number of times (:mod:`agent.device.manifest_refusals`).

:class:`InboundHandlers` is mixed into :class:`agent.device.daemon.Daemon`, which owns the
state it reads and writes (declared below).
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.device.beacon_guard import BeaconTolerance, check_beacon
from agent.device.challenge_guard import ChallengeGuard
from agent.device.claimer import Claimer
from agent.device.manifest_refusals import RefusalReports
from agent.device.manifests import DeviceFacts, check_manifest, manifest_seq_key, stored_manifest
from agent.device.rejection_log import RejectionLog
from agent.device.state_store import StateStore
from agent.device.updater import ModelUpdater
from agent.errors import ProtocolError, StorageError
from agent.protocol.envelope import Envelope
from agent.protocol.inbound import Rejection, Trust, check_inbound
from agent.protocol.messages import Beacon, Challenge, Verdict
from agent.protocol.topics import Topics

# The daemon's own logger: its records read as one service in journald, whichever module logs.
log = logging.getLogger("agent.device.daemon")

#: A beacon payload kept for ``doctor`` is at most this long (a beacon is far smaller).
BEACON_SEEN_MAX = 4096


class InboundHandlers:
    """``on_beacon``, ``on_challenge``, ``on_verdict``, ``on_voucher``, ``on_reward_root``, ``on_manifest``."""

    # Owned and set up by the Daemon.
    config: AgentConfig
    clock_ms: Callable[[], int]
    state_dir: Path
    trust: Trust
    topics: Topics
    state: StateStore
    updater: ModelUpdater
    fleet: DeviceFacts
    challenge_guard: ChallengeGuard
    claimer: Claimer
    rejection_log: RejectionLog
    refusal_reports: RefusalReports
    beacon_tolerance: BeaconTolerance
    beacon: tuple[int, str]
    _last_beacon: Beacon | None
    #: The newest payload on the beacon topic, as received (refused or not), and when: what
    #: ``doctor`` checks while this daemon holds the broker session.
    beacon_seen: tuple[str, int] | None
    _challenges: queue.Queue[Challenge]
    _count_lock: threading.Lock
    counters: Counter[str]
    rejected_inbound: Counter[str]
    verdicts: deque[dict[str, Any]]
    manifests: dict[str, dict[str, Any]]

    def _reject(self, reason: str) -> None:
        # Incremented from the inbound thread and the main loop.
        with self._count_lock:
            self.rejected_inbound[reason] += 1

    def _refused(self, topic: str, payload: bytes, exc: ProtocolError) -> None:
        self._reject(exc.reason)
        if self.rejection_log.should_log(exc.reason, time.monotonic()):
            log.warning(
                "inbound message rejected",
                extra={
                    "topic": topic,
                    "reason": exc.reason,
                    "error": exc.message[:200],
                    "bytes": len(payload),
                },
            )

    def _log_held_rejections(self) -> None:
        """One line per reason for the refusals whose own lines were held back (a flood)."""
        for reason, count in sorted(self.rejection_log.flush().items()):
            log.warning(
                "inbound rejections not logged one by one",
                extra={"reason": reason, "count": count, "interval_s": self.rejection_log.interval_s},
            )

    def _refused_manifest(self, topic: str, payload: bytes, exc: ProtocolError) -> None:
        """Count and log the refusal; report it as ``rejected`` if it targets this device (bounded)."""
        self._refused(topic, payload, exc)
        outcome = self.refusal_reports.consider(payload, exc.reason, time.monotonic())
        if outcome in ("sent", "repeated", "rate_limited"):
            self.counters[f"refusal_reports_{outcome}"] += 1

    def _verify_inbound(self, topic: str, payload: bytes, kind: str) -> Envelope | None:
        """The shared inbound check (agent/protocol/inbound.py): size, JSON, kind on its topic,
        the pin (or operator trust), signature, schema, addressee.  The device-specific checks
        (beacon plausibility, challenge admission, manifest eligibility) follow in the handlers."""
        refused = self._refused_manifest if kind == "manifest" else self._refused
        result = check_inbound(topic, payload, self.trust, topics=self.topics)
        if isinstance(result, Rejection):
            refused(topic, payload, result.error())
            return None
        env = result.envelope
        if env.kind != kind:  # the subscription routes by topic, and the topic names the kind
            refused(topic, payload, ProtocolError(f"expected a {kind} on {topic}", reason="wrong_kind"))
            return None
        return env

    def on_beacon(self, topic: str, payload: bytes) -> None:
        if len(payload) <= BEACON_SEEN_MAX:
            self.beacon_seen = (payload.decode("utf-8", "replace"), self.clock_ms())
        env = self._verify_inbound(topic, payload, "beacon")
        if env is None:
            return
        assert isinstance(env.body, Beacon)
        try:
            # An older beacon (a replay) would make our heartbeats stale; one from the future
            # would make every genuine beacon after it look older.
            check_beacon(env.body, self._last_beacon, self.clock_ms(), self.beacon_tolerance)
        except ProtocolError as exc:
            self._refused(topic, payload, exc)
            return
        self._last_beacon = env.body
        self.beacon = (env.body.slot, env.body.nonce)

    def on_challenge(self, topic: str, payload: bytes) -> None:
        env = self._verify_inbound(topic, payload, "challenge")
        if env is None:
            return
        try:
            # Only this (inbound) thread puts, so the room seen here is still there below.
            challenge = self.challenge_guard.admit(
                env, now_ms=self.clock_ms(), now_s=time.monotonic(), room=not self._challenges.full()
            )
        except ProtocolError as exc:
            self._refused(topic, payload, exc)
            return
        except StorageError as exc:
            # Not remembered, so not answered: a replay of it could not be recognised.
            self.counters["challenges_not_stored"] += 1
            log.error("challenge not taken: the state store failed", extra={"error": str(exc)})
            return
        self._challenges.put_nowait(challenge)

    def on_verdict(self, topic: str, payload: bytes) -> None:
        env = self._verify_inbound(topic, payload, "verdict")
        if env is None:
            return
        assert isinstance(env.body, Verdict)
        verdict = env.body.model_dump(mode="json")
        verdict["received_ms"] = self.clock_ms()
        self.verdicts.append(verdict)
        self.claimer.on_verdict(env.body)
        level = logging.INFO if env.body.accepted else logging.WARNING
        log.log(
            level, "verdict", extra={k: verdict[k] for k in ("ref_kind", "ref_seq", "accepted", "reason")}
        )

    def on_voucher(self, topic: str, payload: bytes) -> None:
        env = self._verify_inbound(topic, payload, "voucher")
        if env is None:
            return
        try:
            # Replay and flood refusals here; the checks before signing on the claimer's thread.
            self.claimer.admit(env)
        except ProtocolError as exc:
            self._refused(topic, payload, exc)
        except StorageError as exc:
            # Not remembered, so not taken: a replay of it could not be recognised.
            log.error("voucher not taken: the state store failed", extra={"error": str(exc)})

    def on_reward_root(self, topic: str, payload: bytes) -> None:
        env = self._verify_inbound(topic, payload, "reward_root")
        if env is None:
            return
        try:
            self.claimer.admit_root(env)
        except ProtocolError as exc:
            self._refused(topic, payload, exc)
        except StorageError as exc:
            log.error("reward root not stored", extra={"error": str(exc)})

    def on_manifest(self, topic: str, payload: bytes) -> None:
        env = self._verify_inbound(topic, payload, "manifest")
        if env is not None:
            self._consider_manifest(self.topics.parse(topic).channel or "", env, topic, payload)

    def _consider_manifest(self, channel: str, env: Envelope, topic: str, payload: bytes) -> None:
        try:
            decision = check_manifest(
                env,
                topic_channel=channel,
                operators=self.config.fleet.operator_keys,
                facts=self.fleet,
                now_ms=self.clock_ms(),
                accepted_version=self.state.manifest_version(channel),
                accepted_manifest=stored_manifest(self.state.manifest_envelope(channel)),
                committed_release=self.updater.committed_key(),
                free_bytes=shutil.disk_usage(self.state_dir).free,
                threshold=self.config.fleet.operator_threshold,
                operator_seq=self.state.signer_seq(manifest_seq_key(env.dev, channel)),
                installed=self.updater.installed(),
            )
        except ProtocolError as exc:
            self._refused_manifest(topic, payload, exc)
            return
        summary = decision.summary(self.clock_ms())
        with self._count_lock:
            self.manifests[channel] = summary
        if decision.manifest.halted:
            # A halted rollout: nothing starts; a release of it being prepared stops.
            self.updater.halt(decision.manifest)
        elif decision.eligible:
            # Also for a duplicate (the same content, stored or re-delivered, not expired): an
            # unfinished download resumes; a running or failed release is not started again.
            self.updater.offer(decision.manifest)
        if decision.duplicate:
            return
        try:
            # The envelope itself is kept: the broker does not re-send a retained message to a
            # persistent session it already delivered it to, and a restart must resume the work.
            self.state.accept_manifest(
                channel,
                decision.manifest.version,
                payload.decode(),
                signer_seq=(manifest_seq_key(env.dev, channel), env.seq),
            )
        except StorageError as exc:
            log.error("manifest version not stored", extra={"channel": channel, "error": str(exc)})
        self.counters["manifests_accepted"] += 1
        log.info(
            "manifest accepted",
            extra={
                "channel": channel,
                **{k: summary[k] for k in ("version", "model_id", "model_version", "targeted", "eligible")},
            },
        )

    def _restore_manifests(self) -> None:
        """Re-judge the manifests accepted before a restart (a channel no longer configured is ignored).

        An expired one is refused (``expired``), unless its release runs committed.  Then staging
        files that no offered release needs (failed, superseded, expired) are deleted.
        """
        for channel in self.config.fleet.channels:
            stored = self.state.manifest_envelope(channel)
            if not isinstance(stored, str):
                continue
            topic = self.topics.manifest(channel)
            env = self._verify_inbound(topic, stored.encode(), "manifest")
            if env is not None:
                self._consider_manifest(channel, env, topic, stored.encode())
        self.updater.clean_staging()
