"""The manifest signing file: one signed manifest envelope collecting k operator signatures.

``fleet publish --out FILE --threshold K`` signs the manifest as the next link of the
publishing operator's chain (its state file is written first, as for a publish) and writes::

    {"format": "edgeproof-manifest-signing/1", "threshold": 2, "envelope": {...the wire object...}}

``fleet sign FILE --key KEY`` adds that key's co-signature (:mod:`agent.protocol.cosign`, over the
envelope's own signed bytes) and rewrites the file atomically; ``fleet publish --from FILE``
publishes the envelope once it carries ``threshold`` distinct signatures.  The file holds no
secret; every load verifies every signature in it, so a file edited by hand is refused by the
protocol's own reason (``bad_signature``, ``bad_cosignature``, ``duplicate_signer``, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from solders.keypair import Keypair

from agent.atomic_file import write_atomic
from agent.errors import FleetError, ProtocolError
from agent.protocol.canonical import parse_json
from agent.protocol.cosign import add_cosignature
from agent.protocol.envelope import MAX_COSIGS, Envelope, verify_envelope
from agent.protocol.messages import Manifest

FORMAT = "edgeproof-manifest-signing/1"
_KEYS = frozenset({"format", "threshold", "envelope"})
#: A signing file is small (one manifest envelope, at most 6144 bytes); anything far larger is not one.
MAX_FILE_BYTES = 64 * 1024


@dataclass(frozen=True)
class SigningFile:
    threshold: int
    envelope: Envelope

    @property
    def manifest(self) -> Manifest:
        body = self.envelope.body
        assert isinstance(body, Manifest)  # checked when loaded or built
        return body

    @property
    def ready(self) -> bool:
        return len(self.envelope.signers) >= self.threshold

    def summary(self, path: Path) -> dict[str, Any]:
        """What ``fleet sign --json`` prints: signers so far, k, and whether it can be published."""
        m = self.manifest
        return {
            "file": str(path),
            "channel": m.channel,
            "version": m.version,
            "model_id": m.model_id,
            "model_version": m.model_version,
            "operator": self.envelope.dev,
            "seq": self.envelope.seq,
            "envelope": self.envelope.hash,
            "signers": list(self.envelope.signers),
            "threshold": self.threshold,
            "ready": self.ready,
        }

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "threshold": self.threshold, "envelope": self.envelope.raw}


def check_threshold(threshold: int) -> int:
    if type(threshold) is not int or not 1 <= threshold <= MAX_COSIGS + 1:
        raise FleetError(
            f"threshold {threshold!r} must be an integer from 1 to {MAX_COSIGS + 1}", reason="signing_file"
        )
    return threshold


def new_signing_file(envelope: Envelope, threshold: int) -> SigningFile:
    if not isinstance(envelope.body, Manifest):
        raise FleetError(f"a signing file holds a manifest, not a {envelope.kind}", reason="signing_file")
    return SigningFile(check_threshold(threshold), envelope)


def load_signing_file(path: Path) -> SigningFile:
    """Read and fully verify a signing file (structure ``signing_file``; signatures by their reasons)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise FleetError(f"signing file {path} cannot be read: {exc}", reason="signing_file") from exc
    if len(data) > MAX_FILE_BYTES:
        raise FleetError(f"signing file {path} is over {MAX_FILE_BYTES} bytes", reason="signing_file")
    try:
        doc = parse_json(data)
    except ProtocolError as exc:
        raise FleetError(f"signing file {path} is not JSON: {exc.message}", reason="signing_file") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FleetError(
            f"signing file {path}: format is not {FORMAT!r}",
            reason="signing_file",
            hint="create one with: edgeproof fleet publish ... --out FILE --threshold K",
        )
    extra = sorted(doc.keys() - _KEYS)
    missing = sorted(_KEYS - doc.keys())
    if extra or missing:
        raise FleetError(
            f"signing file {path}: unknown keys {extra}, missing keys {missing}", reason="signing_file"
        )
    envelope = doc["envelope"]
    if not isinstance(envelope, dict):
        raise FleetError(f"signing file {path}: envelope is not an object", reason="signing_file")
    try:
        env = verify_envelope(envelope)
    except ProtocolError as exc:
        raise FleetError(f"signing file {path}: {exc.message}", reason=exc.reason) from exc
    return new_signing_file(env, doc["threshold"])


def check_not_expired(signing: SigningFile, path: Path, now_ms: int) -> None:
    """Every device refuses an expired manifest (``expired``): signing or publishing it is pointless."""
    m = signing.manifest
    if m.expires_ms <= now_ms:
        raise FleetError(
            f"{path}: manifest version {m.version} on {m.channel!r} expired at {m.expires_ms} ms (now {now_ms} ms)",
            reason="expired",
            hint="write a new one with fleet publish --out (the next version); sign it before --expires runs out",
        )


def cosign_file(path: Path, keypair: Keypair, *, now_ms: int) -> SigningFile:
    """Add ``keypair``'s co-signature to the file at ``path`` (rewritten atomically)."""
    current = load_signing_file(path)
    check_not_expired(current, path, now_ms)
    try:
        env = add_cosignature(current.envelope, keypair)
    except ProtocolError as exc:
        raise FleetError(f"signing file {path}: {exc.message}", reason=exc.reason) from exc
    signed = SigningFile(current.threshold, env)
    write_signing_file(path, signed, replace=True)
    return signed


def write_signing_file(path: Path, signing: SigningFile, *, replace: bool) -> None:
    """Write atomically (temporary file, fsync, rename); without ``replace`` an existing file is refused."""
    if not replace and (path.exists() or path.is_symlink()):
        raise FleetError(
            f"{path} already exists; refusing to overwrite it",
            reason="signing_file",
            hint="choose another --out",
        )
    data = (json.dumps(signing.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    try:
        write_atomic(path, data, mode=0o644)
    except OSError as exc:
        raise FleetError(f"signing file {path} cannot be written: {exc}", reason="signing_file") from exc
