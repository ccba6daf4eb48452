"""The device-to-owner binding: a small document the device key signs (pure, no I/O).

A device proves that its rewards go to ``owner`` by signing::

    signed bytes = b"edgeproof/v1:binding:" + canonical({"device": D, "owner": O, "ts": T})

with its ed25519 key (``D`` is the device's base58 public key, ``O`` the owner's base58
wallet, ``T`` milliseconds since the Unix epoch).  The document is the canonical JSON of
``{"device", "owner", "sig", "ts"}`` (``sig`` base58) followed by a newline.  The
domain ``binding:`` keeps a binding signature from ever being valid as an envelope
signature (whose signed bytes start with ``{`` right after the shared prefix) and back.

``edgeproof keys bind`` writes one; ``edgeproof coordinator enroll --binding FILE``
refuses one it cannot verify.  The spec and a test vector are in docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature

from agent.errors import ProtocolError
from agent.protocol.canonical import DOMAIN, canonical, parse_json

BINDING_DOMAIN = DOMAIN + b"binding:"
BINDING_KEYS = frozenset({"device", "owner", "ts", "sig"})
#: A binding document is small; anything larger is refused before parsing.
MAX_BINDING_BYTES = 1024
TS_MAX = 2**53 - 1


@dataclass(frozen=True)
class Binding:
    device: str
    owner: str
    ts: int
    sig: str

    def unsigned(self) -> dict[str, Any]:
        return {"device": self.device, "owner": self.owner, "ts": self.ts}

    def document(self) -> bytes:
        """The file a device writes: canonical JSON and a newline."""
        return canonical({**self.unsigned(), "sig": self.sig}) + b"\n"


def binding_bytes(device: str, owner: str, ts: int) -> bytes:
    """The bytes a binding signature covers."""
    return BINDING_DOMAIN + canonical({"device": device, "owner": owner, "ts": ts})


def _pubkey(field: str, value: Any) -> Pubkey:
    if not isinstance(value, str):
        raise ProtocolError(f"binding {field}: expected a base58 public key string", reason="malformed")
    try:
        key = Pubkey.from_string(value)
    except ValueError as exc:
        raise ProtocolError(
            f"binding {field}: not a base58 public key: {value[:60]!r}", reason="malformed"
        ) from exc
    if str(key) != value:
        raise ProtocolError(
            f"binding {field}: public key is not in canonical base58 form", reason="malformed"
        )
    return key


def sign_binding(keypair: Keypair, owner: str, ts: int) -> Binding:
    """The binding of ``keypair``'s device to ``owner`` at ``ts`` (ms)."""
    _pubkey("owner", owner)
    if type(ts) is not int or not 0 <= ts <= TS_MAX:
        raise ProtocolError(f"binding ts must be an integer number of ms (got {ts!r})", reason="malformed")
    device = str(keypair.pubkey())
    sig = keypair.sign_message(binding_bytes(device, owner, ts))
    return Binding(device, owner, ts, str(sig))


def verify_binding(data: bytes | str) -> Binding:
    """Parse and verify a binding document; ProtocolError (``malformed``, ``bad_signature``) otherwise."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_BINDING_BYTES:
        raise ProtocolError(
            f"binding is {len(raw)} bytes, over the {MAX_BINDING_BYTES}-byte limit", reason="oversized"
        )
    doc = parse_json(raw.strip())
    if not isinstance(doc, dict):
        raise ProtocolError("binding must be a JSON object", reason="malformed")
    if set(doc) != BINDING_KEYS:
        missing = sorted(BINDING_KEYS - doc.keys())
        extra = sorted(doc.keys() - BINDING_KEYS)
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown keys {', '.join(extra)}"] if extra else []
        )
        raise ProtocolError(f"binding: {'; '.join(parts)}", reason="malformed")
    device_key = _pubkey("device", doc["device"])
    _pubkey("owner", doc["owner"])
    ts = doc["ts"]
    if type(ts) is not int or not 0 <= ts <= TS_MAX:
        raise ProtocolError("binding ts must be an integer number of ms", reason="malformed")
    sig_text = doc["sig"]
    try:
        if not isinstance(sig_text, str):
            raise ValueError("not a string")
        sig = Signature.from_string(sig_text)
    except ValueError as exc:
        raise ProtocolError(f"binding sig is not a base58 signature: {exc}", reason="malformed") from exc
    if not sig.verify(device_key, binding_bytes(doc["device"], doc["owner"], ts)):
        raise ProtocolError(
            f"binding signature does not verify for device {doc['device']}", reason="bad_signature"
        )
    return Binding(doc["device"], doc["owner"], ts, sig_text)
