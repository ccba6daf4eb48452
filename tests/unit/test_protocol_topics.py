"""Topics: builders, parser, QoS/retain, filters."""

from __future__ import annotations

import pytest
from solders.keypair import Keypair

from agent.errors import ProtocolError
from agent.protocol.topics import CHANNEL_KIND, Topics, topic_matches

DEV = str(Keypair.from_seed(bytes([5]) * 32).pubkey())


def test_builders_default_prefix() -> None:
    t = Topics()
    assert t.beacon() == "edgeproof/v1/beacon"
    assert t.hb(DEV) == f"edgeproof/v1/dev/{DEV}/hb"
    assert t.for_kind("challenge_response", DEV) == f"edgeproof/v1/dev/{DEV}/response"
    assert t.for_kind("beacon", DEV) == "edgeproof/v1/beacon"
    assert t.manifest("stable") == "edgeproof/v1/fleet/manifest/stable"
    assert t.device_filter(DEV) == f"edgeproof/v1/dev/{DEV}/#"
    assert t.channel_filter("proof") == "edgeproof/v1/dev/+/proof"


def test_custom_prefix_and_round_trip() -> None:
    t = Topics("site-a/edge")
    for channel, kind in CHANNEL_KIND.items():
        info = t.parse(t.device(DEV, channel))
        assert (info.scope, info.dev, info.channel, info.kind) == ("device", DEV, channel, kind)
    assert t.parse(t.beacon()).kind == "beacon"
    manifest = t.parse(t.manifest("canary"))
    assert (manifest.scope, manifest.channel, manifest.kind) == ("manifest", "canary", "manifest")


def test_qos_and_retain() -> None:
    t = Topics()
    assert t.parse(t.status(DEV)).retain and t.parse(t.beacon()).retain
    assert t.parse(t.manifest("stable")).retain
    assert not t.parse(t.proof(DEV)).retain
    assert t.parse(t.proof(DEV)).qos == 1


@pytest.mark.parametrize(
    ("prefix", "ok"), [("edgeproof/v1", True), ("", False), ("/a", False), ("a/", False), ("a/+", False)]
)
def test_prefix_validation(prefix: str, ok: bool) -> None:
    if ok:
        Topics(prefix)
    else:
        with pytest.raises(ProtocolError, match=r"must be non-empty"):
            Topics(prefix)


def test_bad_topics() -> None:
    t = Topics()
    with pytest.raises(ProtocolError, match=r"^unknown topic 'edgeproof/v1/dev/xyz/hb'$"):
        t.parse("edgeproof/v1/dev/xyz/hb")
    with pytest.raises(ProtocolError, match=r"is not under 'edgeproof/v1'"):
        t.parse("other/beacon")
    with pytest.raises(ProtocolError, match=r"^unknown topic"):
        t.parse(f"edgeproof/v1/dev/{DEV}/frames")
    with pytest.raises(ProtocolError, match=r"is not a base58 public key"):
        t.hb("+")
    with pytest.raises(ProtocolError, match=r"unknown device topic channel"):
        t.device(DEV, "frames")
    with pytest.raises(ProtocolError, match=r"must be a lower-case identifier"):
        t.manifest("#")


def test_subscriptions() -> None:
    t = Topics()
    subs = dict(t.device_subscriptions(DEV, ("stable",)))
    assert set(subs) == {
        "edgeproof/v1/beacon",
        f"edgeproof/v1/dev/{DEV}/challenge",
        f"edgeproof/v1/dev/{DEV}/verdict",
        f"edgeproof/v1/dev/{DEV}/voucher",
        "edgeproof/v1/fleet/manifest/stable",
    }
    assert set(subs.values()) == {1}
    shared = [f for f, _ in t.coordinator_subscriptions("coord")]
    assert "$share/coord/edgeproof/v1/dev/+/proof" in shared
    assert all(topic_matches(f, t.proof(DEV)) for f in shared if f.endswith("/proof"))


@pytest.mark.parametrize(
    ("flt", "topic", "match"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "$SYS/x", False),
        ("+/x", "a/x/y", False),
        ("a/b", "a/b", True),
        ("$share/g/a/+", "a/b", True),
    ],
)
def test_topic_matches(flt: str, topic: str, match: bool) -> None:
    assert topic_matches(flt, topic) is match
