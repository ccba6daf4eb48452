"""The operator's own record: its chain head and the highest version it signed per channel.

One JSON file per operator key (``--state FILE``)::

    {"format": "edgeproof-operator-state/1", "operator": "<base58>", "seq": 7, "head": "<hex64>",
     "channels": {"stable": {"version": 6, "envelope": "<hex64>", "ts": 1800000000000,
                             "abort_failure_rate": 0.2}}}

``seq``/``head`` continue the operator key's hash chain, so every manifest it signs is the next
link.  A channel's version only goes up: a reuse is refused as ``version_reused``, a lower one as
``stale_version``.  The record is written (atomically) *before* the manifest is published, so a
failed publish costs a version and a seq (a gap), never a second manifest under the same ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.atomic_file import write_atomic
from agent.errors import FleetError
from agent.protocol.envelope import GENESIS_PREV, Envelope

FORMAT = "edgeproof-operator-state/1"


@dataclass(frozen=True)
class ChannelRecord:
    version: int
    envelope: str
    ts: int
    abort_failure_rate: float


@dataclass(frozen=True)
class OperatorState:
    operator: str
    seq: int = 0
    head: str = GENESIS_PREV
    channels: dict[str, ChannelRecord] = field(default_factory=dict)

    def highest(self, channel: str) -> int:
        """The highest version this operator signed on ``channel`` (0: none)."""
        record = self.channels.get(channel)
        return record.version if record is not None else 0

    def next_version(self, channel: str, requested: int | None) -> int:
        """``requested`` if it is above the channel's highest, else refused; None means highest + 1."""
        highest = self.highest(channel)
        if requested is None:
            return highest + 1
        if requested == highest:
            raise FleetError(
                f"version {requested} on channel {channel!r} was already published by this operator",
                reason="version_reused",
                hint=f"publish every change under a new version (next: {highest + 1})",
            )
        if requested < highest:
            raise FleetError(
                f"version {requested} on channel {channel!r} is below the highest published version {highest}",
                reason="stale_version",
                hint=f"devices refuse it; use {highest + 1} or more (a rollback is a new, higher version)",
            )
        return requested

    def after(self, env: Envelope, channel: str, version: int, abort_failure_rate: float) -> OperatorState:
        """The state once ``env`` (the next link of this operator's chain) is signed."""
        if env.dev != self.operator or env.seq != self.seq + 1 or env.prev != self.head:
            raise FleetError(
                f"envelope seq {env.seq} by {env.dev} does not continue this state's chain "
                f"(seq {self.seq}, operator {self.operator})",
                reason="operator_state",
            )
        channels = dict(self.channels)
        channels[channel] = ChannelRecord(version, env.hash, env.ts, abort_failure_rate)
        return replace(self, seq=env.seq, head=env.hash, channels=channels)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "operator": self.operator,
            "seq": self.seq,
            "head": self.head,
            "channels": {
                name: {
                    "version": r.version,
                    "envelope": r.envelope,
                    "ts": r.ts,
                    "abort_failure_rate": r.abort_failure_rate,
                }
                for name, r in sorted(self.channels.items())
            },
        }


def load_state(path: Path, operator: str) -> OperatorState:
    """The state in ``path`` (a fresh one if the file does not exist); it must be ``operator``'s."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return OperatorState(operator=operator)
    except OSError as exc:
        raise FleetError(f"operator state {path} cannot be read: {exc}", reason="operator_state") from exc
    try:
        state = _parse(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise FleetError(
            f"operator state {path} is not a file fleet publish wrote: {exc}",
            reason="operator_state",
            hint="restore it from your backup; a new file would restart the chain at seq 1, which devices refuse",
        ) from exc
    if state.operator != operator:
        raise FleetError(
            f"operator state {path} belongs to operator {state.operator}, not to {operator}",
            reason="operator_state",
            hint="every operator key has its own --state file",
        )
    return state


def _parse(data: Any) -> OperatorState:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"format is not {FORMAT!r}")
    seq, head = data["seq"], data["head"]
    if type(seq) is not int or seq < 0 or not (isinstance(head, str) and len(head) == 64):
        raise ValueError("seq must be an integer >= 0 and head 64 hex characters")
    channels = {
        str(name): ChannelRecord(
            version=int(r["version"]),
            envelope=str(r["envelope"]),
            ts=int(r["ts"]),
            abort_failure_rate=float(r["abort_failure_rate"]),
        )
        for name, r in dict(data["channels"]).items()
    }
    return OperatorState(operator=str(data["operator"]), seq=seq, head=head, channels=channels)


def save_state(path: Path, state: OperatorState) -> None:
    """Write ``state`` atomically (temporary file, fsync, rename), mode 0600."""
    data = (json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n").encode()
    try:
        write_atomic(path, data, mode=0o600)
    except OSError as exc:
        raise FleetError(f"operator state {path} cannot be written: {exc}", reason="operator_state") from exc
