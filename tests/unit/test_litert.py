"""The LiteRT backend on TFLite models written at test time: delegates, threads, card checks."""

import hashlib
import sys

import numpy as np
import pytest

from agent.errors import BackendUnavailableError, ModelError
from agent.inference.backends import create_backend
from agent.inference.backends.base import BackendSettings
from agent.inference.cards import load_card
from tests.support.tflite_models import pooled_dense, pooled_dense_weights, write_tflite_and_card

XNNPACK = BackendSettings(threads=1, litert_delegates=("xnnpack",))
FIT_HINT = "fix the card to describe the model (every difference is listed above)"
U8 = (1 / 255, 0)


@pytest.fixture
def card_path(tmp_path):
    return write_tflite_and_card(tmp_path, pooled_dense())


def edit(path, old, new):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def mismatch(card_path, settings=XNNPACK):
    with pytest.raises(ModelError) as info:
        create_backend(load_card(card_path), settings)
    assert info.value.hint == FIT_HINT
    head = f"card {card_path} does not match model {card_path.with_suffix('.tflite')}:\n  - "
    assert info.value.message.startswith(head)
    return info.value.message[len(head) :]


def test_runs_and_computes_what_the_graph_says(card_path):
    backend = create_backend(load_card(card_path), BackendSettings(threads=2, litert_delegates=("xnnpack",)))
    info = backend.info
    assert (info.backend, info.provider, info.threads, info.skipped) == ("litert", "xnnpack", 2, [])
    assert info.runtime.startswith("ai-edge-litert ")
    image = np.random.default_rng(7).uniform(0, 255, size=(1, 16, 16, 3)).astype(np.float32)
    pooled, scores = backend.run(image)
    weights, bias = pooled_dense_weights()
    expected_pooled = image.mean(axis=(1, 2))
    np.testing.assert_allclose(pooled, expected_pooled, rtol=1e-5)
    np.testing.assert_allclose(scores, expected_pooled @ weights.T + bias, rtol=1e-4, atol=1e-3)
    bare = backend.bare_call()(image)
    np.testing.assert_allclose(bare[1], scores)


def test_delegates_fall_back_in_order_and_report_what_runs(card_path):
    loaded = load_card(card_path)
    backend = create_backend(loaded, BackendSettings(threads=1, litert_delegates=("gpu", "none")))
    assert backend.info.provider == "builtin"
    assert backend.info.skipped == ["gpu: delegate library ('libtensorflowlite_gpu_delegate.so',) not found"]


def test_no_usable_delegate(card_path):
    with pytest.raises(BackendUnavailableError) as info:
        create_backend(load_card(card_path), BackendSettings(litert_delegates=("nnapi",)))
    assert info.value.message == "no LiteRT delegate from ['nnapi'] could be used"
    assert info.value.hint == (
        "add 'xnnpack' or 'none' to litert_delegates; skipped: nnapi: delegate library "
        "('libnnapi_delegate.so',) not found"
    )


def test_unknown_delegate_is_an_error_with_suggestion(card_path):
    with pytest.raises(BackendUnavailableError) as info:
        create_backend(
            load_card(card_path), BackendSettings(litert_delegates=("xnnpak", "CUDAExecutionProvider"))
        )
    assert str(info.value) == (
        "unknown LiteRT delegate(s): xnnpak, CUDAExecutionProvider\n"
        "  fix: did you mean xnnpack? LiteRT delegates: xnnpack, gpu, nnapi, none"
    )
    assert info.value.exit_code == 5


def test_runtime_not_installed(card_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    with pytest.raises(BackendUnavailableError) as info:
        create_backend(load_card(card_path), XNNPACK)
    assert str(info.value) == (
        "backend 'litert' needs ai-edge-litert (or tflite-runtime), and neither is installed\n"
        "  fix: pip install 'edgeproof[litert]'   (or the tflite extra where ai-edge-litert has no wheel)"
    )


def test_corrupt_tflite_with_matching_sha(card_path):
    model = card_path.with_suffix(".tflite")
    garbage = b"TFL3 but not a flatbuffer" * 8
    model.write_bytes(garbage)
    edit(card_path, load_card(card_path).card.sha256, hashlib.sha256(garbage).hexdigest())
    with pytest.raises(ModelError) as info:
        create_backend(load_card(card_path), XNNPACK)
    assert str(info.value) == (
        f"LiteRT cannot load {model}: The model is not a valid Flatbuffer buffer\n"
        "  fix: the file is not a valid .tflite model, or needs ops this runtime lacks"
    )


def test_sha256_mismatch(card_path):
    model = card_path.with_suffix(".tflite")
    data = pooled_dense(seed=1)  # same graph, other weights: a replaced file
    model.write_bytes(data)
    with pytest.raises(ModelError) as info:
        create_backend(load_card(card_path), XNNPACK)
    assert info.value.message == (
        f"model file {model} has sha256 {hashlib.sha256(data).hexdigest()}, but card {card_path} "
        f"expects {load_card(card_path).card.sha256}"
    )


@pytest.mark.parametrize(
    ("old", "new", "difference"),
    [
        ('name = "image"', 'name = "input"', "input name: card says 'input', model has 'image'"),
        (
            "shape = [1, 16, 16, 3]",
            "shape = [1, 32, 32, 3]",
            "input shape: card says [1, 32, 32, 3], model has [1, 16, 16, 3]",
        ),
        ('dtype = "float32"', 'dtype = "uint8"', "input dtype: card says uint8, model has float32"),
        (
            'name = "scores"',
            'name = "logits"',
            "outputs[1] name: card says 'logits', model has 'pooled', 'scores'",
        ),
        ("shape = [1, 4]", "shape = [1, 5]", "output 'scores' shape: card says [1, 5], model has [1, 4]"),
        (
            '[[outputs]]\nname = "scores"\nshape = [1, 4]\n',
            "",
            "outputs: card lists 1, model has 2 (pooled, scores)",
        ),
    ],
)
def test_card_that_does_not_fit_its_tflite_model(card_path, old, new, difference):
    edit(card_path, old, new)
    assert mismatch(card_path) == difference


def test_quantized_input_parameters_are_checked_against_the_model(tmp_path):
    # x = pixel / 255, quantized with the model's own scale 1/255: q = pixel.
    extra = "scale = 0.00392156862745098\n[input.quantization]\nscale = 0.00392156862745098\nzero_point = 0\n"
    card = write_tflite_and_card(
        tmp_path, pooled_dense(uint8_input=U8), input_dtype="uint8", input_extra=extra
    )
    backend = create_backend(load_card(card), XNNPACK)
    assert backend.inputs()[0].quantization == pytest.approx(U8)
    edit(card, "zero_point = 0", "zero_point = 3")
    assert mismatch(card) == (
        "input quantization: card says scale=0.0039215686, zero_point=3, "
        "model has scale=0.0039215689, zero_point=0"
    )
    edit(card, "zero_point = 3", "zero_point = 0")
    edit(card, "[input.quantization]\nscale = 0.00392156862745098", "[input.quantization]\nscale = 0.5")
    assert mismatch(card) == (
        "input quantization: card says scale=0.5, zero_point=0, model has scale=0.0039215689, zero_point=0"
    )


def test_uint8_input_fed_raw_pixels_needs_no_card_quantization(tmp_path):
    """A card that passes pixels through unchanged does not need the model's parameters."""
    card = write_tflite_and_card(tmp_path, pooled_dense(uint8_input=U8), input_dtype="uint8")
    backend = create_backend(load_card(card), XNNPACK)
    pooled, _ = backend.run(np.full((1, 16, 16, 3), 255, dtype=np.uint8))
    np.testing.assert_allclose(pooled, [[1.0, 1.0, 1.0]], rtol=1e-5)  # dequantized inside the model


def test_falls_back_to_tflite_runtime_when_ai_edge_litert_is_missing(card_path, monkeypatch):
    import types

    from ai_edge_litert import interpreter as real_interpreter

    fake = types.ModuleType("tflite_runtime")
    fake.__version__ = "2.14.0"
    fake.interpreter = real_interpreter  # same Interpreter API, as tflite_runtime.interpreter offers
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", real_interpreter)
    backend = create_backend(load_card(card_path), XNNPACK)
    assert (backend.info.runtime, backend.info.provider) == ("tflite-runtime 2.14.0", "xnnpack")
    pooled, _ = backend.run(np.full((1, 16, 16, 3), 3.0, dtype=np.float32))
    np.testing.assert_allclose(pooled, [[3.0, 3.0, 3.0]])
