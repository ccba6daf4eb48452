"""check_inbound: one case per reason, cheap checks before the signature, chain results."""

from __future__ import annotations

from typing import Any

import pytest
from solders.keypair import Keypair

from agent.protocol.chain import ChainSigner, ChainVerifier, Link
from agent.protocol.envelope import Envelope, build_envelope
from agent.protocol.inbound import Accepted, Rejection, SeqFloor, Trust, check_inbound
from agent.protocol.kinds import DEVICE_INBOUND
from agent.protocol.topics import Topics
from agent.protocol.vectors import TS, heartbeat_body
from tests.support.manifests import manifest_body

DEV = Keypair.from_seed(bytes([31]) * 32)
OTHER = Keypair.from_seed(bytes([32]) * 32)
COORD = Keypair.from_seed(bytes([33]) * 32)
ROGUE = Keypair.from_seed(bytes([34]) * 32)
OPERATOR = Keypair.from_seed(bytes([35]) * 32)
T = Topics()
D = str(DEV.pubkey())
AT_DEVICE = Trust(
    coordinators=frozenset({str(COORD.pubkey())}),
    operators=frozenset({str(OPERATOR.pubkey())}),
    kinds=DEVICE_INBOUND,
    audience=D,
)


def challenge(signer: Keypair = COORD, seq: int = 5, device: str = D, **kw: Any) -> Envelope:
    body = {"device": device, "nonce": "ab" * 32, "model_sha256": "cd" * 32, "deadline_ms": TS + 5000, **kw}
    return build_envelope(signer, "challenge", body, seq=seq, prev="11" * 32, ts=TS)


def heartbeat(signer: Keypair = DEV) -> Envelope:
    return ChainSigner(signer).next("heartbeat", heartbeat_body(), TS)


def reason(result: Accepted | Rejection) -> str:
    assert isinstance(result, Rejection), result
    return result.reason


def test_a_good_challenge_is_accepted() -> None:
    env = challenge()
    result = check_inbound(T.device(D, "challenge"), env.wire, AT_DEVICE)
    assert isinstance(result, Accepted) and result.envelope.hash == env.hash and result.link is None


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (b"x" * 9000, "oversized"),
        (b"{not json", "malformed"),
        (b'{"a":' + b"9" * 5000 + b"}", "malformed"),
        (b"\xff\xfe", "malformed"),
        (b"[]", "malformed"),
        (challenge().wire.replace(b'"kind":"challenge"', b'"kind":"gossip"'), "unknown_kind"),
    ],
)
def test_bytes_and_structure(payload: bytes, want: str) -> None:
    assert reason(check_inbound(T.device(D, "challenge"), payload, AT_DEVICE)) == want


def test_a_device_takes_no_device_kinds() -> None:
    env = heartbeat(OTHER)
    result = check_inbound(T.hb(str(OTHER.pubkey())), env.wire, AT_DEVICE)
    assert reason(result) == "wrong_kind"
    assert (
        isinstance(result, Rejection) and result.message == "this receiver does not take heartbeat messages"
    )


def test_kind_on_the_wrong_topic() -> None:
    result = check_inbound(T.device(D, "verdict"), challenge().wire, AT_DEVICE)
    assert isinstance(result, Rejection) and result.reason == "wrong_kind"
    assert result.message == f"a challenge does not belong on {T.device(D, 'verdict')}"


def test_topic_of_another_device() -> None:
    other = str(OTHER.pubkey())
    result = check_inbound(T.device(other, "challenge"), challenge().wire, AT_DEVICE)
    assert reason(result) == "topic"


def test_addressed_to_another_device_on_its_topic_is_wrong_device() -> None:
    other = str(OTHER.pubkey())
    result = check_inbound(T.device(other, "challenge"), challenge(device=other).wire, AT_DEVICE)
    assert reason(result) == "wrong_device"


def test_unpinned_refuses_every_coordinator_message_before_the_signature() -> None:
    unpinned = Trust(coordinators=frozenset(), kinds=DEVICE_INBOUND, audience=D)
    forged = challenge().wire.replace(b'"seq":5', b'"seq":6')  # signature no longer verifies
    for payload in (challenge().wire, forged):
        result = check_inbound(T.device(D, "challenge"), payload, unpinned)
        assert reason(result) == "unpinned_coordinator"


def test_another_coordinator_key_is_untrusted() -> None:
    result = check_inbound(T.device(D, "challenge"), challenge(ROGUE).wire, AT_DEVICE)
    assert reason(result) == "untrusted_coordinator"


def test_forged_signature() -> None:
    forged = challenge().wire.replace(b'"deadline_ms":1700000005000', b'"deadline_ms":1700000009000')
    assert reason(check_inbound(T.device(D, "challenge"), forged, AT_DEVICE)) == "bad_signature"


def test_schema_after_a_valid_signature() -> None:
    env = challenge()
    raw = dict(env.raw)
    raw["body"] = {**raw["body"], "extra": 1}
    from agent.protocol.envelope import signed_bytes

    raw["sig"] = str(COORD.sign_message(signed_bytes(raw)))
    from agent.protocol.canonical import canonical

    assert reason(check_inbound(T.device(D, "challenge"), canonical(raw), AT_DEVICE)) == "schema"


def test_manifests_need_a_trusted_operator_and_their_own_channel() -> None:
    env = build_envelope(OPERATOR, "manifest", manifest_body(), seq=1, prev="0" * 64, ts=TS)
    channel = manifest_body()["channel"]
    assert isinstance(check_inbound(T.manifest(channel), env.wire, AT_DEVICE), Accepted)
    assert reason(check_inbound(T.manifest("other"), env.wire, AT_DEVICE)) == "wrong_channel"
    rogue = build_envelope(ROGUE, "manifest", manifest_body(), seq=1, prev="0" * 64, ts=TS)
    assert reason(check_inbound(T.manifest(channel), rogue.wire, AT_DEVICE)) == "untrusted_operator"


def test_registry_refuses_unknown_devices() -> None:
    coordinator = Trust(devices={str(OTHER.pubkey())}, coordinators=frozenset({str(COORD.pubkey())}))
    result = check_inbound(T.hb(D), heartbeat().wire, coordinator)
    assert reason(result) == "unknown_device"
    assert isinstance(check_inbound(T.hb(str(OTHER.pubkey())), heartbeat(OTHER).wire, coordinator), Accepted)


def test_seq_floor_refuses_at_or_below_and_allows_gaps() -> None:
    floor = SeqFloor(5)
    assert reason(check_inbound(None, challenge(seq=5).wire, AT_DEVICE, lambda _env: floor)) == "replay"
    assert reason(check_inbound(None, challenge(seq=2).wire, AT_DEVICE, lambda _env: floor)) == "replay"
    accepted = check_inbound(None, challenge(seq=9).wire, AT_DEVICE, lambda _env: floor)
    assert isinstance(accepted, Accepted) and accepted.link is not None and accepted.link.link is Link.OK


def test_chain_results() -> None:
    signer = ChainSigner(DEV)
    envs = [signer.next("heartbeat", heartbeat_body(i), TS + i) for i in range(4)]
    fork = ChainSigner(DEV).next("heartbeat", heartbeat_body(99), TS)
    chain = ChainVerifier.from_state(0, "0" * 64)
    trust = Trust()

    def judge(env: Envelope) -> Accepted | Rejection:
        return check_inbound(T.hb(D), env.wire, trust, lambda _env: chain)

    assert isinstance(judge(envs[0]), Accepted)
    assert reason(judge(envs[0])) == "duplicate"
    assert reason(judge(fork)) == "fork"
    gap = judge(envs[2])
    assert isinstance(gap, Accepted) and gap.link is not None and gap.link.missing == (2, 2)
    late = judge(envs[1])
    assert isinstance(late, Accepted) and late.link is not None and late.link.link is Link.LATE
    rejected = judge(fork)
    assert isinstance(rejected, Rejection) and rejected.envelope is not None  # verified, then refused


def test_rejections_attribute_the_claimed_signer() -> None:
    forged = heartbeat().wire.replace(b'"uptime_s":3600', b'"uptime_s":3601')
    result = check_inbound(T.hb(D), forged, Trust())
    assert isinstance(result, Rejection) and result.dev == D and result.kind == "heartbeat"
