"""The edgeproof wire protocol (v1), shared by device, coordinator and operator.

* :mod:`~agent.protocol.canonical` -- canonical JSON (integers only) and the signing domain
* :mod:`~agent.protocol.messages` -- strict, bounded body schema per kind (the privacy guarantee)
* :mod:`~agent.protocol.envelope` -- build, sign, encode and verify envelopes; size bounds
* :mod:`~agent.protocol.chain` -- hash chain signer and verifier (replay, gap, fork)
* :mod:`~agent.protocol.merkle` -- RFC 6962 Merkle roots, incremental builder, inclusion proofs
* :mod:`~agent.protocol.challenge` -- synthetic challenge input, output sketch, tolerance
* :mod:`~agent.protocol.kinds` -- the one table of message kinds (schema, origin, bound, topic, priority)
* :mod:`~agent.protocol.inbound` -- the role-neutral check of one inbound message
* :mod:`~agent.protocol.reasons` -- the one catalogue of reason names
* :mod:`~agent.protocol.leaf` -- the tensor digests a proof's Merkle leaves are made of
* :mod:`~agent.protocol.topics` -- MQTT topic names, QoS/retain, filters

The full specification with test vectors is ``docs/protocol.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.protocol.canonical import DOMAIN, canonical, parse_json
    from agent.protocol.chain import ChainSigner, ChainVerifier, Link, LinkResult
    from agent.protocol.envelope import (
        GENESIS_PREV,
        Envelope,
        build_envelope,
        encode,
        envelope_hash,
        signed_bytes,
        verify_envelope,
    )
    from agent.protocol.inbound import Accepted, Rejection, Trust, check_inbound
    from agent.protocol.kinds import BODIES, KINDS, MAX_BYTES, SPECS, KindSpec
    from agent.protocol.topics import DEFAULT_PREFIX, Topics

# Names re-exported lazily (PEP 562): importing one submodule, e.g. merkle for the
# inference path, must not pull solders and pydantic schemas into the process.
_EXPORTS = {
    "DOMAIN": "canonical",
    "canonical": "canonical",
    "parse_json": "canonical",
    "ChainSigner": "chain",
    "ChainVerifier": "chain",
    "Link": "chain",
    "LinkResult": "chain",
    "GENESIS_PREV": "envelope",
    "MAX_BYTES": "kinds",
    "Envelope": "envelope",
    "build_envelope": "envelope",
    "encode": "envelope",
    "envelope_hash": "envelope",
    "signed_bytes": "envelope",
    "verify_envelope": "envelope",
    "BODIES": "kinds",
    "KINDS": "kinds",
    "SPECS": "kinds",
    "KindSpec": "kinds",
    "DEFAULT_PREFIX": "topics",
    "Accepted": "inbound",
    "Rejection": "inbound",
    "Trust": "inbound",
    "check_inbound": "inbound",
    "Topics": "topics",
}

__all__ = [
    "BODIES",
    "DEFAULT_PREFIX",
    "DOMAIN",
    "GENESIS_PREV",
    "KINDS",
    "MAX_BYTES",
    "SPECS",
    "Accepted",
    "ChainSigner",
    "ChainVerifier",
    "Envelope",
    "KindSpec",
    "Link",
    "LinkResult",
    "Rejection",
    "Topics",
    "Trust",
    "build_envelope",
    "canonical",
    "check_inbound",
    "encode",
    "envelope_hash",
    "parse_json",
    "signed_bytes",
    "verify_envelope",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent.protocol' has no attribute {name!r}")
    return getattr(importlib.import_module(f"agent.protocol.{module}"), name)
