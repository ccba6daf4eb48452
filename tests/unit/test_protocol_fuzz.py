"""Hostile input fuzzing: parse, verify, check_inbound and the capture verifier never raise unnamed.

Every generated or mutated payload -- raw bytes, JSON of any shape, valid envelopes of every kind
with bytes flipped, cut, spliced or values replaced (huge integers, deep nesting, floats, lone
surrogates) -- must come back as a ProtocolError with a catalogued reason (parse/verify), as an
Accepted/Rejection (check_inbound), or as a counted line (capture verifier).  Nothing else may
escape.  Runs are derandomized (fixed seeds) so a failure reproduces.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from solders.keypair import Keypair

from agent.errors import ProtocolError
from agent.protocol.canonical import parse_json
from agent.protocol.capture import CaptureVerifier
from agent.protocol.chain import ChainVerifier
from agent.protocol.envelope import Envelope, verify_envelope
from agent.protocol.inbound import Accepted, Rejection, Trust, check_inbound
from agent.protocol.kinds import DEVICE_INBOUND
from agent.protocol.reasons import is_reason
from agent.protocol.topics import Topics
from tests.support.fuzz import envelope_seeds, payloads

# CPU-bound: runs on the one xdist worker that takes the "cpu" group, never beside another of them.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("cpu")]

DEV = Keypair.from_seed(bytes([41]) * 32)
COORD = Keypair.from_seed(bytes([42]) * 32)
OPERATOR = Keypair.from_seed(bytes([43]) * 32)
COSIGNER = Keypair.from_seed(bytes([44]) * 32)
T = Topics()
D = str(DEV.pubkey())
#: Generated and mutated inputs, each fed to every reader: 1,000 examples of 10 payloads
#: (a third of the time of 10,000 single examples, for the same 10,000 inputs).
EXAMPLES = 1_000
PER_EXAMPLE = 10


SEEDS = envelope_seeds(DEV, COORD, OPERATOR, cosigner=COSIGNER)
PAYLOADS = payloads(SEEDS)


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DEVICE_TRUST = Trust(
    coordinators=frozenset({str(COORD.pubkey())}),
    operators=frozenset({str(OPERATOR.pubkey()), str(COSIGNER.pubkey())}),
    operator_threshold=2,
    kinds=DEVICE_INBOUND,
    audience=D,
)


def _blank(line: bytes) -> bool:
    # The capture verifier's own rule: blank after decoding (str.strip knows more whitespace).
    try:
        return not line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return not line.strip()


def test_every_input_is_classified_by_every_reader() -> None:
    classified: list[int] = []

    @FUZZ
    @given(st.lists(PAYLOADS, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def run(cases: list[tuple[str | None, bytes]]) -> None:
        for case in cases:
            _classify(case)
        classified.append(len(cases))

    run()
    assert sum(classified) >= 10_000, sum(classified)


def _classify(case: tuple[str | None, bytes]) -> None:
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
