"""What the simulated devices receive: the beacon, their challenges and their verdicts.

Every message goes through the shared :func:`agent.protocol.inbound.check_inbound` as a
device would judge it (the coordinator's key pinned, device-inbound kinds only, a
coordinator message addressed to another device refused), on one thread so that paho's
network threads never wait for a signature check; beacons and challenges go ahead of verdicts
(a challenge has a deadline, a verdict only feeds a counter).  Refusals are counted by their reason
(``refused.<reason>``); accepted beacons update :class:`BeaconView`, challenges go to the
answer handler.  Verdicts (one per message sent: the bulk of the traffic) are only parsed and
counted by kind and reason (``verdict.<kind>.<reason|accepted>``), not verified: they feed the
run's observations, never the ground truth, and verifying them would cost the simulator as
much CPU as signing its own messages.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import ProtocolError
from agent.protocol.envelope import parse_envelope
from agent.protocol.inbound import Rejection, Trust, check_inbound
from agent.protocol.kinds import DEVICE_INBOUND
from agent.protocol.messages import Beacon, Challenge
from agent.protocol.topics import Topics


@dataclass(frozen=True)
class SeenBeacon:
    slot: int
    nonce: str
    slot_ms: int
    received_ms: int


class BeaconView:
    """The newest verified beacon (a lower slot than the newest is ignored)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beacon: SeenBeacon | None = None
        self._changed = threading.Condition(self._lock)

    def offer(self, beacon: SeenBeacon) -> bool:
        with self._lock:
            if self._beacon is not None and beacon.slot <= self._beacon.slot:
                return False
            self._beacon = beacon
            self._changed.notify_all()
            return True

    def latest(self) -> SeenBeacon | None:
        with self._lock:
            return self._beacon

    def wait(self, timeout_s: float) -> SeenBeacon | None:
        with self._lock:
            self._changed.wait_for(lambda: self._beacon is not None, timeout_s)
            return self._beacon


Note = Callable[[str], None]
OnChallenge = Callable[[str, Challenge, int], None]


class Inbox:
    """One thread judging every inbound message (``put`` is called by paho's threads)."""

    def __init__(
        self, coordinator: str, topics: Topics, beacons: BeaconView, on_challenge: OnChallenge, note: Note
    ) -> None:
        self.coordinator = coordinator
        self.topics = topics
        self.beacons = beacons
        self._on_challenge = on_challenge
        self._note = note
        # Beacons and challenges first (a challenge has a deadline), verdicts after, stop last.
        self._queue: queue.PriorityQueue[tuple[int, int, tuple[str, bytes, int] | None]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._work, name="sim-inbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, topic: str, payload: bytes, received_ms: int) -> None:
        rank = 1 if topic.endswith("/verdict") else 0
        self._queue.put((rank, next(self._order), (topic, payload, received_ms)))

    def stop(self) -> None:
        self._queue.put((2, next(self._order), None))
        self._thread.join(timeout=30)

    def idle(self) -> bool:
        return self._queue.empty()

    def _count_verdict(self, payload: bytes) -> None:
        """Count a verdict by kind and outcome (parsed, not verified: the truth never depends on it)."""
        try:
            parsed = parse_envelope(payload)
        except ProtocolError as exc:
            self._note(f"refused.{exc.reason}")
            return
        body = parsed.raw["body"]
        if parsed.kind != "verdict" or parsed.dev != self.coordinator:
            self._note("refused.untrusted_coordinator" if parsed.kind == "verdict" else "refused.wrong_kind")
            return
        reason = body.get("reason")
        outcome = reason if isinstance(reason, str) else "accepted"
        self._note(f"verdict.{body.get('ref_kind')}.{outcome}")

    def _work(self) -> None:
        while True:
            _, _, item = self._queue.get()
            if item is None:
                return
            try:
                self.handle(*item)
            except Exception as exc:  # a simulator bug must not stop the inbox; counted, named
                self._note(f"inbox_error.{type(exc).__name__}")

    def handle(self, topic: str, payload: bytes, received_ms: int) -> None:
        try:
            info = self.topics.parse(topic)
        except ProtocolError:
            self._note("refused.malformed")
            return
        if info.channel == "verdict":
            self._count_verdict(payload)
            return
        audience = info.dev
        trust = Trust(
            coordinators=frozenset({self.coordinator}),
            operators=frozenset(),
            kinds=DEVICE_INBOUND,
            audience=audience,
        )
        result = check_inbound(topic, payload, trust, topics=self.topics)
        if isinstance(result, Rejection):
            self._note(f"refused.{result.reason}")
            return
        body = result.envelope.body
        if isinstance(body, Beacon):
            seen = SeenBeacon(body.slot, body.nonce, body.slot_ms, received_ms)
            self._note("beacons" if self.beacons.offer(seen) else "beacons_not_newer")
        elif isinstance(body, Challenge):
            self._on_challenge(body.device, body, received_ms)
        else:
            self._note(f"unexpected.{result.envelope.kind}")
