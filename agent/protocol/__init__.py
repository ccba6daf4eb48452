"""The edgeproof wire protocol (v1), shared by device, coordinator and operator.

* :mod:`~agent.protocol.canonical` -- canonical JSON (integers only) and the signing domain
* :mod:`~agent.protocol.messages` -- strict, bounded body schema per kind (the privacy guarantee)
* :mod:`~agent.protocol.envelope` -- build, sign, encode and verify envelopes; size bounds
* :mod:`~agent.protocol.chain` -- hash chain signer and verifier (replay, gap, fork)
* :mod:`~agent.protocol.merkle` -- RFC 6962 Merkle roots, incremental builder, inclusion proofs
* :mod:`~agent.protocol.challenge` -- synthetic challenge input, output sketch, tolerance
* :mod:`~agent.protocol.topics` -- MQTT topic names, QoS/retain, filters

The full specification with test vectors is ``docs/protocol.md``.
"""

from agent.protocol.canonical import DOMAIN, canonical, parse_json
from agent.protocol.chain import ChainSigner, ChainVerifier, Link, LinkResult
from agent.protocol.envelope import (
    GENESIS_PREV,
    MAX_BYTES,
    Envelope,
    build_envelope,
    encode,
    envelope_hash,
    signed_bytes,
    verify_envelope,
)
from agent.protocol.messages import BODIES, KINDS
from agent.protocol.topics import DEFAULT_PREFIX, Topics

__all__ = [
    "BODIES",
    "DEFAULT_PREFIX",
    "DOMAIN",
    "GENESIS_PREV",
    "KINDS",
    "MAX_BYTES",
    "ChainSigner",
    "ChainVerifier",
    "Envelope",
    "Link",
    "LinkResult",
    "Topics",
    "build_envelope",
    "canonical",
    "encode",
    "envelope_hash",
    "parse_json",
    "signed_bytes",
    "verify_envelope",
]
