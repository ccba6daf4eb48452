"""Proof-of-inference challenges: pure functions shared by device and coordinator.

Both sides derive the same synthetic input from the challenge nonce, run the
same model (identified by its sha256), and compare short output sketches.

Randomness: a NumPy ``PCG64`` bit generator seeded with the integer
``int.from_bytes(SHA-256(DOMAIN + purpose + nonce), "big")``, read only through
``random_raw()`` (raw 64-bit words).  NumPy guarantees the bit generator's
stream across versions, but not the output of ``Generator`` distribution
methods, and a device may run numpy 1.x (tflite-runtime) while the
coordinator runs numpy 2.x -- so every value below is derived from raw words
with explicit arithmetic:

* integer inputs (uint8, int8): the raw words as little-endian bytes, the
  first ``size`` bytes, reinterpreted as the dtype (full range, e.g. 0..255);
* float inputs: ``u = (word >> 11) * 2**-53`` in ``[0, 1)``, then
  ``low + (high - low) * u`` (default ``[0, 1)``), cast to the dtype;
* sketch: component ``j`` is ``round(1e6 * sum_i s_ji * x_i / sqrt(n))`` over the
  ``n`` outputs flattened and concatenated as float64, with signs
  ``s_ji = +1/-1`` from the bits of the raw words (bit ``b`` of word ``w`` is
  entry ``64 * w + b`` of the row-major ``32 x n`` sign matrix; bit set -> -1).
  A component is clamped to ``|v| <= 2**53 - 1``.

``sketch_matches`` compares with a tolerance relative to the sketch norm
(see :data:`REL_TOL`): a random projection keeps ``||a - b|| / ||a||`` close to
the relative L2 difference of the outputs themselves, so cross-platform float
noise (well under 1%) passes while a different model or input (about 100% or
more) fails.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import ProtocolError
from agent.protocol.canonical import DOMAIN

SKETCH_SIZE = 32
SKETCH_SCALE = 1_000_000
SKETCH_LIMIT = 2**53 - 1
#: Default relative tolerance: ||a - b||_2 <= REL_TOL * max(||a||, ||b||) + ABS_TOL.
REL_TOL = 0.05
#: Absolute slack in sketch units (1e-4 in output units), so all-zero outputs compare equal.
ABS_TOL = 100

_INPUT_PURPOSE = b"challenge-input:"
_SKETCH_PURPOSE = b"challenge-sketch:"


def _bitgen(purpose: bytes, nonce: bytes) -> np.random.PCG64:
    seed = int.from_bytes(hashlib.sha256(DOMAIN + purpose + nonce).digest(), "big")
    return np.random.PCG64(seed)


def _raw_words(purpose: bytes, nonce: bytes, count: int) -> npt.NDArray[np.uint64]:
    words: npt.NDArray[np.uint64] = np.asarray(_bitgen(purpose, nonce).random_raw(count), dtype="<u8")
    return words


def _nonce(nonce: bytes | str) -> bytes:
    if isinstance(nonce, str):
        try:
            nonce = bytes.fromhex(nonce)
        except ValueError as exc:
            raise ProtocolError("challenge nonce must be hex", reason="malformed") from exc
    if not 16 <= len(nonce) <= 64:
        raise ProtocolError(f"challenge nonce must be 16..64 bytes (got {len(nonce)})", reason="malformed")
    return nonce


def synthetic_input(
    nonce: bytes | str,
    shape: Sequence[int],
    dtype: Any,
    *,
    low: float = 0.0,
    high: float = 1.0,
) -> npt.NDArray[Any]:
    """The challenge input for ``nonce``: deterministic, in the dtype's valid range.

    Integer dtypes cover their full range (uint8 0..255, int8 -128..127);
    float dtypes are uniform in ``[low, high)``.
    """
    raw_nonce = _nonce(nonce)
    dt = np.dtype(dtype)
    size = math.prod(int(d) for d in shape)
    if size <= 0:
        raise ProtocolError(
            f"synthetic input shape must be positive (got {tuple(shape)})", reason="malformed"
        )
    if dt.kind in "ui":
        nbytes = size * dt.itemsize
        words = _raw_words(_INPUT_PURPOSE, raw_nonce, (nbytes + 7) // 8)
        data = words.tobytes()[:nbytes]
        return np.frombuffer(data, dtype=dt.newbyteorder("<")).astype(dt).reshape(tuple(shape))
    if dt.kind == "f":
        words = _raw_words(_INPUT_PURPOSE, raw_nonce, size)
        unit = (words >> np.uint64(11)).astype(np.float64) * (2.0**-53)
        values = low + (high - low) * unit
        return values.astype(dt).reshape(tuple(shape))
    raise ProtocolError(
        f"synthetic input dtype {dt} is not supported (integer or float only)", reason="malformed"
    )


def _project(nonce: bytes, flat: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.float64]:
    """``S @ flat`` for the row-major ``k x n`` +/-1 matrix ``S``, one row at a time (low memory)."""
    n = flat.size
    words = _raw_words(_SKETCH_PURPOSE, nonce, (n * k + 63) // 64)
    out = np.empty(k, dtype=np.float64)
    for j in range(k):
        start, stop = j * n, (j + 1) * n
        chunk = words[start // 64 : (stop + 63) // 64]
        bits = np.unpackbits(chunk.view(np.uint8), bitorder="little")[start % 64 : start % 64 + n]
        signs = 1.0 - 2.0 * bits.astype(np.float64)
        out[j] = float(signs @ flat)
    return out


def output_sketch(nonce: bytes | str, outputs: Sequence[Any], k: int = SKETCH_SIZE) -> list[int]:
    """A ``k``-integer random projection of the model outputs, seeded by the nonce."""
    raw_nonce = _nonce(nonce)
    if not outputs:
        raise ProtocolError("no outputs to sketch", reason="malformed")
    flat = np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in outputs])
    n = flat.size
    if n == 0:
        raise ProtocolError("outputs are empty", reason="malformed")
    if not np.all(np.isfinite(flat)):
        raise ProtocolError("outputs contain NaN or infinity", reason="malformed")
    projected = _project(raw_nonce, flat, k) / math.sqrt(n)
    scaled = np.clip(np.rint(projected * SKETCH_SCALE), -SKETCH_LIMIT, SKETCH_LIMIT)
    return [int(v) for v in scaled]


def sketch_distance(a: Sequence[int], b: Sequence[int]) -> float:
    """``||a - b|| / max(||a||, ||b||)`` (0.0 when both are zero)."""
    va = np.asarray(a, dtype=np.float64)
    vb = np.asarray(b, dtype=np.float64)
    norm = max(float(np.linalg.norm(va)), float(np.linalg.norm(vb)))
    if norm == 0.0:
        return 0.0
    return float(np.linalg.norm(va - vb)) / norm


def sketch_matches(
    a: Sequence[int], b: Sequence[int], tolerance: float = REL_TOL, *, abs_tol: int = ABS_TOL
) -> bool:
    """True when two sketches agree within ``tolerance`` relative to the larger norm (+ ``abs_tol``)."""
    if len(a) != len(b) or not a:
        return False
    va = np.asarray(a, dtype=np.float64)
    vb = np.asarray(b, dtype=np.float64)
    norm = max(float(np.linalg.norm(va)), float(np.linalg.norm(vb)))
    return float(np.linalg.norm(va - vb)) <= tolerance * norm + abs_tol
