"""Challenge: deterministic synthetic inputs, sketches, tolerance."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from agent.errors import ProtocolError
from agent.protocol.challenge import (
    REL_TOL,
    output_sketch,
    sketch_distance,
    sketch_matches,
    synthetic_input,
)

NONCE = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_uint8_input_is_deterministic_and_full_range() -> None:
    a = synthetic_input(NONCE, (1, 224, 224, 3), "uint8")
    b = synthetic_input(NONCE.hex(), [1, 224, 224, 3], np.uint8)
    assert a.dtype == np.uint8 and a.shape == (1, 224, 224, 3)
    assert np.array_equal(a, b)
    assert a.min() == 0 and a.max() == 255
    assert a.tobytes()[:16].hex() == "08fd6b719e314debee5e125765f82036"
    assert hashlib.sha256(a.tobytes()).hexdigest() == (
        "a8031c12e951c790230d0e0ef6e478ff3c4a50fb2006e270d2eefd9abe1a369f"
    )
    assert not np.array_equal(a, synthetic_input(OTHER, (1, 224, 224, 3), "uint8"))


def test_int8_and_float_ranges() -> None:
    i8 = synthetic_input(NONCE, (4096,), "int8")
    assert i8.dtype == np.int8 and i8.min() == -128 and i8.max() == 127
    f = synthetic_input(NONCE, (1, 3, 32, 32), "float32", low=-1.0, high=1.0)
    assert f.dtype == np.float32 and f.shape == (1, 3, 32, 32)
    assert float(f.min()) >= -1.0 and float(f.max()) < 1.0
    assert abs(float(f.mean())) < 0.05
    f16 = synthetic_input(NONCE, (8,), "float16")
    assert f16.dtype == np.float16 and float(f16.min()) >= 0 and float(f16.max()) <= 1.0


def test_input_prefix_is_stable_across_sizes() -> None:
    small = synthetic_input(NONCE, (10,), "uint8")
    big = synthetic_input(NONCE, (1000,), "uint8")
    assert np.array_equal(small, big[:10])


def test_bad_nonce_shape_dtype() -> None:
    with pytest.raises(ProtocolError, match=r"^challenge nonce must be 16\.\.64 bytes \(got 4\)$"):
        synthetic_input(b"abcd", (1,), "uint8")
    with pytest.raises(ProtocolError, match=r"^challenge nonce must be hex$"):
        synthetic_input("zz", (1,), "uint8")
    with pytest.raises(ProtocolError, match=r"^synthetic input shape must be positive \(got \(0, 3\)\)$"):
        synthetic_input(NONCE, (0, 3), "uint8")
    with pytest.raises(ProtocolError, match=r"^synthetic input dtype bool is not supported"):
        synthetic_input(NONCE, (3,), "bool")


def test_sketch_vector_and_determinism() -> None:
    outputs = [(np.arange(100, dtype=np.float32) - 50).reshape(1, 100)]
    sketch = output_sketch(NONCE, outputs)
    assert len(sketch) == 32 and all(type(v) is int for v in sketch)
    assert sketch[:4] == [8600000, -34600000, 49400000, -10800000]
    assert output_sketch(NONCE.hex(), outputs) == sketch
    assert output_sketch(OTHER, outputs) != sketch


def test_sketch_of_several_outputs_concatenates() -> None:
    a = np.linspace(-3, 3, 50, dtype=np.float32)
    b = np.linspace(0, 1, 30, dtype=np.float32).reshape(3, 10)
    joined = np.concatenate([a, b.ravel()])
    assert output_sketch(NONCE, [a, b]) == output_sketch(NONCE, [joined])


def test_tolerance_absorbs_float_noise_but_not_a_different_model() -> None:
    rng = np.random.Generator(np.random.PCG64(1))
    logits = rng.normal(0, 4, size=(1, 1000)).astype(np.float32)
    ref = output_sketch(NONCE, [logits])
    # cross-platform noise: ~0.5% relative perturbation, plus float16 round trip
    noisy = logits + rng.normal(0, 0.02, size=logits.shape).astype(np.float32)
    assert sketch_matches(ref, output_sketch(NONCE, [noisy]))
    assert sketch_matches(ref, output_sketch(NONCE, [logits.astype(np.float16).astype(np.float32)]))
    # a different model (independent outputs of the same scale) is far off
    other = rng.normal(0, 4, size=(1, 1000)).astype(np.float32)
    assert sketch_distance(ref, output_sketch(NONCE, [other])) > 0.8
    assert not sketch_matches(ref, output_sketch(NONCE, [other]))
    # a scaled output (e.g. missing normalisation) is refused too
    assert not sketch_matches(ref, output_sketch(NONCE, [logits * 1.2]))
    # a reply computed for another nonce does not match
    assert not sketch_matches(ref, output_sketch(OTHER, [logits]))


def test_sketch_matches_edges() -> None:
    assert sketch_matches([0] * 32, [0] * 32)
    assert sketch_matches([0] * 32, [50] * 32, abs_tol=300)
    assert not sketch_matches([1] * 32, [1] * 31)
    assert not sketch_matches([], [])
    big = [10**9] * 32
    near = [int(10**9 * (1 + REL_TOL / 2))] * 32
    assert sketch_matches(big, near)
    assert not sketch_matches(big, near, tolerance=REL_TOL / 4)


def test_sketch_refuses_non_finite_and_empty() -> None:
    with pytest.raises(ProtocolError, match=r"^outputs contain NaN or infinity$"):
        output_sketch(NONCE, [np.array([1.0, np.nan])])
    with pytest.raises(ProtocolError, match=r"^no outputs to sketch$"):
        output_sketch(NONCE, [])
    with pytest.raises(ProtocolError, match=r"^outputs are empty$"):
        output_sketch(NONCE, [np.zeros((0,))])


def test_sketch_is_clamped_to_safe_integers() -> None:
    sketch = output_sketch(NONCE, [np.full((4,), 1e300)])
    assert max(abs(v) for v in sketch) == 2**53 - 1
