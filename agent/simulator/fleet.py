"""The run: connect, wait for a whole epoch to begin, play the script slot by slot, settle.

Timeline of one slot ``s`` (the coordinator's clock, which is this machine's clock):

* the coordinator publishes the slot's signed beacon (retained) and its challenges;
* each up device sends its heartbeat at ``heartbeat_at`` of the slot (quoting the newest
  verified beacon), then its proof at ``proof_at`` (a window from the slot's start to the
  send time, inferences under the firmware profile's bound, or one over it in a scripted
  overclaim slot); a down device sends nothing;
* challenges are answered as they arrive, by the device's behaviour at the slot the
  challenge was issued in (``deadline_ms - challenge_deadline_ms``): honestly (the real
  model's sketch), naming the wrong model, or not at all (also when the device is down).

The run covers whole epochs only (it starts at the first epoch boundary ahead), so the
audit of every simulated epoch can be compared with the truth exactly.  After the last
slot the run keeps answering until every challenge of the run is past its deadline.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import default_models_dir
from agent.errors import ConfigError, TransportError
from agent.inference.cards import ModelCard, load_card
from agent.profiles import Profile, get_profile, load_profiles
from agent.protocol.chain import ChainSigner
from agent.protocol.messages import Challenge
from agent.protocol.topics import Topics
from agent.simulator import answers, plan
from agent.simulator.identities import Identity, identities
from agent.simulator.inbox import BeaconView, Inbox
from agent.simulator.links import Links, now_ms
from agent.simulator.script import Script
from agent.simulator.truth import OUTCOME, Truth

log = logging.getLogger("edgeproof.simulator")

#: The model hash a ``wrong_model`` device names in its answers (no real model has it).
WRONG_MODEL_SHA256 = hashlib.sha256(b"edgeproof-sim:wrong-model").hexdigest()
#: A run starts at an epoch boundary at least this far ahead (connections are ready by then).
LEAD_MS = 500
#: Nothing is sent later than this fraction of its slot (a device behind schedule skips it).
LATEST_SEND = 0.85
#: An answer sent this close to its deadline could be stamped after it (noted in the truth).
NEAR_DEADLINE_MS = 100
#: How long the end of a run waits for the verdicts still due.
VERDICT_WAIT_MS = 30_000
#: Extra wait after the last challenge deadline of the run (the coordinator marks misses
#: once a second and scores answers off its ingest thread).
SETTLE_MS = 1500


def default_card() -> Path:
    return default_models_dir() / "efficientnet-lite0-int8.toml"


def max_fps(profile: Profile, card: ModelCard) -> tuple[float, str]:
    """The profile's bound for the card's model class, as the coordinator applies it."""
    bound = profile.throughput.get(card.model_class)
    if bound is not None:
        return bound.max_fps, f"{card.model_class} on {profile.id}"
    if not profile.throughput:
        raise ConfigError(
            f"firmware profile {profile.id} declares no throughput bound: every proof would be refused"
        )
    return max(b.max_fps for b in profile.throughput.values()), f"any model class on {profile.id}"


@dataclass(frozen=True)
class Endpoint:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edgeproof/v1"
    client_prefix: str = "edgeproof-sim"


class SimDevice:
    """One simulated device: identity, script part, its own chain (signed under a lock)."""

    def __init__(self, ident: Identity, device_plan: plan.DevicePlan) -> None:
        self.ident = ident
        self.plan = device_plan
        self.dev = ident.dev
        self.signer = ChainSigner(ident.keypair)
        self.lock = threading.Lock()


@dataclass(frozen=True)
class RunResult:
    truth: dict[str, Any]
    published: int
    unacknowledged: int
    seconds: float

    @property
    def messages_per_s(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


class FleetRun:
    def __init__(
        self,
        script: Script,
        *,
        coordinator: str,
        endpoint: Endpoint,
        card_path: Path | None = None,
        profiles_dir: Path | None = None,
    ) -> None:
        self.script = script
        self.coordinator = coordinator
        self.endpoint = endpoint
        self.topics = Topics(endpoint.prefix)
        self.card_path = card_path or default_card()
        self.card = load_card(self.card_path).card
        profile = get_profile(load_profiles(profiles_dir), script.profile)
        self.max_fps, what = max_fps(profile, self.card)
        plan.check_inferences(script, self.max_fps, what)
        fleet = identities(script.seed, script.devices, script.owners)
        self.devices = [SimDevice(i, p) for i, p in zip(fleet, plan.device_plans(script), strict=True)]
        self.by_dev = {d.dev: d for d in self.devices}
        self.hb_offset = [plan.offset_ms(script, d.ident.index, script.heartbeat_at) for d in self.devices]
        self.proof_offset = [plan.offset_ms(script, d.ident.index, script.proof_at) for d in self.devices]
        self.beacons = BeaconView()
        self.truth: Truth | None = None
        self._last_deadline = 0
        self._deadline_lock = threading.Lock()
        self._started_ms = 0

    # --- sending -----------------------------------------------------------------------------

    def _send(self, device: SimDevice, kind: str, body: dict[str, Any]) -> int:
        """Sign the device's next envelope and publish it (under its lock: chain order = publish order)."""
        with device.lock:
            at = now_ms()
            env = device.signer.next(kind, body, at)
            self.links.publish(device.dev, self.topics.for_kind(kind, device.dev), env.wire)
        return at

    def _health(self, device: SimDevice) -> dict[str, Any]:
        return {
            "cpu_bp": 1000 + device.ident.index % 4000,
            "mem_bp": 3000,
            "throttled": False,
            "rate_limited": False,
        }

    def _heartbeat(self, device: SimDevice, slot: int, truth: Truth) -> None:
        beacon = self.beacons.latest()
        if beacon is None:
            truth.note("heartbeat_without_beacon")
            return
        if slot - beacon.slot > 1:
            truth.note("heartbeat_quoted_old_beacon")
        body = {
            "beacon_slot": beacon.slot,
            "beacon_nonce": beacon.nonce,
            "uptime_s": max(0, (now_ms() - self._started_ms) // 1000),
            "health": self._health(device),
        }
        sent = self._send(device, "heartbeat", body)
        self._check_in_slot(sent, slot, truth)
        truth.heartbeat(device.dev, slot)

    def _proof(self, device: SimDevice, slot: int, k: int, truth: Truth) -> None:
        start = slot * self.script.slot_ms
        end = now_ms()
        overclaim = device.plan.overclaims(k)
        claimed = (
            plan.proof_bound(self.max_fps, end - start) + 1
            if overclaim
            else plan.inferences(self.script, device.ident.index, k)
        )
        seed = f"{device.dev}:{slot}".encode()
        body = {
            "window_start_ms": start,
            "window_end_ms": end,
            "model_id": self.card.id,
            "model_sha256": self.card.sha256,
            "inferences": claimed,
            "leaf_hash": "blake3",
            "input_root": hashlib.sha256(b"in:" + seed).hexdigest(),
            "output_root": hashlib.sha256(b"out:" + seed).hexdigest(),
            "summary": {"frames": claimed},
            "latency_us": {"p50": 18_000, "p95": 21_000, "p99": 25_000},
            "health": self._health(device),
            "agent_version": __version__,
        }
        with device.lock:  # the window end is the signing time: no other envelope in between
            env = device.signer.next("proof", body, end)
            self.links.publish(device.dev, self.topics.for_kind("proof", device.dev), env.wire)
        self._check_in_slot(end, slot, truth)
        if overclaim:
            truth.rejection(device.dev, slot, "implausible_throughput")
        else:
            truth.proof(device.dev, slot, claimed)

    def _check_in_slot(self, sent_ms: int, slot: int, truth: Truth) -> None:
        if sent_ms // self.script.slot_ms != slot:
            truth.note("sent_outside_its_slot")
        elif sent_ms - slot * self.script.slot_ms > LATEST_SEND * self.script.slot_ms:
            truth.note("sent_late_in_its_slot")

    # --- challenges --------------------------------------------------------------------------

    def _on_challenge(self, dev: str, challenge: Challenge, received_ms: int) -> None:
        truth = self.truth
        device = self.by_dev.get(dev)
        if truth is None or device is None:
            return
        issued_ms = challenge.deadline_ms - self.script.challenge_deadline_ms
        if issued_ms > received_ms + 100:
            truth.note("challenge_deadline_mismatch")  # the script's challenge_deadline_ms is too short
        issued = plan.slot_of_issue(
            challenge.deadline_ms, self.script.challenge_deadline_ms, self.script.slot_ms
        )
        if not truth.in_run(issued):
            truth.note("challenges_outside_run")
            return
        with self._deadline_lock:
            self._last_deadline = max(self._last_deadline, challenge.deadline_ms)
        truth.maximum("challenge_delivery_ms_max", received_ms - issued_ms)
        k = issued - truth.first_slot
        behaviour = device.plan.behaviour if device.plan.up(k) else "ignore"
        truth.note(f"challenges.{behaviour}")
        if behaviour == "ignore":
            truth.challenge(dev, issued, OUTCOME["ignore"])
        elif behaviour == "wrong_model":
            sent = self._send(
                device, "challenge_response", answers.wrong_model_response(challenge, WRONG_MODEL_SHA256)
            )
            self._record_answer(dev, challenge, sent, OUTCOME["wrong_model"])
        else:
            self.answerer.submit(answers.Job(dev, challenge, received_ms))

    def _answered(self, job: answers.Job, sent_ms: int, latency_us: int) -> None:
        assert self.truth is not None
        self.truth.maximum("answer_ms_max", sent_ms - job.received_ms)
        self._record_answer(job.dev, job.challenge, sent_ms, OUTCOME["honest"])

    def _record_answer(self, dev: str, challenge: Challenge, sent_ms: int, outcome: str) -> None:
        """The truth of an answer sent at ``sent_ms``: after the deadline it is ``challenge_late``.

        The coordinator judges lateness by its ingest stamp, a few ms after the send; an answer
        sent within ``NEAR_DEADLINE_MS`` of the deadline is counted by its send time and noted,
        since the two clocks' readings could fall on either side.
        """
        assert self.truth is not None
        issued = plan.slot_of_issue(
            challenge.deadline_ms, self.script.challenge_deadline_ms, self.script.slot_ms
        )
        if sent_ms > challenge.deadline_ms:
            outcome = "challenge_late"
            self.truth.note("answers_late")
        elif sent_ms > challenge.deadline_ms - NEAR_DEADLINE_MS:
            self.truth.note("answer_near_deadline")
        self.truth.challenge(dev, issued, outcome)
        if outcome != "passed":  # a wrong-model or late answer is a rejected message
            self.truth.rejection(dev, sent_ms // self.script.slot_ms, outcome)

    def _answer_failed(self, job: answers.Job, exc: Exception) -> None:
        assert self.truth is not None
        self.truth.note(f"answer_failed.{type(exc).__name__}")
        log.error("sim_answer_failed", extra={"dev": job.dev, "error": str(exc)[:200]})

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        script = self.script
        self.inbox = Inbox(self.coordinator, self.topics, self.beacons, self._on_challenge, self._note)
        self.answerer = answers.HonestAnswerer(
            str(self.card_path), self._send_answer, self._answered, self._answer_failed
        )
        self.links = Links(
            self.endpoint.host,
            self.endpoint.port,
            [d.dev for d in self.devices],
            script.links,
            self.topics,
            self.inbox.put,
            client_prefix=self.endpoint.client_prefix,
        )
        self.inbox.start()
        try:
            self.links.connect()
            beacon = self.beacons.wait(2 * script.slot_ms / 1000 + 10)
            if beacon is None:
                raise TransportError(
                    f"no beacon signed by the coordinator {self.coordinator} arrived on {self.topics.beacon()}"
                )
            if beacon.slot_ms != script.slot_ms:
                raise ConfigError(
                    f"the coordinator's beacons have slot_ms {beacon.slot_ms}, the script {script.slot_ms}: "
                    "set the script's slot_ms to the coordinator's [beacons] slot_ms"
                )
            first_epoch = (now_ms() + LEAD_MS) // script.epoch_ms + 1
            truth = Truth(
                slot_ms=script.slot_ms,
                epoch_slots=script.epoch_slots,
                first_epoch=first_epoch,
                epochs=script.epochs,
            )
            for d in self.devices:
                truth.add_device(
                    d.dev, d.ident.index, d.ident.owner, script.profile, d.plan.group_name, d.plan.behaviour
                )
            self.truth = truth
            start_ms = first_epoch * script.epoch_ms
            log.info(
                "sim_waiting",
                extra={
                    "first_epoch": first_epoch,
                    "start_ms": start_ms,
                    "wait_s": (start_ms - now_ms()) / 1000,
                },
            )
            self._started_ms = start_ms
            for k in range(script.total_slots):
                self._play_slot(truth.first_slot + k, k, truth)
            seconds = (now_ms() - start_ms) / 1000
            self._settle(truth)
            unacked = self.links.unacknowledged(10.0)
            published = self.links.published  # every message sent (nothing is sent before the run)
        finally:
            self.links.close()
            self.inbox.stop()
            self.answerer.stop()
        if unacked:
            truth.note("unacknowledged_publishes", unacked)
        extra = {
            "coordinator": self.coordinator,
            "seed": script.seed,
            "model_sha256": self.card.sha256,
            "profile": script.profile,
            "connections": script.links,
            "published": published,
            "seconds": round(seconds, 3),
        }
        return RunResult(truth.as_json(extra), published, unacked, seconds)

    def _note(self, what: str) -> None:
        """An observation from the inbox (dropped before the run's truth exists: beacons at connect)."""
        if self.truth is not None:
            self.truth.note(what)

    def _send_answer(self, dev: str, body: dict[str, object]) -> int:
        return self._send(self.by_dev[dev], "challenge_response", dict(body))

    def _play_slot(self, slot: int, k: int, truth: Truth) -> None:
        start = slot * self.script.slot_ms
        latest = start + int(LATEST_SEND * self.script.slot_ms)
        events: list[tuple[int, int, int]] = []
        for i, device in enumerate(self.devices):
            if device.plan.up(k):
                events.append((start + self.hb_offset[i], 0, i))
                if device.plan.proves(k, self.script.proof_every):
                    events.append((start + self.proof_offset[i], 1, i))
        events.sort()
        up = sum(1 for e in events if e[1] == 0)
        for at, what, i in events:
            wait = at - now_ms()
            if wait > 0:
                time.sleep(wait / 1000)
            elif now_ms() >= latest:
                # Behind schedule (an overloaded machine): a message sent this late could be
                # stamped in the next slot, so the device skips it and the truth says so.
                truth.note(f"skipped_behind_schedule.{'heartbeat' if what == 0 else 'proof'}")
                continue
            if what == 0:
                self._heartbeat(self.devices[i], slot, truth)
            else:
                self._proof(self.devices[i], slot, k, truth)
        end = start + self.script.slot_ms
        log.info(
            "sim_slot",
            extra={"slot": slot, "index": k, "up": up, "published": self.links.published},
        )
        wait = end - now_ms()
        if wait > 0:
            time.sleep(wait / 1000)

    def _settle(self, truth: Truth) -> None:
        """Keep answering until every challenge of the run is past its deadline, plus SETTLE_MS;
        then wait (at most VERDICT_WAIT_MS) for a verdict on every message sent, so the observed
        verdict counts are complete (a coordinator with a backlog judges late, it still judges)."""
        while True:
            with self._deadline_lock:
                until = max(self._last_deadline, truth.first_slot * self.script.slot_ms) + SETTLE_MS
            if now_ms() >= until and self.inbox.idle() and self.answerer.idle():
                break
            time.sleep(0.05)
        give_up = now_ms() + VERDICT_WAIT_MS
        while truth.verdicts_on_messages() < self.links.published and now_ms() < give_up:
            time.sleep(0.05)
        missing = self.links.published - truth.verdicts_on_messages()
        if missing > 0:
            truth.note("verdicts_not_received", missing)
