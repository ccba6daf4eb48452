"""``edgeproof fleet rollout run``: the thin runner around the pure decisions of agent/fleet/rollout.py.

One broker session follows ``{prefix}/dev/+/deploy``, ``{prefix}/dev/+/status`` and the channel's
retained manifest.  Messages go through a bounded queue (a full queue is ``flooded``) to the
main loop, which judges each (agent/fleet/rollout_inbox.py), keeps each device's newest report
about the release, and once per tick stores the reports, tallies the stages and acts: publish
the next stage's manifest, publish a halt, or record the rollout as done.  The coordinator's
database is the record (through :class:`RolloutStorage`, which the command module provides):
``fleet halt`` and ``fleet resume`` change it from another process, so it is read every tick.

A manifest on the channel from a trusted operator key that names another release starts a
new rollout at its stage (``fleet publish`` published it); one for the same release with a
higher version (a co-signed stage, another operator's halt) is adopted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from solders.keypair import Keypair

from agent.errors import ProtocolError
from agent.fleet import rollout as plan
from agent.fleet.mqtt_publish import BrokerSession
from agent.fleet.rollout import Member, Report, Rollout
from agent.fleet.rollout_inbox import DeployInbox, Refused
from agent.fleet.rollout_sign import proposed_steps, publish_next
from agent.fleet.state import load_state
from agent.protocol.envelope import Envelope, verify_envelope
from agent.protocol.messages import Deploy, Manifest, Status
from agent.protocol.topics import Topics

log = logging.getLogger(__name__)

#: Messages waiting for the main loop; beyond this the broker's deliveries are dropped as ``flooded``.
QUEUE_MAX = 20_000
#: The abort failure rate when neither the command line nor the operator's state file names one.
DEFAULT_ABORT_RATE = 0.2
#: How often the enrolled devices are read again.
DEVICES_EVERY_S = 5.0


class RolloutStorage(Protocol):
    def members(self) -> list[Member]: ...
    def load(self, channel: str) -> Rollout | None: ...
    def save(self, rollout: Rollout) -> None: ...
    def reports(self, rollout: Rollout) -> dict[str, Report]: ...
    def put_reports(self, rollout: Rollout, reports: Mapping[str, Report]) -> None: ...
    def highest_seqs(self) -> dict[str, int]: ...
    def add_refusals(self, counts: Mapping[str, int]) -> None: ...
    def presence(self) -> dict[str, tuple[bool, int]]: ...
    def put_presence(self, rows: Mapping[str, tuple[bool, int]]) -> None: ...


@dataclass(frozen=True)
class ControllerSettings:
    channel: str
    key: Keypair
    state: Path
    #: Operator keys whose manifests on the channel start or update a rollout (the own key included).
    operators: frozenset[str]
    #: None: what ``fleet publish`` recorded for the channel in the state file when the rollout starts.
    abort_failure_rate: float | None
    stage_timeout_ms: int
    tick_s: float = 1.0
    propose: Path | None = None
    #: With ``propose``: the signatures each proposed signing file needs (the devices' k).
    threshold: int = 2


class RolloutController:
    def __init__(
        self,
        storage: RolloutStorage,
        broker: BrokerSession,
        topics: Topics,
        settings: ControllerSettings,
        *,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.storage = storage
        self.broker = broker
        self.topics = topics
        self.settings = settings
        self.clock_ms = clock_ms
        self.inbox = DeployInbox(topics, highest_seqs=storage.highest_seqs())
        self.queue: queue.Queue[tuple[str, bytes]] = queue.Queue(QUEUE_MAX)
        self._overflow = 0
        self._lock = threading.Lock()
        self._members: list[Member] = []
        self._by_dev: dict[str, Member] = {}
        self._rollout: Rollout | None = None
        self._enrolled: frozenset[str] = frozenset()
        self._devices_at = -1e9
        self._pending: dict[str, Report] = {}
        self._stored_counts: Counter[str] = Counter()
        self._proposed: set[tuple[int, int, bool]] = set()
        #: dev -> (online, ts) of its newest status envelope; the changes not stored yet.
        self.presence: dict[str, tuple[bool, int]] = storage.presence()
        self._presence_pending: dict[str, tuple[bool, int]] = {}
        #: (ms, decision) for every action taken (not the waits).
        self.decisions: list[tuple[int, plan.Decision]] = []

    # ------------------------------------------------------------------ broker thread

    def sink(self, topic: str, payload: bytes) -> None:
        try:
            self.queue.put_nowait((topic, payload))
        except queue.Full:
            with self._lock:
                self._overflow += 1

    def subscribe(self) -> None:
        prefix = self.topics.prefix
        self.broker.follow(
            [f"{prefix}/dev/+/deploy", f"{prefix}/dev/+/status", self.topics.manifest(self.settings.channel)],
            self.sink,
        )

    # ------------------------------------------------------------------ main loop

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: handle messages, tick every ``tick_s`` (call :meth:`subscribe` first)."""
        self._rollout = self.storage.load(self.settings.channel)
        next_tick = time.monotonic()
        while not stop.is_set():
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                topic, payload = self.queue.get(timeout=timeout)
                self.handle(topic, payload)
                continue
            except queue.Empty:
                pass
            self.tick()
            next_tick = time.monotonic() + self.settings.tick_s
        self.tick()

    def drain(self) -> int:
        """Handle everything queued now (tests and the benchmark drive the loop by hand)."""
        handled = 0
        while True:
            try:
                topic, payload = self.queue.get_nowait()
            except queue.Empty:
                return handled
            self.handle(topic, payload)
            handled += 1

    def _devices(self) -> None:
        now = time.monotonic()
        if now - self._devices_at >= DEVICES_EVERY_S:
            self._members = self.storage.members()
            self._by_dev = {m.dev: m for m in self._members}
            self._enrolled = frozenset(self._by_dev)
            self._devices_at = now

    def handle(self, topic: str, payload: bytes) -> None:
        self._devices()
        if topic == self.topics.manifest(self.settings.channel):
            self._manifest(payload)
            return
        judged = self.inbox.judge(topic, payload, enrolled=self._enrolled, now_s=time.monotonic())
        if isinstance(judged, Refused):
            log.info(
                "rollout_report_refused", extra={"reason": judged.reason, "dev": judged.dev, "topic": topic}
            )
            return
        if isinstance(judged.body, Status):
            self._status(judged, judged.body)
            return
        if isinstance(judged.body, Deploy):
            self._deploy(judged, judged.body)

    def _status(self, env: Envelope, status: Status) -> None:
        # Side-band (no seq of its own), taken in the broker's order on the device's topic, not by
        # ts: the last will is built at connect, so its ts is older than the "online" sent after.
        self.presence[env.dev] = self._presence_pending[env.dev] = (status.state == "online", env.ts)

    def offline(self) -> frozenset[str]:
        return frozenset(dev for dev, (online, _) in self.presence.items() if not online)

    def _deploy(self, env: Envelope, deploy: Deploy) -> None:
        rollout = self._rollout
        if rollout is None or not rollout.release.covers(deploy):
            self.inbox.refuse(
                "unknown_rollout", f"deploy about {deploy.model_id} on {deploy.channel}", env.dev
            )
            return
        member = self._by_dev.get(env.dev)
        stage = plan.entry_stage(rollout.manifest, member) if member is not None else None
        if stage is None or stage > rollout.stage:
            self.inbox.refuse("not_in_stage", f"{env.dev} is not in stages 0..{rollout.stage}", env.dev)
            return
        self._pending[env.dev] = Report(deploy.state, deploy.reason, self.clock_ms(), env.seq)

    def _manifest(self, payload: bytes) -> None:
        try:
            env = verify_envelope(payload)
        except ProtocolError as exc:
            self.inbox.refuse(exc.reason, exc.message)
            return
        manifest = env.body
        if not isinstance(manifest, Manifest) or env.dev not in self.settings.operators:
            self.inbox.refuse("untrusted_operator", f"manifest signed by {env.dev}", env.dev)
            return
        now = self.clock_ms()
        current = self.storage.load(self.settings.channel)
        if current is not None and manifest.version <= current.manifest.version:
            return  # ours (re-delivered) or older
        if current is not None and current.release == plan.Release.of(manifest):
            state: plan.RolloutState = "halted" if manifest.halted else "running"
            starts = current.stage_started_ms[: manifest.stage + 1]
            starts = (*starts, *([now] * (manifest.stage + 1 - len(starts))))
            self.storage.save(replace(current, manifest=manifest, state=state, stage_started_ms=starts))
            self._rollout = self.storage.load(self.settings.channel)
            log.info(
                "rollout_manifest_adopted", extra={"channel": manifest.channel, "version": manifest.version}
            )
            return
        rollout = Rollout(
            manifest=manifest,
            state="halted" if manifest.halted else "running",
            abort_failure_rate=self._abort_rate(),
            stage_timeout_ms=self.settings.stage_timeout_ms,
            stage_started_ms=tuple([now] * (manifest.stage + 1)),
            started_ms=now,
        )
        self.storage.save(rollout)
        self._rollout = self.storage.load(self.settings.channel)
        log.info(
            "rollout_started",
            extra={"channel": manifest.channel, "model_id": manifest.model_id, "version": manifest.version},
        )

    def _abort_rate(self) -> float:
        if self.settings.abort_failure_rate is not None:
            return self.settings.abort_failure_rate
        state = load_state(self.settings.state, str(self.settings.key.pubkey()))
        record = state.channels.get(self.settings.channel)
        return record.abort_failure_rate if record is not None else DEFAULT_ABORT_RATE

    # ------------------------------------------------------------------ ticks

    def tick(self) -> plan.Decision | None:
        self._devices()
        rollout = self._rollout = self.storage.load(self.settings.channel)
        if rollout is not None and self._pending:
            self.storage.put_reports(rollout, self._pending)
        self._pending = {}
        if self._presence_pending:
            self.storage.put_presence(self._presence_pending)
            self._presence_pending = {}
        self._flush_counts()
        if rollout is None or rollout.state != "running":
            return None
        now = self.clock_ms()
        stages = plan.tally(
            rollout, self._members, self.storage.reports(rollout), now_ms=now, offline=self.offline()
        )
        decision = plan.decide(rollout, stages)
        if decision.action != "wait":
            self._act(rollout, decision, now)
        return decision

    def _act(self, rollout: Rollout, decision: plan.Decision, now: int) -> None:
        extra = {"channel": rollout.channel, "stage": rollout.stage, "why": decision.why}
        if decision.action == "done":
            self.decisions.append((now, decision))
            self.storage.save(plan.finished(rollout))
            log.info("rollout_done", extra=extra)
            return
        halt = decision.action == "halt"
        stage = rollout.stage if halt else rollout.stage + 1
        key = (rollout.manifest.version, stage, halt)
        if self.settings.propose is not None and key not in self._proposed:
            # Proposed by this controller before a restart: its signing file is still waiting.
            self._proposed |= proposed_steps(self.settings.propose, self.settings.key, rollout.manifest)
            if key in self._proposed:
                log.info("rollout_proposal_waiting", extra={**extra, "halt": halt, "to_stage": stage})
        if self.settings.propose is not None and key in self._proposed:
            return  # proposed already: waiting for the co-signers (one decision, not one per tick)
        self.decisions.append((now, decision))
        manifest = publish_next(
            self.broker,
            self.topics,
            self.settings.state,
            self.settings.key,
            rollout.manifest,
            stage=stage,
            halted=halt,
            now_ms=now,
            abort_failure_rate=rollout.abort_failure_rate,
            propose=self.settings.propose,
            threshold=self.settings.threshold,
        )
        if self.settings.propose is not None:
            self._proposed.add(key)
            log.info("rollout_manifest_proposed", extra={**extra, "version": manifest.version})
            return  # adopted when the co-signed manifest arrives on the channel
        if halt:
            self.storage.save(plan.halted(rollout, manifest, decision.why))
            log.warning("rollout_halted", extra={**extra, "version": manifest.version})
        else:
            self.storage.save(plan.advanced(rollout, manifest, now))
            log.info("rollout_advanced", extra={**extra, "version": manifest.version, "to_stage": stage})
        self._rollout = self.storage.load(self.settings.channel)

    def _flush_counts(self) -> None:
        with self._lock:
            overflow, self._overflow = self._overflow, 0
        if overflow:
            self.inbox.counters["flooded"] += overflow
        delta = {
            reason: n - self._stored_counts[reason]
            for reason, n in self.inbox.counters.items()
            if not reason.endswith("_taken") and n != self._stored_counts[reason]
        }
        if delta:
            self.storage.add_refusals(delta)
            self._stored_counts.update(delta)
