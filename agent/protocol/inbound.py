"""The role-neutral check of one inbound message: ``check_inbound(...) -> Accepted | Rejection``.

The device daemon, the coordinator's ingest and the capture verifier (``edgeproof
proofs verify``) all judge a message with this one function, so the same
condition always has the same name (the catalogue is :mod:`agent.protocol.reasons`).
It never raises for anything a peer can send: every problem becomes a
:class:`Rejection` with a reason.

Checks, cheapest first, so that a forged or misrouted message never costs a
signature verification:

1. size, strict JSON, envelope structure, known kind, the kind's size bound
   (``oversized``, ``malformed``, ``unknown_kind``);
2. the receiver takes this kind at all (``wrong_kind``), and the topic carries
   this kind (``wrong_kind``) about this device (``topic``) or channel (``wrong_channel``);
3. the signer may send it: a device kind from a registered device
   (``unknown_device``), a coordinator kind from the pinned coordinator
   (``unpinned_coordinator`` when nothing is pinned, ``untrusted_coordinator``),
   a manifest from a trusted operator (``untrusted_operator``), every co-signer trusted
   (``untrusted_signer``) and at least the threshold of them (``below_threshold``);
4. the signature (``bad_signature``), the body schema (``schema``), the addressee
   of a coordinator message (``wrong_device``);
5. the signer's chain, when the caller follows it (``replay``, ``fork``;
   a ``duplicate`` is reported as such so the caller can absorb it; a gap is
   accepted with the gap named in ``link``).
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Protocol

from agent.errors import ProtocolError
from agent.protocol.chain import Link, LinkResult
from agent.protocol.cosign import check_signers
from agent.protocol.envelope import Envelope, parse_envelope, verify_parsed
from agent.protocol.kinds import SPECS
from agent.protocol.topics import Topics

#: What to do about a missing pin (the device's config key; the installer writes it).
PIN_HINT = "set coordinator.pubkey to your coordinator's base58 public key"


class ChainObserver(Protocol):
    """What follows one signer's chain: :class:`~agent.protocol.chain.ChainVerifier`, :class:`SeqFloor`."""

    def observe(self, env: Envelope) -> LinkResult: ...


class SeqFloor:
    """A chain seen only in part (a coordinator's chain spans every device): refuse seq <= highest.

    A device receives only the coordinator messages meant for it, so gaps are
    normal and only a seq at or below the highest accepted one is a replay.
    """

    def __init__(self, highest: int) -> None:
        self.highest = highest

    def observe(self, env: Envelope) -> LinkResult:
        if env.sideband or env.seq > self.highest:
            return LinkResult(Link.OK, env.seq)
        return LinkResult(
            Link.REPLAY,
            env.seq,
            detail=f"seq {env.seq} is at or below the highest accepted seq {self.highest}",
        )


@dataclass(frozen=True)
class Trust:
    """Who the receiver believes.  ``None`` means "any key" (an offline auditor); empty means "nobody"."""

    #: Registered device keys (a coordinator's registry); None accepts any device key.
    devices: Container[str] | None = None
    #: Pinned coordinator keys; None accepts any; empty refuses all (``unpinned_coordinator``).
    coordinators: frozenset[str] | None = None
    #: Trusted fleet operator keys; None accepts any; empty refuses all (``untrusted_operator``).
    operators: frozenset[str] | None = None
    #: k of k-of-n: distinct trusted keys that must sign a manifest (ignored when ``operators`` is None).
    operator_threshold: int = 1
    #: Kinds this receiver takes (e.g. a device takes only coordinator and operator kinds).
    kinds: frozenset[str] | None = None
    #: The receiving device: a coordinator message addressed to another device is ``wrong_device``.
    audience: str | None = None


@dataclass(frozen=True)
class Accepted:
    envelope: Envelope
    #: The chain result when the caller follows the signer's chain (OK, START, GAP, LATE, SIDEBAND).
    link: LinkResult | None = None
    ok: bool = True


@dataclass(frozen=True)
class Rejection:
    reason: str
    message: str
    #: The signer the message claims (for attribution only: never trusted unless ``envelope`` is set).
    dev: str | None = None
    kind: str | None = None
    #: The envelope, when it verified but was refused afterwards (addressee, chain).
    envelope: Envelope | None = None
    #: What the receiver's operator can do about it, when there is something (e.g. pin a key).
    hint: str | None = None
    ok: bool = False

    def error(self) -> ProtocolError:
        """The rejection as the project's exception (for a caller that raises or logs one)."""
        return ProtocolError(self.message, reason=self.reason, hint=self.hint)


#: Returns the chain follower of one signer, or None to skip chain checks for it.
ChainLookup = Callable[[Envelope], ChainObserver | None]


def _about(env_kind: str, env_dev: str, body_device: str | None) -> str | None:
    """The device a message is about: its signer for device kinds, the body's ``device`` otherwise."""
    return env_dev if SPECS[env_kind].origin == "device" else body_device


def _check_signer(kind: str, signers: tuple[str, ...], trust: Trust) -> None:
    dev = signers[0]
    origin = SPECS[kind].origin
    if origin == "device":
        if trust.devices is not None and dev not in trust.devices:
            raise ProtocolError(
                f"{kind} from {dev}, which is not a registered device", reason="unknown_device"
            )
    elif origin == "coordinator":
        if trust.coordinators is not None and not trust.coordinators:
            raise ProtocolError(
                f"{kind} refused: no coordinator key is pinned", reason="unpinned_coordinator", hint=PIN_HINT
            )
        if trust.coordinators is not None and dev not in trust.coordinators:
            pinned = ", ".join(sorted(trust.coordinators))
            raise ProtocolError(
                f"{kind} signed by {dev}, not the pinned coordinator {pinned}", reason="untrusted_coordinator"
            )
    elif trust.operators is not None:
        check_signers(kind, signers, trust.operators, trust.operator_threshold)


def _check_topic(topics: Topics, topic: str, kind: str, dev: str, raw_body: object) -> None:
    info = topics.parse(topic)
    if info.kind != kind:
        raise ProtocolError(f"a {kind} does not belong on {topic}", reason="wrong_kind")
    body = raw_body if isinstance(raw_body, dict) else {}
    if info.scope == "manifest":
        if body.get("channel") != info.channel:
            raise ProtocolError(
                f"manifest for channel {body.get('channel')} published on {topic}", reason="wrong_channel"
            )
        return
    if info.scope == "device":
        device = body.get("device")
        about = _about(kind, dev, device if isinstance(device, str) else None)
        if info.dev != about:
            raise ProtocolError(f"{kind} about {about} published on {topic}", reason="topic")


#: Chain results that accept the envelope (a gap is the missing ones' problem, not this one's).
_ACCEPTED_LINKS = frozenset({Link.OK, Link.START, Link.GAP, Link.LATE, Link.SIDEBAND})
_LINK_REASON = {Link.REPLAY: "replay", Link.FORK: "fork", Link.DUPLICATE: "duplicate"}


def check_inbound(
    topic: str | None,
    payload: bytes | str,
    trust: Trust,
    chain: ChainLookup | None = None,
    *,
    topics: Topics | None = None,
) -> Accepted | Rejection:
    """Judge one inbound message; see the module doc for the order of checks.

    ``topic`` None skips the topic check (a raw capture line).  ``chain(env)`` returns the
    follower of the envelope's signer (it is advanced by an accepted envelope).
    """
    kind: str | None = None
    dev: str | None = None
    try:
        parsed = parse_envelope(payload)
        kind, dev = parsed.kind, parsed.dev
        if trust.kinds is not None and kind not in trust.kinds:
            raise ProtocolError(f"this receiver does not take {kind} messages", reason="wrong_kind")
        if topic is not None:
            _check_topic(topics or Topics(), topic, kind, dev, parsed.raw.get("body"))
        _check_signer(kind, parsed.signers, trust)
        env = verify_parsed(parsed)
    except ProtocolError as exc:
        return Rejection(exc.reason, exc.message, dev=dev, kind=kind, hint=exc.hint)
    addressed = getattr(env.body, "device", None)
    if (
        trust.audience is not None
        and SPECS[kind].origin == "coordinator"
        and addressed not in (None, trust.audience)
    ):
        return Rejection("wrong_device", f"{kind} is addressed to device {addressed}", dev, kind, env)
    follower = chain(env) if chain is not None else None
    if follower is None:
        return Accepted(env)
    result = follower.observe(env)
    if result.link in _ACCEPTED_LINKS:
        return Accepted(env, result)
    reason = _LINK_REASON.get(result.link, result.link.value)
    return Rejection(reason, f"{kind} seq {env.seq}: {result.detail}", dev, kind, env)
