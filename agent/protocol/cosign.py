"""k-of-n operator trust: co-signatures over one manifest envelope's signed bytes (ADR 0025).

A manifest envelope is signed by the operator who publishes it (``dev``, ``sig``: the key whose
chain it continues) and may carry up to :data:`~agent.protocol.envelope.MAX_COSIGS`
co-signatures, ``{"key", "sig"}``, each an ed25519 signature by another operator key over the
*same* signed bytes (``DOMAIN + canonical(envelope without "sig" and "cosigs")``).  Co-signing
therefore changes neither the envelope hash nor the operator's chain, and every signer has
signed exactly the same manifest: channel, version, artifacts, seq and ts alike.

The envelope layer checks the structure, the bound, distinct keys and every signature
(:func:`agent.protocol.envelope.parse_envelope`, ``verify_parsed``).  Whom a receiver trusts and
how many it needs is :func:`check_signers`, cheap (no signature work), so the receiver runs it
before the signatures.  Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from solders.keypair import Keypair

from agent.errors import ProtocolError
from agent.protocol.envelope import (
    COSIGS_KEY,
    MAX_COSIGS,
    Cosig,
    Envelope,
    check_distinct,
    signed_bytes,
    verify_envelope,
)
from agent.protocol.kinds import COSIGNED_KINDS


def check_signers(kind: str, signers: Sequence[str], trusted: Collection[str], threshold: int) -> None:
    """Every signer trusted and at least ``threshold`` of them (``signers[0]`` is the envelope's ``dev``).

    Raises ProtocolError: ``duplicate_signer`` (a key twice), ``untrusted_operator`` (the
    envelope's own signer), ``untrusted_signer`` (a co-signer), ``below_threshold`` (fewer
    signers than ``threshold``).
    """
    check_distinct(kind, tuple(signers))
    dev, cosigners = signers[0], signers[1:]
    if dev not in trusted:
        raise ProtocolError(
            f"{kind} signed by {dev}, which is not one of the {len(trusted)} trusted operator keys",
            reason="untrusted_operator",
        )
    for key in cosigners:
        if key not in trusted:
            raise ProtocolError(
                f"{kind} co-signed by {key}, which is not one of the {len(trusted)} trusted operator keys",
                reason="untrusted_signer",
                hint="every signature a manifest carries must be a trusted key's",
            )
    count = len(signers)
    if count < threshold:
        raise ProtocolError(
            f"{kind} carries {count} of the {threshold} operator signatures this device requires",
            reason="below_threshold",
            hint="collect more signatures with `edgeproof fleet sign` before publishing",
        )


def cosignature(env: Envelope, keypair: Keypair) -> Cosig:
    """``keypair``'s co-signature over ``env``'s signed bytes."""
    return Cosig(str(keypair.pubkey()), str(keypair.sign_message(signed_bytes(env.raw))))


def add_cosignature(env: Envelope, keypair: Keypair) -> Envelope:
    """``env`` with ``keypair``'s co-signature added (co-signatures sorted by key), verified again.

    Refused: a kind that is not co-signed (``wrong_kind``), a key that already signed
    (``duplicate_signer``), a full list (``too_many_signatures``).
    """
    if env.kind not in COSIGNED_KINDS:
        raise ProtocolError(f"a {env.kind} envelope is not co-signed", reason="wrong_kind")
    key = str(keypair.pubkey())
    if key in env.signers:
        role = "signed" if key == env.dev else "co-signed"
        raise ProtocolError(
            f"{key} already {role} this {env.kind}: a key signs once", reason="duplicate_signer"
        )
    if len(env.cosigs) >= MAX_COSIGS:
        raise ProtocolError(
            f"this {env.kind} already carries {len(env.cosigs)} co-signatures, the bound",
            reason="too_many_signatures",
        )
    cosigs = sorted((*env.cosigs, cosignature(env, keypair)), key=lambda c: c.key)
    raw = {**{k: v for k, v in env.raw.items() if k != COSIGS_KEY}, COSIGS_KEY: [c.to_json() for c in cosigs]}
    return verify_envelope(raw)
