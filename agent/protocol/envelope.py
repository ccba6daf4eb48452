"""Signed envelopes: build, encode, verify with only the public key they carry.

Wire form (canonical JSON, see :mod:`agent.protocol.canonical`)::

    {"body":{...},"dev":"<base58 pubkey>","kind":"proof","prev":"<hex64>","seq":7,"sig":"<base58>","ts":1700000000000,"v":1}

* ``dev`` is the *signer's* ed25519 public key (a device, the coordinator for
  beacon/challenge/verdict/voucher, or a fleet operator for manifests).
* signed bytes = ``DOMAIN + canonical(envelope without "sig")``;
  ``sig`` = ed25519 signature of the signed bytes, base58.
* ``envelope_hash`` = SHA-256 hex of the signed bytes; a chained envelope's
  ``prev`` is the hash of the signer's previous chained envelope.  The first
  chained envelope has ``seq`` 1 and ``prev`` = 64 zeros.  Side-band kinds
  (``status``) carry the signer's current chain head ``(seq, hash)`` and do not
  advance it (``seq`` 0 / zero ``prev`` before the first chained envelope).
* the whole canonical wire encoding (with ``sig``) must fit its kind's bound
  (:data:`agent.protocol.kinds.MAX_BYTES`).
* a co-signed kind (``manifest``) may also carry ``cosigs``: 1..:data:`MAX_COSIGS`
  ``{"key", "sig"}`` objects, each an ed25519 signature by another key over the *same* signed
  bytes; like ``sig`` they are outside the signed bytes and the hash (ADR 0025,
  :mod:`agent.protocol.cosign`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pydantic
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature

from agent.errors import ProtocolError
from agent.protocol.canonical import DOMAIN, canonical, check_value, encode_checked, parse_json
from agent.protocol.kinds import BODIES, COSIGNED_KINDS, MAX_BYTES, ORIGIN, SIDEBAND_KINDS
from agent.protocol.messages import body_to_dict
from agent.validation import Strict

VERSION = 1
GENESIS_PREV = "0" * 64
ENVELOPE_KEYS = frozenset({"v", "kind", "dev", "seq", "ts", "prev", "body", "sig"})
#: The optional key of a co-signed kind, outside the signed bytes like ``sig``.
COSIGS_KEY = "cosigs"
#: At most this many co-signatures (with the envelope's own: 8 signers, the most a device trusts).
MAX_COSIGS = 7
COSIG_KEYS = frozenset({"key", "sig"})
SEQ_MAX = 2**63 - 1
TS_MAX = 2**53 - 1

#: Raw input larger than this is refused before parsing (the largest per-kind bound).
MAX_WIRE_BYTES = max(MAX_BYTES.values())

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Cosig:
    """One co-signature: ``sig`` by ``key`` over the envelope's signed bytes."""

    key: str
    sig: str

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "sig": self.sig}


@dataclass(frozen=True)
class Envelope:
    """A verified (or freshly built) envelope."""

    kind: str
    dev: str
    seq: int
    ts: int
    prev: str
    body: Strict
    sig: str
    #: The envelope as a JSON mapping (exactly what was signed, plus ``sig``).
    raw: dict[str, Any]
    #: SHA-256 hex of the signed bytes (the next chained envelope's ``prev``).
    hash: str
    v: int = VERSION
    #: Co-signatures over the same signed bytes (co-signed kinds only; also in ``raw``).
    cosigs: tuple[Cosig, ...] = ()

    @property
    def signers(self) -> tuple[str, ...]:
        """Every key that signed: ``dev`` first, then the co-signers."""
        return (self.dev, *(c.key for c in self.cosigs))

    @property
    def wire(self) -> bytes:
        """The canonical wire encoding (what a device publishes)."""
        return canonical(self.raw)

    @property
    def pubkey(self) -> Pubkey:
        return Pubkey.from_string(self.dev)

    @property
    def sideband(self) -> bool:
        return self.kind in SIDEBAND_KINDS

    @property
    def origin(self) -> str:
        return ORIGIN[self.kind]


def _unsigned(env: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in env.items() if k != "sig" and k != COSIGS_KEY}


def signed_bytes(env: dict[str, Any]) -> bytes:
    """``DOMAIN + canonical(env without "sig" and "cosigs")``: the bytes that are signed and hashed."""
    return DOMAIN + canonical(_unsigned(env))


def envelope_hash(env: dict[str, Any] | Envelope) -> str:
    """SHA-256 hex of the signed bytes of ``env``."""
    if isinstance(env, Envelope):
        return env.hash
    return hashlib.sha256(signed_bytes(env)).hexdigest()


def validate_body(kind: str, body: Any) -> Strict:
    """Validate a body mapping (or model) for ``kind``; ProtocolError(reason="schema") names every problem."""
    model = BODIES.get(kind)
    if model is None:
        raise ProtocolError(f"unknown kind {kind!r} (known: {', '.join(BODIES)})", reason="unknown_kind")
    if isinstance(body, model):
        return body
    if isinstance(body, Strict):
        raise ProtocolError(
            f"{kind}: body is a {type(body).__name__}, expected {model.__name__}", reason="schema"
        )
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        raise ProtocolError(f"{kind}: {_describe(exc)}", reason="schema") from exc


def _describe(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in ("body", *err["loc"]))
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "missing":
            msg = "required key is missing"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _check_chain_fields(kind: str, seq: int, prev: str) -> None:
    if kind in SIDEBAND_KINDS:
        first = seq == 0
        if first != (prev == GENESIS_PREV):
            raise ProtocolError(
                f"{kind}: seq 0 and prev of 64 zeros go together (side-band envelope before any chained one)",
                reason="schema",
            )
        return
    if seq < 1:
        raise ProtocolError(f"{kind}: seq must be >= 1 (got {seq})", reason="schema")
    if (seq == 1) != (prev == GENESIS_PREV):
        raise ProtocolError(
            f"{kind}: seq 1 and prev of 64 zeros go together (got seq {seq})", reason="schema"
        )


def build_envelope(
    signer: Keypair,
    kind: str,
    body: Strict | dict[str, Any],
    *,
    seq: int,
    prev: str,
    ts: int,
    dev: str | None = None,
) -> Envelope:
    """Validate ``body`` for ``kind``, sign, and return the envelope (pure: no state).

    ``dev`` is ``str(signer.pubkey())`` when the caller already has it (deriving it costs about
    as much as the rest of a small envelope).
    """
    model = validate_body(kind, body)
    if type(seq) is not int or not 0 <= seq <= SEQ_MAX:
        raise ProtocolError(f"seq must be an integer 0..2**63-1 (got {seq!r})", reason="schema")
    if type(ts) is not int or not 0 <= ts <= TS_MAX:
        raise ProtocolError(f"ts must be an integer number of ms (got {ts!r})", reason="schema")
    if not (isinstance(prev, str) and len(prev) == 64 and set(prev) <= _HEX):
        raise ProtocolError(f"prev must be 64 lower-case hex characters (got {prev!r})", reason="schema")
    _check_chain_fields(kind, seq, prev)
    body_dict = body_to_dict(model)
    unsigned: dict[str, Any] = {
        "v": VERSION,
        "kind": kind,
        "dev": dev if dev is not None else str(signer.pubkey()),
        "seq": seq,
        "ts": ts,
        "prev": prev,
        "body": body_dict,
    }
    to_sign = DOMAIN + canonical(unsigned)
    sig = str(signer.sign_message(to_sign))
    raw = {**unsigned, "sig": sig}
    env = Envelope(
        kind=kind,
        dev=unsigned["dev"],
        seq=seq,
        ts=ts,
        prev=prev,
        body=model,
        sig=sig,
        raw=raw,
        hash=hashlib.sha256(to_sign).hexdigest(),
    )
    size = len(env.wire)
    if size > MAX_BYTES[kind]:
        raise ProtocolError(
            f"{kind}: envelope is {size} bytes, over the {MAX_BYTES[kind]}-byte bound", reason="oversized"
        )
    return env


def encode(env: Envelope | dict[str, Any]) -> bytes:
    """Canonical wire bytes of an envelope."""
    return env.wire if isinstance(env, Envelope) else canonical(env)


def _field(env: dict[str, Any], key: str, kind: type) -> Any:
    value = env[key]
    if type(value) is not kind:
        raise ProtocolError(
            f"{key}: expected {kind.__name__}, got {type(value).__name__}", reason="malformed"
        )
    return value


@dataclass(frozen=True)
class Parsed:
    """An envelope whose structure is checked but whose signature and body are not (yet)."""

    kind: str
    dev: str
    seq: int
    ts: int
    prev: str
    sig: str
    raw: dict[str, Any]
    pubkey: Pubkey
    signature: Signature
    cosigs: tuple[ParsedCosig, ...] = ()

    @property
    def signers(self) -> tuple[str, ...]:
        """``dev`` first, then the co-signers (not verified yet)."""
        return (self.dev, *(c.cosig.key for c in self.cosigs))


@dataclass(frozen=True)
class ParsedCosig:
    cosig: Cosig
    pubkey: Pubkey
    signature: Signature


def parse_envelope(data: bytes | str | dict[str, Any]) -> Parsed:
    """Size, strict JSON, envelope keys and types, known kind, the kind's size bound, key formats.

    Cheap checks only (no signature, no body schema), so a receiver can refuse an
    envelope by kind, topic or signer before it pays for a signature check.  Raises
    :class:`ProtocolError` with ``reason`` ``oversized``, ``malformed`` or ``unknown_kind``.
    """
    if isinstance(data, dict):
        env = data
        check_value(env)
    else:
        size = len(data.encode("utf-8") if isinstance(data, str) else data)
        if size > MAX_WIRE_BYTES:
            raise ProtocolError(
                f"message is {size} bytes, over the {MAX_WIRE_BYTES}-byte limit", reason="oversized"
            )
        env = parse_json(data)
    if not isinstance(env, dict):
        raise ProtocolError(f"envelope must be a JSON object, got {type(env).__name__}", reason="malformed")
    missing = sorted(ENVELOPE_KEYS - env.keys())
    if missing:
        raise ProtocolError(f"envelope is missing {', '.join(missing)}", reason="malformed")
    extra = sorted(env.keys() - ENVELOPE_KEYS - {COSIGS_KEY})
    if extra:
        raise ProtocolError(f"envelope has unknown keys {', '.join(extra)}", reason="malformed")
    if _field(env, "v", int) != VERSION:
        raise ProtocolError(
            f"unsupported protocol version {env['v']} (this agent speaks v{VERSION})", reason="malformed"
        )
    kind = _field(env, "kind", str)
    if kind not in BODIES:
        raise ProtocolError(f"unknown kind {kind[:40]!r}", reason="unknown_kind")
    if COSIGS_KEY in env and kind not in COSIGNED_KINDS:
        raise ProtocolError(
            f"envelope has unknown keys {COSIGS_KEY} (a {kind} is not co-signed)", reason="malformed"
        )
    dev = _field(env, "dev", str)
    seq = _field(env, "seq", int)
    ts = _field(env, "ts", int)
    prev = _field(env, "prev", str)
    _field(env, "body", dict)
    sig_text = _field(env, "sig", str)
    if not 0 <= seq <= SEQ_MAX:
        raise ProtocolError("seq out of range", reason="malformed")
    if not 0 <= ts <= TS_MAX:
        raise ProtocolError("ts out of range", reason="malformed")
    if len(prev) != 64 or not set(prev) <= _HEX:
        raise ProtocolError("prev must be 64 lower-case hex characters", reason="malformed")
    wire_size = len(encode_checked(env))  # env was checked by parse_json / check_value above
    if wire_size > MAX_BYTES[kind]:
        raise ProtocolError(
            f"{kind}: envelope is {wire_size} bytes, over the {MAX_BYTES[kind]}-byte bound",
            reason="oversized",
        )
    try:
        pubkey = Pubkey.from_string(dev)
        if str(pubkey) != dev:
            raise ValueError("not canonical base58")
    except ValueError as exc:
        raise ProtocolError(f"dev is not a base58 public key: {exc}", reason="malformed") from exc
    try:
        sig = Signature.from_string(sig_text)
        if str(sig) != sig_text:
            raise ValueError("not canonical base58")
    except ValueError as exc:
        raise ProtocolError(f"sig is not a base58 signature: {exc}", reason="malformed") from exc
    cosigs = _parse_cosigs(env) if COSIGS_KEY in env else ()
    return Parsed(kind, dev, seq, ts, prev, sig_text, env, pubkey, sig, cosigs)


def _parse_cosigs(env: dict[str, Any]) -> tuple[ParsedCosig, ...]:
    """The bound (``too_many_signatures``) and the structure (``malformed``); distinct keys are
    :func:`check_distinct`'s (a refused manifest must still parse, to be reported by name)."""
    raw = env[COSIGS_KEY]
    if type(raw) is not list or not raw:
        raise ProtocolError(f"{COSIGS_KEY}: expected a non-empty list", reason="malformed")
    if len(raw) > MAX_COSIGS:
        raise ProtocolError(
            f"{COSIGS_KEY}: {len(raw)} co-signatures, over the bound of {MAX_COSIGS}",
            reason="too_many_signatures",
        )
    out: list[ParsedCosig] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or item.keys() != COSIG_KEYS:
            raise ProtocolError(
                f"{COSIGS_KEY}[{i}]: expected exactly the keys key and sig", reason="malformed"
            )
        key, sig = item["key"], item["sig"]
        if type(key) is not str or type(sig) is not str:
            raise ProtocolError(f"{COSIGS_KEY}[{i}]: key and sig must be strings", reason="malformed")
        try:
            pubkey = Pubkey.from_string(key)
            signature = Signature.from_string(sig)
            if str(pubkey) != key or str(signature) != sig:
                raise ValueError("not canonical base58")
        except ValueError as exc:
            raise ProtocolError(
                f"{COSIGS_KEY}[{i}]: key is not a base58 public key or sig not a base58 signature: {exc}",
                reason="malformed",
            ) from exc
        out.append(ParsedCosig(Cosig(key, sig), pubkey, signature))
    return tuple(out)


def check_distinct(kind: str, signers: tuple[str, ...]) -> None:
    """No key signs twice: ``signers[0]`` is ``dev``, the rest the co-signers (``duplicate_signer``)."""
    for i, key in enumerate(signers[1:]):
        if key in signers[: i + 1]:
            who = "the envelope's own signer" if key == signers[0] else "an earlier co-signer"
            raise ProtocolError(
                f"{kind} {COSIGS_KEY}[{i}]: {key} is {who}: a key signs once", reason="duplicate_signer"
            )


def verify_parsed(parsed: Parsed) -> Envelope:
    """Distinct signers, the signature(s), the body schema and the seq/prev genesis rule."""
    check_distinct(parsed.kind, parsed.signers)
    to_sign = DOMAIN + encode_checked(_unsigned(parsed.raw))  # signed_bytes; raw checked when parsed
    if not parsed.signature.verify(parsed.pubkey, to_sign):
        raise ProtocolError(
            f"{parsed.kind} seq {parsed.seq}: signature does not verify for {parsed.dev}",
            reason="bad_signature",
        )
    for i, co in enumerate(parsed.cosigs):
        if not co.signature.verify(co.pubkey, to_sign):
            raise ProtocolError(
                f"{parsed.kind} seq {parsed.seq}: co-signature {i} does not verify for {co.cosig.key} "
                "over this envelope's signed bytes",
                reason="bad_cosignature",
            )
    model = validate_body(parsed.kind, parsed.raw["body"])
    _check_chain_fields(parsed.kind, parsed.seq, parsed.prev)
    return Envelope(
        kind=parsed.kind,
        dev=parsed.dev,
        seq=parsed.seq,
        ts=parsed.ts,
        prev=parsed.prev,
        body=model,
        sig=parsed.sig,
        raw=parsed.raw,
        hash=hashlib.sha256(to_sign).hexdigest(),
        cosigs=tuple(c.cosig for c in parsed.cosigs),
    )


def verify_envelope(data: bytes | str | dict[str, Any], *, expected_signer: str | None = None) -> Envelope:
    """Parse and fully verify an envelope using only the public key in ``dev``.

    Checks, in order: raw size, strict JSON, envelope keys and types, known kind,
    canonical size bound of the kind, the signer (if ``expected_signer``), the
    signature, the body schema and the seq/prev genesis rule.  Raises
    :class:`ProtocolError` with ``reason`` one of ``oversized``, ``malformed``,
    ``unknown_kind``, ``unknown_device``, ``bad_signature``, ``schema``; for a co-signed
    envelope also ``too_many_signatures``, ``duplicate_signer``, ``bad_cosignature`` (whether
    its signers are trusted, and enough of them, is :func:`agent.protocol.cosign.check_signers`).
    Chain continuity is not checked here (see :mod:`agent.protocol.chain`), nor
    who may send what where (see :mod:`agent.protocol.inbound`).
    """
    parsed = parse_envelope(data)
    if expected_signer is not None and parsed.dev != expected_signer:
        raise ProtocolError(
            f"{parsed.kind} signed by {parsed.dev}, expected {expected_signer}", reason="unknown_device"
        )
    return verify_parsed(parsed)
