"""Verify captured envelopes (one per line) with public information only.

Accepts raw JSON lines and ``mosquitto_sub -v`` lines (``topic payload``).
Each line is checked for size, strict JSON, envelope structure, signature and
body schema (:func:`~agent.protocol.envelope.verify_envelope`), the topic
(when present) against the kind and device, and the chain of each signer
(:class:`~agent.protocol.chain.ChainVerifier`).  Nothing raises: every problem
is counted per signer and listed with its line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ProtocolError
from agent.protocol.chain import ChainVerifier, Link, format_ranges
from agent.protocol.envelope import Envelope
from agent.protocol.inbound import Accepted, Rejection, Trust, check_inbound
from agent.protocol.kinds import ORIGIN
from agent.protocol.topics import DEFAULT_PREFIX, Topics

#: Per-signer counters, in display order.
COUNTERS = (
    "messages",
    "valid",
    "bad_signature",
    "schema",
    "oversized",
    "topic",
    "forks",
    "replays",
    "duplicates",
    "late",
    "gaps",
)


@dataclass
class Problem:
    line: int
    reason: str
    message: str
    dev: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason, "message": self.message, "dev": self.dev}


@dataclass
class SignerReport:
    dev: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    roles: set[str] = field(default_factory=set)
    kinds: dict[str, int] = field(default_factory=dict)
    missing: list[tuple[int, int]] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None

    @property
    def gaps_are_problems(self) -> bool:
        # A coordinator's chain spans all devices: a capture of some topics sees only part of it.
        return "device" in self.roles or not self.roles

    @property
    def problems(self) -> int:
        c = self.counts
        n = c["bad_signature"] + c["schema"] + c["oversized"] + c["topic"] + c["forks"] + c["replays"]
        if self.gaps_are_problems:
            n += len(self.missing)
        return n

    def to_dict(self) -> dict[str, Any]:
        return {
            "dev": self.dev,
            **self.counts,
            "roles": sorted(self.roles),
            "kinds": dict(sorted(self.kinds.items())),
            "missing": [list(r) for r in self.missing],
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "ok": self.problems == 0,
        }


@dataclass
class CaptureReport:
    lines: int = 0
    signers: dict[str, SignerReport] = field(default_factory=dict)
    malformed: list[Problem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.malformed and all(s.problems == 0 for s in self.signers.values())

    @property
    def messages(self) -> int:
        return sum(s.counts["messages"] for s in self.signers.values())

    @property
    def valid(self) -> int:
        return sum(s.counts["valid"] for s in self.signers.values())

    def summary(self) -> str:
        bad = sum(s.problems for s in self.signers.values())
        verdict = "all valid" if self.ok else "PROBLEMS FOUND"
        return (
            f"{verdict}: {self.lines} lines, {len(self.signers)} signers, {self.messages} messages, "
            f"{self.valid} valid, {bad} signer problems, {len(self.malformed)} malformed lines"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "lines": self.lines,
            "messages": self.messages,
            "valid": self.valid,
            "summary": self.summary(),
            "signers": {dev: s.to_dict() for dev, s in sorted(self.signers.items())},
            "malformed": [p.to_dict() for p in self.malformed],
            "problems": [p.to_dict() for p in self.problems],
        }


def split_line(line: str) -> tuple[str | None, str]:
    """``(topic, payload)`` for a ``mosquitto_sub -v`` line, ``(None, line)`` for a raw JSON line."""
    text = line.strip()
    if text.startswith("{"):
        return None, text
    topic, sep, payload = text.partition(" ")
    if not sep:
        raise ProtocolError("neither a JSON object nor 'topic payload'", reason="malformed")
    return topic, payload.strip()


def _claimed_dev(payload: str) -> str | None:
    """The ``dev`` a malformed payload claims, to attribute the problem (never trusted otherwise)."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict) and isinstance(obj.get("dev"), str) and 0 < len(obj["dev"]) <= 64:
        return str(obj["dev"])
    return None


#: Rejection reason -> the per-signer counter it is counted in.
_REASON_COUNTER = {
    "bad_signature": "bad_signature",
    "bad_cosignature": "bad_signature",
    "oversized": "oversized",
    "topic": "topic",
    "wrong_kind": "topic",
    "wrong_channel": "topic",
    "fork": "forks",
    "replay": "replays",
    "duplicate": "duplicates",
}
_LINK_COUNTER = {Link.LATE: "late", Link.GAP: "gaps"}


class CaptureVerifier:
    """Feed lines with :meth:`feed`; read :attr:`report` (``finish()`` fills the missing ranges).

    Each line is judged by the shared :func:`~agent.protocol.inbound.check_inbound`, with no
    registry (any device key), the pinned coordinator if one is given, and each signer's
    chain followed from the first envelope seen (a capture may start mid-chain).
    """

    def __init__(self, *, prefix: str = DEFAULT_PREFIX, coordinator: str | None = None) -> None:
        self.topics = Topics(prefix)
        self.coordinator = coordinator
        self.trust = Trust(coordinators=frozenset({coordinator}) if coordinator else None)
        self.report = CaptureReport()
        self._chains: dict[str, ChainVerifier] = {}
        self._gap_lines: list[tuple[str, tuple[int, int], int]] = []

    def _signer(self, dev: str) -> SignerReport:
        if dev not in self.report.signers:
            self.report.signers[dev] = SignerReport(dev)
        return self.report.signers[dev]

    def _problem(self, number: int, reason: str, message: str, dev: str | None) -> None:
        self.report.problems.append(Problem(number, reason, message, dev))

    def _chain_of(self, env: Envelope) -> ChainVerifier:
        return self._chains.setdefault(env.dev, ChainVerifier(history=1_000_000))

    def feed(self, number: int, line: str | bytes) -> None:
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                if line.strip():
                    self.report.lines += 1
                    self.report.malformed.append(
                        Problem(number, "malformed", f"not UTF-8 at byte {exc.start}")
                    )
                return
        if not line.strip():
            return
        self.report.lines += 1
        try:
            topic, payload = split_line(line)
        except ProtocolError as exc:
            self.report.malformed.append(Problem(number, exc.reason, exc.message))
            return
        result = check_inbound(topic, payload, self.trust, self._chain_of, topics=self.topics)
        if isinstance(result, Accepted):
            self._accepted(number, result)
        else:
            self._rejected(number, result, payload)

    def _count_kind(self, signer: SignerReport, env: Envelope) -> None:
        signer.kinds[env.kind] = signer.kinds.get(env.kind, 0) + 1
        signer.roles.add(ORIGIN[env.kind])
        if not env.sideband:
            signer.first_seq = env.seq if signer.first_seq is None else min(signer.first_seq, env.seq)
            signer.last_seq = env.seq if signer.last_seq is None else max(signer.last_seq, env.seq)

    def _accepted(self, number: int, result: Accepted) -> None:
        env = result.envelope
        signer = self._signer(env.dev)
        signer.counts["messages"] += 1
        signer.counts["valid"] += 1
        self._count_kind(signer, env)
        link = result.link
        if link is None:
            return
        counter = _LINK_COUNTER.get(link.link)
        if counter:
            signer.counts[counter] += 1
        if link.link is Link.GAP and link.missing is not None:
            # A valid envelope; the gap itself is a chain problem (reported from ``missing`` at the end).
            self._gap_lines.append((env.dev, link.missing, number))

    def _rejected(self, number: int, result: Rejection, payload: str) -> None:
        dev = result.dev if result.dev is not None else _claimed_dev(payload)
        if dev is None:
            self.report.malformed.append(Problem(number, result.reason, result.message))
            return
        signer = self._signer(dev)
        signer.counts["messages"] += 1
        if result.envelope is not None:
            self._count_kind(signer, result.envelope)
        signer.counts[_REASON_COUNTER.get(result.reason, "schema")] += 1
        if result.reason == "duplicate":
            signer.counts["valid"] += 1  # a QoS 1 redelivery: valid, and harmless
            return
        self._problem(number, result.reason, result.message, dev)

    def finish(self) -> CaptureReport:
        for dev, chain in self._chains.items():
            signer = self.report.signers[dev]
            signer.missing = chain.missing
            if not signer.gaps_are_problems:
                continue
            for lo, hi in signer.missing:
                line = next((n for d, (a, b), n in self._gap_lines if d == dev and a <= lo and hi <= b), 0)
                self._problem(line, "chain_gap", f"missing seq {format_ranges([(lo, hi)])}", dev)
        self.report.problems.sort(key=lambda p: p.line)
        return self.report


def verify_capture(
    lines: Iterable[str | bytes], *, prefix: str = DEFAULT_PREFIX, coordinator: str | None = None
) -> CaptureReport:
    """Verify every line of a capture; see :class:`CaptureVerifier`."""
    verifier = CaptureVerifier(prefix=prefix, coordinator=coordinator)
    for number, line in enumerate(lines, start=1):
        verifier.feed(number, line)
    return verifier.finish()
