"""The tensor digests a work proof's Merkle leaves are made of: a wire fact verifiers recompute.

One item per inference in each of a proof's two trees:

* input item  = H(the resized uint8 image the model saw, C order) (docs/decisions/0004);
* output item = H(the raw bytes of every output tensor, concatenated in card order, C order).

``H`` is the proof's ``leaf_hash``: ``blake3`` (32-byte BLAKE3) when the package is
importable, else ``sha256`` (docs/decisions/0008).  The proof names which, so a verifier
always knows how to recompute a revealed item.  The Merkle tree over the items is
:mod:`agent.protocol.merkle`.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np

from agent.errors import BackendUnavailableError

LeafHash = Literal["blake3", "sha256"]
LEAF_HASHES: tuple[LeafHash, ...] = ("blake3", "sha256")


def default_leaf_hash() -> LeafHash:
    """BLAKE3 when the package is installed (a dependency; Termux may lack a wheel), else SHA-256."""
    return "blake3" if importlib.util.find_spec("blake3") is not None else "sha256"


def hasher(leaf_hash: LeafHash) -> Callable[[], Any]:
    """A constructor of incremental hash objects (``update``/``digest``) for ``leaf_hash``."""
    if leaf_hash == "sha256":
        return hashlib.sha256
    try:
        from blake3 import blake3
    except ImportError as exc:
        raise BackendUnavailableError(
            "leaf hash 'blake3' needs the blake3 package, which is not installed",
            hint="pip install blake3 (a dependency of edgeproof)",
        ) from exc
    return blake3


def _bytes_of(array: np.ndarray) -> memoryview:
    """The tensor's bytes in C order as an unsigned-byte buffer (what every hasher accepts)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def digest_arrays(new: Callable[[], Any], arrays: Iterable[np.ndarray]) -> bytes:
    """One item: the digest over the C-order bytes of ``arrays``, in order."""
    digest = new()
    for array in arrays:
        digest.update(_bytes_of(array))
    return bytes(digest.digest())


def input_digest(resized: np.ndarray, leaf_hash: LeafHash = "sha256") -> bytes:
    """Input item: digest of the resized uint8 image the model saw (C order)."""
    return digest_arrays(hasher(leaf_hash), (resized,))


def output_digest(outputs: list[np.ndarray], leaf_hash: LeafHash = "sha256") -> bytes:
    """Output item: digest over the raw bytes of every output tensor, concatenated in card order."""
    return digest_arrays(hasher(leaf_hash), outputs)
