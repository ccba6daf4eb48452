"""Hostile input fuzzing: parse, verify, check_inbound and the capture verifier never raise unnamed.

Every generated or mutated payload -- raw bytes, JSON of any shape, valid envelopes of every kind
with bytes flipped, cut, spliced or values replaced (huge integers, deep nesting, floats, lone
surrogates) -- must come back as a ProtocolError with a catalogued reason (parse/verify), as an
Accepted/Rejection (check_inbound), or as a counted line (capture verifier).  Nothing else may
escape.  Runs are derandomized (fixed seeds) so a failure reproduces.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from solders.keypair import Keypair

from agent.errors import ProtocolError
from agent.protocol.canonical import parse_json
from agent.protocol.capture import CaptureVerifier
from agent.protocol.chain import ChainSigner, ChainVerifier
from agent.protocol.envelope import Envelope, build_envelope, verify_envelope
from agent.protocol.inbound import Accepted, Rejection, Trust, check_inbound
from agent.protocol.kinds import DEVICE_INBOUND
from agent.protocol.reasons import is_reason
from agent.protocol.topics import Topics
from agent.protocol.vectors import TS, heartbeat_body, proof_body
from tests.support.manifests import manifest_body

pytestmark = pytest.mark.integration

DEV = Keypair.from_seed(bytes([41]) * 32)
COORD = Keypair.from_seed(bytes([42]) * 32)
OPERATOR = Keypair.from_seed(bytes([43]) * 32)
T = Topics()
D = str(DEV.pubkey())
#: Generated and mutated inputs, each fed to every reader.
EXAMPLES = 10_000


def _seeds() -> list[tuple[str, bytes]]:
    signer = ChainSigner(DEV)
    out = [
        (T.hb(D), signer.next("heartbeat", heartbeat_body(), TS).wire),
        (T.proof(D), signer.next("proof", proof_body(), TS + 1).wire),
        (T.status(D), signer.sideband("status", _status(), TS + 2).wire),
    ]
    challenge = {"device": D, "nonce": "ab" * 32, "model_sha256": "cd" * 32, "deadline_ms": TS + 9}
    out.append(
        (
            T.device(D, "challenge"),
            build_envelope(COORD, "challenge", challenge, seq=3, prev="1" * 64, ts=TS).wire,
        )
    )
    beacon = {"slot": 7, "nonce": "ef" * 32, "time_ms": TS, "slot_ms": 60_000}
    out.append((T.beacon(), build_envelope(COORD, "beacon", beacon, seq=4, prev="2" * 64, ts=TS).wire))
    manifest = manifest_body()
    out.append(
        (
            T.manifest(manifest["channel"]),
            build_envelope(OPERATOR, "manifest", manifest, seq=1, prev="0" * 64, ts=TS).wire,
        )
    )
    return out


def _status() -> dict[str, Any]:
    return {
        "state": "online",
        "model_id": "m",
        "model_sha256": "0" * 64,
        "agent_version": "1.0",
        "profile": "generic-x86_64",
    }


SEEDS = _seeds()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
odd_tokens = st.sampled_from(
    [
        b"9" * 5000,
        b"-" + b"9" * 400,
        b"1e999",
        b"NaN",
        b"-Infinity",
        b"[" * 200,
        b'"\\ud800"',
        b"\x00",
        b"\xff",
    ]
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str | None, bytes]:
    topic, wire = draw(st.sampled_from(SEEDS))
    data = bytearray(wire)
    how = draw(st.sampled_from(["flip", "cut", "insert", "splice", "value", "key", "token", "topic"]))
    if how == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=64))
    elif how == "splice":
        other = draw(st.sampled_from(SEEDS))[1]
        i, j = draw(st.integers(0, len(data))), draw(st.integers(0, len(other)))
        data = data[:i] + other[j:]
    elif how in ("value", "key"):
        obj = json.loads(wire)
        target = obj if draw(st.booleans()) else obj["body"]
        key = draw(st.sampled_from(sorted(target)))
        if how == "value":
            target[key] = draw(json_values)
        else:
            target[draw(st.text(min_size=1, max_size=8))] = target.pop(key)
        data = bytearray(json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass"))
    elif how == "token":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(odd_tokens)
    else:
        topic = draw(st.sampled_from([t for t, _ in SEEDS] + ["x/y", "edgeproof/v1/dev/+/hb", ""]))
    return topic, bytes(data)


payloads = st.one_of(
    st.binary(max_size=600).map(lambda b: (None, b)),
    json_values.map(lambda v: (None, json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass"))),
    mutated(),
)

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DEVICE_TRUST = Trust(
    coordinators=frozenset({str(COORD.pubkey())}),
    operators=frozenset({str(OPERATOR.pubkey())}),
    kinds=DEVICE_INBOUND,
    audience=D,
)


def _blank(line: bytes) -> bool:
    # The capture verifier's own rule: blank after decoding (str.strip knows more whitespace).
    try:
        return not line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return not line.strip()


@FUZZ
@given(payloads)
def test_every_input_is_classified_by_every_reader(case: tuple[str | None, bytes]) -> None:
    topic, payload = case
    # 1. strict JSON
    try:
        parse_json(payload)
    except ProtocolError as exc:
        assert is_reason(exc.reason), exc.reason
    # 2. envelope verification
    try:
        assert isinstance(verify_envelope(payload), Envelope)
    except ProtocolError as exc:
        assert is_reason(exc.reason), exc.reason
    # 3. the shared inbound check, as a device and as an auditor, following chains
    chains: dict[str, ChainVerifier] = {}
    for trust in (DEVICE_TRUST, Trust()):
        result = check_inbound(topic, payload, trust, lambda env: chains.setdefault(env.dev, ChainVerifier()))
        assert isinstance(result, Accepted | Rejection)
        if isinstance(result, Rejection):
            assert is_reason(result.reason), result.reason
    # 4. the capture verifier: the line is counted, once, as a message or as malformed
    line = payload if topic is None else topic.encode("utf-8", "surrogatepass") + b" " + payload
    if b"\n" in line or b"\r" in line or _blank(line):
        return
    verifier = CaptureVerifier()
    verifier.feed(1, line)
    report = verifier.finish()
    assert report.lines == 1
    assert report.messages + len(report.malformed) == 1
    for problem in report.problems + report.malformed:
        assert is_reason(problem.reason), problem.reason
