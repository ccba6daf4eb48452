"""A capture of what an epoch's audit rests on, and the audit recomputed from it by anyone.

:func:`export_capture` writes JSON lines (``record`` names each line's type):

* ``header``: format version, the epoch, ``slot_ms`` / ``epoch_ms``, the coordinator's public
  key, the topic prefix and the ingest policy (clock skew, beacon age, late window, the
  firmware profiles' throughput bounds, model sha256 -> class);
* ``device``: every registered device with its owner binding signed by the device key;
* ``liveness``: every coordinator run (started, last refresh, stopped);
* ``beacon`` / ``challenge`` / ``verdict``: the coordinator's own signed envelopes (verdicts
  only about challenges: the answers' scores and the misses);
* ``message``: every message the coordinator stored, in commit order, up to the last one
  ingested before the epoch's end: topic, ``ingest_ms``, the raw bytes (base64) and the
  verdict the coordinator recorded (for comparison only).

:func:`replay_capture` trusts none of the signed parts: it re-verifies every binding, beacon,
challenge and verdict against the keys in the capture, then replays ingest -- the same
:func:`agent.coordinator.ingest.classify`, with each message's recorded ``ingest_ms`` -- into
an in-memory SQLite store, in the recorded order.  A tampered envelope is judged again (a
broken signature is ``bad_signature``), so it changes the result.  Challenge outcomes are taken
from the verified verdicts.  :func:`capture_report` is then the ordinary
:func:`agent.coordinator.audit.epoch_report` over that store.  Unsigned and trusted as they
are: the liveness intervals and each message's ``ingest_ms`` (the coordinator's clock).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from agent.coordinator import challenge_rows
from agent.coordinator.audit import EpochReport, check_lengths, epoch_report
from agent.coordinator.ingest import Outcome, Policy, classify
from agent.coordinator.store import DeviceRecord, MessageRow, Store
from agent.errors import CorruptStateError, EdgeproofError, ProtocolError
from agent.profiles import Profile
from agent.protocol.binding import Binding, verify_binding
from agent.protocol.envelope import Envelope, verify_envelope
from agent.protocol.messages import Beacon, Challenge, ChallengeResponse, Verdict
from agent.protocol.topics import Topics

CAPTURE_VERSION = 1
#: Verdict reasons on a challenge answer that are the challenge's outcome (None: passed).
_ANSWER_OUTCOMES = frozenset(
    {"challenge_failed", "wrong_model", "challenge_late", "unknown_model", "reference_failed"}
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise CorruptStateError(f"{where}: raw_b64 must be a string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise CorruptStateError(f"{where}: raw_b64 is not base64: {exc}") from exc


# --- export ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportStats:
    path: str
    epoch: int
    devices: int
    runs: int
    beacons: int
    challenges: int
    verdicts: int
    messages: int

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _policy_json(policy: Policy) -> dict[str, Any]:
    return {
        "clock_skew_ms": policy.clock_skew_ms,
        "beacon_max_age_slots": policy.beacon_max_age_slots,
        "late_window_seqs": policy.late_window_seqs,
        "profiles": {pid: p.model_dump(mode="json") for pid, p in sorted(policy.profiles.items())},
        "model_classes": dict(sorted(policy.model_classes.items())),
    }


def _challenge_verdict(raw: bytes) -> bool:
    try:
        kind = json.loads(raw)["body"]["ref_kind"]
    except (ValueError, KeyError, TypeError):
        return False
    return kind in ("challenge", "challenge_response")


def capture_records(
    store: Store,
    epoch: int,
    *,
    slot_ms: int,
    epoch_ms: int,
    coordinator_key: str,
    policy: Policy,
    topic_prefix: str,
) -> Iterator[dict[str, Any]]:
    """The capture's records, header first (see the module docstring)."""
    check_lengths(slot_ms, epoch_ms)
    end = (epoch + 1) * epoch_ms
    yield {
        "record": "header",
        "version": CAPTURE_VERSION,
        "epoch": epoch,
        "slot_ms": slot_ms,
        "epoch_ms": epoch_ms,
        "coordinator": coordinator_key,
        "topic_prefix": topic_prefix,
        "policy": _policy_json(policy),
    }
    for d in store.devices():
        yield {
            "record": "device",
            "id": d.id,
            "owner": d.owner,
            "profile": d.profile,
            "tags": list(d.tags),
            "enrolled_ms": d.enrolled_ms,
            "binding": {"device": d.id, "owner": d.owner, "ts": d.binding_ts, "sig": d.binding_sig},
        }
    for run_id, started, last, stopped in store.runs():
        if started < end:
            yield {
                "record": "liveness",
                "run_id": run_id,
                "started_ms": started,
                "last_ms": last,
                "stopped_ms": stopped,
            }
    for slot, _nonce, _time, _slot_ms, issued, raw in challenge_rows.beacons(store):
        if issued < end and raw is not None:
            yield {"record": "beacon", "slot": slot, "raw_b64": _b64(raw)}
    for (raw,) in store.rows("SELECT raw FROM challenges WHERE issued_ms < ? ORDER BY id", (end,)):
        yield {"record": "challenge", "raw_b64": _b64(bytes(raw))}
    for seq, raw in store.rows(
        "SELECT seq, raw FROM verdicts WHERE signer = ? ORDER BY seq", (coordinator_key,)
    ):
        if _challenge_verdict(bytes(raw)):
            yield {"record": "verdict", "seq": int(seq), "raw_b64": _b64(bytes(raw))}
    newest = store.one("SELECT MAX(id) FROM messages WHERE ingest_ms < ?", (end,))
    last_id = int(newest[0]) if newest is not None and newest[0] is not None else 0
    for mid, topic, ingest_ms, raw, accepted, reason in store.rows(
        "SELECT id, topic, ingest_ms, raw, accepted, reason FROM messages WHERE id <= ? ORDER BY id",
        (last_id,),
    ):
        yield {
            "record": "message",
            "id": int(mid),
            "topic": str(topic),
            "ingest_ms": int(ingest_ms),
            "raw_b64": _b64(bytes(raw)),
            "accepted": bool(accepted),
            "reason": reason,
        }


def export_capture(
    store: Store,
    epoch: int,
    out: Path,
    *,
    slot_ms: int,
    epoch_ms: int,
    coordinator_key: str,
    policy: Policy,
    topic_prefix: str,
) -> ExportStats:
    """Write the capture of ``epoch`` to ``out`` (JSON lines); what it holds, counted."""
    counts: dict[str, int] = {}
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            for record in capture_records(
                store,
                epoch,
                slot_ms=slot_ms,
                epoch_ms=epoch_ms,
                coordinator_key=coordinator_key,
                policy=policy,
                topic_prefix=topic_prefix,
            ):
                handle.write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
                counts[record["record"]] = counts.get(record["record"], 0) + 1
        tmp.replace(out)
    except OSError as exc:
        raise EdgeproofError(f"cannot write the capture {out}: {exc}") from exc
    return ExportStats(
        str(out),
        epoch,
        counts.get("device", 0),
        counts.get("liveness", 0),
        counts.get("beacon", 0),
        counts.get("challenge", 0),
        counts.get("verdict", 0),
        counts.get("message", 0),
    )


# --- reading -----------------------------------------------------------------------------------


@dataclass
class Capture:
    path: str
    header: dict[str, Any]
    policy: Policy
    devices: list[dict[str, Any]] = field(default_factory=list)
    liveness: list[dict[str, Any]] = field(default_factory=list)
    beacons: list[bytes] = field(default_factory=list)
    challenges: list[bytes] = field(default_factory=list)
    verdicts: list[bytes] = field(default_factory=list)
    #: (topic, ingest_ms, raw, recorded accepted, recorded reason), in commit order.
    messages: list[tuple[str, int, bytes, bool, str | None]] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        return int(self.header["epoch"])

    @property
    def slot_ms(self) -> int:
        return int(self.header["slot_ms"])

    @property
    def epoch_ms(self) -> int:
        return int(self.header["epoch_ms"])


def read_capture(path: Path) -> Capture:
    """Parse a capture file; CorruptStateError (with the line) if it is not one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptStateError(f"cannot read the capture {path}: {exc}") from exc
    capture: Capture | None = None
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise CorruptStateError(f"{where}: not a JSON line: {exc}") from exc
        if not isinstance(record, dict):
            raise CorruptStateError(f"{where}: a record must be a JSON object")
        kind = record.get("record")
        try:
            if capture is None:
                if kind != "header" or record.get("version") != CAPTURE_VERSION:
                    raise CorruptStateError(
                        f"{where}: not an edgeproof capture (version {CAPTURE_VERSION} header expected first)"
                    )
                check_lengths(int(record["slot_ms"]), int(record["epoch_ms"]))
                for key in ("coordinator", "topic_prefix"):
                    if not isinstance(record[key], str):
                        raise TypeError(f"{key} must be a string")
                capture = Capture(str(path), record, _policy(record))
            elif kind in ("device", "liveness"):
                (capture.devices if kind == "device" else capture.liveness).append(record)
            elif kind in ("beacon", "challenge", "verdict"):
                raw = _unb64(record.get("raw_b64"), where)
                {"beacon": capture.beacons, "challenge": capture.challenges, "verdict": capture.verdicts}[
                    kind
                ].append(raw)
            elif kind == "message":
                capture.messages.append(
                    (
                        str(record["topic"]),
                        int(record["ingest_ms"]),
                        _unb64(record.get("raw_b64"), where),
                        bool(record.get("accepted")),
                        record.get("reason"),
                    )
                )
            else:
                raise CorruptStateError(f"{where}: unknown record type {kind!r}")
        except KeyError as exc:
            raise CorruptStateError(f"{where}: the {kind} record has no {exc.args[0]!r}") from exc
        except (TypeError, ValueError, pydantic.ValidationError) as exc:
            raise CorruptStateError(f"{where}: bad {kind} record: {exc}") from exc
    if capture is None:
        raise CorruptStateError(f"{path}: empty, not an edgeproof capture")
    return capture


# --- replay ------------------------------------------------------------------------------------


@dataclass
class ReplayStats:
    """What the replay refused of the capture and where it disagreed with the recorded verdicts."""

    devices_refused: int = 0
    beacons_refused: int = 0
    challenges_refused: int = 0
    verdicts_refused: int = 0
    messages: int = 0
    #: Messages whose replayed verdict (accepted, reason) differs from the recorded one.
    verdicts_differ: int = 0

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _policy(header: dict[str, Any]) -> Policy:
    p = header["policy"]
    return Policy(
        clock_skew_ms=int(p["clock_skew_ms"]),
        beacon_max_age_slots=int(p["beacon_max_age_slots"]),
        late_window_seqs=int(p["late_window_seqs"]),
        profiles={str(k): Profile.model_validate(v) for k, v in p["profiles"].items()},
        model_classes={str(k): str(v) for k, v in p["model_classes"].items()},
    )


def _verified(raw: bytes, signer: str, kind: str) -> Envelope | None:
    try:
        env = verify_envelope(raw, expected_signer=signer)
    except ProtocolError:
        return None
    return env if env.kind == kind else None


def _device(record: dict[str, Any]) -> DeviceRecord | None:
    """The device of a capture record if its binding verifies for that device and owner."""
    try:
        b = record["binding"]
        doc = Binding(str(b["device"]), str(b["owner"]), int(b["ts"]), str(b["sig"])).document()
        binding = verify_binding(doc)
    except (KeyError, TypeError, ValueError, ProtocolError):
        return None
    if binding.device != record.get("id") or binding.owner != record.get("owner"):
        return None
    return DeviceRecord(
        binding.device,
        binding.owner,
        str(record["profile"]),
        tuple(str(t) for t in record.get("tags", [])),
        binding.ts,
        binding.sig,
        int(record["enrolled_ms"]),
    )


def _classify(
    topic: str, raw: bytes, at: int, store: Store, policy: Policy, coord: str, topics: Topics
) -> Outcome:
    """``classify`` with a failure recorded as ``ingest_failed`` (as the coordinator's batch does)."""
    try:
        return classify(topic, raw, at, store, policy, coord, topics)
    except Exception as exc:
        digest = hashlib.sha256(raw).hexdigest()
        row = MessageRow(
            None, topic, None, None, None, digest, None, at, False, "ingest_failed", type(exc).__name__, raw
        )
        return Outcome(row)


class _Verdicts:
    """The verified challenge verdicts: misses by challenge hash, answer verdicts by answer hash."""

    def __init__(self, raws: list[bytes], signer: str, stats: ReplayStats) -> None:
        self.missed: dict[str, int] = {}  # challenge hash -> seq of its miss verdict
        self.on_answer: dict[str, list[tuple[int, Verdict]]] = {}
        for raw in raws:
            env = _verified(raw, signer, "verdict")
            if env is None or not isinstance(env.body, Verdict):
                stats.verdicts_refused += 1
                continue
            v = env.body
            if v.ref_kind == "challenge" and v.reason == "challenge_missed":
                self.missed[v.ref_hash] = env.seq
            elif v.ref_kind == "challenge_response":
                self.on_answer.setdefault(v.ref_hash, []).append((env.seq, v))

    def answer_seq(self, answer_hash: str) -> int | None:
        found = self.on_answer.get(answer_hash)
        return min(seq for seq, _ in found) if found else None


def _answer(raw: bytes) -> Envelope | None:
    try:
        env = verify_envelope(raw)
    except ProtocolError:
        return None
    return env if isinstance(env.body, ChallengeResponse) else None


def replay_capture(capture: Capture) -> tuple[Store, ReplayStats]:
    """An in-memory store rebuilt from the capture by re-verifying and re-ingesting it."""
    header = capture.header
    coord = str(header["coordinator"])
    topics = Topics(str(header["topic_prefix"]))
    policy = capture.policy
    stats = ReplayStats()
    store = Store.open(sqlite_path=":memory:")
    verdicts = _Verdicts(capture.verdicts, coord, stats)
    devices: list[DeviceRecord] = []
    for record in capture.devices:
        device = _device(record)
        if device is None:
            stats.devices_refused += 1
        else:
            devices.append(device)
    devices.sort(key=lambda d: (d.enrolled_ms, d.id))
    with store.transaction():
        for raw in capture.beacons:
            env = _verified(raw, coord, "beacon")
            if env is None or not isinstance(env.body, Beacon):
                stats.beacons_refused += 1
                continue
            b = env.body
            if challenge_rows.claim_slot(store, b.slot, b.nonce, b.time_ms, b.slot_ms, env.ts):
                challenge_rows.set_beacon_envelope(store, b.slot, coord, env.seq, raw)
        for raw in capture.challenges:
            env = _verified(raw, coord, "challenge")
            if env is None or not isinstance(env.body, Challenge):
                stats.challenges_refused += 1
                continue
            c = env.body
            challenge_rows.insert_challenge(
                store,
                dev=c.device,
                slot=env.ts // capture.slot_ms,
                nonce=c.nonce,
                model_sha256=c.model_sha256,
                signer=coord,
                seq=env.seq,
                digest=env.hash,
                issued_ms=env.ts,
                deadline_ms=c.deadline_ms,
                raw=raw,
            )
        for run in capture.liveness:
            store.start_run(str(run["run_id"]), coord, "capture", 0, int(run["started_ms"]))
            store.touch_run(str(run["run_id"]), int(run["last_ms"]))
            if run.get("stopped_ms") is not None:
                store.stop_run(str(run["run_id"]), int(run["stopped_ms"]))
        pending = list(devices)
        for topic, ingest_ms, raw, accepted, reason in capture.messages:
            while pending and pending[0].enrolled_ms <= ingest_ms:
                store.enroll(pending.pop(0))
            judged = _replay_one(store, topic, ingest_ms, raw, policy, coord, topics, verdicts)
            stats.messages += 1
            if (judged.accepted, judged.reason) != (accepted, reason):
                stats.verdicts_differ += 1
        for device in pending:
            store.enroll(device)
        _outcomes_from_verdicts(store, verdicts)
    return store, stats


def _replay_one(
    store: Store,
    topic: str,
    ingest_ms: int,
    raw: bytes,
    policy: Policy,
    coord: str,
    topics: Topics,
    verdicts: _Verdicts,
) -> MessageRow:
    """Judge and record one message as the coordinator's batch does (nothing is signed)."""
    answer = _answer(raw)
    if answer is not None:
        assert isinstance(answer.body, ChallengeResponse)
        row = challenge_rows.challenge_by_nonce(store, answer.dev, answer.body.nonce)
        miss = verdicts.missed.get(row.hash) if row is not None else None
        if row is not None and row.outcome is None and miss is not None:
            # The coordinator had marked the challenge missed before it judged this answer
            # (its miss verdict comes earlier on the coordinator's chain than the answer's).
            seq = verdicts.answer_seq(answer.hash)
            if seq is None or miss < seq:
                challenge_rows.set_outcome(store, row.id, "challenge_missed", ingest_ms)
    outcome = _classify(topic, raw, ingest_ms, store, policy, coord, topics)
    message_id = store.insert_message(outcome.row)
    if outcome.head is not None and outcome.row.dev is not None:
        store.set_head(outcome.row.dev, outcome.head, ingest_ms)
    if outcome.challenge is not None:
        challenge_id, state = outcome.challenge
        challenge_rows.set_outcome(store, challenge_id, state, ingest_ms, response_id=message_id)
    return outcome.row


def _outcomes_from_verdicts(store: Store, verdicts: _Verdicts) -> None:
    """Each challenge's outcome is what the coordinator's latest signed verdict on it says."""
    final: dict[int, tuple[int, str]] = {}
    for row in challenge_rows.challenges(store):
        miss = verdicts.missed.get(row.hash)
        if miss is not None:
            final[row.id] = (miss, "challenge_missed")
    for answer_hash, judged in verdicts.on_answer.items():
        found = store.one(
            "SELECT raw FROM messages WHERE hash = ? AND kind = 'challenge_response' ORDER BY id LIMIT 1",
            (answer_hash,),
        )
        env = _answer(bytes(found[0])) if found is not None else None
        if env is None:
            continue
        assert isinstance(env.body, ChallengeResponse)
        answered = challenge_rows.challenge_by_nonce(store, env.dev, env.body.nonce)
        if answered is None:
            continue
        for seq, v in judged:
            if v.device != env.dev:
                continue
            name = "passed" if v.accepted and v.reason is None else v.reason
            if name != "passed" and name not in _ANSWER_OUTCOMES:
                continue  # a refusal of the message (a replay, a fork, ...), not a score
            if answered.id not in final or final[answered.id][0] < seq:
                final[answered.id] = (seq, str(name))
    store.execute("UPDATE challenges SET outcome = NULL")
    for challenge_id, (_, name) in final.items():
        store.execute("UPDATE challenges SET outcome = ? WHERE id = ?", (name, challenge_id))


def capture_report(capture: Capture, epoch: int | None = None) -> tuple[EpochReport, ReplayStats]:
    """The audit of ``epoch`` (default: the capture's) recomputed from the capture alone."""
    wanted = capture.epoch if epoch is None else epoch
    if wanted > capture.epoch:
        raise EdgeproofError(
            f"the capture {capture.path} ends with epoch {capture.epoch}; epoch {wanted} is not in it",
            hint=f"export a capture of epoch {wanted} with: edgeproof audit export --epoch {wanted}",
        )
    store, stats = replay_capture(capture)
    try:
        return epoch_report(store, wanted, slot_ms=capture.slot_ms, epoch_ms=capture.epoch_ms), stats
    finally:
        store.close()
