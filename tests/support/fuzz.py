"""Hostile payloads for fuzz tests: raw bytes, JSON of any shape, and mutated valid envelopes.

``payloads(seeds)`` draws ``(topic or None, payload bytes)``: raw bytes, arbitrary JSON, or one
of the ``seeds`` (valid envelopes on their topics) with bytes flipped, cut, inserted or spliced,
a value or key replaced, an odd token inserted (a 5,000-digit integer, NaN, deep nesting, a lone
surrogate) or its topic swapped.  ``envelope_seeds`` signs one valid envelope of each inbound
kind with the given keys, so mutations start from messages a receiver would accept; with a
``cosigner`` also the manifest co-signed by it (k-of-n, so mutations reach the ``cosigs`` list).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st
from solders.keypair import Keypair

from agent.protocol.chain import ChainSigner
from agent.protocol.cosign import add_cosignature
from agent.protocol.envelope import build_envelope
from agent.protocol.topics import Topics
from agent.protocol.vectors import TS, heartbeat_body, proof_body
from tests.support.manifests import manifest_body

T = Topics()


def envelope_seeds(
    device: Keypair,
    coordinator: Keypair,
    operator: Keypair,
    *,
    model_sha256: str = "cd" * 32,
    now_ms: int = TS,
    cosigner: Keypair | None = None,
) -> list[tuple[str, bytes]]:
    dev = str(device.pubkey())
    signer = ChainSigner(device)
    out = [
        (T.hb(dev), signer.next("heartbeat", heartbeat_body(), now_ms).wire),
        (T.proof(dev), signer.next("proof", proof_body(), now_ms + 1).wire),
        (T.status(dev), signer.sideband("status", _status(), now_ms + 2).wire),
    ]
    coord = ChainSigner(coordinator, seq=2, prev="1" * 64)
    challenge = {
        "device": dev,
        "nonce": "ab" * 32,
        "model_sha256": model_sha256,
        "deadline_ms": now_ms + 9000,
    }
    out.append((T.device(dev, "challenge"), coord.next("challenge", challenge, now_ms).wire))
    beacon = {"slot": 7, "nonce": "ef" * 32, "time_ms": now_ms, "slot_ms": 60_000}
    out.append((T.beacon(), coord.next("beacon", beacon, now_ms).wire))
    verdict = {"device": dev, "ref_kind": "proof", "ref_seq": 1, "ref_hash": "33" * 32, "accepted": True}
    out.append((T.device(dev, "verdict"), coord.next("verdict", verdict, now_ms).wire))
    manifest = manifest_body()
    for artifact in manifest["artifacts"]:  # never a real host, even if a mutation made it eligible
        artifact["url"] = artifact["url"].replace("https://models.example", "https://127.0.0.1:9")
    signed = build_envelope(operator, "manifest", manifest, seq=1, prev="0" * 64, ts=now_ms)
    out.append((T.manifest(manifest["channel"]), signed.wire))
    if cosigner is not None:
        out.append((T.manifest(manifest["channel"]), add_cosignature(signed, cosigner).wire))
    return out


def _status() -> dict[str, Any]:
    return {
        "state": "online",
        "model_id": "m",
        "model_sha256": "0" * 64,
        "agent_version": "1.0",
        "profile": "generic-x86_64",
    }


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
odd_tokens = st.sampled_from(
    [
        b"9" * 5000,
        b"-" + b"9" * 400,
        b"1e999",
        b"NaN",
        b"-Infinity",
        b"[" * 200,
        b'"\\ud800"',
        b"\x00",
        b"\xff",
    ]
)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[tuple[str, bytes]]) -> tuple[str | None, bytes]:
    topic, wire = draw(st.sampled_from(seeds))
    data = bytearray(wire)
    how = draw(st.sampled_from(["flip", "cut", "insert", "splice", "value", "key", "token", "topic", "none"]))
    if how == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=64))
    elif how == "splice":
        other = draw(st.sampled_from(seeds))[1]
        i, j = draw(st.integers(0, len(data))), draw(st.integers(0, len(other)))
        data = data[:i] + other[j:]
    elif how in ("value", "key"):
        obj = json.loads(wire)
        target = obj if draw(st.booleans()) else obj["body"]
        key = draw(st.sampled_from(sorted(target)))
        if how == "value":
            target[key] = draw(json_values)
        else:
            target[draw(st.text(min_size=1, max_size=8))] = target.pop(key)
        data = bytearray(json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass"))
    elif how == "token":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(odd_tokens)
    elif how == "topic":
        topic = draw(st.sampled_from([t for t, _ in seeds] + ["x/y", "edgeproof/v1/dev/+/hb", ""]))
    return topic, bytes(data)


def payloads(seeds: list[tuple[str, bytes]]) -> st.SearchStrategy[tuple[str | None, bytes]]:
    return st.one_of(
        st.binary(max_size=600).map(lambda b: (None, b)),
        json_values.map(lambda v: (None, json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass"))),
        mutated(seeds),
    )
